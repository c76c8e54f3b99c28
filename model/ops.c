/* model/ops.c — fp32 training kernels: fast (OpenMP + OpenBLAS) and plain reference versions.
 * See ops.h for the conventions (outputs, inputs, sizes; backward accumulates). */
#include "model/model.h"
#include "model/kernels_int.h"
#include "model/ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* exp for the fast kernels: range reduction to r in [-ln2/2, ln2/2] and a degree-6 polynomial,
 * relative error ~2e-7 (a few ulp), written with plain float/int arithmetic so `omp simd` loops
 * vectorize (libm's expf is a scalar call here). Inputs are clamped to [-87.3, 88.7]. */
static inline float fast_expf(float x) {
    x = x < -87.3f ? -87.3f : x; /* not fminf/fmaxf: those are library calls that block vectorization */
    x = x > 88.7f ? 88.7f : x;
    float k = rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666418f + r * (0.00833336543f +
                                                                                        r * 0.00138878601f)))));
    union {
        int32_t i;
        float f;
    } u = {.i = ((int32_t)k + 127) << 23};
    return p * u.f;
}

/* Rows per OpenMP chunk for element-wise/row kernels; channels per chunk for column reductions
 * (16 floats = one cache line, so two threads never write the same line). */
#define COL_CHUNK 16

/* ------------------------------------------------------------------ embedding */

void embedding_forward(float *out, const int32_t *tokens, const float *embed, int N, int C) {
    // out (N, C), tokens (N), embed (V, C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, embed + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void embedding_backward(float *dembed, const float *dout, const int32_t *tokens, int N, int C) {
    // dembed (V, C), dout (N, C)
    /* Several rows may hit the same token: split the channels, not the rows, across threads. */
    int nchunks = (C + COL_CHUNK - 1) / COL_CHUNK;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < nchunks; ch++) {
        int c0 = ch * COL_CHUNK, c1 = c0 + COL_CHUNK < C ? c0 + COL_CHUNK : C;
        for (int n = 0; n < N; n++) {
            float *d = dembed + (size_t)tokens[n] * C;
            const float *g = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

void embedding_forward_ref(float *out, const int32_t *tokens, const float *embed, int N, int C) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = embed[(size_t)tokens[n] * C + c];
}

void embedding_backward_ref(float *dembed, const float *dout, const int32_t *tokens, int N, int C) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) dembed[(size_t)tokens[n] * C + c] += dout[(size_t)n * C + c];
}

/* ------------------------------------------------------------------ RMSNorm */

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    // out (N, C), rstd (N), inp (N, C), weight (C)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
        rstd[n] = r;
    }
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C, int acc_inp) {
    // dinp (N, C), dweight (C), dout (N, C), inp (N, C), weight (C), rstd (N)
    /* dx_i = r*w_i*dy_i - x_i * r^3/C * sum_j w_j dy_j x_j ;  dw_i = sum_n dy_ni x_ni r_n */
    int nchunks = (C + COL_CHUNK - 1) / COL_CHUNK;
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n], dot = 0.0f;
            for (int c = 0; c < C; c++) dot += weight[c] * dy[c] * x[c];
            float k = dot * r * r * r / (float)C;
            if (acc_inp)
                for (int c = 0; c < C; c++) dx[c] += r * weight[c] * dy[c] - x[c] * k;
            else
                for (int c = 0; c < C; c++) dx[c] = r * weight[c] * dy[c] - x[c] * k;
        }
#pragma omp for schedule(static)
        for (int ch = 0; ch < (dweight ? nchunks : 0); ch++) {
            int c0 = ch * COL_CHUNK, c1 = c0 + COL_CHUNK < C ? c0 + COL_CHUNK : C;
            float acc[COL_CHUNK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
                float r = rstd[n];
                for (int c = c0; c < c1; c++) acc[c - c0] += dy[c] * x[c] * r;
            }
            for (int c = c0; c < c1; c++) dweight[c] += acc[c - c0];
        }
    }
}

