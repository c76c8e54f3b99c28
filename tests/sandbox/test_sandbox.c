/* tests/sandbox/test_sandbox.c — the attack suite: each hostile program runs in the sandbox, gets
 * its expected verdict, the runner returns within its limit, and the host is checked afterwards
 * (no process left under the sandbox uids, files unchanged, listener untouched, secrets unseen). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <limits.h>

#include "rewards/sandbox/sandbox.h"
#include "tests/test_paths.h"

/* The project root (the tests chdir there at start) and a private scratch directory. */
static char root_dir[512], scratch_dir[64]; /* sized for the paths the tests build from them */
static const char *rt_root(void) { return root_dir; }
static const char *rt_scratch(void) { return scratch_dir; }

#define WALL_MS 1500

static sandbox_pool *pool;
static sandbox_config cfg;
static char secret_dir[200], secret_file[256], secret_text[64], env_secret[64];

/* Processes on the host whose real uid is one of the sandbox slots' uids. */
static int host_sandbox_procs(void) {
    DIR *d = opendir("/proc");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[300], buf[4096];
        snprintf(path, sizeof path, "/proc/%s/status", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = 0;
        char *u = strstr(buf, "\nUid:");
        if (!u) continue;
        long uid = strtol(u + 5, NULL, 10);
        long base = (long)sandbox_pool_host_uid_base(pool);
        if (uid >= base && uid < base + cfg.pool_size) n++;
    }
    if (d) closedir(d);
    return n;
}

static int suite_init(void) {
    snprintf(secret_dir, sizeof secret_dir, "%s/visible", rt_scratch());
    snprintf(secret_file, sizeof secret_file, "%s/secret.txt", secret_dir);
    snprintf(secret_text, sizeof secret_text, "TOPSECRET-%d", (int)getpid());
    snprintf(env_secret, sizeof env_secret, "envsecret-%d", (int)getpid());
    if (mkdir(secret_dir, 0755)) return -1;
    chmod(rt_scratch(), 0755); /* so the bind target is reachable; the file itself is 0600 root */
    int fd = open(secret_file, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (fd < 0 || write(fd, secret_text, strlen(secret_text)) < 0) return -1;
    close(fd);
    setenv("RLHF_ATTACK_SECRET", env_secret, 1); /* must never be visible inside */
    sandbox_config_default(&cfg);
    cfg.wall_ms = WALL_MS;
    cfg.pool_size = 2;
    snprintf(cfg.binds[0], sizeof cfg.binds[0], "%s", secret_dir);
    cfg.n_binds = 1;
    rlhf_error err = {0};
    if (sandbox_pool_create(&pool, &cfg, &err)) {
        fprintf(stderr, "sandbox: %s: %s\n", err.where, err.msg);
        return -1;
    }
    return 0;
}

static int suite_clean(void) {
    sandbox_pool_destroy(&pool);
    unsetenv("RLHF_ATTACK_SECRET");
    return 0;
}

/* Runs `program` with stdin `in`; checks the runner came back within the limit plus grace and that
 * nothing is left running on the host under the sandbox uids. */
static void run(const char *program, const char *in, sandbox_result *r) {
    sandbox_request req = {.program = program, .stdin_data = in, .stdin_len = in ? strlen(in) : 0};
    double t0 = rlhf_now();
    CU_ASSERT_EQUAL(sandbox_pool_run(pool, &req, r), 0);
    double dt = (rlhf_now() - t0) * 1000;
    CU_ASSERT(dt < WALL_MS + 2500);
    CU_ASSERT_EQUAL(host_sandbox_procs(), 0);
    if (r->verdict == SANDBOX_SANDBOX_ERROR) fprintf(stderr, "sandbox error: %s\n", r->reason);
    CU_ASSERT_NOT_EQUAL(r->verdict, SANDBOX_SANDBOX_ERROR);
}

static void test_probe_and_identity(void) {
    const char *f = sandbox_pool_features(pool);
    CU_ASSERT_PTR_NOT_NULL(strstr(f, "netns"));
    CU_ASSERT_PTR_NOT_NULL(strstr(f, "seccomp"));
    CU_ASSERT_PTR_NULL(strstr(f, "DEGRADED"));
    sandbox_result r;
    run("import os\nprint(os.getuid(), os.getgid(), os.getpid(), sorted(os.listdir('/')))\n"
        "print(open('/proc/self/uid_map').read().split())\n",
        NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "65534 65534 2 "));
    CU_ASSERT_PTR_NULL(strstr(r.out, "'root'"));
    CU_ASSERT_PTR_NULL(strstr(r.out, "'work'"));
    /* uid 65534 inside maps to this pool's unprivileged host uid (one per slot), never 0 */
    char m0[64], m1[64];
    long long base = (long long)sandbox_pool_host_uid_base(pool);
    snprintf(m0, sizeof m0, "['65534', '%lld', '1']", base);
    snprintf(m1, sizeof m1, "['65534', '%lld', '1']", base + 1);
    CU_ASSERT(base >= 100000);
    CU_ASSERT(strstr(r.out, m0) || strstr(r.out, m1));
    sandbox_result_free(&r);
}

