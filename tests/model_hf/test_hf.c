/* tests/model_hf/test_hf.c — Hugging Face model directories: BF16/F16 safetensors, loading (every
 * architecture against the float64 PyTorch oracle tests/oracle/hf_fixture.py), every refusal, and the
 * export back to a directory that the oracle's own reader evaluates to the same log-probs.
 *
 * Tolerances: the oracle computes in float64 from the stored values (exact in fp32 for every dtype),
 * the model in fp32, so the bound is the same for F32, F16 and BF16 weights: max |d log p| <= 1e-4 over
 * 13 positions whose log-probs are O(10). The observed maxima are printed. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/test_paths.h"

#define LOGP_TOL 1e-4

static char fx[256];  /* the oracle's fixture directory */
static char tmpd[256]; /* scratch */

static const char *scratch(const char *name) {
    static char buf[16][768];
    static int i;
    i = (i + 1) % 16;
    snprintf(buf[i], sizeof buf[i], "%s/%s", tmpd, name);
    return buf[i];
}

static const char *fixture(const char *name) {
    static char buf[8][768];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s/%s", fx, name);
    return buf[i];
}

static int run(const char *cmd) {
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void remove_dirs(void) {
    test_remove_tree(fx);
    test_remove_tree(tmpd);
}

/* Every suite needs the fixtures; they are made once per run (about 2 s of PyTorch). */
static int suite_init(void) {
    static int made = 0;
    if (made) return made > 0 ? 0 : -1;
    made = -1;
    snprintf(fx, sizeof fx, "/tmp/rlhf_hf_fx_XXXXXX");
    snprintf(tmpd, sizeof tmpd, "/tmp/rlhf_hf_tmp_XXXXXX");
    if (!mkdtemp(fx) || !mkdtemp(tmpd)) return -1;
    atexit(remove_dirs);
    char script[512], cmd[1024];
    if (test_source_path("tests/oracle/hf_fixture.py", script, sizeof script)) return -1;
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s make %s", script, fx);
    if (run(cmd) != 0) {
        fprintf(stderr, "hf_fixture.py make failed (needs /usr/bin/python3 with torch; scripts/install-deps.sh)\n");
        return -1;
    }
    made = 1;
    return 0;
}

/* ---------------------------------------------------------------- helpers */

typedef struct ref {
    int32_t tokens[64];
    double logp[64];
    int T;
} ref;

static int read_ref(const char *path, ref *r, int want_tokens) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) return -1;
    json_t *lp = json_object_get(j, "logp"), *tk = json_object_get(j, "tokens");
    if (want_tokens) {
        r->T = (int)json_array_size(tk);
        for (int i = 0; i < r->T && i < 64; i++) r->tokens[i] = (int32_t)json_integer_value(json_array_get(tk, i));
    }
    int n = (int)json_array_size(lp);
    for (int i = 0; i < n && i < 64; i++) r->logp[i] = json_number_value(json_array_get(lp, i));
    json_decref(j);
    return n == r->T - 1 ? 0 : -1;
}

/* The oracle's log-probs of DIR for the tokens of case CASE. */
static int oracle_logp(const char *dir, const char *case_name, ref *out) {
    char script[512], cmd[4096], in[768], res[768];
    test_source_path("tests/oracle/hf_fixture.py", script, sizeof script);
    snprintf(in, sizeof in, "%s/%s.ref.json", fx, case_name);
    snprintf(res, sizeof res, "%s/oracle_out.json", tmpd);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s logp %s %s %s", script, dir, in, res);
    if (run(cmd) != 0) return -1;
    if (read_ref(in, out, 1)) return -1;
    return read_ref(res, out, 0);
}

/* log p(tokens[t+1] | ..t) from the trainer's forward, t < T-1. */
static int trainer_logp(model *m, const ref *r, double *out, rlhf_error *err) {
    model_trainer *t = NULL;
    int32_t targets[64];
    for (int i = 0; i < r->T; i++) targets[i] = i + 1 < r->T ? r->tokens[i + 1] : -1;
    int rc = model_trainer_create(&t, m, 1, r->T, err);
    if (!rc) rc = model_forward(t, r->tokens, targets, 1, r->T, err);
    if (!rc)
        for (int i = 0; i < r->T - 1; i++) out[i] = model_trainer_logprobs(t)[i];
    model_trainer_destroy(&t);
    return rc;
}

/* The same from the sampler's KV-cache path: all tokens fed to slot 0, log-softmax in double. */
static int sampler_logp(model *m, const ref *r, double *out, rlhf_error *err) {
    sampler *s = NULL;
    int rc = sampler_create(&s, m, 1, err);
    int V = m->cfg.vocab_size;
    float *logits = malloc((size_t)r->T * V * sizeof *logits);
    int slot[64] = {0}, pos[64], rows[64];
    for (int i = 0; i < r->T; i++) pos[i] = rows[i] = i;
    for (int at = 0; !rc && at < r->T;) {
        int n = r->T - at < sampler_max_rows(s) ? r->T - at : sampler_max_rows(s);
        rc = sampler_step(s, n, slot, pos + at, r->tokens + at, n, rows, logits + (size_t)at * V, err);
        at += n;
    }
    for (int i = 0; !rc && i < r->T - 1; i++) {
        const float *l = logits + (size_t)i * V;
        double mx = l[0], z = 0;
        for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        for (int v = 0; v < V; v++) z += exp(l[v] - mx);
        out[i] = l[r->tokens[i + 1]] - mx - log(z);
    }
    free(logits);
    sampler_destroy(&s);
    return rc;
}

