/* tests/judge/test_judge.c — the LLM-judge client against a real HTTP peer: the fault-injecting server
 * (bin/fault_http_server, a separate process) answering or failing per request. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "rewards/judge/judge.h"
#include "rewards/rewards.h"
#include "tests/peer/peer.h"

/* ------------------------------------------------------------------------------------ helpers */

static int start_fault_server(peer *p, const char *extra1, const char *extra2, const char *extra3,
                              const char *extra4) {
    char bin[4096];
    peer_bin_path("fault_http_server", bin, sizeof bin);
    char *argv[16] = {bin, "--port", "0"};
    char *owned[4] = {0};
    int k = 3;
    const char *ex[] = {extra1, extra2, extra3, extra4};
    for (int i = 0; i < 4; i++)
        if (ex[i]) {
            /* each extra is "--flag value" or "--flag" */
            char *dup = owned[i] = strdup(ex[i]);
            char *sp = strchr(dup, ' ');
            if (sp) {
                *sp = 0;
                argv[k++] = dup;
                argv[k++] = sp + 1;
            } else {
                argv[k++] = dup;
            }
        }
    argv[k] = NULL;
    int rc = peer_start(p, argv, 10.0);
    for (int i = 0; i < 4; i++) free(owned[i]);
    return rc;
}

static judge_client *make_client(const char *base_url, int retries, int timeout_ms, int conc, FILE *log) {
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s", base_url);
    snprintf(cfg.model, sizeof cfg.model, "fault-injector");
    free(cfg.template_text);
    cfg.template_text = strdup("Q: {prompt}\nA: {completion}");
    cfg.retries = retries;
    cfg.call_timeout_ms = timeout_ms;
    cfg.concurrency = conc;
    cfg.backoff_ms = 10;
    cfg.backoff_max_ms = 40;
    judge_client *jc = NULL;
    rlhf_error err = {0};
    int rc = judge_client_create(&jc, &cfg, "test", log, &err);
    judge_config_free(&cfg);
    if (rc) fprintf(stderr, "judge_client_create: %s: %s\n", err.where, err.msg);
    return jc;
}

/* ------------------------------------------------------------------------------- pure helpers */

static void test_render(void) {
    json_t *rec = json_pack("{s:s, s:i, s:[i,i]}", "answer", "42", "n", 7, "list", 1, 2);
    char *missing = NULL;
    char *s = judge_render("P={prompt} C={completion} A={answer} N={n} L={list} {{x} {not a field} {}", "p1", "c1",
                           rec, &missing);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_STRING_EQUAL(s, "P=p1 C=c1 A=42 N=7 L=[1,2] {x} {not a field} {}");
    free(s);
    s = judge_render("{prompt} {reference}", "p", "c", rec, &missing);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(missing);
    CU_ASSERT_STRING_EQUAL(missing, "reference");
    free(missing);
    json_decref(rec);
}

static void test_extract(void) {
    double x = -1;
    CU_ASSERT_EQUAL(judge_extract_score("{\"score\": 7}", &x), 0);
    CU_ASSERT_DOUBLE_EQUAL(x, 7, 0);
    CU_ASSERT_EQUAL(judge_extract_score("```json\n{\"score\": 3.5}\n```", &x), 0);
    CU_ASSERT_DOUBLE_EQUAL(x, 3.5, 0);
    CU_ASSERT_EQUAL(judge_extract_score("Fine.\nScore: 8", &x), 0);
    CU_ASSERT_DOUBLE_EQUAL(x, 8, 0);
    CU_ASSERT_EQUAL(judge_extract_score("a score: 2 at first, final **Score:** 9/10", &x), 0);
    CU_ASSERT_DOUBLE_EQUAL(x, 9, 0); /* the last occurrence wins */
    CU_ASSERT_EQUAL(judge_extract_score("score=0.25", &x), 0);
    CU_ASSERT_DOUBLE_EQUAL(x, 0.25, 0);
    CU_ASSERT_EQUAL(judge_extract_score("no number here", &x), -1);
    CU_ASSERT_EQUAL(judge_extract_score("score: high", &x), -1);
    CU_ASSERT_EQUAL(judge_extract_score("the scores are 5", &x), -1);
}

