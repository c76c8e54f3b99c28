/* bench/bench_broker_throughput.c — rollout throughput through the broker against raw ZeroMQ.
 *
 *   bench_broker_throughput [GROUPS_PER_RUN] [REPEATS] [nolog|log] [tcp|ipc] [auth|insecure]
 *
 * auth (default, as in a run): every broker-path peer presents its role's CURVE key and the traffic is
 * encrypted; insecure: the broker runs with --insecure (what CURVE costs is the difference).
 * Broker path: a generator process (client API: prompt requests + pushes) -> broker process (validates,
 * appends to the replay log, queues, delivers on credit) -> this process as the updater (client API:
 * credit, receive, decode). Peer: one process PUSHing the same encoded bytes to this process PULLing
 * them over raw ZeroMQ (no validation, no log). Groups are 8 samples x 256 tokens. Each repeat runs both
 * paths, alternating; the medians and their ratio are printed.
 *
 * Wall-clock ratios swing by +-30% between runs on a loaded machine, so the CPU time every process of a
 * path spent (all threads, ZeroMQ's I/O threads included) is also reported per group: it is what the
 * broker's own work costs, independent of how the scheduler interleaves the processes. */
#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
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


#define K 8
#define TOKENS 256

static const char *g_cred; /* the broker path's credentials directory; NULL = insecure */

static size_t group_bytes(void) {
    wire_rollout_group g;
    synth_group_make(&g, "bench-gen", 0, 0, K, TOKENS, "p0", "a prompt of moderate length for the benchmark");
    wire_out o;
    wire_encode_rollout_group(&g, &o, NULL);
    size_t n = 0;
    for (size_t i = 0; i < wire_out_nframes(&o); i++) n += wire_out_frame(&o, i).len;
    wire_out_free(&o);
    synth_group_free(&g);
    return n;
}

/* ---------------------------------------------------------------- CPU accounting */

/* CPU seconds of this whole process so far (every thread, finished ones included). */
static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* CPU seconds of a live child process: the sum over its threads' /proc/PID/task/TID/schedstat. */
static double proc_cpu(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return 0;
    double ns = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char f[320];
        snprintf(f, sizeof f, "/proc/%d/task/%s/schedstat", (int)pid, de->d_name);
        FILE *fp = fopen(f, "r");
        unsigned long long run = 0;
        if (fp) {
            if (fscanf(fp, "%llu", &run) == 1) ns += (double)run;
            fclose(fp);
        }
    }
    closedir(d);
    return ns * 1e-9;
}

/* A child that ends by itself reports its CPU time through a pipe just before exiting. */
static void report_cpu_and_exit(int fd) {
    double c = self_cpu();
    if (write(fd, &c, sizeof c) != sizeof c) _exit(1);
    _exit(0);
}
static double read_child_cpu(int fd) {
    double c = 0;
    if (read(fd, &c, sizeof c) != sizeof c) c = 0;
    close(fd);
    return c;
}

/* ---------------------------------------------------------------- broker path */

static pid_t fork_broker(const char *endpoint, const char *dir, const char *dataset, int log) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        broker_config cfg;
        broker_config_default(&cfg);
        snprintf(cfg.endpoint, sizeof cfg.endpoint, "%s", endpoint);
        snprintf(cfg.dataset, sizeof cfg.dataset, "%s", dataset);
        cfg.max_staleness = 1000;
        cfg.queue_capacity = 512;
        cfg.stats_interval_ms = 0;
        cfg.replay_fsync = BROKER_FSYNC_NEVER;
        if (!log) cfg.replay_path[0] = 0;
        if (g_cred) snprintf(cfg.credentials, sizeof cfg.credentials, "%s", g_cred);
        else cfg.insecure = 1;
        rlhf_error e;
        rlhf_error_clear(&e);
        broker *b;
        if (broker_create(&b, &cfg, dir, &e) != 0) {
            rlhf_error_print("bench broker", &e);
            _exit(1);
        }
        static volatile sig_atomic_t never;
        int rc = broker_run(b, &never, &e);
        broker_destroy(&b);
        _exit(rc ? 1 : 0);
    }
    return pid;
}

