/* tests/model_train/test_lora.c — LoRA adapters (model.h "LoRA adapters", model_trainer_set_lora):
 * the kernels against their plain twins, the adapted forward against the merged model's plain forward,
 * every adapter gradient against central differences (with and without dropout, with kv_share), the
 * frozen base (no base gradient, AdamW moving the adapters only), and the config's errors. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/ops.h"
#include "tests/model_train/helpers.h"

/* layer_opts: 4 layers with kv_share (layers 1 and 3 reuse 0's and 2's K/V) and GQA */
static model *lora_model(uint64_t seed, int layer_opts) {
    model_config c = {.dim = 16, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .ffn_dim = 24, .vocab_size = 19,
                      .max_seq_len = 12, .rope_theta = 10000.0f, .norm_eps = 1e-5f};
    if (layer_opts) {
        c.n_layers = 4;
        c.has_layer_opts = 1;
        static const short src[4] = {0, 1, 0, 3};
        for (int l = 0; l < 4; l++) c.kv_src[l] = src[l];
    }
    model *m = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    model_init_random(m, seed);
    for (size_t j = 0; j < m->n_params; j++) m->params_mem[j] *= 4.0f; /* away from linear, smooth enough for float32 differences */
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].is_norm)
            for (size_t j = 0; j < m->tensors[i].numel; j++) m->params_mem[m->tensors[i].offset + j] = 1.0f;
    return m;
}

/* An adapter set whose B is not zero (a fresh one adds nothing, which would hide a wrong branch). */
static model_lora *lora_for(const model *m, int rank, float dropout, unsigned targets, uint64_t seed) {
    model_lora_config lc = {.rank = rank, .alpha = 2.0f * (float)rank, .dropout = dropout, .targets = targets};
    model_lora *l = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_lora_create(&l, m, &lc, &err), 0);
    model_lora_init(l, seed);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed + 1);
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        if (l->b[t])
            for (size_t i = 0; i < (size_t)l->n_stack[t] * l->out_dim[t] * rank; i++)
                l->b[t][i] = 0.5f * rlhf_rng_normal(&rng);
    return l;
}

static void test_kernels(void) {
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 5);
    int N = 7, IC = 11, OC = 9, R = 3;
    float *x = rand_buf(&rng, (size_t)N * IC, 1.0f), *a = rand_buf(&rng, (size_t)R * IC, 1.0f);
    float *b = rand_buf(&rng, (size_t)OC * R, 1.0f), *out0 = rand_buf(&rng, (size_t)N * OC, 1.0f);
    float *out = malloc((size_t)N * OC * sizeof(float)), *outr = malloc((size_t)N * OC * sizeof(float));
    memcpy(out, out0, (size_t)N * OC * sizeof(float));
    memcpy(outr, out0, (size_t)N * OC * sizeof(float));
    float *u = zeros((size_t)N * R), *ur = zeros((size_t)N * R);
    lora_forward(out, u, x, a, b, 0.7f, N, IC, OC, R);
    lora_forward_ref(outr, ur, x, a, b, 0.7f, N, IC, OC, R);
    CU_ASSERT(rel_err(out, outr, (size_t)N * OC) < 1e-5);
    CU_ASSERT(rel_err(u, ur, (size_t)N * R) < 1e-5);
    float *dout = rand_buf(&rng, (size_t)N * OC, 1.0f), *du = zeros((size_t)N * R);
    for (int acc = 0; acc < 2; acc++) {
        float *dx0 = rand_buf(&rng, (size_t)N * IC, 1.0f);
        float *dx = malloc((size_t)N * IC * sizeof(float)), *dxr = malloc((size_t)N * IC * sizeof(float));
        memcpy(dx, dx0, (size_t)N * IC * sizeof(float));
        if (acc) memcpy(dxr, dx0, (size_t)N * IC * sizeof(float));
        else memset(dxr, 0, (size_t)N * IC * sizeof(float)); /* the ref accumulates: from 0 = overwrite */
        float *da = zeros((size_t)R * IC), *db = zeros((size_t)OC * R), *dar = zeros((size_t)R * IC);
        float *dbr = zeros((size_t)OC * R);
        lora_backward(dx, da, db, du, dout, x, u, a, b, 0.7f, N, IC, OC, R, acc);
        lora_backward_ref(dxr, dar, dbr, dout, x, ur, a, b, 0.7f, N, IC, OC, R);
        CU_ASSERT(rel_err(dx, dxr, (size_t)N * IC) < 1e-5);
        CU_ASSERT(rel_err(da, dar, (size_t)R * IC) < 1e-5);
        CU_ASSERT(rel_err(db, dbr, (size_t)OC * R) < 1e-5);
        free(dx0), free(dx), free(dxr), free(da), free(db), free(dar), free(dbr);
    }
    free(x), free(a), free(b), free(out0), free(out), free(outr), free(u), free(ur), free(dout), free(du);
}

