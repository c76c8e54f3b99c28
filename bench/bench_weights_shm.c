/* bench/bench_weights_shm.c — weight fan-out to same-host generators: through a shared-memory file
 * (broker.weights_shm = auto) against the bytes over ZeroMQ (off), same program, same bytes.
 *
 *   bench_weights_shm [N_FLOATS] [GENERATORS] [VERSIONS] [into|map] [SHM_DIR]
 *
 * Default: 67,257,504 fp32 = 269 MB, the byte count of SmolLM2-135M (134.5M parameters) in bf16 (WEIGHTS
 * carries f32 only, so the blob is half as many f32), 4 generator processes, 7 versions per path, over
 * ipc:// (what `rlhf run` uses on one host), the broker started with --insecure as in bench_broker_fanout.
 * into (default): each generator takes a version into its reused parameter buffer
 * (broker_client_poll_weights_into: one copy out of the file, or out of ZeroMQ's frames); map: it takes
 * the version as broker_client_poll_weights returns it (what `rlhf generator` does: from a file, the
 * client's kept read buffer — files were mapped until 2026-12-05, hence the name; over ZeroMQ that call
 * allocates and copies).
 *
 * Per version, two times: total = the updater's publish call -> the last generator holding the version
 * verified (every chunk's CRC-32 and the tensor table); fan-out = the broker accepting the version
 * (its weights/received_at) -> the last generator verified: the part the path changes (the updater ->
 * broker hop is the same ZeroMQ message in both). Prints medians, min, max, and the bytes each path
 * copied per version (from the broker's counters and the generators' calls). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "broker/broker.h"
#include "tests/broker/synth_common.h"

static pid_t fork_peer(void) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
    }
    return pid;
}

static volatile sig_atomic_t g_term; /* the broker child's stop flag */
static void on_term(int sig) {
    (void)sig;
    g_term = 1;
}

static pid_t fork_broker(const char *endpoint, int shm, const char *dir) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        broker_config cfg;
        broker_config_default(&cfg);
        snprintf(cfg.endpoint, sizeof cfg.endpoint, "%s", endpoint);
        cfg.replay_path[0] = 0;
        cfg.stats_interval_ms = 0;
        cfg.insecure = 1;
        cfg.weights_shm = shm;
        snprintf(cfg.weights_shm_dir, sizeof cfg.weights_shm_dir, "%s", dir);
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

/* A generator: takes `versions` versions, reports (version, wall time, ok, via shm) for each. */
static pid_t fork_generator(const char *endpoint, int idx, int fd, int versions, long n_floats, int map) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        char id[32];
        snprintf(id, sizeof id, "shm-gen-%d", idx);
        rlhf_error e;
        rlhf_error_clear(&e);
        broker_client *c;
        if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_GENERATOR, id, NULL, 20000, &e) != 0) {
            rlhf_error_print("bench generator", &e);
            _exit(1);
        }
        double ready[4] = {-1, 0, 0, 0};
        if (write(fd, ready, sizeof ready) != sizeof ready) _exit(1);
        size_t cap = (size_t)n_floats * 4;
        uint8_t *params = map ? NULL : malloc(cap);
        if (params) memset(params, 0, cap); /* its parameter memory, faulted in once, reused */
        for (int got = 0; got < versions; got++) {
            wire_weights w;
            uint64_t before = broker_client_weights_shm(c, NULL, NULL);
            int r = map ? broker_client_poll_weights(c, &w, 60000, &e)
                        : broker_client_poll_weights_into(c, &w, params, cap, 60000, &e);
            if (r != 1) {
                rlhf_error_print("bench generator", &e);
                _exit(1);
            }
            double t = rlhf_wall_time();
            /* spot check outside the timing: first and last float are the version's */
            const float *d = (const float *)w.data;
            int ok = w.nbytes == cap && d[0] == synth_weight(w.version, 0) &&
                     d[n_floats - 1] == synth_weight(w.version, (uint64_t)n_floats - 1);
            double msg[4] = {(double)w.version, t, ok, (double)(broker_client_weights_shm(c, NULL, NULL) - before)};
            wire_weights_free(&w);
            if (write(fd, msg, sizeof msg) != sizeof msg) _exit(1);
        }
        free(params);
        broker_client_close(&c);
        _exit(0);
    }
    return pid;
}

typedef struct path_result {
    double total[64], fanout[64], write_ms[64];
    int n;
    int all_ok, via_shm; /* every report verified; reports that came through the file */
    long long bytes_out, shm_written;
    double broker_cpu_s;
} path_result;

