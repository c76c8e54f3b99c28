/* serve/serve.c — `rlhf serve`: the OpenAI-compatible HTTP front end (libmicrohttpd, one thread per
 * connection): parsing, validation, responses and SSE streams. The worker that batches requests into the
 * model is serve/serve_decode.c. See serve/serve.h and serve/serve_int.h. */
#include "serve/serve_int.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "model/model.h"
#include "rewards/rm/rm.h"

void serve_config_default(serve_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->max_batch = 8;
    cfg->max_queue = 64;
    cfg->max_body = 1u << 20;
    cfg->max_tokens_default = 128;
    cfg->max_connections = 256;
    cfg->max_per_ip = 32;
    cfg->request_timeout = 10;
    cfg->spec_gamma = 4;
    cfg->spec_adaptive = 1;
}

/* ------------------------------------------------------------------------ request deadlines */

/* libmicrohttpd's own timeout restarts at every byte, so a client sending one byte a second holds its
 * connection (and, one thread per connection, a thread) forever. Each connection is tracked from
 * NOTIFY_CONNECTION STARTED to CLOSED; while a request is being read, a reaper thread shuts the socket
 * down once the deadline has passed, and the connection's own thread then sees the end of the stream
 * and closes it. libmicrohttpd reports CLOSED before it closes the descriptor, and both run under
 * conn_mu, so a shutdown never reaches a descriptor reused by another connection. */
typedef struct serve_conn {
    struct serve_conn *prev, *next;
    int fd;
    int reading;    /* a request is being read (not being answered) */
    double started; /* when this request's reading began */
} serve_conn;

static void notify_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode code) {
    serve_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        serve_conn *sc = calloc(1, sizeof *sc);
        if (!sc || !ci) {
            free(sc);
            *socket_context = NULL;
            return;
        }
        sc->fd = ci->connect_fd;
        sc->reading = 1;
        sc->started = rlhf_now();
        pthread_mutex_lock(&s->conn_mu);
        sc->next = s->conns;
        if (s->conns) s->conns->prev = sc;
        s->conns = sc;
        pthread_mutex_unlock(&s->conn_mu);
        *socket_context = sc;
        return;
    }
    serve_conn *sc = *socket_context;
    if (!sc) return;
    pthread_mutex_lock(&s->conn_mu);
    if (sc->prev) sc->prev->next = sc->next;
    else s->conns = sc->next;
    if (sc->next) sc->next->prev = sc->prev;
    pthread_mutex_unlock(&s->conn_mu);
    free(sc);
    *socket_context = NULL;
}

/* The request on c has been read (reading = 0: no deadline while it is answered) or answered (1: the
 * next request on the keep-alive connection has request_timeout from now). */
static void conn_reading(serve_server *s, struct MHD_Connection *c, int reading) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    serve_conn *sc = ci ? ci->socket_context : NULL;
    if (!sc) return;
    pthread_mutex_lock(&s->conn_mu);
    sc->reading = reading;
    sc->started = rlhf_now();
    pthread_mutex_unlock(&s->conn_mu);
}

static void *reaper_main(void *arg) {
    serve_server *s = arg;
    pthread_mutex_lock(&s->conn_mu);
    while (!s->reaper_stop) {
        double now = rlhf_now();
        unsigned long closed = 0;
        for (serve_conn *sc = s->conns; sc; sc = sc->next)
            if (sc->reading && sc->fd >= 0 && now - sc->started > s->cfg.request_timeout) {
                shutdown(sc->fd, SHUT_RDWR);
                sc->fd = -1; /* once */
                closed++;
            }
        s->timed_out += closed;
        if (closed && s->log) {
            fprintf(s->log, "rlhf serve: closed %lu connection(s) whose request was not complete after %d s "
                            "(%lu in all)\n", closed, s->cfg.request_timeout, s->timed_out);
            fflush(s->log);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->reaper_cv, &s->conn_mu, &ts);
    }
    pthread_mutex_unlock(&s->conn_mu);
    return NULL;
}

/* ------------------------------------------------------------------------------------ HTTP */

typedef struct conn_state {
    char *body;
    size_t len;
    int too_big;
} conn_state;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *ctype, char *body_owned,
                             const char *retry_after) {
    size_t n = strlen(body_owned);
    struct MHD_Response *r = MHD_create_response_from_buffer(n, body_owned, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body_owned);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (retry_after) MHD_add_response_header(r, "Retry-After", retry_after);
    if (!strcmp(ctype, "text/event-stream")) MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) s = strdup("{\"error\":{\"message\":\"could not encode the response\",\"type\":\"server_error\"}}");
    return reply(c, status, "application/json", s, NULL);
}

/* An OpenAI-shaped error: {"error": {"message", "type", "param", "code"}}; code NULL = null. */
static enum MHD_Result reply_error_code(serve_server *s, struct MHD_Connection *c, unsigned status, const char *type,
                                        const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
#define reply_error(s, c, status, type, param, ...) reply_error_code((s), (c), (status), (type), (param), NULL, __VA_ARGS__)
static enum MHD_Result reply_error_code(serve_server *s, struct MHD_Connection *c, unsigned status, const char *type,
                                        const char *param, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->log) {
        fprintf(s->log, "serve: %u %s%s%s%s\n", status, msg, param ? " (param " : "", param ? param : "",
                param ? ")" : "");
        fflush(s->log);
    }
    char *safe = rlhf_utf8_sanitize(msg, strlen(msg));
    json_t *j = json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", safe ? safe : "error", "type", type,
                          "param", param ? json_string(param) : json_null(), "code", code ? json_string(code) : json_null());
    free(safe);
    if (status == 503) {
        char *b = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        return reply(c, status, "application/json", b ? b : strdup("{}"), "1");
    }
    return reply_json(c, status, j);
}

