/* cli/run_events.c — the launcher's TensorBoard event file (cli/run_events_int.h). A failed write (a full
 * disk) is said once and ends the mirroring; metrics.jsonl, the run's record, is not affected. */
#include "cli/run_events_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/common.h"

void cmd_run_events_init(cmd_run_events *e, const char *run_dir, long from_step) {
    memset(e, 0, sizeof *e);
    snprintf(e->run_dir, sizeof e->run_dir, "%s", run_dir);
    e->from_step = from_step;
    e->last_step = from_step;
    char path[2200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        e->offset = st.st_size;
        e->inode = st.st_ino;
    }
}

static int writer(cmd_run_events *e) {
    if (e->w) return 1;
    if (e->failed) return 0;
    rlhf_error err = {0};
    if (tfevents_writer_create(&e->w, e->run_dir, &err) ||
        (e->from_step > 0 && tfevents_writer_restart(e->w, e->from_step + 1, rlhf_wall_time(), &err))) {
        rlhf_error_print("rlhf run: TensorBoard events (training goes on)", &err);
        tfevents_writer_destroy(&e->w);
        e->failed = 1;
        return 0;
    }
    return 1;
}

static void failed(cmd_run_events *e, const rlhf_error *err) {
    rlhf_error_print("rlhf run: TensorBoard events (training goes on; metrics.jsonl has every step)", err);
    tfevents_writer_destroy(&e->w);
    e->failed = 1;
}

/* Remembers the CRC of the line mirrored for `step`. */
static void remember(cmd_run_events *e, long step, uint32_t crc) {
    if (step >= e->n_line_crc) {
        long n = e->n_line_crc ? e->n_line_crc : 256;
        while (n <= step) n *= 2;
        uint32_t *q = realloc(e->line_crc, (size_t)n * sizeof *q);
        if (!q) return; /* then a rewrite mirrors that step again: harmless */
        memset(q + e->n_line_crc, 0, (size_t)(n - e->n_line_crc) * sizeof *q);
        e->line_crc = q;
        e->n_line_crc = n;
    }
    e->line_crc[step] = crc;
}

void cmd_run_events_poll(cmd_run_events *e) {
    if (e->failed) return;
    char path[2200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", e->run_dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    struct stat st;
    /* only a regular file: a device in its place (a test's /dev/full) would read forever */
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || (st.st_ino == e->inode && st.st_size == e->offset)) {
        fclose(f);
        return;
    }
    /* rewritten (an updater resumed from its checkpoint): read it all again; lines equal to the ones
     * mirrored are skipped, the first that differs is where the updater went back to */
    int rewritten = st.st_ino != e->inode || st.st_size < e->offset;
    if (rewritten) e->offset = 0;
    e->inode = st.st_ino;
    if (fseeko(f, e->offset, SEEK_SET) != 0) {
        fclose(f);
        return;
    }
    if (rewritten) e->checking = 1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') break; /* the updater is still writing it */
        e->offset += len;
        json_t *rec = json_loads(line, 0, NULL);
        json_t *s = json_object_get(rec, "step");
        long step = json_is_integer(s) ? (long)json_integer_value(s) : -1;
        uint32_t crc = rlhf_crc32(0, line, (size_t)len) | 1; /* never 0, which means "none" */
        if (step <= e->from_step) { /* an earlier launch's step */
            json_decref(rec);
            continue;
        }
        if (e->checking) {
            if (step <= e->last_step && step < e->n_line_crc && e->line_crc[step] == crc) {
                json_decref(rec);
                continue;
            }
            e->checking = 0;
            if (step <= e->last_step && writer(e)) {
                rlhf_error err = {0};
                if (tfevents_writer_restart(e->w, step, rlhf_wall_time(), &err)) failed(e, &err);
                e->last_step = step - 1;
            }
        }
        if (step > e->last_step && !e->failed && writer(e)) {
            rlhf_error err = {0};
            if (tfevents_writer_metrics(e->w, rec, rlhf_wall_time(), "eval/", &err)) {
                failed(e, &err);
            } else {
                e->last_step = step;
                remember(e, step, crc);
            }
        }
        json_decref(rec);
        if (e->failed) break;
    }
    free(line);
    fclose(f);
}

void cmd_run_events_eval(cmd_run_events *e, const json_t *r) {
    json_t *s = json_object_get(r, "step");
    if (!json_is_integer(s) || !writer(e)) return;
    static const char *const keys[] = {"pass_rate", "reward_mean", "pass_rate_greedy", "pass_rate_sampled"};
    static const char *const tags[] = {"eval/pass_rate", "eval/reward_mean", "eval/pass_rate_greedy",
                                       "eval/pass_rate_sampled"};
    const char *t[4];
    float v[4];
    size_t n = 0;
    for (size_t i = 0; i < 4; i++) {
        json_t *x = json_object_get(r, keys[i]);
        if (!json_is_number(x)) continue;
        t[n] = tags[i];
        v[n++] = (float)json_number_value(x);
    }
    rlhf_error err = {0};
    if (n && tfevents_writer_scalars(e->w, (int64_t)json_integer_value(s), rlhf_wall_time(), t, v, n, &err))
        failed(e, &err);
}

void cmd_run_events_fini(cmd_run_events *e) {
    tfevents_writer_destroy(&e->w);
    free(e->line_crc);
    e->line_crc = NULL;
}
