/* tests/updater/test_unscored.c — what the updater does with what reward sources say besides a
 * score: a sample no source scored (every source SKIP) is left out of its group's RLOO baseline and
 * of the loss (checked against hand-computed advantages, and against a step trained on the same groups
 * with that sample removed: same loss, same gradient norm, same token count); a group left with fewer
 * than 2 scored samples is dropped and counted; per-source std, skip counts, time per item and a v2
 * plugin's own metrics reach metrics.jsonl; the first 20 failures of a source are kept in
 * RUN_DIR/reward_errors.jsonl, once per run. */
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
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_unsc_XXXXXX");
    model_set_threads(1);
    return mkdtemp(g_dir) ? 0 : -1;
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* hand-computed: the unscored sample is not in the others' baselines and gets 0 */
static void test_rloo_scored_hand_computed(void) {
    /* group 0: rewards 1, 3, [100 unscored], 2 -> scored 1, 3, 2
     *   A = 1 - (3+2)/2 = -1.5;  3 - (1+2)/2 = 1.5;  2 - (1+3)/2 = 0;  unscored 0
     * group 1: only one scored sample -> dropped
     * group 2: all scored -> plain RLOO: 4 - (4+6)/2 = -1, -1, 6 - 4 = 2 (and 0 for the 4th? k = 4: 4,4,6,2)
     *   4,4,6,2: A_0 = 4 - 12/3 = 0, A_1 = 0, A_2 = 6 - 10/3 = 8/3, A_3 = 2 - 14/3 = -8/3 */
    const float r[12] = {1, 3, 100, 2, 5, 7, 9, 11, 4, 4, 6, 2};
    const unsigned char m[12] = {1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1};
    float adv[12];
    int keep[3];
    CU_ASSERT_EQUAL(rl_rloo_advantages_scored(adv, keep, r, m, 3, 4), 1);
    CU_ASSERT_EQUAL(keep[0], 1);
    CU_ASSERT_DOUBLE_EQUAL(adv[0], -1.5, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(adv[1], 1.5, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(adv[2], 0.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(adv[3], 0.0, 1e-6);
    CU_ASSERT_EQUAL(keep[1], 0);
    for (int i = 4; i < 8; i++) CU_ASSERT_DOUBLE_EQUAL(adv[i], 0.0, 0);
    CU_ASSERT_EQUAL(keep[2], 1);
    CU_ASSERT_DOUBLE_EQUAL(adv[8], 0.0, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(adv[10], 8.0 / 3.0, 1e-5);
    CU_ASSERT_DOUBLE_EQUAL(adv[11], -8.0 / 3.0, 1e-5);
    /* a NULL mask is plain RLOO */
    float adv2[12];
    int keep2[3];
    rl_rloo_advantages_scored(adv2, keep2, r, NULL, 3, 4);
    CU_ASSERT_DOUBLE_EQUAL(adv2[2], 100 - (1 + 3 + 2) / 3.0, 1e-4);
}

/* A run whose only reward is the process-plugin fixture (score = length / 10; "SKIP" is a skip). */
static int make_cfg(run_config *cfg, const char *run, const char *extra_source) {
    char p[256], py[512], doc[4096];
    snprintf(p, sizeof p, "%s/prompts.jsonl", g_dir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    for (int i = 0; i < 4; i++) fprintf(f, "{\"id\":\"p%d\",\"prompt\":\"q%d:\"}\n", i, i);
    fclose(f);
    if (test_source_path("tests/rewards/fixtures/proc_plugin.py", py, sizeof py)) return -1;
    snprintf(doc, sizeof doc,
             "{\"name\":\"unsc\",\"run_dir\":\"%s/%s\","
             "\"model\":{\"arch\":{\"dim\":16,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":32,\"vocab_size\":259,"
             "\"max_seq_len\":16}},\"task\":{\"train\":\"%s\"},"
             "\"rewards\":[{\"type\":\"process\",\"name\":\"proc\",\"command\":[\"/usr/bin/python3\",\"%s\"],"
             "\"on_error\":\"zero\",\"max_error_rate\":1}%s],"
             "\"rl\":{\"k\":3,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":30,\"seed\":3},"
             "\"generators\":{\"max_tokens\":4}}",
             g_dir, run, p, py, extra_source ? extra_source : "");
    json_error_t jerr;
    json_t *j = json_loads(doc, 0, &jerr);
    rlhf_error err = {0};
    int rc = run_config_parse(cfg, j, "unsc.json", &err);
    json_decref(j);
    if (!rc) rc = run_prepare_base(cfg, &err);
    if (rc) rlhf_error_print("test", &err);
    return rc;
}

/* A raw group of prompt `id` whose completions are the byte strings in `texts` (k = n). */
static scored_group *group_of(const char *id, const char *const *texts, int n, uint64_t seq) {
    scored_group *sg = calloc(1, sizeof *sg);
    wire_rollout_group *g = &sg->g;
    g->prompt_id = strdup(id);
    g->prompt_text = strdup("q:");
    g->generator_id = strdup("t");
    g->seq = seq;
    g->k = (uint32_t)n;
    size_t tot = 0;
    for (int i = 0; i < n; i++) tot += strlen(texts[i]);
    g->n_tokens = calloc((size_t)n, sizeof *g->n_tokens);
    g->tokens = calloc(tot, sizeof *g->tokens);
    g->logprobs = calloc(tot, sizeof *g->logprobs);
    g->finish = calloc((size_t)n, 1);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        g->n_tokens[i] = (uint32_t)strlen(texts[i]);
        for (const char *c = texts[i]; *c; c++) {
            g->logprobs[o] = -1.0f;
            g->tokens[o++] = (unsigned char)*c;
        }
    }
    sg->log_index = UINT64_MAX;
    return sg;
}

/* Scores and offers the groups, trains one step, returns its metrics. */
static json_t *step_on(updater_session *u, const char *const *const *groups, const int *ks, int n) {
    rlhf_error err = {0};
    int ready = 0;
    for (int i = 0; i < n; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        scored_group *sg = group_of(id, groups[i], ks[i], (uint64_t)i + 1);
        CU_ASSERT_EQUAL(updater_scorer_score_now(u->sc, sg, &err), 0);
        ready = updater_session_offer(u, sg);
    }
    CU_ASSERT_EQUAL_FATAL(ready, 1);
    json_t *m = NULL;
    CU_ASSERT_EQUAL_FATAL(updater_session_step(u, &m, &err), 0);
    return m;
}

static double md(json_t *m, const char *k) { return json_number_value(json_object_get(m, k)); }
static long mi(json_t *m, const char *k) { return (long)json_integer_value(json_object_get(m, k)); }

/* The same step twice: once with a SKIP sample in group 0 and a group of one scored sample, once with
 * that sample removed and a zero-spread group instead. The trained groups are the same, so the loss,
 * gradient norm and token count must be too; before the fix the SKIP sample trained as reward 0. */
static void test_skip_sample_not_trained(void) {
    const char *g0a[] = {"a", "bb", "SKIP"}, *g0b[] = {"a", "bb"};
    const char *g1[] = {"ccc", "a", "bb"}, *g3[] = {"bb", "a", "cccc"};
    const char *g2a[] = {"SKIP", "SKIP", "a"}, *g2b[] = {"a", "a"};
    const char *const *ga[] = {g0a, g1, g2a, g3}, *const *gb[] = {g0b, g1, g2b, g3};
    int ka[] = {3, 3, 3, 3}, kb[] = {2, 3, 2, 3};
    run_config ca, cb;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&ca, "ra", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(make_cfg(&cb, "rb", NULL), 0);
    updater_session ua, ub;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&ua, &ca, 0, &err), 0);
    CU_ASSERT_EQUAL_FATAL(updater_session_init(&ub, &cb, 0, &err), 0);
    json_t *ma = step_on(&ua, ga, ka, 4), *mb = step_on(&ub, gb, kb, 4);
    CU_ASSERT_EQUAL(mi(ma, "groups/kept"), 3);
    CU_ASSERT_EQUAL(mi(mb, "groups/kept"), 3);
    CU_ASSERT_EQUAL(mi(ma, "groups/dropped_unscored"), 1);
    CU_ASSERT_EQUAL(mi(mb, "groups/dropped_unscored"), 0);
    CU_ASSERT_EQUAL(mi(mb, "groups/dropped_zero_var"), 1);
    CU_ASSERT_EQUAL(mi(ma, "train/tokens"), mi(mb, "train/tokens"));
    /* the groups carry no prompt tokens, so each completion's first token is not predicted: the kept
     * samples a, bb | ccc, a, bb | bb, a, cccc give 0+1 + 2+0+1 + 1+0+3 */
    CU_ASSERT_EQUAL(mi(ma, "train/tokens"), 8);
    CU_ASSERT(md(ma, "grad_norm") > 0);
    CU_ASSERT_DOUBLE_EQUAL(md(ma, "loss"), md(mb, "loss"), 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(md(ma, "grad_norm"), md(mb, "grad_norm"), 1e-6 * md(mb, "grad_norm"));
    /* the reward means leave the SKIPs out: 12 samples, 3 unscored; the scored ones are the same as in b
     * except b's zero-spread group {a, a} */
    CU_ASSERT_EQUAL(mi(ma, "reward/proc/skipped"), 3);
    CU_ASSERT_DOUBLE_EQUAL(md(ma, "reward/mean"), (0.1 + 0.2 + 0.3 + 0.1 + 0.2 + 0.1 + 0.2 + 0.1 + 0.4) / 9, 1e-6);
    /* per-source spread over the OK scores, and time per item */
    double mean = md(ma, "reward/proc/mean"), sq = 0;
    const double ok[] = {0.1, 0.2, 0.3, 0.1, 0.2, 0.1, 0.2, 0.1, 0.4};
    for (int i = 0; i < 9; i++) sq += (ok[i] - mean) * (ok[i] - mean);
    CU_ASSERT_DOUBLE_EQUAL(md(ma, "reward/proc/std"), sqrt(sq / 9), 1e-6);
    CU_ASSERT(md(ma, "reward/proc/ms_per_item") > 0);
    json_decref(ma);
    json_decref(mb);
    updater_session_fini(&ua);
    updater_session_fini(&ub);
    run_config_free(&ca);
    run_config_free(&cb);
}

/* A v2 plugin's metrics are logged as reward/<source>/<metric> (the mean over the step's groups of
 * their batch's value), and clipped scores are counted per source. */
static void test_plugin_metrics_logged(void) {
    char so[512], src[1100], cmd[4096], extra[1100];
    snprintf(so, sizeof so, "%s/v2.so", g_dir);
    CU_ASSERT_EQUAL_FATAL(test_source_path("tests/rewards/fixtures/v2_fixture.c", src, sizeof src), 0);
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -w -I%s -o %s %s", RLHF_SOURCE_ROOT, so, src);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    snprintf(extra, sizeof extra,
             ",{\"type\":\"plugin\",\"name\":\"v2\",\"path\":\"%s\",\"weight\":0,\"range\":[0,2],"
             "\"out_of_range\":\"clip\"}", so);
    run_config c;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&c, "rm", extra), 0);
    updater_session u;
    rlhf_error err = {0};
    char host[1100]; /* .so plugins run in a worker process, rlhf reward-plugin-host; this binary is not rlhf */
    CU_ASSERT_EQUAL_FATAL(test_bin_path("rlhf", host, sizeof host), 0);
    setenv("RLHF_PLUGIN_HOST", host, 1);
    int rc = updater_session_init(&u, &c, 0, &err);
    if (rc) fprintf(stderr, "\nsession: %s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    const char *g[] = {"a", "bb", "ccc"};
    const char *const *gs[] = {g, g, g, g};
    int ks[] = {3, 3, 3, 3};
    json_t *m = step_on(&u, gs, ks, 4);
    CU_ASSERT_DOUBLE_EQUAL(md(m, "reward/v2/calls"), 1.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(md(m, "reward/v2/items"), 3.0, 1e-12); /* one group per batch here */
    CU_ASSERT_EQUAL(mi(m, "reward/v2/skipped"), 0);
    CU_ASSERT_EQUAL(mi(m, "reward/v2/clipped"), 4); /* "ccc" (3) of each of the 4 groups, clipped to 2 */
    CU_ASSERT_DOUBLE_EQUAL(md(m, "reward/v2/mean"), (1 + 2 + 2) / 3.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(md(m, "reward/v2/step"), 0.0, 1e-12); /* scored before the first step */
    json_decref(m);
    /* the next step's batches are scored at step 1 */
    m = step_on(&u, gs, ks, 4);
    CU_ASSERT_DOUBLE_EQUAL(md(m, "reward/v2/step"), 1.0, 1e-12);
    json_decref(m);
    updater_session_fini(&u);
    run_config_free(&c);
}

static int count_lines(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += !needle || strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* The first 20 failures of a source go to RUN_DIR/reward_errors.jsonl with the prompt, sample, step,
 * source and reason; later ones, and a restarted updater of the same run, add nothing. */
static void test_errors_persisted(void) {
    char path[1100];
    run_config c;
    CU_ASSERT_EQUAL_FATAL(make_cfg(&c, "re", NULL), 0);
    /* fail_every 1: every item fails (on_error zero keeps the groups) */
    json_object_set_new(json_array_get(c.rewards, 0), "config", json_pack("{s:i}", "fail_every", 1));
    snprintf(path, sizeof path, "%s/reward_errors.jsonl", c.run_dir);
    for (int round = 0; round < 2; round++) {
        updater_session u;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL_FATAL(updater_session_init(&u, &c, 0, &err), 0);
        const char *g[] = {"a", "bb", "ccc"};
        for (int i = 0; i < 10; i++) {
            scored_group *sg = group_of("p7", g, 3, (uint64_t)i + 1);
            CU_ASSERT_EQUAL(updater_scorer_score_now(u.sc, sg, &err), 0);
            updater_session_offer(&u, sg);
        }
        updater_session_fini(&u);
        CU_ASSERT_EQUAL(count_lines(path, NULL), 20);
    }
    CU_ASSERT_EQUAL(count_lines(path, "\"source\":\"proc\""), 20);
    CU_ASSERT_EQUAL(count_lines(path, "\"reason\":\"flaky backend (503)\""), 20);
    CU_ASSERT_EQUAL(count_lines(path, "\"prompt_id\":\"p7\""), 20);
    CU_ASSERT_EQUAL(count_lines(path, "\"step\":0"), 20);
    CU_ASSERT_EQUAL(count_lines(path, "\"last\":true"), 1);
    run_config_free(&c);
}

int register_unscored_suite(void);
int register_unscored_suite(void) {
    CU_pSuite s = CU_add_suite("updater_unscored_and_reward_metrics", suite_init, suite_cleanup);
    if (!s) return -1;
    CU_add_test(s, "rloo_scored_hand_computed", test_rloo_scored_hand_computed);
    CU_add_test(s, "skip_sample_not_trained", test_skip_sample_not_trained);
    CU_add_test(s, "plugin_metrics_logged", test_plugin_metrics_logged);
    CU_add_test(s, "errors_persisted", test_errors_persisted);
    return 0;
}
