/* tests/e2e/test_generation.c — what the generator processes of a real run (`rlhf run`: broker, generator
 * and updater over ZeroMQ) put into the rollout groups, read back from the run's replay log:
 *
 *   stop_rules:          every completion ends at an EOS id, at its first task.stop string (tokens end with
 *                        the token that completed it; the group's text is cut before it, or ends with it
 *                        under task.include_stop), or after generators.max_tokens; recomputed from the
 *                        token ids by a plain search, not by the sampler's incremental matching;
 *   behaviour_logprobs:  the recorded log-probs of groups sampled by the base weights (policy_version 0)
 *                        equal log q of a plain reference of the sampling distribution (temperature, top-k,
 *                        min-p on model_reference_logits) with "sampling", and the temperature-1 log-softmax
 *                        with "policy";
 *   speculative:         the same two checks of a run whose generator decodes speculatively
 *                        (generators.speculative: the n-gram drafter and a draft model, drafting every
 *                        step): the stop rules hold and every token's recorded log-prob is the target's,
 *                        not the draft's, while the generator drafted (gen/spec_* metrics). */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "common/common.h"
#include "model/model.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_paths.h"
#include "tests/test_proc.h"

static char g_dir[64];
static char g_rlhf[1024];

static int suite_init(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/rlhf_gen_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    if (test_bin_path("rlhf", g_rlhf, sizeof g_rlhf)) return -1;
    if (access(g_rlhf, X_OK) != 0) return -1;
    return e2e_write_prompts(g_dir);
}

static int suite_cleanup(void) {
    if (CU_get_number_of_failures() == 0 && g_dir[0]) test_remove_tree(g_dir);
    return 0;
}

