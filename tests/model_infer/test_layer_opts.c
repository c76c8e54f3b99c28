/* tests/model_infer/test_layer_opts.c — the per-layer attention options (kv_share, attention_pattern) in
 * sampling, scoring and checkpoints: the KV-cache sampler (every kernel table this CPU runs, ring buffers
 * of local layers wrapping, prefills longer than a ring pass) against the plain reference forward; the
 * sampler's greedy tokens and log-probs against model-train's forward; the reference forward against the
 * training forward; the KV cache's size; checkpoints (no k/v tensors for sharing layers, config round
 * trip); and every option combination the code cannot run refused with an error naming the key. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/kernels_int.h"
#include "model/model.h"
#include "tests/model_infer/infer_test.h"
#include "tests/test_paths.h"

/* dim 32, 4 heads, 2 KV heads, max_seq_len 100, n_layers layers, plus the JSON members of opts. */
static int parse_opts(model_config *out, int n_layers, const char *opts, rlhf_error *err) {
    model_config c = infer_test_config(0, 2);
    c.n_layers = n_layers;
    c.max_seq_len = 100;
    json_t *j = model_config_to_json(&c);
    json_error_t jerr;
    json_t *o = json_loads(opts, 0, &jerr);
    if (!o) {
        json_decref(j);
        return rlhf_error_set(err, RLHF_EINVAL, "test", "bad JSON %s", opts);
    }
    json_object_update(j, o);
    int rc = model_config_parse(out, j, "model.arch", err);
    json_decref(o);
    json_decref(j);
    return rc;
}

enum { N_VARIANTS = 4 };
static const struct {
    int n_layers;
    const char *opts;
} variants[N_VARIANTS] = {
    /* the seed's split: layers 5..7 reuse layer 4's K/V */
    {8, "{\"kv_share\": \"seed\"}"},
    /* 3 local (window 5, ring 36 positions) and 1 global NoPE */
    {4, "{\"attention_pattern\": \"3local_1global_nope\", \"attention_window\": 5}"},
    /* local layers reading a global RoPE layer's full cache, with Qwen's biases and q/k norms */
    {4, "{\"attention_pattern\": [\"global\", \"local\", \"global_nope\", \"local\"], \"attention_window\": 7, "
        "\"kv_share\": [-1, 0, -1, 0], \"attn_bias\": true, \"qk_norm\": true}"},
    /* a local layer sharing a local layer's ring; window 1 on a tied model */
    {4, "{\"attention_pattern\": \"1local_1global\", \"attention_window\": 1, \"kv_share\": [-1, -1, 0, -1], "
        "\"tie_embeddings\": true}"},
};

