/* rewards/rewards.h — the reward interface: the versioned plugin ABI every reward source implements
 * (built-ins, shared-object plugins, process plugins, the execution sandbox, judges, reward models),
 * and the composition object (`reward_pipeline`) the updater scores rollouts with.
 *
 * Two audiences:
 *   - plugin authors need only the "plugin ABI" half: fill an rlhf_reward_plugin_v2 (or the older
 *     rlhf_reward_plugin_v1) and export
 *     `const rlhf_reward_plugin_v1 *rlhf_reward_plugin_entry(void)` from a .so (see
 *     docs/REWARD_PLUGINS.md, examples/reward-plugin/). No other project header or library is needed.
 *   - the updater (and `rlhf reward-test`) uses the "pipeline" half: build a pipeline from the
 *     config's JSON array of sources, score batches of items, read per-source raw scores and statuses
 *     plus the weighted total. That half needs common/common.h (rlhf_error) and jansson for the
 *     json_t form of the constructor.
 *
 * Scores are doubles; "higher is better". A status of ERROR means the scorer failed (sandbox broke,
 * plugin crashed, timed out): it is never the same thing as a reward of 0, and the pipeline counts it
 * and applies the source's on_error policy. */
#ifndef RLHF_REWARDS_H
#define RLHF_REWARDS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------
 * Plugin ABI. RLHF_REWARD_ABI_VERSION is the newest version (2, below the v1 structs); a loader
 * accepts every version from 1 to it and refuses any other. The v1 structs never change.
 * ---------------------------------------------------------------------------------------------- */
#define RLHF_REWARD_ABI_VERSION 2u
/* The symbol a shared-object plugin exports: const rlhf_reward_plugin_v1 *rlhf_reward_plugin_entry(void); */
#define RLHF_REWARD_PLUGIN_ENTRY "rlhf_reward_plugin_entry"

typedef enum rlhf_reward_status_code {
    RLHF_REWARD_OK = 0,    /* score is valid */
    RLHF_REWARD_ERROR = 1, /* the scorer failed on this item: NOT a zero reward; counted, on_error applies */
    RLHF_REWARD_SKIP = 2,  /* the source does not apply to this item (e.g. record has no "answer"): the
                              source contributes nothing to the total and is left out of normalisation;
                              an item every source SKIPs is not trained on (reward_scores.scored) */
} rlhf_reward_status_code;

#define RLHF_REWARD_REASON_MAX 160
typedef struct rlhf_reward_status {
    int32_t code;                          /* rlhf_reward_status_code */
    char reason[RLHF_REWARD_REASON_MAX];   /* short, human-readable. For ERROR/SKIP why, e.g. "timeout",
                                              "sandbox_error: ...", "record has no \"answer\""; for OK
                                              "" or a note such as the execution verdict ("fail 2/3") */
} rlhf_reward_status;

/* One completion to score. All pointers are borrowed for the duration of score_batch only. */
typedef struct rlhf_reward_item {
    const char *prompt;             /* prompt text (UTF-8, NUL-terminated) */
    const char *completion;         /* completion text, detokenised, without the EOS marker; valid UTF-8
                                       (invalid and NUL bytes arrive as U+FFFD, nothing is cut off) */
    const int32_t *completion_ids;  /* (n_completion_ids,) completion token ids; may be NULL */
    int64_t n_completion_ids;
    const char *record_json;        /* the dataset record as a JSON object text, e.g.
                                       {"answer":"42","tests":[...],"metadata":{...},"numbers":[..],"target":24};
                                       "{}" when there is none; never NULL */
    int64_t group_id;               /* rollout group (one prompt's k samples); -1 when ungrouped.
                                       on_error "skip_group" marks every item of the group SKIP */
    double deadline;                /* absolute time on the rlhf_now()/CLOCK_MONOTONIC clock, in seconds,
                                       by which the source should answer; 0 = no deadline */
} rlhf_reward_item;

