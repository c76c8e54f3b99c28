/* tests/model_train/test_model.c — the whole model: gradients of every parameter tensor against
 * finite differences (MHA, GQA, tied embeddings), batched+padded == unbatched, the RL entry points
 * (per-token log-prob/entropy weights, hidden-state backward), bad input, AdamW and its state. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/model_train/helpers.h"

/* qwen: 0 Llama; 1 Qwen2/Qwen3 features together: q/k/v biases, per-head q/k norms and head_dim 6
 * (H*D = 24 != C = 16), with llama3 RoPE scaling; 2 the per-layer options on 4 layers: attention_pattern
 * global, local (window 3), global_nope, global_nope and kv_share -1, 0, -1, 2 (layers 1 and 3 have no
 * k/v projections; layer 0's and layer 2's K/V gradients collect two layers' contributions); 3 the same
 * with Qwen's biases and q/k norms */
static model *small_model_arch(int n_layers, int tie, int n_kv_heads, uint64_t seed, float scale, int qwen) {
    model_config c = {.dim = 16, .n_layers = n_layers, .n_heads = 4, .n_kv_heads = n_kv_heads, .ffn_dim = 24,
                      .vocab_size = 19, .max_seq_len = 12, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                      .tie_embeddings = tie};
    if (qwen >= 2) {
        c.n_layers = 4;
        static const unsigned char kinds[4] = {MODEL_ATTN_GLOBAL, MODEL_ATTN_LOCAL, MODEL_ATTN_GLOBAL_NOPE,
                                               MODEL_ATTN_GLOBAL_NOPE};
        static const short src[4] = {0, 1, 0, 3}; /* source layer + 1, 0 = own K/V */
        c.has_layer_opts = 1;
        c.attention_window = 3;
        for (int l = 0; l < 4; l++) c.attn_kind[l] = kinds[l], c.kv_src[l] = src[l];
        c.attn_bias = c.qk_norm = qwen == 3;
    }
    if (qwen == 1) {
        c.attn_bias = c.qk_norm = 1;
        c.head_dim = 6;
        c.rope_scaling = MODEL_ROPE_LLAMA3;
        c.rope_factor = 8.0f;
        c.rope_low_freq_factor = 1.0f;
        c.rope_high_freq_factor = 4.0f;
        c.rope_original_max_pos = 64;
    }
    model *m = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    model_init_random(m, seed);
    /* larger weights than the 0.02 init so every path (attention, SwiGLU) is far from linear */
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed + 1);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        float *w = m->params_mem + t->offset;
        for (size_t j = 0; j < t->numel; j++)
            w[j] = t->cols == 1 ? 1.0f + 0.2f * rlhf_rng_normal(&rng) : w[j] * scale;
        /* normalised q and k heads make O(1) attention logits whatever the scale: q/k norm weights of
         * about 3 keep the attention gradients well above the float32 noise of a finite difference */
        if (t->id == MODEL_T_Q_NORM || t->id == MODEL_T_K_NORM)
            for (size_t j = 0; j < t->numel; j++) w[j] *= 3.0f;
    }
    return m;
}

static model *small_model_layers(int n_layers, int tie, int n_kv_heads, uint64_t seed, float scale) {
    return small_model_arch(n_layers, tie, n_kv_heads, seed, scale, 0);
}

static model *small_model(int tie, int n_kv_heads, uint64_t seed, float scale) {
    return small_model_layers(2, tie, n_kv_heads, seed, scale);
}

static void random_batch(rlhf_rng *rng, int32_t *tok, int32_t *tg, int B, int T, int V, int mask_every) {
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(rlhf_rng_u64(rng) % V);
        tg[i] = (mask_every && i % mask_every == 0) ? -1 : (int32_t)(rlhf_rng_u64(rng) % V);
    }
}

typedef struct {
    model_trainer *tr;
    const int32_t *tok, *tg;
    const float *wl, *we, *rh;
    int B, T, hidden;
} model_ctx;

static double model_objective(void *p) {
    model_ctx *c = p;
    rlhf_error err = {0};
    int N = c->B * c->T;
    if (c->hidden) {
        model_forward_hidden(c->tr, c->tok, c->B, c->T, &err);
        return dot_rd(model_trainer_hidden(c->tr), c->rh, (size_t)N * 16);
    }
    model_forward(c->tr, c->tok, c->tg, c->B, c->T, &err);
    return dot_rd(model_trainer_logprobs(c->tr), c->wl, N) + (c->we ? dot_rd(model_trainer_entropy(c->tr), c->we, N) : 0);
}