static pid_t fork_generator(const char *endpoint, int groups, int cpu_fd) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        rlhf_error e;
        rlhf_error_clear(&e);
        broker_client *c;
        if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_GENERATOR, "bench-gen", g_cred, 10000, &e) != 0) {
            rlhf_error_print("bench generator", &e);
            _exit(1);
        }
        /* payload made once: the benchmark measures transport, not payload synthesis */
        wire_rollout_group g;
        synth_group_make(&g, "bench-gen", 0, 0, K, TOKENS, "p0", "a prompt of moderate length for the benchmark");
        int sent = 0;
        while (sent < groups) {
            wire_prompt_batch pb;
            uint32_t want = groups - sent < 128 ? (uint32_t)(groups - sent) : 128;
            if (broker_client_request_prompts(c, want, &pb, 10000, &e) != 0) {
                rlhf_error_print("bench generator", &e);
                _exit(1);
            }
            for (uint32_t i = 0; i < pb.n && sent < groups; i++, sent++) {
                g.seq = (uint64_t)sent;
                g.prompt_id = pb.prompts[i].id;
                broker_client_push_group(c, &g, &e);
            }
            wire_prompt_batch_free(&pb);
        }
        g.prompt_id = NULL;
        synth_group_free(&g);
        broker_client_close(&c);
        report_cpu_and_exit(cpu_fd);
    }
    close(cpu_fd);
    return pid;
}

/* seconds from the first to the last group received by this updater; *cpu: CPU seconds of the generator,
 * broker and updater processes during the run */
static double run_broker_path(const char *endpoint, pid_t brk, int groups, double *cpu) {
    int cp[2];
    if (pipe(cp) != 0) exit(1);
    double cpu_self0 = self_cpu(), cpu_brk0 = proc_cpu(brk);
    pid_t gen = fork_generator(endpoint, groups, cp[1]);
    rlhf_error e;
    rlhf_error_clear(&e);
    broker_client *c;
    char id[64];
    snprintf(id, sizeof id, "bench-upd-%d", (int)gen);
    if (broker_client_connect_with(&c, endpoint, WIRE_ROLE_UPDATER, id, g_cred, 10000, &e) != 0) {
        rlhf_error_print("bench updater", &e);
        exit(1);
    }
    broker_client_grant_credit(c, 128, &e);
    double t0 = 0;
    for (int i = 0; i < groups; i++) {
        wire_rollout_group g;
        if (broker_client_recv_group(c, &g, 20000, &e) != 1) {
            fprintf(stderr, "bench updater: group %d did not arrive\n", i);
            exit(1);
        }
        if (i == 0) t0 = rlhf_now();
        wire_rollout_group_free(&g);
        if ((i + 1) % 32 == 0) broker_client_grant_credit(c, 32, &e); /* credit in batches, as an updater would */
    }
    double dt = rlhf_now() - t0;
    broker_client_close(&c);
    double cpu_brk1 = proc_cpu(brk);
    waitpid(gen, NULL, 0);
    *cpu = read_child_cpu(cp[0]) + (cpu_brk1 - cpu_brk0) + (self_cpu() - cpu_self0);
    return dt;
}

/* ---------------------------------------------------------------- raw ZeroMQ PUSH/PULL */

/* The peers' endpoints: tcp://127.0.0.1:PORT, or ipc://DIR/raw-PORT (same transport as the broker path). */
static const char *ipc_dir; /* NULL: tcp */
static void peer_endpoint(char *ep, size_t cap, int port) {
    if (ipc_dir)
        snprintf(ep, cap, "ipc://%s/raw-%d", ipc_dir, port);
    else
        snprintf(ep, cap, "tcp://127.0.0.1:%d", port);
}

