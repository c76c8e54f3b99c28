/* tests/broker/test_broker_proc.c — the broker as a real process over tcp loopback, with synthetic
 * generators and updaters as real processes (tests/broker/synth_*.c): exactly-once delivery,
 * kill -9 and restart, backpressure; plus config errors, bind errors and protocol version errors.
 *
 * The "fake" peers here (raw ZeroMQ sockets speaking protocol version 99) exist only to inject faults
 * a real peer cannot produce. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "broker/broker.h"
#include "broker/broker_int.h"
#include "tests/broker/synth_common.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char tmpdir[256];
static char bindir[4096];
static int port_seq;

static int suite_init(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_broker_proc.XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    char build[4000];
    if (test_build_dir(build, sizeof build)) return -1;
    snprintf(bindir, sizeof bindir, "%s/bin", build);
    /* the dataset the broker serves */
    char p[512];
    snprintf(p, sizeof p, "%s/prompts.jsonl", tmpdir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    for (int i = 0; i < 40; i++) fprintf(f, "{\"id\": \"p%d\", \"prompt\": \"What is %d + %d?\", \"answer\": \"%d\"}\n", i, i, i, 2 * i);
    fclose(f);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int suite_clean(void) {
    if (getenv("TEST_BROKER_KEEP")) { /* keep logs for debugging */
        fprintf(stderr, "kept %s\n", tmpdir);
        return 0;
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int next_port(void) { return 20000 + (int)((getpid() * 131 + port_seq++ * 17) % 30000); }

/* fork + exec with stdout/stderr appended to LOG; a test that aborts leaves no broker or peer behind */
static pid_t spawn(char *const argv[], const char *log) {
    test_proc_opts o = {.out = log, .err = log, .append = 1, .die_with_parent = 1};
    return test_proc_spawn(NULL, argv, &o);
}

typedef struct run {
    char dir[512];
    char endpoint[64];
    pid_t broker;
} run;

/* Writes a config and starts `rlhf broker`; waits until it answers. extra: more JSON keys for "broker". */
static int start_broker(run *r, const char *name, const char *extra) {
    snprintf(r->dir, sizeof r->dir, "%s/%s", tmpdir, name);
    mkdir(r->dir, 0755);
    for (int attempt = 0; attempt < 5; attempt++) {
        snprintf(r->endpoint, sizeof r->endpoint, "tcp://127.0.0.1:%d", next_port());
        char cfg[600], text[2048], log[600], bin[4200];
        snprintf(cfg, sizeof cfg, "%s/config.json", r->dir);
        snprintf(text, sizeof text,
                 "{\"broker\": {\"endpoint\": \"%s\", \"dataset\": \"%s/prompts.jsonl\", "
                 "\"heartbeat_interval_ms\": 100, \"heartbeat_timeout_ms\": 800, \"stats_interval_ms\": 0%s%s}, "
                 "\"other_section\": {\"ignored\": true}}",
                 r->endpoint, tmpdir, extra ? ", " : "", extra ? extra : "");
        FILE *f = fopen(cfg, "w");
        fputs(text, f);
        fclose(f);
        snprintf(log, sizeof log, "%s/broker.log", r->dir);
        snprintf(bin, sizeof bin, "%s/rlhf", bindir);
        char *argv[] = {bin, "broker", "--config", cfg, "--run-dir", r->dir, NULL};
        r->broker = spawn(argv, log);
        broker_client *c;
        rlhf_error e;
        for (int i = 0; i < 50; i++) {
            int st;
            if (waitpid(r->broker, &st, WNOHANG) == r->broker) break; /* exited: port in use? retry */
            rlhf_error_clear(&e);
            if (broker_client_connect(&c, r->endpoint, WIRE_ROLE_OBSERVER, "probe", 100, &e) == 0) {
                broker_client_close(&c);
                /* still ours? (if it could not bind, the probe may have reached someone else's broker) */
                if (waitpid(r->broker, &st, WNOHANG) == r->broker) break;
                return 0;
            }
        }
        test_proc_kill(r->broker);
    }
    return -1;
}

/* Starts the synthetic peer PROG (synth_generator or synth_updater) with --id ID, its output file and
 * log in the run's directory, and EXTRA_ARGS (space-separated). */
static pid_t start_synth(const run *r, const char *prog, const char *id, const char *extra_args) {
    char bin[4200], out[600], log[600], cmd[1024];
    snprintf(bin, sizeof bin, "%s/%s", bindir, prog);
    snprintf(out, sizeof out, "%s/%s.out", r->dir, id);
    snprintf(log, sizeof log, "%s/%s.log", r->dir, id);
    snprintf(cmd, sizeof cmd, "%s", extra_args ? extra_args : "");
    char *argv[32] = {bin, "--endpoint", (char *)r->endpoint, "--id", (char *)id, "--out", out};
    int n = 7;
    for (char *tok = strtok(cmd, " "); tok && n < 30; tok = strtok(NULL, " ")) argv[n++] = strdup(tok);
    argv[n] = NULL;
    pid_t pid = spawn(argv, log);
    for (int i = 7; i < n; i++) free(argv[i]);
    return pid;
}

static pid_t start_gen(const run *r, const char *id, const char *extra_args) {
    return start_synth(r, "synth_generator", id, extra_args);
}

static pid_t start_upd(const run *r, const char *id, const char *extra_args) {
    return start_synth(r, "synth_updater", id, extra_args);
}

static json_t *get_stats(const run *r) {
    broker_client *c;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_client_connect(&c, r->endpoint, WIRE_ROLE_OBSERVER, "test-observer", 3000, &e) != 0) return NULL;
    json_t *s = NULL;
    broker_client_get_stats(c, &s, 3000, &e);
    broker_client_close(&c);
    return s;
}

static long stat_i(json_t *s, const char *k) { return (long)json_integer_value(json_object_get(s, k)); }

static json_t *peer_of(json_t *s, const char *id) {
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(s, "peers"), i, p) if (!strcmp(json_string_value(json_object_get(p, "id")), id)) return p;
    return NULL;
}

/* Waits until the broker knows peer `id` (a process we just started); 0 when it does. */
static int wait_peer(const run *r, const char *id) {
    for (int i = 0; i < 300; i++) {
        json_t *s = get_stats(r);
        int ok = s && peer_of(s, id) != NULL;
        json_decref(s);
        if (ok) return 0;
        sleep_ms(30);
    }
    return -1;
}

static int send_stop(const run *r) {
    broker_client *c;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_client_connect(&c, r->endpoint, WIRE_ROLE_OBSERVER, "test-stopper", 3000, &e) != 0) return -1;
    int rc = broker_client_control(c, WIRE_CONTROL_STOP, "test done", &e);
    broker_client_close(&c);
    return rc;
}

