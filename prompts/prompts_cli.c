/* prompts/prompts_cli.c — `rlhf prompts gen|corpus|check`: task datasets, pretraining corpora and
 * dataset validation. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "prompts/prompts.h"

static const char *PROG = "rlhf prompts";

static const char usage_text[] =
    "usage: rlhf prompts gen --task countdown|arith --n N --out FILE.jsonl [--seed S]\n"
    "                        [--heldout FILE.jsonl --n-heldout M] [--max-num K] [--max-num2 K] [--p-three P]\n"
    "       rlhf prompts corpus --task countdown|arith --n N --out CORPUS.txt [--seed S]\n"
    "                        [--p-correct P] [--max-num K] [--max-num2 K] [--p-three P]\n"
    "       rlhf prompts check FILE.jsonl [--heldout-fraction F] [--split-seed S] [--skip-bad]\n"
    "       rlhf prompts eval --data HELDOUT.jsonl --samples SAMPLES.jsonl\n"
    "       rlhf prompts stats --data TRAIN.jsonl --state SELECTOR_STATE.json --out STATS.jsonl\n"
    "                        [--config SELECTOR.json]\n"
    "\n"
    "gen writes distinct prompts (held-out ones disjoint from the train ones); corpus writes one\n"
    "\"PROMPT+COMPLETION\" line per example (or {prompt, completion} JSONL if CORPUS ends in .jsonl), a\n"
    "share --p-correct of them correct; check validates a dataset; eval scores `rlhf sample` output against\n"
    "the task's reference checker (countdown rule, else exact match with `answer`) and prints the pass rate;\n"
    "stats dumps per-prompt selector\n"
    "statistics from a saved selector state as JSONL and prints the selection metrics\n"
    "(docs/PROMPT_SELECTION.md).\n";

typedef struct cli_opts {
    const char *task, *out, *heldout, *file, *data, *state, *config, *samples;
    int n, n_heldout;
    uint64_t seed, split_seed;
    double heldout_fraction;
    int n_set, skip_bad;
    prompt_task_opts topts;
    int max_num_set, max_num2_set, p_three_set, p_correct_set;
    int max_num, max_num2;
    double p_three, p_correct;
} cli_opts;

/* argv[0] is the prompts command (gen, corpus, ...). Returns -1 to go on, else the exit status. */
static int parse(int argc, char **argv, cli_opts *o) {
    const double max_seed = 9007199254740992.0; /* 2^53: seeds are kept exactly in JSON numbers */
    const rlhf_opt opts[] = {
        RLHF_OPT("--task", RLHF_OPT_STR, &o->task),
        RLHF_OPT("--out", RLHF_OPT_STR, &o->out),
        RLHF_OPT("--heldout", RLHF_OPT_STR, &o->heldout),
        RLHF_OPT("--data", RLHF_OPT_STR, &o->data),
        RLHF_OPT("--state", RLHF_OPT_STR, &o->state),
        RLHF_OPT("--samples", RLHF_OPT_STR, &o->samples),
        RLHF_OPT("--config", RLHF_OPT_STR, &o->config),
        {.name = "--n", .kind = RLHF_OPT_INT, .out = &o->n, .lo = 1, .hi = 1e8, .given = &o->n_set},
        RLHF_OPT_RANGE("--n-heldout", RLHF_OPT_INT, &o->n_heldout, 1, 1e8),
        RLHF_OPT_RANGE("--seed", RLHF_OPT_U64, &o->seed, 0, max_seed),
        RLHF_OPT_RANGE("--split-seed", RLHF_OPT_U64, &o->split_seed, 0, max_seed),
        RLHF_OPT_RANGE("--heldout-fraction", RLHF_OPT_DOUBLE, &o->heldout_fraction, 0, 0.999999),
        {.name = "--max-num", .kind = RLHF_OPT_INT, .out = &o->max_num, .lo = 1, .hi = 1000, .given = &o->max_num_set},
        {.name = "--max-num2", .kind = RLHF_OPT_INT, .out = &o->max_num2, .lo = 1, .hi = 1000, .given = &o->max_num2_set},
        {.name = "--p-three", .kind = RLHF_OPT_DOUBLE, .out = &o->p_three, .lo = 0, .hi = 1, .given = &o->p_three_set},
        {.name = "--p-correct", .kind = RLHF_OPT_DOUBLE, .out = &o->p_correct, .lo = 0, .hi = 1, .given = &o->p_correct_set},
        RLHF_OPT("--skip-bad", RLHF_OPT_FLAG, &o->skip_bad),
        RLHF_OPT_END,
    };
    int npos = 0;
    int rc = rlhf_opts_parse(argc, argv, PROG, usage_text, opts, &o->file, 1, &npos);
    if (rc >= 0) return rc;
    if (o->task) {
        prompt_task_opts_default(o->task, &o->topts);
        if (o->max_num_set) o->topts.max_num = o->max_num;
        if (o->max_num2_set) o->topts.max_num2 = o->max_num2;
        if (o->p_three_set) o->topts.p_three = o->p_three;
        if (o->p_correct_set) o->topts.p_correct = o->p_correct;
    }
    return -1;
}