static double max_diff(const double *a, const double *b, int n) {
    double d = 0;
    for (int i = 0; i < n; i++) d = fabs(a[i] - b[i]) > d ? fabs(a[i] - b[i]) : d;
    return d;
}

/* ---------------------------------------------------------------- safetensors dtypes */

static int write_raw(const char *path, const char *header, const void *data, size_t n) {
    size_t hl = strlen(header), pad = (8 - hl % 8) % 8;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t l = hl + pad;
    fwrite(&l, 8, 1, f);
    fwrite(header, 1, hl, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fwrite(data, 1, n, f);
    return fclose(f);
}

static void test_read_half_dtypes(void) {
    /* F16: 1, -2, 2^-24 (smallest subnormal), 65504 (largest); BF16: 1, -2.5, 2^-133 (subnormal) */
    uint16_t d[7] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x3f80, 0xc020, 0x0001};
    const char *p = scratch("half.safetensors");
    CU_ASSERT_EQUAL_FATAL(write_raw(p, "{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[8,14]}}", d, 14), 0);
    safetensors_file *f = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_TRUE(f->mapped);
    const safetensors_tensor *h = safetensors_find(f, "h"), *b = safetensors_find(f, "b");
    CU_ASSERT_EQUAL(h->dtype, SAFETENSORS_F16);
    CU_ASSERT_EQUAL(b->dtype, SAFETENSORS_BF16);
    CU_ASSERT_PTR_NULL(h->data); /* only F32 is handed out as floats */
    float x[4];
    CU_ASSERT_EQUAL(safetensors_tensor_to_f32(h, x, p, &err), 0);
    CU_ASSERT_EQUAL(x[0], 1.0f);
    CU_ASSERT_EQUAL(x[1], -2.0f);
    CU_ASSERT_EQUAL(x[2], ldexpf(1.0f, -24));
    CU_ASSERT_EQUAL(x[3], 65504.0f);
    CU_ASSERT_EQUAL(safetensors_tensor_to_f32(b, x, p, &err), 0);
    CU_ASSERT_EQUAL(x[0], 1.0f);
    CU_ASSERT_EQUAL(x[1], -2.5f);
    CU_ASSERT_EQUAL(x[2], ldexpf(1.0f, -133));
    safetensors_close(&f);

    /* non-finite half values are refused naming the tensor */
    uint16_t bad[2] = {0x3c00, 0x7c00}; /* F16 +inf */
    CU_ASSERT_EQUAL_FATAL(write_raw(p, "{\"w.inf\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", bad, 4), 0);
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_EQUAL(safetensors_tensor_to_f32(&f->tensors[0], x, p, &err), RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'w.inf'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "non-finite"));
    safetensors_close(&f);
    /* other dtypes: refused naming tensor and dtype */
    CU_ASSERT_EQUAL_FATAL(write_raw(p, "{\"q\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", d, 8), 0);
    CU_ASSERT_EQUAL(safetensors_open(&f, p, &err), RLHF_EUNSUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "tensor 'q' has dtype F64"));
}

/* Round to nearest even, written from the definition (the oracle of the writer's rounding). */
static float bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t lo = u & 0xffff, hi = u >> 16;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1))) hi++;
    u = hi << 16;
    memcpy(&f, &u, 4);
    return f;
}

