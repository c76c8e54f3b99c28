/* rewards/builtin.c — built-in reward sources that need no sandbox: exact_match, numeric_match,
 * regex, length_penalty. They implement the same rlhf_reward_plugin_v1 interface as plugins. */
#include <ctype.h>
#include <math.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "rewards/rewards_int.h"

/* ---- answer extraction shared by exact_match and numeric_match ---- */
enum { EXTRACT_FULL, EXTRACT_LAST_LINE, EXTRACT_BOXED };

static int parse_extract(const json_t *src, const char *where, int *out, rlhf_error *err) {
    const char *e = "full";
    int rc = reward_get_string(src, "extract", where, 0, &e, err);
    if (rc) return rc;
    if (!strcmp(e, "full")) *out = EXTRACT_FULL;
    else if (!strcmp(e, "last_line")) *out = EXTRACT_LAST_LINE;
    else if (!strcmp(e, "boxed")) *out = EXTRACT_BOXED;
    else {
        char w[256];
        snprintf(w, sizeof w, "%s.extract", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"full\", \"last_line\" or \"boxed\", got \"%s\"", e);
    }
    return 0;
}

/* Copies the part of `text` selected by `mode`, trimmed of surrounding whitespace, into buf.
 * Returns 0, or -1 when nothing can be extracted (no \boxed{...}). */
static int extract_answer(const char *text, int mode, char *buf, size_t cap) {
    const char *b = text, *e = text + strlen(text);
    if (mode == EXTRACT_LAST_LINE) {
        while (e > b && isspace((unsigned char)e[-1])) e--;
        const char *nl = e;
        while (nl > b && nl[-1] != '\n') nl--;
        b = nl;
    } else if (mode == EXTRACT_BOXED) {
        const char *last = NULL;
        for (const char *q = strstr(text, "\\boxed{"); q; q = strstr(q + 1, "\\boxed{")) last = q;
        if (!last) return -1;
        b = last + 7;
        int depth = 1;
        const char *q = b;
        for (; *q && depth; q++) {
            if (*q == '{') depth++;
            else if (*q == '}') depth--;
        }
        if (depth) return -1;
        e = q - 1;
    }
    while (b < e && isspace((unsigned char)*b)) b++;
    while (e > b && isspace((unsigned char)e[-1])) e--;
    size_t len = (size_t)(e - b);
    if (len >= cap) len = cap - 1;
    memcpy(buf, b, len);
    buf[len] = 0;
    return 0;
}

/* The record field as text: a string as is, a number printed. Returns 0, or -1 if absent/other. */
static int record_field_text(const json_t *rec, const char *field, char *buf, size_t cap) {
    json_t *v = json_object_get(rec, field);
    if (json_is_string(v)) snprintf(buf, cap, "%s", json_string_value(v));
    else if (json_is_integer(v)) snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v)) snprintf(buf, cap, "%.17g", json_real_value(v));
    else return -1;
    return 0;
}

/* ---- exact_match ---- */
typedef struct {
    char field[64];
    int extract;
    int case_sensitive;
} exact_match_ctx;

static int exact_match_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                             rlhf_reward_status *status) {
    exact_match_ctx *c = vctx;
    char want[4096], got[4096];
    for (size_t i = 0; i < n; i++) {
        json_t *rec = reward_item_record(&items[i], &status[i]);
        if (!rec) continue;
        if (record_field_text(rec, c->field, want, sizeof want)) {
            rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "record has no \"%s\"", c->field);
        } else if (extract_answer(items[i].completion, c->extract, got, sizeof got)) {
            scores[i] = 0; // nothing extractable is a wrong answer, not a scorer failure
        } else {
            char *trimmed = want;
            while (isspace((unsigned char)*trimmed)) trimmed++;
            size_t l = strlen(trimmed);
            while (l && isspace((unsigned char)trimmed[l - 1])) trimmed[--l] = 0;
            scores[i] = (c->case_sensitive ? strcmp(got, trimmed) : strcasecmp(got, trimmed)) == 0 ? 1.0 : 0.0;
        }
        json_decref(rec);
    }
    return 0;
}

static void free_ctx(void *ctx) { free(ctx); }

static const rlhf_reward_plugin_v1 exact_match_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "exact_match", NULL, exact_match_score, free_ctx};

static int parse_field(const json_t *src, const char *where, char *field, size_t cap, rlhf_error *err) {
    const char *f = "answer";
    int rc = reward_get_string(src, "field", where, 0, &f, err);
    if (rc) return rc;
    if (!f[0] || strlen(f) >= cap) {
        char w[256];
        snprintf(w, sizeof w, "%s.field", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "field must be 1..%zu characters", cap - 1);
    }
    snprintf(field, cap, "%s", f);
    return 0;
}

