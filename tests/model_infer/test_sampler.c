/* tests/model_infer/test_sampler.c — the KV-cache forward against the plain reference forward and
 * model-train's full forward; batched sampling against per-sequence sampling; seeds; top-k, top-p,
 * stops and limits; returned log-probs against the reference; weights changing mid-stream.
 * A little over 1,000 lines: one suite over one sampler, whose cases share the request sets and the
 * reference helpers above them; splitting it would copy those. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/kernels_int.h"
#include "model/sampler_int.h"
#include "tests/model_infer/infer_test.h"

/* max |a - b| / max(1, max |b|) */
static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0.0, mx = 1.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || isnan(e)) d = isnan(e) ? INFINITY : e;
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
    }
    return d / mx;
}

static void random_tokens(int32_t *t, int n, int V, uint64_t seed) {
    rlhf_rng r;
    rlhf_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rlhf_rng_u64(&r) % (uint64_t)V);
}

/* log-softmax of the reference forward's row at each of n positions of seq (T tokens). */
static float *reference_logits(const model *m, const int32_t *seq, int T) {
    float *lg = malloc((size_t)T * m->cfg.vocab_size * sizeof(float));
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(model_reference_logits(m, seq, T, lg, &err), 0);
    return lg;
}

static double log_softmax_at(const float *row, int V, int y, double temperature) {
    double mx = -INFINITY, s = 0.0;
    for (int i = 0; i < V; i++) mx = fmax(mx, row[i] / temperature);
    for (int i = 0; i < V; i++) s += exp(row[i] / temperature - mx);
    return row[y] / temperature - mx - log(s);
}

/* The architectures beyond Llama, each with GQA: Qwen2's q/k/v biases, Qwen3's per-head q/k norms,
 * head_dim 12 at dim 32 with 4 heads (H*D = 48 != C; half a head = 6, a partial vector), the three
 * together, and RoPE scaling (llama3 with a band in each regime, linear). Returns how many. */
enum { N_ARCH_VARIANTS = 6 };
static int arch_variants(model_config out[N_ARCH_VARIANTS]) {
    for (int i = 0; i < N_ARCH_VARIANTS; i++) out[i] = infer_test_config(i % 2, 2);
    out[0].attn_bias = 1;
    out[1].qk_norm = 1;
    out[2].head_dim = 12;
    out[3].head_dim = 12;
    out[3].attn_bias = 1;
    out[3].qk_norm = 1;
    out[3].n_kv_heads = 1;
    out[4].rope_scaling = MODEL_ROPE_LLAMA3;
    out[4].rope_factor = 8.0f;
    out[4].rope_low_freq_factor = 1.0f;
    out[4].rope_high_freq_factor = 4.0f;
    out[4].rope_original_max_pos = 128;
    out[5].rope_scaling = MODEL_ROPE_LINEAR;
    out[5].rope_factor = 4.0f;
    return N_ARCH_VARIANTS;
}

/* ---------------------------------------------------------------- the matmul kernel */

/* The packed matmul (the kernels RLHF_ISA selects) against a plain double-precision loop, for shapes that leave partial panels
 * and partial row blocks, stacked sources, strided input and accumulation; and a row's result is
 * bit-identical whether computed alone or among 30 rows. */
static void test_packed_matmul(void) {
    int O0 = 20, O1 = 13, O2 = 12, O = O0 + O1 + O2, I = 37, ld = 41, Rmax = 30;
    rlhf_rng g;
    rlhf_rng_seed(&g, 5);
    float *W = malloc((size_t)O * I * sizeof(float)), *x = malloc((size_t)Rmax * ld * sizeof(float));
    for (int i = 0; i < O * I; i++) W[i] = rlhf_rng_normal(&g);
    for (int i = 0; i < Rmax * ld; i++) x[i] = rlhf_rng_normal(&g);
    float *Wp = aligned_alloc(64, (sampler_packed_size(O, I) * sizeof(float) + 63) & ~(size_t)63);
    sampler_pack_matrix(Wp, I, W, O0, W + (size_t)O0 * I, O1, W + (size_t)(O0 + O1) * I, O2);
    float *y = malloc((size_t)Rmax * O * sizeof(float)), *y1 = malloc((size_t)O * sizeof(float));
    const model_kernels *kern = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_kernels_select(&kern, &err), 0);
    int Rs[4] = {1, 5, 13, 30};
    for (int k = 0; k < 4; k++) {
        int R = Rs[k];
        for (int acc = 0; acc < 2; acc++) {
            for (int i = 0; i < R * O; i++) y[i] = acc ? 0.5f * (float)i : -1.0f;
            sampler_matmul_packed(kern, y, x, ld, Wp, R, I, O, acc);
            double worst = 0.0;
            for (int r = 0; r < R; r++)
                for (int o = 0; o < O; o++) {
                    double ref = acc ? 0.5 * (r * O + o) : 0.0;
                    for (int i = 0; i < I; i++) ref += (double)x[(size_t)r * ld + i] * W[(size_t)o * I + i];
                    worst = fmax(worst, fabs(ref - y[(size_t)r * O + o]));
                }
            CU_ASSERT(worst < 1e-4);
        }
    }
    /* row 17 of the 30-row call equals the same row alone, bit for bit */
    sampler_matmul_packed(kern, y, x, ld, Wp, 30, I, O, 0);
    sampler_matmul_packed(kern, y1, x + 17 * ld, ld, Wp, 1, I, O, 0);
    CU_ASSERT_EQUAL(memcmp(y1, y + 17 * O, (size_t)O * sizeof(float)), 0);
    free(W);
    free(x);
    free(Wp);
    free(y);
    free(y1);
}

/* ---------------------------------------------------------------- KV cache vs full forward */