static void test_write_bf16(void) {
    float v[6] = {1.0f, 1.0f + ldexpf(1, -8), 1.0f + 3 * ldexpf(1, -8), -3.14159265f, 1e-30f, 65504.7f};
    safetensors_tensor t = {.name = "v", .ndim = 2, .shape = {2, 3}, .data = v};
    const char *p = scratch("bf16.safetensors");
    rlhf_error err = {0};
    t.dtype = SAFETENSORS_F16; /* writers ignore the field: the dtype is the call's */
    CU_ASSERT_EQUAL_FATAL(safetensors_write_as(p, &t, 1, NULL, SAFETENSORS_BF16, &err), 0);
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_EQUAL(f->tensors[0].dtype, SAFETENSORS_BF16);
    CU_ASSERT_PTR_EQUAL(f->tensors[0].raw, (const char *)f->buf + f->size - 12); /* 6 values, 2 bytes each */
    float x[6];
    CU_ASSERT_EQUAL(safetensors_tensor_to_f32(&f->tensors[0], x, p, &err), 0);
    for (int i = 0; i < 6; i++) CU_ASSERT_EQUAL(x[i], bf16_of(v[i]));
    CU_ASSERT_EQUAL(x[1], 1.0f);                       /* a tie goes to the even neighbour */
    CU_ASSERT_EQUAL(x[2], 1.0f + 4 * ldexpf(1, -8));   /* ... here upwards */
    safetensors_close(&f);
    CU_ASSERT_EQUAL(safetensors_write_as(p, &t, 1, NULL, SAFETENSORS_F16, &err), RLHF_EINVAL);
    /* plain safetensors_write stores F32 whatever the field holds */
    CU_ASSERT_EQUAL_FATAL(safetensors_write(p, &t, 1, NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_EQUAL(f->tensors[0].dtype, SAFETENSORS_F32);
    CU_ASSERT_EQUAL(memcmp(f->tensors[0].data, v, sizeof v), 0);
    safetensors_close(&f);
}

/* ---------------------------------------------------------------- loading, against the oracle */

static void check_case(const char *name, int expect_now) {
    ref r;
    char refp[768];
    snprintf(refp, sizeof refp, "%s/%s.ref.json", fx, name);
    CU_ASSERT_EQUAL_FATAL(read_ref(refp, &r, 1), 0);
    model *m = NULL;
    rlhf_error err = {0};
    int rc = model_load(&m, fixture(name), NULL, &err);
    if (rc) fprintf(stderr, "\n  %s: %s: %s\n", name, err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    double tr[64], sa[64];
    rc = trainer_logp(m, &r, tr, &err);
    if (!rc) rc = sampler_logp(m, &r, sa, &err);
    if (rc) fprintf(stderr, "\n  %s: %s: %s%s\n", name, err.where, err.msg,
                    expect_now ? "" : " (the attn_bias/qk_norm kernels land separately)");
    CU_ASSERT_EQUAL(rc, 0);
    if (!rc) {
        double dt = max_diff(tr, r.logp, r.T - 1), ds = max_diff(sa, r.logp, r.T - 1);
        printf(" [%s: max|dlogp| trainer %.2e sampler %.2e]", name, dt, ds);
        CU_ASSERT(dt <= LOGP_TOL);
        CU_ASSERT(ds <= LOGP_TOL);
    }
    model_destroy(&m);
}

static void test_llama_f32(void) { check_case("llama_f32", 1); }
static void test_llama3_bf16(void) { check_case("llama3_bf16_sharded_tied", 1); }
static void test_mistral_f16(void) { check_case("mistral_f16_sharded", 1); }
static void test_mistral_f32(void) { check_case("mistral_f32", 1); }
static void test_qwen2_f32(void) { check_case("qwen2_f32_tied", 0); }
static void test_qwen2_bf16(void) { check_case("qwen2_bf16_sharded", 0); }
static void test_qwen3_bf16(void) { check_case("qwen3_bf16_sharded", 0); }
static void test_qwen3_f32(void) { check_case("qwen3_f32_tied", 0); }

/* Config translation, for every case (including those whose kernels are not in yet). */
static void test_configs(void) {
    static const struct {
        const char *name;
        int tie, kvh, D, bias, qkn;
        model_rope_scaling rs;
        const char *arch;
    } c[] = {
        {"llama_f32", 0, 2, 8, 0, 0, MODEL_ROPE_NONE, "LlamaForCausalLM"},
        {"llama3_bf16_sharded_tied", 1, 1, 16, 0, 0, MODEL_ROPE_LLAMA3, "LlamaForCausalLM"},
        {"mistral_f16_sharded", 0, 1, 8, 0, 0, MODEL_ROPE_NONE, "MistralForCausalLM"},
        {"qwen2_f32_tied", 1, 2, 8, 1, 0, MODEL_ROPE_LINEAR, "Qwen2ForCausalLM"},
        {"qwen3_bf16_sharded", 0, 2, 16, 0, 1, MODEL_ROPE_NONE, "Qwen3ForCausalLM"},
        {"qwen3_f32_tied", 1, 4, 12, 0, 1, MODEL_ROPE_NONE, "Qwen3ForCausalLM"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        model *m = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(model_load(&m, fixture(c[i].name), NULL, &err), 0);
        CU_ASSERT_EQUAL(m->cfg.dim, 32);
        CU_ASSERT_EQUAL(m->cfg.n_layers, 2);
        CU_ASSERT_EQUAL(m->cfg.vocab_size, 67);
        CU_ASSERT_EQUAL(m->cfg.max_seq_len, 64);
        CU_ASSERT_EQUAL(m->cfg.ffn_dim, 48);
        CU_ASSERT_EQUAL(m->cfg.norm_eps, 1e-5f);
        CU_ASSERT_EQUAL(m->cfg.tie_embeddings, c[i].tie);
        CU_ASSERT_EQUAL(m->cfg.n_kv_heads, c[i].kvh);
        CU_ASSERT_EQUAL(model_head_dim(&m->cfg), c[i].D);
        CU_ASSERT_EQUAL(m->cfg.attn_bias, c[i].bias);
        CU_ASSERT_EQUAL(m->cfg.qk_norm, c[i].qkn);
        CU_ASSERT_EQUAL(m->cfg.rope_scaling, c[i].rs);
        CU_ASSERT_PTR_NOT_NULL(m->hf_config);
        if (m->hf_config) CU_ASSERT_PTR_NOT_NULL(strstr(m->hf_config, c[i].arch));
        if (c[i].rs == MODEL_ROPE_LLAMA3) {
            CU_ASSERT_EQUAL(m->cfg.rope_factor, 8.0f);
            CU_ASSERT_EQUAL(m->cfg.rope_original_max_pos, 16);
            CU_ASSERT_EQUAL(m->cfg.rope_high_freq_factor, 4.0f);
        }
        if (c[i].rs == MODEL_ROPE_LINEAR) CU_ASSERT_EQUAL(m->cfg.rope_factor, 2.0f);
        model_destroy(&m);
    }
    /* the cap, and expect applied after it */
    model *m = NULL;
    rlhf_error err = {0};
    model_load_options o = {.max_seq_len = 16};
    CU_ASSERT_EQUAL_FATAL(model_load_with(&m, fixture("qwen3_f32_tied"), &o, &err), 0);
    CU_ASSERT_EQUAL(m->cfg.max_seq_len, 16);
    model_config want = m->cfg;
    model_destroy(&m);
    o.expect = &want;
    CU_ASSERT_EQUAL(model_load_with(&m, fixture("qwen3_f32_tied"), &o, &err), 0);
    model_destroy(&m);
    want.n_kv_heads = 2;
    CU_ASSERT_EQUAL(model_load_with(&m, fixture("qwen3_f32_tied"), &o, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "n_kv_heads"));
    CU_ASSERT_PTR_NULL(m);
}

/* ---------------------------------------------------------------- refusals */

/* A copy of fixture SRC whose config.json is patched with the JSON object PATCH (null removes a key);
 * the weight files are symlinks. Returns the directory. */
static const char *patched(const char *src, const char *patch, const char *name) {
    const char *d = scratch(name);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && for f in %s/*; do ln -s $f %s/; done && rm %s/config.json",
             d, d, fixture(src), d, d);
    if (run(cmd)) return NULL;
    char cp[768];
    snprintf(cp, sizeof cp, "%s/config.json", fixture(src));
    json_t *c = json_load_file(cp, 0, NULL);
    json_t *p = json_loads(patch, 0, NULL);
    const char *k;
    json_t *v;
    json_object_foreach(p, k, v) {
        if (json_is_null(v) && strcmp(k, "rope_scaling") && strcmp(k, "sliding_window"))
            json_object_del(c, k);
        else
            json_object_set(c, k, v);
    }
    snprintf(cp, sizeof cp, "%s/config.json", d);
    json_dump_file(c, cp, JSON_INDENT(1));
    json_decref(c);
    json_decref(p);
    return d;
}

/* Loading DIR fails with CODE, a message containing NEEDLE and WHERE containing WHERE_PART; no model. */
static void expect_fail(const char *dir, const model_load_options *o, int code, const char *needle,
                        const char *where_part) {
    model *m = (model *)1;
    rlhf_error err = {0};
    int rc = model_load_with(&m, dir, o, &err);
    CU_ASSERT_EQUAL(rc, code);
    CU_ASSERT_PTR_NULL(m);
    int ok = strstr(err.msg, needle) && (!where_part || strstr(err.where, where_part));
    if (!ok || rc != code) fprintf(stderr, "\n  %s: got %d '%s: %s', wanted %d '%s'\n", dir, rc, err.where, err.msg, code, needle);
    CU_ASSERT(ok);
}

static void expect_ok(const char *dir, const model_load_options *o) {
    model *m = NULL;
    rlhf_error err = {0};
    int rc = model_load_with(&m, dir, o, &err);
    if (rc) fprintf(stderr, "\n  %s: %s: %s\n", dir, err.where, err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    model_destroy(&m);
}

static void test_config_errors(void) {
    const char *d;
    d = patched("llama_f32", "{\"architectures\":[\"GPT2LMHeadModel\"]}", "arch");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'architectures' = [\"GPT2LMHeadModel\"]", "config.json");
    d = patched("llama_f32", "{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}", "yarn");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'rope_scaling.rope_type' = \"yarn\"", "config.json");
    d = patched("llama_f32", "{\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":4.0}}", "dynamic");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "\"dynamic\"", "config.json");
    d = patched("llama_f32", "{\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2.0,\"beta\":1}}", "ropekey");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'rope_scaling.beta'", "config.json");
    d = patched("llama_f32", "{\"rope_scaling\":{\"rope_type\":\"default\"}}", "ropedefault");
    expect_ok(d, NULL);
    d = patched("llama_f32", "{\"is_llama_config\":true,\"rope_interleaved\":false,\"pretraining_tp\":1}", "smollm");
    expect_ok(d, NULL);
    d = patched("llama_f32", "{\"rope_interleaved\":true}", "interleaved");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'rope_interleaved' = true", "config.json");
    /* the weights file alone is no checkpoint: the error says to load the directory */
    char wf[800];
    snprintf(wf, sizeof wf, "%s/model.safetensors", fixture("llama_f32"));
    expect_fail(wf, NULL, RLHF_ECORRUPT, "loaded from its directory", "llama_f32/model.safetensors");
    d = patched("llama_f32", "{\"hidden_act\":\"gelu\"}", "act");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'hidden_act' = \"gelu\"", "config.json");
    d = patched("llama_f32", "{\"attention_bias\":true}", "obias");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'attention_bias' = true", "config.json");
    d = patched("llama_f32", "{\"mlp_bias\":true}", "mlpbias");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'mlp_bias'", "config.json");
    d = patched("llama_f32", "{\"quantization_config\":{\"bits\":4}}", "unknownkey");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'quantization_config'", "config.json");
    d = patched("llama_f32", "{\"hidden_size\":null}", "nohidden");
    expect_fail(d, NULL, RLHF_ECORRUPT, "'hidden_size'", "config.json");
    d = patched("llama_f32", "{\"num_hidden_layers\":\"two\"}", "badint");
    expect_fail(d, NULL, RLHF_ECORRUPT, "'num_hidden_layers' = \"two\"", "config.json");
    d = patched("llama_f32", "{\"model_type\":\"qwen2\"}", "modeltype");
    expect_fail(d, NULL, RLHF_ECORRUPT, "'model_type'", "config.json");
    d = patched("llama_f32", "{\"eos_token_id\":[2, 999]}", "eos");
    expect_fail(d, NULL, RLHF_ECORRUPT, "'eos_token_id'", "config.json");
    d = patched("qwen3_f32_tied", "{\"head_dim\":null}", "qwen3nohd");
    expect_fail(d, NULL, RLHF_ECORRUPT, "'head_dim'", "config.json");
    d = patched("qwen3_f32_tied", "{\"layer_types\":[\"full_attention\",\"sliding_attention\"]}", "layertypes");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'layer_types'", "config.json");
    /* sliding windows: active is refused, inactive (disabled, null, or no shorter than max_seq_len) loads */
    d = patched("mistral_f32", "{\"sliding_window\":8}", "swin");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'sliding_window' = 8", "config.json");
    model_load_options cap = {.max_seq_len = 8};
    expect_ok(d, &cap);
    d = patched("qwen2_f32_tied", "{\"use_sliding_window\":true}", "qwen2sw");
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "'sliding_window' = 4", "config.json");
    /* malformed JSON */
    d = patched("llama_f32", "{}", "badjson");
    char p[800];
    snprintf(p, sizeof p, "%s/config.json", d);
    FILE *f = fopen(p, "w");
    fputs("{\"architectures\": [\"LlamaForCausalLM\"], ", f);
    fclose(f);
    expect_fail(d, NULL, RLHF_EINVAL, "expected near end of file", "config.json:1:"); /* rlhf_json_load_file's */
    /* no config.json at all */
    unlink(p);
    expect_fail(d, NULL, RLHF_EIO, "config.json", "config.json");
}

/* Writes the tensors of m under their HF names into PATH (dtype dt), leaving out SKIP, changing the
 * shape of RESHAPE, and adding EXTRA (F32, 3 values) when not NULL. */
static int write_model(const model *m, const char *path, safetensors_dtype dt, const char *skip, const char *reshape,
                       const char *extra, float poison) {
    safetensors_tensor ts[128];
    char names[128][96];
    float ex[3] = {1, 2, 3};
    int n = 0;
    for (int layer = -1; layer < m->cfg.n_layers; layer++)
        for (int i = 0; i < m->n_tensors; i++) {
            const model_tensor_info *ti = &m->tensors[i];
            if (ti->per_layer != (layer >= 0)) continue;
            snprintf(names[n], sizeof names[n], ti->hf_name, layer);
            if (skip && !strcmp(skip, names[n])) continue;
            safetensors_tensor *t = &ts[n];
            memset(t, 0, sizeof *t);
            t->name = names[n];
            t->ndim = ti->cols > 1 ? 2 : 1;
            t->shape[0] = ti->rows;
            t->shape[1] = ti->cols;
            t->data = m->params_mem + ti->offset + (ti->per_layer ? (size_t)layer * ti->rows * ti->cols : 0);
            if (reshape && !strcmp(reshape, names[n])) t->shape[0]--;
            n++;
        }
    if (extra) {
        memset(&ts[n], 0, sizeof ts[n]);
        ts[n].name = extra;
        ts[n].ndim = 1;
        ts[n].shape[0] = 3;
        ts[n].data = ex;
        n++;
    }
    if (poison != 0) m->params_mem[5] = poison;
    rlhf_error err = {0};
    return safetensors_write_as(path, ts, n, NULL, dt, &err);
}

static const char *weights_dir(const char *name) {
    const char *d = scratch(name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && cp %s/config.json %s/", d, d, fixture("llama_f32"), d);
    return run(cmd) ? NULL : d;
}

static void test_weight_errors(void) {
    model *m = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_load(&m, fixture("llama_f32"), NULL, &err), 0);
    char p[800];
    const char *d = weights_dir("w_none");
    expect_fail(d, NULL, RLHF_EIO, "no model.safetensors", d);
    d = weights_dir("w_missing");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_F32, "model.layers.1.mlp.up_proj.weight", NULL, NULL, 0), 0);
    expect_fail(d, NULL, RLHF_ECORRUPT, "missing tensor 'model.layers.1.mlp.up_proj.weight'", "model.safetensors");
    d = weights_dir("w_shape");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_F32, NULL, "model.layers.0.self_attn.k_proj.weight", NULL, 0), 0);
    expect_fail(d, NULL, RLHF_ECORRUPT, "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [15, 32], "
                "expected [16, 32]", "model.safetensors");
    d = weights_dir("w_extra");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_BF16, NULL, NULL, "model.layers.0.self_attn.o_proj.bias", 0), 0);
    expect_fail(d, NULL, RLHF_ECORRUPT, "unexpected tensor 'model.layers.0.self_attn.o_proj.bias'", "model.safetensors");
    d = weights_dir("w_inv_freq");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_BF16, NULL, NULL, "model.layers.1.self_attn.rotary_emb.inv_freq", 0), 0);
    expect_ok(d, NULL);
    d = weights_dir("w_dtype");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    uint32_t junk[4] = {0};
    CU_ASSERT_EQUAL(write_raw(p, "{\"model.norm.weight\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                              junk, 16), 0);
    expect_fail(d, NULL, RLHF_EUNSUPPORTED, "tensor 'model.norm.weight' has dtype I32", "model.safetensors");
    d = weights_dir("w_inf");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    float keep = m->params_mem[5];
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_BF16, NULL, NULL, NULL, INFINITY), 0);
    m->params_mem[5] = keep;
    expect_fail(d, NULL, RLHF_ECORRUPT, "tensor 'model.embed_tokens.weight' (BF16) holds a non-finite value",
                "model.safetensors");
    /* F32 too (it was copied unchecked: NaN weights loaded and scored "null") */
    d = weights_dir("w_nan_f32");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_F32, NULL, NULL, NULL, NAN), 0);
    m->params_mem[5] = keep;
    expect_fail(d, NULL, RLHF_ECORRUPT, "tensor 'model.embed_tokens.weight' (F32) holds a non-finite value (nan) at "
                "flat index 5", "model.safetensors");
    model_destroy(&m);

    /* tied config, file also holds lm_head.weight: accepted only as an exact copy of the embedding */
    CU_ASSERT_EQUAL_FATAL(model_load(&m, fixture("llama_f32"), NULL, &err), 0);
    d = patched("llama_f32", "{\"tie_word_embeddings\":true}", "w_tied_differs");
    snprintf(p, sizeof p, "rm %s/model.safetensors", d);
    CU_ASSERT_EQUAL(run(p), 0);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL(write_model(m, p, SAFETENSORS_F32, NULL, NULL, NULL, 0), 0); /* untied lm_head != embed */
    expect_fail(d, NULL, RLHF_ECORRUPT, "'lm_head.weight' differs from 'model.embed_tokens.weight'", "model.safetensors");
    model_destroy(&m);

    /* shards: a missing shard is found before anything loads; the index must match the shards */
    d = patched("qwen3_bf16_sharded", "{}", "s_missing");
    snprintf(p, sizeof p, "rm %s/model-00002-of-00002.safetensors", d);
    CU_ASSERT_EQUAL(run(p), 0);
    expect_fail(d, NULL, RLHF_EIO, "shard 'model-00002-of-00002.safetensors' named in weight_map is missing",
                "model.safetensors.index.json");
    d = patched("qwen3_bf16_sharded", "{}", "s_wrongmap");
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    json_t *idx = json_load_file(p, 0, NULL);
    json_t *wm = json_object_get(idx, "weight_map");
    json_object_set_new(wm, "model.norm.weight", json_string("model-00001-of-00002.safetensors"));
    unlink(p);
    json_dump_file(idx, p, 0);
    json_decref(idx);
    expect_fail(d, NULL, RLHF_ECORRUPT, "'model.norm.weight'", NULL);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    FILE *f = fopen(p, "w");
    fputs("{\"weight_map\": 3}", f);
    fclose(f);
    expect_fail(d, NULL, RLHF_ECORRUPT, "'weight_map'", "model.safetensors.index.json");
    f = fopen(p, "w");
    fputs("{\"weight_map\": {\"model.norm.weight\": \"../x.safetensors\"}}", f);
    fclose(f);
    expect_fail(d, NULL, RLHF_ECORRUPT, "'weight_map'", "model.safetensors.index.json");
}

