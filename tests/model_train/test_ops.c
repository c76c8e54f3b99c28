/* tests/model_train/test_ops.c — every training op: fast kernel == reference kernel (forward and
 * backward), and the backward == central finite differences of sum(out * r) for random r. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/ops.h"
#include "tests/model_train/helpers.h"

#define FD_TOL 2e-2   /* float32 forward; eps ~1e-2 of O(1) inputs */
#define SAME_TOL 2e-5 /* fast vs reference kernel, relative (max-abs norm) */

/* ------------------------------------------------------------------ embedding */

typedef struct {
    int32_t *tok;
    float *emb, *out, *r;
    int N, C;
} emb_ctx;
static double emb_loss(void *p) {
    emb_ctx *c = p;
    embedding_forward_ref(c->out, c->tok, c->emb, c->N, c->C);
    return dot_rd(c->out, c->r, (size_t)c->N * c->C);
}

static void test_embedding(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 1);
    int V = 11, C = 40, N = 23; /* C not a multiple of the column chunk */
    emb_ctx c = {.N = N, .C = C};
    c.tok = malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++) c.tok[i] = (int32_t)(rlhf_rng_u64(&rng) % 4); /* many repeats */
    c.emb = rand_buf(&rng, (size_t)V * C, 1.0f);
    c.out = zeros((size_t)N * C);
    c.r = rand_buf(&rng, (size_t)N * C, 1.0f);
    float *out2 = zeros((size_t)N * C), *g1 = zeros((size_t)V * C), *g2 = zeros((size_t)V * C);
    embedding_forward(out2, c.tok, c.emb, N, C);
    embedding_forward_ref(c.out, c.tok, c.emb, N, C);
    CU_ASSERT(memcmp(out2, c.out, (size_t)N * C * sizeof(float)) == 0);
    embedding_backward(g1, c.r, c.tok, N, C);
    embedding_backward_ref(g2, c.r, c.tok, N, C);
    CU_ASSERT(rel_err(g1, g2, (size_t)V * C) < SAME_TOL);
    fd_check("dembed", emb_loss, &c, c.emb, (size_t)V * C, g1, 1e-2, FD_TOL, 200, &rng);
    free(c.tok), free(c.emb), free(c.out), free(c.r), free(out2), free(g1), free(g2);
}

/* ------------------------------------------------------------------ RMSNorm */

typedef struct {
    float *x, *w, *out, *rstd, *r;
    int N, C;
} norm_ctx;
static double norm_loss(void *p) {
    norm_ctx *c = p;
    rmsnorm_forward_ref(c->out, c->rstd, c->x, c->w, c->N, c->C, 1e-5f);
    return dot_rd(c->out, c->r, (size_t)c->N * c->C);
}

static void test_rmsnorm(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 2);
    int N = 7, C = 37;
    norm_ctx c = {.N = N, .C = C};
    c.x = rand_buf(&rng, (size_t)N * C, 1.0f);
    c.w = rand_buf(&rng, C, 1.0f);
    c.out = zeros((size_t)N * C);
    c.rstd = zeros(N);
    c.r = rand_buf(&rng, (size_t)N * C, 1.0f);
    float *out2 = zeros((size_t)N * C), *rstd2 = zeros(N);
    rmsnorm_forward(out2, rstd2, c.x, c.w, N, C, 1e-5f);
    rmsnorm_forward_ref(c.out, c.rstd, c.x, c.w, N, C, 1e-5f);
    CU_ASSERT(rel_err(out2, c.out, (size_t)N * C) < SAME_TOL);
    CU_ASSERT(rel_err(rstd2, c.rstd, N) < SAME_TOL);
    float *dx1 = zeros((size_t)N * C), *dw1 = zeros(C), *dx2 = zeros((size_t)N * C), *dw2 = zeros(C);
    rmsnorm_backward(dx1, dw1, c.r, c.x, c.w, rstd2, N, C, 1);
    rmsnorm_backward_ref(dx2, dw2, c.r, c.x, c.w, c.rstd, N, C);
    CU_ASSERT(rel_err(dx1, dx2, (size_t)N * C) < SAME_TOL);
    CU_ASSERT(rel_err(dw1, dw2, C) < SAME_TOL);
    fd_check("rmsnorm dinp", norm_loss, &c, c.x, (size_t)N * C, dx1, 1e-2, FD_TOL, 300, &rng);
    fd_check("rmsnorm dweight", norm_loss, &c, c.w, C, dw1, 1e-2, FD_TOL, 300, &rng);
    free(c.x), free(c.w), free(c.out), free(c.rstd), free(c.r), free(out2), free(rstd2);
    free(dx1), free(dw1), free(dx2), free(dw2);
}