static void test_config_errors(void) {
    rlhf_error err = {0};
    judge_config cfg;
    struct {
        const char *json, *where_part, *msg_part;
    } cases[] = {
        {"{\"model\":\"m\"}", "rewards[0]", "base_url"},
        {"{\"base_url\":\"http://127.0.0.1:1\"}", "rewards[0]", "model"},
        {"{\"base_url\":\"not a url\",\"model\":\"m\"}", "rewards[0].base_url", "not a valid URL"},
        {"{\"base_url\":\"ftp://h/x\",\"model\":\"m\"}", "rewards[0].base_url", "not http or https"},
        {"{\"base_url\":\"http://h\",\"model\":\"m\",\"retires\":3}", "rewards[0].retires", "unknown key"},
        {"{\"base_url\":\"http://h\",\"model\":\"m\",\"concurrency\":0}", "rewards[0].concurrency", "outside"},
        {"{\"base_url\":\"http://h\",\"model\":\"m\",\"score_min\":5,\"score_max\":5}", "rewards[0]", "score_max"},
        {"{\"base_url\":\"http://h\",\"model\":\"m\",\"response_format\":\"xml\"}", "rewards[0].response_format", "expected"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        judge_config_default(&cfg);
        json_t *j = json_loads(cases[i].json, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        int rc = judge_config_parse(&cfg, j, "config.json: rewards[0]", &err);
        CU_ASSERT_EQUAL(rc, RLHF_EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.where, cases[i].where_part));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, cases[i].msg_part) ? strstr(err.msg, cases[i].msg_part)
                                                                   : strstr(err.where, cases[i].msg_part));
        json_decref(j);
        judge_config_free(&cfg);
    }
    /* A missing API-key variable is a construction error naming the variable and the config path. */
    unsetenv("RLHF_TEST_NO_SUCH_KEY");
    reward_pipeline *p = NULL;
    int rc = reward_pipeline_create_str(
        &p, "[{\"type\":\"judge\",\"base_url\":\"http://127.0.0.1:9\",\"model\":\"m\",\"api_key_env\":\"RLHF_TEST_NO_SUCH_KEY\"}]",
        "cfg.json: rewards", &err);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "RLHF_TEST_NO_SUCH_KEY"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "cfg.json: rewards[0].api_key_env"));
}

/* ---------------------------------------------------------------------------- against a server */

static void test_scores_ok(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    judge_client *jc = make_client(srv.base_url, 1, 5000, 4, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(jc);
    enum { N = 11 };
    judge_item it[N];
    char comp[N][48];
    memset(it, 0, sizeof it);
    for (int i = 0; i < N; i++) {
        snprintf(comp[i], sizeof comp[i], "answer %d score=%d", i, i);
        it[i].prompt = "what?";
        it[i].completion = comp[i];
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(it[i].ok, 1);
        CU_ASSERT_DOUBLE_EQUAL(it[i].raw_score, i, 1e-12);
        CU_ASSERT_DOUBLE_EQUAL(it[i].score, i / 10.0, 1e-12);
        CU_ASSERT_EQUAL(it[i].attempts, 1);
    }
    json_t *st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "chat_requests")), N);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "rf_requests")), N); /* schema asked for */
    json_decref(st);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

static void test_each_fault(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, "--slow-ms 1500", NULL, NULL, NULL), 0);
    judge_client *jc = make_client(srv.base_url, 2, 400, 16, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(jc);
    struct {
        const char *completion;
        int ok;
        judge_reason reason;
        int attempts; /* expected HTTP attempts */
    } cases[] = {
        {"fault=429 retry_after=0 score=3", 0, JUDGE_ERR_HTTP_429, 3},
        {"fault=429 times=1 retry_after=1 score=4", 1, JUDGE_OK, 2},
        {"fault=500 score=3", 0, JUDGE_ERR_HTTP_5XX, 3},
        {"fault=503 times=2 retry_after=0 score=6", 1, JUDGE_OK, 3},
        {"fault=503 retry_after=0 score=6", 0, JUDGE_ERR_HTTP_5XX, 3},
        {"fault=slow score=3", 0, JUDGE_ERR_TIMEOUT, 3},
        {"fault=truncate score=3", 0, JUDGE_ERR_TRUNCATED, 3},
        {"fault=truncate times=1 score=2", 1, JUDGE_OK, 2},
        {"fault=nonjson score=3", 0, JUDGE_ERR_NON_JSON, 1},
        {"fault=wrongshape score=3", 0, JUDGE_ERR_BAD_SHAPE, 1},
        {"fault=outofrange score=3", 0, JUDGE_ERR_OUT_OF_RANGE, 1},
        {"fault=noscore", 0, JUDGE_ERR_NO_SCORE, 1},
        {"fault=big", 0, JUDGE_ERR_TOO_LARGE, 1},
        {"score=10", 1, JUDGE_OK, 1},
    };
    enum { N = sizeof cases / sizeof cases[0] };
    judge_item it[N];
    memset(it, 0, sizeof it);
    for (int i = 0; i < N; i++) {
        it[i].prompt = "grade";
        it[i].completion = cases[i].completion;
    }
    double t0 = rlhf_now();
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    double took = rlhf_now() - t0;
    uint64_t by_reason[JUDGE_N_REASONS] = {0};
    for (int i = 0; i < N; i++) {
        if (it[i].ok != cases[i].ok || it[i].reason != cases[i].reason || it[i].attempts != cases[i].attempts)
            fprintf(stderr, "case '%s': ok=%d reason=%s attempts=%d detail='%s'\n", cases[i].completion, it[i].ok,
                    judge_reason_name(it[i].reason), it[i].attempts, it[i].detail);
        CU_ASSERT_EQUAL(it[i].ok, cases[i].ok);
        CU_ASSERT_EQUAL(it[i].reason, cases[i].reason);
        CU_ASSERT_EQUAL(it[i].attempts, cases[i].attempts);
        if (!it[i].ok) {
            CU_ASSERT(isnan(it[i].score)); /* never a silent 0 */
            const char *name = judge_reason_name(cases[i].reason);
            CU_ASSERT_EQUAL(strncmp(it[i].detail, name, strlen(name)), 0);
            by_reason[it[i].reason]++;
        }
    }
    CU_ASSERT_DOUBLE_EQUAL(it[1].raw_score, 4, 0);
    CU_ASSERT_DOUBLE_EQUAL(it[3].raw_score, 6, 0);
    CU_ASSERT(took >= 1.0); /* the Retry-After: 1 was honoured before the successful retry */
    const judge_stats *s = judge_client_stats(jc);
    for (int r = 1; r < JUDGE_N_REASONS; r++) CU_ASSERT_EQUAL(s->errors_by_reason[r], by_reason[r]);
    CU_ASSERT_EQUAL(s->scored + s->errors, (uint64_t)N);
    judge_client_destroy(&jc);

    /* Connection refused: a closed port; retried, then an error with its reason. */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", peer_closed_port());
    jc = make_client(url, 2, 400, 4, NULL);
    judge_item one = {.prompt = "p", .completion = "c"};
    CU_ASSERT_EQUAL(judge_score(jc, &one, 1, NULL), 0);
    CU_ASSERT_EQUAL(one.ok, 0);
    CU_ASSERT_EQUAL(one.reason, JUDGE_ERR_CONNECT);
    CU_ASSERT_EQUAL(one.attempts, 3);
    CU_ASSERT_EQUAL(judge_client_stats(jc)->errors_by_reason[JUDGE_ERR_CONNECT], 1);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

static void test_response_format_fallback(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, "--no-response-format", NULL, NULL, NULL), 0);
    judge_client *jc = make_client(srv.base_url, 0, 5000, 4, NULL);
    enum { N = 8 };
    judge_item it[N];
    char comp[N][32];
    memset(it, 0, sizeof it);
    for (int i = 0; i < N; i++) {
        snprintf(comp[i], sizeof comp[i], "x%d score=%d", i, i + 1);
        it[i].prompt = "p";
        it[i].completion = comp[i];
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(it[i].ok, 1); /* retries = 0, yet the schema refusal did not use one up */
        CU_ASSERT_DOUBLE_EQUAL(it[i].raw_score, i + 1, 0);
    }
    CU_ASSERT_EQUAL(judge_client_stats(jc)->rf_fallbacks, 1);
    json_t *st = peer_stats(&srv);
    long rf_before = (long)json_integer_value(json_object_get(st, "rf_requests"));
    json_decref(st);
    /* Later batches use the text pattern straight away. */
    it[0].completion = "fresh score=2";
    CU_ASSERT_EQUAL(judge_score(jc, it, 1, NULL), 0);
    CU_ASSERT_EQUAL(it[0].ok, 1);
    st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "rf_requests")), rf_before);
    json_decref(st);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

