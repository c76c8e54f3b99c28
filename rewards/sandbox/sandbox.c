/* rewards/sandbox/sandbox.c — the code-execution sandbox supervisor (see rewards/sandbox/sandbox.h and
 * docs/SANDBOX.md).
 *
 * The child side (everything after clone) runs in a copy of a possibly multi-threaded process, so it
 * calls only system calls: every string, path and the seccomp program are prepared beforehand by
 * the supervisor (no malloc, no stdio, no locks in the child). */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "rewards/sandbox/sandbox.h"

#define SB_UID 65534 /* uid and gid inside the sandbox: "nobody", never 0 */
#define SB_MAX_OPS 48

/* Setup steps, reported by the child on failure so the supervisor can name what broke. */
enum sb_step {
    ST_SYNC = 1, ST_SETGROUPS, ST_SETGID, ST_SETUID, ST_CAPS, ST_MNT_PRIVATE, ST_ROOT_TMPFS, ST_MKDIR, ST_SYMLINK,
    ST_BIND, ST_BIND_RO, ST_DEVFILE, ST_TMP_TMPFS, ST_WRITE_FILE, ST_PROC, ST_PIVOT, ST_UMOUNT_OLD, ST_ROOT_RO,
    ST_HOSTNAME, ST_FORK, ST_STDIO, ST_RLIMIT, ST_CHDIR, ST_NNP, ST_SECCOMP, ST_EXEC, ST_DROPCAPS, ST_NSTEPS
};
_Static_assert(ST_PIVOT == SANDBOX_FAULT_STEP_PIVOT_ROOT, "fault step constant out of date");
_Static_assert(ST_SECCOMP == SANDBOX_FAULT_STEP_SECCOMP, "fault step constant out of date");
static const char *const step_names[ST_NSTEPS] = {
    "?", "sync with supervisor", "setgroups", "setresgid", "setresuid", "capset", "make mounts private",
    "mount root tmpfs", "mkdir", "symlink", "bind mount", "remount bind read-only", "create device node file",
    "mount /tmp tmpfs", "write program file", "mount /proc", "pivot_root", "detach old root",
    "remount root read-only", "sethostname", "fork program", "set up stdio", "setrlimit", "chdir /tmp",
    "no_new_privs", "seccomp filter", "execve", "drop capabilities"};

enum { MSG_SETUP_ERROR = 1, MSG_EXIT = 2, MSG_READY = 3 };
typedef struct sb_msg {
    int32_t kind, step, err, status;
} sb_msg;

enum { OP_MKDIR, OP_SYMLINK, OP_BIND_RO, OP_BIND_DEV, OP_WRITE };
typedef struct mount_op {
    int kind;
    char src[256];  /* host path (bind), symlink target, or file content (write) */
    char dst[320];  /* absolute path under the root mount point before pivot */
} mount_op;

struct sandbox_pool {
    sandbox_config cfg;
    /* where the new root's tmpfs is mounted in the private mount namespace before pivot_root: an
     * existing host directory that no bind source lies under (the mount hides what is below it) */
    char root[64], root_tmp[80], root_proc[80], root_old[80];
    unsigned features; /* SANDBOX_F_* in use after the probe */
    char features_text[1024];
    mount_op ops[SB_MAX_OPS];
    int n_ops;
    struct sock_filter *bpf; /* (bpf_len,) the exported seccomp program */
    unsigned short bpf_len;
    int netns_fd; /* the pool's shared empty network namespace, or -1 (then one per run) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_slots;
    unsigned char *slot_busy; /* (n_slots,) */
};

/* Everything the child needs for one run, prepared by the supervisor. */
typedef struct run_plan {
    const sandbox_pool *pool;
    uid_t host_uid;
    int fd_out, fd_err, fd_ctl; /* child ends: stdout pipe, stderr pipe, control socket */
    const char *program;
    size_t program_len;
    char program_path[320];     /* <root>/tmp/<file> */
    const char *stdin_data;
    size_t stdin_len;
    char tmp_opts[96];
    char *argv[40];
    char *const *envp;
    struct rlimit rl_as, rl_cpu, rl_nproc, rl_fsize, rl_nofile, rl_core;
    unsigned long clone_flags;
    int use_seccomp;
    int fault_step; /* FAULT INJECTION (tests): fail setup at this step */
} run_plan;

const char *sandbox_verdict_name(sandbox_verdict v) {
    switch (v) {
    case SANDBOX_PASS: return "pass";
    case SANDBOX_FAIL: return "fail";
    case SANDBOX_TIMEOUT: return "timeout";
    case SANDBOX_MEMORY: return "memory";
    case SANDBOX_RUNTIME_ERROR: return "runtime_error";
    case SANDBOX_OUTPUT_LIMIT: return "output_limit";
    case SANDBOX_SANDBOX_ERROR: return "sandbox_error";
    }
    return "?";
}

