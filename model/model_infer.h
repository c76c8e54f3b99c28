/* model/model_infer.h — inference half of model/'s public API (included by model/model.h):
 * the tokenizer interface, safetensors files (generic and model checkpoints), and batched
 * sampling with a KV cache. docs/MODEL.md describes the conventions. */
#ifndef RLHF_MODEL_INFER_H
#define RLHF_MODEL_INFER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct model;
struct model_config;

/* ================================================================ tokenizer
 *
 * A tokenizer is a plain struct with a table of operations (the byte-level default, and Hugging
 * Face BPE from tokenizer_create_hf), so callers never look at the kind. The embedded default is
 * byte-level: ids 0..255 are the bytes,
 * 256 = BOS, 257 = EOS, 258 = PAD; ids 259..vocab_size-1 are unused and decode to nothing. */

typedef struct tokenizer tokenizer;

typedef struct tokenizer_ops {
    const char *kind; /* "bytes" or "bpe" */
    /* Appends the ids of text[0..len) to *ids (realloc'd; *n ids in use, *cap allocated). */
    int (*encode)(const tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n, int *cap,
                  rlhf_error *err);
    /* The bytes one token stands for (special and unused ids: none). Returns the byte count, which
     * may exceed `cap` (then only `cap` bytes were written). */
    size_t (*token_bytes)(const tokenizer *tok, int32_t id, char *buf, size_t cap);
    void (*destroy_impl)(void *impl);
    /* Optional (NULL for "bytes"). encode_special: encodes text with the tokenizer's own special-token
     * rule (add_special: BOS/EOS as the tokenizer's post-processor says) instead of "BOS then encode".
     * strip_start: how many leading spaces decoding drops at the start of a sequence (SentencePiece's
     * prefix space). special_text: the text of a special token (NULL when `id` is not one). */
    int (*encode_special)(const tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids,
                          int *n, int *cap, rlhf_error *err);
    int (*strip_start)(const tokenizer *tok);
    const char *(*special_text)(const tokenizer *tok, int32_t id);
} tokenizer_ops;

enum { TOKENIZER_MAX_EOS = 8 };

struct tokenizer {
    const tokenizer_ops *ops;
    void *impl;      /* implementation state (NULL for bytes) */
    int vocab_size;  /* ids are 0..vocab_size-1; "bytes": the model's vocab_size; "bpe": the tokenizer's
                      * (may be below the model's; a caller may raise it, extra ids decode to nothing) */
    int32_t bos_id, eos_id, pad_id; /* -1 when the tokenizer has none */
    /* Every id that ends a completion (eos_id first; a model's generation config may name more, e.g.
     * Llama-3's <|eot_id|> beside <|end_of_text|>). */
    int32_t eos_ids[TOKENIZER_MAX_EOS];
    int n_eos_ids;
    char *source_dir; /* absolute path of the directory it was read from (owned), NULL for "bytes" */
};

enum { TOKENIZER_BYTES_BOS = 256, TOKENIZER_BYTES_EOS = 257, TOKENIZER_BYTES_PAD = 258, TOKENIZER_BYTES_MIN_VOCAB = 259 };

/* Byte-level tokenizer for a model with `vocab_size` (>= 259) ids. */
int tokenizer_create_bytes(tokenizer **out, int vocab_size, rlhf_error *err);
void tokenizer_destroy(tokenizer **tok);
/* The tokenizer of a model: `spec` "bytes" (byte-level), a directory holding tokenizer.json, or
 * NULL/"" for the model's own — the tokenizer.json of a Hugging Face model directory, the tokenizer a
 * project checkpoint names in its __metadata__ (MODEL_META_TOKENIZER), else byte-level. Its ids must
 * fit the model's vocabulary (model_vocab); vocab_size is set to model_vocab (ids past the
 * tokenizer's own decode to nothing). */
int tokenizer_load_for_model(tokenizer **out, const char *spec, const char *model_path, int model_vocab,
                             rlhf_error *err);
/* What the one-model commands (sample, score, serve, pretrain) do: the model at PATH (a checkpoint or a
 * Hugging Face directory; max_seq_len > 0 caps its context) and its tokenizer (tokenizer_spec as above).
 * On error neither is returned. */
int model_load_for_inference(struct model **m_out, tokenizer **tok_out, const char *path,
                             const char *tokenizer_spec, int max_seq_len, rlhf_error *err);
