/* rewards/sandbox/sandbox.c — the code-execution sandbox supervisor (see rewards/sandbox/sandbox.h and
 * docs/SANDBOX.md): one run (clone into the namespaces, the uid map, output capture, limits, the
 * verdict), the pool's slots and batches, and the unsandboxed run the benchmark compares with.
 * The child side is rewards/sandbox/sandbox_child.c; the pool's preparation and the start-up probe are
 * rewards/sandbox/sandbox_setup.c. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rewards/sandbox/sandbox.h"
#include "rewards/sandbox/sandbox_int.h"

/* Names of the setup steps (enum sb_step, rewards/sandbox/sandbox_int.h), for the reasons. */
static const char *const step_names[ST_NSTEPS] = {
    "?", "sync with supervisor", "setgroups", "setresgid", "setresuid", "capset", "make mounts private",
    "mount root tmpfs", "mkdir", "symlink", "bind mount", "remount bind read-only", "create device node file",
    "mount /tmp tmpfs", "write program file", "mount /proc", "pivot_root", "detach old root",
    "remount root read-only", "sethostname", "fork program", "set up stdio", "setrlimit", "chdir /tmp",
    "no_new_privs", "seccomp filter", "execve", "drop capabilities", "setsid", "mask /proc files"};

static char *const clean_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
                                  "PYTHONDONTWRITEBYTECODE=1", "PYTHONIOENCODING=utf-8", NULL};

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = (ssize_t)strlen(text);
    ssize_t w = write(fd, text, (size_t)n);
    int e = errno;
    close(fd);
    errno = e;
    return w == n ? 0 : -1;
}

static int write_proc_file(pid_t pid, const char *name, const char *text) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    return write_file(path, text);
}

/* The run's IPC namespace starts with the kernel's defaults (shmmax/shmall unlimited, 32000 message
 * queues), which no rlimit counts: a program could hold gigabytes of host memory in SysV segments.
 * The child, uid 65534 with root unmapped, may not write these sysctls (they belong to global root
 * then), so this thread enters the namespace, writes them and comes back (setns of an IPC namespace
 * acts on the calling thread only). 0, or -1 with errno. */
static int limit_ipc(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/ipc", (int)pid);
    int own = open("/proc/thread-self/ns/ipc", O_RDONLY | O_CLOEXEC), ns = open(path, O_RDONLY | O_CLOEXEC);
    int rc = own >= 0 && ns >= 0 ? setns(ns, CLONE_NEWIPC) : -1;
    int e = errno;
    if (rc == 0) {
        char shmmax[32], shmall[32];
        snprintf(shmmax, sizeof shmmax, "%d", SB_SHM_BYTES);
        snprintf(shmall, sizeof shmall, "%ld", SB_SHM_BYTES / sysconf(_SC_PAGESIZE));
        rc = write_file("/proc/sys/kernel/shmmax", shmmax) || write_file("/proc/sys/kernel/shmall", shmall) ||
                     write_file("/proc/sys/kernel/shmmni", "4") || write_file("/proc/sys/kernel/msgmni", "4")
                 ? -1
                 : 0;
        e = errno;
        if (setns(own, CLONE_NEWIPC)) {
            fprintf(stderr, "rewards/sandbox: cannot return to the thread's IPC namespace: %s\n", strerror(errno));
            abort();
        }
    }
    if (own >= 0) close(own);
    if (ns >= 0) close(ns);
    errno = e;
    return rc;
}

typedef struct capbuf {
    char *data;
    size_t len, cap, limit;
    int over;
} capbuf;

/* Reads what is available on fd into b (up to its limit); 1 at EOF, 0 otherwise. */
static int drain(int fd, capbuf *b) {
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0) return errno == EAGAIN || errno == EINTR ? 0 : 1;
        if (r == 0) return 1;
        size_t take = (size_t)r;
        if (b->len + take > b->limit) {
            take = b->limit - b->len;
            b->over = 1;
        }
        if (take) {
            if (b->len + take + 1 > b->cap) {
                size_t nc = b->cap ? b->cap : 4096;
                while (nc < b->len + take + 1) nc *= 2;
                char *nd = realloc(b->data, nc);
                if (!nd) return 1;
                b->data = nd;
                b->cap = nc;
            }
            memcpy(b->data + b->len, tmp, take);
            b->len += take;
        }
        if (b->over) return 0;
    }
}