/* Reads the sampling fields shared by both completion routes. 0, or -1 after replying 400. */
static int parse_sampling(serve_server *s, struct MHD_Connection *c, json_t *req, serve_job *j, unsigned long id,
                          int *stream, enum MHD_Result *ret) {
    sample_params p = sample_params_default();
    p.max_new_tokens = s->cfg.max_tokens_default;
    p.seed = 0x5eed0000ull + id; /* distinct per request unless the client gives one */
    const char *key;
    json_t *v;
    *stream = 0;
#define BAD(param, ...)                                                                      \
    do {                                                                                      \
        *ret = reply_error(s, c, 400, "invalid_request_error", param, __VA_ARGS__);         \
        return -1;                                                                            \
    } while (0)
    json_object_foreach(req, key, v) {
        if (json_is_null(v)) continue; /* OpenAI: an explicit null is the default */
        if (!strcmp(key, "max_tokens") || !strcmp(key, "max_completion_tokens")) {
            if (!json_is_integer(v)) BAD(key, "Invalid '%s': expected an integer", key);
            if (json_integer_value(v) < 1)
                BAD(key, "Invalid '%s': integer below minimum value. Expected a value >= 1, but got %lld instead.", key,
                    (long long)json_integer_value(v));
            if (json_integer_value(v) > 1000000)
                BAD(key, "Invalid '%s': integer above maximum value. Expected a value <= 1000000, but got %lld instead.",
                    key, (long long)json_integer_value(v));
            p.max_new_tokens = (int)json_integer_value(v);
        } else if (!strcmp(key, "temperature")) {
            if (!json_is_number(v)) BAD(key, "Invalid 'temperature': expected a number");
            if (json_number_value(v) < 0 || json_number_value(v) > 2)
                BAD(key, "Invalid 'temperature': decimal %s value. Expected a value %s, but got %g instead.",
                    json_number_value(v) < 0 ? "below minimum" : "above maximum",
                    json_number_value(v) < 0 ? ">= 0" : "<= 2", json_number_value(v));
            p.temperature = (float)json_number_value(v);
        } else if (!strcmp(key, "top_p")) {
            if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
                BAD(key, "top_p must be a number in (0, 1]");
            p.top_p = (float)json_number_value(v);
        } else if (!strcmp(key, "top_k")) {
            /* -1 is "off" in vLLM's API, as 0 is here */
            if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > 1000000000)
                BAD(key, "top_k must be an integer in -1..1000000000 (0 or -1: off)");
            p.top_k = json_integer_value(v) < 0 ? 0 : (int)json_integer_value(v);
        } else if (!strcmp(key, "min_p")) {
            if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= 1))
                BAD(key, "min_p must be a number in [0, 1]");
            p.min_p = (float)json_number_value(v);
        } else if (!strcmp(key, "seed")) {
            if (!json_is_integer(v)) BAD(key, "seed must be an integer");
            p.seed = (uint64_t)json_integer_value(v);
        } else if (!strcmp(key, "stream")) {
            if (!json_is_boolean(v)) BAD(key, "stream must be true or false");
            *stream = json_is_true(v);
        } else if (!strcmp(key, "n")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1)
                BAD(key, "Invalid 'n': integer below minimum value. Expected a value >= 1.");
            if (json_integer_value(v) > SERVE_MAX_N)
                BAD(key, "Invalid 'n': integer above maximum value. Expected a value <= %d.", SERVE_MAX_N);
            j->n_choices = (int)json_integer_value(v);
        } else if (!strcmp(key, "stream_options")) {
            json_t *iu = json_object_get(v, "include_usage");
            if (!json_is_object(v) || (iu && !json_is_boolean(iu) && !json_is_null(iu)))
                BAD(key, "stream_options must be an object {\"include_usage\": true|false}");
            j->include_usage = json_is_true(iu);
        } else if (!strcmp(key, "stop")) {
            int ns = 0;
            if (json_is_string(v)) {
                j->stops[ns++] = strdup(json_string_value(v));
            } else if (json_is_array(v) && json_array_size(v) <= SERVE_MAX_STOPS) {
                size_t i;
                json_t *x;
                json_array_foreach(v, i, x) {
                    if (!json_is_string(x) || !json_string_length(x)) BAD(key, "stop must be non-empty strings");
                    j->stops[ns++] = strdup(json_string_value(x));
                }
            } else if (!json_is_null(v)) {
                BAD(key, "stop must be a string or an array of up to %d strings", SERVE_MAX_STOPS);
            }
            j->n_stops = ns;
            for (int i = 0; i < ns; i++)
                if (!j->stops[i] || !j->stops[i][0]) BAD(key, "stop strings must be non-empty");
        } else if (!strcmp(key, "logprobs")) {
            /* chat: a boolean; completions (the legacy API): an integer, the count of alternatives per
             * token, of which only 0 (each sampled token's own log-prob) is offered */
            if (j->chat) {
                if (!json_is_boolean(v) && !json_is_null(v)) BAD(key, "logprobs must be true or false");
                j->logprobs = json_is_true(v);
            } else {
                if (!json_is_integer(v) && !json_is_null(v)) BAD(key, "logprobs must be an integer (0) or null");
                if (json_is_integer(v) && json_integer_value(v) != 0)
                    BAD(key, "logprobs must be 0: alternatives per token (top log-probs) are not offered");
                j->logprobs = json_is_integer(v);
            }
        } else if (!strcmp(key, "top_logprobs")) {
            if (!j->chat) BAD(key, "top_logprobs is a chat field (completions: logprobs 0 only)");
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > SERVE_MAX_TOP_LOGPROBS)
                BAD(key, "Invalid 'top_logprobs': expected an integer in 0..%d", SERVE_MAX_TOP_LOGPROBS);
            j->top_logprobs = (int)json_integer_value(v);
        } else if (!strcmp(key, "response_format")) {
            /* OpenAI's structured outputs: {"type": "json_schema", "json_schema": {"name", "schema",
             * "strict"}} or {"type": "json_object"}; docs/GUIDED.md */
            json_t *t = json_object_get(v, "type");
            const char *ty = json_is_string(t) ? json_string_value(t) : "";
            json_decref(j->guided_spec);
            j->guided_spec = NULL;
            if (!json_is_object(v)) BAD(key, "response_format must be an object with a \"type\"");
            if (!strcmp(ty, "json_object")) {
                j->guided_spec = json_pack("{s:b}", "json_object", 1);
            } else if (!strcmp(ty, "json_schema")) {
                json_t *js = json_object_get(v, "json_schema"), *name = json_object_get(js, "name"),
                       *strict = json_object_get(js, "strict");
                if (!json_is_object(js)) BAD(key, "response_format.json_schema must be an object {name, schema, strict}");
                if (!json_is_string(name) || !json_string_length(name))
                    BAD(key, "response_format.json_schema.name must be a non-empty string");
                if (strict && !json_is_boolean(strict) && !json_is_null(strict))
                    BAD(key, "response_format.json_schema.strict must be true or false");
                json_t *schema = json_object_get(js, "schema");
                j->guided_spec = schema ? json_pack("{s:O}", "schema", schema) : json_pack("{s:b}", "json_object", 1);
            } else if (strcmp(ty, "text")) {
                BAD(key, "response_format.type must be \"text\", \"json_object\" or \"json_schema\"");
            }
        }
        /* other OpenAI fields (model, user, presence_penalty, ...) are accepted and ignored */
    }
    if (j->top_logprobs && !j->logprobs) BAD("top_logprobs", "top_logprobs needs logprobs: true");
    if (*stream && j->logprobs) BAD("logprobs", "logprobs are not offered with stream: true");
    if (*stream && j->n_choices > 1) BAD("n", "n > 1 is not offered with stream: true");
    if (j->guided_spec) {
        rlhf_error gerr = {0};
        if (serve_attach_guided(s, j, &gerr)) BAD("response_format", "%s: %s", gerr.where, gerr.msg);
    }
