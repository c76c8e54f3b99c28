/* tests/updater/test_reward_errors.c — reward failures in plain sight: a real process plugin
 * (tests/rewards/fixtures/proc_plugin.py) fails some or all items; the session's step metrics count
 * them per source and per reason kind under every on_error policy, a source with no OK item has
 * mean null, "fail" stops the scorer with the prompt named, and max_error_rate stops the session
 * with the source, the rate and a sample reason. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run/run.h"
#include "tests/test_paths.h"
#include "updater/updater.h"

static char g_dir[64];

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_rerr_XXXXXX");
    model_set_threads(1);
    return mkdtemp(g_dir) ? 0 : -1;
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* A run config whose rewards are a length-scoring regex and the process plugin with `plugin_keys`
 * (e.g. "\"on_error\":\"zero\",\"config\":{\"fail_every\":2}"). 4 prompts per step, k = 2. */
static int make_cfg(run_config *cfg, const char *plugin_keys) {
    char p[256], py[512], doc[4096];
    snprintf(p, sizeof p, "%s/prompts.jsonl", g_dir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    for (int i = 0; i < 4; i++) fprintf(f, "{\"id\":\"p%d\",\"prompt\":\"q%d:\"}\n", i, i);
    fclose(f);
    if (test_source_path("tests/rewards/fixtures/proc_plugin.py", py, sizeof py)) return -1;
    snprintf(doc, sizeof doc,
             "{\"name\":\"rerr\",\"run_dir\":\"%s/run\","
             "\"model\":{\"arch\":{\"dim\":16,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":32,\"vocab_size\":259,"
             "\"max_seq_len\":16}},\"task\":{\"train\":\"%s\"},"
             "\"rewards\":[{\"type\":\"regex\",\"pattern\":\"a\"},"
             "{\"type\":\"process\",\"name\":\"proc\",\"command\":[\"/usr/bin/python3\",\"%s\"],%s}],"
             "\"rl\":{\"k\":2,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":30,\"seed\":3},"
             "\"generators\":{\"max_tokens\":4}}",
             g_dir, p, py, plugin_keys);
    json_error_t jerr;
    json_t *j = json_loads(doc, 0, &jerr);
    rlhf_error err = {0};
    int rc = run_config_parse(cfg, j, "rerr.json", &err);
    json_decref(j);
    if (!rc) rc = run_prepare_base(cfg, &err);
    if (rc) rlhf_error_print("test", &err);
    return rc;
}

/* A raw group of prompt `id` (text `text`) with completions "a" and "bb" (byte tokens). */
static scored_group *raw_group_text(const char *id, const char *text, uint64_t seq) {
    scored_group *sg = calloc(1, sizeof *sg);
    wire_rollout_group *g = &sg->g;
    g->prompt_id = strdup(id);
    g->prompt_text = strdup(text);
    g->generator_id = strdup("t");
    g->seq = seq;
    g->k = 2;
    g->n_tokens = calloc(2, sizeof *g->n_tokens);
    g->tokens = calloc(3, sizeof *g->tokens);
    g->logprobs = calloc(3, sizeof *g->logprobs);
    g->finish = calloc(2, 1);
    g->n_tokens[0] = 1;
    g->n_tokens[1] = 2;
    g->tokens[0] = 'a';
    g->tokens[1] = g->tokens[2] = 'b';
    sg->log_index = UINT64_MAX;
    return sg;
}
static scored_group *raw_group(const char *id, uint64_t seq) { return raw_group_text(id, "q:", seq); }

/* Scores and offers n_bad groups with the prompt "bad", then healthy ones until a step is ready;
 * trains the step and returns its metrics record. */
static json_t *one_step(updater_session *u, uint64_t *seq, int n_bad) {
    rlhf_error err = {0};
    int ready = 0;
    for (int i = 0; i < n_bad + 8 && !(i >= n_bad && ready); i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        scored_group *sg = raw_group_text(id, i < n_bad ? "bad" : "q:", ++*seq);
        CU_ASSERT_EQUAL(updater_scorer_score_now(u->sc, sg, &err), 0);
        ready = updater_session_offer(u, sg);
    }
    CU_ASSERT_EQUAL_FATAL(ready, 1);
    json_t *m = NULL;
    CU_ASSERT_EQUAL_FATAL(updater_session_step(u, &m, &err), 0);
    return m;
}

static long mi(json_t *m, const char *k) { return (long)json_integer_value(json_object_get(m, k)); }

/* Each step: 2 groups whose prompt makes the plugin fail (4 items), then healthy groups. */
static void errors_counted_under(const char *policy, long want_skipped) {
    char keys[256];
    snprintf(keys, sizeof keys, "\"on_error\":\"%s\",\"max_error_rate\":1,\"config\":{\"fail_prompt\":\"bad\"}",
             policy);
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, keys), 0);
    updater_session u;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    uint64_t seq = 0;
    for (int step = 0; step < 2; step++) {
        json_t *m = one_step(&u, &seq, 2);
        CU_ASSERT_EQUAL(mi(m, "reward/proc/errors"), 4);
        CU_ASSERT_EQUAL(mi(m, "reward/proc/errors/flaky_backend"), 4);
        CU_ASSERT_EQUAL(mi(m, "reward_errors/proc"), 4);
        CU_ASSERT_EQUAL(mi(m, "reward/proc/errors_total"), 4 * (step + 1));
        CU_ASSERT_EQUAL(mi(m, "reward/regex/errors"), 0);
        CU_ASSERT_EQUAL(mi(m, "reward/errors"), 4);
        CU_ASSERT_EQUAL(mi(m, "groups/skipped"), want_skipped);
        /* the plugin's child: a python3 process, resident, never restarted; the regex has none */
        CU_ASSERT(json_real_value(json_object_get(m, "reward/proc/rss_mb")) > 1);
        CU_ASSERT(json_is_real(json_object_get(m, "reward/proc/cpu_s")));
        CU_ASSERT_EQUAL(mi(m, "reward/proc/restarts"), 0);
        CU_ASSERT_PTR_NULL(json_object_get(m, "reward/regex/rss_mb"));
        json_decref(m);
    }
    CU_ASSERT_EQUAL(u.failed, 0);
    updater_session_fini(&u);
    run_config_free(&cfg);
}
static void test_errors_counted_zero(void) { errors_counted_under("zero", 0); }
static void test_errors_counted_skip_group(void) { errors_counted_under("skip_group", 2); }