/* Lines "GEN SEQ PV" from FILE into keys "GEN/SEQ" (malloc'd array); returns count. */
static size_t read_keys(const char *path, char ***keys) {
    *keys = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = 0, cap = 0;
    char gen[128];
    unsigned long long seq, pv;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%127s %llu %llu", gen, &seq, &pv) != 3 || !strcmp(gen, "weights")) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            *keys = realloc(*keys, cap * sizeof **keys);
        }
        char k[160];
        snprintf(k, sizeof k, "%s/%llu", gen, seq);
        (*keys)[n++] = strdup(k);
    }
    fclose(f);
    return n;
}

static void free_keys(char **k, size_t n) {
    for (size_t i = 0; i < n; i++) free(k[i]);
    free(k);
}

static int cmpstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int contains(char **sorted, size_t n, const char *k) {
    return bsearch(&k, sorted, n, sizeof *sorted, cmpstr) != NULL;
}

/* ---------------------------------------------------------------- tests */

/* 1 broker, 3 generators, 2 updaters: every accepted group delivered exactly once or counted stale. */
static void test_exactly_once(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "exact", "\"max_staleness\": 1, \"queue_capacity\": 12"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 3 --publish-every 7 --stats");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t u1 = start_upd(&r, "u1", "--credit 3 --stats");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u1"), 0);
    pid_t g[3];
    const char *gid[3] = {"g0", "g1", "g2"};
    for (int i = 0; i < 3; i++) g[i] = start_gen(&r, gid[i], "--groups 40 --k 4 --tokens 24 --batch 2");
    for (int i = 0; i < 3; i++) CU_ASSERT_EQUAL(test_proc_wait(g[i], 40), 0);
    /* all pushed groups received by the broker, and the queue drained (delivered or dropped) */
    json_t *s = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "groups/received") == 120 && stat_i(s, "queue/depth") == 0) break;
        sleep_ms(50);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "groups/received"), 120);
    CU_ASSERT_EQUAL(stat_i(s, "queue/depth"), 0);
    CU_ASSERT_EQUAL(stat_i(s, "rejected/total"), 0);
    CU_ASSERT_TRUE(stat_i(s, "weights/received") >= 1);
    CU_ASSERT_TRUE(stat_i(s, "prompt_stats/received") > 0);
    CU_ASSERT_EQUAL(stat_i(s, "prompt_stats/rejected"), 0);
    long dropped_accept = stat_i(s, "groups/dropped_stale_accept");
    long dropped_later = stat_i(s, "groups/dropped_stale_queued") + stat_i(s, "groups/dropped_stale_delivery");
    long delivered = stat_i(s, "groups/delivered");
    json_t *pu = peer_of(s, "u1");
    CU_ASSERT_TRUE(pu && json_is_true(json_object_get(pu, "alive")));
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u1, 10), 0);
    json_decref(s);

    char p[600];
    char **sent = NULL, **got0, **got1;
    size_t n_sent = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s.out", r.dir, gid[i]);
        char **k;
        size_t n = read_keys(p, &k);
        CU_ASSERT_EQUAL(n, 40);
        sent = realloc(sent, (n_sent + n) * sizeof *sent);
        memcpy(sent + n_sent, k, n * sizeof *k);
        n_sent += n;
        free(k);
    }
    snprintf(p, sizeof p, "%s/u0.out", r.dir);
    size_t n0 = read_keys(p, &got0);
    snprintf(p, sizeof p, "%s/u1.out", r.dir);
    size_t n1 = read_keys(p, &got1);
    /* accepted = what the replay log holds */
    snprintf(p, sizeof p, "%s/rollouts.log", r.dir);
    replay_reader *rr;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &e), 0);
    char **acc = NULL;
    size_t n_acc = 0;
    wire_rollout_group gg;
    while (replay_reader_next(rr, &gg, NULL, &e) == 1) {
        char k[160];
        snprintf(k, sizeof k, "%s/%llu", gg.generator_id, (unsigned long long)gg.seq);
        acc = realloc(acc, (n_acc + 1) * sizeof *acc);
        acc[n_acc++] = strdup(k);
        wire_rollout_group_free(&gg);
    }
    replay_reader_close(&rr);

    size_t n_del = n0 + n1;
    char **del = malloc((n_del + 1) * sizeof *del);
    memcpy(del, got0, n0 * sizeof *del);
    memcpy(del + n0, got1, n1 * sizeof *del);
    qsort(sent, n_sent, sizeof *sent, cmpstr);
    qsort(acc, n_acc, sizeof *acc, cmpstr);
    qsort(del, n_del, sizeof *del, cmpstr);
    CU_ASSERT_TRUE(n0 > 0 && n1 > 0); /* both updaters got work */
    CU_ASSERT_EQUAL((long)n_del, delivered);
    size_t dups = 0, not_accepted = 0, not_sent = 0;
    for (size_t i = 1; i < n_del; i++) dups += !strcmp(del[i - 1], del[i]);
    for (size_t i = 0; i < n_del; i++) not_accepted += !contains(acc, n_acc, del[i]);
    for (size_t i = 0; i < n_acc; i++) not_sent += !contains(sent, n_sent, acc[i]);
    CU_ASSERT_EQUAL(dups, 0);
    CU_ASSERT_EQUAL(not_accepted, 0);
    CU_ASSERT_EQUAL(not_sent, 0);
    /* none lost: sent = accepted + dropped at accept; accepted = delivered + dropped later */
    CU_ASSERT_EQUAL((long)n_sent, (long)n_acc + dropped_accept);
    CU_ASSERT_EQUAL((long)n_acc, (long)n_del + dropped_later);
    free_keys(sent, n_sent);
    free_keys(acc, n_acc);
    free_keys(del, n_del);
    free(got0);
    free(got1);
}

