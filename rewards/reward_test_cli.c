/* rewards/reward_test_cli.c — `rlhf reward-test REWARD_CONFIG SAMPLES.jsonl`: score samples with a
 * reward config and print per-item scores, statuses and timings (a tool for reward authors). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sys/stat.h>

#include "rewards/rewards_int.h"

static const char usage[] =
    "usage: rlhf reward-test [--batch N] [--jsonl] REWARD_CONFIG SAMPLES.jsonl\n"
    "  REWARD_CONFIG  a JSON array of reward sources, or an object with a \"rewards\" array\n"
    "  SAMPLES.jsonl  one object per line: \"completion\" (required), \"prompt\", \"completion_ids\",\n"
    "                 \"group_id\", and \"record\" (the dataset record; when absent, the line's\n"
    "                 other keys such as answer/tests/numbers/target are the record)\n"
    "  --batch N      items per score call (default 64; sources' times are per batch, so\n"
    "                 --batch 1 gives per-item timings)\n"
    "  --jsonl        one JSON object per item instead of the table\n"
    "each batch is printed as soon as it is scored; an item's status is error when a source failed\n"
    "on it, skip when it is not trained on or no source applied\n"
    "exit status: 0 scored, 1 a source with on_error \"fail\" failed, 2 bad config or samples\n";

typedef struct sample {
    char *prompt, *completion, *record;
    int32_t *ids;
    int64_t n_ids, group_id;
} sample;

static void sample_free(sample *s) {
    free(s->prompt);
    free(s->completion);
    free(s->record);
    free(s->ids);
}

static int parse_sample(const char *line, const char *where, sample *s, rlhf_error *err) {
    memset(s, 0, sizeof *s);
    json_error_t je;
    /* \u0000 is allowed: a completion holding a NUL byte is scored as training scores it (the byte, and
     * any invalid UTF-8, as U+FFFD: nothing after it is cut off) */
    json_t *j = json_loads(line, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        return rlhf_error_set(err, RLHF_EINVAL, where, "not a JSON object%s%s", j ? "" : ": ", j ? "" : je.text);
    }
    const char *c = json_string_value(json_object_get(j, "completion"));
    if (!c) {
        json_decref(j);
        return rlhf_error_set(err, RLHF_EINVAL, where, "\"completion\" (string) is required");
    }
    const char *p = json_string_value(json_object_get(j, "prompt"));
    s->completion = rlhf_utf8_sanitize(c, json_string_length(json_object_get(j, "completion")));
    s->prompt = p ? rlhf_utf8_sanitize(p, json_string_length(json_object_get(j, "prompt"))) : strdup("");
    s->group_id = json_is_integer(json_object_get(j, "group_id")) ? json_integer_value(json_object_get(j, "group_id")) : -1;
    json_t *ids = json_object_get(j, "completion_ids");
    if (json_is_array(ids)) {
        s->n_ids = (int64_t)json_array_size(ids);
        s->ids = malloc((size_t)(s->n_ids ? s->n_ids : 1) * sizeof *s->ids);
        for (int64_t k = 0; s->ids && k < s->n_ids; k++) s->ids[k] = (int32_t)json_integer_value(json_array_get(ids, (size_t)k));
    }
    json_t *rec = json_object_get(j, "record");
    if (rec && !json_is_object(rec)) {
        json_decref(j);
        sample_free(s);
        return rlhf_error_set(err, RLHF_EINVAL, where, "\"record\" must be an object");
    }
    if (!rec) {
        rec = json_deep_copy(j);
        static const char *const drop[] = {"completion", "prompt", "completion_ids", "group_id", NULL};
        for (const char *const *d = drop; *d; d++) json_object_del(rec, *d);
        s->record = json_dumps(rec, JSON_COMPACT);
        json_decref(rec);
    } else {
        s->record = json_dumps(rec, JSON_COMPACT);
    }
    json_decref(j);
    if (!s->completion || !s->prompt || !s->record) {
        sample_free(s);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    return 0;
}

static const char *status_name(int code) {
    return code == RLHF_REWARD_OK ? "ok" : code == RLHF_REWARD_SKIP ? "skip" : "error";
}