static void test_infinite_loop(void) {
    sandbox_result r;
    run("while True:\n    pass\n", NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_TIMEOUT);
    sandbox_result_free(&r);
}

static void test_sleep(void) {
    sandbox_result r;
    run("import time\ntime.sleep(60)\n", NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_TIMEOUT);
    sandbox_result_free(&r);
}

static void test_alloc_2g(void) {
    sandbox_result r;
    run("x = bytearray(2 << 30)\nprint('allocated', len(x))\n", NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_MEMORY);
    CU_ASSERT_PTR_NULL(strstr(r.out, "allocated"));
    sandbox_result_free(&r);
}

static void test_fork_loop_3000(void) {
    sandbox_result r;
    run("import os, time\n"
        "n = 0\n"
        "for i in range(3000):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print('forked', n)\n",
        NULL, &r);
    /* RLIMIT_NPROC stops it long before 3000: fork raises, the program dies with an error */
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_RUNTIME_ERROR);
    CU_ASSERT_PTR_NULL(strstr(r.out, "forked 3000"));
    sandbox_result_free(&r);
}

static void test_fork_bomb(void) {
    sandbox_result r;
    run("import os\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n",
        NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_TIMEOUT);
    sandbox_result_free(&r);
    /* the pool still works afterwards (no slot left starved by leftover processes) */
    run("print('alive')\n", NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    sandbox_result_free(&r);
}

static void test_write_100m(void) {
    char prog[512], host_path[128];
    snprintf(host_path, sizeof host_path, "/tmp/rlhf-big-%d", (int)getpid());
    snprintf(prog, sizeof prog,
             "chunk = b'x' * (1 << 20)\n"
             "with open('%s', 'wb') as f:\n"
             "    for i in range(100):\n"
             "        f.write(chunk)\n"
             "print('wrote 100 MiB')\n", host_path);
    sandbox_result r;
    run(prog, NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_RUNTIME_ERROR); /* RLIMIT_FSIZE / the /tmp tmpfs size */
    CU_ASSERT_PTR_NULL(strstr(r.out, "wrote 100 MiB"));
    CU_ASSERT_NOT_EQUAL(access(host_path, F_OK), 0);
    sandbox_result_free(&r);
}

static void test_print_50m(void) {
    sandbox_result r;
    run("import sys\ns = 'y' * (1 << 20)\nfor i in range(50):\n    sys.stdout.write(s)\n", NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_OUTPUT_LIMIT);
    CU_ASSERT(r.out_len <= (size_t)cfg.stdout_cap);
    sandbox_result_free(&r);
}

static void test_read_root_only_file(void) {
    char prog[2048];
    snprintf(prog, sizeof prog,
             "import os\n"
             "print('visible', os.path.exists('%s'))\n"
             "try:\n"
             "    print(open('%s').read())\n"
             "except Exception as e:\n"
             "    print('denied', type(e).__name__)\n", secret_file, secret_file);
    sandbox_result r;
    run(prog, NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "visible True")); /* bound in, so the check is the uid, not absence */
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "denied PermissionError"));
    CU_ASSERT_PTR_NULL(strstr(r.out, secret_text));
    sandbox_result_free(&r);
}

