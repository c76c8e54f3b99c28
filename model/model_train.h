/* model/model_train.h — training half of model/'s public API (included by model/model.h):
 * forward with a tape, backward from per-token log-prob weights or from hidden states, masked
 * cross-entropy, per-token entropy, AdamW with clipping and an LR schedule, pretraining.
 *
 * Batches are (B, T) token ids, RIGHT-padded: sequence b occupies positions 0..len_b-1 and every
 * later position holds any valid id (e.g. PAD). Attention is causal, so real tokens never see the
 * padding after them and their log-probs equal those of the unpadded sequence. targets (B, T) hold
 * the id predicted at each position, or -1 for positions that carry no loss (prompt, padding).
 *
 * Threads: every kernel uses OpenMP (model_set_threads / OMP_NUM_THREADS); GEMMs go through
 * OpenBLAS's OpenMP build, which shares the same pool. When other processes share the cores, start
 * the process with OMP_WAIT_POLICY=passive: spinning OpenMP threads made a training step ~10x slower
 * under load (docs/PERFORMANCE.md, "Thread wait policy"). */
#ifndef RLHF_MODEL_TRAIN_H
#define RLHF_MODEL_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct model;

/* ================================================================ trainer: forward / backward
 *
 * A model_trainer owns activations, their gradients and the parameter gradients (same flat layout
 * as model->params_mem) for batches up to (max_B, max_T). Each forward records a tape of ops; a
 * backward replays it in reverse and ACCUMULATES into the parameter gradients until zero_grad.
 * The trainer reads the model's weights at forward time (no copy): update them in place freely
 * between steps. Only one forward's tape is live at a time; call a backward before the next forward. */
typedef struct model_trainer model_trainer;

int model_trainer_create(model_trainer **out, struct model *m, int max_B, int max_T, rlhf_error *err);
void model_trainer_destroy(model_trainer **t);

/* Forward through the LM head. tokens (B, T) in [0, V); targets (B, T) in [-1, V) or NULL (then log-probs,
 * entropy and loss are not computed). After it: model_trainer_logits/logprobs/entropy/hidden are valid. */
int model_forward(model_trainer *t, const int32_t *tokens, const int32_t *targets, int B, int T, rlhf_error *err);
/* Forward up to the final norm only (no LM head): for reward/value heads on model_trainer_hidden. */
int model_forward_hidden(model_trainer *t, const int32_t *tokens, int B, int T, rlhf_error *err);
/* Convenience for tests and the KV-cache comparison: full forward, copies logits (B, T, V) out. */
int model_forward_logits(model_trainer *t, const int32_t *tokens, int B, int T, float *logits_out, rlhf_error *err);

/* Results of the last forward, owned by the trainer, valid until the next forward. */
const float *model_trainer_logits(const model_trainer *t);   // (B, T, V)
const float *model_trainer_logprobs(const model_trainer *t); // (B, T): log p(target); 0 where target = -1
const float *model_trainer_entropy(const model_trainer *t);  // (B, T): entropy of the next-token distribution
const float *model_trainer_hidden(const model_trainer *t);   // (B, T, C): final-norm output (LM head input)
/* Mean cross-entropy over positions with target >= 0 (0 if none); n_tokens_out (may be NULL) gets their count. */
float model_trainer_loss(const model_trainer *t, int *n_tokens_out);

/* Backward of L = sum_{b,t} dlogp[b,t] * logp[b,t] + dentropy[b,t] * entropy[b,t] (either may be NULL;
 * masked positions contribute no logp term). For a policy-gradient loss pass dlogp = -(weight * advantage).
 * Requires the last forward to be model_forward with targets. */
int model_backward_logprobs(model_trainer *t, const float *dlogp, const float *dentropy, rlhf_error *err);
/* Backward of the mean masked cross-entropy of the last forward (model_trainer_loss). */
int model_backward_loss(model_trainer *t, rlhf_error *err);
/* Backward from a given d(hidden) (B, T, C); works after model_forward_hidden or model_forward. */
int model_backward_hidden(model_trainer *t, const float *dhidden, rlhf_error *err);

/* Parameter gradients, laid out as model->params_mem (model_params_view works on it). */
float *model_trainer_grads(model_trainer *t);
void model_trainer_zero_grad(model_trainer *t);
/* Bytes the trainer allocated (activations, their gradients, parameter gradients, scratch). */
size_t model_trainer_bytes(const model_trainer *t);

/* ================================================================ LoRA in training (the adapters: model.h)
 *
 * Attaches an adapter set to a trainer (NULL detaches): forwards add every adapter's branch, and the
 * base weights are frozen — backwards accumulate into the adapters' gradients (model_trainer_lora_grads,
 * laid out as l->mem) and leave model_trainer_grads untouched. dropout_seed picks the dropout masks
 * of the following forwards (each forward draws new masks from it and a counter). */
struct model_lora;
int model_trainer_set_lora(model_trainer *t, struct model_lora *l, uint64_t dropout_seed, rlhf_error *err);
float *model_trainer_lora_grads(model_trainer *t);