static void check_kv_cache(const model_config *cfg, int T) {
    model_config c = *cfg;
    model *m = infer_test_model(&c, 21);
    int V = c.vocab_size;
    int32_t a[256], b[256];
    random_tokens(a, T, V, 1);
    random_tokens(b, T, V, 2);
    float *ref_a = reference_logits(m, a, T), *ref_b = reference_logits(m, b, T);
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 3, &err), 0);
    float *lg = malloc((size_t)T * V * sizeof(float));
    int slot[256], pos[256], rows[256];
    /* scenario 1: prefill 10 tokens of a in slot 1 (logits at every prompt row), then decode one by one */
    for (int i = 0; i < 10; i++) {
        slot[i] = 1;
        pos[i] = i;
        rows[i] = i;
    }
    CU_ASSERT_EQUAL_FATAL(sampler_step(s, 10, slot, pos, a, 10, rows, lg, &err), 0);
    double worst = rel_diff(lg, ref_a, (size_t)10 * V);
    for (int t = 10; t < T; t++) {
        int sl = 1, p = t, r0 = 0;
        CU_ASSERT_EQUAL_FATAL(sampler_step(s, 1, &sl, &p, &a[t], 1, &r0, lg, &err), 0);
        worst = fmax(worst, rel_diff(lg, ref_a + (size_t)t * V, (size_t)V));
    }
    CU_ASSERT(worst < 1e-4);
    if (!(worst < 1e-4)) printf("\n  KV-cache vs reference (scenario 1): %g\n", worst);
    /* scenario 2: one step mixes a decode row of a (slot 0) with a 4-token prefill chunk of b in slot 1
     * (whose stale cache from scenario 1 must not leak in) */
    CU_ASSERT_EQUAL_FATAL(sampler_step(s, 1, (int[]){0}, (int[]){0}, a, 0, NULL, NULL, &err), 0);
    int fed_b = 0;
    worst = 0.0;
    for (int t = 1; t < T; t++) {
        int R = 0, NL = 0, lrows[8];
        slot[R] = 0;
        pos[R] = t;
        int32_t toks[8];
        toks[R] = a[t];
        lrows[NL++] = R++;
        int chunk = fed_b < T ? (T - fed_b < 4 ? T - fed_b : 4) : 0;
        for (int j = 0; j < chunk; j++) {
            slot[R] = 1;
            pos[R] = fed_b + j;
            toks[R] = b[fed_b + j];
            lrows[NL++] = R++;
        }
        CU_ASSERT_EQUAL_FATAL(sampler_step(s, R, slot, pos, toks, NL, lrows, lg, &err), 0);
        worst = fmax(worst, rel_diff(lg, ref_a + (size_t)t * V, (size_t)V));
        for (int j = 0; j < chunk; j++)
            worst = fmax(worst, rel_diff(lg + (size_t)(1 + j) * V, ref_b + (size_t)(fed_b + j) * V, (size_t)V));
        fed_b += chunk;
    }
    CU_ASSERT(worst < 1e-4);
    if (!(worst < 1e-4)) printf("\n  KV-cache vs reference (scenario 2): %g\n", worst);
    /* bad rows are refused */
    int bad_pos = c.max_seq_len;
    CU_ASSERT_EQUAL(sampler_step(s, 1, (int[]){0}, &bad_pos, a, 0, NULL, NULL, &err), RLHF_EINVAL);
    CU_ASSERT_EQUAL(sampler_step(s, 1, (int[]){3}, (int[]){0}, a, 0, NULL, NULL, &err), RLHF_EINVAL);
    free(lg);
    free(ref_a);
    free(ref_b);
    sampler_destroy(&s);
    CU_ASSERT_PTR_NULL(s);
    model_destroy(&m);
}

static void test_kv_cache_matches_reference(void) {
    model_config c = infer_test_config(0, 2);
    check_kv_cache(&c, 30); /* GQA, untied, head_dim 8 */
    c = infer_test_config(1, 4);
    check_kv_cache(&c, 30); /* MHA, tied */
    /* head_dim 24 (a partial vector), 4 query heads per KV head, more than 128 positions (several
     * score blocks) */
    c.dim = 96;
    c.n_heads = 4;
    c.n_kv_heads = 1;
    c.max_seq_len = 200;
    check_kv_cache(&c, 150);
    model_config v[N_ARCH_VARIANTS];
    for (int i = 0, n = arch_variants(v); i < n; i++) check_kv_cache(&v[i], 30);
}

/* A bf16 sampler computes the model whose matrices are rounded to bf16: against the reference forward of
 * that rounded copy (prefill then decode, GQA untied and MHA tied), and measurably not the fp32 model. */
static void check_bf16(const model_config *cfg, int T) {
    model_config c = *cfg;
    model *m = infer_test_model(&c, 23), *mr = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_create(&mr, &c, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_copy_weights(mr, m, &err), 0);
    for (int t = 0; t < mr->n_tensors; t++) {
        const model_tensor_info *ti = &mr->tensors[t];
        if (ti->cols == 1) continue; /* norm weights stay fp32 */
        for (size_t i = 0; i < ti->numel; i++) {
            float *w = &mr->params_mem[ti->offset + i];
            *w = model_bf16_to_f32(model_bf16_round(*w));
        }
    }
    int V = c.vocab_size;
    int32_t a[64];
    random_tokens(a, T, V, 3);
    float *ref = reference_logits(mr, a, T), *ref32 = reference_logits(m, a, T);
    sampler *s = NULL;
    sampler_options o = {.max_batch = 2, .weights = SAMPLER_WEIGHTS_BF16};
    CU_ASSERT_EQUAL_FATAL(sampler_create_with(&s, m, &o, &err), 0);
    CU_ASSERT_EQUAL(sampler_weights_of(s), SAMPLER_WEIGHTS_BF16);
    float *lg = malloc((size_t)T * V * sizeof(float));
    int slot[64], pos[64], rows[64];
    for (int i = 0; i < 8; i++) {
        slot[i] = 1;
        pos[i] = i;
        rows[i] = i;
    }
    CU_ASSERT_EQUAL_FATAL(sampler_step(s, 8, slot, pos, a, 8, rows, lg, &err), 0);
    double worst = rel_diff(lg, ref, (size_t)8 * V), gap = rel_diff(lg, ref32, (size_t)8 * V);
    for (int t = 8; t < T; t++) {
        int sl = 1, p = t, r0 = 0;
        CU_ASSERT_EQUAL_FATAL(sampler_step(s, 1, &sl, &p, &a[t], 1, &r0, lg, &err), 0);
        worst = fmax(worst, rel_diff(lg, ref + (size_t)t * V, (size_t)V));
    }
    CU_ASSERT(worst < 1e-4);
    CU_ASSERT(gap > 1e-3); /* the fp32 model is distinguishable at this tolerance */
    if (!(worst < 1e-4) || !(gap > 1e-3)) printf("\n  bf16 vs rounded reference %g, vs fp32 %g\n", worst, gap);
    free(lg);
    free(ref);
    free(ref32);
    sampler_destroy(&s);
    model_destroy(&m);
    model_destroy(&mr);
}

