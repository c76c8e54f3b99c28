/* rewards/judge/judge.c — the LLM-judge client: libcurl multi interface, retries with backoff and jitter,
 * Retry-After, circuit breaker, (model, rendered prompt) cache. See rewards/judge/judge.h.
 * The config, template and score parsing are in rewards/judge/judge_parse.c, the cache in
 * rewards/judge/judge_cache.c. */
#include "rewards/judge/judge.h"
#include "rewards/judge/judge_int.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define JUDGE_MAX_BODY (1u << 20) /* responses above 1 MiB are refused: a judge answers in a few lines */

enum { BREAKER_CLOSED = 0, BREAKER_OPEN = 1, BREAKER_HALF_OPEN = 2 };

struct judge_client {
    judge_config cfg;
    char name[64];
    FILE *log;
    char url[1100];
    char *api_key;            /* from the environment; wiped on destroy; never printed */
    struct curl_slist *headers;
    CURLM *multi;
    CURL **pool;              /* idle easy handles, reused for their buffers and settings */
    int n_pool;
    int rf_supported;         /* 0 once "auto" saw a schema request refused */
    judge_cache cache;
    rlhf_rng rng;
    int breaker_state, consecutive_failures, probe_in_flight;
    double breaker_open_until;
    judge_stats stats;
};

/* s with the secret masked, as a malloc'd string (NULL when out of memory): every occurrence of the API
 * key, every prefix of it of JUDGE_MASK_PREFIX or more characters (a server that echoes a header it cut
 * short), and whatever token follows "Bearer " (an echoed Authorization header, whoever's key it holds)
 * become "[redacted]". This runs on the whole text BEFORE anything cuts it to a buffer: a cut after
 * masking can only shorten "[redacted]", never leave the start of a key behind. */
#define JUDGE_MASK_PREFIX 8
typedef struct mask_buf {
    char *p;
    size_t n, cap;
} mask_buf;

