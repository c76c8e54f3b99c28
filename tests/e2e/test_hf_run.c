/* tests/e2e/test_hf_run.c — a whole run on a Hugging Face model directory with a real BPE vocabulary:
 *
 *   the tokenizer is a byte-level BPE learned from a small corpus by scripts/train_bpe_tokenizer.py (a
 *   tokenizer.json of the GPT-2 kind, ids 0..255 bytes, merges above, <|endoftext|> BOS/EOS); the model
 *   is `rlhf init` exported with `rlhf export --hf --dtype bf16 --tokenizer-from`, so the run's base is
 *   an HF directory (config.json, bf16 model.safetensors, tokenizer files). Then `rlhf run` on it
 *   (broker, two generators, updater; rewards; replay log; checkpoints also written as HF directories),
 *   stopped by SIGINT and resumed, and checked:
 *     - completions hold multi-byte tokens (ids of merges) and the texts the updater scored are their
 *       decoding (the group's texts equal the tokenizer's decoding of the ids, cut at the task's stop);
 *     - the run resumes step by step; its checkpoints name the tokenizer, so `rlhf sample` of a
 *       checkpoint file and of the checkpoint's HF export give the same tokens and text;
 *     - `rlhf replay` of the log trains the same steps again;
 *     - a tokenizer whose ids do not fit the model's vocabulary is refused before anything starts. */
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "common/common.h"
#include "model/model.h"
#include "prompts/prompts.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];
static int g_vocab; /* the tokenizer's ids */

static int run_cmd(const char *log_path, const char *const *args, double timeout) {
    test_proc_opts o = {.out = log_path, .err = log_path};
    return test_proc_wait(test_proc_spawn_args(g_rlhf, g_rlhf, args, &o), timeout);
}

static int file_contains(const char *path, const char *needle) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return 0;
    int r = strstr(d, needle) != NULL;
    free(d);
    return r;
}

/* The last step of metrics.jsonl when its records are steps 1, 2, ... each once; -1 otherwise. */
static long last_step(const char *run_dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", run_dir);
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(p, &d, &n, NULL)) return 0;
    long count = 0, ok = 1;
    char *save = NULL;
    for (char *l = strtok_r(d, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(l, 0, NULL);
        if (json_integer_value(json_object_get(j, "step")) != ++count) ok = 0;
        json_decref(j);
    }
    free(d);
    return ok ? count : -1;
}

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_hfrun_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf)) return -1;
    if (access(g_rlhf, X_OK) != 0) return -1;
    /* prompts of the easy task, and a corpus to learn merges from ("q12:", " 345", "digits") */
    char p[512], cmd[2048];
    if (e2e_write_prompts(g_dir)) return -1;
    snprintf(p, sizeof p, "%s/corpus.txt", g_dir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    for (int i = 0; i < 400; i++) fprintf(f, "q%d: %d digits %d and %d\n", i % 16, i * 7 % 1000, i % 10, i * 13 % 97);
    fclose(f);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/scripts/train_bpe_tokenizer.py %s/corpus.txt %s/tok --merges 120 "
             ">%s/tok.out 2>&1", RLHF_SOURCE_ROOT, g_dir, g_dir, g_dir);
    if (system(cmd) != 0) return -1;
    snprintf(p, sizeof p, "%s/tok/tokenizer.json", g_dir);
    json_t *tj = json_load_file(p, 0, NULL);
    json_t *added = json_object_get(tj, "added_tokens");
    g_vocab = (int)json_integer_value(json_object_get(json_array_get(added, json_array_size(added) - 1), "id")) + 1;
    json_decref(tj);
    if (g_vocab <= 300) return -1; /* 256 bytes + merges + 2 specials */
    /* the base: a random model of that vocabulary, exported as an HF directory with the tokenizer */
    snprintf(p, sizeof p, "%s/arch.json", g_dir);
    char arch[512];
    snprintf(arch, sizeof arch,
             "{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"n_kv_heads\":1,\"ffn_dim\":64,\"vocab_size\":%d,"
             "\"max_seq_len\":24,\"tie_embeddings\":true}\n", g_vocab);
    if (write_text(p, arch)) return -1;
    char init[256], hf[256], tok[256], log[256];
    snprintf(init, sizeof init, "%s/init.safetensors", g_dir);
    snprintf(hf, sizeof hf, "%s/base-hf", g_dir);
    snprintf(tok, sizeof tok, "%s/tok", g_dir);
    snprintf(log, sizeof log, "%s/setup.out", g_dir);
    const char *a1[] = {"init", "--arch", p, "--out", init, "--seed", "7", NULL};
    const char *a2[] = {"export", init, "--hf", hf, "--dtype", "bf16", "--tokenizer-from", tok, NULL};
    if (run_cmd(log, a1, 30) != 0 || run_cmd(log, a2, 30) != 0) return -1;
    return 0;
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