int reward_source_exact_match_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"field", "extract", "case_sensitive", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    exact_match_ctx c = {.case_sensitive = 1};
    if ((rc = parse_field(src, where, c.field, sizeof c.field, err))) return rc;
    if ((rc = parse_extract(src, where, &c.extract, err))) return rc;
    if ((rc = reward_get_bool(src, "case_sensitive", where, 0, &c.case_sensitive, err))) return rc;
    exact_match_ctx *p = malloc(sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    *p = c;
    impl->plugin = &exact_match_plugin;
    impl->ctx = p;
    return 0;
}

/* ---- numeric_match ---- */
typedef struct {
    char field[64];
    int extract;
    double abs_tol, rel_tol;
} numeric_match_ctx;

/* Last number in s (optional sign, digits, optional fraction/exponent; thousands commas dropped). */
static int last_number(const char *s, double *out) {
    int found = 0;
    for (const char *p = s; *p;) {
        if (isdigit((unsigned char)*p) || ((*p == '-' || *p == '+' || *p == '.') && isdigit((unsigned char)p[1]))) {
            char buf[128];
            size_t k = 0;
            const char *q = p;
            if (*q == '-' || *q == '+') buf[k++] = *q++;
            while (*q && k < sizeof buf - 1 &&
                   (isdigit((unsigned char)*q) || *q == '.' ||
                    (*q == ',' && isdigit((unsigned char)q[1]) && isdigit((unsigned char)q[-1])) ||
                    ((*q == 'e' || *q == 'E') && (isdigit((unsigned char)q[1]) ||
                                                  ((q[1] == '-' || q[1] == '+') && isdigit((unsigned char)q[2])))))) {
                if (*q == 'e' || *q == 'E') {
                    buf[k++] = *q++;
                    if (*q == '-' || *q == '+') buf[k++] = *q++;
                    continue;
                }
                if (*q != ',') buf[k++] = *q;
                q++;
            }
            buf[k] = 0;
            char *end;
            double v = strtod(buf, &end);
            if (end != buf) {
                *out = v;
                found = 1;
            }
            p = q > p ? q : p + 1;
        } else {
            p++;
        }
    }
    return found ? 0 : -1;
}

static int numeric_match_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                               rlhf_reward_status *status) {
    numeric_match_ctx *c = vctx;
    char want[256], got[4096];
    for (size_t i = 0; i < n; i++) {
        json_t *rec = reward_item_record(&items[i], &status[i]);
        if (!rec) continue;
        double w, g;
        if (record_field_text(rec, c->field, want, sizeof want) || last_number(want, &w)) {
            rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "record has no numeric \"%s\"", c->field);
        } else if (extract_answer(items[i].completion, c->extract, got, sizeof got) || last_number(got, &g)) {
            scores[i] = 0;
        } else {
            scores[i] = fabs(g - w) <= c->abs_tol + c->rel_tol * fabs(w) ? 1.0 : 0.0;
        }
        json_decref(rec);
    }
    return 0;
}

static const rlhf_reward_plugin_v1 numeric_match_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "numeric_match", NULL, numeric_match_score, free_ctx};

int reward_source_numeric_match_create(const json_t *src, const char *where, reward_source_impl *impl,
                                       rlhf_error *err) {
    static const char *const keys[] = {"field", "extract", "abs_tol", "rel_tol", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    numeric_match_ctx c = {.abs_tol = 1e-6, .rel_tol = 0};
    if ((rc = parse_field(src, where, c.field, sizeof c.field, err))) return rc;
    if ((rc = parse_extract(src, where, &c.extract, err))) return rc;
    if ((rc = reward_get_number(src, "abs_tol", where, 0, &c.abs_tol, err))) return rc;
    if ((rc = reward_get_number(src, "rel_tol", where, 0, &c.rel_tol, err))) return rc;
    if (!(c.abs_tol >= 0) || !(c.rel_tol >= 0)) return rlhf_error_set(err, RLHF_EINVAL, where, "abs_tol and rel_tol must be >= 0");
    numeric_match_ctx *p = malloc(sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    *p = c;
    impl->plugin = &numeric_match_plugin;
    impl->ctx = p;
    return 0;
}

/* ---- regex ---- */
typedef struct {
    regex_t re;
    double score_match, score_no_match;
} regex_ctx;

static int regex_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores, rlhf_reward_status *status) {
    regex_ctx *c = vctx;
    (void)status;
    for (size_t i = 0; i < n; i++)
        scores[i] = regexec(&c->re, items[i].completion, 0, NULL, 0) == 0 ? c->score_match : c->score_no_match;
    return 0;
}

static void regex_destroy(void *vctx) {
    regex_ctx *c = vctx;
    regfree(&c->re);
    free(c);
}

static const rlhf_reward_plugin_v1 regex_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "regex", NULL, regex_score, regex_destroy};

