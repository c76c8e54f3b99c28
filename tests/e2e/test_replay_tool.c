/* tests/e2e/test_replay_tool.c — `rlhf replay` as a research tool, on a log recorded by a real run:
 *
 *   other_model:   a base with other weights is refused naming both identities and writes no
 *                  checkpoint; --allow-other-model trains and prints the importance ratios of the
 *                  first steps; the same config replays (identities equal);
 *   config_diffs:  rl.k and a generator setting are refused with the reason; rl.lr is printed with its
 *                  meaning; rl.prompts_per_step=16 (the log's groups no longer line up with its
 *                  versions) keeps every staleness >= 0 and says where the log ran out;
 *                  rl.max_staleness=0 too;
 *   rewards:       the default trains on the rewards the live run recorded (scores.jsonl) and says so;
 *                  it and --rewards recompute both give the live run's weights byte for byte;
 *                  --rewards recorded with changed reward sources is refused; the groups the live run
 *                  never consumed are scored with the sources, and said so;
 *   info_export:   replay-info --json counts what the log and scores.jsonl hold; replay-export's output,
 *                  read with pandas (tests/oracle/replay_export_check.py), matches the run's
 *                  metrics.jsonl step by step (mean reward, staleness) and RLOO advantages recomputed
 *                  there; --steps keeps exactly the groups scores.jsonl places in that range; a bad
 *                  range exits 2;
 *   ranges_resume: --steps 5:8 starts from the live checkpoint step_4 and ends byte-identical to the live
 *                  step_8 (model and optimizer); a replay stopped at step 3 and continued with --resume
 *                  ends byte-identical to an uninterrupted one; --steps 2:8 without a kept step_1 is
 *                  refused naming it;
 *   merge:         replay-merge of the log with itself: twice the records, the second copy's versions
 *                  shifted past the first's and its generator ids suffixed "@2"; the merged log
 *                  replays (recomputed rewards, its own clock: staleness never negative); an existing
 *                  output is refused;
 *   resume_live:   `rlhf run --resume` of a replay's output is refused (exit 2) unless --continue-live,
 *                  after which the new steps carry no "replayed" mark and the replayed ones do;
 *   updaters:      --updaters 2 (two MPI ranks) twice: byte-identical weights and optimizer state run
 *                  to run, within 1e-3 of the one-rank replay's (the partial sums are added in
 *                  another order, which Adam amplifies for gradients near 0; the weights move by more
 *                  than 1e-3 and a wrong follower by about lr = 0.01 a step); with --steps 5:8 the
 *                  second rank starts from the live checkpoint step_4 that rank 0 loaded (not from the
 *                  base) and ends within 1e-3 of the live step_8. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"
#include "model/model.h"
#include "model/model_infer.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static char g_run[256], g_log[300], g_cfg[300];

static int run_cmd(const char *out_path, const char *const *args, double timeout) {
    test_proc_opts o = {.out = out_path, .err = out_path};
    return test_proc_run_args(g_rlhf, g_rlhf, args, &o, timeout);
}

/* One recorded run of the easy task (8 steps), shared by the tests. */
static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_rtool_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf) || access(g_rlhf, X_OK) != 0) return -1;
    if (e2e_write_prompts(g_dir)) return -1;
    char cfg[256], doc[2048], out[256];
    snprintf(cfg, sizeof cfg, "%s/rec.json", g_dir);
    snprintf(g_run, sizeof g_run, "%s/rec", g_dir);
    snprintf(doc, sizeof doc,
             "{\"name\":\"rec\",\"run_dir\":\"rec\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":16},\"threads\":1},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"^[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":8,\"checkpoint_every\":4,\"seed\":3},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n");
    if (write_text(cfg, doc)) return -1;
    snprintf(out, sizeof out, "%s/rec.out", g_dir);
    const char *a[] = {"run", cfg, "--quiet", NULL};
    if (run_cmd(out, a, 180) != 0) return -1;
    snprintf(g_log, sizeof g_log, "%s/rollouts.log", g_run);
    snprintf(g_cfg, sizeof g_cfg, "%s/config.json", g_run);
    return access(g_log, F_OK) || access(g_cfg, F_OK);
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* `rlhf replay` of the recorded log into g_dir/NAME with the extra arguments; its exit status. */
static int replay(const char *name, const char *out, const char *const *extra) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, name);
    const char *a[24] = {"replay", g_log, "--config", g_cfg, "--out", dir, "--threads", "1"};
    int n = 8;
    for (int i = 0; extra && extra[i] && n < 23; i++) a[n++] = extra[i];
    a[n] = NULL;
    return run_cmd(out, a, 120);
}