static void test_cache(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    judge_client *jc = make_client(srv.base_url, 0, 5000, 4, NULL);
    enum { N = 12 };
    judge_item it[N];
    char comp[N][32];
    memset(it, 0, sizeof it);
    for (int i = 0; i < N; i++) {
        snprintf(comp[i], sizeof comp[i], "a%d score=%d", i % 4, i % 4); /* 4 distinct judgements */
        it[i].prompt = "p";
        it[i].completion = comp[i];
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    json_t *st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "chat_requests")), 4);
    json_decref(st);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(it[i].ok, 1);
        CU_ASSERT_DOUBLE_EQUAL(it[i].raw_score, i % 4, 0);
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0); /* all from the cache now */
    st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "chat_requests")), 4);
    json_decref(st);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(it[i].from_cache, 1);
        CU_ASSERT_DOUBLE_EQUAL(it[i].raw_score, i % 4, 0);
    }
    /* A different prompt is a different key. */
    it[0].prompt = "other";
    CU_ASSERT_EQUAL(judge_score(jc, it, 1, NULL), 0);
    CU_ASSERT_EQUAL(it[0].from_cache, 0);
    st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "chat_requests")), 5);
    json_decref(st);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

static void test_breaker(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
    snprintf(cfg.model, sizeof cfg.model, "m");
    cfg.retries = 0;
    cfg.concurrency = 1;
    cfg.breaker_failures = 3;
    cfg.breaker_cooldown_ms = 300;
    judge_client *jc = NULL;
    CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "breaker", NULL, NULL), 0);
    judge_config_free(&cfg);
    enum { N = 8 };
    judge_item it[N];
    char comp[N][40];
    memset(it, 0, sizeof it);
    for (int i = 0; i < N; i++) {
        snprintf(comp[i], sizeof comp[i], i < 3 ? "b%d fault=500" : "b%d score=1", i);
        it[i].prompt = "p";
        it[i].completion = comp[i];
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(it[i].ok, 0);
        CU_ASSERT_EQUAL(it[i].reason, i < 3 ? JUDGE_ERR_HTTP_5XX : JUDGE_ERR_CIRCUIT_OPEN);
    }
    CU_ASSERT_EQUAL(judge_client_stats(jc)->breaker_opens, 1);
    json_t *st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "chat_requests")), 3); /* failed fast: no calls */
    json_decref(st);
    /* After the cooldown one probe goes out; it succeeds, the circuit closes, the rest follow. */
    usleep(350 * 1000);
    CU_ASSERT_EQUAL(judge_score(jc, it + 3, N - 3, NULL), 0);
    for (int i = 3; i < N; i++) CU_ASSERT_EQUAL(it[i].ok, 1);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

