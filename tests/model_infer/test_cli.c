/* tests/model_infer/test_cli.c — `rlhf init` and `rlhf sample` as real processes (the rlhf binary beside
 * this test binary: BUILD/tests/../bin/rlhf): init writes exactly the seeded random model; sample's JSONL
 * equals an in-process sampler_run with the documented seeds; bad input exits non-zero with one error
 * line naming what and where, and init leaves no output file. */
#include <CUnit/CUnit.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "model/model.h"
#include "tests/model_infer/infer_test.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char rlhf_bin[PATH_MAX + 32];
static char dir[64];

static int run_rlhf(const char *const *args, const char *out_path, const char *err_path) {
    static const char *const env[] = {"OMP_NUM_THREADS=2", NULL};
    test_proc_opts o = {.out = out_path ? out_path : "/dev/null", .err = err_path ? err_path : "/dev/null", .env = env};
    return test_proc_run_args(rlhf_bin, "rlhf", args, &o, 0);
}

static const char *in_dir(const char *name) {
    static char buf[32][256]; /* rotating: argument arrays keep pointers to earlier results */
    static int i;
    i = (i + 1) % 32;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* stderr must be exactly one line containing each needle */
static void expect_one_error_line(const char *err_path, const char *n1, const char *n2) {
    char *s;
    size_t len;
    rlhf_error e = {0};
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(err_path, &s, &len, &e), 0);
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += s[i] == '\n';
    CU_ASSERT_EQUAL(lines, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(s, "error"));
    if (n1 && !strstr(s, n1)) printf("\n  missing '%s' in: %s", n1, s);
    CU_ASSERT(!n1 || strstr(s, n1));
    CU_ASSERT(!n2 || strstr(s, n2));
    free(s);
}

static int suite_init(void) {
    if (test_bin_path("rlhf", rlhf_bin, sizeof rlhf_bin) || access(rlhf_bin, X_OK) != 0) {
        fprintf(stderr, "test_model_infer: %s not built\n", rlhf_bin);
        return -1;
    }
    snprintf(dir, sizeof dir, "/tmp/rlhf_infer_cli_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int suite_cleanup(void) {
    test_remove_tree(dir);
    return 0;
}

static const char *arch_json = "{\"dim\": 32, \"n_layers\": 2, \"n_heads\": 4, \"n_kv_heads\": 2, \"ffn_dim\": 48,"
                               " \"vocab_size\": 259, \"max_seq_len\": 24, \"tie_embeddings\": true}";

static void test_init(void) {
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("arch.json"), arch_json), 0);
    const char *args[] = {"init", "--arch", in_dir("arch.json"), "--out", in_dir("m.safetensors"), "--seed", "42", NULL};
    CU_ASSERT_EQUAL_FATAL(run_rlhf(args, NULL, in_dir("init.err")), 0);
    model *m = NULL, *want = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_load(&m, in_dir("m.safetensors"), NULL, &err), 0);
    CU_ASSERT_EQUAL(m->cfg.dim, 32);
    CU_ASSERT_EQUAL(m->cfg.n_kv_heads, 2);
    CU_ASSERT_EQUAL(m->cfg.tie_embeddings, 1);
    CU_ASSERT_EQUAL_FATAL(model_create(&want, &m->cfg, &err), 0);
    model_init_random(want, 42);
    CU_ASSERT_EQUAL(memcmp(want->params_mem, m->params_mem, m->n_params * sizeof(float)), 0);
    model_destroy(&m);
    model_destroy(&want);

    /* bad architectures: one line naming the key, no output file */
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("bad.json"), "{\"dim\": 32, \"n_layer\": 2}"), 0);
    const char *bad[] = {"init", "--arch", in_dir("bad.json"), "--out", in_dir("bad.safetensors"), NULL};
    CU_ASSERT_NOT_EQUAL(run_rlhf(bad, NULL, in_dir("bad.err")), 0);
    expect_one_error_line(in_dir("bad.err"), "n_layer", "bad.json");
    CU_ASSERT_EQUAL(access(in_dir("bad.safetensors"), F_OK), -1);
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("bad.json"), "{\"dim\": 30, \"n_layers\": 1, \"n_heads\": 4, \"ffn_dim\": 8,"
                                                         " \"vocab_size\": 259, \"max_seq_len\": 8}"), 0);
    CU_ASSERT_NOT_EQUAL(run_rlhf(bad, NULL, in_dir("bad.err")), 0);
    expect_one_error_line(in_dir("bad.err"), "not divisible", NULL);
    CU_ASSERT_EQUAL(access(in_dir("bad.safetensors"), F_OK), -1);
    /* a vocabulary the byte-level tokenizer cannot use: rejected by init, naming the arch file */
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("bad.json"), "{\"dim\": 32, \"n_layers\": 1, \"n_heads\": 4, \"ffn_dim\": 8,"
                                                         " \"vocab_size\": 100, \"max_seq_len\": 8}"), 0);
    CU_ASSERT_NOT_EQUAL(run_rlhf(bad, NULL, in_dir("bad.err")), 0);
    expect_one_error_line(in_dir("bad.err"), "bad.json: vocab_size 100", "259");
    CU_ASSERT_EQUAL(access(in_dir("bad.safetensors"), F_OK), -1);
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("bad.json"), "{\"dim\": 32,"), 0);
    CU_ASSERT_NOT_EQUAL(run_rlhf(bad, NULL, in_dir("bad.err")), 0);
    expect_one_error_line(in_dir("bad.err"), "bad.json", NULL);
    const char *missing[] = {"init", "--out", in_dir("x.safetensors"), NULL};
    CU_ASSERT_NOT_EQUAL(run_rlhf(missing, NULL, in_dir("bad.err")), 0);
    CU_ASSERT_EQUAL(access(in_dir("x.safetensors"), F_OK), -1);
}

