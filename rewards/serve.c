/* rewards/serve.c — `rlhf serve`: OpenAI-compatible HTTP front end (libmicrohttpd, one thread per
 * connection) over one worker thread that batches all waiting requests into the model's sampler and
 * the reward model. See rewards/serve.h. */
#include "rewards/serve.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "model/model.h"
#include "rewards/rm.h"

enum { JOB_GENERATE = 0, JOB_REWARD = 1 };
enum { MAX_STOPS = 4 };

typedef struct serve_job {
    int kind;
    /* generate */
    int32_t *prompt_ids;          // (prompt_len)
    int prompt_len;
    sample_params params;
    char *stops[MAX_STOPS];
    const char *stop_ptrs[MAX_STOPS];
    sample_result result;
    /* reward */
    char **texts;                 // (n_texts)
    int n_texts;
    double *rewards;              // (n_texts)
    /* completion */
    int done, failed;
    char errmsg[256];
    struct serve_job *next;
} serve_job;

struct serve_server {
    serve_config cfg;
    FILE *log;
    model *m;
    tokenizer *tok;
    sampler *smp;
    reward_model *rm;
    char rm_id[128];
    struct MHD_Daemon *daemon;
    int port;
    pthread_t worker;
    int worker_started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    serve_job *head, *tail; /* waiting jobs */
    int queued;
    int stopping;
    unsigned long serial;   /* request ids and default seeds */
};

void serve_config_init(serve_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->max_batch = 8;
    cfg->max_queue = 64;
    cfg->max_body = 1u << 20;
    cfg->max_tokens_default = 128;
    cfg->max_connections = 256;
}

/* ------------------------------------------------------------------------------------- UTF-8 */

