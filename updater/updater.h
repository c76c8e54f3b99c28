/* updater/updater.h — policy updaters and the launcher (updater/'s public header).
 *
 * What this folder offers:
 *   - the run configuration: one JSON document for a whole training run (model, task, rewards, RL
 *     hyper-parameters, process counts, broker, prompt selection, run directory), validated up front
 *     with errors naming the JSON path, `--set a.b=c` overrides, the resolved copy in the run dir;
 *   - the RL math of one update: RLOO advantages, per-token importance ratios, truncated IS or
 *     PPO-clip, the KL-to-reference reward penalty, and the statistics logged per step;
 *   - the processes: `rlhf updater` (train on rollout groups from the broker), `rlhf run` (the
 *     launcher that starts and supervises broker + generators + updaters), `rlhf replay` (train
 *     offline from a replay log), `rlhf eval` (held-out pass rate of a checkpoint).
 *
 * Loss normalisation (documented in docs/ARCHITECTURE.md): the policy loss is the per-token mean
 * over every completion token of every kept sample in the step,
 *     L = -(1/N_tok) * sum_i sum_t c_{i,t} * log pi_theta(y_{i,t})
 * where c_{i,t} is the stop-gradient coefficient computed by rl_token_coeffs(). */
#ifndef RLHF_UPDATER_H
#define RLHF_UPDATER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- run configuration */

enum { RL_LOSS_TIS = 0, RL_LOSS_PPO_CLIP = 1 };
enum { RUN_MODE_ASYNC = 0, RUN_MODE_SYNC = 1 };

typedef struct run_config {
    char name[128];          /* "name": run name; run_dir defaults to runs/<name> */
    char run_dir[1024];      /* "run_dir" */
    int mode;                /* "mode": RUN_MODE_ASYNC | RUN_MODE_SYNC */

    /* "model" */
    char base_checkpoint[1024]; /* "model.base_checkpoint": safetensors file of the base policy */
    json_t *arch;               /* "model.arch": model_config JSON (used to create a base when no checkpoint) */
    int train_threads;          /* "model.threads": OpenMP threads of the updater (0 = all cores) */

    /* "task" */
    char task_name[64];        /* "task.name": countdown | arith | custom */
    char train_path[1024];     /* "task.train": prompt JSONL */
    char eval_path[1024];      /* "task.eval": held-out prompt JSONL (optional) */
    int eval_prompts;          /* "task.eval_prompts": how many held-out prompts to score (0 = all) */

    json_t *rewards;           /* "rewards": array given to the reward pipeline */
    json_t *broker;            /* "broker": object given to the broker's own parser */
    json_t *selector;          /* "prompts.selector": object given to prompt_selector_create */

    /* "rl" */
    int k;                     /* rl.k: samples per prompt (>= 2 for RLOO) */
    int prompts_per_step;      /* rl.prompts_per_step: groups per optimizer step */
    float lr;                  /* rl.lr */
    float lr_min_ratio;        /* rl.lr_min_ratio: cosine schedule floor as a fraction of lr */
    int warmup_steps;          /* rl.warmup_steps */
    float weight_decay;        /* rl.weight_decay */
    float grad_clip;           /* rl.grad_clip: global L2 norm, 0 = off */
    int max_staleness;         /* rl.max_staleness (sync mode forces 0) */
    float is_cap;              /* rl.is_cap: truncation c of the IS ratio */
    int loss;                  /* rl.loss: RL_LOSS_TIS | RL_LOSS_PPO_CLIP */
    float clip_eps;            /* rl.clip_eps: PPO clip epsilon */
    float kl_beta;             /* rl.kl_beta: weight of the KL-to-reference reward penalty */
    int publish_every;         /* rl.publish_every: steps between weight versions */
    int steps;                 /* rl.steps: optimizer steps in the run */
    int checkpoint_every;      /* rl.checkpoint_every */
    uint64_t seed;             /* rl.seed */

    /* "generators" */
    int gen_count;             /* generators.count */
    float temperature;         /* generators.temperature */
    float top_p;               /* generators.top_p */
    int max_tokens;            /* generators.max_tokens */
    int gen_batch;             /* generators.batch: prompts per sampling batch */
    int gen_threads;           /* generators.threads: OpenMP threads per generator */

    /* "updaters" */
    int upd_count;             /* updaters.count (only 1 supported: no gradient all-reduce yet) */
    int reward_threads;        /* updaters.reward_threads: scoring threads beside the optimizer */

    json_t *resolved;          /* the whole resolved document (owned) */
    char source[1024];         /* where the config came from (file name), for error messages */
} run_config;