/* max_staleness = 0: only groups sampled with the newest weights get through. */
static void test_staleness_zero(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "sync", "\"max_staleness\": 0, \"queue_capacity\": 8"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 2 --publish-every 3");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 30 --k 2 --tokens 8 --batch 3");
    CU_ASSERT_EQUAL(test_proc_wait(g0, 30), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "groups/received") == 30 && stat_i(s, "queue/depth") == 0) break;
        sleep_ms(50);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    long pv_newest = stat_i(s, "policy_version");
    CU_ASSERT_TRUE(pv_newest >= 1);
    CU_ASSERT_EQUAL(stat_i(s, "groups/received"),
                    stat_i(s, "groups/delivered") + stat_i(s, "groups/dropped_stale"));
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    /* the updater only ever saw groups of the version that was newest when each was delivered:
     * versions it received never decrease and lag its own publishes by at most 0 */
    char p[600];
    snprintf(p, sizeof p, "%s/u0.out", r.dir);
    FILE *f = fopen(p, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char gen[64];
    unsigned long long seq, pv, prev = 0;
    long n = 0, published = 0;
    while (fscanf(f, "%63s %llu %llu", gen, &seq, &pv) == 3) {
        /* u0 publishes version v after its (3v)-th group. Only groups already in flight then (credit 2 < 3)
         * can carry v - 1; everything the broker delivers after seeing v carries v. */
        CU_ASSERT_TRUE(pv >= prev);
        CU_ASSERT_TRUE((long)pv >= published - 1);
        prev = pv;
        n++;
        if (n % 3 == 0) published++;
    }
    fclose(f);
    CU_ASSERT_TRUE(n > 0);
}

/* kill -9 a generator mid-stream: the broker keeps serving; a restarted one gets the newest weights. */
static void test_kill_and_restart(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "kill", "\"max_staleness\": 4, \"queue_capacity\": 16"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 4 --publish-every 5 --weights-floats 100000");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t victim = start_gen(&r, "g-victim", "--groups 0 --k 4 --tokens 16 --delay-ms 10");
    pid_t g1 = start_gen(&r, "g1", "--groups 60 --k 4 --tokens 16 --delay-ms 5");
    char p[600];
    snprintf(p, sizeof p, "%s/g-victim.out", r.dir);
    for (int i = 0; i < 300; i++) {
        char **k;
        size_t n = read_keys(p, &k);
        free_keys(k, n);
        if (n >= 8) break;
        sleep_ms(20);
    }
    CU_ASSERT_EQUAL(kill(victim, SIGKILL), 0);
    CU_ASSERT_EQUAL(test_proc_wait(victim, 5), 128 + SIGKILL);
    /* the other generator finishes, every one of its groups reaches the broker */
    CU_ASSERT_EQUAL(test_proc_wait(g1, 40), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(s);
        s = get_stats(&r);
        json_t *pv = s ? peer_of(s, "g-victim") : NULL;
        if (pv && !json_is_true(json_object_get(pv, "alive")) && stat_i(s, "queue/depth") == 0) break;
        sleep_ms(50);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    json_t *pv = peer_of(s, "g-victim");
    CU_ASSERT_PTR_NOT_NULL_FATAL(pv);
    CU_ASSERT_FALSE(json_is_true(json_object_get(pv, "alive"))); /* declared dead by heartbeat timeout */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(pv, "outstanding")), 0);
    json_t *p1 = peer_of(s, "g1");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p1, "groups")), 60);
    long newest = stat_i(s, "policy_version");
    CU_ASSERT_TRUE(newest >= 2);
    json_decref(s);
    /* restart: it receives the newest version right after the handshake */
    pid_t again = start_gen(&r, "g-victim", "--check-weights");
    CU_ASSERT_EQUAL(test_proc_wait(again, 10), 0);
    FILE *f = fopen(p, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[256], last[256] = "";
    while (fgets(line, sizeof line, f)) snprintf(last, sizeof last, "%s", line);
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "weights %ld\n", newest);
    CU_ASSERT_STRING_EQUAL(last, want);
    s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    pv = peer_of(s, "g-victim");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(pv, "restarts")), 1);
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
}

/* A slow updater: the queue stays within its capacity and generators are held back. */
static void test_backpressure(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "slow", "\"max_staleness\": 100, \"queue_capacity\": 4"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 1 --sleep-ms 25");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 24 --k 8 --tokens 64 --batch 2");
    pid_t g1 = start_gen(&r, "g1", "--groups 24 --k 8 --tokens 64 --batch 2");
    long max_backlog = 0, samples = 0;
    double t0 = rlhf_now();
    int done0 = 0, done1 = 0;
    while ((!done0 || !done1) && rlhf_now() - t0 < 40) {
        json_t *s = get_stats(&r);
        if (s) {
            /* groups accepted but not yet delivered, plus prompts granted but not returned */
            long backlog = stat_i(s, "queue/depth") + stat_i(s, "prompts/outstanding");
            if (backlog > max_backlog) max_backlog = backlog;
            CU_ASSERT_TRUE(stat_i(s, "groups/accepted") - stat_i(s, "groups/delivered") <= 4);
            samples++;
            json_decref(s);
        }
        int st;
        if (!done0 && waitpid(g0, &st, WNOHANG) == g0) done0 = 1;
        if (!done1 && waitpid(g1, &st, WNOHANG) == g1) done1 = 1;
        sleep_ms(30);
    }
    CU_ASSERT_TRUE(done0 && done1);
    CU_ASSERT_TRUE(samples > 5);
    CU_ASSERT_TRUE(max_backlog <= 4);
    json_t *s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_TRUE(stat_i(s, "queue/max_depth") <= 4);
    CU_ASSERT_TRUE(stat_i(s, "queue/max_depth") >= 1);
    CU_ASSERT_TRUE(stat_i(s, "prompts/deferred") > 0); /* generators had to wait */
    /* bounded memory: never more than capacity groups of this size queued */
    CU_ASSERT_TRUE(stat_i(s, "queue/max_bytes") <= 4 * (8 * 64 * 8 + 2048));
    CU_ASSERT_EQUAL(stat_i(s, "rejected/queue_overflow"), 0);
    json_decref(s);
    /* the slow updater eventually gets everything */
    for (int i = 0; i < 200; i++) {
        s = get_stats(&r);
        long d = s ? stat_i(s, "groups/delivered") : 0;
        json_decref(s);
        if (d == 48) break;
        sleep_ms(50);
    }
    s = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(s, "groups/delivered"), 48);
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
}

