/* serve/serve.h — `rlhf serve`: an OpenAI-compatible HTTP server (libmicrohttpd) for a project
 * checkpoint and/or a reward model (serve/'s public header; the CLI is serve/serve_cli.c).
 *
 * Routes (with --api-key-env, all but /health need "Authorization: Bearer KEY", else 401):
 *   GET  /health                {"status":"ok","queued":N}, with speculative decoding also "speculative":
 *                               {drafter, gamma, adaptive, steps, verifies, drafted, accepted, acceptance,
 *                               spec_tokens, plain_tokens} (counters since start)
 *   GET  /v1/models             the model (and reward model) ids; GET /v1/models/{id} one of them (else 404)
 *   POST /v1/chat/completions   messages -> n completions; "stream": true answers Server-Sent Events
 *                               (chat.completion.chunk objects, then "data: [DONE]")
 *   POST /v1/completions        prompt (a string) -> n completions; "stream" as above
 *   POST /get_reward            {"query":[text...]} -> {"rewards":[...]} (OpenRLHF API; needs a reward model;
 *                               an empty query list gets {"rewards":[]})
 * Request fields used (an explicit null is the default): max_tokens (or max_completion_tokens, >= 1),
 * temperature in [0, 2] (default 1), top_p in (0, 1], top_k (0 or -1: off), min_p in [0, 1] (filters in
 * that order after the temperature, as model/'s sampler), seed, stop (string or up to 4 strings), stream,
 * stream_options.include_usage (a last chunk with only the usage), n (1..16, not streamed; sample k uses
 * seed + k), logprobs (chat: true; completions: 0) and chat's top_logprobs (0..20): each sampled token's
 * "logprob" (temperature 1, unfiltered), "sampling_logprob" (log q of the distribution drawn from) and the
 * K most probable tokens; not with stream. "model" must be the served id (404 model_not_found). A
 * response_format other than {"type":"text"} is refused with 400 (so a judge client falls back to its
 * text pattern); so is a value out of range, naming the field. Responses carry system_fingerprint.
 * Chat prompt: the chat template (chat_template below), else each message as "<|ROLE|>\nCONTENT\n", then
 * "<|assistant|>\n"; generation stops at any of the tokenizer's EOS ids, a stop string (the earliest
 * match), max_tokens or the model's max_seq_len.
 * Batching: every handler thread queues its request; one worker admits waiting requests into the
 * sampler's max_batch KV-cache slots at every step and decodes all running sequences together with
 * sampler_step (continuous batching); streamed tokens go out as they are chosen (serve/serve_int.h).
 * Limits: bodies over max_body bytes get 413, more than max_queue waiting requests get 503 with
 * Retry-After; malformed requests get 400; errors use OpenAI's {"error":{"message","type","param","code"}}.
 * Slow or idle clients: at most max_per_ip connections per address (more are closed at accept), and a
 * request not complete request_timeout seconds after its connection opened (or after the previous
 * response on a keep-alive connection) is closed, however steadily its bytes trickle in. */
#ifndef RLHF_SERVE_SERVE_H
#define RLHF_SERVE_SERVE_H

#include <stddef.h>
#include <stdio.h>

#include "common/common.h"

typedef struct serve_config {
    char model_path[1024];  /* checkpoint to generate with; "" = none (reward model only) */
    char rm_path[1024];     /* reward model checkpoint; "" = none */
    char tokenizer[1024];   /* "" = the model's own, "bytes", or a Hugging Face tokenizer directory */
    char chat_template[1024]; /* a Jinja file for /v1/chat/completions; "" = the chat_template of the
                               * tokenizer's or the model's tokenizer_config.json, if any (else the
                               * plain "<|role|>\ncontent\n" layout) */
    int max_seq_len;        /* > 0: caps the model's context (KV cache per slot); 0 = the model's */
    char model_id[128];     /* id in /v1/models and responses; "" = file name without extension */
    char host[64];          /* default "127.0.0.1" */
    char api_key_env[128];  /* an environment variable holding the API key every request must carry
                             * (Authorization: Bearer KEY); "" = none, allowed on a loopback host only */
    int port;               /* 0 = any free port (see serve_port) */
    int max_batch;          /* sampler slots and RM batch (default 8) */
    int max_queue;          /* waiting requests before 503 (default 64) */
    size_t max_body;        /* request body bytes (default 1 MiB) */
    int max_tokens_default; /* when a request gives none (default 128) */
    int max_connections;    /* concurrent connections (default 256) */
    int max_per_ip;         /* concurrent connections from one address (default 32) */
    int request_timeout;    /* seconds (default 10): a request's headers and body must all arrive within
                             * this long of the connection opening or of the previous response on it
                             * ending (so it is also the keep-alive idle limit); else it is closed */
    /* Speculative decoding (model/'s sampler_spec; serve/serve_spec.c): drafts verified by the model in
     * one step, emitted tokens distributed exactly as plain decoding's, greedy output identical. At most
     * one drafter; requests with a response_format (guided decoding) decode plainly. */
    char draft_model[1024]; /* a smaller checkpoint or HF directory with the model's vocabulary; "" = none */
    int ngram_draft;        /* 1: drafts from other sequences of the same prompt and the sequence itself */
    int spec_gamma;         /* most draft tokens per verify step, 1..16 (default 4) */
    int spec_adaptive;      /* 1 (default): per sequence, from its acceptance and the step cost; 0: gamma */
} serve_config;

void serve_config_default(serve_config *cfg);

typedef struct serve_server serve_server;

/* Loads the model(s), starts the worker and the HTTP daemon. `log` (may be NULL) gets one line per
 * rejected request. */
int serve_server_create(serve_server **out, const serve_config *cfg, FILE *log, rlhf_error *err);
int serve_port(const serve_server *s);
void serve_server_destroy(serve_server **s);


#endif
