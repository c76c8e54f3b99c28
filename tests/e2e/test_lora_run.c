/* tests/e2e/test_lora_run.c — a run with model.lora (docs/MODEL.md "LoRA"), real processes throughout:
 *   adapters:  a sync run of the easy task trains rank-2 adapters; every step's importance ratio of the
 *              generator's behaviour log-probs to the updater's is 1 (within fp32 noise), so each version's
 *              adapters were delivered and applied before sampling, never stale; the generator logs the
 *              content hash of every version it applied, equal to the updater's weights_hash of it; the
 *              WEIGHTS messages carried adapters alone (their size in the generator's log); the run's
 *              cpu.json accounts every process's CPU time.
 *   peft:      the checkpoint's adapter/ directory is PEFT's format, and the checkpoint's merged weights
 *              are base + adapters (tests/oracle/peft_check.py, its own safetensors reader).
 *   replay:    `rlhf replay` of the run gives every version's weights bit for bit, and so does a replay
 *              of steps 4:6 from the live checkpoint step_3 (adapters and their AdamW state reloaded).
 *   errors:    a LoRA config the model cannot take is one error naming the key, before any process. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/e2e/e2e_util.h"
#include "tests/test_proc.h"

static char g_dir[64], g_rlhf[1024], g_cfg[300], g_run[300];

static int suite_init(void) {
    if (e2e_suite_dir("lora", g_dir, sizeof g_dir, g_rlhf, sizeof g_rlhf)) return -1;
    snprintf(g_cfg, sizeof g_cfg, "%s/lora.json", g_dir);
    snprintf(g_run, sizeof g_run, "%s/lora", g_dir);
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"name\":\"lora\",\"run_dir\":\"%s\",\"mode\":\"sync\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":2,\"n_heads\":4,\"n_kv_heads\":2,\"ffn_dim\":64,"
             "\"vocab_size\":259,\"max_seq_len\":16},\"threads\":1,\"lora\":{\"rank\":2,\"alpha\":4}},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"capitals\",\"name\":\"caps\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.05,\"steps\":6,\"checkpoint_every\":3,\"seed\":5},\n"
             " \"checkpoint\":{\"keep\":10},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             g_run);
    return write_text(g_cfg, doc);
}

static int suite_cleanup(void) {
    if (!getenv("RLHF_KEEP_TEST_DIRS")) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
        if (system(cmd) != 0) return -1;
    }
    return 0;
}

static int run_cmd(const char *out, const char *const *args, int timeout_s) {
    test_proc_opts o = {.out = out, .err = out};
    return test_proc_run_args(g_rlhf, g_rlhf, args, &o, timeout_s);
}

/* One metrics record: a step that trained counts in *trained and moves *worst to its largest |is_ratio - 1|
 * (max and mean). Sync mode: the generator sampled with the version the updater trains from, so both are 1. */
static void ratio_gap(json_t *j, int *trained, double *worst) {
    if (json_integer_value(json_object_get(j, "groups/kept")) <= 0) return;
    (*trained)++;
    double rmax = json_number_value(json_object_get(j, "is_ratio/max"));
    double rmean = json_number_value(json_object_get(j, "is_ratio/mean"));
    *worst = fmax(*worst, fmax(fabs(rmax - 1), fabs(rmean - 1)));
}

static void test_adapters(void) {
    char out[300], p[400];
    snprintf(out, sizeof out, "%s/run.out", g_dir);
    const char *a[] = {"run", g_cfg, "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, a, 180), 0);
    snprintf(p, sizeof p, "%s/metrics.jsonl", g_run);
    char *txt = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    char hashes[8][17];
    int steps = 0, trained = 0, distinct = 0;
    double worst = 0;
    char *save = NULL;
    for (char *l = strtok_r(txt, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        int s = (int)json_integer_value(json_object_get(j, "step"));
        const char *h = json_string_value(json_object_get(j, "weights_hash"));
        if (s >= 1 && s <= 7 && h) {
            snprintf(hashes[s], sizeof hashes[s], "%s", h);
            if (s > 1 && strcmp(hashes[s], hashes[s - 1]) != 0) distinct++;
        }
        ratio_gap(j, &trained, &worst);
        steps++;
        json_decref(j);
    }
    free(txt);
    CU_ASSERT_EQUAL(steps, 6);
    CU_ASSERT(trained >= 4);
    CU_ASSERT(distinct >= 3); /* the adapters moved from version to version */
    if (worst > 1e-3) fprintf(stderr, "\n  largest |is_ratio - 1| %.3g: a generator sampled other adapters\n", worst);
    CU_ASSERT(worst <= 1e-3);
    /* the generator's log: every version 1..5 applied, with the updater's hash of it, adapters alone */
    char log[400];
    snprintf(log, sizeof log, "%s/logs/generator-0.log", g_run);
    char *gl = e2e_slurp(log);
    CU_ASSERT_PTR_NOT_NULL_FATAL(gl);
    for (int v = 1; v <= 5; v++) {
        char needle[160];
        /* adapters of 2 layers: q 2x(2x32 + 32x2), k, v 2x(2x32 + 16x2), o 2x(2x32 + 32x2), gate, up
         * 2x(2x32 + 64x2), down 2x(2x64 + 32x2) floats; 4 bytes each */
        int floats = 2 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64));
        snprintf(needle, sizeof needle, "applied LoRA adapters of version %d: %d bytes, content hash %s", v, 4 * floats,
                 hashes[v]);
        if (!strstr(gl, needle)) fprintf(stderr, "\n  %s lacks \"%s\"\n", log, needle);
        CU_ASSERT_PTR_NOT_NULL(strstr(gl, needle));
    }
    free(gl);
    /* where the machine time went (the launcher's wait4 of every process it started) */
    snprintf(p, sizeof p, "%s/cpu.json", g_run);
    json_t *cpu = json_load_file(p, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cpu);
    const char *procs[] = {"broker", "updater", "generator-0"};
    double sum = 0;
    for (int i = 0; i < 3; i++) {
        json_t *pr = json_object_get(json_object_get(cpu, "processes"), procs[i]);
        CU_ASSERT(json_is_object(pr));
        sum += json_number_value(json_object_get(pr, "user_s")) + json_number_value(json_object_get(pr, "sys_s"));
    }
    CU_ASSERT(sum > 0);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(cpu, "cpu_s")), sum, 1e-6);
    CU_ASSERT(json_number_value(json_object_get(cpu, "wall_s")) > 0);
    json_decref(cpu);
}