static model *variant_model(int i, uint64_t seed) {
    model_config c;
    rlhf_error err = {0};
    int rc = parse_opts(&c, variants[i].n_layers, variants[i].opts, &err);
    if (rc) printf("\n  variant %d: %s\n", i, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    model *m = infer_test_model(&c, seed);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    return m;
}

static void random_tokens(int32_t *t, int n, int V, uint64_t seed) {
    rlhf_rng r;
    rlhf_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(rlhf_rng_u64(&r) % (uint64_t)V);
}

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

/* ---------------------------------------------------------------- sampler against the reference */

/* Per variant, T = 100 positions (local rings of 32..38 wrap about three times): (1) the whole sequence
 * prefilled in one step (the sampler splits it into ring-sized passes), logits at every row; (2) in
 * another slot, a 10-token prefill and then one decode row per step; (3) a step mixing a decode row of
 * slot 0 with 40-token prefill chunks of slot 2 (stale entries of an earlier sequence in its rings). */
static void test_kv_cache_layer_opts(void) {
    enum { T = 100 };
    for (int vi = 0; vi < N_VARIANTS; vi++) {
        model *m = variant_model(vi, 61 + vi);
        int V = m->cfg.vocab_size;
        int32_t a[T], b[T];
        random_tokens(a, T, V, 5 + vi);
        random_tokens(b, T, V, 9 + vi);
        float *ref_a = malloc((size_t)T * V * sizeof(float)), *ref_b = malloc((size_t)T * V * sizeof(float));
        float *lg = malloc((size_t)T * V * sizeof(float));
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, a, T, ref_a, &err), 0);
        CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, b, T, ref_b, &err), 0);
        sampler *s = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 3, &err), 0);
        int slot[T + 1], pos[T + 1], rows[T + 1];
        /* (1) one step of 100 rows: the reference forward's logits at every row */
        for (int i = 0; i < T; i++) slot[i] = 0, pos[i] = i, rows[i] = i;
        CU_ASSERT_EQUAL_FATAL(sampler_step(s, T, slot, pos, a, T, rows, lg, &err), 0);
        double w1 = rel_diff(lg, ref_a, (size_t)T * V);
        /* (2) prefill 10 of b in slot 1, then decode */
        for (int i = 0; i < 10; i++) slot[i] = 1, pos[i] = i, rows[i] = i;
        CU_ASSERT_EQUAL_FATAL(sampler_step(s, 10, slot, pos, b, 10, rows, lg, &err), 0);
        double w2 = rel_diff(lg, ref_b, (size_t)10 * V);
        for (int t = 10; t < T; t++) {
            int sl = 1, p = t, r0 = 0;
            CU_ASSERT_EQUAL_FATAL(sampler_step(s, 1, &sl, &p, &b[t], 1, &r0, lg, &err), 0);
            w2 = fmax(w2, rel_diff(lg, ref_b + (size_t)t * V, (size_t)V));
        }
        /* (3) slot 0 restarts on b one row per step while slot 1 (stale: it held b) takes a in 40-row chunks;
         * the logit rows are listed last row first */
        double w3 = 0.0;
        int fed = 0;
        for (int t = 0; t < T; t++) {
            int R = 0, NL = 0, lrows[T + 1];
            int32_t toks[T + 1];
            slot[R] = 0, pos[R] = t, toks[R] = b[t], R++;
            int chunk = fed < T ? (T - fed < 40 ? T - fed : 40) : 0;
            for (int j = 0; j < chunk; j++) slot[R] = 1, pos[R] = fed + j, toks[R] = a[fed + j], R++;
            for (int r = R - 1; r >= 0; r--) lrows[NL++] = r;
            CU_ASSERT_EQUAL_FATAL(sampler_step(s, R, slot, pos, toks, NL, lrows, lg, &err), 0);
            w3 = fmax(w3, rel_diff(lg + (size_t)(NL - 1) * V, ref_b + (size_t)t * V, (size_t)V));
            for (int j = 0; j < chunk; j++)
                w3 = fmax(w3, rel_diff(lg + (size_t)(NL - 2 - j) * V, ref_a + (size_t)(fed + j) * V, (size_t)V));
            fed += chunk;
        }
        CU_ASSERT(w1 < 1e-4 && w2 < 1e-4 && w3 < 1e-4);
        if (!(w1 < 1e-4 && w2 < 1e-4 && w3 < 1e-4))
            printf("\n  [%s] variant %d: one-step prefill %g, decode %g, mixed %g\n", sampler_kernels_name(s), vi, w1,
                   w2, w3);
        free(ref_a), free(ref_b), free(lg);
        sampler_destroy(&s);
        model_destroy(&m);
    }
}

/* Greedy sampling (temperature 0) for 60 new tokens after a 30-token prompt: each token is the training
 * forward's argmax (within float noise) and each returned log-prob equals model-train's log-prob of it. */
static void test_greedy_matches_train(void) {
    enum { P = 30, N = 60, T = P + N };
    for (int vi = 0; vi < N_VARIANTS; vi++) {
        model *m = variant_model(vi, 71 + vi);
        int V = m->cfg.vocab_size;
        int32_t prompt[P];
        random_tokens(prompt, P, V, 13 + vi);
        sample_request rq = {.prompt = prompt, .prompt_len = P, .params = sample_params_default()};
        rq.params.temperature = 0.0f;
        rq.params.max_new_tokens = N;
        rq.params.seed = 3;
        sample_result res;
        memset(&res, 0, sizeof res);
        rlhf_error err = {0};
        sampler *s = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 2, &err), 0);
        CU_ASSERT_EQUAL_FATAL(sampler_run(s, NULL, &rq, 1, &res, &err), 0);
        CU_ASSERT_EQUAL_FATAL(res.n_tokens, N);
        int32_t tok[T], tg[T];
        memcpy(tok, prompt, sizeof prompt);
        memcpy(tok + P, res.tokens, (size_t)N * sizeof(int32_t));
        for (int t = 0; t < T; t++) tg[t] = t >= P - 1 && t < T - 1 ? tok[t + 1] : -1;
        model_trainer *tr = NULL;
        CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 1, T, &err), 0);
        CU_ASSERT_EQUAL_FATAL(model_forward(tr, tok, tg, 1, T, &err), 0);
        const float *lp = model_trainer_logprobs(tr), *lg = model_trainer_logits(tr);
        double worst = 0.0;
        int not_argmax = 0;
        for (int i = 0; i < N - 1; i++) {
            int t = P - 1 + i;
            worst = fmax(worst, fabs(res.logprobs[i] - lp[t]));
            float mx = -INFINITY;
            for (int v = 0; v < V; v++) mx = fmaxf(mx, lg[(size_t)t * V + v]);
            not_argmax += lg[(size_t)t * V + res.tokens[i]] < mx - 1e-3f;
        }
        CU_ASSERT(worst < 1e-3);
        CU_ASSERT_EQUAL(not_argmax, 0);
        if (!(worst < 1e-3) || not_argmax)
            printf("\n  [%s] variant %d: greedy log-probs vs train %g, %d tokens not the argmax\n",
                   sampler_kernels_name(s), vi, worst, not_argmax);
        sample_result_free(&res);
        model_trainer_destroy(&tr);
        sampler_destroy(&s);
        model_destroy(&m);
    }
}

