/* tests/e2e/test_multihost.c — generators on other hosts (issue 18), in network namespaces this suite
 * creates itself: "host A" (rlhf-mh<pid>-a: a bridge at 192.0.2.1/24) and hosts B and C (…-b, …-c:
 * 192.0.2.2 and .3), joined by veth pairs created directly inside the namespaces. 192.0.2.0/24 is the
 * documentation range, assigned only inside them, and no link reaches the host's own namespace, so no
 * packet leaves. Everything made is removed at the end, also after a failure (and namespaces left by a
 * test process that was killed are removed by the next run: the pid is in their names). CI runs as root;
 * without `ip netns` the suite FAILS, saying why — a skip would count as a pass. (MH_KEEP=1 in the
 * environment keeps the scratch directory with every log after a passing run.)
 *
 *   keygen:                 `rlhf keygen --out FILE` writes a 0600 key pair and FILE.pub; stdout/stderr
 *                           hold the public key and the path and no 8-character piece of the secret; an
 *                           existing FILE is refused and left as it was; no --out is a usage error.
 *   bad_authorized_key:     a malformed broker.authorized_keys entry stops the broker with an error naming
 *                           broker.authorized_keys[1].public (exit 2), before it binds; `rlhf run` with
 *                           authorized keys and no tcp:// broker.endpoint stops before starting anything.
 *   insecure_bind:          `rlhf broker --insecure` on a non-loopback address is refused in one line (exit
 *                           2, nothing written); with broker.insecure: true it starts (in host A).
 *   trains_across_hosts:    `rlhf run` in A with generators.count 0 and CURVE on tcp://192.0.2.1; the
 *                           generators of B and C join with `rlhf generator --connect --key --server-key`
 *                           (keys from `rlhf keygen`, listed in broker.authorized_keys); a raw DEALER
 *                           without CURVE and one with an unlisted key get no answer within 3 s while one
 *                           with B's key gets WELCOME; a generator with an unlisted key never connects; the
 *                           refusals are in the broker's auth/handshakes_denied (unlisted keys) and
 *                           auth/handshakes_failed (no CURVE); kill -9 of B's generator
 *                           mid-run: the broker declares it dead and releases its prompts, C's generator
 *                           goes on and the run finishes every step. A key file others can read is
 *                           refused (exit 2, naming it); --key without --server-key is a usage error. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "broker/wire.h"
#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

#define MH_ENDPOINT "tcp://192.0.2.1:5555"

static char g_dir[64];
static char g_rlhf[1024];
static char g_ip[64];
static char g_ns[3][40];    /* host A (broker), B, C */
static int g_ns_made[3];
static char g_ns_error[512]; /* why the namespaces could not be made ("" = they were) */
static pid_t g_kids[16];     /* everything this suite started, stopped at cleanup whatever happened */
static int g_nkids;

static pid_t track(pid_t p) {
    if (p > 0 && g_nkids < (int)(sizeof g_kids / sizeof g_kids[0])) g_kids[g_nkids++] = p;
    return p;
}

static void stop_kids(void) {
    for (int i = 0; i < g_nkids; i++)
        if (g_kids[i] > 0 && waitpid(g_kids[i], NULL, WNOHANG) == 0) test_proc_stop(g_kids[i], 10);
    g_nkids = 0;
}

/* `ip ARGS...` with its output in g_dir/ip.out; its exit status. */
static int run_ip(const char *const *args) {
    char out[128];
    snprintf(out, sizeof out, "%s/ip.out", g_dir);
    test_proc_opts o = {.out = out, .err = out, .append = 1};
    return test_proc_run_args(g_ip, "ip", args, &o, 30);
}

#define IP(...) run_ip((const char *const[]){__VA_ARGS__, NULL})

static void netns_teardown(void) {
    for (int i = 0; i < 3; i++)
        if (g_ns_made[i]) {
            if (IP("netns", "del", g_ns[i]) != 0) fprintf(stderr, "\ncannot remove network namespace %s\n", g_ns[i]);
            g_ns_made[i] = 0;
        }
}

