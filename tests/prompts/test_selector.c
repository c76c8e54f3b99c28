/* tests/prompts/test_selector.c — cohesion and spread against hand-computed values, the three policies,
 * starvation, checkpoint round trips, config errors, metrics. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prompts/prompts.h"

static char tmpdir[256];

#define NEAR(a, b) CU_ASSERT_DOUBLE_EQUAL((a), (b), 1e-9)

/* A dataset of n prompts "p0".."p{n-1}" written to tmpdir. */
static prompt_dataset *make_dataset(int n) {
    char path[512];
    snprintf(path, sizeof path, "%s/ds%d.jsonl", tmpdir, n);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < n; i++) fprintf(f, "{\"id\":\"p%d\",\"prompt\":\"prompt %d\"}\n", i, i);
    fclose(f);
    prompt_dataset *ds = NULL;
    rlhf_error err = {0};
    CU_ASSERT_FATAL(prompt_dataset_load(&ds, path, &err) == 0);
    return ds;
}

static prompt_selector *make_selector(const prompt_dataset *ds, const char *config_json, uint64_t seed) {
    json_t *cfg = config_json ? json_loads(config_json, 0, NULL) : NULL;
    prompt_selector *sel = NULL;
    rlhf_error err = {0};
    int rc = prompt_selector_create(&sel, ds, cfg, seed, &err);
    if (rc) fprintf(stderr, "\n  selector: %s: %s\n", err.where, err.msg);
    CU_ASSERT_FATAL(rc == 0);
    json_decref(cfg);
    return sel;
}

/* Feeds one group: n_sources x k rewards, total = mean of sources. */
static void feed(prompt_selector *sel, const char *id, int n_sources, int k, const float *rewards) {
    float total[64];
    for (int i = 0; i < k; i++) {
        double s = 0;
        for (int j = 0; j < n_sources; j++) s += rewards[j * k + i];
        total[i] = (float)(s / n_sources);
    }
    prompt_stats st = {.prompt_id = id, .k = k, .n_sources = n_sources, .rewards = rewards, .total = total};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(prompt_selector_update(sel, &st, &err), 0);
}

/* Dumps the per-prompt statistics to tmpdir/NAME and returns its lines, parsed, as a JSON array. */
static json_t *dump_lines(const prompt_selector *sel, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_selector_dump_stats(sel, path, &err), 0);
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    json_t *lines = json_array();
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(o);
        json_array_append_new(lines, o);
    }
    fclose(f);
    return lines;
}

static void test_kendall_hand_values(void) {
    float inc[4] = {1, 2, 3, 4}, dec[4] = {4, 3, 2, 1};
    NEAR(prompt_kendall_tau_b(inc, inc, 4), 1.0);
    NEAR(prompt_kendall_tau_b(inc, dec, 4), -1.0);
    /* (1,2,3) vs (1,3,2): pairs C, C, D -> (2-1)/3 */
    float a[3] = {1, 2, 3}, b[3] = {1, 3, 2};
    NEAR(prompt_kendall_tau_b(a, b, 3), 1.0 / 3);
    /* ties: (0,0,1) vs (0,1,1): C=1, D=0, n0=3, one tie in each -> 1/sqrt(2*2) */
    float c[3] = {0, 0, 1}, d[3] = {0, 1, 1};
    NEAR(prompt_kendall_tau_b(c, d, 3), 0.5);
    /* (0,0,1,1) vs (0,1,0,1): C=1, D=1 -> 0 */
    float e[4] = {0, 0, 1, 1}, f[4] = {0, 1, 0, 1};
    NEAR(prompt_kendall_tau_b(e, f, 4), 0.0);
    /* a constant vector ranks nothing */
    float k0[3] = {2, 2, 2};
    CU_ASSERT_TRUE(isnan(prompt_kendall_tau_b(k0, a, 3)));
}

