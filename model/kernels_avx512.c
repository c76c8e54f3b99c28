/* model/kernels_avx512.c — the sampler's kernels for AVX-512 (F, BW, VL, DQ: 16-float vectors, 32
 * registers, masked loads and stores), compiled for that instruction set by the pragma below whatever
 * the build's -march, and run only where model_isa_supported(MODEL_ISA_AVX512) (kernels_int.h). */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#include "model/kernels_int.h"

#include <immintrin.h>
#include <math.h>

static inline __mmask16 first_lanes(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* exp(t) for t in [-87, 88] (clamped): Cody-Waite reduction, degree-6 polynomial (relative error ~1e-7),
 * scaled by 2^k with vscalefps. */
static inline __m512 exp512(__m512 t) {
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), t);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

/* ---------------------------------------------------------------- packed matmul */

/* 16 weights of a panel row as fp32: a load from an fp32 panel, or 16 bf16 widened exactly. `bf16` is a
 * constant wherever this is inlined. */
static inline __attribute__((always_inline)) __m512 load16(const void *w, size_t j, int bf16) {
    if (bf16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + j))), 16));
    return _mm512_load_ps((const float *)w + j);
}

/* nr (1..12) rows x the 32-column panel: two vectors per row, so each weight load serves nr FMAs. Row
 * r's sums run over i in order with one FMA chain per output, whatever nr is. */
static inline __attribute__((always_inline)) void panel_kernel(float *out, const float *x, int ld_in,
                                                               const void *wp, int bf16, int nr, int IC, int OC,
                                                               int o0, int accumulate) {
    __m512 a0[12], a1[12];
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++)
        if (r < nr) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int i = 0; i < IC; i++) {
        __m512 w0 = load16(wp, (size_t)i * KERNEL_PANEL, bf16), w1 = load16(wp, (size_t)i * KERNEL_PANEL + 16, bf16);
#pragma GCC unroll 12
        for (int r = 0; r < 12; r++)
            if (r < nr) {
                __m512 xb = _mm512_set1_ps(x[(size_t)r * ld_in + i]);
                a0[r] = _mm512_fmadd_ps(xb, w0, a0[r]);
                a1[r] = _mm512_fmadd_ps(xb, w1, a1[r]);
            }
    }
    int rem = OC - o0;
    __mmask16 m0 = first_lanes(rem), m1 = rem <= 16 ? 0 : first_lanes(rem - 16);
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++)
        if (r < nr) {
            float *y = out + (size_t)r * OC + o0;
            if (accumulate) {
                a0[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, y), a0[r]);
                a1[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, y + 16), a1[r]);
            }
            _mm512_mask_storeu_ps(y, m0, a0[r]);
            _mm512_mask_storeu_ps(y + 16, m1, a1[r]);
        }
}

#define PANEL_CASES(BF16)                                                                                       \
    switch (nr) {                                                                                               \
    case 1: panel_kernel(out, x, ld_in, wp, BF16, 1, IC, OC, o0, accumulate); break;                            \
    case 2: panel_kernel(out, x, ld_in, wp, BF16, 2, IC, OC, o0, accumulate); break;                            \
    case 3: panel_kernel(out, x, ld_in, wp, BF16, 3, IC, OC, o0, accumulate); break;                            \
    case 4: panel_kernel(out, x, ld_in, wp, BF16, 4, IC, OC, o0, accumulate); break;                            \
    case 5: panel_kernel(out, x, ld_in, wp, BF16, 5, IC, OC, o0, accumulate); break;                            \
    case 6: panel_kernel(out, x, ld_in, wp, BF16, 6, IC, OC, o0, accumulate); break;                            \
    case 7: panel_kernel(out, x, ld_in, wp, BF16, 7, IC, OC, o0, accumulate); break;                            \
    case 8: panel_kernel(out, x, ld_in, wp, BF16, 8, IC, OC, o0, accumulate); break;                            \
    case 9: panel_kernel(out, x, ld_in, wp, BF16, 9, IC, OC, o0, accumulate); break;                            \
    case 10: panel_kernel(out, x, ld_in, wp, BF16, 10, IC, OC, o0, accumulate); break;                          \
    case 11: panel_kernel(out, x, ld_in, wp, BF16, 11, IC, OC, o0, accumulate); break;                          \
    default: panel_kernel(out, x, ld_in, wp, BF16, 12, IC, OC, o0, accumulate); break;                          \
    }

/* the row count as a constant in each instance, so the accumulators stay in registers */
static void avx512_panel(float *out, const float *x, int ld_in, const float *wp, int nr, int IC, int OC, int o0,
                         int accumulate) {
    PANEL_CASES(0)
}

static void avx512_panel_bf16(float *out, const float *x, int ld_in, const uint16_t *wp, int nr, int IC, int OC,
                              int o0, int accumulate) {
    PANEL_CASES(1)
}

/* ---------------------------------------------------------------- softmax pieces */

static double avx512_exp_shifted(float *e, const float *x, int n, float shift, float scale) {
    const __m512 vshift = _mm512_set1_ps(shift), vscale = _mm512_set1_ps(scale);
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 p = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vshift), vscale));
        _mm512_storeu_ps(e + i, p);
        acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(p)));
        acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(p, 1)));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    for (; i < n; i++) {
        float t = (x[i] - shift) * scale;
        e[i] = expf(t < -87.0f ? -87.0f : t);
        sum += e[i];
    }
    return sum;
}