static int run_path(int shm, const char *dir, long n_floats, int n_gen, int versions, int map, path_result *res) {
    memset(res, 0, sizeof *res);
    res->all_ok = 1;
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "ipc:///tmp/bench_weights_shm.%d.%d", (int)getpid(), shm);
    pid_t brk = fork_broker(endpoint, shm, dir);
    int p[2];
    if (pipe(p) != 0) return -1;
    pid_t gens[64];
    for (int i = 0; i < n_gen; i++) gens[i] = fork_generator(endpoint, i, p[1], versions, n_floats, map);
    close(p[1]);
    for (int i = 0; i < n_gen; i++) {
        double m[4];
        if (read(p[0], m, sizeof m) != sizeof m) return -1;
    }
    rlhf_error e;
    rlhf_error_clear(&e);
    broker_client *u, *obs;
    if (broker_client_connect_with(&u, endpoint, WIRE_ROLE_UPDATER, "shm-upd", NULL, 20000, &e) != 0 ||
        broker_client_connect_with(&obs, endpoint, WIRE_ROLE_OBSERVER, "shm-obs", NULL, 20000, &e) != 0) {
        rlhf_error_print("bench", &e);
        return -1;
    }
    wire_weights w;
    wire_tensor t[2];
    synth_weights_make(&w, t, 1, (uint64_t)n_floats);
    float *blob = (float *)w.data;
    for (int r = 0; r < versions; r++) {
        w.version = (uint64_t)r + 1;
        blob[0] = synth_weight(w.version, 0); /* the spot-checked floats follow the version */
        blob[n_floats - 1] = synth_weight(w.version, (uint64_t)n_floats - 1);
        usleep(300000);
        double t0 = rlhf_wall_time();
        if (broker_client_publish_weights(u, &w, &e) != 0) {
            rlhf_error_print("bench updater", &e);
            return -1;
        }
        double last = 0;
        for (int i = 0; i < n_gen; i++) {
            double m[4];
            if (read(p[0], m, sizeof m) != sizeof m) return -1;
            if ((uint64_t)m[0] != w.version || !m[2]) res->all_ok = 0;
            res->via_shm += (int)m[3];
            if (m[1] > last) last = m[1];
        }
        json_t *s = NULL;
        if (broker_client_get_stats(obs, &s, 10000, &e) != 0) return -1;
        double recv = json_real_value(json_object_get(s, "weights/received_at"));
        res->bytes_out = json_integer_value(json_object_get(s, "bytes/out"));
        res->shm_written = json_integer_value(json_object_get(s, "weights/shm_bytes_written"));
        res->write_ms[r] = json_real_value(json_object_get(s, "weights/shm_write_ms"));
        json_decref(s);
        res->total[r] = last - t0;
        res->fanout[r] = last - recv;
        res->n++;
        fprintf(stderr, "%s version %d: total %.1f ms, fan-out %.1f ms\n", shm ? "shm" : "zmq", r + 1,
                res->total[r] * 1e3, res->fanout[r] * 1e3);
    }
    for (int i = 0; i < n_gen; i++) waitpid(gens[i], NULL, 0);
    broker_client_close(&obs);
    broker_client_close(&u);
    kill(brk, SIGTERM);
    struct rusage ru;
    int st;
    if (wait4(brk, &st, 0, &ru) == brk)
        res->broker_cpu_s = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    free(blob);
    close(p[0]);
    snprintf(endpoint, sizeof endpoint, "/tmp/bench_weights_shm.%d.%d", (int)getpid(), shm);
    unlink(endpoint);
    return 0;
}

static void report(const char *name, path_result *r, int versions, double mb, int n_gen) {
    double lo = 1e9, hi = 0, flo = 1e9, fhi = 0;
    for (int i = 0; i < r->n; i++) {
        if (r->total[i] < lo) lo = r->total[i];
        if (r->total[i] > hi) hi = r->total[i];
        if (r->fanout[i] < flo) flo = r->fanout[i];
        if (r->fanout[i] > fhi) fhi = r->fanout[i];
    }
    printf("%-5s total median %7.1f ms (min %.1f, max %.1f) | fan-out median %7.1f ms (min %.1f, max %.1f; of it "
           "the broker's file write, median %.1f ms) | broker: %.0f MB sent over ZeroMQ, %.0f MB written to files per "
           "version, %.2f s CPU in all | %d/%d generator versions through the file%s\n",
           name, median(r->total, r->n) * 1e3, lo * 1e3, hi * 1e3, median(r->fanout, r->n) * 1e3, flo * 1e3,
           fhi * 1e3, median(r->write_ms, r->n), r->bytes_out / 1e6 / versions, r->shm_written / 1e6 / versions,
           r->broker_cpu_s, r->via_shm,
           versions * n_gen, r->all_ok ? "" : "  (SOME VERSIONS FAILED THE CHECK)");
    (void)mb;
}

int main(int argc, char **argv) {
    long n_floats = argc > 1 ? atol(argv[1]) : 67257504L;
    int n_gen = argc > 2 ? atoi(argv[2]) : 4;
    int versions = argc > 3 ? atoi(argv[3]) : 7;
    int map = argc > 4 && !strcmp(argv[4], "map");
    const char *dir = argc > 5 ? argv[5] : "/dev/shm";
    if (n_floats < 2 || n_gen < 1 || n_gen > 64 || versions < 1 || versions > 64 ||
        (argc > 4 && !map && strcmp(argv[4], "into"))) {
        fprintf(stderr, "usage: bench_weights_shm [N_FLOATS] [GENERATORS 1..64] [VERSIONS 1..64] [into|map] [SHM_DIR]\n");
        return 2;
    }
    double mb = n_floats * 4 / 1e6;
    path_result shm, zmq;
    if (run_path(1, dir, n_floats, n_gen, versions, map, &shm) != 0) return 1;
    if (run_path(0, dir, n_floats, n_gen, versions, map, &zmq) != 0) return 1;
    printf("weights: %.1f MB (%ld fp32), %d generator processes, %d versions per path, ipc://, generators take "
           "them %s\n", mb, n_floats, n_gen, versions,
           map ? "as returned (poll_weights: the client's read buffer / a fresh copy)" : "into a reused buffer (poll_weights_into)");
    report("shm", &shm, versions, mb, n_gen);
    report("zmq", &zmq, versions, mb, n_gen);
    return shm.all_ok && zmq.all_ok && shm.via_shm == versions * n_gen ? 0 : 1;
}
