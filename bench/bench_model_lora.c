/* bench/bench_model_lora.c — LoRA against full fine-tuning at one model shape (default: SmolLM2-135M's,
 * random weights), in one process so machine noise cancels:
 *   - bytes of one WEIGHTS version: the encoded message (header + payload frames) of the whole model vs
 *     of the adapters alone (kind "lora");
 *   - the receiving generator's work per version: full weights copied in (run_weights_apply) vs
 *     adapters hash-checked and merged into its base copy (run_weights_apply_lora);
 *   - one training step (forward + backward + AdamW) at B x T: full vs adapters only;
 *   - peak RSS of a process that builds the model, trainer and optimizer and runs 2 steps (each
 *     configuration in its own exec'd child, so one does not inflate the other's maximum);
 *   - the same step and RSS with the base kept in bf16 (the model written as a BF16 Hugging Face
 *     directory in a temp dir and loaded with keep_bf16, as a LoRA updater loads a BF16 base);
 *   - merged vs on the fly: what applying the adapters on the fly would add to one decode step of N
 *     rows (N = 1 and 64 streams): the adapter branch x·A^T·B^T of every adapted matrix at N rows (the
 *     fp32 kernels), against merging once per version (the apply time above); the number of decode steps
 *     a version must last for merging to be the cheaper way.
 *   bench_model_lora [--ranks 1,16] [--reps 5] [--B 4] [--T 128] [--threads 2] [--arch JSON] */
#include "bench/bench_util.h"
#include "broker/wire.h"
#include "model/model.h"
#include "model/ops.h"
#include "run/run.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *SMOL = "{\"dim\":576,\"n_layers\":30,\"n_heads\":9,\"n_kv_heads\":3,\"ffn_dim\":1536,"
                          "\"vocab_size\":49152,\"max_seq_len\":2048,\"rope_theta\":100000,\"tie_embeddings\":true}";

static size_t wire_bytes(const wire_weights *w) {
    wire_out o;
    rlhf_error err = {0};
    if (wire_encode_weights(w, &o, &err)) {
        fprintf(stderr, "bench_model_lora: %s\n", err.msg);
        exit(1);
    }
    size_t n = 0;
    for (size_t i = 0; i < wire_out_nframes(&o); i++) n += wire_out_frame(&o, i).len;
    wire_out_free(&o);
    return n;
}

/* Median seconds of one training step (forward, backward, AdamW) with or without adapters. */
static double step_seconds(model *m, model_lora *l, int B, int T, int reps) {
    rlhf_error err = {0};
    model_trainer *tr = NULL;
    adamw *opt = NULL;
    adamw_config ac;
    adamw_config_default(&ac);
    if (model_trainer_create(&tr, m, B, T, &err) || (l && model_trainer_set_lora(tr, l, 1, &err)) ||
        (l ? adamw_create_params(&opt, l->tensors, l->n_tensors, l->n_params, &ac, &err) : adamw_create(&opt, m, &ac, &err))) {
        fprintf(stderr, "bench_model_lora: %s\n", err.msg);
        exit(1);
    }
    int32_t *tok = malloc((size_t)B * T * sizeof(int32_t)), *tg = malloc((size_t)B * T * sizeof(int32_t));
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 3);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(rlhf_rng_u64(&rng) % (uint64_t)m->cfg.vocab_size);
        tg[i] = (int32_t)(rlhf_rng_u64(&rng) % (uint64_t)m->cfg.vocab_size);
    }
    double *t = malloc((size_t)(reps + 1) * sizeof(double));
    for (int r = 0; r <= reps; r++) { /* the first is a warm-up */
        double t0 = rlhf_now();
        model_forward(tr, tok, tg, B, T, &err);
        model_backward_loss(tr, &err);
        if (l) adamw_step_params(opt, l->mem, l->n_params, model_trainer_lora_grads(tr), NULL, NULL, &err);
        else adamw_step(opt, m, model_trainer_grads(tr), NULL, NULL, &err);
        t[r] = rlhf_now() - t0;
    }
    double med = median(t + 1, reps);
    free(t), free(tok), free(tg);
    adamw_destroy(&opt);
    model_trainer_destroy(&tr);
    return med;
}

/* Median ms of the adapter branches of one decode step of N rows: lora_forward on every adapted matrix of
 * every layer (what applying the adapters on the fly adds to the step's base matmuls). */
