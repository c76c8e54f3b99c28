/* rewards/rm/rm.h — reward models (rewards/rm/'s public header): what the "rm" reward source
 * (rewards/rm_source.c), `rlhf train-rm` and `rlhf serve --reward-model` use.
 *
 * A reward model is the shared model build (model/) with a scalar head on the last token:
 *   r(text) = score_w . h[T-1],   h = final-norm hidden states (T, C) of BOS + tokens(text)
 * where text = prompt + completion. Checkpoint: the base model's safetensors tensors and metadata plus
 * RM_HEAD_TENSOR (1, C) — Hugging Face's LlamaForSequenceClassification layout — and
 * __metadata__ RM_META_KIND = "reward_model". Texts longer than max_seq_len - 1 tokens keep their LAST
 * tokens (the completion end is what the head reads).
 *
 * Training (rm_train): Bradley-Terry, loss = mean over pairs of -log sigmoid(r(chosen) - r(rejected)),
 * AdamW on the model (model/'s optimizer) and Adam on the head, pairs sampled with replacement. */
#ifndef RLHF_REWARDS_RM_RM_H
#define RLHF_REWARDS_RM_RM_H

#include <stdint.h>
#include <stdio.h>

#include "common/common.h"
#include "model/model.h"

#define RM_HEAD_TENSOR "score.weight"
#define RM_META_KIND "rlhf_kind"

typedef struct reward_model {
    model *m;             /* the shared model build (owned) */
    float *head;          // (C) score.weight
    tokenizer *tok;       /* byte-level, model's vocab */
    model_trainer *tr;    /* forward (and backward when training) for batches up to (max_B, max_T) */
    int max_B, max_T;
    int32_t *batch;       // (max_B, max_T) scratch token ids
    int *lens;            // (max_B)
} reward_model;

/* A new RM from a base checkpoint: head ~ N(0, 1/C) from `seed`. max_batch = sequences per forward. */
int reward_model_from_base(reward_model **out, const char *base_path, int max_batch, uint64_t seed, rlhf_error *err);
/* Loads an RM checkpoint (errors name the file; a plain model checkpoint is refused: no head). */
int reward_model_load(reward_model **out, const char *path, int max_batch, rlhf_error *err);
int reward_model_save(const reward_model *rm, const char *path, rlhf_error *err);
void reward_model_destroy(reward_model **rm);
/* Rewards of n texts (each prompt + completion, already concatenated), in batches of max_B. */
int reward_model_score(reward_model *rm, const char *const *texts, int n, double *rewards, rlhf_error *err);
/* Plain reference: one text at a time through model_reference-free path (a batch of 1), used by tests
 * to check that batching (padding) does not change a reward. */
int reward_model_score_one(reward_model *rm, const char *text, double *reward, rlhf_error *err);

/* ------------------------------------------------------------------ preference data and training */

typedef struct rm_pair {
    char *prompt, *chosen, *rejected;
    int line; /* in the source file, for messages */
} rm_pair;

/* Reads {"prompt","chosen","rejected"} JSONL (all non-empty strings; blank lines skipped). An error
 * names "FILE:LINE" and the field ("missing \"chosen\"", "\"rejected\" is empty", "not JSON: ..."). */
int rm_pairs_load(const char *path, rm_pair **out, int *n_out, rlhf_error *err);
void rm_pairs_free(rm_pair *pairs, int n);

typedef struct rm_train_config {
    int steps;            /* optimizer steps (default 200) */
    int batch_pairs;      /* pairs per step (default 16); the RM's max_batch must be >= 2 * batch_pairs */
    float lr;             /* default 1e-3 */
    float heldout_frac;   /* fraction of pairs held out for accuracy (default 0.2) */
    uint64_t seed;        /* split and sampling (default 1) */
    int log_every;        /* 0: quiet */
} rm_train_config;
void rm_train_config_default(rm_train_config *c);

typedef struct rm_train_report {
    int n_train, n_heldout;
    double final_loss;        /* mean of the last 10 steps' losses */
    double train_accuracy;    /* pairwise accuracy on the training split after training */
    double heldout_accuracy;  /* pairwise accuracy on the held-out split (the figure to report) */
    double initial_heldout_accuracy; /* before training */
    double seconds;
} rm_train_report;

int rm_train(reward_model *rm, const rm_pair *pairs, int n_pairs, const rm_train_config *cfg, rm_train_report *rep,
             FILE *log, rlhf_error *err);
/* Fraction of pairs with r(prompt + chosen) > r(prompt + rejected). */
int rm_pairwise_accuracy(reward_model *rm, const rm_pair *pairs, const int *idx, int n, double *acc, rlhf_error *err);

#endif
