/* cli/replay_check.c — what `rlhf replay` checks and says before it trains (see cli/replay_int.h):
 *
 *   - the model: the base the replay trains must be the one the log was sampled from. The live
 *     updater wrote its identity (content hashes of config, weights, tokenizer: run/identity.c) to
 *     model_identity.json beside the log; a different one is refused naming both, unless
 *     --allow-other-model (then the importance ratios of the first steps are printed as a warning,
 *     since they measure how far apart the two models are);
 *   - the config: every key that differs from the recording's config.json (beside the log) is printed
 *     with what it means at replay. Keys that decided how the log's samples were drawn (rl.k, the
 *     generators' settings, the task's stop rules) cannot change anything: the samples are what they
 *     are, so a different value is refused with that reason. The keys that decide which groups train
 *     when (rl.prompts_per_step, rl.max_staleness, rl.publish_every) switch the replay to the
 *     recording's clock (policy_state.recorded_clock), so staleness stays >= 0. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/replay_int.h"

void cmd_replay_dir_of(const char *path, char *out, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, cap, ".");
    else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

void cmd_replay_group_key(char *out, size_t cap, const char *generator_id, uint64_t seq) {
    snprintf(out, cap, "%s\t%llu", generator_id ? generator_id : "", (unsigned long long)seq);
}

int cmd_replay_check_model(const char *log_path, const policy_state *ps, int allow_other, int *other, rlhf_error *err) {
    char dir[2048], path[2200];
    *other = 0;
    cmd_replay_dir_of(log_path, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s", dir, RUN_MODEL_IDENTITY_FILE);
    json_t *rec = json_load_file(path, 0, NULL);
    if (!rec) {
        fprintf(stderr, "rlhf replay: warning: %s: not found (a log recorded before runs kept their model's identity, "
                        "or moved without it): cannot check that this config's base model is the one that sampled "
                        "the log\n", path);
        return 0;
    }
    json_t *mine = NULL;
    int rc = run_model_identity(ps->m, ps->tok, &mine, err);
    char what[400];
    if (!rc && run_model_identity_compare(rec, mine, what, sizeof what)) {
        if (allow_other) {
            *other = 1;
            fprintf(stderr, "rlhf replay: warning: the log was sampled from another model (%s: %s); training on it "
                            "anyway (--allow-other-model): watch is_ratio, printed for the first steps\n", path, what);
        } else {
            rc = rlhf_error_set(err, RLHF_EINVAL, path,
                                "the log was sampled from another model than this config's base (%s; recorded model "
                                "%s, this one %s); its token ids and log-probs mean nothing for this one. "
                                "--allow-other-model trains on it anyway",
                                what, json_string_value(json_object_get(rec, "model")),
                                json_string_value(json_object_get(mine, "model")));
        }
    }
    json_decref(mine);
    json_decref(rec);
    return rc;
}

/* Keys that do not take part in the comparison: names, places and thread counts. */
static int ignored(const char *key) {
    static const char *const keys[] = {"name", "run_dir", "model.threads", "generators.threads",
                                       "updaters.reward_threads", "launcher", "checkpoint", "log", "eval",
                                       "model.base_checkpoint", NULL};
    for (int i = 0; keys[i]; i++) {
        size_t n = strlen(keys[i]);
        if (!strncmp(key, keys[i], n) && (key[n] == 0 || key[n] == '.')) return 1;
    }
    return 0;
}

/* What a changed key means at replay: REFUSE (a reason why it cannot change anything), CLOCK (changes
 * which groups train when), UNUSED (the log replaces it) or TRAINS (it changes training). */
enum { TRAINS, REFUSE, CLOCK, UNUSED };
static int meaning(const char *key, const char **why) {
    if (!strcmp(key, "rl.k") || !strncmp(key, "generators.", 11) || !strcmp(key, "task.stop") ||
        !strcmp(key, "task.include_stop") || !strcmp(key, "mode") || !strcmp(key, "model.max_seq_len") ||
        (!strncmp(key, "task.guided", 11) && (key[11] == 0 || key[11] == '.'))) {
        *why = "it decided how the log's samples were drawn, and they are what they are";
        return REFUSE;
    }
    if (!strcmp(key, "rl.prompts_per_step") || !strcmp(key, "rl.max_staleness") || !strcmp(key, "rl.publish_every")) {
        *why = "changes which groups train together and when; the replay measures staleness against the "
               "recording's publishing order (the newest policy_version read so far), so it is never negative";
        return CLOCK;
    }
    if (!strncmp(key, "task.", 5) || !strncmp(key, "broker", 6) || !strncmp(key, "prompts", 7)) {
        *why = "not used at replay: the log holds the prompts that were served";
        return UNUSED;
    }
    if (!strcmp(key, "rewards") || !strncmp(key, "rewards.", 8)) {
        *why = "the replay scores the logged completions with these sources";
        return TRAINS;
    }
    *why = "trains with this value";
    return TRAINS;
}

