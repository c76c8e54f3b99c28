/* tests/judge/fault/fault_http_server.c — a FAULT-INJECTING OpenAI-compatible chat server for testing
 * the judge client. It is not a model: it answers POST /v1/chat/completions with a score taken from the
 * request text, or with a fault chosen per request. Real HTTP (libmicrohttpd), a separate process.
 *
 *   fault_http_server [--port P] [--latency-ms L] [--fault-rate F] [--seed S] [--retry-after S]
 *                     [--slow-ms MS] [--no-response-format] [--require-key-env NAME]
 *
 * Prints "fault_http_server: listening on 127.0.0.1:PORT" on stdout once ready (P = 0 picks a port).
 *
 * Per-request control: directives of the form key=value anywhere in the last user message:
 *   fault=none|429|500|503|slow|truncate|nonjson|wrongshape|outofrange|noscore|echo_auth|400|big|close
 *                  (close: the connection is closed without a reply)|redirect (307 to /v2/chat/completions
 *                  of this server: a client that follows it is counted in /stats "redirected")
 *   times=N        apply the fault only to the first N requests with this same message (then answer)
 *   score=X        the score to answer with (default 5)
 *   retry_after=S  Retry-After seconds on 429/503 (default --retry-after, 1)
 *   pad=N cut=K bare=1  echo_auth: N blanks before the echo, only K characters of the header value, the
 *                  value without "Bearer "
 * Without a fault directive, --fault-rate F injects a random fault from
 * {429, 500, 503, slow, truncate, nonjson, wrongshape, outofrange} into a fraction F of requests.
 * The answer is {"score": X} as the message content when the request carries a response_format (unless
 * --no-response-format, which refuses such requests with 400), else the text "...\nscore: X".
 * --latency-ms delays every answer (the fixed-latency peer of bench_judge).
 * POST /get_reward answers the remote reward-model API (see get_reward below).
 * GET /stats returns request counts per fault; GET /v1/models lists one model; GET /health says ok. */
#include <microhttpd.h>
#include <jansson.h>
#include <ctype.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "common/common.h"

enum fault {
    F_NONE, F_429, F_500, F_503, F_SLOW, F_TRUNCATE, F_NONJSON, F_WRONGSHAPE, F_OUTOFRANGE, F_NOSCORE,
    F_ECHO_AUTH, F_400, F_BIG, F_CLOSE, F_REDIRECT, F_N
};
static const char *const fault_names[F_N] = {"none",       "429",        "500",        "503",      "slow",
                                             "truncate",   "nonjson",    "wrongshape", "outofrange", "noscore",
                                             "echo_auth",  "400",        "big",        "close",      "redirect"};
static const enum fault random_faults[] = {F_429, F_500, F_503, F_SLOW, F_TRUNCATE, F_NONJSON, F_WRONGSHAPE,
                                           F_OUTOFRANGE};

#define SEEN_SLOTS 65536
typedef struct server_state {
    int latency_ms, slow_ms, retry_after_s, no_rf;
    double fault_rate;
    const char *required_key; /* from the environment, may be NULL */
    pthread_mutex_t mu;
    rlhf_rng rng;
    uint64_t seen_hash[SEEN_SLOTS]; /* message hash -> requests seen, for times=N */
    int seen_count[SEEN_SLOTS];
    long requests, chat_requests, auth_failures, rf_requests, redirected, rm_requests;
    long by_fault[F_N];
} server_state;

typedef struct upload {
    char *p;
    size_t len;
    int too_big;
} upload;

#define MAX_UPLOAD (1 << 20)

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h | 1;
}

static int seen_inc(server_state *st, const char *msg) {
    uint64_t h = hash_str(msg);
    size_t i = h & (SEEN_SLOTS - 1);
    for (size_t probe = 0; probe < SEEN_SLOTS; probe++, i = (i + 1) & (SEEN_SLOTS - 1)) {
        if (st->seen_hash[i] == h) return ++st->seen_count[i];
        if (st->seen_hash[i] == 0) {
            st->seen_hash[i] = h;
            return st->seen_count[i] = 1;
        }
    }
    return 1;
}

static const char *directive(const char *text, const char *key, char *buf, size_t cap) {
    size_t kl = strlen(key);
    for (const char *p = strstr(text, key); p; p = strstr(p + 1, key)) {
        if (p != text && (isalnum((unsigned char)p[-1]) || p[-1] == '_')) continue;
        if (p[kl] != '=') continue;
        const char *v = p + kl + 1;
        size_t n = 0;
        while (v[n] && (isalnum((unsigned char)v[n]) || v[n] == '.' || v[n] == '-' || v[n] == '_') && n + 1 < cap) n++;
        memcpy(buf, v, n);
        buf[n] = 0;
        return buf;
    }
    return NULL;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *ctype, const char *body,
                                 const char *retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", ctype);
    if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *j, const char *retry_after) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    enum MHD_Result ret = send_text(c, status, "application/json", s ? s : "{}", retry_after);
    free(s);
    return ret;
}