#undef BAD
    j->params = p; /* EOS and the stop strings end generation (serve/serve_decode.c) */
    return 0;
}

/* A message's text: a string, or OpenAI's list of parts of which the {"type":"text","text":...} ones count.
 * Returns a new reference to a JSON string, or NULL when malformed. */
static json_t *message_text(json_t *content) {
    if (json_is_string(content)) return json_incref(content);
    if (!json_is_array(content)) return NULL;
    size_t i, len = 0;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *t = json_object_get(part, "text");
        if (!json_is_string(json_object_get(part, "type")) || !json_is_string(t)) return NULL;
        len += json_string_length(t);
    }
    char *buf = malloc(len + 1);
    if (!buf) return NULL;
    len = 0;
    json_array_foreach(content, i, part) {
        json_t *t = json_object_get(part, "text");
        memcpy(buf + len, json_string_value(t), json_string_length(t));
        len += json_string_length(t);
    }
    json_t *s = json_stringn(buf, len);
    free(buf);
    return s;
}

static char *chat_prompt(json_t *msgs, const char **bad) {
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    out[0] = 0;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *role = json_object_get(m, "role"), *raw = json_object_get(m, "content");
        /* an assistant turn of tool calls has content null */
        json_t *content = json_is_null(raw) && json_is_string(role) && !strcmp(json_string_value(role), "assistant")
                              ? json_string("")
                              : message_text(raw);
        if (!json_is_string(role) || !content) {
            *bad = "each message needs a string \"role\" and a \"content\" string (or list of text parts)";
            json_decref(content);
            free(out);
            return NULL;
        }
        size_t need = len + json_string_length(role) + json_string_length(content) + 16;
        if (need > cap) {
            while (cap < need) cap *= 2;
            char *q = realloc(out, cap);
            if (!q) {
                json_decref(content);
                free(out);
                return NULL;
            }
            out = q;
        }
        len += (size_t)sprintf(out + len, "<|%s|>\n%s\n", json_string_value(role), json_string_value(content));
        json_decref(content);
    }
    char *q = realloc(out, len + 32);
    if (!q) {
        free(out);
        return NULL;
    }
    strcpy(q + len, "<|assistant|>\n");
    return q;
}

/* The prompt of a chat request through the model's chat template (add_generation_prompt on, the
 * request's tools passed on). Text-part lists become strings; an assistant's content may be null (a
 * turn of tool calls). On a bad message or a template error *bad (static) or why (the template's
 * line:column and message) says why. */
