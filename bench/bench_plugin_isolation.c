/* bench/bench_plugin_isolation.c — what crash isolation costs: the median time per batch of a .so
 * reward plugin called in this process (isolate "none": the watchdog thread) and in its worker
 * process (isolate "process", the default: `rlhf reward-plugin-host`, JSON lines over a socket), for
 * several batch sizes, and the cost of a batch on which the plugin crashes once (the worker restarts
 * and the batch is rescored item by item). The plugin is tests/rewards/fixtures/segv_fixture.c, whose
 * score is strlen: the plugin itself costs nothing, so the difference is all isolation overhead.
 *
 *   bench_plugin_isolation [--reps 200] [--sizes 1,16,64,256] [--chars 400]
 * (run from the repository root after `make bench`; it compiles the fixture with cc and runs the
 * worker from $BUILD/bin/rlhf) */
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "common/common.h"
#include "rewards/rewards.h"

static reward_pipeline *make(const char *so, const char *isolate) {
    char json[2048];
    snprintf(json, sizeof json, "[{\"type\":\"plugin\",\"name\":\"p\",\"path\":\"%s\",\"isolate\":\"%s\","
             "\"timeout_ms\":60000}]", so, isolate);
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    if (reward_pipeline_create_str(&p, json, "bench", &err)) {
        fprintf(stderr, "bench_plugin_isolation: error: %s: %s\n", err.where, err.msg);
        exit(1);
    }
    return p;
}

/* Median seconds per reward_pipeline_score over `reps` calls (after 3 warm-up calls). */
static double time_batches(reward_pipeline *p, const rlhf_reward_item *items, int n, int reps) {
    reward_scores sc = {0};
    rlhf_error err = {0};
    double *t = malloc((size_t)reps * sizeof *t);
    for (int r = 0; r < 3; r++) reward_pipeline_score(p, items, (size_t)n, &sc, &err);
    for (int r = 0; r < reps; r++) {
        double t0 = rlhf_now();
        if (reward_pipeline_score(p, items, (size_t)n, &sc, &err) || sc.source_errors[0] != 0) {
            fprintf(stderr, "bench_plugin_isolation: error: scoring failed: %s\n", sc.status[0].reason);
            exit(1);
        }
        t[r] = rlhf_now() - t0;
    }
    double m = median(t, reps);
    free(t);
    reward_scores_free(&sc);
    return m;
}

int main(int argc, char **argv) {
    int reps = 200, chars = 400, sizes[16] = {1, 16, 64, 256}, n_sizes = 4;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--chars")) chars = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--sizes")) {
            n_sizes = 0;
            for (char *s = strtok(argv[i + 1], ","); s && n_sizes < 16; s = strtok(NULL, ",")) sizes[n_sizes++] = atoi(s);
        } else {
            fprintf(stderr, "usage: bench_plugin_isolation [--reps 200] [--sizes 1,16,64,256] [--chars 400]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 100000 || chars < 1 || chars > 1000000 || n_sizes < 1) return 2;
    /* the worker is $BUILD/bin/rlhf, next to this program's $BUILD/bench */
    char self[PATH_MAX], host[PATH_MAX + 32], so[PATH_MAX], cmd[3 * PATH_MAX], dir[] = "/tmp/bench_iso_XXXXXX";
    ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0) return 1;
    self[l] = 0;
    snprintf(host, sizeof host, "%s/../bin/rlhf", dirname(self));
    if (access(host, X_OK)) {
        fprintf(stderr, "bench_plugin_isolation: error: %s: not found (make bench builds it)\n", host);
        return 1;
    }
    setenv("RLHF_PLUGIN_HOST", host, 1);
    if (!mkdtemp(dir)) return 1;
    snprintf(so, sizeof so, "%s/segv.so", dir);
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O2 -w -I. -o %s tests/rewards/fixtures/segv_fixture.c -ljansson", so);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench_plugin_isolation: error: cannot build the fixture (run from the repository root)\n");
        return 1;
    }
    int max_n = 0;
    for (int i = 0; i < n_sizes; i++) max_n = sizes[i] > max_n ? sizes[i] : max_n;
    /* items like a run's: a prompt, a completion of --chars characters, a small record */
    char *completion = malloc((size_t)chars + 1);
    for (int i = 0; i < chars; i++) completion[i] = "abcdefghij klmnopqrst uvwxyz, 0123456789.\n"[i % 42];
    completion[chars] = 0;
    rlhf_reward_item *items = calloc((size_t)max_n, sizeof *items);
    char (*recs)[64] = calloc((size_t)max_n, sizeof *recs);
    for (int i = 0; i < max_n; i++) {
        snprintf(recs[i], sizeof recs[i], "{\"id\":\"p%d\",\"answer\":\"42\"}", i);
        items[i] = (rlhf_reward_item){"Using the numbers [3, 5, 3], make 24.", completion, NULL, 0, recs[i], i / 8, 0};
    }
    reward_pipeline *in = make(so, "none"), *wk = make(so, "process");
    double load[3] = {0};
    if (getloadavg(load, 3) < 0) load[0] = -1;
    printf("plugin isolation: median ms per batch over %d batches, completions of %d chars, load average %.2f\n",
           reps, chars, load[0]);
    printf("%8s %14s %14s %10s %16s\n", "items", "in-process ms", "worker ms", "ratio", "overhead us/item");
    for (int k = 0; k < n_sizes; k++) {
        int n = sizes[k];
        int r = n >= 256 ? (reps + 3) / 4 : reps; /* big batches: fewer repetitions, same total items */
        double a = time_batches(in, items, n, r), b = time_batches(wk, items, n, r);
        printf("%8d %14.3f %14.3f %10.1f %16.1f\n", n, a * 1e3, b * 1e3, b / a, (b - a) * 1e6 / n);
    }
    /* a batch of 64 on which the plugin crashes on one item: the worker dies, is restarted, and the
     * batch is rescored one item at a time (the crashing item restarts it once more) */
    int n = max_n < 64 ? max_n : 64;
    double *t = malloc(10 * sizeof *t);
    reward_scores sc = {0};
    rlhf_error err = {0};
    for (int r = 0; r < 10; r++) {
        char crash[64];
        snprintf(crash, sizeof crash, "SEGV %d", r); /* a new item each time: never quarantined */
        const char *keep = items[n / 2].completion;
        items[n / 2].completion = crash;
        double t0 = rlhf_now();
        reward_pipeline_score(wk, items, (size_t)n, &sc, &err);
        t[r] = rlhf_now() - t0;
        items[n / 2].completion = keep;
        if (sc.source_errors[0] != 1) fprintf(stderr, "bench_plugin_isolation: expected 1 error, got %lld\n",
                                              (long long)sc.source_errors[0]);
    }
    printf("a batch of %d with one crashing item (worker restarted twice, batch rescored item by item): "
           "median %.1f ms over 10\n", n, median(t, 10) * 1e3);
    free(t);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&in);
    reward_pipeline_destroy(&wk);
    free(items);
    free(recs);
    free(completion);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {
    }
    return 0;
}