static void write_config(const char *path, const char *name, const char *base, int steps) {
    char doc[4096];
    snprintf(doc, sizeof doc,
             "{\"name\":\"%s\",\"run_dir\":\"%s/%s\",\n"
             " \"model\":{\"base_checkpoint\":\"%s\",\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\"},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":8,\"lr\":0.01,\"steps\":%d,\"checkpoint_every\":2,\"seed\":5,"
             "\"export_hf\":\"bf16\"},\n"
             " \"generators\":{\"count\":2,\"max_tokens\":6,\"batch\":4,\"threads\":1}}\n",
             name, g_dir, name, base, g_dir, steps);
    write_text(path, doc);
}

/* Reads every group of the log: counts completion tokens that are merges (ids 256.. below the specials)
 * and checks each group's texts against the tokenizer's decoding of its ids. */
static void check_log(const char *log_path, const tokenizer *tok, long *merges, long *tokens, long *groups,
                      long *text_mismatch) {
    replay_reader *r = NULL;
    rlhf_error err = {0};
    *merges = *tokens = *groups = *text_mismatch = 0;
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&r, log_path, &err), 0);
    wire_rollout_group g;
    replay_pos pos;
    int rc;
    while ((rc = replay_reader_next(r, &g, &pos, &err)) == 1) {
        (*groups)++;
        size_t off = 0;
        for (uint32_t i = 0; i < g.k; i++) {
            const int32_t *ids = g.tokens + off;
            int n = (int)g.n_tokens[i];
            for (int t = 0; t < n; t++) {
                (*tokens)++;
                if (ids[t] >= 256 && ids[t] < g_vocab - 2) (*merges)++;
            }
            char *text = NULL;
            size_t len = 0;
            CU_ASSERT_EQUAL(tokenizer_decode(tok, ids, n, &text, &len, &err), 0);
            /* the default task stop is a newline: the text is the decoding cut before it */
            char *nl = text ? memchr(text, '\n', len) : NULL;
            if (nl) len = (size_t)(nl - text);
            if (text) text[len] = 0;
            char *want = text ? rlhf_utf8_sanitize(text, len) : NULL;
            if (!g.texts || !g.texts[i] || !want || strcmp(g.texts[i], want) != 0) (*text_mismatch)++;
            free(want);
            free(text);
            off += (size_t)n;
        }
        wire_rollout_group_free(&g);
    }
    CU_ASSERT_EQUAL(rc, 0);
    replay_reader_close(&r);
}