/* Namespaces rlhf-mh<pid>-? of test processes that no longer exist (killed before their cleanup). */
static void remove_stale_namespaces(void) {
    DIR *d = opendir("/run/netns");
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int pid = 0;
        char which = 0;
        if (sscanf(e->d_name, "rlhf-mh%d-%c", &pid, &which) != 2) continue;
        if (pid <= 0 || pid == (int)getpid() || kill(pid, 0) == 0 || errno != ESRCH) continue;
        char name[64];
        snprintf(name, sizeof name, "%.60s", e->d_name);
        IP("netns", "del", name);
    }
    closedir(d);
}

/* A with a bridge at 192.0.2.1/24; B and C each one end of a veth pair whose other end is on the bridge. */
static int netns_setup(void) {
    const char *cands[] = {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"};
    for (size_t i = 0; i < 4 && !g_ip[0]; i++)
        if (access(cands[i], X_OK) == 0) snprintf(g_ip, sizeof g_ip, "%s", cands[i]);
    if (!g_ip[0]) {
        snprintf(g_ns_error, sizeof g_ns_error, "no `ip` program (iproute2; scripts/install-deps.sh installs it)");
        return -1;
    }
    if (geteuid() != 0) {
        snprintf(g_ns_error, sizeof g_ns_error, "network namespaces need root (CI runs the tests as root)");
        return -1;
    }
    remove_stale_namespaces();
    const char tag[3] = {'a', 'b', 'c'};
    for (int i = 0; i < 3; i++) {
        snprintf(g_ns[i], sizeof g_ns[i], "rlhf-mh%d-%c", (int)getpid(), tag[i]);
        if (IP("netns", "add", g_ns[i]) != 0) {
            snprintf(g_ns_error, sizeof g_ns_error, "`ip netns add %s` failed (see %s/ip.out)", g_ns[i], g_dir);
            return -1;
        }
        g_ns_made[i] = 1;
        if (IP("-n", g_ns[i], "link", "set", "lo", "up") != 0) goto fail;
    }
    if (IP("-n", g_ns[0], "link", "add", "br0", "type", "bridge") || IP("-n", g_ns[0], "addr", "add", "192.0.2.1/24", "dev", "br0") ||
        IP("-n", g_ns[0], "link", "set", "br0", "up"))
        goto fail;
    for (int i = 1; i < 3; i++) {
        char port[8], addr[32];
        snprintf(port, sizeof port, "v%c", tag[i]);
        snprintf(addr, sizeof addr, "192.0.2.%d/24", i + 1);
        if (IP("link", "add", port, "netns", g_ns[0], "type", "veth", "peer", "name", "eth0", "netns", g_ns[i]) ||
            IP("-n", g_ns[0], "link", "set", port, "master", "br0") || IP("-n", g_ns[0], "link", "set", port, "up") ||
            IP("-n", g_ns[i], "addr", "add", addr, "dev", "eth0") || IP("-n", g_ns[i], "link", "set", "eth0", "up"))
            goto fail;
    }
    return 0;
fail:
    snprintf(g_ns_error, sizeof g_ns_error, "configuring the namespaces' links failed (see %s/ip.out)", g_dir);
    return -1;
}

static int suite_init(void) {
    if (e2e_suite_dir("multihost", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf)) return -1;
    if (netns_setup()) netns_teardown(); /* the tests that need them fail with g_ns_error */
    return 0;
}

static int suite_cleanup(void) {
    stop_kids();
    netns_teardown();
    if (CU_get_number_of_failures() == 0 && g_dir[0] && !getenv("MH_KEEP")) test_remove_tree(g_dir);
    return 0;
}

static void require_netns(void) {
    if (g_ns_error[0]) {
        fprintf(stderr, "\nmultihost: network namespaces unavailable: %s\n", g_ns_error);
        CU_FAIL_FATAL("network namespaces unavailable (`ip netns`, root): see the line above");
    }
}

/* `rlhf ARGS...` in namespace NS (NULL: here), output to OUT; its pid. */
static pid_t spawn_in(const char *ns, const char *out, const char *const *args) {
    const char *a[TEST_PROC_MAX_ARGS];
    int n = 0;
    if (ns) {
        a[n++] = "netns";
        a[n++] = "exec";
        a[n++] = ns;
        a[n++] = g_rlhf;
    }
    for (int i = 0; args[i] && n < TEST_PROC_MAX_ARGS - 3; i++) a[n++] = args[i];
    a[n] = NULL;
    test_proc_opts o = {.out = out, .err = out, .die_with_parent = 1};
    return track(ns ? test_proc_spawn_args(g_ip, "ip", a, &o) : test_proc_spawn_args(g_rlhf, g_rlhf, a, &o));
}

/* 1 once PATH holds NEEDLE (within timeout_s, while pid runs; pid <= 0: no process to watch). */
static int wait_for_text(const char *path, const char *needle, pid_t pid, double timeout_s) {
    double t0 = rlhf_now();
    for (;;) {
        char *t = e2e_slurp(path);
        int yes = t && strstr(t, needle);
        free(t);
        if (yes) return 1;
        if (rlhf_now() - t0 > timeout_s || (pid > 0 && waitpid(pid, NULL, WNOHANG) != 0)) break;
        usleep(100000);
    }
    return e2e_contains(path, needle); /* prints what the file holds */
}

/* ---------------------------------------------------------------- keygen */

static void test_keygen(void) {
    char key[200], out[200], err[200];
    snprintf(key, sizeof key, "%s/k1.key", g_dir);
    snprintf(out, sizeof out, "%s/keygen.out", g_dir);
    snprintf(err, sizeof err, "%s/keygen.err", g_dir);
    test_proc_opts o = {.out = out, .err = err};
    const char *a[] = {"keygen", "--out", key, NULL};
    CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, a, &o, 30), 0);
    struct stat st;
    CU_ASSERT_FATAL(stat(key, &st) == 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    char *k = e2e_slurp(key), *so = e2e_slurp(out), *se = e2e_slurp(err);
    CU_ASSERT_FATAL(k && so && se);
    const char *pub = strstr(k, "public="), *sec = strstr(k, "secret=");
    CU_ASSERT_FATAL(pub && sec);
    char pubz[41], secz[41];
    memcpy(pubz, pub + 7, 40);
    pubz[40] = 0;
    memcpy(secz, sec + 7, 40);
    secz[40] = 0;
    /* a real pair: the public key is the secret's */
    char derived[41];
    CU_ASSERT(zmq_curve_public(derived, secz) == 0 && !strcmp(derived, pubz));
    CU_ASSERT(strstr(so, pubz) != NULL); /* the public key is printed, and the path */
    CU_ASSERT(strstr(se, key) != NULL);
    /* not the secret, not even a piece of it */
    for (int i = 0; i + 8 <= 40; i++) {
        char piece[9];
        memcpy(piece, secz + i, 8);
        piece[8] = 0;
        CU_ASSERT(!strstr(so, piece) && !strstr(se, piece));
    }
    char pubfile[220];
    snprintf(pubfile, sizeof pubfile, "%s.pub", key);
    char *pf = e2e_slurp(pubfile);
    CU_ASSERT(pf && strstr(pf, pubz) && !strstr(pf, "secret"));
    CU_ASSERT(stat(pubfile, &st) == 0 && (st.st_mode & 0777) == 0644);
    free(pf);
    /* an existing file is never replaced */
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, a, &o, 30), 2);
    char *k2 = e2e_slurp(key);
    CU_ASSERT(k2 && !strcmp(k, k2));
    CU_ASSERT(e2e_contains(err, "exists"));
    free(k2);
    const char *none[] = {"keygen", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, none, &o, 30), 2);
    free(k);
    free(so);
    free(se);
}