/* Log-probs of the adapted model (the trainer's branch) equal the merged model's plain log-probs. */
static void adapted_equals_merged(int layer_opts, unsigned targets, int rank) {
    model *m = lora_model(11, layer_opts), *merged = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_create(&merged, &m->cfg, &err), 0);
    model_lora *l = lora_for(m, rank, 0.0f, targets, 12);
    CU_ASSERT_EQUAL_FATAL(model_lora_merge(merged, m, l, &err), 0);
    int B = 2, T = 8, N = B * T;
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 13);
    int32_t tok[16], tg[16];
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(rlhf_rng_u64(&rng) % 19), tg[i] = (int32_t)(rlhf_rng_u64(&rng) % 19);
    model_trainer *ta = NULL, *tm = NULL, *tb = NULL;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&ta, m, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tm, merged, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tb, m, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(ta, l, 1, &err), 0);
    CU_ASSERT_EQUAL(model_forward(ta, tok, tg, B, T, &err), 0);
    CU_ASSERT_EQUAL(model_forward(tm, tok, tg, B, T, &err), 0);
    CU_ASSERT_EQUAL(model_forward(tb, tok, tg, B, T, &err), 0);
    double e = rel_err(model_trainer_logprobs(ta), model_trainer_logprobs(tm), N);
    CU_ASSERT(e < 1e-4);
    if (e >= 1e-4) fprintf(stderr, "\n  adapted vs merged log-probs: relative error %.3g\n", e);
    /* and the adapters change the model (B is not zero) */
    CU_ASSERT(rel_err(model_trainer_logprobs(ta), model_trainer_logprobs(tb), N) > 1e-3);
    model_trainer_destroy(&ta), model_trainer_destroy(&tm), model_trainer_destroy(&tb);
    model_lora_destroy(&l);
    model_destroy(&m), model_destroy(&merged);
}

static void test_merge_all(void) { adapted_equals_merged(0, (1u << MODEL_LORA_N_TARGETS) - 1, 3); }
static void test_merge_some_kv_share(void) {
    adapted_equals_merged(1, (1u << MODEL_LORA_K) | (1u << MODEL_LORA_V) | (1u << MODEL_LORA_DOWN), 1);
    adapted_equals_merged(1, (1u << MODEL_LORA_N_TARGETS) - 1, 2);
}

typedef struct {
    model_trainer *tr;
    model_lora *l;
    const int32_t *tok, *tg;
    const float *wl, *we;
    int B, T, reset; /* reset: re-attach before each forward, so dropout draws the same masks */
} lora_ctx;

static double lora_objective(void *p) {
    lora_ctx *c = p;
    rlhf_error err = {0};
    if (c->reset) model_trainer_set_lora(c->tr, c->l, 77, &err);
    model_forward(c->tr, c->tok, c->tg, c->B, c->T, &err);
    int N = c->B * c->T;
    return dot_rd(model_trainer_logprobs(c->tr), c->wl, N) + dot_rd(model_trainer_entropy(c->tr), c->we, N);
}

/* The directional derivative of loss along 3 random directions d over a whole tensor, by central
 * differences, against g · d. Per coordinate, float32 noise in the loss (about 1e-5 of it) swamps the
 * small entries of B's gradient; along a direction the signal is the gradient's norm. */
static void fd_directions(const char *what, loss_fn f, void *ctx, float *x, size_t n, const float *g, rlhf_rng *rng) {
    float *x0 = malloc(n * sizeof(float)), *d = malloc(n * sizeof(float));
    memcpy(x0, x, n * sizeof(float));
    for (int k = 0; k < 3; k++) {
        double norm = 0;
        for (size_t i = 0; i < n; i++) d[i] = rlhf_rng_normal(rng), norm += (double)d[i] * d[i];
        double eps = 3e-3 / sqrt(norm), gd = 0; /* a step of length 3e-3 */
        for (size_t i = 0; i < n; i++) gd += (double)g[i] * d[i];
        for (size_t i = 0; i < n; i++) x[i] = x0[i] + (float)(eps * d[i]);
        double lp = f(ctx);
        for (size_t i = 0; i < n; i++) x[i] = x0[i] - (float)(eps * d[i]);
        double lm = f(ctx);
        memcpy(x, x0, n * sizeof(float));
        double fd = (lp - lm) / (2 * eps), gnorm = sqrt(dot_rd(g, g, n)) * sqrt(norm);
        double ratio = fabs(fd - gd) / fmax(fabs(gd), 0.05 * gnorm);
        if (ratio > 1e-2) fprintf(stderr, "\n  %s: direction %d: finite difference %.7g vs g.d %.7g (ratio %.3g)", what, k, fd, gd, ratio);
        CU_ASSERT(ratio <= 1e-2);
    }
    free(x0), free(d);
}