static void test_group_cohesion_and_spread(void) {
    /* three sources; tau(s0,s1) = (5-1)/6, tau(s0,s2) = -1, tau(s1,s2) = -(2/3) -> mean -1/3 */
    float r[12] = {1, 2, 3, 4, /**/ 1, 2, 4, 3, /**/ 4, 3, 2, 1};
    float total[4] = {0, 1, 1, 2}; /* mean 1, population variance 0.5 */
    prompt_stats st = {.prompt_id = "x", .k = 4, .n_sources = 3, .rewards = r, .total = total};
    double spread, coh;
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 3);
    NEAR(spread, sqrt(0.5));
    NEAR(coh, -1.0 / 3);

    /* a NaN (failed source) drops that sample from the pair: (1,2,4) vs (1,3,0) -> (1-2)/3 */
    float r2[8] = {1, 2, NAN, 4, /**/ 1, 3, 2, 0};
    float t2[4] = {1, 2.5f, NAN, 2};
    st = (prompt_stats){.prompt_id = "x", .k = 4, .n_sources = 2, .rewards = r2, .total = t2};
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 1);
    NEAR(coh, -1.0 / 3);
    /* spread over the finite totals 1, 2.5, 2: mean 11/6 */
    double m = 11.0 / 6, var = ((1 - m) * (1 - m) + (2.5 - m) * (2.5 - m) + (2 - m) * (2 - m)) / 3;
    NEAR(spread, sqrt(var));

    /* a constant source: its two pairs score 0 (zero) or are left out (skip); the varying pair has ties:
     * 2/sqrt(12) */
    float r3[12] = {1, 1, 1, 1, /**/ 0, 1, 0, 1, /**/ 0, 1, 1, 1};
    float t3[4] = {0.25f, 1, 0.5f, 1};
    st = (prompt_stats){.prompt_id = "x", .k = 4, .n_sources = 3, .rewards = r3, .total = t3};
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 3);
    NEAR(coh, 2.0 / sqrt(12.0) / 3);
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_SKIP, &spread, &coh), 1);
    NEAR(coh, 2.0 / sqrt(12.0));

    /* checker says all equal, judge ranks one sample lower (noise): no agreement */
    float r5[8] = {1, 1, 1, 1, /**/ 1, 1, 0, 1};
    float t5[4] = {1, 1, 0.5f, 1};
    st = (prompt_stats){.prompt_id = "x", .k = 4, .n_sources = 2, .rewards = r5, .total = t5};
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 1);
    NEAR(coh, 0.0);
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_SKIP, &spread, &coh), 0);
    NEAR(coh, 1.0);
    /* both constant: no ranking at all, the fallback */
    float r6[8] = {1, 1, 1, 1, /**/ 0, 0, 0, 0};
    st = (prompt_stats){.prompt_id = "x", .k = 4, .n_sources = 2, .rewards = r6, .total = t5};
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 0.5, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 0);
    NEAR(coh, 0.5);

    /* zero spread */
    float r4[4] = {1, 1, 1, 1};
    st = (prompt_stats){.prompt_id = "x", .k = 4, .n_sources = 1, .rewards = r4, .total = r4};
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 0);
    NEAR(spread, 0.0);
}

static void test_one_source(void) {
    /* one source: no pair ranks, so cohesion is the configured fallback, and the spread alone decides */
    float r[4] = {0, 1, 0, 1};
    prompt_stats st = {.prompt_id = "x", .k = 4, .n_sources = 1, .rewards = r, .total = NULL};
    double spread, coh;
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 1.0, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 0);
    NEAR(coh, 1.0);
    NEAR(spread, 0.5);
    CU_ASSERT_EQUAL(prompt_group_cohesion(&st, 0.25, PROMPT_CONSTANT_PAIR_ZERO, &spread, &coh), 0);
    NEAR(coh, 0.25);

    prompt_dataset *ds = make_dataset(4);
    prompt_selector *sel = make_selector(ds, "{\"policy\":\"cohesion\",\"floor\":0,\"explore_bonus\":0}", 1);
    float half[4] = {0, 1, 0, 1}, quarter[4] = {0, 0, 0, 1}, none[4] = {0, 0, 0, 0};
    feed(sel, "p0", 1, 4, half);
    feed(sel, "p1", 1, 4, quarter);
    feed(sel, "p2", 1, 4, none);
    feed(sel, "p3", 1, 4, none);
    double p[4];
    CU_ASSERT_EQUAL(prompt_selector_probs(sel, p, NULL), 0);
    /* weights are the spreads 0.5, sqrt(3)/4, 0, 0 (cohesion 1) */
    double w1 = sqrt(3.0) / 4;
    NEAR(p[0], 0.5 / (0.5 + w1));
    NEAR(p[1], w1 / (0.5 + w1));
    NEAR(p[2], 0.0);
    NEAR(p[3], 0.0);
    json_t *m = prompt_selector_metrics(sel);
    NEAR(json_real_value(json_object_get(m, "prompts/mean_cohesion")), 1.0);
    NEAR(json_real_value(json_object_get(m, "prompts/zero_spread_share")), 0.5);
    json_decref(m);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