static void test_bf16_matches_rounded_reference(void) {
    model_config c = infer_test_config(0, 2);
    check_bf16(&c, 30);
    c = infer_test_config(1, 4);
    check_bf16(&c, 30);
    model_config v[N_ARCH_VARIANTS];
    for (int i = 0, n = arch_variants(v); i < n; i++) check_bf16(&v[i], 30);
    rlhf_error err = {0};
    sampler_weights w;
    CU_ASSERT_EQUAL(sampler_weights_parse(&w, "bf16", "x", &err), 0);
    CU_ASSERT_EQUAL(w, SAMPLER_WEIGHTS_BF16);
    CU_ASSERT_EQUAL(sampler_weights_parse(&w, "fp16", "generators.weights", &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "generators.weights"));
}

/* Three independent implementations agree: the reference forward, the sampler's KV-cache path and
 * model-train's full (B, T) forward with its tape. */
/* Changing the model's weights (as a training step or checkpoint load does) is picked up by the
 * sampler's packed copy without any call. */
static void test_weight_update_visible(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 37);
    int V = c.vocab_size, T = 6;
    int32_t toks[6];
    random_tokens(toks, T, V, 4);
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 1, &err), 0);
    float *lg = malloc((size_t)T * V * sizeof(float));
    int slot[6] = {0}, pos[6] = {0, 1, 2, 3, 4, 5}, rows[6] = {0, 1, 2, 3, 4, 5};
    CU_ASSERT_EQUAL_FATAL(sampler_step(s, T, slot, pos, toks, T, rows, lg, &err), 0);
    float *ref = reference_logits(m, toks, T);
    CU_ASSERT(rel_diff(lg, ref, (size_t)T * V) < 1e-4);
    free(ref);
    for (size_t i = 0; i < m->n_params; i++) m->params_mem[i] *= 0.9f; /* an in-place update */
    CU_ASSERT_EQUAL_FATAL(sampler_step(s, T, slot, pos, toks, T, rows, lg, &err), 0);
    ref = reference_logits(m, toks, T);
    CU_ASSERT(rel_diff(lg, ref, (size_t)T * V) < 1e-4);
    free(ref);
    /* a checkpoint load of other weights into the same model */
    model *other = infer_test_model(&c, 38);
    const char *path = "/tmp/rlhf_infer_weights_update.safetensors";
    CU_ASSERT_EQUAL_FATAL(model_save(other, path, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load_into(m, path, &err), 0);
    remove(path);
    CU_ASSERT_EQUAL_FATAL(sampler_step(s, T, slot, pos, toks, T, rows, lg, &err), 0);
    ref = reference_logits(other, toks, T);
    CU_ASSERT(rel_diff(lg, ref, (size_t)T * V) < 1e-4);
    free(ref);
    free(lg);
    model_destroy(&other);
    sampler_destroy(&s);
    model_destroy(&m);
}

static void check_reference_train(const model_config *cfg) {
    model_config c = *cfg;
    model *m = infer_test_model(&c, 31);
    int V = c.vocab_size, T = 24, B = 2;
    int32_t toks[48];
    random_tokens(toks, B * T, V, 3);
    model_trainer *t = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&t, m, B, T, &err), 0);
    float *lg = malloc((size_t)B * T * V * sizeof(float));
    CU_ASSERT_EQUAL_FATAL(model_forward_logits(t, toks, B, T, lg, &err), 0);
    for (int b = 0; b < B; b++) {
        float *ref = reference_logits(m, toks + b * T, T);
        double d = rel_diff(lg + (size_t)b * T * V, ref, (size_t)T * V);
        CU_ASSERT(d < 1e-4);
        if (!(d < 1e-4)) printf("\n  train forward vs reference, sequence %d: %g\n", b, d);
        free(ref);
    }
    free(lg);
    model_trainer_destroy(&t);
    model_destroy(&m);
}

static void test_reference_matches_train_forward(void) {
    model_config c = infer_test_config(0, 2);
    check_reference_train(&c);
    model_config v[N_ARCH_VARIANTS];
    for (int i = 0, n = arch_variants(v); i < n; i++) check_reference_train(&v[i]);
}

/* ---------------------------------------------------------------- sampling */

typedef struct run_set {
    int n;
    int32_t prompts[8][40];
    sample_request reqs[8];
    sample_result res[8];
} run_set;

static const int prompt_lens[6] = {3, 10, 1, 17, 6, 25};

static void make_requests(run_set *rs, int V, uint64_t seed_base) {
    rs->n = 6;
    for (int i = 0; i < rs->n; i++) {
        random_tokens(rs->prompts[i], prompt_lens[i], V, 100 + i);
        rs->reqs[i].prompt = rs->prompts[i];
        rs->reqs[i].prompt_len = prompt_lens[i];
        rs->reqs[i].params = sample_params_default();
        rs->reqs[i].params.max_new_tokens = 12;
        rs->reqs[i].params.seed = seed_base + (uint64_t)i;
    }
    /* mixed sampling settings in one batch */
    rs->reqs[1].params.temperature = 0.8f;
    rs->reqs[1].params.top_k = 8;
    rs->reqs[3].params.top_p = 0.7f;
    rs->reqs[4].params.temperature = 0.0f;
    rs->reqs[5].params.min_p = 0.05f;
}

static void run_all(const model *m, int max_batch, run_set *rs) {
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, max_batch, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, NULL, rs->reqs, rs->n, rs->res, &err), 0);
    sampler_destroy(&s);
}

static void free_all(run_set *rs) {
    for (int i = 0; i < rs->n; i++) sample_result_free(&rs->res[i]);
}