static double run_raw(int port, int groups, double *cpu) {
    char ep[300];
    peer_endpoint(ep, sizeof ep, port);
    int cp[2];
    if (pipe(cp) != 0) exit(1);
    double cpu_self0 = self_cpu();
    pid_t pid = fork_peer();
    if (pid == 0) {
        void *ctx = zmq_ctx_new();
        void *push = zmq_socket(ctx, ZMQ_PUSH);
        zmq_connect(push, ep);
        wire_rollout_group g;
        synth_group_make(&g, "bench-gen", 0, 0, K, TOKENS, "p0", "a prompt of moderate length for the benchmark");
        wire_out o;
        wire_encode_rollout_group(&g, &o, NULL);
        for (int i = 0; i < groups; i++) wire_out_send(push, &o, NULL);
        wire_out_free(&o);
        synth_group_free(&g);
        zmq_close(push);
        zmq_ctx_term(ctx);
        report_cpu_and_exit(cp[1]);
    }
    close(cp[1]);
    void *ctx = zmq_ctx_new();
    void *pull = zmq_socket(ctx, ZMQ_PULL);
    if (zmq_bind(pull, ep) != 0) {
        fprintf(stderr, "bench raw: cannot bind %s\n", ep);
        exit(1);
    }
    wire_rx rx = {0};
    double t0 = 0;
    for (int i = 0; i < groups; i++) {
        wire_rx_recv(pull, &rx, 0, NULL);
        if (i == 0) t0 = rlhf_now();
    }
    double dt = rlhf_now() - t0;
    wire_rx_free(&rx);
    zmq_close(pull);
    zmq_ctx_term(ctx);
    waitpid(pid, NULL, 0);
    *cpu = read_child_cpu(cp[0]) + (self_cpu() - cpu_self0);
    return dt;
}

/* The same bytes through a raw relay process (PULL -> PUSH, what zmq_proxy does): the broker's topology
 * (two hops) without validation, logging, credit or prompts. */
static double run_relay(int port, int groups, double *cpu) {
    char in_ep[300], out_ep[300];
    peer_endpoint(in_ep, sizeof in_ep, port);
    peer_endpoint(out_ep, sizeof out_ep, port + 1);
    int cp[2];
    if (pipe(cp) != 0) exit(1);
    double cpu_self0 = self_cpu();
    pid_t relay = fork_peer();
    if (relay == 0) {
        void *ctx = zmq_ctx_new();
        void *in = zmq_socket(ctx, ZMQ_PULL), *out = zmq_socket(ctx, ZMQ_PUSH);
        zmq_bind(in, in_ep);
        zmq_bind(out, out_ep);
        zmq_proxy(in, out, NULL); /* until killed */
        _exit(0);
    }
    pid_t pid = fork_peer();
    if (pid == 0) {
        void *ctx = zmq_ctx_new();
        void *push = zmq_socket(ctx, ZMQ_PUSH);
        zmq_connect(push, in_ep);
        wire_rollout_group g;
        synth_group_make(&g, "bench-gen", 0, 0, K, TOKENS, "p0", "a prompt of moderate length for the benchmark");
        wire_out o;
        wire_encode_rollout_group(&g, &o, NULL);
        for (int i = 0; i < groups; i++) wire_out_send(push, &o, NULL);
        wire_out_free(&o);
        synth_group_free(&g);
        zmq_close(push);
        zmq_ctx_term(ctx);
        report_cpu_and_exit(cp[1]);
    }
    close(cp[1]);
    void *ctx = zmq_ctx_new();
    void *pull = zmq_socket(ctx, ZMQ_PULL);
    zmq_connect(pull, out_ep);
    wire_rx rx = {0};
    double t0 = 0;
    for (int i = 0; i < groups; i++) {
        wire_rx_recv(pull, &rx, 0, NULL);
        if (i == 0) t0 = rlhf_now();
    }
    double dt = rlhf_now() - t0;
    wire_rx_free(&rx);
    zmq_close(pull);
    zmq_ctx_term(ctx);
    waitpid(pid, NULL, 0);
    double cpu_relay = proc_cpu(relay);
    kill(relay, SIGKILL);
    waitpid(relay, NULL, 0);
    *cpu = read_child_cpu(cp[0]) + cpu_relay + (self_cpu() - cpu_self0);
    return dt;
}