/* Zero-spread and incoherent prompts get a smaller share than informative ones. */
static void test_zero_spread_and_incoherent_downweighted(void) {
    prompt_dataset *ds = make_dataset(12);
    prompt_selector *sel = make_selector(ds, "{\"policy\":\"cohesion\"}", 2);
    float zero[8] = {1, 1, 1, 1, /**/ 1, 1, 1, 1};
    float coherent[8] = {0, 1, 0, 1, /**/ 0.1f, 0.9f, 0.2f, 0.8f};
    float incoherent[8] = {0, 1, 0, 1, /**/ 0.9f, 0.1f, 0.8f, 0.2f};
    char id[16];
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < 12; i++) {
            snprintf(id, sizeof id, "p%d", i);
            feed(sel, id, 2, 4, i < 4 ? zero : i < 8 ? coherent : incoherent);
        }
    double p[12];
    prompt_selector_probs(sel, p, NULL);
    double sum = 0;
    for (int i = 0; i < 12; i++) sum += p[i];
    NEAR(sum, 1.0);
    for (int i = 0; i < 4; i++) CU_ASSERT_TRUE(p[i] < p[4 + i] / 4);
    for (int i = 8; i < 12; i++) CU_ASSERT_TRUE(p[i] < p[i - 4] / 4);
    for (int i = 0; i < 12; i++) CU_ASSERT_TRUE(p[i] >= 0.05 / 12 - 1e-12); /* the floor */
    /* served shares follow the probabilities */
    size_t idx[6], count[12] = {0};
    for (int r = 0; r < 2000; r++) {
        CU_ASSERT_EQUAL(prompt_selector_next(sel, 6, idx, NULL), 0);
        for (int j = 0; j < 6; j++) count[idx[j]]++;
        for (int j = 0; j < 6; j++)
            for (int k = j + 1; k < 6; k++) CU_ASSERT_NOT_EQUAL(idx[j], idx[k]); /* no repeats in a batch */
    }
    size_t zero_served = count[0] + count[1] + count[2] + count[3];
    size_t coherent_served = count[4] + count[5] + count[6] + count[7];
    size_t incoherent_served = count[8] + count[9] + count[10] + count[11];
    CU_ASSERT_TRUE(zero_served * 3 < coherent_served);
    CU_ASSERT_TRUE(incoherent_served * 3 < coherent_served);
    json_t *m = prompt_selector_metrics(sel);
    NEAR(json_real_value(json_object_get(m, "prompts/zero_spread_share")), 1.0 / 3);
    CU_ASSERT_TRUE(json_real_value(json_object_get(m, "prompts/sampling_entropy_norm")) < 0.95);
    json_decref(m);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

/* An unsolvable prompt: the exact checker gives 0 to every sample, a noisy grader sometimes passes one
 * (spread, cohesion 0) and sometimes passes none (no spread; both sources constant, so no pair counts
 * and cohesion falls back to 1). No group of it teaches anything, so its score is the exploration bonus
 * alone; averaging spread and cohesion separately would have scored it like half a good prompt. */