typedef struct rlhf_reward_plugin_v1 {
    uint32_t abi_version;  /* = RLHF_REWARD_ABI_VERSION (a v1 plugin: 1, or the current value with the v1 size) */
    uint32_t struct_size;  /* = sizeof(rlhf_reward_plugin_v1), or sizeof(rlhf_reward_plugin_v2) in a v2
                              plugin: says the layout, and guards against mismatched headers */
    const char *name;      /* short identifier, e.g. "my_reward" */
    /* Parse `config_json` (a JSON value as text; "{}" when the config gave none) and create the
     * scorer's state. Return 0 and set *ctx_out, or non-zero with a one-line message in errbuf. */
    int (*init)(const char *config_json, void **ctx_out, char *errbuf, size_t errbuf_len);
    /* Score n items: write scores_out[i] and status_out[i] for every i (status_out arrives zeroed,
     * i.e. OK with reason ""). Return 0, or non-zero if the whole batch failed (every item is then
     * treated as ERROR with the reason in status_out[0].reason when set). A ctx is only ever used by
     * one thread at a time, but successive calls may come from different threads (a watchdog runs
     * each call on a thread of its own and abandons one that overruns timeout_ms); different ctx
     * may be used concurrently. */
    int (*score_batch)(void *ctx, const rlhf_reward_item *items, size_t n, double *scores_out,
                       rlhf_reward_status *status_out);
    void (*destroy)(void *ctx);
} rlhf_reward_plugin_v1;

/* ------------------------------------------------------------------------------------------------
 * Plugin ABI, version 2: everything of version 1, plus the training state, plugin metrics, a
 * declared score range and declared config keys. A v2 plugin fills an rlhf_reward_plugin_v2 (whose
 * first member is the v1 struct, with abi_version = 2 and struct_size = sizeof(rlhf_reward_plugin_v2))
 * and its entry returns &plugin.v1. A v1 plugin (abi_version 1, struct_size = sizeof(rlhf_reward_plugin_v1))
 * still loads and is only ever called through v1.score_batch with the v1 item array; the v2
 * structs below are handed only to plugins that declared version 2.
 * ---------------------------------------------------------------------------------------------- */
#define RLHF_REWARD_ABI_VERSION_V1 1u

#define RLHF_REWARD_METRIC_NAME_MAX 48
/* One named scalar a plugin reports for a batch; the updater logs it as reward/<source>/<name>
 * (the mean over the step's groups of their batch's value). name: [A-Za-z0-9_./-], NUL-terminated. */
typedef struct rlhf_reward_metric {
    char name[RLHF_REWARD_METRIC_NAME_MAX];
    double value;
} rlhf_reward_metric;

/* What score_batch_v2 gets besides the items. All pointers are valid during the call only. */
typedef struct rlhf_reward_batch {
    uint32_t struct_size;           /* = sizeof(rlhf_reward_batch) of the host; later fields are appended */
    const rlhf_reward_item *items;  /* (n,) as in v1 */
    size_t n;
    int64_t step;                   /* optimizer steps the updater had done when it scored the batch;
                                       -1 outside a run (rlhf reward-test) */
    const int64_t *policy_version;  /* (n,) the policy version that sampled each item; -1 when unknown */
    rlhf_reward_metric *metrics;    /* (max_metrics,) out: the plugin may write up to max_metrics */
    size_t max_metrics;
    size_t *n_metrics;              /* out: how many it wrote (arrives 0) */
} rlhf_reward_batch;

typedef struct rlhf_reward_plugin_v2 {
    rlhf_reward_plugin_v1 v1;  /* abi_version = RLHF_REWARD_ABI_VERSION (2), struct_size =
                                  sizeof(rlhf_reward_plugin_v2); v1.score_batch may be NULL when
                                  score_batch_v2 is set */
    /* Like v1.score_batch, with the batch's training state and a place for metrics. */
    int (*score_batch_v2)(void *ctx, const rlhf_reward_batch *batch, double *scores_out,
                          rlhf_reward_status *status_out);
    int32_t has_range;          /* 1: every OK score lies in [range_lo, range_hi] (the config's "range"
                                   overrides); an OK score outside is handled by the source's out_of_range */
    double range_lo, range_hi;
    const char *const *config_keys; /* NULL-terminated keys init accepts at the top level of its config
                                       object; the loader refuses any other key by name. NULL: not declared */
} rlhf_reward_plugin_v2;

typedef const rlhf_reward_plugin_v1 *(*rlhf_reward_plugin_entry_fn)(void);

/* Sets a status (reason printf-style, truncated to fit). Inline so plugins need no library. */
#include <stdarg.h>
#include <stdio.h>
static inline void rlhf_reward_status_set(rlhf_reward_status *st, int code, const char *fmt, ...) {
    st->code = code;
    st->reason[0] = 0;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st->reason, sizeof st->reason, fmt, ap);
        va_end(ap);
    }
}

