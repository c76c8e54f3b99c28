/* tests/sandbox/test_sandbox_redteam.c — the holes a red-team pass found (issue 21), each checked from
 * the host side: a hostile program's signals against concurrent sandboxes of the same and of another
 * pool and against canary processes in the supervisor's process group; the host memory a run takes
 * (SysV shm, memfds, forked children) against the stated bound; what pid 1 and /proc show; the
 * read-only ld.so.cache; signal handlers and masks of the creating process not reaching the sandbox. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>

#include "rewards/sandbox/sandbox.h"

int register_redteam_suite(void);

static sandbox_pool *make_pool(int pool_size, int64_t wall_ms, int64_t memory_mb, int64_t max_procs) {
    sandbox_config c;
    sandbox_config_default(&c);
    c.pool_size = pool_size;
    c.wall_ms = wall_ms;
    if (memory_mb) c.memory_bytes = memory_mb << 20;
    if (max_procs) c.max_procs = max_procs;
    sandbox_pool *p = NULL;
    rlhf_error err = {0};
    if (sandbox_pool_create(&p, &c, &err)) fprintf(stderr, "sandbox pool: %s: %s\n", err.where, err.msg);
    return p;
}

static void run_prog(sandbox_pool *p, const char *prog, sandbox_result *r) {
    sandbox_request req = {.program = prog};
    CU_ASSERT_EQUAL(sandbox_pool_run(p, &req, r), 0);
    if (r->verdict != SANDBOX_PASS)
        fprintf(stderr, "run: %s (%s) stderr: %.300s\n", sandbox_verdict_name(r->verdict), r->reason, r->err);
}

/* ------------------------------------------------------------------ signals */

typedef struct loop_arg {
    sandbox_pool *p;
    const char *prog;
    volatile int *stop;
    int runs, passes;
} loop_arg;

static void *correct_loop(void *v) {
    loop_arg *a = v;
    while (!*a->stop || a->runs < 2) {
        sandbox_request req = {.program = a->prog};
        sandbox_result r;
        sandbox_pool_run(a->p, &req, &r);
        a->runs++;
        if (r.verdict == SANDBOX_PASS && r.out && !strcmp(r.out, "ok\n")) a->passes++;
        else fprintf(stderr, "correct program: %s (%s) out '%s'\n", sandbox_verdict_name(r.verdict), r.reason, r.out);
        sandbox_result_free(&r);
    }
    return NULL;
}

typedef struct hostile_arg {
    sandbox_pool *p;
    sandbox_result r;
    volatile int started, done;
} hostile_arg;

/* Ignores SIGTERM and friends, then for 3 s sends SIGTERM, SIGCONT, SIGUSR1 and SIGINT to its process
 * group (0) and to every process it may signal (-1), every millisecond. */
static const char hostile_prog[] =
    "import os, signal, time\n"
    "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):\n"
    "    signal.signal(s, signal.SIG_IGN)\n"
    "end = time.time() + 3.0\n"
    "n = 0\n"
    "while time.time() < end:\n"
    "    for sig in (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR1, signal.SIGINT):\n"
    "        for target in (0, -1):\n"
    "            try:\n"
    "                os.kill(target, sig)\n"
    "            except OSError:\n"
    "                pass\n"
    "    n += 1\n"
    "    time.sleep(0.001)\n"
    "print('rounds', n)\n";

static void *hostile_thread(void *v) {
    hostile_arg *h = v;
    sandbox_request req = {.program = hostile_prog};
    h->started = 1;
    sandbox_pool_run(h->p, &req, &h->r);
    h->done = 1;
    return NULL;
}

/* The host uid the pool's first slot maps to, read from inside (uid_map); -1 on failure. */
static long slot0_host_uid(sandbox_pool *p) {
    sandbox_result r;
    sandbox_request req = {.program = "print(open('/proc/self/uid_map').read().split()[1])\n"};
    sandbox_pool_run(p, &req, &r);
    long uid = r.verdict == SANDBOX_PASS ? strtol(r.out, NULL, 10) : -1;
    sandbox_result_free(&r);
    return uid;
}