static void test_never_learnable_in_one_group(void) {
    prompt_dataset *ds = make_dataset(4);
    prompt_selector *sel = make_selector(ds, "{\"policy\":\"cohesion\",\"floor\":0}", 4);
    float grader_flips[8] = {0, 0, 0, 0, /**/ 0, 1, 0, 0}; /* exact | grader */
    float all_zero[8] = {0, 0, 0, 0, /**/ 0, 0, 0, 0};
    float good[8] = {0, 1, 0, 1, /**/ 0, 1, 0, 1};         /* spread 0.5, cohesion 1 */
    for (int rep = 0; rep < 4; rep++) {
        feed(sel, "p0", 2, 4, grader_flips);
        feed(sel, "p0", 2, 4, all_zero);
        feed(sel, "p1", 2, 4, good);
        feed(sel, "p1", 2, 4, good);
        feed(sel, "p2", 2, 4, all_zero);
        feed(sel, "p2", 2, 4, all_zero);
        feed(sel, "p3", 2, 4, good);
        feed(sel, "p3", 2, 4, good);
    }
    double p[4];
    prompt_selector_probs(sel, p, NULL);
    /* scores: p0, p2 = bonus 0.005/sqrt(8); p1, p3 = 0.5 + that */
    double bonus = 0.005 / sqrt(8.0), total = 2 * bonus + 2 * (0.5 + bonus);
    NEAR(p[0], bonus / total);
    NEAR(p[2], bonus / total);
    NEAR(p[1], (0.5 + bonus) / total);
    CU_ASSERT_TRUE(p[0] < p[1] / 50);
    /* the reported cohesion of p0 comes only from the groups where the sources could disagree (all 0);
     * p2's groups never could: unknown (null), not the one-source fallback */
    json_t *st = prompt_selector_save_json(sel);
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(st, "prompts"), i, o) {
        const char *id = json_string_value(json_object_get(o, "id"));
        if (!strcmp(id, "p0")) {
            NEAR(json_real_value(json_object_get(o, "cohesion")), 0);
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "cohesion_n")), 4);
        }
        if (!strcmp(id, "p2")) CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "cohesion_n")), 0);
        if (!strcmp(id, "p1")) NEAR(json_real_value(json_object_get(o, "cohesion")), 1);
    }
    json_decref(st);
    json_t *lines = dump_lines(sel, "never_stats.jsonl"), *d;
    int seen = 0;
    json_array_foreach(lines, i, d) {
        if (!strcmp(json_string_value(json_object_get(d, "id")), "p2")) {
            CU_ASSERT_TRUE(json_is_null(json_object_get(d, "cohesion")));
            NEAR(json_real_value(json_object_get(d, "learnability")), 0);
            seen++;
        }
    }
    json_decref(lines);
    CU_ASSERT_EQUAL(seen, 1);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

static void test_uniform_epochs(void) {
    prompt_dataset *ds = make_dataset(10);
    prompt_selector *sel = make_selector(ds, NULL, 3);
    CU_ASSERT_STRING_EQUAL(prompt_selector_policy(sel), "uniform");
    size_t idx[30];
    CU_ASSERT_EQUAL(prompt_selector_next(sel, 30, idx, NULL), 0);
    for (int e = 0; e < 3; e++) { /* each epoch serves every prompt exactly once */
        int seen[10] = {0};
        for (int j = 0; j < 10; j++) seen[idx[e * 10 + j]]++;
        for (int i = 0; i < 10; i++) CU_ASSERT_EQUAL(seen[i], 1);
    }
    json_t *m = prompt_selector_metrics(sel);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "prompts/epoch")), 2);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "prompts/served")), 30);
    NEAR(json_real_value(json_object_get(m, "prompts/sampling_entropy")), log(10.0));
    json_decref(m);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