static void test_sample_matches_library(void) {
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("p.jsonl"), "{\"prompt\": \"ab\", \"id\": \"first\"}\n\n{\"prompt\": \"xyz\"}\n"),
                          0);
    /* 20 one-byte stop strings (bytes 0x80..0x93: halves of UTF-8 characters to the JSON output), so that
     * some samples of this random model end at one */
    static char stops_buf[20][2];
    static const char *stops[20];
    const char *args[18 + 40 + 1] = {"sample", "--model", in_dir("m.safetensors"), "--prompts", in_dir("p.jsonl"), "-n",
                                 "3", "--max-tokens", "10", "--seed", "7", "--temperature", "0.9", "--top-k", "50",
                                 "--min-p", "0.05", "--include-stop"};
    int na = 18;
    for (int i = 0; i < 20; i++) {
        stops_buf[i][0] = (char)(0x80 + i);
        stops[i] = stops_buf[i];
        args[na++] = "--stop";
        args[na++] = stops[i];
    }
    args[na] = NULL;
    CU_ASSERT_EQUAL_FATAL(run_rlhf(args, in_dir("out.jsonl"), in_dir("sample.err")), 0);
    /* the same requests in-process */
    model *m = NULL;
    tokenizer *tok = NULL;
    sampler *s = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(model_load(&m, in_dir("m.safetensors"), NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, m->cfg.vocab_size, &err), 0);
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, m, 4, &err), 0);
    const char *texts[2] = {"ab", "xyz"};
    int32_t *ids[2];
    int n_ids[2];
    sample_request rq[6];
    sample_result res[6];
    for (int p = 0; p < 2; p++) {
        CU_ASSERT_EQUAL_FATAL(tokenizer_encode(tok, texts[p], strlen(texts[p]), 1, &ids[p], &n_ids[p], &err), 0);
        for (int k = 0; k < 3; k++) {
            sample_request *r = &rq[p * 3 + k];
            r->prompt = ids[p];
            r->prompt_len = n_ids[p];
            r->params = sample_params_default();
            r->params.temperature = 0.9f;
            r->params.top_k = 50;
            r->params.min_p = 0.05f;
            r->params.max_new_tokens = 10;
            r->params.seed = 7ull ^ ((uint64_t)(p * 3 + k) * 0x9E3779B97F4A7C15ull);
            r->params.stop_ids = tok->eos_ids;
            r->params.n_stop_ids = tok->n_eos_ids;
            r->params.stop_strings = stops;
            r->params.n_stop_strings = 20;
            r->params.include_stop = 1;
        }
    }
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, rq, 6, res, &err), 0);
    FILE *f = fopen(in_dir("out.jsonl"), "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[65536];
    int n = 0, stopped = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        CU_ASSERT_FATAL(n < 6);
        const sample_result *r = &res[n];
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "prompt_index")), n / 3);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "sample_index")), n % 3);
        if (n < 3) CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "id")), "first");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "finish_reason")), sample_finish_name(r->finish));
        char *want = rlhf_utf8_sanitize(r->text, r->text_len);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "text")), want);
        free(want);
        if (r->stop_string >= 0) {
            char *want_stop = rlhf_utf8_sanitize(stops[r->stop_string], 1);
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "stop")), want_stop);
            free(want_stop);
            stopped++;
        } else {
            CU_ASSERT_PTR_NULL(json_object_get(j, "stop"));
        }
        json_t *toks = json_object_get(j, "tokens"), *lps = json_object_get(j, "logprobs"),
               *slps = json_object_get(j, "sampling_logprobs");
        CU_ASSERT_EQUAL_FATAL(json_array_size(toks), (size_t)r->n_tokens);
        for (int t = 0; t < r->n_tokens; t++) {
            CU_ASSERT_EQUAL(json_integer_value(json_array_get(toks, t)), r->tokens[t]);
            CU_ASSERT(fabs(json_real_value(json_array_get(lps, t)) - r->logprobs[t]) < 1e-6);
            CU_ASSERT(fabs(json_real_value(json_array_get(slps, t)) - r->sampling_logprobs[t]) < 1e-6);
        }
        json_decref(j);
        n++;
    }
    fclose(f);
    CU_ASSERT_EQUAL(n, 6);
    printf(" (%d of 6 samples ended at a stop string) ", stopped);
    CU_ASSERT(stopped >= 1);
    for (int i = 0; i < 6; i++) sample_result_free(&res[i]);
    free(ids[0]);
    free(ids[1]);
    sampler_destroy(&s);
    tokenizer_destroy(&tok);
    model_destroy(&m);
}