/* tests/oracle/peft_check.py (its own safetensors reader): the adapter directory is PEFT's format and the
 * merged checkpoint is base + adapters. */
static void peft_check(const char *adir, const char *base, const char *merged, const char *out) {
    char script[1200];
    CU_ASSERT_EQUAL_FATAL(test_source_path("tests/oracle/peft_check.py", script, sizeof script), 0);
    char *argv[] = {"python3", script, (char *)adir, (char *)base, (char *)merged, NULL};
    test_proc_opts o = {.out = out, .err = out};
    CU_ASSERT_EQUAL(test_proc_run("/usr/bin/python3", argv, &o, 120), 0);
    CU_ASSERT(e2e_contains(out, "merged = base + adapters"));
}

static void test_peft(void) {
    char adir[400], base[400], merged[400], out[300];
    snprintf(adir, sizeof adir, "%s/checkpoints/step_6/adapter", g_run);
    snprintf(base, sizeof base, "%s/base.safetensors", g_run);
    snprintf(merged, sizeof merged, "%s/checkpoints/step_6/model.safetensors", g_run);
    snprintf(out, sizeof out, "%s/peft.out", g_dir);
    peft_check(adir, base, merged, out);
}

static void test_replay(void) {
    char out[300], dir[300];
    snprintf(out, sizeof out, "%s/replay.out", g_dir);
    snprintf(dir, sizeof dir, "%s/replayed", g_dir);
    char log[400], cfg[400];
    snprintf(log, sizeof log, "%s/rollouts.log", g_run);
    snprintf(cfg, sizeof cfg, "%s/config.json", g_run);
    const char *a[] = {"replay", log, "--config", cfg, "--out", dir, "--threads", "1", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, a, 120), 0);
    CU_ASSERT(e2e_contains(out, "the weights of all 6 versions compared are the live run's, bit for bit"));
    snprintf(dir, sizeof dir, "%s/replayed46", g_dir);
    const char *b[] = {"replay", log, "--config", cfg, "--out", dir, "--threads", "1", "--steps", "4:6", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, b, 120), 0);
    CU_ASSERT(e2e_contains(out, "from the live run's checkpoint step_3"));
    CU_ASSERT(e2e_contains(out, "the weights of all 3 versions compared are the live run's, bit for bit"));
}

/* The run's base exported as a BF16 Hugging Face directory and trained with the same adapters: the updater
 * keeps the base in bf16 (its log says so) while the generator widens the same bits, so every step's
 * importance ratio is still 1; the merged checkpoint is base + adapters; replay gives every version bit for
 * bit (the replay's base is kept in bf16 too, with the same identity hash). */