static void test_signals_stay_inside(void) {
    sandbox_pool *a = make_pool(2, 20000, 0, 0), *b = make_pool(1, 20000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    long ua = slot0_host_uid(a), ub = slot0_host_uid(b);
    CU_ASSERT(ua >= 1000 && ub >= 1000);
    CU_ASSERT_NOT_EQUAL(ua, ub); /* every slot of every pool has its own host uid */
    /* canaries in this (the supervisor's) process group: one stopped root process, one running as the
     * host uid of the hostile program's slot */
    pid_t stopped = fork();
    if (stopped == 0) {
        for (;;) pause();
    }
    pid_t same_uid = fork();
    if (same_uid == 0) {
        if (syscall(SYS_setresgid, (gid_t)ua, (gid_t)ua, (gid_t)ua) || syscall(SYS_setresuid, (uid_t)ua, (uid_t)ua, (uid_t)ua))
            _exit(3);
        for (;;) pause();
    }
    int st;
    kill(stopped, SIGSTOP);
    CU_ASSERT_EQUAL(waitpid(stopped, &st, WUNTRACED), stopped);
    CU_ASSERT(WIFSTOPPED(st));

    hostile_arg h = {.p = a};
    pthread_t ht, ta, tb;
    volatile int stop = 0;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&ht, NULL, hostile_thread, &h), 0);
    usleep(200 * 1000); /* the hostile program takes slot 0 of pool a */
    static const char ok_prog[] = "import time\ntime.sleep(0.15)\nprint('ok')\n";
    loop_arg la = {a, ok_prog, &stop, 0, 0}, lb = {b, ok_prog, &stop, 0, 0};
    CU_ASSERT_EQUAL_FATAL(pthread_create(&ta, NULL, correct_loop, &la), 0);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&tb, NULL, correct_loop, &lb), 0);
    while (!h.done) usleep(20 * 1000);
    stop = 1;
    pthread_join(ht, NULL);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    fprintf(stderr, "hostile: %s %s; same pool %d/%d pass, other pool %d/%d pass\n", sandbox_verdict_name(h.r.verdict),
            h.r.out ? h.r.out : "", la.passes, la.runs, lb.passes, lb.runs);
    CU_ASSERT_EQUAL(h.r.verdict, SANDBOX_PASS);
    CU_ASSERT_PTR_NOT_NULL(h.r.out && strstr(h.r.out, "rounds"));
    CU_ASSERT(la.runs >= 2 && lb.runs >= 2);
    CU_ASSERT_EQUAL(la.passes, la.runs);
    CU_ASSERT_EQUAL(lb.passes, lb.runs);
    sandbox_result_free(&h.r);
    /* the canaries: alive, and the stopped one was never continued */
    CU_ASSERT_EQUAL(waitpid(same_uid, &st, WNOHANG), 0);
    CU_ASSERT_EQUAL(waitpid(stopped, &st, WNOHANG | WCONTINUED), 0);
    CU_ASSERT_EQUAL(kill(stopped, 0), 0);
    kill(same_uid, SIGKILL);
    kill(stopped, SIGKILL);
    waitpid(same_uid, &st, 0);
    waitpid(stopped, &st, 0);
    sandbox_pool_destroy(&a);
    sandbox_pool_destroy(&b);
}