/* text -> malloc'd ids (BOS first when add_bos). */
/* A Hugging Face tokenizer from dir/tokenizer.json and dir/tokenizer_config.json (and
 * dir/generation_config.json when present, for more eos ids). Kind "bpe": byte-level BPE (GPT-2,
 * Llama-3, Qwen2/3, SmolLM) and SentencePiece-style BPE (Llama-2, Mistral, TinyLlama). Other models
 * (Unigram, WordPiece, WordLevel) and unknown normalizer/pre-tokenizer/decoder types are refused with
 * an error naming the file and key. vocab_size is the tokenizer's (largest id + 1), which may be
 * below the model's; ids in between decode to nothing. docs/MODEL.md has the semantics. */
int tokenizer_create_hf(tokenizer **out, const char *dir, rlhf_error *err);
/* text -> malloc'd ids. add_bos: "bytes" puts BOS first; "bpe" gives Hugging Face's
 * encode(text, add_special_tokens=add_bos) ids (its post-processor template, else tokenizer_config's
 * add_bos_token/add_eos_token). Added-token strings in the text (e.g. "<|im_start|>") always map to
 * their ids, as in Hugging Face. */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, int add_bos, int32_t **ids_out, int *n_out,
                     rlhf_error *err);
/* ids -> malloc'd NUL-terminated bytes (special/unused ids contribute nothing; out-of-range ids are an
 * error). The result is raw bytes and need not be valid UTF-8. The ids are one sequence: a
 * SentencePiece tokenizer drops the space its first piece starts with (Hugging Face's Strip decoder),
 * so decode token by token with a tokenizer_stream, not token_bytes, to get the same text. */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, int n, char **text_out, size_t *len_out,
                     rlhf_error *err);
/* The text of special token `id` (e.g. "<|im_end|>"), which decoding leaves out; NULL when `id` is
 * not a special token of this tokenizer. */
const char *tokenizer_special_text(const tokenizer *tok, int32_t id);

/* Streaming decoder: push ids as they are sampled and get the text they complete. Output is held back
 * only while it ends in an incomplete UTF-8 sequence (never replaced by U+FFFD); flush hands out what
 * is held. The concatenated output of push...flush equals tokenizer_decode of the same ids. Text
 * pointers stay valid until the next call on the stream. */
typedef struct tokenizer_stream tokenizer_stream;
int tokenizer_stream_create(tokenizer_stream **out, const tokenizer *tok, rlhf_error *err);
int tokenizer_stream_push(tokenizer_stream *s, int32_t id, const char **text, size_t *len, rlhf_error *err);
void tokenizer_stream_flush(tokenizer_stream *s, const char **text, size_t *len);
/* Back to the start of a sequence (SentencePiece's leading-space strip applies again). */
void tokenizer_stream_reset(tokenizer_stream *s);
void tokenizer_stream_destroy(tokenizer_stream **s);

/* ================================================================ safetensors
 *
 * Format: u64 little-endian header length N, N bytes of JSON header (padded with spaces to a multiple
 * of 8), then the data section. The header maps tensor names to {"dtype","shape","data_offsets":[b,e]}
 * (offsets relative to the data section) plus an optional "__metadata__" map of strings.
 * F32, BF16 and F16 tensors are read; F32 and BF16 are written. Other dtypes are rejected naming the
 * tensor and the dtype. */

enum { SAFETENSORS_MAX_DIMS = 8 };

typedef enum safetensors_dtype { SAFETENSORS_F32 = 0, SAFETENSORS_BF16 = 1, SAFETENSORS_F16 = 2 } safetensors_dtype;

typedef struct safetensors_tensor {
    const char *name;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    /* Writing: the values (numel floats, row-major). Reading: the values when the stored dtype is F32,
     * NULL otherwise (convert with safetensors_tensor_to_f32). */
    const float *data;
    /* Reading only (writers ignore both, so callers that fill just name/ndim/shape/data still write F32): */
    safetensors_dtype dtype; /* as stored */
    const void *raw;         /* the stored bytes, numel * safetensors_dtype_size(dtype) */
} safetensors_tensor;

const char *safetensors_dtype_name(safetensors_dtype d); /* "F32", "BF16", "F16" */
size_t safetensors_dtype_size(safetensors_dtype d);      /* 4, 2, 2 */
int64_t safetensors_numel(const safetensors_tensor *t);
/* Converts a read tensor's numel values to fp32 into dst (exact for every dtype). A BF16 or F16 value
 * that is not finite is an error naming `source` and the tensor. */
int safetensors_tensor_to_f32(const safetensors_tensor *t, float *dst, const char *source, rlhf_error *err);

