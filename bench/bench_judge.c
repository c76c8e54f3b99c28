/* bench/bench_judge.c — judge client throughput (judgements/s) against the fault-injecting server in
 * fixed-latency mode (every answer delayed by --latency-ms, default 100), at several concurrency caps.
 * The peer is concurrency 1 in the same run: the ratio column is throughput / that of concurrency 1, and
 * "ideal" is concurrency / latency (what a server with no per-request cost would allow).
 *
 *   bench_judge [--latency-ms 100] [--reps 3] [--conc 1,8,64]
 * (run from the repository root after `make bench`; it starts $BUILD/bin/fault_http_server itself) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench_util.h"
#include "common/common.h"
#include "rewards/judge/judge.h"
#include "tests/peer/peer.h"

int main(int argc, char **argv) {
    int latency_ms = 100, reps = 3;
    int concs[16] = {1, 8, 64}, n_conc = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--latency-ms")) latency_ms = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--conc")) {
            n_conc = 0;
            for (char *s = strtok(argv[i + 1], ","); s && n_conc < 16; s = strtok(NULL, ",")) concs[n_conc++] = atoi(s);
        } else {
            fprintf(stderr, "usage: bench_judge [--latency-ms 100] [--reps 3] [--conc 1,8,64]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 50 || latency_ms < 0) return 2;
    char bin[4096], lat[32];
    /* bench binaries live in $BUILD/bench, the server in $BUILD/bin: the same ../bin lookup as tests. */
    peer_bin_path("fault_http_server", bin, sizeof bin);
    snprintf(lat, sizeof lat, "%d", latency_ms);
    char *sargv[] = {bin, "--port", "0", "--latency-ms", lat, NULL};
    peer srv;
    if (peer_start(&srv, sargv, 10.0) != 0) {
        fprintf(stderr, "bench_judge: error: cannot start %s\n", bin);
        return 1;
    }
    printf("judge throughput vs fault_http_server --latency-ms %d (median of %d runs)\n", latency_ms, reps);
    printf("%12s %10s %14s %14s %10s\n", "concurrency", "items", "judgements/s", "ideal/s", "vs c=1");
    double base = 0;
    long serial = 0;
    for (int c = 0; c < n_conc; c++) {
        int conc = concs[c];
        int n = conc * 10; /* ten "rounds" of the cap */
        if (n < 20) n = 20;
        double rate[50];
        for (int r = 0; r < reps; r++) {
            judge_config cfg;
            judge_config_default(&cfg);
            snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
            snprintf(cfg.model, sizeof cfg.model, "bench");
            cfg.concurrency = conc;
            cfg.cache_size = 0;
            cfg.retries = 0;
            judge_client *jc = NULL;
            rlhf_error err = {0};
            if (judge_client_create(&jc, &cfg, "bench", NULL, &err)) {
                rlhf_error_print("bench_judge", &err);
                return 1;
            }
            judge_config_free(&cfg);
            judge_item *it = calloc((size_t)n, sizeof *it);
            char (*comp)[64] = calloc((size_t)n, sizeof *comp);
            for (int i = 0; i < n; i++) {
                snprintf(comp[i], sizeof comp[i], "run %ld item %d score=%d", serial, i, i % 11);
                it[i].prompt = "bench";
                it[i].completion = comp[i];
            }
            serial++;
            double t0 = rlhf_now();
            judge_score(jc, it, n, NULL);
            double dt = rlhf_now() - t0;
            int ok = 0;
            for (int i = 0; i < n; i++) ok += it[i].ok;
            if (ok != n) fprintf(stderr, "bench_judge: warning: %d of %d judgements failed\n", n - ok, n);
            rate[r] = n / dt;
            free(it);
            free(comp);
            judge_client_destroy(&jc);
        }
        qsort(rate, (size_t)reps, sizeof rate[0], cmp_double);
        double med = rate[reps / 2];
        if (c == 0) base = med;
        double ideal = latency_ms > 0 ? conc * 1000.0 / latency_ms : 0;
        printf("%12d %10d %14.1f %14.1f %9.2fx\n", conc, n, med, ideal, med / base);
    }
    peer_stop(&srv);
    return 0;
}