void sandbox_config_default(sandbox_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->interpreter, sizeof c->interpreter, "/usr/bin/python3");
    c->wall_ms = 5000;
    c->cpu_s = 0; /* derived from wall_ms per run */
    c->memory_bytes = 512ll << 20;
    c->max_procs = 64;
    c->max_file_bytes = 16ll << 20;
    c->max_open_files = 64;
    c->tmp_bytes = 16ll << 20;
    c->stdout_cap = 1ll << 20;
    c->stderr_cap = 64ll << 10;
    /* distinct per process, so two updaters' sandboxes never share a host uid (RLIMIT_NPROC is
     * counted per uid); 256 slots per process */
    c->host_uid_base = 100000 + (int64_t)(getpid() % 8192) * 256;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->pool_size = n > 0 ? (int)n : 1;
    c->allow_degraded = 0;
    c->want = SANDBOX_F_NET | SANDBOX_F_IPC | SANDBOX_F_UTS | SANDBOX_F_SECCOMP;
}

static int feature_bit(const char *name) {
    if (!strcmp(name, "net")) return SANDBOX_F_NET;
    if (!strcmp(name, "ipc")) return SANDBOX_F_IPC;
    if (!strcmp(name, "uts")) return SANDBOX_F_UTS;
    if (!strcmp(name, "seccomp")) return SANDBOX_F_SECCOMP;
    if (!strcmp(name, "cgroup")) return SANDBOX_F_CGROUP;
    return 0;
}

