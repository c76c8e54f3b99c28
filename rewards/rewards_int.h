/* rewards/rewards_int.h — private to rewards/: the source-type registry and helpers for source
 * constructors.
 *
 * Adding a source type (e.g. "foo"): write
 *     int reward_source_foo_create(const json_t *src, const char *where, reward_source_impl *impl,
 *                                  rlhf_error *err);
 * in its own file under rewards/ (a source built on a sub-package is an adapter here, like
 * rewards/judge_source.c over rewards/judge/), declare it below and add one line to the table in
 * rewards/registry.c.
 *
 * A constructor:
 *   - checks the source object's type-specific keys with reward_check_keys() (the common keys
 *     type/name/weight/normalize/timeout_ms/on_error/..., range, out_of_range, concurrency are
 *     validated by the pipeline and always allowed);
 *   - may be called several times for one source ("concurrency": one instance each);
 *   - fills impl->plugin (a static rlhf_reward_plugin_v1 whose init may be NULL) and impl->ctx; a
 *     source that uses the training state or reports metrics also sets impl->score_v2, one with a
 *     known score range impl->has_range/range_lo/range_hi;
 *   - reports errors with rlhf_error_set(err, RLHF_EINVAL, "<where>.<key>", ...), naming the JSON path.
 * The pipeline calls impl->plugin->score_batch(impl->ctx, ...) with items whose deadline is set from
 * the source's timeout_ms (impl->timeout_ms, already parsed, is given for sources that enforce their
 * own timeouts), and impl->plugin->destroy(impl->ctx) at the end. */
#ifndef RLHF_REWARDS_INT_H
#define RLHF_REWARDS_INT_H

#include <jansson.h>

#include "common/common.h"
#include "rewards/rewards.h"

typedef struct reward_source_impl {
    const rlhf_reward_plugin_v1 *plugin; /* vtable (static storage or owned by the loaded .so) */
    const rlhf_reward_plugin_v2 *plugin_v2; /* the same struct when the loaded .so declared ABI v2, else NULL */
    void *ctx;                           /* given to score_batch/destroy */
    void *dl_handle;                     /* dlopen handle to dlclose after destroy, or NULL */
    int64_t timeout_ms;                  /* the source's timeout_ms (input to the constructor) */
    const volatile int *cancel;          /* the pipeline's cancel flag (input): when it becomes non-zero,
                                            sources that wait (process, plugin watchdog) stop waiting */
    /* optional, for sources that run in a child process: its resources as of the end of the last
     * batch (reward_pipeline_source_resources); 0, or 1 when there is no child. Any thread. */
    int (*resources)(void *ctx, double *rss_mb, double *cpu_s, int64_t *restarts);
    /* Optional, for sources that take the v2 batch (training state, metrics out): the pipeline calls
     * it instead of plugin->score_batch. */
    int (*score_v2)(void *ctx, const rlhf_reward_batch *batch, double *scores, rlhf_reward_status *status);
    int has_range;                       /* a declared score range (a v2 plugin's); the config's "range" wins */
    double range_lo, range_hi;
} reward_source_impl;

typedef int (*reward_source_create_fn)(const json_t *src, const char *where, reward_source_impl *impl,
                                       rlhf_error *err);

typedef struct reward_source_type {
    const char *type;
    reward_source_create_fn create;
    const char *help;
} reward_source_type;

/* The registry (rewards/registry.c). Returns NULL for an unknown type. */
const reward_source_type *reward_source_type_find(const char *type);
const reward_source_type *reward_source_type_table(size_t *n);

/* Checks every key of `obj` is a common source key or in `allowed` (NULL-terminated; may be NULL).
 * On an unknown key: RLHF_EINVAL with where "<where>.<key>". */
int reward_check_keys(const json_t *obj, const char *where, const char *const *allowed, rlhf_error *err);

/* Small typed getters that name the JSON path on error. A missing key leaves *out unchanged
 * (the caller's default) unless `required`. */
int reward_get_string(const json_t *obj, const char *key, const char *where, int required, const char **out,
                      rlhf_error *err);
int reward_get_number(const json_t *obj, const char *key, const char *where, int required, double *out,
                      rlhf_error *err);
int reward_get_int(const json_t *obj, const char *key, const char *where, int required, int64_t *out,
                   rlhf_error *err);
int reward_get_bool(const json_t *obj, const char *key, const char *where, int required, int *out,
                    rlhf_error *err);

/* Built-in constructors (one file each). */
int reward_source_exact_match_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_numeric_match_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_regex_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_length_penalty_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_plugin_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_process_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_exec_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_countdown_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
/* Adapters of the sub-packages: rewards/judge_source.c (rewards/judge/) and rewards/rm_source.c
 * (rewards/rm/, and the synthetic task's ground truth from prompts/). The table in rewards/registry.c
 * names every constructor directly: a weak reference would not pull the object out of librlhf.a. */
int reward_source_judge_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_rm_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_remote_rm_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);
int reward_source_capitals_create(const json_t *src, const char *where, reward_source_impl *impl, rlhf_error *err);

/* Loads a shared-object plugin: dlopen, look up RLHF_REWARD_PLUGIN_ENTRY, check abi_version and
 * struct_size, call init(config_json). Errors name `where` and the path. The plugin is called
 * directly (no watchdog): `rlhf reward-plugin-host` uses it; the "plugin" source wraps it. */
int reward_plugin_load(const char *path, const char *config_json, const char *where, reward_source_impl *impl,
                       rlhf_error *err);

/* The process source with the child named `label` in messages ("process plugin"; the .so worker is
 * "plugin worker"). Keys: command, config, start_timeout_ms, max_rss_mb, restart_every. */
int reward_process_create_labelled(const json_t *src, const char *where, const char *label, reward_source_impl *impl,
                                   rlhf_error *err);
/* 1 when the process source's child ended by itself (crash, exit, closed stdout) during the last
 * score_batch call; *wstatus gets its wait status (-1 when it could not be reaped). 0 otherwise
 * (including a child killed by the host for a timeout or bad output). */
int reward_process_last_death(void *ctx, int *wstatus);
/* The process source's resources: RSS of the current child (MiB, 0 when none runs), user+system CPU
 * seconds of all its children so far, and restarts; as of the end of the last batch. Any thread. */
int reward_process_resources(void *ctx, double *rss_mb, double *cpu_s, int64_t *restarts);
/* Calls a plugin loaded by reward_plugin_load directly with a batch: score_batch_v2 for a v2 plugin
 * that has it, else score_batch on b->items (a v1 plugin never sees the v2 batch). */
int reward_plugin_score_direct(const reward_source_impl *impl, const rlhf_reward_batch *b, double *scores,
                               rlhf_reward_status *status);

/* A JSON string of s; invalid UTF-8 bytes become U+FFFD (model output is not always valid UTF-8). */
json_t *reward_json_string_lossy(const char *s);

/* Parses item->record_json; returns a new reference or NULL (and sets the status to ERROR) when the
 * record is not a JSON object. */
json_t *reward_item_record(const rlhf_reward_item *item, rlhf_reward_status *st);

#endif