/* ---------------------------------------------------------------- export */

static json_t *read_json(const char *dir, const char *name) {
    char p[800];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return json_load_file(p, 0, NULL);
}

static int same_weights(const model *a, const model *b) {
    return a->n_params == b->n_params && !memcmp(&a->cfg, &b->cfg, sizeof a->cfg) &&
           !memcmp(a->params_mem, b->params_mem, a->n_params * sizeof(float));
}

/* HF directory -> export F32 -> bit-identical on reload, and the oracle reads the export back to the
 * same log-probs (this checks the loader and exporter for every architecture, kernels or not). */
static void export_case(const char *name) {
    model *m = NULL, *m2 = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_load(&m, fixture(name), NULL, &err), 0);
    char out[64];
    snprintf(out, sizeof out, "exp_%s", name);
    const char *d = scratch(out);
    model_export_options o = {.dtype = SAFETENSORS_F32};
    int rc = model_export_hf(m, d, &o, &err);
    if (rc) fprintf(stderr, "\n  export %s: %s: %s\n", name, err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL_FATAL(model_load(&m2, d, NULL, &err), 0);
    CU_ASSERT(same_weights(m, m2));
    json_t *src = read_json(fixture(name), "config.json"), *dst = read_json(d, "config.json");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(dst, "architectures"), 0)),
                           json_string_value(json_array_get(json_object_get(src, "architectures"), 0)));
    json_t *rs = json_object_get(src, "rope_scaling"), *rd = json_object_get(dst, "rope_scaling");
    CU_ASSERT(rs ? json_equal(rs, rd) : !rd);
    CU_ASSERT(json_equal(json_object_get(dst, "eos_token_id"), json_object_get(src, "eos_token_id")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(dst, "torch_dtype")), "float32");
    json_decref(src);
    json_decref(dst);
    safetensors_file *f = NULL;
    char p[800];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, p, &err), 0);
    CU_ASSERT_STRING_EQUAL(safetensors_meta(f, "format"), "pt");
    CU_ASSERT_EQUAL(json_object_size(f->metadata), 1);
    CU_ASSERT_EQUAL(safetensors_find(f, "lm_head.weight") != NULL, !m->cfg.tie_embeddings);
    safetensors_close(&f);
    ref want, got;
    char refp[768];
    snprintf(refp, sizeof refp, "%s/%s.ref.json", fx, name);
    CU_ASSERT_EQUAL_FATAL(read_ref(refp, &want, 1), 0);
    CU_ASSERT_EQUAL_FATAL(oracle_logp(d, name, &got), 0);
    CU_ASSERT(max_diff(want.logp, got.logp, want.T - 1) <= 1e-12); /* the same stored values */
    model_destroy(&m);
    model_destroy(&m2);
}