/* Writes the tensors (in the given order) atomically (temp + fsync + rename). `metadata` is NULL or a
 * JSON object whose values are all strings. Names must be unique and not "__metadata__". */
int safetensors_write(const char *path, const safetensors_tensor *tensors, int n_tensors, const json_t *metadata,
                      rlhf_error *err);
/* Same with every tensor stored as dt: SAFETENSORS_F32 or SAFETENSORS_BF16 (rounded to nearest even). */
int safetensors_write_as(const char *path, const safetensors_tensor *tensors, int n_tensors, const json_t *metadata,
                         safetensors_dtype dt, rlhf_error *err);
/* safetensors_write into a malloc'd memory buffer (for sending weights over the wire). */
int safetensors_encode(const safetensors_tensor *tensors, int n_tensors, const json_t *metadata, void **buf_out,
                       size_t *len_out, rlhf_error *err);

/* An opened, fully validated file: header size, JSON, dtypes, shapes, offsets (in range,
 * non-overlapping, covering the data section exactly) and total size are checked before
 * anything is returned. Tensors keep the file's data-offset order. safetensors_open maps the file
 * read-only (pages are read when touched, so a large checkpoint costs no copy); a data section not
 * aligned to 4 bytes (another writer's header padding) is copied once to aligned memory instead. */
typedef struct safetensors_file {
    char source[512];           /* path or caller-given name, used in error messages */
    int n_tensors;
    safetensors_tensor *tensors; /* names and data point into this object */
    json_t *metadata;            /* object of strings (empty object when absent) */
    void *buf;                   /* the whole file (mapped, or malloc'd by safetensors_open_memory) */
    size_t size;
    int mapped;                  /* buf is an mmap of the file */
    void *data_copy;             /* the aligned copy of a misaligned data section, or NULL */
} safetensors_file;

int safetensors_open(safetensors_file **out, const char *path, rlhf_error *err);
/* Parses a copy of buf[0..len); `source` names it in errors. */
int safetensors_open_memory(safetensors_file **out, const void *buf, size_t len, const char *source, rlhf_error *err);
void safetensors_close(safetensors_file **f);
const safetensors_tensor *safetensors_find(const safetensors_file *f, const char *name);
/* A metadata value, or NULL. */
const char *safetensors_meta(const safetensors_file *f, const char *key);

/* ================================================================ model checkpoints
 *
 * Hugging Face Llama tensor names (per layer i: model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, ...;
 * lm_head.weight omitted when tied). __metadata__: "format" = "pt", "rlhf_model_config" = the config
 * as JSON (model_config_to_json), "policy_version" = decimal version. */
#define MODEL_META_CONFIG "rlhf_model_config"
#define MODEL_META_POLICY_VERSION "policy_version"
/* the tokenizer directory of the run that wrote the checkpoint (absent or "bytes": byte-level) */
#define MODEL_META_TOKENIZER "rlhf_tokenizer"
#define MODEL_META_HF_CONFIG "rlhf_hf_config" /* model->hf_config, when the model came from a HF directory */

/* Writes m atomically. */
int model_save(const struct model *m, const char *path, rlhf_error *err);
/* Same to a malloc'd buffer. */
int model_encode(const struct model *m, void **buf_out, size_t *len_out, rlhf_error *err);

typedef struct model_load_options {
    /* NULL, or the config the loaded model must have (after the max_seq_len cap): a difference is an
     * error naming the key */
    const struct model_config *expect;
    /* > 0: the loaded config's max_seq_len becomes min(its own, this). Hugging Face configs state the
     * longest context the model was trained for (Qwen3: 40960), and the sampler sizes its KV cache by
     * max_seq_len. 0: keep it. */
    int max_seq_len;
    /* 1: when every matrix of the file is BF16, keep them so (model.bf16_mem: a frozen base at half the
     * memory, for LoRA training); other files load as usual. 0: everything widened to fp32. */
    int keep_bf16;
} model_load_options;

/* Creates a model from PATH, which is either
 *   - a project checkpoint: one .safetensors file whose __metadata__ holds the config (model_save), or
 *   - a Hugging Face model directory: config.json (architectures LlamaForCausalLM, MistralForCausalLM,
 *     Qwen2ForCausalLM, Qwen3ForCausalLM) and model.safetensors, or model.safetensors.index.json and
 *     its shards; tensors F32, BF16 or F16 (converted to fp32). Every config key is checked: one the
 *     model does not implement (another architecture, hidden_act, rope_scaling type, an active sliding
 *     window, o_proj biases, ...) is an error naming the file, key and value. docs/MODEL.md lists them.
 * Every error names the file (and key or tensor); on error nothing is returned. */