static double branch_ms(const model_lora *l, int N, int reps) {
    int R = l->cfg.rank, widest = 1;
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        if (l->a[t]) {
            widest = l->in_dim[t] > widest ? l->in_dim[t] : widest;
            widest = l->out_dim[t] > widest ? l->out_dim[t] : widest;
        }
    float *x = calloc((size_t)N * widest, sizeof(float)), *y = calloc((size_t)N * widest, sizeof(float));
    float *u = calloc((size_t)N * R, sizeof(float));
    for (size_t i = 0; i < (size_t)N * widest; i++) x[i] = 0.01f * (float)(i % 17);
    double *t = malloc((size_t)(reps + 1) * sizeof(double));
    for (int r = 0; r <= reps; r++) {
        double t0 = rlhf_now();
        for (int k = 0; k < MODEL_LORA_N_TARGETS; k++)
            for (int sl = 0; l->a[k] && sl < l->n_stack[k]; sl++)
                lora_forward(y, u, x, l->a[k] + (size_t)sl * R * l->in_dim[k], l->b[k] + (size_t)sl * l->out_dim[k] * R,
                             l->scale, N, l->in_dim[k], l->out_dim[k], R);
        t[r] = rlhf_now() - t0;
    }
    double med = median(t + 1, reps);
    free(x), free(y), free(u), free(t);
    return 1e3 * med;
}

/* --rss-child R: build the model (+ adapters of rank R, or none when R = 0), trainer and optimizer, train 2
 * steps, exit. Run in a fresh process (fork + exec of this program): a plain fork of a process whose
 * OpenMP thread pool exists leaves the child's pool waiting on threads that were not copied (the first
 * version of this benchmark hung there). */
static int rss_child(const model_config *mc, int R, int B, int T, const char *bf16_dir) {
    model *m = NULL;
    model_lora *l = NULL;
    rlhf_error err = {0};
    model_load_options lo = {.keep_bf16 = 1};
    if (bf16_dir) {
        if (model_load_with(&m, bf16_dir, &lo, &err) || !m->bf16_mem) return 1;
    } else {
        if (model_create(&m, mc, &err)) return 1;
        model_init_random(m, 1);
    }
    if (R) {
        model_lora_config lc = {.rank = R, .alpha = 32, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
        if (model_lora_create(&l, m, &lc, &err)) return 1;
        model_lora_init(l, 2);
    }
    step_seconds(m, l, B, T, 1);
    return 0;
}

/* Peak RSS (MB) of `self --rss-child R ...` (same shape and threads). */
static double child_rss_mb(const char *arch, int R, int B, int T, int threads, const char *bf16_dir) {
    char rs[16], bs[16], ts[16], th[16];
    snprintf(rs, sizeof rs, "%d", R);
    snprintf(bs, sizeof bs, "%d", B);
    snprintf(ts, sizeof ts, "%d", T);
    snprintf(th, sizeof th, "%d", threads);
    char *const args[] = {"bench_model_lora", "--rss-child", rs, "--B", bs, "--T", ts, "--threads", th,
                          "--arch", (char *)arch, bf16_dir ? "--rss-bf16-base" : NULL, (char *)bf16_dir, NULL};
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &st, 0, &ru) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return -1;
    return ru.ru_maxrss / 1024.0;
}

