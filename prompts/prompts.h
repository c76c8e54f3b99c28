/* prompts/prompts.h — prompt datasets, task generators (and the synthetic preference task) and prompt
 * selection (prompts/'s public header).
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
#include "template/template.h"

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

/* Which records a load keeps. A record's split is its `split` field ("train" or "heldout") when it has
 * one; otherwise it is decided by hashing its id with split_seed: held-out with probability
 * heldout_fraction (so the same id always lands on the same side, whatever the file order). */
enum { PROMPT_SPLIT_ALL = 0, PROMPT_SPLIT_TRAIN = 1, PROMPT_SPLIT_HELDOUT = 2 };
typedef struct prompt_dataset_opts {
    int split;               /* PROMPT_SPLIT_*: records kept */
    double heldout_fraction; /* [0, 1): for records without a `split` field; 0 = all train */
    uint64_t split_seed;
    int skip_bad;            /* 1: count and skip bad lines (invalid JSON, no prompt, duplicate id) */
} prompt_dataset_opts;
/* prompt_dataset_load(path) is prompt_dataset_load_opts(path, {ALL, 0, 0, 0}). */
int prompt_dataset_load_opts(prompt_dataset **out, const char *path, const prompt_dataset_opts *opts,
                             rlhf_error *err);
/* Lines skipped as bad (skip_bad), and records left out by the split. */
size_t prompt_dataset_skipped(const prompt_dataset *ds);
size_t prompt_dataset_other_split(const prompt_dataset *ds);
/* 1 if the record at index is held-out (by field or hash), else 0. */
int prompt_dataset_is_heldout(const prompt_dataset *ds, size_t index);
const char *prompt_dataset_path(const prompt_dataset *ds);

/* Datasets of chat messages (prompts/messages.c): a line {"id", "messages": [{role, content}, ...],
 * "tools"?, ...} becomes {"id", "messages", "prompt": TEXT, ...}, TEXT the chat template's rendering with
 * add_generation_prompt, without a leading bos_token (the tokenizer adds the BOS id). */
typedef struct prompt_chat {
    const template_program *tmpl;        /* NULL: a `messages` line is an error */
    const char *bos_token, *eos_token;   /* may be NULL */
} prompt_chat;
/* *has = 1 when some line of PATH has `messages` and no `prompt`. */
int prompt_dataset_has_messages(const char *path, int *has, rlhf_error *err);
/* Writes OUT (atomically): IN with every `messages` line rendered; other lines as they are. Errors name
 * IN:LINE (and the template's line:column). */
int prompt_dataset_render_messages(const char *in, const char *out, const prompt_chat *chat, size_t *n_rendered,
                                   rlhf_error *err);

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

/* Cohesion and spread of one group, as the selector computes them (docs/PROMPT_SELECTION.md):
 *   spread   = population std of the finite totals (0 if fewer than 2);
 *   cohesion = mean over pairs of sources of their agreement on the samples both scored (NaN = not
 *              scored): Kendall tau-b when both vary; when exactly one is constant (it sees no difference
 *              where the other ranks), 0 with PROMPT_CONSTANT_PAIR_ZERO or left out with
 *              PROMPT_CONSTANT_PAIR_SKIP; pairs where both are constant carry no ranking and are left out.
 *              With no contributing pair (one source, ...) it is `single_source_cohesion` (the documented
 *              fallback, default 1: nothing disagrees).
 * Returns the number of source pairs that contributed (0 = the fallback was used). */
enum { PROMPT_CONSTANT_PAIR_ZERO = 0, PROMPT_CONSTANT_PAIR_SKIP = 1 };
int prompt_group_cohesion(const prompt_stats *st, double single_source_cohesion, int constant_pair,
                          double *spread_out, double *cohesion_out);
/* Kendall tau-b of two length-n vectors (ties handled); NAN if either is constant. */
double prompt_kendall_tau_b(const float *a, const float *b, int n);

/* Checkpoint state: everything that determines future choices (per-prompt statistics by id, counters,
 * RNG, epoch order). Loading requires a selector created with the same dataset and policy;
 * a state naming a prompt id missing from the dataset is an error. Round trip is exact. */
json_t *prompt_selector_save_json(const prompt_selector *sel);
int prompt_selector_load_json(prompt_selector *sel, const json_t *state, const char *where, rlhf_error *err);
int prompt_selector_save(const prompt_selector *sel, const char *path, rlhf_error *err); /* atomic */
int prompt_selector_load(prompt_selector *sel, const char *path, rlhf_error *err);

