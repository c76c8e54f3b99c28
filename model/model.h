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

/* RoPE frequency scaling (Hugging Face config.json "rope_scaling"): none, "linear" (every inverse
 * frequency divided by factor) or "llama3" (long wavelengths divided by factor, short ones kept, a
 * smooth blend between; see model_rope_inv_freq). */
typedef enum model_rope_scaling { MODEL_ROPE_NONE = 0, MODEL_ROPE_LINEAR = 1, MODEL_ROPE_LLAMA3 = 2 } model_rope_scaling;

/* Attention of one layer ("attention_pattern"): global causal attention with RoPE (every model before
 * the key existed), global without position encoding (NoPE), or local with RoPE over the last
 * attention_window positions (the query's own included). */
typedef enum model_attn_kind { MODEL_ATTN_GLOBAL = 0, MODEL_ATTN_GLOBAL_NOPE = 1, MODEL_ATTN_LOCAL = 2 } model_attn_kind;

/* Most layers the per-layer options (kv_share, attention_pattern) describe; models without them have no limit. */
enum { MODEL_MAX_LAYERS = 256 };

typedef struct model_config {
    int dim;            /* C: model width */
    int n_layers;       /* L */
    int n_heads;        /* H: query heads */
    int n_kv_heads;     /* KVH: key/value heads (GQA); n_heads % n_kv_heads == 0 */
    int ffn_dim;        /* F: SwiGLU hidden width */
    int vocab_size;     /* V */
    int max_seq_len;    /* longest sequence (prompt + completion) */
    float rope_theta;   /* RoPE base, e.g. 10000 */
    float norm_eps;     /* RMSNorm epsilon, e.g. 1e-5 */
    int tie_embeddings; /* 1: lm_head shares embed_tokens */
    int head_dim;       /* D: per-head width; 0 = dim / n_heads (Qwen3 has 128 at dim 1024, 16 heads) */
    int attn_bias;      /* 1: the q, k and v projections add a bias (Qwen2) */
    int qk_norm;        /* 1: RMSNorm over each head of q and of k, before RoPE, weight (D) per layer (Qwen3) */
    model_rope_scaling rope_scaling;
    float rope_factor;           /* linear, llama3: > 0 */
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3: > rope_low_freq_factor */
    int rope_original_max_pos;   /* llama3: original_max_position_embeddings */
    /* Per-layer attention options; all zero = today's model (every layer global with RoPE, its own K/V). */
    int has_layer_opts;          /* 1: the arrays below are set (kv_share or attention_pattern was given) */
    int attention_window;        /* W of local layers (1..max_seq_len); 0 when no layer is local */
    unsigned char attn_kind[MODEL_MAX_LAYERS]; /* model_attn_kind per layer */
    short kv_src[MODEL_MAX_LAYERS]; /* 0: the layer projects its own K/V; s + 1: it reuses layer s's (post-RoPE) */
} model_config;

/* Parses {"dim":..,"n_layers":..,...}; unknown or mistyped keys and dimensions that do not divide
 * are errors naming the key and `where` (a file name or JSON path). Missing optional keys take
 * documented defaults (n_kv_heads = n_heads, rope_theta = 10000, norm_eps = 1e-5, tie_embeddings = 0,
 * head_dim = dim / n_heads, attn_bias = qk_norm = false, no rope_scaling). rope_scaling is an object
 * {"type": "linear"|"llama3", "factor", "low_freq_factor", "high_freq_factor",
 * "original_max_position_embeddings"} (the last three for llama3 only). model_config_to_json writes
 * the keys added for Hugging Face models only when they differ from their defaults, so the config of
 * a Llama-shaped model reads the same as before they existed. */
int model_config_parse(model_config *cfg, const json_t *obj, const char *where, rlhf_error *err);
json_t *model_config_to_json(const model_config *cfg);
int model_config_validate(const model_config *cfg, const char *where, rlhf_error *err);
static inline int model_head_dim(const model_config *c) { return c->head_dim ? c->head_dim : c->dim / c->n_heads; }
/* The layer whose K/V layer l attends with (l itself unless it shares: kv_share). */
static inline int model_kv_source(const model_config *c, int l) {
    return c->has_layer_opts && l < MODEL_MAX_LAYERS && c->kv_src[l] ? c->kv_src[l] - 1 : l;
}
static inline model_attn_kind model_attn_kind_of(const model_config *c, int l) {
    return c->has_layer_opts && l < MODEL_MAX_LAYERS ? (model_attn_kind)c->attn_kind[l] : MODEL_ATTN_GLOBAL;
}
/* Attention window of layer l: attention_window for local layers, 0 (unbounded) otherwise. */
static inline int model_attn_window(const model_config *c, int l) {
    return model_attn_kind_of(c, l) == MODEL_ATTN_LOCAL ? c->attention_window : 0;
}
/* 1 when layer l rotates q and k by RoPE (global and local layers; not global_nope). */
static inline int model_attn_rope(const model_config *c, int l) {
    return model_attn_kind_of(c, l) != MODEL_ATTN_GLOBAL_NOPE;
}
/* Layers that project their own K/V (the stack depth of wk, wv, bk, bv, k_norm), and the slot of layer l
 * in that stack (-1 for a sharing layer). */