static char *template_prompt(serve_server *s, json_t *req, const char **bad, char *why, size_t why_cap) {
    json_t *msgs = json_array(), *m;
    size_t i;
    json_array_foreach(json_object_get(req, "messages"), i, m) {
        json_t *role = json_object_get(m, "role"), *raw = json_object_get(m, "content");
        json_t *content = json_is_null(raw) && json_is_string(role) && !strcmp(json_string_value(role), "assistant")
                              ? json_string("")
                              : message_text(raw);
        if (!json_is_object(m) || !json_is_string(role) || !content) {
            *bad = "each message needs a string \"role\" and a \"content\" string (or list of text parts)";
            json_decref(content);
            json_decref(msgs);
            return NULL;
        }
        json_t *copy = json_copy(m);
        json_object_set_new(copy, "content", content);
        json_array_append_new(msgs, copy);
    }
    json_t *tools = json_object_get(req, "tools");
    template_chat_args a = {.messages = msgs, .tools = json_is_array(tools) ? tools : NULL, .add_generation_prompt = 1,
                            .bos_token = s->bos_token, .eos_token = s->eos_token};
    char *out = NULL;
    rlhf_error err = {0};
    if (template_render_chat(s->chat_tmpl, &a, &out, NULL, &err)) {
        snprintf(why, why_cap, "the chat template failed: %s: %s", err.where, err.msg);
        *bad = why;
    }
    json_decref(msgs);
    return out;
}

/* The chat template: cfg->chat_template, else the tokenizer directory's, else the model directory's. */
static int load_chat_template(serve_server *s, rlhf_error *err) {
    const serve_config *cfg = &s->cfg;
    char *text = NULL, name[1100];
    int rc = 0;
    struct stat st;
    if (cfg->chat_template[0]) {
        size_t len;
        if ((rc = rlhf_read_file(cfg->chat_template, &text, &len, err))) return rc;
        snprintf(name, sizeof name, "%s", cfg->chat_template);
    } else {
        const char *dirs[] = {cfg->tokenizer, cfg->model_path};
        for (int k = 0; k < 2 && !text && !rc; k++) {
            if (!dirs[k][0] || stat(dirs[k], &st) != 0 || !S_ISDIR(st.st_mode)) continue;
            free(s->bos_token), free(s->eos_token);
            rc = template_load_hf(dirs[k], &text, &s->bos_token, &s->eos_token, err);
            snprintf(name, sizeof name, "%s/tokenizer_config.json:chat_template", dirs[k]);
        }
        if (rc || !text) return rc;
    }
    rc = template_create(&s->chat_tmpl, text, strlen(text), name, err);
    free(text);
    return rc;
}

static const char *finish_name(int f) { return f == SAMPLE_FINISH_STOP ? "stop" : "length"; }

/* Streaming: the connection thread sends the job's SSE bytes as the worker appends them. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    serve_job *j = cls;
    serve_server *s = j->server;
    (void)pos;
    pthread_mutex_lock(&s->mu);
    while (j->sse_sent == j->sse_len && !j->done) pthread_cond_wait(&s->stream_cv, &s->mu);
    ssize_t n;
    if (j->sse_sent < j->sse_len) {
        size_t k = j->sse_len - j->sse_sent < max ? j->sse_len - j->sse_sent : max;
        memcpy(buf, j->sse + j->sse_sent, k);
        j->sse_sent += k;
        n = (ssize_t)k;
    } else {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* The response is done with the job (sent, or the client went away): stop generating, wait for the
 * worker to let go of it, free it. */
static void stream_free(void *cls) {
    serve_job *j = cls;
    serve_server *s = j->server;
    pthread_mutex_lock(&s->mu);
    j->cancelled = 1;
    while (!j->done) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    serve_job_free(j);
}

/* The response's "logprobs": per sampled token (all of them, also the one that completed a stop string
 * and a final EOS), its text, "logprob" = log pi at temperature 1, unfiltered (the model's own log-prob, as
 * OpenAI and vLLM report it), and "sampling_logprob" = log q of the distribution actually drawn from
 * (temperature, top-k, top-p, min-p; 0 under greedy decoding): the behaviour log-prob an importance ratio
 * needs, what a generator of `rlhf run` records. Chat: {"content": [{token, logprob, bytes, top_logprobs,
 * sampling_logprob}]}; completions: {tokens, token_logprobs, sampling_logprobs, top_logprobs: null,
 * text_offset}. */
static json_t *logprobs_json(serve_server *s, const serve_job *j) {
    int n = j->n_tokens < j->out_cap ? j->n_tokens : j->out_cap;
    json_t *content = json_array(), *toks = json_array(), *lps = json_array(), *lqs = json_array(),
           *offs = json_array();
    size_t off = 0;
    for (int t = 0; t < n; t++) {
        char b[256];
        size_t nb = s->tok->ops->token_bytes(s->tok, j->out_ids[t], b, sizeof b);
        if (nb > sizeof b) nb = sizeof b; /* a token's text is shown whole up to 256 bytes */
        char *txt = rlhf_utf8_sanitize(b, nb);
        json_t *bytes = json_array();
        for (size_t i = 0; i < nb; i++) json_array_append_new(bytes, json_integer((unsigned char)b[i]));
        if (j->chat) {
            json_t *top = json_array();
            for (int k = 0; k < j->top_logprobs; k++) {
                int32_t id = j->out_top_ids[(size_t)t * j->top_logprobs + k];
                if (id < 0) continue;
                char tb[256];
                size_t tn = s->tok->ops->token_bytes(s->tok, id, tb, sizeof tb);
                if (tn > sizeof tb) tn = sizeof tb;
                char *tt = rlhf_utf8_sanitize(tb, tn);
                json_t *tbytes = json_array();
                for (size_t i = 0; i < tn; i++) json_array_append_new(tbytes, json_integer((unsigned char)tb[i]));
                json_array_append_new(top, json_pack("{s:s, s:f, s:o}", "token", tt ? tt : "", "logprob",
                                                     (double)j->out_top_lp[(size_t)t * j->top_logprobs + k], "bytes", tbytes));
                free(tt);
            }
            json_array_append_new(content, json_pack("{s:s, s:f, s:o, s:o, s:f}", "token", txt ? txt : "", "logprob",
                                                     (double)j->out_lp[t], "bytes", bytes, "top_logprobs", top,
                                                     "sampling_logprob", (double)j->out_lq[t]));
        } else {
            json_decref(bytes);
            json_array_append_new(toks, json_string(txt ? txt : ""));
            json_array_append_new(lps, json_real(j->out_lp[t]));
            json_array_append_new(lqs, json_real(j->out_lq[t]));
            json_array_append_new(offs, json_integer((json_int_t)off));
        }
        off += nb;
        free(txt);
    }
    if (j->chat) {
        json_decref(toks);
        json_decref(lps);
        json_decref(lqs);
        json_decref(offs);
        return json_pack("{s:o}", "content", content);
    }
    json_decref(content);
    return json_pack("{s:o, s:o, s:o, s:n, s:o}", "tokens", toks, "token_logprobs", lps, "sampling_logprobs", lqs,
                     "top_logprobs", "text_offset", offs);
}