/* The default policy is skip_group: with every item failing, every group is skipped, and the source's
 * mean over the step is null (no item was scored), not 0. */
static void test_default_skips_and_mean_null(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "\"max_error_rate\":1,\"config\":{\"fail_every\":1}"), 0);
    updater_session u;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    uint64_t seq = 0;
    for (int i = 0; i < 4; i++) {
        scored_group *sg = raw_group("p0", ++seq);
        CU_ASSERT_EQUAL(updater_scorer_score_now(u.sc, sg, &err), 0);
        CU_ASSERT_EQUAL(sg->skipped, 1);
        CU_ASSERT_EQUAL(updater_session_offer(&u, sg), 0);
    }
    CU_ASSERT_EQUAL(u.ps.groups_skipped, 4);
    updater_session_fini(&u);
    run_config_free(&cfg);

    /* under "zero" the groups reach the step: the plugin's mean is null, the regex's is a number */
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "\"on_error\":\"zero\",\"max_error_rate\":1,\"config\":{\"fail_every\":1}"), 0);
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    json_t *m = one_step(&u, &seq, 0);
    CU_ASSERT(json_is_null(json_object_get(m, "reward/proc/mean")));
    CU_ASSERT(json_is_real(json_object_get(m, "reward/regex/mean")));
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(m, "reward/regex/mean")), 0.5, 1e-9);
    CU_ASSERT_EQUAL(mi(m, "reward/proc/errors"), 8);
    json_decref(m);
    updater_session_fini(&u);
    run_config_free(&cfg);
}

/* on_error "fail" on the scoring threads: the groups are counted, and the scorer reports the first
 * failure with the source and the prompt; the caller (updater_main) stops the run with it. */
