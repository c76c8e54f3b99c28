/* tests/model_infer/test_kernels.c — each vector kernel table against the reference kernels, on the
 * sizes that leave partial vectors, partial panels and partial score blocks; registered once per
 * instruction set this CPU runs (test_sampler.c), the table under test being the one RLHF_ISA selects.
 * Inputs past the lengths a kernel is given are NaN, so reading them shows up in the result. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels_int.h"
#include "model/sampler_int.h"
#include "tests/model_infer/infer_test.h"

static const model_kernels *under_test(void) {
    const model_kernels *k = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_kernels_select(&k, &err), 0);
    return k;
}

static void fill_normal(float *x, size_t n, rlhf_rng *g, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * rlhf_rng_normal(g);
}

/* |a - b| <= tol * max(1, |b|) everywhere, NaN never */
static int close_all(const float *a, const float *b, size_t n, double tol) {
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= tol * fmax(1.0, fabs(b[i])))) {
            printf("\n  index %zu: %.9g vs reference %.9g\n", i, a[i], b[i]);
            return 0;
        }
    }
    return 1;
}

/* Every row count up to the table's panel_rows, two panels the second partial, accumulate or not. */
static void test_panel(void) {
    const model_kernels *k = under_test();
    int O = 45, I = 37, ld = 41, rows = k->panel_rows;
    rlhf_rng g;
    rlhf_rng_seed(&g, 11);
    float *W = malloc((size_t)O * I * sizeof(float)), *x = malloc((size_t)rows * ld * sizeof(float));
    fill_normal(W, (size_t)O * I, &g, 1.0f);
    fill_normal(x, (size_t)rows * ld, &g, 1.0f);
    for (int r = 0; r < rows; r++)
        for (int i = I; i < ld; i++) x[(size_t)r * ld + i] = NAN; /* the stride's gap is never read */
    float *Wp = aligned_alloc(64, (sampler_packed_size(O, I) * sizeof(float) + 63) & ~(size_t)63);
    sampler_pack_matrix(Wp, I, W, O, NULL, 0, NULL, 0);
    float *y = malloc((size_t)rows * (O + 1) * sizeof(float)), *want = malloc((size_t)rows * (O + 1) * sizeof(float));
    for (int nr = 1; nr <= rows; nr++)
        for (int acc = 0; acc < 2; acc++) {
            for (int i = 0; i < nr * O; i++) y[i] = want[i] = acc ? 0.25f * (float)(i % 7) : NAN;
            y[nr * O] = want[nr * O] = 123.0f; /* one past the output: untouched */
            for (int p = 0; p < 2; p++) {
                k->panel(y, x, ld, Wp + (size_t)p * I * KERNEL_PANEL, nr, I, O, p * KERNEL_PANEL, acc);
                for (int r = 0; r < nr; r++)
                    for (int j = 0; j < KERNEL_PANEL && p * KERNEL_PANEL + j < O; j++) {
                        double s = 0.0;
                        int o = p * KERNEL_PANEL + j;
                        for (int i = 0; i < I; i++) s += (double)x[(size_t)r * ld + i] * W[(size_t)o * I + i];
                        float *w = &want[(size_t)r * O + o];
                        *w = acc ? *w + (float)s : (float)s;
                    }
            }
            CU_ASSERT(close_all(y, want, (size_t)nr * O + 1, 1e-4));
        }
    free(W);
    free(x);
    free(Wp);
    free(y);
    free(want);
}

/* The bf16 panel: weights widened exactly and summed in the fp32 kernel's order, so it equals the fp32
 * panel on the bf16-rounded weights bit for bit, every row count, accumulate or not. */