int model_kv_layers(const model_config *c);
int model_kv_slot(const model_config *c, int l);
/* 1 when some layer shares K/V or is not global with RoPE (such a model has no Hugging Face architecture). */
static inline int model_uses_layer_opts(const model_config *c) {
    for (int l = 0; c->has_layer_opts && l < c->n_layers; l++)
        if (model_kv_source(c, l) != l || model_attn_kind_of(c, l) != MODEL_ATTN_GLOBAL) return 1;
    return 0;
}
/* The checkpoint/JSON names of an attention kind: "global", "global_nope", "local". */
const char *model_attn_kind_name(model_attn_kind k);
/* The inverse frequency of RoPE pair i (0 <= i < head_dim / 2): rope_theta^(-2i/D), scaled as
 * rope_scaling says. Every RoPE table of the project (training, sampling, reference) is built from it. */
double model_rope_inv_freq(const model_config *c, int i);

/* ---------------------------------------------------------------- parameters */

/* Pointers into one contiguous buffer; the order below is the buffer order. Shapes use
 * C = dim, L = n_layers, H = n_heads, KVH = n_kv_heads, D = head_dim, F = ffn_dim, V = vocab_size.
 * The optional tensors (bq, bk, bv with attn_bias; q_norm, k_norm with qk_norm; lm_head unless tied)
 * take no room when absent and their pointers are NULL (lm_head then equals embed). LK = model_kv_layers():
 * the K/V tensors stack only the layers that project their own K/V (all L unless kv_share); the slice of
 * layer l is model_kv_slot(cfg, l). */
typedef struct model_params {
    float *embed;      /* (V, C)        model.embed_tokens.weight */
    float *attn_norm;  /* (L, C)        model.layers.{i}.input_layernorm.weight */
    float *wq;         /* (L, H*D, C)   model.layers.{i}.self_attn.q_proj.weight */
    float *wk;         /* (LK, KVH*D, C) model.layers.{i}.self_attn.k_proj.weight */
    float *wv;         /* (LK, KVH*D, C) model.layers.{i}.self_attn.v_proj.weight */
    float *bq;         /* (L, H*D)      model.layers.{i}.self_attn.q_proj.bias   (attn_bias) */
    float *bk;         /* (LK, KVH*D)   model.layers.{i}.self_attn.k_proj.bias   (attn_bias) */
    float *bv;         /* (LK, KVH*D)   model.layers.{i}.self_attn.v_proj.bias   (attn_bias) */
    float *q_norm;     /* (L, D)        model.layers.{i}.self_attn.q_norm.weight (qk_norm) */
    float *k_norm;     /* (LK, D)       model.layers.{i}.self_attn.k_norm.weight (qk_norm) */
    float *wo;         /* (L, C, H*D)   model.layers.{i}.self_attn.o_proj.weight */
    float *ffn_norm;   /* (L, C)        model.layers.{i}.post_attention_layernorm.weight */
    float *w_gate;     /* (L, F, C)     model.layers.{i}.mlp.gate_proj.weight */
    float *w_up;       /* (L, F, C)     model.layers.{i}.mlp.up_proj.weight */
    float *w_down;     /* (L, C, F)     model.layers.{i}.mlp.down_proj.weight */
    float *final_norm; /* (C)           model.norm.weight */
    float *lm_head;    /* (V, C)        lm_head.weight; == embed when tie_embeddings */
} model_params;

/* Every tensor kind, in buffer order (the order of model_params' fields). */
typedef enum model_tensor_id {
    MODEL_T_EMBED, MODEL_T_ATTN_NORM, MODEL_T_WQ, MODEL_T_WK, MODEL_T_WV, MODEL_T_BQ, MODEL_T_BK, MODEL_T_BV,
    MODEL_T_Q_NORM, MODEL_T_K_NORM, MODEL_T_WO, MODEL_T_FFN_NORM, MODEL_T_W_GATE, MODEL_T_W_UP, MODEL_T_W_DOWN,
    MODEL_T_FINAL_NORM, MODEL_T_LM_HEAD,
    MODEL_N_PARAM_TENSORS
} model_tensor_id;