/* What happened to item i, as an author needs to see it: "error" when any source failed on it (the
 * pipeline's item_status only says whether it is trained on), "skip" when it is left out or no source
 * applied, else "ok". */
static const char *item_status_name(const reward_scores *sc, size_t i) {
    size_t S = sc->n_sources;
    int ok = 0;
    for (size_t s = 0; s < S; s++) {
        int c = sc->status[i * S + s].code;
        if (c == RLHF_REWARD_ERROR) return "error";
        ok |= c == RLHF_REWARD_OK;
    }
    return sc->item_status[i].code == RLHF_REWARD_SKIP || !ok ? "skip" : "ok";
}

int cmd_reward_test(int argc, char **argv) {
    int batch = 64, jsonl = 0, npos = 0;
    const char *pos[2];
    const rlhf_opt opts[] = {RLHF_OPT_RANGE("--batch", RLHF_OPT_INT, &batch, 1, 100000),
                             RLHF_OPT("--jsonl", RLHF_OPT_FLAG, &jsonl), RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf reward-test", usage, opts, pos, 2, &npos);
    if (prc >= 0) return prc;
    if (npos != 2) {
        fprintf(stderr, "rlhf reward-test: error: missing %s\n%s", npos ? "SAMPLES.jsonl" : "REWARD_CONFIG", usage);
        return 2;
    }
    const char *cfg_path = pos[0], *samples_path = pos[1];
    rlhf_error err = {0};
    json_t *cfg = rlhf_json_load_file(cfg_path, JSON_REJECT_DUPLICATES, &err);
    if (!cfg) {
        rlhf_error_print("rlhf reward-test", &err);
        return 2;
    }
    /* a bare array is named like the run config's "rewards" key, so paths read the same */
    char where[300];
    snprintf(where, sizeof where, "%s: rewards", cfg_path);
    json_t *sources = json_is_object(cfg) ? json_object_get(cfg, "rewards") : cfg;
    /* relative files resolve against the config's folder, as in `rlhf run` */
    char cdir[4096];
    snprintf(cdir, sizeof cdir, "%s", cfg_path);
    char *cslash = strrchr(cdir, '/');
    if (cslash) *cslash = 0;
    else snprintf(cdir, sizeof cdir, ".");
    char *real_cdir = realpath(cdir, NULL);
    int rrc = reward_sources_resolve_paths(sources, real_cdir ? real_cdir : cdir, &err);
    free(real_cdir);
    reward_pipeline *p = NULL;
    if (rrc || reward_pipeline_create(&p, sources, where, &err)) {
        rlhf_error_print("rlhf reward-test", &err);
        json_decref(cfg);
        return 2;
    }
    json_decref(cfg);
    FILE *f = fopen(samples_path, "r");
    struct stat st;
    if (f && fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) { /* it opens, and reads as empty */
        fclose(f);
        f = NULL;
        errno = EISDIR;
    }
    if (!f) {
        fprintf(stderr, "rlhf reward-test: error: %s: cannot open: %s\n", samples_path, strerror(errno));
        reward_pipeline_destroy(&p);
        return 2;
    }
    size_t S = reward_pipeline_n_sources(p);
    sample *sm = calloc((size_t)batch, sizeof *sm);
    rlhf_reward_item *items = calloc((size_t)batch, sizeof *items);
    reward_scores sc = {0};
    char *line = NULL;
    size_t cap = 0, lineno = 0, index = 0;
    int rc = 0, eof = 0;
    if (!jsonl) {
        printf("%-5s %9s %-6s", "item", "total", "status");
        for (size_t s = 0; s < S; s++) printf("  %s", reward_pipeline_source_name(p, s));
        printf("\n");
    }
    while (!eof && rc == 0) {
        int n = 0;
        while (n < batch) {
            ssize_t l = getline(&line, &cap, f);
            if (l < 0) {
                eof = 1;
                break;
            }
            lineno++;
            while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r')) line[--l] = 0;
            if (l == 0) continue;
            char w[400];
            snprintf(w, sizeof w, "%s:%zu", samples_path, lineno);
            if (parse_sample(line, w, &sm[n], &err)) {
                rlhf_error_print("rlhf reward-test", &err);
                rc = 2;
                break;
            }
            items[n] = (rlhf_reward_item){sm[n].prompt, sm[n].completion, sm[n].ids, sm[n].n_ids, sm[n].record,
                                          sm[n].group_id, 0};
            n++;
        }
        if (n > 0 && rc == 0) {
            int src = reward_pipeline_score(p, items, (size_t)n, &sc, &err);
            for (int i = 0; i < n; i++, index++) {
                if (jsonl) {
                    json_t *o = json_object();
                    json_object_set_new(o, "item", json_integer((json_int_t)index));
                    /* an item no source scored has no total (a 0 would read as a scored 0) */
                    json_object_set_new(o, "total", sc.scored[i] && isfinite(sc.total[i]) ? json_real(sc.total[i]) : json_null());
                    json_object_set_new(o, "status", json_string(item_status_name(&sc, (size_t)i)));
                    if (sc.item_status[i].reason[0]) json_object_set_new(o, "reason", json_string(sc.item_status[i].reason));
                    json_t *so = json_object();
                    for (size_t s = 0; s < S; s++) {
                        json_t *e = json_object();
                        const rlhf_reward_status *st = &sc.status[(size_t)i * S + s];
                        /* a failed or skipped judgement has no score: null, never a 0 beside its status */
                        int ok = st->code == RLHF_REWARD_OK;
                        json_object_set_new(e, "raw", ok ? json_real(sc.raw[(size_t)i * S + s]) : json_null());
                        json_object_set_new(e, "normalized", ok ? json_real(sc.normalized[(size_t)i * S + s]) : json_null());
                        json_object_set_new(e, "status", json_string(status_name(st->code)));
                        if (st->reason[0]) json_object_set_new(e, "reason", json_string(st->reason));
                        json_object_set_new(e, "batch_ms", json_real(sc.source_ms[s]));
                        json_object_set_new(so, reward_pipeline_source_name(p, s), e);
                    }
                    json_object_set_new(o, "sources", so);
                    char *t = json_dumps(o, JSON_COMPACT);
                    printf("%s\n", t ? t : "{}");
                    free(t);
                    json_decref(o);
                } else {
                    printf("%-5zu %9.4f %-6s", index, sc.total[i], item_status_name(&sc, (size_t)i));
                    for (size_t s = 0; s < S; s++) {
                        const rlhf_reward_status *st = &sc.status[(size_t)i * S + s];
                        char v[32] = "-";
                        if (st->code == RLHF_REWARD_OK) snprintf(v, sizeof v, "%.4g", sc.raw[(size_t)i * S + s]);
                        printf("  %s=%s(%s%s%s)", reward_pipeline_source_name(p, s), v, status_name(st->code),
                               st->reason[0] ? ": " : "", st->reason);
                    }
                    printf("\n");
                }
            }
            if (!jsonl) {
                printf("# batch of %d:", n);
                for (size_t s = 0; s < S; s++) {
                    printf(" %s %.1f ms (%lld errors", reward_pipeline_source_name(p, s), sc.source_ms[s],
                           (long long)sc.source_errors[s]);
                    /* a plugin in a child process: its memory shows a leak batch by batch */
                    double rss, cpu;
                    int64_t restarts;
                    if (reward_pipeline_source_resources(p, s, &rss, &cpu, &restarts) == 0)
                        printf("; child %.0f MB, %.2f s CPU, %lld restarts", rss, cpu, (long long)restarts);
                    printf(")");
                }
                printf("\n");
            }
            /* what was scored is out before the next batch, whatever that one does */
            fflush(stdout);
            if (src) {
                rlhf_error_print("rlhf reward-test", &err);
                rc = 1;
            }
        }
        for (int i = 0; i < n; i++) sample_free(&sm[i]);
    }
    free(line);
    fclose(f);
    reward_scores_free(&sc);
    free(sm);
    free(items);
    reward_pipeline_destroy(&p);
    return rc;
}