static void test_panel_bf16(void) {
    const model_kernels *k = under_test();
    int O = 45, I = 37, ld = 41, rows = k->panel_rows;
    rlhf_rng g;
    rlhf_rng_seed(&g, 15);
    float *W = malloc((size_t)O * I * sizeof(float)), *x = malloc((size_t)rows * ld * sizeof(float));
    fill_normal(W, (size_t)O * I, &g, 1.0f);
    fill_normal(x, (size_t)rows * ld, &g, 1.0f);
    float *Wr = malloc((size_t)O * I * sizeof(float)); /* W rounded to bf16, as floats */
    int changed = 0;
    for (int i = 0; i < O * I; i++) {
        Wr[i] = model_bf16_to_f32(model_bf16_round(W[i]));
        changed += Wr[i] != W[i];
    }
    CU_ASSERT(changed > O * I / 2); /* the rounding is real: the test could tell fp32 from bf16 */
    float *Wp = aligned_alloc(64, (sampler_packed_size(O, I) * sizeof(float) + 63) & ~(size_t)63);
    uint16_t *Wb = aligned_alloc(64, (sampler_packed_size(O, I) * sizeof(uint16_t) + 63) & ~(size_t)63);
    sampler_pack_matrix(Wp, I, Wr, O, NULL, 0, NULL, 0);
    sampler_pack_matrix_bf16(Wb, I, W, O, NULL, 0, NULL, 0);
    float *y = malloc((size_t)rows * O * sizeof(float)), *want = malloc((size_t)rows * O * sizeof(float));
    for (int nr = 1; nr <= rows; nr++)
        for (int acc = 0; acc < 2; acc++) {
            for (int i = 0; i < nr * O; i++) y[i] = want[i] = acc ? 0.5f * (float)(i % 5) : NAN;
            for (int p = 0; p < 2; p++) {
                k->panel_bf16(y, x, ld, Wb + (size_t)p * I * KERNEL_PANEL, nr, I, O, p * KERNEL_PANEL, acc);
                k->panel(want, x, ld, Wp + (size_t)p * I * KERNEL_PANEL, nr, I, O, p * KERNEL_PANEL, acc);
            }
            CU_ASSERT_EQUAL(memcmp(y, want, (size_t)nr * O * sizeof(float)), 0);
        }
    /* round to nearest even, and NaN stays NaN */
    CU_ASSERT_EQUAL(model_bf16_round(1.0f), 0x3f80);
    CU_ASSERT_EQUAL(model_bf16_round(1.0f + 0x1p-8f), 0x3f80);          /* tie: to even */
    CU_ASSERT_EQUAL(model_bf16_round(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81); /* above the tie: up */
    CU_ASSERT_EQUAL(model_bf16_round(1.0f + 3 * 0x1p-8f), 0x3f82);      /* tie from odd: to even */
    CU_ASSERT(isnan(model_bf16_to_f32(model_bf16_round(NAN))));
    CU_ASSERT(isinf(model_bf16_to_f32(model_bf16_round(INFINITY))));
    free(W);
    free(Wr);
    free(x);
    free(Wp);
    free(Wb);
    free(y);
    free(want);
}

/* Head dims with and without a partial vector and above one block of dimensions; cache lengths
 * around the score block sizes (8, 16, 64, 128 positions), up to the whole cache (n = T, not a multiple
 * of 8: the keys buffer ends exactly there, so an unmasked read past it is an overflow that the
 * sanitizer build reports). */
static void test_attend_head(void) {
    const model_kernels *k = under_test();
    enum { T = 300 };
    static const int Ds[] = {8, 24, 48, 64, 80, 128, 136, 200};
    static const int ns[] = {1, 2, 7, 15, 17, 63, 64, 65, 129, 200, 300};
    rlhf_rng g;
    rlhf_rng_seed(&g, 12);
    float *v = malloc((size_t)T * 208 * sizeof(float));
    float *q = malloc(200 * sizeof(float)), *o = malloc(208 * sizeof(float)), *want = malloc(208 * sizeof(float));
    float *sc = malloc((T + 128) * sizeof(float)), *sc_ref = malloc((T + 128) * sizeof(float));
    int bad = 0;
    for (size_t d = 0; d < sizeof Ds / sizeof *Ds; d++)
        for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
            int D = Ds[d], n = ns[t], ldv = D + 8;
            float *kT = malloc((size_t)D * T * sizeof(float)); // (D, T)
            fill_normal(q, (size_t)D, &g, 1.0f / sqrtf((float)D));
            for (int i = 0; i < D; i++)
                for (int p = 0; p < T; p++) kT[(size_t)i * T + p] = p < n ? 2.0f * rlhf_rng_normal(&g) : NAN;
            for (int p = 0; p < T; p++)
                for (int i = 0; i < ldv; i++) v[(size_t)p * ldv + i] = p < n && i < D ? rlhf_rng_normal(&g) : NAN;
            o[D] = want[D] = 7.0f;
            k->attend_head(o, q, kT, v, ldv, 0, n, D, T, sc);
            model_kernels_ref.attend_head(want, q, kT, v, ldv, 0, n, D, T, sc_ref);
            if (!close_all(o, want, (size_t)D + 1, 1e-5)) {
                printf("  attend_head D %d n %d\n", D, n);
                bad++;
            }
            free(kT);
        }
    CU_ASSERT_EQUAL(bad, 0);
    free(v);
    free(q);
    free(o);
    free(want);
    free(sc);
    free(sc_ref);
}

