/* updater/session.c — what the online updater and offline replay share: collecting scored groups
 * into steps, the staleness and zero-spread filters, one training step with its metrics line, and
 * checkpoints.
 *
 * A step is rl.prompts_per_step scored groups that are fresh enough (lag = newest published
 * version - the group's policy_version <= rl.max_staleness; older ones are dropped and counted in
 * groups/dropped_stale). Groups whose k rewards are all equal carry no RLOO signal: counted in
 * groups/dropped_zero_var, not trained on (they still count toward the step's prompts, so sync and
 * async runs spend the same number of samples per step). A sample no reward source scored (every
 * source SKIP) is left out of its group's baseline and of the loss; a group with fewer than 2 scored
 * samples is dropped and counted in groups/dropped_unscored. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "updater/updater_int.h"

/* Reward errors of one source: counts per reason kind (for metrics), how many of each kind were
 * logged, and the ERROR flags of its last error_window scored items (for max_error_rate). */
#define SESSION_MAX_KINDS 16
#define SESSION_LOG_PER_KIND 5
typedef struct session_reason {
    char kind[48];
    long step, total, logged;
} session_reason;
struct session_errors {
    long step, total;
    session_reason kinds[SESSION_MAX_KINDS];
    int n_kinds;
    double max_rate;
    int64_t window;
    unsigned char *ring; /* (window) 1 = the item failed */
    int64_t ring_pos, ring_n, ring_err;
    char sample[RLHF_REWARD_REASON_MAX + 96]; /* the latest failure, "prompt ID: reason" */
    long persisted; /* lines of this source in RUN_DIR/reward_errors.jsonl (at most SESSION_PERSIST_ERRORS) */
};
/* The first failures of each source are kept in RUN_DIR/reward_errors.jsonl (over the whole run,
 * restarts included), so the reasons outlive the log's rotation and the metrics' counts. */
#define SESSION_PERSIST_ERRORS 20

/* One line of reward_errors.jsonl; a failure to write is reported and training goes on. */
static void persist_error(updater_session *u, int s, const scored_group *sg, uint32_t i, const char *reason) {
    struct session_errors *e = &u->errs[s];
    if (e->persisted >= SESSION_PERSIST_ERRORS || !u->errors_path[0]) return;
    e->persisted++;
    json_t *rec = json_object();
    json_object_set_new(rec, "step", json_integer(u->ps.step));
    json_object_set_new(rec, "source", json_string(u->src_names[s]));
    json_object_set_new(rec, "prompt_id", json_string(sg->g.prompt_id ? sg->g.prompt_id : "?"));
    json_object_set_new(rec, "sample", json_integer(i));
    json_object_set_new(rec, "policy_version", json_integer((json_int_t)sg->g.policy_version));
    char *r = rlhf_utf8_sanitize(reason, strlen(reason));
    json_object_set_new(rec, "reason", json_string(r ? r : ""));
    free(r);
    if (e->persisted == SESSION_PERSIST_ERRORS) json_object_set_new(rec, "last", json_true());
    rlhf_error err = {0};
    if (updater_metrics_append(u->errors_path, rec, &err)) rlhf_error_print("updater: reward_errors.jsonl", &err);
    json_decref(rec);
}

/* Counts the lines per source an earlier process of this run wrote, so a restart adds no more. */
static void count_persisted(updater_session *u) {
    FILE *f = fopen(u->errors_path, "r");
    if (!f) return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *src = json_string_value(json_object_get(j, "source"));
        for (int s = 0; src && s < u->n_sources; s++)
            if (!strcmp(src, u->src_names[s])) u->errs[s].persisted++;
        json_decref(j);
    }
    fclose(f);
}

static session_reason *reason_slot(struct session_errors *e, const char *kind) {
    for (int i = 0; i < e->n_kinds; i++)
        if (!strcmp(e->kinds[i].kind, kind)) return &e->kinds[i];
    /* kinds are few in practice; past the table every new one is counted as "other" */
    if (e->n_kinds == SESSION_MAX_KINDS - 1) kind = "other";
    for (int i = 0; i < e->n_kinds; i++)
        if (!strcmp(e->kinds[i].kind, kind)) return &e->kinds[i];
    session_reason *r = &e->kinds[e->n_kinds++];
    snprintf(r->kind, sizeof r->kind, "%s", kind);
    return r;
}

