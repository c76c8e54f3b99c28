/* cli/replay_int.h — private to cli/: the checks `rlhf replay` makes before it trains
 * (cli/replay_check.c), used by cli/replay.c. */
#ifndef RLHF_CLI_REPLAY_INT_H
#define RLHF_CLI_REPLAY_INT_H

#include "run/run.h"
#include "updater/updater.h"

/* The folder of a path ("." when it has none): where a log's run directory files are. */
void cmd_replay_dir_of(const char *path, char *out, size_t cap);
/* "GENERATOR\tSEQ": the key that names one rollout group across the log, scores.jsonl and the replay. */
void cmd_replay_group_key(char *out, size_t cap, const char *generator_id, uint64_t seq);

/* The base model of ps against the identity recorded beside the log (LOG_DIR/model_identity.json).
 * A different one: an error naming both, or with allow_other a warning and *other = 1. A log without
 * a recorded identity: a warning, 0. */
int cmd_replay_check_model(const char *log_path, const policy_state *ps, int allow_other, int *other, rlhf_error *err);
/* cfg against the recording's config (LOG_DIR/config.json): prints every differing key with what it
 * means; an error for a key that cannot change at replay. *use_recorded_clock = 1 when a key that
 * decides which groups train when differs (policy_state.recorded_clock). */
int cmd_replay_check_config(const char *log_path, const run_config *cfg, int *use_recorded_clock,
                            int *rewards_changed, int *n_differ, rlhf_error *err);
/* The live run's weights_hash of each step (LOG_DIR/metrics.jsonl): (*hashes)[step], "" where none;
 * returns the array's length (0 when there are none). */
long cmd_replay_recorded_hashes(const char *log_path, char (**hashes)[17]);

/* The rewards the live updater trained each group with (LOG_DIR/scores.jsonl, UPDATER_SCORES_FILE),
 * keyed by generator and seq (the last line of a key wins: a resumed run consumes some groups again).
 * NULL when the file is missing. */
json_t *cmd_replay_load_scores(const char *log_path, long *n_lines);
/* sg (read from the log, not scored) <- the recorded rewards of its group, in the order of the
 * pipeline's sources (names). 0, or -1 when the group or a source has no record. */
int cmd_replay_recorded_scores(json_t *scores, scored_group *sg, const char *const *names, int n_sources);

/* The order a replay feeds the log's groups in: the live updater's (log_index: {key: record index},
 * key "GENERATOR\tSEQ"; scores from cmd_replay_load_scores) — the groups it consumed by step and then
 * by the order it finished them, so every step holds what the live step held — followed by the groups
 * it never consumed, in log order. n_records indices (malloc'd); *n_consumed of them first. */
long *cmd_replay_live_order(json_t *scores, json_t *log_index, long n_records, long *n_consumed);

#endif