static void test_parent_environ(void) {
    sandbox_result r;
    run("import os\n"
        "print('env', dict(os.environ))\n"
        "for p in ['/proc/%d/environ' % os.getppid(), '/proc/1/environ', '/proc/self/environ']:\n"
        "    try:\n"
        "        print(p, open(p, 'rb').read())\n"
        "    except Exception as e:\n"
        "        print(p, 'denied', type(e).__name__)\n"
        "for d in os.listdir('/proc'):\n"
        "    if d.isdigit():\n"
        "        try:\n"
        "            print(d, open('/proc/%s/environ' % d, 'rb').read())\n"
        "        except Exception as e:\n"
        "            print(d, 'denied')\n",
        NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "/proc/1/environ denied"));
    CU_ASSERT_PTR_NULL(strstr(r.out, env_secret));
    CU_ASSERT_PTR_NULL(strstr(r.out, "RLHF_ATTACK_SECRET"));
    sandbox_result_free(&r);
}

static void test_connect_host_loopback(void) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    CU_ASSERT_EQUAL_FATAL(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
    CU_ASSERT_EQUAL_FATAL(listen(ls, 8), 0);
    getsockname(ls, (struct sockaddr *)&a, &al);
    char in[32];
    snprintf(in, sizeof in, "%d", ntohs(a.sin_port));
    sandbox_result r;
    run("import socket, sys\n"
        "port = int(sys.stdin.read())\n"
        "try:\n"
        "    s = socket.create_connection(('127.0.0.1', port), timeout=1)\n"
        "    s.sendall(b'escaped')\n"
        "    print('connected')\n"
        "except Exception as e:\n"
        "    print('blocked', type(e).__name__)\n",
        in, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "blocked"));
    int c = accept(ls, NULL, NULL);
    CU_ASSERT(c < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)); /* nobody ever reached the listener */
    if (c >= 0) close(c);
    close(ls);
    sandbox_result_free(&r);
}

static void test_write_host_paths(void) {
    char in[2048], p1[600], p2[600], p3[600];
    snprintf(p1, sizeof p1, "/tmp/rlhf-escape-%d", (int)getpid());
    snprintf(p2, sizeof p2, "%s/rlhf-escape-%d", rt_root(), (int)getpid());
    snprintf(p3, sizeof p3, "/usr/rlhf-escape-%d", (int)getpid());
    snprintf(in, sizeof in, "%s\n%s\n%s\n", p1, p2, p3);
    sandbox_result r;
    run("import sys\n"
        "for p in sys.stdin.read().split():\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('wrote', p)\n"
        "    except Exception as e:\n"
        "        print('failed', p, type(e).__name__)\n",
        in, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT_NOT_EQUAL(access(p1, F_OK), 0); /* the sandbox's /tmp is its own tmpfs */
    CU_ASSERT_NOT_EQUAL(access(p2, F_OK), 0);
    CU_ASSERT_NOT_EQUAL(access(p3, F_OK), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "failed /usr/"));
    sandbox_result_free(&r);
}

static void test_setsid_daemon(void) {
    sandbox_result r;
    run("import os, time, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "        print('daemon still here')\n"
        "        os._exit(0)\n"
        "    os._exit(0)\n"
        "print('parent done')\n",
        NULL, &r);
    /* the daemon holds stdout open, yet the runner returns as soon as the program exits */
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT(r.wall_ms < WALL_MS);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "parent done"));
    sandbox_result_free(&r);
}