void rmsnorm_forward_ref(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    for (int n = 0; n < N; n++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += (double)inp[(size_t)n * C + c] * inp[(size_t)n * C + c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = inp[(size_t)n * C + c] * r * weight[c];
        rstd[n] = r;
    }
}

void rmsnorm_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double r = rstd[n], dot = 0.0;
        for (int c = 0; c < C; c++) dot += (double)weight[c] * dy[c] * x[c];
        for (int c = 0; c < C; c++) {
            dinp[(size_t)n * C + c] += (float)(r * weight[c] * dy[c] - x[c] * dot * r * r * r / C);
            dweight[c] += (float)(dy[c] * x[c] * r);
        }
    }
}

/* ------------------------------------------------------------------ matmul (linear, no bias) */

void matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC) {
    // out (N, OC) = inp (N, IC) · weight (OC, IC)^T
    /* Each thread takes a contiguous block of rows and runs a single-threaded sgemm on it. At
     * training sizes (N of a few hundred) this is up to 1.4x faster than OpenBLAS's own split, which
     * for wide-K or wide-output shapes (F -> C, C -> V) balances poorly on two threads. */
    int nt = omp_get_max_threads();
    if (nt >= 2 && N >= 32 * nt && !omp_in_parallel()) {
#pragma omp parallel num_threads(nt)
        {
            int i = omp_get_thread_num(), n = omp_get_num_threads();
            int r0 = (int)((long)N * i / n), r1 = (int)((long)N * (i + 1) / n);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, OC, IC, 1.0f, inp + (size_t)r0 * IC, IC,
                        weight, IC, 0.0f, out + (size_t)r0 * OC, OC);
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
}

void matmul_forward_pair(float *out_a, float *out_b, const float *inp, const float *weight_a, const float *weight_b,
                         int N, int IC, int OC) {
    // out_a, out_b (N, OC), inp (N, IC), weight_a, weight_b (OC, IC)
    if (omp_get_max_threads() == 2 && !omp_in_parallel()) {
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            matmul_forward(out_a, inp, weight_a, N, IC, OC);
#pragma omp section
            matmul_forward(out_b, inp, weight_b, N, IC, OC);
        }
        return;
    }
    matmul_forward(out_a, inp, weight_a, N, IC, OC);
    matmul_forward(out_b, inp, weight_b, N, IC, OC);
}

void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N,
                     int IC, int OC, int acc_inp) {
    /* The two products have equal work (N·IC·OC multiply-adds each). With two threads each
     * runs whole on its own thread (OpenBLAS is single-threaded inside a parallel region): at these
     * sizes that beats splitting each product across threads, which packs operands twice and
     * synchronises per call. */
    if (dinp && dweight && omp_get_max_threads() == 2 && !omp_in_parallel()) {
#pragma omp parallel sections num_threads(2)
        {
#pragma omp section
            // dinp (N, IC) (+)= dout (N, OC) · weight (OC, IC)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight, IC,
                        acc_inp ? 1.0f : 0.0f, dinp, IC);
#pragma omp section
            // dweight (OC, IC) += dout^T (OC, N) · inp (N, IC)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight,
                        IC);
        }
        return;
    }
    // dinp (N, IC) (+)= dout (N, OC) · weight (OC, IC)
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight, IC,
                    acc_inp ? 1.0f : 0.0f, dinp, IC);
    // dweight (OC, IC) += dout^T (OC, N) · inp (N, IC)
    if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
}

/* Rows [o0, o1) of a bf16 weight (OC, IC), widened into w (o1 - o0, IC). */
static void widen_rows(float *w, const uint16_t *weight, int o0, int o1, int IC) {
    size_t n = (size_t)(o1 - o0) * IC;
    const uint16_t *src = weight + (size_t)o0 * IC;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&w[i], &u, sizeof u);
    }
}

static int bf16_chunk_rows(int IC, int OC) {
    int rows = MATMUL_BF16_SCRATCH / IC;
    rows = rows < 1 ? 1 : rows;
    return rows < OC ? rows : OC;
}

