/* bench/bench_broker_fanout.c — weight fan-out latency: one updater publishes a 40 MB version
 * (10M fp32 parameters, 2 tensors), the broker forwards it to 4 generator processes.
 *
 *   bench_broker_fanout [N_FLOATS] [GENERATORS] [REPEATS] [tcp|ipc] [insecure|auth]
 *
 * insecure (default here, comparable with the figures taken before authentication existed): the broker
 * runs with --insecure; auth: every peer presents its CURVE key and the weights travel encrypted.
 * Latency = from the updater's publish call (encode + checksums + send) to the moment the last generator
 * holds the decoded tensors with every chunk's CRC-32 and the tensor table verified (wall clock, same
 * host). Generators report their receive time through a pipe. Prints the median, min and max; the
 * peer figure is one raw ZeroMQ PUSH of the same 40 MB to one PULL in the same run. The broker runs with
 * broker.weights_shm off, so the same-host generators get the bytes over ZeroMQ, as before that existed
 * (bench_weights_shm compares the two paths). */
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "bench/bench_util.h"
#include "broker/broker.h"
#include "tests/broker/synth_common.h"

/* fork() for the benchmark's peer processes: a child dies with the benchmark, so a benchmark
 * killed by `timeout` (or a crash) never leaves peers behind holding its output pipe. */
static pid_t fork_peer(void) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1); /* the parent died before prctl took effect */
    }
    return pid;
}

static const char *g_cred; /* credentials directory (auth); NULL = insecure */

static volatile sig_atomic_t g_term; /* the broker child's stop flag */
static void on_term(int sig) {
    (void)sig;
    g_term = 1;
}

static pid_t fork_broker(const char *endpoint) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        broker_config cfg;
        broker_config_default(&cfg);
        snprintf(cfg.endpoint, sizeof cfg.endpoint, "%s", endpoint);
        cfg.replay_path[0] = 0;
        cfg.stats_interval_ms = 0;
        if (g_cred) snprintf(cfg.credentials, sizeof cfg.credentials, "%s", g_cred);
        else cfg.insecure = 1;
        cfg.weights_shm = 0; /* this benchmark measures the bytes over ZeroMQ (the file: bench_weights_shm) */
        rlhf_error e;
        rlhf_error_clear(&e);
        broker *b;
        if (broker_create(&b, &cfg, "/tmp", &e) != 0) {
            rlhf_error_print("bench broker", &e);
            _exit(1);
        }
        /* SIGTERM ends broker_run, so broker_destroy removes the weights files it wrote */
        signal(SIGTERM, on_term);
        int rc = broker_run(b, &g_term, &e);
        broker_destroy(&b);
        _exit(rc ? 1 : 0);
    }
    return pid;
}

/* Generator: receive versions into its (reused) parameter buffer, report (version, wall time). */
static pid_t fork_generator(const char *endpoint, int idx, int fd, int versions, long n_floats) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        char id[32];
        snprintf(id, sizeof id, "fan-gen-%d", idx);
        rlhf_error e;
        rlhf_error_clear(&e);
        broker_client *c;
        if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_GENERATOR, id, g_cred, 10000, &e) != 0) {
            rlhf_error_print("bench generator", &e);
            _exit(1);
        }
        double ready[2] = {-1, rlhf_wall_time()};
        if (write(fd, ready, sizeof ready) != sizeof ready) _exit(1);
        /* the generator's parameter memory, reused for every version (as a real generator would) */
        size_t cap = (size_t)n_floats * 4;
        uint8_t *params = malloc(cap);
        memset(params, 0, cap);
        for (int got = 0; got < versions;) {
            wire_weights w;
            int r = broker_client_poll_weights_into(c, &w, params, cap, 30000, &e);
            if (r != 1) {
                rlhf_error_print("bench generator", &e);
                _exit(1);
            }
            double msg[2] = {(double)w.version, rlhf_wall_time()};
            wire_weights_free(&w);
            if (write(fd, msg, sizeof msg) != sizeof msg) _exit(1);
            got++;
        }
        free(params);
        broker_client_close(&c);
        _exit(0);
    }
    return pid;
}

static int use_ipc; /* every path over ipc:///tmp/... instead of tcp loopback */

