/* tests/serve/test_openai_sdk.c — `rlhf serve` driven by OpenAI's own node SDK (`openai` in .cache/npm,
 * installed by scripts/install-deps.sh; tests/serve/openai_sdk.js is the client program): the model list
 * and GET /v1/models/{id}, explicit nulls, assistant content null, streaming with and without
 * stream_options.include_usage, log-probs in OpenAI's shape, system_fingerprint, the legacy completions
 * route, and the refusals as the SDK raises them (400 naming the parameter, 404 model_not_found, 401
 * invalid_api_key without echoing the key). The served model is the judge model test_serve trains: it
 * answers "score: 7" greedily. Then: a non-loopback --host without --api-key-env does not start. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "rewards/rewards.h"
#include "tests/peer/peer.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

const char *serve_test_judge_model(void); /* tests/serve/test_serve.c */
void serve_add_openai_sdk_tests(CU_pSuite s);

static const char *KEY = "sk-rlhf-serve-sdk-test-0123456789abcdef";

static json_t *err_of(json_t *o, const char *name) { return json_object_get(json_object_get(o, name), "err"); }

static void test_openai_sdk(void) {
    setenv("RLHF_TEST_SERVE_KEY", KEY, 1);
    char bin[4096];
    peer_bin_path("rlhf", bin, sizeof bin);
    char *argv[] = {bin, "serve", "--port", "0", "--model", (char *)serve_test_judge_model(), "--api-key-env",
                    "RLHF_TEST_SERVE_KEY", NULL};
    peer srv;
    CU_ASSERT_EQUAL_FATAL(peer_start(&srv, argv, 20.0), 0);
    char npm[PATH_MAX], js[PATH_MAX], out[128];
    test_source_path(".cache/npm", npm, sizeof npm);
    test_source_path("tests/serve/openai_sdk.js", js, sizeof js);
    snprintf(out, sizeof out, "/tmp/rlhf-openai-sdk-%d.json", (int)getpid());
    const char *args[] = {"node", js, npm, srv.base_url, "judge-model", KEY, NULL};
    test_proc_opts o = {.out = out};
    int rc = test_proc_wait(test_proc_spawn_args("/usr/bin/env", "env", args, &o), 300);
    if (rc != 0) fprintf(stderr, "\n  node %s exited with %d: run scripts/install-deps.sh\n", js, rc);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_t *r = json_load_file(out, 0, NULL);
    unlink(out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    /* structured output through the SDK: an object with exactly score (0..10) and ok (boolean); an
     * unsupported keyword is the SDK's BadRequestError naming the schema path */
    json_t *jsr = json_object_get(r, "json_schema");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(jsr, "finish")), "stop");
    json_t *doc = json_loads(json_string_value(json_object_get(jsr, "content")) ? json_string_value(json_object_get(jsr, "content")) : "",
                             0, NULL);
    CU_ASSERT(json_is_object(doc) && json_object_size(doc) == 2);
    json_t *score = json_object_get(doc, "score");
    CU_ASSERT(json_is_integer(score) && json_integer_value(score) >= 0 && json_integer_value(score) <= 10);
    CU_ASSERT(json_is_boolean(json_object_get(doc, "ok")));
    json_decref(doc);
    json_t *bs = err_of(r, "bad_schema");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(bs, "status")), 400);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(bs, "param")), "response_format");
    CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(bs, "message")) ? json_string_value(json_object_get(bs, "message")) : "",
                                  "response_format.json_schema.schema.minimum: unsupported keyword"));
    /* models */
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(r, "list"), 0)), "judge-model");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "retrieve")), "judge-model");
    json_t *e = err_of(r, "retrieve_missing");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "status")), 404);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "code")), "model_not_found");
    /* a plain chat call with explicit nulls */
    json_t *c = json_object_get(r, "chat");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "content")), "score: 7\n");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "role")), "assistant");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "finish")), "stop");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "object")), "chat.completion");
    CU_ASSERT(json_is_string(json_object_get(c, "fp")));
    json_t *u = json_object_get(c, "usage");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(u, "total_tokens")),
                    json_integer_value(json_object_get(u, "prompt_tokens")) + json_integer_value(json_object_get(u, "completion_tokens")));
    CU_ASSERT(json_is_string(json_object_get(json_object_get(r, "null_content"), "ok")));
    /* streams: the same text; the usage only when asked, in a chunk with no choices */
    json_t *su = json_object_get(r, "stream_usage"), *sp = json_object_get(r, "stream_plain");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(su, "text")), "score: 7\n");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(sp, "text")), "score: 7\n");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(su, "usageChunks")), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(su, "usageChunkChoices")), 0);
    CU_ASSERT(json_equal(json_object_get(su, "usage"), u));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(sp, "usageChunks")), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(su, "chunks")), json_integer_value(json_object_get(sp, "chunks")) + 1);
    /* log-probs: one entry per token whose tokens spell the text, log-probs <= 0, bytes; top_logprobs 2
     * entries, greedy: the first is the token itself with its log-prob, the second no more probable */
    json_t *lp = json_object_get(r, "logprobs");
    CU_ASSERT_EQUAL(json_array_size(lp), 6);
    char spelled[64] = "";
    size_t i;
    json_t *t;
    json_array_foreach(lp, i, t) {
        strncat(spelled, json_string_value(json_object_get(t, "token")) ? json_string_value(json_object_get(t, "token")) : "?",
                sizeof spelled - strlen(spelled) - 1);
        CU_ASSERT(json_real_value(json_object_get(t, "logprob")) <= 0);
        CU_ASSERT_EQUAL(json_array_size(json_object_get(t, "bytes")), 1);
        CU_ASSERT(json_is_true(json_object_get(t, "top")));
    }
    CU_ASSERT_STRING_EQUAL(spelled, json_string_value(json_object_get(r, "logprobs_text")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "completion")), "score: 7\n");
    /* n = 3: three choices indexed 0, 1, 2; the prompt counted once, each completion's tokens added */
    json_t *n3 = json_object_get(r, "n3"), *idx = json_object_get(n3, "indexes"), *n3u = json_object_get(n3, "usage");
    CU_ASSERT_EQUAL(json_array_size(idx), 3);
    for (int k = 0; k < 3; k++) CU_ASSERT_EQUAL(json_integer_value(json_array_get(idx, (size_t)k)), k);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(n3, "texts")), 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(n3u, "prompt_tokens")), json_integer_value(json_object_get(u, "prompt_tokens")));
    CU_ASSERT(json_integer_value(json_object_get(n3u, "completion_tokens")) >= 3);
    e = err_of(r, "n_stream");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "status")), 400);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "param")), "n");
    /* refusals */
    e = err_of(r, "bad_temperature");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "status")), 400);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "param")), "temperature");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "kind")), "BadRequestError");
    e = err_of(r, "bad_max_tokens");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "status")), 400);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "param")), "max_tokens");
    e = err_of(r, "bad_model");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "status")), 404);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "code")), "model_not_found");
    CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(e, "message")), "gpt-4o"));
    e = err_of(r, "bad_key");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "status")), 401);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "code")), "invalid_api_key");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "kind")), "AuthenticationError");
    CU_ASSERT_PTR_NULL(strstr(json_string_value(json_object_get(e, "message")), "sk-wrong"));
    json_decref(r);
    /* remote_rm with and without api_key_env: without, 401; with, past the check (404: no reward model here) */
    for (int with_key = 0; with_key < 2; with_key++) {
        char cfg[512];
        snprintf(cfg, sizeof cfg, "[{\"type\":\"remote_rm\",\"url\":\"%s\",\"retries\":0%s}]", srv.base_url,
                 with_key ? ",\"api_key_env\":\"RLHF_TEST_SERVE_KEY\"" : "");
        reward_pipeline *p = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, cfg, "rm.json", &err), 0);
        rlhf_reward_item it = {.prompt = "p", .completion = "c", .record_json = "{}", .group_id = -1};
        reward_scores sc = {0};
        CU_ASSERT_EQUAL(reward_pipeline_score(p, &it, 1, &sc, &err), 0);
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
        CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[0].reason, with_key ? "HTTP 404" : "HTTP 401"));
        CU_ASSERT_PTR_NULL(strstr(sc.status[0].reason, KEY));
        reward_scores_free(&sc);
        reward_pipeline_destroy(&p);
    }
    /* without the key, plain HTTP is refused too (health stays open for probes) */
    char *body = NULL;
    CU_ASSERT_EQUAL(peer_http(&srv, "GET", "/v1/models", NULL, &body), 401);
    free(body);
    CU_ASSERT_EQUAL(peer_http(&srv, "GET", "/health", NULL, &body), 200);
    free(body);
    peer_stop(&srv);

    /* a non-loopback address needs a key: refused before listening, exit 2, naming the option */
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' serve --model '%s' --host 0.0.0.0 --port 0 2>&1", bin, serve_test_judge_model());
    FILE *p = popen(cmd, "r");
    char text[1024] = "";
    size_t n = p ? fread(text, 1, sizeof text - 1, p) : 0;
    text[n] = 0;
    int st = p ? pclose(p) : -1;
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "--api-key-env"));
    unsetenv("RLHF_TEST_SERVE_KEY");
}

void serve_add_openai_sdk_tests(CU_pSuite s) { CU_add_test(s, "openai_sdk", test_openai_sdk); }