static void test_export_every_arch(void) {
    export_case("llama_f32");
    export_case("llama3_bf16_sharded_tied");
    export_case("mistral_f16_sharded");
    export_case("qwen2_f32_tied");
    export_case("qwen3_bf16_sharded");
}

/* A model made here (no source config): Llama config with the byte tokenizer's ids; BF16 export is the
 * rounded weights; the oracle's log-probs of the F32 export match the trainer's. */
static void test_export_project_model(void) {
    model_config c = {.dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .ffn_dim = 40, .vocab_size = 300,
                      .max_seq_len = 32, .rope_theta = 10000, .norm_eps = 1e-5f};
    model *m = NULL, *m2 = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    model_init_random(m, 3);
    for (size_t i = 0; i < m->n_params; i++) m->params_mem[i] *= 5; /* logits O(1), not ~0 */
    const char *ck = scratch("proj.safetensors");
    CU_ASSERT_EQUAL_FATAL(model_save(m, ck, &err), 0);
    const char *d = scratch("exp_proj_f32");
    CU_ASSERT_EQUAL_FATAL(model_export_hf(m, d, NULL, &err), 0);
    json_t *cfg = read_json(d, "config.json"), *gen = read_json(d, "generation_config.json");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), "LlamaForCausalLM");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(cfg, "eos_token_id")), TOKENIZER_BYTES_EOS);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(gen, "bos_token_id")), TOKENIZER_BYTES_BOS);
    json_decref(cfg);
    json_decref(gen);
    CU_ASSERT_EQUAL_FATAL(model_load(&m2, d, NULL, &err), 0);
    CU_ASSERT(same_weights(m, m2));
    model_destroy(&m2);
    /* the oracle on the export vs the trainer on the model */
    ref r = {.T = 12};
    for (int i = 0; i < r.T; i++) r.tokens[i] = (int32_t)((i * 97 + 13) % 300);
    char refp[800];
    snprintf(refp, sizeof refp, "%s/proj.ref.json", fx);
    json_t *rj = json_pack("{s:[],s:[]}", "tokens", "logp");
    for (int i = 0; i < r.T; i++) json_array_append_new(json_object_get(rj, "tokens"), json_integer(r.tokens[i]));
    for (int i = 0; i < r.T - 1; i++) json_array_append_new(json_object_get(rj, "logp"), json_real(0));
    json_dump_file(rj, refp, 0);
    json_decref(rj);
    ref got;
    CU_ASSERT_EQUAL_FATAL(oracle_logp(d, "proj", &got), 0);
    double tr[64];
    CU_ASSERT_EQUAL_FATAL(trainer_logp(m, &r, tr, &err), 0);
    double dd = max_diff(tr, got.logp, r.T - 1);
    printf(" [project model export: max|dlogp| %.2e]", dd);
    CU_ASSERT(dd <= LOGP_TOL);
    /* BF16: every value the nearest-even bf16 of the original */
    const char *db = scratch("exp_proj_bf16");
    model_export_options o = {.dtype = SAFETENSORS_BF16};
    CU_ASSERT_EQUAL_FATAL(model_export_hf(m, db, &o, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load(&m2, db, NULL, &err), 0);
    int all = 1;
    for (size_t i = 0; i < m->n_params; i++) all &= m2->params_mem[i] == bf16_of(m->params_mem[i]);
    CU_ASSERT(all);
    cfg = read_json(db, "config.json");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg, "torch_dtype")), "bfloat16");
    json_decref(cfg);
    model_destroy(&m2);
    /* biases -> Qwen2, q/k norms -> Qwen3, both -> refused */
    model_destroy(&m);
    c.attn_bias = 1;
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_export_hf(m, scratch("exp_bias"), NULL, &err), 0);
    cfg = read_json(scratch("exp_bias"), "config.json");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), "Qwen2ForCausalLM");
    json_decref(cfg);
    CU_ASSERT_EQUAL(model_load(&m2, scratch("exp_bias"), NULL, &err), 0);
    CU_ASSERT(m2 && same_weights(m, m2));
    model_destroy(&m2);
    model_destroy(&m);
    c.qk_norm = 1;
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    CU_ASSERT_EQUAL(model_export_hf(m, scratch("exp_both"), NULL, &err), RLHF_EUNSUPPORTED);
    struct stat st;
    CU_ASSERT_NOT_EQUAL(stat(scratch("exp_both"), &st), 0); /* nothing left behind, not even the temp */
    char tmpn[900];
    snprintf(tmpn, sizeof tmpn, "%s.tmp-%ld", scratch("exp_both"), (long)getpid());
    CU_ASSERT_NOT_EQUAL(stat(tmpn, &st), 0);
    model_destroy(&m);
    c.attn_bias = 0;
    CU_ASSERT_EQUAL_FATAL(model_create(&m, &c, &err), 0);
    model_init_random(m, 4);
    CU_ASSERT_EQUAL_FATAL(model_export_hf(m, scratch("exp_qkn"), NULL, &err), 0);
    cfg = read_json(scratch("exp_qkn"), "config.json");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), "Qwen3ForCausalLM");
    json_decref(cfg);
    CU_ASSERT_EQUAL(model_load(&m2, scratch("exp_qkn"), NULL, &err), 0);
    CU_ASSERT(m2 && same_weights(m, m2));
    model_destroy(&m2);
    model_destroy(&m);
}

