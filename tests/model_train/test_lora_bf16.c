/* tests/model_train/test_lora_bf16.c — a LoRA base kept in bfloat16 (model.bf16_mem, model_load_options
 * .keep_bf16): the bf16 matmul and embedding kernels against their plain twins and against the fp32 kernels
 * on the widened weights (across the widening chunks); a BF16 checkpoint loaded kept in bf16 against the
 * same file widened to fp32: the same log-probs, adapter gradients, merged weights; the frozen base
 * refusing what needs fp32 weights, by name. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/kernels_int.h"
#include "model/model.h"
#include "model/ops.h"
#include "tests/model_train/helpers.h"

static uint16_t *bf16_buf(rlhf_rng *r, size_t n, float scale) {
    uint16_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = model_bf16_round(scale * rlhf_rng_normal(r));
    return p;
}

static float *widened(const uint16_t *w, size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = model_bf16_to_f32(w[i]);
    return p;
}

/* OC wider than one widening chunk (MATMUL_BF16_SCRATCH / IC rows) and not a multiple of it */
static void kernels_at(int N, int IC, int OC) {
    rlhf_rng r;
    rlhf_rng_seed(&r, (uint64_t)N * 1000003 + IC * 31 + OC);
    uint16_t *w16 = bf16_buf(&r, (size_t)OC * IC, 0.5f);
    float *w = widened(w16, (size_t)OC * IC), *x = rand_buf(&r, (size_t)N * IC, 1.0f);
    float *dy = rand_buf(&r, (size_t)N * OC, 1.0f), *wbuf = malloc(MATMUL_BF16_SCRATCH * sizeof(float));
    float *y = zeros((size_t)N * OC), *y_ref = zeros((size_t)N * OC), *y32 = zeros((size_t)N * OC);
    matmulbf16_forward(y, wbuf, x, w16, N, IC, OC);
    matmulbf16_forward_ref(y_ref, x, w16, N, IC, OC);
    matmul_forward(y32, x, w, N, IC, OC);
    CU_ASSERT(rel_err(y, y_ref, (size_t)N * OC) < 1e-5);
    CU_ASSERT(rel_err(y, y32, (size_t)N * OC) < 1e-5);
    /* input gradient, overwrite then accumulate */
    float *dx = rand_buf(&r, (size_t)N * IC, 1.0f), *dx_ref = zeros((size_t)N * IC), *dx32 = zeros((size_t)N * IC);
    matmulbf16_backward(dx, wbuf, dy, w16, N, IC, OC, 0);
    matmulbf16_backward_ref(dx_ref, dy, w16, N, IC, OC);
    matmul_backward(dx32, NULL, dy, x, w, N, IC, OC, 0);
    CU_ASSERT(rel_err(dx, dx_ref, (size_t)N * IC) < 1e-5);
    CU_ASSERT(rel_err(dx, dx32, (size_t)N * IC) < 1e-5);
    matmulbf16_backward(dx, wbuf, dy, w16, N, IC, OC, 1);
    for (size_t i = 0; i < (size_t)N * IC; i++) dx_ref[i] *= 2.0f;
    CU_ASSERT(rel_err(dx, dx_ref, (size_t)N * IC) < 1e-5);
    free(w16), free(w), free(x), free(dy), free(wbuf), free(y), free(y_ref), free(y32), free(dx), free(dx_ref),
        free(dx32);
}

static void test_kernels(void) {
    kernels_at(5, 16, 24);          /* one chunk, one thread's rows */
    kernels_at(70, 64, 4096 + 37);  /* 4096 rows a chunk: two chunks, the second partial; rows split over threads */
    kernels_at(3, 300, 1000);       /* 873 rows a chunk */
    rlhf_rng r;
    rlhf_rng_seed(&r, 5);
    int V = 11, C = 24, N = 9;
    uint16_t *e16 = bf16_buf(&r, (size_t)V * C, 1.0f);
    int32_t tok[9] = {0, 3, 10, 3, 7, 1, 1, 9, 2};
    float *a = zeros((size_t)N * C), *b = zeros((size_t)N * C), *w = widened(e16, (size_t)V * C), *c = zeros((size_t)N * C);
    embeddingbf16_forward(a, tok, e16, N, C);
    embeddingbf16_forward_ref(b, tok, e16, N, C);
    embedding_forward(c, tok, w, N, C);
    CU_ASSERT(memcmp(a, b, (size_t)N * C * sizeof(float)) == 0);
    CU_ASSERT(memcmp(a, c, (size_t)N * C * sizeof(float)) == 0);
    free(e16), free(a), free(b), free(c), free(w);
}

static model *random_model(int tie, int bias) {
    model_config c = {.dim = 16, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .ffn_dim = 24, .vocab_size = 19,
                      .max_seq_len = 12, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = tie,
                      .attn_bias = bias};
    model *m = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    model_init_random(m, 77 + (uint64_t)tie);
    for (size_t j = 0; j < m->n_params; j++) m->params_mem[j] *= 4.0f;
    for (int i = 0; i < m->n_tensors; i++) /* norms away from 1 and biases away from 0: both must be read */
        if (m->tensors[i].cols == 1)
            for (size_t j = 0; j < m->tensors[i].numel; j++)
                m->params_mem[m->tensors[i].offset + j] = 1.0f + 0.1f * (float)((j * 7) % 5) - 0.2f;
    return m;
}