char *serve_utf8_sanitize(const char *s, size_t n) {
    char *out = malloc(n * 3 + 1); /* each bad byte becomes 3 bytes of U+FFFD at most */
    if (!out) return NULL;
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n && c != 0;
        for (int k = 1; ok && k < len; k++) ok = (p[i + k] & 0xC0) == 0x80;
        if (ok && len > 1) { /* reject overlong forms, surrogates and values past U+10FFFF */
            unsigned cp = len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
            for (int k = 1; k < len; k++) cp = (cp << 6) | (p[i + k] & 0x3F);
            ok = !((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                   (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF);
        }
        if (ok) {
            memcpy(out + o, p + i, (size_t)len);
            o += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

/* ------------------------------------------------------------------------------------- worker */

static void job_free(serve_job *j) {
    if (!j) return;
    free(j->prompt_ids);
    for (int i = 0; i < MAX_STOPS; i++) free(j->stops[i]);
    sample_result_free(&j->result);
    for (int i = 0; j->texts && i < j->n_texts; i++) free(j->texts[i]);
    free(j->texts);
    free(j->rewards);
    free(j);
}

static void run_generate(serve_server *s, serve_job **jobs, int n) {
    sample_request *reqs = calloc((size_t)n, sizeof *reqs);
    sample_result *res = calloc((size_t)n, sizeof *res);
    rlhf_error err = {0};
    int rc = (!reqs || !res) ? RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory") : 0;
    for (int i = 0; !rc && i < n; i++) {
        reqs[i].prompt = jobs[i]->prompt_ids;
        reqs[i].prompt_len = jobs[i]->prompt_len;
        reqs[i].params = jobs[i]->params;
    }
    if (!rc) rc = sampler_run(s->smp, s->tok, reqs, n, res, &err);
    for (int i = 0; i < n; i++) {
        if (rc) {
            jobs[i]->failed = 1;
            snprintf(jobs[i]->errmsg, sizeof jobs[i]->errmsg, "generation failed: %.200s", err.msg);
        } else {
            jobs[i]->result = res[i];
        }
    }
    free(reqs);
    free(res);
}

static void run_reward(serve_server *s, serve_job **jobs, int n) {
    int total = 0;
    for (int i = 0; i < n; i++) total += jobs[i]->n_texts;
    const char **texts = malloc((size_t)(total ? total : 1) * sizeof *texts);
    double *r = malloc((size_t)(total ? total : 1) * sizeof *r);
    rlhf_error err = {0};
    int rc = (!texts || !r) ? RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory") : 0;
    for (int i = 0, k = 0; !rc && i < n; i++)
        for (int t = 0; t < jobs[i]->n_texts; t++) texts[k++] = jobs[i]->texts[t];
    if (!rc) rc = reward_model_score(s->rm, texts, total, r, &err);
    for (int i = 0, k = 0; i < n; i++) {
        if (rc) {
            jobs[i]->failed = 1;
            snprintf(jobs[i]->errmsg, sizeof jobs[i]->errmsg, "reward model failed: %.200s", err.msg);
        } else {
            memcpy(jobs[i]->rewards, r + k, (size_t)jobs[i]->n_texts * sizeof *r);
        }
        k += jobs[i]->n_texts;
    }
    free(texts);
    free(r);
}

static void *worker_main(void *arg) {
    serve_server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stopping) pthread_cond_wait(&s->work_cv, &s->mu);
        if (!s->head && s->stopping) break;
        /* Take every waiting job: the sampler keeps max_batch of them decoding at once and refills
         * finished slots from the rest. */
        serve_job *list = s->head;
        s->head = s->tail = NULL;
        s->queued = 0;
        pthread_mutex_unlock(&s->mu);
        int n = 0;
        for (serve_job *j = list; j; j = j->next) n++;
        serve_job **gen = malloc((size_t)n * sizeof *gen), **rew = malloc((size_t)n * sizeof *rew);
        int ng = 0, nr = 0;
        for (serve_job *j = list; j; j = j->next) {
            if (!gen || !rew) {
                j->failed = 1;
                snprintf(j->errmsg, sizeof j->errmsg, "out of memory");
            } else if (j->kind == JOB_GENERATE) gen[ng++] = j;
            else rew[nr++] = j;
        }
        if (ng) run_generate(s, gen, ng);
        if (nr) run_reward(s, rew, nr);
        free(gen);
        free(rew);
        pthread_mutex_lock(&s->mu);
        for (serve_job *j = list; j; j = j->next) j->done = 1;
        pthread_cond_broadcast(&s->done_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Queues j and waits for it. Returns 0, or -1 when the queue is full (j not queued). */
static int submit_and_wait(serve_server *s, serve_job *j) {
    pthread_mutex_lock(&s->mu);
    if (s->queued >= s->cfg.max_queue || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    pthread_cond_signal(&s->work_cv);
    while (!j->done) pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return 0;
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

static enum MHD_Result reply_error(serve_server *s, struct MHD_Connection *c, unsigned status, const char *type,
                                   const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result reply_error(serve_server *s, struct MHD_Connection *c, unsigned status, const char *type,
                                   const char *param, const char *fmt, ...) {
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
    char *safe = serve_utf8_sanitize(msg, strlen(msg));
    json_t *j = json_pack("{s:{s:s, s:s, s:o, s:n}}", "error", "message", safe ? safe : "error", "type", type,
                          "param", param ? json_string(param) : json_null(), "code");
    free(safe);
    if (status == 503) {
        char *b = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        return reply(c, status, "application/json", b ? b : strdup("{}"), "1");
    }
    return reply_json(c, status, j);
}

/* Reads the sampling fields shared by both completion routes. 0, or -1 after replying 400. */
static int parse_sampling(serve_server *s, struct MHD_Connection *c, json_t *req, serve_job *j, int *stream,
                          enum MHD_Result *ret) {
    sample_params p = sample_params_default();
    p.max_new_tokens = s->cfg.max_tokens_default;
    p.seed = 0x5eed0000ull + s->serial;
    const char *key;
    json_t *v;
    *stream = 0;
#define BAD(param, ...)                                                                      \
    do {                                                                                      \
        *ret = reply_error(s, c, 400, "invalid_request_error", param, __VA_ARGS__);         \
        return -1;                                                                            \
    } while (0)
    json_object_foreach(req, key, v) {
        if (!strcmp(key, "max_tokens") || !strcmp(key, "max_completion_tokens")) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000)
                BAD(key, "%s must be an integer in 0..1000000", key);
            p.max_new_tokens = (int)json_integer_value(v);
        } else if (!strcmp(key, "temperature")) {
            if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)
                BAD(key, "temperature must be a number in [0, 100]");
            p.temperature = (float)json_number_value(v);
        } else if (!strcmp(key, "top_p")) {
            if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
                BAD(key, "top_p must be a number in (0, 1]");
            p.top_p = (float)json_number_value(v);
        } else if (!strcmp(key, "top_k")) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) BAD(key, "top_k must be a non-negative integer");
            p.top_k = (int)json_integer_value(v);
        } else if (!strcmp(key, "seed")) {
            if (!json_is_integer(v)) BAD(key, "seed must be an integer");
            p.seed = (uint64_t)json_integer_value(v);
        } else if (!strcmp(key, "stream")) {
            if (!json_is_boolean(v)) BAD(key, "stream must be true or false");
            *stream = json_is_true(v);
        } else if (!strcmp(key, "n")) {
            if (!json_is_integer(v) || json_integer_value(v) != 1) BAD(key, "only n = 1 is supported");
        } else if (!strcmp(key, "stop")) {
            int ns = 0;
            if (json_is_string(v)) {
                j->stops[ns++] = strdup(json_string_value(v));
            } else if (json_is_array(v) && json_array_size(v) <= MAX_STOPS) {
                size_t i;
                json_t *x;
                json_array_foreach(v, i, x) {
                    if (!json_is_string(x) || !json_string_length(x)) BAD(key, "stop must be non-empty strings");
                    j->stops[ns++] = strdup(json_string_value(x));
                }
            } else if (!json_is_null(v)) {
                BAD(key, "stop must be a string or an array of up to %d strings", MAX_STOPS);
            }
            for (int i = 0; i < ns; i++) {
                if (!j->stops[i] || !j->stops[i][0]) BAD(key, "stop strings must be non-empty");
                j->stop_ptrs[i] = j->stops[i];
            }
            p.stop_strings = ns ? j->stop_ptrs : NULL;
            p.n_stop_strings = ns;
        } else if (!strcmp(key, "response_format")) {
            json_t *t = json_object_get(v, "type");
            if (!(json_is_string(t) && !strcmp(json_string_value(t), "text")))
                BAD(key, "response_format is not supported by this server (only {\"type\":\"text\"})");
        }
        /* other OpenAI fields (model, user, logprobs, presence_penalty, ...) are accepted and ignored */
    }
#undef BAD
    p.stop_ids = &s->tok->eos_id;
    p.n_stop_ids = 1;
    j->params = p;
    return 0;
}

static char *chat_prompt(json_t *msgs, const char **bad) {
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    out[0] = 0;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        if (!json_is_string(role) || !json_is_string(content)) {
            *bad = "each message needs string \"role\" and \"content\"";
            free(out);
            return NULL;
        }
        size_t need = len + json_string_length(role) + json_string_length(content) + 16;
        if (need > cap) {
            while (cap < need) cap *= 2;
            char *q = realloc(out, cap);
            if (!q) {
                free(out);
                return NULL;
            }
            out = q;
        }
        len += (size_t)sprintf(out + len, "<|%s|>\n%s\n", json_string_value(role), json_string_value(content));
    }
    char *q = realloc(out, len + 32);
    if (!q) {
        free(out);
        return NULL;
    }
    strcpy(q + len, "<|assistant|>\n");
    return q;
}

static const char *finish_name(sample_finish f) { return f == SAMPLE_FINISH_STOP ? "stop" : "length"; }

/* One SSE event "data: JSON\n\n" appended to *buf. */
static void sse_add(char **buf, size_t *len, size_t *cap, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return;
    size_t n = strlen(s) + 8;
    if (*len + n + 1 > *cap) {
        while (*len + n + 1 > *cap) *cap = *cap ? *cap * 2 : 1024;
        char *q = realloc(*buf, *cap);
        if (!q) {
            free(s);
            return;
        }
        *buf = q;
    }
    *len += (size_t)sprintf(*buf + *len, "data: %s\n\n", s);
    free(s);
}

static enum MHD_Result do_completion(serve_server *s, struct MHD_Connection *c, json_t *req, int chat) {
    if (!s->m)
        return reply_error(s, c, 404, "invalid_request_error", "model",
                           "this server has no generation model (start rlhf serve with --model)");
    serve_job *j = calloc(1, sizeof *j);
    if (!j) return reply_error(s, c, 500, "server_error", NULL, "out of memory");
    enum MHD_Result ret = MHD_YES;
    char *prompt = NULL;
    const char *bad = NULL;
    if (chat) {
        json_t *msgs = json_object_get(req, "messages");
        if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
            job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "messages", "messages must be a non-empty array");
        }
        prompt = chat_prompt(msgs, &bad);
        if (!prompt) {
            job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "messages", "%s", bad ? bad : "out of memory");
        }
    } else {
        json_t *p = json_object_get(req, "prompt");
        if (json_is_array(p) && json_array_size(p) == 1) p = json_array_get(p, 0);
        if (!json_is_string(p)) {
            job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "prompt", "prompt must be a string");
        }
        prompt = strdup(json_string_value(p));
    }
    pthread_mutex_lock(&s->mu);
    unsigned long id = ++s->serial;
    pthread_mutex_unlock(&s->mu);
    int stream = 0;
    if (parse_sampling(s, c, req, j, &stream, &ret) != 0) {
        free(prompt);
        job_free(j);
        return ret;
    }
    rlhf_error err = {0};
    if (!prompt || tokenizer_encode(s->tok, prompt, strlen(prompt), 1, &j->prompt_ids, &j->prompt_len, &err) != 0) {
        free(prompt);
        job_free(j);
        return reply_error(s, c, 400, "invalid_request_error", chat ? "messages" : "prompt", "cannot tokenise: %s",
                           err.msg);
    }
    free(prompt);
    int max_seq = s->m->cfg.max_seq_len;
    if (j->prompt_len >= max_seq) {
        int pl = j->prompt_len;
        job_free(j);
        return reply_error(s, c, 400, "invalid_request_error", chat ? "messages" : "prompt",
                           "the prompt is %d tokens; this model's max_seq_len is %d", pl, max_seq);
    }
    j->kind = JOB_GENERATE;
    if (submit_and_wait(s, j) != 0) {
        job_free(j);
        return reply_error(s, c, 503, "server_error", NULL, "server busy: %d requests waiting", s->cfg.max_queue);
    }
    if (j->failed) {
        ret = reply_error(s, c, 500, "server_error", NULL, "%s", j->errmsg);
        job_free(j);
        return ret;
    }
    sample_result *r = &j->result;
    char *text = serve_utf8_sanitize(r->text ? r->text : "", r->text ? r->text_len : 0);
    char rid[64];
    snprintf(rid, sizeof rid, "%s-%lu", chat ? "chatcmpl" : "cmpl", id);
    json_int_t created = (json_int_t)time(NULL);
    const char *model_id = s->cfg.model_id;
    if (!stream) {
        json_t *choice = chat ? json_pack("{s:i, s:{s:s, s:s}, s:s}", "index", 0, "message", "role", "assistant",
                                          "content", text ? text : "", "finish_reason", finish_name(r->finish))
                              : json_pack("{s:i, s:s, s:s}", "index", 0, "text", text ? text : "", "finish_reason",
                                          finish_name(r->finish));
        json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:{s:i, s:i, s:i}}", "id", rid, "object",
                                 chat ? "chat.completion" : "text_completion", "created", created, "model", model_id,
                                 "choices", choice, "usage", "prompt_tokens", j->prompt_len, "completion_tokens",
                                 r->n_tokens, "total_tokens", j->prompt_len + r->n_tokens);
        ret = reply_json(c, 200, resp);
    } else {
        /* SSE: one chunk per UTF-8 character of the completion, then the finish chunk and [DONE]. */
        const char *obj = chat ? "chat.completion.chunk" : "text_completion";
        char *buf = NULL;
        size_t len = 0, cap = 0;
        if (chat)
            sse_add(&buf, &len, &cap,
                    json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:n}]}", "id", rid, "object", obj, "created",
                              created, "model", model_id, "choices", "index", 0, "delta", "role", "assistant", "content",
                              "", "finish_reason"));
        const unsigned char *t = (const unsigned char *)(text ? text : "");
        for (size_t i = 0; t[i];) {
            size_t n = t[i] < 0x80 ? 1 : (t[i] >> 5) == 6 ? 2 : (t[i] >> 4) == 14 ? 3 : 4;
            char piece[8];
            memcpy(piece, t + i, n);
            piece[n] = 0;
            i += n;
            json_t *ch = chat ? json_pack("{s:i, s:{s:s}, s:n}", "index", 0, "delta", "content", piece, "finish_reason")
                              : json_pack("{s:i, s:s, s:n}", "index", 0, "text", piece, "finish_reason");
            sse_add(&buf, &len, &cap,
                    json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", rid, "object", obj, "created", created, "model",
                              model_id, "choices", ch));
        }
        json_t *last = chat ? json_pack("{s:i, s:{}, s:s}", "index", 0, "delta", "finish_reason", finish_name(r->finish))
                            : json_pack("{s:i, s:s, s:s}", "index", 0, "text", "", "finish_reason", finish_name(r->finish));
        sse_add(&buf, &len, &cap,
                json_pack("{s:s, s:s, s:I, s:s, s:[o], s:{s:i, s:i, s:i}}", "id", rid, "object", obj, "created", created,
                          "model", model_id, "choices", last, "usage", "prompt_tokens", j->prompt_len,
                          "completion_tokens", r->n_tokens, "total_tokens", j->prompt_len + r->n_tokens));
        size_t need = len + 16;
        char *q = realloc(buf, need + 1);
        if (q) {
            buf = q;
            strcpy(buf + len, "data: [DONE]\n\n");
            ret = reply(c, 200, "text/event-stream", buf, NULL);
        } else {
            free(buf);
            ret = reply_error(s, c, 500, "server_error", NULL, "out of memory");
        }
    }
    free(text);
    job_free(j);
    return ret;
}