static int write_jsonl(const char *path, const json_t *arr, rlhf_error *err) {
    rlhf_atomic_file af;
    int rc = rlhf_atomic_open(&af, path, err);
    if (rc) return rc;
    size_t i;
    json_t *r;
    json_array_foreach(arr, i, r) {
        char *line = json_dumps(r, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!line) {
            rlhf_atomic_abort(&af);
            return rlhf_error_set(err, RLHF_ENOMEM, path, "cannot serialise record %zu", i);
        }
        fprintf(af.fp, "%s\n", line);
        free(line);
    }
    return rlhf_atomic_commit(&af, err);
}

static int prompts_gen(cli_opts *o, rlhf_error *err) {
    if (!o->task) return rlhf_error_set(err, RLHF_EINVAL, "--task", "required (countdown, arith)");
    if (!o->n_set) return rlhf_error_set(err, RLHF_EINVAL, "--n", "required");
    if (!o->out) return rlhf_error_set(err, RLHF_EINVAL, "--out", "required");
    if (!o->heldout != !o->n_heldout)
        return rlhf_error_set(err, RLHF_EINVAL, o->heldout ? "--n-heldout" : "--heldout",
                              "--heldout and --n-heldout go together");
    /* the held-out set is drawn first, from the task's distribution; the train set then avoids its prompts
     * (the other way round, a large train set would use up the small 2-number problem space) */
    json_t *train = NULL, *held = NULL, *exclude = json_array();
    int rc = 0;
    if (o->heldout) {
        rc = prompt_task_generate(&held, o->task, (size_t)o->n_heldout, (uint64_t)o->seed, "heldout", &o->topts,
                                  NULL, err);
        size_t i;
        json_t *r;
        if (rc == 0) json_array_foreach(held, i, r) json_array_append(exclude, json_object_get(r, "prompt"));
    }
    if (rc == 0)
        rc = prompt_task_generate(&train, o->task, (size_t)o->n, (uint64_t)o->seed, "train", &o->topts, exclude, err);
    if (rc == 0) rc = write_jsonl(o->out, train, err);
    if (rc == 0 && held) rc = write_jsonl(o->heldout, held, err);
    if (rc == 0)
        fprintf(stderr, "%s: wrote %zu %s prompts to %s%s%s%s\n", PROG, json_array_size(train), o->task, o->out,
                held ? " and held-out ones to " : "", held ? o->heldout : "", "");
    json_decref(train);
    json_decref(held);
    json_decref(exclude);
    return rc;
}

static int prompts_corpus(cli_opts *o, rlhf_error *err) {
    if (!o->task) return rlhf_error_set(err, RLHF_EINVAL, "--task", "required (countdown, arith)");
    if (!o->n_set) return rlhf_error_set(err, RLHF_EINVAL, "--n", "required");
    if (!o->out) return rlhf_error_set(err, RLHF_EINVAL, "--out", "required");
    int rc = prompt_task_write_corpus(o->out, o->task, (size_t)o->n, (uint64_t)o->seed, &o->topts, err);
    if (rc == 0)
        fprintf(stderr, "%s: wrote %zu %s corpus lines to %s (%.0f%% correct completions)\n", PROG, (size_t)o->n,
                o->task, o->out, 100 * o->topts.p_correct);
    return rc;
}