static void test_sample_bad_input(void) {
    /* max_seq_len is 24: a 23-byte prompt plus BOS does not leave room */
    const char *too_long[] = {"sample", "--model", in_dir("m.safetensors"), "--prompt", "abcdefghijklmnopqrstuvw", NULL};
    CU_ASSERT_EQUAL(run_rlhf(too_long, NULL, in_dir("e1")), 1);
    expect_one_error_line(in_dir("e1"), "max_seq_len is 24", "--prompt");
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("bad.jsonl"), "{\"prompt\": \"ok\"}\n{\"text\": \"no prompt key\"}\n"), 0);
    const char *bad_file[] = {"sample", "--model", in_dir("m.safetensors"), "--prompts", in_dir("bad.jsonl"), NULL};
    CU_ASSERT_EQUAL(run_rlhf(bad_file, NULL, in_dir("e2")), 1);
    expect_one_error_line(in_dir("e2"), "bad.jsonl:2", "prompt");
    const char *no_model[] = {"sample", "--model", in_dir("none.safetensors"), "--prompt", "a", NULL};
    CU_ASSERT_EQUAL(run_rlhf(no_model, NULL, in_dir("e3")), 1);
    expect_one_error_line(in_dir("e3"), "none.safetensors", NULL);
    const char *bad_opt[] = {"sample", "--model", in_dir("m.safetensors"), "--prompt", "a", "--top-p", "1.5", NULL};
    CU_ASSERT_EQUAL(run_rlhf(bad_opt, NULL, in_dir("e4")), 2);
    expect_one_error_line(in_dir("e4"), "--top-p", NULL);
    const char *bad_min_p[] = {"sample", "--model", in_dir("m.safetensors"), "--prompt", "a", "--min-p", "1.5", NULL};
    CU_ASSERT_EQUAL(run_rlhf(bad_min_p, NULL, in_dir("e4")), 2);
    expect_one_error_line(in_dir("e4"), "--min-p", NULL);
    const char *bad_min_p2[] = {"sample", "--model", in_dir("m.safetensors"), "--prompt", "a", "--min-p", "x", NULL};
    CU_ASSERT_EQUAL(run_rlhf(bad_min_p2, NULL, in_dir("e4")), 2);
    expect_one_error_line(in_dir("e4"), "--min-p", NULL);
    /* a corrupt checkpoint: truncated */
    char *data;
    size_t len;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(in_dir("m.safetensors"), &data, &len, &err), 0);
    FILE *f = fopen(in_dir("cut.safetensors"), "wb");
    fwrite(data, 1, len - 10, f);
    fclose(f);
    free(data);
    const char *cut[] = {"sample", "--model", in_dir("cut.safetensors"), "--prompt", "a", NULL};
    CU_ASSERT_EQUAL(run_rlhf(cut, NULL, in_dir("e5")), 1);
    expect_one_error_line(in_dir("e5"), "cut.safetensors", "truncated");
}