int model_load_with(struct model **out, const char *path, const model_load_options *opt, rlhf_error *err);
/* model_load_with with {expect} and no max_seq_len cap. */
int model_load(struct model **out, const char *path, const struct model_config *expect, rlhf_error *err);
/* Builds a model from an already parsed project checkpoint. */
int model_from_safetensors(struct model **out, const safetensors_file *f, const struct model_config *expect,
                           rlhf_error *err);

typedef struct model_export_options {
    safetensors_dtype dtype;    /* SAFETENSORS_F32 (the zero value; lossless) or SAFETENSORS_BF16 */
    /* NULL, or a Hugging Face directory whose tokenizer files (tokenizer.json, tokenizer_config.json,
     * special_tokens_map.json, vocab.json, merges.txt, tokenizer.model, added_tokens.json,
     * chat_template.jinja, generation_config.json) are copied; it must hold tokenizer.json,
     * tokenizer.model or vocab.json */
    const char *tokenizer_from;
} model_export_options;

/* Writes m as a Hugging Face model directory DIR: config.json (m->hf_config with the model's
 * dimensions and torch_dtype updated, or, for a model created here, Qwen3ForCausalLM when qk_norm,
 * Qwen2ForCausalLM when attn_bias, else LlamaForCausalLM), model.safetensors (standard tensor names,
 * __metadata__ {"format": "pt"}; lm_head.weight omitted when tied), generation_config.json (unless
 * copied from tokenizer_from) and the tokenizer files. Everything is written into a temporary sibling
 * directory, synced, and renamed to DIR; DIR must not exist or be empty. opt may be NULL (F32). */
int model_export_hf(const struct model *m, const char *dir, const model_export_options *opt, rlhf_error *err);
/* Overwrites m's weights and version from a checkpoint with exactly m's config. */
int model_load_into(struct model *m, const char *path, rlhf_error *err);
/* 0 if equal; otherwise fills err naming the first differing key ("where" = `where`). */
int model_config_compare(const struct model_config *got, const struct model_config *expect, const char *where,
                         rlhf_error *err);

/* ================================================================ sampling
 *
 * A `sampler` owns a KV cache of `max_batch` slots (each cfg.max_seq_len positions; with kv_share only
 * the layers that project K/V have one, and a local layer keeps a ring of its window + 31 positions) and
 * scratch buffers. sampler_run() generates for any number of requests with continuous batching: up to
 * max_batch sequences decode together (one GEMM per weight matrix per step over all of them); a
 * finished slot takes the next waiting request. Each request has its own RNG stream seeded from
 * its seed and draws exactly one uniform number per sampled token, and every kernel computes a row
 * the same way whatever shares the step and however many threads run, so a request's tokens and
 * log-probs are bit-identical whichever other requests share the batch, and for any thread count.
 *
 * Log-probs returned per sampled token y_t:
 *   logprobs[t]          = log softmax(logits)[y_t] at temperature 1, no filters: the unmodified
 *                          policy pi(y_t | prefix), what the trainer's log-prob forward computes.
 *   sampling_logprobs[t] = log q(y_t), q the distribution actually sampled from (temperature, top-k,
 *                          top-p and min-p applied, renormalised). Equal to logprobs[t] when temperature = 1
 *                          and the filters are off; 0 under greedy decoding (temperature 0). This is the
 *                          behaviour log-prob a generator records for the RL updater's importance ratio
 *                          (docs/ARCHITECTURE.md "The RL step"). */

typedef enum sample_finish {
    SAMPLE_FINISH_NONE = 0,
    SAMPLE_FINISH_STOP,        /* sampled a stop id or produced a stop string */
    SAMPLE_FINISH_LENGTH,      /* reached max_new_tokens */
    SAMPLE_FINISH_MAX_SEQ_LEN, /* prompt + completion reached the model's max_seq_len */
} sample_finish;
const char *sample_finish_name(sample_finish f); /* "stop", "length", "max_seq_len" */

/* Token filters, applied in this order to the temperature-scaled distribution p_T = softmax(logits / T):
 *   1. top_k: keep the k most probable tokens (ties by smaller id);
 *   2. top_p: of those, keep the smallest most-probable-first prefix holding top_p of their
 *      (renormalised) mass;
 *   3. min_p: of those, keep the tokens with p_T(y) >= min_p * max p_T (the most probable token is
 *      always kept, so the ratio is the same before or after renormalising).
 * The token is drawn from what is left, renormalised: that is q. Greedy decoding ignores all three. */