int reward_source_regex_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"pattern", "ignore_case", "multiline", "score_match", "score_no_match", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    const char *pattern = NULL;
    int icase = 0, multiline = 1;
    double sm = 1.0, snm = 0.0;
    if ((rc = reward_get_string(src, "pattern", where, 1, &pattern, err))) return rc;
    if ((rc = reward_get_bool(src, "ignore_case", where, 0, &icase, err))) return rc;
    if ((rc = reward_get_bool(src, "multiline", where, 0, &multiline, err))) return rc;
    if ((rc = reward_get_number(src, "score_match", where, 0, &sm, err))) return rc;
    if ((rc = reward_get_number(src, "score_no_match", where, 0, &snm, err))) return rc;
    regex_ctx *c = calloc(1, sizeof *c);
    if (!c) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    int r = regcomp(&c->re, pattern, REG_EXTENDED | REG_NOSUB | (icase ? REG_ICASE : 0) | (multiline ? REG_NEWLINE : 0));
    if (r) {
        char msg[256], w[256];
        regerror(r, &c->re, msg, sizeof msg);
        free(c);
        snprintf(w, sizeof w, "%s.pattern", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "bad regular expression: %s", msg);
    }
    c->score_match = sm;
    c->score_no_match = snm;
    impl->plugin = &regex_plugin;
    impl->ctx = c;
    return 0;
}

/* ---- length_penalty ---- */
typedef struct {
    int64_t budget;
    double per_unit, max_penalty;
    int unit_chars;
} length_penalty_ctx;

static int length_penalty_score(void *vctx, const rlhf_reward_item *items, size_t n, double *scores,
                                rlhf_reward_status *status) {
    length_penalty_ctx *c = vctx;
    for (size_t i = 0; i < n; i++) {
        int64_t len;
        if (c->unit_chars) len = (int64_t)strlen(items[i].completion);
        else if (items[i].completion_ids || items[i].n_completion_ids > 0) len = items[i].n_completion_ids;
        else {
            rlhf_reward_status_set(&status[i], RLHF_REWARD_SKIP, "no completion token ids (set \"unit\": \"chars\")");
            continue;
        }
        double over = len > c->budget ? (double)(len - c->budget) : 0.0;
        double pen = over * c->per_unit;
        if (c->max_penalty > 0 && pen > c->max_penalty) pen = c->max_penalty;
        scores[i] = pen > 0 ? -pen : 0.0;
    }
    return 0;
}

static const rlhf_reward_plugin_v1 length_penalty_plugin = {
    RLHF_REWARD_ABI_VERSION, sizeof(rlhf_reward_plugin_v1), "length_penalty", NULL, length_penalty_score, free_ctx};

int reward_source_length_penalty_create(const json_t *src, const char *where, reward_source_impl *impl,
                                        rlhf_error *err) {
    static const char *const keys[] = {"budget", "penalty_per_unit", "max_penalty", "unit", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    length_penalty_ctx c = {.per_unit = 0.01, .max_penalty = 0};
    const char *unit = "tokens";
    if ((rc = reward_get_int(src, "budget", where, 1, &c.budget, err))) return rc;
    if ((rc = reward_get_number(src, "penalty_per_unit", where, 0, &c.per_unit, err))) return rc;
    if ((rc = reward_get_number(src, "max_penalty", where, 0, &c.max_penalty, err))) return rc;
    if ((rc = reward_get_string(src, "unit", where, 0, &unit, err))) return rc;
    char w[256];
    if (c.budget < 0) {
        snprintf(w, sizeof w, "%s.budget", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "budget must be >= 0");
    }
    if (!(c.per_unit >= 0) || !(c.max_penalty >= 0))
        return rlhf_error_set(err, RLHF_EINVAL, where, "penalty_per_unit and max_penalty must be >= 0");
    if (!strcmp(unit, "tokens")) c.unit_chars = 0;
    else if (!strcmp(unit, "chars")) c.unit_chars = 1;
    else {
        snprintf(w, sizeof w, "%s.unit", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"tokens\" or \"chars\", got \"%s\"", unit);
    }
    length_penalty_ctx *p = malloc(sizeof *p);
    if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    *p = c;
    impl->plugin = &length_penalty_plugin;
    impl->ctx = p;
    return 0;
}