static int prompts_check(cli_opts *o, rlhf_error *err) {
    if (!o->file) return rlhf_error_set(err, RLHF_EINVAL, "check", "needs a dataset FILE.jsonl");
    prompt_dataset_opts dopts = {.split = PROMPT_SPLIT_ALL, .heldout_fraction = o->heldout_fraction,
                                 .split_seed = (uint64_t)o->split_seed, .skip_bad = o->skip_bad};
    prompt_dataset *ds = NULL;
    int rc = prompt_dataset_load_opts(&ds, o->file, &dopts, err);
    if (rc) return rc;
    size_t held = 0;
    for (size_t i = 0; i < prompt_dataset_size(ds); i++) held += prompt_dataset_is_heldout(ds, i);
    printf("%s: %zu records (train %zu, heldout %zu), %zu bad lines skipped\n", o->file, prompt_dataset_size(ds),
           prompt_dataset_size(ds) - held, held, prompt_dataset_skipped(ds));
    prompt_dataset_destroy(&ds);
    return 0;
}

/* 1 if a sample's text (up to its first newline, surrounding spaces ignored) solves the record. */
static int solves(const json_t *rec, const char *text) {
    char buf[256];
    size_t n = strcspn(text, "\n");
    while (n && text[n - 1] == ' ') n--;
    while (n && *text == ' ') text++, n--;
    if (n >= sizeof buf) return 0;
    memcpy(buf, text, n);
    buf[n] = 0;
    json_t *nums = json_object_get(rec, "numbers"), *target = json_object_get(rec, "target");
    if (json_is_array(nums) && json_is_integer(target)) {
        int v[3], c = (int)json_array_size(nums);
        if (c < 1 || c > 3) return 0;
        for (int i = 0; i < c; i++) v[i] = (int)json_integer_value(json_array_get(nums, (size_t)i));
        return prompt_countdown_check(buf, v, c, (long)json_integer_value(target), NULL);
    }
    const char *ans = json_string_value(json_object_get(rec, "answer"));
    return ans && !strcmp(buf, ans);
}

static int prompts_eval(cli_opts *o, rlhf_error *err) {
    if (!o->data) return rlhf_error_set(err, RLHF_EINVAL, "--data", "required (the prompts that were sampled)");
    if (!o->samples) return rlhf_error_set(err, RLHF_EINVAL, "--samples", "required (`rlhf sample` output)");
    prompt_dataset *ds = NULL;
    int rc = prompt_dataset_load(&ds, o->data, err);
    if (rc) return rc;
    FILE *f = fopen(o->samples, "r");
    struct stat st;
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) { /* it opens, and reads as empty */
        fclose(f);
        f = NULL;
        errno = EISDIR;
    }
    if (!f) {
        prompt_dataset_destroy(&ds);
        return rlhf_error_set(err, RLHF_EIO, o->samples, "cannot open: %s", strerror(errno));
    }
    size_t n = prompt_dataset_size(ds), samples = 0, passed = 0;
    unsigned *ok = calloc(n, sizeof *ok), *tot = calloc(n, sizeof *tot);
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    while (rc == 0 && ok && tot && getline(&line, &cap, f) >= 0) {
        lineno++;
        char where[600];
        snprintf(where, sizeof where, "%s:%ld", o->samples, lineno);
        json_t *s = json_loads(line, 0, NULL);
        const char *text = json_string_value(json_object_get(s, "text"));
        const char *id = json_string_value(json_object_get(s, "id"));
        json_t *pi = json_object_get(s, "prompt_index");
        long idx = id ? prompt_dataset_find(ds, id) : json_is_integer(pi) ? (long)json_integer_value(pi) : -1;
        if (!s || !text) rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "need a JSON object with a string \"text\"");
        else if (idx < 0 || (size_t)idx >= n)
            rc = rlhf_error_set(err, RLHF_ECORRUPT, where, "sample names no record of %s (by id or prompt_index)", o->data);
        else {
            int good = solves(prompt_dataset_get(ds, (size_t)idx)->record, text);
            ok[idx] += good;
            tot[idx]++;
            passed += good;
            samples++;
        }
        json_decref(s);
    }
    free(line);
    fclose(f);
    if (rc == 0 && (!ok || !tot)) rc = rlhf_error_set(err, RLHF_ENOMEM, o->samples, "out of memory");
    if (rc == 0 && samples == 0) rc = rlhf_error_set(err, RLHF_EINVAL, o->samples, "no samples");
    if (rc == 0) {
        size_t prompts = 0, any = 0, mixed = 0;
        for (size_t i = 0; i < n; i++) {
            if (!tot[i]) continue;
            prompts++;
            any += ok[i] > 0;
            mixed += ok[i] > 0 && ok[i] < tot[i];
        }
        printf("{\"pass_rate\": %.6f, \"samples\": %zu, \"passed\": %zu, \"prompts\": %zu, \"prompts_any_pass\": %zu, "
               "\"prompts_mixed\": %zu}\n",
               (double)passed / (double)samples, samples, passed, prompts, any, mixed);
    }
    free(ok);
    free(tot);
    prompt_dataset_destroy(&ds);
    return rc;
}

