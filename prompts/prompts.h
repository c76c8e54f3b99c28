/* prompts/prompts.h — prompt datasets, task generators and prompt selection (prompts/'s public header).
 *
 * The broker serves prompts through this seam: it loads a dataset, creates a selector, asks the
 * selector for dataset indices when a generator requests a batch, and feeds back the PROMPT_STATS
 * that updaters send after scoring a group. */
#ifndef RLHF_PROMPTS_H
#define RLHF_PROMPTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- datasets */

/* One JSONL record: {"id": "...", "prompt": "...", "answer"?, "tests"?, "metadata"?, ...}. */
typedef struct prompt_record {
    const char *id;     /* unique within the dataset */
    const char *prompt;
    json_t *record;     /* the whole record (borrowed; owned by the dataset), for reward sources */
} prompt_record;

typedef struct prompt_dataset prompt_dataset;

/* Loads a JSONL file. Invalid JSON, a missing/non-string `prompt` or `id`, duplicate ids: an error
 * naming FILE:LINE. An empty dataset is an error. */
int prompt_dataset_load(prompt_dataset **out, const char *path, rlhf_error *err);
size_t prompt_dataset_size(const prompt_dataset *ds);
const prompt_record *prompt_dataset_get(const prompt_dataset *ds, size_t index);
/* Index of the record with this id, or -1. */
long prompt_dataset_find(const prompt_dataset *ds, const char *id);
void prompt_dataset_destroy(prompt_dataset **ds);

/* ---------------------------------------------------------------- selection */

/* What an updater reports after scoring one rollout group (the PROMPT_STATS message body). */
typedef struct prompt_stats {
    const char *prompt_id;
    int k;                 /* samples in the group */
    int n_sources;         /* reward sources */
    const float *rewards;  /* (n_sources, k): per-source reward of each sample; NaN = that source failed */
    const float *total;    /* (k): weighted total reward per sample */
    uint64_t policy_version;
} prompt_stats;

typedef struct prompt_selector prompt_selector;

/* config: {"policy": "uniform" | "zero_variance_filter" | "cohesion", ...policy knobs}; NULL = uniform.
 * Unknown keys or policies are errors naming the key. `ds` must outlive the selector. */
int prompt_selector_create(prompt_selector **out, const prompt_dataset *ds, const json_t *config, uint64_t seed,
                           rlhf_error *err);
/* Fills idx_out[0..n) with dataset indices to serve next. */
int prompt_selector_next(prompt_selector *sel, size_t n, size_t *idx_out, rlhf_error *err);
/* Feeds back one scored group; an unknown prompt id is an error (counted by the caller). */
int prompt_selector_update(prompt_selector *sel, const prompt_stats *st, rlhf_error *err);
void prompt_selector_destroy(prompt_selector **sel);

#ifdef __cplusplus
}
#endif
#endif
