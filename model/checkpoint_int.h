/* model/checkpoint_int.h — private to model/: the checkpoint tensor table shared by project checkpoints
 * (safetensors.c) and Hugging Face directories (hf.c). */
#ifndef RLHF_MODEL_CHECKPOINT_INT_H
#define RLHF_MODEL_CHECKPOINT_INT_H

#include "model/model.h"

enum { MODEL_CKPT_NAME_MAX = 96 };

/* One checkpoint tensor: HF name, shape and where it lives in the parameter buffer. */
typedef struct model_ckpt_entry {
    char name[MODEL_CKPT_NAME_MAX];
    int ndim;
    int64_t shape[2];
    size_t offset; /* floats from params_mem */
} model_ckpt_entry;

/* The model's tensors in file order (embed, per layer, final norm, lm_head); *out is malloc'd.
 * Returns 0 or RLHF_ENOMEM. */
int model_ckpt_layout(const model *m, model_ckpt_entry **out, int *n_out);
/* With keep_bf16: ts[i] is the file's tensor for e[i] (NULL: missing); when every matrix among them is
 * BF16, model_keep_bf16(m). Returns 0 or its error. */
int model_ckpt_keep_bf16_if(model *m, const model_ckpt_entry *e, const safetensors_tensor *const *ts, int n,
                            rlhf_error *err);
/* Checks t's shape against e and converts its values (any read dtype) into m's buffer (a matrix of a
 * model kept in bf16: the BF16 bits as they are). */
int model_ckpt_fill(model *m, const model_ckpt_entry *e, const safetensors_tensor *t, const char *source,
                    rlhf_error *err);
/* Hugging Face config.json (already parsed) -> cfg, max_seq_len capped at cap when cap > 0; errors name
 * `file` and the key (hf.c; here so that tests/fuzz/fuzz_hf.c reaches it without a model directory). */
int model_hf_parse_config(model_config *cfg, const json_t *j, const char *file, int cap, rlhf_error *err);
/* Loads a Hugging Face model directory (hf.c). */
int model_hf_load_dir(model **out, const char *dir, const model_load_options *opt, rlhf_error *err);

#endif