/* One entry per parameter tensor present (in buffer order), for checkpoints, optimizers and tests. */
typedef struct model_tensor_info {
    model_tensor_id id;
    const char *name;  /* "embed", "wq", ... (field name above) */
    const char *hf_name; /* Hugging Face name; "%d" stands for the layer in per-layer tensors */
    size_t offset;     /* in floats, from the start of the buffer */
    size_t numel;      /* all layers together */
    int per_layer;     /* 1: stacked (L, ...) or, for the K/V tensors, (model_kv_layers, ...) */
    int n_stack;       /* slices stacked: L, model_kv_layers() for wk, wv, bk, bv, k_norm, 1 when not per layer */
    int rows, cols;    /* per-layer matrix shape (cols = 1 for vectors) */
    int is_norm;       /* an RMSNorm weight (initialised to 1; no weight decay) */
    int decay;         /* AdamW decays it: the model's matrices (cols > 1), every LoRA adapter tensor */
} model_tensor_info;

/* The matrices of a model whose frozen base is kept in bfloat16 (model_keep_bf16), laid out as params_mem. */
typedef struct model_params_bf16 {
    const uint16_t *embed;  /* (V, C) */
    const uint16_t *wq;     /* (L, H*D, C) */
    const uint16_t *wk;     /* (LK, KVH*D, C) */
    const uint16_t *wv;     /* (LK, KVH*D, C) */
    const uint16_t *wo;     /* (L, C, H*D) */
    const uint16_t *w_gate; /* (L, F, C) */
    const uint16_t *w_up;   /* (L, F, C) */
    const uint16_t *w_down; /* (L, C, F) */
    const uint16_t *lm_head; /* (V, C); == embed when tie_embeddings */
} model_params_bf16;

typedef struct model {
    model_config cfg;
    size_t n_params;      /* floats in `params_mem` (lm_head not counted when tied) */
    float *params_mem;    /* owns all parameters */
    model_params p;
    /* A frozen base kept in bfloat16 (model_keep_bf16; LoRA training of a BF16 checkpoint): NULL for an
     * ordinary model. Then the matrices (embed, wq, wk, wv, wo, w_gate, w_up, w_down, lm_head) live only
     * here, as the file stored them, at their params_mem offsets (in elements); their params_mem regions
     * are never written (mapped, not resident) and their pointers in p are NULL; the vectors (norms,
     * biases) stay fp32 in params_mem. Half the resident bytes of the fp32 base. The trainer reads it
     * (backwards need adapters attached: the base is frozen), model_lora_merge widens it, and the
     * identity hashes read it as its fp32 values; every other use of the weights refuses such a model
     * by name (model_require_fp32). */
    uint16_t *bf16_mem;
    model_params_bf16 p16;
    model_tensor_info tensors[MODEL_N_PARAM_TENSORS];
    int n_tensors;        /* tensors present (see model_params) */
    uint64_t version;     /* policy_version of these weights (0 = base) */
    /* The Hugging Face config.json this model was loaded from (compact JSON, owned), or NULL. Kept
     * through project checkpoints (__metadata__ "rlhf_hf_config") so model_export_hf can write it back
     * with the source's architecture, token ids and other keys. */
    char *hf_config;
    /* The directory of the Hugging Face tokenizer this model is used with (owned), or NULL
     * (byte-level). Kept through project checkpoints (__metadata__ "rlhf_tokenizer"), so a checkpoint
     * of a run on a BPE model finds its tokenizer (tokenizer_load_for_model). */
    char *tokenizer_dir;
} model;

int model_create(model **out, const model_config *cfg, rlhf_error *err);
void model_destroy(model **m);
/* GPT-2/Llama-style init: N(0, 0.02), output projections scaled by 1/sqrt(2L), norms = 1. */
void model_init_random(model *m, uint64_t seed);
/* Points a model_params at an arbitrary buffer laid out like params_mem (e.g. a gradient buffer). */
void model_params_view(const model *m, float *base, model_params *out);
/* The entry of a tensor kind, or NULL when this model has none. */
const model_tensor_info *model_tensor(const model *m, model_tensor_id id);
/* Copies weights between two models of the same config. */
int model_copy_weights(model *dst, const model *src, rlhf_error *err);
/* Moves a model's matrices to bfloat16 storage (see model.bf16_mem), before they are filled: the loaders
 * call it with model_load_options.keep_bf16 on a file whose matrices are all BF16, then copy those bits
 * unchanged. Returns 0, or RLHF_ENOMEM. */
int model_keep_bf16(model *m, rlhf_error *err);
/* 0 for an fp32 model; for one with a bf16 frozen base, RLHF_EUNSUPPORTED with "WHAT needs the model's
 * weights in fp32; this model keeps a frozen bf16 base (LoRA training only)". */
int model_require_fp32(const model *m, const char *what, rlhf_error *err);
/* Matrix slice values as fp32, whichever the storage: n values of tensor `id` from element `offset`
 * (within the tensor) into dst. */