static int mask_put(mask_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static char *mask_secret(const judge_client *jc, const char *s) {
    static const char mask[] = "[redacted]";
    const char *key = jc->api_key && jc->api_key[0] ? jc->api_key : NULL;
    size_t kl = key ? strlen(key) : 0, n = strlen(s);
    size_t min_prefix = kl < JUDGE_MASK_PREFIX ? kl : JUDGE_MASK_PREFIX;
    mask_buf b = {0};
    int bad = mask_put(&b, "", 0);
    for (size_t i = 0; i < n && !bad;) {
        if (!strncasecmp(s + i, "Bearer ", 7)) {
            size_t j = i + 7;
            while (j < n && s[j] == ' ') j++;
            size_t t = j;
            while (t < n && !strchr(" \"',\r\n", s[t])) t++;
            if (t > j) {
                bad = mask_put(&b, s + i, 7) || mask_put(&b, mask, sizeof mask - 1);
                i = t;
                continue;
            }
        }
        size_t l = 0;
        while (key && l < kl && i + l < n && s[i + l] == key[l]) l++;
        if (key && (l == kl || l >= min_prefix)) {
            bad = mask_put(&b, mask, sizeof mask - 1);
            i += l;
        } else {
            bad = mask_put(&b, s + i, 1);
            i++;
        }
    }
    if (bad) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* Formats, masks, then cuts to cap bytes (in this order: see mask_secret). */
__attribute__((format(printf, 4, 5))) static void masked_format(const judge_client *jc, char *dst, size_t cap,
                                                                 const char *fmt, ...) {
    char *raw = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&raw, fmt, ap);
    va_end(ap);
    char *m = n >= 0 ? mask_secret(jc, raw) : NULL;
    snprintf(dst, cap, "%s", m ? m : "(out of memory)");
    if (raw) explicit_bzero(raw, strlen(raw));
    free(raw);
    free(m);
}

__attribute__((format(printf, 2, 3))) static void jlog(const judge_client *jc, const char *fmt, ...) {
    if (!jc->log) return;
    char *raw = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&raw, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    char line[1024];
    masked_format(jc, line, sizeof line, "%s", raw);
    free(raw);
    fprintf(jc->log, "judge[%s]: %s\n", jc->name, line);
    fflush(jc->log);
}

int judge_client_create(judge_client **out, const judge_config *cfg, const char *name, FILE *log,
                        rlhf_error *err) {
    *out = NULL;
    char where[128];
    snprintf(where, sizeof where, "judge '%s'", name ? name : "judge");
    if (!cfg->base_url[0]) return rlhf_error_set(err, RLHF_EINVAL, where, "base_url is not set");
    if (!cfg->model[0]) return rlhf_error_set(err, RLHF_EINVAL, where, "model is not set");
    int rc = judge_check_base_url(cfg->base_url, where, err);
    if (rc) return rc;
    const char *key = NULL;
    if (cfg->api_key_env[0]) {
        key = getenv(cfg->api_key_env);
        if (!key || !*key)
            return rlhf_error_set(err, RLHF_EINVAL, where,
                                  "api_key_env: environment variable %s is not set (or empty)", cfg->api_key_env);
    }
    /* Reference-counted and thread-safe since libcurl 7.84; paired with curl_global_cleanup in destroy. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return rlhf_error_set(err, RLHF_EINVAL, where, "curl_global_init failed");
    judge_client *jc = calloc(1, sizeof *jc);
    if (!jc) {
        curl_global_cleanup();
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    jc->cfg = *cfg;
    jc->cfg.template_text = strdup(cfg->template_text ? cfg->template_text : judge_default_template);
    jc->cfg.system_text = cfg->system_text ? strdup(cfg->system_text) : NULL;
    snprintf(jc->name, sizeof jc->name, "%s", name ? name : "judge");
    jc->log = log;
    judge_chat_url(cfg->base_url, jc->url, sizeof jc->url);
    jc->rf_supported = cfg->response_format != JUDGE_RF_NONE;
    rlhf_rng_seed(&jc->rng, cfg->seed);
    jc->headers = curl_slist_append(NULL, "Content-Type: application/json");
    /* No "Expect: 100-continue" round trip for larger bodies. */
    jc->headers = curl_slist_append(jc->headers, "Expect:");
    if (key) {
        jc->api_key = strdup(key);
        size_t hl = strlen(key) + 32;
        char *h = malloc(hl);
        if (h) {
            snprintf(h, hl, "Authorization: Bearer %s", key);
            jc->headers = curl_slist_append(jc->headers, h);
            explicit_bzero(h, hl);
            free(h);
        }
    }
    jc->multi = curl_multi_init();
    jc->pool = calloc((size_t)cfg->concurrency, sizeof *jc->pool);
    if (!jc->cfg.template_text || !jc->headers || !jc->multi || !jc->pool || (key && !jc->api_key) ||
        judge_cache_init(&jc->cache, (size_t)cfg->cache_size) != 0) {
        judge_client_destroy(&jc);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory setting up judge '%s'", name ? name : "judge");
    }
    curl_multi_setopt(jc->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)cfg->concurrency);
    curl_multi_setopt(jc->multi, CURLMOPT_MAXCONNECTS, (long)cfg->concurrency);
    *out = jc;
    return 0;
}

void judge_client_destroy(judge_client **pjc) {
    if (!pjc || !*pjc) return;
    judge_client *jc = *pjc;
    for (int i = 0; i < jc->n_pool; i++) curl_easy_cleanup(jc->pool[i]);
    free(jc->pool);
    if (jc->multi) curl_multi_cleanup(jc->multi);
    if (jc->headers) {
        /* The Authorization header holds the key: wipe it before the list is freed. */
        for (struct curl_slist *h = jc->headers; h; h = h->next) explicit_bzero(h->data, strlen(h->data));
        curl_slist_free_all(jc->headers);
    }
    if (jc->api_key) {
        explicit_bzero(jc->api_key, strlen(jc->api_key));
        free(jc->api_key);
    }
    judge_cache_free(&jc->cache);
    judge_config_free(&jc->cfg);
    free(jc);
    *pjc = NULL;
    curl_global_cleanup();
}

