/* model/model.h — the shared model build: a Llama-style decoder used by generators (sampling)
 * and updaters (training). This is model/'s one public header.
 *
 * Layout (Hugging Face Llama convention, so HF weights load without permutation):
 *   every linear weight is (out_features, in_features) row-major, y = x W^T;
 *   RoPE rotates pairs (i, i + head_dim/2) ("rotate_half"), not interleaved pairs;
 *   per-layer tensors are stacked along a leading L axis in one flat parameter buffer.
 *
 * This file: configuration and parameters (model.c) and the kernels' thread count. Included from it:
 * model/model_train.h — training: forward/backward, log-probs, AdamW and its state file (train.c,
 * ops.c, adamw.c); model/model_infer.h — tokenizer (tokenizer.c), safetensors checkpoints
 * (safetensors.c), sampling with a KV cache (sampler.c). */
#ifndef RLHF_MODEL_H
#define RLHF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- configuration */

typedef struct model_config {
    int dim;            /* C: model width */
    int n_layers;       /* L */
    int n_heads;        /* H: query heads; head_dim = dim / n_heads */
    int n_kv_heads;     /* KVH: key/value heads (GQA); n_heads % n_kv_heads == 0 */
    int ffn_dim;        /* F: SwiGLU hidden width */
    int vocab_size;     /* V */
    int max_seq_len;    /* longest sequence (prompt + completion) */
    float rope_theta;   /* RoPE base, e.g. 10000 */
    float norm_eps;     /* RMSNorm epsilon, e.g. 1e-5 */
    int tie_embeddings; /* 1: lm_head shares embed_tokens */
} model_config;

/* Parses {"dim":..,"n_layers":..,...}; unknown or mistyped keys and dimensions that do not divide
 * are errors naming the key and `where` (a file name or JSON path). Missing optional keys take
 * documented defaults (n_kv_heads = n_heads, rope_theta = 10000, norm_eps = 1e-5, tie_embeddings = 0). */
int model_config_parse(model_config *cfg, const json_t *obj, const char *where, rlhf_error *err);
json_t *model_config_to_json(const model_config *cfg);
int model_config_validate(const model_config *cfg, const char *where, rlhf_error *err);
static inline int model_head_dim(const model_config *c) { return c->dim / c->n_heads; }

/* ---------------------------------------------------------------- parameters */

/* Pointers into one contiguous buffer; the order below is the buffer order. Shapes use
 * C = dim, L = n_layers, H = n_heads, KVH = n_kv_heads, D = head_dim, F = ffn_dim, V = vocab_size. */
typedef struct model_params {
    float *embed;      /* (V, C)        model.embed_tokens.weight */
    float *attn_norm;  /* (L, C)        model.layers.{i}.input_layernorm.weight */
    float *wq;         /* (L, H*D, C)   model.layers.{i}.self_attn.q_proj.weight */
    float *wk;         /* (L, KVH*D, C) model.layers.{i}.self_attn.k_proj.weight */
    float *wv;         /* (L, KVH*D, C) model.layers.{i}.self_attn.v_proj.weight */
    float *wo;         /* (L, C, H*D)   model.layers.{i}.self_attn.o_proj.weight */
    float *ffn_norm;   /* (L, C)        model.layers.{i}.post_attention_layernorm.weight */
    float *w_gate;     /* (L, F, C)     model.layers.{i}.mlp.gate_proj.weight */
    float *w_up;       /* (L, F, C)     model.layers.{i}.mlp.up_proj.weight */
    float *w_down;     /* (L, C, F)     model.layers.{i}.mlp.down_proj.weight */
    float *final_norm; /* (C)           model.norm.weight */
    float *lm_head;    /* (V, C)        lm_head.weight; == embed when tie_embeddings */
} model_params;

enum { MODEL_N_PARAM_TENSORS = 12 };

/* One entry per parameter tensor (in buffer order), for checkpoints, optimizers and tests. */
typedef struct model_tensor_info {
    const char *name;  /* "embed", "wq", ... (field name above) */
    size_t offset;     /* in floats, from the start of the buffer */
    size_t numel;      /* all layers together */
    int per_layer;     /* 1: stacked (L, ...) */
    int rows, cols;    /* per-layer matrix shape (cols = 1 for vectors) */
} model_tensor_info;

typedef struct model {
    model_config cfg;
    size_t n_params;      /* floats in `params_mem` (lm_head not counted when tied) */
    float *params_mem;    /* owns all parameters */
    model_params p;
    model_tensor_info tensors[MODEL_N_PARAM_TENSORS];
    int n_tensors;        /* MODEL_N_PARAM_TENSORS, or one fewer when tied */
    uint64_t version;     /* policy_version of these weights (0 = base) */
} model;

int model_create(model **out, const model_config *cfg, rlhf_error *err);
void model_destroy(model **m);
/* GPT-2/Llama-style init: N(0, 0.02), output projections scaled by 1/sqrt(2L), norms = 1. */
void model_init_random(model *m, uint64_t seed);
/* Points a model_params at an arbitrary buffer laid out like params_mem (e.g. a gradient buffer). */
void model_params_view(const model *m, float *base, model_params *out);
/* Copies weights between two models of the same config. */
int model_copy_weights(model *dst, const model *src, rlhf_error *err);

/* ---------------------------------------------------------------- threads */

/* Threads for the kernels of the calling thread: n > 0 sets the OpenMP count (omp_set_num_threads) and
 * OpenBLAS's (openblas_set_num_threads); n <= 0 leaves the defaults (OMP_NUM_THREADS, else all cores).
 * The OpenMP count is a per-thread setting: it applies to parallel regions the CALLING thread starts,
 * so a thread that runs the model (e.g. the updater's trainer thread) calls this itself. */
void model_set_threads(int n);

#ifdef __cplusplus
}
#endif

/* The rest of the public API, kept in two files so the training and inference halves can grow
 * independently; users include only model/model.h. */
#include "model/model_train.h" /* forward/backward, log-probs, entropy, AdamW, pretraining */
#include "model/model_infer.h" /* tokenizer, safetensors checkpoints, KV-cache batched sampling */

#endif
