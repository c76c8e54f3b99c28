/* tests/model_train/test_cli.c — `rlhf pretrain` and `rlhf score` as real processes (the rlhf binary
 * beside this test binary: BUILD/tests/../bin/rlhf): pretraining lowers the loss and writes a loadable
 * checkpoint plus optimizer state; score's JSONL equals log-probs computed in-process; bad input
 * exits non-zero with one error line and leaves no output file. */
#include <CUnit/CUnit.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/model_train/helpers.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char rlhf_bin[PATH_MAX + 32];
static char tmpdir[64];

/* Runs rlhf with args; stdout to out_path (or /dev/null), stderr to err_path. Returns the exit status. */
static int run_rlhf(const char *const *args, const char *out_path, const char *err_path) {
    static const char *const env[] = {"OMP_NUM_THREADS=2", NULL};
    test_proc_opts o = {.out = out_path ? out_path : "/dev/null", .err = err_path ? err_path : "/dev/null", .env = env};
    return test_proc_run_args(rlhf_bin, "rlhf", args, &o, 0);
}

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", tmpdir, name); }

static int suite_init(void) {
    if (test_bin_path("rlhf", rlhf_bin, sizeof rlhf_bin) || access(rlhf_bin, X_OK) != 0) {
        fprintf(stderr, "test_cli: %s not built\n", rlhf_bin);
        return -1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rlhf_train_cli_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    /* a tiny byte-level model and a repetitive corpus it can learn quickly */
    model_config c = {.dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .ffn_dim = 64, .vocab_size = 259,
                      .max_seq_len = 32, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .tie_embeddings = 1};
    model *m = NULL;
    rlhf_error err = {0};
    if (model_create(&m, &c, &err)) return -1;
    model_init_random(m, 3);
    char p[PATH_MAX];
    path_in(p, sizeof p, "base.safetensors");
    int rc = model_save(m, p, &err);
    model_destroy(&m);
    if (rc) return -1;
    FILE *f;
    path_in(p, sizeof p, "corpus.txt");
    if (!(f = fopen(p, "w"))) return -1;
    for (int i = 0; i < 400; i++) fputs("abcabc the cat sat. ", f);
    fclose(f);
    path_in(p, sizeof p, "empty.txt");
    if (!(f = fopen(p, "w"))) return -1;
    fclose(f);
    path_in(p, sizeof p, "score.jsonl");
    if (!(f = fopen(p, "w"))) return -1;
    fputs("{\"prompt\": \"the cat \", \"completion\": \"sat. abc\", \"id\": 7}\n\n"
          "{\"prompt\": \"ab\", \"completion\": \"zzzz\"}\n{\"prompt\": \"x\", \"completion\": \"\"}\n",
          f);
    fclose(f);
    return 0;
}

static int suite_clean(void) {
    if (getenv("RLHF_CLI_KEEP")) return 0;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* mean next-token loss of `m` on the first 31 predictions of the corpus */
static float corpus_loss(model *m) {
    const char *text = "abcabc the cat sat. abcabc the c";
    int32_t tok[31], tg[31];
    tok[0] = TOKENIZER_BYTES_BOS;
    for (int i = 1; i < 31; i++) tok[i] = (unsigned char)text[i - 1];
    for (int i = 0; i < 31; i++) tg[i] = (unsigned char)text[i];
    model_trainer *tr = NULL;
    rlhf_error err = {0};
    float loss = NAN;
    if (model_trainer_create(&tr, m, 1, 31, &err) == 0 && model_forward(tr, tok, tg, 1, 31, &err) == 0)
        loss = model_trainer_loss(tr, NULL);
    model_trainer_destroy(&tr);
    return loss;
}

static void test_pretrain_lowers_loss(void) {
    char base[PATH_MAX], corpus[PATH_MAX], out[PATH_MAX], optim[PATH_MAX], errp[PATH_MAX];
    path_in(base, sizeof base, "base.safetensors");
    path_in(corpus, sizeof corpus, "corpus.txt");
    path_in(out, sizeof out, "trained.safetensors");
    path_in(optim, sizeof optim, "trained.optim.safetensors");
    path_in(errp, sizeof errp, "pretrain.err");
    const char *args[] = {"pretrain", "--model", base, "--data", corpus, "--steps", "60", "--batch", "4", "--seq",
                          "24", "--lr", "1e-2", "--warmup", "5", "--seed", "3", "--log-every", "20", "--out", out, NULL};
    CU_ASSERT_EQUAL_FATAL(run_rlhf(args, NULL, errp), 0);
    char *log = NULL;
    size_t n = 0;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(rlhf_read_file(errp, &log, &n, &err), 0);
    CU_ASSERT(log && strstr(log, "step 60/60 loss") && strstr(log, "tokens/s"));
    free(log);
    model *m0 = NULL, *m1 = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m0, base, NULL, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_load(&m1, out, NULL, &err), 0);
    float l0 = corpus_loss(m0), l1 = corpus_loss(m1);
    if (!(l1 < l0 - 1.5f)) fprintf(stderr, "  corpus loss %.3f -> %.3f\n", l0, l1);
    CU_ASSERT(l1 < l0 - 1.5f); /* ln(259) = 5.56 at init; the corpus repeats a 20-byte phrase */
    CU_ASSERT(m1->version == m0->version + 1);
    /* the optimizer state is a safetensors file with every named tensor and the step count */
    safetensors_file *f = NULL;
    CU_ASSERT_EQUAL_FATAL(safetensors_open(&f, optim, &err), 0);
    const safetensors_tensor *st = safetensors_find(f, "adamw.step");
    CU_ASSERT(st && st->data[0] == 60.0f);
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "adamw.m.wq"));
    CU_ASSERT_PTR_NOT_NULL(safetensors_find(f, "adamw.v.embed"));
    CU_ASSERT_EQUAL(f->n_tensors, 2 * m1->n_tensors + 1);
    safetensors_close(&f);
    model_destroy(&m0);
    model_destroy(&m1);
}

