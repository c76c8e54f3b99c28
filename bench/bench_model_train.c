/* bench/bench_model_train.c — the training-step benchmark: one training step (forward + backward +
 * AdamW) timed on a random model and batch, with OpenBLAS sgemm measured in the same process as the
 * yardstick. bench/bench_model_train.sh runs it beside the PyTorch peer.
 *
 * Model FLOPs per step = 6 * (matmul parameters) * B*T  +  12 * L * B * H * T^2 * D
 * (forward + backward = 3x forward; attention counts the full T x T score and value products, as
 * PaLM's accounting does). Matmul parameters exclude norm weights and the embedding lookup but include
 * lm_head (the tied embedding counts once, as lm_head).
 * Memory formula (bytes): 16 * P (weights, grads, Adam m and v) + 4 * activation floats
 *   B*T * [ L (6C + 2 + 3 H D + 3 KVH D + 3F + H T) + 2C + V + 4 ] + 4 * activation-gradient floats
 *   B*T * [ L (6C + 3 H D + 3 KVH D + 3F) + 2C + V + 2 ] (no gradient for attention probabilities,
 *   rstd, lse: those pages are never touched). */
#include "bench/bench_util.h"
#include "model/model.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static long max_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* A timed sgemm out (M, N) = A (M, K) · B (N, K)^T, the shape every linear layer uses. */
typedef struct {
    int M, N, K;
    float *a, *b, *c;
} gemm_probe;

static void probe_init(gemm_probe *g, int M, int N, int K) {
    g->M = M, g->N = N, g->K = K;
    g->a = malloc((size_t)M * K * sizeof(float));
    g->b = malloc((size_t)N * K * sizeof(float));
    g->c = malloc((size_t)M * N * sizeof(float));
    for (size_t i = 0; i < (size_t)M * K; i++) g->a[i] = (float)((i * 7) % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)N * K; i++) g->b[i] = (float)((i * 5) % 11) * 0.01f;
}

static double probe_run(gemm_probe *g) { /* seconds */
    double t0 = rlhf_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->M, g->N, g->K, 1.0f, g->a, g->K, g->b, g->K, 0.0f, g->c,
                g->N);
    return rlhf_now() - t0;
}

static void probe_free(gemm_probe *g) { free(g->a), free(g->b), free(g->c); }

static int opt_int(const char *name, const char *v, int *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || x < 0 || x > (1L << 30)) {
        fprintf(stderr, "bench_model_train: error: %s must be a non-negative integer, got '%s'\n", name, v ? v : "");
        return -1;
    }
    *out = (int)x;
    return 0;
}

