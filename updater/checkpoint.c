/* updater/checkpoint.c — updater checkpoints and metrics.jsonl.
 *
 * A checkpoint is a directory RUN_DIR/checkpoints/step_N/ with
 *   model.safetensors      the policy (HF Llama names, policy_version in the metadata)
 *   optimizer.safetensors  AdamW moments and step (adamw.m.*, adamw.v.*, adamw.step)
 *   state.json             step, policy_version, RNG, replay-log records consumed, counters, wall_s,
 *                          and "extra" (e.g. the launcher's bookkeeping)
 * written into step_N.tmp/ and renamed into place; then RUN_DIR/checkpoints/latest, a symbolic link to
 * "step_N" (so tools can follow it), is replaced atomically (a new link renamed over it). A kill at any
 * moment leaves `latest` naming a complete checkpoint. Runs from before the link kept `latest` as a
 * text file holding "step_N"; it is still read. The newest checkpoint.keep checkpoints are kept.
 *
 * Held-out evaluation during training (eval.every): the live updater marks a checkpoint due for it with
 * an empty file step_N/eval.pending (inside step_N.tmp, so it is there from the moment step_N is); the
 * launcher runs `rlhf eval RUN_DIR --checkpoint N --record` on it, which writes step_N/eval.json,
 * appends RUN_DIR/eval.jsonl, removes eval.pending and points RUN_DIR/checkpoints/best at the
 * checkpoint with the highest held-out pass rate (ties: the higher reward mean, then the earlier step —
 * `best` moves only when a checkpoint beats it). Pruning keeps, besides the newest checkpoint.keep,
 * every checkpoint still waiting for its evaluation and the checkpoint.keep_best best evaluated ones. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "updater/updater_int.h"

static int rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (!d) return unlink(path);
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        rm_rf(p);
    }
    closedir(d);
    return rmdir(path);
}

int updater_latest_checkpoint_step(const char *run_dir) {
    char p[4096], target[256];
    snprintf(p, sizeof p, "%s/checkpoints/latest", run_dir);
    int step = -1;
    ssize_t n = readlink(p, target, sizeof target - 1);
    if (n >= 0) {
        target[n] = 0;
        if (sscanf(target, "step_%d", &step) != 1) step = -1;
        return step;
    }
    /* the text-file form of older runs */
    char *txt = NULL;
    size_t len = 0;
    if (rlhf_read_file(p, &txt, &len, NULL)) return -1;
    if (sscanf(txt, "step_%d", &step) != 1) step = -1;
    free(txt);
    return step;
}

static int cmp_long_desc(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Steps of the step_N directories of CK (at most cap), newest first. */
static int list_steps(const char *ck, long *steps, int cap) {
    DIR *d = opendir(ck);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        long sn;
        char tail[8];
        if (sscanf(e->d_name, "step_%ld%7s", &sn, tail) == 1) steps[n++] = sn;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof steps[0], cmp_long_desc);
    return n;
}

typedef struct evaluated {
    long step;
    double pass_rate, reward_mean;
} evaluated;

/* best first: pass rate, then reward mean, then the earlier step */
static int cmp_evaluated(const void *a, const void *b) {
    const evaluated *x = a, *y = b;
    if (x->pass_rate != y->pass_rate) return x->pass_rate < y->pass_rate ? 1 : -1;
    if (x->reward_mean != y->reward_mean) return x->reward_mean < y->reward_mean ? 1 : -1;
    return x->step < y->step ? -1 : x->step > y->step;
}

int updater_checkpoint_ranking(const char *run_dir, long *steps_out, int cap) {
    char ck[4096], p[4400];
    snprintf(ck, sizeof ck, "%s/checkpoints", run_dir);
    long steps[4096];
    int n = list_steps(ck, steps, 4096), m = 0;
    evaluated *ev = malloc(sizeof *ev * (size_t)(n ? n : 1));
    if (!ev) return 0;
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/step_%ld/eval.json", ck, steps[i]);
        json_t *o = json_load_file(p, 0, NULL);
        json_t *pr = json_object_get(o, "pass_rate");
        if (json_is_number(pr)) {
            ev[m].step = steps[i];
            ev[m].pass_rate = json_number_value(pr);
            ev[m].reward_mean = json_number_value(json_object_get(o, "reward_mean"));
            m++;
        }
        json_decref(o);
    }
    qsort(ev, (size_t)m, sizeof *ev, cmp_evaluated);
    int k = m < cap ? m : cap;
    for (int i = 0; i < k; i++) steps_out[i] = ev[i].step;
    free(ev);
    return k;
}

/* Removes every step_N directory but the `keep` newest (the one just written, `current`, always stays),
 * those still waiting for their evaluation, and the `keep_best` best evaluated ones. */