static enum MHD_Result do_completion(serve_server *s, struct MHD_Connection *c, json_t *req, int chat) {
    if (!s->m)
        return reply_error(s, c, 404, "invalid_request_error", "model",
                           "this server has no generation model (start rlhf serve with --model)");
    /* the model asked for must be the one served (OpenAI's 404); a request naming none gets it */
    json_t *mname = json_object_get(req, "model");
    if (mname && !json_is_null(mname) && (!json_is_string(mname) || strcmp(json_string_value(mname), s->cfg.model_id)))
        return reply_error_code(s, c, 404, "invalid_request_error", "model", "model_not_found",
                                "The model `%.200s` does not exist or you do not have access to it.",
                                json_is_string(mname) ? json_string_value(mname) : "(not a string)");
    serve_job *j = calloc(1, sizeof *j);
    if (!j) return reply_error(s, c, 500, "server_error", NULL, "out of memory");
    enum MHD_Result ret = MHD_YES;
    char *prompt = NULL;
    const char *bad = NULL;
    if (chat) {
        json_t *msgs = json_object_get(req, "messages");
        if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
            serve_job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "messages", "messages must be a non-empty array");
        }
        char why[1100];
        prompt = s->chat_tmpl ? template_prompt(s, req, &bad, why, sizeof why) : chat_prompt(msgs, &bad);
        if (!prompt) {
            serve_job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "messages", "%s", bad ? bad : "out of memory");
        }
    } else {
        json_t *p = json_object_get(req, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (!json_is_string(p)) {
            serve_job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "prompt", "prompt must be a string");
        }
        prompt = strdup(json_string_value(p));
    }
    pthread_mutex_lock(&s->mu);
    unsigned long id = ++s->serial;
    pthread_mutex_unlock(&s->mu);
    int stream = 0;
    j->chat = chat;
    if (parse_sampling(s, c, req, j, id, &stream, &ret) != 0) {
        free(prompt);
        serve_job_free(j);
        return ret;
    }
    rlhf_error err = {0};
    /* a template writes the BOS token itself (Hugging Face encodes its text without special tokens) */
    int add_bos = !(chat && s->chat_tmpl);
    if (!prompt || tokenizer_encode(s->tok, prompt, strlen(prompt), add_bos, &j->prompt_ids, &j->prompt_len, &err) != 0) {
        free(prompt);
        serve_job_free(j);
        return reply_error(s, c, 400, "invalid_request_error", chat ? "messages" : "prompt", "cannot tokenise: %s",
                           err.msg);
    }
    free(prompt);
    int max_seq = s->m->cfg.max_seq_len;
    if (j->prompt_len >= max_seq) {
        int pl = j->prompt_len;
        serve_job_free(j);
        return reply_error(s, c, 400, "invalid_request_error", chat ? "messages" : "prompt",
                           "the prompt is %d tokens; this model's max_seq_len is %d", pl, max_seq);
    }
    j->kind = JOB_GENERATE;
    j->stream = stream;
    j->chat = chat;
    j->server = s;
    j->created = (long long)time(NULL);
    snprintf(j->rid, sizeof j->rid, "%s-%lu", chat ? "chatcmpl" : "cmpl", id);
    if (stream) {
        /* The first chunk (the assistant role) goes out at once; the worker appends the rest. */
        if (chat) {
            json_t *ev = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:n}]}", "id", j->rid, "object",
                                   "chat.completion.chunk", "created", (json_int_t)j->created, "model",
                                   s->cfg.model_id, "choices", "index", 0, "delta", "role", "assistant", "content", "",
                                   "finish_reason");
            json_object_set_new(ev, "system_fingerprint", json_string(SERVE_FINGERPRINT));
            char *t = json_dumps(ev, JSON_COMPACT);
            json_decref(ev);
            size_t n = t ? strlen(t) + 9 : 0;
            j->sse = malloc(n + 1);
            if (t && j->sse) {
                j->sse_len = (size_t)sprintf(j->sse, "data: %s\n\n", t);
                j->sse_cap = n + 1;
            }
            free(t);
        }
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, j, stream_free);
        if (!r) {
            serve_job_free(j);
            return reply_error(s, c, 500, "server_error", NULL, "out of memory");
        }
        if (serve_submit(s, j) != 0) {
            j->done = 1; /* never queued: stream_free may free it */
            MHD_destroy_response(r);
            return reply_error(s, c, 503, "server_error", NULL, "server busy: %d requests waiting", s->cfg.max_queue);
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r); /* the daemon holds its own reference until the stream ends */
        return ret;
    }
    /* n > 1: one job per sample (seeds seed, seed+1, ...), queued together so the worker decodes them
     * in the same steps */
    int nc = j->n_choices > 1 ? j->n_choices : 1, submitted = 0;
    serve_job *jobs[SERVE_MAX_N] = {j};
    for (int k = 1; k < nc; k++) {
        serve_job *x = jobs[k] = calloc(1, sizeof *x);
        if (!x) break;
        *x = (serve_job){.kind = j->kind, .params = j->params, .n_stops = j->n_stops, .chat = j->chat,
                         .logprobs = j->logprobs, .top_logprobs = j->top_logprobs, .server = s, .created = j->created,
                         .prompt_len = j->prompt_len};
        x->params.seed = j->params.seed + (uint64_t)k;
        memcpy(x->rid, j->rid, sizeof x->rid);
        if (j->guided_spec) { /* its own matcher (and hold on the cached grammar) */
            rlhf_error gerr = {0};
            x->guided_spec = json_incref(j->guided_spec);
            if (serve_attach_guided(s, x, &gerr)) break;
        }
        x->prompt_ids = malloc((size_t)j->prompt_len * sizeof *x->prompt_ids);
        if (x->prompt_ids) memcpy(x->prompt_ids, j->prompt_ids, (size_t)j->prompt_len * sizeof *x->prompt_ids);
        for (int i = 0; i < j->n_stops; i++) x->stops[i] = strdup(j->stops[i]);
        if (!x->prompt_ids) break;
    }
    int ready = 1;
    for (int k = 0; k < nc; k++) ready &= jobs[k] && jobs[k]->prompt_ids && (!jobs[k]->guided_spec || jobs[k]->matcher);
    while (ready && submitted < nc && serve_submit(s, jobs[submitted]) == 0) submitted++;
    for (int k = 0; k < submitted; k++) serve_wait(s, jobs[k]);
    const char *why = !ready ? "out of memory" : NULL;
    for (int k = 0; k < submitted && !why; k++)
        if (jobs[k]->failed) why = jobs[k]->errmsg;
    if (why || submitted < nc) {
        ret = why ? reply_error(s, c, 500, "server_error", NULL, "%s", why)
                  : reply_error(s, c, 503, "server_error", NULL, "server busy: %d requests waiting", s->cfg.max_queue);
        for (int k = 0; k < nc; k++) serve_job_free(jobs[k]);
        return ret;
    }
    json_t *choices = json_array();
    int completion_tokens = 0;
    for (int k = 0; k < nc; k++) {
        serve_job *x = jobs[k];
        char *text = rlhf_utf8_sanitize(x->text ? x->text : "", x->text_len);
        json_t *choice = chat ? json_pack("{s:i, s:{s:s, s:s}, s:s}", "index", k, "message", "role", "assistant",
                                          "content", text ? text : "", "finish_reason", finish_name(x->finish))
                              : json_pack("{s:i, s:s, s:s}", "index", k, "text", text ? text : "", "finish_reason",
                                          finish_name(x->finish));
        if (x->logprobs && choice) json_object_set_new(choice, "logprobs", logprobs_json(s, x));
        json_array_append_new(choices, choice);
        completion_tokens += x->n_tokens;
        free(text);
    }
    /* the prompt is counted once, as OpenAI does for n > 1 */
    json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:o, s:{s:i, s:i, s:i}, s:s}", "id", j->rid, "object",
                             chat ? "chat.completion" : "text_completion", "created", (json_int_t)j->created, "model",
                             s->cfg.model_id, "choices", choices, "usage", "prompt_tokens", j->prompt_len,
                             "completion_tokens", completion_tokens, "total_tokens", j->prompt_len + completion_tokens,
                             "system_fingerprint", SERVE_FINGERPRINT);
    for (int k = 0; k < nc; k++) serve_job_free(jobs[k]);
    return reply_json(c, 200, resp);
}