void matmulbf16_forward(float *out, float *wbuf, const float *inp, const uint16_t *weight, int N, int IC, int OC) {
    // out (N, OC) = inp (N, IC) · widen(weight (OC, IC))^T; wbuf (MATMUL_BF16_SCRATCH)
    int rows = bf16_chunk_rows(IC, OC);
    int nt = omp_get_max_threads();
    for (int o0 = 0; o0 < OC; o0 += rows) {
        int o1 = o0 + rows < OC ? o0 + rows : OC, oc = o1 - o0;
        widen_rows(wbuf, weight, o0, o1, IC);
        if (nt >= 2 && N >= 32 * nt && !omp_in_parallel()) { /* row blocks per thread, as matmul_forward */
#pragma omp parallel num_threads(nt)
            {
                int i = omp_get_thread_num(), n = omp_get_num_threads();
                int r0 = (int)((long)N * i / n), r1 = (int)((long)N * (i + 1) / n);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, oc, IC, 1.0f, inp + (size_t)r0 * IC, IC,
                            wbuf, IC, 0.0f, out + (size_t)r0 * OC + o0, OC);
            }
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, oc, IC, 1.0f, inp, IC, wbuf, IC, 0.0f, out + o0,
                        OC);
        }
    }
}

void matmulbf16_backward(float *dinp, float *wbuf, const float *dout, const uint16_t *weight, int N, int IC, int OC,
                          int acc_inp) {
    // dinp (N, IC) (+)= dout (N, OC) · widen(weight (OC, IC)); wbuf (MATMUL_BF16_SCRATCH)
    int rows = bf16_chunk_rows(IC, OC);
    int nt = omp_get_max_threads();
    for (int o0 = 0; o0 < OC; o0 += rows) {
        int o1 = o0 + rows < OC ? o0 + rows : OC, oc = o1 - o0;
        float beta = (o0 == 0 && !acc_inp) ? 0.0f : 1.0f;
        widen_rows(wbuf, weight, o0, o1, IC);
        if (nt >= 2 && N >= 32 * nt && !omp_in_parallel()) {
#pragma omp parallel num_threads(nt)
            {
                int i = omp_get_thread_num(), n = omp_get_num_threads();
                int r0 = (int)((long)N * i / n), r1 = (int)((long)N * (i + 1) / n);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, IC, oc, 1.0f,
                            dout + (size_t)r0 * OC + o0, OC, wbuf, IC, beta, dinp + (size_t)r0 * IC, IC);
            }
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, oc, 1.0f, dout + o0, OC, wbuf, IC, beta, dinp,
                        IC);
        }
    }
}

void matmulbf16_forward_ref(float *out, const float *inp, const uint16_t *weight, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int i = 0; i < IC; i++) s += inp[(size_t)n * IC + i] * model_bf16_to_f32(weight[(size_t)o * IC + i]);
            out[(size_t)n * OC + o] = s;
        }
}

void matmulbf16_backward_ref(float *dinp, const float *dout, const uint16_t *weight, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int i = 0; i < IC; i++) {
            float s = 0.0f;
            for (int o = 0; o < OC; o++) s += dout[(size_t)n * OC + o] * model_bf16_to_f32(weight[(size_t)o * IC + i]);
            dinp[(size_t)n * IC + i] += s;
        }
}

void embeddingbf16_forward(float *out, const int32_t *tokens, const uint16_t *embed, int N, int C) {
    // out (N, C), tokens (N), embed (V, C) bf16
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const uint16_t *src = embed + (size_t)tokens[n] * C;
        float *dst = out + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            uint32_t u = (uint32_t)src[c] << 16;
            memcpy(&dst[c], &u, sizeof u);
        }
    }
}

void embeddingbf16_forward_ref(float *out, const int32_t *tokens, const uint16_t *embed, int N, int C) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = model_bf16_to_f32(embed[(size_t)tokens[n] * C + c]);
}

void matmul_forward_ref(float *out, const float *inp, const float *weight, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0.0;
            for (int i = 0; i < IC; i++) s += (double)inp[(size_t)n * IC + i] * weight[(size_t)o * IC + i];
            out[(size_t)n * OC + o] = (float)s;
        }
}

void matmul_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                         int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float g = dout[(size_t)n * OC + o];
            for (int i = 0; i < IC; i++) {
                if (dinp) dinp[(size_t)n * IC + i] += g * weight[(size_t)o * IC + i];
                dweight[(size_t)o * IC + i] += g * inp[(size_t)n * IC + i];
            }
        }
}

/* ------------------------------------------------------------------ LoRA branch */