/* Every parameter tensor's gradient against central differences at sampled coordinates. */
static void whole_model_fd_arch(int tie, int kv, int hidden, uint64_t seed, int qwen) {
    model *m = small_model_arch(2, tie, kv, seed, 10.0f, qwen);
    model_trainer *tr = NULL;
    rlhf_error err = {0};
    int B = 2, T = 6, N = B * T;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, B, 8, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed + 7);
    int32_t tok[12], tg[12];
    random_batch(&rng, tok, tg, B, T, m->cfg.vocab_size, 5);
    float *wl = rand_buf(&rng, N, 1.0f), *we = rand_buf(&rng, N, 0.5f), *rh = rand_buf(&rng, (size_t)N * 16, 1.0f);
    model_ctx c = {tr, tok, tg, wl, we, rh, B, T, hidden};
    model_objective(&c);
    model_trainer_zero_grad(tr);
    int rc = hidden ? model_backward_hidden(tr, rh, &err) : model_backward_logprobs(tr, wl, we, &err);
    CU_ASSERT_EQUAL(rc, 0);
    float *g = malloc(m->n_params * sizeof(float));
    memcpy(g, model_trainer_grads(tr), m->n_params * sizeof(float));
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        if (hidden && !strcmp(t->name, "lm_head")) {
            CU_ASSERT(max_abs(g + t->offset, t->numel) == 0.0); /* not on the hidden path */
            continue;
        }
        CU_ASSERT(max_abs(g + t->offset, t->numel) > 0.0);
        char what[64];
        snprintf(what, sizeof what, "model %s%s", t->name, tie ? " (tied)" : "");
        fd_check(what, model_objective, &c, m->params_mem + t->offset, t->numel, g + t->offset, 1e-2, qwen ? 3e-2 : 2e-2, 24,
                 &rng);
    }
    free(g), free(wl), free(we), free(rh);
    model_trainer_destroy(&tr);
    model_destroy(&m);
}

static void whole_model_fd(int tie, int kv, int hidden, uint64_t seed) { whole_model_fd_arch(tie, kv, hidden, seed, 0); }

/* The float64 PyTorch oracle checks these gradients at 1e-4; here float32 central differences, whose
 * truncation and rounding errors through the extra normalisations reach 2-3% on a few coordinates. */
static void test_fd_qwen(void) {
    whole_model_fd_arch(0, 2, 0, 400, 1);
    whole_model_fd_arch(1, 1, 1, 500, 1);
}

/* kv_share and attention_pattern: every gradient (the shared K/V projections' included) and the
 * hidden-state backward against finite differences */
static void test_fd_layer_opts(void) {
    whole_model_fd_arch(0, 2, 0, 600, 2);
    whole_model_fd_arch(1, 4, 1, 700, 2);
    whole_model_fd_arch(0, 2, 0, 800, 3);
}

/* model_config_parse / model_config_to_json with the keys of Qwen2/Qwen3 and RoPE scaling: a round
 * trip, defaults written as before they existed, and bad values rejected naming the key. */
static void test_config_arch_keys(void) {
    rlhf_error err = {0};
    const char *good =
        "{\"dim\": 1024, \"n_layers\": 2, \"n_heads\": 16, \"n_kv_heads\": 8, \"ffn_dim\": 3072, "
        "\"vocab_size\": 151936, \"max_seq_len\": 4096, \"rope_theta\": 1000000, \"norm_eps\": 1e-6, "
        "\"head_dim\": 128, \"attn_bias\": true, \"qk_norm\": true, \"rope_scaling\": {\"type\": \"llama3\", "
        "\"factor\": 8, \"low_freq_factor\": 1, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 8192}}";
    json_t *j = json_loads(good, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    model_config c, c2;
    CU_ASSERT_EQUAL_FATAL(model_config_parse(&c, j, "arch.json", &err), 0);
    json_decref(j);
    CU_ASSERT_EQUAL(c.head_dim, 128);
    CU_ASSERT_EQUAL(model_head_dim(&c), 128);
    CU_ASSERT(c.attn_bias && c.qk_norm);
    CU_ASSERT_EQUAL(c.rope_scaling, MODEL_ROPE_LLAMA3);
    CU_ASSERT(c.rope_factor == 8.0f && c.rope_low_freq_factor == 1.0f && c.rope_high_freq_factor == 4.0f);
    CU_ASSERT_EQUAL(c.rope_original_max_pos, 8192);
    j = model_config_to_json(&c);
    CU_ASSERT_EQUAL_FATAL(model_config_parse(&c2, j, "round trip", &err), 0);
    json_decref(j);
    CU_ASSERT_EQUAL(memcmp(&c, &c2, sizeof c), 0);
    /* linear scaling; head_dim equal to dim / n_heads is not written */
    j = json_loads("{\"dim\": 32, \"n_layers\": 1, \"n_heads\": 4, \"ffn_dim\": 8, \"vocab_size\": 10, "
                   "\"max_seq_len\": 8, \"head_dim\": 8, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.5}}",
                   0, NULL);
    CU_ASSERT_EQUAL_FATAL(model_config_parse(&c, j, "arch.json", &err), 0);
    json_decref(j);
    CU_ASSERT(c.rope_scaling == MODEL_ROPE_LINEAR && c.rope_factor == 2.5f);
    j = model_config_to_json(&c);
    CU_ASSERT_PTR_NULL(json_object_get(j, "head_dim"));
    CU_ASSERT_PTR_NULL(json_object_get(j, "attn_bias"));
    CU_ASSERT_PTR_NULL(json_object_get(j, "qk_norm"));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(j, "rope_scaling"), "type")), "linear");
    CU_ASSERT_EQUAL_FATAL(model_config_parse(&c2, j, "round trip", &err), 0);
    json_decref(j);
    CU_ASSERT_EQUAL(memcmp(&c, &c2, sizeof c), 0);
    /* bad values: the message names the key */
    static const struct {
        const char *extra, *key;
    } bad[] = {
        {"\"head_dim\": \"8\"", "head_dim"},
        {"\"head_dim\": 7", "head_dim"},
        {"\"head_dim\": -8", "head_dim"},
        {"\"attn_bias\": 1", "attn_bias"},
        {"\"qk_norm\": \"yes\"", "qk_norm"},
        {"\"rope_scaling\": 2", "rope_scaling"},
        {"\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}", "rope_scaling"},
        {"\"rope_scaling\": {\"type\": \"linear\"}", "factor"},
        {"\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}", "factor"},
        {"\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2, \"beta\": 1}", "rope_scaling.beta"},
        {"\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, "
         "\"original_max_position_embeddings\": 64}",
         "high_freq_factor"},
        {"\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, \"high_freq_factor\": 1, "
         "\"original_max_position_embeddings\": 64}",
         "high_freq_factor"},
        {"\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, \"high_freq_factor\": 4}",
         "original_max_position_embeddings"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text,
                 "{\"dim\": 32, \"n_layers\": 1, \"n_heads\": 4, \"ffn_dim\": 8, \"vocab_size\": 10, "
                 "\"max_seq_len\": 8, %s}",
                 bad[i].extra);
        j = json_loads(text, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        memset(&err, 0, sizeof err);
        CU_ASSERT_EQUAL(model_config_parse(&c, j, "arch.json", &err), RLHF_EINVAL);
        json_decref(j);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i].key));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "arch.json"));
        if (!strstr(err.msg, bad[i].key)) fprintf(stderr, "\n  %s: message '%s' lacks '%s'\n", bad[i].extra, err.msg, bad[i].key);
    }
}