/* ------------------------------------------------------------------ matmul */

typedef struct {
    float *x, *w, *out, *r;
    int N, IC, OC;
} mm_ctx;
static double mm_loss(void *p) {
    mm_ctx *c = p;
    matmul_forward_ref(c->out, c->x, c->w, c->N, c->IC, c->OC);
    return dot_rd(c->out, c->r, (size_t)c->N * c->OC);
}

static void test_matmul(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 3);
    int N = 9, IC = 21, OC = 13;
    mm_ctx c = {.N = N, .IC = IC, .OC = OC};
    c.x = rand_buf(&rng, (size_t)N * IC, 1.0f);
    c.w = rand_buf(&rng, (size_t)OC * IC, 1.0f);
    c.out = zeros((size_t)N * OC);
    c.r = rand_buf(&rng, (size_t)N * OC, 1.0f);
    float *out2 = zeros((size_t)N * OC);
    matmul_forward(out2, c.x, c.w, N, IC, OC);
    matmul_forward_ref(c.out, c.x, c.w, N, IC, OC);
    CU_ASSERT(rel_err(out2, c.out, (size_t)N * OC) < SAME_TOL);
    float *dx1 = zeros((size_t)N * IC), *dw1 = zeros((size_t)OC * IC);
    float *dx2 = zeros((size_t)N * IC), *dw2 = zeros((size_t)OC * IC);
    /* accumulation: start from a non-zero gradient in both */
    for (int i = 0; i < N * IC; i++) dx1[i] = dx2[i] = 0.5f;
    matmul_backward(dx1, dw1, c.r, c.x, c.w, N, IC, OC, 1);
    matmul_backward_ref(dx2, dw2, c.r, c.x, c.w, N, IC, OC);
    CU_ASSERT(rel_err(dx1, dx2, (size_t)N * IC) < SAME_TOL);
    CU_ASSERT(rel_err(dw1, dw2, (size_t)OC * IC) < SAME_TOL);
    for (int i = 0; i < N * IC; i++) dx1[i] -= 0.5f;
    fd_check("matmul dinp", mm_loss, &c, c.x, (size_t)N * IC, dx1, 1e-2, FD_TOL, 200, &rng);
    fd_check("matmul dweight", mm_loss, &c, c.w, (size_t)OC * IC, dw1, 1e-2, FD_TOL, 200, &rng);
    free(c.x), free(c.w), free(c.out), free(c.r), free(out2), free(dx1), free(dw1), free(dx2), free(dw2);
}

/* The fast matmul paths that split work between threads (row blocks in the forward, the two
 * products of the backward and of matmul_forward_pair side by side) only start at N >= 32 per
 * thread and at 2 threads: check them at such sizes and 1..3 threads against the references. */
