/* tests/updater/test_checkpoint.c — the held-out evaluation records of checkpoints
 * (updater_checkpoint_record_eval, updater_checkpoint_ranking, updater_checkpoint_pending_eval) on a
 * run directory laid out by hand: which checkpoint `best` names (pass rate, then reward mean, then the
 * earlier step), what eval.jsonl holds, and which checkpoints pruning keeps (the newest
 * checkpoint.keep, the checkpoint.keep_best best, every one still waiting for its evaluation). */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_paths.h"
#include "updater/updater.h"

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}

static int exists(const char *run, const char *rel) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", run, rel);
    return access(p, F_OK) == 0;
}

static long link_step(const char *run, const char *name) {
    char p[512], t[64];
    snprintf(p, sizeof p, "%s/checkpoints/%s", run, name);
    ssize_t n = readlink(p, t, sizeof t - 1);
    long s = -1;
    if (n > 0) {
        t[n] = 0;
        if (sscanf(t, "step_%ld", &s) != 1) s = -1;
    }
    return s;
}

static int record(const char *run, long step, double pass, double reward, int keep, int keep_best, int *is_best) {
    json_t *r = json_pack("{s:f, s:f, s:i, s:i}", "pass_rate", pass, "reward_mean", reward, "prompts", 10, "samples", 1);
    rlhf_error err = {0};
    int rc = updater_checkpoint_record_eval(run, step, r, keep, keep_best, is_best, &err);
    if (rc) fprintf(stderr, "record_eval: %s: %s\n", err.where, err.msg);
    json_decref(r);
    return rc;
}

static void test_best_ranking_and_pruning(void) {
    char run[] = "/tmp/rlhf_ckeval_XXXXXX", p[512];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(run));
    snprintf(p, sizeof p, "%s/checkpoints", run);
    CU_ASSERT_EQUAL_FATAL(mkdir(p, 0755), 0);
    for (int s = 1; s <= 6; s++) {
        snprintf(p, sizeof p, "%s/checkpoints/step_%d", run, s);
        CU_ASSERT_EQUAL_FATAL(mkdir(p, 0755), 0);
        if (s != 1) { /* every checkpoint but the first is due for an evaluation */
            snprintf(p, sizeof p, "%s/checkpoints/step_%d/eval.pending", run, s);
            touch(p);
        }
    }
    snprintf(p, sizeof p, "%s/checkpoints/latest", run);
    CU_ASSERT_EQUAL_FATAL(symlink("step_6", p), 0);
    long ranked[8];
    CU_ASSERT_EQUAL(updater_checkpoint_ranking(run, ranked, 8), 0);
    CU_ASSERT_EQUAL(updater_checkpoint_pending_eval(run), 2); /* the oldest first */
    CU_ASSERT_EQUAL(link_step(run, "best"), -1);

    int is_best = -1;
    /* keep 1 newest, keep_best 2 */
    CU_ASSERT_EQUAL(record(run, 2, 0.5, 0.2, 1, 2, &is_best), 0);
    CU_ASSERT_EQUAL(is_best, 1);
    CU_ASSERT_EQUAL(link_step(run, "best"), 2);
    CU_ASSERT(!exists(run, "checkpoints/step_2/eval.pending"));
    CU_ASSERT(exists(run, "checkpoints/step_2/eval.json"));
    CU_ASSERT(!exists(run, "checkpoints/step_1")); /* not newest, not evaluated, not pending: pruned */
    CU_ASSERT_EQUAL(updater_checkpoint_pending_eval(run), 3);

    CU_ASSERT_EQUAL(record(run, 3, 0.7, 0.1, 1, 2, &is_best), 0);
    CU_ASSERT_EQUAL(is_best, 1);
    CU_ASSERT_EQUAL(link_step(run, "best"), 3);
    CU_ASSERT(exists(run, "checkpoints/step_2")); /* second best of two: keep_best 2 keeps it */

    /* the same pass rate with a higher reward mean beats step 3 */
    CU_ASSERT_EQUAL(record(run, 4, 0.7, 0.3, 1, 2, &is_best), 0);
    CU_ASSERT_EQUAL(is_best, 1);
    CU_ASSERT_EQUAL(link_step(run, "best"), 4);
    CU_ASSERT(!exists(run, "checkpoints/step_2")); /* third of three: pruned */
    CU_ASSERT(exists(run, "checkpoints/step_3"));

    /* a tie with step 4 in both figures: the earlier step stays best */
    CU_ASSERT_EQUAL(record(run, 5, 0.7, 0.3, 1, 2, &is_best), 0);
    CU_ASSERT_EQUAL(is_best, 0);
    CU_ASSERT_EQUAL(link_step(run, "best"), 4);
    CU_ASSERT(!exists(run, "checkpoints/step_3")); /* now third behind 4 and 5 */
    CU_ASSERT(exists(run, "checkpoints/step_5"));
    CU_ASSERT(exists(run, "checkpoints/step_6")); /* newest, and still pending */

    CU_ASSERT_EQUAL(updater_checkpoint_ranking(run, ranked, 8), 2); /* only the evaluated that remain */
    CU_ASSERT_EQUAL(ranked[0], 4);
    CU_ASSERT_EQUAL(ranked[1], 5);

    /* eval.jsonl: one line per record, in order, with the step and the figures given */
    snprintf(p, sizeof p, "%s/eval.jsonl", run);
    FILE *f = fopen(p, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[1024];
    long want_steps[] = {2, 3, 4, 5};
    double want_pass[] = {0.5, 0.7, 0.7, 0.7};
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        if (n < 4) {
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "step")), want_steps[n]);
            CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(j, "pass_rate")), want_pass[n], 1e-9);
            CU_ASSERT(json_integer_value(json_object_get(j, "time")) > 1600000000);
        }
        json_decref(j);
        n++;
    }
    fclose(f);
    CU_ASSERT_EQUAL(n, 4);

    /* a checkpoint that does not exist is an error naming it, and records nothing */
    rlhf_error err = {0};
    json_t *r = json_pack("{s:f, s:f}", "pass_rate", 1.0, "reward_mean", 1.0);
    CU_ASSERT(updater_checkpoint_record_eval(run, 99, r, 1, 2, NULL, &err) < 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "step_99"));
    json_decref(r);
    CU_ASSERT_EQUAL(link_step(run, "best"), 4);
    test_remove_tree(run);
}

int register_checkpoint_suite(void);
int register_checkpoint_suite(void) {
    CU_pSuite s = CU_add_suite("checkpoint_eval", NULL, NULL);
    if (!s) return -1;
    return !CU_add_test(s, "best_ranking_and_pruning", test_best_ranking_and_pruning);
}
