/* rewards/sandbox/sandbox_child.c — the sandbox's child side: pid 1 in the new namespaces (the root,
 * the mounts, pivot_root) and pid 2, the program (stdio, rlimits, capabilities, seccomp, execve).
 *
 * Everything here runs after clone, in a copy of a possibly multi-threaded process, so it calls only
 * system calls: every string, path and the seccomp program are prepared beforehand by the supervisor
 * (rewards/sandbox/sandbox.c, rewards/sandbox/sandbox_setup.c); no malloc, no stdio, no locks. */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rewards/sandbox/sandbox.h"
#include "rewards/sandbox/sandbox_int.h"

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

int sandbox_write_all_fd(int fd, const char *p, size_t n) {
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

/* Binds /dev/null read-only over `path` (a /proc file that would show the host). */
static int mask_file(const char *null_path, const char *path) {
    if (mount(null_path, path, NULL, MS_BIND, NULL)) return -1;
    return mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL);
}

/* pid 2: the sandboxed program. stdin/stdout/stderr are 0..2 and the control socket is 3 (close-on-exec),
 * the rlimits are set: pid 1 arranged both before forking. */
static void program_main(const run_plan *pl) {
    int ctl = 3;
    (void)pl;
    /* the program's own mount table would show the host's devices and the binds' host paths; pid 1
     * masked its own, this process masks its own (and its main thread's) while it still may mount */
    static const char *const self_masked[] = SB_PROC_SELF_MASKED;
    static const char *const dirs[] = {"/proc/self/", "/proc/thread-self/"};
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof self_masked / sizeof self_masked[0]; i++) {
            char path[64];
            size_t dl = c_strlen(dirs[d]), fl = c_strlen(self_masked[i]);
            memcpy(path, dirs[d], dl);
            memcpy(path + dl, self_masked[i], fl + 1);
            /* a thread's directory has no mountstats */
            if (mask_file("/dev/null", path) && !(d == 1 && errno == ENOENT)) child_fail(ctl, ST_MASK_PROC);
        }
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

/* Default disposition for every signal and an empty mask: pid 1 is a copy of a process that may have
 * handlers installed (a namespace's init with a handler would run it on signals from inside, where
 * SIG_DFL makes the kernel drop them) and signals blocked (a mask survives execve into the program). */
static void reset_signals(void) {
    struct {
        unsigned long handler, flags, restorer, mask;
    } dfl = {0, 0, 0, 0}; /* the kernel's struct sigaction; handler 0 = SIG_DFL */
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
    unsigned long none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
}

/* /proc/1/cmdline would be the supervisor's argv (pid 1 is a copy of it, never exec'd). The strings
 * are in this copy's memory: overwrite them with a neutral name, and the environment with zeros. A
 * non-NUL last byte makes the kernel read the name up to its first NUL (as for setproctitle). */
static void scrub_argv(const sandbox_pool *pool) {
    if (!pool->arg_start) return;
    static const char name[] = "sandbox-init";
    char *a = (char *)pool->arg_start;
    size_t n = pool->arg_end - pool->arg_start;
    memset(a, 0, n);
    memcpy(a, name, n > sizeof name ? sizeof name : n - 1);
    if (n > sizeof name) a[n - 1] = ' ';
    if (pool->env_end > pool->env_start) memset((char *)pool->env_start, 0, pool->env_end - pool->env_start);
}

/* Touches stack below the current frame: once RLIMIT_AS is set (below the supervisor's address space,
 * which this copy has), the stack could not grow without failing. */
static __attribute__((noinline)) void touch_stack(void) {
    volatile char buf[64 << 10];
    for (size_t i = 0; i < sizeof buf; i += 4096) buf[i] = 0;
}