/* ---------------------------------------------------------------- reference against training */

static void test_reference_matches_train(void) {
    enum { B = 2, T = 60 };
    for (int vi = 0; vi < N_VARIANTS; vi++) {
        model *m = variant_model(vi, 81 + vi);
        int V = m->cfg.vocab_size;
        int32_t tok[B * T];
        random_tokens(tok, B * T, V, 17 + vi);
        rlhf_error err = {0};
        model_trainer *tr = NULL;
        CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, B, T, &err), 0);
        float *lg = malloc((size_t)B * T * V * sizeof(float)), *ref = malloc((size_t)T * V * sizeof(float));
        CU_ASSERT_EQUAL_FATAL(model_forward_logits(tr, tok, B, T, lg, &err), 0);
        for (int b = 0; b < B; b++) {
            CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, tok + b * T, T, ref, &err), 0);
            double d = rel_diff(lg + (size_t)b * T * V, ref, (size_t)T * V);
            CU_ASSERT(d < 1e-4);
            if (!(d < 1e-4)) printf("\n  variant %d sequence %d: train vs reference %g\n", vi, b, d);
        }
        free(lg), free(ref);
        model_trainer_destroy(&tr);
        model_destroy(&m);
    }
}

/* ---------------------------------------------------------------- memory, checkpoints, config */

/* The KV cache holds the producing layers only, a local layer W + 31 positions (the ring's slack for a
 * 32-row prefill pass). */
static void test_kv_bytes(void) {
    rlhf_error err = {0};
    size_t KD = 2 * 8, B = 4, T = 100, f = sizeof(float);
    size_t want[N_VARIANTS] = {2 * B * KD * f * (5 * T), 2 * B * KD * f * (3 * 36 + T),
                               2 * B * KD * f * (2 * T), 2 * B * KD * f * (32 + 2 * T)};
    for (int vi = 0; vi < N_VARIANTS; vi++) {
        model *m = variant_model(vi, 91);
        sampler *s = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, (int)B, &err), 0);
        CU_ASSERT_EQUAL(sampler_kv_bytes(s), want[vi]);
        if (sampler_kv_bytes(s) != want[vi]) printf("\n  variant %d: %zu KV bytes, want %zu\n", vi, sampler_kv_bytes(s), want[vi]);
        sampler_destroy(&s);
        model_destroy(&m);
    }
    model_config c = infer_test_config(0, 2);
    c.max_seq_len = 100;
    model *m = infer_test_model(&c, 1);
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, (int)B, &err), 0);
    CU_ASSERT_EQUAL(sampler_kv_bytes(s), 2 * B * KD * f * (2 * T)); /* plain: every layer, T positions */
    sampler_destroy(&s);
    model_destroy(&m);
}

/* Save and load: sharing layers have no k/v tensors in the file, the config comes back equal (explicit
 * lists), the weights bit for bit; a different pattern is a config mismatch naming the key. */
static void test_checkpoint_round_trip(void) {
    const char *path = "/tmp/rlhf_layer_opts.safetensors";
    rlhf_error err = {0};
    model *m = variant_model(2, 5), *back = NULL;
    CU_ASSERT_EQUAL(model_tensor(m, MODEL_T_WK)->n_stack, 2);
    CU_ASSERT_EQUAL_FATAL(model_save(m, path, &err), 0);
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, path, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "model.layers.0.self_attn.k_proj.weight"));
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "model.layers.2.self_attn.v_proj.bias"));
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "model.layers.2.self_attn.k_norm.weight"));
    CU_ASSERT_PTR_NULL(safetensors_find(f, "model.layers.1.self_attn.k_proj.weight"));
    CU_ASSERT_PTR_NULL(safetensors_find(f, "model.layers.3.self_attn.v_proj.weight"));
    CU_ASSERT_PTR_NULL(safetensors_find(f, "model.layers.3.self_attn.k_norm.weight"));
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "model.layers.3.self_attn.q_proj.weight"));
    safetensors_close(&f);
    CU_ASSERT_EQUAL_FATAL(model_load(&back, path, &m->cfg, &err), 0);
    CU_ASSERT_EQUAL(memcmp(&back->cfg, &m->cfg, sizeof m->cfg), 0);
    CU_ASSERT_EQUAL(back->n_params, m->n_params);
    CU_ASSERT_EQUAL(memcmp(back->params_mem, m->params_mem, m->n_params * sizeof(float)), 0);
    model_destroy(&back);
    model_config other = m->cfg;
    other.attn_kind[2] = MODEL_ATTN_GLOBAL;
    CU_ASSERT_NOT_EQUAL(model_load(&back, path, &other, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "attention_pattern"));
    remove(path);
    model_destroy(&m);
}

