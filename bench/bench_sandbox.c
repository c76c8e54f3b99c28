/* bench/bench_sandbox.c — cost of the code-execution sandbox.
 *
 *   1. added cost per execution: the same program run through the sandbox (one slot, sequential)
 *      and by a bare fork/exec with the same output capture, interleaved in the same process;
 *      medians and the difference (target: <= 5 ms), for /usr/bin/true and for python3;
 *   2. python3 executions per second through the pool (sized to the cores) vs bare fork/exec with
 *      the same number of threads.
 *
 * usage: bench_sandbox [N_PER_CASE=40] [N_THROUGHPUT=60] */
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "rewards/sandbox/sandbox.h"

/* CPU time of reaped children (the sandbox's init includes its program), in ms. Kernel work done
 * in workqueues (e.g. network-namespace teardown) is not in it. */
static double children_cpu_ms(void) {
    struct rusage u;
    getrusage(RUSAGE_CHILDREN, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}

static int per_exec(const char *label, const char *interp, const char *program, int n) {
    sandbox_config cfg;
    sandbox_config_default(&cfg);
    cfg.pool_size = 1;
    snprintf(cfg.interpreter, sizeof cfg.interpreter, "%s", interp);
    rlhf_error err = {0};
    sandbox_pool *p = NULL;
    if (sandbox_pool_create(&p, &cfg, &err)) {
        rlhf_error_print("bench_sandbox", &err);
        return 1;
    }
    static const char *const no_args[] = {NULL};
    sandbox_request req = {.program = program, .args = program ? NULL : no_args};
    double *sb = malloc((size_t)n * sizeof *sb), *bare = malloc((size_t)n * sizeof *bare);
    double *setup = malloc((size_t)n * sizeof *setup);
    int bad = 0;
    double cpu_sb = 0, cpu_bare = 0;
    for (int i = -3; i < n; i++) { /* 3 warm-up rounds */
        sandbox_result r;
        double c0 = children_cpu_ms(), t0 = rlhf_now();
        sandbox_pool_run(p, &req, &r);
        double c1 = children_cpu_ms(), t1 = rlhf_now();
        bad |= r.verdict != SANDBOX_PASS;
        if (i >= 0) setup[i] = r.setup_ms;
        sandbox_result_free(&r);
        sandbox_bare_run(&cfg, &req, &r);
        double c2 = children_cpu_ms(), t2 = rlhf_now();
        if (i >= 0) {
            cpu_sb += c1 - c0;
            cpu_bare += c2 - c1;
        }
        bad |= r.verdict != SANDBOX_PASS;
        sandbox_result_free(&r);
        if (i >= 0) {
            sb[i] = (t1 - t0) * 1000;
            bare[i] = (t2 - t1) * 1000;
        }
    }
    double ms = median(sb, n), mb = median(bare, n), mset = median(setup, n);
    printf("%-16s n=%d  wall: sandbox median %.2f ms, bare fork/exec median %.2f ms, added %.2f ms (%.2fx)   "
           "sandbox setup median %.2f ms   child cpu: sandbox %.2f ms, bare %.2f ms, added %.2f ms%s\n",
           label, n, ms, mb, ms - mb, ms / mb, mset, cpu_sb / n, cpu_bare / n, (cpu_sb - cpu_bare) / n,
           bad ? "  (SOME RUNS FAILED)" : "");
    free(sb);
    free(bare);
    free(setup);
    sandbox_pool_destroy(&p);
    return bad;
}

typedef struct {
    const sandbox_config *cfg;
    const sandbox_request *req;
    int n, *next, bad;
} bare_job;

static void *bare_worker(void *a) {
    bare_job *j = a;
    for (;;) {
        int i = __atomic_fetch_add(j->next, 1, __ATOMIC_RELAXED);
        if (i >= j->n) break;
        sandbox_result r;
        sandbox_bare_run(j->cfg, j->req, &r);
        j->bad |= r.verdict != SANDBOX_PASS;
        sandbox_result_free(&r);
    }
    return NULL;
}

static int throughput(int n) {
    sandbox_config cfg;
    sandbox_config_default(&cfg);
    rlhf_error err = {0};
    sandbox_pool *p = NULL;
    if (sandbox_pool_create(&p, &cfg, &err)) {
        rlhf_error_print("bench_sandbox", &err);
        return 1;
    }
    const char *prog = "import sys\nprint(sum(range(1000)))\n";
    sandbox_request *req = calloc((size_t)n, sizeof *req);
    sandbox_result *res = calloc((size_t)n, sizeof *res);
    for (int i = 0; i < n; i++) req[i].program = prog;
    int bad = 0;
    double t0 = rlhf_now();
    sandbox_pool_run_batch(p, req, (size_t)n, res);
    double t1 = rlhf_now();
    for (int i = 0; i < n; i++) {
        bad |= res[i].verdict != SANDBOX_PASS || strcmp(res[i].out, "499500\n");
        sandbox_result_free(&res[i]);
    }
    int threads = sandbox_pool_size(p);
    int next = 0;
    pthread_t th[64];
    bare_job j = {&cfg, &req[0], n, &next, 0};
    double t2 = rlhf_now();
    for (int t = 0; t < threads && t < 64; t++) pthread_create(&th[t], NULL, bare_worker, &j);
    for (int t = 0; t < threads && t < 64; t++) pthread_join(th[t], NULL);
    double t3 = rlhf_now();
    double sps = n / (t1 - t0), bps = n / (t3 - t2);
    printf("python3 throughput     n=%d  pool of %d: %.1f executions/s   bare fork/exec x%d threads: %.1f executions/s  "
           "ratio %.2f%s\n", n, threads, sps, threads, bps, sps / bps, bad || j.bad ? "  (SOME RUNS FAILED)" : "");
    free(req);
    free(res);
    sandbox_pool_destroy(&p);
    return bad || j.bad;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 40, nt = argc > 2 ? atoi(argv[2]) : 60;
    if (n < 1 || nt < 1) {
        fprintf(stderr, "usage: bench_sandbox [N_PER_CASE] [N_THROUGHPUT]\n");
        return 2;
    }
    int bad = per_exec("/usr/bin/true", "/usr/bin/true", NULL, n);
    bad |= per_exec("python3 (print)", "/usr/bin/python3", "print('hello')\n", n);
    bad |= throughput(nt);
    return bad;
}