/* The public key of a key file (pub: 41 bytes). */
static int read_public(const char *path, char *pub) {
    char *t = e2e_slurp(path);
    const char *p = t ? strstr(t, "public=") : NULL;
    if (p) {
        memcpy(pub, p + 7, 40);
        pub[40] = 0;
    }
    free(t);
    return p ? 0 : -1;
}

static int keygen(const char *name, char *path, size_t cap, char *pub) {
    snprintf(path, cap, "%s/%s", g_dir, name);
    char out[200];
    snprintf(out, sizeof out, "%s/%s.keygen.out", g_dir, name);
    test_proc_opts o = {.out = out, .err = out};
    const char *a[] = {"keygen", "--out", path, NULL};
    if (test_proc_run_args(g_rlhf, g_rlhf, a, &o, 30) != 0) return -1;
    return read_public(path, pub);
}

/* ---------------------------------------------------------------- config errors */

static void test_bad_authorized_key(void) {
    char key[200], pub[41], cfg[200], out[200], doc[1024], run[200];
    CU_ASSERT_EQUAL_FATAL(keygen("cfgtest.key", key, sizeof key, pub), 0);
    snprintf(cfg, sizeof cfg, "%s/badkey.json", g_dir);
    snprintf(out, sizeof out, "%s/badkey.out", g_dir);
    snprintf(run, sizeof run, "%s/badkey-run", g_dir);
    snprintf(doc, sizeof doc,
             "{\"broker\":{\"endpoint\":\"tcp://127.0.0.1:1\",\"authorized_keys\":["
             "{\"public\":\"%s\",\"role\":\"generator\",\"name\":\"ok\"},"
             "{\"public\":\"%.39s\",\"role\":\"generator\",\"name\":\"short\"}]}}\n",
             pub, pub);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    test_proc_opts o = {.out = out, .err = out};
    const char *a[] = {"broker", "--config", cfg, "--run-dir", run, "--init-credentials", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, a, &o, 30), 2);
    CU_ASSERT(e2e_contains(out, "broker.authorized_keys[1].public"));
    CU_ASSERT(access(run, F_OK) != 0); /* refused before anything was written */
    /* `rlhf run` with keys of other hosts but no address they can reach: refused before any process starts */
    snprintf(cfg, sizeof cfg, "%s/nokeyendpoint.json", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"nokeyep\",\"run_dir\":\"nokeyep\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"broker\":{\"authorized_keys\":[{\"public\":\"%s\",\"role\":\"generator\"}]},\n"
             " \"generators\":{\"count\":0,\"max_tokens\":4}}\n",
             pub);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    const char *r[] = {"run", cfg, "--quiet", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, r, &o, 60), 2);
    CU_ASSERT(e2e_contains(out, "broker.authorized_keys: keys of other hosts need broker.endpoint"));
    char logs[240];
    snprintf(logs, sizeof logs, "%s/nokeyep/logs/broker.log", g_dir);
    CU_ASSERT(access(logs, F_OK) != 0); /* no broker was started */
}