const judge_stats *judge_client_stats(const judge_client *jc) { return &jc->stats; }

/* --------------------------------------------------------------------------------------- requests */

enum { REQ_WAITING = 0, REQ_IN_FLIGHT = 1, REQ_DONE = 2 };

typedef struct judge_req {
    int item;             /* the leader item this request answers */
    int state;
    char *rendered;       /* user message */
    char *key;            /* cache key: model \x1f system \x1f rendered */
    uint64_t hash;
    char *body;           /* request JSON; rebuilt after a response_format fallback */
    int with_rf;
    int attempts;
    double ready_at;      /* rlhf_now() time the next attempt may start */
    CURL *easy;
    sbuf resp;
    int too_large;
    double retry_after_ms; /* < 0: none */
    char last_error[128]; /* why the previous attempt failed, for the final reason */
    judge_reason last_reason;
    char curl_err[CURL_ERROR_SIZE];
    char location[256];    /* a 3xx's Location header, cut */
} judge_req;

static char *build_body(const judge_client *jc, const char *rendered, int with_rf) {
    json_t *msgs = json_array();
    if (jc->cfg.system_text)
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content", jc->cfg.system_text));
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", rendered));
    json_t *body = json_pack("{s:s, s:o, s:f, s:i}", "model", jc->cfg.model, "messages", msgs, "temperature",
                             jc->cfg.temperature, "max_tokens", jc->cfg.max_tokens);
    if (!body) return NULL;
    if (with_rf) {
        json_t *rf = json_pack("{s:s, s:{s:s, s:b, s:{s:s, s:{s:{s:s}}, s:[s], s:b}}}", "type", "json_schema",
                               "json_schema", "name", "judge_score", "strict", 1, "schema", "type", "object",
                               "properties", "score", "type", "number", "required", "score",
                               "additionalProperties", 0);
        json_object_set_new(body, "response_format", rf);
    }
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return s;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
    judge_req *r = ud;
    size_t n = size * nmemb;
    if (r->resp.len + n > JUDGE_MAX_BODY) {
        r->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    judge_sbuf_add(&r->resp, data, n);
    return r->resp.oom ? 0 : n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
    judge_req *r = ud;
    size_t n = size * nmemb;
    if (n > 9 && !strncasecmp(data, "Location:", 9)) {
        size_t i = 9;
        while (i < n && (data[i] == ' ' || data[i] == '\t')) i++;
        size_t m = n - i;
        while (m > 0 && isspace((unsigned char)data[i + m - 1])) m--;
        if (m > sizeof r->location - 1) m = sizeof r->location - 1;
        memcpy(r->location, data + i, m);
        r->location[m] = 0;
    }
    if (n > 12 && !strncasecmp(data, "Retry-After:", 12)) {
        char v[128];
        size_t m = n - 12 < sizeof v - 1 ? n - 12 : sizeof v - 1;
        memcpy(v, data + 12, m);
        v[m] = 0;
        char *s = v;
        while (*s == ' ' || *s == '\t') s++;
        for (char *e = s + strlen(s); e > s && isspace((unsigned char)e[-1]);) *--e = 0;
        if (isdigit((unsigned char)*s)) {
            r->retry_after_ms = strtod(s, NULL) * 1000.0;
        } else {
            time_t t = curl_getdate(s, NULL); /* HTTP-date form */
            if (t > 0) {
                double d = difftime(t, time(NULL)) * 1000.0;
                r->retry_after_ms = d > 0 ? d : 0;
            }
        }
    }
    return n;
}

static int start_attempt(judge_client *jc, judge_req *r, const judge_item *it, double now) {
    CURL *e = jc->n_pool > 0 ? jc->pool[--jc->n_pool] : curl_easy_init();
    if (!e) return -1;
    curl_easy_reset(e);
    r->easy = e;
    r->resp.len = 0;
    if (r->resp.p) r->resp.p[0] = 0;
    r->too_large = 0;
    r->retry_after_ms = -1;
    r->curl_err[0] = 0;
    r->location[0] = 0;
    long timeout = jc->cfg.call_timeout_ms;
    if (it->deadline > 0) {
        double left = (it->deadline - now) * 1000.0;
        if (left < timeout) timeout = left < 1 ? 1 : (long)left;
    }
    curl_easy_setopt(e, CURLOPT_URL, jc->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, jc->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(r->body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* One connection per attempt: on a reused connection that dies before a reply, libcurl silently sends
     * the POST again on a new one (2 items x 4 attempts reached a server as 14 requests, not 8), so a
     * retry budget would not bound what the endpoint sees. A fresh connection costs about one loopback
     * round trip (bench_judge at 0 ms latency: 1605 -> see docs/JUDGE.md); a judge call takes far longer. */
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* a redirect would carry the key to another place */
    if (curl_multi_add_handle(jc->multi, e) != CURLM_OK) {
        jc->pool[jc->n_pool++] = e;
        r->easy = NULL;
        return -1;
    }
    r->state = REQ_IN_FLIGHT;
    r->attempts++;
    jc->stats.http_requests++;
    return 0;
}

static void release_easy(judge_client *jc, judge_req *r) {
    if (!r->easy) return;
    curl_multi_remove_handle(jc->multi, r->easy);
    if (jc->n_pool < jc->cfg.concurrency) jc->pool[jc->n_pool++] = r->easy;
    else curl_easy_cleanup(r->easy);
    r->easy = NULL;
}

static void finish_error(judge_client *jc, judge_req *r, judge_item *it, judge_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void finish_error(judge_client *jc, judge_req *r, judge_item *it, judge_reason reason, const char *fmt, ...) {
    char *d = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&d, fmt, ap) < 0) d = NULL;
    va_end(ap);
    it->ok = 0;
    it->score = NAN;
    it->raw_score = NAN;
    it->reason = reason;
    /* masked whole, then cut to the detail's size */
    masked_format(jc, it->detail, sizeof it->detail, "%s: %s", judge_reason_name(reason), d ? d : "(out of memory)");
    free(d);
    it->attempts = r ? r->attempts : 0;
    if (r) r->state = REQ_DONE;
}

static void finish_ok(judge_client *jc, judge_req *r, judge_item *it, double raw) {
    it->ok = 1;
    it->raw_score = raw;
    it->score = (raw - jc->cfg.score_min) / (jc->cfg.score_max - jc->cfg.score_min);
    it->reason = JUDGE_OK;
    it->detail[0] = 0;
    it->attempts = r->attempts;
    r->state = REQ_DONE;
    judge_cache_put(&jc->cache, r->hash, r->key, raw);
}

static void breaker_result(judge_client *jc, int failed, double now) {
    if (!failed) {
        if (jc->breaker_state != BREAKER_CLOSED) jlog(jc, "circuit closed: the endpoint answered again");
        jc->breaker_state = BREAKER_CLOSED;
        jc->consecutive_failures = 0;
        return;
    }
    jc->consecutive_failures++;
    if (jc->breaker_state == BREAKER_HALF_OPEN ||
        (jc->breaker_state == BREAKER_CLOSED && jc->consecutive_failures >= jc->cfg.breaker_failures)) {
        if (jc->breaker_state == BREAKER_CLOSED) jc->stats.breaker_opens++;
        jc->breaker_state = BREAKER_OPEN;
        jc->breaker_open_until = now + jc->cfg.breaker_cooldown_ms / 1000.0;
        jlog(jc, "circuit open after %d consecutive failures; failing fast for %d ms", jc->consecutive_failures,
             jc->cfg.breaker_cooldown_ms);
    }
}

/* 1: may start, 0: must wait (a half-open probe is out), -1: refused. */
static int breaker_allow(judge_client *jc, double now) {
    if (jc->breaker_state == BREAKER_CLOSED) return 1;
    if (jc->breaker_state == BREAKER_OPEN) {
        if (now < jc->breaker_open_until) return -1;
        jc->breaker_state = BREAKER_HALF_OPEN;
        jc->probe_in_flight = 0;
        jlog(jc, "circuit half-open: sending one probe request");
    }
    if (jc->probe_in_flight) return 0;
    return 1;
}

/* A transient failure: schedule another attempt, or end the item with `reason`. */
static void retry_or_fail(judge_client *jc, judge_req *r, judge_item *it, judge_reason reason, double now,
                          const char *what) {
    r->last_reason = reason;
    snprintf(r->last_error, sizeof r->last_error, "%s", what);
    if (r->attempts > jc->cfg.retries) {
        finish_error(jc, r, it, reason, "%s after %d attempts", what, r->attempts);
        return;
    }
    /* Exponential backoff with "equal jitter": half the delay fixed, half uniform, so synchronised clients
     * spread out while the delay still grows. */
    double d = jc->cfg.backoff_ms;
    for (int i = 1; i < r->attempts && d < jc->cfg.backoff_max_ms; i++) d *= 2;
    if (d > jc->cfg.backoff_max_ms) d = jc->cfg.backoff_max_ms;
    d = d / 2 + rlhf_rng_uniform(&jc->rng) * d / 2;
    if (r->retry_after_ms >= 0) {
        if (r->retry_after_ms > jc->cfg.max_retry_after_ms) {
            finish_error(jc, r, it, reason, "%s with Retry-After %.0f ms > max_retry_after_ms %d", what,
                         r->retry_after_ms, jc->cfg.max_retry_after_ms);
            return;
        }
        if (r->retry_after_ms > d) d = r->retry_after_ms;
    }
    if (it->deadline > 0 && now + d / 1000.0 >= it->deadline) {
        finish_error(jc, r, it, reason, "%s after %d attempts; no time left before the deadline", what, r->attempts);
        return;
    }
    r->ready_at = now + d / 1000.0;
    r->state = REQ_WAITING;
    jc->stats.retries++;
    jlog(jc, "retry %d/%d in %.0f ms after %s", r->attempts, jc->cfg.retries, d, what);
}

static void short_server_message(const judge_client *jc, const char *body, char *out, size_t cap) {
    out[0] = 0;
    json_t *j = body ? json_loads(body, 0, NULL) : NULL;
    json_t *m = json_object_get(json_object_get(j, "error"), "message");
    if (json_is_string(m)) masked_format(jc, out, cap, ": %s", json_string_value(m)); /* masked before the cut */
    json_decref(j);
    for (char *p = out; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}

static void on_done(judge_client *jc, judge_req *r, judge_item *items, CURLcode res, double now) {
    judge_item *it = &items[r->item];
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    release_easy(jc, r);
    if (jc->breaker_state == BREAKER_HALF_OPEN) jc->probe_in_flight = 0;
    char what[400];
    if (res != CURLE_OK) {
        if (r->too_large) {
            breaker_result(jc, 0, now);
            finish_error(jc, r, it, JUDGE_ERR_TOO_LARGE, "response body over %u bytes", JUDGE_MAX_BODY);
            return;
        }
        judge_reason reason = JUDGE_ERR_CONNECT;
        if (res == CURLE_OPERATION_TIMEDOUT) reason = JUDGE_ERR_TIMEOUT;
        else if (res == CURLE_PARTIAL_FILE) reason = JUDGE_ERR_TRUNCATED;
        else if (res == CURLE_OUT_OF_MEMORY) reason = JUDGE_ERR_INTERNAL;
        snprintf(what, sizeof what, "%.150s (POST %.200s)", r->curl_err[0] ? r->curl_err : curl_easy_strerror(res), jc->url);
        breaker_result(jc, 1, now);
        retry_or_fail(jc, r, it, reason, now, what);
        return;
    }
    if (status == 429) {
        breaker_result(jc, 0, now); /* rate limited, but alive: Retry-After paces us, not the breaker */
        retry_or_fail(jc, r, it, JUDGE_ERR_HTTP_429, now, "HTTP 429");
        return;
    }
    if (status == 408 || status >= 500) {
        breaker_result(jc, 1, now);
        snprintf(what, sizeof what, "HTTP %ld", status);
        retry_or_fail(jc, r, it, JUDGE_ERR_HTTP_5XX, now, what);
        return;
    }
    breaker_result(jc, 0, now);
    if ((status == 400 || status == 422) && r->with_rf && jc->cfg.response_format == JUDGE_RF_AUTO) {
        /* The server refused the schema: use the text pattern from now on, and ask again at once. */
        if (jc->rf_supported) {
            jc->rf_supported = 0;
            jc->stats.rf_fallbacks++;
            jlog(jc, "server answered HTTP %ld to a response_format request; using the `score: N` pattern", status);
        }
        char *b = build_body(jc, r->rendered, 0);
        if (!b) {
            finish_error(jc, r, it, JUDGE_ERR_INTERNAL, "out of memory");
            return;
        }
        free(r->body);
        r->body = b;
        r->with_rf = 0;
        r->state = REQ_WAITING;
        r->ready_at = now;
        r->attempts--; /* the schema probe does not use up a retry */
        return;
    }
    if (status >= 300 && status < 400) {
        finish_error(jc, r, it, JUDGE_ERR_HTTP_3XX, "HTTP %ld from POST %s, redirecting to %s: not followed (set base_url "
                     "to where the API is)", status, jc->url, r->location[0] ? r->location : "(no Location)");
        return;
    }
    if (status < 200 || status >= 300) {
        char msg[160];
        short_server_message(jc, r->resp.p, msg, sizeof msg);
        finish_error(jc, r, it, JUDGE_ERR_HTTP_4XX, "HTTP %ld from POST %s%s", status, jc->url, msg);
        return;
    }
    json_error_t jerr;
    json_t *j = r->resp.p ? json_loadb(r->resp.p, r->resp.len, 0, &jerr) : NULL;
    if (!j) {
        finish_error(jc, r, it, JUDGE_ERR_NON_JSON, "response body is not JSON (%s)",
                     r->resp.p ? jerr.text : "empty body");
        return;
    }
    json_t *content = json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content");
    if (!json_is_string(content)) {
        json_decref(j);
        finish_error(jc, r, it, JUDGE_ERR_BAD_SHAPE, "no string at choices[0].message.content");
        return;
    }
    double raw;
    if (judge_extract_score(json_string_value(content), &raw) != 0) {
        json_decref(j);
        finish_error(jc, r, it, JUDGE_ERR_NO_SCORE, "no {\"score\": N} object or `score: N` line in the reply");
        return;
    }
    json_decref(j);
    if (!isfinite(raw) || raw < jc->cfg.score_min || raw > jc->cfg.score_max) {
        finish_error(jc, r, it, JUDGE_ERR_OUT_OF_RANGE, "score %g is outside [%g, %g]", raw, jc->cfg.score_min,
                     jc->cfg.score_max);
        return;
    }
    finish_ok(jc, r, it, raw);
}

static void free_reqs(judge_req *reqs, int n) {
    for (int i = 0; i < n; i++) {
        free(reqs[i].rendered);
        free(reqs[i].key);
        free(reqs[i].body);
        free(reqs[i].resp.p);
    }
    free(reqs);
}

int judge_score(judge_client *jc, judge_item *items, int n, rlhf_error *err) {
    if (n < 0 || (n > 0 && !items)) return RLHF_FAIL(err, RLHF_EINVAL, "judge_score: bad arguments");
    if (n == 0) return 0;
    judge_req *reqs = calloc((size_t)n, sizeof *reqs);
    int *leader = malloc((size_t)n * sizeof *leader); /* item -> request index, -1 = done without one */
    size_t tcap = 16;
    while (tcap < (size_t)n * 2) tcap *= 2;
    int *table = malloc(tcap * sizeof *table); /* open addressing: rendered key -> request index */
    if (!reqs || !leader || !table) {
        free(reqs);
        free(leader);
        free(table);
        for (int i = 0; i < n; i++) finish_error(jc, NULL, &items[i], JUDGE_ERR_INTERNAL, "out of memory");
        jc->stats.errors += (uint64_t)n;
        jc->stats.errors_by_reason[JUDGE_ERR_INTERNAL] += (uint64_t)n;
        return RLHF_FAIL(err, RLHF_ENOMEM, "judge '%s': out of memory for %d items", jc->name, n);
    }
    for (size_t i = 0; i < tcap; i++) table[i] = -1;
    int nreq = 0;
    double now = rlhf_now();
    jc->stats.judgements += (uint64_t)n;

    /* Render, answer from the cache, and send each distinct prompt once. */
    for (int i = 0; i < n; i++) {
        judge_item *it = &items[i];
        it->ok = 0;
        it->score = it->raw_score = NAN;
        it->reason = JUDGE_OK;
        it->detail[0] = 0;
        it->attempts = 0;
        it->from_cache = 0;
        leader[i] = -1;
        char *missing = NULL;
        char *rendered = judge_render(jc->cfg.template_text, it->prompt, it->completion, it->record, &missing);
        if (!rendered) {
            if (missing) finish_error(jc, NULL, it, JUDGE_ERR_TEMPLATE, "record has no field '%s'", missing);
            else finish_error(jc, NULL, it, JUDGE_ERR_INTERNAL, "out of memory");
            free(missing);
            continue;
        }
        sbuf k = {0};
        judge_sbuf_add(&k, jc->cfg.model, strlen(jc->cfg.model));
        judge_sbuf_add(&k, "\x1f", 1);
        if (jc->cfg.system_text) judge_sbuf_add(&k, jc->cfg.system_text, strlen(jc->cfg.system_text));
        judge_sbuf_add(&k, "\x1f", 1);
        judge_sbuf_add(&k, rendered, strlen(rendered));
        if (k.oom) {
            free(rendered);
            free(k.p);
            finish_error(jc, NULL, it, JUDGE_ERR_INTERNAL, "out of memory");
            continue;
        }
        uint64_t h = judge_fnv1a(k.p, k.len);
        cache_entry *ce = judge_cache_find(&jc->cache, h, k.p);
        if (ce) {
            it->ok = 1;
            it->raw_score = ce->raw;
            it->score = (ce->raw - jc->cfg.score_min) / (jc->cfg.score_max - jc->cfg.score_min);
            it->from_cache = 1;
            free(rendered);
            free(k.p);
            continue;
        }
        size_t slot = h & (tcap - 1);
        while (table[slot] >= 0 && !(reqs[table[slot]].hash == h && !strcmp(reqs[table[slot]].key, k.p)))
            slot = (slot + 1) & (tcap - 1);
        if (table[slot] >= 0) { /* same judgement already asked in this batch */
            leader[i] = table[slot];
            it->from_cache = 1;
            free(rendered);
            free(k.p);
            continue;
        }
        judge_req *r = &reqs[nreq];
        r->item = i;
        r->rendered = rendered;
        r->key = k.p;
        r->hash = h;
        r->with_rf = jc->rf_supported;
        r->body = build_body(jc, rendered, r->with_rf);
        r->ready_at = now;
        r->state = REQ_WAITING;
        if (!r->body) {
            finish_error(jc, NULL, it, JUDGE_ERR_INTERNAL, "out of memory");
            free(r->rendered);
            free(r->key);
            memset(r, 0, sizeof *r);
            continue;
        }
        table[slot] = nreq;
        leader[i] = nreq;
        nreq++;
    }
    free(table);

    /* The event loop: start what may start, let curl move bytes, collect finished transfers. */
    int in_flight = 0, n_done = 0;
    for (int q = 0; q < nreq; q++)
        if (reqs[q].state == REQ_DONE) n_done++;
    while (n_done < nreq) {
        now = rlhf_now();
        for (int q = 0; q < nreq; q++) { /* deadlines */
            judge_req *r = &reqs[q];
            judge_item *it = &items[r->item];
            if (r->state == REQ_DONE || it->deadline <= 0 || now < it->deadline) continue;
            if (r->state == REQ_IN_FLIGHT) {
                release_easy(jc, r);
                in_flight--;
                if (jc->breaker_state == BREAKER_HALF_OPEN) jc->probe_in_flight = 0;
            }
            if (r->attempts > 0 && r->last_error[0])
                finish_error(jc, r, it, JUDGE_ERR_TIMEOUT, "deadline passed (last attempt: %s)", r->last_error);
            else
                finish_error(jc, r, it, JUDGE_ERR_TIMEOUT, "deadline passed after %d attempts", r->attempts);
            n_done++;
        }
        for (int q = 0; q < nreq && in_flight < jc->cfg.concurrency; q++) { /* starts */
            judge_req *r = &reqs[q];
            if (r->state != REQ_WAITING || r->ready_at > now) continue;
            int allow = breaker_allow(jc, now);
            if (allow == 0) break;
            judge_item *it = &items[r->item];
            if (allow < 0) {
                if (r->attempts > 0)
                    finish_error(jc, r, it, JUDGE_ERR_CIRCUIT_OPEN, "endpoint failing (last attempt: %s)",
                                 r->last_error);
                else
                    finish_error(jc, r, it, JUDGE_ERR_CIRCUIT_OPEN, "endpoint failing; call not attempted");
                n_done++;
                continue;
            }
            if (start_attempt(jc, r, it, now) != 0) {
                finish_error(jc, r, it, JUDGE_ERR_INTERNAL, "could not start a curl transfer");
                n_done++;
                continue;
            }
            if (jc->breaker_state == BREAKER_HALF_OPEN) jc->probe_in_flight = 1;
            in_flight++;
        }
        if (n_done >= nreq) break;
        int running = 0;
        curl_multi_perform(jc->multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(jc->multi, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE) continue;
            judge_req *r = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
            CURLcode res = msg->data.result;
            in_flight--;
            on_done(jc, r, items, res, rlhf_now());
            if (r->state == REQ_DONE) n_done++;
        }
        if (n_done >= nreq) break;
        /* Sleep until curl has work, a retry becomes ready or a deadline passes (at most 100 ms). */
        now = rlhf_now();
        double wait = 0.1;
        /* Waiting requests only shorten the sleep when they could start: not while all slots are busy or
         * a half-open probe is out (that would spin until it returns). */
        int can_start = in_flight < jc->cfg.concurrency &&
                        !(jc->breaker_state == BREAKER_HALF_OPEN && jc->probe_in_flight);
        for (int q = 0; q < nreq; q++) {
            judge_req *r = &reqs[q];
            if (r->state == REQ_WAITING && can_start && r->ready_at - now < wait)
                wait = r->ready_at - now;
            double dl = items[r->item].deadline;
            if (r->state != REQ_DONE && dl > 0 && dl - now < wait) wait = dl - now;
        }
        if (jc->breaker_state == BREAKER_OPEN && jc->breaker_open_until - now < wait)
            wait = jc->breaker_open_until - now;
        if (wait > 0) curl_multi_poll(jc->multi, NULL, 0, (int)(wait * 1000.0) + 1, NULL);
    }

    /* Followers copy their leader's outcome; count everything. */
    for (int i = 0; i < n; i++) {
        judge_item *it = &items[i];
        if (leader[i] >= 0 && reqs[leader[i]].item != i) {
            const judge_item *L = &items[reqs[leader[i]].item];
            it->ok = L->ok;
            it->score = L->score;
            it->raw_score = L->raw_score;
            it->reason = L->reason;
            memcpy(it->detail, L->detail, sizeof it->detail);
            it->attempts = 0;
        }
        if (it->ok) {
            jc->stats.scored++;
            if (it->from_cache) jc->stats.cache_hits++;
        } else {
            jc->stats.errors++;
            jc->stats.errors_by_reason[it->reason]++;
        }
    }
    free_reqs(reqs, nreq);
    free(leader);
    return 0;
}
