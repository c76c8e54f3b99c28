/* tests/e2e/e2e_util.h — what the end-to-end suites share: small files in and out, the easy task's
 * prompts, and the step a run's checkpoints/latest names. Header-only (static inline), so each suite
 * file stays self-contained in the one test_e2e binary. */
#ifndef RLHF_TESTS_E2E_UTIL_H
#define RLHF_TESTS_E2E_UTIL_H

#include <stdio.h>
#include <unistd.h>

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

#endif