/* Stop strings the random tiny model hits often: 16 one-byte strings and a two-byte one. */
static const char *const STOPS[] = {"A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "xy"};
enum { N_STOPS = sizeof STOPS / sizeof STOPS[0], MAX_TOKENS = 8 };

/* Runs a 2-step job with these generator settings (spec: "" or a generators.speculative object); returns the
 * run directory's path in run_dir. */
static int run_job(const char *name, const char *behaviour, int include_stop, const char *spec, char *run_dir,
                   size_t cap) {
    snprintf(run_dir, cap, "%s/%s", g_dir, name);
    char stops[512] = "";
    for (int i = 0; i < N_STOPS; i++) {
        strcat(stops, i ? ",\"" : "\"");
        strcat(stops, STOPS[i]);
        strcat(stops, "\"");
    }
    char cfg[4096], path[256], log[256];
    snprintf(cfg, sizeof cfg,
             "{\"name\":\"%s\",\"run_dir\":\"%s\",\n"
             " \"model\":{\"arch\":{\"dim\":32,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":64,\"vocab_size\":259,"
             "\"max_seq_len\":24},\"threads\":1},\n"
             " \"task\":{\"train\":\"%s/prompts.jsonl\",\"stop\":[%s],\"include_stop\":%s},\n"
             " \"rewards\":[{\"type\":\"regex\",\"name\":\"digit\",\"pattern\":\"[0-9]\"}],\n"
             " \"rl\":{\"k\":4,\"prompts_per_step\":4,\"lr\":0.01,\"steps\":2,\"checkpoint_every\":1,\"seed\":3},\n"
             " \"generators\":{\"count\":1,\"max_tokens\":%d,\"batch\":4,\"threads\":1,\"temperature\":0.7,"
             "\"top_k\":40,\"min_p\":0.02,\"behaviour_logprobs\":\"%s\"%s%s}}\n",
             name, run_dir, g_dir, stops, include_stop ? "true" : "false", MAX_TOKENS, behaviour,
             spec[0] ? ",\"speculative\":" : "", spec);
    snprintf(path, sizeof path, "%s/%s.json", g_dir, name);
    snprintf(log, sizeof log, "%s/%s.out", g_dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(cfg, f);
    fclose(f);
    const char *args[] = {"run", path, "--quiet", NULL};
    test_proc_opts o = {.out = log, .err = log};
    int st = test_proc_run_args(g_rlhf, g_rlhf, args, &o, 120);
    if (st != 0) fprintf(stderr, "\n  rlhf run %s: status %d (log %s)\n", name, st, log);
    return st;
}

/* Reference log q(y) at one position: temperature, top-k (ties by smaller id), min-p; no top-p. */
static double ref_log_q(const float *row, int V, int y, double temp, int top_k, double min_p) {
    double mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmax(mx, row[i]);
    double kept = 0.0;
    int in = 0;
    for (int i = 0; i < V; i++) {
        int above = 0; /* ids ranked before i */
        for (int j = 0; j < V; j++) above += row[j] > row[i] || (row[j] == row[i] && j < i);
        double w = exp((row[i] - mx) / temp);
        if (above >= top_k || w < min_p) continue;
        kept += w;
        in |= i == y;
    }
    if (!in) return NAN;
    return (row[y] - mx) / temp - log(kept);
}

static double ref_log_pi(const float *row, int V, int y) {
    double mx = -INFINITY, s = 0.0;
    for (int i = 0; i < V; i++) mx = fmax(mx, row[i]);
    for (int i = 0; i < V; i++) s += exp(row[i] - mx);
    return row[y] - mx - log(s);
}

/* Checks every record of the run's replay log; returns the number of samples checked. */
static int check_log(const char *run_dir, int policy_logprobs, int include_stop, int *n_stop_string, int *n_length,
                     int *n_lp_checked) {
    char path[512];
    snprintf(path, sizeof path, "%s/rollouts.log", run_dir);
    replay_reader *r = NULL;
    rlhf_error err = {0};
    CU_ASSERT_EQUAL_FATAL(replay_reader_open(&r, path, &err), 0);
    snprintf(path, sizeof path, "%s/base.safetensors", run_dir);
    model *m = NULL;
    CU_ASSERT_EQUAL_FATAL(model_load(&m, path, NULL, &err), 0);
    int V = m->cfg.vocab_size, samples = 0;
    wire_rollout_group g;
    replay_pos pos;
    memset(&g, 0, sizeof g);
    while (replay_reader_next(r, &g, &pos, &err) == 1) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(g.texts);
        size_t off = 0;
        for (uint32_t j = 0; j < g.k; j++) {
            const int32_t *t = g.tokens + off;
            int n = (int)g.n_tokens[j];
            /* the decoded bytes (byte-level ids) and the first stop string in them, by a plain search */
            char bytes[64];
            int nb = 0, stop_tok = -1;
            size_t cut = 0;
            const char *which = NULL;
            for (int i = 0; i < n && stop_tok < 0; i++) {
                if (t[i] < 256) bytes[nb++] = (char)t[i];
                for (size_t at = 0; at < (size_t)nb && stop_tok < 0; at++)
                    for (int s = 0; s < N_STOPS; s++) {
                        size_t sl = strlen(STOPS[s]);
                        if (at + sl <= (size_t)nb && !memcmp(bytes + at, STOPS[s], sl)) {
                            stop_tok = i;
                            cut = at;
                            which = STOPS[s];
                            break;
                        }
                    }
            }
            int eos_at_end = n > 0 && t[n - 1] == TOKENIZER_BYTES_EOS;
            if (stop_tok >= 0) { /* a stop string: the tokens end with the one that completed it */
                CU_ASSERT_EQUAL(stop_tok, n - 1);
                CU_ASSERT_EQUAL(g.finish[j], WIRE_FINISH_STOP);
                size_t keep = cut + (include_stop ? strlen(which) : 0);
                char *want = rlhf_utf8_sanitize(bytes, keep);
                CU_ASSERT_STRING_EQUAL(g.texts[j], want);
                if (strcmp(g.texts[j], want)) fprintf(stderr, "\n  text '%s' vs '%s'\n", g.texts[j], want);
                free(want);
                (*n_stop_string)++;
            } else if (eos_at_end) {
                CU_ASSERT_EQUAL(g.finish[j], WIRE_FINISH_STOP);
            } else { /* no stop: the budget ran out */
                CU_ASSERT_EQUAL(n, MAX_TOKENS);
                CU_ASSERT_EQUAL(g.finish[j], WIRE_FINISH_LENGTH);
                char *want = rlhf_utf8_sanitize(bytes, (size_t)nb);
                CU_ASSERT_STRING_EQUAL(g.texts[j], want);
                free(want);
                (*n_length)++;
            }
            for (int i = 0; i < n - 1; i++) CU_ASSERT(t[i] != TOKENIZER_BYTES_EOS); /* EOS ends it */
            /* behaviour log-probs of the base weights' samples against the reference */
            if (g.policy_version == 0 && *n_lp_checked < 24) {
                int T = (int)g.n_prompt_tokens + n;
                int32_t *seq = malloc((size_t)T * sizeof *seq);
                float *lg = malloc((size_t)T * V * sizeof(float));
                memcpy(seq, g.prompt_tokens, g.n_prompt_tokens * sizeof *seq);
                memcpy(seq + g.n_prompt_tokens, t, (size_t)n * sizeof *seq);
                CU_ASSERT_EQUAL_FATAL(model_reference_logits(m, seq, T, lg, &err), 0);
                for (int i = 0; i < n; i++) {
                    const float *row = lg + (size_t)(g.n_prompt_tokens - 1 + i) * V;
                    double want = policy_logprobs ? ref_log_pi(row, V, t[i]) : ref_log_q(row, V, t[i], 0.7, 40, 0.02);
                    CU_ASSERT(fabs(g.logprobs[off + i] - want) < 1e-4);
                    if (!(fabs(g.logprobs[off + i] - want) < 1e-4))
                        fprintf(stderr, "\n  token %d: recorded %g, reference %g\n", i, g.logprobs[off + i], want);
                }
                free(seq);
                free(lg);
                (*n_lp_checked)++;
            }
            off += (size_t)n;
            samples++;
        }
        wire_rollout_group_free(&g);
    }
    replay_reader_close(&r);
    model_destroy(&m);
    return samples;
}

/* The generator's speculative counters summed over the run's steps (metrics.jsonl). */
static void spec_counters(const char *run_dir, long *drafted, double *acceptance_max) {
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    *drafted = 0;
    *acceptance_max = 0;
    FILE *f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char line[65536];
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        *drafted += (long)json_integer_value(json_object_get(j, "gen/spec_drafted"));
        *acceptance_max = fmax(*acceptance_max, json_number_value(json_object_get(j, "gen/spec_acceptance")));
        json_decref(j);
    }
    fclose(f);
}