static void check_batched_equals_single(const model_config *cfg) {
    model_config c = *cfg;
    model *m = infer_test_model(&c, 41);
    static run_set batched, single;
    make_requests(&batched, c.vocab_size, 1000);
    make_requests(&single, c.vocab_size, 1000);
    run_all(m, 4, &batched); /* 6 requests in 4 slots: continuous batching refills slots */
    rlhf_error err = {0};
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 1, &err), 0);
    for (int i = 0; i < single.n; i++)
        CU_ASSERT_EQUAL_FATAL(sampler_run(s, NULL, &single.reqs[i], 1, &single.res[i], &err), 0);
    sampler_destroy(&s);
    for (int i = 0; i < single.n; i++) {
        sample_result *a = &batched.res[i], *b = &single.res[i];
        CU_ASSERT_EQUAL(a->n_tokens, 12);
        CU_ASSERT_EQUAL(a->finish, SAMPLE_FINISH_LENGTH);
        CU_ASSERT_EQUAL_FATAL(a->n_tokens, b->n_tokens);
        CU_ASSERT_EQUAL(memcmp(a->tokens, b->tokens, (size_t)a->n_tokens * sizeof(int32_t)), 0);
        /* every kernel computes a row the same way whatever shares the step: bit-identical */
        CU_ASSERT_EQUAL(memcmp(a->logprobs, b->logprobs, (size_t)a->n_tokens * sizeof(float)), 0);
        CU_ASSERT_EQUAL(memcmp(a->sampling_logprobs, b->sampling_logprobs, (size_t)a->n_tokens * sizeof(float)), 0);
    }
    free_all(&batched);
    free_all(&single);
    model_destroy(&m);
}

static void test_batched_equals_single(void) {
    model_config c = infer_test_config(0, 2), v[N_ARCH_VARIANTS];
    check_batched_equals_single(&c);
    arch_variants(v);
    check_batched_equals_single(&v[3]); /* biases, q/k norms, head_dim 12, one KV head */
}

/* A stream source for the tests: request i becomes available before step avail[i]; the weights are
 * scaled by 0.9 before step swap_step (as a new policy version arriving mid-run); next() fails when
 * asked for request fail_at. */
typedef struct trickle {
    run_set *rs;
    model *m;
    int step, next, avail[8], swap_step, fail_at;
    long order[8];
    int n_done;
    sample_result res[8];
} trickle;

static int trickle_before(void *ctx, rlhf_error *err) {
    (void)err;
    trickle *t = ctx;
    t->step++;
    if (t->step != t->swap_step) return 0;
    for (size_t i = 0; i < t->m->n_params; i++) t->m->params_mem[i] *= 0.9f;
    t->m->version++;
    return 1;
}

static int trickle_next(void *ctx, sample_request *req, rlhf_error *err) {
    trickle *t = ctx;
    if (t->next >= t->rs->n || t->avail[t->next] > t->step) return 0;
    if (t->next == t->fail_at) return rlhf_error_set(err, RLHF_EINVAL, "test", "source failed");
    *req = t->rs->reqs[t->next];
    req->user = &t->rs->reqs[t->next++];
    return 1;
}

static int trickle_done(void *ctx, const sample_request *req, long index, sample_result *res, rlhf_error *err) {
    (void)err;
    trickle *t = ctx;
    CU_ASSERT_PTR_EQUAL(req->user, &t->rs->reqs[index]); /* handed back untouched */
    t->order[t->n_done++] = index;
    t->res[index] = *res;
    return 0;
}

/* Requests arriving while others decode give the same tokens and log-probs as sampler_run, each handed
 * back as it finishes; weights replaced between steps reach the requests admitted after; a failing
 * source stops the run with its error and frees what was in flight. */
static void test_stream(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 47);
    static run_set want, got;
    make_requests(&want, c.vocab_size, 3000);
    make_requests(&got, c.vocab_size, 3000);
    run_all(m, 4, &want);
    rlhf_error err = {0};
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 3, &err), 0);
    static trickle t;
    memset(&t, 0, sizeof t);
    t.rs = &got;
    t.m = m;
    t.swap_step = -1;
    t.fail_at = -1;
    int avail[6] = {1, 1, 4, 9, 9, 16}; /* steps before which each request is available */
    memcpy(t.avail, avail, sizeof avail);
    sampler_source src = {.ctx = &t, .next = trickle_next, .done = trickle_done, .before_step = trickle_before};
    CU_ASSERT_EQUAL_FATAL(sampler_run_stream(s, NULL, &src, &err), 0);
    CU_ASSERT_EQUAL(t.n_done, 6);
    for (int i = 0; i < 6; i++) {
        CU_ASSERT_EQUAL_FATAL(t.res[i].n_tokens, want.res[i].n_tokens);
        CU_ASSERT_EQUAL(memcmp(t.res[i].tokens, want.res[i].tokens, (size_t)want.res[i].n_tokens * 4), 0);
        CU_ASSERT_EQUAL(memcmp(t.res[i].logprobs, want.res[i].logprobs, (size_t)want.res[i].n_tokens * 4), 0);
        CU_ASSERT_EQUAL(t.res[i].finish, want.res[i].finish);
        sample_result_free(&t.res[i]);
    }
    /* handed back as they finish: request 2 (1-token prompt) before request 3 (17-token prompt, later) */
    int pos2 = -1, pos5 = -1;
    for (int i = 0; i < 6; i++) pos2 = t.order[i] == 2 ? i : pos2, pos5 = t.order[i] == 5 ? i : pos5;
    CU_ASSERT(pos5 == 5 && pos2 >= 0);
    /* new weights before step 12: request 5 (arriving at step 16, while 3 and 4 decode) samples with them */
    static run_set want2;
    make_requests(&want2, c.vocab_size, 3000);
    memset(&t, 0, sizeof t);
    t.rs = &got;
    t.m = m;
    t.swap_step = 12;
    t.fail_at = -1;
    memcpy(t.avail, avail, sizeof avail);
    CU_ASSERT_EQUAL_FATAL(sampler_run_stream(s, NULL, &src, &err), 0);
    CU_ASSERT_EQUAL(m->version, 1);
    run_all(m, 4, &want2); /* the scaled weights */
    CU_ASSERT_EQUAL(memcmp(t.res[5].logprobs, want2.res[5].logprobs, (size_t)want2.res[5].n_tokens * 4), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(t.res[5].logprobs, want.res[5].logprobs, (size_t)want.res[5].n_tokens * 4), 0);
    for (int i = 0; i < 6; i++) sample_result_free(&t.res[i]);
    free_all(&want2);
    /* a source error: the run stops with it; nothing leaks (the sanitizer build checks) */
    memset(&t, 0, sizeof t);
    t.rs = &got;
    t.m = m;
    t.swap_step = -1;
    t.fail_at = 3;
    memcpy(t.avail, avail, sizeof avail);
    CU_ASSERT_EQUAL(sampler_run_stream(s, NULL, &src, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "source failed"));
    for (int i = 0; i < 6; i++) sample_result_free(&t.res[i]);
    free_all(&want);
    sampler_destroy(&s);
    model_destroy(&m);
}