static enum MHD_Result do_get_reward(serve_server *s, struct MHD_Connection *c, json_t *req) {
    if (!s->rm)
        return reply_error(s, c, 404, "invalid_request_error", NULL,
                           "this server has no reward model (start rlhf serve with --reward-model)");
    json_t *q = json_object_get(req, "query");
    if (!json_is_array(q) || json_array_size(q) > 65536)
        return reply_error(s, c, 400, "invalid_request_error", "query", "query must be an array of 0..65536 strings");
    /* nothing to score is an answer, not an error (OpenRLHF's clients may send an empty batch) */
    if (json_array_size(q) == 0) return reply_json(c, 200, json_pack("{s:[]}", "rewards"));
    serve_job *j = calloc(1, sizeof *j);
    size_t n = json_array_size(q);
    if (j) {
        j->texts = calloc(n, sizeof *j->texts);
        j->rewards = calloc(n, sizeof *j->rewards);
    }
    if (!j || !j->texts || !j->rewards) {
        serve_job_free(j);
        return reply_error(s, c, 500, "server_error", NULL, "out of memory");
    }
    j->kind = JOB_REWARD;
    j->n_texts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(q, i);
        if (!json_is_string(x)) {
            serve_job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "query", "query[%zu] is not a string", i);
        }
        j->texts[i] = strdup(json_string_value(x));
    }
    if (serve_submit(s, j) != 0) {
        serve_job_free(j);
        return reply_error(s, c, 503, "server_error", NULL, "server busy: %d requests waiting", s->cfg.max_queue);
    }
    serve_wait(s, j);
    enum MHD_Result ret;
    if (j->failed) {
        ret = reply_error(s, c, 500, "server_error", NULL, "%s", j->errmsg);
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_real(j->rewards[i]));
        ret = reply_json(c, 200, json_pack("{s:o}", "rewards", arr));
    }
    serve_job_free(j);
    return ret;
}