static void count_errors(updater_session *u, const scored_group *sg) {
    if (!u->errs) return;
    int S = sg->n_sources < u->n_sources ? sg->n_sources : u->n_sources;
    for (int s = 0; s < S && sg->src && !u->failed; s++) {
        struct session_errors *e = &u->errs[s];
        for (uint32_t i = 0; i < sg->g.k; i++) {
            const rlhf_reward_status *st = sg->src_status ? &sg->src_status[(size_t)s * sg->g.k + i] : NULL;
            int failed = st && st->code == RLHF_REWARD_ERROR;
            if (!failed && !(sg->src && !isnan(sg->src[(size_t)s * sg->g.k + i]))) continue; /* SKIP */
            if (e->ring_n == e->window) e->ring_err -= e->ring[e->ring_pos];
            else e->ring_n++;
            e->ring[e->ring_pos] = (unsigned char)failed;
            e->ring_pos = (e->ring_pos + 1) % e->window;
            e->ring_err += failed;
            if (!failed) continue;
            const char *pid = sg->g.prompt_id ? sg->g.prompt_id : "?";
            char kind[48];
            reward_reason_kind(st->reason, kind, sizeof kind);
            session_reason *r = reason_slot(e, kind);
            e->step++;
            e->total++;
            r->step++;
            r->total++;
            snprintf(e->sample, sizeof e->sample, "prompt %s: %s", pid, st->reason);
            persist_error(u, s, sg, i, st->reason);
            if (r->logged < SESSION_LOG_PER_KIND) {
                r->logged++;
                fprintf(stderr, "updater: reward source '%s' failed on prompt %s (sample %u): %s%s\n", u->src_names[s],
                        pid, i, st->reason,
                        r->logged == SESSION_LOG_PER_KIND ? " (further errors of this kind are only counted: metrics "
                                                            "reward/<source>/errors/<kind>)"
                                                          : "");
            }
            /* errors alone already past the limit over the window: stop, even before the window fills */
            if ((double)e->ring_err > e->max_rate * (double)e->window) {
                u->failed = 1;
                rlhf_error_set(&u->failed_err, RLHF_EREWARD, u->src_names[s],
                               "reward source '%s' failed on %lld of its last %lld scored items (%.0f%%), more than "
                               "max_error_rate %g over error_window %lld; e.g. %s",
                               u->src_names[s], (long long)e->ring_err, (long long)e->ring_n,
                               100.0 * (double)e->ring_err / (double)e->ring_n, e->max_rate, (long long)e->window,
                               e->sample);
                fprintf(stderr, "updater: %s\n", u->failed_err.msg);
                break;
            }
        }
    }
}

/* The step's error metrics: reward/<source>/errors (this step), .../errors_total, one
 * .../errors/<kind> per kind seen so far, reward_errors/<source> (the older name), reward/errors. */
static void error_metrics(updater_session *u, json_t *m) {
    long all = 0;
    for (int s = 0; s < u->n_sources && u->errs; s++) {
        struct session_errors *e = &u->errs[s];
        char key[256];
        snprintf(key, sizeof key, "reward/%s/errors", u->src_names[s]);
        json_object_set_new(m, key, json_integer(e->step));
        snprintf(key, sizeof key, "reward/%s/errors_total", u->src_names[s]);
        json_object_set_new(m, key, json_integer(e->total));
        snprintf(key, sizeof key, "reward_errors/%s", u->src_names[s]);
        json_object_set_new(m, key, json_integer(e->step));
        for (int k = 0; k < e->n_kinds; k++) {
            snprintf(key, sizeof key, "reward/%s/errors/%s", u->src_names[s], e->kinds[k].kind);
            json_object_set_new(m, key, json_integer(e->kinds[k].step));
            e->kinds[k].step = 0;
        }
        all += e->step;
        e->step = 0;
        /* sources in a child process (process plugins, isolated .so): memory, CPU, restarts */
        double rss, cpu;
        int64_t restarts;
        if (updater_scorer_source_resources(u->sc, s, &rss, &cpu, &restarts) == 0) {
            snprintf(key, sizeof key, "reward/%s/rss_mb", u->src_names[s]);
            json_object_set_new(m, key, json_real(rss));
            snprintf(key, sizeof key, "reward/%s/cpu_s", u->src_names[s]);
            json_object_set_new(m, key, json_real(cpu));
            snprintf(key, sizeof key, "reward/%s/restarts", u->src_names[s]);
            json_object_set_new(m, key, json_integer(restarts));
        }
    }
    json_object_set_new(m, "reward/errors", json_integer(all));
}

