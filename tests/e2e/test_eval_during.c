/* tests/e2e/test_eval_during.c — held-out evaluation during training (eval.every) with real launches:
 *
 *   during_training: a run with eval.every=2 over 6 steps records the checkpoints of steps 2, 4 and 6
 *                    (eval.jsonl, step_N/eval.json), prints each on the terminal, points
 *                    checkpoints/best at the checkpoint the records rank first (pass rate, reward mean,
 *                    earlier step: computed here from eval.jsonl), keeps exactly the newest and the best
 *                    (checkpoint.keep=1, keep_best=1), and `rlhf eval RUN_DIR --checkpoint best`
 *                    reproduces the recorded pass rate of that checkpoint;
 *   refusals:        `--record` with a sampling option exits 2; `--checkpoint best` of a run that
 *                    evaluated nothing is an error saying how to get one; eval.every that is not a
 *                    multiple of rl.checkpoint_every, or without task.eval, is refused before start. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];

static int suite_init(void) { return e2e_suite_dir("evald", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf); }

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

static int run_cmd(const char *out_path, const char *const *args, double timeout) {
    test_proc_opts o = {.out = out_path, .err = out_path};
    return test_proc_run_args(g_rlhf, g_rlhf, args, &o, timeout);
}

/* The easy task with held-out prompts (the same 16) and the given extra top-level sections. */
static void write_cfg(const char *path, const char *name, const char *task_extra, const char *extra) {
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"name\":\"%s\",\"run_dir\":\"%s/%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"%s},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":6,\"checkpoint_every\":1,\"seed\":7},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}%s}\n",
             name, g_dir, name, task_extra, extra);
    write_text(path, doc);
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

static void test_during_training(void) {
    char cfg[256], out[256], run[256], p[512];
    snprintf(cfg, sizeof cfg, "%s/evald.json", g_dir);
    snprintf(out, sizeof out, "%s/evald.out", g_dir);
    snprintf(run, sizeof run, "%s/evald", g_dir);
    write_cfg(cfg, "evald", ",\"eval\":\"prompts.jsonl\"",
              ",\n \"checkpoint\":{\"keep\":1,\"keep_best\":1},\n \"eval\":{\"every\":2}");
    const char *a[] = {"run", cfg, NULL};
    int rc = run_cmd(out, a, 180);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(e2e_contains(out, "[rlhf run] held-out eval of step 2: pass rate "));
    CU_ASSERT(e2e_contains(out, "[rlhf run] held-out eval of step 6: pass rate "));
    CU_ASSERT(e2e_contains(out, "[rlhf run] best held-out pass rate: "));
    /* eval.jsonl: steps 2, 4, 6 once each; the best by the documented order, computed here */
    snprintf(p, sizeof p, "%s/eval.jsonl", run);
    char *txt = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    long steps[8], best = -1;
    double pass[8], rmean[8], best_pass = -1, best_r = -1;
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(txt, "\n", &save); line && n < 8; line = strtok_r(NULL, "\n", &save), n++) {
        json_t *j = json_loads(line, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        steps[n] = (long)json_integer_value(json_object_get(j, "step"));
        pass[n] = json_number_value(json_object_get(j, "pass_rate"));
        rmean[n] = json_number_value(json_object_get(j, "reward_mean"));
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "prompts")), 16);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "samples")), 1);
        CU_ASSERT(pass[n] >= 0 && pass[n] <= 1);
        if (pass[n] > best_pass || (pass[n] == best_pass && rmean[n] > best_r)) {
            best = steps[n];
            best_pass = pass[n];
            best_r = rmean[n];
        }
        json_decref(j);
    }
    free(txt);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT(steps[0] == 2 && steps[1] == 4 && steps[2] == 6);
    CU_ASSERT_EQUAL(link_step(run, "best"), best);
    CU_ASSERT_EQUAL(link_step(run, "latest"), 6);
    /* keep 1 + keep_best 1: the newest and the best, nothing pending */
    for (int s = 1; s <= 6; s++) {
        snprintf(p, sizeof p, "%s/checkpoints/step_%d", run, s);
        CU_ASSERT_EQUAL(access(p, F_OK) == 0, s == 6 || s == best);
        snprintf(p, sizeof p, "%s/checkpoints/step_%d/eval.pending", run, s);
        CU_ASSERT(access(p, F_OK) != 0);
    }
    /* the recorded figure is what evaluating the best checkpoint again gives (greedy, one thread) */
    char out2[256];
    snprintf(out2, sizeof out2, "%s/best.out", g_dir);
    const char *b[] = {"eval", run, "--checkpoint", "best", "--threads", "1", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out2, b, 60), 0);
    char *o = e2e_slurp(out2);
    json_t *j = o ? json_loads(o, 0, NULL) : NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    char want[128];
    snprintf(want, sizeof want, "/checkpoints/step_%ld/model.safetensors", best);
    CU_ASSERT_PTR_NOT_NULL(strstr(json_string_value(json_object_get(j, "checkpoint")), want));
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(j, "pass_rate")), best_pass, 1e-9);
    json_decref(j);
    free(o);
    /* --record compares like with like: the sampling options are refused */
    const char *c[] = {"eval", run, "--record", "--temperature", "1", NULL};
    CU_ASSERT_EQUAL(run_cmd(out2, c, 30), 2);
    CU_ASSERT(e2e_contains(out2, "--record takes RUN_DIR, --checkpoint and --threads only"));
}

static void test_refusals(void) {
    char cfg[256], out[256], run[256];
    snprintf(cfg, sizeof cfg, "%s/plain.json", g_dir);
    snprintf(out, sizeof out, "%s/plain.out", g_dir);
    snprintf(run, sizeof run, "%s/plain", g_dir);
    write_cfg(cfg, "plain", "", ",\n \"checkpoint\":{\"keep\":2}");
    const char *a[] = {"run", cfg, "--quiet", "--set", "rl.steps=2", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, a, 120), 0);
    const char *b[] = {"eval", run, "--checkpoint", "best", "--split", "train", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, b, 30), 1);
    CU_ASSERT(e2e_contains(out, "no checkpoint of "));
    CU_ASSERT(e2e_contains(out, "eval.every in the config evaluates during training"));
    /* before start: eval.every without held-out prompts, and not a multiple of checkpoint_every */
    snprintf(cfg, sizeof cfg, "%s/bad.json", g_dir);
    write_cfg(cfg, "bad", "", ",\n \"eval\":{\"every\":2}");
    const char *c[] = {"run", cfg, "--quiet", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, c, 30), RLHF_EXIT_CONFIG);
    CU_ASSERT(e2e_contains(out, "bad.json: eval.every: needs task.eval"));
    write_cfg(cfg, "bad", ",\"eval\":\"prompts.jsonl\"", ",\n \"eval\":{\"every\":3}");
    const char *d[] = {"run", cfg, "--quiet", "--set", "rl.checkpoint_every=2", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, d, 30), RLHF_EXIT_CONFIG);
    CU_ASSERT(e2e_contains(out, "eval.every: must be a multiple of rl.checkpoint_every (2)"));
}

void e2e_register_eval_during(void);
void e2e_register_eval_during(void) {
    CU_pSuite s = CU_add_suite("e2e_eval_during", suite_init, suite_cleanup);
    CU_add_test(s, "during_training", test_during_training);
    CU_add_test(s, "refusals", test_refusals);
}