static int prompts_stats(cli_opts *o, rlhf_error *err) {
    if (!o->data) return rlhf_error_set(err, RLHF_EINVAL, "--data", "required (the selector's train dataset)");
    if (!o->state) return rlhf_error_set(err, RLHF_EINVAL, "--state", "required (a saved selector state)");
    if (!o->out) return rlhf_error_set(err, RLHF_EINVAL, "--out", "required");
    json_error_t jerr;
    json_t *state = json_load_file(o->state, 0, &jerr), *cfg = NULL;
    if (!state) {
        char w[300];
        snprintf(w, sizeof w, "%s:%d", o->state, jerr.line);
        return rlhf_error_set(err, RLHF_ECORRUPT, w, "invalid JSON: %s", jerr.text);
    }
    if (o->config) {
        cfg = json_load_file(o->config, 0, &jerr);
        if (!cfg) {
            json_decref(state);
            char w[300];
            snprintf(w, sizeof w, "%s:%d", o->config, jerr.line);
            return rlhf_error_set(err, RLHF_ECORRUPT, w, "invalid JSON: %s", jerr.text);
        }
    } else {
        /* without the run's knobs, the state's policy with default knobs (affects only the `prob` column) */
        json_t *pol = json_object_get(state, "policy");
        cfg = json_pack("{s:s}", "policy", json_is_string(pol) ? json_string_value(pol) : "uniform");
    }
    prompt_dataset *ds = NULL;
    prompt_selector *sel = NULL;
    int rc = prompt_dataset_load(&ds, o->data, err);
    if (rc == 0) rc = prompt_selector_create(&sel, ds, cfg, 0, err);
    if (rc == 0) rc = prompt_selector_load_json(sel, state, o->state, err);
    if (rc == 0) rc = prompt_selector_dump_stats(sel, o->out, err);
    if (rc == 0) {
        json_t *m = prompt_selector_metrics(sel);
        char *s = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(m);
    }
    prompt_selector_destroy(&sel);
    prompt_dataset_destroy(&ds);
    json_decref(state);
    json_decref(cfg);
    return rc;
}

int cmd_prompts(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    static const char *const subs[] = {"gen", "corpus", "check", "stats", "eval", NULL};
    int known = 0;
    for (int i = 0; subs[i]; i++) known |= !strcmp(argv[1], subs[i]);
    if (!known) { /* a usage error like any other: exit 2 */
        fprintf(stderr, "%s: error: unknown prompts command '%s' (gen, corpus, check, eval, stats)\n", PROG, argv[1]);
        return 2;
    }
    cli_opts o = {.seed = 1};
    rlhf_error err = {0};
    int rc = parse(argc - 1, argv + 1, &o);
    if (rc >= 0) return rc;
    rc = 0;
    {
        if (!strcmp(argv[1], "gen")) rc = prompts_gen(&o, &err);
        else if (!strcmp(argv[1], "corpus")) rc = prompts_corpus(&o, &err);
        else if (!strcmp(argv[1], "check")) rc = prompts_check(&o, &err);
        else if (!strcmp(argv[1], "stats")) rc = prompts_stats(&o, &err);
        else rc = prompts_eval(&o, &err);
    }
    if (rc) {
        rlhf_error_print(PROG, &err);
        return 1;
    }
    return 0;
}