/* The source config.json survives a project checkpoint; capped max_seq_len does not shrink the export's
 * max_position_embeddings; the target must be new or empty; tokenizer files are copied. */
static void test_export_source_config(void) {
    model *m = NULL, *m2 = NULL;
    rlhf_error err = {0};
    model_load_options lo = {.max_seq_len = 20};
    CU_ASSERT_EQUAL_FATAL(model_load_with(&m, fixture("mistral_f32"), &lo, &err), 0);
    const char *ck = scratch("mistral.safetensors");
    CU_ASSERT_EQUAL_FATAL(model_save(m, ck, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load(&m2, ck, NULL, &err), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m2->hf_config);
    CU_ASSERT_STRING_EQUAL(m2->hf_config, m->hf_config);
    CU_ASSERT_EQUAL(m2->cfg.max_seq_len, 20);
    model *m3 = NULL;
    model_load_options cap = {.max_seq_len = 10}; /* the cap applies to project checkpoints too */
    CU_ASSERT_EQUAL_FATAL(model_load_with(&m3, ck, &cap, &err), 0);
    CU_ASSERT_EQUAL(m3->cfg.max_seq_len, 10);
    model_destroy(&m3);
    /* tokenizer source */
    const char *tk = scratch("tok_src");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "mkdir -p %s && echo '{\"model\":{}}' > %s/tokenizer.json && echo '{\"eos_token_id\":[2,7]}' > "
             "%s/generation_config.json && echo x > %s/unrelated.txt", tk, tk, tk, tk);
    CU_ASSERT_EQUAL_FATAL(run(cmd), 0);
    const char *d = scratch("exp_mistral");
    CU_ASSERT_EQUAL_FATAL(mkdir(d, 0755), 0); /* an empty directory may be the target */
    model_export_options o = {.dtype = SAFETENSORS_BF16, .tokenizer_from = tk};
    CU_ASSERT_EQUAL_FATAL(model_export_hf(m2, d, &o, &err), 0);
    json_t *cfg = read_json(d, "config.json"), *gen = read_json(d, "generation_config.json"),
           *tj = read_json(d, "tokenizer.json");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(cfg, "architectures"), 0)), "MistralForCausalLM");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(cfg, "max_position_embeddings")), 64);
    CU_ASSERT_EQUAL(json_number_value(json_object_get(cfg, "rope_theta")), 500.0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg, "transformers_version")), "4.46.0");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(gen, "eos_token_id")), 2); /* copied, not generated */
    CU_ASSERT_PTR_NOT_NULL(tj);
    json_decref(cfg);
    json_decref(gen);
    json_decref(tj);
    char p[800];
    snprintf(p, sizeof p, "%s/unrelated.txt", d);
    CU_ASSERT_NOT_EQUAL(access(p, F_OK), 0);
    /* a non-empty target, or a tokenizer source without tokenizer files, is refused */
    CU_ASSERT_EQUAL(model_export_hf(m2, d, &o, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not an empty directory"));
    o.tokenizer_from = fixture("llama_f32");
    CU_ASSERT_EQUAL(model_export_hf(m2, scratch("exp_notok"), &o, &err), RLHF_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "tokenizer.json"));
    model_destroy(&m);
    model_destroy(&m2);
}

