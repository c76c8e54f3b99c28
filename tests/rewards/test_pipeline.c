/* tests/rewards/test_pipeline.c — composition (weights, normalisation, error policies), config
 * errors naming the JSON path, and the built-in sources. */
#include <math.h>
#include <string.h>

#include "tests/rewards/rewards_test.h"

static reward_pipeline *make(const char *json) {
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", &err);
    if (rc) fprintf(stderr, "unexpected config error: %s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return p;
}

/* Expects creation to fail with `where` containing want_where and msg containing want_msg. */
static void expect_config_error(const char *json, const char *want_where, const char *want_msg) {
    reward_pipeline *p = NULL;
    rlhf_error err = {0};
    int rc = reward_pipeline_create_str(&p, json, "cfg: rewards", &err);
    CU_ASSERT(rc < 0);
    CU_ASSERT_PTR_NULL(p);
    if (!strstr(err.where, want_where) || !strstr(err.msg, want_msg))
        fprintf(stderr, "config %s: got '%s: %s', want where~'%s' msg~'%s'\n", json, err.where, err.msg, want_where,
                want_msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, want_where));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want_msg));
    reward_pipeline_destroy(&p);
}

static void test_config_errors(void) {
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\",\"wieght\":1}]", "cfg: rewards[0].wieght", "unknown key");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\",\"weight\":-0.5}]", "rewards[0].weight", ">= 0");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\"},{\"type\":\"no_such\"}]", "rewards[1].type",
                        "unknown reward source type 'no_such'");
    expect_config_error("[{\"weight\":1}]", "rewards[0].type", "required");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"(\"}]", "rewards[0].pattern", "bad regular expression");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\",\"on_error\":\"ignore\"}]", "rewards[0].on_error",
                        "skip_group");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\"},{\"type\":\"regex\",\"pattern\":\"b\"}]",
                        "rewards[1].name", "duplicate");
    expect_config_error("[{\"type\":\"length_penalty\"}]", "rewards[0].budget", "required");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\",\"max_error_rate\":1.5}]", "rewards[0].max_error_rate",
                        "[0, 1]");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\",\"error_window\":0}]", "rewards[0].error_window",
                        "1..1000000");
    expect_config_error("[{\"type\":\"exact_match\",\"extract\":\"first_word\"}]", "rewards[0].extract", "last_line");
    expect_config_error("{\"type\":\"regex\"}", "cfg: rewards", "array");
    expect_config_error("[{\"type\":\"regex\",", "cfg: rewards:", "invalid JSON");
    expect_config_error("[]", "cfg: rewards", "at least one");
    expect_config_error("[{\"type\":\"regex\",\"pattern\":\"a\",\"timeout_ms\":0}]", "rewards[0].timeout_ms", "1..");
}

static void test_weights_and_totals(void) {
    reward_pipeline *p = make("[{\"type\":\"regex\",\"name\":\"has_a\",\"pattern\":\"a\",\"weight\":0.5},"
                              " {\"type\":\"regex\",\"name\":\"has_b\",\"pattern\":\"b\",\"weight\":2,"
                              "  \"score_match\":3,\"score_no_match\":-1}]");
    CU_ASSERT_EQUAL(reward_pipeline_n_sources(p), 2);
    CU_ASSERT_STRING_EQUAL(reward_pipeline_source_name(p, 1), "has_b");
    CU_ASSERT_DOUBLE_EQUAL(reward_pipeline_source_weight(p, 0), 0.5, 1e-12);
    rlhf_reward_item items[3] = {rt_item("a", NULL), rt_item("b", NULL), rt_item("ab", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    /* raw (item, source) and totals: 0.5*[a] + 2*(3 or -1) */
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0 * 2 + 0], 1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0 * 2 + 1], -1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[0], 0.5 - 2.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[1], 0.0 + 6.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[2], 0.5 + 6.0, 1e-12);
    for (int i = 0; i < 3; i++) CU_ASSERT_EQUAL(sc.item_status[i].code, RLHF_REWARD_OK);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    CU_ASSERT_PTR_NULL(p);
}