static void test_two_pools_distinct_uids(void) {
    /* pools of one process never share a host uid, whatever order they are made and destroyed in */
    sandbox_pool *p1 = make_pool(2, 5000, 0, 0), *p2 = make_pool(2, 5000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p2);
    long u1 = slot0_host_uid(p1), u2 = slot0_host_uid(p2);
    CU_ASSERT(u1 >= 1000 && u2 >= 1000);
    CU_ASSERT(u1 + 2 <= u2 || u2 + 2 <= u1); /* the slot ranges do not overlap */
    sandbox_pool_destroy(&p1);
    sandbox_pool *p3 = make_pool(2, 5000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p3);
    long u3 = slot0_host_uid(p3);
    CU_ASSERT(u3 + 2 <= u2 || u2 + 2 <= u3);
    /* another process on the host: its pool's range does not overlap ours either */
    int fds[2];
    CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
    pid_t child = fork();
    if (child == 0) {
        close(fds[0]);
        sandbox_pool *cp = make_pool(2, 5000, 0, 0);
        long long base = cp ? (long long)sandbox_pool_host_uid_base(cp) : -1;
        ssize_t w = write(fds[1], &base, sizeof base);
        sandbox_pool_destroy(&cp);
        _exit(w == (ssize_t)sizeof base ? 0 : 1);
    }
    close(fds[1]);
    long long cb = -1;
    CU_ASSERT_EQUAL(read(fds[0], &cb, sizeof cb), (ssize_t)sizeof cb);
    close(fds[0]);
    int st;
    waitpid(child, &st, 0);
    long long b2 = (long long)sandbox_pool_host_uid_base(p2), b3 = (long long)sandbox_pool_host_uid_base(p3);
    CU_ASSERT(cb >= 100000);
    CU_ASSERT((cb + 2 <= b2 || b2 + 2 <= cb) && (cb + 2 <= b3 || b3 + 2 <= cb));
    /* an explicit base inside a live pool's range is refused, naming the key */
    sandbox_config c;
    sandbox_config_default(&c);
    c.pool_size = 1;
    c.host_uid_base = b2 + 1;
    sandbox_pool *clash = NULL;
    rlhf_error err = {0};
    CU_ASSERT(sandbox_pool_create(&clash, &c, &err) < 0);
    CU_ASSERT_PTR_NULL(clash);
    CU_ASSERT_STRING_EQUAL(err.where, "sandbox.host_uid_base");
    sandbox_pool_destroy(&p2);
    /* released with its pool: the same explicit range is free now */
    CU_ASSERT_EQUAL(sandbox_pool_create(&clash, &c, &err), 0);
    sandbox_pool_destroy(&clash);
    sandbox_pool_destroy(&p3);
}

/* ------------------------------------------------------------------ memory */

static long meminfo_kb(const char *key) {
    char buf[8192];
    int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *k = strstr(buf, key);
    return k ? strtol(k + strlen(key) + 1, NULL, 10) : -1;
}

/* Resident memory (kB) of the host's processes whose real uid is in [lo, hi). */
static long rss_of_uids_kb(long lo, long hi) {
    DIR *d = opendir("/proc");
    long sum = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[300], buf[4096];
        snprintf(path, sizeof path, "/proc/%s/status", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = 0;
        char *u = strstr(buf, "\nUid:"), *rss = strstr(buf, "\nVmRSS:");
        if (!u || !rss) continue;
        long uid = strtol(u + 5, NULL, 10);
        if (uid >= lo && uid < hi) sum += strtol(rss + 7, NULL, 10);
    }
    if (d) closedir(d);
    return sum;
}

typedef struct mem_watch {
    long uid_lo, uid_hi, shmem0_kb;
    volatile int stop;
    long peak_kb, peak_shmem_kb;
} mem_watch;

/* Samples, every 10 ms, the run's resident memory plus what it holds in shared memory (SysV shm and
 * memfds are Shmem and need not be mapped): the host memory the run takes. */
static void *watch_thread(void *v) {
    mem_watch *w = v;
    while (!w->stop) {
        long shm = meminfo_kb("Shmem:") - w->shmem0_kb;
        if (shm < 0) shm = 0;
        long total = rss_of_uids_kb(w->uid_lo, w->uid_hi) + shm;
        if (total > w->peak_kb) w->peak_kb = total;
        if (shm > w->peak_shmem_kb) w->peak_shmem_kb = shm;
        usleep(10 * 1000);
    }
    return NULL;
}

