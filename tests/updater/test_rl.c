/* tests/updater/test_rl.c — RL math against hand-computed values, PPO gradient against finite
 * differences of its own objective, and run-config validation (errors name the JSON path). */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test_paths.h"
#include "updater/updater.h"

#define NEAR(a, b) CU_ASSERT(fabs((double)(a) - (double)(b)) < 1e-5)

static void test_rloo_hand_computed(void) {
    /* group 0: [1,0,0,1]: A_0 = 1 - (0+0+1)/3 = 2/3, A_1 = 0 - (1+0+1)/3 = -2/3
     * group 1: all 0.5 -> no spread, dropped
     * group 2: [2,0,1,1]: A_0 = 2 - 2/3 = 4/3, A_1 = 0 - 4/3, A_2 = 1 - 3/3 = 0 */
    float r[12] = {1, 0, 0, 1, 0.5f, 0.5f, 0.5f, 0.5f, 2, 0, 1, 1};
    float a[12];
    int keep[3];
    int dropped = rl_rloo_advantages(a, keep, r, 3, 4);
    CU_ASSERT_EQUAL(dropped, 1);
    CU_ASSERT_EQUAL(keep[0], 1);
    CU_ASSERT_EQUAL(keep[1], 0);
    CU_ASSERT_EQUAL(keep[2], 1);
    NEAR(a[0], 2.0 / 3);
    NEAR(a[1], -2.0 / 3);
    NEAR(a[2], -2.0 / 3);
    NEAR(a[3], 2.0 / 3);
    for (int i = 4; i < 8; i++) NEAR(a[i], 0);
    NEAR(a[8], 4.0 / 3);
    NEAR(a[9], -4.0 / 3);
    NEAR(a[10], 0);
    NEAR(a[11], 0);
    /* RLOO advantages of a kept group sum to zero */
    NEAR(a[8] + a[9] + a[10] + a[11], 0);
}

/* B=2, T=3; rho = [0.5, 3, (masked)], [1, 1.5, 2.5]; A = [1, -2]; N = 5 masked tokens. */
static float LOGMU[6] = {-1.0f, -2.0f, -1.0f, -0.7f, -1.2f, -3.0f};
static float MASK[6] = {1, 1, 0, 1, 1, 1};
static float ADV[2] = {1, -2};
static void make_logp(float *logp) {
    double rho[6] = {0.5, 3, 1, 1, 1.5, 2.5};
    for (int i = 0; i < 6; i++) logp[i] = (float)(LOGMU[i] + log(rho[i]));
}

static void test_tis_truncation(void) {
    float logp[6], coef[6];
    make_logp(logp);
    rl_loss_config lc = {.loss = RL_LOSS_TIS, .is_cap = 2.0f, .clip_eps = 0.2f};
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, MASK, ADV, 2, 3, &lc);
    /* coef = -min(rho, 2) * A / 5 */
    NEAR(coef[0], -0.5 * 1 / 5);
    NEAR(coef[1], -2.0 * 1 / 5); /* rho 3 truncated to 2 */
    NEAR(coef[2], 0);            /* masked */
    NEAR(coef[3], -1.0 * -2 / 5);
    NEAR(coef[4], -1.5 * -2 / 5);
    NEAR(coef[5], -2.0 * -2 / 5); /* rho 2.5 truncated */
    CU_ASSERT_EQUAL(st.n_tokens, 5);
    NEAR(st.ratio_mean, (0.5 + 3 + 1 + 1.5 + 2.5) / 5);
    NEAR(st.ratio_max, 3);
    NEAR(st.clip_frac, 2.0 / 5);
}

static double ppo_objective(const float *logp, const rl_loss_config *lc) {
    float coef[6];
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, MASK, ADV, 2, 3, lc);
    return st.loss;
}

