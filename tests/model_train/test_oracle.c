/* tests/model_train/test_oracle.c — the C model against an independent PyTorch implementation
 * (tests/oracle/llama_ref.py, run with /usr/bin/python3 in float64). The C side writes the weights and a
 * batch as raw little-endian files plus case.json into a temp dir; the script writes float64 results.
 * Compared per tensor with the norm  max|c - torch| / max|torch|  <= 1e-4: logits, log-probs,
 * entropies, loss, every parameter gradient, and every parameter after 3 AdamW steps (warmup,
 * cosine, clipping active, weight decay). Architectures: Llama (MHA, GQA, tied or not), Qwen2's q/k/v
 * biases, Qwen3's per-head q/k norms, head_dim other than dim / n_heads, and RoPE scaling (linear,
 * llama3), each with GQA. */
#include <CUnit/CUnit.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/model_train/helpers.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

#define ORACLE_TOL 1e-4

static int write_raw(const char *dir, const char *name, const void *p, size_t bytes) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    rlhf_error err = {0};
    return rlhf_write_file_atomic(path, p, bytes, &err);
}

static double *read_f64(const char *dir, const char *name, size_t want) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *data = NULL;
    size_t n = 0;
    rlhf_error err = {0};
    if (rlhf_read_file(path, &data, &n, &err) != 0) {
        fprintf(stderr, "  oracle output %s missing: %s\n", path, err.msg);
        return NULL;
    }
    if (n != want * sizeof(double)) {
        fprintf(stderr, "  oracle output %s has %zu bytes, want %zu\n", path, n, want * sizeof(double));
        free(data);
        return NULL;
    }
    return (double *)data;
}

static double rel_err_f64(const float *a, const double *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    return d / fmax(s, 1e-30);
}

static double max_abs_f(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

static double worst_seen;
static void check(const char *what, const float *a, const double *b, size_t n) {
    double e = rel_err_f64(a, b, n);
    if (e > worst_seen) worst_seen = e;
    if (e > ORACLE_TOL) fprintf(stderr, "  oracle mismatch %s: max|c-torch|/max|torch| = %.3g\n", what, e);
    CU_ASSERT(e <= ORACLE_TOL);
}

/* Parameters after AdamW. Adam's first step moves an element by about lr * sign(gradient) whatever the
 * gradient's size, so an element whose float64 gradient is below the float32 gradient's error (about
 * 1e-5 of the tensor's largest; the gradients themselves are checked at 1e-4 above) may step either way
 * in either implementation. Those elements (step-0 gradient nonzero but under 1e-5 of the tensor's
 * largest) are left out, and must be rare. */
static void check_after_adamw(const char *what, const float *a, const double *b, const double *grad, size_t n) {
    double gmax = 0, d = 0, s = 0;
    size_t skipped = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(grad[i]));
    for (size_t i = 0; i < n; i++) {
        s = fmax(s, fabs(b[i]));
        if (grad[i] != 0 && fabs(grad[i]) < 1e-5 * gmax) { /* exact zeros (unused embedding rows) stay */
            skipped++;
            continue;
        }
        d = fmax(d, fabs(a[i] - b[i]));
    }
    double e = d / fmax(s, 1e-30);
    if (e > worst_seen) worst_seen = e;
    if (e > ORACLE_TOL) fprintf(stderr, "  oracle mismatch %s: max|c-torch|/max|torch| = %.3g\n", what, e);
    CU_ASSERT(e <= ORACLE_TOL);
    CU_ASSERT(skipped * 200 <= n); /* at most 0.5% */
}

/* The script: $RLHF_ORACLE, else tests/oracle/llama_ref.py in the source tree this test was built from
 * (RLHF_SOURCE_ROOT), wherever BUILD and the working directory are. */
static int find_script(char *out, size_t cap) {
    const char *env = getenv("RLHF_ORACLE");
    if (env) return snprintf(out, cap, "%s", env), access(out, R_OK) == 0;
    return test_source_path("tests/oracle/llama_ref.py", out, cap) == 0 && access(out, R_OK) == 0;
}