static const char shm_attack[] =
    "import ctypes, time\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.shmat.restype = ctypes.c_void_p\n"
    "libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]\n"
    "libc.shmdt.argtypes = [ctypes.c_void_p]\n"
    "got = 0\n"
    "for i in range(24):\n"
    "    sid = libc.shmget(0, 64 << 20, 0o1600)\n"
    "    if sid < 0:\n"
    "        print('shmget refused', ctypes.get_errno())\n"
    "        continue\n"
    "    addr = libc.shmat(sid, None, 0)\n"
    "    if addr in (None, ctypes.c_void_p(-1).value):\n"
    "        continue\n"
    "    ctypes.memset(addr, 1, 64 << 20)\n"
    "    libc.shmdt(addr)\n"
    "    got += 1\n"
    "print('segments', got)\n"
    "time.sleep(1.0)\n";

static const char memfd_attack[] =
    "import os, time\n"
    "chunk = b'\\x01' * (1 << 20)\n"
    "fds = []\n"
    "for i in range(50):\n"
    "    try:\n"
    "        fd = os.memfd_create('m%d' % i)\n"
    "        for k in range(15):\n"
    "            os.write(fd, chunk)\n"
    "        fds.append(fd)\n"
    "    except OSError as e:\n"
    "        print('memfd refused', e.errno)\n"
    "        break\n"
    "print('memfds', len(fds))\n"
    "time.sleep(1.0)\n";

static const char fork_attack[] =
    "import os, time\n"
    "kids = 0\n"
    "for i in range(8):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError:\n"
    "        break\n"
    "    if pid == 0:\n"
    "        try:\n"
    "            x = b'\\x01' * (100 << 20)\n"
    "        except MemoryError:\n"
    "            pass\n"
    "        time.sleep(1.5)\n"
    "        os._exit(0)\n"
    "    kids += 1\n"
    "print('children', kids)\n"
    "for i in range(kids):\n"
    "    os.wait()\n";

/* A run of `attack` in a pool with memory_mb 128 and `max_procs`: the host memory it takes stays under
 * the bound the pool states, and nothing of it is left after the run. */
static void memory_attack(const char *attack, const char *name, int64_t max_procs) {
    sandbox_config c;
    sandbox_config_default(&c);
    c.pool_size = 1;
    c.wall_ms = 15000;
    c.memory_bytes = 128ll << 20;
    c.max_procs = max_procs;
    sandbox_pool *p = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sandbox_pool_create(&p, &c, &err), 0);
    long uid = slot0_host_uid(p);
    CU_ASSERT_FATAL(uid >= 1000);
    /* the bound: every process at its address-space limit, /tmp full, the root tmpfs and SysV shm */
    long bound_kb = (long)((c.max_procs * c.memory_bytes + c.tmp_bytes + (2 << 20)) >> 10);
    /* the host's Shmem also moves with other processes' /dev/shm files: an attempt whose figures are
     * over the bound is repeated, up to 3 times (the old sandbox took 1.5 GiB in every attempt) */
    for (int attempt = 1; attempt <= 3; attempt++) {
        mem_watch w = {.uid_lo = uid, .uid_hi = uid + 1, .shmem0_kb = meminfo_kb("Shmem:")};
        pthread_t t;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, watch_thread, &w), 0);
        sandbox_result r;
        sandbox_request req = {.program = attack};
        sandbox_pool_run(p, &req, &r);
        w.stop = 1;
        pthread_join(t, NULL);
        long after_kb = meminfo_kb("Shmem:") - w.shmem0_kb;
        fprintf(stderr, "%s (attempt %d): %s (%s) '%.80s'; peak %ld MiB (shared %ld MiB), bound %ld MiB, shared after %ld MiB\n",
                name, attempt, sandbox_verdict_name(r.verdict), r.reason, r.out ? r.out : "", w.peak_kb >> 10,
                w.peak_shmem_kb >> 10, bound_kb >> 10, after_kb >> 10);
        int last = attempt == 3 || (w.peak_kb < bound_kb && after_kb < 256 << 10);
        if (last) {
            CU_ASSERT_NOT_EQUAL(r.verdict, SANDBOX_SANDBOX_ERROR);
            CU_ASSERT(w.peak_kb > 0); /* the watch saw the run */
            CU_ASSERT(w.peak_kb < bound_kb);
            CU_ASSERT(after_kb < 256 << 10); /* nothing held after the run */
        }
        sandbox_result_free(&r);
        if (last) break;
    }
    sandbox_pool_destroy(&p);
}