static void test_ppo_clip(void) {
    float logp[6], coef[6];
    make_logp(logp);
    rl_loss_config lc = {.loss = RL_LOSS_PPO_CLIP, .is_cap = 2.0f, .clip_eps = 0.2f};
    rl_step_stats st;
    rl_token_coeffs(coef, &st, logp, LOGMU, MASK, ADV, 2, 3, &lc);
    /* A=1:  rho 0.5 -> min(0.5, 0.8) unclipped: coef -0.5/5; rho 3 -> min(3, 1.2) clipped: 0
     * A=-2: rho 1 -> -2 both; rho 1.5 -> min(-3, -2.4) unclipped; rho 2.5 -> min(-5, -2.4) unclipped */
    NEAR(coef[0], -0.1);
    NEAR(coef[1], 0);
    NEAR(coef[2], 0);
    NEAR(coef[3], 0.4);
    NEAR(coef[4], 0.6);
    NEAR(coef[5], 1.0);
    NEAR(st.clip_frac, 1.0 / 5);
    NEAR(st.loss, -(0.5 + 1.2 - 2 - 3 - 5) / 5);
    /* independent oracle: central finite differences of the PPO objective w.r.t. each logp */
    for (int i = 0; i < 6; i++) {
        float lp[6];
        memcpy(lp, logp, sizeof lp);
        double h = 1e-3;
        lp[i] = (float)(logp[i] + h);
        double up = ppo_objective(lp, &lc);
        lp[i] = (float)(logp[i] - h);
        double dn = ppo_objective(lp, &lc);
        double fd = (up - dn) / (2 * h);
        CU_ASSERT(fabs(fd - coef[i]) < 2e-3);
    }
}

static void test_kl_penalty(void) {
    float logp[6] = {-1, -2, -3, -0.5f, -0.5f, -0.5f};
    float logref[6] = {-1.5f, -1, -9, -1, -1, -1};
    float kl[2];
    rl_kl_penalty(kl, logp, logref, MASK, 2, 3);
    NEAR(kl[0], 0.5 - 1.0); /* third token masked */
    NEAR(kl[1], 1.5);
}

/* ---------------------------------------------------------------- config */

static const char *BASE =
    "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},"
    "\"rewards\":[{\"type\":\"exact_match\"}]}";

static int parse_with(const char *json, const char *set, rlhf_error *err, run_config *cfg) {
    json_error_t jerr;
    json_t *doc = json_loads(json, 0, &jerr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    int rc = 0;
    if (set) rc = run_config_apply_override(doc, set, err);
    if (!rc) rc = run_config_parse(cfg, doc, "cfg.json", err);
    json_decref(doc);
    return rc;
}

static void expect_error(const char *set, const char *where, const char *msg_part) {
    rlhf_error err = {0};
    run_config cfg;
    int rc = parse_with(BASE, set, &err, &cfg);
    CU_ASSERT_EQUAL(rc, RLHF_EINVAL);
    if (rc == 0) {
        run_config_free(&cfg);
        return;
    }
    CU_ASSERT_STRING_EQUAL(err.where, where);
    if (!strstr(err.msg, msg_part)) fprintf(stderr, "\n  got '%s: %s'\n", err.where, err.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, msg_part));
}

static void test_config_defaults_and_overrides(void) {
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "rl.lr=0.003", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.max_staleness, 4);
    CU_ASSERT_EQUAL(cfg.k, 8);
    CU_ASSERT_EQUAL(cfg.loss, RL_LOSS_TIS);
    NEAR(cfg.lr, 0.003);
    CU_ASSERT_STRING_EQUAL(cfg.run_dir, "runs/t");
    /* generation defaults: one line (stop "\n", cut), no filters, log q as the behaviour log-prob */
    CU_ASSERT_EQUAL_FATAL(cfg.n_stop, 1);
    CU_ASSERT_STRING_EQUAL(cfg.stop[0], "\n");
    CU_ASSERT_EQUAL(cfg.include_stop, 0);
    CU_ASSERT_EQUAL(cfg.top_k, 0);
    NEAR(cfg.min_p, 0.0);
    CU_ASSERT_EQUAL(cfg.behaviour_logprobs, RUN_BEHAVIOUR_SAMPLING);
    /* the resolved document carries the defaults */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(cfg.resolved, "rl"), "max_staleness")), 4);
    run_config_free(&cfg);
    /* sync mode forces max_staleness 0; a bare word override is a string */
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "mode=sync", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.mode, RUN_MODE_SYNC);
    CU_ASSERT_EQUAL(cfg.max_staleness, 0);
    run_config_free(&cfg);
    /* a task's own stop strings, kept in the text; the filters; the policy's log-probs */
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.stop=[\"</s>\",\"\\n\\n\"]", &err, &cfg), 0);
    CU_ASSERT_EQUAL_FATAL(cfg.n_stop, 2);
    CU_ASSERT_STRING_EQUAL(cfg.stop[0], "</s>");
    CU_ASSERT_STRING_EQUAL(cfg.stop[1], "\n\n");
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.stop=[]", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.n_stop, 0); /* EOS and max_tokens only */
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.include_stop=true", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.include_stop, 1);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.behaviour_logprobs=policy", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.behaviour_logprobs, RUN_BEHAVIOUR_POLICY);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.min_p=0.1", &err, &cfg), 0);
    NEAR(cfg.min_p, 0.1);
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "generators.top_k=50", &err, &cfg), 0);
    CU_ASSERT_EQUAL(cfg.top_k, 50);
    run_config_free(&cfg);
}