static void test_deadline(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, "--slow-ms 3000", NULL, NULL, NULL), 0);
    judge_client *jc = make_client(srv.base_url, 5, 10000, 4, NULL);
    judge_item it = {.prompt = "p", .completion = "fault=slow"};
    it.deadline = rlhf_now() + 0.3;
    double t0 = rlhf_now();
    CU_ASSERT_EQUAL(judge_score(jc, &it, 1, NULL), 0);
    CU_ASSERT(rlhf_now() - t0 < 2.5); /* ended at the deadline, not at the server's 3 s */
    CU_ASSERT_EQUAL(it.ok, 0);
    CU_ASSERT_EQUAL(it.reason, JUDGE_ERR_TIMEOUT);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

/* 200 judgements with 30% of all requests failing at random: every item ends scored (with the right
 * score) or as an error with a reason; the counters add up. */
static void test_batch_under_faults(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, "--fault-rate 0.3", "--slow-ms 1500", "--seed 7", NULL), 0);
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
    snprintf(cfg.model, sizeof cfg.model, "m");
    cfg.retries = 3;
    cfg.call_timeout_ms = 500;
    cfg.concurrency = 32;
    cfg.backoff_ms = 20;
    cfg.backoff_max_ms = 200;
    cfg.breaker_failures = 1000;
    judge_client *jc = NULL;
    CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "batch", NULL, NULL), 0);
    judge_config_free(&cfg);
    enum { N = 200 };
    judge_item *it = calloc(N, sizeof *it);
    char (*comp)[40] = calloc(N, sizeof *comp);
    for (int i = 0; i < N; i++) {
        snprintf(comp[i], sizeof comp[i], "item %d score=%d", i, i % 11);
        it[i].prompt = "p";
        it[i].completion = comp[i];
    }
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    int n_ok = 0, n_err = 0;
    for (int i = 0; i < N; i++) {
        if (it[i].ok) {
            n_ok++;
            CU_ASSERT_DOUBLE_EQUAL(it[i].raw_score, i % 11, 0);
            CU_ASSERT_EQUAL(it[i].reason, JUDGE_OK);
        } else {
            n_err++;
            CU_ASSERT(it[i].reason > JUDGE_OK && it[i].reason < JUDGE_N_REASONS);
            CU_ASSERT(it[i].detail[0] != 0);
            CU_ASSERT(isnan(it[i].score));
        }
    }
    CU_ASSERT_EQUAL(n_ok + n_err, N);
    const judge_stats *s = judge_client_stats(jc);
    uint64_t sum = 0;
    for (int r = 0; r < JUDGE_N_REASONS; r++) sum += s->errors_by_reason[r];
    CU_ASSERT_EQUAL(sum, (uint64_t)n_err);
    CU_ASSERT(s->retries > 0);
    /* Non-retryable faults (non-JSON, wrong shape, out of range) are ~11% of attempts; retries recover
     * the rest, so well over half must be scored. */
    CU_ASSERT(n_ok >= 140);
    CU_ASSERT(n_err >= 5);
    json_t *st = peer_stats(&srv);
    long faults = 0, total = (long)json_integer_value(json_object_get(st, "chat_requests"));
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(st, "faults"), k, v) if (strcmp(k, "none")) faults += (long)json_integer_value(v);
    CU_ASSERT((uint64_t)total == s->http_requests);
    CU_ASSERT(faults > total / 5 && faults < total * 2 / 5); /* the injector really injected ~30% */
    fprintf(stderr, "\n  batch under 30%% faults: %d scored, %d errors, %ld requests, %ld faults\n", n_ok, n_err,
            total, faults);
    json_decref(st);
    free(it);
    free(comp);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

/* ------------------------------------------------------------------------------ API key hygiene */

static int file_contains(const char *path, const char *needle) {
    char *data = NULL;
    size_t len = 0;
    if (rlhf_read_file(path, &data, &len, NULL) != 0) return 0;
    int found = memmem(data, len, needle, strlen(needle)) != NULL;
    free(data);
    return found;
}

/* Each attempt is one request on the wire: the server counts what it received. A connection closed
 * without a reply (after earlier requests made it a reused one) is where libcurl would silently send the
 * POST again; with retries 3 each failing item costs exactly 4 requests. */