static void test_other_model(void) {
    char out[256], other[300], set[400], ck[400];
    snprintf(out, sizeof out, "%s/other.out", g_dir);
    CU_ASSERT_EQUAL(replay("same", out, NULL), 0);
    /* another base: the recording's trained checkpoint has the same shape and other weights */
    snprintf(other, sizeof other, "%s/checkpoints/step_8/model.safetensors", g_run);
    snprintf(set, sizeof set, "model.base_checkpoint=%s", other);
    const char *e1[] = {"--set", set, NULL};
    CU_ASSERT_EQUAL(replay("other", out, e1), 1);
    CU_ASSERT(e2e_contains(out, "the log was sampled from another model than this config's base (weights "));
    CU_ASSERT(e2e_contains(out, "--allow-other-model trains on it anyway"));
    snprintf(ck, sizeof ck, "%s/other/checkpoints", g_dir);
    CU_ASSERT(access(ck, F_OK) != 0);
    const char *e2[] = {"--set", set, "--allow-other-model", NULL};
    CU_ASSERT_EQUAL(replay("other2", out, e2), 0);
    CU_ASSERT(e2e_contains(out, "warning: step 1 on another model's log: is_ratio/mean "));
    /* each version's weights are compared with the live run's (weights_hash in metrics.jsonl) */
    CU_ASSERT(e2e_contains(out, "warning: the weights after step 1 differ from the live run's (weights_hash "));
    snprintf(ck, sizeof ck, "%s/other2/checkpoints/step_8/model.safetensors", g_dir);
    CU_ASSERT(access(ck, F_OK) == 0);
}