int sandbox_config_parse(sandbox_config *c, const json_t *obj, const char *where, rlhf_error *err) {
    if (!obj) return 0;
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "expected a JSON object");
    static const struct {
        const char *key;
        size_t off;
        int64_t scale, min, max;
    } nums[] = {
        {"wall_ms", offsetof(sandbox_config, wall_ms), 1, 1, 3600000},
        {"cpu_s", offsetof(sandbox_config, cpu_s), 1, 1, 3600},
        {"memory_mb", offsetof(sandbox_config, memory_bytes), 1 << 20, 16, 1 << 20},
        {"max_procs", offsetof(sandbox_config, max_procs), 1, 1, 100000},
        {"max_file_mb", offsetof(sandbox_config, max_file_bytes), 1 << 20, 1, 1 << 20},
        {"max_open_files", offsetof(sandbox_config, max_open_files), 1, 8, 65536},
        {"tmp_mb", offsetof(sandbox_config, tmp_bytes), 1 << 20, 1, 1 << 16},
        {"stdout_kb", offsetof(sandbox_config, stdout_cap), 1 << 10, 1, 1 << 20},
        {"stderr_kb", offsetof(sandbox_config, stderr_cap), 1 << 10, 1, 1 << 20},
        {"host_uid_base", offsetof(sandbox_config, host_uid_base), 1, 1000, 2000000000},
    };
    const char *k;
    json_t *v;
    char w[300];
    json_object_foreach((json_t *)obj, k, v) {
        snprintf(w, sizeof w, "%s.%s", where, k);
        int done = 0;
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
            if (strcmp(k, nums[i].key)) continue;
            if (!json_is_integer(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer");
            int64_t x = (int64_t)json_integer_value(v);
            if (x < nums[i].min || x > nums[i].max)
                return rlhf_error_set(err, RLHF_EINVAL, w, "must be in %lld..%lld, got %lld", (long long)nums[i].min,
                                      (long long)nums[i].max, (long long)x);
            *(int64_t *)((char *)c + nums[i].off) = x * nums[i].scale;
            done = 1;
        }
        if (done) continue;
        if (!strcmp(k, "interpreter")) {
            const char *s = json_string_value(v);
            if (!s || s[0] != '/' || strlen(s) >= sizeof c->interpreter)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an absolute path (under /usr or a bind)");
            snprintf(c->interpreter, sizeof c->interpreter, "%s", s);
        } else if (!strcmp(k, "pool_size")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 256)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer in 1..256");
            c->pool_size = (int)json_integer_value(v);
        } else if (!strcmp(k, "fault_inject_step")) {
            /* FAULT INJECTION for tests: makes every run's setup fail at this step */
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer step number");
            c->fault_fail_step = (int)json_integer_value(v);
        } else if (!strcmp(k, "cgroup")) {
            if (!json_is_boolean(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected true or false");
            if (json_is_true(v))
                return rlhf_error_set(err, RLHF_EUNSUPPORTED, w,
                                      "per-run cgroups are not implemented yet (rlimits and the pid namespace bound "
                                      "processes and memory); leave it false");
        } else if (!strcmp(k, "allow_degraded")) {
            if (!json_is_array(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected an array of feature names");
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                int b = json_is_string(e) ? feature_bit(json_string_value(e)) : 0;
                if (!b)
                    return rlhf_error_set(err, RLHF_EINVAL, w,
                                          "entry %zu: expected one of \"net\", \"ipc\", \"uts\", \"seccomp\", "
                                          "\"cgroup\" (user, pid and mount namespaces cannot be degraded)", i);
                c->allow_degraded |= (unsigned)b;
            }
        } else if (!strcmp(k, "binds")) {
            if (!json_is_array(v) || json_array_size(v) > 8)
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected an array of at most 8 absolute paths");
            size_t i;
            json_t *e;
            c->n_binds = 0;
            json_array_foreach(v, i, e) {
                const char *s = json_string_value(e);
                if (!s || s[0] != '/' || strlen(s) >= sizeof c->binds[0] || strstr(s, ".."))
                    return rlhf_error_set(err, RLHF_EINVAL, w, "entry %zu: expected an absolute path without ..", i);
                snprintf(c->binds[c->n_binds++], sizeof c->binds[0], "%s", s);
            }
        } else {
            return rlhf_error_set(err, RLHF_EINVAL, w,
                                  "unknown key (known: interpreter, wall_ms, cpu_s, memory_mb, max_procs, max_file_mb, "
                                  "max_open_files, tmp_mb, stdout_kb, stderr_kb, host_uid_base, pool_size, "
                                  "allow_degraded, cgroup, binds)");
        }
    }
    return 0;
}

void sandbox_result_free(sandbox_result *r) {
    if (!r) return;
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
    r->out_len = r->err_len = 0;
}

/* ------------------------------------------------------------------------------------------------
 * The child side: only system calls from here to the end of child_main.
 * ---------------------------------------------------------------------------------------------- */
static void child_fail(int ctl, int step) {
    sb_msg m = {MSG_SETUP_ERROR, step, errno, 0};
    ssize_t w = send(ctl, &m, sizeof m, MSG_NOSIGNAL);
    (void)w;
    _exit(120);
}

static int set_caps(uint32_t eff_lo, uint32_t eff_hi, int keep_permitted) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (keep_permitted) {
        if (syscall(SYS_capget, &h, d)) return -1;
    }
    d[0].effective = eff_lo;
    d[1].effective = eff_hi;
    if (!keep_permitted) d[0].permitted = d[1].permitted = d[0].inheritable = d[1].inheritable = 0;
    return (int)syscall(SYS_capset, &h, d);
}

static size_t c_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static int write_all_fd(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Keeps exactly the fds in keep[0..3] (ascending, distinct) open. */
static void close_all_but(const int keep[3]) {
    unsigned lo = 0;
    for (int i = 0; i < 3; i++) {
        if ((unsigned)keep[i] > lo) syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
        lo = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0u, 0);
}

static void sort3(int a[3]) {
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (a[j] < a[i]) {
                int t = a[i];
                a[i] = a[j];
                a[j] = t;
            }
}

/* pid 2: the sandboxed program. */
static void program_main(const run_plan *pl) {
    int ctl = pl->fd_ctl;
    /* stdin from a sealed-in-memory file: no pipe to feed, so no writer can block or get SIGPIPE */
    int in = -1;
    if (pl->stdin_len) {
        in = (int)syscall(SYS_memfd_create, "stdin", 0);
        if (in < 0 || write_all_fd(in, pl->stdin_data, pl->stdin_len) || lseek(in, 0, SEEK_SET) != 0)
            child_fail(ctl, ST_STDIO);
    } else {
        in = open("/dev/null", O_RDONLY);
        if (in < 0) child_fail(ctl, ST_STDIO);
    }
    /* move everything out of the way of 0..3 first, then into place */
    int fin = fcntl(in, F_DUPFD, 10), fout = fcntl(pl->fd_out, F_DUPFD, 10), ferr = fcntl(pl->fd_err, F_DUPFD, 10),
        fctl = fcntl(ctl, F_DUPFD, 10);
    if (fin < 0 || fout < 0 || ferr < 0 || fctl < 0) child_fail(ctl, ST_STDIO);
    ctl = fctl;
    if (dup2(fin, 0) < 0 || dup2(fout, 1) < 0 || dup2(ferr, 2) < 0 || dup3(fctl, 3, O_CLOEXEC) < 0)
        child_fail(ctl, ST_STDIO);
    ctl = 3;
    syscall(SYS_close_range, 4u, ~0u, 0);
    if (setrlimit(RLIMIT_AS, &pl->rl_as) || setrlimit(RLIMIT_CPU, &pl->rl_cpu) ||
        setrlimit(RLIMIT_NPROC, &pl->rl_nproc) || setrlimit(RLIMIT_FSIZE, &pl->rl_fsize) ||
        setrlimit(RLIMIT_NOFILE, &pl->rl_nofile) || setrlimit(RLIMIT_CORE, &pl->rl_core))
        child_fail(ctl, ST_RLIMIT);
    if (chdir("/tmp")) child_fail(ctl, ST_CHDIR);
    if (set_caps(0, 0, 0)) child_fail(ctl, ST_DROPCAPS);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) child_fail(ctl, ST_NNP);
    if (pl->use_seccomp) {
        struct sock_fprog prog = {pl->pool->bpf_len, pl->pool->bpf};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0)) child_fail(ctl, ST_SECCOMP);
    }
    execve(pl->argv[0], pl->argv, pl->envp);
    child_fail(ctl, ST_EXEC);
}