static void test_one_request_per_attempt(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
    snprintf(cfg.model, sizeof cfg.model, "m");
    cfg.retries = 3;
    cfg.backoff_ms = 1;
    cfg.backoff_max_ms = 5;
    cfg.concurrency = 2;
    cfg.breaker_failures = 1000;
    judge_client *jc = NULL;
    CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "count", NULL, NULL), 0);
    judge_config_free(&cfg);
    /* warm connections first, so that the faults below hit reused ones */
    judge_item warm[4] = {{.prompt = "p", .completion = "w1 score=3"}, {.prompt = "p", .completion = "w2 score=3"},
                          {.prompt = "p", .completion = "w3 score=3"}, {.prompt = "p", .completion = "w4 score=3"}};
    CU_ASSERT_EQUAL(judge_score(jc, warm, 4, NULL), 0);
    for (int i = 0; i < 4; i++) CU_ASSERT_EQUAL(warm[i].ok, 1);
    judge_item it[3] = {{.prompt = "p", .completion = "a fault=close"}, {.prompt = "p", .completion = "b fault=close"},
                        {.prompt = "p", .completion = "c fault=500 retry_after=0"}};
    CU_ASSERT_EQUAL(judge_score(jc, it, 3, NULL), 0);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(it[i].ok, 0);
        CU_ASSERT_EQUAL(it[i].attempts, 4);
    }
    json_t *st = peer_stats(&srv);
    json_t *byf = json_object_get(st, "faults");
    long closes = (long)json_integer_value(json_object_get(byf, "close"));
    long fives = (long)json_integer_value(json_object_get(byf, "500"));
    long chat = (long)json_integer_value(json_object_get(st, "chat_requests"));
    fprintf(stderr, "\n  server saw %ld chat requests: %ld closed without reply (2 items), %ld HTTP 500 (1 item)\n", chat,
            closes, fives);
    CU_ASSERT_EQUAL(closes, 8);
    CU_ASSERT_EQUAL(fives, 4);
    CU_ASSERT_EQUAL(chat, 4 + 12);
    CU_ASSERT_EQUAL((long)judge_client_stats(jc)->http_requests, 4 + 12);
    json_decref(st);
    judge_client_destroy(&jc);
    peer_stop(&srv);
}

/* base_url as the OpenAI SDK takes it (http://host:port/v1) or as a bare host; a wrong path is an error
 * naming the URL posted to; a redirect is its own class, not followed, not retried. */
static void test_base_url_and_redirect(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    const char *forms[3] = {"%s/v1", "%s/v1/", "%s/nope/v1"};
    for (int f = 0; f < 3; f++) {
        judge_config cfg;
        judge_config_default(&cfg);
        snprintf(cfg.base_url, sizeof cfg.base_url, forms[f], srv.base_url);
        snprintf(cfg.model, sizeof cfg.model, "m");
        cfg.retries = 2;
        cfg.backoff_ms = 1;
        judge_client *jc = NULL;
        CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "url", NULL, NULL), 0);
        judge_config_free(&cfg);
        judge_item it[2] = {{.prompt = "p", .completion = "u score=9"}, {.prompt = "p", .completion = "u fault=redirect"}};
        CU_ASSERT_EQUAL(judge_score(jc, it, f == 2 ? 1 : 2, NULL), 0);
        if (f < 2) {
            CU_ASSERT_EQUAL(it[0].ok, 1);
            CU_ASSERT_DOUBLE_EQUAL(it[0].raw_score, 9, 1e-12);
            CU_ASSERT_EQUAL(it[1].ok, 0);
            CU_ASSERT_EQUAL(it[1].reason, JUDGE_ERR_HTTP_3XX);
            CU_ASSERT_EQUAL(it[1].attempts, 1);
            CU_ASSERT_STRING_EQUAL(judge_reason_name(it[1].reason), "http_3xx");
            CU_ASSERT_PTR_NOT_NULL(strstr(it[1].detail, "/v2/chat/completions"));
            CU_ASSERT_PTR_NOT_NULL(strstr(it[1].detail, "not followed"));
        } else {
            char want[300];
            snprintf(want, sizeof want, "HTTP 404 from POST %s/nope/v1/chat/completions", srv.base_url);
            CU_ASSERT_EQUAL(it[0].reason, JUDGE_ERR_HTTP_4XX);
            if (!strstr(it[0].detail, want)) fprintf(stderr, "\n  detail: %s\n", it[0].detail);
            CU_ASSERT_PTR_NOT_NULL(strstr(it[0].detail, want));
        }
        judge_client_destroy(&jc);
    }
    json_t *st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "redirected")), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(st, "faults"), "redirect")), 2);
    json_decref(st);
    peer_stop(&srv);
}

/* `rlhf reward-test --jsonl` with a judge: a failed judgement shows status error with raw, normalized and
 * total null, never a 0 beside an ok; a good one its score. */