static enum MHD_Result do_get_reward(serve_server *s, struct MHD_Connection *c, json_t *req) {
    if (!s->rm)
        return reply_error(s, c, 404, "invalid_request_error", NULL,
                           "this server has no reward model (start rlhf serve with --reward-model)");
    json_t *q = json_object_get(req, "query");
    if (!json_is_array(q) || json_array_size(q) == 0 || json_array_size(q) > 65536)
        return reply_error(s, c, 400, "invalid_request_error", "query", "query must be an array of 1..65536 strings");
    serve_job *j = calloc(1, sizeof *j);
    size_t n = json_array_size(q);
    if (j) {
        j->texts = calloc(n, sizeof *j->texts);
        j->rewards = calloc(n, sizeof *j->rewards);
    }
    if (!j || !j->texts || !j->rewards) {
        job_free(j);
        return reply_error(s, c, 500, "server_error", NULL, "out of memory");
    }
    j->kind = JOB_REWARD;
    j->n_texts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(q, i);
        if (!json_is_string(x)) {
            job_free(j);
            return reply_error(s, c, 400, "invalid_request_error", "query", "query[%zu] is not a string", i);
        }
        j->texts[i] = strdup(json_string_value(x));
    }
    if (submit_and_wait(s, j) != 0) {
        job_free(j);
        return reply_error(s, c, 503, "server_error", NULL, "server busy: %d requests waiting", s->cfg.max_queue);
    }
    enum MHD_Result ret;
    if (j->failed) {
        ret = reply_error(s, c, 500, "server_error", NULL, "%s", j->errmsg);
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_real(j->rewards[i]));
        ret = reply_json(c, 200, json_pack("{s:o}", "rewards", arr));
    }
    job_free(j);
    return ret;
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
    if (cs->too_big)
        return reply_error(s, c, 413, "invalid_request_error", NULL, "request body exceeds %zu bytes", s->cfg.max_body);
    int is_get = !strcmp(method, "GET"), is_post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        if (!is_get) return reply_error(s, c, 405, "invalid_request_error", NULL, "use GET /health");
        pthread_mutex_lock(&s->mu);
        int q = s->queued;
        pthread_mutex_unlock(&s->mu);
        return reply_json(c, 200, json_pack("{s:s, s:i}", "status", "ok", "queued", q));
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
    (void)cls, (void)c, (void)toe;
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