static void test_normalisation(void) {
    reward_pipeline *p = make("[{\"type\":\"length_penalty\",\"unit\":\"chars\",\"budget\":0,\"penalty_per_unit\":1,"
                              "  \"normalize\":\"batch\",\"weight\":2},"
                              " {\"type\":\"length_penalty\",\"name\":\"run\",\"unit\":\"chars\",\"budget\":0,"
                              "  \"penalty_per_unit\":1,\"normalize\":\"running\"}]");
    rlhf_reward_item items[4] = {rt_item("a", NULL), rt_item("aaa", NULL), rt_item("aaaaa", NULL), rt_item("aaaaaaa", NULL)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 4, &sc, &err), 0);
    /* raw -1,-3,-5,-7: mean -4, population std sqrt(5) */
    double sd = sqrt(5.0);
    for (int i = 0; i < 4; i++) {
        double raw = -(1.0 + 2 * i);
        CU_ASSERT_DOUBLE_EQUAL(sc.raw[i * 2], raw, 1e-12);
        CU_ASSERT_DOUBLE_EQUAL(sc.normalized[i * 2], (raw + 4.0) / sd, 1e-9);
        CU_ASSERT_DOUBLE_EQUAL(sc.normalized[i * 2 + 1], (raw + 4.0) / sd, 1e-9); /* running == batch on first call */
        CU_ASSERT_DOUBLE_EQUAL(sc.total[i], 3.0 * (raw + 4.0) / sd, 1e-9);
    }
    /* second call, one item of raw -1: running stats now over -1,-3,-5,-7,-1 */
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 1, &sc, &err), 0);
    double xs[5] = {-1, -3, -5, -7, -1}, m = 0, v = 0;
    for (int i = 0; i < 5; i++) m += xs[i] / 5;
    for (int i = 0; i < 5; i++) v += (xs[i] - m) * (xs[i] - m) / 5;
    CU_ASSERT_DOUBLE_EQUAL(sc.normalized[1], (-1 - m) / sqrt(v), 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(sc.normalized[0], 0.0, 1e-12); /* batch of one has no spread */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* A record that is not a JSON object makes exact_match report ERROR for that item. */
#define BAD_RECORD "not json"

static void test_on_error_zero(void) {
    reward_pipeline *p = make("[{\"type\":\"exact_match\",\"weight\":1,\"on_error\":\"zero\"},"
                              " {\"type\":\"regex\",\"pattern\":\"4\",\"weight\":0.25}]");
    rlhf_reward_item items[2] = {rt_item("42", "{\"answer\":\"42\"}"), rt_item("42", BAD_RECORD)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.status[0].code, RLHF_REWARD_OK);
    CU_ASSERT_EQUAL(sc.status[2].code, RLHF_REWARD_ERROR);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[2].reason, "record_json"));
    CU_ASSERT_DOUBLE_EQUAL(sc.total[0], 1.25, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[1], 0.25, 1e-12);
    CU_ASSERT_EQUAL(sc.item_status[1].code, RLHF_REWARD_OK);
    CU_ASSERT_EQUAL(sc.source_errors[0], 1);
    CU_ASSERT_EQUAL(reward_pipeline_source_errors_total(p, 0), 1);
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 2, &sc, &err), 0);
    CU_ASSERT_EQUAL(reward_pipeline_source_errors_total(p, 0), 2);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_on_error_skip_group(void) {
    reward_pipeline *p = make("[{\"type\":\"exact_match\",\"on_error\":\"skip_group\"}]");
    rlhf_reward_item items[4] = {rt_item("1", BAD_RECORD), rt_item("1", "{\"answer\":1}"), rt_item("1", "{\"answer\":1}"),
                                 rt_item("1", "{\"answer\":1}")};
    items[0].group_id = items[1].group_id = 7;
    items[2].group_id = 8;
    items[3].group_id = -1;
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 4, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.item_status[0].code, RLHF_REWARD_SKIP);
    CU_ASSERT_EQUAL(sc.item_status[1].code, RLHF_REWARD_SKIP);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.item_status[1].reason, "exact_match"));
    CU_ASSERT_EQUAL(sc.item_status[2].code, RLHF_REWARD_OK);
    CU_ASSERT_EQUAL(sc.item_status[3].code, RLHF_REWARD_OK);
    CU_ASSERT_DOUBLE_EQUAL(sc.total[2], 1.0, 1e-12);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