static void test_generation_rules(void) {
    /* a draft model of the same vocabulary, another random model than the run's base */
    char arch[256], draft[256], spec_draft[512], out[256];
    snprintf(arch, sizeof arch, "%s/draft-arch.json", g_dir);
    snprintf(draft, sizeof draft, "%s/draft.safetensors", g_dir);
    snprintf(out, sizeof out, "%s/draft-init.out", g_dir);
    FILE *af = fopen(arch, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(af);
    fputs("{\"dim\":16,\"n_layers\":1,\"n_heads\":2,\"ffn_dim\":32,\"vocab_size\":259,\"max_seq_len\":24}\n", af);
    fclose(af);
    const char *init[] = {"init", "--arch", arch, "--out", draft, "--seed", "9", NULL};
    test_proc_opts io = {.out = out, .err = out};
    CU_ASSERT_EQUAL_FATAL(test_proc_run_args(g_rlhf, g_rlhf, init, &io, 60), 0);
    snprintf(spec_draft, sizeof spec_draft, "{\"drafter\":\"draft\",\"draft_checkpoint\":\"%s\",\"gamma\":3,"
             "\"adaptive\":false}", draft);
    /* matches of a single token count (a random model's samples seldom repeat longer n-grams) */
    static const char spec_ngram[] = "{\"drafter\":\"ngram\",\"gamma\":4,\"adaptive\":false,\"ngram_min\":1,"
                                     "\"ngram_max\":2}";
    const struct {
        const char *name, *behaviour;
        int include_stop;
        const char *spec;
    } jobs[4] = {{"gen_sampling", "sampling", 0, ""},
                 {"gen_policy", "policy", 1, ""},
                 {"gen_spec_ngram", "sampling", 0, spec_ngram},
                 {"gen_spec_draft", "policy", 1, spec_draft}};
    for (int i = 0; i < 4; i++) {
        char run_dir[256];
        CU_ASSERT_EQUAL_FATAL(run_job(jobs[i].name, jobs[i].behaviour, jobs[i].include_stop, jobs[i].spec, run_dir,
                                      sizeof run_dir),
                              0);
        int n_stop = 0, n_length = 0, n_lp = 0;
        int n = check_log(run_dir, !strcmp(jobs[i].behaviour, "policy"), jobs[i].include_stop, &n_stop, &n_length,
                          &n_lp);
        if (jobs[i].spec[0]) { /* it did speculate: drafts were verified (and the draft model's partly kept:
                                * hundreds of drafts at ~0.07; the n-gram drafter's dozen are often all rejected) */
            long drafted = 0;
            double acc = 0;
            spec_counters(run_dir, &drafted, &acc);
            printf("\n  %s: %ld draft tokens verified, acceptance up to %.2f", jobs[i].name, drafted, acc);
            CU_ASSERT(drafted > 0);
            if (strstr(jobs[i].spec, "draft_checkpoint")) CU_ASSERT(acc > 0);
        }
        printf("\n  %s: %d samples, %d ended at a stop string, %d at max_tokens; log-probs of %d checked ",
               jobs[i].name, n, n_stop, n_length, n_lp);
        CU_ASSERT(n >= 8);
        CU_ASSERT(n_stop >= 1); /* both kinds of end occurred */
        CU_ASSERT(n_length >= 1);
        CU_ASSERT(n_lp >= 4);
    }
}

/* rlhf eval: the sampling options, and their bad values (usage errors: exit 2, one line naming the option) */
static void test_eval_options(void) {
    char cfg[256], out[256], err[256];
    snprintf(cfg, sizeof cfg, "%s/gen_sampling/config.json", g_dir);
    snprintf(out, sizeof out, "%s/eval.out", g_dir);
    snprintf(err, sizeof err, "%s/eval.err", g_dir);
    CU_ASSERT_FATAL(access(cfg, F_OK) == 0);
    test_proc_opts o = {.out = out, .err = err};
    const char *ok[] = {"eval", "--config", cfg, "--split", "train", "--n", "4", "--samples", "2", "--temperature", "1",
                        "--top-k", "5", "--top-p", "0.9", "--min-p", "0.1", NULL};
    CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, ok, &o, 60), 0);
    char *text = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rlhf_read_file(out, &text, &n, NULL), 0);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "prompts")), 4);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "samples")), 2);
    json_decref(j);
    static const char *const bad[][2] = {{"--min-p", "1.5"}, {"--min-p", "-0.1"}, {"--top-p", "0"},
                                         {"--top-p", "2"},   {"--top-k", "-1"},   {"--top-k", "x"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *args[] = {"eval", "--config", cfg, bad[i][0], bad[i][1], NULL};
        CU_ASSERT_EQUAL(test_proc_run_args(g_rlhf, g_rlhf, args, &o, 60), 2);
        char *e = NULL;
        CU_ASSERT_EQUAL_FATAL(rlhf_read_file(err, &e, &n, NULL), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(e, bad[i][0]));
        if (!strstr(e, bad[i][0])) fprintf(stderr, "\n  %s %s: %s\n", bad[i][0], bad[i][1], e);
        free(e);
    }
}