void lora_forward(float *out, float *u, const float *inp, const float *a, const float *b, float scale, int N, int IC,
                  int OC, int R) {
    // out (N, OC) += scale · u · B^T,  u (N, R) = inp (N, IC) · A (R, IC)^T,  B (OC, R)
    matmul_forward(u, inp, a, N, IC, R);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, R, scale, u, R, b, R, 1.0f, out, OC);
}

void lora_backward(float *dinp, float *da, float *db, float *du, const float *dout, const float *inp, const float *u,
                   const float *a, const float *b, float scale, int N, int IC, int OC, int R, int acc_inp) {
    // dB (OC, R) += scale · dout^T (OC, N) · u (N, R)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, R, N, scale, dout, OC, u, R, 1.0f, db, R);
    // du (N, R) = scale · dout (N, OC) · B (OC, R)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, R, OC, scale, dout, OC, b, R, 0.0f, du, R);
    // dA (R, IC) += du^T (R, N) · inp (N, IC)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, IC, N, 1.0f, du, R, inp, IC, 1.0f, da, IC);
    // dinp (N, IC) (+)= du (N, R) · A (R, IC)
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, R, 1.0f, du, R, a, IC, acc_inp ? 1.0f : 0.0f,
                    dinp, IC);
}

void lora_forward_ref(float *out, float *u, const float *inp, const float *a, const float *b, float scale, int N,
                      int IC, int OC, int R) {
    for (int n = 0; n < N; n++) {
        for (int r = 0; r < R; r++) {
            double s = 0.0;
            for (int i = 0; i < IC; i++) s += (double)inp[(size_t)n * IC + i] * a[(size_t)r * IC + i];
            u[(size_t)n * R + r] = (float)s;
        }
        for (int o = 0; o < OC; o++) {
            double s = 0.0;
            for (int r = 0; r < R; r++) s += (double)u[(size_t)n * R + r] * b[(size_t)o * R + r];
            out[(size_t)n * OC + o] += (float)(scale * s);
        }
    }
}

void lora_backward_ref(float *dinp, float *da, float *db, const float *dout, const float *inp, const float *u,
                       const float *a, const float *b, float scale, int N, int IC, int OC, int R) {
    for (int n = 0; n < N; n++)
        for (int r = 0; r < R; r++) {
            double du = 0.0;
            for (int o = 0; o < OC; o++) {
                double g = (double)scale * dout[(size_t)n * OC + o];
                du += g * b[(size_t)o * R + r];
                db[(size_t)o * R + r] += (float)(g * u[(size_t)n * R + r]);
            }
            for (int i = 0; i < IC; i++) {
                da[(size_t)r * IC + i] += (float)(du * inp[(size_t)n * IC + i]);
                if (dinp) dinp[(size_t)n * IC + i] += (float)(du * a[(size_t)r * IC + i]);
            }
        }
}

/* ------------------------------------------------------------------ bias (Qwen2 q/k/v projections) */

void bias_forward(float *out, const float *bias, int N, int OC) {
    // out (N, OC) += bias (OC) on every row
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= 16384)
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * OC;
        for (int o = 0; o < OC; o++) y[o] += bias[o];
    }
}

void bias_backward(float *dbias, const float *dout, int N, int OC) {
    // dbias (OC) += column sums of dout (N, OC)
    /* split the columns across threads (whole cache lines each), so no two threads sum into one slot */
    int nchunks = (OC + COL_CHUNK - 1) / COL_CHUNK;
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= 16384)
    for (int ch = 0; ch < nchunks; ch++) {
        int o0 = ch * COL_CHUNK, o1 = o0 + COL_CHUNK < OC ? o0 + COL_CHUNK : OC;
        float acc[COL_CHUNK] = {0};
        for (int n = 0; n < N; n++) {
            const float *g = dout + (size_t)n * OC;
            for (int o = o0; o < o1; o++) acc[o - o0] += g[o];
        }
        for (int o = o0; o < o1; o++) dbias[o] += acc[o - o0];
    }
}

void bias_forward_ref(float *out, const float *bias, int N, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] += bias[o];
}

void bias_backward_ref(float *dbias, const float *dout, int N, int OC) {
    for (int o = 0; o < OC; o++) {
        double s = 0.0;
        for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
        dbias[o] += (float)s;
    }
}

/* ------------------------------------------------------------------ RoPE */