static void test_host_processes(void) {
    pid_t victim = fork();
    if (victim == 0) {
        pause();
        _exit(0);
    }
    char in[32];
    snprintf(in, sizeof in, "%d", (int)victim);
    sandbox_result r;
    run("import os, signal, sys\n"
        "victim = int(sys.stdin.read())\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print('count', len(pids))\n"
        "try:\n"
        "    os.kill(victim, signal.SIGKILL)\n"
        "    print('signalled victim')\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
        "os.kill(1, signal.SIGKILL)\n" /* the namespace's init ignores it; were it to die, so would we */
        "print('init survived')\n"
        "sys.stdout.flush()\n"
        "os.kill(-1, signal.SIGKILL)\n",
        in, &r);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "count 2"));  /* only init and the program are visible */
    CU_ASSERT_PTR_NULL(strstr(r.out, "signalled victim")); /* the host pid does not exist in here */
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "init survived"));
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_RUNTIME_ERROR); /* kill(-1) took the program itself down */
    CU_ASSERT_EQUAL(kill(victim, 0), 0);               /* and the host process is alive */
    int st;
    CU_ASSERT_EQUAL(waitpid(victim, &st, WNOHANG), 0);
    kill(victim, SIGKILL);
    waitpid(victim, &st, 0);
    sandbox_result_free(&r);
}

static void test_nested_userns(void) {
    sandbox_result r;
    run("import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.unshare(0x10000000)\n"
        "print('unshare', rc, ctypes.get_errno())\n"
        "rc = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\n"
        "print('clone', rc, ctypes.get_errno())\n"
        "if rc == 0:\n"
        "    os._exit(0)\n",
        NULL, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "unshare -1 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "clone -1 1\n"));
    sandbox_result_free(&r);
}

static void test_stdin_and_batch(void) {
    sandbox_request req[5];
    sandbox_result res[5];
    char ins[5][16];
    for (int i = 0; i < 5; i++) {
        snprintf(ins[i], sizeof ins[i], "%d\n", i * 7);
        req[i] = (sandbox_request){.program = "print(int(input()) * 2)\n", .stdin_data = ins[i], .stdin_len = strlen(ins[i])};
    }
    CU_ASSERT_EQUAL(sandbox_pool_run_batch(pool, req, 5, res), 0);
    for (int i = 0; i < 5; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d\n", i * 14);
        CU_ASSERT_EQUAL(res[i].verdict, SANDBOX_PASS);
        CU_ASSERT_STRING_EQUAL(res[i].out, want);
        sandbox_result_free(&res[i]);
    }
}

static void test_setup_fault_is_sandbox_error(void) {
    /* FAULT INJECTION: a kernel refusal at a setup step must surface as SANDBOX_ERROR naming the step */
    sandbox_pool *fp = NULL;
    sandbox_config c = cfg;
    c.n_binds = 0;
    c.fault_fail_step = SANDBOX_FAULT_STEP_PIVOT_ROOT;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sandbox_pool_create(&fp, &c, &err), 0); /* the probe itself never injects */
    sandbox_request req = {.program = "print(1)\n"};
    sandbox_result r;
    sandbox_pool_run(fp, &req, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_SANDBOX_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.reason, "pivot_root"));
    sandbox_result_free(&r);
    sandbox_pool_destroy(&fp);
}

static void test_probe_refuses_missing_layer(void) {
    /* FAULT INJECTION: a host that cannot load seccomp filters. Refused by default, naming what is
     * missing; accepted (and reported as degraded) only when the config allows it. */
    sandbox_config c;
    sandbox_config_default(&c);
    c.pool_size = 1;
    c.fault_fail_step = SANDBOX_FAULT_STEP_SECCOMP;
    rlhf_error err = {0};
    sandbox_pool *p = NULL;
    CU_ASSERT_EQUAL(sandbox_pool_create(&p, &c, &err), RLHF_EUNSUPPORTED);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "does not allow: seccomp"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "allow_degraded"));
    c.allow_degraded = SANDBOX_F_SECCOMP;
    CU_ASSERT_EQUAL_FATAL(sandbox_pool_create(&p, &c, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(sandbox_pool_features(p), "DEGRADED"));
    CU_ASSERT_PTR_NULL(strstr(sandbox_pool_features(p), "+seccomp"));
    sandbox_request req = {.program = "print('ran')\n"};
    sandbox_result r;
    sandbox_pool_run(p, &req, &r);
    CU_ASSERT_EQUAL(r.verdict, SANDBOX_PASS);
    sandbox_result_free(&r);
    sandbox_pool_destroy(&p);
}

