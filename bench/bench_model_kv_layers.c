/* bench/bench_model_kv_layers.c — what the per-layer attention options save in batched decoding: KV-cache
 * bytes and decode tokens/s of 64 streams at ~1024 positions, for the same dims three ways: plain (every
 * layer global with its own K/V), kv_share "seed" (the last 37.5% of layers reuse one layer's K/V),
 * attention_pattern "3local_1global_nope" with attention_window 256, and both (the local pattern, with the
 * last block's two later local layers reading the first's K/V and its global layer the previous global
 * layer's: examples/configs/countdown-arch-kvshare-local.json's scheme; needs a multiple of 4 layers, >= 8).
 *
 * Each timed repeat runs `steps` decode steps of all streams (one row per stream, logits for every row)
 * at positions P - steps .. P - 1 (P = --positions), after sampler_kv_fill wrote the whole cache (a
 * stand-in for a real prefill of 64 x P tokens, which takes minutes here: decode speed depends on how many
 * positions each row attends over, not on the cached values). Configurations are interleaved repeat by
 * repeat so a change in machine load hits all three alike; medians are reported, of wall-clock tokens/s
 * and of tokens per CPU-second of this process (steadier on a machine other jobs load: time spent
 * waiting for a core is not counted).
 *
 * usage: bench_model_kv_layers [--dim 512] [--layers 8] [--heads 8] [--kv-heads 4] [--ffn 1536]
 *            [--vocab 8192] [--streams 64] [--positions 1024] [--window 256] [--steps 8] [--repeats 5]
 *            [--threads N] */
#include "bench/bench_util.h"
#include "model/model.h"
#include "model/sampler_int.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

enum { N_CONFIGS = 4 };
static const char *const names[N_CONFIGS] = {"plain", "kv_share seed", "3local_1global_nope", "kv_share + local"};