/* Every adapter tensor's gradient against central differences; the base gets no gradient. */
static void adapter_fd(int layer_opts, float dropout) {
    model *m = lora_model(21, layer_opts);
    model_lora *l = lora_for(m, 2, dropout, (1u << MODEL_LORA_N_TARGETS) - 1, 22);
    model_trainer *tr = NULL;
    rlhf_error err = {0};
    int B = 2, T = 6, N = B * T;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, B, 8, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(tr, l, 77, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 23);
    int32_t tok[12], tg[12];
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)(rlhf_rng_u64(&rng) % 19);
        tg[i] = i % 5 == 0 ? -1 : (int32_t)(rlhf_rng_u64(&rng) % 19);
    }
    float *wl = rand_buf(&rng, N, 1.0f), *we = rand_buf(&rng, N, 0.5f);
    lora_ctx c = {tr, l, tok, tg, wl, we, B, T, dropout > 0};
    lora_objective(&c);
    model_trainer_zero_grad(tr);
    CU_ASSERT_EQUAL(model_backward_logprobs(tr, wl, we, &err), 0);
    CU_ASSERT(max_abs(model_trainer_grads(tr), m->n_params) == 0.0); /* the base is frozen */
    float *g = malloc(l->n_params * sizeof(float));
    memcpy(g, model_trainer_lora_grads(tr), l->n_params * sizeof(float));
    for (int i = 0; i < l->n_tensors; i++) {
        const model_tensor_info *t = &l->tensors[i];
        CU_ASSERT(max_abs(g + t->offset, t->numel) > 0.0);
        char what[64];
        snprintf(what, sizeof what, "%s%s", t->name, dropout > 0 ? " (dropout)" : "");
        fd_directions(what, lora_objective, &c, l->mem + t->offset, t->numel, g + t->offset, &rng);
    }
    free(g), free(wl), free(we);
    model_trainer_destroy(&tr);
    model_lora_destroy(&l);
    model_destroy(&m);
}

static void test_fd(void) { adapter_fd(0, 0.0f); }
static void test_fd_kv_share(void) { adapter_fd(1, 0.0f); }
static void test_fd_dropout(void) { adapter_fd(0, 0.3f); }

/* Dropout draws new masks every forward (two forwards differ) and none at p = 0. */
static void test_dropout_masks(void) {
    model *m = lora_model(31, 0);
    model_lora *l = lora_for(m, 2, 0.5f, (1u << MODEL_LORA_N_TARGETS) - 1, 32);
    model_trainer *tr = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 1, 8, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(tr, l, 5, &err), 0);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tg[8] = {2, 3, 4, 5, 6, 7, 8, 9};
    float a[8], b[8];
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 1, 8, &err), 0);
    memcpy(a, model_trainer_logprobs(tr), sizeof a);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 1, 8, &err), 0);
    memcpy(b, model_trainer_logprobs(tr), sizeof b);
    CU_ASSERT(rel_err(a, b, 8) > 1e-4);
    model_trainer_destroy(&tr);
    model_lora_destroy(&l);
    model_destroy(&m);
}

/* AdamW over the adapter set moves adapters only; the base model's weights stay bit-identical. */
static void test_adamw_adapters_only(void) {
    model *m = lora_model(41, 0);
    model_lora *l = lora_for(m, 4, 0.0f, (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_UP), 42);
    float *base0 = malloc(m->n_params * sizeof(float)), *lora0 = malloc(l->n_params * sizeof(float));
    memcpy(base0, m->params_mem, m->n_params * sizeof(float));
    memcpy(lora0, l->mem, l->n_params * sizeof(float));
    model_trainer *tr = NULL;
    adamw *opt = NULL;
    rlhf_error err = {0};
    adamw_config ac;
    adamw_config_default(&ac);
    ac.lr = 1e-2f;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 1, 8, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(tr, l, 1, &err), 0);
    CU_ASSERT_EQUAL_FATAL(adamw_create_params(&opt, l->tensors, l->n_tensors, l->n_params, &ac, &err), 0);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tg[8] = {2, 3, 4, 5, 6, 7, 8, 9};
    float loss0 = 0, loss = 0;
    for (int s = 0; s < 5; s++) {
        CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 1, 8, &err), 0);
        if (s == 0) loss0 = model_trainer_loss(tr, NULL);
        loss = model_trainer_loss(tr, NULL);
        CU_ASSERT_EQUAL(model_backward_loss(tr, &err), 0);
        CU_ASSERT_EQUAL(adamw_step_params(opt, l->mem, l->n_params, model_trainer_lora_grads(tr), NULL, NULL, &err), 0);
    }
    CU_ASSERT(loss < loss0);
    CU_ASSERT(memcmp(base0, m->params_mem, m->n_params * sizeof(float)) == 0);
    CU_ASSERT(memcmp(lora0, l->mem, l->n_params * sizeof(float)) != 0);
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    int n = adamw_state_tensors(opt, st, ADAMW_MAX_STATE_TENSORS);
    CU_ASSERT_EQUAL(n, 2 * 4 + 1);
    CU_ASSERT_STRING_EQUAL(st[0].name, "adamw.m.lora_a.wq");
    adamw_destroy(&opt);
    model_trainer_destroy(&tr);
    model_lora_destroy(&l);
    model_destroy(&m);
    free(base0), free(lora0);
}