static void set_reason(sandbox_result *r, sandbox_verdict v, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_reason(sandbox_result *r, sandbox_verdict v, const char *fmt, ...) {
    r->verdict = v;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

static int looks_like_oom(const char *s, size_t n) {
    static const char *const pats[] = {"MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory", NULL};
    if (!s) return 0;
    for (const char *const *p = pats; *p; p++)
        if (memmem(s, n, *p, strlen(*p))) return 1;
    return 0;
}

/* Prepares argv: the interpreter, then args with "{file}" replaced by the program's path. */
static int plan_argv(run_plan *pl, const sandbox_config *cfg, const sandbox_request *req, char *store,
                     size_t store_len, const char *inside_path) {
    static const char *const default_args[] = {"{file}", NULL};
    const char *const *args = req->args ? req->args : default_args;
    size_t off = 0;
    int n = 0;
    const char *first = cfg->interpreter;
    for (int i = -1; i < 38; i++) {
        const char *a = i < 0 ? first : args[i];
        if (i >= 0 && !a) break;
        const char *val = strcmp(a, "{file}") == 0 ? inside_path : a;
        size_t l = strlen(val) + 1;
        if (off + l > store_len) return -1;
        memcpy(store + off, val, l);
        pl->argv[n++] = store + off;
        off += l;
    }
    pl->argv[n] = NULL;
    return 0;
}

/* One run on slot `slot`. Always fills *res. */
void sandbox_run_one(sandbox_pool *p, int slot, unsigned features, int allow_fault, const sandbox_request *req,
                    sandbox_result *res) {
    const sandbox_config *cfg = &p->cfg;
    memset(res, 0, sizeof *res);
    double t0 = rlhf_now();
    int64_t wall_ms = req->wall_ms > 0 ? req->wall_ms : cfg->wall_ms;
    run_plan pl;
    memset(&pl, 0, sizeof pl);
    pl.pool = p;
    pl.host_uid = (uid_t)(p->uid_base + slot);
    const char *fname = req->file_name && req->file_name[0] ? req->file_name : "main.py";
    if (strchr(fname, '/') || strlen(fname) > 64) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "bad file_name '%s'", fname);
        return;
    }
    char inside[96];
    snprintf(inside, sizeof inside, "/tmp/%s", fname);
    snprintf(pl.program_path, sizeof pl.program_path, "%s/%s", p->root_tmp, fname);
    pl.program = req->program;
    pl.program_len = req->program ? strlen(req->program) : 0;
    pl.stdin_data = req->stdin_data;
    pl.stdin_len = req->stdin_data ? req->stdin_len : 0;
    snprintf(pl.tmp_opts, sizeof pl.tmp_opts, "size=%lld,nr_inodes=4096,mode=1777", (long long)cfg->tmp_bytes);
    char argstore[8192];
    if (plan_argv(&pl, cfg, req, argstore, sizeof argstore, inside)) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "too many or too long arguments");
        return;
    }
    pl.envp = clean_env;
    int64_t cpu = cfg->cpu_s > 0 ? cfg->cpu_s : (wall_ms + 999) / 1000 + 1;
    pl.rl_as = (struct rlimit){(rlim_t)cfg->memory_bytes, (rlim_t)cfg->memory_bytes};
    pl.rl_cpu = (struct rlimit){(rlim_t)cpu, (rlim_t)cpu + 1};
    pl.rl_nproc = (struct rlimit){(rlim_t)cfg->max_procs, (rlim_t)cfg->max_procs};
    pl.rl_fsize = (struct rlimit){(rlim_t)cfg->max_file_bytes, (rlim_t)cfg->max_file_bytes};
    pl.rl_nofile = (struct rlimit){(rlim_t)cfg->max_open_files, (rlim_t)cfg->max_open_files};
    pl.rl_core = (struct rlimit){0, 0};
    pl.clone_flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS;
    /* a network namespace per run costs ~4 ms of teardown work in the kernel; the pool's shared
     * empty one (entered by this thread just around clone) isolates from the host just the same */
    int shared_net = (features & SANDBOX_F_NET) && p->netns_fd >= 0;
    if ((features & SANDBOX_F_NET) && !shared_net) pl.clone_flags |= CLONE_NEWNET;
    if (features & SANDBOX_F_IPC) pl.clone_flags |= CLONE_NEWIPC;
    if (features & SANDBOX_F_UTS) pl.clone_flags |= CLONE_NEWUTS;
    pl.use_seccomp = (features & SANDBOX_F_SECCOMP) && p->bpf;
    if (cfg->fault_fail_step == ST_SECCOMP) {
        if (pl.use_seccomp) pl.fault_step = ST_SECCOMP; /* "a host without seccomp", probe included */
    } else if (allow_fault && cfg->fault_fail_step > 0 && cfg->fault_fail_step < ST_NSTEPS) {
        pl.fault_step = cfg->fault_fail_step;
    }

    int po[2] = {-1, -1}, pe[2] = {-1, -1}, sv[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC) || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "pipe/socketpair: %s", strerror(errno));
        for (int i = 0; i < 2; i++) {
            if (po[i] >= 0) close(po[i]);
            if (pe[i] >= 0) close(pe[i]);
            if (sv[i] >= 0) close(sv[i]);
        }
        return;
    }
    pl.fd_out = po[1];
    pl.fd_err = pe[1];
    pl.fd_ctl = sv[1];
    int own_net = -1;
    if (shared_net) {
        own_net = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (own_net < 0 || setns(p->netns_fd, CLONE_NEWNET)) {
            int e = errno;
            if (own_net >= 0) close(own_net);
            set_reason(res, SANDBOX_SANDBOX_ERROR, "entering the pool's network namespace: %s", strerror(e));
            close(po[0]), close(po[1]), close(pe[0]), close(pe[1]), close(sv[0]), close(sv[1]);
            return;
        }
    }
    /* no signal may run the caller's handlers in the child before it resets them to the default */
    sigset_t all, old_mask;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old_mask);
    pid_t pid = (pid_t)syscall(SYS_clone, pl.clone_flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(sandbox_child_main(&pl));
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (own_net >= 0) {
        /* back to the caller's own network namespace; if that failed this thread would be cut off
         * from the network, which the updater must not be: abort loudly rather than go on */
        if (setns(own_net, CLONE_NEWNET)) {
            fprintf(stderr, "rewards/sandbox: cannot return to the thread's network namespace: %s\n", strerror(errno));
            abort();
        }
        close(own_net);
    }
    close(po[1]);
    close(pe[1]);
    close(sv[1]);
    if (pid < 0) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "clone(namespaces): %s", strerror(clone_errno));
        close(po[0]);
        close(pe[0]);
        close(sv[0]);
        return;
    }
    char map[64];
    snprintf(map, sizeof map, "%d %u 1\n", SB_UID, (unsigned)pl.host_uid);
    int map_ok = write_proc_file(pid, "uid_map", map) == 0 && write_proc_file(pid, "gid_map", map) == 0;
    int map_errno = errno, ipc_ok = 1;
    if (map_ok && (pl.clone_flags & CLONE_NEWIPC) && limit_ipc(pid)) {
        ipc_ok = map_ok = 0;
        map_errno = errno;
    }
    if (map_ok) map_ok = send(sv[0], "g", 1, MSG_NOSIGNAL) == 1;
    else send(sv[0], "x", 1, MSG_NOSIGNAL);

    capbuf out = {.limit = (size_t)cfg->stdout_cap}, errb = {.limit = (size_t)cfg->stderr_cap};
    int out_open = 1, err_open = 1, ctl_open = 1;
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    double deadline = t0 + (double)wall_ms / 1000.0, kill_time = 0;
    int killed = 0; /* 1 timeout, 2 output limit */
    sb_msg msg = {0, 0, 0, 0};
    int have_msg = 0, ready = 0;
    while (out_open || err_open || ctl_open) {
        double now = rlhf_now();
        if (!killed && now >= deadline) {
            kill(pid, SIGKILL);
            killed = 1;
            kill_time = now;
        }
        /* after the kill, everything in the namespace dies with pid 1: EOF is near. Stop waiting
         * after a grace period regardless, so no descriptor leak can hang the runner */
        if (killed && now - kill_time > 2.0) break;
        double until = killed ? kill_time + 2.0 : deadline;
        struct pollfd pf[3];
        int np = 0, io = -1, ie = -1, ic = -1;
        if (out_open) io = np, pf[np++] = (struct pollfd){po[0], POLLIN, 0};
        if (err_open) ie = np, pf[np++] = (struct pollfd){pe[0], POLLIN, 0};
        if (ctl_open) ic = np, pf[np++] = (struct pollfd){sv[0], POLLIN, 0};
        int ms = (int)((until - now) * 1000) + 1;
        int pr = poll(pf, (nfds_t)np, ms > 0 ? ms : 0);
        if (pr < 0 && errno != EINTR) break;
        if (pr <= 0) continue;
        if (io >= 0 && pf[io].revents) out_open = !drain(po[0], &out);
        if (ie >= 0 && pf[ie].revents) err_open = !drain(pe[0], &errb);
        if (ic >= 0 && pf[ic].revents) {
            sb_msg m;
            ssize_t r = recv(sv[0], &m, sizeof m, MSG_DONTWAIT);
            if (r == (ssize_t)sizeof m && m.kind == MSG_READY) {
                ready = 1;
                res->setup_ms = (rlhf_now() - t0) * 1000.0;
            } else if (r == (ssize_t)sizeof m) {
                if (!have_msg || m.kind == MSG_SETUP_ERROR) msg = m;
                have_msg = 1;
            } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                ctl_open = 0;
            }
        }
        if (!killed && (out.over || errb.over)) {
            kill(pid, SIGKILL);
            killed = 2;
            kill_time = rlhf_now();
        }
    }
    if (!killed && (out_open || err_open)) kill(pid, SIGKILL);
    int st = 0;
    while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
    }
    close(po[0]);
    close(pe[0]);
    close(sv[0]);
    res->wall_ms = (rlhf_now() - t0) * 1000.0;
    res->out = out.data ? out.data : calloc(1, 1);
    res->out_len = out.len;
    if (out.data) out.data[out.len] = 0;
    res->err = errb.data ? errb.data : calloc(1, 1);
    res->err_len = errb.len;
    if (errb.data) errb.data[errb.len] = 0;

    if (!ipc_ok) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "limiting SysV IPC (kernel.shm*, msgmni) in the run's IPC namespace: %s",
                   strerror(map_errno));
        return;
    }
    if (!map_ok) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "writing uid_map/gid_map for host uid %u: %s", (unsigned)pl.host_uid,
                   strerror(map_errno));
        return;
    }
    if (have_msg && msg.kind == MSG_SETUP_ERROR) {
        const char *sn = msg.step > 0 && msg.step < ST_NSTEPS ? step_names[msg.step] : "?";
        set_reason(res, SANDBOX_SANDBOX_ERROR, "sandbox setup failed at %s: %s", sn, strerror(msg.err));
        res->exit_code = -msg.step; /* the probe reads the failing step from here */
        return;
    }
    if (killed == 1 && !ready) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "sandbox setup did not finish within %lld ms", (long long)wall_ms);
        return;
    }
    if (killed == 1) {
        set_reason(res, SANDBOX_TIMEOUT, "wall-clock limit %lld ms", (long long)wall_ms);
        return;
    }
    if (killed == 2) {
        set_reason(res, SANDBOX_OUTPUT_LIMIT, "%s exceeded %zu bytes", out.over ? "stdout" : "stderr",
                   out.over ? out.limit : errb.limit);
        return;
    }
    if (!have_msg || msg.kind != MSG_EXIT) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "sandbox init ended without a report (status 0x%x)", (unsigned)st);
        return;
    }
    int ps = msg.status;
    if (WIFEXITED(ps)) {
        res->exit_code = WEXITSTATUS(ps);
        if (res->exit_code == 0) res->verdict = SANDBOX_PASS;
        else if (looks_like_oom(res->err, res->err_len))
            set_reason(res, SANDBOX_MEMORY, "out of memory (limit %lld MiB), exit %d",
                       (long long)(cfg->memory_bytes >> 20), res->exit_code);
        else set_reason(res, SANDBOX_RUNTIME_ERROR, "exit status %d", res->exit_code);
    } else if (WIFSIGNALED(ps)) {
        res->term_signal = WTERMSIG(ps);
        if (res->term_signal == SIGXCPU) set_reason(res, SANDBOX_TIMEOUT, "CPU limit %lld s", (long long)cpu);
        else if (looks_like_oom(res->err, res->err_len))
            set_reason(res, SANDBOX_MEMORY, "out of memory, signal %d", res->term_signal);
        else set_reason(res, SANDBOX_RUNTIME_ERROR, "killed by signal %d (%s)", res->term_signal,
                        strsignal(res->term_signal));
    } else {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "unexpected wait status 0x%x", (unsigned)ps);
    }
}