/* Raw socket speaking protocol version 99: the broker rejects it, counts it, and says both versions. */
static void test_other_protocol_version(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "ver", NULL), 0);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 3000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    CU_ASSERT_EQUAL(zmq_connect(s, r.endpoint), 0);
    wire_out o;
    CU_ASSERT_EQUAL_FATAL(wire_encode_raw(99, WIRE_HELLO, json_pack("{sssssi}", "peer_id", "fake", "role", "generator",
                                                                    "pid", 1),
                                          NULL, 0, &o, NULL),
                          0);
    CU_ASSERT_EQUAL(wire_out_send(s, &o, NULL), 0);
    wire_out_free(&o);
    wire_rx rx = {0};
    CU_ASSERT_EQUAL_FATAL(wire_rx_recv(s, &rx, 0, NULL), 1);
    wire_msg m;
    CU_ASSERT_EQUAL_FATAL(wire_parse(rx.views, rx.n, &m, NULL, NULL), 0);
    wire_error_msg em;
    CU_ASSERT_EQUAL_FATAL(wire_decode_error(&m, &em, NULL, NULL), 0);
    CU_ASSERT_STRING_EQUAL(em.reason, "version_mismatch");
    CU_ASSERT_EQUAL(em.peer_version, 99);
    CU_ASSERT_PTR_NOT_NULL(strstr(em.detail, "version 99"));
    CU_ASSERT_PTR_NOT_NULL(strstr(em.detail, "speaks 1"));
    wire_msg_free(&m);
    wire_rx_free(&rx);
    zmq_close(s);
    json_t *st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/version_mismatch"), 1);
    CU_ASSERT_PTR_NULL(peer_of(st, "fake"));
    json_decref(st);
    /* a message before HELLO, and garbage frames, are rejected too, and the broker keeps serving */
    s = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(s, r.endpoint);
    zmq_send(s, "garbage", 7, 0);
    wire_credit cr = {5};
    wire_encode_credit(&cr, &o, NULL);
    wire_out_send(s, &o, NULL);
    wire_out_free(&o);
    sleep_ms(200);
    zmq_close(s);
    zmq_ctx_term(ctx);
    st = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/bad_frame_count"), 1);
    CU_ASSERT_EQUAL(stat_i(st, "rejected/no_hello"), 1);
    json_decref(st);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
}

/* Client side: a fake broker answering in protocol version 7 -> connect fails naming both versions. */
static void *fake_broker(void *arg) {
    void *router = arg;
    wire_rx rx = {0};
    if (wire_rx_recv(router, &rx, 0, NULL) == 1) {
        wire_out o;
        wire_encode_raw(7, WIRE_WELCOME, json_pack("{sisbsisi}", "newest_version", 0, "has_weights", 0,
                                                   "heartbeat_interval_ms", 100, "max_staleness", 1),
                        NULL, 0, &o, NULL);
        zmq_send(router, rx.views[0].data, rx.views[0].len, ZMQ_SNDMORE);
        wire_out_send(router, &o, NULL);
        wire_out_free(&o);
    }
    wire_rx_free(&rx);
    return NULL;
}

#include <pthread.h>
static void test_client_sees_other_version(void) {
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    char ep[64];
    int bound = -1;
    for (int i = 0; i < 5 && bound != 0; i++) {
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", next_port());
        bound = zmq_bind(router, ep);
    }
    CU_ASSERT_EQUAL_FATAL(bound, 0);
    pthread_t th;
    pthread_create(&th, NULL, fake_broker, router);
    broker_client *c = NULL;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL(broker_client_connect(&c, ep, WIRE_ROLE_GENERATOR, "g", 3000, &e), RLHF_EPROTO);
    CU_ASSERT_PTR_NULL(c);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "version 7"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "speaks 1"));
    CU_ASSERT_STRING_EQUAL(e.where, ep);
    pthread_join(th, NULL);
    int linger = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(router);
    zmq_ctx_term(ctx);
    /* nobody there at all: a timeout naming the endpoint */
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL(broker_client_connect(&c, ep, WIRE_ROLE_GENERATOR, "g", 200, &e), RLHF_ETIMEOUT);
    CU_ASSERT_STRING_EQUAL(e.where, ep);
}

static void test_bind_errors(void) {
    /* in use */
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    char ep[64];
    int bound = -1;
    for (int i = 0; i < 5 && bound != 0; i++) {
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", next_port());
        bound = zmq_bind(s, ep);
    }
    CU_ASSERT_EQUAL_FATAL(bound, 0);
    broker_config cfg;
    broker_config_default(&cfg);
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "%s", ep);
    cfg.replay_path[0] = 0;
    broker *b = NULL;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL(broker_create(&b, &cfg, tmpdir, &e), RLHF_EIO);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT_STRING_EQUAL(e.where, "broker.endpoint");
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, ep));
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s);
    zmq_ctx_term(ctx);
    /* a bad address */
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "tcp://no.such.host.invalid:80");
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL(broker_create(&b, &cfg, tmpdir, &e), RLHF_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "tcp://no.such.host.invalid:80"));
    /* the CLI says the same and exits non-zero */
    char cfgp[600], text[512], log[600], bin[4200];
    snprintf(cfgp, sizeof cfgp, "%s/badbind.json", tmpdir);
    snprintf(text, sizeof text, "{\"broker\": {\"endpoint\": \"tcp://256.0.0.1:1\"}}");
    FILE *f = fopen(cfgp, "w");
    fputs(text, f);
    fclose(f);
    snprintf(log, sizeof log, "%s/badbind.log", tmpdir);
    snprintf(bin, sizeof bin, "%s/rlhf", bindir);
    char *argv[] = {bin, "broker", "--config", cfgp, "--run-dir", tmpdir, NULL};
    CU_ASSERT_EQUAL(test_proc_wait(spawn(argv, log), 10), 1);
    char *out = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(log, &out, &n, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "broker.endpoint: cannot bind tcp://256.0.0.1:1"));
    free(out);
}