static void prune_checkpoints(const char *run_dir, long current, int keep, int keep_best) {
    char ck[4096], p[4400];
    snprintf(ck, sizeof ck, "%s/checkpoints", run_dir);
    long steps[4096], best[64];
    int n = list_steps(ck, steps, 4096);
    int nb = updater_checkpoint_ranking(run_dir, best, keep_best < 64 ? keep_best : 64);
    for (int i = keep; i < n; i++) {
        int stays = steps[i] == current;
        for (int b = 0; b < nb && !stays; b++) stays = best[b] == steps[i];
        snprintf(p, sizeof p, "%s/step_%ld/eval.pending", ck, steps[i]);
        if (stays || access(p, F_OK) == 0) continue;
        snprintf(p, sizeof p, "%s/step_%ld", ck, steps[i]);
        rm_rf(p);
    }
}

long updater_checkpoint_pending_eval(const char *run_dir) {
    char ck[4096], p[4400];
    snprintf(ck, sizeof ck, "%s/checkpoints", run_dir);
    long steps[4096];
    int n = list_steps(ck, steps, 4096);
    for (int i = n - 1; i >= 0; i--) {
        snprintf(p, sizeof p, "%s/step_%ld/eval.pending", ck, steps[i]);
        if (access(p, F_OK) == 0) return steps[i];
    }
    return -1;
}

/* RUN_DIR/checkpoints/NAME -> step_STEP, replaced atomically (a new link renamed over the old one). */
static int point_link(const char *ck, const char *name, long step, rlhf_error *err) {
    char target[64], tmp_link[4400], p[4400];
    snprintf(target, sizeof target, "step_%ld", step);
    snprintf(tmp_link, sizeof tmp_link, "%s/%s.tmp", ck, name);
    snprintf(p, sizeof p, "%s/%s", ck, name);
    unlink(tmp_link);
    if (symlink(target, tmp_link) != 0)
        return rlhf_error_set(err, RLHF_ESYS, tmp_link, "symlink: %s", strerror(errno));
    if (rename(tmp_link, p) != 0) return rlhf_error_set(err, RLHF_ESYS, p, "rename: %s", strerror(errno));
    return 0;
}