static void test_fail_policy_reports_prompt(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "\"on_error\":\"fail\",\"config\":{\"fail_every\":2}"), 0);
    updater_session u;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 1, &err), 0);
    CU_ASSERT_EQUAL(updater_scorer_failed(u.sc, &err), 0);
    updater_scorer_submit(u.sc, raw_group("p3", 1));
    scored_group *sg = NULL;
    for (int i = 0; i < 100 && !sg; i++) sg = updater_scorer_take(u.sc, 0.1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sg);
    CU_ASSERT_EQUAL(sg->skipped, 1);
    CU_ASSERT_EQUAL(sg->src_errors[1], 1);
    updater_session_offer(&u, sg);
    CU_ASSERT_EQUAL(updater_scorer_failed(u.sc, &err), 1);
    CU_ASSERT_STRING_EQUAL(err.where, "proc");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "prompt p3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "flaky backend (503)"));
    updater_session_fini(&u);
    run_config_free(&cfg);
}

/* max_error_rate 0.3 over a window of 10 items: half fail, so the session stops at the 4th error
 * (4 > 0.3 * 10), naming the source, the rate and a sample reason with its prompt. */
static void test_max_error_rate_stops(void) {
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(
        make_cfg(&cfg, "\"on_error\":\"zero\",\"max_error_rate\":0.3,\"error_window\":10,\"config\":{\"fail_every\":2}"),
        0);
    updater_session u;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    uint64_t seq = 0;
    int offered = 0;
    while (!u.failed && offered < 10) {
        scored_group *sg = raw_group("p1", ++seq);
        CU_ASSERT_EQUAL(updater_scorer_score_now(u.sc, sg, &err), 0);
        updater_session_offer(&u, sg);
        offered++;
    }
    CU_ASSERT_EQUAL(u.failed, 1);
    CU_ASSERT_EQUAL(offered, 4); /* one failing item per group */
    CU_ASSERT_STRING_EQUAL(u.failed_err.where, "proc");
    CU_ASSERT_PTR_NOT_NULL(strstr(u.failed_err.msg, "failed on 4 of its last 7 scored items (57%)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(u.failed_err.msg, "max_error_rate 0.3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(u.failed_err.msg, "prompt p1: flaky backend (503)"));
    updater_session_fini(&u);
    run_config_free(&cfg);

    /* the default (0.5 over 200) does not stop a source failing half its items */
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "\"on_error\":\"zero\",\"config\":{\"fail_every\":2}"), 0);
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    for (int i = 0; i < 120; i++) {
        scored_group *sg = raw_group("p2", ++seq);
        CU_ASSERT_EQUAL(updater_scorer_score_now(u.sc, sg, &err), 0);
        updater_session_offer(&u, sg);
    }
    CU_ASSERT_EQUAL(u.failed, 0);
    updater_session_fini(&u);
    run_config_free(&cfg);
    /* ... and stops one failing every item after 101 of 200 */
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cfg, "\"on_error\":\"zero\",\"config\":{\"fail_every\":1}"), 0);
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &cfg, 0, &err), 0);
    for (offered = 0; !u.failed && offered < 200; offered++) {
        scored_group *sg = raw_group("p2", ++seq);
        CU_ASSERT_EQUAL(updater_scorer_score_now(u.sc, sg, &err), 0);
        updater_session_offer(&u, sg);
    }
    CU_ASSERT_EQUAL(u.failed, 1);
    CU_ASSERT_EQUAL(offered, 51); /* 2 errors per group: the 101st error is in group 51 */
    updater_session_fini(&u);
    run_config_free(&cfg);
}

int register_reward_errors_suite(void);
int register_reward_errors_suite(void) {
    CU_pSuite s = CU_add_suite("updater_reward_errors", suite_init, suite_cleanup);
    CU_add_test(s, "errors_counted_zero", test_errors_counted_zero);
    CU_add_test(s, "errors_counted_skip_group", test_errors_counted_skip_group);
    CU_add_test(s, "default_skips_and_mean_null", test_default_skips_and_mean_null);
    CU_add_test(s, "fail_policy_reports_prompt", test_fail_policy_reports_prompt);
    CU_add_test(s, "max_error_rate_stops", test_max_error_rate_stops);
    return 0;
}