/* Metrics (names as in metrics.jsonl): prompts/groups, prompts/zero_spread_share (all groups fed back),
 * prompts/zero_spread_share_recent (last 256 groups), prompts/mean_cohesion (groups with spread > 0,
 * i.e. trained), prompts/sampling_entropy (nats, of the current sampling distribution),
 * prompts/sampling_entropy_norm (/ log N), prompts/unseen, prompts/filtered (zero_variance_filter),
 * prompts/epoch, prompts/served. New reference. */
json_t *prompt_selector_metrics(const prompt_selector *sel);
/* Current sampling probability of each dataset index (n = dataset size). */
int prompt_selector_probs(const prompt_selector *sel, double *probs_out, rlhf_error *err);
/* One JSON line per prompt: id, served, groups, zero_groups, mean_reward, spread, cohesion (null until a
 * group of it could show agreement), learnability, zero_streak, last_update, last_served, prob.
 * Written atomically. */
int prompt_selector_dump_stats(const prompt_selector *sel, const char *path, rlhf_error *err);
const char *prompt_selector_policy(const prompt_selector *sel);

/* ---------------------------------------------------------------- task generators */

/* Deterministic from seed. Records: {"id", "prompt", "answer", "task", "split", ...task fields}.
 *   countdown: "nums 3 5 7 target 22:" -> e.g. "3*5+7"; fields numbers (array), target (int).
 *   arith:     "12+7=" -> "19".
 * Prompts are distinct within one call and none is in `exclude` (prompt texts; may be NULL), so a
 * held-out set can be made disjoint from the train set. Returns a JSON array (new reference) in *out. */
typedef struct prompt_task_opts {
    int max_num;       /* countdown 3-number problems: numbers from 1..max_num (default 9);
                        * arith: operands 0..max_num (default 20) */
    int max_num2;      /* countdown 2-number problems: numbers from 1..max_num2 (default 25, ~760 distinct
                        * problems with targets <= 100, so train and held-out sets can both have them) */
    double p_three;    /* countdown: share of 3-number problems (rest 2-number), default 0.5 */
    double p_correct;  /* corpus: share of lines whose completion is correct (default 0.5) */
} prompt_task_opts;
void prompt_task_opts_default(const char *task, prompt_task_opts *o);
int prompt_task_generate(json_t **out, const char *task, size_t n, uint64_t seed, const char *split,
                         const prompt_task_opts *opts, const json_t *exclude, rlhf_error *err);
/* Writes n corpus examples, p_correct of them with a correct completion, the rest with a plausible wrong
 * one (docs/PROMPT_SELECTION.md); atomic. A path ending in .jsonl gets {"prompt", "completion"} lines (the
 * completion ends with "\n"), any other path plain text: the prompt immediately followed by the
 * completion and a newline, one example per line. */
int prompt_task_write_corpus(const char *path, const char *task, size_t n, uint64_t seed,
                             const prompt_task_opts *opts, rlhf_error *err);
/* Checks a countdown expression: only digits, + - * ( ) and spaces, each number a distinct use of one of
 * `numbers` (multiset), value == target. Returns 1 valid, 0 not. Used by tests and the corpus writer;
 * the reward itself runs the expression in the sandbox (rewards/). */
int prompt_countdown_check(const char *expr, const int *numbers, int n_numbers, long target, long *value_out);

/* ---------------------------------------------------------------- the synthetic preference task
 * "Answer in capitals" (prompts/capitals.c), for reward-model training and RL against a reward model:
 * the preferred completion is mostly upper-case letters, the rejected one mostly lower-case (each a few
 * random words). Ground truth for a completion: prompt_capitals_truth = fraction of its letters that are
 * upper case (> 0.5 for every chosen, < 0.5 for every rejected completion). All writers are atomic and
 * deterministic from the seed. */
/* n_pairs {"prompt","chosen","rejected"} lines (the input of rlhf train-rm). */
int prompt_capitals_write(const char *path, int n_pairs, uint64_t seed, rlhf_error *err);
/* The task's prompts alone, {"id":"caps-N","prompt":...} per line, for an RL run against the RM. */
int prompt_capitals_prompts_write(const char *path, int n, uint64_t seed, rlhf_error *err);
/* A pretraining corpus for a base policy of the task: {"prompt","completion"} lines whose completions
 * (ending in "\n") have a share of capitals drawn uniformly from [0, 1], so the base writes words in
 * mixed case and an RL run has room to move the share either way. */
int prompt_capitals_corpus_write(const char *path, int n, uint64_t seed, rlhf_error *err);
double prompt_capitals_truth(const char *completion);
/* Share of the completion's words (split at spaces, a final '.' dropped) that are words of the task's
 * vocabulary in any case: a policy that games the RM with capital gibberish scores low here. */
double prompt_capitals_word_share(const char *completion);

#ifdef __cplusplus
}
#endif
#endif