static void expect_config_error(const char *json, const char *needle) {
    json_t *j = json_loads(json, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    model_lora_config c;
    rlhf_error err = {0};
    CU_ASSERT(model_lora_config_parse(&c, j, "model.lora", &err) != 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, needle));
    if (!strstr(err.msg, needle)) fprintf(stderr, "\n  %s: got \"%s\", expected \"%s\"\n", json, err.msg, needle);
    json_decref(j);
}

static void test_config(void) {
    json_t *j = json_loads("{\"rank\": 8}", 0, NULL);
    model_lora_config c;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(model_lora_config_parse(&c, j, "model.lora", &err), 0);
    CU_ASSERT_EQUAL(c.rank, 8);
    CU_ASSERT_DOUBLE_EQUAL(c.alpha, 32.0, 1e-9);
    CU_ASSERT_EQUAL(c.targets, (1u << MODEL_LORA_N_TARGETS) - 1);
    json_decref(j);
    j = json_loads("{\"rank\": 2, \"alpha\": 4, \"dropout\": 0.1, \"targets\": [\"q_proj\", \"down_proj\"]}", 0, NULL);
    CU_ASSERT_EQUAL(model_lora_config_parse(&c, j, "model.lora", &err), 0);
    CU_ASSERT_EQUAL(c.targets, (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_DOWN));
    json_t *back = model_lora_config_to_json(&c);
    model_lora_config c2;
    CU_ASSERT_EQUAL(model_lora_config_parse(&c2, back, "x", &err), 0);
    CU_ASSERT(memcmp(&c, &c2, sizeof c) == 0);
    json_decref(back);
    json_decref(j);
    expect_config_error("{\"alpha\": 4}", "rank: required");
    expect_config_error("{\"rank\": 0}", "rank: must be");
    expect_config_error("{\"rank\": 2, \"targets\": [\"q_proj\", \"lm_head\"]}", "targets[1]: \"lm_head\" is not");
    expect_config_error("{\"rank\": 2, \"targets\": [\"q_proj\", \"q_proj\"]}", "listed twice");
    expect_config_error("{\"rank\": 2, \"dropout\": 1}", "dropout: must be");
    expect_config_error("{\"rank\": 2, \"ranks\": 3}", "unknown key \"ranks\"");
    /* a rank wider than a projection's smaller side is refused when the adapters are made */
    model *m = lora_model(1, 0);
    model_lora_config big = {.rank = 17, .alpha = 1, .targets = 1u << MODEL_LORA_Q};
    model_lora *l = NULL;
    CU_ASSERT(model_lora_create(&l, m, &big, &err) != 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "exceeds q_proj"));
    CU_ASSERT_PTR_NULL(l);
    model_destroy(&m);
}

void register_lora_suite(void);
void register_lora_suite(void) {
    CU_pSuite s = CU_add_suite("lora", NULL, NULL);
    CU_add_test(s, "lora_forward/backward equal their plain twins (acc on and off)", test_kernels);
    CU_add_test(s, "adapted forward = the merged model's plain forward (all-linear, rank 3)", test_merge_all);
    CU_add_test(s, "adapted forward = merged, with kv_share and GQA (k, v, down only; all)", test_merge_some_kv_share);
    CU_add_test(s, "adapter gradients vs central differences; base gradient stays zero", test_fd);
    CU_add_test(s, "adapter gradients vs central differences with kv_share", test_fd_kv_share);
    CU_add_test(s, "adapter gradients vs central differences with dropout 0.3 (fixed masks)", test_fd_dropout);
    CU_add_test(s, "dropout draws new masks every forward", test_dropout_masks);
    CU_add_test(s, "AdamW over the adapters: loss falls, base weights bit-identical", test_adamw_adapters_only);
    CU_add_test(s, "model.lora config: defaults, round trip, errors naming the key", test_config);
}