/* pid 1 in the new namespaces: set up the root, fork the program, reap, report its status. */
static int child_main(const run_plan *pl) {
    int keep[3] = {pl->fd_out, pl->fd_err, pl->fd_ctl};
    sort3(keep);
    close_all_but(keep); /* fds other threads of the supervisor opened must not be held open here */
    int ctl = pl->fd_ctl;
    char go = 0;
    for (;;) {
        ssize_t r = recv(ctl, &go, 1, 0);
        if (r == 1) break;
        if (r < 0 && errno == EINTR) continue;
        _exit(121); /* the supervisor gave up on us */
    }
    if (go != 'g') _exit(121);
    if (pl->fault_step) {
        errno = EPERM;
        child_fail(ctl, pl->fault_step);
    }
    /* raw system calls for the id changes: libc's wrappers would try to broadcast the change to
     * the supervisor's other threads, which do not exist in this copy, and wait forever */
    if (syscall(SYS_setgroups, 0, NULL)) child_fail(ctl, ST_SETGROUPS);
    if (syscall(SYS_setresgid, SB_UID, SB_UID, SB_UID)) child_fail(ctl, ST_SETGID);
    /* become 65534 now (files created on our tmpfs need a mapped owner) but keep the namespace
     * capabilities for the mounts below; they are dropped before the program runs */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) || syscall(SYS_setresuid, SB_UID, SB_UID, SB_UID)) child_fail(ctl, ST_SETUID);
    if (set_caps(0xffffffffu, 0xffffffffu, 1)) child_fail(ctl, ST_CAPS);
    /* if the supervisor dies (the updater crashed), take the whole namespace down with it. Set
     * after the uid change, which clears it; before that, a dead supervisor shows as EOF on ctl */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)) child_fail(ctl, ST_CAPS);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) child_fail(ctl, ST_MNT_PRIVATE);
    const sandbox_pool *pool = pl->pool;
    if (mount("sandbox", pool->root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=512,mode=0755"))
        child_fail(ctl, ST_ROOT_TMPFS);
    /* /tmp first, so binds below /tmp land on it instead of being hidden by it */
    if (mkdir(pool->root_tmp, 0755)) child_fail(ctl, ST_MKDIR);
    if (mount("sandbox-tmp", pool->root_tmp, "tmpfs", MS_NOSUID | MS_NODEV, pl->tmp_opts)) child_fail(ctl, ST_TMP_TMPFS);
    for (int i = 0; i < pool->n_ops; i++) {
        const mount_op *op = &pool->ops[i];
        switch (op->kind) {
        case OP_MKDIR:
            if (mkdir(op->dst, 0755) && errno != EEXIST) child_fail(ctl, ST_MKDIR);
            break;
        case OP_SYMLINK:
            if (symlink(op->src, op->dst)) child_fail(ctl, ST_SYMLINK);
            break;
        case OP_BIND_RO:
            if (mkdir(op->dst, 0755) && errno != EEXIST) child_fail(ctl, ST_MKDIR);
            if (mount(op->src, op->dst, NULL, MS_BIND | MS_REC, NULL)) child_fail(ctl, ST_BIND);
            if (mount(NULL, op->dst, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
                child_fail(ctl, ST_BIND_RO);
            break;
        case OP_BIND_DEV: {
            int fd = open(op->dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
            if (fd < 0) child_fail(ctl, ST_DEVFILE);
            close(fd);
            if (mount(op->src, op->dst, NULL, MS_BIND, NULL)) child_fail(ctl, ST_BIND);
            if (mount(NULL, op->dst, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC, NULL))
                child_fail(ctl, ST_BIND_RO);
            break;
        }
        case OP_WRITE: {
            int fd = open(op->dst, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0 || write_all_fd(fd, op->src, c_strlen(op->src))) child_fail(ctl, ST_WRITE_FILE);
            close(fd);
            break;
        }
        }
    }
    if (pl->program) {
        int fd = open(pl->program_path, O_CREAT | O_WRONLY | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 || write_all_fd(fd, pl->program, pl->program_len)) child_fail(ctl, ST_WRITE_FILE);
        close(fd);
    }
    /* a fresh /proc for the new pid namespace; mounted before the old root goes, because the
     * kernel only lets a user namespace mount proc while a full proc is visible in its mount ns */
    if (mount("proc", pool->root_proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) child_fail(ctl, ST_PROC);
    if (syscall(SYS_pivot_root, pool->root, pool->root_old)) child_fail(ctl, ST_PIVOT);
    if (chdir("/")) child_fail(ctl, ST_PIVOT);
    if (umount2("/.old", MNT_DETACH)) child_fail(ctl, ST_UMOUNT_OLD);
    rmdir("/.old");
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
        child_fail(ctl, ST_ROOT_RO);
    if ((pl->clone_flags & CLONE_NEWUTS) && sethostname("sandbox", 7)) child_fail(ctl, ST_HOSTNAME);

    sb_msg ready = {MSG_READY, 0, 0, 0};
    if (send(ctl, &ready, sizeof ready, MSG_NOSIGNAL) != (ssize_t)sizeof ready) _exit(121);
    pid_t prog = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (prog < 0) child_fail(ctl, ST_FORK);
    if (prog == 0) program_main(pl);
    /* init: keep nothing the program's output could be held open by, no capabilities, not
     * dumpable (so the program cannot read our memory through /proc), then reap */
    close(pl->fd_out);
    close(pl->fd_err);
    set_caps(0, 0, 0);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, __WALL);
        if (w < 0) {
            if (errno == EINTR) continue;
            _exit(122);
        }
        if (w == prog) {
            sb_msg m = {MSG_EXIT, 0, 0, st};
            ssize_t sw = send(ctl, &m, sizeof m, MSG_NOSIGNAL);
            (void)sw;
            /* our exit makes the kernel SIGKILL everything left in the namespace (daemons too) */
            _exit(0);
        }
    }
}

/* ------------------------------------------------------------------------------------------------
 * The supervisor side.
 * ---------------------------------------------------------------------------------------------- */
static char *const clean_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
                                  "PYTHONDONTWRITEBYTECODE=1", "PYTHONIOENCODING=utf-8", NULL};

static int add_op(sandbox_pool *p, int kind, const char *src, const char *dst) {
    if (p->n_ops >= SB_MAX_OPS) return -1;
    mount_op *op = &p->ops[p->n_ops++];
    op->kind = kind;
    snprintf(op->src, sizeof op->src, "%s", src ? src : "");
    snprintf(op->dst, sizeof op->dst, "%s%s", p->root, dst);
    return 0;
}

/* The root: /usr (and /lib*, /bin, /sbin as the host has them: symlinks or read-only binds),
 * a minimal /etc, /dev with null/zero/urandom, /tmp, /proc. */
static int build_ops(sandbox_pool *p, rlhf_error *err) {
    static const char *const top[] = {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"};
    static const char *const mount_points[] = {"/mnt", "/media", "/srv", "/opt", "/tmp", "/var", NULL};
    p->root[0] = 0;
    for (const char *const *m = mount_points; *m && !p->root[0]; m++) {
        struct stat ms;
        if (lstat(*m, &ms) || !S_ISDIR(ms.st_mode)) continue;
        int clash = 0;
        size_t ml = strlen(*m);
        for (int i = 0; i < p->cfg.n_binds; i++)
            clash |= !strncmp(p->cfg.binds[i], *m, ml) && (p->cfg.binds[i][ml] == '/' || !p->cfg.binds[i][ml]);
        if (!clash) snprintf(p->root, sizeof p->root, "%s", *m);
    }
    if (!p->root[0])
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox", "no directory to mount the sandbox root on "
                              "(tried /mnt, /media, /srv, /opt, /tmp, /var outside sandbox.binds)");
    snprintf(p->root_tmp, sizeof p->root_tmp, "%s/tmp", p->root);
    snprintf(p->root_proc, sizeof p->root_proc, "%s/proc", p->root);
    snprintf(p->root_old, sizeof p->root_old, "%s/.old", p->root);
    add_op(p, OP_BIND_RO, "/usr", "/usr");
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) {
        struct stat st;
        if (lstat(top[i], &st)) continue;
        if (S_ISLNK(st.st_mode)) {
            char t[256];
            ssize_t n = readlink(top[i], t, sizeof t - 1);
            if (n <= 0) continue;
            t[n] = 0;
            add_op(p, OP_SYMLINK, t, top[i]);
        } else if (S_ISDIR(st.st_mode)) {
            add_op(p, OP_BIND_RO, top[i], top[i]);
        }
    }
    add_op(p, OP_MKDIR, NULL, "/etc");
    add_op(p, OP_WRITE, "root:x:0:0::/:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n",
           "/etc/passwd");
    add_op(p, OP_WRITE, "root:x:0:\nnogroup:x:65534:\n", "/etc/group");
    add_op(p, OP_WRITE, "127.0.0.1 localhost sandbox\n", "/etc/hosts");
    struct stat st;
    if (!stat("/etc/ld.so.cache", &st)) {
        add_op(p, OP_WRITE, "", "/etc/ld.so.cache");
        p->ops[p->n_ops - 1].kind = OP_BIND_DEV; /* a read-only file bind: same steps as a device file */
        snprintf(p->ops[p->n_ops - 1].src, sizeof p->ops[0].src, "/etc/ld.so.cache");
    }
    add_op(p, OP_MKDIR, NULL, "/dev");
    static const char *const devs[] = {"/dev/null", "/dev/zero", "/dev/urandom"};
    for (size_t i = 0; i < 3; i++) add_op(p, OP_BIND_DEV, devs[i], devs[i]);
    add_op(p, OP_SYMLINK, "/proc/self/fd", "/dev/fd");
    add_op(p, OP_SYMLINK, "/proc/self/fd/0", "/dev/stdin");
    add_op(p, OP_SYMLINK, "/proc/self/fd/1", "/dev/stdout");
    add_op(p, OP_SYMLINK, "/proc/self/fd/2", "/dev/stderr");
    for (int i = 0; i < p->cfg.n_binds; i++) {
        /* create the parents, then bind */
        char path[256];
        snprintf(path, sizeof path, "%s", p->cfg.binds[i]);
        for (char *s = path + 1; *s; s++)
            if (*s == '/') {
                *s = 0;
                add_op(p, OP_MKDIR, NULL, path);
                *s = '/';
            }
        if (stat(p->cfg.binds[i], &st) || !S_ISDIR(st.st_mode))
            return rlhf_error_set(err, RLHF_EINVAL, "sandbox.binds", "%s is not a directory", p->cfg.binds[i]);
        add_op(p, OP_BIND_RO, p->cfg.binds[i], p->cfg.binds[i]);
    }
    add_op(p, OP_MKDIR, NULL, "/tmp");
    add_op(p, OP_MKDIR, NULL, "/proc");
    if (add_op(p, OP_MKDIR, NULL, "/.old"))
        return rlhf_error_set(err, RLHF_EINVAL, "sandbox", "too many mount operations");
    return 0;
}

static int build_seccomp(sandbox_pool *p, rlhf_error *err) {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) return RLHF_FAIL(err, RLHF_ESYS, "seccomp_init failed");
    static const char *const denied[] = {
        "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "ptrace", "process_vm_readv",
        "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "keyctl",
        "add_key", "request_key", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
        "finit_module", "delete_module", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree",
        "fspick", "mount_setattr", "syslog", "reboot", "swapon", "swapoff", "acct", "settimeofday",
        "clock_settime", "clock_adjtime", "adjtimex", "quotactl", "lookup_dcookie", "fanotify_init", "iopl",
        "ioperm", "sethostname", "setdomainname", "vhangup", "personality", "uselib", "mknod", "mknodat",
        "pidfd_getfd", "kcmp", NULL};
    int rc = 0;
    for (const char *const *s = denied; *s && !rc; s++) {
        int nr = seccomp_syscall_resolve_name(*s);
        if (nr == __NR_SCMP_ERROR) continue; /* not on this architecture */
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0)) rc = -1;
    }
    /* clone may make threads and processes but no namespaces; clone3 hides its flags in memory the
     * filter cannot read, so it answers ENOSYS and libc falls back to clone */
    static const unsigned long ns_flags[] = {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET,
                                             CLONE_NEWIPC,  CLONE_NEWUTS, CLONE_NEWCGROUP};
    for (size_t i = 0; i < sizeof ns_flags / sizeof ns_flags[0] && !rc; i++)
        if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                             SCMP_A0(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i])))
            rc = -1;
    if (!rc && seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0)) rc = -1;
    if (rc) {
        seccomp_release(ctx);
        return RLHF_FAIL(err, RLHF_ESYS, "seccomp_rule_add failed");
    }
    int mfd = (int)syscall(SYS_memfd_create, "seccomp-bpf", MFD_CLOEXEC);
    if (mfd < 0 || seccomp_export_bpf(ctx, mfd)) {
        if (mfd >= 0) close(mfd);
        seccomp_release(ctx);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot export the seccomp program");
    }
    seccomp_release(ctx);
    off_t len = lseek(mfd, 0, SEEK_END);
    if (len <= 0 || len % (off_t)sizeof(struct sock_filter) || len / (off_t)sizeof(struct sock_filter) > 4096) {
        close(mfd);
        return RLHF_FAIL(err, RLHF_ESYS, "seccomp program has a bad size %lld", (long long)len);
    }
    p->bpf = malloc((size_t)len);
    if (!p->bpf || pread(mfd, p->bpf, (size_t)len, 0) != len) {
        close(mfd);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot read the seccomp program back");
    }
    close(mfd);
    p->bpf_len = (unsigned short)(len / (off_t)sizeof(struct sock_filter));
    return 0;
}