void ops_rope_tables(float *cos_t, float *sin_t, int T, const model_config *c) {
    // cos_t, sin_t (T, D/2)
    int half = model_head_dim(c) / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            /* angles in double so long contexts keep accurate phases */
            double a = (double)t * model_rope_inv_freq(c, i);
            cos_t[(size_t)t * half + i] = (float)cos(a);
            sin_t[(size_t)t * half + i] = (float)sin(a);
        }
}

static inline void rope_row(float *out, const float *x, const float *c, const float *s, int half, float sign) {
    /* out_i = x_i c_i - sign x_{i+h} s_i ; out_{i+h} = x_{i+h} c_i + sign x_i s_i (sign -1: inverse) */
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        out[i] = a * c[i] - sign * b * s[i];
        out[i + half] = b * c[i] + sign * a * s[i];
    }
}

void rope_forward(float *out, const float *inp, const float *cos_t, const float *sin_t, int B, int T, int NH, int D) {
    // out, inp (B, T, NH, D)
    int half = D / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                size_t o = (((size_t)b * T + t) * NH + h) * D;
                rope_row(out + o, inp + o, cos_t + (size_t)t * half, sin_t + (size_t)t * half, half, 1.0f);
            }
}

void rope_backward(float *dinp, const float *dout, const float *cos_t, const float *sin_t, int B, int T, int NH,
                   int D, int acc_inp) {
    /* The rotation is orthogonal: the gradient is the inverse rotation of dout. */
    int half = D / 2;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                size_t o = (((size_t)b * T + t) * NH + h) * D;
                const float *g = dout + o, *c = cos_t + (size_t)t * half, *s = sin_t + (size_t)t * half;
                float *d = dinp + o;
                if (acc_inp)
                    for (int i = 0; i < half; i++) {
                        d[i] += g[i] * c[i] + g[i + half] * s[i];
                        d[i + half] += g[i + half] * c[i] - g[i] * s[i];
                    }
                else
                    for (int i = 0; i < half; i++) {
                        d[i] = g[i] * c[i] + g[i + half] * s[i];
                        d[i + half] = g[i + half] * c[i] - g[i] * s[i];
                    }
            }
}

void rope_forward_ref(float *out, const float *inp, const float *cos_t, const float *sin_t, int B, int T, int NH,
                      int D) {
    int half = D / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int j = 0; j < D; j++) {
                    size_t o = (((size_t)b * T + t) * NH + h) * D;
                    int i = j % half;
                    float c = cos_t[(size_t)t * half + i], s = sin_t[(size_t)t * half + i];
                    /* rotate_half(x)_j = -x_{j+h} for j < h, x_{j-h} otherwise */
                    float rot = j < half ? -inp[o + j + half] : inp[o + j - half];
                    out[o + j] = inp[o + j] * c + rot * s;
                }
}

void rope_backward_ref(float *dinp, const float *dout, const float *cos_t, const float *sin_t, int B, int T, int NH,
                       int D) {
    int half = D / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int j = 0; j < D; j++) {
                    size_t o = (((size_t)b * T + t) * NH + h) * D;
                    int i = j % half;
                    float c = cos_t[(size_t)t * half + i], s = sin_t[(size_t)t * half + i];
                    /* out_j depends on x_j (coef c) and on x_{j±h}; transpose of that map */
                    float other = j < half ? dout[o + j + half] * s : -dout[o + j - half] * s;
                    dinp[o + j] += dout[o + j] * c + other;
                }
}

/* ------------------------------------------------------------------ attention */