static json_t *error_body(const char *msg, const char *type) {
    return json_pack("{s:{s:s, s:s}}", "error", "message", msg, "type", type);
}

typedef struct truncated_body {
    char *p;
    size_t len, cut;
} truncated_body;

static ssize_t truncated_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    truncated_body *t = cls;
    if (pos >= t->cut) return MHD_CONTENT_READER_END_WITH_ERROR; /* close before Content-Length bytes */
    size_t n = t->cut - pos < max ? t->cut - pos : max;
    memcpy(buf, t->p + pos, n);
    return (ssize_t)n;
}

static void truncated_free(void *cls) {
    truncated_body *t = cls;
    free(t->p);
    free(t);
}

static json_t *completion_json(const char *content) {
    return json_pack("{s:s, s:s, s:i, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:i, s:i, s:i}}", "id", "fault-1",
                     "object", "chat.completion", "created", 0, "model", "fault-injector", "choices", "index", 0,
                     "message", "role", "assistant", "content", content, "finish_reason", "stop", "usage",
                     "prompt_tokens", 1, "completion_tokens", 1, "total_tokens", 2);
}

/* POST /get_reward (the remote reward-model API): {"query": [...]} -> {"rewards": [...]}, each the query's
 * score=X (default 0.5); fault=429|503 (with times=N, retry_after=S) in the first query. */
static enum MHD_Result get_reward(server_state *st, struct MHD_Connection *c, const upload *up) {
    json_t *req = json_loadb(up->p ? up->p : "", up->len, 0, NULL);
    json_t *q = json_object_get(req, "query");
    if (!json_is_array(q)) {
        json_decref(req);
        return send_json(c, 400, error_body("query must be an array", "invalid_request_error"), NULL);
    }
    const char *first = json_string_value(json_array_get(q, 0));
    char buf[64], ra[80];
    snprintf(ra, sizeof ra, "%d", st->retry_after_s);
    enum fault f = F_NONE;
    pthread_mutex_lock(&st->mu);
    st->rm_requests++;
    if (first && directive(first, "fault", buf, sizeof buf)) {
        if (!strcmp(buf, "429")) f = F_429;
        if (!strcmp(buf, "503")) f = F_503;
        int seen = seen_inc(st, first);
        char tb[32];
        if (directive(first, "times", tb, sizeof tb) && seen > atoi(tb)) f = F_NONE;
    }
    st->by_fault[f]++;
    pthread_mutex_unlock(&st->mu);
    if (first && directive(first, "retry_after", buf, sizeof buf)) snprintf(ra, sizeof ra, "%s", buf);
    if (f != F_NONE) {
        json_decref(req);
        return send_json(c, f == F_429 ? 429 : 503, error_body(f == F_429 ? "rate limited" : "overloaded", "server_error"), ra);
    }
    json_t *rw = json_array();
    size_t i;
    json_t *x;
    json_array_foreach(q, i, x) {
        const char *t = json_string_value(x);
        json_array_append_new(rw, json_real(t && directive(t, "score", buf, sizeof buf) ? strtod(buf, NULL) : 0.5));
    }
    json_decref(req);
    return send_json(c, 200, json_pack("{s:o}", "rewards", rw), NULL);
}

static enum MHD_Result chat(server_state *st, struct MHD_Connection *c, const upload *up) {
    json_error_t jerr;
    json_t *req = json_loadb(up->p ? up->p : "", up->len, 0, &jerr);
    if (!req) return send_json(c, 400, error_body("request body is not JSON", "invalid_request_error"), NULL);
    json_t *msgs = json_object_get(req, "messages");
    const char *text = NULL;
    for (size_t i = json_array_size(msgs); i-- > 0;) {
        json_t *m = json_array_get(msgs, i);
        if (json_is_string(json_object_get(m, "content")) &&
            !strcmp(json_string_value(json_object_get(m, "role")) ? json_string_value(json_object_get(m, "role")) : "",
                    "user")) {
            text = json_string_value(json_object_get(m, "content"));
            break;
        }
    }
    if (!text) {
        json_decref(req);
        return send_json(c, 400, error_body("no user message", "invalid_request_error"), NULL);
    }
    int has_rf = json_object_get(req, "response_format") != NULL;
    char buf[64], ra[80];
    double score = 5;
    if (directive(text, "score", buf, sizeof buf)) score = strtod(buf, NULL);
    snprintf(ra, sizeof ra, "%d", st->retry_after_s);
    if (directive(text, "retry_after", buf, sizeof buf)) snprintf(ra, sizeof ra, "%s", buf);
    enum fault f = F_NONE;
    int explicit = 0;
    if (directive(text, "fault", buf, sizeof buf)) {
        for (int k = 0; k < F_N; k++)
            if (!strcmp(buf, fault_names[k])) f = (enum fault)k, explicit = 1;
    }
    pthread_mutex_lock(&st->mu);
    st->chat_requests++;
    if (has_rf) st->rf_requests++;
    int seen = seen_inc(st, text);
    if (explicit) {
        char tb[32];
        if (directive(text, "times", tb, sizeof tb) && seen > atoi(tb)) f = F_NONE;
    } else if (st->fault_rate > 0 && rlhf_rng_uniform(&st->rng) < st->fault_rate) {
        f = random_faults[rlhf_rng_u64(&st->rng) % (sizeof random_faults / sizeof random_faults[0])];
    }
    st->by_fault[f]++;
    pthread_mutex_unlock(&st->mu);