/* A local layer's ring buffer: the n positions stored at cache indices start, start+1, ... (mod T), NaN
 * everywhere else, give what the reference kernel gives on the same positions stored from index 0, on
 * every kernel table this CPU runs (ref included). */
static void test_attend_head_ring(void) {
    enum { T = 287 };
    static const int Ds[] = {8, 64, 80};
    static const int ns[] = {1, 17, 64, 200, 256, 287};
    static const int starts[] = {0, 1, 100, 250, 286};
    rlhf_rng g;
    rlhf_rng_seed(&g, 21);
    int ldv = 88, bad = 0, runs = 0;
    float *kl = malloc((size_t)80 * T * sizeof(float)), *kr = malloc((size_t)80 * T * sizeof(float));
    float *vl = malloc((size_t)T * ldv * sizeof(float)), *vr = malloc((size_t)T * ldv * sizeof(float));
    float *q = malloc(80 * sizeof(float)), *o = malloc(88 * sizeof(float)), *want = malloc(88 * sizeof(float));
    float *sc = malloc((T + 128) * sizeof(float));
    for (int isa = 0; isa < 3; isa++) {
        if (!model_isa_supported((model_isa)isa)) continue;
        const model_kernels *k = model_kernels_of((model_isa)isa);
        for (size_t d = 0; d < sizeof Ds / sizeof *Ds; d++)
            for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
                for (size_t b = 0; b < sizeof starts / sizeof *starts; b++) {
                    int D = Ds[d], n = ns[a], start = starts[b];
                    fill_normal(q, (size_t)D, &g, 1.0f / sqrtf((float)D));
                    for (size_t i = 0; i < (size_t)80 * T; i++) kl[i] = kr[i] = NAN;
                    for (size_t i = 0; i < (size_t)T * ldv; i++) vl[i] = vr[i] = NAN;
                    for (int t = 0; t < n; t++) {
                        int c = (start + t) % T;
                        for (int i = 0; i < D; i++) kl[(size_t)i * T + t] = kr[(size_t)i * T + c] = 2.0f * rlhf_rng_normal(&g);
                        for (int i = 0; i < D; i++) vl[(size_t)t * ldv + i] = vr[(size_t)c * ldv + i] = rlhf_rng_normal(&g);
                    }
                    o[D] = want[D] = 7.0f;
                    k->attend_head(o, q, kr, vr, ldv, start, n, D, T, sc);
                    model_kernels_ref.attend_head(want, q, kl, vl, ldv, 0, n, D, T, sc);
                    runs++;
                    if (!close_all(o, want, (size_t)D + 1, 1e-5)) {
                        printf("  %s attend_head ring D %d n %d start %d\n", k->name, D, n, start);
                        bad++;
                    }
                }
    }
    CU_ASSERT(runs >= 90);
    CU_ASSERT_EQUAL(bad, 0);
    free(kl), free(kr), free(vl), free(vr), free(q), free(o), free(want), free(sc);
}