static void test_config_errors(void) {
    broker_config c;
    rlhf_error e;
    struct {
        const char *json, *where;
    } cases[] = {
        {"{\"max_staleness\": \"two\"}", "broker.max_staleness"},
        {"{\"max_stalenes\": 2}", "broker.max_stalenes"},
        {"{\"queue_capacity\": 0}", "broker.queue_capacity"},
        {"{\"replay\": {\"fsync\": \"sometimes\"}}", "broker.replay.fsync"},
        {"{\"replay\": {\"rotate\": 5}}", "broker.replay.rotate"},
        {"{\"endpoint\": \"http://x\"}", "broker.endpoint"},
        {"{\"selector\": []}", "broker.selector"},
        {"{\"heartbeat_interval_ms\": 1000, \"heartbeat_timeout_ms\": 500}", "broker"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = json_loads(cases[i].json, 0, NULL);
        rlhf_error_clear(&e);
        CU_ASSERT_EQUAL(broker_config_parse(&c, j, "broker", &e), RLHF_EINVAL);
        CU_ASSERT_STRING_EQUAL(e.where, cases[i].where);
        json_decref(j);
    }
    json_t *j = json_loads("{\"max_staleness\": 0, \"queue_capacity\": 3, \"replay\": {\"fsync\": \"never\", "
                           "\"rotate_bytes\": 1000}, \"selector\": {\"policy\": \"uniform\"}}",
                           0, NULL);
    CU_ASSERT_EQUAL(broker_config_parse(&c, j, "broker", &e), 0);
    CU_ASSERT_EQUAL(c.max_staleness, 0);
    CU_ASSERT_EQUAL(c.queue_capacity, 3);
    CU_ASSERT_EQUAL(c.replay_fsync, BROKER_FSYNC_NEVER);
    CU_ASSERT_EQUAL(c.replay_rotate_bytes, 1000);
    CU_ASSERT_PTR_NOT_NULL(c.selector);
    broker_config_free(&c);
    json_decref(j);
}

/* A dataset that cannot be read fails broker_create before it binds or creates a replay log: the run
 * directory is left empty and the endpoint stays free. */
static void test_bad_dataset_leaves_nothing(void) {
    char run_dir[256], log[300];
    snprintf(run_dir, sizeof run_dir, "%.200s/bad_dataset_run", tmpdir);
    snprintf(log, sizeof log, "%s/rollouts.log", run_dir);
    broker_config c;
    broker_config_default(&c);
    snprintf(c.endpoint, sizeof c.endpoint, "ipc://%.200s/bad_dataset.sock", tmpdir);
    snprintf(c.dataset, sizeof c.dataset, "%.200s/no_such_prompts.jsonl", tmpdir);
    rlhf_error e;
    rlhf_error_clear(&e);
    broker *b = NULL;
    CU_ASSERT_NOT_EQUAL(broker_create(&b, &c, run_dir, &e), 0);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.where, "no_such_prompts.jsonl"));
    CU_ASSERT_NOT_EQUAL(access(log, F_OK), 0);
    CU_ASSERT_NOT_EQUAL(access(run_dir, F_OK), 0);
    /* a selector the prompts module rejects: the same, and the error names the run-config path */
    snprintf(c.dataset, sizeof c.dataset, "%.200s/prompts.jsonl", tmpdir);
    c.selector = json_pack("{s:s}", "policy", "nope");
    CU_ASSERT_NOT_EQUAL(broker_create(&b, &c, run_dir, &e), 0);
    CU_ASSERT_STRING_EQUAL(e.where, "broker.selector.policy");
    CU_ASSERT_NOT_EQUAL(access(run_dir, F_OK), 0);
    json_decref(c.selector);
    c.selector = NULL;
    /* the endpoint was never bound: a broker without the dataset binds it */
    c.dataset[0] = 0;
    CU_ASSERT_EQUAL(broker_create(&b, &c, run_dir, &e), 0);
    broker_destroy(&b);
    broker_config_free(&c);
}

/* SIGTERM: the broker stops cleanly, tells peers, and the log holds every accepted group. */
static void test_sigterm_flushes(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "term", "\"replay\": {\"fsync\": \"never\"}"), 0);
    pid_t u0 = start_upd(&r, "u0", "--credit 100");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 20 --k 2 --tokens 8");
    CU_ASSERT_EQUAL(test_proc_wait(g0, 20), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) {
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "groups/delivered") == 20) break;
        sleep_ms(30);
    }
    json_decref(s);
    kill(r.broker, SIGTERM);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0); /* the updater was told to stop */
    char p[600];
    snprintf(p, sizeof p, "%s/rollouts.log", r.dir);
    replay_reader *rr;
    rlhf_error e;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &e), 0);
    wire_rollout_group g;
    int n = 0;
    while (replay_reader_next(rr, &g, NULL, &e) == 1) {
        n++;
        wire_rollout_group_free(&g);
    }
    CU_ASSERT_EQUAL(replay_reader_torn(rr, NULL, NULL), 0);
    replay_reader_close(&rr);
    CU_ASSERT_EQUAL(n, 20);
    /* replay-cat prints one JSON line per record */
    char cmd[5000];
    snprintf(cmd, sizeof cmd, "'%s/rlhf' replay-cat --meta '%s' 2>/dev/null | wc -l", bindir, p);
    FILE *f = popen(cmd, "r");
    int lines = -1;
    CU_ASSERT_EQUAL(fscanf(f, "%d", &lines), 1);
    pclose(f);
    CU_ASSERT_EQUAL(lines, 20);
}

/* The prompt selector's state outlives the broker process: SIGTERM saves RUN_DIR/selector_state.json,
 * a broker started on the same run dir continues from it (usage counts and fed-back groups not
 * reset); a state that does not fit the dataset stops the broker with an error naming the file. */