    if (st->latency_ms > 0) usleep((useconds_t)st->latency_ms * 1000);
    if (has_rf && st->no_rf) {
        json_decref(req);
        return send_json(c, 400, error_body("response_format is not supported by this server", "invalid_request_error"),
                         NULL);
    }
    if (f == F_SLOW) usleep((useconds_t)st->slow_ms * 1000);
    if (f == F_OUTOFRANGE) score = score * 100 + 1000;
    char content[256];
    if (f == F_NOSCORE) snprintf(content, sizeof content, "I would rather not grade this answer.");
    else if (has_rf) snprintf(content, sizeof content, "{\"score\": %.17g}", score);
    else snprintf(content, sizeof content, "The answer was checked.\nscore: %.17g", score);
    enum MHD_Result ret;
    switch (f) {
    case F_CLOSE: ret = MHD_NO; break;
    case F_REDIRECT: {
        struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", "/v2/chat/completions");
        ret = MHD_queue_response(c, 307, r);
        MHD_destroy_response(r);
        break;
    }
    case F_429: ret = send_json(c, 429, error_body("rate limited", "rate_limit_error"), ra); break;
    case F_500: ret = send_json(c, 500, error_body("internal error", "server_error"), NULL); break;
    case F_503: ret = send_json(c, 503, error_body("overloaded", "server_error"), ra); break;
    case F_400: ret = send_json(c, 400, error_body("bad request", "invalid_request_error"), NULL); break;
    case F_NONJSON: ret = send_text(c, 200, "text/html", "<html><body>502 Bad Gateway</body></html>", NULL); break;
    case F_WRONGSHAPE: ret = send_json(c, 200, json_pack("{s:s, s:f}", "result", "ok", "score", score), NULL); break;
    case F_ECHO_AUTH: {
        /* pad=N: N filler characters first (moves the key across every cut a client makes); cut=K: only
         * the first K characters of the header value (a server that truncates); bare=1: without
         * "Bearer " (the key alone) */
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        char pb[32], cb[32], bb[8], msg[2048];
        int pad = directive(text, "pad", pb, sizeof pb) ? atoi(pb) : 0;
        int cut = directive(text, "cut", cb, sizeof cb) ? atoi(cb) : -1;
        const char *v = auth ? auth : "(none)";
        if (directive(text, "bare", bb, sizeof bb) && !strncmp(v, "Bearer ", 7)) v += 7;
        if (pad < 0 || pad > 1000) pad = 0;
        int vl = (int)strlen(v);
        if (cut >= 0 && cut < vl) vl = cut;
        snprintf(msg, sizeof msg, "%*sIncorrect API key provided: %.*s", pad, "", vl, v);
        ret = send_json(c, 401, error_body(msg, "invalid_request_error"), NULL);
        break;
    }
    case F_BIG: {
        size_t n = 2u << 20;
        char *big = malloc(n + 1);
        memset(big, 'x', n);
        big[n] = 0;
        ret = send_text(c, 200, "text/plain", big, NULL);
        free(big);
        break;
    }
    case F_TRUNCATE: {
        truncated_body *t = calloc(1, sizeof *t);
        json_t *full = completion_json(content);
        t->p = json_dumps(full, JSON_COMPACT);
        json_decref(full);
        t->len = strlen(t->p);
        t->cut = t->len / 2;
        struct MHD_Response *r = MHD_create_response_from_callback(t->len, 4096, truncated_reader, t, truncated_free);
        MHD_add_response_header(r, "Content-Type", "application/json");
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        break;
    }
    default: ret = send_json(c, 200, completion_json(content), NULL); break;
    }
    json_decref(req);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *data, size_t *data_size, void **con_cls) {
    (void)version;
    server_state *st = cls;
    upload *up = *con_cls;
    if (!up) {
        up = calloc(1, sizeof *up);
        *con_cls = up;
        return MHD_YES;
    }
    if (*data_size) {
        if (up->len + *data_size > MAX_UPLOAD) up->too_big = 1;
        if (!up->too_big) {
            char *q = realloc(up->p, up->len + *data_size + 1);
            if (q) {
                up->p = q;
                memcpy(up->p + up->len, data, *data_size);
                up->len += *data_size;
                up->p[up->len] = 0;
            }
        }
        *data_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&st->mu);
    st->requests++;
    if (!strcmp(url, "/v2/chat/completions")) st->redirected++;
    pthread_mutex_unlock(&st->mu);
    if (st->required_key && strcmp(url, "/health") != 0) {
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        if (!auth || strncmp(auth, "Bearer ", 7) != 0 || strcmp(auth + 7, st->required_key) != 0) {
            pthread_mutex_lock(&st->mu);
            st->auth_failures++;
            pthread_mutex_unlock(&st->mu);
            return send_json(c, 401, error_body("missing or wrong API key", "invalid_request_error"), NULL);
        }
    }
    if (up->too_big) return send_json(c, 413, error_body("request too large", "invalid_request_error"), NULL);
    if (!strcmp(method, "POST") && !strcmp(url, "/v1/chat/completions")) return chat(st, c, up);
    if (!strcmp(method, "POST") && !strcmp(url, "/get_reward")) return get_reward(st, c, up);
    if (!strcmp(method, "GET") && !strcmp(url, "/health")) return send_text(c, 200, "text/plain", "ok\n", NULL);
    if (!strcmp(method, "GET") && !strcmp(url, "/v1/models"))
        return send_json(c, 200,
                         json_pack("{s:s, s:[{s:s, s:s}]}", "object", "list", "data", "id", "fault-injector", "object",
                                   "model"),
                         NULL);
    if (!strcmp(method, "GET") && !strcmp(url, "/stats")) {
        pthread_mutex_lock(&st->mu);
        json_t *faults = json_object();
        for (int k = 0; k < F_N; k++) json_object_set_new(faults, fault_names[k], json_integer(st->by_fault[k]));
        json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "requests", (json_int_t)st->requests, "chat_requests",
                              (json_int_t)st->chat_requests, "auth_failures", (json_int_t)st->auth_failures,
                              "rf_requests", (json_int_t)st->rf_requests, "redirected", (json_int_t)st->redirected,
                              "rm_requests", (json_int_t)st->rm_requests, "faults", faults);
        pthread_mutex_unlock(&st->mu);
        return send_json(c, 200, j, NULL);
    }
    return send_json(c, 404, error_body("no such route", "invalid_request_error"), NULL);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    upload *up = *con_cls;
    if (up) {
        free(up->p);
        free(up);
        *con_cls = NULL;
    }
}