size_t ops_attention_scratch_floats(int T) { return (size_t)T * T; }

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B, int T, int H,
                       int KVH, int D, int W) {
    // out (B, T, H, D), att (B, H, T, T), q (B, T, H, D), k/v (B, T, KVH, D)
    int G = H / KVH;
    int HD = H * D, KD = KVH * D;
    float scale = 1.0f / sqrtf((float)D);
    /* One (b, h) per task; OpenBLAS runs single-threaded inside a parallel region. */
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H, kh = h / G;
        const float *Q = q + (size_t)b * T * HD + h * D;
        const float *K = k + (size_t)b * T * KD + kh * D;
        const float *Vv = v + (size_t)b * T * KD + kh * D;
        float *P = att + (size_t)bh * T * T;
        float *O = out + (size_t)b * T * HD + h * D;
        // P (T, T) = scale * Q (T, D) · K (T, D)^T   (the upper triangle is computed, then masked)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, scale, Q, HD, K, KD, 0.0f, P, T);
        for (int t = 0; t < T; t++) {
            float *row = P + (size_t)t * T;
            int j0 = W > 0 && t - W + 1 > 0 ? t - W + 1 : 0; /* local window: positions j0..t */
            float mx = -INFINITY;
            for (int j = j0; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = j0; j <= t; j++) {
                row[j] = fast_expf(row[j] - mx);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            for (int j = 0; j < j0; j++) row[j] = 0.0f;
            for (int j = j0; j <= t; j++) row[j] *= inv;
            for (int j = t + 1; j < T; j++) row[j] = 0.0f;
        }
        // O (T, D) = P (T, T) · V (T, D)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, P, T, Vv, KD, 0.0f, O, HD);
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                        const float *k, const float *v, float *scratch, int B, int T, int H, int KVH, int D, int W,
                        int acc_q, int acc_k, int acc_v) {
    // dq (B, T, H, D), dk/dv (B, T, KVH, D), dout (B, T, H, D), att (B, H, T, T)
    int G = H / KVH;
    int HD = H * D, KD = KVH * D;
    float scale = 1.0f / sqrtf((float)D);
    /* One (b, kv head) per task, so the G query heads sharing dk/dv never race on them. */
#pragma omp parallel for schedule(static)
    for (int bk = 0; bk < B * KVH; bk++) {
        int b = bk / KVH, kh = bk % KVH;
        float *dS = scratch + (size_t)omp_get_thread_num() * ops_attention_scratch_floats(T); // (T, T)
        const float *K = k + (size_t)b * T * KD + kh * D;
        const float *Vv = v + (size_t)b * T * KD + kh * D;
        float *dK = dk + (size_t)b * T * KD + kh * D;
        float *dV = dv + (size_t)b * T * KD + kh * D;
        for (int g = 0; g < G; g++) {
            int h = kh * G + g;
            const float *Q = q + (size_t)b * T * HD + h * D;
            const float *dO = dout + (size_t)b * T * HD + h * D;
            float *dQ = dq + (size_t)b * T * HD + h * D;
            const float *P = att + ((size_t)b * H + h) * T * T;
            /* the first query head of the group writes dK/dV when not accumulating, the rest add */
            float beta_kv_v = (g > 0 || acc_v) ? 1.0f : 0.0f, beta_kv_k = (g > 0 || acc_k) ? 1.0f : 0.0f;
            // dV (T, D) (+)= P^T · dO
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, 1.0f, P, T, dO, HD, beta_kv_v, dV, KD);
            // dP (T, T) = dO · V^T
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, 1.0f, dO, HD, Vv, KD, 0.0f, dS, T);
            // dS = P * (dP - sum_j P dP)   (zero above the diagonal since P is)
            for (int t = 0; t < T; t++) {
                const float *pr = P + (size_t)t * T;
                float *dr = dS + (size_t)t * T;
                int j0 = W > 0 && t - W + 1 > 0 ? t - W + 1 : 0; /* P is zero outside the window */
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int j = j0; j <= t; j++) dot += pr[j] * dr[j];
                for (int j = 0; j < j0; j++) dr[j] = 0.0f;
                for (int j = j0; j <= t; j++) dr[j] = pr[j] * (dr[j] - dot);
                for (int j = t + 1; j < T; j++) dr[j] = 0.0f;
            }
            // dQ (T, D) += scale * dS · K ;  dK (T, D) += scale * dS^T · Q
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, scale, dS, T, K, KD, acc_q ? 1.0f : 0.0f,
                        dQ, HD);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, scale, dS, T, Q, HD, beta_kv_k, dK, KD);
        }
    }
}

