/* rewards/judge/judge_parse.c — the judge's text in and out: the reason names, the config (defaults,
 * JSON parsing, base_url check), the prompt template, and the score found in a judge's reply.
 * No network here; the client that uses it is rewards/judge/judge.c. */
#include "rewards/judge/judge.h"
#include "rewards/judge/judge_int.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

static const char *const reason_names[JUDGE_N_REASONS] = {
    "ok",        "timeout",   "connect",      "truncated",    "http_429", "http_5xx",  "http_4xx", "non_json",
    "bad_shape", "no_score",  "out_of_range", "circuit_open", "too_large", "template", "internal",
    "http_3xx",
};

const char *judge_reason_name(judge_reason r) {
    return (r >= 0 && r < JUDGE_N_REASONS) ? reason_names[r] : "unknown";
}

/* ------------------------------------------------------------------------------------------ config */

const char judge_default_template[] =
    "You are grading an answer to a question.\n\nQuestion:\n{prompt}\n\nAnswer:\n{completion}\n\n"
    "Rate the answer's correctness and quality on a scale from 0 to 10. "
    "End your reply with one line of the form `score: N`.";

void judge_config_default(judge_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->template_text = strdup(judge_default_template);
    cfg->temperature = 0.0;
    cfg->max_tokens = 64;
    cfg->call_timeout_ms = 30000;
    cfg->retries = 3;
    cfg->concurrency = 8;
    cfg->backoff_ms = 250;
    cfg->backoff_max_ms = 8000;
    cfg->max_retry_after_ms = 60000;
    cfg->score_min = 0;
    cfg->score_max = 10;
    cfg->response_format = JUDGE_RF_AUTO;
    cfg->breaker_failures = 10;
    cfg->breaker_cooldown_ms = 5000;
    cfg->cache_size = 4096;
    cfg->seed = 1;
}

void judge_config_free(judge_config *cfg) {
    if (!cfg) return;
    free(cfg->template_text);
    free(cfg->system_text);
    cfg->template_text = cfg->system_text = NULL;
}

static int get_int_key(const json_t *v, const char *where, const char *key, long long lo, long long hi, int *out,
                       rlhf_error *err) {
    (void)key;
    if (!json_is_integer(v))
        return rlhf_error_set(err, RLHF_EINVAL, where, "expected an integer");
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return rlhf_error_set(err, RLHF_EINVAL, where, "%lld is outside [%lld, %lld]", x, lo, hi);
    *out = (int)x;
    return 0;
}

static int get_str_key(const json_t *v, const char *where, const char *key, char *buf, size_t cap, int nonempty,
                       rlhf_error *err) {
    (void)key;
    if (!json_is_string(v)) return rlhf_error_set(err, RLHF_EINVAL, where, "expected a string");
    const char *s = json_string_value(v);
    if (nonempty && !*s) return rlhf_error_set(err, RLHF_EINVAL, where, "must not be empty");
    if (strlen(s) >= cap)
        return rlhf_error_set(err, RLHF_EINVAL, where, "longer than %zu bytes", cap - 1);
    snprintf(buf, cap, "%s", s);
    return 0;
}

/* Checks that base_url is an absolute http(s) URL with a host. */
int judge_check_base_url(const char *url, const char *where, rlhf_error *err) {
    CURLU *u = curl_url();
    if (!u) return RLHF_FAIL(err, RLHF_ENOMEM, "curl_url");
    int rc = 0;
    char *scheme = NULL, *host = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0])
        rc = rlhf_error_set(err, RLHF_EINVAL, where, "'%s' is not a valid URL", url);
    else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        rc = rlhf_error_set(err, RLHF_EINVAL, where, "scheme '%s' is not http or https", scheme);
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

/* The OpenAI SDK's convention: base_url is the API root, e.g. http://host:8000/v1, and the endpoint is
 * base_url + "/chat/completions". A bare host (no path) means its /v1; a URL already ending in
 * /chat/completions is taken as it is. */
int judge_chat_url(const char *base, char *out, size_t cap) {
    size_t ul = strlen(base);
    while (ul > 0 && base[ul - 1] == '/') ul--;
    const char *rest = strstr(base, "://");
    rest = rest ? rest + 3 : base;
    const char *slash = memchr(rest, '/', (size_t)(base + ul - rest));
    static const char tail[] = "/chat/completions";
    int n;
    if (ul >= sizeof tail - 1 && !strncmp(base + ul - (sizeof tail - 1), tail, sizeof tail - 1))
        n = snprintf(out, cap, "%.*s", (int)ul, base);
    else if (!slash) n = snprintf(out, cap, "%.*s/v1%s", (int)ul, base, tail);
    else n = snprintf(out, cap, "%.*s%s", (int)ul, base, tail);
    return n >= 0 && (size_t)n < cap ? 0 : -1;
}