static void test_hf_bpe_run(void) {
    char cfg[256], run[256], log[256], base[256], p[512], q[512];
    snprintf(cfg, sizeof cfg, "%s/hfrun.json", g_dir);
    snprintf(run, sizeof run, "%s/hfrun", g_dir);
    snprintf(log, sizeof log, "%s/hfrun.out", g_dir);
    snprintf(base, sizeof base, "%s/base-hf", g_dir);
    write_config(cfg, "hfrun", base, 6);
    const char *args[] = {"run", cfg, "--quiet", NULL};
    test_proc_opts o = {.out = log, .err = log};
    pid_t launcher = test_proc_spawn_args(g_rlhf, g_rlhf, args, &o);
    double t0 = rlhf_now();
    while (last_step(run) < 3 && rlhf_now() - t0 < 90 && waitpid(launcher, NULL, WNOHANG) == 0) usleep(20000);
    CU_ASSERT(last_step(run) >= 3);
    kill(launcher, SIGINT);
    CU_ASSERT_EQUAL(test_proc_wait(launcher, 60), 0);
    const char *rargs[] = {"run", "--resume", run, "--quiet", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(log, rargs, 120), 0);
    CU_ASSERT_EQUAL(last_step(run), 6); /* steps 1..6, each once, across the resume */

    /* the log: multi-byte tokens, and texts that are the tokenizer's decoding */
    tokenizer *tok = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(tokenizer_load_for_model(&tok, NULL, base, g_vocab, &err), 0);
    CU_ASSERT_STRING_EQUAL(tok->ops->kind, "bpe");
    long merges, tokens, groups, mismatch;
    snprintf(p, sizeof p, "%s/rollouts.log", run);
    check_log(p, tok, &merges, &tokens, &groups, &mismatch);
    CU_ASSERT(groups >= 6 * 8);
    CU_ASSERT(merges > 0);
    CU_ASSERT_EQUAL(mismatch, 0);
    fprintf(stderr, "  hf run: %ld groups, %ld completion tokens, %ld of them merges\n", groups, tokens, merges);

    /* the last checkpoint: its file names the tokenizer; its HF export samples the same */
    snprintf(p, sizeof p, "%s/checkpoints/step_6/model.safetensors", run);
    snprintf(q, sizeof q, "%s/checkpoints/step_6/hf", run);
    char out1[256], out2[256];
    snprintf(out1, sizeof out1, "%s/sample1.out", g_dir);
    snprintf(out2, sizeof out2, "%s/sample2.out", g_dir);
    const char *s1[] = {"sample", "--model", p, "--prompt", "q3:", "--temperature", "0", "--max-tokens", "6", NULL};
    const char *s2[] = {"sample", "--model", q, "--prompt", "q3:", "--temperature", "0", "--max-tokens", "6", NULL};
    test_proc_opts o1 = {.out = out1, .err = log}, o2 = {.out = out2, .err = log};
    CU_ASSERT_EQUAL(test_proc_wait(test_proc_spawn_args(g_rlhf, g_rlhf, s1, &o1), 30), 0);
    CU_ASSERT_EQUAL(test_proc_wait(test_proc_spawn_args(g_rlhf, g_rlhf, s2, &o2), 30), 0);
    json_t *j1 = json_load_file(out1, JSON_DISABLE_EOF_CHECK, NULL), *j2 = json_load_file(out2, JSON_DISABLE_EOF_CHECK, NULL);
    CU_ASSERT_FATAL(j1 && j2);
    /* greedy from bf16-rounded weights (the export) and fp32 weights may part after a near tie, so
     * the first token is compared; the text must be the decoding of the tokens in both */
    json_t *t1 = json_object_get(j1, "tokens"), *t2 = json_object_get(j2, "tokens");
    CU_ASSERT(json_array_size(t1) >= 1 && json_array_size(t2) >= 1);
    CU_ASSERT(json_equal(json_array_get(t1, 0), json_array_get(t2, 0)));
    for (int w = 0; w < 2; w++) {
        json_t *j = w ? j2 : j1, *t = w ? t2 : t1;
        int32_t ids[64];
        int n = 0;
        for (size_t i = 0; i < json_array_size(t) && n < 64; i++) ids[n++] = (int32_t)json_integer_value(json_array_get(t, i));
        char *text = NULL;
        size_t len = 0;
        CU_ASSERT_EQUAL(tokenizer_decode(tok, ids, n, &text, &len, &err), 0);
        /* the command prints valid UTF-8 (an invalid byte as U+FFFD), like the texts rewards see */
        char *want = text ? rlhf_utf8_sanitize(text, len) : NULL;
        const char *got = json_string_value(json_object_get(j, "text"));
        CU_ASSERT(got && want && !strcmp(got, want));
        free(want);
        free(text);
    }
    json_decref(j1);
    json_decref(j2);
    snprintf(p, sizeof p, "%s/checkpoints/step_6/hf/tokenizer.json", run);
    CU_ASSERT(access(p, F_OK) == 0);

    /* replay: the log trains again, offline */
    char rout[256];
    snprintf(p, sizeof p, "%s/rollouts.log", run);
    snprintf(q, sizeof q, "%s/config.json", run);
    snprintf(rout, sizeof rout, "%s/replayed", g_dir);
    const char *ra[] = {"replay", p, "--config", q, "--out", rout, "--threads", "1", "--set", "rl.steps=4", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, ra, 90), 0);
    CU_ASSERT_EQUAL(last_step(rout), 4);
    tokenizer_destroy(&tok);

    /* a tokenizer with more ids than the model has: refused before anything starts */
    char small[256], bad[256];
    snprintf(small, sizeof small, "%s/small.safetensors", g_dir);
    snprintf(p, sizeof p, "%s/small-arch.json", g_dir);
    write_text(p, "{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":300,\"max_seq_len\":24}\n");
    const char *ai[] = {"init", "--arch", p, "--out", small, NULL};
    CU_ASSERT_EQUAL(run_cmd(log, ai, 30), 0);
    snprintf(bad, sizeof bad, "%s/bad.json", g_dir);
    write_config(bad, "bad", small, 2);
    snprintf(q, sizeof q, "model.tokenizer=\"%s/tok\"", g_dir);
    const char *ba[] = {"run", bad, "--quiet", "--set", q, NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, ba, 30), 0);
    CU_ASSERT(file_contains(log, "but the model's vocabulary only 300"));
    /* a model no Hugging Face architecture describes cannot ask for HF checkpoints: refused up front */
    const char *bb[] = {"run", bad, "--quiet", "--set", "model.base_checkpoint=\"\"", "--set",
                        "model.arch={\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":300,"
                        "\"max_seq_len\":24,\"attn_bias\":true,\"qk_norm\":true}", NULL};
    CU_ASSERT_NOT_EQUAL(run_cmd(log, bb, 30), 0);
    CU_ASSERT(file_contains(log, "rl.export_hf"));
    snprintf(p, sizeof p, "%s/bad/metrics.jsonl", g_dir);
    CU_ASSERT(access(p, F_OK) != 0);
}