static int usage(void) {
    fprintf(stderr, "usage: fault_http_server [--port P] [--latency-ms L] [--fault-rate F] [--seed S] "
                    "[--retry-after S] [--slow-ms MS] [--no-response-format] [--require-key-env NAME]\n");
    return 2;
}

int main(int argc, char **argv) {
    static server_state st; /* large (the seen table): static storage, owned by main */
    pthread_mutex_init(&st.mu, NULL);
    st.retry_after_s = 1;
    st.slow_ms = 2000;
    int port = 0;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-response-format")) { st.no_rf = 1; continue; }
        if (!v) return usage();
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--latency-ms")) st.latency_ms = atoi(v);
        else if (!strcmp(a, "--fault-rate")) st.fault_rate = atof(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--retry-after")) st.retry_after_s = atoi(v);
        else if (!strcmp(a, "--slow-ms")) st.slow_ms = atoi(v);
        else if (!strcmp(a, "--require-key-env")) {
            st.required_key = getenv(v);
            if (!st.required_key) {
                fprintf(stderr, "fault_http_server: error: --require-key-env: %s is not set\n", v);
                return 2;
            }
        } else return usage();
        i++;
    }
    if (port < 0 || port > 65535 || st.fault_rate < 0 || st.fault_rate > 1) return usage();
    rlhf_rng_seed(&st.rng, seed);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* a crashed test must not leave the server behind */

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* every MHD thread inherits the mask; main waits below */
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL, handler, &st,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)2000, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "fault_http_server: error: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("fault_http_server: listening on 127.0.0.1:%u\n", info ? (unsigned)info->port : (unsigned)port);
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    return 0;
}
