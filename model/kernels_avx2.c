/* model/kernels_avx2.c — the sampler's kernels for AVX2 + FMA (8-float vectors, 16 registers), compiled
 * for that instruction set by the pragma below whatever the build's -march, and run only where
 * model_isa_supported(MODEL_ISA_AVX2) (kernels_int.h). */
#pragma GCC target("avx2,fma")
#include "model/kernels_int.h"

#include <immintrin.h>
#include <math.h>

/* lanes [0, n) set, n in 0..8: a mask for maskload/maskstore (masked-off lanes are never touched) */
static inline __m256i lane_mask(int n) {
    static const int32_t ones_then_zeros[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(ones_then_zeros + 8 - n));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(t) for t in [-87, 88] (clamped): Cody-Waite reduction t = k ln2 + r, a degree-6 polynomial in r
 * (relative error ~1e-7), 2^k built in the exponent bits (k in -126..127, so always a normal number). */
static inline __m256 exp256(__m256 t) {
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), t);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* ---------------------------------------------------------------- packed matmul */

/* 8 weights of a panel row as fp32: a load from an fp32 panel, or 8 bf16 widened exactly (bf16 is the
 * top half of a float). `bf16` is a constant wherever this is inlined, so the test folds away. */
static inline __attribute__((always_inline)) __m256 load8(const void *w, size_t j, int bf16) {
    if (bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + j))), 16));
    return _mm256_load_ps((const float *)w + j);
}

/* nr (1 or 2) rows x the whole 32-column panel: 4 vectors per row. Row r's sums run over i in order
 * with one FMA chain per output, as in panel_half, so a row's result does not depend on nr. */
static inline __attribute__((always_inline)) void panel_wide(float *out, const float *x, int ld_in,
                                                             const void *wp, int bf16, int nr, int IC, int OC,
                                                             int o0, int accumulate) {
    __m256 a[2][4];
    for (int j = 0; j < 4; j++) a[0][j] = a[1][j] = _mm256_setzero_ps();
    for (int i = 0; i < IC; i++) {
        size_t w = (size_t)i * KERNEL_PANEL;
        __m256 w0 = load8(wp, w, bf16), w1 = load8(wp, w + 8, bf16), w2 = load8(wp, w + 16, bf16),
               w3 = load8(wp, w + 24, bf16);
#pragma GCC unroll 2
        for (int r = 0; r < 2; r++)
            if (r < nr) {
                __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ld_in + i);
                a[r][0] = _mm256_fmadd_ps(xb, w0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(xb, w1, a[r][1]);
                a[r][2] = _mm256_fmadd_ps(xb, w2, a[r][2]);
                a[r][3] = _mm256_fmadd_ps(xb, w3, a[r][3]);
            }
    }
    int rem = OC - o0;
#pragma GCC unroll 2
    for (int r = 0; r < 2; r++)
        if (r < nr) {
            float *y = out + (size_t)r * OC + o0;
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                int n = rem - 8 * j;
                if (n <= 0) break;
                if (n >= 8) {
                    __m256 v = accumulate ? _mm256_add_ps(_mm256_loadu_ps(y + 8 * j), a[r][j]) : a[r][j];
                    _mm256_storeu_ps(y + 8 * j, v);
                } else {
                    __m256i m = lane_mask(n);
                    __m256 v = accumulate ? _mm256_add_ps(_mm256_maskload_ps(y + 8 * j, m), a[r][j]) : a[r][j];
                    _mm256_maskstore_ps(y + 8 * j, m, v);
                }
            }
        }
}