static void test_insecure_bind(void) {
    char cfg[200], out[200], run[200];
    snprintf(cfg, sizeof cfg, "%s/insecure.json", g_dir);
    snprintf(out, sizeof out, "%s/insecure.out", g_dir);
    snprintf(run, sizeof run, "%s/insecure-run", g_dir);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, "{\"broker\":{}}\n"), 0);
    test_proc_opts o = {.out = out, .err = out};
    /* refused before binding: the wildcard address is never listened on */
    const char *a[] = {"broker", "--config", cfg, "--run-dir", run, "--insecure", "--endpoint", "tcp://0.0.0.0:5555", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, a, &o, 30), 2);
    CU_ASSERT(e2e_contains(out, "broker.endpoint: tcp://0.0.0.0:5555 is not a loopback address"));
    CU_ASSERT(e2e_contains(out, "\"insecure\": true"));
    char *t = e2e_slurp(out);
    int lines = 0;
    for (char *p = t; p && *p; p++) lines += *p == '\n';
    CU_ASSERT_EQUAL(lines, 1);
    free(t);
    char rl[240];
    snprintf(rl, sizeof rl, "%s/rollouts.log", run);
    CU_ASSERT(access(rl, F_OK) != 0);
    /* loopback stays allowed without the key */
    const char *lo[] = {"broker", "--config", cfg, "--run-dir", run, "--insecure", "--endpoint", "tcp://127.0.0.1:*", NULL};
    pid_t b = spawn_in(NULL, out, lo);
    CU_ASSERT(wait_for_text(out, "listening on tcp://127.0.0.1:*", b, 60));
    CU_ASSERT_EQUAL(test_proc_stop(b, 20), 0);
    /* with the config's explicit "insecure": true, on host A's non-loopback address */
    require_netns();
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, "{\"broker\":{\"insecure\":true}}\n"), 0);
    const char *ok[] = {"broker", "--config", cfg, "--run-dir", run, "--insecure", "--endpoint", MH_ENDPOINT, NULL};
    char out2[200];
    snprintf(out2, sizeof out2, "%s/insecure-ok.out", g_dir);
    pid_t p = spawn_in(g_ns[0], out2, ok);
    CU_ASSERT_FATAL(p > 0);
    CU_ASSERT(wait_for_text(out2, "listening on " MH_ENDPOINT, p, 60));
    CU_ASSERT(e2e_contains(out2, "WARNING: --insecure"));
    CU_ASSERT_EQUAL(test_proc_stop(p, 20), 0);
}