/* Authorization: Bearer KEY, compared in constant time (a timing difference would reveal the key's
 * prefix); the key is never echoed. */
static int authorized(const serve_server *s, struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    size_t kl = strlen(s->api_key), hl = strlen(h);
    unsigned char diff = (unsigned char)(kl != hl);
    for (size_t i = 0; i < kl; i++) diff |= (unsigned char)(s->api_key[i] ^ (i < hl ? h[i] : 0));
    return diff == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *data, size_t *data_size, void **con_cls) {
    (void)version;
    serve_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = calloc(1, sizeof *cs);
        if (!cs) return MHD_NO;
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body) {
            cs->too_big = 1; /* refuse before reading the body */
            conn_reading(s, c, 0);
            return reply_error(s, c, 413, "invalid_request_error", NULL, "request body of %s bytes exceeds %zu", cl,
                               s->cfg.max_body);
        }
        return MHD_YES;
    }
    if (*data_size) {
        if (cs->len + *data_size > s->cfg.max_body) cs->too_big = 1;
        if (!cs->too_big) {
            char *q = realloc(cs->body, cs->len + *data_size + 1);
            if (!q) return MHD_NO;
            cs->body = q;
            memcpy(cs->body + cs->len, data, *data_size);
            cs->len += *data_size;
            cs->body[cs->len] = 0;
        }
        *data_size = 0;
        return MHD_YES;
    }
    conn_reading(s, c, 0); /* the whole request is here: answering it has no deadline */
    if (cs->too_big)
        return reply_error(s, c, 413, "invalid_request_error", NULL, "request body exceeds %zu bytes", s->cfg.max_body);
    int is_get = !strcmp(method, "GET"), is_post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        if (!is_get) return reply_error(s, c, 405, "invalid_request_error", NULL, "use GET /health");
        pthread_mutex_lock(&s->mu);
        json_t *h = json_pack("{s:s, s:i}", "status", "ok", "queued", s->queued), *spec = serve_spec_health(s);
        pthread_mutex_unlock(&s->mu);
        if (spec) json_object_set_new(h, "speculative", spec);
        return reply_json(c, 200, h);
    }
    if (s->api_key && !authorized(s, c))
        return reply_error_code(s, c, 401, "invalid_request_error", NULL, "invalid_api_key",
                                "Incorrect API key provided. Send it as Authorization: Bearer KEY.");
    if (!strncmp(url, "/v1/models/", 11)) {
        if (!is_get) return reply_error(s, c, 405, "invalid_request_error", NULL, "use GET %s", url);
        const char *id = url + 11;
        if ((s->m && !strcmp(id, s->cfg.model_id)) || (s->rm && !strcmp(id, s->rm_id)))
            return reply_json(c, 200, json_pack("{s:s, s:s, s:i, s:s}", "id", id, "object", "model", "created", 0,
                                                "owned_by", "rlhf"));
        return reply_error_code(s, c, 404, "invalid_request_error", "model", "model_not_found",
                                "The model `%.200s` does not exist or you do not have access to it.", id);
    }
    if (!strcmp(url, "/v1/models")) {
        if (!is_get) return reply_error(s, c, 405, "invalid_request_error", NULL, "use GET /v1/models");
        json_t *data = json_array();
        if (s->m)
            json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id", s->cfg.model_id, "object", "model",
                                                  "created", 0, "owned_by", "rlhf"));
        if (s->rm)
            json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id", s->rm_id, "object", "model", "created",
                                                  0, "owned_by", "rlhf"));
        return reply_json(c, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
    int route = !strcmp(url, "/v1/chat/completions") ? 1 : !strcmp(url, "/v1/completions") ? 2
              : !strcmp(url, "/get_reward") ? 3 : 0;
    if (!route) return reply_error(s, c, 404, "invalid_request_error", NULL, "no route %s %s", method, url);
    if (!is_post) return reply_error(s, c, 405, "invalid_request_error", NULL, "use POST %s", url);
    json_error_t je;
    json_t *req = cs->body ? json_loadb(cs->body, cs->len, 0, &je) : NULL;
    if (!req) return reply_error(s, c, 400, "invalid_request_error", NULL, "request body is not JSON%s%s",
                                 cs->body ? ": " : " (empty body)", cs->body ? je.text : "");
    if (!json_is_object(req)) {
        json_decref(req);
        return reply_error(s, c, 400, "invalid_request_error", NULL, "request body must be a JSON object");
    }
    enum MHD_Result ret = route == 3 ? do_get_reward(s, c, req) : do_completion(s, c, req, route == 1);
    json_decref(req);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)toe;
    conn_reading(cls, c, 1); /* a keep-alive connection's next request: its deadline starts now */
    conn_state *cs = *con_cls;
    if (cs) {
        free(cs->body);
        free(cs);
        *con_cls = NULL;
    }
}

/* ---------------------------------------------------------------------------------- lifecycle */