static void test_reward_test_shows_failures(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    char dir[] = "/tmp/rlhf-judge-rt-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char cfg_path[128], samples[128], out_path[128], bin[4096], cmd[8192];
    snprintf(cfg_path, sizeof cfg_path, "%s/r.json", dir);
    snprintf(samples, sizeof samples, "%s/s.jsonl", dir);
    snprintf(out_path, sizeof out_path, "%s/out.jsonl", dir);
    char cfg_json[512];
    snprintf(cfg_json, sizeof cfg_json,
             "[{\"type\":\"judge\",\"name\":\"j\",\"base_url\":\"%s/v1\",\"model\":\"m\",\"retries\":0,"
             "\"on_error\":\"skip_group\"}]", srv.base_url);
    const char *lines = "{\"prompt\":\"p\",\"completion\":\"rt score=7\"}\n{\"prompt\":\"p\",\"completion\":\"rt fault=400\"}\n";
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(cfg_path, cfg_json, strlen(cfg_json), NULL), 0);
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(samples, lines, strlen(lines), NULL), 0);
    peer_bin_path("rlhf", bin, sizeof bin);
    snprintf(cmd, sizeof cmd, "'%s' reward-test --jsonl '%s' '%s' > '%s' 2>/dev/null", bin, cfg_path, samples, out_path);
    CU_ASSERT_EQUAL(system(cmd), 0);
    FILE *f = fopen(out_path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[4096];
    json_t *o[2] = {0};
    for (int i = 0; i < 2 && fgets(line, sizeof line, f); i++) o[i] = json_loads(line, 0, NULL);
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o[0]);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o[1]);
    json_t *j0 = json_object_get(json_object_get(o[0], "sources"), "j"), *j1 = json_object_get(json_object_get(o[1], "sources"), "j");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j0, "status")), "ok");
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(j0, "raw")), 0.7, 1e-12);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o[1], "status")), "error");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j1, "status")), "error");
    CU_ASSERT(json_is_null(json_object_get(j1, "raw")));
    CU_ASSERT(json_is_null(json_object_get(j1, "normalized")));
    CU_ASSERT(json_is_null(json_object_get(o[1], "total")));
    CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(j1, "reason")), "http_4xx: HTTP 400 from POST"));
    json_decref(o[0]);
    json_decref(o[1]);
    unlink(cfg_path), unlink(samples), unlink(out_path), rmdir(dir);
    peer_stop(&srv);
}

/* The remote reward model (remote_rm) against the fault server's /get_reward: OpenRLHF's full URL and a
 * base URL both work; a 429 is rate limiting (http_429), retried after the server's Retry-After (1 s,
 * longer than the client's own 100 ms backoff); one request per attempt. */
static void test_remote_rm_rate_limit(void) {
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, NULL, NULL, NULL, NULL), 0);
    for (int form = 0; form < 2; form++) {
        char cfg_json[512];
        snprintf(cfg_json, sizeof cfg_json, "[{\"type\":\"remote_rm\",\"name\":\"rm\",\"url\":\"%s%s\",\"retries\":2}]",
                 srv.base_url, form ? "/get_reward" : "/");
        reward_pipeline *p = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(reward_pipeline_create_str(&p, cfg_json, "rm.json", &err), 0);
        char c0[64], c1[64];
        snprintf(c0, sizeof c0, " fault=429 times=1 retry_after=1 form%d score=0.25", form);
        snprintf(c1, sizeof c1, " form%d score=0.75", form);
        rlhf_reward_item items[2] = {{.prompt = "p", .completion = c0, .record_json = "{}", .group_id = -1},
                                     {.prompt = "p", .completion = c1, .record_json = "{}", .group_id = -1}};
        reward_scores sc = {0};
        double t0 = rlhf_now();
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
        double took = rlhf_now() - t0;
        CU_ASSERT(took >= 0.95); /* the Retry-After, not the 100 ms backoff */
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
        CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.25, 1e-12);
        CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], 0.75, 1e-12);
        reward_scores_free(&sc);
        /* still rate limited after the retries: http_429, each attempt one request */
        json_t *st = peer_stats(&srv);
        long before = (long)json_integer_value(json_object_get(st, "rm_requests"));
        json_decref(st);
        snprintf(c0, sizeof c0, " fault=429 times=99 retry_after=0 form%d", form);
        CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
        CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_ERROR);
        CU_ASSERT_EQUAL(strncmp(sc.status[0].reason, "http_429", 8), 0);
        st = peer_stats(&srv);
        CU_ASSERT_EQUAL((long)json_integer_value(json_object_get(st, "rm_requests")) - before, 3);
        json_decref(st);
        reward_scores_free(&sc);
        reward_pipeline_destroy(&p);
    }
    peer_stop(&srv);
}

/* No 8-character piece of KEY in S. */
static int holds_key_piece(const char *s, const char *key) {
    size_t kl = strlen(key);
    for (size_t i = 0; i + 8 <= kl; i++) {
        char piece[9];
        memcpy(piece, key + i, 8);
        piece[8] = 0;
        if (strstr(s, piece)) return 1;
    }
    return 0;
}

/* A server that echoes the Authorization header (or only the key, or only its first K characters)
 * behind 0..200 filler characters: every cut the client makes to a reason or a log line falls at every
 * offset of a 144-character key, and no piece of it survives in any reason or log line. */