static void test_matmul_threaded_paths(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 11);
    int saved = omp_get_max_threads();
    int shapes[][3] = {{97, 21, 13}, {256, 64, 48}, {64, 40, 72}};
    for (int si = 0; si < 3; si++) {
        int N = shapes[si][0], IC = shapes[si][1], OC = shapes[si][2];
        float *x = rand_buf(&rng, (size_t)N * IC, 1.0f);            // (N, IC)
        float *wa = rand_buf(&rng, (size_t)OC * IC, 1.0f);          // (OC, IC)
        float *wb = rand_buf(&rng, (size_t)OC * IC, 1.0f);          // (OC, IC)
        float *dy = rand_buf(&rng, (size_t)N * OC, 1.0f);           // (N, OC)
        float *want_a = zeros((size_t)N * OC), *want_b = zeros((size_t)N * OC);
        matmul_forward_ref(want_a, x, wa, N, IC, OC);
        matmul_forward_ref(want_b, x, wb, N, IC, OC);
        float *want_dx = zeros((size_t)N * IC), *want_dw = zeros((size_t)OC * IC);
        matmul_backward_ref(want_dx, want_dw, dy, x, wa, N, IC, OC);
        for (int threads = 1; threads <= 3; threads++) {
            omp_set_num_threads(threads);
            float *a = zeros((size_t)N * OC), *b = zeros((size_t)N * OC);
            matmul_forward(a, x, wa, N, IC, OC);
            CU_ASSERT(rel_err(a, want_a, (size_t)N * OC) < SAME_TOL);
            memset(a, 0, sizeof(float) * (size_t)N * OC);
            matmul_forward_pair(a, b, x, wa, wb, N, IC, OC);
            CU_ASSERT(rel_err(a, want_a, (size_t)N * OC) < SAME_TOL);
            CU_ASSERT(rel_err(b, want_b, (size_t)N * OC) < SAME_TOL);
            for (int acc = 0; acc <= 1; acc++) {
                float *dx = zeros((size_t)N * IC), *dw = zeros((size_t)OC * IC);
                /* overwrite mode must ignore what is there; accumulate mode must add to it */
                for (size_t i = 0; i < (size_t)N * IC; i++) dx[i] = acc ? 0.25f : NAN;
                matmul_backward(dx, dw, dy, x, wa, N, IC, OC, acc);
                if (acc)
                    for (size_t i = 0; i < (size_t)N * IC; i++) dx[i] -= 0.25f;
                CU_ASSERT(rel_err(dx, want_dx, (size_t)N * IC) < SAME_TOL);
                CU_ASSERT(rel_err(dw, want_dw, (size_t)OC * IC) < SAME_TOL);
                free(dx), free(dw);
            }
            free(a), free(b);
        }
        free(x), free(wa), free(wb), free(dy), free(want_a), free(want_b), free(want_dx), free(want_dw);
    }
    omp_set_num_threads(saved);
}

/* ------------------------------------------------------------------ RoPE */

typedef struct {
    float *x, *out, *r, *cs, *sn;
    int B, T, NH, D;
} rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    rope_forward_ref(c->out, c->x, c->cs, c->sn, c->B, c->T, c->NH, c->D);
    return dot_rd(c->out, c->r, (size_t)c->B * c->T * c->NH * c->D);
}

static void test_rope(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 4);
    int B = 2, T = 5, NH = 3, D = 8;
    size_t n = (size_t)B * T * NH * D;
    rope_ctx c = {.B = B, .T = T, .NH = NH, .D = D};
    c.cs = zeros((size_t)T * D / 2);
    c.sn = zeros((size_t)T * D / 2);
    model_config rc = {.rope_theta = 10000.0f, .head_dim = D};
    ops_rope_tables(c.cs, c.sn, T, &rc);
    /* the HF convention, spelled out: position 3, pair (1, 1 + D/2), angle 3 * 10000^(-2/8) */
    double ang = 3.0 * pow(10000.0, -2.0 / 8.0);
    CU_ASSERT(fabs(c.cs[3 * 4 + 1] - cos(ang)) < 1e-6 && fabs(c.sn[3 * 4 + 1] - sin(ang)) < 1e-6);
    c.x = rand_buf(&rng, n, 1.0f);
    c.out = zeros(n);
    c.r = rand_buf(&rng, n, 1.0f);
    float *out2 = zeros(n);
    rope_forward(out2, c.x, c.cs, c.sn, B, T, NH, D);
    rope_forward_ref(c.out, c.x, c.cs, c.sn, B, T, NH, D);
    CU_ASSERT(rel_err(out2, c.out, n) < SAME_TOL);
    /* element (b=1, t=3, h=2, i=1): out_i = x_i cos - x_{i+4} sin; out_{i+4} = x_{i+4} cos + x_i sin */
    size_t o = ((size_t)(1 * T + 3) * NH + 2) * D;
    CU_ASSERT(fabs(out2[o + 1] - (c.x[o + 1] * cos(ang) - c.x[o + 5] * sin(ang))) < 1e-5);
    CU_ASSERT(fabs(out2[o + 5] - (c.x[o + 5] * cos(ang) + c.x[o + 1] * sin(ang))) < 1e-5);
    float *d1 = zeros(n), *d2 = zeros(n);
    rope_backward(d1, c.r, c.cs, c.sn, B, T, NH, D, 1);
    rope_backward_ref(d2, c.r, c.cs, c.sn, B, T, NH, D);
    CU_ASSERT(rel_err(d1, d2, n) < SAME_TOL);
    fd_check("rope dinp", rope_loss, &c, c.x, n, d1, 1e-2, FD_TOL, 300, &rng);
    free(c.x), free(c.out), free(c.r), free(c.cs), free(c.sn), free(out2), free(d1), free(d2);
}