/* Flattens an object into KEY -> value pairs (objects recursed; arrays and scalars are leaves). */
static void flatten(json_t *obj, const char *prefix, json_t *out) {
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        char key[512];
        if (prefix[0]) snprintf(key, sizeof key, "%s.%s", prefix, k);
        else snprintf(key, sizeof key, "%s", k);
        if (json_is_object(v) && json_object_size(v) && strcmp(key, "model.arch")) flatten(v, key, out);
        else json_object_set(out, key, v);
    }
}

static char *short_json(json_t *v) {
    if (!v) return strdup("(absent)");
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
    if (t && strlen(t) > 120) strcpy(t + 100, "...");
    return t ? t : strdup("?");
}

int cmd_replay_check_config(const char *log_path, const run_config *cfg, int *use_recorded_clock,
                            int *rewards_changed, int *n_differ, rlhf_error *err) {
    char dir[2048], path[2200];
    *use_recorded_clock = 0;
    *n_differ = -1; /* unknown */
    *rewards_changed = 1; /* unknown: as if changed */
    cmd_replay_dir_of(log_path, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *rec_doc = json_load_file(path, 0, NULL);
    if (!rec_doc) {
        /* e.g. a merged log: its versions are not this replay's, so staleness uses the recording's clock */
        fprintf(stderr, "rlhf replay: warning: %s: not found: cannot say how this config differs from the "
                        "recording's; staleness is measured on the log's own versions\n", path);
        *use_recorded_clock = 1;
        return 0;
    }
    /* the recorded config through the same parser, so defaults are filled in on both sides */
    run_config rec;
    rlhf_error perr = {0};
    if (run_config_parse(&rec, rec_doc, path, &perr)) {
        json_decref(rec_doc);
        fprintf(stderr, "rlhf replay: warning: %s: cannot compare with the recording's config: %s\n", path, perr.msg);
        return 0;
    }
    json_decref(rec_doc);
    json_t *a = json_object(), *b = json_object();
    flatten(rec.resolved, "", a);
    flatten(cfg->resolved, "", b);
    *rewards_changed = !json_equal(json_object_get(rec.resolved, "rewards"), json_object_get(cfg->resolved, "rewards"));
    *n_differ = 0;
    json_t *keys = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(a, k, v) json_object_set(keys, k, json_true());
    json_object_foreach(b, k, v) json_object_set(keys, k, json_true());
    int rc = 0, n_diff = 0;
    json_object_foreach(keys, k, v) {
        json_t *x = json_object_get(a, k), *y = json_object_get(b, k);
        if (ignored(k) || (x && y && json_equal(x, y))) continue;
        const char *why;
        int m = meaning(k, &why);
        char *xs = short_json(x), *ys = short_json(y);
        if (m == REFUSE && !rc) {
            char w[700];
            snprintf(w, sizeof w, "%.500s: %s", cfg->source[0] ? cfg->source : "config", k);
            rc = rlhf_error_set(err, RLHF_EINVAL, w, "%s here, %s in the recording (%s): cannot change at replay: %s",
                                ys, xs, path, why);
        } else if (m != REFUSE) {
            if (!n_diff++) fprintf(stderr, "rlhf replay: this config differs from the recording's (%s):\n", path);
            if (m != UNUSED) (*n_differ)++;
            fprintf(stderr, "rlhf replay:   %s: %s (recorded %s): %s\n", k, ys, xs, why);
            if (m == CLOCK) *use_recorded_clock = 1;
        }
        free(xs);
        free(ys);
    }
    json_decref(keys);
    json_decref(a);
    json_decref(b);
    run_config_free(&rec);
    return rc;
}

json_t *cmd_replay_load_scores(const char *log_path, long *n_lines) {
    char dir[2048], path[2200];
    cmd_replay_dir_of(log_path, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s", dir, UPDATER_SCORES_FILE);
    *n_lines = 0;
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    json_t *all = json_object();
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') break; /* a torn last line */
        json_t *o = json_loads(line, 0, NULL);
        const char *gen = json_string_value(json_object_get(o, "generator"));
        if (gen && json_is_integer(json_object_get(o, "seq"))) {
            char key[600];
            cmd_replay_group_key(key, sizeof key, gen, (uint64_t)json_integer_value(json_object_get(o, "seq")));
            json_object_set_new(o, "_line", json_integer(*n_lines)); /* the live updater's order */
            json_object_set(all, key, o);
            (*n_lines)++;
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    return all;
}

int cmd_replay_recorded_scores(json_t *scores, scored_group *sg, const char *const *names, int n_sources) {
    char key[600];
    cmd_replay_group_key(key, sizeof key, sg->g.generator_id, sg->g.seq);
    json_t *o = json_object_get(scores, key);
    json_t *tot = json_object_get(o, "total"), *rw = json_object_get(o, "rewards");
    uint32_t k = sg->g.k;
    if (!o || json_array_size(tot) != k) return -1;
    sg->n_sources = n_sources;
    sg->src = malloc(sizeof *sg->src * (size_t)n_sources * k);
    sg->total = malloc(sizeof *sg->total * k);
    sg->src_errors = calloc((size_t)n_sources, sizeof *sg->src_errors);
    if (!sg->src || !sg->total || !sg->src_errors) return -1;
    for (uint32_t i = 0; i < k; i++) {
        json_t *v = json_array_get(tot, i);
        sg->total[i] = json_is_number(v) ? (float)json_number_value(v) : NAN;
    }
    for (int s = 0; s < n_sources; s++) {
        json_t *a = json_object_get(rw, names[s]);
        if (json_array_size(a) != k) return -1;
        for (uint32_t i = 0; i < k; i++) {
            json_t *v = json_array_get(a, i);
            sg->src[(size_t)s * k + i] = json_is_number(v) ? (float)json_number_value(v) : NAN;
        }
    }
    json_t *un = json_object_get(o, "unscored");
    if (json_array_size(un) == k) {
        if (!(sg->unscored = calloc(k, 1))) return -1;
        for (uint32_t i = 0; i < k; i++) sg->unscored[i] = json_is_true(json_array_get(un, i));
    }
    sg->skipped = !strcmp(json_string_value(json_object_get(o, "fate")) ? json_string_value(json_object_get(o, "fate")) : "",
                          "skipped");
    return 0;
}

typedef struct ordered {
    long step, line, index;
} ordered;

static int cmp_ordered(const void *a, const void *b) {
    const ordered *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return x->line < y->line ? -1 : x->line > y->line;
}

long *cmd_replay_live_order(json_t *scores, json_t *log_index, long n_records, long *n_consumed) {
    long *order = malloc(sizeof *order * (size_t)(n_records ? n_records : 1));
    ordered *o = malloc(sizeof *o * (size_t)(n_records ? n_records : 1));
    unsigned char *used = calloc((size_t)(n_records ? n_records : 1), 1);
    long n = 0, m = 0;
    *n_consumed = 0;
    if (!order || !o || !used) {
        free(order);
        free(o);
        free(used);
        return NULL;
    }
    const char *key;
    json_t *line;
    json_object_foreach(scores, key, line) {
        json_t *at = json_object_get(log_index, key);
        if (!json_is_integer(at) || n >= n_records) continue;
        o[n].step = (long)json_integer_value(json_object_get(line, "step"));
        o[n].line = (long)json_integer_value(json_object_get(line, "_line"));
        o[n].index = (long)json_integer_value(at);
        used[o[n].index] = 1;
        n++;
    }
    qsort(o, (size_t)n, sizeof *o, cmp_ordered);
    for (long i = 0; i < n; i++) order[m++] = o[i].index;
    for (long i = 0; i < n_records; i++)
        if (!used[i]) order[m++] = i;
    *n_consumed = n;
    free(o);
    free(used);
    return order;
}

long cmd_replay_recorded_hashes(const char *log_path, char (**hashes)[17]) {
    char dir[2048], path[2200];
    cmd_replay_dir_of(log_path, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    *hashes = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long cap = 0, n = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        if (line[len - 1] != '\n') break;
        json_t *o = json_loads(line, 0, NULL);
        long step = (long)json_integer_value(json_object_get(o, "step"));
        const char *h = json_string_value(json_object_get(o, "weights_hash"));
        if (step > 0 && h && strlen(h) == 16) {
            if (step >= cap) {
                long nc = cap ? cap : 256;
                while (nc <= step) nc *= 2;
                char(*nh)[17] = realloc(*hashes, sizeof **hashes * (size_t)nc);
                if (!nh) {
                    json_decref(o);
                    break;
                }
                memset(nh + cap, 0, sizeof *nh * (size_t)(nc - cap));
                *hashes = nh;
                cap = nc;
            }
            memcpy((*hashes)[step], h, 17);
            if (step + 1 > n) n = step + 1;
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    return n;
}