/* every "staleness/min" of a metrics file is >= 0; the number of lines */
static int staleness_never_negative(const char *metrics, int *lines) {
    char *txt = e2e_slurp(metrics);
    int ok = txt != NULL;
    *lines = 0;
    char *save = NULL;
    for (char *l = txt ? strtok_r(txt, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        json_t *v = json_object_get(j, "staleness/min");
        if (!json_is_number(v) || json_number_value(v) < 0) ok = 0;
        if (json_object_get(j, "replayed") != json_true()) ok = 0;
        json_decref(j);
        (*lines)++;
    }
    free(txt);
    return ok;
}

static void test_config_diffs(void) {
    char out[256], m[300];
    snprintf(out, sizeof out, "%s/diff.out", g_dir);
    const char *k[] = {"--set", "rl.k=8", NULL};
    CU_ASSERT_EQUAL(replay("k", out, k), 2);
    CU_ASSERT(e2e_contains(out, "rl.k: 8 here, 4 in the recording"));
    CU_ASSERT(e2e_contains(out, "cannot change at replay: it decided how the log's samples were drawn"));
    const char *t[] = {"--set", "generators.temperature=0.5", NULL};
    CU_ASSERT_EQUAL(replay("t", out, t), 2);
    CU_ASSERT(e2e_contains(out, "generators.temperature: 0.5 here, 1.0 in the recording"));
    const char *p[] = {"--set", "rl.prompts_per_step=16", "--set", "rl.lr=0.02", "--set", "rl.steps=50", NULL};
    CU_ASSERT_EQUAL(replay("pps", out, p), 0);
    CU_ASSERT(e2e_contains(out, "rl.lr: 0.02 (recorded 0.01): trains with this value"));
    CU_ASSERT(e2e_contains(out, "rl.prompts_per_step: 16 (recorded 4): changes which groups train together"));
    CU_ASSERT(e2e_contains(out, "rlhf replay: rewards: recorded ("));
    int lines = 0;
    snprintf(m, sizeof m, "%s/pps/metrics.jsonl", g_dir);
    CU_ASSERT(staleness_never_negative(m, &lines));
    CU_ASSERT(lines >= 1 && lines < 50);
    const char *s0[] = {"--set", "rl.max_staleness=0", NULL};
    CU_ASSERT_EQUAL(replay("s0", out, s0), 0);
    snprintf(m, sizeof m, "%s/s0/metrics.jsonl", g_dir);
    CU_ASSERT(staleness_never_negative(m, &lines));
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = !rlhf_read_file(a, &x, &nx, NULL) && !rlhf_read_file(b, &y, &ny, NULL) && nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

static void test_rewards(void) {
    char out[256], live[400], rep[400];
    snprintf(out, sizeof out, "%s/rewards.out", g_dir);
    snprintf(live, sizeof live, "%s/checkpoints/step_8/model.safetensors", g_run);
    CU_ASSERT_EQUAL(replay("recorded", out, NULL), 0);
    CU_ASSERT(e2e_contains(out, "rlhf replay: rewards: recorded ("));
    CU_ASSERT(e2e_contains(out, "rlhf replay: the weights of all 8 versions compared are the live run's, bit for bit"));
    snprintf(rep, sizeof rep, "%s/recorded/checkpoints/step_8/model.safetensors", g_dir);
    CU_ASSERT(same_file(live, rep));
    const char *rc[] = {"--rewards", "recompute", NULL};
    CU_ASSERT_EQUAL(replay("recomputed", out, rc), 0);
    CU_ASSERT(e2e_contains(out, "rlhf replay: rewards: recomputed with the config's sources (--rewards recompute)"));
    snprintf(rep, sizeof rep, "%s/recomputed/checkpoints/step_8/model.safetensors", g_dir);
    CU_ASSERT(same_file(live, rep));
    const char *ch[] = {"--rewards", "recorded", "--set", "rewards=[{\"type\":\"regex\",\"pattern\":\"[0-9]\"}]", NULL};
    CU_ASSERT_EQUAL(replay("changed", out, ch), 1);
    CU_ASSERT(e2e_contains(out, "the config's rewards differ from the recording's"));
    const char *more[] = {"--set", "rl.steps=50", NULL};
    CU_ASSERT_EQUAL(replay("more", out, more), 0);
    CU_ASSERT(e2e_contains(out, "groups had no recorded rewards (the live updater never got them)"));
    CU_ASSERT(e2e_contains(out, "rlhf replay: the log ran out at step "));
}

static void test_info_export(void) {
    char out[256], exp[256], sc[300], cmd[2048];
    snprintf(out, sizeof out, "%s/info.out", g_dir);
    const char *a[] = {"replay-info", g_log, "--json", NULL};
    {
        test_proc_opts o = {.out = out, .err = "/dev/null"};
        CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, a, &o, 60), 0);
    }
    json_t *info = json_load_file(out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(info);
    /* scores.jsonl, counted here: groups consumed, and those of steps 3..4 */
    snprintf(sc, sizeof sc, "%s/scores.jsonl", g_run);
    char *txt = e2e_slurp(sc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    long consumed = 0, in_3_4 = 0;
    char *save = NULL;
    for (char *l = strtok_r(txt, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        long step = (long)json_integer_value(json_object_get(j, "step"));
        consumed++;
        in_3_4 += step >= 3 && step <= 4;
        json_decref(j);
    }
    free(txt);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(info, "consumed")), consumed);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(info, "steps")), 8);
    CU_ASSERT(json_integer_value(json_object_get(info, "records")) >= consumed);
    json_t *digit = json_object_get(json_object_get(info, "rewards"), "digit");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(digit, "n")) + json_integer_value(json_object_get(digit, "null")),
                    4 * consumed);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(info, "model_identity"), "tokenizer")),
                           "bytes");
    json_decref(info);
    /* the whole log, checked with pandas against metrics.jsonl */
    snprintf(exp, sizeof exp, "%s/all.jsonl", g_dir);
    const char *b[] = {"replay-export", g_log, "--jsonl", exp, NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, b, 60), 0);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/oracle/replay_export_check.py %s %s/metrics.jsonl 4 > %s 2>&1",
             RLHF_SOURCE_ROOT, exp, g_run, out);
    int rc = system(cmd);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc) {
        char *m = e2e_slurp(out);
        fprintf(stderr, "replay_export_check: %s\n", m ? m : "");
        free(m);
    }
    /* a step range: exactly the groups scores.jsonl places there */
    snprintf(exp, sizeof exp, "%s/s34.jsonl", g_dir);
    const char *c[] = {"replay-export", g_log, "--jsonl", exp, "--steps", "3:4", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, c, 60), 0);
    txt = e2e_slurp(exp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    long rows = 0;
    int in_range = 1;
    save = NULL;
    for (char *l = strtok_r(txt, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        long step = (long)json_integer_value(json_object_get(j, "step"));
        in_range &= step >= 3 && step <= 4;
        rows++;
        json_decref(j);
    }
    free(txt);
    CU_ASSERT(in_range);
    CU_ASSERT_EQUAL(rows, 4 * in_3_4);
    const char *d[] = {"replay-export", g_log, "--jsonl", exp, "--steps", "4:3", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, d, 60), 2);
    CU_ASSERT(e2e_contains(out, "--steps: expected A:B"));
}

