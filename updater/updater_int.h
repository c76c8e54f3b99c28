/* updater/updater_int.h — updater/ internals shared by its .c files (not installed). */
#ifndef RLHF_UPDATER_INT_H
#define RLHF_UPDATER_INT_H

#include <pthread.h>

#include "common/wire.h"
#include "model/model.h"
#include "rewards/rewards.h"
#include "updater/updater.h"

/* ---------------------------------------------------------------- scored groups */

/* One rollout group with its rewards, as the optimizer consumes it. */
typedef struct scored_group {
    wire_rollout_group g;   /* owned (wire_rollout_group_free) */
    int n_sources;
    float *src;             // (n_sources, k) per-source raw reward, NaN when that source failed
    float *total;           // (k) weighted total
    int *src_errors;        // (n_sources) ERROR items in this group
    int skipped;            /* a skip_group on_error policy fired: not trained */
    double score_seconds;   /* wall time spent scoring it */
    uint64_t log_index;     /* position in the replay log (records), or UINT64_MAX when unknown */
    struct scored_group *next;
} scored_group;
void scored_group_free(scored_group *s);

/* A blocking FIFO of scored_group (mutex + condition variable). */
typedef struct group_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    scored_group *head, *tail;
    int n;
    int closed;
} group_queue;
void group_queue_init(group_queue *q);
void group_queue_destroy(group_queue *q);
void group_queue_push(group_queue *q, scored_group *s);
/* Pops one; waits up to timeout_s (0 = don't wait). NULL when empty (or closed and empty). */
scored_group *group_queue_pop(group_queue *q, double timeout_s);
int group_queue_len(group_queue *q);
void group_queue_close(group_queue *q);

/* Scores groups on `n_threads` threads beside the optimizer: raw groups in, scored groups out.
 * One reward_pipeline per thread (a pipeline serialises its calls). */
typedef struct scorer scorer;
int scorer_create(scorer **out, const json_t *rewards, const char *where, int n_threads, rlhf_error *err);
void scorer_destroy(scorer **s);
void scorer_submit(scorer *s, scored_group *g);  /* takes ownership */
scored_group *scorer_take(scorer *s, double timeout_s);
int scorer_in_flight(scorer *s);                /* submitted, not yet taken */
int scorer_n_sources(const scorer *s);
const char *scorer_source_name(const scorer *s, int i);
/* Scores synchronously on the caller's thread (replay: deterministic). */
int scorer_score_now(scorer *s, scored_group *g, rlhf_error *err);
/* Same for n groups in one pipeline call (eval). */
int scorer_score_batch_now(scorer *s, scored_group **gs, int n, rlhf_error *err);

/* ---------------------------------------------------------------- the policy and its optimizer */

typedef struct policy_state {
    run_config *cfg;           /* borrowed */
    model *m;                  /* the policy being trained */
    model *ref;                /* reference (base) model for the KL penalty, NULL when kl_beta = 0 */
    model_trainer *tr;
    model_trainer *ref_tr;
    adamw *opt;
    int micro_batch;           /* sequences per forward/backward */
    long step;                 /* optimizer steps done */
    uint64_t version;          /* newest published policy_version */
    rlhf_rng rng;
    uint64_t log_records;      /* replay-log records consumed (trained or dropped) */
    /* counters carried across steps for metrics */
    long groups_total, groups_dropped_stale, groups_dropped_zero_var, groups_skipped;
    double gen_seconds_acc, gen_tokens_acc;
    double wall_start;
    double wall_offset;        /* wall_s of the run before this process (resume) */
} policy_state;

int policy_create(policy_state *ps, run_config *cfg, rlhf_error *err);
void policy_destroy(policy_state *ps);

/* Staleness lag of a group against the newest published version. */
static inline long group_lag(const policy_state *ps, const scored_group *s) {
    return (long)ps->version - (long)s->g.policy_version;
}

/* One optimizer step on `n` kept groups (each has spread, none stale). Fills `metrics` with the
 * step's training metrics (train/..., is_ratio/..., kl, entropy). Does not bump version. */
int policy_train_step(policy_state *ps, scored_group **groups, int n, json_t *metrics, const char *const *src_names,
                      rlhf_error *err);

/* ---------------------------------------------------------------- checkpoints */

/* RUN_DIR/checkpoints/step_N/{model.safetensors, optimizer.safetensors, state.json}, written into
 * step_N.tmp and renamed; RUN_DIR/checkpoints/latest names the newest (written atomically). */
int checkpoint_save(const policy_state *ps, const char *dir, json_t *extra, rlhf_error *err);
/* Loads the newest checkpoint of DIR into ps (model, optimizer, rng, counters). Returns 1 when a
 * checkpoint was loaded, 0 when there is none, negative on error. *extra_out (may be NULL) gets
 * state.json's "extra" object (new reference or NULL). */
int checkpoint_load_latest(policy_state *ps, const char *dir, json_t **extra_out, rlhf_error *err);
/* Step of the newest checkpoint in RUN_DIR/checkpoints, or -1. */
int updater_latest_checkpoint_step(const char *run_dir);

/* ---------------------------------------------------------------- metrics */

/* The last complete line of metrics.jsonl as a JSON object (new reference), or NULL. */
json_t *metrics_last_record(const char *path);
/* Appends one line (fsync'd, so a kill -9 leaves whole lines). */
int metrics_append(const char *path, json_t *rec, rlhf_error *err);
/* Drops lines whose "step" is greater than `step` (resume from an older checkpoint). */
int metrics_truncate_after(const char *path, long step, rlhf_error *err);
/* Fills the reward metrics of a step from its groups: reward/mean, reward/std, reward/<source>/mean,
 * pass_rate, reward_errors/<source>. */
void metrics_rewards(json_t *m, scored_group **groups, int n, int n_sources, const char *const *src_names);

/* ---------------------------------------------------------------- runs */

/* Checks everything the processes of a run will need (datasets, selector config, reward sources,
 * broker config, base checkpoint vs arch) and creates the run directory layout. A config with
 * "model.arch" and no checkpoint gets a freshly initialised base at RUN_DIR/base.safetensors and
 * cfg->base_checkpoint is set to it. */
int run_prepare(run_config *cfg, rlhf_error *err);
/* Only the run directory and the base checkpoint part of run_prepare. */
int run_prepare_base(run_config *cfg, rlhf_error *err);
/* Loads the base policy named by the config (checking it against model.arch when both are given). */
int run_load_base(const run_config *cfg, model **out, rlhf_error *err);

#endif