static void test_fd_mha_untied(void) { whole_model_fd(0, 4, 0, 100); }
static void test_fd_gqa_tied(void) { whole_model_fd(1, 2, 0, 200); }
static void test_fd_hidden_gqa(void) { whole_model_fd(0, 1, 1, 300); }

/* Right-padded batched sequences give the same log-probs, entropies and gradients as one at a time. */
static void test_batched_padded_equals_unbatched(void) {
    model *m = small_model_layers(7, 0, 2, 11, 3.0f); /* deeper than the other tests: tape capacity */
    rlhf_error err = {0};
    model_trainer *tb = NULL, *t1 = NULL;
    int B = 3, T = 10, V = m->cfg.vocab_size, lens[3] = {4, 10, 7};
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tb, m, B, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&t1, m, 1, T, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 12);
    int32_t tok[30], tg[30];
    float w[30];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t, real = t < lens[b];
            tok[i] = real ? (int32_t)(rlhf_rng_u64(&rng) % V) : 17; /* 17 plays PAD */
            tg[i] = real && t > 0 ? (int32_t)(rlhf_rng_u64(&rng) % V) : -1;
            w[i] = real ? rlhf_rng_normal(&rng) : 0.0f;
        }
    model_trainer_zero_grad(tb);
    CU_ASSERT_EQUAL_FATAL(model_forward(tb, tok, tg, B, T, &err), 0);
    float lpb[30], enb[30];
    memcpy(lpb, model_trainer_logprobs(tb), sizeof lpb);
    memcpy(enb, model_trainer_entropy(tb), sizeof enb);
    CU_ASSERT_EQUAL(model_backward_logprobs(tb, w, NULL, &err), 0);
    model_trainer_zero_grad(t1);
    double worst_lp = 0, worst_en = 0;
    for (int b = 0; b < B; b++) {
        CU_ASSERT_EQUAL_FATAL(model_forward(t1, tok + b * T, tg + b * T, 1, lens[b], &err), 0);
        const float *lp = model_trainer_logprobs(t1), *en = model_trainer_entropy(t1);
        for (int t = 0; t < lens[b]; t++) {
            worst_lp = fmax(worst_lp, fabs(lp[t] - lpb[b * T + t]) / fmax(fabs(lp[t]), 1e-3));
            worst_en = fmax(worst_en, fabs(en[t] - enb[b * T + t]) / fmax(fabs(en[t]), 1e-3));
        }
        CU_ASSERT_EQUAL(model_backward_logprobs(t1, w + b * T, NULL, &err), 0); /* accumulates */
    }
    CU_ASSERT(worst_lp < 1e-5);
    CU_ASSERT(worst_en < 1e-5);
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *t = &m->tensors[i];
        double e = rel_err(model_trainer_grads(tb) + t->offset, model_trainer_grads(t1) + t->offset, t->numel);
        if (e >= 1e-5) fprintf(stderr, "  grad %s batched vs unbatched: %.3g\n", t->name, e);
        CU_ASSERT(e < 1e-5);
    }
    model_trainer_destroy(&tb);
    model_trainer_destroy(&t1);
    model_destroy(&m);
}

