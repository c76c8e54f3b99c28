/* generator/generator.h — trajectory generators (generator/'s public header).
 *
 * A generator process (`rlhf generator --config RUN/config.json --id N`, also `rlhf-generator`)
 * loads the base checkpoint, connects to the broker, requests PROMPT_BATCHes, samples k completions
 * per prompt with the batched KV-cache sampler, and pushes one ROLLOUT_GROUP per prompt with token ids,
 * behaviour log-probs, finish reasons and a policy version. Async mode streams (sampler_run_stream):
 * the sampler's slots stay full across batches (the next batch is asked for, without waiting, once
 * the prompts in hand are all admitted), a group is pushed when its k samples are done, and new
 * WEIGHTS are taken between forward steps; a group's policy_version is the oldest version any of its
 * tokens saw, and each token's behaviour log-prob is that of the weights that sampled it. Sync mode
 * samples one batch per policy version (weights taken between batches only) and then waits for the
 * next version.
 *
 * The sampling step and the process body are library functions, so tests, `rlhf eval` and the
 * process share them; generator_cli.c keeps only the command line. */
#ifndef RLHF_GENERATOR_GENERATOR_H
#define RLHF_GENERATOR_GENERATOR_H

#include <signal.h>
#include <stdint.h>

#include "common/common.h"
#include "broker/wire.h"
#include "guided/guided.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How completions are sampled and when they end. A completion ends at one of the tokenizer's EOS ids
 * (tok->eos_ids, kept as its last token), at a stop string (matched on the decoded bytes, across token
 * boundaries: the tokens end with the one that completed it), or after max_tokens. */
typedef struct gen_params {
    int k;                 /* completions per prompt */
    float temperature;
    float top_p;           /* 1: off */
    int top_k;             /* 0: off */
    float min_p;           /* 0: off */
    int max_tokens;        /* completion budget (also capped by the model's max_seq_len) */
    uint64_t seed;         /* base of the per-sample RNG streams */
    const char *const *stop; /* stop strings (the run's task.stop; "\n" for the one-line tasks); may be NULL */
    int n_stop;
    int include_stop;      /* 1: the matched stop string stays in the completion's text */
    /* 0: the behaviour log-prob recorded per token is log q, q the distribution sampled from (temperature,
     * top-k, top-p, min-p; sample_result.sampling_logprobs); 1: log pi at temperature 1, unfiltered
     * (sample_result.logprobs). See generators.behaviour_logprobs in docs/RUNNING.md. */
    int policy_logprobs;
    /* task.guided (docs/GUIDED.md): every sample is masked by a matcher of this grammar over this
     * vocabulary (both the caller's; NULL: unguided) */
    guided_grammar *guided;
    const guided_vocab *guided_vocab;
    /* NULL: plain decoding. Else speculative decoding with this drafter state (generators.speculative; the
     * caller's, kept across batches so that earlier rollouts of a prompt feed the n-gram drafter); each
     * group carries the drafter's counters over its sampling time (wire_rollout_group.spec_*). */
    sampler_spec *spec;
} gen_params;

/* Samples k completions for each of prompts[0..n) with `s` (a sampler over `m`) and fills
 * groups[0..n) (caller-zeroed; free each with wire_rollout_group_free). Completions end as gen_params
 * says. Each group carries the token ids, the behaviour log-probs gp->policy_logprobs selects, the
 * finish reasons and the completion texts (decoded, cut at a stop string unless include_stop, invalid
 * UTF-8 as U+FFFD), which the reward sources score; policy_version = m->version; seq numbers are seq0,
 * seq0+1, ... Sample j of prompt i uses the RNG stream seed ^ hash(seq0 + i, j), so a batch is
 * reproducible from its seq numbers. */
int generator_sample_groups(model *m, sampler *s, const tokenizer *tok, const wire_prompt *prompts, int n,
                    const gen_params *gp, const char *generator_id, uint64_t seq0, wire_rollout_group *groups,
                    rlhf_error *err);

/* The two halves of generator_sample_groups, for callers that admit prompts one at a time (the
 * generator process's streaming loop): the k requests of prompt p with sequence number seq (gm: k matchers,
 * created here when gp->guided, each request's constraint; the caller destroys them after the results; pids gets
 * the encoded prompt, freed by the caller; reqs (k) point into it), and the group from its k results. */
int generator_prompt_requests(const model *m, const tokenizer *tok, const wire_prompt *p, const gen_params *gp,
                              uint64_t seq, int32_t **pids, int *plen, sample_request *reqs, guided_matcher **gm,
                              rlhf_error *err);
/* g (overwritten) <- the group; RLHF_ENOMEM when an allocation failed (free g with wire_rollout_group_free). */
int generator_group_fill(wire_rollout_group *g, const wire_prompt *p, const int32_t *pids, int plen,
                         const sample_result *res, const gen_params *gp, const char *generator_id, uint64_t seq,
                         uint64_t policy_version, double gen_seconds);

/* g->spec_* <- the speculative-decoding counters accumulated between two snapshots of the drafter's stats. */
void generator_group_spec_counters(wire_rollout_group *g, const sampler_spec_stats *before,
                                   const sampler_spec_stats *after);

/* What `rlhf generator` runs: loads the run's config and base model, connects to the broker as
 * generator-ID.PID and samples until *stop is set or the broker says stop; *reconnect (set by the
 * caller's signal handler when the launcher restarted the broker) starts a new broker session and
 * is cleared. Returns 0, 2 for a config error, 1 for any other failure (err filled). */
typedef struct generator_options {
    const char *config_path;                  /* RUN_DIR/config.json */
    int id;                                   /* generator index in the run (>= 0) */
    volatile const sig_atomic_t *stop;        /* may be NULL */
    volatile sig_atomic_t *reconnect;         /* may be NULL */
    const char *credentials;                  /* NULL: RUN_DIR/credentials; else a directory from
                                               * `rlhf credentials` (a generator on another host) */
    const char *endpoint;                     /* NULL: the config's broker.endpoint */
    const char *key_file;                     /* with server_key_file: this host's key pair (`rlhf keygen`),
                                               * listed in the broker's broker.authorized_keys; replaces
                                               * `credentials` (tcp:// endpoints only: CURVE) */
    const char *server_key_file;              /* a file whose public= line is the broker's public key */
} generator_options;
/* Returns the process's exit status: 0 stopped cleanly, else an RLHF_EXIT_* class (common/common.h):
 * 2 an unreadable or invalid config, 3 environment (missing base checkpoint, disk), 1 transient. */
int generator_main(const generator_options *o, rlhf_error *err);

/* gp <- the sampling settings of a run config: rl.k, generators.{temperature, top_p, top_k, min_p,
 * max_tokens, behaviour_logprobs}, task.{stop, include_stop} (gp->stop points into cfg); seed 0. */
struct run_config;
void generator_params_from_config(const struct run_config *cfg, gen_params *gp);

#ifdef __cplusplus
}
#endif
#endif
