/* generator/generator.h — trajectory generators (generator/'s public header).
 *
 * A generator process (`rlhf generator --config RUN/config.json --id N`, also `rlhf-generator`)
 * loads the base checkpoint, connects to the broker, and loops: take the newest WEIGHTS version the
 * broker has fanned out (between sampling batches, never during one), request a PROMPT_BATCH,
 * sample k completions per prompt with the batched KV-cache sampler, and push one ROLLOUT_GROUP per
 * prompt with token ids, behaviour log-probs, finish reasons and the policy version that sampled
 * them. In sync mode it samples one batch per policy version and then waits for the next version.
 *
 * The sampling step and the process body are library functions, so tests, `rlhf eval` and the
 * process share them; generator_cli.c keeps only the command line. */
#ifndef RLHF_GENERATOR_GENERATOR_H
#define RLHF_GENERATOR_GENERATOR_H

#include <signal.h>
#include <stdint.h>

#include "common/common.h"
#include "broker/wire.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gen_params {
    int k;                 /* completions per prompt */
    float temperature;
    float top_p;
    int max_tokens;        /* completion budget (also capped by the model's max_seq_len) */
    uint64_t seed;         /* base of the per-sample RNG streams */
} gen_params;

/* Samples k completions for each of prompts[0..n) with `s` (a sampler over `m`) and fills
 * groups[0..n) (caller-zeroed; free each with wire_rollout_group_free). Completions stop at a newline
 * or EOS. The behaviour log-probs recorded are the policy's own (temperature 1) log-probs of the
 * sampled tokens; policy_version = m->version; seq numbers are seq0, seq0+1, ... Sample j of prompt i
 * uses the RNG stream seed ^ hash(seq0 + i, j), so a batch is reproducible from its seq numbers. */
int generator_sample_groups(model *m, sampler *s, const tokenizer *tok, const wire_prompt *prompts, int n,
                    const gen_params *gp, const char *generator_id, uint64_t seq0, wire_rollout_group *groups,
                    rlhf_error *err);

/* What `rlhf generator` runs: loads the run's config and base model, connects to the broker as
 * generator-ID.PID and samples until *stop is set or the broker says stop; *reconnect (set by the
 * caller's signal handler when the launcher restarted the broker) starts a new broker session and
 * is cleared. Returns 0, 2 for a config error, 1 for any other failure (err filled). */
typedef struct generator_options {
    const char *config_path;                  /* RUN_DIR/config.json */
    int id;                                   /* generator index in the run (>= 0) */
    volatile const sig_atomic_t *stop;        /* may be NULL */
    volatile sig_atomic_t *reconnect;         /* may be NULL */
} generator_options;
int generator_main(const generator_options *o, rlhf_error *err);

#ifdef __cplusplus
}
#endif
#endif
