/* bench/bench_broker_capacity.c — what one broker process sustains with many peers: G synthetic generator
 * processes and U synthetic updater processes (tests/broker/synth_generator.c, synth_updater.c: the real
 * client API over real sockets) through one broker, as in a run: ipc:// with PLAIN credentials, the
 * replay log on (fsync every 64), every group checked (leases, prompt text, token ids), PROMPT_STATS
 * back to the selector for every group (synth_updater --stats).
 *
 *   bench_broker_capacity [GENERATORS] [UPDATERS] [GROUPS_PER_GENERATOR] [K] [TOKENS]
 *
 * Defaults 64, 4, 100, 8 samples x 256 tokens. Reports groups/s through the broker and the broker
 * process's CPU per group: getrusage (wait4) over its whole life, and its threads' CPU (schedstat) in the
 * window between 10% and 90% of the groups delivered (start-up and the tail excluded). On a machine with
 * fewer cores than peers, groups/s is bounded by the synthetic peers' own CPU; the broker's CPU per group
 * is the number that says how many generators one broker core can serve. */
#include <dirent.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "broker/broker.h"

static pid_t fork_peer(void) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
    }
    return pid;
}

/* CPU seconds of a live process: the sum over its threads' schedstat run times. */
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

static pid_t fork_broker(const char *endpoint, const char *dir, const char *dataset, const char *cred, int queue) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        broker_config cfg;
        broker_config_default(&cfg);
        snprintf(cfg.endpoint, sizeof cfg.endpoint, "%.250s", endpoint);
        char log[4200];
        snprintf(log, sizeof log, "%s/broker.log", dir);
        if (!freopen(log, "a", stderr)) _exit(1);
        snprintf(cfg.dataset, sizeof cfg.dataset, "%s", dataset);
        snprintf(cfg.credentials, sizeof cfg.credentials, "%s", cred);
        cfg.max_staleness = 1000;
        cfg.queue_capacity = (uint32_t)queue;
        cfg.stats_interval_ms = 0;
        cfg.heartbeat_timeout_ms = 60000; /* 68 processes on 2 cores: nobody is declared dead for being slow */
        cfg.max_peers = 4096;
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

static pid_t spawn_synth(const char *bin, char *const argv[], const char *log) {
    pid_t pid = fork_peer();
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execv(bin, argv);
        _exit(127);
    }
    return pid;
}

static long stat_of(broker_client *obs, const char *key) {
    json_t *s = NULL;
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_client_get_stats(obs, &s, 10000, &e) != 0) return -1;
    long v = (long)json_integer_value(json_object_get(s, key));
    json_decref(s);
    return v;
}

