/* tests/e2e/e2e_util.h — what the end-to-end suites share: small files in and out, the easy task's
 * prompts, and the step a run's checkpoints/latest names. Header-only (static inline), so each suite
 * file stays self-contained in the one test_e2e binary. */
#ifndef RLHF_TESTS_E2E_UTIL_H
#define RLHF_TESTS_E2E_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "broker/broker.h"
#include "common/common.h"
#include "tests/test_paths.h"

static inline int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* DIR/prompts.jsonl: the 16 prompts {"id":"pN","prompt":"qN:"} of the easy task (a digit is the reward). */
static inline int e2e_write_prompts(const char *dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/prompts.jsonl", dir);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    for (int i = 0; i < 16; i++) fprintf(f, "{\"id\":\"p%d\",\"prompt\":\"q%d:\"}\n", i, i);
    return fclose(f);
}

/* N of RUN_DIR/checkpoints/latest (a symlink to step_N), or -1. */
static inline int latest_ckpt(const char *run_dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/checkpoints/latest", run_dir);
    char target[64];
    ssize_t n = readlink(p, target, sizeof target - 1);
    int s = -1;
    if (n > 0) {
        target[n] = 0;
        if (sscanf(target, "step_%d", &s) != 1) s = -1;
    }
    return s;
}

/* A file's whole text (malloc'd), or NULL. */
static inline char *e2e_slurp(const char *path) {
    char *d = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &d, &n, NULL)) return NULL;
    return d;
}

/* 1 when the file holds needle; else 0, and the file's text on stderr (what the test saw). */
static inline int e2e_contains(const char *path, const char *needle) {
    char *d = e2e_slurp(path);
    int yes = d && strstr(d, needle);
    if (!yes) fprintf(stderr, "\n%s lacks \"%s\"; it holds:\n%s\n", path, needle, d ? d : "(nothing)");
    free(d);
    return yes;
}

/* A suite's scratch directory /tmp/rlhf_NAME_XXXXXX (dir, cap >= 64), the rlhf binary of this build
 * (rlhf, cap >= 1024) and the easy task's prompts there; 0 or -1. */
static inline int e2e_suite_dir(const char *name, char *dir, size_t cap, char *rlhf, size_t rcap) {
    snprintf(dir, cap, "/tmp/rlhf_%s_XXXXXX", name);
    if (!mkdtemp(dir)) return -1;
    if (test_bin_path("rlhf", rlhf, rcap) || access(rlhf, X_OK) != 0) return -1;
    return e2e_write_prompts(dir);
}

/* No accepted rollout lost: every group of the replay log LOG at or below its generator's highest
 * finished seq (RUN_DIR's latest checkpoint's "consumed") is in RUN_DIR/consumed.log. Returns the
 * number lost; -1 when a file is unreadable or no group of the log was finished at all (nothing to
 * check would make the check pass vacuously). */
static inline long e2e_lost_rollouts(const char *run_dir, const char *log) {
    char p[600];
    snprintf(p, sizeof p, "%s/checkpoints/step_%d/state.json", run_dir, latest_ckpt(run_dir));
    json_t *state = json_load_file(p, 0, NULL);
    json_t *consumed_max = json_object_get(json_object_get(state, "extra"), "consumed");
    snprintf(p, sizeof p, "%s/consumed.log", run_dir);
    char *cons = e2e_slurp(p);
    if (!consumed_max || !cons) {
        fprintf(stderr, "\n  e2e_lost_rollouts: %s\n", !consumed_max ? "no \"consumed\" in the latest checkpoint's state.json"
                                                                   : "no consumed.log");
        json_decref(state);
        free(cons);
        return -1;
    }
    json_t *finished = json_object(); /* "GENERATOR SEQ" -> true */
    char *save = NULL;
    for (char *line = strtok_r(cons, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char gid[128], key[200];
        unsigned long long seq;
        if (sscanf(line, "%127s %llu", gid, &seq) == 2) {
            snprintf(key, sizeof key, "%s %llu", gid, seq);
            json_object_set_new(finished, key, json_true());
        }
    }
    free(cons);
    replay_reader *r;
    long lost = 0, below = 0;
    if (replay_reader_open(&r, log, NULL) != 0) lost = -1;
    wire_rollout_group g;
    while (lost >= 0 && replay_reader_next(r, &g, NULL, NULL) == 1) {
        json_t *mx = json_object_get(consumed_max, g.generator_id);
        if (mx && g.seq <= (uint64_t)json_integer_value(mx)) {
            char key[200];
            snprintf(key, sizeof key, "%s %llu", g.generator_id, (unsigned long long)g.seq);
            below++;
            if (!json_object_get(finished, key)) {
                if (lost < 5) /* which, so a failure says more than its count */
                    fprintf(stderr, "\n  e2e_lost_rollouts: %s (at or below consumed %lld) is not in consumed.log", key,
                            (long long)json_integer_value(mx));
                lost++;
            }
        }
        wire_rollout_group_free(&g);
    }
    if (lost >= 0) replay_reader_close(&r);
    json_decref(finished);
    json_decref(state);
    if (lost < 0) fprintf(stderr, "\n  e2e_lost_rollouts: cannot open the replay log %s\n", log);
    else if (below == 0) fprintf(stderr, "\n  e2e_lost_rollouts: no group of %s at or below the consumed marks\n", log);
    return below > 0 ? lost : -1;
}

#endif
