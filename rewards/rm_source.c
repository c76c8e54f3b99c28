/* rewards/rm_source.c — the "rm" (in-process reward model) and "remote_rm" (OpenRLHF-style HTTP API)
 * reward sources.
 *
 *   {"type":"rm", "path":"RM.safetensors", "batch_size":16}
 *       r = the RM's scalar for prompt + completion (rewards/rm/rm.h), batched forward in this process.
 *   {"type":"remote_rm", "url":"http://host:port", "batch_size":64, "call_timeout_ms":30000, "retries":2,
 *    "label_field":"answer", "api_key_env":"NAME"}   (api_key_env: sent as Authorization: Bearer $NAME)
 *       POST {url}/get_reward  {"query":[prompt+completion...], "prompts":[prompt...], "labels":[record[label_field]
 *       or ""...]}  ->  {"rewards":[...]}; served by `rlhf serve --reward-model RM`. `url` is a base URL or
 *       OpenRLHF's full .../get_reward one. A failed call (after the retries on connection errors, 5xx and
 *       429, each waiting the server's Retry-After when it is longer than the backoff, up to 60 s) marks
 *       every item of that request ERROR with the reason (http_429 when still rate limited).
 *   {"type":"capitals", "measure":"capitals"|"words"}
 *       the synthetic preference task's ground truth (prompts/prompts.h): "capitals" (default,
 *       prompt_capitals_truth) the share of the completion's letters in upper case, 0 when it has none;
 *       "words" (prompt_capitals_word_share) the share of its words that are real words of the task. Give
 *       them weight 0 to log them next to an RM's reward (reward/<name>/mean) and see whether optimising
 *       the RM improves the real property or games it. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "prompts/prompts.h"
#include "rewards/rm/rm.h"
#include "rewards/rewards_int.h"

/* -------------------------------------------------------------------------------------- rm */

typedef struct rm_source {
    reward_model *rm;
} rm_source;