/* Parses and validates a config document. `where` names the source (file name) for messages;
 * errors name the JSON path, e.g. "cfg.json: rl.max_staleness: must be an integer >= 0".
 * Takes its own reference to `doc`. */
int run_config_from_json(run_config *cfg, json_t *doc, const char *where, rlhf_error *err);
/* Loads FILE, applies overrides ("a.b=VALUE": VALUE parsed as JSON, else taken as a string),
 * then parses. */
int run_config_load(run_config *cfg, const char *path, char *const *overrides, int n_overrides, rlhf_error *err);
/* Applies one "a.b.c=VALUE" override to a document (creating objects on the way). */
int run_config_apply_override(json_t *doc, const char *assignment, rlhf_error *err);
/* Writes the resolved document (pretty JSON) atomically to PATH. */
int run_config_write(const run_config *cfg, const char *path, rlhf_error *err);
void run_config_free(run_config *cfg);

/* ---------------------------------------------------------------- RL math */

/* RLOO advantages for G groups of k samples: A_i = r_i - mean_{j != i} r_j.
 * rewards (G, k) -> adv (G, k); keep (G): 0 when the group's rewards have no spread
 * (max - min <= 1e-6), whose advantages are then all 0. Returns the number of dropped groups. */
int rloo_advantages(float *adv, int *keep, const float *rewards, int G, int k);

typedef struct rl_loss_config {
    int loss;        /* RL_LOSS_TIS | RL_LOSS_PPO_CLIP */
    float is_cap;    /* TIS: coefficient = min(rho, is_cap) * A */
    float clip_eps;  /* PPO: clipped objective with ratio in [1-eps, 1+eps] */
} rl_loss_config;

typedef struct rl_step_stats {
    double loss;          /* value of the surrogate objective (per-token mean, sign: minimised) */
    double ratio_mean;    /* mean of rho_t over masked tokens */
    double ratio_max;
    double clip_frac;     /* TIS: fraction with rho > is_cap; PPO: fraction where the clip is active */
    long n_tokens;        /* masked tokens counted */
} rl_step_stats;

/* Per-token coefficients of the policy gradient.
 *   logp  (B, T): log pi_theta of each sampled token (current policy, forward pass)
 *   logmu (B, T): log mu, the behaviour policy's log-prob recorded by the generator
 *   mask  (B, T): 1 for completion tokens that enter the loss, 0 otherwise
 *   adv   (B):    advantage of each sample
 * Fills coef (B, T) with dL/dlogp_t, the weight that the backward pass puts on grad log pi(y_t):
 *   TIS: L = -(1/N) sum min(rho_t, c) A_i log pi(y_t)          (rho stop-gradient)
 *        dL/dlogp_t = -(1/N) min(rho_t, c) A_i
 *   PPO: L = -(1/N) sum min(rho_t A_i, clip(rho_t, 1-e, 1+e) A_i)
 *        dL/dlogp_t = -(1/N) rho_t A_i where the unclipped term is the minimum, else 0
 * N = number of masked tokens in the whole batch (per-token mean). */
void rl_token_coeffs(float *coef, rl_step_stats *st, const float *logp, const float *logmu, const float *mask,
                     const float *adv, int B, int T, const rl_loss_config *cfg);

/* KL-to-reference penalty per sample with the k1 estimator on the sampled tokens:
 *   kl_i = sum_t mask_t * (logp_t - logref_t)
 * (an unbiased estimate of KL(pi || ref) for y ~ pi). Writes kl (B); the caller subtracts
 * kl_beta * kl_i from the sample's reward before computing advantages. */
void rl_kl_penalty(float *kl, const float *logp, const float *logref, const float *mask, int B, int T);

#ifdef __cplusplus
}
#endif
#endif
