/* cli/replay_tools.c — looking into a recorded replay log without training on it:
 *
 *   rlhf replay-info LOG [--json]
 *       records, bytes, generators, policy versions, steps, a staleness histogram, a reward summary
 *       per source, and the recording's config and model identity. What the live updater did with each
 *       group (its step, its rewards, trained or dropped) comes from RUN_DIR/scores.jsonl beside the
 *       log; staleness from RUN_DIR/metrics.jsonl (the version each step trained against).
 *   rlhf replay-export LOG --jsonl OUT [--steps A:B] [--min-spread X] [--source NAME] [--logprobs]
 *       one JSON line per completion, streaming (the log is read once, rows written as they come, OUT
 *       written to a temporary file and renamed when complete). The columns are in docs/BROKER.md
 *       ("Looking into a log"); pandas reads OUT with read_json(OUT, lines=True).
 *
 * The advantage column is the RLOO advantage of the recorded totals (each sample's total minus the
 * mean of the others' in its group), which is what the updater trains a group with; null for a group
 * that was not trained (no spread, stale, skipped) or that the live run never consumed. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/broker.h"
#include "cli/replay_int.h"

/* The recorded rewards of a group (scores.jsonl line) or NULL. */
static json_t *recorded(json_t *scores, const wire_rollout_group *g) {
    char key[600];
    cmd_replay_group_key(key, sizeof key, g->generator_id, g->seq);
    return json_object_get(scores, key);
}

/* policy_version each step trained against: version_at[s] for step s (1-based), the "policy_version"
 * of metrics.jsonl's line of step s (the version the updater held while it gathered and trained that
 * step's groups, against which it measured their staleness). NULL when there is none. */