static char *join2(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

static int rm_source_score(void *ctx, const rlhf_reward_item *items, size_t n, double *scores_out,
                           rlhf_reward_status *status_out) {
    rm_source *s = ctx;
    char **texts = calloc(n ? n : 1, sizeof *texts);
    int rc = texts ? 0 : -1;
    for (size_t i = 0; !rc && i < n; i++)
        if (!(texts[i] = join2(items[i].prompt ? items[i].prompt : "", items[i].completion ? items[i].completion : "")))
            rc = -1;
    rlhf_error err = {0};
    if (!rc) rc = reward_model_score(s->rm, (const char *const *)texts, (int)n, scores_out, &err);
    for (size_t i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    if (rc) {
        rlhf_reward_status_set(&status_out[0], RLHF_REWARD_ERROR, "rm: %s", err.msg[0] ? err.msg : "out of memory");
        return -1;
    }
    return 0;
}

static void rm_source_destroy(void *ctx) {
    rm_source *s = ctx;
    if (!s) return;
    reward_model_destroy(&s->rm);
    free(s);
}

static const rlhf_reward_plugin_v1 rm_vtable = {
    .abi_version = RLHF_REWARD_ABI_VERSION,
    .struct_size = sizeof(rlhf_reward_plugin_v1),
    .name = "rm",
    .score_batch = rm_source_score,
    .destroy = rm_source_destroy,
};

int reward_source_rm_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"path", "batch_size", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    const char *path = NULL;
    int64_t batch = 16;
    if ((rc = reward_get_string(src, "path", where, 1, &path, err))) return rc;
    if ((rc = reward_get_int(src, "batch_size", where, 0, &batch, err))) return rc;
    if (batch < 1 || batch > 4096) {
        char w[300];
        snprintf(w, sizeof w, "%s.batch_size", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be in 1..4096, got %lld", (long long)batch);
    }
    rm_source *s = calloc(1, sizeof *s);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    if ((rc = reward_model_load(&s->rm, path, (int)batch, err))) {
        free(s);
        return rc;
    }
    impl->plugin = &rm_vtable;
    impl->ctx = s;
    return 0;
}

/* ------------------------------------------------------------------------------- remote_rm */

enum { REMOTE_RM_MAX_RETRY_AFTER_MS = 60000 }; /* a longer Retry-After fails the call instead of blocking */

typedef struct remote_rm {
    char url[1100];
    int batch_size, call_timeout_ms, retries;
    char label_field[64];
    CURL *easy;
    struct curl_slist *headers;
} remote_rm;

typedef struct { char *p; size_t n; int too_big; double retry_after_ms; } body_buf;

/* Retry-After of a 429/503: seconds or an HTTP date. */
static size_t remote_on_header(char *d, size_t s, size_t m, void *ud) {
    body_buf *b = ud;
    size_t k = s * m;
    if (k > 12 && !strncasecmp(d, "Retry-After:", 12)) {
        char v[128];
        size_t n = k - 12 < sizeof v - 1 ? k - 12 : sizeof v - 1;
        memcpy(v, d + 12, n);
        v[n] = 0;
        char *t = v;
        while (*t == ' ' || *t == '\t') t++;
        for (char *e = t + strlen(t); e > t && isspace((unsigned char)e[-1]);) *--e = 0;
        if (isdigit((unsigned char)*t)) b->retry_after_ms = strtod(t, NULL) * 1000.0;
        else {
            time_t when = curl_getdate(t, NULL);
            if (when > 0) b->retry_after_ms = fmax(0, difftime(when, time(NULL)) * 1000.0);
        }
    }
    return k;
}

static size_t remote_on_body(char *d, size_t s, size_t m, void *ud) {
    body_buf *b = ud;
    size_t k = s * m;
    if (b->n + k > (64u << 20)) {
        b->too_big = 1;
        return 0;
    }
    char *q = realloc(b->p, b->n + k + 1);
    if (!q) return 0;
    b->p = q;
    memcpy(b->p + b->n, d, k);
    b->n += k;
    b->p[b->n] = 0;
    return k;
}

/* One POST for items[0..n); 0 and scores, or -1 with a reason. */
static int remote_call(remote_rm *s, const rlhf_reward_item *items, size_t n, double *scores, char *reason,
                       size_t rcap) {
    json_t *q = json_array(), *p = json_array(), *l = json_array();
    for (size_t i = 0; i < n; i++) {
        const char *pr = items[i].prompt ? items[i].prompt : "", *co = items[i].completion ? items[i].completion : "";
        char *txt = join2(pr, co);
        json_array_append_new(q, json_string(txt ? txt : ""));
        free(txt);
        json_array_append_new(p, json_string(pr));
        const char *label = "";
        json_t *rec = json_loads(items[i].record_json ? items[i].record_json : "{}", 0, NULL);
        json_t *lv = json_object_get(rec, s->label_field);
        char *dumped = NULL;
        if (json_is_string(lv)) label = json_string_value(lv);
        else if (lv) label = dumped = json_dumps(lv, JSON_COMPACT | JSON_ENCODE_ANY);
        json_array_append_new(l, json_string(label ? label : ""));
        free(dumped);
        json_decref(rec);
    }
    json_t *req = json_pack("{s:o, s:o, s:o}", "query", q, "prompts", p, "labels", l);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    reason[0] = 0;
    if (!body) {
        snprintf(reason, rcap, "internal: could not encode the request (texts must be UTF-8)");
        return -1;
    }
    double deadline = 0; /* the earliest item deadline bounds every attempt */
    for (size_t i = 0; i < n; i++)
        if (items[i].deadline > 0 && (deadline == 0 || items[i].deadline < deadline)) deadline = items[i].deadline;
    int rc = -1;
    double wait_ms = 0; /* before the next attempt: the backoff, or the server's Retry-After when longer */
    for (int attempt = 0; attempt <= s->retries; attempt++) {
        if (attempt) {
            double backoff = (double)(100u << (attempt - 1 < 6 ? attempt - 1 : 6));
            double d = wait_ms > backoff ? wait_ms : backoff;
            if (d > REMOTE_RM_MAX_RETRY_AFTER_MS) {
                snprintf(reason + strlen(reason), rcap - strlen(reason), "; Retry-After %.0f ms is more than %d",
                         d, REMOTE_RM_MAX_RETRY_AFTER_MS);
                break;
            }
            if (deadline > 0 && rlhf_now() + d / 1000.0 >= deadline) {
                snprintf(reason + strlen(reason), rcap - strlen(reason), "; no time left before the deadline to retry");
                break;
            }
            usleep((useconds_t)(d * 1000.0));
        }
        long timeout_ms = s->call_timeout_ms;
        if (deadline > 0) {
            double left = (deadline - rlhf_now()) * 1000.0;
            if (left < 1) {
                if (attempt == 0 || !reason[0]) snprintf(reason, rcap, "timeout: the deadline passed before the call");
                break;
            }
            if (left < timeout_ms) timeout_ms = (long)left;
        }
        body_buf b = {.retry_after_ms = -1};
        char cerr[CURL_ERROR_SIZE] = "";
        curl_easy_reset(s->easy);
        curl_easy_setopt(s->easy, CURLOPT_URL, s->url);
        curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->headers);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, remote_on_body);
        curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(s->easy, CURLOPT_HEADERFUNCTION, remote_on_header);
        curl_easy_setopt(s->easy, CURLOPT_HEADERDATA, &b);
        /* one request per attempt: on a kept-alive connection that dies, libcurl re-sends the POST itself */
        curl_easy_setopt(s->easy, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
        curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s->easy, CURLOPT_ERRORBUFFER, cerr);
        CURLcode res = curl_easy_perform(s->easy);
        long status = 0;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
        if (res != CURLE_OK) {
            snprintf(reason, rcap, "%s: %.120s", res == CURLE_OPERATION_TIMEDOUT ? "timeout" : "connect",
                     cerr[0] ? cerr : curl_easy_strerror(res));
            free(b.p);
            continue; /* retried */
        }
        wait_ms = b.retry_after_ms > 0 ? b.retry_after_ms : 0;
        if (status == 429) {
            snprintf(reason, rcap, "http_429: rate limited (HTTP 429) by %.80s, %d attempts", s->url, attempt + 1);
            free(b.p);
            continue;
        }
        if (status >= 500 || status == 408) {
            snprintf(reason, rcap, "http_5xx: HTTP %ld from %.80s, %d attempts", status, s->url, attempt + 1);
            free(b.p);
            continue;
        }
        json_t *j = b.p ? json_loads(b.p, 0, NULL) : NULL;
        free(b.p);
        json_t *rw = json_object_get(j, "rewards");
        if (status != 200) snprintf(reason, rcap, "http_4xx: HTTP %ld from %.100s", status, s->url);
        else if (!j) snprintf(reason, rcap, "non_json: the /get_reward answer is not JSON");
        else if (!json_is_array(rw) || json_array_size(rw) != n)
            snprintf(reason, rcap, "bad_shape: expected \"rewards\" with %zu numbers", n);
        else {
            rc = 0;
            for (size_t i = 0; i < n; i++) {
                json_t *x = json_array_get(rw, i);
                /* OpenRLHF servers may answer a reward as [r]: accept a one-element list. */
                if (json_is_array(x) && json_array_size(x) == 1) x = json_array_get(x, 0);
                if (!json_is_number(x) || !isfinite(json_number_value(x))) {
                    snprintf(reason, rcap, "bad_shape: rewards[%zu] is not a finite number", i);
                    rc = -1;
                    break;
                }
                scores[i] = json_number_value(x);
            }
        }
        json_decref(j);
        break; /* answered: not retried */
    }
    free(body);
    return rc;
}