static void test_score_matches_in_process(void) {
    char base[PATH_MAX], data[PATH_MAX], out[PATH_MAX];
    path_in(base, sizeof base, "base.safetensors");
    path_in(data, sizeof data, "score.jsonl");
    path_in(out, sizeof out, "score.out");
    const char *args[] = {"score", "--model", base, "--data", data, "--batch", "2", NULL};
    CU_ASSERT_EQUAL_FATAL(run_rlhf(args, out, NULL), 0);
    rlhf_error err = {0};
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m, base, NULL, &err), 0);
    /* record 0 in-process: BOS + "the cat " + "sat. abc", scoring the 8 completion bytes */
    const char *pr = "the cat ", *co = "sat. abc";
    int np = (int)strlen(pr), nc = (int)strlen(co), T = 1 + np + nc - 1;
    int32_t ids[32], tok[32], tg[32];
    ids[0] = TOKENIZER_BYTES_BOS;
    for (int i = 0; i < np; i++) ids[1 + i] = (unsigned char)pr[i];
    for (int i = 0; i < nc; i++) ids[1 + np + i] = (unsigned char)co[i];
    for (int t = 0; t < T; t++) tok[t] = ids[t], tg[t] = t + 1 >= 1 + np ? ids[t + 1] : -1;
    model_trainer *tr = NULL;
    CU_ASSERT_EQUAL_FATAL(model_trainer_create(&tr, m, 1, T, &err), 0);
    CU_ASSERT_EQUAL_FATAL(model_forward(tr, tok, tg, 1, T, &err), 0);
    double want = 0;
    for (int t = 0; t < T; t++) want += model_trainer_logprobs(tr)[t];
    char *text = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(out, &text, &n, &err), 0);
    json_error_t je;
    char *line2 = strchr(text, '\n');
    CU_ASSERT_PTR_NOT_NULL_FATAL(line2);
    json_t *r0 = json_loadb(text, (size_t)(line2 - text), 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r0, "tokens")), nc);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r0, "id")), 7);
    double got = json_number_value(json_object_get(r0, "logprob"));
    CU_ASSERT(fabs(got - want) < 1e-4 * fabs(want));
    CU_ASSERT(fabs(json_number_value(json_object_get(r0, "mean_loss")) + want / nc) < 1e-4 * fabs(want));
    json_decref(r0);
    /* three records (blank line skipped); the empty completion has 0 tokens and a null mean_loss */
    int lines = 0;
    for (char *p = text; *p; p++) lines += *p == '\n';
    CU_ASSERT_EQUAL(lines, 3);
    CU_ASSERT(strstr(text, "\"tokens\":0,\"mean_loss\":null") != NULL);
    free(text);
    model_trainer_destroy(&tr);
    model_destroy(&m);
}