/* ------------------------------------------------------------------ attention */

typedef struct {
    float *q, *k, *v, *out, *att, *r;
    int B, T, H, KVH, D, W;
} att_ctx;
static double att_loss(void *p) {
    att_ctx *c = p;
    attention_forward_ref(c->out, c->att, c->q, c->k, c->v, c->B, c->T, c->H, c->KVH, c->D, c->W);
    return dot_rd(c->out, c->r, (size_t)c->B * c->T * c->H * c->D);
}

/* W > 0: local attention over the last W positions (attention_pattern "local"). */
static void attention_case(int B, int T, int H, int KVH, int D, int W, uint64_t seed) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed);
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, na = (size_t)B * H * T * T;
    att_ctx c = {.B = B, .T = T, .H = H, .KVH = KVH, .D = D, .W = W};
    c.q = rand_buf(&rng, nq, 1.0f);
    c.k = rand_buf(&rng, nk, 1.0f);
    c.v = rand_buf(&rng, nk, 1.0f);
    c.out = zeros(nq);
    c.att = zeros(na);
    c.r = rand_buf(&rng, nq, 1.0f);
    float *out2 = zeros(nq), *att2 = zeros(na);
    attention_forward(out2, att2, c.q, c.k, c.v, B, T, H, KVH, D, W);
    attention_forward_ref(c.out, c.att, c.q, c.k, c.v, B, T, H, KVH, D, W);
    CU_ASSERT(rel_err(out2, c.out, nq) < SAME_TOL);
    CU_ASSERT(rel_err(att2, c.att, na) < SAME_TOL);
    float *dq1 = zeros(nq), *dk1 = zeros(nk), *dv1 = zeros(nk), *dq2 = zeros(nq), *dk2 = zeros(nk), *dv2 = zeros(nk);
    int nthreads = 1;
#ifdef _OPENMP
    extern int omp_get_max_threads(void);
    nthreads = omp_get_max_threads();
#endif
    float *scratch = zeros((size_t)nthreads * ops_attention_scratch_floats(T));
    attention_backward(dq1, dk1, dv1, c.r, att2, c.q, c.k, c.v, scratch, B, T, H, KVH, D, W, 1, 1, 1);
    attention_backward_ref(dq2, dk2, dv2, c.r, c.att, c.q, c.k, c.v, B, T, H, KVH, D, W);
    CU_ASSERT(rel_err(dq1, dq2, nq) < SAME_TOL);
    CU_ASSERT(rel_err(dk1, dk2, nk) < SAME_TOL);
    CU_ASSERT(rel_err(dv1, dv2, nk) < SAME_TOL);
    fd_check("attention dq", att_loss, &c, c.q, nq, dq1, 1e-2, FD_TOL, 150, &rng);
    fd_check("attention dk", att_loss, &c, c.k, nk, dk1, 1e-2, FD_TOL, 150, &rng);
    fd_check("attention dv", att_loss, &c, c.v, nk, dv1, 1e-2, FD_TOL, 150, &rng);
    /* causality: changing the last position's k and v leaves every earlier output unchanged */
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < (size_t)KVH * D; i++) {
            c.k[((size_t)b * T + T - 1) * KVH * D + i] += 3.0f;
            c.v[((size_t)b * T + T - 1) * KVH * D + i] -= 3.0f;
        }
    float *out3 = zeros(nq);
    attention_forward(out3, att2, c.q, c.k, c.v, B, T, H, KVH, D, W);
    int same = 1, changed = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (size_t i = 0; i < (size_t)H * D; i++) {
                size_t o = ((size_t)b * T + t) * H * D + i;
                if (t < T - 1) same &= out3[o] == out2[o];
                else changed |= out3[o] != out2[o];
            }
    CU_ASSERT(same && changed);
    if (W > 0 && W < T) {
        /* the window: changing position 0's k and v changes the outputs at t = 0..W-1 and no later one */
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < (size_t)KVH * D; i++) {
                c.k[(size_t)b * T * KVH * D + i] += 3.0f;
                c.v[(size_t)b * T * KVH * D + i] -= 3.0f;
            }
        float *out4 = zeros(nq);
        attention_forward(out4, att2, c.q, c.k, c.v, B, T, H, KVH, D, W);
        int inside = 1, outside = 1;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                int diff = 0;
                for (size_t i = 0; i < (size_t)H * D; i++) {
                    size_t o = ((size_t)b * T + t) * H * D + i;
                    diff |= out4[o] != out3[o];
                }
                if (t < W) inside &= diff;
                else outside &= !diff;
            }
        CU_ASSERT(inside && outside);
        free(out4);
    }
    free(c.q), free(c.k), free(c.v), free(c.out), free(c.att), free(c.r), free(out2), free(att2), free(out3);
    free(dq1), free(dk1), free(dv1), free(dq2), free(dk2), free(dv2), free(scratch);
}