/* The log-prob of each token of res under weights m, by the reference forward over prompt ++ tokens. */
static float *rescored(const model *m, const sample_request *rq, const sample_result *res) {
    int V = m->cfg.vocab_size, P = rq->prompt_len, n = res->n_tokens;
    int32_t seq[64];
    memcpy(seq, rq->prompt, (size_t)P * sizeof(int32_t));
    memcpy(seq + P, res->tokens, (size_t)n * sizeof(int32_t));
    float *ref = reference_logits(m, seq, P + n - 1), *lp = malloc((size_t)n * sizeof(float));
    for (int t = 0; t < n; t++) lp[t] = (float)log_softmax_at(ref + (size_t)(P - 1 + t) * V, V, res->tokens[t], 1.0);
    free(ref);
    return lp;
}

/* New weights arriving in the middle of decoding (in-flight updates): every token records the version
 * it was sampled with, and completions span both versions. With the cache recomputed under the new
 * weights, each token's recorded log-prob is what that version's weights give for the whole prefix
 * (re-scoring each span with its version's weights); with the cache kept, tokens after the switch were
 * sampled with the old weights' keys and values of the earlier positions, which a re-scoring with either
 * version does not reproduce — the reason the recompute mode exists. */
static void test_inflight_versions(void) {
    model_config c = infer_test_config(0, 2);
    model *w0 = infer_test_model(&c, 47), *w1 = infer_test_model(&c, 47);
    for (size_t i = 0; i < w1->n_params; i++) w1->params_mem[i] *= 0.9f; /* as trickle_before scales */
    for (int recompute = 1; recompute >= 0; recompute--) {
        model *m = infer_test_model(&c, 47);
        static run_set rs;
        make_requests(&rs, c.vocab_size, 5000);
        rlhf_error err = {0};
        sampler *s = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 6, &err), 0);
        static trickle t;
        memset(&t, 0, sizeof t);
        t.rs = &rs;
        t.m = m;
        t.swap_step = 6; /* all six admitted at step 1; the longest prompt (25) is still in prefill */
        t.fail_at = -1;
        sampler_source src = {.ctx = &t, .next = trickle_next, .done = trickle_done, .before_step = trickle_before,
                              .recompute_on_new_weights = recompute};
        CU_ASSERT_EQUAL_FATAL(sampler_run_stream(s, NULL, &src, &err), 0);
        CU_ASSERT_EQUAL_FATAL(t.n_done, 6);
        int spanning = 0, mismatched_after = 0;
        for (int i = 0; i < 6; i++) {
            const sample_result *r = &t.res[i];
            float *lp0 = rescored(w0, &rs.reqs[i], r), *lp1 = rescored(w1, &rs.reqs[i], r);
            int first_v1 = -1;
            for (int k = 0; k < r->n_tokens; k++) {
                CU_ASSERT(r->versions[k] == 0 || r->versions[k] == 1);
                if (k) CU_ASSERT(r->versions[k] >= r->versions[k - 1]);
                if (r->versions[k] == 1 && first_v1 < 0) first_v1 = k;
                if (r->versions[k] == 0) {
                    CU_ASSERT(fabs(r->logprobs[k] - lp0[k]) < 1e-4); /* before the switch */
                } else if (recompute) {
                    CU_ASSERT(fabs(r->logprobs[k] - lp1[k]) < 1e-4);
                } else {
                    mismatched_after += fabs(r->logprobs[k] - lp1[k]) > 1e-4 && fabs(r->logprobs[k] - lp0[k]) > 1e-4;
                }
            }
            spanning += first_v1 > 0;
            free(lp0);
            free(lp1);
            sample_result_free(&t.res[i]);
        }
        CU_ASSERT(spanning >= 3); /* the test means something only if completions do span the versions */
        if (!recompute) CU_ASSERT(mismatched_after > 0);
        sampler_destroy(&s);
        model_destroy(&m);
    }
    model_destroy(&w0);
    model_destroy(&w1);
}

static void test_same_seed_same_tokens(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 43);
    static run_set r1, r2, r3;
    make_requests(&r1, c.vocab_size, 5);
    make_requests(&r2, c.vocab_size, 5);
    make_requests(&r3, c.vocab_size, 6);
    run_all(m, 6, &r1);
    int threads = omp_get_max_threads();
    omp_set_num_threads(threads > 1 ? 1 : 2); /* no kernel's result depends on the thread count either */
    run_all(m, 6, &r2);
    omp_set_num_threads(threads);
    run_all(m, 6, &r3);
    int differ = 0;
    for (int i = 0; i < r1.n; i++) {
        CU_ASSERT_EQUAL_FATAL(r1.res[i].n_tokens, r2.res[i].n_tokens);
        CU_ASSERT_EQUAL(memcmp(r1.res[i].tokens, r2.res[i].tokens, (size_t)r1.res[i].n_tokens * 4), 0);
        CU_ASSERT_EQUAL(memcmp(r1.res[i].logprobs, r2.res[i].logprobs, (size_t)r1.res[i].n_tokens * 4), 0);
        if (i != 4) /* request 4 is greedy: seed-independent */
            differ += memcmp(r1.res[i].tokens, r3.res[i].tokens, (size_t)r1.res[i].n_tokens * 4) != 0;
        else
            CU_ASSERT_EQUAL(memcmp(r1.res[i].tokens, r3.res[i].tokens, (size_t)r1.res[i].n_tokens * 4), 0);
    }
    CU_ASSERT(differ >= 4); /* other seeds give other samples */
    free_all(&r1);
    free_all(&r2);
    free_all(&r3);
    model_destroy(&m);
}

static int by_logit_desc(const void *a, const void *b, void *row_) {
    const float *row = row_;
    int x = *(const int *)a, y = *(const int *)b;
    if (row[x] != row[y]) return row[x] > row[y] ? -1 : 1;
    return x - y;
}

/* For each sampled token: logprobs = log-softmax of the reference at T=1, sampling_logprobs = log of the
 * truncated, temperature-scaled, renormalised distribution, and the token lies in the allowed set. */
