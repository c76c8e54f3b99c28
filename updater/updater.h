/* updater/updater.h — policy updaters (updater/'s public header).
 *
 * What this folder offers:
 *   - the RL math of one update: RLOO advantages, per-token importance ratios, truncated IS or
 *     PPO-clip, the KL-to-reference reward penalty, and the statistics logged per step;
 *   - scoring rollout groups through the reward pipeline on threads beside the optimizer;
 *   - the policy, its optimizer step, checkpoints and the metrics log;
 *   - the updater session (what the online process and offline replay share) and updater_main,
 *     the body of the `rlhf updater` process.
 *
 * Loss normalisation (documented in docs/ARCHITECTURE.md): the policy loss is the per-token mean
 * over every completion token of every kept sample in the step,
 *     L = -(1/N_tok) * sum_i sum_t c_{i,t} * log pi_theta(y_{i,t})
 * where c_{i,t} is the stop-gradient coefficient computed by rl_token_coeffs(). */
#ifndef RLHF_UPDATER_UPDATER_H
#define RLHF_UPDATER_UPDATER_H

#include <stddef.h>
#include <stdint.h>

#include <signal.h>

#include <jansson.h>

#include "broker/wire.h"
#include "common/common.h"
#include "model/model.h"
#include "rewards/rewards.h"
#include "run/run.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- RL math */

/* RLOO advantages for G groups of k samples: A_i = r_i - mean_{j != i} r_j.
 * rewards (G, k) -> adv (G, k); keep (G): 0 when the group's rewards have no spread
 * (max - min <= 1e-6), whose advantages are then all 0. Returns the number of dropped groups. */
int rl_rloo_advantages(float *adv, int *keep, const float *rewards, int G, int k);
/* The same over the scored samples only: scored (G, k) (NULL = all), 0 for a sample no reward source
 * scored. Such a sample gets advantage 0 and is not in any baseline: A_i = r_i - mean_{j != i, scored} r_j.
 * keep[g] = 0 when fewer than 2 samples of the group were scored, or the scored ones have no spread. */
/* The advantage estimators of rl.advantage over a step's G groups (group g: k[g] samples, rewards back
 * to back in `rewards` (S)); adv (S); keep (G) 0 for a group without spread (k < 2 or max - min <= 1e-6:
 * all-zero advantages under every estimator). Returns how many were dropped.
 *   rloo          A_i = r_i - mean_{j != i} r_j
 *   grpo          A_i = (r_i - mean_g) / (std + 1e-6), std the group's (scale group), the step's rewards'
 *                 (scale batch), or 1 (scale none); std unbiased (n - 1)
 *   dr_grpo       A_i = r_i - mean_g
 *   reinforce_pp  r_i - mean_g, then whitened over the kept samples of the step: (a - mean) / (std + 1e-6) */
int rl_advantages(float *adv, int *keep, const float *rewards, const int *k, int G, int estimator, int scale);
int rl_rloo_advantages_scored(float *adv, int *keep, const float *rewards, const unsigned char *scored, int G, int k);


typedef struct rl_loss_config {
    int loss;         /* RL_LOSS_*: tis, ppo_clip, decoupled_ppo, gspo, cispo */
    float is_cap;     /* TIS: coefficient = min(rho, is_cap) * A */
    float clip_eps;   /* both sides of the clip when clip_low / clip_high are 0 */
    float clip_low, clip_high; /* PPO, decoupled PPO, GSPO, CISPO: the ratio's range [1-low, 1+high] */
    float clip_c;     /* PPO dual clip: a negative advantage's term is at least clip_c * A (0: off) */
    float behav_cap;  /* decoupled PPO: tokens with pi_prox / mu above this are dropped (coefficient 0) */
    int agg;          /* RL_AGG_*: token_mean (default), seq_mean_token_sum, seq_mean_token_mean, seq_mean_token_sum_norm */
    /* the update's denominators (over every rank's share of the mini-batch): tokens, sequences with at
     * least one token, and the constant length of seq_mean_token_sum_norm; 0: this call's own counts */
    double norm_tokens, norm_seqs, norm_len;
    /* rl_regularizers: the KL term in the loss (rl.kl.in = "loss": its weight, 0 off; estimator 1..3)
     * and the entropy bonus (rl.entropy_coef), aggregated with the policy term's weights */
    float kl_loss_beta, entropy_coef;
    int kl_estimator;
} rl_loss_config;