static int run_oracle(const char *dir) {
    char script[PATH_MAX + 64];
    if (!find_script(script, sizeof script)) {
        fprintf(stderr, "  cannot find tests/oracle/llama_ref.py (set RLHF_ORACLE)\n");
        return -1;
    }
    char *argv[] = {"python3", script, "oracle", (char *)dir, NULL};
    int st = test_proc_run("/usr/bin/python3", argv, NULL, 0);
    if (st != 0) {
        fprintf(stderr, "  /usr/bin/python3 %s oracle %s failed (status %d); is python3-torch installed?\n", script,
                dir, st);
        return -1;
    }
    return 0;
}

static void rm_dir(const char *dir) {
    const char *names[] = {"case.json", "params.bin", "lora.bin", "tokens.bin", "targets.bin", "logits.f64", "logp.f64",
                           "entropy.f64", "loss.f64", "grads.f64", "params_after.f64"};
    char path[600];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static model_config oracle_config(int tie, int n_kv_heads) {
    model_config cfg = {.dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = n_kv_heads, .ffn_dim = 48,
                        .vocab_size = 40, .max_seq_len = 16, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
                        .tie_embeddings = tie};
    return cfg;
}

/* Weights are scaled by this much from init (5 unless a case says otherwise: a deep stack at 5x is so
 * chaotic that AdamW's first step, about lr * sign(gradient), flips on float32 rounding of small
 * gradients and the parameter comparison measures that, not the model). */
static float g_weight_scale = 5.0f;
/* LoRA cases: the adapters' config (rank 0: none). The base is frozen; gradients and AdamW compare the
 * adapters. */
static model_lora_config g_lora;

static void oracle_case(model_config cfg, uint64_t seed) {
    int B = 3, T = 12, N = B * T, V = cfg.vocab_size, steps = 3;
    worst_seen = 0;
    rlhf_error err = {0};
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &cfg, &err), 0);
    model_init_random(m, seed);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, seed + 1);
    /* weights well away from init scale, norms not all 1, so every path matters */
    for (size_t i = 0; i < m->n_params; i++)
        m->params_mem[i] = m->params_mem[i] * g_weight_scale + 0.01f * rlhf_rng_normal(&rng);
    /* biases start at 0: make them matter; q/k norms near 1 (5x would saturate every softmax) */
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor_info *ti = &m->tensors[i];
        model_tensor_id id = ti->id;
        for (size_t j = 0; j < ti->numel; j++) {
            float *w = m->params_mem + ti->offset + j;
            if (id == MODEL_T_BQ || id == MODEL_T_BK || id == MODEL_T_BV) *w = 0.5f * rlhf_rng_normal(&rng);
            if (id == MODEL_T_Q_NORM || id == MODEL_T_K_NORM) *w = 1.0f + 0.3f * rlhf_rng_normal(&rng);
        }
    }
    int32_t tok[36], tg[36];
    int lens[3] = {12, 7, 10};
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            tok[i] = t < lens[b] ? (int32_t)(rlhf_rng_u64(&rng) % V) : 3;
        }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            tg[i] = (t < lens[b] - 1 && t >= 2) ? tok[i + 1] : -1; /* prompt of 2, padding masked */
        }
    adamw_config oc;
    adamw_config_default(&oc);
    oc.lr = 1e-3f, oc.beta1 = 0.9f, oc.beta2 = 0.95f, oc.eps = 1e-8f, oc.weight_decay = 0.1f;
    oc.grad_clip = 0.5f, oc.warmup_steps = 2, oc.total_steps = 5, oc.min_lr_ratio = 0.1f;
    oc.schedule = ADAMW_SCHEDULE_COSINE;

    model_lora *lora = NULL;
    if (g_lora.rank) {
        CU_ASSERT_EQUAL_FATAL(model_lora_create(&lora, m, &g_lora, &err), 0);
        model_lora_init(lora, seed + 2);
        for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) /* B = 0 would make the branch invisible */
            for (size_t i = 0; lora->b[t] && i < (size_t)lora->n_stack[t] * lora->out_dim[t] * g_lora.rank; i++)
                lora->b[t][i] = 0.3f * rlhf_rng_normal(&rng);
    }
    /* the trained parameter set: the model's, or the adapters' */
    float *tp = lora ? lora->mem : m->params_mem;
    size_t tn = lora ? lora->n_params : m->n_params;
    const model_tensor_info *tt = lora ? lora->tensors : m->tensors;
    int ntt = lora ? lora->n_tensors : m->n_tensors;

    char dir[] = "/tmp/rlhf_oracle_XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    json_t *mj = model_config_to_json(&cfg);
    json_t *cj = json_pack("{s:o,s:{s:f,s:f,s:f,s:f,s:f,s:f,s:i,s:i,s:f,s:s},s:i,s:i,s:i}", "model", mj, "adamw",
                           "lr", (double)oc.lr, "beta1", (double)oc.beta1, "beta2", (double)oc.beta2, "eps",
                           (double)oc.eps, "weight_decay", (double)oc.weight_decay, "grad_clip", (double)oc.grad_clip,
                           "warmup_steps", oc.warmup_steps, "total_steps", oc.total_steps, "min_lr_ratio",
                           (double)oc.min_lr_ratio, "schedule", "cosine", "B", B, "T", T, "steps", steps);
    if (lora) json_object_set_new(cj, "lora", model_lora_config_to_json(&g_lora));
    char *cs = json_dumps(cj, JSON_COMPACT);
    json_decref(cj);
    CU_ASSERT_EQUAL(write_raw(dir, "case.json", cs, strlen(cs)), 0);
    free(cs);
    CU_ASSERT_EQUAL(write_raw(dir, "params.bin", m->params_mem, m->n_params * sizeof(float)), 0);
    if (lora) CU_ASSERT_EQUAL(write_raw(dir, "lora.bin", lora->mem, lora->n_params * sizeof(float)), 0);
    CU_ASSERT_EQUAL(write_raw(dir, "tokens.bin", tok, sizeof tok), 0);
    CU_ASSERT_EQUAL(write_raw(dir, "targets.bin", tg, sizeof tg), 0);
    int orc = run_oracle(dir);
    if (orc) fprintf(stderr, "  oracle inputs left in %s\n", dir);
    CU_ASSERT_EQUAL_FATAL(orc, 0);

    model_trainer *tr = NULL;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, B, T, &err), 0);
    if (lora) CU_ASSERT_EQUAL_FATAL(model_trainer_set_lora(tr, lora, 1, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_forward(tr, tok, tg, B, T, &err), 0);
    double *logits = read_f64(dir, "logits.f64", (size_t)N * V), *logp = read_f64(dir, "logp.f64", N);
    double *ent = read_f64(dir, "entropy.f64", N), *loss = read_f64(dir, "loss.f64", 1);
    double *grads = read_f64(dir, "grads.f64", tn), *after = read_f64(dir, "params_after.f64", tn);
    float *tgrads = lora ? model_trainer_lora_grads(tr) : model_trainer_grads(tr);
    CU_ASSERT_FATAL(logits && logp && ent && loss && grads && after);
    check("logits", model_trainer_logits(tr), logits, (size_t)N * V);
    check("logp", model_trainer_logprobs(tr), logp, N);
    check("entropy", model_trainer_entropy(tr), ent, N);
    float l = model_trainer_loss(tr, NULL);
    check("loss", &l, loss, 1);
    model_trainer_zero_grad(tr);
    CU_ASSERT_EQUAL(model_backward_loss(tr, &err), 0);
    for (int i = 0; i < ntt; i++) {
        char what[64];
        snprintf(what, sizeof what, "grad %s", tt[i].name);
        check(what, tgrads + tt[i].offset, grads + tt[i].offset, tt[i].numel);
    }
    if (lora) CU_ASSERT(max_abs_f(model_trainer_grads(tr), m->n_params) == 0.0); /* the base is frozen */
    adamw *o = NULL;
    CU_ASSERT_EQUAL_FATAL(adamw_create_params(&o, tt, ntt, tn, &oc, &err), 0);
    for (int s = 0; s < steps; s++) {
        model_trainer_zero_grad(tr);
        CU_ASSERT_EQUAL(model_forward(tr, tok, tg, B, T, &err), 0);
        CU_ASSERT_EQUAL(model_backward_loss(tr, &err), 0);
        float norm = 0;
        CU_ASSERT_EQUAL(adamw_step_params(o, tp, tn, tgrads, &norm, NULL, &err), 0);
        if (s == 0) CU_ASSERT(norm > oc.grad_clip); /* clipping is exercised */
    }
    for (int i = 0; i < ntt; i++) {
        char what[64];
        snprintf(what, sizeof what, "after AdamW %s", tt[i].name);
        check_after_adamw(what, tp + tt[i].offset, after + tt[i].offset, grads + tt[i].offset, tt[i].numel);
    }
    model_lora_destroy(&lora);
    free(logits), free(logp), free(ent), free(loss), free(grads), free(after);
    adamw_destroy(&o);
    model_trainer_destroy(&tr);
    model_destroy(&m);
    fprintf(stderr, "  [worst max|c-torch|/max|torch| over all tensors: %.2g] ", worst_seen);
    if (getenv("RLHF_ORACLE_KEEP")) fprintf(stderr, "  kept %s\n", dir);
    else rm_dir(dir);
}

