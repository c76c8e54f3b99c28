/* cli/replay.c — `rlhf replay LOG --config CONFIG [--out DIR] [--threads N] [--skip-corrupt] [--set a.b=c]`:
 * trains an updater from a recorded replay log, with no broker and no generators. DIR is locked
 * for the replay's life (run_dir_lock_acquire): one run or replay per directory.
 *
 * Deterministic: records are taken in log order, scored synchronously on the calling thread, and
 * trained with the same session code as the online updater; the same log, config, seed and thread
 * count give bit-identical weights. Every record is checked against the model (token ids inside
 * the vocabulary, prompt + completion within max_seq_len) before training starts, so a log from
 * another model is an error naming the log and the record. Damaged records (bad length or CRC) are
 * listed (count, segment and offset) before training; without --skip-corrupt that is an error (exit
 * 1), with it training uses every valid record. */
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "updater/updater.h"

static const char usage[] =
    "usage: rlhf replay RUN_DIR/rollouts.log --config CONFIG.json [--out DIR] [--threads N] [--skip-corrupt]\n"
    "                   [--set a.b=VALUE ...]\n"
    "Trains from a recorded replay log (no broker, no generators); writes metrics.jsonl and\n"
    "checkpoints under DIR (default: <log's directory>/replay). A log with damaged records is\n"
    "refused (they are listed) unless --skip-corrupt: then every valid record is used.\n";

/* Damaged stretches pass 1 skipped: printed (count, bytes, the first positions); an error unless
 * --skip-corrupt. */
static int report_damage(replay_reader *rr, const char *log_path, long n_records, int skip_corrupt, rlhf_error *err) {
    const replay_damage *d;
    size_t n = replay_reader_damage(rr, &d);
    if (!n) return 0;
    uint64_t bytes = 0;
    char list[512] = "";
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        bytes += d[i].bytes;
        if (i < 8 && used < sizeof list)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%u:%llu", i ? ", " : "", d[i].pos.segment,
                                     (unsigned long long)d[i].pos.offset);
    }
    if (skip_corrupt) {
        fprintf(stderr, "rlhf replay: warning: %s: skipped %zu damaged stretch(es), %llu bytes, at segment:offset %s%s; "
                        "training on the %ld valid records (--skip-corrupt)\n",
                log_path, n, (unsigned long long)bytes, list, n > 8 ? ", ..." : "", n_records);
        return 0;
    }
    return rlhf_error_set(err, RLHF_ECORRUPT, log_path,
                          "%zu damaged stretch(es), %llu bytes, at segment:offset %s%s (%ld valid records); "
                          "train on the valid records with --skip-corrupt",
                          n, (unsigned long long)bytes, list, n > 8 ? ", ..." : "", n_records);
}