/* ---------------------------------------------------------------- the run across hosts */

/* From namespace NS, a raw DEALER sends HELLO to the broker: without security (key NULL) or with CURVE
 * (KEY's pair, the broker's public key SERVER_PUB). Returns 1 when anything came back within
 * timeout_ms, 0 when nothing did, -1 when the probe itself could not run. */
static int probe(const char *ns, const char *key, const char *server_pub, int timeout_ms) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        char path[128];
        snprintf(path, sizeof path, "/run/netns/%s", ns);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) _exit(3);
        void *ctx = zmq_ctx_new();
        void *s = zmq_socket(ctx, ZMQ_DEALER);
        int l0 = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &l0, sizeof l0);
        if (key) {
            char *t = e2e_slurp(key);
            const char *pub = t ? strstr(t, "public=") : NULL, *sec = t ? strstr(t, "secret=") : NULL;
            char server[41];
            if (!pub || !sec || read_public(server_pub, server)) _exit(3);
            if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server, 40) || zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub + 7, 40) ||
                zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec + 7, 40))
                _exit(3);
            free(t);
        }
        if (zmq_connect(s, MH_ENDPOINT) != 0) _exit(3);
        wire_hello h = {.role = WIRE_ROLE_GENERATOR, .pid = (int64_t)getpid()};
        snprintf(h.peer_id, sizeof h.peer_id, "probe-%d", (int)getpid());
        wire_out o;
        if (wire_encode_hello(&h, &o, NULL) || wire_out_send(s, &o, NULL)) _exit(3);
        wire_out_free(&o);
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        int got = zmq_poll(&it, 1, timeout_ms) > 0;
        _exit(got ? 1 : 0); /* no zmq teardown: the process ends here */
    }
    int st = test_proc_wait(pid, timeout_ms / 1000.0 + 30);
    return st == 0 ? 0 : st == 1 ? 1 : -1;
}

static int count_lines(const char *path) {
    char *t = e2e_slurp(path);
    int n = 0;
    for (char *p = t; p && *p; p++) n += *p == '\n';
    free(t);
    return n;
}

/* The broker's "[broker] final stats {...}" line of LOG, parsed (NULL when missing). */
static json_t *final_stats(const char *log) {
    char *t = e2e_slurp(log);
    char *p = t ? strstr(t, "[broker] final stats ") : NULL;
    json_t *j = NULL;
    if (p) {
        p += strlen("[broker] final stats ");
        char *end = strchr(p, '\n');
        if (end) *end = 0;
        j = json_loads(p, 0, NULL);
    }
    free(t);
    return j;
}