static void test_softmax_pieces(void) {
    const model_kernels *k = under_test();
    static const int ns[] = {1, 7, 8, 15, 16, 17, 33, 1000, 32000};
    rlhf_rng g;
    rlhf_rng_seed(&g, 13);
    float *x = malloc(32001 * sizeof(float)), *e = malloc(32001 * sizeof(float)), *e_ref = malloc(32001 * sizeof(float));
    for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
        int n = ns[t];
        fill_normal(x, (size_t)n, &g, 20.0f); /* exp arguments down to the -87 clamp */
        x[n] = NAN;
        x[n - 1] = 80.0f; /* the maximum last: the tail loop must see it */
        CU_ASSERT_EQUAL(k->max_value(x, n), model_kernels_ref.max_value(x, n));
        for (int scale = 1; scale <= 2; scale++) {
            double s = k->exp_shifted(e, x, n, 80.0f, 1.0f / (float)scale);
            double s_ref = model_kernels_ref.exp_shifted(e_ref, x, n, 80.0f, 1.0f / (float)scale);
            CU_ASSERT(close_all(e, e_ref, (size_t)n, 1e-6));
            CU_ASSERT(fabs(s - s_ref) <= 1e-6 * s_ref);
        }
        memcpy(e, x, (size_t)n * sizeof(float)); /* in place, as attention uses it */
        double s_in = k->exp_shifted(e, e, n, 80.0f, 1.0f);
        double s_ref = model_kernels_ref.exp_shifted(e_ref, x, n, 80.0f, 1.0f);
        CU_ASSERT(close_all(e, e_ref, (size_t)n, 1e-6));
        CU_ASSERT(fabs(s_in - s_ref) <= 1e-6 * s_ref);
    }
    fill_normal(x, 16, &g, 3.0f);
    CU_ASSERT(fabs(k->sum16(x) - model_kernels_ref.sum16(x)) <= 1e-5 * 16 * 3);
    free(x);
    free(e);
    free(e_ref);
}

static void test_elementwise(void) {
    const model_kernels *k = under_test();
    static const int Cs[] = {1, 7, 8, 16, 17, 33, 288, 576};
    rlhf_rng g;
    rlhf_rng_seed(&g, 14);
    float *x = malloc(1200 * sizeof(float)), *w = malloc(1200 * sizeof(float)), *y = malloc(1200 * sizeof(float)),
          *y_ref = malloc(1200 * sizeof(float)), *u = malloc(1200 * sizeof(float));
    for (size_t t = 0; t < sizeof Cs / sizeof *Cs; t++) {
        int C = Cs[t];
        fill_normal(x, (size_t)C, &g, 3.0f);
        fill_normal(w, (size_t)C, &g, 1.0f);
        x[C] = w[C] = NAN;
        y[C] = y_ref[C] = 5.0f;
        k->rmsnorm(y, x, w, C, 1e-5f);
        model_kernels_ref.rmsnorm(y_ref, x, w, C, 1e-5f);
        CU_ASSERT(close_all(y, y_ref, (size_t)C + 1, 1e-5));
        /* in place (the sampler's per-head q/k norms): the same values as out of place */
        memcpy(u, x, ((size_t)C + 1) * sizeof(float));
        k->rmsnorm(u, u, w, C, 1e-5f);
        CU_ASSERT(memcmp(u, y, (size_t)C * sizeof(float)) == 0);
        /* swiglu over gate values far into both tails of the sigmoid */
        fill_normal(y, (size_t)C, &g, 40.0f);
        memcpy(y_ref, y, (size_t)C * sizeof(float));
        fill_normal(u, (size_t)C, &g, 1.0f);
        u[C] = NAN;
        y[C] = y_ref[C] = 5.0f;
        k->swiglu(y, u, C);
        model_kernels_ref.swiglu(y_ref, u, C);
        CU_ASSERT(close_all(y, y_ref, (size_t)C + 1, 1e-5));
    }
    static const int Ds[] = {2, 8, 16, 24, 48, 64, 80, 128};
    for (size_t t = 0; t < sizeof Ds / sizeof *Ds; t++) {
        int D = Ds[t], NH = 3;
        fill_normal(x, (size_t)NH * D, &g, 1.0f);
        for (int i = 0; i < D / 2; i++) {
            float a = 0.37f * (float)i + 0.1f;
            w[i] = cosf(a);
            u[i] = sinf(a);
        }
        x[NH * D] = 9.0f;
        memcpy(y_ref, x, (size_t)(NH * D + 1) * sizeof(float));
        k->rope(x, w, u, NH, D);
        model_kernels_ref.rope(y_ref, w, u, NH, D);
        CU_ASSERT(close_all(x, y_ref, (size_t)NH * D + 1, 1e-6));
    }
    free(x);
    free(w);
    free(y);
    free(y_ref);
    free(u);
}

