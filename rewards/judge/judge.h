/* rewards/judge/judge.h — the LLM-judge client (rewards/judge/'s public header; the "judge" reward
 * source, rewards/judge_source.c, plugs it into the pipeline).
 *
 * A judge asks an OpenAI-compatible chat endpoint, POST {base_url}/v1/chat/completions, to grade a
 * completion, and turns the answer into a score in [0, 1]. Judges are slow, flaky network services, so
 * the client keeps up to `concurrency` requests in flight on one thread (libcurl multi interface),
 * retries transient failures with exponential backoff and jitter (honouring Retry-After), stops calling
 * an endpoint that keeps failing (circuit breaker), and caches answers by (model, rendered prompt).
 * Every failure ends as an item with ok = 0 and a reason, never as a score of 0.
 *
 * Config keys (JSON object; the pipeline's own keys type/name/weight/normalize/timeout_ms/on_error are
 * accepted and ignored here):
 *   base_url            string, required: "http://host:port" (the client appends /v1/chat/completions)
 *   model               string, required: the "model" field of each request
 *   api_key_env         string: NAME of the environment variable holding the API key (sent as
 *                       "Authorization: Bearer ..."); the key itself never appears in configs, logs,
 *                       error reasons or files. Unset variable = config error.
 *   template            string: user message; {prompt}, {completion} and {FIELD} (a key of the record)
 *                       are replaced, "{{" is a literal "{"; other braces are literal text.
 *   system              string: optional system message
 *   temperature         number >= 0 (default 0)
 *   max_tokens          integer > 0 (default 64)
 *   call_timeout_ms     integer > 0 (default 30000): one HTTP attempt
 *   retries             integer >= 0 (default 3): extra attempts after the first
 *   concurrency         integer 1..1024 (default 8): requests in flight
 *   backoff_ms          integer > 0 (default 250): first retry delay; doubles per attempt
 *   backoff_max_ms      integer (default 8000): cap of the doubling
 *   max_retry_after_ms  integer (default 60000): a longer Retry-After ends the item as http_429
 *   score_min/score_max numbers (default 0, 10): the judge's scale; outside is out_of_range;
 *                       the score is normalised to (raw - min) / (max - min)
 *   response_format     "auto" (default) | "json_schema" | "none": ask for {"score": N} via a JSON
 *                       schema; "auto" falls back to the text pattern for good when the server answers
 *                       a schema request with 400/422
 *   breaker_failures    integer > 0 (default 10): consecutive failed attempts (transport errors, 5xx)
 *                       that open the circuit
 *   breaker_cooldown_ms integer (default 5000): how long an open circuit fails items fast before one
 *                       probe request is let through (half-open)
 *   cache_size          integer >= 0 (default 4096): cached judgements (0 = no cache)
 *   seed                integer: jitter RNG seed (default 1)
 *
 * Score extraction: with a schema, the message content is the JSON object {"score": N}. Otherwise (or
 * when the content is not such an object) the LAST occurrence of `score` followed by optional spaces,
 * ':' or '=', optional spaces and a number (case-insensitive, e.g. "Score: 7", "score=0.5") is the score. */
#ifndef RLHF_REWARDS_JUDGE_JUDGE_H
#define RLHF_REWARDS_JUDGE_JUDGE_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "common/common.h"

typedef enum judge_reason {
    JUDGE_OK = 0,
    JUDGE_ERR_TIMEOUT,      /* "timeout": the attempt (or the item's deadline) ran out */
    JUDGE_ERR_CONNECT,      /* "connect": refused, unresolvable, reset */
    JUDGE_ERR_TRUNCATED,    /* "truncated": the body ended before its announced length */
    JUDGE_ERR_HTTP_429,     /* "http_429": still rate limited after the retries */
    JUDGE_ERR_HTTP_5XX,     /* "http_5xx": server errors after the retries (and 408) */
    JUDGE_ERR_HTTP_4XX,     /* "http_4xx": other client errors (401, 400, ...), not retried */
    JUDGE_ERR_NON_JSON,     /* "non_json": the body is not JSON */
    JUDGE_ERR_BAD_SHAPE,    /* "bad_shape": no choices[0].message.content string */
    JUDGE_ERR_NO_SCORE,     /* "no_score": the content has no score */
    JUDGE_ERR_OUT_OF_RANGE, /* "out_of_range": score outside [score_min, score_max] or not finite */
    JUDGE_ERR_CIRCUIT_OPEN, /* "circuit_open": the breaker refused the call */
    JUDGE_ERR_TOO_LARGE,    /* "too_large": response body over 1 MiB */
    JUDGE_ERR_TEMPLATE,     /* "template": a {FIELD} the record does not have */
    JUDGE_ERR_INTERNAL,     /* "internal": out of memory, curl setup */
    JUDGE_ERR_HTTP_3XX,     /* "http_3xx": a redirect; never followed (the key would go elsewhere), not retried */
    JUDGE_N_REASONS
} judge_reason;