/* A constraint on what may be sampled (guided generation: guided/guided.h implements it). Per request: ctx
 * is that sequence's state. Before each token the sampler calls mask(): the allowed ids are the set bits
 * of (*allowed)[id / 64] (vocab_size bits; valid until the next call on ctx), n_allowed of them (0: the
 * sampler fails with mask's error, or a generic one), *only the one when n_allowed == 1. Disallowed
 * logits become -inf before temperature and the filters, so q — and the sampling log-prob recorded — is
 * the masked, renormalised distribution; log pi stays the unmasked policy's. When exactly one token is
 * allowed it is emitted without a draw (log q = 0; no uniform is consumed). After the token is chosen,
 * accept() advances ctx. mask/accept run on the sampler's calling thread, one sequence at a time. */
typedef struct sample_constraint {
    void *ctx;
    int (*mask)(void *ctx, const uint64_t **allowed, int *n_allowed, int32_t *only, rlhf_error *err);
    int (*accept)(void *ctx, int32_t id, rlhf_error *err);
} sample_constraint;

typedef struct sample_params {
    float temperature;         /* 0: greedy (argmax); otherwise > 0 */
    int top_k;                 /* 0: off */
    float top_p;               /* in (0, 1]; 1: off */
    float min_p;               /* in [0, 1]; 0: off */
    int max_new_tokens;        /* >= 0 */
    uint64_t seed;             /* this request's RNG stream */
    const int32_t *stop_ids;   /* generation stops after sampling one of these (the id is kept in tokens) */
    int n_stop_ids;
    /* Generation stops when the completion's decoded bytes contain one of these (needs a tokenizer). The
     * match is on bytes, so it spans token boundaries and partial UTF-8 sequences; the earliest match
     * wins (at one position, the first listed). The tokens end with the token that completed it. */
    const char *const *stop_strings;
    int n_stop_strings;
    int include_stop;          /* 0: the text is cut before the matched stop string; 1: it ends with it */
    const sample_constraint *constraint; /* NULL: none (see sample_constraint) */
} sample_params;

/* Defaults: temperature 1, top_k 0, top_p 1, min_p 0, max_new_tokens 64, seed 0, no stops. */
sample_params sample_params_default(void);

typedef struct sample_request {
    const int32_t *prompt; /* prompt ids (the caller adds BOS if wanted); 1 <= len < max_seq_len */
    int prompt_len;
    sample_params params;
    void *user;            /* the caller's: sampler_run_stream hands it back to done(), untouched */
} sample_request;

typedef struct sample_result {
    int32_t *tokens;          /* (n_tokens) sampled ids, including a final stop id */
    float *logprobs;          /* (n_tokens) log pi(y_t) at temperature 1 (see above) */
    float *sampling_logprobs; /* (n_tokens) log q(y_t) of the sampling distribution */
    uint64_t *versions;       /* (n_tokens) the model's `version` when y_t was sampled (weights may change
                               * between decode steps of a stream: sampler_source.before_step) */
    int n_tokens;
    sample_finish finish;
    int stop_string;          /* index of the stop string that matched, or -1 */
    char *text;               /* decoded completion (NUL-terminated raw bytes), cut before a matched stop
                               * string (or just after it with include_stop); NULL when sampler_run got no
                               * tokenizer */
    size_t text_len;
} sample_result;

void sample_result_free(sample_result *r); /* frees the arrays; the struct itself is the caller's */

typedef struct sampler sampler;

/* max_batch >= 1 sequences decode at once. The model must outlive the sampler; its weights may be
 * replaced between runs (e.g. model_load_into on a new policy version). One call at a time per sampler
 * (it is not thread-safe); it uses OpenMP threads itself. KV cache: 2 * L * max_batch * max_seq_len *
 * n_kv_heads * head_dim floats. */
int sampler_create(sampler **out, const struct model *m, int max_batch, rlhf_error *err);

/* The precision of the sampler's copy of the weights. BF16: every matrix (embedding, projections, head)
 * rounded to bfloat16 (nearest even), the norm weights, activations, KV cache and sums fp32; half the
 * bytes per token that single-stream decoding is bound by. The log-probs a bf16 sampler returns are
 * those of the bf16 weights, which are the weights it sampled with. */