typedef struct rl_step_stats {
    double loss;          /* value of the surrogate objective (per-token mean, sign: minimised) */
    double ratio_mean;    /* mean of rho_t = pi_theta / mu over masked tokens */
    double ratio_max;
    double clip_frac;     /* TIS: fraction with rho > is_cap; PPO: fraction where the clip is active */
    long n_tokens;        /* masked tokens counted */
    /* decoupled PPO: the behaviour weight pi_prox / mu over masked tokens, and the tokens dropped by the cap */
    double behav_mean, behav_max;
    long behav_dropped;
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
 *   decoupled PPO (logprox (B, T): log pi_prox, the proximal policy; w_t = pi_prox / mu, r_t = pi_theta / pi_prox):
 *        L = -(1/N) sum_{w_t <= cap} w_t min(r_t A_i, clip(r_t, 1-e, 1+e) A_i)      (w stop-gradient)
 *        dL/dlogp_t = -(1/N) w_t r_t A_i where the unclipped term is the minimum and w_t <= cap, else 0
 *   CISPO: L = -(1/N) sum sg(clip(rho_t, 1-lo, 1+hi)) A_i log pi(y_t): every token contributes
 *   GSPO (sequence ratio s_i = exp(mean_t (log pi - log mu)) over the sequence's tokens):
 *        L = -sum_i W_i min(s_i A_i, clip(s_i, 1-lo, 1+hi) A_i), W_i the sequence's total weight below;
 *        dL/dlogp_t = -W_i s_i A_i / |y_i| where unclipped, else 0
 *   PPO's clip uses [1-lo, 1+hi]; with clip_c > 0 a negative advantage's term is max(min(...), clip_c A_i).
 * The 1/N above is the token_mean aggregation (N = the update's tokens; dropped tokens stay in N). Each
 * token's weight by cfg->agg: token_mean 1/N; seq_mean_token_sum 1/G; seq_mean_token_mean 1/(G |y_i|);
 * seq_mean_token_sum_norm 1/(G L), G the update's sequences, L = norm_len.
 * logprox is read only by decoupled PPO (NULL otherwise). */
void rl_token_coeffs(float *coef, rl_step_stats *st, const float *logp, const float *logmu, const float *logprox,
                     const float *mask, const float *adv, int B, int T, const rl_loss_config *cfg);
/* Decoupled PPO's interpolated proximal log-probs (rl.prox = "interpolate"):
 *   log pi_prox = log mu + alpha_t (log pi_theta - log mu),  alpha_t = lag_t / (lag_t + 1)
 * where lag_t (B, T) is how many versions the token's behaviour policy is behind the weights this step
 * starts from (pi_prox = those weights, pi_theta the step's result one version later; a fresh token has
 * pi_prox = mu; a completion sampled across versions has its tokens' own lags). Writes logprox (B, T)
 * on masked tokens, 0 elsewhere; logp is read as a constant. */
void rl_interpolate_prox(float *logprox, const float *logp, const float *logmu, const float *mask, const long *lag,
                         int B, int T);

/* One token's KL estimate between the policy (log p) and the reference (log r) on a token sampled from
 * the policy, and its derivative in log p (Schulman's estimators, with d = log r - log p):
 *   k1 = -d                      d/dlogp = 1
 *   k2 = d^2 / 2                 d/dlogp = -d
 *   k3 = exp(d) - 1 - d          d/dlogp = 1 - exp(d)      (unbiased and never negative) */
double rl_kl_token(int estimator, double logp, double logref, double *grad);
/* KL per sample with `estimator` (1..3), summed over its completion tokens: kl (B). */
void rl_kl_penalty_est(float *kl, const float *logp, const float *logref, const float *mask, int B, int T, int estimator);
/* The regularisers of the loss, added with the policy term's aggregation weights w_t (cfg->agg and
 * denominators): the KL term beta * sum_t w_t k(log pi_t, log ref_t) (cfg->kl_loss_beta > 0; its gradient
 * added to coef) and the entropy bonus -entropy_coef * sum_t w_t H_t (its dL/dH into dent, (B, T), when
 * dent is not NULL). logref may be NULL when kl_loss_beta is 0. Returns the value added to the loss; *kl_out
 * gets the KL term's value before beta. */
double rl_regularizers(float *coef, float *dent, const float *logp, const float *logref, const float *ent,
                       const float *mask, int B, int T, const rl_loss_config *cfg, double *kl_out);
/* DAPO's soft overlong punishment: 0 up to max_tokens - buffer tokens, then falling linearly to -penalty
 * at max_tokens (and beyond). */
float rl_overlong_shaping(int n_tokens, int max_tokens, int buffer, float penalty);

/* KL-to-reference penalty per sample with the k1 estimator on the sampled tokens:
 *   kl_i = sum_t mask_t * (logp_t - logref_t)
 * (an unbiased estimate of KL(pi || ref) for y ~ pi). Writes kl (B); the caller subtracts
 * kl_beta * kl_i from the sample's reward before computing advantages. */
void rl_kl_penalty(float *kl, const float *logp, const float *logref, const float *mask, int B, int T);

/* ---------------------------------------------------------------- scored groups */

/* One rollout group with its rewards, as the optimizer consumes it. */
typedef struct scored_group {
    wire_rollout_group g;   /* owned (wire_rollout_group_free) */
    int n_sources;
    float *src;             // (n_sources, k) per-source raw reward, NaN when that source failed
    float *total;           // (k) weighted total
    int *src_errors;        // (n_sources) ERROR items in this group
    rlhf_reward_status *src_status; // (n_sources, k) each source's status per sample; NULL when none failed
    int skipped;            /* a skip_group on_error policy fired, or bad_tokens: not trained */
    int bad_tokens;         /* a token id outside the model's vocabulary: skipped unscored, counted */
    unsigned char *unscored; // (k) 1 when no source scored sample i (every source SKIP): it is left out of
                             // the group's RLOO baseline and of the loss; NULL when every sample was scored
    int *src_skipped;       // (n_sources) SKIP items per source in this group
    int *src_clipped;       // (n_sources) scores clipped into the source's range in this group
    double *src_ms;         // (n_sources) this group's share of each source's batch time, ms
    reward_source_metric *metrics; /* what v2 plugins reported for the batch this group was scored in
                                      (every group of the batch carries the batch's values) */
    size_t n_metrics;
    double score_seconds;   /* wall time spent scoring it */
    uint64_t log_index;     /* position in the replay log (records), or UINT64_MAX when unknown */
    const char *fate;       /* set when it is consumed: "trained", "zero_var", "stale" or "skipped" */
    struct scored_group *next;
} scored_group;
void updater_scored_group_free(scored_group *s);
/* Samples of the group some reward source scored (all k when sg->unscored is NULL). */
int updater_group_n_scored(const scored_group *sg);

/* Scores groups on `n_threads` threads beside the optimizer: raw groups in, scored groups out.
 * One reward_pipeline per thread (a pipeline serialises its calls). */
typedef struct scorer scorer;
int updater_scorer_create(scorer **out, const json_t *rewards, const char *where, int n_threads, const tokenizer *tok,
                          rlhf_error *err);
void updater_scorer_destroy(scorer **s);
void updater_scorer_submit(scorer *s, scored_group *g);  /* takes ownership */
/* Token ids of groups must be in [0, vocab) (0 = unchecked): a group with another is not scored but
 * comes out skipped with bad_tokens set (submit and score_now alike), whatever path it came by (live, the
 * replay log at recovery, `rlhf replay`): one such group would fail every training step it is in. */
void updater_scorer_set_vocab(scorer *s, int vocab);
/* 0 when every prompt and completion token id of g is in [0, vocab); else an error naming the group. */
int updater_group_check_tokens(const wire_rollout_group *g, int vocab, rlhf_error *err);
scored_group *updater_scorer_take(scorer *s, double timeout_s);
int updater_scorer_in_flight(scorer *s);                /* submitted, not yet taken */
int updater_scorer_n_sources(const scorer *s);
const char *updater_scorer_source_name(const scorer *s, int i);
/* 0, or the first failure of a source with on_error "fail" seen by the scoring threads (err filled):
 * the caller stops the run with it. */
int updater_scorer_failed(scorer *s, rlhf_error *err);
/* The source's max_error_rate and error_window (reward_pipeline_source_max_error_rate). */
double updater_scorer_max_error_rate(const scorer *s, int i, int64_t *window);
/* Source i's child processes summed over the scoring threads (reward_pipeline_source_resources);
 * 1 when it runs in this process. */
int updater_scorer_source_resources(const scorer *s, int i, double *rss_mb, double *cpu_s, int64_t *restarts);
/* The optimizer step that v2 reward sources see as the batch's training state (rlhf_reward_batch.step). */
void updater_scorer_set_step(scorer *s, long step);
/* Scores synchronously on the caller's thread (replay: deterministic). */
int updater_scorer_score_now(scorer *s, scored_group *g, rlhf_error *err);
/* Same for n groups in one pipeline call (eval). */
int updater_scorer_score_batch_now(scorer *s, scored_group **gs, int n, rlhf_error *err);

/* ---------------------------------------------------------------- the policy and its optimizer */

typedef struct updater_dist updater_dist; /* data-parallel updaters over MPI (updater/dist.c) */

typedef struct policy_state {
    run_config *cfg;           /* borrowed */
    updater_dist *dist;        /* borrowed; NULL (or one rank): a single updater */
    model *m;                  /* the policy being trained; with model.lora its frozen base */
    model *ref;                /* reference (base) model for the KL penalty, NULL when kl_beta = 0 */
    int ref_is_base;           /* ref == m: with model.lora and no rl.ref_reset_every the reference is the
                                * frozen base itself, read by ref_tr without the adapters (no second copy) */
    tokenizer *tok;            /* the run's tokenizer (model.tokenizer): decodes completions for scoring */
    model_trainer *tr;
    model_trainer *ref_tr;
    adamw *opt;                /* over the model's parameters, or (model.lora) over the adapters' */
    model_lora *lora;          /* model.lora: the trained adapters (NULL: full fine-tuning) */
    int micro_batch;           /* sequences per forward/backward */
    long step;                 /* optimizer steps done */
    uint64_t version;          /* newest published policy_version */
    rlhf_rng rng;
    uint64_t log_records;      /* replay-log records consumed (trained or dropped) */
    /* counters carried across steps for metrics */
    long groups_total, groups_dropped_stale, groups_dropped_zero_var, groups_skipped, groups_dropped_unscored;
    double gen_seconds_acc, gen_tokens_acc;
    double wall_start;
    double wall_offset;        /* wall_s of the run before this process (resume) */
    int mark_eval;             /* 1 (the live updater): checkpoints due for eval.every get eval.pending */
    /* 1 (a replay whose prompts_per_step, max_staleness or publish_every differ from the recording):
     * a group's lag is measured against recorded_version, the newest policy_version of the records
     * consumed so far (the recording's publishing order), since the replay's own versions no longer
     * line up with the recorded ones; it is never negative */
    int recorded_clock;
    uint64_t recorded_version;
    /* the last step's groups that had no reward spread once the KL penalty was subtracted (marked
     * fate "zero_var" by the step; with kl_beta = 0 the session never passes such a group) */
    int zero_var_after_kl;
} policy_state;

int updater_policy_init(policy_state *ps, run_config *cfg, rlhf_error *err);
/* The trained parameters: the adapters with model.lora, else the model's (their floats and count), and
 * their gradient buffer. */
float *updater_policy_params(policy_state *ps, size_t *n);
float *updater_policy_grads(policy_state *ps);
/* The current policy as one model in dst (of m's config): base + adapters merged with model.lora. */
int updater_policy_merged(const policy_state *ps, model *dst, rlhf_error *err);
void updater_policy_fini(policy_state *ps);

/* Staleness lag of a group against the newest published version. */
static inline long group_lag(const policy_state *ps, const scored_group *s) {
    if (ps->recorded_clock) return (long)ps->recorded_version - (long)s->g.policy_version;
    return (long)ps->version - (long)s->g.policy_version;
}

/* One optimizer step on `n` kept groups (each has spread, none stale). Fills `metrics` with the
 * step's training metrics (train/..., is_ratio/..., kl, entropy). Does not bump version. */
int updater_policy_train_step(policy_state *ps, scored_group **groups, int n, json_t *metrics, const char *const *src_names,
                      rlhf_error *err);

/* ---------------------------------------------------------------- data parallelism (updaters.count > 1)
 *
 * Under `mpirun -np U` (the launcher does it for updaters.count = U) rank 0 is the updater; ranks
 * 1..U-1 follow (updater_policy_follow). updater_policy_train_step on rank 0 broadcasts the step's
 * groups; every rank runs its share of the samples (an equal split, in micro-batches) and the
 * gradient and statistics are summed in rank order before the identical AdamW step. */
/* MPI_Init when started by mpirun with more than one rank, else a single-rank no-op object. */
int updater_dist_create(updater_dist **out, rlhf_error *err);
void updater_dist_destroy(updater_dist **d);
int updater_dist_rank(const updater_dist *d);
/* The MPI library this build uses ("Open MPI v4.1.4"), for rlhf --version. */
void updater_dist_describe(char *buf, size_t cap);
int updater_dist_size(const updater_dist *d);
/* In-place sums over ranks, in rank order (reproducible); no-ops on one rank. */
int updater_dist_sum_f32(updater_dist *d, float *buf, size_t n, rlhf_error *err);
int updater_dist_sum_f64(updater_dist *d, double *buf, size_t n, rlhf_error *err);
int updater_dist_max_f64(updater_dist *d, double *buf, size_t n, rlhf_error *err);
/* Rank 0's (*buf, *n) to every rank (others get a malloc'd copy in *buf). */
int updater_dist_bcast(updater_dist *d, void **buf, size_t *n, rlhf_error *err);
/* What the RL step reads of its groups, as bytes and back (the unpacked groups carry no texts, ids or
 * per-source scores: free each with updater_scored_group_free). */
int updater_dist_pack_groups(scored_group **groups, int n, void **out, size_t *out_n);
int updater_dist_unpack_groups(const void *buf, size_t len, scored_group ***out, int *out_n);
/* A follower rank's life: takes the steps (and states) rank 0 broadcasts until rank 0 says stop (0),
 * or an error. */
int updater_policy_follow(policy_state *ps, rlhf_error *err);
/* Rank 0: sends its parameters, optimizer state and step to the followers, which take them over
 * (updater_policy_follow) — for a start whose state only rank 0 can build (a replay from a live
 * run's checkpoint). A no-op on one rank. */
int updater_policy_share_state(policy_state *ps, rlhf_error *err);
/* A follower: takes over the state message `buf` (the first broadcast it received). */
int updater_policy_apply_state(policy_state *ps, const void *buf, size_t n, rlhf_error *err);
/* The first broadcast a follower receives, to look at before it builds its policy: 1 (a state
 * message, in *buf: malloc'd), 0 (rank 0 said stop), or a negative error. */
int updater_policy_await_state(updater_dist *d, void **buf, size_t *n, rlhf_error *err);
/* OpenMP threads for this rank: an explicit model.threads as it is (per rank); 0 (all cores) becomes
 * the host's CPUs divided between the ranks on this host. `configured` unchanged on one rank. */
int updater_dist_threads(const updater_dist *d, int configured);
/* Ends the whole MPI job with `status` (a rank that cannot go on: the others would wait for it in the
 * next collective); exit(status) on one rank. Does not return. */
_Noreturn void updater_dist_abort(updater_dist *d, int status);
/* The gradient sum goes in buckets of this many floats (updaters.bucket_mb), in rank order each. */
void updater_dist_set_bucket(updater_dist *d, size_t floats);
/* Rank 0, at its end (also on errors): tells the followers to stop (their scoring servers too). */
void updater_policy_release_followers(updater_dist *d);

/* Scoring on every rank (updaters.distributed_scoring): rank 0's scorer sends batches of raw groups to
 * the followers' scoring servers and takes back their rewards, so each rank scores a share (threads
 * pull from one queue: a rank that scores faster takes more). Needs MPI_THREAD_MULTIPLE. */
enum { DIST_SCORE_REQUEST = 1, DIST_SCORE_STOP = 2 };
/* 1 when this MPI job can score on every rank (more than one rank, MPI_THREAD_MULTIPLE provided). */
int updater_dist_scoring_possible(const updater_dist *d);
/* Rank 0, once at start (leader_main, by the same rule the followers use to start theirs): the followers
 * run scoring servers, which updater_dist_stop_scoring_servers (and updater_policy_release_followers) stop. */
void updater_dist_set_scoring_servers(updater_dist *d, int on);
void updater_dist_stop_scoring_servers(updater_dist *d);
/* Scoring messages between two ranks (a communicator apart from the step's collectives). recv: from
 * MPI_ANY_SOURCE when `from` < 0; *buf malloc'd. */
int updater_dist_send(updater_dist *d, int to, const void *buf, size_t n, rlhf_error *err);
int updater_dist_recv(updater_dist *d, int from, void **buf, size_t *n, rlhf_error *err);
/* A request: the step v2 sources see and the raw groups; unpacked into new scored_groups. */
int updater_dist_pack_score_request(long step, scored_group **gs, int n, void **out, size_t *out_n, rlhf_error *err);
int updater_dist_unpack_score_request(const void *buf, size_t len, long *step, scored_group ***out, int *out_n,
                                      rlhf_error *err);
/* A reply: each group's rewards, and the scoring error when `failed` (else NULL); unpacked into the
 * groups of the request (same order), *failed and ferr set when the other rank's scoring failed. */
int updater_dist_pack_scores(scored_group **gs, int n, const rlhf_error *failed, void **out, size_t *out_n);
int updater_dist_unpack_scores(const void *buf, size_t len, scored_group **gs, int n, int *failed, rlhf_error *ferr);
/* Rank 0: every follower takes a share of what `s` scores from now on. 0, or 1 when this job cannot
 * (one rank, or no MPI_THREAD_MULTIPLE: rank 0 scores everything, as before). */
int updater_scorer_attach_ranks(scorer *s, updater_dist *d);
/* Groups the other ranks scored so far. */
long updater_scorer_remote_groups(scorer *s);
/* A follower: scores what rank 0 sends, with its own pipeline of the run's reward sources, until rank 0
 * says stop (0) or an error. */
int updater_scorer_serve(const json_t *rewards, const char *where, const tokenizer *tok, int vocab, updater_dist *d,
                         rlhf_error *err);

/* ---------------------------------------------------------------- checkpoints */

/* RUN_DIR/checkpoints/step_N/{model.safetensors, optimizer.safetensors, state.json}, written into
 * step_N.tmp and renamed; RUN_DIR/checkpoints/latest, a symlink to step_N, names the newest (replaced
 * atomically); the newest checkpoint.keep are kept. */
int updater_checkpoint_save(const policy_state *ps, const char *dir, json_t *extra, rlhf_error *err);
/* Loads the newest checkpoint of DIR into ps (model, optimizer, rng, counters). Returns 1 when a
 * checkpoint was loaded, 0 when there is none, negative on error. *extra_out (may be NULL) gets
 * state.json's "extra" object (new reference or NULL). */
int updater_checkpoint_load_latest(policy_state *ps, const char *dir, json_t **extra_out, rlhf_error *err);
/* The same for DIR/checkpoints/step_STEP (1 when loaded; an error naming the file when it is missing). */
int updater_checkpoint_load_step(policy_state *ps, const char *dir, int step, json_t **extra_out, rlhf_error *err);
/* Evaluated checkpoints (those with step_N/eval.json) best first — held-out pass rate, then reward
 * mean, then the earlier step: steps_out[0] is what RUN_DIR/checkpoints/best names. Returns how many
 * (at most cap). */
int updater_checkpoint_ranking(const char *run_dir, long *steps_out, int cap);
/* The oldest checkpoint still waiting for its held-out evaluation (step_N/eval.pending), or -1. */
long updater_checkpoint_pending_eval(const char *run_dir);
/* Records the held-out evaluation of checkpoint STEP (`rlhf eval --record`): result (an object with
 * at least "pass_rate" and "reward_mean") goes to step_N/eval.json (atomically) and, with "step"
 * and "time", as one line of RUN_DIR/eval.jsonl; eval.pending is removed; RUN_DIR/checkpoints/best
 * is pointed (atomically) at the best evaluated checkpoint, and the checkpoints are pruned as a save
 * prunes them (keep newest, keep_best best, the pending). *is_best (may be NULL) is set when STEP is
 * now the best. */
int updater_checkpoint_record_eval(const char *run_dir, long step, json_t *result, int keep, int keep_best,
                                   int *is_best, rlhf_error *err);
/* Step of the newest checkpoint in RUN_DIR/checkpoints (`latest` as a symlink, or the text file of older
 * runs), or -1. */
int updater_latest_checkpoint_step(const char *run_dir);

/* ---------------------------------------------------------------- metrics */

/* The last complete line of metrics.jsonl as a JSON object (new reference), or NULL. */
json_t *updater_metrics_last_record(const char *path);
/* Appends one line (fsync'd, so a kill -9 leaves whole lines). */
int updater_metrics_append(const char *path, json_t *rec, rlhf_error *err);
/* Drops lines whose "step" is greater than `step` (resume from an older checkpoint). */
int updater_metrics_truncate_after(const char *path, long step, rlhf_error *err);
/* Fills the reward metrics of a step from its groups: reward/mean, reward/std, reward/<source>/mean,
 * pass_rate (a source with no OK item in the step has mean null). The error counts come from the session. */
void updater_metrics_rewards(json_t *m, scored_group **groups, int n, int n_sources, const char *const *src_names);

/* ---------------------------------------------------------------- the updater session
 *
 * The part of an updater shared by the online process (updater_main) and offline replay (`rlhf replay`). */

#define SESSION_MAX_SOURCES 64

typedef struct updater_session {
    run_config *cfg;            /* borrowed */
    policy_state ps;
    scorer *sc;
    int n_sources;
    const char *src_names[SESSION_MAX_SOURCES];
    char metrics_path[2048];
    char errors_path[2048];     /* RUN_DIR/reward_errors.jsonl: the first failures of each source */
    scored_group **window;      /* fresh scored groups waiting for the next step, in arrival order */
    int n_window, cap_window;
    long w_stale, w_stale_carry, w_skipped; /* per-step counters */
    long bad_tokens_total;      /* groups skipped for token ids outside the vocabulary (logged rate-limited) */
    double window_start;        /* when the current step's collection began */
    double wait_seconds;        /* time the optimizer thread spent waiting for groups this step (caller adds) */
    int queue_depth;            /* groups received but not yet scored (caller sets) */
    json_t *consumed;           /* {generator_id: highest seq finished (trained or dropped)} (owned) */
    FILE *consumed_log;         /* optional: one line "generator_id seq step" per finished group, each
                                 * appended by one write(2) and cut back off if it fails part-way */
    rlhf_error consumed_log_err; /* the first append that failed (disk full...): the next step stops with it */
    FILE *scores_log;           /* optional: RUN_DIR/scores.jsonl, one line per finished group with the
                                 * rewards it was trained (or dropped) with (UPDATER_SCORES_FILE) */
    struct session_errors *errs; /* (n_sources) reward error counters, reasons and windows (session.c) */
    int failed;                 /* a source broke its max_error_rate: failed_err says which; stop the run */
    rlhf_error failed_err;
    long eval_reported;         /* the newest checkpoint step whose held-out evaluation is in metrics.jsonl */
    int eval_scanned;           /* eval_reported has been read from metrics.jsonl */
    long eval_file_size;        /* RUN_DIR/eval.jsonl's size when last read (unchanged: nothing new) */
    int eval_more;              /* it held more than one unreported evaluation: read it again next step */
} updater_session;
/* The rewards each consumed group was trained or dropped with, one JSON line per group, beside the
 * replay log: {"generator","seq","step","policy_version","fate","total":[k],"rewards":{SOURCE:[k]}}
 * (a failed source's value is null; "step" is the step that trained or dropped it). Appended line by
 * line (a torn last line after a kill is ignored by readers); `rlhf replay --rewards recorded` and
 * `rlhf replay-export` read it. */
#define UPDATER_SCORES_FILE "scores.jsonl"
/* Marks a group finished (consumed map, consumed log, scores log). */
void updater_session_mark_consumed(updater_session *u, const scored_group *sg);

/* with_threads: scoring threads = updaters.reward_threads (online); else one pipeline, used
 * synchronously (replay). */
int updater_session_init(updater_session *u, run_config *cfg, int with_threads, rlhf_error *err);
void updater_session_fini(updater_session *u);
/* Takes a scored group (ownership). Returns 1 when a step's worth of groups is waiting. Counts the
 * group's reward errors (per source and reason kind, for the step's metrics), logs the first few of
 * each kind to stderr with the prompt id, and sets u->failed when a source exceeds its max_error_rate. */
int updater_session_offer(updater_session *u, scored_group *sg);
/* Trains one step on the oldest rl.prompts_per_step waiting groups; *metrics_out gets the step's
 * metrics record (new reference; the caller adds what it knows, then writes it). */
int updater_session_step(updater_session *u, json_t **metrics_out, rlhf_error *err);
/* Appends the step's record to metrics.jsonl. With eval.every, the oldest held-out evaluation of
 * RUN_DIR/eval.jsonl not yet in metrics.jsonl is added to the record first: "eval/step" (the checkpoint
 * it scored), "eval/pass_rate", "eval/reward_mean", "eval/pass_rate_greedy", "eval/pass_rate_sampled"
 * (those its record holds). An evaluation that ends after the updater's last step is only in
 * eval.jsonl and the TensorBoard events. */
int updater_session_write_metrics(updater_session *u, json_t *m, rlhf_error *err);

/* ---------------------------------------------------------------- the updater process */

/* What `rlhf updater` runs: connects to the broker, trains rl.steps steps (resuming from the newest
 * checkpoint), publishes weights, and returns 0 when done or stopped; 2 for a config or input error,
 * 1 for any other failure (err filled). The flags are read between steps and polls: *stop asks for
 * a final checkpoint and exit; *reconnect for a new broker session (the launcher restarted the
 * broker); the caller's signal handlers set them. */
typedef struct updater_options {
    const char *config_path;                 /* RUN_DIR/config.json */
    volatile const sig_atomic_t *stop;        /* may be NULL */
    volatile sig_atomic_t *reconnect;         /* may be NULL; cleared when handled */
} updater_options;
/* Returns the process's exit status: 0 after rl.steps or a requested stop, else an RLHF_EXIT_* class
 * (common/common.h): 2 config (also any failure while starting: reward sources, checkpoint), 3
 * environment (a full disk under metrics or checkpoints, permission, missing file), 1 transient. */
int updater_main(const updater_options *o, rlhf_error *err);

#ifdef __cplusplus
}
#endif
#endif
