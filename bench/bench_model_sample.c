/* bench/bench_model_sample.c — the sampling benchmark: KV-cache sampling speed on the stories15M shape
 * (dim 288, 6 layers, 6 heads, ffn 768, vocab 32000, tied head; random weights), 256 new tokens:
 * single-stream tokens/s and the aggregate tokens/s of a batch of sequences decoded together, as
 * medians over repeats, with their ratio; and the sampler's matmul kernel against OpenBLAS.
 * bench/bench_model_sample.sh runs it beside the PyTorch peer; bench/bench_generate_peers.sh beside
 * llama2.c and llama.cpp, on the weights --llama2c-out writes (--cpu-name names the CPU above each
 * group of result lines). */
#include "bench/bench_util.h"
#include "model/model.h"
#include "model/kernels_int.h"
#include "model/sampler_int.h"

#include <cblas.h>
#undef I /* complex.h via cblas.h */

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* n floats, 2 MiB aligned (huge pages where the kernel gives them, as the sampler's buffers), written */
static float *big_buffer(size_t n) {
    size_t bytes = (n * sizeof(float) + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
    float *p = aligned_alloc((size_t)2 << 20, bytes);
    if (!p) return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i++) p[i] = (float)(i & 1023) * 1e-3f;
    return p;
}

static void bench_usage(FILE *f) {
    fprintf(f, "usage: bench_model_sample [--dim 288] [--layers 6] [--heads 6] [--kv-heads H] [--ffn 768]\n"
               "         [--vocab 32000] [--untied] [--prompt-len 8] [--new-tokens 256] [--batch 64]\n"
               "         [--threads N] [--repeats 3] [--weights fp32|bf16] [--read-rate] [--llama2c-out PATH] [--cpu-name]\n"
               "         [--model PATH]\n"
               "  --model PATH        sample from this checkpoint or Hugging Face model directory (its shape; the\n"
               "                      shape options are then ignored) instead of random weights\n"
               "  --read-rate         also measure the memory read rate and the single-stream bound it sets\n"
               "  --weights bf16      the samplers hold bf16 weights (default fp32); RLHF_ISA=ref|avx2|avx512 forces the\n"
               "                      kernels (default: the best this CPU runs)\n"
               "  --llama2c-out PATH  also write the random weights as a llama2.c checkpoint (run.c's format)\n"
               "  --cpu-name          print 'cpu: MODEL' (from /proc/cpuinfo) above each group of result lines\n");
}

/* The CPU's "model name" from /proc/cpuinfo (the first one), with its family and model numbers (a virtual
 * machine may report only "AMD EPYC"), e.g. "AMD EPYC (family 26, model 2)"; "unknown" without one. */
static void cpu_model_name(char *out, size_t n) {
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512], name[256] = "", family[32] = "", model_no[32] = "";
    while (fgets(line, sizeof line, f) && !(name[0] && family[0] && model_no[0])) {
        char *v = strchr(line, ':');
        if (!v) continue;
        v++;
        while (*v == ' ' || *v == '\t') v++;
        v[strcspn(v, "\n")] = 0;
        if (!strncmp(line, "model name", 10) && !name[0]) snprintf(name, sizeof name, "%s", v);
        else if (!strncmp(line, "cpu family", 10) && !family[0]) snprintf(family, sizeof family, "%s", v);
        else if (!strncmp(line, "model\t", 6) && !model_no[0]) snprintf(model_no, sizeof model_no, "%s", v);
    }
    fclose(f);
    if (name[0] && family[0] && model_no[0]) snprintf(out, n, "%s (family %s, model %s)", name, family, model_no);
    else if (name[0]) snprintf(out, n, "%s", name);
}

/* Writes m's weights as a llama2.c checkpoint, the legacy version-0 format karpathy/llama2.c run.c reads:
 * the int header {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative = separate
 * classifier), seq_len}, then float32 token_embedding (V,C), rms_att (L,C), wq (L,H*D,C), wk (L,KVH*D,C),
 * wv (L,KVH*D,C), wo (L,C,H*D), rms_ffn (L,C), w1 = gate (L,F,C), w2 = down (L,C,F), w3 = up (L,F,C),
 * rms_final (C), the two RoPE tables cos/sin (seq_len, D/2) that run.c skips, and wcls (V,C) only when
 * the head is untied. Every matrix is (out, in) row-major in both programs.
 * RoPE: this project rotates pairs (i, i + D/2) (Hugging Face "rotate_half"); run.c rotates interleaved
 * pairs (2i, 2i+1) with the same frequencies. The rows of wq and wk are written permuted within each
 * head (row 2i+s of the file = row s*D/2 + i of ours, the permutation llama.cpp's HF converter applies),
 * so run.c computes the same function as this project; speed is the same either way.
 * Written to a temporary file in the same directory, then renamed. Returns 0, or -1 after one line on stderr. */