static void test_attention_mha(void) { attention_case(2, 7, 2, 2, 4, 0, 5); }
static void test_attention_gqa(void) { attention_case(3, 6, 6, 2, 4, 0, 6); }
static void test_attention_mqa_long(void) { attention_case(1, 33, 4, 1, 8, 0, 7); }
static void test_attention_local(void) {
    attention_case(2, 9, 2, 2, 4, 3, 8);   /* window 3 of 9 */
    attention_case(1, 17, 6, 2, 4, 1, 9);  /* window 1: each position sees itself only */
    attention_case(2, 33, 4, 1, 8, 8, 10); /* GQA, window 8 of 33 */
}

/* ------------------------------------------------------------------ SwiGLU and residual */

typedef struct {
    float *g, *u, *out, *r;
    size_t n;
} sw_ctx;
static double sw_loss(void *p) {
    sw_ctx *c = p;
    swiglu_forward_ref(c->out, c->g, c->u, c->n);
    return dot_rd(c->out, c->r, c->n);
}
static double res_loss(void *p) {
    sw_ctx *c = p;
    residual_forward_ref(c->out, c->g, c->u, c->n);
    return dot_rd(c->out, c->r, c->n);
}

/* bias: forward adds the same vector to every row; backward adds the column sums (a parallel path and a
 * partial column chunk at 200 x 100, a serial one at 3 x 5), onto what dbias already holds */
static void test_bias(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 12);
    int shapes[2][2] = {{200, 100}, {3, 5}};
    for (int k = 0; k < 2; k++) {
        int N = shapes[k][0], OC = shapes[k][1];
        size_t n = (size_t)N * OC;
        float *x = rand_buf(&rng, n, 1.0f), *b = rand_buf(&rng, OC, 1.0f), *dy = rand_buf(&rng, n, 1.0f);
        float *y1 = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float));
        memcpy(y1, x, n * sizeof(float));
        memcpy(y2, x, n * sizeof(float));
        bias_forward(y1, b, N, OC);
        bias_forward_ref(y2, b, N, OC);
        CU_ASSERT(memcmp(y1, y2, n * sizeof(float)) == 0);
        CU_ASSERT(y1[(size_t)(N - 1) * OC + 2] == x[(size_t)(N - 1) * OC + 2] + b[2]);
        float *db1 = rand_buf(&rng, OC, 1.0f), *db2 = malloc(OC * sizeof(float));
        memcpy(db2, db1, OC * sizeof(float));
        bias_backward(db1, dy, N, OC);
        bias_backward_ref(db2, dy, N, OC);
        CU_ASSERT(rel_err(db1, db2, OC) < SAME_TOL);
        free(x), free(b), free(dy), free(y1), free(y2), free(db1), free(db2);
    }
}