const char *judge_reason_name(judge_reason r);

enum { JUDGE_RF_AUTO = 0, JUDGE_RF_JSON_SCHEMA = 1, JUDGE_RF_NONE = 2 };

typedef struct judge_config {
    char base_url[1024];
    char model[256];
    char api_key_env[128];     /* name of the variable, "" = no key */
    char *template_text;       /* owned */
    char *system_text;         /* owned, may be NULL */
    double temperature;
    int max_tokens;
    int call_timeout_ms;
    int retries;
    int concurrency;
    int backoff_ms, backoff_max_ms, max_retry_after_ms;
    double score_min, score_max;
    int response_format;       /* JUDGE_RF_* */
    int breaker_failures, breaker_cooldown_ms;
    int cache_size;
    uint64_t seed;
} judge_config;

/* Defaults, and the built-in template. */
void judge_config_default(judge_config *cfg);
/* Parses the keys above; `where` names the object in errors ("config.json: rewards[1]"). */
int judge_config_parse(judge_config *cfg, const json_t *obj, const char *where, rlhf_error *err);
void judge_config_free(judge_config *cfg);

/* One judgement. Inputs are borrowed for the call. */
typedef struct judge_item {
    const char *prompt;       /* in */
    const char *completion;   /* in */
    const json_t *record;     /* in, may be NULL: fields for {FIELD} placeholders */
    double deadline;          /* in: absolute rlhf_now() time, 0 = none; unfinished by then = timeout */
    int ok;                   /* out: 1 scored, 0 error */
    double score;             /* out: normalised to [0, 1] when ok, NaN otherwise */
    double raw_score;         /* out: as the judge said it */
    judge_reason reason;      /* out */
    char detail[384];         /* out: reason with specifics, e.g. "http_5xx: HTTP 503 after 4 attempts" */
    int attempts;             /* out: HTTP attempts made for this item (0 for cache hits / followers) */
    int from_cache;           /* out */
} judge_item;

typedef struct judge_stats {
    uint64_t judgements;      /* items asked for */
    uint64_t scored, errors;
    uint64_t cache_hits;      /* answered from the cache or by an identical item in the same batch */
    uint64_t http_requests;   /* attempts sent */
    uint64_t retries;
    uint64_t breaker_opens;
    uint64_t rf_fallbacks;    /* 1 once "auto" fell back to the text pattern */
    uint64_t errors_by_reason[JUDGE_N_REASONS];
} judge_stats;

typedef struct judge_client judge_client;

/* Reads the API key from the environment (error naming the variable when unset) and sets up curl.
 * `name` is the source name used in log lines. `log` (may be NULL) receives one line per retry,
 * breaker transition and fallback; lines never contain the key. The config is copied. */
int judge_client_create(judge_client **out, const judge_config *cfg, const char *name, FILE *log,
                        rlhf_error *err);
void judge_client_destroy(judge_client **jc);
/* Scores n items; per-item outcomes are in the items. Returns 0, or a negative code only when the
 * call itself could not run (bad arguments, out of memory) — then every item is an error too. */
int judge_score(judge_client *jc, judge_item *items, int n, rlhf_error *err);
const judge_stats *judge_client_stats(const judge_client *jc);

/* Helpers exposed for tests. */
/* Renders cfg's template for one item into a malloc'd string; NULL with *missing set to the first
 * absent field (malloc'd) when the record lacks one. */
char *judge_render(const char *tmpl, const char *prompt, const char *completion, const json_t *record,
                   char **missing);
/* Extracts a raw score from message content: 0 on success, -1 when there is none. */
int judge_extract_score(const char *content, double *out);

#endif
