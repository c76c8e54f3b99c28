/* serve/serve_int.h — private to serve/ (and its test, tests/serve): the server object, the request
 * ("job") it queues for the worker, and the worker (serve/serve_decode.c).
 *
 * Threads: libmicrohttpd runs one thread per connection; each handler builds a job and queues it. One
 * worker thread owns the model: it admits waiting generation jobs into free KV-cache slots of the
 * sampler at every step (continuous batching: a request that arrives while others decode joins at the
 * next step), feeds prompt chunks and one decode row per running sequence through sampler_step, picks
 * each sequence's next token (with --draft-model / --ngram-draft: feeds its drafts too and takes the
 * tokens model/'s verification emits, serve/serve_spec.c), and scores waiting /get_reward jobs as one
 * batched RM forward. Streaming jobs receive their SSE events as tokens are produced; the connection
 * thread sends them from a content reader that waits on `stream_cv`. Everything a job shares with a
 * connection thread is guarded by the server's `mu`. */
#ifndef RLHF_SERVE_SERVE_INT_H
#define RLHF_SERVE_SERVE_INT_H

#include <pthread.h>
#include <stdint.h>

#include "guided/guided.h"
#include "model/model.h"
#include "rewards/rm/rm.h"
#include "serve/serve.h"
#include "template/template.h"

enum { JOB_GENERATE = 0, JOB_REWARD = 1 };
/* OpenAI's system_fingerprint: names the serving configuration (one server, one model) */
#define SERVE_FINGERPRINT "fp_rlhf_serve"
enum { SERVE_MAX_STOPS = 4, SERVE_MAX_N = 16, SERVE_MAX_TOP_LOGPROBS = 20 };

typedef struct serve_job {
    int kind;
    /* generate: inputs */
    int32_t *prompt_ids;          // (prompt_len)
    int prompt_len;
    sample_params params;         /* temperature, top_k, top_p, max_new_tokens, seed; stops below */
    char *stops[SERVE_MAX_STOPS];
    int n_stops;
    int stream, chat;
    int logprobs;                 /* the response lists each token with its log-probs (not streamed) */
    int include_usage;            /* stream_options.include_usage: a last chunk with only the usage */
    int n_choices;                /* "n": samples of the prompt (non-streamed), each a job decoded alongside */
    struct serve_server *server;  /* for the streaming callbacks */
    char rid[64];                 /* response id */
    long long created;
    /* generate: outputs (worker-owned until done) */
    char *text;                   /* completion bytes so far (raw, may be invalid UTF-8) */
    size_t text_len, text_cap;
    size_t emitted;               /* bytes of text already sent as SSE */
    int n_tokens;
    int32_t *out_ids;             // (n_tokens) with logprobs: the sampled ids,
    float *out_lp;                // (n_tokens) log pi(y) at temperature 1, unfiltered,
    float *out_lq;                // (n_tokens) log q(y) of the distribution sampled from (0 when greedy)
    int top_logprobs;             /* chat "top_logprobs": the K most probable tokens at each position */
    int32_t *out_top_ids;         // (n_tokens, top_logprobs) their ids, most probable first
    float *out_top_lp;            // (n_tokens, top_logprobs) their log-probs (temperature 1, no filters)
    int out_cap;
    int finish;                   /* sample_finish */
    /* streaming: SSE bytes produced (under mu) and sent by the connection thread */
    char *sse;
    size_t sse_len, sse_cap, sse_sent;
    int cancelled;                /* the client went away: stop generating */
    /* guided generation (response_format json_schema / json_object): the spec, the cached grammar this
     * job holds (released by serve_job_free through `server`) and the job's matcher (worker-only) */
    json_t *guided_spec;
    guided_grammar *grammar;
    guided_matcher *matcher;
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
    struct template_program *chat_tmpl; /* NULL: no template (the plain layout) */
    char *bos_token, *eos_token;        /* the template's bos_token / eos_token (may be NULL) */
    char *api_key;                      /* from cfg.api_key_env: requests must carry it; NULL = open */
    sampler *smp;
    reward_model *rm;
    char rm_id[128];
    struct MHD_Daemon *daemon;
    int port;
    pthread_t worker;
    int worker_started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;       /* worker: a job was queued */
    pthread_cond_t done_cv;       /* handlers: a job finished */
    pthread_cond_t stream_cv;     /* streaming readers: SSE bytes appended or a job finished */
    serve_job *head, *tail;       /* waiting jobs */
    int queued;
    int stopping;
    unsigned long serial;         /* request ids and default seeds */
    /* request deadlines (serve.c): every open connection, and the thread that closes late ones */
    pthread_mutex_t conn_mu;
    struct serve_conn *conns;     /* doubly linked */
    pthread_t reaper;
    int reaper_started, reaper_stop;
    pthread_cond_t reaper_cv;
    unsigned long timed_out;      /* connections closed for a late request */
    /* guided generation: compiled grammars by spec and the vocabulary trie (made at the first guided
     * request), both under guided_mu; a grammar's automaton and masks are then used by the worker only */
    pthread_mutex_t guided_mu;
    guided_cache *gcache;
    guided_vocab *gvocab;
    /* speculative decoding (serve/serve_spec.c; NULL when off): the draft model and its sampler, the spec
     * and the worker's batch over smp's slots; spec_stats is the worker's copy of the counters for
     * /health, updated under mu */
    model *draft_m;
    sampler *draft_smp;
    sampler_spec *spec;
    sampler_spec_batch *spec_bt;
    sampler_spec_stats spec_stats;
};

void serve_job_free(serve_job *j);
/* The job's grammar for j->guided_spec (the server's cache) and its matcher; the error names the spec's path. */
int serve_attach_guided(serve_server *s, serve_job *j, rlhf_error *err);
/* Queues j (0), or refuses when max_queue jobs wait or the server stops (-1). Caller holds no lock. */
int serve_submit(serve_server *s, serve_job *j);
/* Blocks until j is done. */
void serve_wait(serve_server *s, serve_job *j);
void *serve_worker_main(void *arg);

/* Speculative decoding (serve/serve_spec.c). setup: after the model is loaded, the draft model (checked
 * against the model's vocabulary), the spec and the batch; nothing when cfg has no drafter. teardown:
 * after the worker stopped, logs the acceptance counters to s->log and frees them. health: the
 * "speculative" object of /health (caller holds mu), NULL when off. */
int serve_spec_setup(serve_server *s, rlhf_error *err);
void serve_spec_teardown(serve_server *s);
json_t *serve_spec_health(const serve_server *s);

/* Picks a token from logits (V) under p's temperature, then top_k, top_p, min_p (the order of model/'s
 * sampler) with one uniform draw from rng (temperature 0: argmax). `scratch` holds 2*V floats. Writes
 * log pi(y) at temperature 1, unfiltered, to *lp_pi and log q(y), q the distribution drawn from (0 when
 * greedy), to *lp_q (either may be NULL). The plain reference sampler of rlhf serve. */
int32_t serve_choose_token(const float *logits, int V, const sample_params *p, rlhf_rng *rng, float *scratch,
                           float *lp_pi, float *lp_q);

#endif