int serve_create(serve_server **out, const serve_config *cfg, FILE *log, rlhf_error *err) {
    *out = NULL;
    if (!cfg->model_path[0] && !cfg->rm_path[0])
        return rlhf_error_set(err, RLHF_EINVAL, "rlhf serve", "give --model and/or --reward-model");
    if (cfg->port < 0 || cfg->port > 65535)
        return rlhf_error_set(err, RLHF_EINVAL, "rlhf serve", "--port %d is not in 0..65535", cfg->port);
    if (cfg->max_batch < 1 || cfg->max_queue < 1 || cfg->max_body < 16 || cfg->max_tokens_default < 0 ||
        cfg->max_connections < 1)
        return rlhf_error_set(err, RLHF_EINVAL, "rlhf serve", "limits must be positive");
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1)
        return rlhf_error_set(err, RLHF_EINVAL, "rlhf serve", "--host '%s' is not an IPv4 address", cfg->host);
    serve_server *s = calloc(1, sizeof *s);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->log = log;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    int rc = 0;
    if (cfg->model_path[0]) {
        if (!s->cfg.model_id[0]) id_from_path(cfg->model_path, s->cfg.model_id, sizeof s->cfg.model_id);
        if ((rc = model_load(&s->m, cfg->model_path, NULL, err)) ||
            (rc = tokenizer_create_bytes(&s->tok, s->m->cfg.vocab_size, err)) ||
            (rc = sampler_create(&s->smp, s->m, cfg->max_batch, err))) {
            serve_destroy(&s);
            return rc;
        }
    }
    if (cfg->rm_path[0]) {
        id_from_path(cfg->rm_path, s->rm_id, sizeof s->rm_id);
        if ((rc = reward_model_load(&s->rm, cfg->rm_path, cfg->max_batch, err))) {
            serve_destroy(&s);
            return rc;
        }
    }
    if (pthread_create(&s->worker, NULL, worker_main, s) != 0) {
        serve_destroy(&s);
        return RLHF_FAIL(err, RLHF_ESYS, "cannot start the worker thread");
    }
    s->worker_started = 1;
    s->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0,
                                 NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
                                 MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_END);
    if (!s->daemon) {
        int port = cfg->port;
        serve_destroy(&s);
        return rlhf_error_set(err, RLHF_ESYS, "rlhf serve", "cannot listen on %s:%d (in use?)", cfg->host, port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    *out = s;
    return 0;
}

int serve_port(const serve_server *s) { return s->port; }

void serve_destroy(serve_server **ps) {
    if (!ps || !*ps) return;
    serve_server *s = *ps;
    if (s->daemon) MHD_stop_daemon(s->daemon); /* waits for handler threads, which wait for the worker */
    if (s->worker_started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->worker, NULL);
    }
    sampler_destroy(&s->smp);
    tokenizer_destroy(&s->tok);
    model_destroy(&s->m);
    reward_model_destroy(&s->rm);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->done_cv);
    free(s);
    *ps = NULL;
}