int main(int argc, char **argv) {
    const char *arch = SMOL, *ranks_s = "1,16";
    int reps = 5, B = 4, T = 128, threads = 2, rss_rank = -1;
    const char *rss_bf16 = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            printf("usage: bench_model_lora [--ranks 1,16] [--reps 5] [--B 4] [--T 128] [--threads 2] [--arch JSON]\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "bench_model_lora: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--ranks")) ranks_s = v;
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--B")) B = atoi(v);
        else if (!strcmp(a, "--T")) T = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--arch")) arch = v;
        else if (!strcmp(a, "--rss-child")) rss_rank = atoi(v); /* internal: child_rss_mb */
        else if (!strcmp(a, "--rss-bf16-base")) rss_bf16 = v;  /* internal: child_rss_mb */
        else {
            fprintf(stderr, "bench_model_lora: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (reps < 1 || B < 1 || T < 1 || threads < 1) {
        fprintf(stderr, "bench_model_lora: --reps, --B, --T and --threads must be >= 1\n");
        return 2;
    }
    model_set_threads(threads);
    rlhf_error err = {0};
    json_t *aj = json_loads(arch, 0, NULL);
    model_config mc;
    model *m = NULL, *base = NULL;
    int not_json = !aj, bad = not_json || model_config_parse(&mc, aj, "--arch", &err);
    json_decref(aj);
    if (!bad && rss_rank >= 0) return rss_child(&mc, rss_rank, B, T, rss_bf16);
    if (bad || model_create(&m, &mc, &err) || model_create(&base, &mc, &err)) {
        fprintf(stderr, "bench_model_lora: %s\n", not_json ? "--arch is not JSON" : err.msg);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* each row as it is measured */
    model_init_random(m, 1);
    model_copy_weights(base, m, &err);
    printf("model: %zu parameters (%.1f MB fp32), B=%d T=%d, %d threads, median of %d\n", m->n_params,
           m->n_params * 4 / 1e6, B, T, threads, reps);
    wire_weights full;
    run_weights_from_model(m, &full, &err);
    size_t full_bytes = wire_bytes(&full);
    /* a received version lives in its own buffer, as a generator's does (the table points into m) */
    uint8_t *recv_copy = malloc(full.nbytes);
    memcpy(recv_copy, full.data, full.nbytes);
    full.data = recv_copy;
    double *t = malloc((size_t)reps * sizeof(double));
    for (int r = 0; r < reps; r++) {
        double t0 = rlhf_now();
        run_weights_apply(m, &full, &err);
        t[r] = rlhf_now() - t0;
    }
    double full_apply = median(t, reps);
    free(full.tensors);
    free(recv_copy);
    double full_step = step_seconds(m, NULL, B, T, reps);
    double full_rss = child_rss_mb(arch, 0, B, T, threads, NULL);
    /* the base as a BF16 file, loaded kept in bf16 (what a LoRA updater does with such a base) */
    char tmpl[] = "/tmp/bench_lora_bf16_XXXXXX", bdir[64];
    model *mb = NULL;
    model_load_options lo = {.keep_bf16 = 1};
    model_export_options eo = {.dtype = SAFETENSORS_BF16};
    if (!mkdtemp(tmpl)) {
        perror("bench_model_lora: mkdtemp");
        return 1;
    }
    snprintf(bdir, sizeof bdir, "%s/base", tmpl);
    if (model_export_hf(m, bdir, &eo, &err) || model_load_with(&mb, bdir, &lo, &err)) {
        fprintf(stderr, "bench_model_lora: bf16 base: %s\n", err.msg);
        return 1;
    }
    printf("%-10s %14s %12s %14s %12s %10s\n", "policy", "WEIGHTS bytes", "vs full", "apply (ms)", "step (ms)",
           "peak RSS MB");
    printf("%-10s %14zu %12s %14.2f %12.1f %10.0f\n", "full", full_bytes, "1", 1e3 * full_apply, 1e3 * full_step,
           full_rss);
    char buf[64];
    snprintf(buf, sizeof buf, "%s", ranks_s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int R = atoi(tok);
        model_lora_config lc = {.rank = R, .alpha = 32, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
        model_lora *l = NULL, *recv = NULL;
        if (R < 1 || model_lora_create(&l, m, &lc, &err) || model_lora_create(&recv, m, &lc, &err)) {
            fprintf(stderr, "bench_model_lora: rank %s: %s\n", tok, err.msg);
            return 2;
        }
        model_lora_init(l, 2);
        for (size_t i = 0; i < l->n_params; i++) l->mem[i] += 1e-3f; /* B != 0: a real merge */
        wire_weights w;
        run_weights_from_lora(l, 7, &w, &err);
        size_t bytes = wire_bytes(&w);
        for (int r = 0; r < reps; r++) {
            double t0 = rlhf_now();
            if (run_weights_apply_lora(m, base, recv, &w, &err)) {
                fprintf(stderr, "bench_model_lora: %s\n", err.msg);
                return 1;
            }
            t[r] = rlhf_now() - t0;
        }
        double apply = median(t, reps);
        free(w.tensors);
        double step = step_seconds(m, l, B, T, reps);
        double otf1 = branch_ms(l, 1, reps * 4), otf64 = branch_ms(l, 64, reps * 4);
        double rss = child_rss_mb(arch, R, B, T, threads, NULL);
        char rel[32];
        snprintf(rel, sizeof rel, "1/%.0f", (double)full_bytes / (double)bytes);
        printf("lora r=%-3d %14zu %12s %14.2f %12.1f %10.0f   (adapters %zu floats: %zu bytes + %zu header)\n", R, bytes,
               rel, 1e3 * apply, 1e3 * step, rss, l->n_params, l->n_params * 4, bytes - l->n_params * 4);
        /* the same adapters on the base kept in bf16 */
        model_lora *lb = NULL;
        if (model_lora_create(&lb, mb, &lc, &err)) {
            fprintf(stderr, "bench_model_lora: %s\n", err.msg);
            return 1;
        }
        memcpy(lb->mem, l->mem, l->n_params * sizeof(float));
        double step_b = step_seconds(mb, lb, B, T, reps);
        double rss_b = child_rss_mb(arch, R, B, T, threads, bdir);
        printf("%-10s %14s %12s %14s %12.1f %10.0f   (the same, base kept in bf16)\n", "  bf16 base", "", "", "",
               1e3 * step_b, rss_b);
        printf("  on the fly: +%.3f ms per decode step at 1 stream, +%.3f ms at 64; merging (%.1f ms per version) is "
               "cheaper once a version lasts more than %.0f decode steps at 1 stream, %.0f at 64\n",
               otf1, otf64, 1e3 * apply, 1e3 * apply / otf1, 1e3 * apply / otf64);
        model_lora_destroy(&lb);
        model_lora_destroy(&l);
        model_lora_destroy(&recv);
    }
    model_destroy(&mb);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    if (system(cmd) != 0) fprintf(stderr, "bench_model_lora: could not remove %s\n", tmpl);
    free(t);
    model_destroy(&m);
    model_destroy(&base);
    return 0;
}