static float avx512_max_value(const float *x, int n) {
    float mx = x[0];
    int i = 0;
    if (n >= 16) {
        __m512 m = _mm512_loadu_ps(x);
        for (i = 16; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
        mx = _mm512_reduce_max_ps(m);
    }
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static float avx512_sum16(const float *x) { return _mm512_reduce_add_ps(_mm512_loadu_ps(x)); }

/* ---------------------------------------------------------------- attention */

/* Scores 128 positions (8 vectors) at a time: with the keys transposed, 16 positions' scores are one
 * FMA per dimension. Then softmax, then the values weighted with two accumulator sets (even and odd
 * positions) per 128 dimensions. Masked loads: nothing past n or D is read. */
/* sc[0..n) = q . key t for the n contiguous cache indices kT[., 0..n) (rows T apart) */
static void avx512_scores(float *sc, const float *q, const float *kT, int n, int D, int T) {
    for (int t0 = 0; t0 < n; t0 += 128) {
        int left = n - t0, nv = (left + 15) / 16;
        if (nv > 8) nv = 8;
        __mmask16 tail = first_lanes(left - 16 * (nv - 1));
        __m512 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) acc[j] = _mm512_setzero_ps();
        for (int d = 0; d < D; d++) {
            __m512 qd = _mm512_set1_ps(q[d]);
            const float *row = kT + (size_t)d * T + t0;
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                if (j < nv)
                    acc[j] = _mm512_fmadd_ps(qd, _mm512_maskz_loadu_ps(j == nv - 1 ? tail : 0xffff, row + 16 * j),
                                             acc[j]);
        }
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nv) _mm512_mask_storeu_ps(sc + t0 + 16 * j, j == nv - 1 ? tail : 0xffff, acc[j]);
    }
}

static void avx512_attend_head(float *o, const float *q, const float *kT, const float *v, int ldv, int start, int n,
                               int D, int T, float *sc) {
    /* the ring's indices start..start+n1-1, then (wrapped) 0..n-n1-1 */
    int n1 = start + n <= T ? n : T - start;
    avx512_scores(sc, q, kT + start, n1, D, T);
    if (n > n1) avx512_scores(sc + n1, q, kT, n - n1, D, T);
    float mx = avx512_max_value(sc, n);
    double sum = avx512_exp_shifted(sc, sc, n, mx, 1.0f);
    __m512 vinv = _mm512_set1_ps((float)(1.0 / sum));
    for (int d0 = 0; d0 < D; d0 += 128) {
        int left = D - d0, nd = (left + 15) / 16;
        if (nd > 8) nd = 8;
        __mmask16 dm = first_lanes(left - 16 * (nd - 1));
        __m512 a0[8], a1[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) a0[j] = a1[j] = _mm512_setzero_ps();
        for (int seg = 0; seg < 2; seg++) {
            const float *vs = seg ? v : v + (size_t)start * ldv, *ps = seg ? sc + n1 : sc;
            int cnt = seg ? n - n1 : n1, t = 0;
            for (; t + 2 <= cnt; t += 2) {
                __m512 p0 = _mm512_set1_ps(ps[t]), p1 = _mm512_set1_ps(ps[t + 1]);
                const float *v0 = vs + (size_t)t * ldv + d0, *v1 = v0 + ldv;
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++)
                    if (j < nd) {
                        __mmask16 m = j == nd - 1 ? dm : 0xffff;
                        a0[j] = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m, v0 + 16 * j), a0[j]);
                        a1[j] = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(m, v1 + 16 * j), a1[j]);
                    }
            }
            if (t < cnt) {
                __m512 p0 = _mm512_set1_ps(ps[t]);
                const float *v0 = vs + (size_t)t * ldv + d0;
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++)
                    if (j < nd)
                        a0[j] = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(j == nd - 1 ? dm : 0xffff, v0 + 16 * j), a0[j]);
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nd)
                _mm512_mask_storeu_ps(o + d0 + 16 * j, j == nd - 1 ? dm : 0xffff,
                                      _mm512_mul_ps(_mm512_add_ps(a0[j], a1[j]), vinv));
    }
}

/* ---------------------------------------------------------------- elementwise */

static void avx512_rmsnorm(float *y, const float *x, const float *w, int C, float eps) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < C; i += 16) {
        __m512 v = _mm512_maskz_loadu_ps(first_lanes(C - i), x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    float s = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)C + eps);
    __m512 vs = _mm512_set1_ps(s);
    for (int i = 0; i < C; i += 16) {
        __mmask16 m = first_lanes(C - i);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs),
                                            _mm512_maskz_loadu_ps(m, w + i)));
    }
}

static void avx512_rope(float *v, const float *c, const float *s, int NH, int D) {
    int half = D / 2;
    for (int h = 0; h < NH; h++, v += D)
        for (int i = 0; i < half; i += 16) {
            __mmask16 m = first_lanes(half - i);
            __m512 a = _mm512_maskz_loadu_ps(m, v + i), b = _mm512_maskz_loadu_ps(m, v + i + half);
            __m512 vc = _mm512_maskz_loadu_ps(m, c + i), vs = _mm512_maskz_loadu_ps(m, s + i);
            _mm512_mask_storeu_ps(v + i, m, _mm512_fmsub_ps(a, vc, _mm512_mul_ps(b, vs)));
            _mm512_mask_storeu_ps(v + i + half, m, _mm512_fmadd_ps(b, vc, _mm512_mul_ps(a, vs)));
        }
}

static void avx512_swiglu(float *g, const float *u, int F) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < F; i += 16) {
        __mmask16 m = first_lanes(F - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

const model_kernels model_kernels_avx512 = {
    .name = "avx512",
    .panel_rows = 12,
    .panel = avx512_panel,
    .panel_bf16 = avx512_panel_bf16,
    .attend_head = avx512_attend_head,
    .exp_shifted = avx512_exp_shifted,
    .max_value = avx512_max_value,
    .sum16 = avx512_sum16,
    .rmsnorm = avx512_rmsnorm,
    .rope = avx512_rope,
    .swiglu = avx512_swiglu,
};