/* examples/configs/hf-model.json is a working config: one step of it on the fixture directory */
static void test_example_config(void) {
    char run[256], log[256], sets[6][512];
    snprintf(run, sizeof run, "%s/example", g_dir);
    snprintf(log, sizeof log, "%s/example.out", g_dir);
    snprintf(sets[0], sizeof sets[0], "model.base_checkpoint=\"%s/base-hf\"", g_dir);
    snprintf(sets[1], sizeof sets[1], "task.train=\"%s/prompts.jsonl\"", g_dir);
    snprintf(sets[2], sizeof sets[2], "task.eval=\"%s/prompts.jsonl\"", g_dir);
    snprintf(sets[3], sizeof sets[3], "run_dir=\"%s\"", run);
    snprintf(sets[4], sizeof sets[4], "model.max_seq_len=24");
    snprintf(sets[5], sizeof sets[5], "generators.max_tokens=4");
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/examples/configs/hf-model.json", RLHF_SOURCE_ROOT);
    const char *a[] = {"run", cfg, "--quiet", "--set", sets[0], "--set", sets[1], "--set", sets[2], "--set", sets[3],
                       "--set", sets[4], "--set", sets[5], "--set", "rl.steps=1", "--set", "rl.export_hf=\"none\"",
                       NULL};
    CU_ASSERT_EQUAL(run_cmd(log, a, 120), 0);
    CU_ASSERT_EQUAL(last_step(run), 1);
}

/* A dataset of chat messages: rendered at launch through task.chat_template into RUN_DIR/prompts/ (the
 * resolved config names that file, the broker serves its prompts), and the run trains on it. A template
 * that raises, or a messages dataset with no template at all, is refused before any run directory exists. */