static void test_config_errors_name_path(void) {
    expect_error("rl.max_staleness=-1", "cfg.json: rl.max_staleness", "must be an integer >= 0");
    expect_error("rl.k=\"eight\"", "--set rl.k", "must be an integer");
    expect_error("rl.colour=3", "cfg.json: rl.colour", "unknown key");
    expect_error("generators.top_p=1.5", "cfg.json: generators.top_p", "in [0.01, 1]");
    {   /* generators only on other hosts: async yes, sync (which splits a step among known generators) no */
        rlhf_error err = {0};
        run_config cfg;
        CU_ASSERT_EQUAL(parse_with(BASE, "generators.count=0", &err, &cfg), 0);
        CU_ASSERT_EQUAL(cfg.gen_count, 0);
        run_config_free(&cfg);
        json_t *doc = json_loads(BASE, 0, NULL);
        json_object_set_new(doc, "mode", json_string("sync"));
        char *sync = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        CU_ASSERT_EQUAL(parse_with(sync, "generators.count=0", &err, &cfg), RLHF_EINVAL);
        CU_ASSERT_STRING_EQUAL(err.where, "cfg.json: generators.count");
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "needs mode \"async\""));
        free(sync);
    }
    expect_error("rl.loss=grpo", "cfg.json: rl.loss", "\"tis\" or \"ppo_clip\"");
    expect_error("mode=fast", "cfg.json: mode", "async");
    expect_error("updaters.count=0", "cfg.json: updaters.count", "must be an integer in [1, 256]");
    expect_error("task=3", "--set task", "must be an object");
    expect_error("rewards=[]", "cfg.json: rewards", "at least one");
    expect_error("extra=1", "cfg.json: extra", "unknown key");
    expect_error("task.stop=\"\\n\"", "--set task.stop", "must be an array");
    expect_error("task.stop=[\"a\",\"\"]", "cfg.json: task.stop[1]", "must be a non-empty string");
    expect_error("task.stop=[\"a\",3]", "cfg.json: task.stop[1]", "must be a non-empty string");
    expect_error("task.stop=[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\",\"14\","
                 "\"15\",\"16\",\"17\"]",
                 "cfg.json: task.stop", "at most 16");
    expect_error("task.include_stop=1", "--set task.include_stop", "must be true or false");
    expect_error("generators.min_p=1.5", "cfg.json: generators.min_p", "in [0, 1]");
    expect_error("generators.min_p=-0.5", "cfg.json: generators.min_p", "in [0, 1]");
    expect_error("generators.top_k=-1", "cfg.json: generators.top_k", "must be an integer >= 0");
    expect_error("generators.top_k=0.5", "--set generators.top_k", "must be an integer");
    expect_error("generators.behaviour_logprobs=q", "cfg.json: generators.behaviour_logprobs",
                 "\"sampling\" or \"policy\"");
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL(parse_with("{\"rewards\":[1]}", NULL, &err, &cfg), RLHF_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "cfg.json: task");
    json_t *empty = json_object();
    CU_ASSERT_EQUAL(run_config_apply_override(empty, "novalue", &err), RLHF_EINVAL);
    json_decref(empty);
}

/* --set values take the type the key has in the config table, not whatever JSON they happen to parse as */
static void test_config_set_typed_by_schema(void) {
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "name=2024", &err, &cfg), 0);
    CU_ASSERT_STRING_EQUAL(cfg.name, "2024");
    CU_ASSERT(json_is_string(json_object_get(cfg.resolved, "name")));
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "task.eval=true", &err, &cfg), 0);
    CU_ASSERT_STRING_EQUAL(cfg.eval_path, "true");
    run_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "name=\"quoted\"", &err, &cfg), 0);
    CU_ASSERT_STRING_EQUAL(cfg.name, "quoted");
    run_config_free(&cfg);
    /* below a free-form section the value is still JSON when it parses */
    CU_ASSERT_EQUAL_FATAL(parse_with(BASE, "broker.queue_capacity=3", &err, &cfg), 0);
    CU_ASSERT(json_is_integer(json_object_get(cfg.broker, "queue_capacity")));
    run_config_free(&cfg);
    expect_error("rl.lr=abc", "--set rl.lr", "must be a number, got 'abc'");
    expect_error("rl.k=4.5", "--set rl.k", "must be an integer");
    expect_error("task.include_stop=yes", "--set task.include_stop", "must be true or false");
    expect_error("task.stop=x", "--set task.stop", "must be an array");
    expect_error("rewards={\"a\":1,\"a\":2}", "--set rewards", "must be an array");
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