int updater_session_init(updater_session *u, run_config *cfg, int with_threads, rlhf_error *err) {
    memset(u, 0, sizeof *u);
    u->cfg = cfg;
    int rc = updater_policy_init(&u->ps, cfg, err);
    if (rc) return rc;
    char where[1200];
    snprintf(where, sizeof where, "%s/config.json: rewards", cfg->run_dir);
    if ((rc = updater_scorer_create(&u->sc, cfg->rewards, where, with_threads ? cfg->reward_threads : 1, u->ps.tok,
                                    err))) {
        updater_policy_fini(&u->ps);
        return rc;
    }
    updater_scorer_set_vocab(u->sc, u->ps.m->cfg.vocab_size);
    u->n_sources = updater_scorer_n_sources(u->sc);
    for (int s = 0; s < u->n_sources && s < SESSION_MAX_SOURCES; s++) u->src_names[s] = updater_scorer_source_name(u->sc, s);
    u->errs = calloc((size_t)u->n_sources + 1, sizeof *u->errs);
    for (int s = 0; u->errs && s < u->n_sources; s++) {
        u->errs[s].max_rate = updater_scorer_max_error_rate(u->sc, s, &u->errs[s].window);
        if (u->errs[s].window < 1) u->errs[s].window = 1;
        if (!(u->errs[s].ring = calloc((size_t)u->errs[s].window, 1))) {
            updater_session_fini(u);
            return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        }
    }
    if (!u->errs) {
        updater_session_fini(u);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    snprintf(u->metrics_path, sizeof u->metrics_path, "%s/metrics.jsonl", cfg->run_dir);
    snprintf(u->errors_path, sizeof u->errors_path, "%s/reward_errors.jsonl", cfg->run_dir);
    count_persisted(u);
    u->window_start = rlhf_now();
    u->consumed = json_object();
    return 0;
}

void updater_session_mark_consumed(updater_session *u, const scored_group *sg) {
    const char *gid = sg->g.generator_id ? sg->g.generator_id : "";
    json_t *cur = json_object_get(u->consumed, gid);
    if (!cur || (uint64_t)json_integer_value(cur) < sg->g.seq)
        json_object_set_new(u->consumed, gid, json_integer((json_int_t)sg->g.seq));
    if (u->consumed_log && !u->consumed_log_err.code) {
        /* one write of the whole line; a failure part-way (disk full) is cut back off, so the file never
         * holds a torn line that the next append would run into, and the step stops with the cause */
        char line[512];
        int n = snprintf(line, sizeof line, "%s %llu %ld\n", gid, (unsigned long long)sg->g.seq, u->ps.step);
        if (n > 0 && n < (int)sizeof line) {
            int fd = fileno(u->consumed_log);
            off_t before = lseek(fd, 0, SEEK_END);
            ssize_t w = write(fd, line, (size_t)n);
            if (w != n) {
                int e = w < 0 ? errno : ENOSPC;
                /* take the partial line back; if even that fails, the step still stops with the cause */
                int cut = before >= 0 ? ftruncate(fd, before) : -1;
                (void)cut;
                char where[4200];
                snprintf(where, sizeof where, "%s/consumed.log", u->cfg->run_dir);
                rlhf_error_set(&u->consumed_log_err, RLHF_EIO, where, "append failed: %s", strerror(e));
            }
        }
    }
    if (u->scores_log) {
        const char *fate = sg->fate ? sg->fate : "trained";
        int in_step = !strcmp(fate, "trained") || !strcmp(fate, "zero_var") || !strcmp(fate, "unscored");
        json_t *o = json_object();
        json_object_set_new(o, "generator", json_string(gid));
        json_object_set_new(o, "seq", json_integer((json_int_t)sg->g.seq));
        json_object_set_new(o, "step", json_integer(u->ps.step + (in_step ? 0 : 1)));
        json_object_set_new(o, "policy_version", json_integer((json_int_t)sg->g.policy_version));
        json_object_set_new(o, "fate", json_string(fate));
        json_t *tot = json_array(), *rw = json_object();
        for (uint32_t i = 0; i < sg->g.k; i++)
            json_array_append_new(tot, sg->total && isfinite(sg->total[i]) ? json_real(sg->total[i]) : json_null());
        for (int s = 0; s < sg->n_sources && s < u->n_sources && sg->src; s++) {
            json_t *a = json_array();
            for (uint32_t i = 0; i < sg->g.k; i++) {
                float v = sg->src[(size_t)s * sg->g.k + i];
                json_array_append_new(a, isfinite(v) ? json_real(v) : json_null());
            }
            json_object_set_new(rw, u->src_names[s], a);
        }
        json_object_set_new(o, "total", tot);
        json_object_set_new(o, "rewards", rw);
        if (sg->unscored) { /* samples no source scored: out of the baseline and the loss */
            json_t *un = json_array();
            for (uint32_t i = 0; i < sg->g.k; i++) json_array_append_new(un, json_boolean(sg->unscored[i]));
            json_object_set_new(o, "unscored", un);
        }
        char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
        if (line) fprintf(u->scores_log, "%s\n", line);
        free(line);
        json_decref(o);
    }
}

void updater_session_fini(updater_session *u) {
    for (int i = 0; i < u->n_window; i++) updater_scored_group_free(u->window[i]);
    free(u->window);
    u->window = NULL;
    u->n_window = 0;
    for (int s = 0; u->errs && s < u->n_sources; s++) free(u->errs[s].ring);
    free(u->errs);
    u->errs = NULL;
    updater_scorer_destroy(&u->sc);
    updater_policy_fini(&u->ps);
    json_decref(u->consumed);
    u->consumed = NULL;
}

int updater_session_offer(updater_session *u, scored_group *sg) {
    u->ps.log_records++;
    u->ps.groups_total++;
    count_errors(u, sg);
    if (sg->bad_tokens) {
        /* data never stops the run: counted, logged the first times then at powers of two */
        long n = ++u->bad_tokens_total;
        if (n <= 5 || (n & (n - 1)) == 0) {
            rlhf_error e = {0};
            updater_group_check_tokens(&sg->g, u->ps.m->cfg.vocab_size, &e);
            fprintf(stderr, "updater: skipped a group (%ld so far): %s: %s\n", n, e.where, e.msg);
        }
    }
    if (sg->skipped) {
        u->ps.groups_skipped++;
        u->w_skipped++;
        sg->fate = "skipped";
        updater_session_mark_consumed(u, sg);
        updater_scored_group_free(sg);
        return u->n_window >= u->cfg->prompts_per_step;
    }
    long lag = group_lag(&u->ps, sg);
    if (lag > u->cfg->max_staleness) {
        u->ps.groups_dropped_stale++;
        u->w_stale++;
        sg->fate = "stale";
        updater_session_mark_consumed(u, sg);
        updater_scored_group_free(sg);
        return u->n_window >= u->cfg->prompts_per_step;
    }
    if (u->n_window == u->cap_window) {
        u->cap_window = u->cap_window ? 2 * u->cap_window : 64;
        u->window = realloc(u->window, sizeof *u->window * (size_t)u->cap_window);
    }
    u->window[u->n_window++] = sg;
    return u->n_window >= u->cfg->prompts_per_step;
}

void updater_metrics_rewards(json_t *m, scored_group **groups, int n, int n_sources, const char *const *src_names) {
    double sum = 0, sq = 0, pass = 0;
    long cnt = 0, items = 0;
    for (int g = 0; g < n; g++) {
        scored_group *s = groups[g];
        items += s->g.k;
        for (uint32_t i = 0; i < s->g.k; i++) {
            /* a sample no source scored has no reward: not a 0 in the mean */
            if (s->unscored && s->unscored[i]) continue;
            double r = s->total[i];
            sum += r;
            sq += r * r;
            cnt++;
            /* pass: the first source (the task's check) gave its full score */
            float v = s->src[i];
            if (!isnan(v) && v >= 1.0f - 1e-6f) pass++;
        }
    }
    double mean = cnt ? sum / cnt : 0;
    json_object_set_new(m, "reward/mean", json_real(mean));
    json_object_set_new(m, "reward/std", json_real(cnt ? sqrt(fmax(0, sq / cnt - mean * mean)) : 0));
    for (int s = 0; s < n_sources; s++) {
        double ss = 0, sq2 = 0, ms = 0;
        long c = 0, skipped = 0, clipped = 0;
        for (int g = 0; g < n; g++) {
            scored_group *x = groups[g];
            if (x->src_skipped && s < x->n_sources) skipped += x->src_skipped[s];
            if (x->src_clipped && s < x->n_sources) clipped += x->src_clipped[s];
            if (x->src_ms && s < x->n_sources) ms += x->src_ms[s];
            for (uint32_t i = 0; i < x->g.k; i++) {
                float v = x->src[(size_t)s * x->g.k + i];
                if (!isnan(v)) {
                    ss += v;
                    sq2 += (double)v * v;
                    c++;
                }
            }
        }
        char key[256];
        snprintf(key, sizeof key, "reward/%s/mean", src_names[s]);
        /* no OK item: there is no mean (a 0 would read as a scored 0) */
        json_object_set_new(m, key, c ? json_real(ss / c) : json_null());
        snprintf(key, sizeof key, "reward/%s/std", src_names[s]);
        json_object_set_new(m, key, c ? json_real(sqrt(fmax(0, sq2 / c - (ss / c) * (ss / c)))) : json_null());
        snprintf(key, sizeof key, "reward/%s/skipped", src_names[s]);
        json_object_set_new(m, key, json_integer(skipped));
        snprintf(key, sizeof key, "reward/%s/clipped", src_names[s]);
        json_object_set_new(m, key, json_integer(clipped));
        snprintf(key, sizeof key, "reward/%s/ms_per_item", src_names[s]);
        json_object_set_new(m, key, json_real(items ? ms / (double)items : 0));
    }
    /* what v2 plugins reported: the mean over the step's groups of their batch's value; the host's
     * own names (mean, std, errors, ...) are not overwritten */
    for (int g = 0; g < n; g++)
        for (size_t k = 0; k < groups[g]->n_metrics; k++) {
            const reward_source_metric *pm = &groups[g]->metrics[k];
            if (pm->source >= (size_t)n_sources) continue;
            char key[256];
            snprintf(key, sizeof key, "reward/%s/%s", src_names[pm->source], pm->name);
            if (json_object_get(m, key)) continue;
            double vsum = 0;
            int vc = 0;
            for (int h = g; h < n; h++)
                for (size_t q = 0; q < groups[h]->n_metrics; q++)
                    if (groups[h]->metrics[q].source == pm->source && !strcmp(groups[h]->metrics[q].name, pm->name)) {
                        vsum += groups[h]->metrics[q].value;
                        vc++;
                    }
            json_object_set_new(m, key, json_real(vsum / vc));
        }
    json_object_set_new(m, "pass_rate", json_real(cnt ? pass / cnt : 0));
}

/* log.samples_every: one group of the step (its first) with each completion's text, total reward and
 * per-source rewards (null where the source failed), appended to samples.jsonl beside metrics.jsonl. A
 * failure to write it is reported to the log and does not stop training. */
static void write_sample(updater_session *u, const scored_group *s, long step) {
    char path[2100];
    snprintf(path, sizeof path, "%s", u->metrics_path);
    char *slash = strrchr(path, '/');
    snprintf(slash ? slash + 1 : path, sizeof path - (size_t)(slash ? slash + 1 - path : 0), "samples.jsonl");
    json_t *rec = json_object();
    json_object_set_new(rec, "step", json_integer(step));
    json_object_set_new(rec, "policy_version", json_integer((json_int_t)s->g.policy_version));
    json_object_set_new(rec, "prompt_id", json_string(s->g.prompt_id ? s->g.prompt_id : ""));
    char *prompt = s->g.prompt_text ? rlhf_utf8_sanitize(s->g.prompt_text, strlen(s->g.prompt_text)) : NULL;
    json_object_set_new(rec, "prompt", json_string(prompt ? prompt : ""));
    free(prompt);
    json_t *arr = json_array();
    size_t off = 0;
    for (uint32_t i = 0; i < s->g.k; i++) {
        char *text = NULL, *bytes = NULL;
        size_t m = 0;
        if (s->g.texts && s->g.texts[i]) text = rlhf_utf8_sanitize(s->g.texts[i], strlen(s->g.texts[i]));
        else if (!tokenizer_decode(u->ps.tok, s->g.tokens + off, (int)s->g.n_tokens[i], &bytes, &m, NULL))
            text = rlhf_utf8_sanitize(bytes, m);
        free(bytes);
        off += s->g.n_tokens[i];
        json_t *one = json_object();
        json_object_set_new(one, "text", text ? json_string(text) : json_null());
        free(text);
        json_object_set_new(one, "reward", json_real(s->total[i]));
        json_t *per = json_object();
        for (int j = 0; j < u->n_sources && j < s->n_sources; j++) {
            float v = s->src[(size_t)j * s->g.k + i];
            json_object_set_new(per, u->src_names[j], isnan(v) ? json_null() : json_real(v));
        }
        json_object_set_new(one, "rewards", per);
        json_array_append_new(arr, one);
    }
    json_object_set_new(rec, "samples", arr);
    rlhf_error err = {0};
    if (updater_metrics_append(path, rec, &err)) rlhf_error_print("updater: samples.jsonl", &err);
    json_decref(rec);
}

int updater_session_step(updater_session *u, json_t **metrics_out, rlhf_error *err) {
    if (u->consumed_log_err.code) /* the audit trail could not be written: stop before a checkpoint passes it */
        return rlhf_error_set(err, u->consumed_log_err.code, u->consumed_log_err.where, "%s", u->consumed_log_err.msg);
    const run_config *cfg = u->cfg;
    policy_state *ps = &u->ps;
    int P = cfg->prompts_per_step < u->n_window ? cfg->prompts_per_step : u->n_window;
    scored_group **groups = u->window;
    /* split the step's groups: with reward spread (trained) and without (dropped_zero_var) */
    scored_group **kept = calloc((size_t)P + 1, sizeof *kept);
    int n_kept = 0, n_zero = 0, n_unscored = 0;
    long lag_min = 0, lag_max = 0, tok_lag_max = 0, n_lag_tok = 0, n_completions = 0, n_spanning = 0;
    double lag_sum = 0, gen_tok = 0, gen_s = 0, score_s = 0, tok_lag_sum = 0;
    double spec_drafted = 0, spec_accepted = 0, spec_verifies = 0, spec_tokens = 0; /* generators.speculative */
    for (int g = 0; g < P; g++) {
        scored_group *s = groups[g];
        /* the spread over the scored samples only: an unscored one has no reward to compare */
        float lo = 0, hi = 0;
        int n_scored = 0;
        for (uint32_t i = 0; i < s->g.k; i++) {
            if (s->unscored && s->unscored[i]) continue;
            if (!n_scored || s->total[i] < lo) lo = s->total[i];
            if (!n_scored || s->total[i] > hi) hi = s->total[i];
            n_scored++;
        }
        long lag = group_lag(ps, s);
        if (g == 0 || lag < lag_min) lag_min = lag;
        if (g == 0 || lag > lag_max) lag_max = lag;
        lag_sum += (double)lag;
        { /* per token: a completion sampled while new weights arrived has tokens of several versions */
            const wire_rollout_group *w = &s->g;
            uint64_t ref = w->policy_version + (uint64_t)lag, off = 0;
            for (uint32_t i = 0; i < w->k; off += w->n_tokens[i++]) {
                uint32_t nt = w->n_tokens[i];
                for (uint32_t t = 0; t < nt; t++) {
                    long tl = (long)ref - (long)(w->token_versions ? w->token_versions[off + t] : w->policy_version);
                    tok_lag_sum += (double)tl;
                    if (tl > tok_lag_max) tok_lag_max = tl;
                }
                n_lag_tok += nt;
                n_completions++;
                n_spanning += nt > 0 && w->token_versions && w->token_versions[off] != w->token_versions[off + nt - 1];
            }
        }
        gen_tok += (double)wire_rollout_group_total_tokens(&s->g);
        gen_s += s->g.gen_seconds;
        spec_drafted += (double)s->g.spec_drafted;
        spec_accepted += (double)s->g.spec_accepted;
        spec_verifies += (double)s->g.spec_verifies;
        spec_tokens += (double)s->g.spec_tokens;
        score_s += s->score_seconds;
        if (n_scored < 2) {
            n_unscored++;
            s->fate = "unscored";
        } else if (hi - lo > 1e-6f || (cfg->kl_beta > 0 && !cfg->kl_in_loss) || cfg->overlong_buffer > 0) {
            /* with a KL penalty in the reward (or overlong shaping) the spread that counts is that of the
             * shaped rewards: the penalty is subtracted before the baseline (a KL-shaped reward), so it acts
             * in groups whose task rewards are all equal too; the training step drops those still
             * without spread */
            kept[n_kept++] = s;
            s->fate = "trained";
        } else {
            n_zero++;
            s->fate = "zero_var";
        }
    }
    ps->groups_dropped_zero_var += n_zero;
    ps->groups_dropped_unscored += n_unscored;
    double t_wait_end = rlhf_now();
    json_t *m = json_object();
    json_object_set_new(m, "step", json_integer(ps->step + 1));
    json_object_set_new(m, "policy_version", json_integer((json_int_t)ps->version));
    updater_metrics_rewards(m, groups, P, u->n_sources, u->src_names);
    error_metrics(u, m);
    int rc = 0;
    if (n_kept > 0) {
        rc = updater_policy_train_step(ps, kept, n_kept, m, u->src_names, err);
    } else {
        /* nothing to learn from: the step is counted (so sync generators are released) but the
         * weights do not move */
        ps->step++;
        json_object_set_new(m, "train/tokens_per_s", json_real(0));
        json_object_set_new(m, "train/seconds", json_real(0));
    }
    if (rc) {
        json_decref(m);
        free(kept);
        return rc;
    }
    if (n_kept > 0 && ps->zero_var_after_kl > 0) { /* no spread even with the penalty: not trained */
        n_zero += ps->zero_var_after_kl;
        n_kept -= ps->zero_var_after_kl;
        ps->groups_dropped_zero_var += ps->zero_var_after_kl;
    }
    double t_end = rlhf_now();
    if (ps->step % cfg->publish_every == 0) {
        ps->version++;
        /* which weights this version is, by content: a replay compares its own step by step */
        if (cfg->weights_hash) {
            char h[17];
            if (ps->lora) run_weights_content_hash(ps->lora->mem, ps->lora->n_params * sizeof(float), h);
            else run_weights_hash(ps->m, h); /* equal to the published message's content_hash either way */
            json_object_set_new(m, "weights_hash", json_string(h));
        }
    }
    json_object_set_new(m, "kl_beta", json_real(cfg->kl_beta));
    json_object_set_new(m, "staleness/min", json_integer(lag_min));
    json_object_set_new(m, "staleness/mean", json_real(P ? lag_sum / P : 0));
    json_object_set_new(m, "staleness/max", json_integer(lag_max));
    /* the same per token (in-flight weight updates give a completion's tokens different versions) */
    json_object_set_new(m, "staleness/token_mean", json_real(n_lag_tok ? tok_lag_sum / (double)n_lag_tok : 0));
    json_object_set_new(m, "staleness/token_max", json_integer(tok_lag_max));
    json_object_set_new(m, "rollouts/spanning_versions_frac",
                        json_real(n_completions ? (double)n_spanning / (double)n_completions : 0));
    json_object_set_new(m, "groups/step", json_integer(P));
    json_object_set_new(m, "groups/kept", json_integer(n_kept));
    json_object_set_new(m, "groups/dropped_stale", json_integer(u->w_stale));
    json_object_set_new(m, "groups/dropped_zero_var", json_integer(n_zero));
    json_object_set_new(m, "groups/dropped_unscored", json_integer(n_unscored));
    json_object_set_new(m, "groups/dropped_unscored_total", json_integer(ps->groups_dropped_unscored));
    json_object_set_new(m, "groups/skipped", json_integer(u->w_skipped));
    json_object_set_new(m, "groups/skipped_bad_tokens_total", json_integer(u->bad_tokens_total));
    json_object_set_new(m, "groups/total", json_integer(ps->groups_total));
    json_object_set_new(m, "groups/dropped_stale_total", json_integer(ps->groups_dropped_stale));
    json_object_set_new(m, "groups/dropped_zero_var_total", json_integer(ps->groups_dropped_zero_var));
    double window = t_end - u->window_start;
    json_object_set_new(m, "gen/tokens", json_integer((json_int_t)gen_tok));
    json_object_set_new(m, "gen/tokens_per_s", json_real(window > 0 ? gen_tok / window : 0));
    json_object_set_new(m, "gen/seconds", json_real(gen_s));
    if (spec_verifies > 0) { /* speculative decoding: share of draft tokens kept, tokens per verify step */
        json_object_set_new(m, "gen/spec_acceptance", json_real(spec_drafted > 0 ? spec_accepted / spec_drafted : 0));
        json_object_set_new(m, "gen/spec_tokens_per_verify", json_real(spec_tokens / spec_verifies));
        json_object_set_new(m, "gen/spec_drafted", json_integer((json_int_t)spec_drafted));
    }
    json_object_set_new(m, "time/wait_s", json_real(u->wait_seconds));
    json_object_set_new(m, "time/score_s", json_real(score_s));
    json_object_set_new(m, "time/step_s", json_real(window));
    json_object_set_new(m, "time/publish_s", json_real(0));
    json_object_set_new(m, "queue/depth", json_integer(u->queue_depth + (u->n_window - P)));
    json_object_set_new(m, "wall_s", json_real(ps->wall_offset + t_end - ps->wall_start));
    (void)t_wait_end;
    if (cfg->samples_every > 0 && P > 0 && ps->step % cfg->samples_every == 0) write_sample(u, groups[0], ps->step);
    /* the step's groups are done; later ones stay for the next step */
    for (int g = 0; g < P; g++) {
        updater_session_mark_consumed(u, groups[g]);
        updater_scored_group_free(groups[g]);
    }
    memmove(u->window, u->window + P, sizeof *u->window * (size_t)(u->n_window - P));
    u->n_window -= P;
    /* leftovers may have become too stale with the new version */
    int j = 0;
    for (int g = 0; g < u->n_window; g++) {
        if (group_lag(ps, u->window[g]) > cfg->max_staleness) {
            ps->groups_dropped_stale++;
            u->window[g]->fate = "stale";
            updater_session_mark_consumed(u, u->window[g]);
            updater_scored_group_free(u->window[g]);
            u->w_stale_carry++;
        } else {
            u->window[j++] = u->window[g];
        }
    }
    u->n_window = j;
    u->w_stale = u->w_stale_carry;
    u->w_stale_carry = 0;
    u->w_skipped = 0;
    u->wait_seconds = 0;
    u->window_start = rlhf_now();
    updater_scorer_set_step(u->sc, ps->step);
    free(kept);
    if (u->consumed_log_err.code) { /* a group's line is missing from the audit trail: no checkpoint may pass it */
        json_decref(m);
        return rlhf_error_set(err, u->consumed_log_err.code, u->consumed_log_err.where, "%s", u->consumed_log_err.msg);
    }
    *metrics_out = m;
    return 0;
}

/* The newest "eval/step" of metrics.jsonl (-1: none), read once per process: a resumed run's
 * metrics were cut back to its checkpoint, so evaluations reported after it are reported again. */
static long eval_reported_in_metrics(const char *path) {
    long newest = -1;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return newest;
    FILE *f = fopen(path, "r");
    if (!f) return newest;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (!strstr(line, "\"eval/step\"")) continue;
        json_t *o = json_loads(line, 0, NULL);
        json_t *s = json_object_get(o, "eval/step");
        if (json_is_integer(s) && json_integer_value(s) > newest) newest = (long)json_integer_value(s);
        json_decref(o);
    }
    free(line);
    fclose(f);
    return newest;
}