/* The mean masked cross-entropy and its backward agree with the log-prob path. */
static void test_loss_matches_logprobs(void) {
    model *m = small_model(1, 4, 21, 3.0f);
    rlhf_error err = {0};
    model_trainer *tr = NULL;
    int B = 2, T = 8, N = B * T;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, B, T, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 22);
    int32_t tok[16], tg[16];
    random_batch(&rng, tok, tg, B, T, m->cfg.vocab_size, 3);
    CU_ASSERT_EQUAL_FATAL(model_forward(tr, tok, tg, B, T, &err), 0);
    int n = 0;
    float loss = model_trainer_loss(tr, &n);
    double s = 0;
    int cnt = 0;
    float w[16];
    for (int i = 0; i < N; i++) {
        if (tg[i] >= 0) s -= model_trainer_logprobs(tr)[i], cnt++;
    }
    for (int i = 0; i < N; i++) w[i] = tg[i] >= 0 ? -1.0f / (float)cnt : 0.0f;
    CU_ASSERT_EQUAL(n, cnt);
    CU_ASSERT_EQUAL(cnt, 10); /* every third of 16 masked */
    CU_ASSERT(fabs(loss - s / cnt) < 1e-5 * fabs(loss));
    CU_ASSERT(loss > 0);
    model_trainer_zero_grad(tr);
    CU_ASSERT_EQUAL(model_backward_loss(tr, &err), 0);
    float *g1 = malloc(m->n_params * sizeof(float));
    memcpy(g1, model_trainer_grads(tr), m->n_params * sizeof(float));
    model_trainer_zero_grad(tr);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, B, T, &err), 0);
    CU_ASSERT_EQUAL(model_backward_logprobs(tr, w, NULL, &err), 0);
    CU_ASSERT(rel_err(g1, model_trainer_grads(tr), m->n_params) < 1e-6);
    /* logits are what the log-probs come from */
    const float *z = model_trainer_logits(tr);
    int V = m->cfg.vocab_size;
    double lse = 0, mx = -1e30;
    for (int j = 0; j < V; j++) mx = fmax(mx, z[V + j]);
    for (int j = 0; j < V; j++) lse += exp(z[V + j] - mx);
    lse = mx + log(lse);
    if (tg[1] >= 0) CU_ASSERT(fabs((z[V + tg[1]] - lse) - model_trainer_logprobs(tr)[1]) < 1e-5);
    float *logits = malloc((size_t)N * V * sizeof(float));
    CU_ASSERT_EQUAL(model_forward_logits(tr, tok, B, T, logits, &err), 0);
    CU_ASSERT(memcmp(logits, z, (size_t)N * V * sizeof(float)) == 0);
    free(logits), free(g1);
    model_trainer_destroy(&tr);
    model_destroy(&m);
}

/* Gradients do not depend on the thread count, including one raised after the trainer was made. */
extern void omp_set_num_threads(int);
extern int omp_get_max_threads(void);
static void test_threads_raised_after_create(void) {
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    model *m = small_model(0, 2, 61, 3.0f);
    rlhf_error err = {0};
    model_trainer *tr = NULL;
    int B = 4, T = 9;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, B, T, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 62);
    int32_t tok[36], tg[36];
    random_batch(&rng, tok, tg, B, T, m->cfg.vocab_size, 4);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, B, T, &err), 0);
    CU_ASSERT_EQUAL(model_backward_loss(tr, &err), 0);
    float *g1 = malloc(m->n_params * sizeof(float));
    memcpy(g1, model_trainer_grads(tr), m->n_params * sizeof(float));
    omp_set_num_threads(6); /* more threads than the attention scratch was sized for */
    model_trainer_zero_grad(tr);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, B, T, &err), 0);
    CU_ASSERT_EQUAL(model_backward_loss(tr, &err), 0);
    CU_ASSERT(rel_err(model_trainer_grads(tr), g1, m->n_params) < 1e-5);
    omp_set_num_threads(saved);
    free(g1);
    model_trainer_destroy(&tr);
    model_destroy(&m);
}