/* Runs `rlhf eval ARGS`; returns its exit status, *json its output (or NULL), stderr in g_dir/evalc.err. */
static int eval_run(const char *const *args, json_t **json) {
    char out[256], err[256];
    snprintf(out, sizeof out, "%s/evalc.out", g_dir);
    snprintf(err, sizeof err, "%s/evalc.err", g_dir);
    test_proc_opts o = {.out = out, .err = err};
    int rc = test_proc_run_args(g_rlhf, g_rlhf, args, &o, 60);
    char *text = NULL;
    size_t n = 0;
    *json = NULL;
    if (rlhf_read_file(out, &text, &n, NULL) == 0) {
        *json = json_loads(text, 0, NULL);
        free(text);
    }
    return rc;
}

static int eval_err_contains(const char *needle) {
    char p[256], *e = NULL;
    size_t n = 0;
    snprintf(p, sizeof p, "%s/evalc.err", g_dir);
    if (rlhf_read_file(p, &e, &n, NULL)) return 0;
    int r = strstr(e, needle) != NULL;
    if (!r) fprintf(stderr, "\n  stderr has no '%s': %s\n", needle, e);
    free(e);
    return r;
}

/* rlhf eval RUN_DIR: the latest checkpoint by default (checkpoints/latest is a symlink; the text file of
 * older runs is still read), --checkpoint base|N, and no quiet switch to the training prompts. */