static void test_config_refusals(void) {
    sandbox_config c;
    sandbox_config_default(&c);
    rlhf_error err = {0};
    sandbox_pool *p = NULL;
    snprintf(c.interpreter, sizeof c.interpreter, "/nonexistent/python");
    CU_ASSERT(sandbox_pool_create(&p, &c, &err) < 0);
    CU_ASSERT_STRING_EQUAL(err.where, "sandbox.interpreter");
    sandbox_config_default(&c);
    snprintf(c.interpreter, sizeof c.interpreter, "%s", "/proc/self/exe");
    CU_ASSERT(sandbox_pool_create(&p, &c, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "outside the sandbox"));
    json_t *j = json_loads("{\"wall_ms\": 100, \"memroy_mb\": 5}", 0, NULL);
    CU_ASSERT(sandbox_config_parse(&c, j, "rewards[0].sandbox", &err) < 0);
    CU_ASSERT_STRING_EQUAL(err.where, "rewards[0].sandbox.memroy_mb");
    json_decref(j);
    j = json_loads("{\"allow_degraded\": [\"userns\"]}", 0, NULL);
    CU_ASSERT(sandbox_config_parse(&c, j, "sb", &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "cannot be degraded"));
    json_decref(j);
    CU_ASSERT_PTR_NULL(p);
}

int register_redteam_suite(void); /* tests/sandbox/test_sandbox_redteam.c */

static void cleanup_scratch(void) {
    if (scratch_dir[0]) test_remove_tree(scratch_dir);
}

int register_suites(void) {
    if (snprintf(root_dir, sizeof root_dir, "%s", RLHF_SOURCE_ROOT) >= (int)sizeof root_dir) return -1;
    if (chdir(root_dir)) return -1;
    snprintf(scratch_dir, sizeof scratch_dir, "/tmp/rlhf-test-sandbox-XXXXXX");
    if (!mkdtemp(scratch_dir)) return -1;
    atexit(cleanup_scratch);
    CU_pSuite s = CU_add_suite("sandbox", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "probe: all layers; uid 65534 inside, unprivileged outside", test_probe_and_identity);
    CU_add_test(s, "infinite loop -> timeout", test_infinite_loop);
    CU_add_test(s, "sleep -> timeout", test_sleep);
    CU_add_test(s, "2 GiB allocation -> memory", test_alloc_2g);
    CU_add_test(s, "fork loop of 3000 -> runtime_error", test_fork_loop_3000);
    CU_add_test(s, "exponential fork bomb -> timeout, pool still works", test_fork_bomb);
    CU_add_test(s, "writing 100 MiB -> runtime_error, nothing on host", test_write_100m);
    CU_add_test(s, "printing 50 MiB -> output_limit", test_print_50m);
    CU_add_test(s, "reading a root-only 0600 file is denied", test_read_root_only_file);
    CU_add_test(s, "parent environ and host env invisible", test_parent_environ);
    CU_add_test(s, "connecting to host 127.0.0.1 listener blocked", test_connect_host_loopback);
    CU_add_test(s, "writing host /tmp, project dir, /usr has no effect", test_write_host_paths);
    CU_add_test(s, "double-fork setsid daemon does not hold the runner", test_setsid_daemon);
    CU_add_test(s, "host processes invisible and unsignalled", test_host_processes);
    CU_add_test(s, "nested user namespace refused", test_nested_userns);
    CU_add_test(s, "stdin and batch through the pool", test_stdin_and_batch);
    CU_add_test(s, "setup failure (fault injection) is sandbox_error", test_setup_fault_is_sandbox_error);
    CU_add_test(s, "probe refuses a missing layer unless allowed degraded", test_probe_refuses_missing_layer);
    CU_add_test(s, "bad sandbox configs refused", test_config_refusals);
    return register_redteam_suite();
}