int main(int argc, char **argv) {
    int G = argc > 1 ? atoi(argv[1]) : 64, U = argc > 2 ? atoi(argv[2]) : 4;
    int per_gen = argc > 3 ? atoi(argv[3]) : 100, K = argc > 4 ? atoi(argv[4]) : 8;
    int tokens = argc > 5 ? atoi(argv[5]) : 256;
    if (G < 1 || G > 1024 || U < 1 || U > 64 || per_gen < 10 || K < 1 || K > 4096 || tokens < 1) {
        fprintf(stderr, "usage: bench_broker_capacity [GENERATORS 1..1024] [UPDATERS 1..64] [GROUPS_PER_GENERATOR>=10] "
                        "[K] [TOKENS]\n");
        return 2;
    }
    char self[4096], bindir[4200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 1;
    self[n] = 0;
    snprintf(bindir, sizeof bindir, "%s/../bin", dirname(self));
    char dir[] = "/tmp/bench_capacity.XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char dataset[256], cred[200], endpoint[256];
    snprintf(dataset, sizeof dataset, "%s/prompts.jsonl", dir);
    FILE *f = fopen(dataset, "w");
    for (int i = 0; i < 1000; i++) fprintf(f, "{\"id\": \"p%d\", \"prompt\": \"prompt number %d\"}\n", i, i);
    fclose(f);
    snprintf(cred, sizeof cred, "%s/credentials", dir);
    rlhf_error e;
    rlhf_error_clear(&e);
    if (broker_credentials_create(cred, &e) != 0) {
        rlhf_error_print("bench", &e);
        return 1;
    }
    snprintf(endpoint, sizeof endpoint, "ipc://%.200s/broker.sock", cred);
    pid_t brk = fork_broker(endpoint, dir, dataset, cred, 8 * G > 512 ? 8 * G : 512);
    broker_client *obs = NULL;
    for (int i = 0; i < 100 && !obs; i++) {
        rlhf_error_clear(&e);
        if (broker_client_connect_with(&obs, endpoint, WIRE_ROLE_OBSERVER, "cap-obs", cred, 200, &e) != 0) obs = NULL;
    }
    if (!obs) {
        rlhf_error_print("bench observer", &e);
        return 1;
    }
    char ugen[4300], uupd[4300], log[400], groups_s[32], k_s[32], tok_s[32];
    snprintf(ugen, sizeof ugen, "%s/synth_generator", bindir);
    snprintf(uupd, sizeof uupd, "%s/synth_updater", bindir);
    snprintf(log, sizeof log, "%s/peers.log", dir);
    snprintf(groups_s, sizeof groups_s, "%d", per_gen);
    snprintf(k_s, sizeof k_s, "%d", K);
    snprintf(tok_s, sizeof tok_s, "%d", tokens);
    pid_t *peers = calloc((size_t)(G + U), sizeof *peers);
    for (int i = 0; i < U; i++) {
        char id[32];
        snprintf(id, sizeof id, "cap-u%d", i);
        char *av[] = {uupd, "--endpoint", endpoint, "--credentials", cred, "--id", id, "--credit", "64", "--stats", NULL};
        peers[i] = spawn_synth(uupd, av, log);
    }
    double t_start = rlhf_now();
    for (int i = 0; i < G; i++) {
        char id[32];
        snprintf(id, sizeof id, "cap-g%d", i);
        char *av[] = {ugen, "--endpoint", endpoint, "--credentials", cred, "--id", id, "--groups", groups_s, "--k", k_s,
                      "--tokens", tok_s, "--batch", "4", NULL};
        peers[U + i] = spawn_synth(ugen, av, log);
    }
    long total = (long)G * per_gen, lo = total / 10, hi = total - total / 10;
    double t_lo = 0, t_hi = 0, c_lo = 0, c_hi = 0;
    long d = 0;
    while (d < total) {
        d = stat_of(obs, "groups/delivered");
        if (d < 0) return 1;
        double now = rlhf_now();
        if (!t_lo && d >= lo) t_lo = now, c_lo = proc_cpu(brk);
        if (!t_hi && d >= hi) t_hi = now, c_hi = proc_cpu(brk);
        if (now - t_start > 1800) {
            fprintf(stderr, "bench: only %ld of %ld groups after 30 min\n", d, total);
            return 1;
        }
        usleep(20000);
    }
    double t_end = rlhf_now();
    long accepted = stat_of(obs, "groups/accepted"), rejected = stat_of(obs, "rejected/total");
    long stats_in = stat_of(obs, "prompt_stats/received");
    for (int i = U; i < G + U; i++) waitpid(peers[i], NULL, 0);
    rlhf_error_clear(&e);
    broker_client *ctl = NULL;
    if (broker_client_connect_with(&ctl, endpoint, WIRE_ROLE_OBSERVER, "cap-ctl", cred, 5000, &e) == 0) {
        broker_client_control(ctl, WIRE_CONTROL_STOP, "bench done", &e);
        broker_client_close(&ctl);
    }
    broker_client_close(&obs);
    struct rusage ru;
    int st;
    double b_user = 0, b_sys = 0;
    if (wait4(brk, &st, 0, &ru) == brk) {
        b_user = ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec;
        b_sys = ru.ru_stime.tv_sec + 1e-6 * ru.ru_stime.tv_usec;
    }
    for (int i = 0; i < U; i++) waitpid(peers[i], NULL, 0);
    free(peers);
    double win = t_hi - t_lo, gps = (hi - lo) / win;
    printf("%d synthetic generators + %d synthetic updaters, one broker (ipc://, PLAIN, replay log, PROMPT_STATS per "
           "group); groups of %d x %d tokens; %ld groups (%ld accepted, %ld refusals, %ld prompt stats)\n",
           G, U, K, tokens, total, accepted, rejected, stats_in);
    printf("groups/s through the broker (10%%..90%% window, %.1f s): %.0f   (whole run %.1f s: %.0f)\n", win, gps,
           t_end - t_start, total / (t_end - t_start));
    printf("broker CPU per group: %.1f us in the window (%.1f%% of one core); whole life (getrusage) %.1f us "
           "(user %.2f s, sys %.2f s)\n", (c_hi - c_lo) / (hi - lo) * 1e6, 100 * (c_hi - c_lo) / win,
           (b_user + b_sys) / total * 1e6, b_user, b_sys);
    printf("one broker core at that cost: %.0f groups/s\n", (hi - lo) / (c_hi - c_lo));
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return accepted == total ? 0 : 1;
}