/* bound 3 x 128 + 16 + 2 = 402 MiB */
static void test_memory_sysv_shm(void) { memory_attack(shm_attack, "24 x 64 MiB SysV shm", 3); }
static void test_memory_memfd(void) { memory_attack(memfd_attack, "50 x 15 MiB memfds", 3); }
/* bound 6 x 128 + 16 + 2 = 786 MiB; pid 1 and the program count, so 4 children get to allocate */
static void test_memory_fork(void) { memory_attack(fork_attack, "8 children x 100 MiB", 6); }

static void test_memory_bound_validated(void) {
    /* max_procs x memory_mb is the bound a run may take; a config whose bound exceeds the host's memory
     * is refused, naming the bound */
    sandbox_config c;
    sandbox_config_default(&c);
    rlhf_error err = {0};
    json_t *j = json_loads("{\"memory_mb\": 65536, \"max_procs\": 4096}", 0, NULL);
    CU_ASSERT(sandbox_config_parse(&c, j, "rewards[0].sandbox", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "max_procs"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "memory_mb"));
    json_decref(j);
    /* the default config fits this host */
    sandbox_config_default(&c);
    j = json_loads("{}", 0, NULL);
    CU_ASSERT_EQUAL(sandbox_config_parse(&c, j, "sb", &err), 0);
    json_decref(j);
}

/* ------------------------------------------------------------------ what the sandbox shows */