/* Presets expand as documented; to_json writes explicit lists that parse back to the same config; no
 * option keys = every layer global with its own K/V (older checkpoints). */
static void test_config_presets(void) {
    model_config c;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(parse_opts(&c, 8, "{\"kv_share\": \"seed\"}", &err), 0);
    for (int l = 0; l < 8; l++) CU_ASSERT_EQUAL(model_kv_source(&c, l), l < 5 ? l : 4);
    CU_ASSERT_EQUAL(model_kv_layers(&c), 5);
    CU_ASSERT_EQUAL_FATAL(parse_opts(&c, 30, "{\"kv_share\": \"seed\"}", &err), 0); /* SmolLM2's 30: 11 share 18 */
    CU_ASSERT_EQUAL(model_kv_source(&c, 18), 18);
    CU_ASSERT_EQUAL(model_kv_source(&c, 19), 18);
    CU_ASSERT_EQUAL(model_kv_source(&c, 29), 18);
    CU_ASSERT_EQUAL(model_kv_layers(&c), 19);
    CU_ASSERT_EQUAL_FATAL(parse_opts(&c, 8, "{\"attention_pattern\": \"3local_1global_nope\", \"attention_window\": 9}", &err), 0);
    for (int l = 0; l < 8; l++) {
        CU_ASSERT_EQUAL(model_attn_kind_of(&c, l), l % 4 == 3 ? MODEL_ATTN_GLOBAL_NOPE : MODEL_ATTN_LOCAL);
        CU_ASSERT_EQUAL(model_attn_window(&c, l), l % 4 == 3 ? 0 : 9);
        CU_ASSERT_EQUAL(model_attn_rope(&c, l), l % 4 != 3);
    }
    json_t *j = model_config_to_json(&c);
    CU_ASSERT(json_is_array(json_object_get(j, "attention_pattern")));
    model_config back;
    CU_ASSERT_EQUAL(model_config_parse(&back, j, "round trip", &err), 0);
    CU_ASSERT_EQUAL(memcmp(&back, &c, sizeof c), 0);
    json_decref(j);
    CU_ASSERT_EQUAL_FATAL(parse_opts(&c, 4, "{\"kv_share\": \"none\", \"attention_pattern\": \"global\"}", &err), 0);
    model_config plain;
    CU_ASSERT_EQUAL_FATAL(parse_opts(&plain, 4, "{}", &err), 0);
    CU_ASSERT_EQUAL(memcmp(&c, &plain, sizeof c), 0); /* explicit defaults are the plain model */
    CU_ASSERT_EQUAL(c.has_layer_opts, 0);
    for (int l = 0; l < 4; l++) CU_ASSERT(model_kv_source(&c, l) == l && model_attn_kind_of(&c, l) == MODEL_ATTN_GLOBAL);
    j = model_config_to_json(&c);
    CU_ASSERT_PTR_NULL(json_object_get(j, "kv_share"));
    CU_ASSERT_PTR_NULL(json_object_get(j, "attention_pattern"));
    json_decref(j);
}

