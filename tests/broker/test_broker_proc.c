/* tests/broker/test_broker_proc.c — the broker as a real process over tcp loopback, with synthetic
 * generators and updaters as real processes (tests/broker/synth_*.c): the suite's helpers
 * (tests/broker/broker_proc_test.h), config errors, bind errors and protocol version errors, and the
 * registration of the whole "broker" suite. Delivery, staleness and backpressure are in
 * tests/broker/test_broker_flow.c; kill -9, SIGTERM and restarts in tests/broker/test_broker_restart.c.
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
#include "tests/broker/broker_proc_test.h"
#include "tests/broker/synth_common.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

char tmpdir[256];
char bindir[4096];
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

void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int next_port(void) { return 20000 + (int)((getpid() * 131 + port_seq++ * 17) % 30000); }

/* fork + exec with stdout/stderr appended to LOG; a test that aborts leaves no broker or peer behind */
pid_t spawn(char *const argv[], const char *log) {
    test_proc_opts o = {.out = log, .err = log, .append = 1, .die_with_parent = 1};
    return test_proc_spawn(NULL, argv, &o);
}

/* Writes a config and starts `rlhf broker`; waits until it answers. extra: more JSON keys for "broker". */
int start_broker(run *r, const char *name, const char *extra) {
    snprintf(r->dir, sizeof r->dir, "%s/%s", tmpdir, name);
    mkdir(r->dir, 0755);
    /* the run's credentials, as the launcher makes them; every client of the tests presents one */
    snprintf(r->cred, sizeof r->cred, "%s/credentials", r->dir);
    rlhf_error ce;
    rlhf_error_clear(&ce);
    if (broker_credentials_create(r->cred, &ce) != 0) return -1;
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
            if (broker_client_connect_with(&c, r->endpoint, WIRE_ROLE_OBSERVER, "probe", r->cred, 100, &e) == 0) {
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
    char *argv[32] = {bin, "--endpoint", (char *)r->endpoint, "--id", (char *)id, "--out", out, "--credentials",
                      (char *)r->cred};
    int n = 9;
    for (char *tok = strtok(cmd, " "); tok && n < 30; tok = strtok(NULL, " ")) argv[n++] = strdup(tok);
    argv[n] = NULL;
    pid_t pid = spawn(argv, log);
    for (int i = 9; i < n; i++) free(argv[i]);
    return pid;
}

pid_t start_gen(const run *r, const char *id, const char *extra_args) {
    return start_synth(r, "synth_generator", id, extra_args);
}

pid_t start_upd(const run *r, const char *id, const char *extra_args) {
    return start_synth(r, "synth_updater", id, extra_args);
}

json_t *get_stats(const run *r) {
    broker_client *c;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_client_connect_with(&c, r->endpoint, WIRE_ROLE_OBSERVER, "test-observer", r->cred, 3000, &e) != 0)
        return NULL;
    json_t *s = NULL;
    broker_client_get_stats(c, &s, 3000, &e);
    broker_client_close(&c);
    return s;
}

long stat_i(json_t *s, const char *k) { return (long)json_integer_value(json_object_get(s, k)); }

json_t *peer_of(json_t *s, const char *id) {
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(s, "peers"), i, p) if (!strcmp(json_string_value(json_object_get(p, "id")), id)) return p;
    return NULL;
}

/* Waits until the broker knows peer `id` (a process we just started); 0 when it does. */
int wait_peer(const run *r, const char *id) {
    for (int i = 0; i < 300; i++) {
        json_t *s = get_stats(r);
        int ok = s && peer_of(s, id) != NULL;
        json_decref(s);
        if (ok) return 0;
        sleep_ms(30);
    }
    return -1;
}

int send_stop(const run *r) {
    broker_client *c;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_client_connect_with(&c, r->endpoint, WIRE_ROLE_OBSERVER, "test-stopper", r->cred, 3000, &e) != 0)
        return -1;
    int rc = broker_client_control(c, WIRE_CONTROL_STOP, "test done", &e);
    broker_client_close(&c);
    return rc;
}