static void test_selector_state_restart(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "selstate", NULL), 0);
    json_t *s = get_stats(&r);
    CU_ASSERT(s && json_is_false(json_object_get(s, "selector/restored")));
    json_decref(s);
    pid_t u0 = start_upd(&r, "u0", "--credit 100 --stats");
    CU_ASSERT_EQUAL_FATAL(wait_peer(&r, "u0"), 0);
    pid_t g0 = start_gen(&r, "g0", "--groups 20 --k 2 --tokens 8");
    CU_ASSERT_EQUAL(test_proc_wait(g0, 20), 0);
    long served = -1, groups = -1;
    s = NULL;
    for (int i = 0; i < 200; i++) {
        json_decref(s);
        s = get_stats(&r);
        json_t *sel = json_object_get(s, "selector");
        served = (long)json_integer_value(json_object_get(sel, "prompts/served"));
        groups = (long)json_integer_value(json_object_get(sel, "prompts/groups"));
        if (groups == 20) break;
        sleep_ms(30);
    }
    CU_ASSERT_EQUAL(groups, 20);
    CU_ASSERT(served >= 20);
    json_t *sel = json_object_get(s, "selector");
    CU_ASSERT(json_is_number(json_object_get(sel, "prompts/zero_spread_share")));
    CU_ASSERT(json_is_number(json_object_get(sel, "prompts/mean_cohesion")));
    CU_ASSERT(json_number_value(json_object_get(sel, "prompts/sampling_entropy")) > 0);
    json_decref(s);
    kill(r.broker, SIGTERM);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(test_proc_wait(u0, 10), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/%s", r.dir, BROKER_SELECTOR_STATE);
    json_t *st = json_load_file(p, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "served")), served);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "updates")), 20);
    json_decref(st);

    /* same run dir, new process: the counts continue */
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "selstate", NULL), 0);
    s = get_stats(&r);
    CU_ASSERT(s && json_is_true(json_object_get(s, "selector/restored")));
    sel = json_object_get(s, "selector");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(sel, "prompts/served")), served);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(sel, "prompts/groups")), 20);
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);

    /* a state naming prompts this dataset does not have: refused, file named */
    run bad;
    snprintf(bad.dir, sizeof bad.dir, "%s/selstate_bad", tmpdir);
    mkdir(bad.dir, 0755);
    snprintf(p, sizeof p, "%s/%s", bad.dir, BROKER_SELECTOR_STATE);
    FILE *f = fopen(p, "w");
    fputs("{\"version\": 1, \"policy\": \"uniform\", \"n_prompts\": 3}\n", f);
    fclose(f);
    CU_ASSERT_NOT_EQUAL(start_broker(&bad, "selstate_bad", NULL), 0);
    char log[600];
    snprintf(log, sizeof log, "%s/broker.log", bad.dir);
    char *txt = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(log, &txt, &n, NULL), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(txt, BROKER_SELECTOR_STATE));
    free(txt);
}

/* Client API against a broker process: pause/resume parks and answers the same request; rejections
 * (future version, old weights, unknown prompt) are counted and reported; new weights purge queued
 * groups that became too stale; credit delivers what is left. */
/* max_generation_lag 0: a generator holding older weights than the newest gets no prompts; its request
 * is parked, the arrival of the new weights ends its wait early, and once it acknowledges them the
 * parked request is served. */
static void test_generation_lag(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "lag", "\"max_staleness\": 4, \"queue_capacity\": 8, "
                                                 "\"max_generation_lag\": 0"), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-lag", 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-lag", 3000, &e), 0);
    broker_client_wake_on_weights(gen, 1);
    wire_prompt_batch pb;
    /* no weights published yet: nothing to lag behind */
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 1, &pb, 3000, &e), 0);
    wire_prompt_batch_free(&pb);
    wire_weights w, got;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, 500);
    CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
    free((void *)w.data);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) { /* the two connections are not ordered: wait until the broker has v1 */
        json_decref(s);
        s = get_stats(&r);
        if (s && stat_i(s, "policy_version") == 1) break;
        sleep_ms(20);
    }
    json_decref(s);
    /* the request waits only until version 1 arrives (ends early), then stays parked: not acknowledged */
    int r1 = broker_client_request_prompts(gen, 1, &pb, 3000, &e);
    CU_ASSERT_EQUAL(r1, RLHF_ETIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "new weights arrived"));
    CU_ASSERT_EQUAL(broker_client_request_prompts(gen, 1, &pb, 300, &e), RLHF_ETIMEOUT);
    s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "prompts/parked"), 1);
    CU_ASSERT_TRUE(stat_i(s, "prompts/deferred_generator_lag") >= 1);
    json_decref(s);
    /* taking (acknowledging) version 1 releases the parked request */
    CU_ASSERT_EQUAL_FATAL(broker_client_poll_weights(gen, &got, 3000, &e), 1);
    CU_ASSERT_EQUAL(got.version, 1);
    wire_weights_free(&got);
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 1, &pb, 3000, &e), 0);
    CU_ASSERT_EQUAL(pb.n, 1);
    wire_prompt_batch_free(&pb);
    CU_ASSERT_EQUAL(broker_client_control(upd, WIRE_CONTROL_STOP, "done", &e), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    broker_client_close(&gen);
    broker_client_close(&upd);
}