static int remote_rm_score(void *ctx, const rlhf_reward_item *items, size_t n, double *scores_out,
                           rlhf_reward_status *status_out) {
    remote_rm *s = ctx;
    for (size_t i0 = 0; i0 < n; i0 += (size_t)s->batch_size) {
        size_t nb = n - i0 < (size_t)s->batch_size ? n - i0 : (size_t)s->batch_size;
        char reason[RLHF_REWARD_REASON_MAX];
        if (remote_call(s, items + i0, nb, scores_out + i0, reason, sizeof reason) != 0)
            for (size_t i = i0; i < i0 + nb; i++) {
                scores_out[i] = 0;
                rlhf_reward_status_set(&status_out[i], RLHF_REWARD_ERROR, "%s", reason);
            }
    }
    return 0;
}

static void remote_rm_destroy(void *ctx) {
    remote_rm *s = ctx;
    if (!s) return;
    if (s->easy) curl_easy_cleanup(s->easy);
    for (struct curl_slist *h = s->headers; h; h = h->next) /* the Authorization header holds the key */
        if (h->data) explicit_bzero(h->data, strlen(h->data));
    curl_slist_free_all(s->headers);
    free(s);
    curl_global_cleanup();
}

static const rlhf_reward_plugin_v1 remote_rm_vtable = {
    .abi_version = RLHF_REWARD_ABI_VERSION,
    .struct_size = sizeof(rlhf_reward_plugin_v1),
    .name = "remote_rm",
    .score_batch = remote_rm_score,
    .destroy = remote_rm_destroy,
};