int main(int argc, char **argv) {
    const char *prog = "bench_model_kv_layers";
    int dim = 512, layers = 8, heads = 8, kv_heads = 4, ffn = 1536, vocab = 8192, streams = 64, positions = 1024;
    int window = 256, steps = 8, repeats = 5, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            printf("usage: %s [--dim 512] [--layers 8] [--heads 8] [--kv-heads 4] [--ffn 1536] [--vocab 8192]\n"
                   "       [--streams 64] [--positions 1024] [--window 256] [--steps 8] [--repeats 5] [--threads N]\n",
                   prog);
            return 0;
        }
        int *dst = !strcmp(argv[i], "--dim")         ? &dim
                   : !strcmp(argv[i], "--layers")    ? &layers
                   : !strcmp(argv[i], "--heads")     ? &heads
                   : !strcmp(argv[i], "--kv-heads")  ? &kv_heads
                   : !strcmp(argv[i], "--ffn")       ? &ffn
                   : !strcmp(argv[i], "--vocab")     ? &vocab
                   : !strcmp(argv[i], "--streams")   ? &streams
                   : !strcmp(argv[i], "--positions") ? &positions
                   : !strcmp(argv[i], "--window")    ? &window
                   : !strcmp(argv[i], "--steps")     ? &steps
                   : !strcmp(argv[i], "--repeats")   ? &repeats
                   : !strcmp(argv[i], "--threads")   ? &threads
                                                     : NULL;
        char *end = NULL;
        errno = 0;
        long v = dst && i + 1 < argc ? strtol(argv[i + 1], &end, 10) : -1;
        if (!dst || !end || *end || errno || v < 1 || v > (1 << 24)) {
            fprintf(stderr, "%s: error: bad option '%s' (see the usage at the top of %s.c)\n", prog, argv[i], prog);
            return 2;
        }
        *dst = (int)v;
        i++;
    }
    if (steps >= positions) {
        fprintf(stderr, "%s: error: --steps must be below --positions\n", prog);
        return 2;
    }
    model_set_threads(threads);
    char arch[512];
    snprintf(arch, sizeof arch,
             "{\"dim\": %d, \"n_layers\": %d, \"n_heads\": %d, \"n_kv_heads\": %d, \"ffn_dim\": %d, \"vocab_size\": %d, "
             "\"max_seq_len\": %d, \"tie_embeddings\": true}",
             dim, layers, heads, kv_heads, ffn, vocab, positions);
    const char *extra[N_CONFIGS] = {"{}", "{\"kv_share\": \"seed\"}", NULL, NULL};
    char local[128], both[1024];
    snprintf(local, sizeof local, "{\"attention_pattern\": \"3local_1global_nope\", \"attention_window\": %d}", window);
    extra[2] = local;
    int n_configs = layers % 4 == 0 && layers >= 8 ? N_CONFIGS : N_CONFIGS - 1;
    if (n_configs == N_CONFIGS) { /* last block l, l, l, g: its 2nd and 3rd read the 1st's K/V, its g the previous g's */
        int n = snprintf(both, sizeof both, "{\"attention_pattern\": \"3local_1global_nope\", \"attention_window\": %d, "
                         "\"kv_share\": [", window);
        for (int l = 0; l < layers; l++) {
            int src = l == layers - 3 || l == layers - 2 ? layers - 4 : l == layers - 1 ? layers - 5 : -1;
            n += snprintf(both + n, sizeof both - (size_t)n, "%s%d", l ? ", " : "", src);
        }
        snprintf(both + n, sizeof both - (size_t)n, "]}");
        extra[3] = both;
    }
    model *m[N_CONFIGS] = {0};
    sampler *s[N_CONFIGS] = {0};
    rlhf_error err = {0};
    int rc = 0;
    for (int k = 0; k < n_configs && !rc; k++) {
        json_error_t jerr;
        json_t *j = json_loads(arch, 0, &jerr), *o = json_loads(extra[k], 0, &jerr);
        json_object_update(j, o);
        model_config c;
        rc = model_config_parse(&c, j, names[k], &err);
        json_decref(j);
        json_decref(o);
        if (!rc) rc = model_create(&m[k], &c, &err);
        if (!rc) model_init_random(m[k], 7);
        if (!rc) rc = sampler_create(&s[k], m[k], streams, &err);
        if (!rc) sampler_kv_fill(s[k], 11 + (uint64_t)k);
    }
    if (rc) {
        rlhf_error_print(prog, &err);
        return 1;
    }
    printf("kv-layers bench: dim %d, %d layers, heads %d/%d (head_dim %d), ffn %d, vocab %d (tied); %d streams, "
           "decode steps at positions %d..%d, %d threads, kernels %s\n",
           dim, layers, heads, kv_heads, dim / heads, ffn, vocab, streams, positions - steps, positions - 1,
           omp_get_max_threads(), sampler_kernels_name(s[0]));
    int *slot = malloc((size_t)streams * sizeof(int)), *pos = malloc((size_t)streams * sizeof(int));
    int *rows = malloc((size_t)streams * sizeof(int));
    int32_t *tok = malloc((size_t)streams * sizeof(int32_t));
    float *logits = malloc((size_t)streams * vocab * sizeof(float));
    double *tps[N_CONFIGS], *tpc[N_CONFIGS];
    for (int k = 0; k < n_configs; k++) tps[k] = calloc((size_t)repeats, sizeof(double));
    for (int k = 0; k < n_configs; k++) tpc[k] = calloc((size_t)repeats, sizeof(double));
    for (int i = 0; i < streams; i++) slot[i] = i, rows[i] = i, tok[i] = (int32_t)((i * 7919 + 13) % vocab);
    /* warm-up: pack weights, page everything in, start the thread pool */
    for (int k = 0; k < n_configs && !rc; k++) {
        for (int i = 0; i < streams; i++) pos[i] = positions - steps - 1;
        rc = sampler_step(s[k], streams, slot, pos, tok, streams, rows, logits, &err);
    }
    for (int r = 0; r < repeats && !rc; r++)
        for (int k = 0; k < n_configs && !rc; k++) {
            double t0 = rlhf_now(), c0 = cpu_seconds();
            for (int st = 0; st < steps && !rc; st++) {
                for (int i = 0; i < streams; i++) pos[i] = positions - steps + st;
                rc = sampler_step(s[k], streams, slot, pos, tok, streams, rows, logits, &err);
            }
            double secs = rlhf_now() - t0, cpu = cpu_seconds() - c0;
            tps[k][r] = (double)streams * steps / secs;
            tpc[k][r] = (double)streams * steps / cpu;
            printf("  repeat %d %-20s %.3f s = %.1f tokens/s, %.1f tokens per CPU-second\n", r, names[k], secs, tps[k][r],
                   tpc[k][r]);
            fflush(stdout);
        }
    if (rc) {
        rlhf_error_print(prog, &err);
        return 1;
    }
    double base_bytes = (double)sampler_kv_bytes(s[0]), base_tps = median(tps[0], repeats);
    double base_tpc = median(tpc[0], repeats);
    printf("\n| config | KV bytes (%d streams x %d positions) | vs plain | decode tokens/s (median of %d) | vs plain "
           "| tokens per CPU-second (median) | vs plain |\n",
           streams, positions, repeats);
    printf("|---|---|---|---|---|---|---|\n");
    for (int k = 0; k < n_configs; k++) {
        double b = (double)sampler_kv_bytes(s[k]), t = k ? median(tps[k], repeats) : base_tps;
        double tc = k ? median(tpc[k], repeats) : base_tpc;
        printf("| %s | %.1f MiB | %+.1f%% | %.1f | %.2fx | %.1f | %.2fx |\n", names[k], b / (1 << 20),
               100.0 * (b / base_bytes - 1.0), t, t / base_tps, tc, tc / base_tpc);
    }
    for (int k = 0; k < n_configs; k++) {
        sampler_destroy(&s[k]);
        model_destroy(&m[k]);
        free(tps[k]);
        free(tpc[k]);
    }
    free(slot), free(pos), free(rows), free(tok), free(logits);
    return 0;
}