/* RLHF_ISA names a table: an unknown name or one this CPU cannot run is an error naming it. */
static void test_isa_choice(void) {
    const char *saved = getenv("RLHF_ISA");
    char keep[32] = "";
    if (saved) snprintf(keep, sizeof keep, "%s", saved);
    const model_kernels *k = NULL;
    rlhf_error err = {0};
    setenv("RLHF_ISA", "sse9", 1);
    CU_ASSERT_EQUAL(model_kernels_select(&k, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "sse9"));
    setenv("RLHF_ISA", "ref", 1);
    CU_ASSERT_EQUAL(model_kernels_select(&k, &err), 0);
    CU_ASSERT_PTR_EQUAL(k, &model_kernels_ref);
    for (int isa = MODEL_ISA_AVX2; isa <= MODEL_ISA_AVX512; isa++) {
        setenv("RLHF_ISA", model_kernels_of((model_isa)isa)->name, 1);
        int rc = model_kernels_select(&k, &err);
        if (model_isa_supported((model_isa)isa)) {
            CU_ASSERT_EQUAL(rc, 0);
            CU_ASSERT_PTR_EQUAL(k, model_kernels_of((model_isa)isa));
        } else {
            CU_ASSERT_EQUAL(rc, RLHF_EINVAL);
            CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "lacks"));
        }
    }
    unsetenv("RLHF_ISA");
    CU_ASSERT_EQUAL(model_kernels_select(&k, &err), 0); /* the best this CPU has */
    CU_ASSERT_PTR_EQUAL(k, model_isa_supported(MODEL_ISA_AVX512) ? &model_kernels_avx512
                           : model_isa_supported(MODEL_ISA_AVX2) ? &model_kernels_avx2
                                                                 : &model_kernels_ref);
    char line[256];
    CU_ASSERT_EQUAL(model_kernels_describe(line, sizeof line, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(line, k->name));
    if (saved) setenv("RLHF_ISA", keep, 1);
}

void infer_register_kernel_tests(CU_pSuite s, int vector_table) {
    if (vector_table) {
        CU_add_test(s, "panel matmul equals a double loop (every row count, partial panel, accumulate)", test_panel);
        CU_add_test(s, "bf16 panel equals the fp32 panel on the rounded weights, bit for bit", test_panel_bf16);
        CU_add_test(s, "attention over the cache equals the reference kernel", test_attend_head);
        CU_add_test(s, "max, exp and sums equal the reference kernels", test_softmax_pieces);
        CU_add_test(s, "rmsnorm, rope, swiglu equal the reference kernels", test_elementwise);
    } else {
        CU_add_test(s, "bf16 panel equals the fp32 panel on the rounded weights (reference)", test_panel_bf16);
        CU_add_test(s, "RLHF_ISA chooses a table; bad names and missing CPU features are errors", test_isa_choice);
        CU_add_test(s, "ring-buffer attention (local layers) equals the reference on unwrapped positions, every table",
                    test_attend_head_ring);
    }
}