int main(int argc, char **argv) {
    int groups = argc > 1 ? atoi(argv[1]) : 5000;
    int repeats = argc > 2 ? atoi(argv[2]) : 5;
    int log = !(argc > 3 && !strcmp(argv[3], "nolog")); /* nolog: measure without the replay log */
    int ipc = argc > 4 && !strcmp(argv[4], "ipc");         /* ipc: every path over ipc:// instead of tcp */
    int auth = !(argc > 5 && !strcmp(argv[5], "insecure"));
    if (groups < 10 || repeats < 1 || repeats > 64 || (argc > 3 && strcmp(argv[3], "nolog") && strcmp(argv[3], "log")) ||
        (argc > 4 && !ipc && strcmp(argv[4], "tcp")) || (argc > 5 && auth && strcmp(argv[5], "auth"))) {
        fprintf(stderr, "usage: bench_broker_throughput [GROUPS_PER_RUN>=10] [REPEATS 1..64] [log|nolog] [tcp|ipc] "
                        "[auth|insecure]\n");
        return 2;
    }
    char dir[] = "/tmp/bench_broker.XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char dataset[256];
    snprintf(dataset, sizeof dataset, "%s/prompts.jsonl", dir);
    FILE *f = fopen(dataset, "w");
    for (int i = 0; i < 100; i++) fprintf(f, "{\"id\": \"p%d\", \"prompt\": \"prompt number %d\"}\n", i, i);
    fclose(f);
    static char cred[300];
    if (auth) {
        snprintf(cred, sizeof cred, "%s/credentials", dir);
        rlhf_error ce;
        rlhf_error_clear(&ce);
        if (broker_credentials_create(cred, &ce) != 0) {
            rlhf_error_print("bench", &ce);
            return 1;
        }
        g_cred = cred;
    }
    int port = 30000 + getpid() % 20000;
    char endpoint[200];
    if (ipc) {
        ipc_dir = dir;
        snprintf(endpoint, sizeof endpoint, "ipc://%s/broker", dir);
    } else {
        snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    }
    pid_t brk = fork_broker(endpoint, dir, dataset, log);
    size_t gb = group_bytes();
    double tb[64], tr[64], tl[64], cb[64], cr[64], cl[64];
    for (int r = 0; r < repeats; r++) {
        tr[r] = run_raw(port + 1, groups, &cr[r]);
        tl[r] = run_relay(port + 2, groups, &cl[r]);
        tb[r] = run_broker_path(endpoint, brk, groups, &cb[r]);
        fprintf(stderr, "repeat %d: broker %.3f s (cpu %.3f s), raw %.3f s (cpu %.3f s), raw relay %.3f s (cpu %.3f s)\n",
                r, tb[r], cb[r], tr[r], cr[r], tl[r], cl[r]);
    }
    kill(brk, SIGTERM); /* the forked broker installs no handler: default action ends it */
    waitpid(brk, NULL, 0);
    double mb = median(tb, repeats), mr = median(tr, repeats), ml = median(tl, repeats);
    double gps_b = (groups - 1) / mb, gps_r = (groups - 1) / mr, gps_l = (groups - 1) / ml;
    printf("group: %d samples x %d tokens, %zu bytes on the wire; %d groups per run, %d repeats (medians), %s, broker "
           "path %s\n", K, TOKENS, gb, groups, repeats, ipc ? "ipc://" : "tcp://127.0.0.1",
           !auth ? "insecure (no authentication)" : ipc ? "PLAIN-authenticated (0700 directory)" : "CURVE-authenticated and encrypted");
    printf("broker path (gen -> broker -> updater, validated, %s):     %8.0f groups/s  %7.1f MB/s\n",
           log ? "replay-logged" : "no replay log", gps_b,
           gps_b * gb / 1e6);
    printf("raw ZeroMQ PUSH/PULL (same bytes, one hop, no checks):           %8.0f groups/s  %7.1f MB/s\n", gps_r,
           gps_r * gb / 1e6);
    printf("raw ZeroMQ relay PUSH -> PULL|PUSH -> PULL (two hops, no checks):  %8.0f groups/s  %7.1f MB/s\n", gps_l,
           gps_l * gb / 1e6);
    printf("ratio broker/raw: %.2f   broker/raw-relay: %.2f\n", gps_b / gps_r, gps_b / gps_l);
    double ub = median(cb, repeats) / groups * 1e6, ur = median(cr, repeats) / groups * 1e6,
           ul = median(cl, repeats) / groups * 1e6;
    printf("CPU per group, all processes of the path: broker %.1f us, raw %.1f us, raw relay %.1f us; "
           "ratio raw/broker %.2f, relay/broker %.2f\n", ub, ur, ul, ur / ub, ul / ub);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}