static void test_chat_dataset(void) {
    char data[256], tpl[256], bad_tpl[256], run[256], log[256], p[512];
    snprintf(data, sizeof data, "%s/chat.jsonl", g_dir);
    snprintf(tpl, sizeof tpl, "%s/chat.jinja", g_dir);
    snprintf(bad_tpl, sizeof bad_tpl, "%s/bad.jinja", g_dir);
    snprintf(run, sizeof run, "%s/chatrun", g_dir);
    snprintf(log, sizeof log, "%s/chatrun.out", g_dir);
    FILE *f = fopen(data, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (int i = 0; i < 8; i++)
        fprintf(f, "{\"id\":\"c%d\",\"messages\":[{\"role\":\"user\",\"content\":\"  q%d \"}]}\n", i, i);
    fclose(f);
    CU_ASSERT_EQUAL(write_text(tpl, "{% for m in messages %}{{ m.content | trim }}{% endfor %}\n"
                                    "{% if add_generation_prompt %}:{% endif %}\n"), 0);
    CU_ASSERT_EQUAL(write_text(bad_tpl, "{% for m in messages %}\n  {{ raise_exception('users only') }}\n{% endfor %}"), 0);
    char sets[4][512];
    snprintf(sets[0], sizeof sets[0], "model.base_checkpoint=\"%s/base-hf\"", g_dir);
    snprintf(sets[1], sizeof sets[1], "task.train=\"%s\"", data);
    snprintf(sets[2], sizeof sets[2], "run_dir=\"%s\"", run);
    snprintf(sets[3], sizeof sets[3], "task.chat_template=\"%s\"", bad_tpl);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/chat.json", g_dir);
    write_config(cfg, "chatrun", "unused", 1);
    const char *bad[] = {"run", cfg, "--quiet", "--set", sets[0], "--set", sets[1], "--set", sets[2], "--set", sets[3],
                         "--set", "rl.export_hf=\"none\"", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, bad, 60), RLHF_EXIT_CONFIG);
    CU_ASSERT(file_contains(log, "chat.jsonl:1"));
    CU_ASSERT(file_contains(log, "bad.jinja:2:6"));
    CU_ASSERT(file_contains(log, "users only"));
    CU_ASSERT(access(run, F_OK) != 0);
    /* the exported model directory has no chat_template of its own */
    const char *none[] = {"run", cfg, "--quiet", "--set", sets[0], "--set", sets[1], "--set", sets[2],
                          "--set", "rl.export_hf=\"none\"", NULL};
    CU_ASSERT_EQUAL(run_cmd(log, none, 60), RLHF_EXIT_CONFIG);
    CU_ASSERT(file_contains(log, "task.chat_template"));
    CU_ASSERT(access(run, F_OK) != 0);

    snprintf(sets[3], sizeof sets[3], "task.chat_template=\"%s\"", tpl);
    const char *good[] = {"run", cfg, "--quiet", "--set", sets[0], "--set", sets[1], "--set", sets[2], "--set", sets[3],
                          "--set", "rl.export_hf=\"none\"", NULL};
    CU_ASSERT_EQUAL_FATAL(run_cmd(log, good, 120), 0);
    CU_ASSERT_EQUAL(last_step(run), 1);
    snprintf(p, sizeof p, "%s/prompts/train-chat.jsonl", run);
    prompt_dataset *ds = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(prompt_dataset_load(&ds, p, &err), 0);
    CU_ASSERT_EQUAL(prompt_dataset_size(ds), 8);
    CU_ASSERT_STRING_EQUAL(prompt_dataset_get(ds, 3)->prompt, "q3:");
    CU_ASSERT_PTR_NOT_NULL(json_object_get(prompt_dataset_get(ds, 3)->record, "messages"));
    prompt_dataset_destroy(&ds);
    char conf[512];
    snprintf(conf, sizeof conf, "%s/config.json", run);
    json_t *rc = json_load_file(conf, 0, NULL);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(rc, "task"), "train")), p);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(rc, "broker"), "dataset")), p);
    json_decref(rc);
}

void e2e_register_hf_run(void);
void e2e_register_hf_run(void) {
    CU_pSuite s = CU_add_suite("e2e_hf", suite_init, suite_cleanup);
    CU_add_test(s, "hf_bpe_run", test_hf_bpe_run);
    CU_add_test(s, "example_config", test_example_config);
    CU_add_test(s, "chat_dataset", test_chat_dataset);
}