static long *versions_by_step(const char *log_path, long *n_steps) {
    char dir[2048], path[2200];
    cmd_replay_dir_of(log_path, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    *n_steps = 0;
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    long cap = 256, *after = calloc((size_t)cap, sizeof *after);
    char *line = NULL;
    size_t lcap = 0;
    while (after && getline(&line, &lcap, f) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        long step = (long)json_integer_value(json_object_get(o, "step"));
        if (step > 0 && json_is_integer(json_object_get(o, "policy_version"))) {
            while (step + 1 >= cap) {
                long *n = realloc(after, sizeof *after * (size_t)cap * 2);
                if (!n) break;
                memset(n + cap, 0, sizeof *n * (size_t)cap);
                after = n;
                cap *= 2;
            }
            if (step + 1 < cap) {
                after[step] = (long)json_integer_value(json_object_get(o, "policy_version"));
                if (step > *n_steps) *n_steps = step;
            }
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (!after) return NULL;
    return after;
}

typedef struct source_summary {
    char name[128];
    long n, n_null;
    double sum, sumsq, lo, hi;
} source_summary;

static const char info_usage[] =
    "usage: rlhf replay-info LOG [--json]\n"
    "Summarises a replay log: records, sizes, generators, policy versions, steps, staleness histogram,\n"
    "rewards per source (from scores.jsonl beside it), the recording's config and model identity.\n";

int cmd_replay_info(int argc, char **argv) {
    const char *log_path = NULL;
    int as_json = 0, npos = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--json", RLHF_OPT_FLAG, &as_json), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf replay-info", info_usage, opts, &log_path, 1, &npos);
    if (prc >= 0) return prc;
    if (!log_path) {
        fprintf(stderr, "rlhf replay-info: error: missing LOG\n%s", info_usage);
        return 2;
    }
    rlhf_error err = {0};
    replay_reader *rr = NULL;
    if (replay_reader_open(&rr, log_path, &err)) {
        rlhf_error_print("rlhf replay-info", &err);
        return 1;
    }
    long n_lines = 0, n_steps = 0;
    json_t *scores = cmd_replay_load_scores(log_path, &n_lines);
    long *version_at = versions_by_step(log_path, &n_steps);
    long records = 0, samples = 0, tokens = 0, consumed = 0, max_step = 0, stale_hist[17] = {0};
    uint64_t v_lo = UINT64_MAX, v_hi = 0;
    json_t *gens = json_object(), *fates = json_object();
    source_summary src[32];
    int n_src = 0;
    wire_rollout_group g;
    replay_pos pos;
    int r;
    memset(&g, 0, sizeof g);
    while ((r = replay_reader_next(rr, &g, &pos, &err)) == 1) {
        records++;
        samples += g.k;
        tokens += (long)wire_rollout_group_total_tokens(&g);
        if (g.policy_version < v_lo) v_lo = g.policy_version;
        if (g.policy_version > v_hi) v_hi = g.policy_version;
        const char *gid = g.generator_id ? g.generator_id : "";
        json_object_set_new(gens, gid, json_integer(json_integer_value(json_object_get(gens, gid)) + 1));
        json_t *o = recorded(scores, &g);
        if (o) {
            consumed++;
            long step = (long)json_integer_value(json_object_get(o, "step"));
            if (step > max_step) max_step = step;
            const char *fate = json_string_value(json_object_get(o, "fate"));
            if (fate) json_object_set_new(fates, fate, json_integer(json_integer_value(json_object_get(fates, fate)) + 1));
            if (version_at && step >= 1 && step <= n_steps) {
                long lag = version_at[step] - (long)g.policy_version;
                stale_hist[lag < 0 ? 0 : lag > 16 ? 16 : lag]++;
            }
            const char *name;
            json_t *arr;
            json_object_foreach(json_object_get(o, "rewards"), name, arr) {
                int s = 0;
                while (s < n_src && strcmp(src[s].name, name)) s++;
                if (s == n_src && n_src < 32) {
                    memset(&src[n_src], 0, sizeof src[0]);
                    snprintf(src[n_src].name, sizeof src[0].name, "%s", name);
                    src[n_src].lo = INFINITY;
                    src[n_src].hi = -INFINITY;
                    n_src++;
                }
                if (s >= n_src) continue;
                size_t i;
                json_t *v;
                json_array_foreach(arr, i, v) {
                    if (!json_is_number(v)) {
                        src[s].n_null++;
                        continue;
                    }
                    double x = json_number_value(v);
                    src[s].n++;
                    src[s].sum += x;
                    src[s].sumsq += x * x;
                    if (x < src[s].lo) src[s].lo = x;
                    if (x > src[s].hi) src[s].hi = x;
                }
            }
        }
        wire_rollout_group_free(&g);
        memset(&g, 0, sizeof g);
    }
    replay_pos tp;
    uint64_t torn_bytes = 0;
    int torn = replay_reader_torn(rr, &tp, &torn_bytes);
    replay_reader_close(&rr);
    if (r < 0) {
        rlhf_error_print("rlhf replay-info", &err);
        json_decref(scores);
        json_decref(gens);
        json_decref(fates);
        free(version_at);
        return 1;
    }
    /* bytes of the log and its later segments */
    long long bytes = 0;
    struct stat st;
    if (stat(log_path, &st) == 0) bytes += st.st_size;
    for (int seg = 1; seg < 100000; seg++) {
        char p[2200];
        snprintf(p, sizeof p, "%s.%d", log_path, seg);
        if (stat(p, &st) != 0) break;
        bytes += st.st_size;
    }
    char dir[2048], p[2200];
    cmd_replay_dir_of(log_path, dir, sizeof dir);
    snprintf(p, sizeof p, "%s/%s", dir, RUN_MODEL_IDENTITY_FILE);
    json_t *ident = json_load_file(p, 0, NULL);
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *cfg = json_load_file(p, 0, NULL);

    json_t *o = json_object();
    json_object_set_new(o, "log", json_string(log_path));
    json_object_set_new(o, "records", json_integer(records));
    json_object_set_new(o, "samples", json_integer(samples));
    json_object_set_new(o, "completion_tokens", json_integer(tokens));
    json_object_set_new(o, "bytes", json_integer(bytes));
    if (torn) json_object_set_new(o, "torn_tail_bytes", json_integer((json_int_t)torn_bytes));
    json_object_set_new(o, "generators", gens);
    json_object_set_new(o, "policy_versions", records ? json_pack("[I, I]", (json_int_t)v_lo, (json_int_t)v_hi)
                                                      : json_array());
    json_object_set_new(o, "consumed", json_integer(consumed));
    json_object_set_new(o, "steps", json_integer(max_step));
    json_object_set_new(o, "fates", fates);
    if (version_at) {
        json_t *h = json_object();
        for (int l = 0; l <= 16; l++)
            if (stale_hist[l]) {
                char k[16];
                snprintf(k, sizeof k, l == 16 ? "%d+" : "%d", l);
                json_object_set_new(h, k, json_integer(stale_hist[l]));
            }
        json_object_set_new(o, "staleness", h);
    }
    json_t *rw = json_object();
    for (int s = 0; s < n_src; s++) {
        double mean = src[s].n ? src[s].sum / src[s].n : NAN;
        double var = src[s].n ? src[s].sumsq / src[s].n - mean * mean : NAN;
        json_object_set_new(rw, src[s].name,
                            json_pack("{s:I, s:I, s:o, s:o, s:o, s:o}", "n", (json_int_t)src[s].n, "null",
                                      (json_int_t)src[s].n_null, "mean", src[s].n ? json_real(mean) : json_null(),
                                      "std", src[s].n ? json_real(sqrt(var > 0 ? var : 0)) : json_null(), "min",
                                      src[s].n ? json_real(src[s].lo) : json_null(), "max",
                                      src[s].n ? json_real(src[s].hi) : json_null()));
    }
    json_object_set_new(o, "rewards", rw);
    if (ident) json_object_set_new(o, "model_identity", ident);
    if (cfg) {
        json_t *c = json_object();
        json_object_set(c, "name", json_object_get(cfg, "name"));
        json_object_set(c, "mode", json_object_get(cfg, "mode"));
        json_object_set(c, "rl", json_object_get(cfg, "rl"));
        json_object_set(c, "generators", json_object_get(cfg, "generators"));
        json_object_set(c, "rewards", json_object_get(cfg, "rewards"));
        json_object_set_new(o, "config", c);
        json_decref(cfg);
    }
    if (as_json) {
        char *t = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (t) puts(t);
        free(t);
    } else {
        printf("log            %s: %ld records, %ld samples, %ld completion tokens, %.1f MB%s\n", log_path, records,
               samples, tokens, bytes / 1e6, torn ? " (a torn last record is skipped)" : "");
        printf("versions       %llu..%llu from %zu generator(s)\n", records ? (unsigned long long)v_lo : 0ULL,
               (unsigned long long)v_hi, json_object_size(json_object_get(o, "generators")));
        if (scores) {
            printf("consumed       %ld of %ld by the live updater, over %ld steps:", consumed, records, max_step);
            const char *k;
            json_t *v;
            json_object_foreach(json_object_get(o, "fates"), k, v) printf(" %s %lld", k, (long long)json_integer_value(v));
            printf("\n");
        } else {
            printf("consumed       unknown (no %s beside the log)\n", UPDATER_SCORES_FILE);
        }
        if (version_at) {
            printf("staleness      ");
            const char *k;
            json_t *v;
            json_object_foreach(json_object_get(o, "staleness"), k, v) printf(" %s:%lld", k, (long long)json_integer_value(v));
            printf("  (versions behind the step that consumed the group)\n");
        }
        for (int s = 0; s < n_src; s++)
            printf("reward %-8s mean %.4f std %.4f min %.4f max %.4f (%ld scored, %ld failed or skipped)\n", src[s].name,
                   src[s].n ? src[s].sum / src[s].n : NAN,
                   src[s].n ? sqrt(fmax(0, src[s].sumsq / src[s].n - pow(src[s].sum / src[s].n, 2))) : NAN,
                   src[s].lo, src[s].hi, src[s].n, src[s].n_null);
        json_t *id = json_object_get(o, "model_identity");
        if (id) printf("model          %s (weights %s, tokenizer %s)\n", json_string_value(json_object_get(id, "model")),
                       json_string_value(json_object_get(id, "weights")), json_string_value(json_object_get(id, "tokenizer")));
        json_t *c = json_object_get(o, "config");
        if (c) {
            json_t *rl = json_object_get(c, "rl");
            printf("recorded with  %s, %s mode, k %lld, prompts_per_step %lld, max_staleness %lld\n",
                   json_string_value(json_object_get(c, "name")), json_string_value(json_object_get(c, "mode")),
                   (long long)json_integer_value(json_object_get(rl, "k")),
                   (long long)json_integer_value(json_object_get(rl, "prompts_per_step")),
                   (long long)json_integer_value(json_object_get(rl, "max_staleness")));
        }
    }
    json_decref(o);
    json_decref(scores);
    free(version_at);
    return 0;
}

static const char export_usage[] =
    "usage: rlhf replay-export LOG --jsonl OUT [--steps A:B] [--min-spread X] [--source NAME] [--logprobs]\n"
    "One JSON line per completion: step, generator, seq, prompt_id, prompt, sample, completion, tokens,\n"
    "n_tokens, finish, logprob_sum (or logprobs with --logprobs), rewards {source: value}, total,\n"
    "advantage, policy_version, staleness, fate (columns: docs/BROKER.md). Filters:\n"
    "  --steps A:B       groups the live updater consumed at steps A..B (either side may be empty)\n"
    "  --min-spread X    groups whose recorded totals span at least X (max - min)\n"
    "  --source NAME     groups that reward source NAME scored (a value, not failed or skipped)\n";

static const char *finish_name(uint8_t f) {
    switch (f) {
    case WIRE_FINISH_STOP: return "stop"; /* EOS or a stop string */
    case WIRE_FINISH_LENGTH: return "length";
    case WIRE_FINISH_ERROR: return "error";
    default: return "other";
    }
}

int cmd_replay_export(int argc, char **argv) {
    const char *log_path = NULL, *out_path = NULL, *steps = NULL, *source = NULL;
    double min_spread = -1;
    int with_logprobs = 0, npos = 0;
    const rlhf_opt opts[] = {RLHF_OPT("--jsonl", RLHF_OPT_STR, &out_path), RLHF_OPT("--steps", RLHF_OPT_STR, &steps),
                             RLHF_OPT_RANGE("--min-spread", RLHF_OPT_DOUBLE, &min_spread, 0, 1e300),
                             RLHF_OPT("--source", RLHF_OPT_STR, &source),
                             RLHF_OPT("--logprobs", RLHF_OPT_FLAG, &with_logprobs), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf replay-export", export_usage, opts, &log_path, 1, &npos);
    if (prc >= 0) return prc;
    long step_lo = 0, step_hi = -1; /* -1: no upper bound */
    if (steps) {
        char *colon = strchr(steps, ':'), *end = NULL;
        int ok = colon != NULL;
        if (ok && colon > steps) {
            step_lo = strtol(steps, &end, 10);
            ok = end == colon && step_lo >= 0;
        }
        if (ok && colon[1]) {
            step_hi = strtol(colon + 1, &end, 10);
            ok = !*end && step_hi >= step_lo;
        }
        if (!ok) {
            fprintf(stderr, "rlhf replay-export: error: --steps: expected A:B (A <= B, either may be empty), got '%s'\n",
                    steps);
            return 2;
        }
    }
    if (!log_path || !out_path) {
        fprintf(stderr, "rlhf replay-export: error: %s\n%s", !log_path ? "missing LOG" : "missing --jsonl OUT",
                export_usage);
        return 2;
    }
    rlhf_error err = {0};
    long n_lines = 0, n_steps = 0;
    json_t *scores = cmd_replay_load_scores(log_path, &n_lines);
    if ((steps || min_spread >= 0 || source) && !scores) {
        fprintf(stderr, "rlhf replay-export: error: %s: --steps, --min-spread and --source need the rewards the live "
                        "run recorded (%s beside the log), and there are none\n", log_path, UPDATER_SCORES_FILE);
        return 1;
    }
    replay_reader *rr = NULL;
    if (replay_reader_open(&rr, log_path, &err)) {
        rlhf_error_print("rlhf replay-export", &err);
        json_decref(scores);
        return 1;
    }
    long *version_at = versions_by_step(log_path, &n_steps);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "rlhf replay-export: error: %s: cannot write: %s\n", tmp, strerror(errno));
        replay_reader_close(&rr);
        json_decref(scores);
        free(version_at);
        return 1;
    }
    long rows = 0, groups = 0;
    int r;
    wire_rollout_group g;
    replay_pos pos;
    memset(&g, 0, sizeof g);
    while ((r = replay_reader_next(rr, &g, &pos, &err)) == 1) {
        json_t *rec = recorded(scores, &g);
        long step = rec ? (long)json_integer_value(json_object_get(rec, "step")) : -1;
        json_t *tot = json_object_get(rec, "total"), *rw = json_object_get(rec, "rewards");
        int keep = 1;
        if (steps) keep = rec && step >= step_lo && (step_hi < 0 || step <= step_hi);
        if (keep && min_spread >= 0) {
            double lo = INFINITY, hi = -INFINITY;
            size_t i;
            json_t *v;
            json_array_foreach(tot, i, v) if (json_is_number(v)) {
                lo = fmin(lo, json_number_value(v));
                hi = fmax(hi, json_number_value(v));
            }
            keep = hi - lo >= min_spread;
        }
        if (keep && source) {
            json_t *a = json_object_get(rw, source);
            int any = 0;
            size_t i;
            json_t *v;
            json_array_foreach(a, i, v) any |= json_is_number(v);
            keep = any;
        }
        const char *fate = json_string_value(json_object_get(rec, "fate"));
        int trained = fate && !strcmp(fate, "trained");
        json_t *unscored = json_object_get(rec, "unscored"); /* samples no source scored: in no baseline */
        double sum = 0;
        int n_ok = 0;
        for (uint32_t i = 0; i < g.k && trained; i++) {
            json_t *v = json_array_get(tot, i);
            if (json_is_number(v) && !json_is_true(json_array_get(unscored, i))) {
                sum += json_number_value(v);
                n_ok++;
            }
        }
        size_t off = 0;
        for (uint32_t i = 0; i < g.k && keep; i++) {
            json_t *row = json_object();
            json_object_set_new(row, "step", rec ? json_integer(step) : json_null());
            json_object_set_new(row, "generator", json_string(g.generator_id ? g.generator_id : ""));
            json_object_set_new(row, "seq", json_integer((json_int_t)g.seq));
            json_object_set_new(row, "prompt_id", json_string(g.prompt_id ? g.prompt_id : ""));
            json_object_set_new(row, "prompt", json_string(g.prompt_text ? g.prompt_text : ""));
            json_object_set_new(row, "sample", json_integer(i));
            json_object_set_new(row, "completion", g.texts && g.texts[i] ? json_string(g.texts[i]) : json_null());
            json_t *toks = json_array(), *lps = with_logprobs ? json_array() : NULL;
            double lp_sum = 0;
            for (uint32_t t = 0; t < g.n_tokens[i]; t++) {
                json_array_append_new(toks, json_integer(g.tokens[off + t]));
                lp_sum += g.logprobs[off + t];
                if (lps) json_array_append_new(lps, json_real(g.logprobs[off + t]));
            }
            json_object_set_new(row, "tokens", toks);
            json_object_set_new(row, "n_tokens", json_integer(g.n_tokens[i]));
            json_object_set_new(row, "finish", json_string(finish_name(g.finish[i])));
            json_object_set_new(row, "logprob_sum", json_real(lp_sum));
            if (lps) json_object_set_new(row, "logprobs", lps);
            json_t *rews = json_object();
            const char *name;
            json_t *arr;
            json_object_foreach(rw, name, arr) json_object_set(rews, name, json_array_get(arr, i));
            json_object_set_new(row, "rewards", rews);
            json_t *ti = json_array_get(tot, i);
            int scored = rec && !json_is_true(json_array_get(unscored, i));
            json_object_set_new(row, "scored", json_boolean(scored));
            json_object_set_new(row, "total", json_is_number(ti) && scored ? json_real(json_number_value(ti)) : json_null());
            /* RLOO: this sample's total minus the mean of the others' (samples with a total) */
            json_object_set_new(row, "advantage", trained && scored && json_is_number(ti) && n_ok >= 2
                                                      ? json_real(json_number_value(ti) -
                                                                  (sum - json_number_value(ti)) / (n_ok - 1))
                                                      : json_null());
            json_object_set_new(row, "policy_version", json_integer((json_int_t)g.policy_version));
            json_object_set_new(row, "staleness", version_at && step >= 1 && step <= n_steps
                                                      ? json_integer(version_at[step] - (long)g.policy_version)
                                                      : json_null());
            json_object_set_new(row, "fate", fate ? json_string(fate) : json_string("not_consumed"));
            char *line = json_dumps(row, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
            if (line) fprintf(f, "%s\n", line);
            free(line);
            json_decref(row);
            off += g.n_tokens[i];
            rows++;
        }
        groups += keep;
        wire_rollout_group_free(&g);
        memset(&g, 0, sizeof g);
    }
    replay_reader_close(&rr);
    json_decref(scores);
    free(version_at);
    int bad = r < 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) bad = 1;
    if (fclose(f) != 0) bad = 1;
    if (!bad && rename(tmp, out_path) != 0) bad = 1;
    if (bad) {
        if (r < 0) rlhf_error_print("rlhf replay-export", &err);
        else fprintf(stderr, "rlhf replay-export: error: %s: write failed: %s\n", out_path, strerror(errno));
        unlink(tmp);
        return 1;
    }
    fprintf(stderr, "rlhf replay-export: %ld rows (%ld groups) to %s\n", rows, groups, out_path);
    return 0;
}

static const char merge_usage[] =
    "usage: rlhf replay-merge LOG1 LOG2 [LOG3 ...] -o OUT\n"
    "Writes one replay log holding every record of LOG1, then of LOG2, ... (each with its later\n"
    "segments). Policy versions are rebased so they keep increasing across the inputs: the records of\n"
    "log i get the highest version of logs 1..i-1 plus one added; generator ids of log i > 1 get the\n"
    "suffix \"@i\" so (generator, seq) stays unique. OUT is written to OUT.tmp and renamed when complete;\n"
    "an existing OUT is refused. A merged log has no scores.jsonl: `rlhf replay` of it recomputes the\n"
    "rewards, in log order, measuring staleness on the recording's clock.\n";

int cmd_replay_merge(int argc, char **argv) {
    const char *out_path = NULL;
    const char *logs[64];
    int n_logs = 0;
    /* positional LOGs and -o OUT, in any order */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(merge_usage, stdout);
            return 0;
        }
        if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "rlhf replay-merge: error: %s needs a value\n%s", argv[i], merge_usage);
                return 2;
            }
            out_path = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "rlhf replay-merge: error: unknown option %s\n%s", argv[i], merge_usage);
            return 2;
        } else if (n_logs < 64) {
            logs[n_logs++] = argv[i];
        } else {
            fprintf(stderr, "rlhf replay-merge: error: at most 64 logs\n");
            return 2;
        }
    }
    if (n_logs < 2 || !out_path) {
        fprintf(stderr, "rlhf replay-merge: error: %s\n%s", !out_path ? "missing -o OUT" : "give at least two logs",
                merge_usage);
        return 2;
    }
    if (access(out_path, F_OK) == 0) {
        fprintf(stderr, "rlhf replay-merge: error: %s: exists; choose a new name\n", out_path);
        return 1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    unlink(tmp);
    rlhf_error err = {0};
    replay_writer *w = NULL;
    replay_writer_opts wo = {.fsync_policy = BROKER_FSYNC_NEVER, .fsync_every = 0, .rotate_bytes = 0};
    int rc = replay_writer_open(&w, tmp, &wo, NULL, NULL, &err);
    uint64_t offset = 0, next_offset = 0;
    long total = 0;
    for (int l = 0; l < n_logs && !rc; l++) {
        replay_reader *rr = NULL;
        if ((rc = replay_reader_open(&rr, logs[l], &err))) break;
        wire_rollout_group g;
        replay_pos pos;
        int r;
        long n = 0;
        memset(&g, 0, sizeof g);
        while ((r = replay_reader_next(rr, &g, &pos, &err)) == 1) {
            g.policy_version += offset;
            if (g.policy_version + 1 > next_offset) next_offset = g.policy_version + 1;
            /* a completion sampled across versions: its tokens' versions move with the group's */
            uint64_t tot = wire_rollout_group_total_tokens(&g);
            for (uint64_t t = 0; g.token_versions && t < tot; t++) {
                g.token_versions[t] += offset;
                if (g.token_versions[t] + 1 > next_offset) next_offset = g.token_versions[t] + 1;
            }
            if (l > 0) {
                char id[600];
                snprintf(id, sizeof id, "%s@%d", g.generator_id ? g.generator_id : "", l + 1);
                free(g.generator_id);
                g.generator_id = strdup(id);
            }
            rc = g.generator_id ? replay_writer_append_group(w, &g, NULL, &err) : RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
            wire_rollout_group_free(&g);
            memset(&g, 0, sizeof g);
            if (rc) break;
            n++;
        }
        if (r < 0 && !rc) rc = r;
        replay_reader_close(&rr);
        if (!rc)
            fprintf(stderr, "rlhf replay-merge: %s: %ld records, versions shifted by %llu\n", logs[l], n,
                    (unsigned long long)offset);
        total += n;
        offset = next_offset;
    }
    if (w) {
        int crc = replay_writer_close(&w, &err); /* fsyncs */
        if (!rc) rc = crc;
    }
    if (!rc && rename(tmp, out_path) != 0) rc = rlhf_error_set(&err, RLHF_ESYS, out_path, "rename: %s", strerror(errno));
    if (rc) {
        rlhf_error_print("rlhf replay-merge", &err);
        unlink(tmp);
        return 1;
    }
    fprintf(stderr, "rlhf replay-merge: %ld records to %s\n", total, out_path);
    return 0;
}