static void check_against_reference(const model *m, const sample_request *rq, const sample_result *res) {
    int V = m->cfg.vocab_size, P = rq->prompt_len, n = res->n_tokens;
    int32_t seq[64];
    memcpy(seq, rq->prompt, (size_t)P * sizeof(int32_t));
    memcpy(seq + P, res->tokens, (size_t)n * sizeof(int32_t));
    float *ref = reference_logits(m, seq, P + n - 1);
    const sample_params *sp = &rq->params;
    int *order = malloc((size_t)V * sizeof(int));
    for (int t = 0; t < n; t++) {
        const float *row = ref + (size_t)(P - 1 + t) * V;
        int y = res->tokens[t];
        CU_ASSERT(fabs(res->logprobs[t] - log_softmax_at(row, V, y, 1.0)) < 1e-4);
        if (sp->temperature == 0.0f) {
            int am = 0;
            for (int i = 1; i < V; i++)
                if (row[i] > row[am]) am = i;
            CU_ASSERT_EQUAL(y, am);
            CU_ASSERT_EQUAL(res->sampling_logprobs[t], 0.0f);
            continue;
        }
        /* rank all ids by logit (descending, ties by id) */
        for (int i = 0; i < V; i++) order[i] = i;
        qsort_r(order, (size_t)V, sizeof(int), by_logit_desc, (void *)row);
        int k = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
        double temp = sp->temperature, mx = row[order[0]] / temp, total = 0.0;
        for (int i = 0; i < k; i++) total += exp(row[order[i]] / temp - mx);
        int keep = k;
        if (sp->top_p < 1.0f) {
            double acc = 0.0;
            for (int i = 0; i < k; i++) {
                acc += exp(row[order[i]] / temp - mx) / total;
                if (acc >= sp->top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        /* min-p: a prefix again (order is by probability), against the most probable token */
        if (sp->min_p > 0.0f) {
            int m = 0;
            while (m < keep && exp(row[order[m]] / temp - mx) >= (double)sp->min_p) m++;
            keep = m;
        }
        double kept = 0.0;
        int rank = -1;
        for (int i = 0; i < keep; i++) {
            kept += exp(row[order[i]] / temp - mx);
            if (order[i] == y) rank = i;
        }
        CU_ASSERT(rank >= 0); /* inside top-k, the nucleus and above the min-p floor */
        double lq = row[y] / temp - mx - log(kept);
        CU_ASSERT(fabs(res->sampling_logprobs[t] - lq) < 1e-4);
        if (!(fabs(res->sampling_logprobs[t] - lq) < 1e-4))
            printf("\n  T=%g k=%d p=%g min_p=%g: %g vs %g\n", temp, sp->top_k, (double)sp->top_p, (double)sp->min_p,
                   res->sampling_logprobs[t], lq);
    }
    free(order);
    free(ref);
}

static void test_logprobs_match_reference(void) {
    model_config c = infer_test_config(1, 2);
    model *m = infer_test_model(&c, 47);
    static run_set rs;
    make_requests(&rs, c.vocab_size, 77);
    rs.reqs[0].params.temperature = 1.0f; /* plain: both log-probs coincide */
    rs.reqs[2].params.temperature = 0.7f;
    rs.reqs[2].params.top_k = 5;
    rs.reqs[5].params.temperature = 1.3f;
    rs.reqs[5].params.top_p = 0.6f;
    rs.reqs[3].params.top_k = 20;
    rs.reqs[3].params.top_p = 0.5f;
    rs.reqs[1].params.min_p = 0.2f;  /* top-k, then min-p */
    rs.reqs[3].params.min_p = 0.3f;  /* top-k, top-p, then min-p */
    rs.reqs[5].params.min_p = 0.1f;  /* top-p, then min-p */
    run_all(m, 3, &rs);
    for (int i = 0; i < rs.n; i++) check_against_reference(m, &rs.reqs[i], &rs.res[i]);
    for (int t = 0; t < rs.res[0].n_tokens; t++) CU_ASSERT_EQUAL(rs.res[0].logprobs[t], rs.res[0].sampling_logprobs[t]);
    free_all(&rs);
    model_destroy(&m);
    /* a large vocabulary with a flat distribution: the nucleus holds thousands of candidates (the
     * bucketed selection path) */
    c.vocab_size = 6000;
    m = infer_test_model(&c, 49);
    for (float *w = m->p.lm_head; w < m->p.lm_head + (size_t)c.vocab_size * c.dim; w++) *w *= 0.05f;
    make_requests(&rs, c.vocab_size, 91);
    for (int i = 0; i < rs.n; i++) {
        rs.reqs[i].params = sample_params_default();
        rs.reqs[i].params.max_new_tokens = 6;
        rs.reqs[i].params.seed = 300 + (uint64_t)i;
        rs.reqs[i].params.top_p = i % 2 ? 0.9f : 0.5f;
        rs.reqs[i].params.temperature = i % 3 ? 1.0f : 1.3f;
        if (i >= 4) { /* min-p alone, and min-p with a flat nucleus (the bucketed path, then the floor) */
            rs.reqs[i].params.top_p = i == 4 ? 1.0f : 0.9f;
            rs.reqs[i].params.min_p = 0.9f;
        }
    }
    run_all(m, 6, &rs);
    for (int i = 0; i < rs.n; i++) check_against_reference(m, &rs.reqs[i], &rs.res[i]);
    free_all(&rs);
    model_destroy(&m);
}

/* Frequencies of many one-token samples match the (top-k truncated) distribution. */
static void test_sampling_distribution(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 53);
    int V = c.vocab_size, N = 3000;
    int32_t prompt[5];
    random_tokens(prompt, 5, V, 9);
    float *ref = reference_logits(m, prompt, 5);
    const float *row = ref + 4 * (size_t)V;
    sample_request *reqs = calloc((size_t)N, sizeof *reqs);
    sample_result *res = calloc((size_t)N, sizeof *res);
    /* plain; top-k 4; temperature 1.2 with top-p 0.8; temperature 1.5 with min-p 0.3 */
    for (int variant = 0; variant < 4; variant++) {
        for (int i = 0; i < N; i++) {
            reqs[i].prompt = prompt;
            reqs[i].prompt_len = 5;
            reqs[i].params = sample_params_default();
            reqs[i].params.max_new_tokens = 1;
            reqs[i].params.seed = 5000 + (uint64_t)i;
            reqs[i].params.top_k = variant == 1 ? 4 : 0;
            reqs[i].params.temperature = variant == 2 ? 1.2f : variant == 3 ? 1.5f : 1.0f;
            reqs[i].params.top_p = variant == 2 ? 0.8f : 1.0f;
            reqs[i].params.min_p = variant == 3 ? 0.3f : 0.0f;
        }
        sampler *s = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 64, &err), 0);
        CU_ASSERT_EQUAL_FATAL(sampler_run(s, NULL, reqs, N, res, &err), 0);
        sampler_destroy(&s);
        int *count = calloc((size_t)V, sizeof(int));
        for (int i = 0; i < N; i++) {
            CU_ASSERT_EQUAL(res[i].n_tokens, 1);
            count[res[i].tokens[0]]++;
            sample_result_free(&res[i]);
        }
        /* probabilities under the reference (top-4 renormalised for variant 1) */
        double *p = calloc((size_t)V, sizeof(double)), mx = -INFINITY, z = 0.0,
               temp = variant == 2 ? 1.2 : variant == 3 ? 1.5 : 1.0;
        for (int i = 0; i < V; i++) mx = fmax(mx, row[i]);
        for (int i = 0; i < V; i++) p[i] = exp((row[i] - mx) / temp);
        if (variant == 2) { /* the nucleus: most probable first until 0.8 of the mass */
            double all = 0.0, acc = 0.0;
            for (int i = 0; i < V; i++) all += p[i];
            double *q = malloc((size_t)V * sizeof(double));
            memcpy(q, p, (size_t)V * sizeof(double));
            int kept = 0;
            while (acc < 0.8 * all) {
                int best = -1;
                for (int i = 0; i < V; i++)
                    if (q[i] >= 0 && (best < 0 || q[i] > q[best])) best = i;
                acc += q[best];
                q[best] = -1.0;
                kept++;
            }
            for (int i = 0; i < V; i++)
                if (q[i] >= 0) p[i] = 0.0; /* outside the nucleus */
            CU_ASSERT(kept > 4); /* a real nucleus, not a near-greedy one */
            free(q);
        }
        if (variant == 3) { /* p[i] is relative to the most probable token (its p is exp(0) = 1) */
            int kept = 0;
            for (int i = 0; i < V; i++) {
                if (p[i] < 0.3) p[i] = 0.0;
                kept += p[i] > 0.0;
            }
            CU_ASSERT(kept > 2 && kept < V / 2); /* the floor cuts, but not down to greedy */
            if (!(kept > 2 && kept < V / 2)) printf("\n  min-p keeps %d of %d\n", kept, V);
        }
        if (variant == 1) {
            for (int i = 0; i < V; i++) { /* keep the 4 largest */
                int above = 0;
                for (int j = 0; j < V; j++) above += row[j] > row[i];
                if (above >= 4) p[i] = 0.0;
            }
        }
        for (int i = 0; i < V; i++) z += p[i];
        int bad = 0;
        for (int i = 0; i < V; i++) {
            double q = p[i] / z, f = (double)count[i] / N, tol = 5.0 * sqrt(q * (1 - q) / N) + 2.0 / N;
            if (fabs(f - q) > tol) bad++;
            if (variant && q == 0.0) CU_ASSERT_EQUAL(count[i], 0);
            if (!(fabs(f - q) <= tol)) printf("\n  variant %d id %d: freq %.4f vs p %.4f\n", variant, i, f, q);
        }
        CU_ASSERT_EQUAL(bad, 0);
        free(p);
        free(count);
    }
    free(reqs);
    free(res);
    free(ref);
    model_destroy(&m);
}