int reward_source_remote_rm_create(const json_t *src, const char *where, reward_source_impl *impl,
                                   rlhf_error *err) {
    static const char *const keys[] = {"url", "batch_size", "call_timeout_ms", "retries", "label_field", "api_key_env", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    const char *url = NULL, *label = "answer", *key_env = NULL;
    int64_t batch = 64, timeout = 30000, retries = 2;
    char w[300];
    if ((rc = reward_get_string(src, "url", where, 1, &url, err)) ||
        (rc = reward_get_int(src, "batch_size", where, 0, &batch, err)) ||
        (rc = reward_get_int(src, "call_timeout_ms", where, 0, &timeout, err)) ||
        (rc = reward_get_int(src, "retries", where, 0, &retries, err)) ||
        (rc = reward_get_string(src, "label_field", where, 0, &label, err)) ||
        (rc = reward_get_string(src, "api_key_env", where, 0, &key_env, err)))
        return rc;
    /* a server started with `rlhf serve --api-key-env` wants the key as a Bearer token */
    const char *key = key_env && key_env[0] ? getenv(key_env) : NULL;
    if (key_env && key_env[0] && (!key || !key[0])) {
        snprintf(w, sizeof w, "%s.api_key_env", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "environment variable %s is not set (or empty)", key_env);
    }
    if (batch < 1 || batch > 65536) {
        snprintf(w, sizeof w, "%s.batch_size", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "must be in 1..65536, got %lld", (long long)batch);
    }
    if (timeout < 1 || retries < 0 || retries > 20) {
        snprintf(w, sizeof w, "%s.%s", where, timeout < 1 ? "call_timeout_ms" : "retries");
        return rlhf_error_set(err, RLHF_EINVAL, w, "out of range");
    }
    /* The URL must parse as http(s) with a host: a typo is a config error, not 10 000 failed calls. */
    snprintf(w, sizeof w, "%s.url", where);
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    int bad = !u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
              curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
              curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
              (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0);
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    if (bad) return rlhf_error_set(err, RLHF_EINVAL, w, "'%s' is not an http(s) URL", url);
    if (strlen(url) > 1000 || strlen(label) >= 64) return rlhf_error_set(err, RLHF_EINVAL, w, "too long");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return RLHF_FAIL(err, RLHF_EINVAL, "curl_global_init failed");
    remote_rm *s = calloc(1, sizeof *s);
    if (!s) {
        curl_global_cleanup();
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    /* a base URL (http://host:port) or OpenRLHF's full one (http://host:port/get_reward) */
    size_t ul = strlen(url);
    while (ul > 0 && url[ul - 1] == '/') ul--;
    if (ul >= 11 && !strncmp(url + ul - 11, "/get_reward", 11)) snprintf(s->url, sizeof s->url, "%.*s", (int)ul, url);
    else snprintf(s->url, sizeof s->url, "%.*s/get_reward", (int)ul, url);
    s->batch_size = (int)batch;
    s->call_timeout_ms = (int)timeout;
    s->retries = (int)retries;
    snprintf(s->label_field, sizeof s->label_field, "%s", label);
    s->easy = curl_easy_init();
    s->headers = curl_slist_append(NULL, "Content-Type: application/json");
    s->headers = curl_slist_append(s->headers, "Expect:");
    if (key && s->headers) {
        size_t hl = strlen(key) + 32;
        char *h = malloc(hl);
        if (h) {
            snprintf(h, hl, "Authorization: Bearer %s", key);
            s->headers = curl_slist_append(s->headers, h);
            explicit_bzero(h, hl);
            free(h);
        }
    }
    if (!s->easy || !s->headers) {
        remote_rm_destroy(s);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    impl->plugin = &remote_rm_vtable;
    impl->ctx = s;
    return 0;
}

/* -------------------------------------------------------------------------------- capitals */

typedef struct capitals_source {
    int words; /* 0: share of capitals, 1: share of real words */
} capitals_source;

static int capitals_score(void *ctx, const rlhf_reward_item *items, size_t n, double *scores_out,
                          rlhf_reward_status *status_out) {
    const capitals_source *c = ctx;
    (void)status_out;
    for (size_t i = 0; i < n; i++) {
        const char *t = items[i].completion ? items[i].completion : "";
        scores_out[i] = c->words ? prompt_capitals_word_share(t) : prompt_capitals_truth(t);
    }
    return 0;
}

static void capitals_destroy(void *ctx) { free(ctx); }

static const rlhf_reward_plugin_v1 capitals_vtable = {
    .abi_version = RLHF_REWARD_ABI_VERSION,
    .struct_size = sizeof(rlhf_reward_plugin_v1),
    .name = "capitals",
    .score_batch = capitals_score,
    .destroy = capitals_destroy,
};

int reward_source_capitals_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err) {
    static const char *const keys[] = {"measure", NULL};
    int rc = reward_check_keys(src, where, keys, err);
    if (rc) return rc;
    const char *measure = "capitals";
    if ((rc = reward_get_string(src, "measure", where, 0, &measure, err))) return rc;
    if (strcmp(measure, "capitals") != 0 && strcmp(measure, "words") != 0) {
        char w[300];
        snprintf(w, sizeof w, "%s.measure", where);
        return rlhf_error_set(err, RLHF_EINVAL, w, "expected \"capitals\" or \"words\", got \"%s\"", measure);
    }
    capitals_source *c = calloc(1, sizeof *c);
    if (!c) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    c->words = !strcmp(measure, "words");
    impl->plugin = &capitals_vtable;
    impl->ctx = c;
    return 0;
}