void attention_forward_ref(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                           int H, int KVH, int D, int W) {
    int G = H / KVH;
    double scale = 1.0 / sqrt((double)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / G;
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * H + h) * D;
                float *P = att + (((size_t)b * H + h) * T + t) * T;
                int j0 = W > 0 && t - W + 1 > 0 ? t - W + 1 : 0;
                double mx = -INFINITY;
                for (int j = j0; j <= t; j++) {
                    const float *kj = k + (((size_t)b * T + j) * KVH + kh) * D;
                    double s = 0.0;
                    for (int d = 0; d < D; d++) s += (double)qt[d] * kj[d];
                    P[j] = (float)(s * scale);
                    if (P[j] > mx) mx = P[j];
                }
                double sum = 0.0;
                for (int j = j0; j <= t; j++) sum += exp(P[j] - mx);
                for (int j = 0; j < T; j++) P[j] = j >= j0 && j <= t ? (float)(exp(P[j] - mx) / sum) : 0.0f;
                float *ot = out + (((size_t)b * T + t) * H + h) * D;
                for (int d = 0; d < D; d++) {
                    double s = 0.0;
                    for (int j = j0; j <= t; j++) s += (double)P[j] * v[(((size_t)b * T + j) * KVH + kh) * D + d];
                    ot[d] = (float)s;
                }
            }
        }
}

void attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                            const float *k, const float *v, int B, int T, int H, int KVH, int D, int W) {
    int G = H / KVH;
    double scale = 1.0 / sqrt((double)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / G;
            for (int t = 0; t < T; t++) {
                const float *P = att + (((size_t)b * H + h) * T + t) * T;
                const float *dot_ = dout + (((size_t)b * T + t) * H + h) * D;
                /* dP_j = dO_t · v_j ; dS_j = P_j (dP_j - sum_i P_i dP_i) */
                double dP[T > 0 ? T : 1], acc = 0.0;
                int j0 = W > 0 && t - W + 1 > 0 ? t - W + 1 : 0;
                for (int j = j0; j <= t; j++) {
                    const float *vj = v + (((size_t)b * T + j) * KVH + kh) * D;
                    double s = 0.0;
                    for (int d = 0; d < D; d++) s += (double)dot_[d] * vj[d];
                    dP[j] = s;
                    acc += P[j] * s;
                }
                const float *qt = q + (((size_t)b * T + t) * H + h) * D;
                float *dqt = dq + (((size_t)b * T + t) * H + h) * D;
                for (int j = j0; j <= t; j++) {
                    double dS = P[j] * (dP[j] - acc) * scale;
                    const float *kj = k + (((size_t)b * T + j) * KVH + kh) * D;
                    float *dkj = dk + (((size_t)b * T + j) * KVH + kh) * D;
                    float *dvj = dv + (((size_t)b * T + j) * KVH + kh) * D;
                    for (int d = 0; d < D; d++) {
                        dqt[d] += (float)(dS * kj[d]);
                        dkj[d] += (float)(dS * qt[d]);
                        dvj[d] += P[j] * dot_[d];
                    }
                }
            }
        }
}

/* ------------------------------------------------------------------ SwiGLU */

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + fast_expf(-x)); }

void swiglu_forward(float *out, const float *gate, const float *up, size_t N) {
    // out, gate, up (N)
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) out[i] = gate[i] * sigmoidf_(gate[i]) * up[i];
}

void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t N,
                     int acc_gate, int acc_up) {
    float kg = acc_gate ? 1.0f : 0.0f, ku = acc_up ? 1.0f : 0.0f;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float g = gate[i], s = sigmoidf_(g);
        /* kg/ku are 0 or 1; with 0 the old value is not read (it may be uninitialised) */
        float og = kg != 0.0f ? dgate[i] : 0.0f, ou = ku != 0.0f ? dup[i] : 0.0f;
        dgate[i] = og + dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] = ou + dout[i] * g * s;
    }
}

void swiglu_forward_ref(float *out, const float *gate, const float *up, size_t N) {
    for (size_t i = 0; i < N; i++) out[i] = (float)(gate[i] / (1.0 + exp(-(double)gate[i])) * up[i]);
}

void swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t N) {
    for (size_t i = 0; i < N; i++) {
        double g = gate[i], s = 1.0 / (1.0 + exp(-g));
        dgate[i] += (float)(dout[i] * up[i] * (s + g * s * (1.0 - s)));
        dup[i] += (float)(dout[i] * g * s);
    }
}

/* ------------------------------------------------------------------ residual */

void residual_forward(float *out, const float *a, const float *b, size_t N) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