int main(int argc, char **argv) {
    model_config cfg = {.dim = 256, .n_layers = 4, .n_heads = 4, .n_kv_heads = 0, .ffn_dim = 0, .vocab_size = 512,
                        .max_seq_len = 0, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = 0};
    int B = 4, T = 64, steps = 20, threads = 0, sgemm_n = 1024;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fprintf(stderr, "usage: bench_model_train [--dim 256] [--layers 4] [--heads 4] [--kv-heads H] [--ffn F]\n"
                            "       [--vocab 512] [--tie 0|1] [--batch 4] [--seq 64] [--steps 20] [--threads N]\n"
                            "       [--sgemm-n 1024]   (prints a summary and one JSON line)\n");
            return 0;
        }
        if (!strcmp(a, "--dim")) bad = opt_int(a, v, &cfg.dim);
        else if (!strcmp(a, "--layers")) bad = opt_int(a, v, &cfg.n_layers);
        else if (!strcmp(a, "--heads")) bad = opt_int(a, v, &cfg.n_heads);
        else if (!strcmp(a, "--kv-heads")) bad = opt_int(a, v, &cfg.n_kv_heads);
        else if (!strcmp(a, "--ffn")) bad = opt_int(a, v, &cfg.ffn_dim);
        else if (!strcmp(a, "--vocab")) bad = opt_int(a, v, &cfg.vocab_size);
        else if (!strcmp(a, "--tie")) bad = opt_int(a, v, &cfg.tie_embeddings);
        else if (!strcmp(a, "--batch")) bad = opt_int(a, v, &B);
        else if (!strcmp(a, "--seq")) bad = opt_int(a, v, &T);
        else if (!strcmp(a, "--steps")) bad = opt_int(a, v, &steps);
        else if (!strcmp(a, "--threads")) bad = opt_int(a, v, &threads);
        else if (!strcmp(a, "--sgemm-n")) bad = opt_int(a, v, &sgemm_n);
        else {
            fprintf(stderr, "bench_model_train: error: unknown option '%s'\n", a);
            return 2;
        }
        if (bad) return 2;
    }
    if (!cfg.n_kv_heads) cfg.n_kv_heads = cfg.n_heads;
    if (!cfg.ffn_dim) cfg.ffn_dim = ((8 * cfg.dim / 3) + 15) / 16 * 16; /* Llama's 8/3 C, rounded to 16 */
    cfg.max_seq_len = T;
    model_set_threads(threads);
    if (steps < 1 || B < 1 || T < 1) {
        fprintf(stderr, "bench_model_train: error: --steps, --batch and --seq must be >= 1\n");
        return 2;
    }
    long rss0 = max_rss_kb(), rss1 = 0;
    rlhf_error err = {0};
    model *m = NULL;
    model_trainer *tr = NULL;
    adamw *opt = NULL;
    int rc = model_create(&m, &cfg, &err);
    if (!rc) {
        model_init_random(m, 1);
        rc = model_trainer_create(&tr, m, B, T, &err);
    }
    adamw_config oc;
    adamw_config_default(&oc);
    if (!rc) rc = adamw_create(&opt, m, &oc, &err);
    if (rc) {
        rlhf_error_print("bench_model_train", &err);
        model_trainer_destroy(&tr);
        model_destroy(&m);
        return 1;
    }
    int N = B * T, C = cfg.dim, L = cfg.n_layers, H = cfg.n_heads, KVH = cfg.n_kv_heads, D = model_head_dim(&cfg);
    int F = cfg.ffn_dim, V = cfg.vocab_size;
    int32_t *tok = malloc((size_t)N * sizeof *tok), *tg = malloc((size_t)N * sizeof *tg);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 2);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(rlhf_rng_u64(&rng) % V), tg[i] = (int32_t)(rlhf_rng_u64(&rng) % V);
    double *t_step = malloc((size_t)steps * sizeof(double)), *t_fwd = malloc((size_t)steps * sizeof(double));
    double *t_bwd = malloc((size_t)steps * sizeof(double)), *t_opt = malloc((size_t)steps * sizeof(double));
    /* The sgemm yardstick runs interleaved with the steps (one of each probe after every step), so
     * machine noise hits both alike; its buffers are allocated after the RSS reading. */
    double *t_big = malloc((size_t)steps * sizeof(double)), *t_small = malloc((size_t)steps * sizeof(double));
    gemm_probe big = {0}, small = {0};
    int probes_ready = 0;
    float loss0 = 0, loss1 = 0;
    for (int s = -2; s < steps && !rc; s++) {
        double t0 = rlhf_now();
        /* no zero_grad: adamw_step leaves the gradients zeroed */
        rc = model_forward(tr, tok, tg, B, T, &err);
        double t1 = rlhf_now();
        if (!rc) rc = model_backward_loss(tr, &err);
        double t2 = rlhf_now();
        if (!rc) rc = adamw_step(opt, m, model_trainer_grads(tr), NULL, NULL, &err);
        double t3 = rlhf_now();
        if (s == -2) loss0 = model_trainer_loss(tr, NULL);
        loss1 = model_trainer_loss(tr, NULL);
        if (s >= 0) t_step[s] = t3 - t0, t_fwd[s] = t1 - t0, t_bwd[s] = t2 - t1, t_opt[s] = t3 - t2;
        if (s == -1) { /* after the warm-up steps: the training peak RSS is reached */
            rss1 = max_rss_kb();
            probe_init(&big, sgemm_n, sgemm_n, sgemm_n);
            probe_init(&small, N, F, C); /* the step's largest linear: (B*T, C) x (F, C)^T */
            probe_run(&big), probe_run(&small);
            probes_ready = 1;
        }
        if (s >= 0) t_big[s] = probe_run(&big), t_small[s] = probe_run(&small);
    }
    if (rc) {
        rlhf_error_print("bench_model_train", &err);
        free(tok), free(tg), free(t_step), free(t_fwd), free(t_bwd), free(t_opt), free(t_big), free(t_small);
        if (probes_ready) probe_free(&big), probe_free(&small);
        adamw_destroy(&opt);
        model_trainer_destroy(&tr);
        model_destroy(&m);
        return 1;
    }
    double ms = median(t_step, steps) * 1e3, ms_f = median(t_fwd, steps) * 1e3;
    double ms_b = median(t_bwd, steps) * 1e3, ms_o = median(t_opt, steps) * 1e3;
    double mm_params = (double)L * ((double)H * D * C * 2 + 2.0 * KVH * D * C + 3.0 * F * C) + (double)V * C;
    double flops = 6.0 * mm_params * N + 12.0 * L * B * H * (double)T * T * D;
    double gflops = flops / (ms * 1e-3) / 1e9;
    double sg_big = probes_ready ? 2.0 * sgemm_n * sgemm_n * sgemm_n / median(t_big, steps) / 1e9 : 0;
    double sg_step = probes_ready ? 2.0 * N * F * C / median(t_small, steps) / 1e9 : 0;
    /* activations, and their gradients (none for attention probabilities, rstd and lse) */
    double act_floats = (double)N * ((double)L * (6.0 * C + 2 + 3.0 * H * D + 3.0 * KVH * D + 3.0 * F + (double)H * T) +
                                     2.0 * C + V + 4);
    double grad_floats = (double)N * ((double)L * (6.0 * C + 3.0 * H * D + 3.0 * KVH * D + 3.0 * F) + 2.0 * C + V + 2);
    double formula_mb = (16.0 * m->n_params + 4.0 * act_floats + 4.0 * grad_floats) / 1048576.0;
    double rss_mb = (rss1 - rss0) / 1024.0;
    printf("model: dim %d layers %d heads %d kv_heads %d ffn %d vocab %d tied %d, %zu params (%.0f in matmuls)\n", C,
           L, H, KVH, F, V, cfg.tie_embeddings, m->n_params, mm_params);
    printf("batch %d x seq %d, %d threads (omp %d, openblas %d, openblas parallel mode %d = %s)\n", B, T,
           omp_get_max_threads(), omp_get_max_threads(), openblas_get_num_threads(), openblas_get_parallel(),
           openblas_get_parallel() == 2 ? "OpenMP, one pool" : "not OpenMP");
    printf("step median %.2f ms (forward %.2f, backward %.2f, adamw %.2f) over %d steps; loss %.3f -> %.3f\n", ms,
           ms_f, ms_b, ms_o, steps, loss0, loss1);
    printf("tokens/s %.0f, model GFLOP/s %.1f; sgemm %dx%dx%d %.1f GFLOP/s (%.0f%%), step-shaped %dx%dx%d %.1f GFLOP/s\n",
           N / (ms * 1e-3), gflops, sgemm_n, sgemm_n, sgemm_n, sg_big, 100.0 * gflops / sg_big, N, F, C, sg_step);
    printf("peak RSS growth (after warm-up) %.1f MiB vs formula %.1f MiB (16 B/param + 4 B/activation + 4 B/activation gradient)\n", rss_mb, formula_mb);
    printf("{\"bench\":\"train\",\"params\":%zu,\"matmul_params\":%.0f,\"B\":%d,\"T\":%d,\"threads\":%d,"
           "\"median_ms\":%.3f,\"forward_ms\":%.3f,\"backward_ms\":%.3f,\"adamw_ms\":%.3f,\"tokens_per_s\":%.1f,"
           "\"model_gflops\":%.2f,\"sgemm_gflops\":%.2f,\"sgemm_step_gflops\":%.2f,\"rss_mb\":%.1f,"
           "\"formula_mb\":%.1f}\n",
           m->n_params, mm_params, B, T, omp_get_max_threads(), ms, ms_f, ms_b, ms_o, N / (ms * 1e-3), gflops, sg_big,
           sg_step, rss_mb, formula_mb);
    free(tok), free(tg), free(t_step), free(t_fwd), free(t_bwd), free(t_opt), free(t_big), free(t_small);
    if (probes_ready) probe_free(&big), probe_free(&small);
    adamw_destroy(&opt);
    model_trainer_destroy(&tr);
    model_destroy(&m);
    return rc ? 1 : 0;
}