static void test_ranges_resume(void) {
    char out[256], a[400], b[400], dir[256];
    snprintf(out, sizeof out, "%s/ranges.out", g_dir);
    const char *r58[] = {"--steps", "5:8", NULL};
    CU_ASSERT_EQUAL_FATAL(replay("r58", out, r58), 0);
    CU_ASSERT(e2e_contains(out, "from the live run's checkpoint step_4"));
    for (int f = 0; f < 2; f++) {
        const char *file = f ? "optimizer.safetensors" : "model.safetensors";
        snprintf(a, sizeof a, "%s/checkpoints/step_8/%s", g_run, file);
        snprintf(b, sizeof b, "%s/r58/checkpoints/step_8/%s", g_dir, file);
        CU_ASSERT(same_file(a, b));
    }
    const char *r28[] = {"--steps", "2:8", NULL};
    CU_ASSERT_EQUAL(replay("r28", out, r28), 1);
    CU_ASSERT(e2e_contains(out, "starting at step 2 needs the live run's checkpoint step_1"));
    /* stopped at 3, resumed to 8 */
    const char *s3[] = {"--set", "rl.steps=3", NULL};
    CU_ASSERT_EQUAL_FATAL(replay("part", out, s3), 0);
    snprintf(dir, sizeof dir, "%s/part", g_dir);
    const char *res[] = {"replay", "--resume", dir, "--threads", "1", "--set", "rl.steps=8", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, res, 120), 0);
    CU_ASSERT(e2e_contains(out, "rlhf replay: resuming "));
    for (int f = 0; f < 2; f++) {
        const char *file = f ? "optimizer.safetensors" : "model.safetensors";
        snprintf(a, sizeof a, "%s/recorded/checkpoints/step_8/%s", g_dir, file); /* test_rewards' whole replay */
        snprintf(b, sizeof b, "%s/part/checkpoints/step_8/%s", g_dir, file);
        CU_ASSERT(same_file(a, b));
    }
    /* metrics: steps 1..8 once each */
    snprintf(a, sizeof a, "%s/part/metrics.jsonl", g_dir);
    char *txt = e2e_slurp(a);
    int n = 0, in_order = 1;
    char *save = NULL;
    for (char *l = txt ? strtok_r(txt, "\n", &save) : NULL; l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        in_order &= json_integer_value(json_object_get(j, "step")) == ++n;
        json_decref(j);
    }
    free(txt);
    CU_ASSERT(in_order);
    CU_ASSERT_EQUAL(n, 8);
}