static void test_pid1_cmdline_and_limits(void) {
    sandbox_pool *p = make_pool(1, 5000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    sandbox_result r;
    run_prog(p,
             "c = open('/proc/1/cmdline', 'rb').read()\n"
             "print('cmdline', c)\n"
             "a, b = open('/proc/1/limits').read(), open('/proc/self/limits').read()\n"
             "print('limits equal', a == b)\n"
             "import resource\n"
             "print('prlimit AS', resource.prlimit(1, resource.RLIMIT_AS) == resource.getrlimit(resource.RLIMIT_AS))\n",
             &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    /* not this process's argv: neither its name nor the word "test" */
    char self[256] = "";
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) self[n] = 0;
    const char *base = strrchr(self, '/');
    CU_ASSERT_PTR_NULL(strstr(r.out, base ? base + 1 : "test_sandbox"));
    CU_ASSERT_PTR_NULL(strstr(r.out, "test_"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "cmdline b'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "limits equal True"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "prlimit AS True"));
    sandbox_result_free(&r);
    sandbox_pool_destroy(&p);
}

static char *host_file(const char *path) {
    static char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    buf[0] = 0;
    if (fd < 0) return buf;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    return buf;
}

static void test_host_proc_masked(void) {
    sandbox_pool *p = make_pool(1, 5000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    sandbox_result r;
    run_prog(p,
             "import os\n"
             "for f in ['/proc/cmdline', '/proc/sys/kernel/random/boot_id', '/proc/self/mountinfo',\n"
             "          '/proc/1/mountinfo', '/proc/self/mounts', '/proc/self/mountstats']:\n"
             "    try:\n"
             "        print(f, repr(open(f).read()))\n"
             "    except OSError as e:\n"
             "        print(f, 'unreadable', e.errno)\n",
             &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    char boot_id[64], cmdline[64];
    snprintf(boot_id, sizeof boot_id, "%s", host_file("/proc/sys/kernel/random/boot_id"));
    snprintf(cmdline, sizeof cmdline, "%.40s", host_file("/proc/cmdline"));
    CU_ASSERT(strlen(boot_id) > 8 && strlen(cmdline) > 4);
    CU_ASSERT_PTR_NULL(strstr(r.out, boot_id));
    CU_ASSERT_PTR_NULL(strstr(r.out, cmdline));
    /* the mount table names the host's devices and paths (ext4, /dev/..., the binds' host paths) */
    CU_ASSERT_PTR_NULL(strstr(r.out, "ext4"));
    CU_ASSERT_PTR_NULL(strstr(r.out, "/usr /usr"));
    CU_ASSERT_PTR_NULL(strstr(r.out, "devtmpfs"));
    sandbox_result_free(&r);
    sandbox_pool_destroy(&p);
}

static void test_ld_so_cache_read_only(void) {
    sandbox_pool *p = make_pool(1, 5000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    sandbox_result r;
    run_prog(p,
             "import os\n"
             "for f in ['/etc/ld.so.cache', '/dev/null']:\n"
             "    if os.path.exists(f):\n"
             "        print(f, 'ro' if os.statvfs(f).f_flag & os.ST_RDONLY else 'rw')\n",
             &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    if (access("/etc/ld.so.cache", F_OK) == 0) CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "/etc/ld.so.cache ro"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "/dev/null rw")); /* devices stay writable */
    sandbox_result_free(&r);
    sandbox_pool_destroy(&p);
}

static void on_signal(int sig) { (void)sig; }

static void test_handlers_not_inherited(void) {
    /* the creating process has handlers and a blocked signal; neither reaches pid 1 or the program */
    struct sigaction sa = {0}, old_int, old_usr1, old_term, old_pipe;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGUSR1, &sa, &old_usr1);
    sigaction(SIGTERM, &sa, &old_term);
    struct sigaction ign = {0};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, &old_pipe);
    sigset_t block, old_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &block, &old_mask);
    sandbox_pool *p = make_pool(1, 5000, 0, 0);
    CU_ASSERT_PTR_NOT_NULL(p);
    sandbox_result r = {0};
    if (p) {
        run_prog(p,
                 "import os, signal\n"
                 "def fields(pid):\n"
                 "    d = {}\n"
                 "    for line in open('/proc/%s/status' % pid):\n"
                 "        k, _, v = line.partition(':')\n"
                 "        if k in ('SigBlk', 'SigIgn', 'SigCgt'):\n"
                 "            d[k] = int(v, 16)\n"
                 "    return d\n"
                 "print('init', fields(1))\n"
                 "print('self blocked', fields('self')['SigBlk'])\n"
                 "os.kill(1, signal.SIGTERM)\n"
                 "os.kill(1, signal.SIGUSR1)\n"
                 "print('done')\n",
                 &r);
        CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
        CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "init {'SigBlk': 0, 'SigIgn': 0, 'SigCgt': 0}"));
        CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "self blocked 0\n"));
        CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "done"));
        sandbox_result_free(&r);
        sandbox_pool_destroy(&p);
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
}

int register_redteam_suite(void) {
    CU_pSuite s = CU_add_suite("sandbox_redteam", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "signals to group 0 and -1 reach no other sandbox and no host process", test_signals_stay_inside);
    CU_add_test(s, "pools of one process and of two processes have distinct host uids", test_two_pools_distinct_uids);
    CU_add_test(s, "24 x 64 MiB SysV shm stays under the run's memory bound", test_memory_sysv_shm);
    CU_add_test(s, "50 memfds stay under the run's memory bound", test_memory_memfd);
    CU_add_test(s, "8 forked children stay under the run's memory bound", test_memory_fork);
    CU_add_test(s, "max_procs x memory_mb over the host's memory is refused", test_memory_bound_validated);
    CU_add_test(s, "pid 1 shows a neutral argv and the program's limits", test_pid1_cmdline_and_limits);
    CU_add_test(s, "host /proc/cmdline, boot_id and the mount table are masked", test_host_proc_masked);
    CU_add_test(s, "/etc/ld.so.cache is read-only", test_ld_so_cache_read_only);
    CU_add_test(s, "signal handlers and mask of the creator do not reach the sandbox", test_handlers_not_inherited);
    return 0;
}