static void test_control_and_rejections(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "ctl", "\"max_staleness\": 1, \"queue_capacity\": 8"), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-ctl", 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-ctl", 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_welcome(gen)->max_staleness, 1);
    CU_ASSERT_EQUAL(broker_client_welcome(gen)->has_weights, 0);
    /* paused: the request is held, not answered */
    CU_ASSERT_EQUAL(broker_client_control(upd, WIRE_CONTROL_PAUSE, "test", &e), 0);
    json_t *s = NULL;
    for (int i = 0; i < 100; i++) { /* other connections are not ordered with it: wait until it took effect */
        json_decref(s);
        s = get_stats(&r);
        if (s && json_is_true(json_object_get(s, "paused"))) break;
        sleep_ms(20);
    }
    json_decref(s);
    wire_prompt_batch pb;
    CU_ASSERT_EQUAL(broker_client_request_prompts(gen, 2, &pb, 300, &e), RLHF_ETIMEOUT);
    s = get_stats(&r);
    CU_ASSERT_EQUAL(stat_i(s, "prompts/parked"), 1);
    CU_ASSERT_TRUE(json_is_true(json_object_get(s, "paused")));
    json_decref(s);
    CU_ASSERT_EQUAL(broker_client_control(upd, WIRE_CONTROL_RESUME, "test", &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 2, &pb, 3000, &e), 0);
    CU_ASSERT_EQUAL(pb.request_id, 1); /* the held request, not a second one */
    CU_ASSERT_EQUAL(pb.n, 2);
    CU_ASSERT_PTR_NOT_NULL(pb.prompts[0].record);
    /* a group claiming a version nobody published */
    wire_rollout_group g;
    synth_group_make(&g, "g-ctl", 0, 5, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    /* version 0 is accepted and queued (no credit yet) */
    synth_group_make(&g, "g-ctl", 1, 0, 2, 4, pb.prompts[1].id, pb.prompts[1].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    wire_prompt_batch_free(&pb);
    /* weights v1: the generator gets them; v1 again is refused */
    wire_weights w, got;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, 5000);
    CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
    /* into a caller's buffer: too small is an error and the version stays pending */
    float small[100], params[5000];
    CU_ASSERT_EQUAL(broker_client_poll_weights_into(gen, &got, small, sizeof small, 3000, &e), RLHF_EINVAL);
    CU_ASSERT_EQUAL_FATAL(broker_client_poll_weights_into(gen, &got, params, sizeof params, 0, &e), 1);
    CU_ASSERT_EQUAL(got.version, 1);
    CU_ASSERT_PTR_EQUAL(got.data, (const uint8_t *)params);
    CU_ASSERT_EQUAL(got.n_tensors, 2);
    CU_ASSERT_TRUE(synth_weights_check(&got));
    wire_weights_free(&got); /* frees the table, not the caller's buffer */
    CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
    wire_rollout_group rg;
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 500, &e), 0); /* takes in the ERROR reply, fails nothing */
    rlhf_error last;
    CU_ASSERT_EQUAL(broker_client_rejections(upd, &last), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(last.msg, "weights_not_newer"));
    /* the ERROR for the future-version group comes on the generator's connection, and the broker may
     * have served the updater's weights first (its connections are not ordered with each other): read
     * the generator's incoming messages until it is in (a weights poll takes in whatever arrives) */
    for (int i = 0; i < 60 && broker_client_rejections(gen, NULL) < 1; i++) {
        wire_weights extra;
        if (broker_client_poll_weights(gen, &extra, 50, &e) == 1) wire_weights_free(&extra);
    }
    CU_ASSERT_EQUAL(broker_client_rejections(gen, &last), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(last.msg, "future_version"));
    free((void *)w.data);
    /* v2, v3: the queued version-0 group now lags 3 > 1 and is purged */
    for (uint64_t v = 2; v <= 3; v++) {
        synth_weights_make(&w, t, v, 5000);
        CU_ASSERT_EQUAL(broker_client_publish_weights(upd, &w, &e), 0);
        free((void *)w.data);
    }
    /* stats for a prompt the dataset does not have */
    float rw[2] = {1, 0}, tot[2] = {1, 0};
    wire_prompt_stats st = {"no-such-prompt", 3, 2, 1, NULL, rw, tot};
    CU_ASSERT_EQUAL(broker_client_send_prompt_stats(upd, &st, &e), 0);
    sleep_ms(300);
    s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "rejected/future_version"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "rejected/weights_not_newer"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "groups/accepted"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "groups/dropped_stale_queued"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "queue/depth"), 0);
    CU_ASSERT_EQUAL(stat_i(s, "policy_version"), 3);
    CU_ASSERT_EQUAL(stat_i(s, "prompt_stats/received"), 1);
    CU_ASSERT_EQUAL(stat_i(s, "prompt_stats/rejected"), 1);
    json_decref(s);
    /* a fresh group of the newest version goes to the updater once it gives credit */
    CU_ASSERT_EQUAL_FATAL(broker_client_request_prompts(gen, 1, &pb, 3000, &e), 0);
    wire_weights_free(&got);
    while (broker_client_poll_weights(gen, &got, 500, &e) == 1) {
        uint64_t v = got.version;
        wire_weights_free(&got);
        if (v == 3) break;
    }
    synth_group_make(&g, "g-ctl", 2, 3, 2, 4, pb.prompts[0].id, pb.prompts[0].text);
    CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
    synth_group_free(&g);
    wire_prompt_batch_free(&pb);
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 300, &e), 0); /* no credit: nothing */
    CU_ASSERT_EQUAL(broker_client_grant_credit(upd, 1, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_recv_group(upd, &rg, 3000, &e), 1);
    CU_ASSERT_EQUAL(rg.seq, 2);
    CU_ASSERT_EQUAL(rg.policy_version, 3);
    CU_ASSERT_TRUE(synth_group_check(&rg));
    wire_rollout_group_free(&rg);
    /* stop: both clients learn it */
    CU_ASSERT_EQUAL(broker_client_control(gen, WIRE_CONTROL_STOP, "done", &e), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    CU_ASSERT_EQUAL(broker_client_recv_group(upd, &rg, 3000, &e), RLHF_ESTATE);
    CU_ASSERT_TRUE(broker_client_stopped(upd));
    broker_client_close(&gen);
    broker_client_close(&upd);
}

/* kill -9 the broker and start it again on the same endpoint: clients say HELLO again by themselves
 * (the updater re-grants its credit), the replay log is recovered and appended to. */
static void test_broker_restart(void) {
    run r;
    CU_ASSERT_EQUAL_FATAL(start_broker(&r, "restart", "\"max_staleness\": 10"), 0);
    broker_client *gen, *upd;
    rlhf_error e;
    rlhf_error_clear(&e);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect(&gen, r.endpoint, WIRE_ROLE_GENERATOR, "g-rs", 3000, &e), 0);
    CU_ASSERT_EQUAL_FATAL(broker_client_connect(&upd, r.endpoint, WIRE_ROLE_UPDATER, "u-rs", 3000, &e), 0);
    CU_ASSERT_EQUAL(broker_client_grant_credit(upd, 10, &e), 0);
    uint64_t seq = 0;
    wire_prompt_batch pb;
    wire_rollout_group g, rg;
    for (int round = 0; round < 2; round++) {
        if (round == 1) {
            kill(r.broker, SIGKILL);
            CU_ASSERT_EQUAL(test_proc_wait(r.broker, 5), 128 + SIGKILL);
            char cfg[600], log[600], bin[4200];
            snprintf(cfg, sizeof cfg, "%s/config.json", r.dir);
            snprintf(log, sizeof log, "%s/broker.log", r.dir);
            snprintf(bin, sizeof bin, "%s/rlhf", bindir);
            char *argv[] = {bin, "broker", "--config", cfg, "--run-dir", r.dir, NULL};
            r.broker = spawn(argv, log);
        }
        int got = 0;
        for (int attempt = 0; attempt < 20 && !got; attempt++) {
            int rc = broker_client_request_prompts(gen, 3, &pb, 500, &e);
            if (rc == 0) got = 1;
            else CU_ASSERT_EQUAL(rc, RLHF_ETIMEOUT);
        }
        CU_ASSERT_TRUE_FATAL(got);
        for (uint32_t i = 0; i < pb.n; i++) {
            synth_group_make(&g, "g-rs", seq++, 0, 2, 4, pb.prompts[i].id, pb.prompts[i].text);
            CU_ASSERT_EQUAL(broker_client_push_group(gen, &g, &e), 0);
            synth_group_free(&g);
        }
        for (uint32_t i = 0; i < pb.n; i++) {
            CU_ASSERT_EQUAL_FATAL(broker_client_recv_group(upd, &rg, 5000, &e), 1);
            CU_ASSERT_TRUE(synth_group_check(&rg));
            wire_rollout_group_free(&rg);
        }
        wire_prompt_batch_free(&pb);
    }
    json_t *s = get_stats(&r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(stat_i(s, "groups/delivered"), 3); /* the new broker's share */
    json_decref(s);
    CU_ASSERT_EQUAL(send_stop(&r), 0);
    CU_ASSERT_EQUAL(test_proc_wait(r.broker, 10), 0);
    broker_client_close(&gen);
    broker_client_close(&upd);
    char p[600];
    snprintf(p, sizeof p, "%s/rollouts.log", r.dir);
    replay_reader *rr;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, p, &e), 0);
    int n = 0;
    while (replay_reader_next(rr, &g, NULL, &e) == 1) {
        CU_ASSERT_EQUAL(g.seq, (uint64_t)n);
        wire_rollout_group_free(&g);
        n++;
    }
    replay_reader_close(&rr);
    CU_ASSERT_EQUAL(n, 6);
}