static void test_zero_variance_filter(void) {
    prompt_dataset *ds = make_dataset(10);
    prompt_selector *sel = make_selector(ds, "{\"policy\":\"zero_variance_filter\",\"readmit_after_epochs\":2}", 4);
    float zero[4] = {0, 0, 0, 0}, mixed[4] = {0, 1, 1, 0};
    feed(sel, "p0", 1, 4, zero);
    feed(sel, "p1", 1, 4, zero);
    feed(sel, "p2", 1, 4, mixed);
    size_t idx[40];
    CU_ASSERT_EQUAL(prompt_selector_next(sel, 40, idx, NULL), 0);
    for (int j = 0; j < 40; j++) CU_ASSERT_TRUE(idx[j] != 0 && idx[j] != 1);
    json_t *m = prompt_selector_metrics(sel);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "prompts/filtered")), 2);
    json_decref(m);
    /* re-admission: after more than 2 x 10 further groups fed back, p0 and p1 are served again */
    for (int r = 0; r < 21; r++) feed(sel, "p2", 1, 4, mixed);
    int back0 = 0, back1 = 0;
    CU_ASSERT_EQUAL(prompt_selector_next(sel, 20, idx, NULL), 0);
    for (int j = 0; j < 20; j++) {
        back0 += idx[j] == 0;
        back1 += idx[j] == 1;
    }
    CU_ASSERT_TRUE(back0 > 0 && back1 > 0);
    /* a prompt whose group has spread again leaves the filter at once */
    feed(sel, "p0", 1, 4, zero);
    feed(sel, "p0", 1, 4, mixed);
    double p[10];
    prompt_selector_probs(sel, p, NULL);
    CU_ASSERT_TRUE(p[0] > 0);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

/* Over a long simulated run where half the prompts always give zero spread and some are incoherent,
 * every prompt keeps being served: min probability >= floor/N, and each prompt is served repeatedly. */