static void test_oracle_lora(void) {
    g_lora = (model_lora_config){.rank = 4, .alpha = 8.0f, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
    oracle_case(oracle_config(0, 2), 3000);
    g_lora = (model_lora_config){0};
}

static void test_oracle_lora_kv_share(void) {
    model_config c = oracle_config(1, 2);
    c.n_layers = 3;
    c.has_layer_opts = 1;
    c.kv_src[2] = 1; /* layer 2 attends with layer 0's K/V */
    c.attn_bias = c.qk_norm = 1;
    g_lora = (model_lora_config){.rank = 1, .alpha = 2.0f,
                                 .targets = (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_V) | (1u << MODEL_LORA_DOWN)};
    oracle_case(c, 3100);
    g_lora = (model_lora_config){0};
}

static void test_oracle_gqa_untied(void) { oracle_case(oracle_config(0, 2), 1000); }
static void test_oracle_mha_tied(void) { oracle_case(oracle_config(1, 4), 2000); }

/* Qwen2: biases on the q, k and v projections */
static void test_oracle_attn_bias(void) {
    model_config c = oracle_config(0, 4);
    c.attn_bias = 1;
    oracle_case(c, 3000);
    c = oracle_config(1, 2);
    c.attn_bias = 1;
    oracle_case(c, 3100);
}

/* Qwen3: RMSNorm over each head of q and k before RoPE */
static void test_oracle_qk_norm(void) {
    model_config c = oracle_config(1, 4);
    c.qk_norm = 1;
    oracle_case(c, 4000);
    c = oracle_config(0, 2);
    c.qk_norm = 1;
    oracle_case(c, 4100);
}

/* H*D != C: 4 heads of 12 at dim 32 (q is 48 wide, o projects 48 back to 32), alone and with Qwen3's
 * norms and Qwen2's biases */
static void test_oracle_head_dim(void) {
    model_config c = oracle_config(0, 4);
    c.head_dim = 12;
    oracle_case(c, 5000);
    c = oracle_config(1, 2);
    c.head_dim = 12;
    c.qk_norm = 1;
    oracle_case(c, 5100);
    c = oracle_config(0, 1);
    c.head_dim = 12;
    c.attn_bias = 1;
    oracle_case(c, 5200);
}

/* RoPE scaling. head_dim 8 gives wavelengths 6.3, 63, 628, 6283 positions: with an original context of
 * 128 and low/high frequency factors 1/4, the first is kept, the second is in the blended band and the
 * last two are divided by the factor. */
static void test_oracle_rope_scaling(void) {
    model_config c = oracle_config(0, 2);
    c.rope_scaling = MODEL_ROPE_LLAMA3;
    c.rope_factor = 8.0f;
    c.rope_low_freq_factor = 1.0f;
    c.rope_high_freq_factor = 4.0f;
    c.rope_original_max_pos = 128;
    oracle_case(c, 6000);
    c = oracle_config(0, 2);
    c.rope_scaling = MODEL_ROPE_LINEAR;
    c.rope_factor = 4.0f;
    oracle_case(c, 6100);
}

/* oracle_config(tie, kv) with n_layers layers and the per-layer options of `opts` (a JSON object's members),
 * through model_config_parse as a run's config would go. */
static model_config oracle_config_opts(int tie, int n_kv_heads, int n_layers, const char *opts) {
    model_config c = oracle_config(tie, n_kv_heads);
    c.n_layers = n_layers;
    json_t *j = model_config_to_json(&c);
    json_error_t jerr;
    json_t *o = json_loads(opts, 0, &jerr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    json_object_update(j, o);
    rlhf_error err = {0};
    model_config out;
    int rc = model_config_parse(&out, j, "oracle case", &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_decref(o);
    json_decref(j);
    return out;
}

/* kv_share: the seed's split (6 layers: 4 and 5 reuse layer 3's K/V), then two producers each read by a later
 * layer with GQA, q/k norms and biases (the sharing layers have none of their own) */
static void test_oracle_kv_share(void) {
    g_weight_scale = 3.0f; /* 6 layers */
    oracle_case(oracle_config_opts(0, 2, 6, "{\"kv_share\": \"seed\"}"), 7000);
    g_weight_scale = 5.0f;
    oracle_case(oracle_config_opts(1, 2, 5, "{\"kv_share\": [-1, -1, 0, 1, 0], \"qk_norm\": true, \"attn_bias\": true}"),
                7200);
}

/* attention_pattern: 3 local layers (window 4 of T = 12) and one global NoPE layer, twice; a list with a
 * local layer reading a global RoPE layer's K/V (kv_share) */
static void test_oracle_attention_pattern(void) {
    g_weight_scale = 3.0f; /* 8 layers */
    oracle_case(oracle_config_opts(0, 2, 8, "{\"attention_pattern\": \"3local_1global_nope\", \"attention_window\": 4}"),
                8000);
    g_weight_scale = 5.0f;
    oracle_case(oracle_config_opts(1, 4, 4, "{\"attention_pattern\": [\"global\", \"local\", \"global_nope\", \"local\"], "
                                            "\"attention_window\": 3, \"kv_share\": [-1, 0, -1, 0]}"),
                8100);
}

void register_oracle_suite(void);
void register_oracle_suite(void) {
    CU_pSuite s = CU_add_suite("oracle", NULL, NULL);
    CU_add_test(s, "PyTorch oracle: LoRA rank 4 on every linear layer (GQA, frozen base): logits, adapter grads, AdamW",
                test_oracle_lora);
    CU_add_test(s, "PyTorch oracle: LoRA rank 1 on q, v, down with kv_share and Qwen's biases + q/k norms",
                test_oracle_lora_kv_share);
    CU_add_test(s, "PyTorch oracle: GQA untied — logits, loss, grads, 3 AdamW steps within 1e-4", test_oracle_gqa_untied);
    CU_add_test(s, "PyTorch oracle: MHA tied — logits, loss, grads, 3 AdamW steps within 1e-4", test_oracle_mha_tied);
    CU_add_test(s, "PyTorch oracle: q/k/v biases (Qwen2), MHA and GQA", test_oracle_attn_bias);
    CU_add_test(s, "PyTorch oracle: per-head q/k RMSNorm (Qwen3), MHA and GQA", test_oracle_qk_norm);
    CU_add_test(s, "PyTorch oracle: head_dim 12 at dim 32 with 4 heads, plain, GQA + qk_norm, MQA + biases",
                test_oracle_head_dim);
    CU_add_test(s, "PyTorch oracle: rope_scaling llama3 and linear, GQA", test_oracle_rope_scaling);
    CU_add_test(s, "PyTorch oracle: kv_share (seed split; explicit list with qk_norm + biases), grads and AdamW",
                test_oracle_kv_share);
    CU_add_test(s, "PyTorch oracle: attention_pattern 3local_1global_nope W=4; global/local/nope list + kv_share",
                test_oracle_attention_pattern);
}