int updater_checkpoint_record_eval(const char *run_dir, long step, json_t *result, int keep, int keep_best,
                                   int *is_best, rlhf_error *err) {
    char ck[4096], p[4400];
    if (is_best) *is_best = 0;
    snprintf(ck, sizeof ck, "%s/checkpoints", run_dir);
    snprintf(p, sizeof p, "%s/step_%ld", ck, step);
    if (access(p, F_OK) != 0) return rlhf_error_set(err, RLHF_EINVAL, p, "no such checkpoint");
    json_t *rec = json_object();
    json_object_set_new(rec, "step", json_integer(step));
    json_object_set_new(rec, "time", json_integer((json_int_t)rlhf_wall_time())); /* unix seconds */
    json_object_update(rec, result);
    char *txt = json_dumps(rec, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    snprintf(p, sizeof p, "%s/step_%ld/eval.json", ck, step);
    int rc = txt ? rlhf_write_file_atomic(p, txt, strlen(txt), err) : RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    free(txt);
    if (!rc) {
        snprintf(p, sizeof p, "%s/eval.jsonl", run_dir);
        rc = updater_metrics_append(p, rec, err);
    }
    json_decref(rec);
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/step_%ld/eval.pending", ck, step);
    unlink(p);
    long best;
    if (updater_checkpoint_ranking(run_dir, &best, 1) == 1) {
        if ((rc = point_link(ck, "best", best, err))) return rc;
        if (is_best) *is_best = best == step;
    }
    /* what the last save could not yet know: this checkpoint is no longer pending, and is or is not among
     * the best */
    prune_checkpoints(run_dir, updater_latest_checkpoint_step(run_dir), keep, keep_best);
    return 0;
}

int updater_checkpoint_save(const policy_state *ps, const char *dir, json_t *extra, rlhf_error *err) {
    char ck[4096], tmp[4200], p[4400];
    snprintf(ck, sizeof ck, "%s/checkpoints", dir);
    int rc = rlhf_mkdirs(ck, err);
    if (rc) return rc;
    snprintf(tmp, sizeof tmp, "%s/step_%ld.tmp", ck, ps->step);
    rm_rf(tmp);
    if ((rc = rlhf_mkdirs(tmp, err))) return rc;
    snprintf(p, sizeof p, "%s/model.safetensors", tmp);
    ps->m->version = ps->version;
    /* With model.lora: model.safetensors holds the merged policy (what eval, sample, serve and export read),
     * adapter/ the adapters in the PEFT format (what a resume trains on, and what PEFT loads). */
    model *merged = NULL;
    if (ps->lora) {
        if ((rc = model_create(&merged, &ps->m->cfg, err))) return rc;
        if ((rc = updater_policy_merged(ps, merged, err))) goto merged_out;
        merged->hf_config = ps->m->hf_config;       /* borrowed for the save's metadata */
        merged->tokenizer_dir = ps->m->tokenizer_dir;
    }
    const model *pol = merged ? merged : ps->m;
    if ((rc = model_save(pol, p, err))) goto merged_out;
    if (ps->lora) {
        snprintf(p, sizeof p, "%s/adapter", tmp);
        if ((rc = model_lora_save_peft(ps->lora, ps->m, p, ps->cfg ? ps->cfg->base_checkpoint : NULL, err)))
            goto merged_out;
    }
    snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
    if ((rc = adamw_save(ps->opt, p, err))) goto merged_out;
    if (ps->cfg && ps->cfg->export_hf != RUN_EXPORT_HF_NONE) {
        /* the same weights as a Hugging Face directory, to serve or evaluate elsewhere */
        snprintf(p, sizeof p, "%s/hf", tmp);
        model_export_options eo = {
            .dtype = ps->cfg->export_hf == RUN_EXPORT_HF_BF16 ? SAFETENSORS_BF16 : SAFETENSORS_F32,
            .tokenizer_from = ps->m->tokenizer_dir,
        };
        if ((rc = model_export_hf(pol, p, &eo, err))) goto merged_out;
    }
merged_out:
    if (merged) merged->hf_config = merged->tokenizer_dir = NULL;
    model_destroy(&merged);
    if (rc) return rc;
    json_t *s = json_object();
    json_object_set_new(s, "step", json_integer(ps->step));
    json_object_set_new(s, "policy_version", json_integer((json_int_t)ps->version));
    char rng[32];
    snprintf(rng, sizeof rng, "%016llx", (unsigned long long)ps->rng.s);
    json_object_set_new(s, "rng", json_string(rng));
    json_object_set_new(s, "log_records", json_integer((json_int_t)ps->log_records));
    json_object_set_new(s, "groups_total", json_integer(ps->groups_total));
    json_object_set_new(s, "groups_dropped_stale", json_integer(ps->groups_dropped_stale));
    json_object_set_new(s, "groups_dropped_zero_var", json_integer(ps->groups_dropped_zero_var));
    json_object_set_new(s, "groups_skipped", json_integer(ps->groups_skipped));
    json_object_set_new(s, "groups_dropped_unscored", json_integer(ps->groups_dropped_unscored));
    json_object_set_new(s, "wall_s", json_real(ps->wall_offset + rlhf_now() - ps->wall_start));
    if (ps->mark_eval && ps->cfg && ps->cfg->eval_every > 0 &&
        (ps->step % ps->cfg->eval_every == 0 || ps->step == ps->cfg->steps)) {
        snprintf(p, sizeof p, "%s/eval.pending", tmp);
        if ((rc = rlhf_write_file_atomic(p, "", 0, err))) {
            json_decref(s);
            return rc;
        }
    }
    if (extra) json_object_set(s, "extra", extra);
    char *txt = json_dumps(s, JSON_INDENT(2));
    json_decref(s);
    snprintf(p, sizeof p, "%s/state.json", tmp);
    rc = rlhf_write_file_atomic(p, txt, strlen(txt), err);
    free(txt);
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/step_%ld", ck, ps->step);
    rm_rf(p);
    if (rename(tmp, p) != 0) return rlhf_error_set(err, RLHF_ESYS, p, "rename: %s", strerror(errno));
    if ((rc = point_link(ck, "latest", ps->step, err))) return rc;
    prune_checkpoints(dir, ps->step, ps->cfg ? ps->cfg->checkpoint_keep : RUN_CHECKPOINT_KEEP_DEFAULT,
                      ps->cfg ? ps->cfg->checkpoint_keep_best : 1);
    return 0;
}

int updater_checkpoint_load_latest(policy_state *ps, const char *dir, json_t **extra_out, rlhf_error *err) {
    if (extra_out) *extra_out = NULL;
    int step = updater_latest_checkpoint_step(dir);
    if (step < 0) return 0;
    return updater_checkpoint_load_step(ps, dir, step, extra_out, err);
}

int updater_checkpoint_load_step(policy_state *ps, const char *dir, int step, json_t **extra_out, rlhf_error *err) {
    if (extra_out) *extra_out = NULL;
    char ck[4096], p[4400];
    snprintf(ck, sizeof ck, "%s/checkpoints/step_%d", dir, step);
    int rc = 0;
    if (ps->lora) { /* the base stays the run's base; the adapters come back */
        snprintf(p, sizeof p, "%s/adapter", ck);
        rc = model_lora_load_peft(ps->lora, ps->m, p, err);
    } else {
        snprintf(p, sizeof p, "%s/model.safetensors", ck);
        rc = model_load_into(ps->m, p, err);
    }
    if (rc) return rc;
    snprintf(p, sizeof p, "%s/optimizer.safetensors", ck);
    if ((rc = adamw_load(ps->opt, p, err))) return rc;
    snprintf(p, sizeof p, "%s/state.json", ck);
    json_error_t jerr;
    json_t *s = json_load_file(p, 0, &jerr);
    if (!s) return rlhf_error_set(err, RLHF_ECORRUPT, p, "invalid JSON: %s", jerr.text);
    ps->step = (long)json_integer_value(json_object_get(s, "step"));
    ps->version = (uint64_t)json_integer_value(json_object_get(s, "policy_version"));
    ps->m->version = ps->version;
    const char *rng = json_string_value(json_object_get(s, "rng"));
    if (rng) ps->rng.s = strtoull(rng, NULL, 16);
    ps->log_records = (uint64_t)json_integer_value(json_object_get(s, "log_records"));
    ps->groups_total = (long)json_integer_value(json_object_get(s, "groups_total"));
    ps->groups_dropped_stale = (long)json_integer_value(json_object_get(s, "groups_dropped_stale"));
    ps->groups_dropped_zero_var = (long)json_integer_value(json_object_get(s, "groups_dropped_zero_var"));
    ps->groups_skipped = (long)json_integer_value(json_object_get(s, "groups_skipped"));
    ps->groups_dropped_unscored = (long)json_integer_value(json_object_get(s, "groups_dropped_unscored"));
    ps->wall_offset = json_number_value(json_object_get(s, "wall_s"));
    ps->wall_start = rlhf_now();
    if (ps->step != step) {
        json_decref(s);
        return rlhf_error_set(err, RLHF_ECORRUPT, p, "step %ld does not match directory step_%d", ps->step, step);
    }
    if (extra_out) {
        json_t *x = json_object_get(s, "extra");
        *extra_out = x ? json_incref(x) : NULL;
    }
    json_decref(s);
    return 1;
}

/* ---------------------------------------------------------------- metrics.jsonl */

json_t *updater_metrics_last_record(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return NULL;
    }
    long size = ftell(f);
    long start = size > 65536 ? size - 65536 : 0;
    fseek(f, start, SEEK_SET);
    size_t n = (size_t)(size - start);
    char *buf = malloc(n + 1);
    n = fread(buf, 1, n, f);
    fclose(f);
    buf[n] = 0;
    /* last complete line */
    while (n > 0 && buf[n - 1] != '\n') n--;
    if (n == 0) {
        free(buf);
        return NULL;
    }
    buf[n - 1] = 0;
    char *line = strrchr(buf, '\n');
    line = line ? line + 1 : buf;
    json_error_t jerr;
    json_t *j = json_loads(line, 0, &jerr);
    free(buf);
    return j;
}