/* Copies SRC to DST with element `index` of tensor `name` set to `value` (a hand patch: the header JSON
 * read with jansson, the float written at its data offset). */
static void patch_tensor(const char *src, const char *dst, const char *name, size_t index, float value) {
    char *data;
    size_t len;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(src, &data, &len, &err), 0);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)(unsigned char)data[i] << (8 * i);
    json_error_t je;
    json_t *h = json_loadb(data + 8, hl, 0, &je);
    CU_ASSERT_FATAL(h != NULL);
    json_t *t = json_object_get(h, name);
    CU_ASSERT_FATAL(t != NULL);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(t, "dtype")), "F32");
    size_t begin = (size_t)json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    memcpy(data + 8 + hl + begin + 4 * index, &value, 4);
    json_decref(h);
    FILE *f = fopen(dst, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
    free(data);
}

/* NaN or Inf in a checkpoint: `rlhf sample` and `rlhf score` refuse it at load with one line naming the
 * tensor (they printed "logprob": null / dropped log-probs and exited 0, with undefined behaviour in
 * the float-to-int conversions). */
static void test_non_finite_checkpoint(void) {
    const char *tensors[] = {"model.layers.0.mlp.down_proj.weight", "model.norm.weight",
                             "model.embed_tokens.weight"};
    const float values[] = {NAN, INFINITY, -INFINITY};
    CU_ASSERT_EQUAL_FATAL(write_text(in_dir("score.jsonl"), "{\"prompt\":\"ab\",\"completion\":\"cd\"}\n"), 0);
    for (int i = 0; i < 3; i++) {
        patch_tensor(in_dir("m.safetensors"), in_dir("nan.safetensors"), tensors[i], 5, values[i]);
        const char *sample[] = {"sample", "--model", in_dir("nan.safetensors"), "--prompt", "a", NULL};
        CU_ASSERT_EQUAL(run_rlhf(sample, in_dir("nan.out"), in_dir("nan.err")), 1);
        expect_one_error_line(in_dir("nan.err"), tensors[i], "non-finite value");
        const char *score[] = {"score", "--model", in_dir("nan.safetensors"), "--data", in_dir("score.jsonl"), NULL};
        CU_ASSERT_EQUAL(run_rlhf(score, in_dir("nan.out"), in_dir("nan.err")), 1);
        expect_one_error_line(in_dir("nan.err"), tensors[i], "non-finite value");
    }
    /* the unpatched file scores: the refusal is the patch's doing */
    const char *score[] = {"score", "--model", in_dir("m.safetensors"), "--data", in_dir("score.jsonl"), NULL};
    CU_ASSERT_EQUAL(run_rlhf(score, in_dir("nan.out"), in_dir("nan.err")), 0);
}

void infer_register_cli(void) {
    CU_pSuite s = CU_add_suite("cli", suite_init, suite_cleanup);
    CU_add_test(s, "rlhf init writes the seeded model; bad arch rejected", test_init);
    CU_add_test(s, "rlhf sample JSONL equals in-process sampling", test_sample_matches_library);
    CU_add_test(s, "rlhf sample bad input", test_sample_bad_input);
    CU_add_test(s, "rlhf sample and score refuse NaN/Inf weights naming the tensor", test_non_finite_checkpoint);
}