/* pid 1 in the new namespaces: set up the root, fork the program, reap, report its status. */
int sandbox_child_main(const run_plan *pl) {
    reset_signals(); /* the supervisor blocked every signal around clone; from here on they are default */
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
    /* our own session and process group: kill(0, ...) from the program must not reach the
     * supervisor's group (other sandboxes' processes, host processes), nor may SIGCONT, which the
     * kernel lets through within a session whatever the uids */
    if (setsid() < 0) child_fail(ctl, ST_SETSID);
    scrub_argv(pl->pool);
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
        case OP_BIND_DEV:
        case OP_BIND_FILE_RO: {
            int fd = open(op->dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
            if (fd < 0) child_fail(ctl, ST_DEVFILE);
            close(fd);
            if (mount(op->src, op->dst, NULL, MS_BIND, NULL)) child_fail(ctl, ST_BIND);
            /* devices stay writable (/dev/null); plain files are read-only */
            unsigned long ro = op->kind == OP_BIND_FILE_RO ? MS_RDONLY | MS_NODEV : 0;
            if (mount(NULL, op->dst, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC | ro, NULL))
                child_fail(ctl, ST_BIND_RO);
            break;
        }
        case OP_WRITE: {
            int fd = open(op->dst, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0 || sandbox_write_all_fd(fd, op->src, c_strlen(op->src))) child_fail(ctl, ST_WRITE_FILE);
            close(fd);
            break;
        }
        }
    }
    if (pl->program) {
        int fd = open(pl->program_path, O_CREAT | O_WRONLY | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 || sandbox_write_all_fd(fd, pl->program, pl->program_len)) child_fail(ctl, ST_WRITE_FILE);
        close(fd);
    }
    /* a fresh /proc for the new pid namespace; mounted before the old root goes, because the
     * kernel only lets a user namespace mount proc while a full proc is visible in its mount ns */
    if (mount("proc", pool->root_proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) child_fail(ctl, ST_PROC);
    for (int i = 0; i < pool->n_proc_masks; i++)
        if (mask_file(pool->root_null, pool->proc_masks[i])) child_fail(ctl, ST_MASK_PROC);
    if (syscall(SYS_pivot_root, pool->root, pool->root_old)) child_fail(ctl, ST_PIVOT);
    if (chdir("/")) child_fail(ctl, ST_PIVOT);
    if (umount2("/.old", MNT_DETACH)) child_fail(ctl, ST_UMOUNT_OLD);
    rmdir("/.old");
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
        child_fail(ctl, ST_ROOT_RO);
    if ((pl->clone_flags & CLONE_NEWUTS) && sethostname("sandbox", 7)) child_fail(ctl, ST_HOSTNAME);

    /* stdin from a sealed-in-memory file: no pipe to feed, so no writer can block or get SIGPIPE.
     * Made here, before the rlimits (RLIMIT_FSIZE would cap it) and the seccomp filter (which refuses
     * memfd_create to the program) */
    int in = -1;
    if (pl->stdin_len) {
        in = (int)syscall(SYS_memfd_create, "stdin", 0);
        if (in < 0 || sandbox_write_all_fd(in, pl->stdin_data, pl->stdin_len) || lseek(in, 0, SEEK_SET) != 0)
            child_fail(ctl, ST_STDIO);
    } else {
        in = open("/dev/null", O_RDONLY);
        if (in < 0) child_fail(ctl, ST_STDIO);
    }
    /* the program's stdio as 0..2 and the control socket as 3 here already, so that the program's
     * rlimits (RLIMIT_NOFILE may be 8) can be set on this process too: /proc/1/limits then shows
     * the run's limits, not the supervisor's. Everything moves out of 0..3 first, then into place */
    int fin = fcntl(in, F_DUPFD, 4), fout = fcntl(pl->fd_out, F_DUPFD, 4), ferr = fcntl(pl->fd_err, F_DUPFD, 4),
        fctl = fcntl(ctl, F_DUPFD, 4);
    if (fin < 0 || fout < 0 || ferr < 0 || fctl < 0) child_fail(ctl, ST_STDIO);
    ctl = fctl;
    if (dup2(fin, 0) < 0 || dup2(fout, 1) < 0 || dup2(ferr, 2) < 0 || dup3(fctl, 3, O_CLOEXEC) < 0)
        child_fail(ctl, ST_STDIO);
    ctl = 3;
    syscall(SYS_close_range, 4u, ~0u, 0);
    touch_stack();
    if (setrlimit(RLIMIT_AS, &pl->rl_as) || setrlimit(RLIMIT_CPU, &pl->rl_cpu) ||
        setrlimit(RLIMIT_NPROC, &pl->rl_nproc) || setrlimit(RLIMIT_FSIZE, &pl->rl_fsize) ||
        setrlimit(RLIMIT_NOFILE, &pl->rl_nofile) || setrlimit(RLIMIT_CORE, &pl->rl_core))
        child_fail(ctl, ST_RLIMIT);

    sb_msg ready = {MSG_READY, 0, 0, 0};
    if (send(ctl, &ready, sizeof ready, MSG_NOSIGNAL) != (ssize_t)sizeof ready) _exit(121);
    pid_t prog = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (prog < 0) child_fail(ctl, ST_FORK);
    if (prog == 0) program_main(pl);
    /* init: keep nothing the program's output could be held open by, no capabilities, not
     * dumpable (so the program cannot read our memory through /proc), then reap */
    close(0);
    close(1);
    close(2);
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