/* Without on_error the policy is skip_group: a failed scoring is neither trained on nor a silent 0. */
static void test_on_error_default_skips(void) {
    reward_pipeline *p = make("[{\"type\":\"exact_match\"}]");
    rlhf_reward_item items[3] = {rt_item("1", BAD_RECORD), rt_item("1", "{\"answer\":1}"), rt_item("1", "{\"answer\":1}")};
    items[0].group_id = items[1].group_id = 3;
    items[2].group_id = 4;
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_EQUAL(sc.source_errors[0], 1);
    CU_ASSERT_EQUAL(sc.item_status[0].code, RLHF_REWARD_SKIP);
    CU_ASSERT_EQUAL(sc.item_status[1].code, RLHF_REWARD_SKIP);
    CU_ASSERT_EQUAL(sc.item_status[2].code, RLHF_REWARD_OK);
    int64_t window = 0;
    CU_ASSERT_DOUBLE_EQUAL(reward_pipeline_source_max_error_rate(p, 0, &window), 0.5, 0);
    CU_ASSERT_EQUAL(window, 200);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
    p = make("[{\"type\":\"exact_match\",\"max_error_rate\":0.1,\"error_window\":30}]");
    CU_ASSERT_DOUBLE_EQUAL(reward_pipeline_source_max_error_rate(p, 0, &window), 0.1, 0);
    CU_ASSERT_EQUAL(window, 30);
    reward_pipeline_destroy(&p);
}

/* Metric names group reasons by kind: the words before ':' or '(', digits dropped. */
static void test_reason_kinds(void) {
    static const char *const cases[][2] = {
        {"timeout: no reply within 2000 ms", "timeout"},
        {"process plugin exited (status 3)", "process_plugin_exited"},
        {"sandbox_error: cannot fork", "sandbox_error"},
        {"result 3 has no numeric \"score\"", "result_has_no_numeric_score"},
        {"Non-finite score", "non_finite_score"},
        {"", "unknown"},
        {"(503)", "unknown"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char k[48];
        reward_reason_kind(cases[i][0], k, sizeof k);
        CU_ASSERT_STRING_EQUAL(k, cases[i][1]);
    }
    char small[8];
    reward_reason_kind("process plugin exited", small, sizeof small);
    CU_ASSERT_STRING_EQUAL(small, "process");
}

static void test_on_error_fail(void) {
    reward_pipeline *p = make("[{\"type\":\"exact_match\",\"name\":\"strict\",\"on_error\":\"fail\"}]");
    rlhf_reward_item items[2] = {rt_item("1", "{\"answer\":1}"), rt_item("1", BAD_RECORD)};
    reward_scores sc = {0};
    rlhf_error err = {0};
    int rc = reward_pipeline_score(p, items, 2, &sc, &err);
    CU_ASSERT(rc < 0);
    CU_ASSERT_STRING_EQUAL(err.where, "strict");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "item 1"));
    /* the scores are still filled for inspection */
    CU_ASSERT_EQUAL(sc.status[1].code, RLHF_REWARD_ERROR);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 1.0, 1e-12);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_exact_and_numeric(void) {
    reward_pipeline *p = make("[{\"type\":\"exact_match\",\"name\":\"full\"},"
                              " {\"type\":\"exact_match\",\"name\":\"line\",\"extract\":\"last_line\",\"case_sensitive\":false},"
                              " {\"type\":\"exact_match\",\"name\":\"boxed\",\"extract\":\"boxed\"},"
                              " {\"type\":\"numeric_match\",\"name\":\"num\",\"abs_tol\":0.01}]");
    rlhf_reward_item items[4] = {
        rt_item("  Paris \n", "{\"answer\":\"Paris\"}"),
        rt_item("thinking...\nthe answer is \\boxed{PARIS}\nparis", "{\"answer\":\"Paris\"}"),
        rt_item("so x = 1,234.5 and then 3.999", "{\"answer\":4}"),
        rt_item("no answer here", "{\"question\":\"?\"}"),
    };
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 4, &sc, &err), 0);
    const size_t S = 4;
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0 * S + 0], 1.0, 0); /* trimmed full text */
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1 * S + 0], 0.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1 * S + 1], 1.0, 0); /* last line, case-insensitive */
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1 * S + 2], 0.0, 0); /* boxed is case-sensitive: PARIS != Paris */
    CU_ASSERT_EQUAL(sc.status[1 * S + 3].code, RLHF_REWARD_SKIP); /* answer "Paris" is not numeric */
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[2 * S + 3], 1.0, 0); /* last number 3.999 within 0.01 of 4 */
    CU_ASSERT_EQUAL(sc.status[3 * S + 0].code, RLHF_REWARD_SKIP);
    CU_ASSERT_PTR_NOT_NULL(strstr(sc.status[3 * S + 0].reason, "answer"));
    CU_ASSERT_DOUBLE_EQUAL(sc.total[3], 0.0, 0);
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