static void test_key_masked_at_every_offset(void) {
    char key[145];
    for (int i = 0; i < 144; i++) key[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(i * 7 + 3) % 62];
    memcpy(key, "sk-proj-", 8);
    key[144] = 0;
    setenv("RLHF_TEST_JUDGE_KEY2", key, 1);
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, "--require-key-env RLHF_TEST_JUDGE_KEY2", NULL, NULL, NULL), 0);
    char log_path[] = "/tmp/rlhf-judge-mask-XXXXXX";
    int fd = mkstemp(log_path);
    CU_ASSERT_FATAL(fd >= 0);
    FILE *log = fdopen(fd, "w");
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
    snprintf(cfg.model, sizeof cfg.model, "m");
    snprintf(cfg.api_key_env, sizeof cfg.api_key_env, "RLHF_TEST_JUDGE_KEY2");
    cfg.retries = 0;
    cfg.concurrency = 8;
    cfg.breaker_failures = 100000;
    judge_client *jc = NULL;
    CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "mask", log, NULL), 0);
    judge_config_free(&cfg);
    enum { PADS = 201, CUTS = 144, N = PADS * 2 + CUTS * 2 };
    judge_item *it = calloc(N, sizeof *it);
    char (*text)[96] = calloc(N, sizeof *text);
    int k = 0;
    for (int pad = 0; pad < PADS; pad++) {
        snprintf(text[k], sizeof text[k], "fault=echo_auth pad=%d", pad), k++;
        snprintf(text[k], sizeof text[k], "fault=echo_auth bare=1 pad=%d", pad), k++;
    }
    for (int cut = 1; cut <= CUTS; cut++) {
        snprintf(text[k], sizeof text[k], "fault=echo_auth cut=%d", cut + 7), k++; /* "Bearer " + cut characters */
        snprintf(text[k], sizeof text[k], "fault=echo_auth bare=1 cut=%d", cut), k++;
    }
    for (int i = 0; i < N; i++) it[i].prompt = "p", it[i].completion = text[i];
    CU_ASSERT_EQUAL(judge_score(jc, it, N, NULL), 0);
    int leaks = 0, echoed = 0;
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(it[i].ok, 0);
        echoed += strstr(it[i].detail, "HTTP 401") != NULL;
        if (holds_key_piece(it[i].detail, key)) {
            if (leaks++ < 3) fprintf(stderr, "\n  leak in item %d (%s): %s\n", i, text[i], it[i].detail);
        }
    }
    CU_ASSERT_EQUAL(echoed, N);
    CU_ASSERT_EQUAL(leaks, 0);
    /* short prefixes are masked too (not only the 8-character pieces the check looks for) */
    CU_ASSERT_PTR_NOT_NULL(strstr(it[PADS * 2 + 2 * 7 + 1].detail, "[redacted]")); /* bare, 8 characters */
    fclose(log);
    judge_client_destroy(&jc);
    char *data = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL(rlhf_read_file(log_path, &data, &len, NULL), 0);
    CU_ASSERT(!data || !holds_key_piece(data, key));
    free(data);
    unlink(log_path);
    json_t *st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "auth_failures")), 0);
    json_decref(st);
    peer_stop(&srv);
    free(it);
    free(text);
    unsetenv("RLHF_TEST_JUDGE_KEY2");
}