/* ------------------------------------------------------------------------------------------------
 * Composition: the reward pipeline (needs librlhf, common/common.h for rlhf_error).
 *
 * Config: a JSON array of sources. Keys every source accepts:
 *   "type"       string, required: a registered type (see reward_source_types()):
 *                  exact_match, numeric_match, regex, length_penalty, countdown, exec, plugin, process,
 *                  judge, rm, remote_rm, capitals
 *   "name"       string, default = type; must be unique; metrics use it: reward/<name>/mean, reward_errors/<name>
 *   "weight"     number >= 0, default 1
 *   "normalize"  "none" (default) | "batch" (z-score over the batch's OK items) |
 *                "running" (z-score with running mean/std over everything scored so far)
 *   "timeout_ms" integer > 0, default 10000: the per-batch budget of this source; items get
 *                deadline = start + timeout; a late or unanswered item is ERROR "timeout"
 *   "on_error"   "skip_group" (default: the item and every item with the same group_id get item_status
 *                SKIP; the updater does not train on that group and counts it) |
 *                "zero" (the item's contribution from this source is 0, counted as an error) |
 *                "fail" (reward_pipeline_score returns an error naming the source; the updater stops)
 *   "max_error_rate" number in [0, 1], default 0.5; "error_window" integer, default 200: the updater
 *                stops the run when more than max_error_rate of the source's last error_window scored
 *                (non-SKIP) items were ERROR (1 = never). Read with reward_pipeline_source_max_error_rate.
 *   "range"      [lo, hi], finite, lo <= hi: the scores the source may return (default: the plugin's
 *                declared range, else any finite score). An OK score outside it is handled by
 *   "out_of_range" "error" (default: the item is ERROR "out of range: 1e+12 not in [0, 1]") |
 *                "clip" (clipped to the range, counted in reward_scores.source_clipped)
 *   "concurrency" integer 1..64, default 1: the source is created this many times (each instance its
 *                own ctx or process) and a batch is split into that many contiguous sub-batches scored
 *                at once, results matched by item index (for remote or slow scorers)
 * plus the type's own keys (documented in docs/REWARD_PLUGINS.md). Unknown keys are errors naming
 * the JSON path, e.g. "config.json: rewards[2].wieght: unknown key".
 *
 * Thread safety: no globals. One pipeline may be called from several threads; calls on the same
 * pipeline are serialised by its mutex. For parallel scoring make one pipeline per thread.
 * ---------------------------------------------------------------------------------------------- */
struct json_t;          /* jansson's json_t */
struct rlhf_error;      /* common/common.h */

typedef struct reward_pipeline reward_pipeline;

/* Scores of one batch. Arrays are owned by the struct: free with reward_scores_free(). */
typedef struct reward_scores {
    size_t n_items, n_sources;
    double *raw;                /* (n_items, n_sources) what each source returned (0 when not OK) */
    double *normalized;         /* (n_items, n_sources) after the source's normalisation */
    rlhf_reward_status *status; /* (n_items, n_sources) per-source status of each item */
    double *total;              /* (n_items,) sum over sources of weight * normalized (OK sources;
                                   ERROR with on_error "zero" adds 0) */
    rlhf_reward_status *item_status; /* (n_items,) OK, or SKIP (a skip_group policy fired; reason names the source) */
    double *source_ms;          /* (n_sources,) wall time spent in each source for this batch */
    int64_t *source_errors;     /* (n_sources,) ERROR items per source in this batch */
    unsigned char *scored;      /* (n_items,) 1 when some source scored the item (OK, or ERROR under on_error
                                   "zero"); 0 when no source applies (all SKIP): the updater leaves the item
                                   out of its group's RLOO baseline and of the loss */
    int64_t *source_clipped;    /* (n_sources,) scores clipped into the source's range ("out_of_range": "clip") */
    unsigned char *clipped;     /* (n_items, n_sources) 1 where that score was clipped */
    int64_t *source_skipped;    /* (n_sources,) SKIP items per source in this batch */
    struct reward_source_metric *metrics; /* (n_metrics,) what v2 plugins reported for this batch */
    size_t n_metrics;
} reward_scores;
typedef struct reward_source_metric {
    size_t source;                             /* index of the source */
    char name[RLHF_REWARD_METRIC_NAME_MAX];    /* logged as reward/<source name>/<name> */
    double value;                              /* the mean over the sub-batches of a concurrent source */
} reward_source_metric;

