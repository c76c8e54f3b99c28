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

void cmd_run_events_poll(cmd_run_events *e) {
    if (e->failed) return;
    char path[2200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", e->run_dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size == e->offset) {
        fclose(f);
        return;
    }
    if (st.st_ino != e->inode || st.st_size < e->offset) e->offset = 0; /* rewritten: steps say what is new */
    e->inode = st.st_ino;
    if (fseeko(f, e->offset, SEEK_SET) != 0) {
        fclose(f);
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] != '\n') break; /* the updater is still writing it */
        e->offset += len;
        json_t *rec = json_loads(line, 0, NULL);
        json_t *s = json_object_get(rec, "step");
        if (json_is_integer(s) && json_integer_value(s) > e->last_step && writer(e)) {
            rlhf_error err = {0};
            if (tfevents_writer_metrics(e->w, rec, rlhf_wall_time(), "eval/", &err)) failed(e, &err);
            else e->last_step = (long)json_integer_value(s);
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

void cmd_run_events_fini(cmd_run_events *e) { tfevents_writer_destroy(&e->w); }