static void expect_failure(const char *const *args, const char *out_file, const char *want_in_error) {
    char errp[PATH_MAX];
    path_in(errp, sizeof errp, "fail.err");
    int rc = run_rlhf(args, NULL, errp);
    CU_ASSERT(rc != 0 && rc < 128);
    char *log = NULL;
    size_t n = 0;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL(rlhf_read_file(errp, &log, &n, &err), 0);
    int newlines = 0;
    for (size_t i = 0; log && i < n; i++) newlines += log[i] == '\n';
    if (!log || !strstr(log, want_in_error)) fprintf(stderr, "  unexpected error text: %s\n", log ? log : "(none)");
    CU_ASSERT(log && strstr(log, want_in_error) != NULL);
    CU_ASSERT_EQUAL(newlines, 1);
    free(log);
    if (out_file) CU_ASSERT_EQUAL(access(out_file, F_OK), -1);
}

static void test_bad_input_exits_cleanly(void) {
    char base[PATH_MAX], corpus[PATH_MAX], empty[PATH_MAX], out[PATH_MAX], missing[PATH_MAX];
    path_in(base, sizeof base, "base.safetensors");
    path_in(corpus, sizeof corpus, "corpus.txt");
    path_in(empty, sizeof empty, "empty.txt");
    path_in(out, sizeof out, "never.safetensors");
    path_in(missing, sizeof missing, "missing.safetensors");
    const char *a1[] = {"pretrain", "--model", base, "--data", empty, "--steps", "2", "--batch", "1", "--seq", "8",
                        "--lr", "1e-3", "--out", out, NULL};
    expect_failure(a1, out, "corpus is empty");
    const char *a2[] = {"pretrain", "--model", base, "--data", corpus, "--steps", "2", "--batch", "1", "--seq", "33",
                        "--lr", "1e-3", "--out", out, NULL};
    expect_failure(a2, out, "exceeds the model's max_seq_len 32");
    const char *a3[] = {"pretrain", "--model", missing, "--data", corpus, "--steps", "2", "--batch", "1", "--seq",
                        "8", "--lr", "1e-3", "--out", out, NULL};
    expect_failure(a3, out, "missing.safetensors");
    const char *a4[] = {"pretrain", "--model", base, "--data", corpus, "--steps", "2", "--batch", "1", "--seq", "8",
                        "--lr", "fast", "--out", out, NULL};
    expect_failure(a4, out, "--lr");
    char sout[PATH_MAX];
    path_in(sout, sizeof sout, "never.jsonl");
    const char *a5[] = {"score", "--model", base, "--data", corpus, "--out", sout, NULL}; /* not JSONL */
    expect_failure(a5, sout, "corpus.txt:1: invalid JSON");
    /* an --out directory that does not exist is reported before training (one line, no step logs) */
    char nodir[PATH_MAX];
    path_in(nodir, sizeof nodir, "no_such_dir/out.safetensors");
    const char *a6[] = {"pretrain", "--model", base, "--data", corpus, "--steps", "2", "--batch", "1", "--seq", "8",
                        "--lr", "1e-3", "--out", nodir, NULL};
    expect_failure(a6, nodir, "no_such_dir/out.safetensors: cannot create");
}

void register_cli_suite(void);
void register_cli_suite(void) {
    CU_pSuite s = CU_add_suite("cli", suite_init, suite_clean);
    CU_add_test(s, "rlhf pretrain lowers the loss, writes model + optimizer state", test_pretrain_lowers_loss);
    CU_add_test(s, "rlhf score JSONL == in-process log-probs", test_score_matches_in_process);
    CU_add_test(s, "bad input (incl. unwritable --out): one error line, non-zero exit, no output file", test_bad_input_exits_cleanly);
}