typedef enum sampler_weights { SAMPLER_WEIGHTS_FP32 = 0, SAMPLER_WEIGHTS_BF16 = 1 } sampler_weights;
typedef struct sampler_options {
    int max_batch;           /* slots, >= 1 */
    sampler_weights weights; /* SAMPLER_WEIGHTS_FP32 by default */
} sampler_options;
int sampler_create_with(sampler **out, const struct model *m, const sampler_options *opt, rlhf_error *err);
const char *sampler_weights_name(sampler_weights w); /* "fp32", "bf16" */
/* "fp32" or "bf16"; anything else is an error naming `where` */
int sampler_weights_parse(sampler_weights *w, const char *name, const char *where, rlhf_error *err);
sampler_weights sampler_weights_of(const sampler *s);
void sampler_destroy(sampler **s);
/* The sampler runs on its own repacked copy of the model's matrices (a layout its matmul kernel
 * streams; it doubles the weight memory). sampler_run and sampler_step refresh the copy when a
 * fingerprint of the weights (policy version + 256 sampled values per tensor) changed; call this
 * after modifying weights in some other way the fingerprint could miss. */
void sampler_sync_weights(sampler *s);
/* Generates for reqs[0..n); results[i] belongs to reqs[i] (free each with sample_result_free).
 * `tok` may be NULL unless a request has stop strings. All requests are validated first; a bad one
 * fails the call with an error naming "request i" and nothing is generated. */
int sampler_run(sampler *s, const tokenizer *tok, const sample_request *reqs, int n, sample_result *results,
                rlhf_error *err);

/* Streaming generation, for callers whose requests arrive while others are decoding (a generator
 * refilling finished slots from its prompt queue). Before every forward step the sampler calls
 * before_step (if set; it may replace the model's weights and then returns 1, and the sampler repacks
 * them; negative stops the run with that error), then next() for each free slot until next() returns 0
 * (nothing waiting now: asked again before the next step; when nothing is in flight either, the run
 * ends and sampler_run_stream returns 0) or negative (an error, err filled: the run stops). Requests are
 * validated as they are admitted (an invalid one stops the run with an error naming its admission
 * index). When a request finishes, done() gets the request as next() gave it (with its `user`
 * pointer), its admission index (0, 1, ... in next() order) and its result, which is then the callee's to free (sample_result_free); a negative return stops the run. A
 * request's arrays (prompt, stop ids and strings) must stay valid until its done(). Everything
 * sampler_run promises holds per request: its tokens depend on its seed and the weights it was
 * sampled with only. On an error, sequences still in flight are freed without a done(). */
typedef struct sampler_source {
    void *ctx;
    int (*next)(void *ctx, sample_request *req, rlhf_error *err);
    int (*done)(void *ctx, const sample_request *req, long index, sample_result *res, rlhf_error *err);
    int (*before_step)(void *ctx, rlhf_error *err);
    /* When before_step changed the weights: 0 keeps every sequence's KV cache (its earlier positions stay
     * as the old weights computed them; the next tokens are sampled from that mix), 1 recomputes each
     * sequence's cache (prompt and the tokens sampled so far) under the new weights before it samples
     * again, so every token is sampled from one set of weights, the version recorded with it. */
    int recompute_on_new_weights;
} sampler_source;
int sampler_run_stream(sampler *s, const tokenizer *tok, const sampler_source *src, rlhf_error *err);

/* ---------------------------------------------------------------- speculative decoding (model/speculative.c)
 *
 * A proposer drafts up to gamma tokens per sequence; the target verifies them in one forward step (the
 * draft tokens are rows of the step, like prompt rows, appended to the sequence's KV cache) and keeps a
 * prefix by rejection sampling, so every emitted token is distributed exactly as plain sampling from
 * q, the target's processed distribution (temperature, top-k, top-p, min-p): a draft token x is kept
 * with probability min(1, q(x)/d(x)) (d: the proposer's distribution; a point mass for the n-gram
 * proposer, so min(1, q(x))); at the first rejection a token is drawn from max(0, q - d) renormalised;
 * when all are kept one more token is drawn from q. The cache past the kept length is simply
 * overwritten later. Every emitted token records the same log-probs plain decoding records (log pi at
 * temperature 1 and log q), computed from the target's logits. Greedy decoding gives the same tokens as
 * plain greedy decoding. Per sequence the number of drafted tokens follows its acceptance rate and the
 * measured cost of an extra row, down to none (plain decoding, with an occasional probe).
 *
 * Proposers:
 *   SAMPLER_SPEC_NGRAM: no model. The longest suffix (ngram_max .. ngram_min tokens) of the sequence is
 *     looked up in the other sequences of the same prompt (same prompt tokens) now decoding, in the
 *     completions of that prompt finished earlier (kept across runs by the sampler_spec object, up to
 *     history completions per prompt), and in the sequence itself; the tokens that followed are the draft.
 *   SAMPLER_SPEC_DRAFT_MODEL: a smaller model with the same vocabulary (draft, a sampler over it with at
 *     least the target sampler's max_batch) samples the draft from its own processed distribution. */