#ifndef __SANITIZE_ADDRESS__ /* ASan replaces malloc: mallopt does not apply there */
/* What a ZeroMQ I/O thread does with a received weights version: 10 frames of 4 MiB malloc'ed, written,
 * freed when the next version arrives. Returns the page faults of the second version. */
static void *weights_like_allocs(void *arg) {
    long *faults = arg;
    enum { CHUNKS = 10, CHUNK = 4 << 20 };
    long before = 0;
    for (int version = 0; version < 2; version++) {
        struct rusage ru;
        getrusage(RUSAGE_THREAD, &ru);
        before = ru.ru_minflt;
        char *c[CHUNKS];
        for (int i = 0; i < CHUNKS; i++) {
            c[i] = malloc(CHUNK);
            if (!c[i]) return NULL;
            memset(c[i], version + 1, CHUNK);
        }
        for (int i = 0; i < CHUNKS; i++) free(c[i]);
    }
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    *faults = ru.ru_minflt - before;
    return NULL;
}

/* in a child (mallopt is process-wide): page faults of the second version, with or without the setting */
static long second_version_faults(int keep) {
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (keep) {
            broker_keep_freed_memory();
        } else { /* glibc's default thresholds (this test process may have set others: brokers run in it) */
            mallopt(M_MMAP_THRESHOLD, 128 * 1024);
            mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        }
        long faults = -1;
        pthread_t t;
        if (pthread_create(&t, NULL, weights_like_allocs, &faults) == 0) pthread_join(t, NULL);
        if (write(p[1], &faults, sizeof faults) != sizeof faults) _exit(1);
        _exit(0);
    }
    close(p[1]);
    long faults = -1;
    if (read(p[0], &faults, sizeof faults) != sizeof faults) faults = -1;
    close(p[0]);
    waitpid(pid, NULL, 0);
    return faults;
}

/* broker_keep_freed_memory: a second 40 MB version reuses the first one's pages (the fan-out's page
 * faults); without it, the same allocations fault in most of their ~10k pages again. */
static void test_keep_freed_memory(void) {
    long with = second_version_faults(1), without = second_version_faults(0);
    CU_ASSERT(with >= 0);
    CU_ASSERT(with < 500);
    CU_ASSERT(without > 5000);
}
#endif

int register_broker_suites(void) {
    CU_pSuite s = CU_add_suite("broker", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "config errors name the JSON path", test_config_errors);
    CU_add_test(s, "endpoint that cannot be bound: error naming it", test_bind_errors);
    CU_add_test(s, "unreadable dataset / bad selector: no replay log, endpoint not bound", test_bad_dataset_leaves_nothing);
    CU_add_test(s, "peer speaking another protocol version: both versions named", test_other_protocol_version);
    CU_add_test(s, "client facing another protocol version / no broker", test_client_sees_other_version);
    CU_add_test(s, "3 generators + 2 updaters: exactly once or dropped-stale", test_exactly_once);
    CU_add_test(s, "max_staleness = 0", test_staleness_zero);
    CU_add_test(s, "kill -9 a generator; restart gets newest weights", test_kill_and_restart);
    CU_add_test(s, "backpressure with a slow updater", test_backpressure);
    CU_add_test(s, "SIGTERM flushes the replay log; replay-cat", test_sigterm_flushes);
    CU_add_test(s, "pause/resume, rejections, stale purge, credit (client API)", test_control_and_rejections);
    CU_add_test(s, "max_generation_lag: prompts wait for the newest weights", test_generation_lag);
    CU_add_test(s, "broker kill -9 and restart: clients rejoin, log recovered", test_broker_restart);
    CU_add_test(s, "selector state survives a broker restart", test_selector_state_restart);
#ifndef __SANITIZE_ADDRESS__
    CU_add_test(s, "keep freed memory: a second weights version does not page-fault", test_keep_freed_memory);
#endif
    return 0;
}
