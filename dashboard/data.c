/* dashboard/data.c — what the dashboard reads from a run directory: JSONL files incrementally, the newest
 * groups of the replay log (broker/'s reader), the resolved config with its secrets masked. Everything
 * here runs on the server's one request thread, so nothing is locked. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/wire.h"
#include "model/model.h"
#include "dashboard/dashboard_int.h"

void dashboard_jsonl_init(dashboard_jsonl *j, const char *dir, const char *name) {
    memset(j, 0, sizeof *j);
    snprintf(j->path, sizeof j->path, "%s/%s", dir, name);
    j->rows = json_array();
}

void dashboard_jsonl_fini(dashboard_jsonl *j) {
    json_decref(j->rows);
    j->rows = NULL;
}

static void jsonl_restart(dashboard_jsonl *j) {
    if (j->on_row) j->on_row(j->ctx, NULL, 0); /* start over */
    json_array_clear(j->rows);
    j->offset = 0;
    j->lines = 0;
    j->bad_lines = 0;
    j->first_bad = 0;
    j->generation++;
}

void dashboard_jsonl_refresh(dashboard_jsonl *j) {
    struct stat st;
    if (stat(j->path, &st) != 0) {
        if (j->exists) jsonl_restart(j);
        j->exists = 0;
        j->torn = 0;
        return;
    }
    j->exists = 1;
    if (st.st_ino != j->ino || st.st_size < j->offset) {
        if (j->offset || j->ino) jsonl_restart(j);
        j->ino = st.st_ino;
    }
    if (st.st_size == j->offset) {
        j->torn = 0;
        return;
    }
    int fd = open(j->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    size_t want = (size_t)(st.st_size - j->offset);
    char *buf = malloc(want + 1);
    ssize_t got = buf ? pread(fd, buf, want, j->offset) : -1;
    close(fd);
    if (got <= 0) {
        free(buf);
        return;
    }
    buf[got] = 0;
    char *p = buf, *end = buf + got;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) break;
        *nl = 0;
        j->lines++;
        char *s = p;
        while (*s == ' ' || *s == '\t' || *s == '\r') s++;
        if (*s) {
            json_t *row = json_loads(s, 0, NULL);
            if (json_is_object(row) && j->on_row) {
                j->on_row(j->ctx, row, j->offset + (off_t)(p - buf));
                json_decref(row);
            } else if (json_is_object(row)) {
                json_array_append_new(j->rows, row);
            } else {
                json_decref(row);
                if (!j->bad_lines) j->first_bad = j->lines;
                j->bad_lines++;
            }
        }
        p = nl + 1;
    }
    j->offset += (off_t)(p - buf);
    j->torn = (size_t)(end - p);
    free(buf);
}

/* ---------------------------------------------------------------- scores.jsonl index */

static uint64_t score_key(const char *generator, uint64_t seq) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over "generator#seq" */
    for (const char *p = generator; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ '#') * 1099511628211ull;
    for (int i = 0; i < 8; i++) h = (h ^ ((seq >> (8 * i)) & 0xff)) * 1099511628211ull;
    return h ? h : 1;
}

static void score_put(dashboard_run *r, uint64_t key, off_t off) {
    if ((r->n_score_refs + 1) * 2 > r->cap_score_refs) { /* keep it at most half full */
        size_t cap = r->cap_score_refs ? r->cap_score_refs * 2 : 1024;
        dashboard_score_ref *t = calloc(cap, sizeof *t);
        if (!t) return;
        for (size_t i = 0; i < r->cap_score_refs; i++) {
            if (!r->score_refs[i].key) continue;
            size_t at = r->score_refs[i].key & (cap - 1);
            while (t[at].key) at = (at + 1) & (cap - 1);
            t[at] = r->score_refs[i];
        }
        free(r->score_refs);
        r->score_refs = t;
        r->cap_score_refs = cap;
    }
    size_t at = key & (r->cap_score_refs - 1);
    while (r->score_refs[at].key && r->score_refs[at].key != key) at = (at + 1) & (r->cap_score_refs - 1);
    if (!r->score_refs[at].key) r->n_score_refs++;
    r->score_refs[at] = (dashboard_score_ref){key, off}; /* a group scored again: its newest line */
}

