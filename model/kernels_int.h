/* model/kernels_int.h — the sampler's hot kernels, one table per instruction set, chosen at run time.
 *
 * Every kernel exists three times: the plain C reference (kernels.c; also what runs on a CPU without
 * AVX2), AVX2 + FMA (kernels_avx2.c) and AVX-512 (kernels_avx512.c). The vector files carry their
 * instruction set as a target pragma, so one binary holds all three whatever -march it was built with;
 * model_kernels_select() picks the best the CPU has (cpuid, with the OS's register-state check), or the
 * one RLHF_ISA=ref|avx2|avx512 names. Tests compare each table the CPU can run against the reference.
 *
 * Each kernel computes a row (or a panel block of rows) the same way whatever else shares the call, so
 * a sequence's tokens do not depend on its batch neighbours or the thread count (model_infer.h); they
 * may differ between instruction sets in the last bits (other summation orders, a polynomial exp).
 * Private to model/: the sampler and its benchmark use it. */
#ifndef RLHF_KERNELS_INT_H
#define RLHF_KERNELS_INT_H
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Output columns per packed weight panel: an (O, I) matrix is stored as ceil(O/32) panels of (I, 32),
 * zero-padded past O (sampler_pack_matrix), so a kernel streams each panel contiguously. */
enum { KERNEL_PANEL = 32 };

/* bfloat16: the top half of an IEEE float. Rounding to nearest, ties to even; NaN stays NaN. */
static inline uint16_t model_bf16_round(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float model_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

typedef enum model_isa { MODEL_ISA_REF = 0, MODEL_ISA_AVX2 = 1, MODEL_ISA_AVX512 = 2 } model_isa;

typedef struct model_kernels {
    const char *name; /* "ref", "avx2", "avx512" */
    int panel_rows;   /* most rows one panel call takes */
    /* out rows [0, nr) x columns [o0, o0+32) (only those < OC are written) = x (nr, IC; rows ld_in
     * apart) @ panel (IC, 32); += when accumulate. 1 <= nr <= panel_rows. */
    void (*panel)(float *out, const float *x, int ld_in, const float *wp, int nr, int IC, int OC, int o0,
                  int accumulate);
    /* The same with a bf16 panel (IC, 32): each weight widened to fp32 exactly, products and sums in fp32
     * in the same order as panel, so the result equals panel on the bf16-rounded weights. */
    void (*panel_bf16)(float *out, const float *x, int ld_in, const uint16_t *wp, int nr, int IC, int OC, int o0,
                       int accumulate);
    /* One query head over its cache: q (D) already scaled by 1/sqrt(D); kT (D, T) keys transposed; v (T,
     * ldv) values by cache index; it attends over the n cache indices start, start+1, ... taken modulo T (a
     * ring buffer: local attention layers keep their last positions so; global layers pass start = 0);
     * 0 <= start < T, 1 <= n <= T; sc (T + 128) scratch; o (D) output. */
    void (*attend_head)(float *o, const float *q, const float *kT, const float *v, int ldv, int start, int n, int D,
                        int T, float *sc);
    /* e[i] = exp(scale * (x[i] - shift)), the argument clamped at -87; returns sum(e) (double). e may be x. */
    double (*exp_shifted)(float *e, const float *x, int n, float shift, float scale);
    float (*max_value)(const float *x, int n); /* n >= 1 */
    float (*sum16)(const float *x);           /* x[0] + ... + x[15] */
    /* y (C) = x (C) / rms(x) * w (C); y may be x (the q/k norms run in place) */
    void (*rmsnorm)(float *y, const float *x, const float *w, int C, float eps);
    /* In place on v (NH, D): rotate pairs (i, i + D/2) of every head by the angles whose cosines and sines
     * are c, s (D/2) (HF rotate_half). */
    void (*rope)(float *v, const float *c, const float *s, int NH, int D);
    /* g (F) <- silu(g) * u (F) */
    void (*swiglu)(float *g, const float *u, int F);
} model_kernels;

extern const model_kernels model_kernels_ref, model_kernels_avx2, model_kernels_avx512;

/* 1 when this CPU (and OS) can run isa's kernels. */
int model_isa_supported(model_isa isa);
const model_kernels *model_kernels_of(model_isa isa);
/* The best table this CPU runs, or the one the environment variable RLHF_ISA names; an unknown name,
 * or an instruction set the CPU lacks, is an error naming both. */
int model_kernels_select(const model_kernels **out, rlhf_error *err);

#endif