typedef enum sampler_spec_kind { SAMPLER_SPEC_OFF = 0, SAMPLER_SPEC_NGRAM = 1, SAMPLER_SPEC_DRAFT_MODEL = 2 } sampler_spec_kind;
typedef struct sampler_spec_options {
    sampler_spec_kind kind;
    int gamma;        /* most draft tokens per verify step, 1..16 (default 4) */
    int ngram_max;    /* longest suffix looked up (default 8) */
    int ngram_min;    /* shortest (default 2) */
    int history;      /* finished completions kept per prompt (default 16; 0: only sequences in flight) */
    int adaptive;     /* 1 (default): per-sequence gamma from its acceptance and the cost of a row; 0: always gamma */
    sampler *draft;   /* SAMPLER_SPEC_DRAFT_MODEL: the draft model's sampler (the caller's; outlives the spec) */
} sampler_spec_options;
sampler_spec_options sampler_spec_options_default(void); /* kind OFF, the defaults above */
/* "off", "ngram", "draft"; anything else is an error naming `where` */
int sampler_spec_kind_parse(sampler_spec_kind *k, const char *name, const char *where, rlhf_error *err);
const char *sampler_spec_kind_name(sampler_spec_kind k);

/* Counters since sampler_spec_create (summed over runs). */
typedef struct sampler_spec_stats {
    uint64_t steps;        /* target forward steps */
    uint64_t verifies;     /* (sequence, step) pairs that verified at least one draft token */
    uint64_t drafted;      /* draft tokens verified */
    uint64_t accepted;     /* draft tokens kept */
    uint64_t spec_tokens;  /* tokens emitted by verify steps (kept drafts + one drawn token each, fewer at a stop) */
    uint64_t plain_tokens; /* tokens emitted by plain decode rows */
    double draft_seconds;  /* time in the proposer (n-gram lookup or draft model) */
} sampler_spec_stats;

typedef struct sampler_spec sampler_spec;
int sampler_spec_create(sampler_spec **out, const sampler_spec_options *opt, rlhf_error *err);
void sampler_spec_destroy(sampler_spec **sp);
void sampler_spec_get_stats(const sampler_spec *sp, sampler_spec_stats *out);
const sampler_spec_options *sampler_spec_options_of(const sampler_spec *sp); /* as created (defaults filled) */
/* sampler_run_stream / sampler_run with speculation (sp NULL or kind OFF: exactly the plain calls). A
 * request's tokens depend on its seed and on the drafts, which may come from its batch neighbours and
 * (adaptive) on measured step times; their distribution does not, and greedy output equals plain greedy
 * output. One call at a time per sampler_spec. */
int sampler_run_stream_spec(sampler *s, sampler_spec *sp, const tokenizer *tok, const sampler_source *src,
                            rlhf_error *err);
int sampler_run_spec(sampler *s, sampler_spec *sp, const tokenizer *tok, const sample_request *reqs, int n,
                     sample_result *results, rlhf_error *err);

/* Speculation one step at a time, for a caller that runs its own decoding loop over sampler_step (rlhf
 * serve); sampler_run_stream_spec is this loop around a sampler_source. A batch holds the speculative
 * state of the target sampler's max_batch cache slots (drafts, acceptance estimates, RNG streams, the
 * draft model's cache). A sequence in slot b has a context of L = prompt_len + n tokens (n = tokens
 * committed); while it generates, the target's cache holds positions 0..L-2. Every step, in this order:
 *   1. sampler_spec_propose(slots that generate this step): each gets g draft tokens (0..gamma, fewer
 *      near max_new_tokens or max_seq_len, `budget` rows at most in all; the draft model runs here);
 *   2. the caller's sampler_step: per generating slot g + 1 rows with logits, in consecutive logits rows
 *      from lrow: its last token at position L-1, draft i at position L+i (sampler_spec_drafts); any
 *      other rows (prompt chunks; a slot whose prompt ends here takes one logits row, its last);
 *   3. sampler_spec_verify(every slot of the batch that has logits rows this step): 1..g+1 emitted
 *      tokens each (sampler_spec_emitted), with log pi and log q from the target's row that emitted them;
 *   4. the caller takes emitted tokens one at a time through its own stop and length checks and reports
 *      how many it took with sampler_spec_commit (the rest, past a stop, are discarded).
 * A slot with g = 0 (or a prompt that just ended) is plain sampling from its one row. The guarantees are
 * those of sampler_run_stream_spec. Slots not begun are left alone (a caller may decode them itself,
 * e.g. with a constraint, which this API does not take). */