void residual_backward(float *da, float *db, const float *dout, size_t N, int acc_a, int acc_b) {
    if (acc_a && acc_b) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < N; i++) {
            da[i] += dout[i];
            db[i] += dout[i];
        }
        return;
    }
    float ka = acc_a ? 1.0f : 0.0f, kb = acc_b ? 1.0f : 0.0f;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float oa = ka != 0.0f ? da[i] : 0.0f, ob = kb != 0.0f ? db[i] : 0.0f;
        da[i] = oa + dout[i];
        db[i] = ob + dout[i];
    }
}

void residual_forward_ref(float *out, const float *a, const float *b, size_t N) {
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

void residual_backward_ref(float *da, float *db, const float *dout, size_t N) {
    for (size_t i = 0; i < N; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

/* ------------------------------------------------------------------ log-softmax at targets */

void logsoftmax_forward(float *logp, float *entropy, float *lse, const float *logits, const int32_t *targets, int N,
                        int V) {
    // logp, entropy, lse (N), logits (N, V), targets (N)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        float mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        float sum = 0.0f, pz = 0.0f;
#pragma omp simd reduction(+ : sum, pz)
        for (int j = 0; j < V; j++) {
            float e = fast_expf(z[j] - mx);
            sum += e;
            pz += e * (z[j] - mx);
        }
        float l = mx + logf(sum);
        lse[n] = l;
        /* H = lse - sum_j p_j z_j, with the max subtracted for accuracy */
        entropy[n] = logf(sum) - pz / sum;
        logp[n] = targets[n] >= 0 ? z[targets[n]] - l : 0.0f;
    }
}

void logsoftmax_backward(float *dlogits, const float *dlogp, const float *dentropy, const float *logits,
                         const float *lse, const float *entropy, const int32_t *targets, int N, int V,
                         int acc_logits) {
    // dlogits (N, V) += dlogp_n (1[j=y] - p_j) + dentropy_n (-p_j (log p_j + H_n))
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float a = (dlogp && targets[n] >= 0) ? dlogp[n] : 0.0f;
        float e = dentropy ? dentropy[n] : 0.0f;
        float *dz = dlogits + (size_t)n * V;
        if (a == 0.0f && e == 0.0f) {
            if (!acc_logits) memset(dz, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float *z = logits + (size_t)n * V;
        float l = lse[n], Hn = entropy[n];
        if (acc_logits) {
#pragma omp simd
            for (int j = 0; j < V; j++) {
                float lp = z[j] - l, p = fast_expf(lp);
                dz[j] += -a * p - e * p * (lp + Hn);
            }
        } else {
#pragma omp simd
            for (int j = 0; j < V; j++) {
                float lp = z[j] - l, p = fast_expf(lp);
                dz[j] = -a * p - e * p * (lp + Hn);
            }
        }
        if (a != 0.0f) dz[targets[n]] += a;
    }
}

void logsoftmax_forward_ref(float *logp, float *entropy, float *lse, const float *logits, const int32_t *targets,
                            int N, int V) {
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * V;
        double mx = -INFINITY;
        for (int j = 0; j < V; j++)
            if (z[j] > mx) mx = z[j];
        double sum = 0.0;
        for (int j = 0; j < V; j++) sum += exp(z[j] - mx);
        double l = mx + log(sum), H = 0.0;
        for (int j = 0; j < V; j++) {
            double lp = z[j] - l;
            H -= exp(lp) * lp;
        }
        lse[n] = (float)l;
        entropy[n] = (float)H;
        logp[n] = targets[n] >= 0 ? (float)(z[targets[n]] - l) : 0.0f;
    }
}

void logsoftmax_backward_ref(float *dlogits, const float *dlogp, const float *dentropy, const float *logits,
                             const float *lse, const float *entropy, const int32_t *targets, int N, int V) {
    for (int n = 0; n < N; n++) {
        double a = (dlogp && targets[n] >= 0) ? dlogp[n] : 0.0;
        double e = dentropy ? dentropy[n] : 0.0;
        for (int j = 0; j < V; j++) {
            double lp = (double)logits[(size_t)n * V + j] - lse[n], p = exp(lp);
            double g = a * ((j == targets[n] ? 1.0 : 0.0) - p) - e * p * (lp + entropy[n]);
            dlogits[(size_t)n * V + j] += (float)g;
        }
    }
}