static void test_bad_input(void) {
    model *m = small_model(0, 4, 31, 1.0f);
    rlhf_error err = {0};
    model_trainer *tr = NULL;
    CU_ASSERT_EQUAL(model_trainer_create(&tr, m, 2, 13, &err), RLHF_EINVAL); /* > max_seq_len 12 */
    CU_ASSERT_PTR_NULL(tr);
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 2, 4, &err), 0);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tg[8] = {1, 2, 3, 4, 5, 6, 7, -1};
    float w[8] = {0};
    CU_ASSERT_EQUAL(model_backward_logprobs(tr, w, NULL, &err), RLHF_ESTATE);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 3, 4, &err), RLHF_EINVAL);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 2, 5, &err), RLHF_EINVAL);
    tok[3] = 19;
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 2, 4, &err), RLHF_EINVAL);
    CU_ASSERT(strstr(err.msg, "token id 19") != NULL);
    tok[3] = 4;
    tg[5] = -2;
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 2, 4, &err), RLHF_EINVAL);
    tg[5] = 6;
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 2, 4, &err), 0);
    CU_ASSERT_EQUAL(model_backward_logprobs(tr, w, NULL, &err), 0);
    CU_ASSERT_EQUAL(model_backward_logprobs(tr, w, NULL, &err), RLHF_ESTATE); /* tape already consumed */
    CU_ASSERT_EQUAL(model_forward_hidden(tr, tok, 2, 4, &err), 0);
    CU_ASSERT_EQUAL(model_backward_loss(tr, &err), RLHF_ESTATE); /* no head, no targets */
    model_trainer_destroy(&tr);
    model_destroy(&m);
}

/* ------------------------------------------------------------------ AdamW */

static void test_lr_schedule(void) {
    adamw_config c;
    adamw_config_default(&c);
    c.lr = 1.0f;
    c.warmup_steps = 4;
    c.total_steps = 14;
    c.min_lr_ratio = 0.1f;
    c.schedule = ADAMW_SCHEDULE_COSINE;
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 0), 0.25, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 3), 1.0, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 4), 1.0, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 9), 0.1 + 0.9 * 0.5, 1e-6); /* half way: cos(pi/2) = 0 */
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 14), 0.1, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 100), 0.1, 1e-6);
    c.schedule = ADAMW_SCHEDULE_CONSTANT;
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 9), 1.0, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(adamw_lr_at(&c, 1), 0.5, 1e-7);
}

/* One AdamW step against the closed form, decay only on matrices, and clipping. */
static void test_adamw_closed_form(void) {
    model *m = small_model(0, 4, 41, 1.0f);
    rlhf_error err = {0};
    adamw_config c;
    adamw_config_default(&c);
    c.lr = 0.01f;
    c.weight_decay = 0.5f;
    c.grad_clip = 0.0f;
    adamw *o = NULL;
    CU_ASSERT_EQUAL_FATAL(adamw_create(&o, m, &c, &err), 0);
    float *p0 = malloc(m->n_params * sizeof(float)), *g = malloc(m->n_params * sizeof(float));
    memcpy(p0, m->params_mem, m->n_params * sizeof(float));
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 42);
    for (size_t i = 0; i < m->n_params; i++) g[i] = 0.1f * rlhf_rng_normal(&rng);
    float norm = 0, lr = 0;
    float *gsave = malloc(m->n_params * sizeof(float));
    memcpy(gsave, g, m->n_params * sizeof(float));
    CU_ASSERT_EQUAL(adamw_step(o, m, g, &norm, &lr, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(lr, 0.01, 1e-9);
    /* first step: m_hat = g, v_hat = g^2, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps) */
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const model_tensor_info *t = &m->tensors[ti];
        double wd = t->cols > 1 ? 0.5 : 0.0, worst = 0;
        for (size_t j = t->offset; j < t->offset + t->numel; j++) {
            double want = p0[j] * (1 - 0.01 * wd) - 0.01 * gsave[j] / (fabs(gsave[j]) + 1e-8);
            worst = fmax(worst, fabs(m->params_mem[j] - want));
        }
        CU_ASSERT(worst < 1e-6);
    }
    /* the gradients were consumed */
    CU_ASSERT(max_abs(g, m->n_params) == 0.0);
    /* second step with clipping: g scaled by c = max_norm / (norm + 1e-6), then the Adam update with
     * m1 = (1-b1) g, v1 = (1-b2) g^2 from the first step and bias corrections for step 2 */
    float *p1 = malloc(m->n_params * sizeof(float)), *g1 = malloc(m->n_params * sizeof(float));
    memcpy(p1, m->params_mem, m->n_params * sizeof(float));
    rlhf_rng_seed(&rng, 42);
    for (size_t i = 0; i < m->n_params; i++) g1[i] = g[i] = 0.1f * rlhf_rng_normal(&rng);
    adamw_get_config(o)->grad_clip = 0.5f;
    double ss = 0;
    for (size_t i = 0; i < m->n_params; i++) ss += (double)g[i] * g[i];
    CU_ASSERT_EQUAL(adamw_step(o, m, g, &norm, NULL, &err), 0);
    CU_ASSERT(fabs(norm - sqrt(ss)) < 1e-4 * sqrt(ss));
    double cf = 0.5 / (sqrt(ss) + 1e-6), b1 = 0.9, b2 = 0.95, worst2 = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const model_tensor_info *t = &m->tensors[ti];
        double wd = t->cols > 1 ? 0.5 : 0.0;
        for (size_t j = t->offset; j < t->offset + t->numel; j++) {
            double gc = g1[j] * cf, m2 = b1 * (1 - b1) * g1[j] + (1 - b1) * gc;
            double v2 = b2 * (1 - b2) * (double)g1[j] * g1[j] + (1 - b2) * gc * gc;
            double want = p1[j] * (1 - 0.01 * wd) - 0.01 / (1 - b1 * b1) * m2 / (sqrt(v2 / (1 - b2 * b2)) + 1e-8);
            worst2 = fmax(worst2, fabs(m->params_mem[j] - want));
        }
    }
    CU_ASSERT(worst2 < 1e-6);
    free(p1), free(g1), free(gsave);
    CU_ASSERT_EQUAL(adamw_get_step(o), 2);
    g[3] = NAN;
    CU_ASSERT_EQUAL(adamw_step(o, m, g, NULL, NULL, &err), RLHF_EINVAL);
    free(p0), free(g);
    adamw_destroy(&o);
    model_destroy(&m);
}