static void test_stops_and_limits(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 59);
    int V = c.vocab_size;
    tokenizer *tok = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, V, &err), 0);
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 4, &err), 0);
    int32_t prompt[40];
    random_tokens(prompt, 40, 256, 13);
    /* greedy reference run */
    sample_request rq = {.prompt = prompt, .prompt_len = 4, .params = sample_params_default()};
    rq.params.temperature = 0.0f;
    rq.params.max_new_tokens = 20;
    sample_result g;
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, &rq, 1, &g, &err), 0);
    CU_ASSERT_EQUAL_FATAL(g.n_tokens, 20);
    CU_ASSERT_EQUAL(g.finish, SAMPLE_FINISH_LENGTH);
    check_against_reference(m, &rq, &g); /* greedy = reference argmax */
    char *full;
    size_t full_len;
    CU_ASSERT_EQUAL_FATAL(tokenizer_decode(tok, g.tokens, g.n_tokens, &full, &full_len, &err), 0);
    CU_ASSERT_EQUAL(g.text_len, full_len);
    CU_ASSERT_EQUAL(memcmp(g.text, full, full_len), 0);

    /* stop id: generation ends at its first occurrence, which is kept */
    int32_t stop_id = g.tokens[5];
    int first = 0;
    while (g.tokens[first] != stop_id) first++;
    sample_request r2 = rq;
    r2.params.stop_ids = &stop_id;
    r2.params.n_stop_ids = 1;
    sample_result a;
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, &r2, 1, &a, &err), 0);
    CU_ASSERT_EQUAL(a.finish, SAMPLE_FINISH_STOP);
    CU_ASSERT_EQUAL(a.n_tokens, first + 1);
    CU_ASSERT_EQUAL(memcmp(a.tokens, g.tokens, (size_t)a.n_tokens * 4), 0);
    CU_ASSERT_EQUAL(a.stop_string, -1);
    sample_result_free(&a);

    /* stop string: text is cut before it; tokens end with the one that completed it */
    CU_ASSERT_FATAL(full_len >= 8);
    char stop[3] = {full[4], full[5], 0};
    const char *stops[2] = {"\x01\x02\x03 never", stop};
    size_t at = (size_t)((char *)memmem(full, full_len, stop, 2) - full);
    int need = 0;
    size_t bytes = 0;
    while (bytes < at + 2) bytes += g.tokens[need++] < 256;
    sample_request r3 = rq;
    r3.params.stop_strings = stops;
    r3.params.n_stop_strings = 2;
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, &r3, 1, &a, &err), 0);
    CU_ASSERT_EQUAL(a.finish, SAMPLE_FINISH_STOP);
    CU_ASSERT_EQUAL(a.stop_string, 1);
    CU_ASSERT_EQUAL(a.text_len, at);
    CU_ASSERT_EQUAL(memcmp(a.text, full, at), 0);
    CU_ASSERT_EQUAL(a.n_tokens, need);
    sample_result_free(&a);

    /* limits: max_new_tokens, max_seq_len, zero tokens */
    sample_request r4[3] = {rq, rq, rq};
    r4[0].params.max_new_tokens = 5;
    r4[1].prompt_len = 36;
    r4[1].params.max_new_tokens = 100;
    r4[2].params.max_new_tokens = 0;
    sample_result lr[3];
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, r4, 3, lr, &err), 0);
    CU_ASSERT_EQUAL(lr[0].finish, SAMPLE_FINISH_LENGTH);
    CU_ASSERT_EQUAL(lr[0].n_tokens, 5);
    CU_ASSERT_EQUAL(lr[1].finish, SAMPLE_FINISH_MAX_SEQ_LEN);
    CU_ASSERT_EQUAL(lr[1].n_tokens, c.max_seq_len - 36);
    CU_ASSERT_EQUAL(lr[2].finish, SAMPLE_FINISH_LENGTH);
    CU_ASSERT_EQUAL(lr[2].n_tokens, 0);
    CU_ASSERT_STRING_EQUAL(sample_finish_name(lr[1].finish), "max_seq_len");
    for (int i = 0; i < 3; i++) sample_result_free(&lr[i]);

    /* top_k = 1 is greedy */
    sample_request r5 = rq;
    r5.params.temperature = 1.0f;
    r5.params.top_k = 1;
    r5.params.seed = 99;
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, &r5, 1, &a, &err), 0);
    CU_ASSERT_EQUAL(memcmp(a.tokens, g.tokens, 20 * 4), 0);
    for (int t = 0; t < a.n_tokens; t++) CU_ASSERT(fabsf(a.sampling_logprobs[t]) < 1e-6f);
    sample_result_free(&a);

    free(full);
    sample_result_free(&g);
    sampler_destroy(&s);
    tokenizer_destroy(&tok);
    model_destroy(&m);
}