int updater_metrics_append(const char *path, json_t *rec, rlhf_error *err) {
    char *txt = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
    if (!txt) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot serialise metrics");
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(txt);
        return rlhf_error_set(err, RLHF_EIO, path, "cannot open: %s", strerror(e));
    }
    struct stat st;
    off_t before = fstat(fd, &st) == 0 ? st.st_size : -1;
    size_t n = strlen(txt);
    txt[n++] = '\n'; /* json_dumps's terminator becomes the line end */
    int bad = 0;
    for (size_t done = 0; done < n && !bad;) {
        ssize_t w = write(fd, txt + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) bad = w < 0 ? errno : EIO;
        else done += (size_t)w;
    }
    if (!bad && fsync(fd) != 0) bad = errno;
    /* a full disk must not leave half a line behind: the file goes back to its last whole line */
    if (bad && before >= 0 && ftruncate(fd, before) != 0) { /* reported below either way */
    }
    close(fd);
    free(txt);
    if (bad) return rlhf_error_set(err, RLHF_EIO, path, "write failed: %s", strerror(bad));
    return 0;
}

int updater_metrics_truncate_after(const char *path, long step, rlhf_error *err) {
    char *txt = NULL;
    size_t n = 0;
    if (rlhf_read_file(path, &txt, &n, NULL)) return 0; /* no metrics yet */
    size_t cap = n + 1, len = 0;
    char *out = malloc(cap);
    char *save = NULL;
    for (char *line = strtok_r(txt, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        if (!j) continue; /* a torn last line from a kill -9 */
        long s = (long)json_integer_value(json_object_get(j, "step"));
        json_decref(j);
        if (s > step) continue;
        size_t l = strlen(line);
        memcpy(out + len, line, l);
        len += l;
        out[len++] = '\n';
    }
    int rc = rlhf_write_file_atomic(path, out, len, err);
    free(out);
    free(txt);
    return rc;
}