/* A key given twice in a config file is refused, naming the file and the line. */
static void test_config_duplicate_keys(void) {
    char dir[] = "/tmp/rlhf_cfg_XXXXXX", p[256];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(p, sizeof p, "%s/dup.json", dir);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},\n"
                  " \"rl\":{\"lr\":0.1,\n \"lr\":0.2},\"rewards\":[{\"type\":\"exact_match\"}]}\n");
    rlhf_error err = {0};
    run_config cfg;
    CU_ASSERT_EQUAL(run_config_load(&cfg, p, NULL, 0, &err), RLHF_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.where, "dup.json:3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "duplicate"));
    if (!strstr(err.msg, "duplicate")) fprintf(stderr, "\n  got '%s: %s'\n", err.where, err.msg);
    test_remove_tree(dir);
}

/* Relative paths in a config file are relative to its folder; with --set, to the working directory.
 * Either way the resolved config holds them absolute (what --resume from elsewhere needs). */
static void test_config_relative_paths(void) {
    char dir[] = "/tmp/rlhf_cfg_XXXXXX", sub[256], p[512], want[2048], cwd[1024];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof cwd));
    snprintf(sub, sizeof sub, "%s/configs", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0755), 0);
    snprintf(p, sizeof p, "%s/run.json", sub);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"../data/m.safetensors\",\"tokenizer\":\"bytes\"},"
                  "\"task\":{\"train\":\"p.jsonl\",\"eval\":\"/abs/e.jsonl\"},"
                  "\"broker\":{\"dataset\":\"b.jsonl\"},\"rewards\":[{\"type\":\"exact_match\"}]}\n");
    rlhf_error err = {0};
    run_config cfg;
    char *sets[] = {"task.eval=rel/e.jsonl"};
    CU_ASSERT_EQUAL_FATAL(run_config_load(&cfg, p, sets, 1, &err), 0);
    snprintf(want, sizeof want, "%s/data/m.safetensors", dir); /* ".." collapsed: the file named plainly */
    CU_ASSERT_STRING_EQUAL(cfg.base_checkpoint, want);
    snprintf(want, sizeof want, "%s/configs/p.jsonl", dir);
    CU_ASSERT_STRING_EQUAL(cfg.train_path, want);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(cfg.resolved, "task"), "train")), want);
    snprintf(want, sizeof want, "%s/configs/b.jsonl", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg.broker, "dataset")), want);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, "bytes"); /* a name, not a path */
    snprintf(want, sizeof want, "%s/rel/e.jsonl", cwd);
    CU_ASSERT_STRING_EQUAL(cfg.eval_path, want);
    snprintf(want, sizeof want, "%s/runs/t", cwd); /* the default run directory: under the working directory */
    CU_ASSERT_STRING_EQUAL(cfg.run_dir, want);
    run_config_free(&cfg);
    /* a run's config.json from before the rule (launcher section, no "resolved"): working directory */
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},"
                  "\"rewards\":[{\"type\":\"exact_match\"}],\"launcher\":{\"auto_endpoint\":true}}\n");
    CU_ASSERT_EQUAL_FATAL(run_config_load(&cfg, p, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s/p.jsonl", cwd);
    CU_ASSERT_STRING_EQUAL(cfg.train_path, want);
    run_config_free(&cfg);
    /* ".." after a symbolic link means the link target's parent to the kernel: such a path is kept as
     * written, not collapsed to a different file */
    char real_deep[300], link[300];
    snprintf(real_deep, sizeof real_deep, "%s/real", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(real_deep, 0755), 0);
    snprintf(real_deep, sizeof real_deep, "%s/real/deep", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(real_deep, 0755), 0);
    snprintf(link, sizeof link, "%s/ln", sub);
    CU_ASSERT_EQUAL_FATAL(symlink(real_deep, link), 0);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"ln/../m.safetensors\"},"
                  "\"task\":{\"train\":\"./a/./b/../p.jsonl\"},\"rewards\":[{\"type\":\"exact_match\"}]}\n");
    CU_ASSERT_EQUAL_FATAL(run_config_load(&cfg, p, NULL, 0, &err), 0);
    snprintf(want, sizeof want, "%s/configs/ln/../m.safetensors", dir);
    CU_ASSERT_STRING_EQUAL(cfg.base_checkpoint, want);
    snprintf(want, sizeof want, "%s/configs/a/p.jsonl", dir);
    CU_ASSERT_STRING_EQUAL(cfg.train_path, want);
    run_config_free(&cfg);
    test_remove_tree(dir);
}