static int write_proc_file(pid_t pid, const char *name, const char *text) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = (ssize_t)strlen(text);
    ssize_t w = write(fd, text, (size_t)n);
    int e = errno;
    close(fd);
    errno = e;
    return w == n ? 0 : -1;
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
static void run_one(sandbox_pool *p, int slot, unsigned features, int allow_fault, const sandbox_request *req,
                    sandbox_result *res) {
    const sandbox_config *cfg = &p->cfg;
    memset(res, 0, sizeof *res);
    double t0 = rlhf_now();
    int64_t wall_ms = req->wall_ms > 0 ? req->wall_ms : cfg->wall_ms;
    run_plan pl;
    memset(&pl, 0, sizeof pl);
    pl.pool = p;
    pl.host_uid = (uid_t)(cfg->host_uid_base + slot);
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
    pid_t pid = (pid_t)syscall(SYS_clone, pl.clone_flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(child_main(&pl));
    int clone_errno = errno;
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
    int map_errno = errno;
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

static int probe(sandbox_pool *p, rlhf_error *err) {
    static const char *const args[] = {"-c", "pass", NULL};
    sandbox_request req = {.program = NULL, .args = NULL, .wall_ms = 10000};
    sandbox_result r;
    char interp_save[256];
    memcpy(interp_save, p->cfg.interpreter, sizeof interp_save);
    /* the probe runs /bin/true-like work: the interpreter must exist and lie inside the sandbox's view */
    if (access(p->cfg.interpreter, X_OK))
        return rlhf_error_set(err, RLHF_EINVAL, "sandbox.interpreter", "%s is not executable: %s", p->cfg.interpreter,
                              strerror(errno));
    int inside = !strncmp(p->cfg.interpreter, "/usr/", 5) || !strncmp(p->cfg.interpreter, "/bin/", 5);
    for (int i = 0; i < p->cfg.n_binds && !inside; i++)
        inside = !strncmp(p->cfg.interpreter, p->cfg.binds[i], strlen(p->cfg.binds[i]));
    if (!inside)
        return rlhf_error_set(err, RLHF_EINVAL, "sandbox.interpreter",
                              "%s is outside the sandbox's filesystem (/usr and sandbox.binds)", p->cfg.interpreter);
    unsigned feats = p->cfg.want & ~(unsigned)SANDBOX_F_CGROUP;
    const char *truebin = access("/usr/bin/true", X_OK) == 0 ? "/usr/bin/true" : NULL;
    if (truebin) {
        snprintf(p->cfg.interpreter, sizeof p->cfg.interpreter, "%s", truebin);
        static const char *const no_args[] = {NULL};
        req.args = no_args;
    } else {
        req.args = args;
    }
    unsigned missing = 0;
    char why[600] = "";
    for (int attempt = 0; attempt < 6; attempt++) {
        run_one(p, 0, feats, 0, &req, &r);
        sandbox_result_free(&r);
        if (r.verdict == SANDBOX_PASS) break;
        unsigned drop = 0;
        if (!strncmp(r.reason, "clone", 5)) {
            /* find the namespace the host refuses, one optional flag at a time */
            for (unsigned b = SANDBOX_F_NET; b <= SANDBOX_F_UTS && !drop; b <<= 1)
                if (feats & b) {
                    sandbox_result r2;
                    run_one(p, 0, feats & ~b, 0, &req, &r2);
                    sandbox_result_free(&r2);
                    if (r2.verdict == SANDBOX_PASS || strncmp(r2.reason, "clone", 5)) drop = b;
                }
        } else if (r.exit_code == -ST_SECCOMP) {
            drop = SANDBOX_F_SECCOMP;
        } else if (r.exit_code == -ST_HOSTNAME) {
            drop = SANDBOX_F_UTS;
        }
        if (!drop) {
            memcpy(p->cfg.interpreter, interp_save, sizeof interp_save);
            return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox probe",
                                  "the host does not allow the sandbox's required layers (user, pid and mount "
                                  "namespaces, pivot_root, fresh /proc): %s", r.reason);
        }
        feats &= ~drop;
        missing |= drop;
        size_t l = strlen(why);
        snprintf(why + l, sizeof why - l, "%s%s (%s)", l ? "; " : "",
                 drop == SANDBOX_F_NET ? "net" : drop == SANDBOX_F_IPC ? "ipc" : drop == SANDBOX_F_UTS ? "uts" : "seccomp",
                 r.reason);
    }
    memcpy(p->cfg.interpreter, interp_save, sizeof interp_save);
    unsigned refused = missing & ~p->cfg.allow_degraded;
    if (refused)
        return rlhf_error_set(err, RLHF_EUNSUPPORTED, "sandbox probe",
                              "the host does not allow: %s; add them to sandbox.allow_degraded to run without", why);
    p->features = feats;
    snprintf(p->features_text, sizeof p->features_text, "userns(uid %d->host %lld+slot)+pidns+mountns+pivot_root+proc%s%s%s%s%s%s",
             SB_UID, (long long)p->cfg.host_uid_base, feats & SANDBOX_F_NET ? (p->netns_fd >= 0 ? "+netns(one per pool)" : "+netns") : "", feats & SANDBOX_F_IPC ? "+ipcns" : "",
             feats & SANDBOX_F_UTS ? "+utsns" : "", feats & SANDBOX_F_SECCOMP ? "+seccomp" : "", missing ? " DEGRADED: " : "",
             missing ? why : "");
    return 0;
}

/* A new, empty network namespace (only a down loopback) held by an fd; -1 if the host refuses
 * (then each run makes its own). Made by this thread alone: unshare/setns of CLONE_NEWNET act on
 * the calling thread only. */
static int make_shared_netns(void) {
    int own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own < 0) return -1;
    int fd = -1;
    if (unshare(CLONE_NEWNET) == 0) {
        fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (setns(own, CLONE_NEWNET)) {
            fprintf(stderr, "rewards/sandbox: cannot return to the thread's network namespace: %s\n", strerror(errno));
            abort();
        }
    }
    close(own);
    return fd;
}