/* dashboard_jsonl's on_row for scores.jsonl; row NULL: the file started over, forget everything. */
static void index_score(void *ctx, json_t *row, off_t off) {
    dashboard_run *r = ctx;
    if (!row) {
        r->n_score_refs = 0;
        if (r->score_refs) memset(r->score_refs, 0, r->cap_score_refs * sizeof *r->score_refs);
        return;
    }
    const char *gid = json_string_value(json_object_get(row, "generator"));
    if (gid) score_put(r, score_key(gid, (uint64_t)json_integer_value(json_object_get(row, "seq"))), off);
}

/* The scores.jsonl record of a group (a new reference), or NULL (not scored yet, or no scores.jsonl). */
static json_t *find_score(dashboard_run *r, const wire_rollout_group *g) {
    if (!r->cap_score_refs || !g->generator_id) return NULL;
    uint64_t key = score_key(g->generator_id, g->seq);
    size_t at = key & (r->cap_score_refs - 1);
    while (r->score_refs[at].key && r->score_refs[at].key != key) at = (at + 1) & (r->cap_score_refs - 1);
    if (!r->score_refs[at].key) return NULL;
    int fd = open(r->scores.path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    char buf[65536];
    ssize_t n = pread(fd, buf, sizeof buf - 1, r->score_refs[at].offset);
    close(fd);
    if (n <= 0) return NULL;
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    json_t *row = json_loads(buf, 0, NULL);
    const char *gid = json_string_value(json_object_get(row, "generator"));
    if (!gid || strcmp(gid, g->generator_id) || (uint64_t)json_integer_value(json_object_get(row, "seq")) != g->seq) {
        json_decref(row); /* a hash collision, or the file changed under us */
        return NULL;
    }
    return row;
}

/* ---------------------------------------------------------------- runs */

static int file_exists(const char *dir, const char *name) {
    char path[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

int dashboard_run_init(dashboard_run *r, const char *dir, rlhf_error *err) {
    memset(r, 0, sizeof *r);
    struct stat st;
    if (stat(dir, &st) != 0)
        return rlhf_error_set(err, RLHF_EINVAL, dir, "no such run directory (%s)", strerror(errno));
    if (!S_ISDIR(st.st_mode)) return rlhf_error_set(err, RLHF_EINVAL, dir, "not a directory");
    if (!file_exists(dir, "config.json") && !file_exists(dir, "metrics.jsonl") && !file_exists(dir, "rollouts.log"))
        return rlhf_error_set(err, RLHF_EINVAL, dir,
                              "not a run directory (none of config.json, metrics.jsonl, rollouts.log is there)");
    char *abs = realpath(dir, NULL);
    snprintf(r->dir, sizeof r->dir, "%s", abs ? abs : dir);
    free(abs);
    const char *base = strrchr(r->dir, '/');
    snprintf(r->name, sizeof r->name, "%.255s", base && base[1] ? base + 1 : r->dir);
    char cpath[4300];
    snprintf(cpath, sizeof cpath, "%s/config.json", r->dir);
    json_t *cfg = json_load_file(cpath, 0, NULL);
    const char *nm = json_string_value(json_object_get(cfg, "name"));
    if (nm && nm[0]) snprintf(r->name, sizeof r->name, "%s", nm);
    json_decref(cfg);
    dashboard_jsonl_init(&r->metrics, r->dir, "metrics.jsonl");
    dashboard_jsonl_init(&r->eval, r->dir, "eval.jsonl");
    dashboard_jsonl_init(&r->restarts, r->dir, "restarts.jsonl");
    dashboard_jsonl_init(&r->scores, r->dir, "scores.jsonl");
    r->scores.on_row = index_score;
    r->scores.ctx = r;
    return 0;
}

void dashboard_run_fini(dashboard_run *r) {
    dashboard_jsonl_fini(&r->metrics);
    dashboard_jsonl_fini(&r->eval);
    dashboard_jsonl_fini(&r->restarts);
    dashboard_jsonl_fini(&r->scores);
    free(r->score_refs);
    r->score_refs = NULL;
    r->n_score_refs = r->cap_score_refs = 0;
    tokenizer_destroy(&r->tok);
    free(r->pos);
    r->pos = NULL;
    r->n_pos = r->cap_pos = 0;
}

static void add_missing(json_t *missing, const char *file, const char *what) {
    json_array_append_new(missing, json_pack("{s:s, s:s}", "file", file, "what", what));
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Notes about a JSONL file: missing, torn last line, lines that are not JSON. */
static void jsonl_notes(const dashboard_jsonl *j, const char *what, json_t *missing, json_t *notes) {
    const char *name = base_name(j->path);
    if (!j->exists) {
        add_missing(missing, name, what);
        return;
    }
    char buf[512];
    if (j->torn) {
        snprintf(buf, sizeof buf, "%.200s: the last line is incomplete (%zu bytes without a newline; a writer mid-line "
                 "or a torn tail): not shown", name, j->torn);
        json_array_append_new(notes, json_string(buf));
    }
    if (j->bad_lines) {
        snprintf(buf, sizeof buf, "%.200s:%ld: not a JSON object (%ld such line%s skipped)", name, j->first_bad,
                 j->bad_lines, j->bad_lines == 1 ? "" : "s");
        json_array_append_new(notes, json_string(buf));
    }
}

json_t *dashboard_api_run_info(dashboard_run *r, int index) {
    dashboard_jsonl_refresh(&r->metrics);
    dashboard_jsonl_refresh(&r->eval);
    json_t *missing = json_array(), *notes = json_array();
    jsonl_notes(&r->metrics, "training metrics (no optimizer step finished yet?)", missing, notes);
    jsonl_notes(&r->eval, "held-out evaluation (eval.every is 0, or none finished yet)", missing, notes);
    if (!file_exists(r->dir, "config.json")) add_missing(missing, "config.json", "the resolved config");
    if (!file_exists(r->dir, "rollouts.log")) add_missing(missing, "rollouts.log", "the replay log (recent rollouts)");
    return json_pack("{s:i, s:s, s:s, s:I, s:o, s:o}", "run", index, "name", r->name, "dir", r->dir, "steps",
                     (json_int_t)json_array_size(r->metrics.rows), "missing", missing, "notes", notes);
}

/* rows from `since` on; a client whose generation differs (the file started over) gets every row. */
json_t *dashboard_api_rows(dashboard_run *r, dashboard_jsonl *j, long since, unsigned generation) {
    (void)r;
    dashboard_jsonl_refresh(j);
    json_t *missing = json_array(), *notes = json_array();
    jsonl_notes(j, j == &r->metrics ? "training metrics (no optimizer step finished yet?)"
                   : j == &r->eval  ? "held-out evaluation (eval.every is 0, or none finished yet)"
                                    : "this file",
                missing, notes);
    size_t n = json_array_size(j->rows);
    int reset = 0;
    if (since < 0 || (size_t)since > n || generation != j->generation) {
        reset = since != 0;
        since = 0;
    }
    json_t *rows = json_array();
    for (size_t i = (size_t)since; i < n; i++) json_array_append(rows, json_array_get(j->rows, i));
    return json_pack("{s:o, s:I, s:i, s:b, s:I, s:o, s:o}", "rows", rows, "next", (json_int_t)n, "generation",
                     (int)j->generation, "reset", reset, "torn", (json_int_t)j->torn, "missing", missing, "notes",
                     notes);
}

/* ---------------------------------------------------------------- rollouts */

/* Positions of the records added to rollouts.log since the last call. */
static void index_log(dashboard_run *r, const char *path) {
    rlhf_error err = {0};
    replay_reader *rr = NULL;
    r->log_note[0] = 0;
    if (replay_reader_open(&rr, path, &err)) {
        snprintf(r->log_note, sizeof r->log_note, "rollouts.log: %s", err.msg);
        return;
    }
    wire_rollout_group g;
    replay_pos pos;
    int rc;
    if (r->n_pos) {
        /* continue after the last record indexed */
        if (replay_reader_seek(rr, r->pos[r->n_pos - 1], &err) ||
            (rc = replay_reader_next(rr, &g, &pos, &err)) != 1) {
            /* the log was replaced or cut: index it again */
            r->n_pos = 0;
            replay_reader_close(&rr);
            if (replay_reader_open(&rr, path, &err)) {
                snprintf(r->log_note, sizeof r->log_note, "rollouts.log: %s", err.msg);
                return;
            }
        } else {
            wire_rollout_group_free(&g);
        }
    }
    while ((rc = replay_reader_next(rr, &g, &pos, &err)) == 1) {
        wire_rollout_group_free(&g);
        if (r->n_pos == r->cap_pos) {
            size_t cap = r->cap_pos ? r->cap_pos * 2 : 256;
            replay_pos *np = realloc(r->pos, cap * sizeof *np);
            if (!np) break;
            r->pos = np;
            r->cap_pos = cap;
        }
        r->pos[r->n_pos++] = pos;
    }
    if (rc < 0) snprintf(r->log_note, sizeof r->log_note, "rollouts.log: %.200s: %.700s (records after it not shown)",
                         err.where, err.msg);
    replay_reader_close(&rr);
}

static int contains_ci(const char *hay, const char *needle) {
    if (!needle || !needle[0]) return 1;
    if (!hay) return 0;
    size_t nl = strlen(needle);
    for (; *hay; hay++)
        if (!strncasecmp(hay, needle, nl)) return 1;
    return 0;
}

/* scores.jsonl, indexed by generator and seq (a file that started over is indexed again: index_score). */
static void refresh_scores(dashboard_run *r) { dashboard_jsonl_refresh(&r->scores); }

/* The run's tokenizer (config.json's model.tokenizer and base checkpoint, as the run loaded it), for
 * groups recorded without their texts; NULL (and tok_note says why) when it cannot be loaded. */
static tokenizer *run_tokenizer(dashboard_run *r) {
    if (r->tok_tried) return r->tok;
    r->tok_tried = 1;
    char path[4300];
    snprintf(path, sizeof path, "%s/config.json", r->dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    json_t *model = json_object_get(cfg, "model");
    const char *spec = json_string_value(json_object_get(model, "tokenizer"));
    const char *base = json_string_value(json_object_get(model, "base_checkpoint"));
    json_int_t vocab = json_integer_value(json_object_get(json_object_get(model, "arch"), "vocab_size"));
    char own[4300];
    if (!base || !base[0]) {
        snprintf(own, sizeof own, "%s/base.safetensors", r->dir);
        base = own;
    }
    rlhf_error err = {0};
    if (!cfg) snprintf(r->tok_note, sizeof r->tok_note, "config.json is missing: completions recorded without "
                       "their text cannot be decoded");
    else if (tokenizer_load_for_model(&r->tok, spec && spec[0] ? spec : NULL, base,
                                      vocab > 0 ? (int)vocab : TOKENIZER_BYTES_MIN_VOCAB, &err))
        snprintf(r->tok_note, sizeof r->tok_note, "the run's tokenizer: %.200s: %.300s", err.where, err.msg);
    json_decref(cfg);
    return r->tok;
}

/* Completion i's text: the one the generator recorded, else its tokens decoded with the run's tokenizer
 * (*decoded = 1), else NULL. */
static char *completion_text(dashboard_run *r, const wire_rollout_group *g, uint32_t i, size_t off, int *decoded) {
    *decoded = 0;
    if (g->texts && g->texts[i]) return rlhf_utf8_sanitize(g->texts[i], strlen(g->texts[i]));
    tokenizer *tok = g->tokens && g->n_tokens ? run_tokenizer(r) : NULL;
    if (!tok) return NULL;
    char *bytes = NULL, *text = NULL;
    size_t n = 0;
    rlhf_error err = {0};
    if (tokenizer_decode(tok, g->tokens + off, (int)g->n_tokens[i], &bytes, &n, &err) == 0) {
        text = rlhf_utf8_sanitize(bytes, n);
        *decoded = 1;
    }
    free(bytes);
    return text;
}

static json_t *group_json(dashboard_run *r, const wire_rollout_group *g, json_t *score, const char *filter,
                          int *match) {
    char *prompt = g->prompt_text ? rlhf_utf8_sanitize(g->prompt_text, strlen(g->prompt_text)) : NULL;
    *match = contains_ci(prompt, filter) || contains_ci(g->prompt_id, filter) || contains_ci(g->generator_id, filter);
    json_t *comps = json_array();
    json_t *total = json_object_get(score, "total"), *per = json_object_get(score, "rewards");
    /* RLOO over the scored samples (a null total: no source scored it, left out of the baseline) */
    double sum = 0;
    int scored = 0;
    for (uint32_t i = 0; i < g->k; i++) {
        json_t *t = json_array_get(total, i);
        if (json_is_number(t)) sum += json_number_value(t), scored++;
    }
    size_t off = 0;
    for (uint32_t i = 0; i < g->k; i++) {
        json_t *c = json_object();
        int decoded = 0;
        char *text = completion_text(r, g, i, off, &decoded);
        off += g->n_tokens ? g->n_tokens[i] : 0;
        if (text) {
            if (contains_ci(text, filter)) *match = 1;
            json_object_set_new(c, "text", json_string(text));
            if (decoded) json_object_set_new(c, "decoded", json_true()); /* not recorded: decoded here */
        } else {
            json_object_set_new(c, "text", json_null());
        }
        free(text);
        json_object_set_new(c, "tokens", json_integer(g->n_tokens ? g->n_tokens[i] : 0));
        json_object_set_new(c, "finish", json_string(g->finish ? wire_finish_name(g->finish[i]) : "?"));
        json_t *t = json_array_get(total, i);
        if (json_is_number(t)) {
            double ri = json_number_value(t);
            json_object_set_new(c, "reward", json_real(ri));
            if (scored > 1) json_object_set_new(c, "advantage", json_real(ri - (sum - ri) / (double)(scored - 1)));
        }
        json_t *rs = json_object();
        const char *src;
        json_t *vals;
        json_object_foreach(per, src, vals) json_object_set(rs, src, json_array_get(vals, i));
        json_object_set_new(c, "rewards", rs);
        json_array_append_new(comps, c);
    }
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:s, s:f, s:o}", "generator", g->generator_id ? g->generator_id : "",
                          "prompt_id", g->prompt_id ? g->prompt_id : "", "seq", (json_int_t)g->seq, "policy_version",
                          (json_int_t)g->policy_version, "prompt", prompt ? prompt : "", "created_at", g->created_at,
                          "completions", comps);
    json_object_set(o, "step", score ? json_object_get(score, "step") : json_null());
    json_object_set(o, "fate", score ? json_object_get(score, "fate") : json_null());
    free(prompt);
    return o;
}

/* Scanning for a filter stops after this many records (newest first). */
#define DASH_SCAN_MAX 20000

json_t *dashboard_api_rollouts(dashboard_run *r, int limit, const char *filter) {
    json_t *missing = json_array(), *notes = json_array(), *rows = json_array();
    char path[4300];
    snprintf(path, sizeof path, "%s/rollouts.log", r->dir);
    refresh_scores(r);
    if (!r->scores.exists)
        add_missing(missing, "scores.jsonl", "rewards and advantages of the groups (the updater scored none yet)");
    size_t scanned = 0;
    if (access(path, F_OK) != 0) {
        add_missing(missing, "rollouts.log", "the replay log: no rollout recorded yet (or replay.path is \"\")");
        r->n_pos = 0;
    } else {
        index_log(r, path);
        if (r->log_note[0]) json_array_append_new(notes, json_string(r->log_note));
        rlhf_error err = {0};
        replay_reader *rr = NULL;
        if (r->n_pos && replay_reader_open(&rr, path, &err) == 0) {
            for (size_t i = r->n_pos; i-- > 0 && (int)json_array_size(rows) < limit && scanned < DASH_SCAN_MAX;) {
                wire_rollout_group g;
                replay_pos pos;
                scanned++;
                if (replay_reader_seek(rr, r->pos[i], &err) || replay_reader_next(rr, &g, &pos, &err) != 1) break;
                int match = 0;
                json_t *score = find_score(r, &g);
                json_t *o = group_json(r, &g, score, filter, &match);
                json_decref(score);
                if (match) json_array_append_new(rows, o);
                else json_decref(o);
                wire_rollout_group_free(&g);
            }
            replay_reader_close(&rr);
        }
        if (r->tok_note[0]) json_array_append_new(notes, json_string(r->tok_note));
    }
    return json_pack("{s:o, s:I, s:I, s:o, s:o}", "rollouts", rows, "records", (json_int_t)r->n_pos, "scanned",
                     (json_int_t)scanned, "missing", missing, "notes", notes);
}

/* ---------------------------------------------------------------- config */

static int secret_key(const char *k) {
    char low[128];
    size_t n = strlen(k);
    if (n >= sizeof low) n = sizeof low - 1;
    for (size_t i = 0; i < n; i++) low[i] = (char)tolower((unsigned char)k[i]);
    low[n] = 0;
    static const char *const words[] = {"secret", "password", "passwd", "api_key", "apikey", "api-key", "access_key",
                                        "private_key", "authorization", "credential", "cookie", NULL};
    for (int i = 0; words[i]; i++)
        if (strstr(low, words[i])) return 1;
    /* "key", "token", "x_key", "x_token", "x-token" (not "max_tokens", "tokenizer", "bos_token" is masked too) */
    if (!strcmp(low, "key") || !strcmp(low, "token") || !strcmp(low, "auth")) return 1;
    if (n > 4 && (!strcmp(low + n - 4, "_key") || !strcmp(low + n - 4, "-key"))) return 1;
    if (n > 6 && (!strcmp(low + n - 6, "_token") || !strcmp(low + n - 6, "-token"))) return 1;
    return 0;
}

/* A value that is a secret whatever its key is called: bearer tokens and the usual API-key prefixes. */
static int secret_value(const char *v) {
    static const char *const prefixes[] = {"sk-", "Bearer ", "bearer ", "hf_", "ghp_", "xoxb-", "AKIA", NULL};
    for (int i = 0; prefixes[i]; i++)
        if (!strncmp(v, prefixes[i], strlen(prefixes[i])) && strlen(v) > strlen(prefixes[i]) + 8) return 1;
    return 0;
}

/* "scheme://user:password@host..." -> "scheme://user:***@host..."; 1 when changed. */
static int mask_url_password(json_t *s) {
    const char *v = json_string_value(s);
    const char *sch = strstr(v, "://");
    if (!sch) return 0;
    const char *auth = sch + 3, *at = strchr(auth, '@'), *slash = strchr(auth, '/');
    if (!at || (slash && slash < at)) return 0;
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    if (!colon) return 0;
    size_t head = (size_t)(colon + 1 - v);
    char *out = malloc(strlen(v) + 8);
    if (!out) return 0;
    memcpy(out, v, head);
    strcpy(out + head, "***");
    strcat(out, at);
    json_string_set(s, out);
    free(out);
    return 1;
}

static int mask_rec(json_t *j, size_t max_chars, int under_secret) {
    int n = 0;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            int sk = under_secret || secret_key(k);
            if (json_is_string(v) && sk && json_string_length(v) > 0) {
                json_string_set(v, "***");
                n++;
            } else {
                n += mask_rec(v, max_chars, sk && (json_is_object(v) || json_is_array(v)));
            }
        }
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            if (json_is_string(v) && under_secret && json_string_length(v) > 0) {
                json_string_set(v, "***");
                n++;
            } else {
                n += mask_rec(v, max_chars, under_secret);
            }
        }
    } else if (json_is_string(j)) {
        if (secret_value(json_string_value(j))) {
            json_string_set(j, "***");
            n++;
        } else {
            n += mask_url_password(j);
        }
        /* cut after masking, so no part of a secret survives in a truncated string */
        if (max_chars && json_string_length(j) > max_chars) {
            char *cut = strndup(json_string_value(j), max_chars);
            if (cut) {
                char *clean = rlhf_utf8_sanitize(cut, strlen(cut));
                size_t l = clean ? strlen(clean) : 0;
                char *t = malloc(l + 32);
                if (t) {
                    snprintf(t, l + 32, "%s… (cut)", clean ? clean : "");
                    json_string_set(j, t);
                }
                free(t);
                free(clean);
            }
            free(cut);
        }
    }
    return n;
}

int dashboard_mask_secrets(json_t *j, size_t max_chars) { return mask_rec(j, max_chars, 0); }

json_t *dashboard_api_config(dashboard_run *r) {
    char path[4300];
    snprintf(path, sizeof path, "%s/config.json", r->dir);
    json_t *missing = json_array(), *notes = json_array();
    json_error_t je;
    json_t *cfg = NULL;
    if (access(path, F_OK) != 0) {
        add_missing(missing, "config.json", "the resolved config");
    } else if (!(cfg = json_load_file(path, 0, &je))) {
        char buf[512];
        snprintf(buf, sizeof buf, "config.json:%d: %s", je.line, je.text);
        json_array_append_new(notes, json_string(buf));
    } else {
        int masked = dashboard_mask_secrets(cfg, 2000);
        if (masked) {
            char buf[128];
            snprintf(buf, sizeof buf, "%d secret-looking value%s masked", masked, masked == 1 ? "" : "s");
            json_array_append_new(notes, json_string(buf));
        }
    }
    return json_pack("{s:o, s:o, s:o}", "config", cfg ? cfg : json_null(), "missing", missing, "notes", notes);
}