static void test_trains_across_hosts(void) {
    require_netns();
    char kb[200], kc[200], ks[200], pb[41], pc[41], ps[41];
    CU_ASSERT_EQUAL_FATAL(keygen("hostb.key", kb, sizeof kb, pb), 0);
    CU_ASSERT_EQUAL_FATAL(keygen("hostc.key", kc, sizeof kc, pc), 0);
    CU_ASSERT_EQUAL_FATAL(keygen("stranger.key", ks, sizeof ks, ps), 0);
    /* B is killed once both generators' groups are trained (within the first steps); C alone must then
     * outlast the broker's heartbeat timeout (2 s) by far: 400 steps of this model take C ~20 s here, a
     * loaded machine only longer */
    const int steps = 400;
    char cfg[200], run[200], doc[3072], p[300];
    snprintf(cfg, sizeof cfg, "%s/mh.json", g_dir);
    snprintf(run, sizeof run, "%s/mh", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"mh\",\"run_dir\":\"mh\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":%d,\"checkpoint_every\":100,\"seed\":5},\n"
             " \"broker\":{\"endpoint\":\"" MH_ENDPOINT "\",\"authorized_keys\":[\n"
             "   {\"public\":\"%s\",\"role\":\"generator\",\"name\":\"host-b\"},\n"
             "   {\"public\":\"%s\",\"role\":\"generator\",\"name\":\"host-c\"}],\n"
             "   \"heartbeat_timeout_ms\":2000},\n"
             " \"generators\":{\"count\":0,\"max_tokens\":4,\"batch\":2,\"threads\":1}}\n",
             steps, pb, pc);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);

    /* host A: the launcher, its broker and updater; no generator of its own */
    char run_out[200];
    snprintf(run_out, sizeof run_out, "%s/mh.out", g_dir);
    const char *ra[] = {"run", cfg, "--quiet", NULL};
    pid_t launcher = spawn_in(g_ns[0], run_out, ra);
    CU_ASSERT_FATAL(launcher > 0);
    char blog[240], server_pub[200];
    snprintf(blog, sizeof blog, "%s/logs/broker.log", run);
    CU_ASSERT_FATAL(wait_for_text(blog, "listening on " MH_ENDPOINT, launcher, 120));
    /* the broker's public key, as an operator copies it to the other hosts */
    char spub[41];
    snprintf(p, sizeof p, "%s/credentials/broker.key", run);
    CU_ASSERT_EQUAL_FATAL(read_public(p, spub), 0);
    snprintf(server_pub, sizeof server_pub, "%s/broker.pub", g_dir);
    snprintf(doc, sizeof doc, "public=%s\n", spub);
    CU_ASSERT_EQUAL_FATAL(write_text(server_pub, doc), 0);

    /* what reaches the broker from host B: B's key gets an answer; no CURVE, or a key not listed, nothing */
    CU_ASSERT_EQUAL(probe(g_ns[1], kb, server_pub, 30000), 1);
    CU_ASSERT_EQUAL(probe(g_ns[1], NULL, NULL, 3000), 0);
    CU_ASSERT_EQUAL(probe(g_ns[1], ks, server_pub, 3000), 0);

    /* generators join from B and C; a third, with a key the config does not list, from C */
    char cfg_run[240], gb_out[200], gc_out[200], gs_out[200];
    snprintf(cfg_run, sizeof cfg_run, "%s/config.json", run);
    snprintf(gb_out, sizeof gb_out, "%s/gen-b.out", g_dir);
    snprintf(gc_out, sizeof gc_out, "%s/gen-c.out", g_dir);
    snprintf(gs_out, sizeof gs_out, "%s/gen-stranger.out", g_dir);
    const char *gb[] = {"generator", "--config", cfg_run, "--id", "11", "--connect", MH_ENDPOINT, "--server-key",
                        server_pub, "--key", kb, NULL};
    const char *gc[] = {"generator", "--config", cfg_run, "--id", "12", "--connect", MH_ENDPOINT, "--server-key",
                        server_pub, "--key", kc, NULL};
    const char *gs[] = {"generator", "--config", cfg_run, "--id", "13", "--connect", MH_ENDPOINT, "--server-key",
                        server_pub, "--key", ks, NULL};
    pid_t genb = spawn_in(g_ns[1], gb_out, gb), genc = spawn_in(g_ns[2], gc_out, gc);
    pid_t gens = spawn_in(g_ns[2], gs_out, gs);
    CU_ASSERT_FATAL(genb > 0 && genc > 0 && gens > 0);

    /* B's groups are trained on; then B's generator is killed mid-run */
    char scores[240], metrics[240];
    snprintf(scores, sizeof scores, "%s/scores.jsonl", run);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run);
    CU_ASSERT_FATAL(wait_for_text(scores, "\"generator\":\"generator-11.", launcher, 240));
    CU_ASSERT_FATAL(wait_for_text(scores, "\"generator\":\"generator-12.", launcher, 240));
    int step_at_kill = count_lines(metrics);
    CU_ASSERT(step_at_kill <= steps / 2); /* the kill is mid-run, with steps left for C alone */
    test_proc_kill(genb);
    int st = test_proc_wait(launcher, 600);
    CU_ASSERT_EQUAL(st, 0);
    if (st != 0) fprintf(stderr, "\nthe launcher exited %d; its output: %s\n", st, run_out);
    snprintf(p, sizeof p, "{\"step\":%d,", steps);
    CU_ASSERT(e2e_contains(metrics, p));
    /* the broker told C's generator to stop at the end: it leaves cleanly */
    CU_ASSERT_EQUAL(test_proc_wait(genc, 60), 0);
    test_proc_stop(gens, 10);

    CU_ASSERT(e2e_contains(gb_out, "connected to " MH_ENDPOINT));
    CU_ASSERT(e2e_contains(gc_out, "connected to " MH_ENDPOINT));
    char *s = e2e_slurp(gs_out);
    CU_ASSERT(s && !strstr(s, "connected to"));
    free(s);
    CU_ASSERT(e2e_contains(blog, "admitted authorized key \"host-b\" (generator)"));
    CU_ASSERT(e2e_contains(blog, "admitted authorized key \"host-c\" (generator)"));
    CU_ASSERT(e2e_contains(blog, "refused a connection at the handshake"));
    char dead[64];
    snprintf(dead, sizeof dead, "peer generator-11.%d (generator) is dead: silent for", (int)genb);
    CU_ASSERT(e2e_contains(blog, dead)); /* its prompts were released for the others */
    /* C's groups were trained on after B died */
    char *sc = e2e_slurp(scores);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sc);
    int c_after = 0;
    for (char *line = strtok(sc, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *j = json_loads(line, 0, NULL);
        const char *gen = json_string_value(json_object_get(j, "generator"));
        const char *fate = json_string_value(json_object_get(j, "fate"));
        if (gen && fate && !strncmp(gen, "generator-12.", 13) && !strcmp(fate, "trained") &&
            json_integer_value(json_object_get(j, "step")) > step_at_kill + 1)
            c_after++;
        json_decref(j);
    }
    free(sc);
    CU_ASSERT(c_after > 0);
    /* the refusals are counted where an operator reads them */
    json_t *fs = final_stats(blog);
    CU_ASSERT_PTR_NOT_NULL_FATAL(fs);
    CU_ASSERT(json_integer_value(json_object_get(fs, "auth/handshakes_denied")) >= 2); /* unlisted keys */
    CU_ASSERT(json_integer_value(json_object_get(fs, "auth/handshakes_failed")) >= 1); /* the DEALER without CURVE */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(fs, "auth/authorized_keys")), 2);
    json_decref(fs);

    /* a key file others can read is refused before connecting, naming it (exit 2: the same at every
     * restart); --key without --server-key is a usage error */
    char open_key[240], kout[200];
    snprintf(open_key, sizeof open_key, "%s/open.key", g_dir);
    snprintf(kout, sizeof kout, "%s/open-key.out", g_dir);
    char *kt = e2e_slurp(kb);
    CU_ASSERT_FATAL(kt != NULL);
    CU_ASSERT_EQUAL_FATAL(write_text(open_key, kt), 0);
    free(kt);
    chmod(open_key, 0644);
    test_proc_opts ko = {.out = kout, .err = kout};
    const char *go[] = {"generator", "--config", cfg_run, "--id", "14", "--connect", MH_ENDPOINT, "--server-key",
                        server_pub, "--key", open_key, NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, go, &ko, 60), 2);
    CU_ASSERT(e2e_contains(kout, "a secret key readable by others (mode 644)"));
    const char *gu[] = {"generator", "--config", cfg_run, "--id", "14", "--connect", MH_ENDPOINT, "--key", kb, NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, gu, &ko, 60), 2);
    CU_ASSERT(e2e_contains(kout, "--key and --server-key go together"));
}

void e2e_register_multihost(void);
void e2e_register_multihost(void) {
    CU_pSuite s = CU_add_suite("e2e_multihost", suite_init, suite_cleanup);
    CU_add_test(s, "keygen", test_keygen);
    CU_add_test(s, "bad_authorized_key", test_bad_authorized_key);
    CU_add_test(s, "insecure_bind", test_insecure_bind);
    CU_add_test(s, "trains_across_hosts", test_trains_across_hosts);
}