/* nr (3..6) rows x 16 columns (half h of the panel): 12 accumulators, 2 weight vectors, 1 broadcast. */
static inline __attribute__((always_inline)) void panel_half(float *out, const float *x, int ld_in,
                                                             const void *wp, int bf16, int nr, int IC, int OC,
                                                             int o0, int accumulate) {
    __m256 a0[6], a1[6];
#pragma GCC unroll 6
    for (int r = 0; r < 6; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int i = 0; i < IC; i++) {
        __m256 w0 = load8(wp, (size_t)i * KERNEL_PANEL, bf16), w1 = load8(wp, (size_t)i * KERNEL_PANEL + 8, bf16);
#pragma GCC unroll 6
        for (int r = 0; r < 6; r++)
            if (r < nr) {
                __m256 xb = _mm256_broadcast_ss(x + (size_t)r * ld_in + i);
                a0[r] = _mm256_fmadd_ps(xb, w0, a0[r]);
                a1[r] = _mm256_fmadd_ps(xb, w1, a1[r]);
            }
    }
    int rem = OC - o0;
#pragma GCC unroll 6
    for (int r = 0; r < 6; r++)
        if (r < nr) {
            float *y = out + (size_t)r * OC + o0;
            __m256 v[2] = {a0[r], a1[r]};
            for (int j = 0; j < 2; j++) {
                int n = rem - 8 * j;
                if (n <= 0) break;
                if (n >= 8) {
                    if (accumulate) v[j] = _mm256_add_ps(_mm256_loadu_ps(y + 8 * j), v[j]);
                    _mm256_storeu_ps(y + 8 * j, v[j]);
                } else {
                    __m256i m = lane_mask(n);
                    if (accumulate) v[j] = _mm256_add_ps(_mm256_maskload_ps(y + 8 * j, m), v[j]);
                    _mm256_maskstore_ps(y + 8 * j, m, v[j]);
                }
            }
        }
}

/* wp: panel base; the half h starts 16 columns in (elements of 4 or 2 bytes) */
static inline __attribute__((always_inline)) void panel_any(float *out, const float *x, int ld_in, const void *wp,
                                                            int bf16, int nr, int IC, int OC, int o0,
                                                            int accumulate) {
    switch (nr) {
    case 1: panel_wide(out, x, ld_in, wp, bf16, 1, IC, OC, o0, accumulate); return;
    case 2: panel_wide(out, x, ld_in, wp, bf16, 2, IC, OC, o0, accumulate); return;
    }
    for (int h = 0; h < 2 && o0 + 16 * h < OC; h++) {
        const void *w = (const char *)wp + (size_t)16 * h * (bf16 ? 2 : 4);
        int oh = o0 + 16 * h;
        switch (nr) {
        case 3: panel_half(out, x, ld_in, w, bf16, 3, IC, OC, oh, accumulate); break;
        case 4: panel_half(out, x, ld_in, w, bf16, 4, IC, OC, oh, accumulate); break;
        case 5: panel_half(out, x, ld_in, w, bf16, 5, IC, OC, oh, accumulate); break;
        default: panel_half(out, x, ld_in, w, bf16, 6, IC, OC, oh, accumulate); break;
        }
    }
}

static void avx2_panel(float *out, const float *x, int ld_in, const float *wp, int nr, int IC, int OC, int o0,
                       int accumulate) {
    panel_any(out, x, ld_in, wp, 0, nr, IC, OC, o0, accumulate);
}

static void avx2_panel_bf16(float *out, const float *x, int ld_in, const uint16_t *wp, int nr, int IC, int OC, int o0,
                            int accumulate) {
    panel_any(out, x, ld_in, wp, 1, nr, IC, OC, o0, accumulate);
}

/* ---------------------------------------------------------------- softmax pieces */

static float avx2_max_value(const float *x, int n) {
    float mx = x[0];
    int i = 0;
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        mx = hmax(m);
    }
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static double avx2_exp_shifted(float *e, const float *x, int n, float shift, float scale) {
    const __m256 vshift = _mm256_set1_ps(shift), vscale = _mm256_set1_ps(scale);
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 p = exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vshift), vscale));
        _mm256_storeu_ps(e + i, p);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    }
    __m256d s = _mm256_add_pd(acc0, acc1);
    __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    double sum = _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
    for (; i < n; i++) {
        float t = (x[i] - shift) * scale;
        e[i] = expf(t < -87.0f ? -87.0f : t);
        sum += e[i];
    }
    return sum;
}

static float avx2_sum16(const float *x) { return hsum(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8))); }

/* ---------------------------------------------------------------- attention */

/* Scores 64 positions (8 vectors) at a time, then softmax, then the values weighted in chunks of 64
 * dimensions (8 accumulators). Loads past n or D are masked, so nothing outside the cache is read. */
/* sc[0..n) = q . key t for the n contiguous cache indices kT[., 0..n) (rows T apart); full vectors may be
 * stored up to 63 floats past n (the caller's scratch has the room, and later scores overwrite them). */