/* Saving the state mid-run and restoring it into a fresh optimizer continues bit-exactly. */
static void test_adamw_state_roundtrip(void) {
    model *a = small_model(1, 2, 51, 1.0f), *b = small_model(1, 2, 51, 1.0f);
    rlhf_error err = {0};
    adamw_config c;
    adamw_config_default(&c);
    c.lr = 0.01f, c.warmup_steps = 2, c.total_steps = 10, c.schedule = ADAMW_SCHEDULE_COSINE;
    adamw *oa = NULL, *ob = NULL;
    CU_ASSERT_EQUAL_FATAL(adamw_create(&oa, a, &c, &err), 0);
    float *g = malloc(a->n_params * sizeof(float));
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 52);
    for (int s = 0; s < 3; s++) {
        for (size_t i = 0; i < a->n_params; i++) g[i] = rlhf_rng_normal(&rng);
        CU_ASSERT_EQUAL(adamw_step(oa, a, g, NULL, NULL, &err), 0);
    }
    /* save: every state tensor, by name, into a safetensors companion file, then read it back */
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    int n = adamw_state_tensors(oa, st, ADAMW_MAX_STATE_TENSORS);
    CU_ASSERT_EQUAL(n, 2 * a->n_tensors + 1);
    CU_ASSERT_STRING_EQUAL(st[0].name, "adamw.m.embed");
    CU_ASSERT_STRING_EQUAL(st[n - 1].name, "adamw.step");
    safetensors_tensor sf[ADAMW_MAX_STATE_TENSORS];
    for (int i = 0; i < n; i++) {
        sf[i].name = st[i].name;
        sf[i].ndim = 1;
        sf[i].shape[0] = (int64_t)st[i].numel;
        sf[i].data = st[i].data;
    }
    char path[] = "/tmp/rlhf_adamw_state_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT_EQUAL_FATAL(safetensors_write(path, sf, n, NULL, &err), 0);
    safetensors_file *file = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&file, path, &err), 0);
    unlink(path);
    float *saved[ADAMW_MAX_STATE_TENSORS];
    for (int i = 0; i < n; i++) {
        const safetensors_tensor *ft = safetensors_find(file, st[i].name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ft);
        CU_ASSERT_EQUAL(ft->shape[0], (int64_t)st[i].numel);
        saved[i] = malloc(st[i].numel * sizeof(float));
        memcpy(saved[i], ft->data, st[i].numel * sizeof(float));
    }
    safetensors_close(&file);
    CU_ASSERT_EQUAL(saved[n - 1][0], 3.0f);
    memcpy(b->params_mem, a->params_mem, a->n_params * sizeof(float));
    CU_ASSERT_EQUAL_FATAL(adamw_create(&ob, b, &c, &err), 0);
    adamw_state_tensor sb[ADAMW_MAX_STATE_TENSORS];
    CU_ASSERT_EQUAL(adamw_state_tensors(ob, sb, ADAMW_MAX_STATE_TENSORS), n);
    for (int i = 0; i < n; i++) {
        CU_ASSERT_STRING_EQUAL(sb[i].name, st[i].name);
        memcpy(sb[i].data, saved[i], sb[i].numel * sizeof(float));
    }
    CU_ASSERT_EQUAL(adamw_state_loaded(ob, &err), 0);
    CU_ASSERT_EQUAL(adamw_get_step(ob), 3);
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < a->n_params; i++) g[i] = rlhf_rng_normal(&rng);
        float *g2 = malloc(a->n_params * sizeof(float));
        memcpy(g2, g, a->n_params * sizeof(float));
        CU_ASSERT_EQUAL(adamw_step(oa, a, g, NULL, NULL, &err), 0);
        CU_ASSERT_EQUAL(adamw_step(ob, b, g2, NULL, NULL, &err), 0);
        free(g2);
    }
    CU_ASSERT(memcmp(a->params_mem, b->params_mem, a->n_params * sizeof(float)) == 0);
    /* a corrupt step count is rejected */
    sb[n - 1].data[0] = 2.5f;
    CU_ASSERT_EQUAL(adamw_state_loaded(ob, &err), RLHF_ECORRUPT);
    for (int i = 0; i < n; i++) free(saved[i]);
    free(g);
    adamw_destroy(&oa);
    adamw_destroy(&ob);
    model_destroy(&a);
    model_destroy(&b);
}