/* ================================================================ AdamW
 *
 * Decoupled weight decay (Loshchilov & Hutter; as torch.optim.AdamW): p -= lr*wd*p, then the Adam
 * update with bias correction, eps added to sqrt(v_hat). Weight decay applies to matrices
 * (embeddings, projections, lm_head) and not to norm weights. Global-norm clipping as
 * torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (||g|| + 1e-6)) (max_norm <= 0: off).
 * LR schedule (step counted from 0): linear warmup lr*(step+1)/warmup for step < warmup, then
 * constant, or cosine from lr down to lr*min_lr_ratio at total_steps. */
typedef enum { ADAMW_SCHEDULE_CONSTANT = 0, ADAMW_SCHEDULE_COSINE = 1 } adamw_schedule;

typedef struct adamw_config {
    float lr;            /* peak learning rate */
    float beta1, beta2;  /* 0.9, 0.95 */
    float eps;           /* 1e-8 */
    float weight_decay;  /* 0.1 */
    float grad_clip;     /* global-norm clip; <= 0 disables */
    int warmup_steps;
    int total_steps;     /* for the cosine schedule */
    float min_lr_ratio;  /* cosine floor, fraction of lr */
    adamw_schedule schedule;
} adamw_config;

void adamw_config_default(adamw_config *c); /* lr 3e-4, betas 0.9/0.95, eps 1e-8, wd 0.1, clip 1.0, constant */
float adamw_lr_at(const adamw_config *c, long step);

typedef struct adamw adamw;
int adamw_create(adamw **out, const struct model *m, const adamw_config *cfg, rlhf_error *err);
/* The same for any parameter set laid out by a tensor table (a LoRA adapter set: model_lora); the table
 * must outlive the optimizer. Weight decay applies to the tensors with `decay` set. */
struct model_tensor_info;
enum { ADAMW_MAX_TENSORS = 20 };
int adamw_create_params(adamw **out, const struct model_tensor_info *tensors, int n_tensors, size_t n_params,
                        const adamw_config *cfg, rlhf_error *err);
void adamw_destroy(adamw **o);
/* One step on m->params_mem with gradients `grads` (model layout). The gradients are CONSUMED: on
 * return they are all zero, ready for the next accumulation (this saves a separate zero_grad pass
 * over memory; model_trainer_zero_grad is then unnecessary). Writes the pre-clip global gradient norm
 * and the LR used to *grad_norm_out / *lr_out (either may be NULL). A non-finite norm is an error and
 * leaves parameters, state and gradients untouched. */
int adamw_step(adamw *o, struct model *m, float *grads, float *grad_norm_out, float *lr_out, rlhf_error *err);
/* adamw_step on a parameter set of adamw_create_params (params and grads laid out by its table). */
int adamw_step_params(adamw *o, float *params, size_t n_params, float *grads, float *grad_norm_out, float *lr_out,
                      rlhf_error *err);
long adamw_get_step(const adamw *o);
/* The learning-rate schedule's position for the next adamw_step only (it then counts its own steps
 * again): a caller whose schedule follows its own clock (the updater's RL steps, which may take no
 * update when nothing was trainable) sets it before each step. Adam's bias correction still counts the
 * steps taken. */
void adamw_set_schedule_step(adamw *o, long step);
adamw_config *adamw_get_config(adamw *o);

/* Optimizer state as named float tensors for a safetensors companion file: for each model tensor
 * NAME (model_tensor_info.name), "adamw.m.NAME" and "adamw.v.NAME" with that tensor's numel, and
 * "adamw.step" (1 float holding the step count, exact up to 2^24). */
typedef struct adamw_state_tensor {
    char name[64];
    float *data; /* points into the optimizer (read to save, write to restore) */
    size_t numel;
} adamw_state_tensor;
/* Fills up to `max` entries; returns how many there are (2 * n_tensors + 1). A LoRA run's state names
 * the adapter tensors (model_lora: "lora_a.wq", ...). */
int adamw_state_tensors(adamw *o, adamw_state_tensor *out, int max);
/* Call after writing the tensors' data: takes the step count from the "adamw.step" float. */
int adamw_state_loaded(adamw *o, rlhf_error *err);
enum { ADAMW_MAX_STATE_TENSORS = 2 * ADAMW_MAX_TENSORS + 1 };

/* The optimizer-state file (as model_save / model_load for weights): a safetensors file holding the
 * adamw_state_tensors above and __metadata__ {"format": "rlhf-adamw"}. Written atomically. */
int adamw_save(const adamw *o, const char *path, rlhf_error *err);
/* Restores o's state (for a model of the same config) from a file written by adamw_save, or by an
 * older writer without the "format" key. A different "format" or a missing tensor or one of the wrong
 * size is an error naming the file, as is a bad step count (adamw_state_loaded); all RLHF_ECORRUPT. */
int adamw_load(adamw *o, const char *path, rlhf_error *err);

#ifdef __cplusplus
}
#endif
#endif