static void test_no_starvation(void) {
    const int N = 40;
    prompt_dataset *ds = make_dataset(N);
    prompt_selector *sel = make_selector(ds, "{\"policy\":\"cohesion\",\"floor\":0.05}", 5);
    float zero[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    float good[8] = {0, 1, 0, 1, /**/ 0, 1, 0, 1};
    float bad[8] = {0, 1, 0, 1, /**/ 1, 0, 1, 0};
    size_t served[40] = {0}, last[40] = {0}, max_gap[40] = {0};
    size_t t = 0, idx[8];
    double p[40];
    char id[16];
    for (int round = 0; round < 2500; round++) {
        CU_ASSERT_EQUAL_FATAL(prompt_selector_next(sel, 8, idx, NULL), 0);
        for (int j = 0; j < 8; j++) {
            size_t i = idx[j];
            t++;
            if (t - last[i] > max_gap[i]) max_gap[i] = t - last[i];
            last[i] = t;
            served[i]++;
            snprintf(id, sizeof id, "p%zu", i);
            feed(sel, id, 2, 4, i < 20 ? zero : i < 30 ? bad : good);
        }
        if (round % 100 == 0) {
            prompt_selector_probs(sel, p, NULL);
            for (int i = 0; i < N; i++) CU_ASSERT_TRUE(p[i] >= 0.05 / N - 1e-12);
        }
    }
    size_t min_served = (size_t)-1, worst_gap = 0;
    for (int i = 0; i < N; i++) {
        if (served[i] < min_served) min_served = served[i];
        if (max_gap[i] > worst_gap) worst_gap = max_gap[i];
    }
    /* 20000 draws; a starved prompt would have a handful at most */
    CU_ASSERT_TRUE(min_served >= 20);
    /* stale re-admission bounds the gap: after 2 passes (80 groups) a prompt's stats are stale, and then it
     * scores as the best fresh prompt; a gap of 4000 draws would mean that failed */
    CU_ASSERT_TRUE(worst_gap < 4000);
    /* and the informative prompts still get most of the budget */
    size_t good_served = 0;
    for (int i = 30; i < N; i++) good_served += served[i];
    CU_ASSERT_TRUE(good_served > 20000 / 2);
    if (min_served < 20 || worst_gap >= 4000 || good_served <= 10000)
        fprintf(stderr, "\n  min_served %zu worst_gap %zu good_served %zu\n", min_served, worst_gap, good_served);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

/* Run a selector for a while, save, load into a fresh one, and check that both continue identically. */
static void round_trip(const char *config) {
    const int N = 25;
    prompt_dataset *ds = make_dataset(N);
    prompt_selector *a = make_selector(ds, config, 6);
    float r[8];
    char id[16];
    size_t idx[7];
    unsigned x = 12345;
    for (int round = 0; round < 60; round++) {
        CU_ASSERT_EQUAL_FATAL(prompt_selector_next(a, 7, idx, NULL), 0);
        for (int j = 0; j < 5; j++) {
            for (int q = 0; q < 8; q++) r[q] = (float)(((x = x * 1103515245u + 12345u) >> 16) % 3) / 2.0f;
            snprintf(id, sizeof id, "p%zu", idx[j]);
            feed(a, id, 2, 4, r);
        }
    }
    json_t *sa = prompt_selector_save_json(a);
    char path[512];
    snprintf(path, sizeof path, "%s/sel_state.json", tmpdir);
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_selector_save(a, path, &err), 0);
    prompt_selector *b = make_selector(ds, config, 999); /* a different seed: everything must come from the state */
    CU_ASSERT_EQUAL_FATAL(prompt_selector_load(b, path, &err), 0);
    json_t *sb = prompt_selector_save_json(b);
    CU_ASSERT_TRUE(json_equal(sa, sb));
    double pa[25], pb[25];
    prompt_selector_probs(a, pa, NULL);
    prompt_selector_probs(b, pb, NULL);
    CU_ASSERT_EQUAL(memcmp(pa, pb, sizeof pa), 0); /* bit-identical */
    size_t ia[50], ib[50];
    CU_ASSERT_EQUAL(prompt_selector_next(a, 50, ia, NULL), 0);
    CU_ASSERT_EQUAL(prompt_selector_next(b, 50, ib, NULL), 0);
    CU_ASSERT_EQUAL(memcmp(ia, ib, sizeof ia), 0);
    json_t *ma = prompt_selector_metrics(a), *mb = prompt_selector_metrics(b);
    CU_ASSERT_TRUE(json_equal(ma, mb));
    json_decref(ma);
    json_decref(mb);
    json_decref(sa);
    json_decref(sb);
    prompt_selector_destroy(&a);
    prompt_selector_destroy(&b);
    prompt_dataset_destroy(&ds);
}

static void test_round_trip_cohesion(void) { round_trip("{\"policy\":\"cohesion\"}"); }
static void test_round_trip_uniform(void) { round_trip("{\"policy\":\"uniform\"}"); }
static void test_round_trip_zvf(void) { round_trip("{\"policy\":\"zero_variance_filter\"}"); }

/* A state saved before per-prompt `learnability` existed loads with the score those runs used,
 * spread * max(0, cohesion); a present but malformed value is rejected. */
static void test_load_state_without_learnability(void) {
    prompt_dataset *ds = make_dataset(3);
    prompt_selector *a = make_selector(ds, "{\"policy\":\"cohesion\",\"floor\":0,\"explore_bonus\":0}", 1);
    float flips[8] = {0, 0, 0, 0, /**/ 0, 1, 0, 0}, none[8] = {0}, good[8] = {0, 1, 0, 1, /**/ 0, 1, 1, 1};
    feed(a, "p0", 2, 4, flips);
    feed(a, "p0", 2, 4, none);
    feed(a, "p1", 2, 4, good);
    feed(a, "p2", 2, 4, good);
    json_t *st = prompt_selector_save_json(a);
    json_t *prompts = json_object_get(st, "prompts");
    double expect[3], total = 0;
    size_t i;
    json_t *o;
    json_array_foreach(prompts, i, o) {
        /* as the earlier code saved it: cohesion averaged over every group (p0: 0 then the fallback 1) */
        if (!strcmp(json_string_value(json_object_get(o, "id")), "p0"))
            json_object_set_new(o, "cohesion", json_real(0.5));
        CU_ASSERT_EQUAL(json_object_del(o, "cohesion_n"), 0);
        double sp = json_real_value(json_object_get(o, "spread")), co = json_real_value(json_object_get(o, "cohesion"));
        expect[i] = sp * (co > 0 ? co : 0);
        total += expect[i];
        CU_ASSERT_EQUAL(json_object_del(o, "learnability"), 0);
    }
    CU_ASSERT_TRUE(expect[0] > 0); /* the old score credited p0 */
    prompt_selector *b = make_selector(ds, "{\"policy\":\"cohesion\",\"floor\":0,\"explore_bonus\":0}", 2);
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_selector_load_json(b, st, "old state", &err), 0);
    double p[3];
    prompt_selector_probs(b, p, NULL);
    for (int j = 0; j < 3; j++) NEAR(p[j], expect[j] / total);
    prompt_selector_probs(a, p, NULL);
    NEAR(p[0], 0); /* the current score does not */
    json_object_set_new(json_array_get(prompts, 0), "learnability", json_string("high"));
    CU_ASSERT_NOT_EQUAL(prompt_selector_load_json(b, st, "bad state", &err), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "learnability"));
    json_decref(st);
    prompt_selector_destroy(&a);
    prompt_selector_destroy(&b);
    prompt_dataset_destroy(&ds);
}