static void test_api_key_never_leaks(void) {
    const char *key = "sk-test-9f8e7d6c5b4a-SECRET";
    setenv("RLHF_TEST_JUDGE_KEY", key, 1);
    peer srv;
    CU_ASSERT_EQUAL_FATAL(start_fault_server(&srv, "--require-key-env RLHF_TEST_JUDGE_KEY", NULL, NULL, NULL), 0);
    char dir[] = "/tmp/rlhf-judge-key-XXXXXX";
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    char log_path[256], cfg_path[256], err_path[256], out_path[256];
    snprintf(log_path, sizeof log_path, "%s/judge.log", dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/rewards.json", dir);
    snprintf(err_path, sizeof err_path, "%s/stderr.log", dir);
    snprintf(out_path, sizeof out_path, "%s/scores.txt", dir);

    /* 1. The client directly, logging retries to a file. */
    FILE *log = fopen(log_path, "w");
    judge_config cfg;
    judge_config_default(&cfg);
    snprintf(cfg.base_url, sizeof cfg.base_url, "%s", srv.base_url);
    snprintf(cfg.model, sizeof cfg.model, "m");
    snprintf(cfg.api_key_env, sizeof cfg.api_key_env, "RLHF_TEST_JUDGE_KEY");
    cfg.retries = 1;
    cfg.backoff_ms = 5;
    judge_client *jc = NULL;
    CU_ASSERT_EQUAL_FATAL(judge_client_create(&jc, &cfg, "keyed", log, NULL), 0);
    judge_config_free(&cfg);
    judge_item it[3] = {{.prompt = "p", .completion = "score=8"},
                        {.prompt = "p", .completion = "fault=echo_auth"}, /* 401 echoing the header */
                        {.prompt = "p", .completion = "fault=500 retry_after=0"}};
    CU_ASSERT_EQUAL(judge_score(jc, it, 3, NULL), 0);
    CU_ASSERT_EQUAL(it[0].ok, 1); /* the key was sent: the server demands it */
    CU_ASSERT_EQUAL(it[1].ok, 0);
    CU_ASSERT_EQUAL(it[1].reason, JUDGE_ERR_HTTP_4XX);
    CU_ASSERT_PTR_NOT_NULL(strstr(it[1].detail, "Incorrect API key")); /* the echo arrived ... */
    CU_ASSERT_PTR_NULL(strstr(it[1].detail, key));                      /* ... with the key masked */
    CU_ASSERT_PTR_NULL(strstr(it[2].detail, key));
    fclose(log);
    judge_client_destroy(&jc);
    CU_ASSERT(file_contains(log_path, "retry")); /* the log was written ... */
    CU_ASSERT(!file_contains(log_path, key));    /* ... without the key */
    json_t *st = peer_stats(&srv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st, "auth_failures")), 0);
    json_decref(st);

    /* 2. Through the reward pipeline, with its stderr captured: reasons and log lines. */
    char cfg_json[1024];
    snprintf(cfg_json, sizeof cfg_json,
             "[{\"type\":\"judge\",\"name\":\"judge_keyed\",\"base_url\":\"%s\",\"model\":\"m\","
             "\"api_key_env\":\"RLHF_TEST_JUDGE_KEY\",\"retries\":1,\"backoff_ms\":5}]",
             srv.base_url);
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(cfg_path, cfg_json, strlen(cfg_json), NULL), 0);
    fflush(stderr);
    int saved = dup(2);
    FILE *ef = fopen(err_path, "w");
    dup2(fileno(ef), 2);
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, cfg_json, "rewards.json", &err);
    reward_scores sc = {0};
    rlhf_reward_item items[3] = {
        {.prompt = "p", .completion = "pipe score=6", .record_json = "{}", .group_id = -1},
        {.prompt = "p", .completion = "pipe fault=echo_auth", .record_json = "{}", .group_id = -1},
        {.prompt = "p", .completion = "pipe fault=503 retry_after=0", .record_json = "{}", .group_id = -1},
    };
    if (rc == 0) rc = reward_pipeline_score(p, items, 3, &sc, &err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(ef);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.6, 1e-12);
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_ERROR);
    CU_ASSERT_EQUAL(strncmp(sc.status[2].reason, "http_5xx", 8), 0);
    CU_ASSERT_EQUAL(reward_pipeline_source_errors_total(p, 0), 2);
    FILE *of = fopen(out_path, "w");
    for (int i = 0; i < 3; i++) fprintf(of, "%d %g %s\n", sc.status[i].code, sc.raw[i], sc.status[i].reason);
    fclose(of);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    CU_ASSERT(file_contains(err_path, "judge[judge_keyed]"));

    /* 3. A program in the code-execution sandbox, started while the key is in our environment, does not
     *    see it (the sandbox gets a fixed, clean environment). */
    char prog[300], sb_out[300], bin[4096];
    snprintf(prog, sizeof prog, "%s/env.py", dir);
    snprintf(sb_out, sizeof sb_out, "%s/sandbox-env.txt", dir);
    const char *py = "import os\nprint(sorted(os.environ.items()))\n";
    CU_ASSERT_EQUAL(rlhf_write_file_atomic(prog, py, strlen(py), NULL), 0);
    peer_bin_path("rlhf", bin, sizeof bin);
    char sbcmd[8192];
    snprintf(sbcmd, sizeof sbcmd, "'%s' sandbox-run '%s' > '%s' 2>&1", bin, prog, sb_out);
    CU_ASSERT_EQUAL(system(sbcmd), 0);
    CU_ASSERT(file_contains(sb_out, "'PATH'")); /* the program ran and printed its environment */
    CU_ASSERT(!file_contains(sb_out, key));
    CU_ASSERT(!file_contains(sb_out, "RLHF_TEST_JUDGE_KEY"));

    /* 4. Nothing the run wrote holds the key. */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "grep -rqF -- '%s' '%s'", key, dir);
    CU_ASSERT_NOT_EQUAL(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "grep -rqF -- 'Incorrect API key' '%s'", dir); /* the grep can find things */
    CU_ASSERT_EQUAL(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
    peer_stop(&srv);
    unsetenv("RLHF_TEST_JUDGE_KEY");
}

int register_suites(void) {
    signal(SIGPIPE, SIG_IGN);
    CU_pSuite s = CU_add_suite("judge_unit", NULL, NULL);
    CU_add_test(s, "render", test_render);
    CU_add_test(s, "extract_score", test_extract);
    CU_add_test(s, "config_errors", test_config_errors);
    CU_pSuite h = CU_add_suite("judge_http", NULL, NULL);
    CU_add_test(h, "scores_ok", test_scores_ok);
    CU_add_test(h, "each_fault", test_each_fault);
    CU_add_test(h, "response_format_fallback", test_response_format_fallback);
    CU_add_test(h, "cache", test_cache);
    CU_add_test(h, "breaker", test_breaker);
    CU_add_test(h, "deadline", test_deadline);
    CU_add_test(h, "batch_200_under_30pct_faults", test_batch_under_faults);
    CU_add_test(h, "api_key_never_leaks", test_api_key_never_leaks);
    CU_add_test(h, "key_masked_at_every_offset", test_key_masked_at_every_offset);
    CU_add_test(h, "one_request_per_attempt", test_one_request_per_attempt);
    CU_add_test(h, "base_url_and_redirect", test_base_url_and_redirect);
    CU_add_test(h, "reward_test_shows_failures", test_reward_test_shows_failures);
    CU_add_test(h, "remote_rm_rate_limit", test_remote_rm_rate_limit);
    return 0;
}