int judge_config_parse(judge_config *cfg, const json_t *obj, const char *where, rlhf_error *err) {
    if (!json_is_object(obj)) return rlhf_error_set(err, RLHF_EINVAL, where, "judge config must be an object");
    const char *key;
    json_t *v;
    int have_url = 0, have_model = 0;
    json_object_foreach((json_t *)obj, key, v) {
        int rc = 0;
        char w[320];
        snprintf(w, sizeof w, "%s.%s", where, key);
        if (!strcmp(key, "type") || !strcmp(key, "name") || !strcmp(key, "weight") || !strcmp(key, "normalize") ||
            !strcmp(key, "timeout_ms") || !strcmp(key, "on_error") || !strcmp(key, "max_error_rate") ||
            !strcmp(key, "error_window")) {
            continue; /* the pipeline's keys */
        } else if (!strcmp(key, "base_url")) {
            rc = get_str_key(v, w, key, cfg->base_url, sizeof cfg->base_url, 1, err);
            if (!rc) rc = judge_check_base_url(cfg->base_url, w, err);
            have_url = 1;
        } else if (!strcmp(key, "model")) {
            rc = get_str_key(v, w, key, cfg->model, sizeof cfg->model, 1, err);
            have_model = 1;
        } else if (!strcmp(key, "api_key_env")) {
            rc = get_str_key(v, w, key, cfg->api_key_env, sizeof cfg->api_key_env, 1, err);
        } else if (!strcmp(key, "template") || !strcmp(key, "system")) {
            if (!json_is_string(v) || !json_string_length(v))
                return rlhf_error_set(err, RLHF_EINVAL, w, "expected a non-empty string");
            char **dst = !strcmp(key, "template") ? &cfg->template_text : &cfg->system_text;
            free(*dst);
            *dst = strdup(json_string_value(v));
        } else if (!strcmp(key, "temperature") || !strcmp(key, "score_min") || !strcmp(key, "score_max")) {
            if (!json_is_number(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected a number");
            double x = json_number_value(v);
            if (!strcmp(key, "temperature")) {
                if (!(x >= 0 && x <= 10))
                    return rlhf_error_set(err, RLHF_EINVAL, w, "%g is outside [0, 10]", x);
                cfg->temperature = x;
            } else if (!strcmp(key, "score_min")) {
                cfg->score_min = x;
            } else {
                cfg->score_max = x;
            }
        } else if (!strcmp(key, "max_tokens")) {
            rc = get_int_key(v, w, key, 1, 1 << 20, &cfg->max_tokens, err);
        } else if (!strcmp(key, "call_timeout_ms")) {
            rc = get_int_key(v, w, key, 1, 3600000, &cfg->call_timeout_ms, err);
        } else if (!strcmp(key, "retries")) {
            rc = get_int_key(v, w, key, 0, 100, &cfg->retries, err);
        } else if (!strcmp(key, "concurrency")) {
            rc = get_int_key(v, w, key, 1, 1024, &cfg->concurrency, err);
        } else if (!strcmp(key, "backoff_ms")) {
            rc = get_int_key(v, w, key, 1, 3600000, &cfg->backoff_ms, err);
        } else if (!strcmp(key, "backoff_max_ms")) {
            rc = get_int_key(v, w, key, 1, 3600000, &cfg->backoff_max_ms, err);
        } else if (!strcmp(key, "max_retry_after_ms")) {
            rc = get_int_key(v, w, key, 0, 3600000, &cfg->max_retry_after_ms, err);
        } else if (!strcmp(key, "breaker_failures")) {
            rc = get_int_key(v, w, key, 1, 1000000, &cfg->breaker_failures, err);
        } else if (!strcmp(key, "breaker_cooldown_ms")) {
            rc = get_int_key(v, w, key, 0, 3600000, &cfg->breaker_cooldown_ms, err);
        } else if (!strcmp(key, "cache_size")) {
            rc = get_int_key(v, w, key, 0, 1 << 24, &cfg->cache_size, err);
        } else if (!strcmp(key, "seed")) {
            if (!json_is_integer(v)) return rlhf_error_set(err, RLHF_EINVAL, w, "expected an integer");
            cfg->seed = (uint64_t)json_integer_value(v);
        } else if (!strcmp(key, "response_format")) {
            const char *s = json_is_string(v) ? json_string_value(v) : "";
            if (!strcmp(s, "auto")) cfg->response_format = JUDGE_RF_AUTO;
            else if (!strcmp(s, "json_schema")) cfg->response_format = JUDGE_RF_JSON_SCHEMA;
            else if (!strcmp(s, "none")) cfg->response_format = JUDGE_RF_NONE;
            else
                return rlhf_error_set(err, RLHF_EINVAL, w,
                                      "expected \"auto\", \"json_schema\" or \"none\"");
        } else {
            return rlhf_error_set(err, RLHF_EINVAL, w, "unknown key for a judge source");
        }
        if (rc) return rc;
    }
    if (!have_url) return rlhf_error_set(err, RLHF_EINVAL, where, "base_url: required key missing");
    if (!have_model) return rlhf_error_set(err, RLHF_EINVAL, where, "model: required key missing");
    if (!(cfg->score_max > cfg->score_min) || !isfinite(cfg->score_min) || !isfinite(cfg->score_max))
        return rlhf_error_set(err, RLHF_EINVAL, where, "score_max (%g) must be greater than score_min (%g)",
                              cfg->score_max, cfg->score_min);
    if (cfg->backoff_max_ms < cfg->backoff_ms)
        return rlhf_error_set(err, RLHF_EINVAL, where, "backoff_max_ms (%d) is below backoff_ms (%d)",
                              cfg->backoff_max_ms, cfg->backoff_ms);
    return 0;
}

/* ------------------------------------------------------------------------------ template, scores */

void judge_sbuf_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

char *judge_render(const char *tmpl, const char *prompt, const char *completion, const json_t *record,
                   char **missing) {
    sbuf b = {0};
    judge_sbuf_add(&b, "", 0);
    if (missing) *missing = NULL;
    for (const char *s = tmpl; *s;) {
        if (s[0] == '{' && s[1] == '{') {
            judge_sbuf_add(&b, "{", 1);
            s += 2;
            continue;
        }
        if (s[0] == '{' && (isalpha((unsigned char)s[1]) || s[1] == '_')) {
            const char *e = s + 1;
            while (isalnum((unsigned char)*e) || *e == '_') e++;
            if (*e == '}') {
                size_t n = (size_t)(e - s - 1);
                char name[128];
                if (n < sizeof name) {
                    memcpy(name, s + 1, n);
                    name[n] = 0;
                    if (!strcmp(name, "prompt")) {
                        judge_sbuf_add(&b, prompt ? prompt : "", prompt ? strlen(prompt) : 0);
                    } else if (!strcmp(name, "completion")) {
                        judge_sbuf_add(&b, completion ? completion : "", completion ? strlen(completion) : 0);
                    } else {
                        json_t *f = json_is_object(record) ? json_object_get(record, name) : NULL;
                        if (!f || json_is_null(f)) {
                            if (missing) *missing = strdup(name);
                            free(b.p);
                            return NULL;
                        }
                        if (json_is_string(f)) {
                            judge_sbuf_add(&b, json_string_value(f), json_string_length(f));
                        } else {
                            char *t = json_dumps(f, JSON_COMPACT | JSON_ENCODE_ANY);
                            if (t) judge_sbuf_add(&b, t, strlen(t));
                            free(t);
                        }
                    }
                    s = e + 1;
                    continue;
                }
            }
        }
        judge_sbuf_add(&b, s, 1);
        s++;
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* {"score": N} (optionally in a ``` fence), the schema answer. */
static int score_from_json_object(const char *content, double *out) {
    const char *s = content;
    while (isspace((unsigned char)*s)) s++;
    if (!strncmp(s, "```", 3)) {
        s += 3;
        while (isalpha((unsigned char)*s)) s++;
    }
    while (isspace((unsigned char)*s)) s++;
    if (*s != '{') return -1;
    json_error_t jerr;
    json_t *j = json_loads(s, JSON_DISABLE_EOF_CHECK, &jerr);
    if (!j) return -1;
    json_t *v = json_object_get(j, "score");
    int rc = -1;
    if (json_is_number(v)) {
        *out = json_number_value(v);
        rc = 0;
    }
    json_decref(j);
    return rc;
}

int judge_extract_score(const char *content, double *out) {
    if (!content) return -1;
    if (score_from_json_object(content, out) == 0) return 0;
    int found = -1;
    for (const char *s = content; *s; s++) {
        if (strncasecmp(s, "score", 5) != 0) continue;
        const char *p = s + 5;
        while (*p == ' ' || *p == '\t' || *p == '*' || *p == '"' || *p == '\'') p++;
        if (*p != ':' && *p != '=') continue;
        p++;
        while (*p == ' ' || *p == '\t' || *p == '*' || *p == '"' || *p == '\'') p++;
        if (!(isdigit((unsigned char)*p) || ((*p == '-' || *p == '+' || *p == '.') && p[1] != 0))) continue;
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno == ERANGE) continue;
        *out = x;
        found = 0;
    }
    return found;
}
