/* updater/session.h — the part of an updater shared by the online process and offline replay
 * (private to updater/). */
#ifndef RLHF_UPDATER_SESSION_H
#define RLHF_UPDATER_SESSION_H

#include "updater/updater_int.h"

#define SESSION_MAX_SOURCES 64

typedef struct updater_session {
    run_config *cfg;            /* borrowed */
    policy_state ps;
    scorer *sc;
    int n_sources;
    const char *src_names[SESSION_MAX_SOURCES];
    char metrics_path[2048];
    scored_group **window;      /* fresh scored groups waiting for the next step, in arrival order */
    int n_window, cap_window;
    long w_stale, w_stale_carry, w_skipped; /* per-step counters */
    double window_start;        /* when the current step's collection began */
    double wait_seconds;        /* time the optimizer thread spent waiting for groups this step (caller adds) */
    int queue_depth;            /* groups received but not yet scored (caller sets) */
    json_t *consumed;           /* {generator_id: highest seq finished (trained or dropped)} (owned) */
    FILE *consumed_log;         /* optional: one line "generator_id seq step" per finished group */
} updater_session;
/* Marks a group finished (consumed map, consumed log). */
void session_mark_consumed(updater_session *u, const scored_group *sg);

/* with_threads: scoring threads = updaters.reward_threads (online); else one pipeline, used
 * synchronously (replay). */
int session_create(updater_session *u, run_config *cfg, int with_threads, rlhf_error *err);
void session_destroy(updater_session *u);
/* Takes a scored group (ownership). Returns 1 when a step's worth of groups is waiting. */
int session_offer(updater_session *u, scored_group *sg);
/* Trains one step on the oldest rl.prompts_per_step waiting groups; *metrics_out gets the step's
 * metrics record (new reference; the caller adds what it knows, then writes it). */
int session_step(updater_session *u, json_t **metrics_out, rlhf_error *err);
int session_write_metrics(updater_session *u, json_t *m, rlhf_error *err);

#endif