/* Adds the oldest evaluation of RUN_DIR/eval.jsonl newer than u->eval_reported to m. */
static void add_eval(updater_session *u, json_t *m) {
    if (!u->eval_scanned) {
        u->eval_reported = eval_reported_in_metrics(u->metrics_path);
        u->eval_scanned = 1;
    }
    char path[2100];
    snprintf(path, sizeof path, "%s/eval.jsonl", u->cfg->run_dir);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || (st.st_size == u->eval_file_size && !u->eval_more))
        return; /* nothing new */
    FILE *f = fopen(path, "r");
    if (!f) return;
    u->eval_file_size = st.st_size;
    u->eval_more = 0;
    json_t *oldest = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') break; /* an evaluation still writing its line */
        json_t *o = json_loads(line, 0, NULL);
        long step = json_is_integer(json_object_get(o, "step")) ? (long)json_integer_value(json_object_get(o, "step")) : -1;
        if (step > u->eval_reported && (!oldest || step < (long)json_integer_value(json_object_get(oldest, "step")))) {
            if (oldest) u->eval_more = 1;
            json_decref(oldest);
            oldest = o;
        } else {
            if (step > u->eval_reported) u->eval_more = 1;
            json_decref(o);
        }
    }
    free(line);
    fclose(f);
    if (!oldest) return;
    static const char *const keys[] = {"pass_rate", "reward_mean", "pass_rate_greedy", "pass_rate_sampled"};
    json_object_set_new(m, "eval/step", json_incref(json_object_get(oldest, "step")));
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *v = json_object_get(oldest, keys[i]);
        char k[64];
        snprintf(k, sizeof k, "eval/%s", keys[i]);
        if (json_is_number(v)) json_object_set_new(m, k, json_real(json_number_value(v)));
    }
    u->eval_reported = (long)json_integer_value(json_object_get(oldest, "step"));
    json_decref(oldest);
}

int updater_session_write_metrics(updater_session *u, json_t *m, rlhf_error *err) {
    if (u->cfg->eval_every > 0) add_eval(u, m);
    return updater_metrics_append(u->metrics_path, m, err);
}