/* Each combination the code cannot run: one error naming the key. */
static void test_config_errors(void) {
    static const struct {
        int n_layers;
        const char *opts, *key;
    } bad[] = {
        {4, "{\"attention_pattern\": \"local\", \"attention_window\": 101}", "attention_window"},
        {4, "{\"attention_pattern\": \"local\", \"attention_window\": 0}", "attention_window"},
        {4, "{\"attention_pattern\": \"local\", \"attention_window\": -3}", "attention_window"},
        {4, "{\"attention_pattern\": \"local\"}", "attention_window"},
        {4, "{\"attention_window\": 8}", "attention_window"},
        {4, "{\"kv_share\": [-1, 2, -1, -1]}", "kv_share[1]"},
        {4, "{\"kv_share\": [-1, 1, -1, -1]}", "kv_share[1]"},
        {4, "{\"kv_share\": [-1, 0, 1, -1]}", "kv_share[2]"},
        {4, "{\"kv_share\": [-1, 0, 0]}", "kv_share"},
        {4, "{\"kv_share\": \"half\"}", "kv_share"},
        {4, "{\"kv_share\": [-1, 0.5, 0, 0]}", "kv_share[1]"},
        {4, "{\"attention_pattern\": [\"local\", \"global\"], \"attention_window\": 4}", "attention_pattern"},
        {4, "{\"attention_pattern\": \"3local_2global\", \"attention_window\": 4}", "attention_pattern"},
        {4, "{\"attention_pattern\": [\"global\", \"sliding\", \"global\", \"global\"]}", "attention_pattern[1]"},
        {4, "{\"attention_pattern\": [\"local\", \"global\", \"global\", \"global\"], \"attention_window\": 4, "
            "\"kv_share\": [-1, 0, -1, -1]}", "kv_share[1]"}, /* a global layer cannot read a local ring */
        {4, "{\"attention_pattern\": [\"global_nope\", \"global\", \"global\", \"global\"], \"kv_share\": [-1, 0, -1, -1]}",
         "kv_share[1]"}, /* RoPE'd queries against unrotated keys */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        model_config c;
        rlhf_error err = {0};
        int rc = parse_opts(&c, bad[i].n_layers, bad[i].opts, &err);
        CU_ASSERT_NOT_EQUAL(rc, 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i].key));
        if (!rc || !strstr(err.msg, bad[i].key))
            printf("\n  %s: rc %d, error \"%s\" does not name '%s'\n", bad[i].opts, rc, err.msg, bad[i].key);
    }
}

/* The example arch files of docs/MODEL.md parse and build a model (rlhf init --arch takes them). */
static void test_example_configs(void) {
    static const char *const files[] = {"examples/configs/countdown-arch-kvshare.json",
                                        "examples/configs/countdown-arch-local.json",
                                        "examples/configs/countdown-arch-kvshare-local.json"};
    static const int kv_layers[] = {5, 8, 5};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[4096];
        CU_ASSERT_EQUAL_FATAL(test_source_path(files[i], path, sizeof path), 0);
        json_error_t jerr;
        json_t *j = json_load_file(path, 0, &jerr);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        model_config c;
        rlhf_error err = {0};
        int rc = model_config_parse(&c, j, files[i], &err);
        if (rc) printf("\n  %s: %s\n", files[i], err.msg);
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_EQUAL(model_kv_layers(&c), kv_layers[i]);
        CU_ASSERT(c.has_layer_opts);
        json_decref(j);
    }
}

static int isa_ref(void) { return setenv("RLHF_ISA", "ref", 1); }
static int isa_avx2(void) { return setenv("RLHF_ISA", "avx2", 1); }
static int isa_avx512(void) { return setenv("RLHF_ISA", "avx512", 1); }
static int isa_clear(void) { return unsetenv("RLHF_ISA"); }

void infer_register_layer_opts(void) {
    static int (*const init[3])(void) = {isa_ref, isa_avx2, isa_avx512};
    for (int isa = MODEL_ISA_REF; isa <= MODEL_ISA_AVX512; isa++) {
        if (!model_isa_supported((model_isa)isa)) continue; /* test_sampler.c prints the note */
        char title[64];
        snprintf(title, sizeof title, "layer_opts[%s]", model_kernels_of((model_isa)isa)->name);
        CU_pSuite s = CU_add_suite(title, init[isa], isa_clear);
        CU_add_test(s, "kv_share / local / NoPE: one-step, decode and mixed prefills equal the reference forward",
                    test_kv_cache_layer_opts);
        CU_add_test(s, "kv_share / local / NoPE: greedy tokens and log-probs equal model-train's forward",
                    test_greedy_matches_train);
    }
    CU_pSuite s = CU_add_suite("layer_opts", NULL, NULL);
    CU_add_test(s, "reference forward equals the training forward for every option variant", test_reference_matches_train);
    CU_add_test(s, "KV cache bytes: producing layers only, rings of W + 31 for local layers", test_kv_bytes);
    CU_add_test(s, "checkpoint: no k/v tensors in sharing layers, config and weights round trip", test_checkpoint_round_trip);
    CU_add_test(s, "presets expand as documented, explicit lists round trip, no keys = plain model", test_config_presets);
    CU_add_test(s, "impossible combinations: one error naming the key", test_config_errors);
    CU_add_test(s, "examples/configs/countdown-arch-{kvshare,local,kvshare-local}.json parse", test_example_configs);
}