static void test_swiglu_residual(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 8);
    size_t n = 301;
    sw_ctx c = {.n = n};
    c.g = rand_buf(&rng, n, 2.0f);
    c.u = rand_buf(&rng, n, 1.0f);
    c.out = zeros(n);
    c.r = rand_buf(&rng, n, 1.0f);
    float *out2 = zeros(n), *dg1 = zeros(n), *du1 = zeros(n), *dg2 = zeros(n), *du2 = zeros(n);
    swiglu_forward(out2, c.g, c.u, n);
    swiglu_forward_ref(c.out, c.g, c.u, n);
    CU_ASSERT(rel_err(out2, c.out, n) < SAME_TOL);
    swiglu_backward(dg1, du1, c.r, c.g, c.u, n, 1, 1);
    swiglu_backward_ref(dg2, du2, c.r, c.g, c.u, n);
    CU_ASSERT(rel_err(dg1, dg2, n) < SAME_TOL);
    CU_ASSERT(rel_err(du1, du2, n) < SAME_TOL);
    fd_check("swiglu dgate", sw_loss, &c, c.g, n, dg1, 1e-2, FD_TOL, 301, &rng);
    fd_check("swiglu dup", sw_loss, &c, c.u, n, du1, 1e-2, FD_TOL, 301, &rng);

    memset(dg1, 0, n * sizeof(float)), memset(du1, 0, n * sizeof(float));
    memset(dg2, 0, n * sizeof(float)), memset(du2, 0, n * sizeof(float));
    residual_forward(out2, c.g, c.u, n);
    residual_forward_ref(c.out, c.g, c.u, n);
    CU_ASSERT(memcmp(out2, c.out, n * sizeof(float)) == 0);
    residual_backward(dg1, du1, c.r, n, 1, 1);
    residual_backward_ref(dg2, du2, c.r, n);
    CU_ASSERT(memcmp(dg1, dg2, n * sizeof(float)) == 0 && memcmp(du1, du2, n * sizeof(float)) == 0);
    fd_check("residual da", res_loss, &c, c.g, n, dg1, 1e-2, FD_TOL, 100, &rng);
    fd_check("residual db", res_loss, &c, c.u, n, du1, 1e-2, FD_TOL, 100, &rng);
    free(c.g), free(c.u), free(c.out), free(c.r), free(out2), free(dg1), free(du1), free(dg2), free(du2);
}

/* ------------------------------------------------------------------ log-softmax */

typedef struct {
    float *z, *logp, *ent, *lse, *wl, *we;
    int32_t *tg;
    int N, V;
} ls_ctx;
static double ls_loss(void *p) {
    ls_ctx *c = p;
    logsoftmax_forward_ref(c->logp, c->ent, c->lse, c->z, c->tg, c->N, c->V);
    return dot_rd(c->logp, c->wl, c->N) + dot_rd(c->ent, c->we, c->N);
}

static void test_logsoftmax(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 9);
    int N = 6, V = 29;
    ls_ctx c = {.N = N, .V = V};
    c.z = rand_buf(&rng, (size_t)N * V, 2.0f);
    c.logp = zeros(N), c.ent = zeros(N), c.lse = zeros(N);
    c.wl = rand_buf(&rng, N, 1.0f);
    c.we = rand_buf(&rng, N, 1.0f);
    c.tg = malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++) c.tg[i] = (int32_t)(rlhf_rng_u64(&rng) % V);
    c.tg[2] = -1; /* masked row: no logp term, entropy still defined */
    float *lp2 = zeros(N), *en2 = zeros(N), *ls2 = zeros(N);
    logsoftmax_forward(lp2, en2, ls2, c.z, c.tg, N, V);
    logsoftmax_forward_ref(c.logp, c.ent, c.lse, c.z, c.tg, N, V);
    CU_ASSERT(rel_err(lp2, c.logp, N) < SAME_TOL);
    CU_ASSERT(rel_err(en2, c.ent, N) < SAME_TOL);
    CU_ASSERT(lp2[2] == 0.0f && en2[2] > 0.0f);
    /* entropy bounds: 0 < H <= log V */
    for (int i = 0; i < N; i++) CU_ASSERT(en2[i] > 0 && en2[i] <= logf((float)V) + 1e-5f);
    float *d1 = zeros((size_t)N * V), *d2 = zeros((size_t)N * V);
    logsoftmax_backward(d1, c.wl, c.we, c.z, ls2, en2, c.tg, N, V, 1);
    logsoftmax_backward_ref(d2, c.wl, c.we, c.z, c.lse, c.ent, c.tg, N, V);
    CU_ASSERT(rel_err(d1, d2, (size_t)N * V) < SAME_TOL);
    fd_check("logsoftmax dlogits", ls_loss, &c, c.z, (size_t)N * V, d1, 1e-2, FD_TOL, 174, &rng);
    /* NULL weights = zero */
    float *d3 = zeros((size_t)N * V);
    logsoftmax_backward(d3, NULL, NULL, c.z, ls2, en2, c.tg, N, V, 1);
    CU_ASSERT(max_abs(d3, (size_t)N * V) == 0.0);
    free(c.z), free(c.logp), free(c.ent), free(c.lse), free(c.wl), free(c.we), free(c.tg);
    free(lp2), free(en2), free(ls2), free(d1), free(d2), free(d3);
}