static void id_from_path(const char *path, char *out, size_t cap) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    char *b = basename(tmp);
    char *dot = strrchr(b, '.');
    if (dot && dot != b) *dot = 0;
    snprintf(out, cap, "%s", b);
}

int serve_server_create(serve_server **out, const serve_config *cfg, FILE *log, rlhf_error *err) {
    *out = NULL;
    if (!cfg->model_path[0] && !cfg->rm_path[0])
        return rlhf_error_set(err, RLHF_EINVAL, "", "give --model and/or --reward-model");
    if (cfg->port < 0 || cfg->port > 65535)
        return rlhf_error_set(err, RLHF_EINVAL, "", "--port %d is not in 0..65535", cfg->port);
    if (cfg->max_batch < 1 || cfg->max_queue < 1 || cfg->max_body < 16 || cfg->max_tokens_default < 0 ||
        cfg->max_connections < 1 || cfg->max_per_ip < 1 || cfg->request_timeout < 1)
        return rlhf_error_set(err, RLHF_EINVAL, "", "limits must be positive");
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1)
        return rlhf_error_set(err, RLHF_EINVAL, "", "--host '%s' is not an IPv4 address", cfg->host);
    const char *key = cfg->api_key_env[0] ? getenv(cfg->api_key_env) : NULL;
    if (cfg->api_key_env[0] && (!key || !key[0]))
        return rlhf_error_set(err, RLHF_EINVAL, "--api-key-env", "environment variable %s is not set (or empty)",
                              cfg->api_key_env);
    if (!key && (ntohl(addr.sin_addr.s_addr) >> 24) != 127)
        return rlhf_error_set(err, RLHF_EINVAL, "--host", "%s is not a loopback address: anyone who reaches it could "
                              "use the server; give an API key with --api-key-env NAME", cfg->host);
    serve_server *s = calloc(1, sizeof *s);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->log = log;
    if (key && !(s->api_key = strdup(key))) {
        free(s);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    pthread_cond_init(&s->stream_cv, NULL);
    pthread_mutex_init(&s->conn_mu, NULL);
    pthread_cond_init(&s->reaper_cv, NULL);
    pthread_mutex_init(&s->guided_mu, NULL);
    int rc = 0;
    if (cfg->model_path[0]) {
        if (!s->cfg.model_id[0]) id_from_path(cfg->model_path, s->cfg.model_id, sizeof s->cfg.model_id);
        if ((rc = model_load_for_inference(&s->m, &s->tok, cfg->model_path, cfg->tokenizer, cfg->max_seq_len, err)) ||
            (rc = sampler_create(&s->smp, s->m, cfg->max_batch, err)) || (rc = load_chat_template(s, err)) ||
            (rc = serve_spec_setup(s, err))) {
            serve_server_destroy(&s);
            return rc;
        }
    }
    if (cfg->rm_path[0]) {
        id_from_path(cfg->rm_path, s->rm_id, sizeof s->rm_id);
        if ((rc = reward_model_load(&s->rm, cfg->rm_path, cfg->max_batch, err))) {
            serve_server_destroy(&s);
            return rc;
        }
    }
    if (pthread_create(&s->worker, NULL, serve_worker_main, s) != 0) {
        serve_server_destroy(&s);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot start the worker thread");
    }
    s->worker_started = 1;
    if (pthread_create(&s->reaper, NULL, reaper_main, s) != 0) {
        serve_server_destroy(&s);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot start the request-deadline thread");
    }
    s->reaper_started = 1;
    /* MHD's own timeout is idle time (reset by every byte): a backstop for a client that stops reading
     * its response; the request deadline above is what bounds a slow sender */
    unsigned idle = cfg->request_timeout > 60 ? (unsigned)cfg->request_timeout : 60u;
    s->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0,
                                 NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_NOTIFY_CONNECTION,
                                 notify_connection, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_per_ip,
                                 MHD_OPTION_CONNECTION_TIMEOUT, idle, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                                 MHD_OPTION_END);
    if (!s->daemon) {
        int port = cfg->port;
        serve_server_destroy(&s);
        return rlhf_error_set(err, RLHF_ESYS, "", "cannot listen on %s:%d (in use?)", cfg->host, port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    *out = s;
    return 0;
}

int serve_port(const serve_server *s) { return s->port; }

void serve_server_destroy(serve_server **ps) {
    if (!ps || !*ps) return;
    serve_server *s = *ps;
    if (s->daemon) MHD_stop_daemon(s->daemon); /* waits for handler threads, which wait for the worker */
    if (s->reaper_started) {
        pthread_mutex_lock(&s->conn_mu);
        s->reaper_stop = 1;
        pthread_cond_signal(&s->reaper_cv);
        pthread_mutex_unlock(&s->conn_mu);
        pthread_join(s->reaper, NULL);
    }
    if (s->worker_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->worker, NULL);
    }
    serve_spec_teardown(s);
    sampler_destroy(&s->smp);
    guided_cache_destroy(&s->gcache);
    guided_vocab_destroy(&s->gvocab);
    pthread_mutex_destroy(&s->guided_mu);
    tokenizer_destroy(&s->tok);
    template_destroy(&s->chat_tmpl);
    if (s->api_key) explicit_bzero(s->api_key, strlen(s->api_key));
    free(s->api_key);
    free(s->bos_token);
    free(s->eos_token);
    model_destroy(&s->m);
    reward_model_destroy(&s->rm);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->done_cv);
    pthread_cond_destroy(&s->stream_cv);
    pthread_mutex_destroy(&s->conn_mu);
    pthread_cond_destroy(&s->reaper_cv);
    free(s);
    *ps = NULL;
}