/* Builds a pipeline from a JSON array of sources. `where` names the array for error messages
 * (e.g. "runs/x/config.json: rewards"). Loads plugins, starts process plugins, probes the sandbox. */
int reward_pipeline_create(reward_pipeline **out, const struct json_t *sources, const char *where,
                           struct rlhf_error *err);
/* Same, from JSON text. */
int reward_pipeline_create_str(reward_pipeline **out, const char *sources_json, const char *where,
                               struct rlhf_error *err);
void reward_pipeline_destroy(reward_pipeline **p);

size_t reward_pipeline_n_sources(const reward_pipeline *p);
const char *reward_pipeline_source_name(const reward_pipeline *p, size_t s);
double reward_pipeline_source_weight(const reward_pipeline *p, size_t s);
/* The source's max_error_rate; *window (may be NULL) gets its error_window. */
double reward_pipeline_source_max_error_rate(const reward_pipeline *p, size_t s, int64_t *window);
/* The kind of an ERROR reason, for metric names: the text before the first ':' or '(', lower-case
 * words joined by '_', digits dropped ("timeout: no reply within 2000 ms" -> "timeout",
 * "process plugin exited (status 3)" -> "process_plugin_exited"); "unknown" when empty. */
void reward_reason_kind(const char *reason, char *out, size_t cap);
/* Errors counted per source since creation (reward_errors/<name>). */
int64_t reward_pipeline_source_errors_total(const reward_pipeline *p, size_t s);

/* Resources of source s when it runs in a child process (process plugins; .so plugins under isolate
 * "process"), as of the end of its last batch: *rss_mb the current child's resident memory (0 when
 * none runs), *cpu_s user+system CPU seconds of every child it started, *restarts how often the
 * child was started again (crash, timeout, bad output, max_rss_mb, restart_every). Returns 0, or 1
 * when the source runs in this process (outputs untouched). Safe from any thread, no waiting. */
int reward_pipeline_source_resources(const reward_pipeline *p, size_t s, double *rss_mb, double *cpu_s,
                                     int64_t *restarts);

/* Scores n items with every source. Fills *out (allocating its arrays; reuse across calls is fine,
 * reward_scores_free releases). Returns 0; or a negative RLHF_E* code when a source with
 * on_error "fail" had an error (err names the source and item), or on bad arguments. A failing
 * source never crashes the caller. */
int reward_pipeline_score(reward_pipeline *p, const rlhf_reward_item *items, size_t n, reward_scores *out,
                          struct rlhf_error *err);
/* The training state a batch is scored in, for v2 sources (rlhf_reward_batch). */
typedef struct reward_score_opts {
    int64_t step;                   /* -1 when unknown */
    const int64_t *policy_version;  /* (n,) or NULL (every item -1) */
} reward_score_opts;
/* reward_pipeline_score with the training state (opts may be NULL: step -1, versions -1). */
int reward_pipeline_score_ex(reward_pipeline *p, const rlhf_reward_item *items, size_t n,
                             const reward_score_opts *opts, reward_scores *out, struct rlhf_error *err);
void reward_scores_free(reward_scores *s);
/* Stops the pipeline for good, from any thread (e.g. at shutdown): a call in progress stops waiting
 * for its sources within about 0.1 s (their items become ERROR "cancelled" — an in-process plugin
 * stuck in score_batch is abandoned as after a timeout), and later calls return such ERRORs at once. */
void reward_pipeline_cancel(reward_pipeline *p);

/* Makes the files a JSON array of sources names absolute against base_dir (the config file's folder),
 * in place: each source's "path" when relative; "command"[0] when it is relative and holds a '/' (a
 * bare name is looked up in PATH); a later "command" argument when it is relative and base_dir/ARG is
 * an existing file (["python3", "style.py"]). Other values are left as written. 0, or an error. */
int reward_sources_resolve_paths(struct json_t *sources, const char *base_dir, struct rlhf_error *err);

/* Names of the registered source types, NULL-terminated (for help texts). */
const char *const *reward_source_types(void);

#ifdef __cplusplus
}
#endif
#endif