static void test_bf16_base(void) {
    char out[300], hf[300], cfg[300], run[300], p[400];
    snprintf(out, sizeof out, "%s/bf16.out", g_dir);
    snprintf(hf, sizeof hf, "%s/base-bf16", g_dir);
    snprintf(p, sizeof p, "%s/base.safetensors", g_run);
    const char *e[] = {"export", p, "--hf", hf, "--dtype", "bf16", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, e, 60), 0);
    snprintf(cfg, sizeof cfg, "%s/lora-bf16.json", g_dir);
    snprintf(run, sizeof run, "%s/lora-bf16", g_dir);
    char doc[2048];
    snprintf(doc, sizeof doc,
             "{\"name\":\"lora-bf16\",\"run_dir\":\"%s\",\"mode\":\"sync\",\n"
             " \"model\":{\"base_checkpoint\":\"%s\",\"tokenizer\":\"bytes\",\"threads\":1,"
             "\"lora\":{\"rank\":2,\"alpha\":4}},\n"
             " \"task\":{\"train\":\"prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"capitals\",\"name\":\"caps\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.05,\"steps\":4,\"checkpoint_every\":2,\"seed\":5},\n"
             " \"checkpoint\":{\"keep\":10},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":4,\"batch\":4,\"threads\":1}}\n",
             run, hf);
    CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
    const char *a[] = {"run", cfg, "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(out, a, 180), 0);
    snprintf(p, sizeof p, "%s/logs/updater.log", run);
    CU_ASSERT(e2e_contains(p, "is frozen, kept in bf16 as its file stores it"));
    snprintf(p, sizeof p, "%s/metrics.jsonl", run);
    char *txt = e2e_slurp(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txt);
    int trained = 0;
    double worst = 0;
    char *save = NULL;
    for (char *l = strtok_r(txt, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        ratio_gap(j, &trained, &worst);
        json_decref(j);
    }
    free(txt);
    CU_ASSERT(trained >= 2);
    if (worst > 1e-3) fprintf(stderr, "\n  bf16 base: largest |is_ratio - 1| %.3g\n", worst);
    CU_ASSERT(worst <= 1e-3);
    /* merged = base + adapters, the base read from the BF16 directory by the independent reader */
    char adir[400], merged[400], pout[300];
    snprintf(adir, sizeof adir, "%s/checkpoints/step_4/adapter", run);
    snprintf(p, sizeof p, "%s/model.safetensors", hf);
    snprintf(merged, sizeof merged, "%s/checkpoints/step_4/model.safetensors", run);
    snprintf(pout, sizeof pout, "%s/peft-bf16.out", g_dir);
    peft_check(adir, p, merged, pout);
    /* replay */
    char log[400], rcfg[400], dir[300];
    snprintf(log, sizeof log, "%s/rollouts.log", run);
    snprintf(rcfg, sizeof rcfg, "%s/config.json", run);
    snprintf(dir, sizeof dir, "%s/replayed-bf16", g_dir);
    const char *r[] = {"replay", log, "--config", rcfg, "--out", dir, "--threads", "1", NULL};
    CU_ASSERT_EQUAL(run_cmd(out, r, 120), 0);
    CU_ASSERT(e2e_contains(out, "the weights of all 4 versions compared are the live run's, bit for bit"));
}

static void test_errors(void) {
    char cfg[300], out[300];
    struct {
        const char *lora, *needle;
    } cases[] = {
        {"{\"rank\":2,\"targets\":[\"q_proj\",\"lm_head\"]}", "model.lora: targets[1]: \"lm_head\" is not a linear layer"},
        {"{\"rank\":40}", "model.lora: rank: 40 exceeds q_proj's smaller side 32"},
        {"{\"alpha\":4}", "model.lora: rank: required"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cfg, sizeof cfg, "%s/bad%zu.json", g_dir, i);
        snprintf(out, sizeof out, "%s/bad%zu.out", g_dir, i);
        char doc[1024];
        snprintf(doc, sizeof doc,
                 "{\"name\":\"bad\",\"run_dir\":\"%s/bad%zu\",\"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,"
                 "\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,\"max_seq_len\":16},\"lora\":%s},"
                 "\"task\":{\"train\":\"prompts.jsonl\"},\"rewards\":[{\"type\":\"regex\",\"name\":\"d\",\"pattern\":\"x\"}]}",
                 g_dir, i, cases[i].lora);
        CU_ASSERT_EQUAL_FATAL(write_text(cfg, doc), 0);
        const char *a[] = {"run", cfg, "--quiet", NULL};
        CU_ASSERT_EQUAL(run_cmd(out, a, 60), RLHF_EXIT_CONFIG);
        CU_ASSERT(e2e_contains(out, cases[i].needle));
        char rd[400];
        snprintf(rd, sizeof rd, "%s/bad%zu/logs", g_dir, i);
        CU_ASSERT(access(rd, F_OK) != 0); /* no process was started */
    }
}

void e2e_register_lora(void);
void e2e_register_lora(void) {
    CU_pSuite s = CU_add_suite("e2e_lora", suite_init, suite_cleanup);
    CU_add_test(s, "LoRA run: adapters alone on the wire, applied every version (is_ratio 1, hashes in the log)",
                test_adapters);
    CU_add_test(s, "LoRA checkpoint: PEFT's format, merged = base + adapters (independent reader)", test_peft);
    CU_add_test(s, "LoRA replay: every version bit for bit, and from checkpoint step_3", test_replay);
    CU_add_test(s, "LoRA on a BF16 base kept in bf16: is_ratio 1, merged = base + adapters, replay bit for bit",
                test_bf16_base);
    CU_add_test(s, "LoRA config errors name model.lora before any process starts", test_errors);
}