typedef struct sampler_spec_batch sampler_spec_batch;
/* `target` is the sampler the caller steps; sp (kind not OFF) and target must outlive the batch, and one
 * batch at a time uses sp. A draft model must have target's vocab_size and at least its max_batch. */
int sampler_spec_batch_create(sampler_spec_batch **out, sampler_spec *sp, sampler *target, rlhf_error *err);
void sampler_spec_batch_destroy(sampler_spec_batch **bt);
/* A new sequence in slot (0..max_batch-1): prompt (borrowed until sampler_spec_seq_end) and params
 * (copied; only the sampling fields, seed and max_new_tokens are used). */
void sampler_spec_seq_begin(sampler_spec_batch *bt, int slot, const int32_t *prompt, int prompt_len,
                            const sample_params *params);
/* The sequence leaves its slot; finished = 1 keeps its completion for the n-gram proposer. */
void sampler_spec_seq_end(sampler_spec_batch *bt, int slot, int finished);
int sampler_spec_propose(sampler_spec_batch *bt, int n, const int *slots, int budget, rlhf_error *err);
/* The draft tokens of slot this step; returns g. */
int sampler_spec_drafts(const sampler_spec_batch *bt, int slot, const int32_t **draft);
/* slots[i]'s rows are logits rows lrow[i] .. lrow[i] + g of logits (V floats each); n_rows: the rows of
 * the step (the cost model learns from steps whose every row had logits). */
void sampler_spec_verify(sampler_spec_batch *bt, int n, const int *slots, const int *lrow, const float *logits,
                         int n_rows);
/* Slot's emitted tokens after verify: returns their count; lp_pi (log pi at temperature 1, unfiltered)
 * and lp_q (log q of the distribution drawn from, 0 when greedy) per token; either pointer may be NULL. */
int sampler_spec_emitted(const sampler_spec_batch *bt, int slot, const int32_t **tokens, const float **lp_pi,
                         const float **lp_q);
/* The caller took the first n_taken emitted tokens (>= 1 unless the sequence is abandoned) into the
 * sequence; acceptance counters and estimates are updated. */
int sampler_spec_commit(sampler_spec_batch *bt, int slot, int n_taken, rlhf_error *err);

/* Low-level step (used by tests, scoring and custom decoding loops): feeds n_rows tokens, row r being
 * token tok[r] at position pos[r] of the sequence in cache slot slot[r]; rows of one slot must be
 * consecutive positions in increasing order and the slot's cache must already hold positions
 * 0..pos-1 (from earlier steps or earlier rows). Writes logits for rows logit_rows[0..n_logits) to
 * logits (n_logits, V). n_rows <= sampler_max_rows(s); slots 0..max_batch-1. */
int sampler_step(sampler *s, int n_rows, const int *slot, const int *pos, const int32_t *tok, int n_logits,
                 const int *logit_rows, float *logits, rlhf_error *err);
int sampler_max_rows(const sampler *s);
/* Bytes of the sampler's KV cache (keys and values): only layers that project their own K/V (kv_share)
 * have one; a local layer (attention_pattern) keeps a ring of its window plus 31 positions per slot, a
 * global layer max_seq_len positions. */
size_t sampler_kv_bytes(const sampler *s);
/* The kernel set this sampler runs: "ref", "avx2" or "avx512". sampler_create takes the best the CPU
 * has, or the one the environment variable RLHF_ISA=ref|avx2|avx512 names (an unknown name, or one the
 * CPU cannot run, fails sampler_create with an error naming it). Speed does not depend on the -march
 * the binary was built with: the vector kernels carry their instruction set themselves. */
const char *sampler_kernels_name(const sampler *s);
/* One line for `rlhf --version`: the kernels a sampler would run here and why, the instruction sets
 * this CPU runs, and the CPU's model name. */
int model_kernels_describe(char *buf, size_t n, rlhf_error *err);

/* Plain reference forward (no cache, single thread, simple loops) of one sequence: logits (T, V)
 * for tokens[0..T). Used by tests as the oracle for the fast path. */
int model_reference_logits(const struct model *m, const int32_t *tokens, int T, float *logits, rlhf_error *err);

#ifdef __cplusplus
}
#endif
#endif