static void test_length_penalty_tokens(void) {
    reward_pipeline *p = make("[{\"type\":\"length_penalty\",\"budget\":3,\"penalty_per_unit\":0.25,\"max_penalty\":1}]");
    int32_t ids[10] = {0};
    rlhf_reward_item items[3] = {rt_item("x", NULL), rt_item("x", NULL), rt_item("x", NULL)};
    items[0].completion_ids = ids, items[0].n_completion_ids = 3;
    items[1].completion_ids = ids, items[1].n_completion_ids = 5;
    items[2].completion_ids = ids, items[2].n_completion_ids = 10;
    reward_scores sc = {0};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(reward_pipeline_score(p, items, 3, &sc, &err), 0);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[0], 0.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[1], -0.5, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(sc.raw[2], -1.0, 1e-12); /* capped */
    reward_scores_free(&sc);
    reward_pipeline_destroy(&p);
}

typedef struct {
    reward_pipeline *p;
    int ok;
} thread_arg;

static void *score_thread(void *a) {
    thread_arg *t = a;
    rlhf_reward_item items[8];
    for (int i = 0; i < 8; i++) items[i] = rt_item(i % 2 ? "42" : "41", "{\"answer\":42}");
    reward_scores sc = {0};
    rlhf_error err = {0};
    t->ok = 1;
    for (int r = 0; r < 200; r++) {
        if (reward_pipeline_score(t->p, items, 8, &sc, &err)) t->ok = 0;
        for (int i = 0; i < 8; i++)
            if (sc.total[i] != (i % 2 ? 1.0 : 0.0)) t->ok = 0;
    }
    reward_scores_free(&sc);
    return NULL;
}

static void test_concurrent_callers(void) {
    reward_pipeline *p = make("[{\"type\":\"numeric_match\"}]");
    pthread_t th[4];
    thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i].p = p;
        pthread_create(&th[i], NULL, score_thread, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT(a[i].ok);
    }
    reward_pipeline_destroy(&p);
}

static void test_registry(void) {
    const char *const *names = reward_source_types();
    int seen_countdown = 0, n = 0;
    for (; names[n]; n++) seen_countdown |= !strcmp(names[n], "countdown");
    CU_ASSERT(n >= 8);
    CU_ASSERT(seen_countdown);
    CU_ASSERT_PTR_NOT_NULL(reward_source_type_find("plugin"));
    CU_ASSERT_PTR_NULL(reward_source_type_find("nope"));
}

int rt_register_pipeline(void) {
    CU_pSuite s = CU_add_suite("pipeline", NULL, NULL);
    if (!s) return -1;
    CU_add_test(s, "config errors name the JSON path", test_config_errors);
    CU_add_test(s, "weighted totals", test_weights_and_totals);
    CU_add_test(s, "batch and running normalisation", test_normalisation);
    CU_add_test(s, "on_error zero counts and adds 0", test_on_error_zero);
    CU_add_test(s, "on_error skip_group marks the group", test_on_error_skip_group);
    CU_add_test(s, "on_error fail returns an error naming the source", test_on_error_fail);
    CU_add_test(s, "on_error defaults to skip_group; max_error_rate read back", test_on_error_default_skips);
    CU_add_test(s, "reason kinds for metric names", test_reason_kinds);
    CU_add_test(s, "exact_match and numeric_match", test_exact_and_numeric);
    CU_add_test(s, "length_penalty over token ids", test_length_penalty_tokens);
    CU_add_test(s, "one pipeline, four scoring threads", test_concurrent_callers);
    CU_add_test(s, "registry lists the types", test_registry);
    return 0;
}