static void test_merge(void) {
    char out[256], merged[300], mdir[256];
    snprintf(out, sizeof out, "%s/merge.out", g_dir);
    snprintf(mdir, sizeof mdir, "%s/mergedir", g_dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(mdir, 0755), 0);
    snprintf(merged, sizeof merged, "%s/merged.log", mdir);
    const char *a[] = {"replay-merge", g_log, g_log, "-o", merged, NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, a, 60), 0);
    CU_ASSERT_EQUAL(run_cmd(out, a, 60), 1); /* exists */
    CU_ASSERT(e2e_contains(out, "exists; choose a new name"));
    /* the records, read back: the first half as recorded, the second rebased */
    char info[256];
    snprintf(info, sizeof info, "%s/orig.json", g_dir);
    const char *i1[] = {"replay-info", g_log, "--json", NULL};
    const char *i2[] = {"replay-info", merged, "--json", NULL};
    test_proc_opts o = {.out = info, .err = "/dev/null"};
    CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, i1, &o, 60), 0);
    json_t *orig = json_load_file(info, 0, NULL);
    CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, i2, &o, 60), 0);
    json_t *mj = json_load_file(info, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(orig);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mj);
    json_int_t rec = json_integer_value(json_object_get(orig, "records"));
    json_int_t vmax = json_integer_value(json_array_get(json_object_get(orig, "policy_versions"), 1));
    /* the second copy starts above every version of the first, its tokens' too (a completion sampled
     * while new weights arrived has tokens newer than its group's policy_version) */
    json_int_t tmax = vmax;
    replay_reader *rr = NULL;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&rr, g_log, NULL), 0);
    wire_rollout_group g;
    while (replay_reader_next(rr, &g, NULL, NULL) == 1) {
        for (uint64_t t = 0; g.token_versions && t < wire_rollout_group_total_tokens(&g); t++)
            if ((json_int_t)g.token_versions[t] > tmax) tmax = (json_int_t)g.token_versions[t];
        wire_rollout_group_free(&g);
    }
    replay_reader_close(&rr);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(mj, "records")), 2 * rec);
    CU_ASSERT_EQUAL(json_integer_value(json_array_get(json_object_get(mj, "policy_versions"), 1)), tmax + 1 + vmax);
    CU_ASSERT_EQUAL(json_object_size(json_object_get(mj, "generators")), 2); /* "gen" and "gen@2" */
    json_decref(orig);
    json_decref(mj);
    /* replayed: log order, recomputed rewards, the log's own clock */
    char dir[256], m[300];
    snprintf(dir, sizeof dir, "%s/mreplay", g_dir);
    const char *r[] = {"replay", merged, "--config", g_cfg, "--out", dir, "--threads", "1", "--set", "rl.steps=100", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, r, 120), 0);
    CU_ASSERT(e2e_contains(out, "staleness is measured on the log's own versions"));
    CU_ASSERT(e2e_contains(out, "rlhf replay: rewards: recomputed"));
    int lines = 0;
    snprintf(m, sizeof m, "%s/metrics.jsonl", dir);
    CU_ASSERT(staleness_never_negative(m, &lines));
    CU_ASSERT(lines > 8);
}

static void test_resume_live(void) {
    char out[256], dir[256];
    snprintf(out, sizeof out, "%s/live.out", g_dir);
    snprintf(dir, sizeof dir, "%s/tolive", g_dir);
    CU_ASSERT_EQUAL_FATAL(replay("tolive", out, NULL), 0);
    const char *a[] = {"run", "--resume", dir, "--quiet", "--set", "rl.steps=10", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, a, 60), 2);
    CU_ASSERT(e2e_contains(out, "the output of `rlhf replay` of "));
    CU_ASSERT(latest_ckpt(dir) == 8);
    const char *b[] = {"run", "--resume", dir, "--quiet", "--set", "rl.steps=10", "--continue-live", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, b, 120), 0);
    CU_ASSERT(latest_ckpt(dir) == 10);
    char m[300];
    snprintf(m, sizeof m, "%s/metrics.jsonl", dir);
    char *txt = e2e_slurp(m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    int n_replayed = 0, n_live = 0;
    char *save = NULL;
    for (char *l = strtok_r(txt, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        long step = (long)json_integer_value(json_object_get(j, "step"));
        int replayed = json_object_get(j, "replayed") == json_true();
        CU_ASSERT_EQUAL(replayed, step <= 8);
        n_replayed += replayed;
        n_live += !replayed;
        json_decref(j);
    }
    free(txt);
    CU_ASSERT_EQUAL(n_replayed, 8);
    CU_ASSERT_EQUAL(n_live, 2);
}

/* The largest |a - b| over two checkpoints' parameters (the same config); -1 when either won't load. */
static double max_param_diff(const char *a, const char *b) {
    model *x = NULL, *y = NULL;
    double d = -1;
    if (!model_load(&x, a, NULL, NULL) && !model_load(&y, b, NULL, NULL) && x->n_params == y->n_params) {
        d = 0;
        for (size_t i = 0; i < x->n_params; i++) {
            double e = fabs((double)x->params_mem[i] - y->params_mem[i]);
            if (!(e <= d)) d = e; /* a NaN poisons the result */
        }
    }
    model_destroy(&x);
    model_destroy(&y);
    return d;
}

/* Replays under mpirun: Open MPI's allocations live until exit, so no leak check of those processes
 * under `make sanitize` (as tests/e2e/test_dist_run.c). */
static int replay_mpi(const char *name, const char *out, const char *const *extra) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, name);
    const char *a[24] = {"replay", g_log, "--config", g_cfg, "--out", dir, "--threads", "1", "--updaters", "2"};
    int n = 10;
    for (int i = 0; extra && extra[i] && n < 23; i++) a[n++] = extra[i];
    a[n] = NULL;
    static const char *const env[] = {"ASAN_OPTIONS=detect_leaks=0:abort_on_error=1", NULL};
    test_proc_opts o = {.out = out, .err = out, .env = env};
    return test_proc_run_args(g_rlhf, g_rlhf, a, &o, 180);
}