void model_tensor_read_f32(const model *m, const model_tensor_info *t, size_t offset, size_t n, float *dst);

/* ---------------------------------------------------------------- LoRA adapters (model/lora.c)
 *
 * Low-rank adapters (Hu et al., 2021) on chosen linear layers of every transformer layer: for a base
 * weight W (OC, IC) the layer computes y = x W^T + scale · (x' A^T) B^T with A (R, IC), B (OC, R),
 * scale = alpha / R, and x' = dropout(x) in training (x at sampling and scoring). A starts uniform in
 * ±1/sqrt(IC) (PEFT's kaiming_uniform(a = sqrt(5)) bound) and B at zero, so a fresh adapter set leaves
 * the model unchanged. Targets use PEFT's module names: q_proj, k_proj, v_proj, o_proj, gate_proj,
 * up_proj, down_proj ("all-linear": all seven; embeddings and lm_head never). With kv_share, k_proj and
 * v_proj adapters exist for the layers that project their own K/V only. */
typedef enum model_lora_target {
    MODEL_LORA_Q, MODEL_LORA_K, MODEL_LORA_V, MODEL_LORA_O, MODEL_LORA_GATE, MODEL_LORA_UP, MODEL_LORA_DOWN,
    MODEL_LORA_N_TARGETS
} model_lora_target;

typedef struct model_lora_config {
    int rank;          /* R >= 1 */
    float alpha;       /* scale = alpha / rank */
    float dropout;     /* on the adapter's input in training, 0 <= p < 1 */
    unsigned targets;  /* bit (1 << model_lora_target) per targeted projection */
} model_lora_config;

/* {"rank": R, "alpha": A, "dropout": p, "targets": "all-linear" | ["q_proj", ...]}; defaults: alpha 32,
 * dropout 0, targets all-linear; rank is required. Unknown keys, a module name that is not one of the
 * seven, and values out of range are errors naming the key under `where`. */
int model_lora_config_parse(model_lora_config *c, const json_t *obj, const char *where, rlhf_error *err);
json_t *model_lora_config_to_json(const model_lora_config *c);
/* PEFT's module name of a target ("q_proj", ...) */
const char *model_lora_target_name(model_lora_target t);

typedef struct model_lora {
    model_lora_config cfg;
    float scale;             /* alpha / rank */
    size_t n_params;         /* floats in mem */
    float *mem;              /* owns every adapter tensor */
    /* Tensor table in buffer order, for AdamW, checkpoints and the PEFT export: per target, "lora_a.NAME"
     * (n_stack, R, IC) then "lora_b.NAME" (n_stack, OC, R), NAME the base tensor's name (wq, ...);
     * hf_name is PEFT's key (base_model.model.model.layers.%d.self_attn.q_proj.lora_A.weight). */
    model_tensor_info tensors[2 * MODEL_LORA_N_TARGETS];
    int n_tensors;
    /* Per target (NULL when not targeted): A and B of every slice, and the slice shapes. */
    float *a[MODEL_LORA_N_TARGETS], *b[MODEL_LORA_N_TARGETS];
    int n_stack[MODEL_LORA_N_TARGETS], in_dim[MODEL_LORA_N_TARGETS], out_dim[MODEL_LORA_N_TARGETS];
} model_lora;

/* The config against a model config: a rank wider than a targeted projection's smaller side is an error
 * naming `where`. */
int model_lora_check(const model_config *mc, const model_lora_config *lc, const char *where, rlhf_error *err);
/* An adapter set for model m's shape (zeroed); a target m does not have is an error. */
int model_lora_create(model_lora **out, const struct model *m, const model_lora_config *cfg, rlhf_error *err);
void model_lora_destroy(model_lora **l);
void model_lora_init(model_lora *l, uint64_t seed); /* A uniform ±1/sqrt(IC), B = 0 */
/* The PEFT format (what the `peft` library saves and loads): DIR/adapter_model.safetensors with one
 * (R, IC) lora_A and one (OC, R) lora_B tensor per adapted module and layer, named
 * base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight, and DIR/adapter_config.json
 * (peft_type LORA, r, lora_alpha, lora_dropout, target_modules, base_model_name_or_path = base_name).
 * Saving makes DIR; loading checks the config against l's and every tensor's shape (errors name the file). */
int model_lora_save_peft(const model_lora *l, const struct model *base, const char *dir, const char *base_name,
                         rlhf_error *err);
int model_lora_load_peft(model_lora *l, const struct model *base, const char *dir, rlhf_error *err);
/* dst's weights = base's with every adapted W replaced by W + scale · B · A (dst and base of one config;
 * dst == base merges in place). Sampling with the merged weights computes what training computes. */
int model_lora_merge(struct model *dst, const struct model *base, const model_lora *l, rlhf_error *err);

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