int cmd_replay(int argc, char **argv) {
    const char *log_path = NULL, *config_path = NULL, *out_dir = NULL;
    int threads = -1, npos = 0, skip_corrupt = 0;
    char *sets[64];
    rlhf_opt_strs set = {sets, 0, 64};
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &config_path), RLHF_OPT("--out", RLHF_OPT_STR, &out_dir),
                             RLHF_OPT("--threads", RLHF_OPT_INT, &threads), RLHF_OPT("--set", RLHF_OPT_STRS, &set),
                             RLHF_OPT("--skip-corrupt", RLHF_OPT_FLAG, &skip_corrupt),
                             RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf replay", usage, opts, &log_path, 1, &npos);
    if (prc >= 0) return prc;
    if (!log_path || !config_path) {
        fprintf(stderr, "rlhf replay: error: %s\n%s", !log_path ? "missing LOG" : "missing --config", usage);
        return 2;
    }
    rlhf_error err = {0};
    run_config cfg;
    if (run_config_load(&cfg, config_path, sets, set.n, &err)) {
        rlhf_error_print("rlhf replay", &err);
        return 2;
    }
    char dir[1024];
    if (out_dir) snprintf(dir, sizeof dir, "%s", out_dir);
    else {
        const char *slash = strrchr(log_path, '/');
        int n = slash ? (int)(slash - log_path) : 1;
        snprintf(dir, sizeof dir, "%.*s/replay", n, slash ? log_path : ".");
    }
    snprintf(cfg.run_dir, sizeof cfg.run_dir, "%s", dir);
    model_set_threads(threads >= 0 ? threads : cfg.train_threads);
    /* one run per directory: a replay into a directory a run or another replay is writing is refused */
    run_dir_lock lock;
    if (run_dir_lock_acquire(&lock, dir, "rlhf replay", &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_config_free(&cfg);
        return 1;
    }
    /* a config with only model.arch gets its base initialised (from rl.seed) in the output dir */
    if (run_prepare_base(&cfg, &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_dir_lock_release_unused(&lock);
        run_config_free(&cfg);
        return 1;
    }
    updater_session u;
    if (updater_session_init(&u, &cfg, 0, &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_dir_lock_release(&lock);
        run_config_free(&cfg);
        return 2;
    }
    int rc = 0;
    replay_reader *rr = NULL;
    /* a fresh output: replays must not continue an older replay's checkpoints or metrics */
    if (updater_latest_checkpoint_step(dir) >= 0) {
        rc = rlhf_error_set(&err, RLHF_EINVAL, dir, "already holds a replay's checkpoints; choose another --out");
        goto out;
    }
    remove(u.metrics_path);
    char cfg_out[1100];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    if ((rc = run_config_write(&cfg, cfg_out, &err))) goto out;
    /* pass 1: every record must fit this model */
    if ((rc = replay_reader_open(&rr, log_path, &err))) goto out;
    replay_reader_skip_corrupt(rr, 1);
    long n_records = 0;
    const model_config *mc = &u.ps.m->cfg;
    for (;;) {
        wire_rollout_group g;
        memset(&g, 0, sizeof g);
        replay_pos pos;
        int r = replay_reader_next(rr, &g, &pos, &err);
        if (r < 0) {
            rc = r;
            goto out;
        }
        if (r == 0) break;
        char where[1200];
        snprintf(where, sizeof where, "%s: record %ld (segment %u, offset %llu)", log_path, n_records, pos.segment,
                 (unsigned long long)pos.offset);
        size_t off = 0;
        for (uint32_t i = 0; i < g.k && !rc; i++) {
            if ((int)(g.n_prompt_tokens + g.n_tokens[i]) > mc->max_seq_len)
                rc = rlhf_error_set(&err, RLHF_EINVAL, where,
                                    "sample %u has %u prompt + %u completion tokens, more than the model's "
                                    "max_seq_len %d (a log from another model?)",
                                    i, g.n_prompt_tokens, g.n_tokens[i], mc->max_seq_len);
            for (uint32_t t = 0; t < g.n_tokens[i] && !rc; t++)
                if (g.tokens[off + t] < 0 || g.tokens[off + t] >= mc->vocab_size)
                    rc = rlhf_error_set(&err, RLHF_EINVAL, where,
                                        "token id %d is outside the model's vocabulary of %d (a log from another model?)",
                                        g.tokens[off + t], mc->vocab_size);
            off += g.n_tokens[i];
        }
        for (uint32_t t = 0; t < g.n_prompt_tokens && !rc; t++)
            if (g.prompt_tokens[t] < 0 || g.prompt_tokens[t] >= mc->vocab_size)
                rc = rlhf_error_set(&err, RLHF_EINVAL, where, "prompt token id %d is outside the vocabulary of %d",
                                    g.prompt_tokens[t], mc->vocab_size);
        wire_rollout_group_free(&g);
        if (rc) goto out;
        n_records++;
    }
    if ((rc = report_damage(rr, log_path, n_records, skip_corrupt, &err))) goto out;
    replay_reader_close(&rr);
    fprintf(stderr, "rlhf replay: %ld records in %s; training up to %d steps into %s\n", n_records, log_path,
            cfg.steps, dir);
    /* pass 2: train */
    if ((rc = replay_reader_open(&rr, log_path, &err))) goto out;
    replay_reader_skip_corrupt(rr, 1); /* pass 1 found none, or --skip-corrupt */
    while (u.ps.step < cfg.steps) {
        scored_group *sg = calloc(1, sizeof *sg);
        replay_pos pos;
        int r = replay_reader_next(rr, &sg->g, &pos, &err);
        if (r <= 0) {
            free(sg);
            rc = r < 0 ? r : 0;
            break;
        }
        if (updater_scorer_score_now(u.sc, sg, &err)) {
            rlhf_error_print("rlhf replay: scoring", &err);
            sg->skipped = 1;
        }
        int ready = updater_session_offer(&u, sg);
        if (u.failed) { /* a reward source broke its max_error_rate */
            err = u.failed_err;
            rc = err.code ? err.code : RLHF_EIO;
            break;
        }
        if (!ready) continue;
        json_t *m = NULL;
        if ((rc = updater_session_step(&u, &m, &err))) break;
        /* timings vary run to run; the replay's metrics keep only what the data determines */
        rc = updater_session_write_metrics(&u, m, &err);
        json_decref(m);
        if (rc) break;
        if (u.ps.step % cfg.checkpoint_every == 0 || u.ps.step == cfg.steps)
            if ((rc = updater_checkpoint_save(&u.ps, dir, NULL, &err))) break;
    }
    if (!rc && u.ps.step > 0 && updater_latest_checkpoint_step(dir) != u.ps.step)
        rc = updater_checkpoint_save(&u.ps, dir, NULL, &err);
    if (!rc)
        fprintf(stderr, "rlhf replay: %ld steps; final checkpoint %s/checkpoints/step_%ld/model.safetensors\n",
                u.ps.step, dir, u.ps.step);
out:
    if (rc) rlhf_error_print("rlhf replay", &err);
    replay_reader_close(&rr);
    updater_session_fini(&u);
    run_dir_lock_release(&lock);
    run_config_free(&cfg);
    return rc ? 1 : 0;
}