int sandbox_pool_create(sandbox_pool **out, const sandbox_config *cfg, rlhf_error *err) {
    *out = NULL;
    sandbox_pool *p = calloc(1, sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    p->cfg = *cfg;
    p->netns_fd = -1;
    if (p->cfg.pool_size < 1) p->cfg.pool_size = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->n_slots = p->cfg.pool_size;
    p->slot_busy = calloc((size_t)p->n_slots, 1);
    int rc = p->slot_busy ? 0 : RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    if (!rc) rc = build_ops(p, err);
    if (!rc && (p->cfg.want & SANDBOX_F_SECCOMP)) {
        rc = build_seccomp(p, err);
        if (rc && (p->cfg.allow_degraded & SANDBOX_F_SECCOMP)) {
            rlhf_error_clear(err);
            p->cfg.want &= ~(unsigned)SANDBOX_F_SECCOMP;
            rc = 0;
        }
    }
    if (!rc && (p->cfg.want & SANDBOX_F_NET)) p->netns_fd = make_shared_netns();
    if (!rc) rc = probe(p, err);
    if (rc) {
        sandbox_pool_destroy(&p);
        return rc;
    }
    *out = p;
    return 0;
}

void sandbox_pool_destroy(sandbox_pool **pp) {
    if (!pp || !*pp) return;
    sandbox_pool *p = *pp;
    free(p->bpf);
    if (p->netns_fd >= 0) close(p->netns_fd);
    free(p->slot_busy);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    *pp = NULL;
}

const char *sandbox_pool_features(const sandbox_pool *p) { return p->features_text; }
int sandbox_pool_size(const sandbox_pool *p) { return p->n_slots; }

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
    run_one(p, slot, p->features, 1, req, res);
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
    int wbad = req->program && (wfd < 0 || write_all_fd(wfd, req->program, strlen(req->program)));
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