static void test_updaters(void) {
    char out[256], a[400], b[400], one[400];
    snprintf(out, sizeof out, "%s/updaters.out", g_dir);
    CU_ASSERT_EQUAL_FATAL(replay_mpi("u2a", out, NULL), 0);
    CU_ASSERT(e2e_contains(out, "rlhf replay: 2 data-parallel updater ranks (MPI), 1 OpenMP thread(s) each"));
    CU_ASSERT_EQUAL_FATAL(replay_mpi("u2b", out, NULL), 0);
    for (int f = 0; f < 2; f++) {
        const char *file = f ? "optimizer.safetensors" : "model.safetensors";
        snprintf(a, sizeof a, "%s/u2a/checkpoints/step_8/%s", g_dir, file);
        snprintf(b, sizeof b, "%s/u2b/checkpoints/step_8/%s", g_dir, file);
        CU_ASSERT(same_file(a, b));
    }
    /* against one rank (the live run's weights: test_rewards showed the one-rank replay equals them) */
    snprintf(a, sizeof a, "%s/u2a/checkpoints/step_8/model.safetensors", g_dir);
    snprintf(one, sizeof one, "%s/checkpoints/step_8/model.safetensors", g_run);
    snprintf(b, sizeof b, "%s/base.safetensors", g_run);
    /* Adam turns last-bit differences of a gradient element near 0 into updates of up to lr (0.01): over
     * 8 steps 2e-5 was seen; a follower that trained from other weights is off by about lr per step */
    double d = max_param_diff(a, one), moved = max_param_diff(one, b);
    CU_ASSERT(d >= 0 && d < 1e-3);
    /* the comparison means something only if training moved the weights far more than the tolerance */
    CU_ASSERT(moved > 1e-3);
    /* from a live checkpoint: the follower must take rank 0's state, not the base */
    const char *r58[] = {"--steps", "5:8", NULL};
    CU_ASSERT_EQUAL_FATAL(replay_mpi("u2r58", out, r58), 0);
    snprintf(a, sizeof a, "%s/u2r58/checkpoints/step_8/model.safetensors", g_dir);
    d = max_param_diff(a, one);
    CU_ASSERT(d >= 0 && d < 1e-3);
    /* a bad count is a usage error before anything starts */
    const char *bad[] = {"replay", g_log, "--config", g_cfg, "--updaters", "0", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, bad, 30), 2);
}

void e2e_register_replay_tool(void);
void e2e_register_replay_tool(void) {
    CU_pSuite s = CU_add_suite("e2e_replay_tool", suite_init, suite_cleanup);
    CU_add_test(s, "other_model", test_other_model);
    CU_add_test(s, "config_diffs", test_config_diffs);
    CU_add_test(s, "rewards", test_rewards);
    CU_add_test(s, "info_export", test_info_export);
    CU_add_test(s, "ranges_resume", test_ranges_resume);
    CU_add_test(s, "merge", test_merge);
    CU_add_test(s, "resume_live", test_resume_live);
    CU_add_test(s, "updaters", test_updaters);
}