static double raw_push_once(const wire_out *o, int port) {
    char ep[64];
    if (use_ipc)
        snprintf(ep, sizeof ep, "ipc:///tmp/bench_fanout_raw.%d", port);
    else
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t pid = fork_peer();
    if (pid == 0) {
        close(p[0]);
        void *ctx = zmq_ctx_new();
        void *pull = zmq_socket(ctx, ZMQ_PULL);
        int tmo = 30000;
        zmq_setsockopt(pull, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
        double ready = zmq_bind(pull, ep) == 0 ? 0 : -1;
        if (write(p[1], &ready, sizeof ready) != sizeof ready) _exit(1);
        wire_rx rx = {0};
        double t = wire_rx_recv(pull, &rx, 0, NULL) == 1 ? rlhf_wall_time() : 0;
        if (write(p[1], &t, sizeof t) != sizeof t) _exit(1);
        wire_rx_free(&rx);
        zmq_close(pull);
        zmq_ctx_term(ctx);
        _exit(0);
    }
    close(p[1]);
    double ready, t1;
    if (read(p[0], &ready, sizeof ready) != sizeof ready || ready < 0) {
        fprintf(stderr, "raw peer: cannot bind %s\n", ep);
        waitpid(pid, NULL, 0);
        return -1;
    }
    void *ctx = zmq_ctx_new();
    void *push = zmq_socket(ctx, ZMQ_PUSH);
    zmq_connect(push, ep);
    usleep(100000); /* connected before timing */
    double t0 = rlhf_wall_time();
    wire_out_send(push, o, NULL);
    if (read(p[0], &t1, sizeof t1) != sizeof t1) t1 = t0 - 1;
    close(p[0]);
    zmq_close(push);
    zmq_ctx_term(ctx);
    waitpid(pid, NULL, 0);
    return t1 - t0;
}

int main(int argc, char **argv) {
    long n_floats = argc > 1 ? atol(argv[1]) : 10000000L;
    int n_gen = argc > 2 ? atoi(argv[2]) : 4;
    int repeats = argc > 3 ? atoi(argv[3]) : 7;
    use_ipc = argc > 4 && !strcmp(argv[4], "ipc");
    int auth = argc > 5 && !strcmp(argv[5], "auth");
    if (n_floats < 2 || n_gen < 1 || n_gen > 64 || repeats < 1 || repeats > 64 ||
        (argc > 4 && !use_ipc && strcmp(argv[4], "tcp")) || (argc > 5 && !auth && strcmp(argv[5], "insecure"))) {
        fprintf(stderr, "usage: bench_broker_fanout [N_FLOATS] [GENERATORS 1..64] [REPEATS 1..64] [tcp|ipc] "
                        "[insecure|auth]\n");
        return 2;
    }
    static char cred[64];
    if (auth) {
        snprintf(cred, sizeof cred, "/tmp/bench_fanout_cred.%d", (int)getpid());
        rlhf_error ce;
        rlhf_error_clear(&ce);
        if (broker_credentials_create(cred, &ce) != 0) {
            rlhf_error_print("bench", &ce);
            return 1;
        }
        g_cred = cred;
    }
    int port = 30000 + getpid() % 20000;
    char endpoint[128];
    if (use_ipc && auth) /* PLAIN over ipc:// needs a directory of mode 0700: the credentials' own */
        snprintf(endpoint, sizeof endpoint, "ipc://%s/broker.sock", cred);
    else if (use_ipc)
        snprintf(endpoint, sizeof endpoint, "ipc:///tmp/bench_fanout_broker.%d", port);
    else
        snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    pid_t brk = fork_broker(endpoint);
    int p[2];
    if (pipe(p) != 0) return 1;
    pid_t gens[64];
    for (int i = 0; i < n_gen; i++) gens[i] = fork_generator(endpoint, i, p[1], repeats, n_floats);
    close(p[1]);
    for (int i = 0; i < n_gen; i++) { /* every generator connected */
        double m[2];
        if (read(p[0], m, sizeof m) != sizeof m) return 1;
    }
    rlhf_error e;
    rlhf_error_clear(&e);
    broker_client *c;
    if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_UPDATER, "fan-upd", g_cred, 10000, &e) != 0) {
        rlhf_error_print("bench updater", &e);
        return 1;
    }
    /* the weights are prepared once; each repeat publishes a new version of the same bytes */
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, (uint64_t)n_floats);
    double lat[64], lo = 1e9, hi = 0;
    for (int r = 0; r < repeats; r++) {
        w.version = (uint64_t)r + 1;
        usleep(200000);
        double t0 = rlhf_wall_time();
        if (broker_client_publish_weights(c, &w, &e) != 0) {
            rlhf_error_print("bench updater", &e);
            return 1;
        }
        double t_sent = rlhf_wall_time(), last = 0;
        for (int i = 0; i < n_gen; i++) {
            double m[2];
            if (read(p[0], m, sizeof m) != sizeof m) return 1;
            if ((uint64_t)m[0] != w.version) fprintf(stderr, "generator got version %.0f, want %llu\n", m[0], (unsigned long long)w.version);
            if (m[1] > last) last = m[1];
        }
        lat[r] = last - t0;
        if (lat[r] < lo) lo = lat[r];
        if (lat[r] > hi) hi = lat[r];
        fprintf(stderr, "version %d: %.1f ms (publish call %.1f ms)\n", r + 1, lat[r] * 1e3, (t_sent - t0) * 1e3);
    }
    for (int i = 0; i < n_gen; i++) waitpid(gens[i], NULL, 0);
    broker_client_close(&c);
    kill(brk, SIGTERM);
    waitpid(brk, NULL, 0);
    /* peer: the same encoded message, raw PUSH -> PULL, one receiver, no checks */
    wire_out o;
    wire_encode_weights(&w, &o, NULL);
    double raw[64];
    for (int r = 0; r < repeats; r++) raw[r] = raw_push_once(&o, port + 1);
    wire_out_free(&o);
    free((void *)w.data);
    qsort(lat, repeats, sizeof *lat, cmp_double);
    qsort(raw, repeats, sizeof *raw, cmp_double);
    printf("weights: %.1f MB (%ld fp32), %d generators, %d versions, %s, %s\n", n_floats * 4 / 1e6, n_floats, n_gen,
           repeats, use_ipc ? "ipc://" : "tcp://127.0.0.1", !auth ? "insecure" : use_ipc ? "PLAIN-authenticated (0700 directory)" : "CURVE-authenticated and encrypted");
    if (auth) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", cred);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", cred);
    }
    if (use_ipc) {
        snprintf(endpoint, sizeof endpoint, "/tmp/bench_fanout_broker.%d", port);
        unlink(endpoint);
        snprintf(endpoint, sizeof endpoint, "/tmp/bench_fanout_raw.%d", port + 1);
        unlink(endpoint);
    }
    printf("fan-out publish -> last generator verified: median %.1f ms (min %.1f, max %.1f)\n",
           lat[repeats / 2] * 1e3, lo * 1e3, hi * 1e3);
    printf("raw ZeroMQ PUSH -> 1 PULL of the same bytes, unverified: median %.1f ms\n", raw[repeats / 2] * 1e3);
    return 0;
}