/* ------------------------------------------------------------------ overwrite mode */

static float *nan_buf(size_t n) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = NAN; /* stale contents an overwriting kernel must not read */
    return p;
}

/* acc = 0: every activation gradient is written as if it started from zero, whatever it held. */
static void test_overwrite_mode(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 10);
    int N = 6, C = 20, OC = 12, B = 2, T = 5, H = 4, KVH = 2, D = 4, V = 17;
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KVH * D, na = (size_t)B * H * T * T;
    float *x = rand_buf(&rng, (size_t)N * C, 1.0f), *w = rand_buf(&rng, (size_t)OC * C, 1.0f);
    float *dy = rand_buf(&rng, (size_t)N * OC, 1.0f), *dyc = rand_buf(&rng, (size_t)N * C, 1.0f);
    float *rstd = zeros(N), *tmp = zeros((size_t)N * C);
    /* rmsnorm */
    float *want = zeros((size_t)N * C), *got = nan_buf((size_t)N * C), *dw1 = zeros(C), *dw2 = zeros(C);
    rmsnorm_forward(tmp, rstd, x, w, N, C, 1e-5f);
    rmsnorm_backward_ref(want, dw1, dyc, x, w, rstd, N, C);
    rmsnorm_backward(got, dw2, dyc, x, w, rstd, N, C, 0);
    CU_ASSERT(rel_err(got, want, (size_t)N * C) < SAME_TOL);
    /* matmul */
    float *dwm1 = zeros((size_t)OC * C), *dwm2 = zeros((size_t)OC * C);
    memset(want, 0, (size_t)N * C * sizeof(float));
    for (size_t i = 0; i < (size_t)N * C; i++) got[i] = NAN;
    matmul_backward_ref(want, dwm1, dy, x, w, N, C, OC);
    matmul_backward(got, dwm2, dy, x, w, N, C, OC, 0);
    CU_ASSERT(rel_err(got, want, (size_t)N * C) < SAME_TOL);
    /* rope */
    float *cs = zeros((size_t)T * D / 2), *sn = zeros((size_t)T * D / 2), *g = rand_buf(&rng, nq, 1.0f);
    model_config rcfg = {.rope_theta = 10000.0f, .head_dim = D};
    ops_rope_tables(cs, sn, T, &rcfg);
    float *rw = zeros(nq), *rg = nan_buf(nq);
    rope_backward_ref(rw, g, cs, sn, B, T, H, D);
    rope_backward(rg, g, cs, sn, B, T, H, D, 0);
    CU_ASSERT(rel_err(rg, rw, nq) < SAME_TOL);
    /* attention (GQA: the first head of each group writes dk/dv, the second adds) */
    float *q = rand_buf(&rng, nq, 1.0f), *k = rand_buf(&rng, nk, 1.0f), *v = rand_buf(&rng, nk, 1.0f);
    float *out = zeros(nq), *att = zeros(na), *scratch = zeros(64 * ops_attention_scratch_floats(T));
    attention_forward(out, att, q, k, v, B, T, H, KVH, D, 0);
    float *dq1 = zeros(nq), *dk1 = zeros(nk), *dv1 = zeros(nk), *dq2 = nan_buf(nq), *dk2 = nan_buf(nk), *dv2 = nan_buf(nk);
    attention_backward_ref(dq1, dk1, dv1, g, att, q, k, v, B, T, H, KVH, D, 0);
    attention_backward(dq2, dk2, dv2, g, att, q, k, v, scratch, B, T, H, KVH, D, 0, 0, 0, 0);
    CU_ASSERT(rel_err(dq2, dq1, nq) < SAME_TOL && rel_err(dk2, dk1, nk) < SAME_TOL && rel_err(dv2, dv1, nk) < SAME_TOL);
    /* swiglu and residual */
    float *sg1 = zeros(nq), *su1 = zeros(nq), *sg2 = nan_buf(nq), *su2 = nan_buf(nq);
    swiglu_backward_ref(sg1, su1, g, q, out, nq);
    swiglu_backward(sg2, su2, g, q, out, nq, 0, 0);
    CU_ASSERT(rel_err(sg2, sg1, nq) < SAME_TOL && rel_err(su2, su1, nq) < SAME_TOL);
    float *ra = nan_buf(nq), *rb = zeros(nq);
    for (size_t i = 0; i < nq; i++) rb[i] = 1.0f;
    residual_backward(ra, rb, g, nq, 0, 1); /* a overwritten, b accumulated */
    int ok = 1;
    for (size_t i = 0; i < nq; i++) ok &= ra[i] == g[i] && rb[i] == 1.0f + g[i];
    CU_ASSERT(ok);
    /* log-softmax, including a row with zero weights (must still be written as zeros) */
    float *z = rand_buf(&rng, (size_t)N * V, 2.0f), *lp = zeros(N), *en = zeros(N), *lse = zeros(N);
    float *wl = rand_buf(&rng, N, 1.0f);
    int32_t tg[6] = {1, 2, 3, -1, 5, 6};
    wl[4] = 0.0f;
    logsoftmax_forward(lp, en, lse, z, tg, N, V);
    float *l1 = zeros((size_t)N * V), *l2 = nan_buf((size_t)N * V);
    logsoftmax_backward_ref(l1, wl, NULL, z, lse, en, tg, N, V);
    logsoftmax_backward(l2, wl, NULL, z, lse, en, tg, N, V, 0);
    CU_ASSERT(rel_err(l2, l1, (size_t)N * V) < SAME_TOL);
    free(x), free(w), free(dy), free(dyc), free(rstd), free(tmp), free(want), free(got), free(dw1), free(dw2);
    free(dwm1), free(dwm2), free(cs), free(sn), free(g), free(rw), free(rg), free(q), free(k), free(v), free(out);
    free(att), free(scratch), free(dq1), free(dk1), free(dv1), free(dq2), free(dk2), free(dv2), free(sg1), free(su1);
    free(sg2), free(su2), free(ra), free(rb), free(z), free(lp), free(en), free(lse), free(wl), free(l1), free(l2);
}