/* Takes `steps` AdamW steps on a with random gradients. */
static void adamw_take_steps(adamw *oa, model *a, int steps, rlhf_rng *rng) {
    rlhf_error err = {0};
    float *g = malloc(a->n_params * sizeof(float));
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < a->n_params; i++) g[i] = rlhf_rng_normal(rng);
        CU_ASSERT_EQUAL(adamw_step(oa, a, g, NULL, NULL, &err), 0);
    }
    free(g);
}

/* 1 if the two optimizers' state tensors (moments and step) are bitwise equal. */
static int adamw_state_equal(adamw *x, adamw *y) {
    adamw_state_tensor sx[ADAMW_MAX_STATE_TENSORS], sy[ADAMW_MAX_STATE_TENSORS];
    int n = adamw_state_tensors(x, sx, ADAMW_MAX_STATE_TENSORS);
    if (adamw_state_tensors(y, sy, ADAMW_MAX_STATE_TENSORS) != n) return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(sx[i].name, sy[i].name) || sx[i].numel != sy[i].numel ||
            memcmp(sx[i].data, sy[i].data, sx[i].numel * sizeof(float)))
            return 0;
    return adamw_get_step(x) == adamw_get_step(y);
}

/* adamw_save writes a file tagged {"format":"rlhf-adamw"} that adamw_load restores exactly; an
 * untagged file (as updater checkpoints were written before adamw_save) still loads; another format
 * tag, a missing tensor and a model of another size are errors naming the file. */
static void test_adamw_save_load(void) {
    model *a = small_model(0, 2, 53, 1.0f), *small = small_model_layers(1, 0, 2, 53, 1.0f);
    rlhf_error err = {0};
    adamw_config c;
    adamw_config_default(&c);
    adamw *oa = NULL, *ob = NULL, *oc = NULL, *osmall = NULL;
    CU_ASSERT_EQUAL_FATAL(adamw_create(&oa, a, &c, &err), 0);
    CU_ASSERT_EQUAL_FATAL(adamw_create(&ob, a, &c, &err), 0);
    CU_ASSERT_EQUAL_FATAL(adamw_create(&oc, a, &c, &err), 0);
    CU_ASSERT_EQUAL_FATAL(adamw_create(&osmall, small, &c, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 54);
    adamw_take_steps(oa, a, 3, &rng);
    CU_ASSERT_FALSE(adamw_state_equal(oa, ob));
    char path[] = "/tmp/rlhf_adamw_save_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);

    /* tagged round trip */
    CU_ASSERT_EQUAL_FATAL(adamw_save(oa, path, &err), 0);
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, path, &err), 0);
    CU_ASSERT_STRING_EQUAL(safetensors_meta(f, "format"), "rlhf-adamw");
    CU_ASSERT_EQUAL(f->n_tensors, 2 * a->n_tensors + 1);
    safetensors_close(&f);
    CU_ASSERT_EQUAL(adamw_load(ob, path, &err), 0);
    CU_ASSERT_EQUAL(adamw_get_step(ob), 3);
    CU_ASSERT(adamw_state_equal(oa, ob));

    /* a model of another size: an error naming the file */
    memset(&err, 0, sizeof err);
    CU_ASSERT_EQUAL(adamw_load(osmall, path, &err), RLHF_ECORRUPT);
    CU_ASSERT_STRING_EQUAL(err.where, path);

    /* the old untagged way: the same tensors through safetensors_write without metadata */
    adamw_take_steps(oa, a, 2, &rng);
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    int n = adamw_state_tensors(oa, st, ADAMW_MAX_STATE_TENSORS);
    safetensors_tensor sf[ADAMW_MAX_STATE_TENSORS];
    for (int i = 0; i < n; i++) {
        sf[i].name = st[i].name;
        sf[i].ndim = 1;
        sf[i].shape[0] = (int64_t)st[i].numel;
        sf[i].data = st[i].data;
    }
    CU_ASSERT_EQUAL_FATAL(safetensors_write(path, sf, n, NULL, &err), 0);
    CU_ASSERT_EQUAL(adamw_load(oc, path, &err), 0);
    CU_ASSERT_EQUAL(adamw_get_step(oc), 5);
    CU_ASSERT(adamw_state_equal(oa, oc));

    /* a file with a missing tensor */
    memset(&err, 0, sizeof err);
    CU_ASSERT_EQUAL_FATAL(safetensors_write(path, sf, n - 1, NULL, &err), 0);
    CU_ASSERT_EQUAL(adamw_load(oc, path, &err), RLHF_ECORRUPT);
    CU_ASSERT(strstr(err.msg, "adamw.step") != NULL);

    /* another format tag */
    memset(&err, 0, sizeof err);
    json_t *meta = json_pack("{s:s}", "format", "pt");
    CU_ASSERT_EQUAL_FATAL(safetensors_write(path, sf, n, meta, &err), 0);
    json_decref(meta);
    CU_ASSERT_EQUAL(adamw_load(oc, path, &err), RLHF_ECORRUPT);
    CU_ASSERT_STRING_EQUAL(err.where, path);
    CU_ASSERT(strstr(err.msg, "pt") != NULL);

    unlink(path);
    adamw_destroy(&oa);
    adamw_destroy(&ob);
    adamw_destroy(&oc);
    adamw_destroy(&osmall);
    model_destroy(&a);
    model_destroy(&small);
}