/* Reward sources' files resolve like the other paths: a plugin's or reward model's "path", a process
 * command's program when it holds a '/', and a later argument naming a file under the config's
 * folder; a bare program name and other arguments stay as written. Saved so in the resolved config. */
static void test_config_reward_paths(void) {
    char dir[] = "/tmp/rlhf_cfgr_XXXXXX", sub[256], p[512], want[2048];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(sub, sizeof sub, "%s/configs", dir);
    CU_ASSERT_EQUAL_FATAL(mkdir(sub, 0755), 0);
    snprintf(p, sizeof p, "%s/style.py", sub);
    write_file(p, "print()\n");
    snprintf(p, sizeof p, "%s/run.json", sub);
    write_file(p, "{\"name\":\"t\",\"model\":{\"base_checkpoint\":\"m.safetensors\"},\"task\":{\"train\":\"p.jsonl\"},\"rewards\":["
                  "{\"type\":\"plugin\",\"path\":\"plugins/kw.so\"},"
                  "{\"type\":\"process\",\"command\":[\"python3\",\"style.py\",\"--mode\",\"fast\",\"missing.py\"]},"
                  "{\"type\":\"process\",\"name\":\"p2\",\"command\":[\"./bin/scorer\",\"/abs/x\"]},"
                  "{\"type\":\"plugin\",\"name\":\"abs\",\"path\":\"/opt/r.so\"}]}\n");
    rlhf_error err = {0};
    run_config cfg;
    int rc = run_config_load(&cfg, p, NULL, 0, &err);
    if (rc) fprintf(stderr, "%s: %s\n", err.where, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_t *r = json_object_get(cfg.resolved, "rewards");
    snprintf(want, sizeof want, "%s/configs/plugins/kw.so", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(r, 0), "path")), want);
    json_t *cmd = json_object_get(json_array_get(r, 1), "command");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 0)), "python3");
    snprintf(want, sizeof want, "%s/configs/style.py", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 1)), want);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 2)), "--mode");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 3)), "fast");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 4)), "missing.py");
    cmd = json_object_get(json_array_get(r, 2), "command");
    snprintf(want, sizeof want, "%s/configs/./bin/scorer", dir);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 0)), want);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(cmd, 1)), "/abs/x");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(r, 3), "path")), "/opt/r.so");
    /* cfg.rewards (what the updater builds its pipeline from) is the same resolved array */
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(cfg.rewards, 0), "path")),
                           json_string_value(json_object_get(json_array_get(r, 0), "path")));
    run_config_free(&cfg);
    test_remove_tree(dir);
}

int register_loop_suite(void);
int register_reward_errors_suite(void);
int register_checkpoint_suite(void); /* tests/updater/test_checkpoint.c */
int register_dist_suite(void);       /* tests/updater/test_dist.c */
int register_unscored_suite(void);

int register_suites(void) {
    CU_pSuite s = CU_add_suite("rl_math", NULL, NULL);
    CU_add_test(s, "rloo_hand_computed", test_rloo_hand_computed);
    CU_add_test(s, "tis_truncation", test_tis_truncation);
    CU_add_test(s, "ppo_clip", test_ppo_clip);
    CU_add_test(s, "kl_penalty", test_kl_penalty);
    CU_pSuite c = CU_add_suite("run_config", NULL, NULL);
    CU_add_test(c, "defaults_and_overrides", test_config_defaults_and_overrides);
    CU_add_test(c, "errors_name_path", test_config_errors_name_path);
    CU_add_test(c, "set_typed_by_schema", test_config_set_typed_by_schema);
    CU_add_test(c, "duplicate_keys", test_config_duplicate_keys);
    CU_add_test(c, "relative_paths", test_config_relative_paths);
    CU_add_test(c, "reward_paths", test_config_reward_paths);
    return register_loop_suite() || register_reward_errors_suite() || register_checkpoint_suite() ||
           register_dist_suite() || register_unscored_suite();
}