/* Lines "GEN SEQ PV" from FILE into keys "GEN/SEQ" (malloc'd array); returns count. */
size_t read_keys(const char *path, char ***keys) {
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

void free_keys(char **k, size_t n) {
    for (size_t i = 0; i < n; i++) free(k[i]);
    free(k);
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
    broker_credential cred; /* a real generator's key: the version is what is wrong here */
    rlhf_error ce;
    CU_ASSERT_EQUAL_FATAL(broker_credential_load(&cred, r.cred, WIRE_ROLE_GENERATOR, &ce), 0);
    CU_ASSERT_EQUAL(broker_credential_apply(s, &cred, r.endpoint), 0);
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
    broker_credential_apply(s, &cred, r.endpoint);
    zmq_connect(s, r.endpoint);
    zmq_send(s, "garbage", 7, 0);
    wire_credit cr = {5};
    wire_encode_credit(&cr, &o, NULL);
    wire_out_send(s, &o, NULL);
    wire_out_free(&o);
    sleep_ms(200);
    zmq_close(s);
    zmq_ctx_term(ctx);
    broker_credential_clear(&cred);
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
    cfg.insecure = 1;        /* about binding, not credentials */
    cfg.insecure_remote = 1; /* and not about the non-loopback refusal (tests/e2e/test_multihost.c) */
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
    CU_ASSERT_EQUAL(broker_create(&b, &cfg, tmpdir, &e), RLHF_EINVAL); /* the value's fault, not chance's */
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "tcp://no.such.host.invalid:80"));
    /* the CLI says the same and exits with the config class (2): a launcher does not restart it */
    char cfgp[600], text[512], log[600], bin[4200];
    snprintf(cfgp, sizeof cfgp, "%s/badbind.json", tmpdir);
    snprintf(text, sizeof text, "{\"broker\": {\"endpoint\": \"tcp://256.0.0.1:1\", \"insecure\": true}}");
    FILE *f = fopen(cfgp, "w");
    fputs(text, f);
    fclose(f);
    snprintf(log, sizeof log, "%s/badbind.log", tmpdir);
    snprintf(bin, sizeof bin, "%s/rlhf", bindir);
    char *argv[] = {bin, "broker", "--config", cfgp, "--run-dir", tmpdir, "--insecure", NULL};
    CU_ASSERT_EQUAL(test_proc_wait(spawn(argv, log), 10), RLHF_EXIT_CONFIG);
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
        {"{\"authorized_keys\": [{\"public\": \"not-a-key\", \"role\": \"generator\"}]}",
         "broker.authorized_keys[0].public"},
        {"{\"authorized_keys\": [{\"public\": \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\", \"role\": \"observer\"}]}",
         "broker.authorized_keys[0].role"},
        {"{\"authorized_keys\": [{\"role\": \"generator\"}]}", "broker.authorized_keys[0]"},
        {"{\"authorized_keys\": {}}", "broker.authorized_keys"},
        {"{\"insecure\": 1}", "broker.insecure"},
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
    j = json_loads("{\"authorized_keys\": [{\"public\": \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\", \"role\": "
                   "\"updater\", \"name\": \"host-b\"}], \"insecure\": true}",
                   0, NULL);
    CU_ASSERT_EQUAL(broker_config_parse(&c, j, "broker", &e), 0);
    CU_ASSERT_EQUAL(c.n_authorized, 1);
    CU_ASSERT_STRING_EQUAL(c.authorized[0].public_key, "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
    CU_ASSERT_EQUAL(c.authorized[0].role, WIRE_ROLE_UPDATER);
    CU_ASSERT_STRING_EQUAL(c.authorized[0].name, "host-b");
    CU_ASSERT_EQUAL(c.insecure_remote, 1);
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
    c.insecure = 1; /* about the dataset, not credentials */
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
    CU_add_test(s, "elastic: prompts of a generator that left are served to the next one", test_elastic_reissue);
    CU_add_test(s, "broker kill -9 and restart: clients rejoin, log recovered", test_broker_restart);
    CU_add_test(s, "selector state survives a broker restart", test_selector_state_restart);
    CU_add_test(s, "hostile: CONTROL stop from no credential / a generator's refused, run goes on", test_hostile_control);
    CU_add_test(s, "hostile: WEIGHTS from a generator, or a version jump from the updater, refused", test_hostile_weights);
    CU_add_test(s, "hostile: groups without a lease or with token ids >= vocab refused", test_hostile_groups);
    CU_add_test(s, "hostile: wrong role at HELLO answered; no or a foreign key cannot connect", test_hostile_identity);
    CU_add_test(s, "hostile: peer table bounded over many reconnects", test_hostile_peer_table);
    CU_add_test(s, "hostile: ipc:// with PLAIN: roles bound, wrong password refused, open directory refused", test_hostile_ipc_plain);
    CU_add_test(s, "hostile: a peer that never reads its replies: broker RSS bounded, real peers go on",
                test_hostile_slow_reader);
    CU_add_test(s, "hostile: 10,000 malformed messages counted by reason, log rate-limited, peers go on",
                test_hostile_flood);
#ifndef __SANITIZE_ADDRESS__
    CU_add_test(s, "keep freed memory: a second weights version does not page-fault", test_keep_freed_memory);
#endif
    /* a suite of its own so that `test_broker weights_shm` runs just these */
    CU_pSuite w = CU_add_suite("weights_shm", suite_init, suite_clean);
    if (!w) return -1;
    CU_add_test(w, "shm: versions through the file hash as over ZeroMQ; old files unlinked; none after stop",
                test_shm_versions_verified);
    CU_add_test(w, "shm: directory not writable -> the bytes over ZeroMQ, counted", test_shm_fallback_unwritable);
    CU_add_test(w, "shm: a chunk CRC mismatch -> refused, the bytes over ZeroMQ, counted", test_shm_fallback_crc);
    CU_add_test(w, "shm: kill -9 of the broker leaves a file; the next broker / the sweep removes it",
                test_shm_no_leftovers_after_kill);
    CU_add_test(w, "shm: 3 generators on another host: the bytes once per version, the others map the writer's "
                   "file; a dead writer's file swept; none left", test_shm_other_host_once);
    return 0;
}