const char *sandbox_pool_features(const sandbox_pool *p) { return p->features_text; }
int sandbox_pool_size(const sandbox_pool *p) { return p->n_slots; }
int64_t sandbox_pool_host_uid_base(const sandbox_pool *p) { return p->uid_base; }

int sandbox_pool_run(sandbox_pool *p, const sandbox_request *req, sandbox_result *res) {
    if (!p || !req || !res) return RLHF_EINVAL;
    pthread_mutex_lock(&p->mu);
    int slot = -1;
    for (;;) {
        for (int i = 0; i < p->n_slots; i++)
            if (!p->slot_busy[i]) {
                slot = i;
                break;
            }
        if (slot >= 0) break;
        pthread_cond_wait(&p->cv, &p->mu);
    }
    p->slot_busy[slot] = 1;
    pthread_mutex_unlock(&p->mu);
    sandbox_run_one(p, slot, p->features, 1, req, res);
    pthread_mutex_lock(&p->mu);
    p->slot_busy[slot] = 0;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

typedef struct batch_job {
    sandbox_pool *p;
    const sandbox_request *req;
    sandbox_result *res;
    size_t n;
    size_t next; /* atomic */
} batch_job;

static void *batch_worker(void *arg) {
    batch_job *j = arg;
    for (;;) {
        size_t i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (i >= j->n) break;
        sandbox_pool_run(j->p, &j->req[i], &j->res[i]);
    }
    return NULL;
}

int sandbox_pool_run_batch(sandbox_pool *p, const sandbox_request *req, size_t n, sandbox_result *res) {
    if (!p || (n && (!req || !res))) return RLHF_EINVAL;
    batch_job j = {p, req, res, n, 0};
    size_t nt = n < (size_t)p->n_slots ? n : (size_t)p->n_slots;
    pthread_t th[256];
    size_t started = 0;
    for (size_t t = 1; t < nt; t++) {
        if (pthread_create(&th[started], NULL, batch_worker, &j)) break;
        started++;
    }
    batch_worker(&j);
    for (size_t t = 0; t < started; t++) pthread_join(th[t], NULL);
    return 0;
}

/* The benchmark's peer: fork/exec of the same interpreter and program file on the host, same output
 * capture, no isolation at all. The program is written to a host temp file. */
int sandbox_bare_run(const sandbox_config *cfg, const sandbox_request *req, sandbox_result *res) {
    memset(res, 0, sizeof *res);
    double t0 = rlhf_now();
    /* on tmpfs when there is one, as the sandbox's /tmp is */
    char dir[32];
    snprintf(dir, sizeof dir, "%s", access("/dev/shm", W_OK) == 0 ? "/dev/shm/rlhf-bare-XXXXXX" : "/tmp/rlhf-bare-XXXXXX");
    if (!mkdtemp(dir)) {
        set_reason(res, SANDBOX_SANDBOX_ERROR, "mkdtemp: %s", strerror(errno));
        return RLHF_ESYS;
    }
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, req->file_name ? req->file_name : "main.py");
    /* a plain write like the sandbox's (no fsync), so the comparison is of isolation alone */
    int wfd = req->program ? open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644) : -1;
    int wbad = req->program && (wfd < 0 || sandbox_write_all_fd(wfd, req->program, strlen(req->program)));
    if (wfd >= 0) close(wfd);
    if (wbad) {
        rmdir(dir);
        set_reason(res, SANDBOX_SANDBOX_ERROR, "cannot write %s", path);
        return RLHF_EIO;
    }
    run_plan pl;
    memset(&pl, 0, sizeof pl);
    char store[8192];
    plan_argv(&pl, cfg, req, store, sizeof store, path);
    int po[2];
    if (pipe2(po, O_CLOEXEC)) {
        unlink(path);
        rmdir(dir);
        return RLHF_ESYS;
    }
    pid_t pid = fork();
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(po[1], 1);
        execve(pl.argv[0], pl.argv, clean_env);
        _exit(127);
    }
    close(po[1]);
    capbuf out = {.limit = (size_t)cfg->stdout_cap};
    for (;;) {
        struct pollfd pf = {po[0], POLLIN, 0};
        if (poll(&pf, 1, -1) < 0 && errno != EINTR) break;
        if (drain(po[0], &out)) break;
    }
    close(po[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    res->wall_ms = (rlhf_now() - t0) * 1000.0;
    res->out = out.data ? out.data : calloc(1, 1);
    if (out.data) out.data[out.len] = 0;
    res->out_len = out.len;
    res->err = calloc(1, 1);
    res->exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    res->verdict = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? SANDBOX_PASS : SANDBOX_RUNTIME_ERROR;
    unlink(path);
    rmdir(dir);
    return 0;
}