static void test_eval_checkpoints(void) {
    char run[256], latest[300], want[400];
    snprintf(run, sizeof run, "%s/gen_sampling", g_dir);
    snprintf(latest, sizeof latest, "%s/checkpoints/latest", run);
    struct stat st;
    CU_ASSERT_FATAL(lstat(latest, &st) == 0);
    CU_ASSERT(S_ISLNK(st.st_mode));
    json_t *j = NULL;
    const char *a1[] = {"eval", run, "--split", "train", "--n", "2", NULL};
    CU_ASSERT_EQUAL(eval_run(a1, &j), 0);
    snprintf(want, sizeof want, "%s/checkpoints/step_2/model.safetensors", run);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "checkpoint")), want);
    json_decref(j);
    const char *a2[] = {"eval", run, "--split", "train", "--n", "2", "--checkpoint", "1", NULL};
    CU_ASSERT_EQUAL(eval_run(a2, &j), 0);
    snprintf(want, sizeof want, "%s/checkpoints/step_1/model.safetensors", run);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "checkpoint")), want);
    json_decref(j);
    const char *a3[] = {"eval", run, "--split", "train", "--n", "2", "--checkpoint", "base", NULL};
    CU_ASSERT_EQUAL(eval_run(a3, &j), 0);
    snprintf(want, sizeof want, "%s/base.safetensors", run);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "checkpoint")), want);
    json_decref(j);
    const char *a4[] = {"eval", run, "--split", "train", "--checkpoint", "7", NULL};
    CU_ASSERT_EQUAL(eval_run(a4, &j), 1);
    json_decref(j);
    CU_ASSERT(eval_err_contains("step_7/model.safetensors: no such checkpoint"));
    /* no task.eval: an error naming the key and the way out, not the training prompts */
    const char *a5[] = {"eval", run, "--n", "2", NULL};
    CU_ASSERT_EQUAL(eval_run(a5, &j), 1);
    json_decref(j);
    CU_ASSERT(eval_err_contains("config.json: task.eval: not set"));
    CU_ASSERT(eval_err_contains("--split train"));
    /* `latest` as the text file older runs wrote */
    CU_ASSERT_EQUAL_FATAL(unlink(latest), 0);
    FILE *f = fopen(latest, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("step_1\n", f);
    fclose(f);
    CU_ASSERT_EQUAL(eval_run(a1, &j), 0);
    snprintf(want, sizeof want, "%s/checkpoints/step_1/model.safetensors", run);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "checkpoint")), want);
    json_decref(j);
    unlink(latest);
    CU_ASSERT_EQUAL(symlink("step_2", latest), 0);
}

void e2e_register_generation(void) {
    CU_pSuite s = CU_add_suite("generation", suite_init, suite_cleanup);
    CU_add_test(s, "stop rules and behaviour log-probs in a run's rollout groups", test_generation_rules);
    CU_add_test(s, "rlhf eval sampling options; bad values exit 2", test_eval_options);
    CU_add_test(s, "rlhf eval RUN_DIR: which checkpoint, which prompts", test_eval_checkpoints);
}