/* A BF16 Hugging Face directory of m in a fresh temp dir (path in dir). */
static void export_bf16(const model *m, char *dir, size_t cap) {
    char tmpl[] = "/tmp/rlhf_lora_bf16_XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmpl));
    snprintf(dir, cap, "%s/base", tmpl);
    model_export_options eo = {.dtype = SAFETENSORS_BF16};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_export_hf(m, dir, &eo, &err), 0);
}

static void remove_export(const char *dir) { /* dir is TMP/base: TMP goes */
    char cmd[600];
    size_t n = strlen(dir) - strlen("/base");
    snprintf(cmd, sizeof cmd, "rm -rf '%.*s'", (int)n, dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

/* Adapters with B away from zero, the same for both bases. */
static model_lora *adapters(const model *m) {
    model_lora_config lc = {.rank = 3, .alpha = 6.0f, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
    model_lora *l = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_lora_create(&l, m, &lc, &err), 0);
    model_lora_init(l, 9);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 10);
    for (int t = 0; t < MODEL_LORA_N_TARGETS; t++)
        for (size_t i = 0; l->b[t] && i < (size_t)l->n_stack[t] * l->out_dim[t] * 3; i++)
            l->b[t][i] = 0.5f * rlhf_rng_normal(&rng);
    return l;
}

static void kept_equals_widened(int tie, int bias) {
    model *src = random_model(tie, bias);
    char dir[512];
    export_bf16(src, dir, sizeof dir);
    rlhf_error err = {0};
    model *kept = NULL, *wide = NULL;
    model_load_options keep = {.keep_bf16 = 1}, plain = {0};
    CU_ASSERT_EQUAL_FATAL(model_load_with(&kept, dir, &keep, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load_with(&wide, dir, &plain, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(kept->bf16_mem);
    CU_ASSERT_PTR_NULL(wide->bf16_mem);
    CU_ASSERT_PTR_NULL(kept->p.wq); /* the fp32 matrices are not there to be read by mistake */
    CU_ASSERT_PTR_NULL(kept->p.lm_head);
    CU_ASSERT_PTR_NOT_NULL(kept->p.attn_norm);
    CU_ASSERT(tie ? kept->p16.lm_head == kept->p16.embed : kept->p16.lm_head != kept->p16.embed);
    /* every value, read as fp32, is the widened file's */
    for (int i = 0; i < kept->n_tensors; i++) {
        const model_tensor_info *ti = &kept->tensors[i];
        float *v = malloc(ti->numel * sizeof *v);
        model_tensor_read_f32(kept, ti, 0, ti->numel, v);
        CU_ASSERT(memcmp(v, wide->params_mem + ti->offset, ti->numel * sizeof *v) == 0);
        free(v);
    }
    /* the trainer with the same adapters: log-probs, entropy, adapter gradients */
    model_lora *la = adapters(kept), *lb = adapters(wide);
    model_trainer *ta = NULL, *tb = NULL;
    enum { B = 2, T = 10 };
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&ta, kept, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tb, wide, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(ta, la, 1, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(tb, lb, 1, &err), 0);
    int32_t tok[B * T], tg[B * T];
    float dl[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 7 + 3) % 19;
        tg[i] = i % T < 3 ? -1 : (i * 5 + 1) % 19;
        dl[i] = tg[i] < 0 ? 0.0f : 0.1f * (float)((i % 7) - 3);
    }
    model_trainer_zero_grad(ta);
    model_trainer_zero_grad(tb);
    CU_ASSERT_EQUAL_FATAL(model_forward(ta, tok, tg, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_forward(tb, tok, tg, B, T, &err), 0);
    CU_ASSERT(rel_err(model_trainer_logprobs(ta), model_trainer_logprobs(tb), B * T) < 1e-6);
    CU_ASSERT(rel_err(model_trainer_entropy(ta), model_trainer_entropy(tb), B * T) < 1e-6);
    CU_ASSERT_EQUAL(model_backward_logprobs(ta, dl, NULL, &err), 0);
    CU_ASSERT_EQUAL(model_backward_logprobs(tb, dl, NULL, &err), 0);
    double ge = rel_err(model_trainer_lora_grads(ta), model_trainer_lora_grads(tb), la->n_params);
    CU_ASSERT(ge < 1e-5);
    CU_ASSERT(max_abs(model_trainer_lora_grads(ta), la->n_params) > 1e-4); /* a gradient there is to compare */
    if (ge >= 1e-5) fprintf(stderr, "\n  adapter gradients differ: %g\n", ge);
    /* merged into fp32: the same model from either base */
    model *ma = NULL, *mb = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&ma, &kept->cfg, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_create(&mb, &wide->cfg, &err), 0);
    CU_ASSERT_EQUAL(model_lora_merge(ma, kept, la, &err), 0);
    CU_ASSERT_EQUAL(model_lora_merge(mb, wide, lb, &err), 0);
    CU_ASSERT(memcmp(ma->params_mem, mb->params_mem, ma->n_params * sizeof(float)) == 0);
    model_destroy(&ma);
    model_destroy(&mb);
    model_trainer_destroy(&ta);
    model_trainer_destroy(&tb);
    model_lora_destroy(&la);
    model_lora_destroy(&lb);
    model_destroy(&kept);
    model_destroy(&wide);
    model_destroy(&src);
    remove_export(dir);
}

static void test_kept_equals_widened(void) { kept_equals_widened(0, 0); }
static void test_kept_equals_widened_tied_bias(void) { kept_equals_widened(1, 1); }

static void expect_refusal(int rc, const rlhf_error *err, const char *what) {
    CU_ASSERT_EQUAL(rc, RLHF_EUNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err->msg, what));
    CU_ASSERT_PTR_NOT_NULL(strstr(err->msg, "frozen bf16 base"));
    if (!strstr(err->msg, what)) fprintf(stderr, "\n  expected \"%s\" in \"%s\"\n", what, err->msg);
}

static void test_frozen_refusals(void) {
    model *src = random_model(0, 0);
    char dir[512], p[600];
    export_bf16(src, dir, sizeof dir);
    rlhf_error err = {0};
    model *m = NULL, *other = NULL;
    model_load_options keep = {.keep_bf16 = 1};
    CU_ASSERT_EQUAL_FATAL(model_load_with(&m, dir, &keep, &err), 0);
    /* a backward with no adapters would train a frozen base */
    model_trainer *t = NULL;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&t, m, 1, 4, &err), 0);
    int32_t tok[4] = {1, 2, 3, 4}, tg[4] = {2, 3, 4, 5};
    CU_ASSERT_EQUAL(model_forward(t, tok, tg, 1, 4, &err), 0); /* scoring is fine */
    CU_ASSERT(isfinite(model_trainer_loss(t, NULL)));
    CU_ASSERT_EQUAL(model_backward_loss(t, &err), RLHF_ESTATE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "needs LoRA adapters"));
    model_trainer_destroy(&t);
    sampler *s = NULL;
    rlhf_error_clear(&err);
    expect_refusal(sampler_create(&s, m, 1, &err), &err, "sampling");
    CU_ASSERT_PTR_NULL(s);
    snprintf(p, sizeof p, "%s/../x.safetensors", dir);
    rlhf_error_clear(&err);
    expect_refusal(model_save(m, p, &err), &err, "saving a checkpoint");
    CU_ASSERT_EQUAL(access(p, F_OK), -1); /* nothing half-written */
    adamw *o = NULL;
    adamw_config ac;
    adamw_config_default(&ac);
    rlhf_error_clear(&err);
    expect_refusal(adamw_create(&o, m, &ac, &err), &err, "AdamW");
    CU_ASSERT_EQUAL_FATAL(model_create(&other, &m->cfg, &err), 0);
    rlhf_error_clear(&err);
    expect_refusal(model_copy_weights(other, m, &err), &err, "copying weights");
    model_lora_config lc = {.rank = 2, .alpha = 2, .targets = 1u << MODEL_LORA_Q};
    model_lora *l = NULL;
    CU_ASSERT_EQUAL_FATAL(model_lora_create(&l, m, &lc, &err), 0);
    rlhf_error_clear(&err);
    expect_refusal(model_lora_merge(m, m, l, &err), &err, "merging LoRA adapters");
    model_lora_destroy(&l);
    model_destroy(&other);
    model_destroy(&m);
    /* an fp32 file stays fp32 with keep_bf16 */
    snprintf(p, sizeof p, "%s/../f32.safetensors", dir);
    CU_ASSERT_EQUAL_FATAL(model_save(src, p, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load_with(&m, p, &keep, &err), 0);
    CU_ASSERT_PTR_NULL(m->bf16_mem);
    CU_ASSERT_PTR_NOT_NULL(m->p.wq);
    model_destroy(&m);
    model_destroy(&src);
    remove_export(dir);
}

void register_lora_bf16_suite(void);
void register_lora_bf16_suite(void) {
    CU_pSuite s = CU_add_suite("lora_bf16", NULL, NULL);
    CU_add_test(s, "bf16 matmul/embedding = plain twins = fp32 kernels on the widened weights (chunked)",
                test_kernels);
    CU_add_test(s, "a BF16 base kept in bf16 = the same file widened: values, log-probs, adapter grads, merge",
                test_kept_equals_widened);
    CU_add_test(s, "the same with tied embeddings and q/k/v biases", test_kept_equals_widened_tied_bias);
    CU_add_test(s, "a frozen bf16 base refuses backward without adapters, sampling, save, AdamW, copy, merge",
                test_frozen_refusals);
}