static void test_bad_requests(void) {
    model_config c = infer_test_config(0, 2);
    model *m = infer_test_model(&c, 61);
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 2, &err), 0);
    int32_t prompt[64] = {0};
    sample_request rq[2] = {{.prompt = prompt, .prompt_len = 3, .params = sample_params_default()},
                            {.prompt = prompt, .prompt_len = 40, .params = sample_params_default()}};
    sample_result res[2];
    memset(res, 0x5a, sizeof res);
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "request 1");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "max_seq_len is 40"));
    rq[1].prompt_len = 41;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    rq[1].prompt_len = 3;
    rq[1].params.top_p = 0.0f;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "top_p"));
    rq[1].params = sample_params_default();
    rq[1].params.min_p = 1.5f;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "min_p must be in [0, 1]"));
    rq[1].params.min_p = -0.1f;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    rq[1].params = sample_params_default();
    prompt[2] = c.vocab_size;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "outside the vocabulary"));
    prompt[2] = 0;
    const char *stops[1] = {"x"};
    rq[0].params.stop_strings = stops;
    rq[0].params.n_stop_strings = 1;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "tokenizer"));
    rq[0].params = sample_params_default();
    rq[0].params.temperature = -1.0f;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    rq[0].prompt_len = 0;
    CU_ASSERT_EQUAL(sampler_run(s, NULL, rq, 2, res, &err), RLHF_EINVAL);
    sampler_destroy(&s);
    CU_ASSERT_EQUAL(sampler_create(&s, m, 0, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NULL(s);
    model_destroy(&m);
}

/* Suites that run once per kernel table this CPU can run: their init selects it through RLHF_ISA
 * (as a user would force it), their cleanup restores the choice from the CPU's flags. */
static int isa_ref(void) { return setenv("RLHF_ISA", "ref", 1); }
static int isa_avx2(void) { return setenv("RLHF_ISA", "avx2", 1); }
static int isa_avx512(void) { return setenv("RLHF_ISA", "avx512", 1); }
static int isa_clear(void) { return unsetenv("RLHF_ISA"); }

void infer_register_sampler(void) {
    CU_pSuite s = CU_add_suite("kernels", NULL, NULL);
    infer_register_kernel_tests(s, 0);
    static int (*const init[3])(void) = {isa_ref, isa_avx2, isa_avx512};
    for (int isa = MODEL_ISA_REF; isa <= MODEL_ISA_AVX512; isa++) {
        const char *name = model_kernels_of((model_isa)isa)->name;
        char title[64];
        if (!model_isa_supported((model_isa)isa)) {
            printf("note: the %s kernels are not tested here: this CPU cannot run them\n", name);
            continue;
        }
        if (isa != MODEL_ISA_REF) {
            snprintf(title, sizeof title, "kernels[%s]", name);
            infer_register_kernel_tests(CU_add_suite(title, init[isa], isa_clear), 1);
        }
        snprintf(title, sizeof title, "kv_cache[%s]", name);
        s = CU_add_suite(title, init[isa], isa_clear);
        CU_add_test(s, "packed matmul equals a plain loop; rows independent of the batch", test_packed_matmul);
        CU_add_test(s, "incremental and mixed-batch decoding equal the reference forward", test_kv_cache_matches_reference);
        CU_add_test(s, "bf16 weights: the reference forward of the bf16-rounded model", test_bf16_matches_rounded_reference);
        CU_add_test(s, "batched mixed-length sampling equals per-sequence", test_batched_equals_single);
        CU_add_test(s, "same seed same tokens", test_same_seed_same_tokens);
        CU_add_test(s, "streaming: requests arriving mid-run, weights replaced between steps", test_stream);
        CU_add_test(s, "in-flight weights: per-token versions; recomputed cache rescored exactly", test_inflight_versions);
        CU_add_test(s, "log-probs, top-k, top-p against the reference", test_logprobs_match_reference);
    }
    s = CU_add_suite("kv_cache", NULL, NULL);
    CU_add_test(s, "reference forward equals model-train's full forward", test_reference_matches_train_forward);
    CU_add_test(s, "weight updates reach the sampler's packed copy", test_weight_update_visible);
    s = CU_add_suite("sampler", NULL, NULL);
    CU_add_test(s, "sample frequencies match the distribution", test_sampling_distribution);
    CU_add_test(s, "stop ids, stop strings, limits, greedy", test_stops_and_limits);
    CU_add_test(s, "bad requests rejected", test_bad_requests);
}

int register_suites(void) {
    infer_register_checkpoint();
    infer_register_sampler();
    infer_register_stops();
    infer_register_layer_opts();
    infer_register_cli();
    return 0;
}