static void test_load_rejects_mismatch(void) {
    prompt_dataset *ds = make_dataset(5), *ds6 = make_dataset(6);
    prompt_selector *a = make_selector(ds, "{\"policy\":\"cohesion\"}", 1);
    prompt_selector *u = make_selector(ds, NULL, 1);
    prompt_selector *b6 = make_selector(ds6, "{\"policy\":\"cohesion\"}", 1);
    size_t idx[3];
    prompt_selector_next(a, 3, idx, NULL);
    json_t *st = prompt_selector_save_json(a);
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(prompt_selector_load_json(u, st, "ckpt", &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "policy cohesion"));
    CU_ASSERT_EQUAL(prompt_selector_load_json(b6, st, "ckpt", &err), RLHF_EINVAL);
    /* a state naming an unknown prompt */
    json_t *pr = json_array_get(json_object_get(st, "prompts"), 0);
    json_object_set_new(pr, "id", json_string("nope"));
    CU_ASSERT_EQUAL(prompt_selector_load_json(a, st, "ckpt", &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "\"nope\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "ckpt: prompts[0]"));
    /* the failed load left the selector usable and unchanged */
    CU_ASSERT_EQUAL(prompt_selector_next(a, 3, idx, NULL), 0);
    json_decref(st);
    char path[512];
    snprintf(path, sizeof path, "%s/garbage.json", tmpdir);
    FILE *f = fopen(path, "w");
    fputs("{\"version\": 1,\n \"policy\": ", f);
    fclose(f);
    CU_ASSERT_EQUAL(prompt_selector_load(a, path, &err), RLHF_ECORRUPT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "garbage.json:"));
    prompt_selector_destroy(&a);
    prompt_selector_destroy(&u);
    prompt_selector_destroy(&b6);
    prompt_dataset_destroy(&ds);
    prompt_dataset_destroy(&ds6);
}

static void test_config_errors(void) {
    prompt_dataset *ds = make_dataset(3);
    struct {
        const char *json, *where;
    } cases[] = {
        {"{\"policy\":\"cohesion\",\"flor\":0.1}", "selector.flor"},
        {"{\"policy\":\"best\"}", "selector.policy"},
        {"{\"policy\":3}", "selector.policy"},
        {"{\"floor\":1.5}", "selector.floor"},
        {"{\"decay\":\"x\"}", "selector.decay"},
        {"{\"zv_window\":1.5}", "selector.zv_window"},
        {"{\"constant_pair\":\"drop\"}", "selector.constant_pair"},
        {"[1]", "selector"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *cfg = json_loads(cases[i].json, 0, NULL);
        prompt_selector *sel = NULL;
        rlhf_error err = {0};
        CU_ASSERT_EQUAL(prompt_selector_create(&sel, ds, cfg, 1, &err), RLHF_EINVAL);
        CU_ASSERT_STRING_EQUAL(err.where, cases[i].where);
        CU_ASSERT_PTR_NULL(sel);
        json_decref(cfg);
    }
    /* update errors */
    prompt_selector *sel = make_selector(ds, NULL, 1);
    float r[2] = {0, 1};
    prompt_stats st = {.prompt_id = "unknown", .k = 2, .n_sources = 1, .rewards = r, .total = r};
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(prompt_selector_update(sel, &st, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "unknown prompt id \"unknown\""));
    float nan2[2] = {NAN, NAN};
    st = (prompt_stats){.prompt_id = "p1", .k = 2, .n_sources = 1, .rewards = nan2, .total = nan2};
    CU_ASSERT_EQUAL(prompt_selector_update(sel, &st, &err), RLHF_EINVAL);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

/* Edge cases: a batch larger than the dataset, and every prompt filtered. */
static void test_edges(void) {
    prompt_dataset *ds = make_dataset(3);
    prompt_selector *c = make_selector(ds, "{\"policy\":\"cohesion\"}", 8);
    size_t idx[7];
    CU_ASSERT_EQUAL(prompt_selector_next(c, 7, idx, NULL), 0);
    int seen[3] = {0};
    for (int j = 0; j < 3; j++) seen[idx[j]]++; /* the first 3 draws cover every prompt once */
    CU_ASSERT_TRUE(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    for (int j = 0; j < 7; j++) CU_ASSERT_TRUE(idx[j] < 3);
    prompt_selector_destroy(&c);
    prompt_selector *z = make_selector(ds, "{\"policy\":\"zero_variance_filter\"}", 8);
    float zero[4] = {1, 1, 1, 1};
    feed(z, "p0", 1, 4, zero);
    feed(z, "p1", 1, 4, zero);
    feed(z, "p2", 1, 4, zero);
    double p[3];
    prompt_selector_probs(z, p, NULL);
    NEAR(p[0] + p[1] + p[2], 1.0); /* all filtered: plain uniform */
    CU_ASSERT_EQUAL(prompt_selector_next(z, 7, idx, NULL), 0);
    for (int j = 0; j < 7; j++) CU_ASSERT_TRUE(idx[j] < 3);
    prompt_selector_destroy(&z);
    prompt_dataset_destroy(&ds);
}

static void test_dump_stats(void) {
    prompt_dataset *ds = make_dataset(3);
    prompt_selector *sel = make_selector(ds, "{\"policy\":\"cohesion\"}", 1);
    float r[4] = {0, 1, 0, 1};
    feed(sel, "p1", 1, 4, r);
    json_t *lines = dump_lines(sel, "stats.jsonl"), *o;
    size_t n;
    double psum = 0;
    json_array_foreach(lines, n, o) {
        psum += json_real_value(json_object_get(o, "prob"));
        if (n == 1) {
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(o, "id")), "p1");
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(o, "groups")), 1);
            NEAR(json_real_value(json_object_get(o, "spread")), 0.5);
            NEAR(json_real_value(json_object_get(o, "cohesion")), 1); /* one source: the fallback */
        }
    }
    CU_ASSERT_EQUAL(json_array_size(lines), 3);
    json_decref(lines);
    NEAR(psum, 1.0);
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
}