/* GEMMs must share the project's OpenMP pool: the OpenMP build of OpenBLAS reports parallel mode 2. */
int openblas_get_parallel(void);
static void test_openblas_is_openmp(void) { CU_ASSERT_EQUAL(openblas_get_parallel(), 2); }

void register_ops_suite(void);
void register_ops_suite(void) {
    CU_pSuite s = CU_add_suite("ops", NULL, NULL);
    CU_add_test(s, "embedding fast == ref, backward == finite differences", test_embedding);
    CU_add_test(s, "rmsnorm fast == ref, backward == finite differences", test_rmsnorm);
    CU_add_test(s, "matmul (sgemm) == ref, backward == finite differences", test_matmul);
    CU_add_test(s, "matmul threaded paths (N >= 64, 1..3 threads, pair, acc/overwrite) == ref", test_matmul_threaded_paths);
    CU_add_test(s, "rope HF rotate_half, backward == finite differences", test_rope);
    CU_add_test(s, "attention MHA fast == ref, causal, finite differences", test_attention_mha);
    CU_add_test(s, "attention GQA (6 heads, 2 kv) fast == ref, finite differences", test_attention_gqa);
    CU_add_test(s, "attention MQA T=33 fast == ref, finite differences", test_attention_mqa_long);
    CU_add_test(s, "local attention (windows 3, 1, 8) fast == ref, window mask, finite differences", test_attention_local);
    CU_add_test(s, "bias forward/backward fast == ref (parallel and serial, accumulating)", test_bias);
    CU_add_test(s, "swiglu and residual, backward == finite differences", test_swiglu_residual);
    CU_add_test(s, "logsoftmax logp+entropy weights, masked rows, finite differences", test_logsoftmax);
    CU_add_test(s, "overwrite mode (acc=0) ignores stale gradient contents", test_overwrite_mode);
    CU_add_test(s, "OpenBLAS is the OpenMP build (one thread pool)", test_openblas_is_openmp);
}