/* 1 if ADDR lies in a mapping of this process (/proc/self/maps), else 0; -1 if maps is unreadable */
static int address_mapped(const void *addr) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    unsigned long lo, hi, a = (unsigned long)addr;
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi) found = 1;
    fclose(f);
    return found;
}

/* The activation arenas, the weights, the gradients and the AdamW state are not inherited by a forked
 * child (the updater forks a sandbox per reward-checker run; copying and re-faulting them at every fork
 * cost more than the checker, and with the trainer running on the other CPU every re-owned page took a
 * TLB shootdown). */
static void test_arenas_not_inherited_by_fork(void) {
    model *m = small_model(0, 4, 11, 1.0f);
    model_trainer *tr = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 2, 8, &err), 0);
    int32_t tok[16], tg[16];
    for (int i = 0; i < 16; i++) tok[i] = tg[i] = i % 19;
    CU_ASSERT_EQUAL_FATAL(model_forward(tr, tok, tg, 2, 8, &err), 0);
    const float *logits = model_trainer_logits(tr); /* inside the activation arena */
    float before = logits[5];
    CU_ASSERT_EQUAL(address_mapped(logits), 1);
    adamw *opt = NULL;
    adamw_config ac;
    adamw_config_default(&ac);
    CU_ASSERT_EQUAL_FATAL(adamw_create(&opt, m, &ac, &err), 0);
    adamw_state_tensor st[ADAMW_MAX_STATE_TENSORS];
    adamw_state_tensors(opt, st, ADAMW_MAX_STATE_TENSORS);
    const void *kept[] = {logits, m->params_mem, model_trainer_grads(tr), st[0].data};
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++) CU_ASSERT_EQUAL(address_mapped(kept[i]), 1);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int inherited = 0;
        for (size_t i = 0; i < sizeof kept / sizeof *kept; i++) inherited += address_mapped(kept[i]);
        _exit(inherited == 0 ? 0 : 1);
    }
    CU_ASSERT_FATAL(pid > 0);
    int status = 0;
    CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* the parent's arena is intact and usable after the fork */
    CU_ASSERT_EQUAL(logits[5], before);
    CU_ASSERT_EQUAL(model_forward(tr, tok, tg, 2, 8, &err), 0);
    CU_ASSERT_EQUAL(model_trainer_logits(tr)[5], before);
    adamw_destroy(&opt);
    model_trainer_destroy(&tr);
    model_destroy(&m);
}

void register_model_suite(void);
void register_model_suite(void) {
    CU_pSuite s = CU_add_suite("model", NULL, NULL);
    CU_add_test(s, "every parameter gradient == finite differences (MHA, untied, logp+entropy weights)",
                test_fd_mha_untied);
    CU_add_test(s, "every parameter gradient == finite differences (GQA, tied embeddings)", test_fd_gqa_tied);
    CU_add_test(s, "hidden-state backward == finite differences (MQA)", test_fd_hidden_gqa);
    CU_add_test(s, "Qwen2/3 features (q/k/v biases, q/k norms, head_dim 6 at dim 16, llama3 RoPE): every "
                   "gradient and the hidden-state backward == finite differences", test_fd_qwen);
    CU_add_test(s, "kv_share + attention_pattern (local W=3, NoPE; with and without biases/q-k norms): every "
                   "gradient and the hidden-state backward == finite differences", test_fd_layer_opts);
    CU_add_test(s, "config keys head_dim, attn_bias, qk_norm, rope_scaling: round trip, bad values named",
                test_config_arch_keys);
    CU_add_test(s, "7 layers: batched right-padded log-probs, entropies, grads == unbatched",
                test_batched_padded_equals_unbatched);
    CU_add_test(s, "mean masked CE and its backward == log-prob path", test_loss_matches_logprobs);
    CU_add_test(s, "bad batch shapes, ids and call order are rejected", test_bad_input);
    CU_add_test(s, "1 thread at create, 6 at backward: same gradients", test_threads_raised_after_create);
    CU_add_test(s, "arenas, weights, gradients and AdamW state are not inherited by a forked child",
                test_arenas_not_inherited_by_fork);
    CU_pSuite a = CU_add_suite("adamw", NULL, NULL);
    CU_add_test(a, "warmup + cosine / constant schedule", test_lr_schedule);
    CU_add_test(a, "first step == closed form, decay on matrices only, clipping, NaN rejected",
                test_adamw_closed_form);
    CU_add_test(a, "state through a safetensors file: restore continues bit-exactly", test_adamw_state_roundtrip);
    CU_add_test(a, "adamw_save / adamw_load round trip; untagged (old) files load; bad files named",
                test_adamw_save_load);
}