static int suite_init(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_prompts_sel.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int suite_clean(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int register_selector_suites(void) {
    CU_pSuite s = CU_add_suite("selector", suite_init, suite_clean);
    if (!s) return -1;
    CU_add_test(s, "kendall_hand_values", test_kendall_hand_values);
    CU_add_test(s, "group_cohesion_and_spread", test_group_cohesion_and_spread);
    CU_add_test(s, "one_source", test_one_source);
    CU_add_test(s, "zero_spread_and_incoherent_downweighted", test_zero_spread_and_incoherent_downweighted);
    CU_add_test(s, "never_learnable_in_one_group", test_never_learnable_in_one_group);
    CU_add_test(s, "uniform_epochs", test_uniform_epochs);
    CU_add_test(s, "zero_variance_filter", test_zero_variance_filter);
    CU_add_test(s, "no_starvation", test_no_starvation);
    CU_add_test(s, "round_trip_cohesion", test_round_trip_cohesion);
    CU_add_test(s, "round_trip_uniform", test_round_trip_uniform);
    CU_add_test(s, "round_trip_zvf", test_round_trip_zvf);
    CU_add_test(s, "load_state_without_learnability", test_load_state_without_learnability);
    CU_add_test(s, "load_rejects_mismatch", test_load_rejects_mismatch);
    CU_add_test(s, "config_errors", test_config_errors);
    CU_add_test(s, "edges", test_edges);
    CU_add_test(s, "dump_stats", test_dump_stats);
    return 0;
}