static void avx2_scores(float *sc, const float *q, const float *kT, int n, int D, int T) {
    for (int t0 = 0; t0 < n; t0 += 64) {
        int left = n - t0, nv = (left + 7) / 8;
        if (nv > 8) nv = 8;
        int last = left >= 8 * nv ? 8 : left - 8 * (nv - 1);
        __m256i tail = lane_mask(last);
        __m256 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
        for (int d = 0; d < D; d++) {
            __m256 qd = _mm256_broadcast_ss(q + d);
            const float *row = kT + (size_t)d * T + t0;
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                if (j < nv) {
                    __m256 k = j == nv - 1 ? _mm256_maskload_ps(row + 8 * j, tail) : _mm256_loadu_ps(row + 8 * j);
                    acc[j] = _mm256_fmadd_ps(qd, k, acc[j]);
                }
        }
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nv) _mm256_storeu_ps(sc + t0 + 8 * j, acc[j]); /* sc has 128 floats of slack past T */
    }
}

static void avx2_attend_head(float *o, const float *q, const float *kT, const float *v, int ldv, int start, int n,
                             int D, int T, float *sc) {
    /* the ring's indices start..start+n1-1, then (wrapped) 0..n-n1-1 */
    int n1 = start + n <= T ? n : T - start;
    avx2_scores(sc, q, kT + start, n1, D, T);
    if (n > n1) avx2_scores(sc + n1, q, kT, n - n1, D, T);
    float mx = avx2_max_value(sc, n);
    double sum = avx2_exp_shifted(sc, sc, n, mx, 1.0f);
    __m256 vinv = _mm256_set1_ps((float)(1.0 / sum));
    for (int d0 = 0; d0 < D; d0 += 64) {
        int left = D - d0, nd = (left + 7) / 8;
        if (nd > 8) nd = 8;
        int last = left >= 8 * nd ? 8 : left - 8 * (nd - 1);
        __m256i dm = lane_mask(last);
        __m256 a[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
        for (int seg = 0; seg < 2; seg++) {
            const float *vs = seg ? v : v + (size_t)start * ldv, *ps = seg ? sc + n1 : sc;
            int cnt = seg ? n - n1 : n1;
            for (int t = 0; t < cnt; t++) {
                __m256 p = _mm256_broadcast_ss(ps + t);
                const float *vt = vs + (size_t)t * ldv + d0;
#pragma GCC unroll 8
                for (int j = 0; j < 8; j++)
                    if (j < nd) {
                        __m256 x = j == nd - 1 ? _mm256_maskload_ps(vt + 8 * j, dm) : _mm256_loadu_ps(vt + 8 * j);
                        a[j] = _mm256_fmadd_ps(p, x, a[j]);
                    }
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (j < nd) {
                __m256 r = _mm256_mul_ps(a[j], vinv);
                if (j == nd - 1)
                    _mm256_maskstore_ps(o + d0 + 8 * j, dm, r);
                else
                    _mm256_storeu_ps(o + d0 + 8 * j, r);
            }
    }
}

/* ---------------------------------------------------------------- elementwise */

static void avx2_rmsnorm(float *y, const float *x, const float *w, int C, float eps) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= C; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum(acc);
    for (; i < C; i++) ss += x[i] * x[i];
    float s = 1.0f / sqrtf(ss / (float)C + eps);
    __m256 vs = _mm256_set1_ps(s);
    for (i = 0; i + 8 <= C; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
    for (; i < C; i++) y[i] = x[i] * s * w[i];
}

static void avx2_rope(float *v, const float *c, const float *s, int NH, int D) {
    int half = D / 2;
    for (int h = 0; h < NH; h++, v += D) {
        int i = 0;
        for (; i + 8 <= half; i += 8) {
            __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
            __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_loadu_ps(s + i);
            _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, vc, _mm256_mul_ps(b, vs)));
            _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(b, vc, _mm256_mul_ps(a, vs)));
        }
        for (; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i] + a * s[i];
        }
    }
}

static void avx2_swiglu(float *g, const float *u, int F) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int i = 0;
    for (; i + 8 <= F; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const model_kernels model_kernels_avx2 = {
    .name = "avx2",
    .panel_rows = 6,
    .panel = avx2_panel,
    .panel_bf16 = avx2_panel_bf16,
    .attend_head = avx2_attend_head,
    .exp_shifted = avx2_exp_shifted,
    .max_value = avx2_max_value,
    .sum16 = avx2_sum16,
    .rmsnorm = avx2_rmsnorm,
    .rope = avx2_rope,
    .swiglu = avx2_swiglu,
};