static int rlhf_cli(const char *args) {
    char bin[512], cmd[2048];
    if (test_bin_path("rlhf", bin, sizeof bin)) return -1;
    if (snprintf(cmd, sizeof cmd, "%s %s >%s/cli.out 2>%s/cli.err", bin, args, tmpd, tmpd) >= (int)sizeof cmd) return -1;
    return run(cmd);
}

static void test_cli(void) {
    char a[2048];
    CU_ASSERT_EQUAL(rlhf_cli("export --help"), 0);
    CU_ASSERT_EQUAL(rlhf_cli("export"), 2);
    snprintf(a, sizeof a, "export %s", fixture("llama_f32"));
    CU_ASSERT_EQUAL(rlhf_cli(a), 2); /* no --hf */
    snprintf(a, sizeof a, "export %s --hf %s --dtype f64", fixture("llama_f32"), scratch("cli_bad"));
    CU_ASSERT_EQUAL(rlhf_cli(a), 2);
    snprintf(a, sizeof a, "export %s --hf %s --bogus", fixture("llama_f32"), scratch("cli_bad"));
    CU_ASSERT_EQUAL(rlhf_cli(a), 2);
    snprintf(a, sizeof a, "export %s --hf %s", scratch("no_such_ckpt"), scratch("cli_bad"));
    CU_ASSERT_EQUAL(rlhf_cli(a), 1);
    snprintf(a, sizeof a, "export %s --hf %s --dtype f32", fixture("qwen2_f32_tied"), scratch("cli_ok"));
    CU_ASSERT_EQUAL_FATAL(rlhf_cli(a), 0);
    model *m = NULL, *m2 = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_load(&m, fixture("qwen2_f32_tied"), NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load(&m2, scratch("cli_ok"), NULL, &err), 0);
    CU_ASSERT(same_weights(m, m2));
    model_destroy(&m);
    model_destroy(&m2);
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("hf_safetensors", suite_init, NULL);
    CU_add_test(s, "F16/BF16 read exactly; non-finite and other dtypes refused", test_read_half_dtypes);
    CU_add_test(s, "BF16 written rounded to nearest even (file == memory encoding)", test_write_bf16);
    s = CU_add_suite("hf_load", suite_init, NULL);
    CU_add_test(s, "config.json translated for every architecture; max_seq_len cap; expect", test_configs);
    CU_add_test(s, "config errors name file, key and value", test_config_errors);
    CU_add_test(s, "weight and shard errors name file and tensor", test_weight_errors);
    s = CU_add_suite("hf_logprobs", suite_init, NULL);
    CU_add_test(s, "Llama F32 (GQA, untied) vs PyTorch float64", test_llama_f32);
    CU_add_test(s, "Llama BF16 sharded tied llama3-RoPE vs PyTorch", test_llama3_bf16);
    CU_add_test(s, "Mistral F16 sharded (GQA 4:1) vs PyTorch", test_mistral_f16);
    CU_add_test(s, "Mistral F32 vs PyTorch", test_mistral_f32);
    s = CU_add_suite("hf_logprobs_qwen", suite_init, NULL);
    CU_add_test(s, "Qwen2 F32 tied (q/k/v bias, linear RoPE) vs PyTorch", test_qwen2_f32);
    CU_add_test(s, "Qwen2 BF16 sharded vs PyTorch", test_qwen2_bf16);
    CU_add_test(s, "Qwen3 BF16 sharded (q/k norm, head_dim 16) vs PyTorch", test_qwen3_bf16);
    CU_add_test(s, "Qwen3 F32 tied (head_dim 12) vs PyTorch", test_qwen3_f32);
    s = CU_add_suite("hf_export", suite_init, NULL);
    CU_add_test(s, "export F32 reloads bit-identical; oracle reads it to the same log-probs", test_export_every_arch);
    CU_add_test(s, "project model: Llama/Qwen2/Qwen3 config, BF16 rounding, oracle log-probs", test_export_project_model);
    CU_add_test(s, "source config kept through a checkpoint; target and tokenizer checks", test_export_source_config);
    CU_add_test(s, "rlhf export CLI", test_cli);
    return 0;
}