static int write_llama2c(const model *m, const char *path, const char *prog) {
    const model_config *c = &m->cfg;
    const int C = c->dim, L = c->n_layers, H = c->n_heads, KVH = c->n_kv_heads, F = c->ffn_dim, V = c->vocab_size;
    const int D = model_head_dim(c), T = c->max_seq_len;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        fprintf(stderr, "%s: error: --llama2c-out %s: out of memory\n", prog, path);
        return -1;
    }
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    mode_t mask = umask(0);
    umask(mask);
    if (fd >= 0) (void)fchmod(fd, 0666 & ~mask); /* mkstemp creates 0600; the final file gets the usual mode */
    FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (!f) {
        fprintf(stderr, "%s: error: --llama2c-out %s: cannot create %s: %s\n", prog, path, tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        free(tmp);
        return -1;
    }
    int hdr[7] = {C, F, L, H, KVH, c->tie_embeddings ? V : -V, T};
    int ok = fwrite(hdr, sizeof hdr, 1, f) == 1;
#define W(ptr, count) (ok = ok && fwrite((ptr), sizeof(float), (size_t)(count), f) == (size_t)(count))
    const model_params *p = &m->p;
    W(p->embed, (size_t)V * C);
    W(p->attn_norm, (size_t)L * C);
    for (int w = 0; w < 2; w++) { /* wq, then wk: rows permuted within each head (see above) */
        const int nh = w ? KVH : H;
        const float *base = w ? p->wk : p->wq;
        for (int l = 0; l < L; l++)
            for (int h = 0; h < nh; h++)
                for (int r = 0; r < D; r++) W(base + (((size_t)l * nh + h) * D + (size_t)(r % 2) * (D / 2) + r / 2) * C, C);
    }
    W(p->wv, (size_t)L * KVH * D * C);
    W(p->wo, (size_t)L * C * H * D);
    W(p->ffn_norm, (size_t)L * C);
    W(p->w_gate, (size_t)L * F * C);
    W(p->w_down, (size_t)L * C * F);
    W(p->w_up, (size_t)L * F * C);
    W(p->final_norm, C);
    for (int t = 0; t < 2; t++) /* freq_cis_real, freq_cis_imag: unused by run.c, written for completeness */
        for (int pos = 0; pos < T; pos++)
            for (int i = 0; i < D / 2; i++) {
                double a = pos * pow((double)c->rope_theta, -2.0 * i / D);
                float v = (float)(t ? sin(a) : cos(a));
                W(&v, 1);
            }
    if (!c->tie_embeddings) W(p->lm_head, (size_t)V * C);
#undef W
    int saved = errno;
    if (fflush(f) || fsync(fileno(f))) {
        saved = errno;
        ok = 0;
    }
    if (fclose(f)) {
        if (ok) saved = errno;
        ok = 0;
    }
    if (ok && rename(tmp, path)) {
        saved = errno;
        ok = 0;
    }
    if (!ok) {
        fprintf(stderr, "%s: error: --llama2c-out %s: write failed: %s\n", prog, path, strerror(saved));
        unlink(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

/* The matmul kernel against its named peer, OpenBLAS, on the LM-head shape (V, C) in the same process:
 * sgemv for one row (the single-stream case), sgemm for `rows` rows (batched decode). Medians. */
static void kernel_vs_openblas(const float *W, int V, int C, int rows, int repeats) {
    float *Wp = aligned_alloc(64, (sampler_packed_size(V, C) * sizeof(float) + 63) & ~(size_t)63);
    float *x = malloc((size_t)rows * C * sizeof(float)), *y = malloc((size_t)rows * V * sizeof(float));
    if (!Wp || !x || !y) {
        free(Wp);
        free(x);
        free(y);
        return;
    }
    const model_kernels *kern = &model_kernels_ref;
    rlhf_error err = {0};
    if (model_kernels_select(&kern, &err)) rlhf_error_print("bench_model_sample", &err);
    sampler_pack_matrix(Wp, C, W, V, NULL, 0, NULL, 0);
    for (int i = 0; i < rows * C; i++) x[i] = 0.01f * (float)(i % 101) - 0.5f;
    int nrep = 5 * repeats;
    double *t_ours = calloc((size_t)nrep, sizeof(double)), *t_blas = calloc((size_t)nrep, sizeof(double));
    for (int pass = 0; pass < 2; pass++) {
        int R = pass ? rows : 1;
        int inner = pass ? 4 : 40;
        for (int r = 0; r < nrep; r++) { /* interleaved so machine noise hits both alike */
            double t0 = rlhf_now();
            for (int k = 0; k < inner; k++)
                if (R == 1)
                    cblas_sgemv(CblasRowMajor, CblasNoTrans, V, C, 1.0f, W, C, x, 1, 0.0f, y, 1);
                else
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, V, C, 1.0f, x, C, W, C, 0.0f, y, V);
            double t1 = rlhf_now();
            for (int k = 0; k < inner; k++) sampler_matmul_packed(kern, y, x, C, Wp, R, C, V, 0);
            double t2 = rlhf_now();
            t_blas[r] = (t1 - t0) / inner;
            t_ours[r] = (t2 - t1) / inner;
        }
        double tb = median(t_blas, nrep), to = median(t_ours, nrep), flop = 2.0 * R * V * C;
        printf("kernel %s (%d x %d) x %d rows: packed [%s] %.3f ms (%.1f GFLOP/s), OpenBLAS %s %.3f ms (%.1f GFLOP/s): "
               "%.2fx\n",
               "lm_head", V, C, R, kern->name, to * 1e3, flop / to / 1e9, R == 1 ? "sgemv" : "sgemm", tb * 1e3, flop / tb / 1e9,
               tb / to);
    }
    free(t_ours);
    free(t_blas);
    free(Wp);
    free(x);
    free(y);
}

/* The machine's memory read rate with `threads` threads: the median of 5 sums over a 512 MiB buffer (far
 * larger than any cache), in GB/s. Single-stream decode reads every weight once per token, so this rate
 * divided by the weight bytes per token bounds its tokens/s. */
static double read_rate_gbs(int threads) {
    size_t n = (size_t)128 << 20; /* floats */
    float *buf = big_buffer(n);
    if (!buf) return 0.0;
    double t[5];
    volatile uint32_t sink = 0;
    const uint32_t *words = (const uint32_t *)buf; /* integer sums: associative, so the loop vectorises */
    for (int r = 0; r < 5; r++) {
        double t0 = rlhf_now();
        uint32_t total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(threads) schedule(static)
        for (size_t i = 0; i < n; i++) total += words[i];
        t[r] = rlhf_now() - t0;
        sink += total;
    }
    (void)sink;
    free(buf);
    return (double)n * sizeof(float) / median(t, 5) / 1e9;
}

/* CPU seconds of all this process's threads: on a shared, oversubscribed machine tokens per CPU-second
 * is a steadier figure than wall time (it still includes memory-bandwidth contention). */
static double process_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Generates n sequences of new_tokens each (no stops); returns seconds. */
static int timed_run(sampler *s, const int32_t *prompt, int prompt_len, int n, int new_tokens, uint64_t seed,
                     double *secs, double *cpu_secs, long *tokens, rlhf_error *err) {
    sample_request *reqs = calloc((size_t)n, sizeof *reqs);
    sample_result *res = calloc((size_t)n, sizeof *res);
    if (!reqs || !res) {
        free(reqs);
        free(res);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        reqs[i].prompt = prompt;
        reqs[i].prompt_len = prompt_len;
        reqs[i].params = sample_params_default();
        reqs[i].params.max_new_tokens = new_tokens;
        reqs[i].params.seed = seed + (uint64_t)i;
    }
    double t0 = rlhf_now(), c0 = process_cpu_seconds();
    int rc = sampler_run(s, NULL, reqs, n, res, err);
    *secs = rlhf_now() - t0;
    *cpu_secs = process_cpu_seconds() - c0;
    *tokens = 0;
    for (int i = 0; i < n && !rc; i++) *tokens += res[i].n_tokens;
    for (int i = 0; i < n && !rc; i++) sample_result_free(&res[i]);
    free(reqs);
    free(res);
    return rc;
}

int main(int argc, char **argv) {
    const char *prog = "bench_model_sample";
    model_config c = {.dim = 288, .n_layers = 6, .n_heads = 6, .n_kv_heads = 0, .ffn_dim = 768, .vocab_size = 32000,
                      .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = 1};
    int prompt_len = 8, new_tokens = 256, batch = 64, threads = 0, repeats = 3, show_cpu = 0;
    const char *llama2c_out = NULL, *model_path = NULL;
    sampler_weights weights = SAMPLER_WEIGHTS_FP32;
    int read_rate = 0;
    rlhf_error werr = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            bench_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--untied")) {
            c.tie_embeddings = 0;
            continue;
        }
        if (!strcmp(a, "--read-rate")) {
            read_rate = 1;
            continue;
        }
        if (!strcmp(a, "--cpu-name")) {
            show_cpu = 1;
            continue;
        }
        if (!strcmp(a, "--weights")) {
            if (i + 1 >= argc || sampler_weights_parse(&weights, argv[i + 1], "--weights", &werr)) {
                if (i + 1 >= argc) fprintf(stderr, "%s: error: --weights needs fp32 or bf16\n", prog);
                else rlhf_error_print(prog, &werr);
                return 2;
            }
            i++;
            continue;
        }
        if (!strcmp(a, "--model")) {
            if (i + 1 >= argc || !argv[i + 1][0]) {
                fprintf(stderr, "%s: error: --model needs a path\n", prog);
                return 2;
            }
            model_path = argv[++i];
            continue;
        }
        if (!strcmp(a, "--llama2c-out")) {
            if (i + 1 >= argc || !argv[i + 1][0]) {
                fprintf(stderr, "%s: error: --llama2c-out needs a path\n", prog);
                return 2;
            }
            llama2c_out = argv[++i];
            continue;
        }
        int *dst = !strcmp(a, "--dim")          ? &c.dim
                   : !strcmp(a, "--layers")     ? &c.n_layers
                   : !strcmp(a, "--heads")      ? &c.n_heads
                   : !strcmp(a, "--kv-heads")   ? &c.n_kv_heads
                   : !strcmp(a, "--ffn")        ? &c.ffn_dim
                   : !strcmp(a, "--vocab")      ? &c.vocab_size
                   : !strcmp(a, "--prompt-len") ? &prompt_len
                   : !strcmp(a, "--new-tokens") ? &new_tokens
                   : !strcmp(a, "--batch")      ? &batch
                   : !strcmp(a, "--threads")    ? &threads
                   : !strcmp(a, "--repeats")    ? &repeats
                                                : NULL;
        if (!dst) {
            fprintf(stderr, "%s: error: unknown option '%s'\n", prog, a);
            bench_usage(stderr);
            return 2;
        }
        char *end;
        errno = 0;
        long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : -1;
        if (i + 1 >= argc || *end || errno || v < 1 || v > (1 << 24)) {
            fprintf(stderr, "%s: error: %s needs a positive integer\n", prog, a);
            return 2;
        }
        *dst = (int)v;
        i++;
    }
    if (!c.n_kv_heads) c.n_kv_heads = c.n_heads;
    c.max_seq_len = prompt_len + new_tokens;
    model_set_threads(threads);
    threads = omp_get_max_threads();
    rlhf_error err = {0};
    model *m = NULL;
    sampler *single = NULL, *batched = NULL;
    int32_t *prompt = NULL;
    int rc;
    if (model_path) {
        model_load_options lo = {.max_seq_len = prompt_len + new_tokens};
        rc = model_load_with(&m, model_path, &lo, &err);
        if (!rc) c = m->cfg;
    } else {
        rc = model_create(&m, &c, &err);
    }
    sampler_options o1 = {.max_batch = 1, .weights = weights}, ob = {.max_batch = batch, .weights = weights};
    if (!rc) rc = sampler_create_with(&single, m, &o1, &err);
    if (!rc) rc = sampler_create_with(&batched, m, &ob, &err);
    if (rc) {
        rlhf_error_print(prog, &err);
        model_destroy(&m);
        sampler_destroy(&single);
        return 1;
    }
    if (!model_path) model_init_random(m, 1234);
    if (llama2c_out && write_llama2c(m, llama2c_out, prog)) {
        sampler_destroy(&single);
        sampler_destroy(&batched);
        model_destroy(&m);
        return 1;
    }
    char cpu_name[256];
    cpu_model_name(cpu_name, sizeof cpu_name);
#define CPU_LINE() \
    do { \
        if (show_cpu) printf("cpu: %s\n", cpu_name); \
    } while (0)
    prompt = malloc((size_t)prompt_len * sizeof *prompt);
    for (int i = 0; i < prompt_len; i++) prompt[i] = (int32_t)((i * 7919 + 13) % c.vocab_size);
    double weight_mb = (double)(m->n_params - (size_t)c.vocab_size * c.dim * !c.tie_embeddings) *
                       (weights == SAMPLER_WEIGHTS_BF16 ? 2.0 : 4.0) / 1e6;
    CPU_LINE();
    printf("kernels: %s, weights %s\n", sampler_kernels_name(single), sampler_weights_name(weights));
    printf("sample bench: dim %d, layers %d, heads %d/%d, ffn %d, vocab %d, %s head, %.1fM params; prompt %d, "
           "%d new tokens, %d threads\n",
           c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.tie_embeddings ? "tied" : "untied",
           (double)m->n_params / 1e6, prompt_len, new_tokens, threads);
    double *single_tps = calloc((size_t)repeats, sizeof(double)), *batch_tps = calloc((size_t)repeats, sizeof(double));
    double secs = 0.0, cpu = 0.0;
    double *single_cpu = calloc((size_t)repeats, sizeof(double)), *batch_cpu = calloc((size_t)repeats, sizeof(double));
    long toks = 0;
    /* warm-up: page in weights, start the thread pools */
    rc = timed_run(single, prompt, prompt_len, 1, new_tokens < 32 ? new_tokens : 32, 99, &secs, &cpu, &toks, &err);
    if (!rc) CPU_LINE();
    for (int r = 0; r < repeats && !rc; r++) {
        rc = timed_run(single, prompt, prompt_len, 1, new_tokens, 1000 + (uint64_t)r, &secs, &cpu, &toks, &err);
        single_tps[r] = toks / secs;
        single_cpu[r] = toks / cpu;
        printf("  single-stream run %d: %ld tokens in %.3f s = %.1f tokens/s (%.1f tokens per CPU-second)\n", r, toks,
               secs, single_tps[r], single_cpu[r]);
        fflush(stdout);
    }
    if (!rc) CPU_LINE();
    for (int r = 0; r < repeats && !rc; r++) {
        rc = timed_run(batched, prompt, prompt_len, batch, new_tokens, 2000 + (uint64_t)r * batch, &secs, &cpu, &toks,
                       &err);
        batch_tps[r] = toks / secs;
        batch_cpu[r] = toks / cpu;
        printf("  batch %d run %d: %ld tokens in %.3f s = %.1f tokens/s aggregate (%.1f tokens per CPU-second)\n", batch,
               r, toks, secs, batch_tps[r], batch_cpu[r]);
        fflush(stdout);
    }
    if (!rc) CPU_LINE();
    if (!rc) kernel_vs_openblas(m->p.lm_head, c.vocab_size, c.dim, batch, repeats);
    if (!rc) {
        CPU_LINE();
        double s1 = median(single_tps, repeats), sb = median(batch_tps, repeats);
        printf("single-stream: median %.1f tokens/s (%.2f ms/token; weights read per token %.1f MB -> %.1f GB/s)\n", s1,
               1e3 / s1, weight_mb, weight_mb * s1 / 1e3);
        /* matmul FLOPs per token: 2 per weight of every packed matrix (the embedding lookup reads one row) */
        double flop_tok = 2.0 * (double)(m->n_params - (size_t)c.vocab_size * c.dim * !c.tie_embeddings);
        printf("batched x%d: median %.1f tokens/s aggregate = %.2fx single-stream (%.1f GFLOP/s in the matmuls)\n",
               batch, sb, sb / s1, sb * flop_tok / 1e9);
        if (read_rate) {
            double gbs = read_rate_gbs(threads);
            printf("memory read rate: %.1f GB/s (%d threads, sum over 512 MiB); single-stream bound %.0f tokens/s at "
                   "%.1f MB per token: measured %.0f%% of it\n",
                   gbs, threads, gbs * 1e3 / weight_mb, weight_mb, 100.0 * s1 / (gbs * 1e3 / weight_mb));
        }
        double c1 = median(single_cpu, repeats), cb = median(batch_cpu, repeats);
        printf("per CPU-second: single-stream %.1f, batched x%d %.1f tokens (%.2fx)\n", c1, batch, cb, cb / c1);
    } else {
        rlhf_error_print(prog, &err);
    }
    free(single_tps);
    free(batch_tps);
    free(single_cpu);
    free(batch_cpu);
    free(prompt);
    sampler_destroy(&single);
    sampler_destroy(&batched);
    model_destroy(&m);
    return rc ? 1 : 0;
}
