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
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "cli/replay_int.h"

static const char usage[] =
    "usage: rlhf replay RUN_DIR/rollouts.log --config CONFIG.json [--out DIR] [--threads N] [--set a.b=VALUE ...]\n"
    "                   [--allow-other-model] [--rewards recorded|recompute] [--steps A:B] [--skip-corrupt]\n"
    "       rlhf replay --resume OUT [--threads N] [--set a.b=VALUE ...]\n"
    "Trains from a recorded replay log (no broker, no generators); writes metrics.jsonl and\n"
    "checkpoints under DIR (default: <log's directory>/replay).\n"
    "Before training it compares the config with the recording's (RUN_DIR/config.json), printing\n"
    "every key that differs and what that means, and refusing those that cannot change anything at\n"
    "replay (rl.k, generators.*, the task's stop rules); and the base model with the one that sampled\n"
    "the log (RUN_DIR/model_identity.json): another is refused unless --allow-other-model.\n"
    "  --rewards R   recorded: train on the rewards the live run trained each group with\n"
    "                (RUN_DIR/scores.jsonl); recompute: score the logged completions again with the\n"
    "                config's sources. Default: recorded when the config's rewards are the\n"
    "                recording's and scores.jsonl is there, else recompute (printed either way).\n"
    "  --steps A:B   the live run's steps A..B: starts from its checkpoint step_(A-1) (when A > 1; it\n"
    "                must have been kept) with the groups it consumed from step A on, and stops after\n"
    "                step B (rl.steps = B). Needs scores.jsonl beside the log.\n"
    "  --resume OUT  continues a stopped replay from OUT's last checkpoint (the log and config are\n"
    "                OUT/config.json's); the result is byte-identical to an uninterrupted replay.\n"
    "  --skip-corrupt  a log with damaged records is refused (they are listed) unless this is given:\n"
    "                then every valid record is used.\n"
    "  --updaters N  trains with N data-parallel updater ranks (mpirun -np N, as updaters.count does in a\n"
    "                run): the same N and threads give the same weights bit for bit, run to run.\n";

/* Where pass 2 reads its groups: the log in the chosen order, with the recorded rewards (or none). */
typedef struct replay_feed {
    replay_reader *rr;
    const replay_pos *positions; /* (n_records) each record's place */
    const long *order;           /* (n_records) the order to read them in; NULL: log order */
    long n_records, next;        /* next: the next index of the order to read */
    json_t *scores;              /* recorded rewards to train on, or NULL to score every group */
    updater_session *u;
    long n_unrecorded;           /* groups read that had no recorded rewards (scored) */
} replay_feed;

/* One step's worth of groups, and the scoring of those that need it (on a thread of its own). */
typedef struct replay_batch {
    scored_group **g;
    unsigned char *need;         /* (n) 1: to be scored with the config's sources */
    int n;
    scorer *sc;
    pthread_t thread;
} replay_batch;

static void replay_batch_free(replay_batch *b) {
    for (int i = 0; i < b->n; i++)
        if (b->g[i]) updater_scored_group_free(b->g[i]);
    free(b->g);
    free(b->need);
    memset(b, 0, sizeof *b);
}

static int replay_read_batch(replay_feed *f, replay_batch *b, int max, rlhf_error *err) {
    memset(b, 0, sizeof *b);
    b->sc = f->u->sc;
    b->g = calloc((size_t)max, sizeof *b->g);
    b->need = calloc((size_t)max, 1);
    if (!b->g || !b->need) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    while (b->n < max && f->next < f->n_records) {
        scored_group *sg = calloc(1, sizeof *sg);
        if (!sg) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        replay_pos pos;
        int r = replay_reader_seek(f->rr, f->positions[f->order ? f->order[f->next] : f->next], err);
        if (r == 0) r = replay_reader_next(f->rr, &sg->g, &pos, err);
        if (r <= 0) {
            free(sg);
            return r < 0 ? r : 0;
        }
        f->next++;
        /* a group the live updater never consumed (the broker dropped it as stale, or it was in flight when
         * the run ended) has no recorded rewards: it is scored as a recomputing replay would */
        int from_record = f->scores && cmd_replay_recorded_scores(f->scores, sg, f->u->src_names, f->u->n_sources) == 0;
        if (f->scores && !from_record) {
            f->n_unrecorded++;
            free(sg->src);
            free(sg->total);
            free(sg->src_errors);
            sg->src = sg->total = NULL;
            sg->src_errors = NULL;
        }
        b->need[b->n] = !from_record;
        b->g[b->n++] = sg;
    }
    return 0;
}

/* Scores the groups of b that need it, in one call (a sandboxed checker starts once per batch). */
static void replay_score_batch(replay_batch *b) {
    scored_group *todo[4096];
    int m = 0;
    for (int i = 0; i < b->n && m < 4096; i++)
        if (b->need[i]) todo[m++] = b->g[i];
    if (!m) return;
    rlhf_error err = {0};
    if (updater_scorer_score_batch_now(b->sc, todo, m, &err)) {
        rlhf_error_print("rlhf replay: scoring", &err);
        for (int i = 0; i < m; i++) todo[i]->skipped = 1;
    }
}

static void *replay_score_thread(void *arg) {
    replay_score_batch(arg);
    return NULL;
}

/* A replay's checkpoint: the policy state, plus the recording's clock (policy_state.recorded_version),
 * which --resume cannot rebuild from the groups it skips. */
static int replay_checkpoint(updater_session *u, const char *dir, rlhf_error *err) {
    json_t *extra = json_pack("{s:I}", "replay_recorded_version", (json_int_t)u->ps.recorded_version);
    int rc = updater_checkpoint_save(&u->ps, dir, extra, err);
    json_decref(extra);
    return rc;
}

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

/* Rank 0 (or the only rank) at its end: the followers stop with it. Returns `status`. */
static int replay_leader_end(updater_dist **dist, int status) {
    updater_policy_release_followers(*dist);
    updater_dist_destroy(dist);
    return status;
}

/* A follower rank of `rlhf replay --updaters N`: rank 0 reads the log, scores and writes everything;
 * this rank takes rank 0's state, then trains its share of each step it broadcasts. Its errors end
 * the whole job (MPI_Abort), since rank 0 would otherwise wait for it in the next gradient sum. */
static int replay_follower(run_config *cfg, updater_dist *dist, int threads) {
    rlhf_error err = {0};
    void *state = NULL;
    size_t n = 0;
    int r = updater_policy_await_state(dist, &state, &n, &err); /* after rank 0 prepared the output dir */
    policy_state ps;
    int have_ps = 0;
    if (r == 1) {
        model_set_threads(updater_dist_threads(dist, threads >= 0 ? threads : cfg->train_threads));
        updater_dist_set_bucket(dist, (size_t)cfg->upd_bucket_mb << 18);
        r = updater_policy_init(&ps, cfg, &err);
        have_ps = r == 0;
        ps.dist = dist;
        if (!r) r = updater_policy_apply_state(&ps, state, n, &err);
        if (!r) r = updater_policy_follow(&ps, &err);
    }
    free(state);
    if (have_ps) updater_policy_fini(&ps);
    run_config_free(cfg);
    if (r < 0) {
        fprintf(stderr, "rlhf replay: rank %d: ", updater_dist_rank(dist));
        rlhf_error_print("rlhf replay", &err);
        updater_dist_abort(dist, 1);
    }
    updater_dist_destroy(&dist);
    return 0;
}

int cmd_replay(int argc, char **argv) {
    const char *log_path = NULL, *config_path = NULL, *out_dir = NULL, *rewards_mode = NULL, *resume_dir = NULL,
               *steps_range = NULL;
    int threads = -1, npos = 0, allow_other = 0, skip_corrupt = 0, updaters = 1;
    char *sets[64];
    rlhf_opt_strs set = {sets, 0, 64};
    const rlhf_opt opts[] = {RLHF_OPT("--config", RLHF_OPT_STR, &config_path), RLHF_OPT("--out", RLHF_OPT_STR, &out_dir),
                             RLHF_OPT("--threads", RLHF_OPT_INT, &threads), RLHF_OPT("--set", RLHF_OPT_STRS, &set),
                             RLHF_OPT("--allow-other-model", RLHF_OPT_FLAG, &allow_other),
                             RLHF_OPT("--rewards", RLHF_OPT_STR, &rewards_mode),
                             RLHF_OPT("--resume", RLHF_OPT_STR, &resume_dir), RLHF_OPT("--steps", RLHF_OPT_STR, &steps_range),
                             RLHF_OPT("--skip-corrupt", RLHF_OPT_FLAG, &skip_corrupt),
                             RLHF_OPT("--updaters", RLHF_OPT_INT, &updaters),
                             RLHF_OPT_END};
    int prc = rlhf_opts_parse(argc, argv, "rlhf replay", usage, opts, &log_path, 1, &npos);
    if (prc >= 0) return prc;
    if (rewards_mode && strcmp(rewards_mode, "recorded") && strcmp(rewards_mode, "recompute")) {
        fprintf(stderr, "rlhf replay: error: --rewards must be recorded or recompute, got '%s'\n%s", rewards_mode, usage);
        return 2;
    }
    if (updaters < 1 || updaters > 256) {
        fprintf(stderr, "rlhf replay: error: --updaters must be 1..256, got %d\n%s", updaters, usage);
        return 2;
    }
    if (updaters > 1 && !getenv("OMPI_COMM_WORLD_SIZE")) {
        /* the ranks are this same command under mpirun; each finds its rank in the environment */
        run_mpirun_exec(updaters, argv);
        fprintf(stderr, "rlhf replay: error: --updaters %d: cannot start mpirun: %s (Debian: apt-get install "
                        "openmpi-bin)\n", updaters, strerror(errno));
        return 3;
    }
    long first_step = 1, last_step = -1; /* --steps A:B */
    if (steps_range) {
        char *colon = strchr(steps_range, ':'), *end = NULL;
        int ok = colon && colon > steps_range && colon[1];
        if (ok) first_step = strtol(steps_range, &end, 10), ok = end == colon && first_step >= 1;
        if (ok) last_step = strtol(colon + 1, &end, 10), ok = !*end && last_step >= first_step;
        if (!ok) {
            fprintf(stderr, "rlhf replay: error: --steps: expected A:B with 1 <= A <= B, got '%s'\n%s", steps_range, usage);
            return 2;
        }
    }
    char resume_cfg[1100], resume_log[4096] = "";
    if (resume_dir) {
        if (log_path || config_path || out_dir || steps_range) {
            fprintf(stderr, "rlhf replay: error: --resume OUT takes the log, the config and the output directory from "
                            "OUT/config.json (no LOG, --config, --out or --steps)\n%s", usage);
            return 2;
        }
        snprintf(resume_cfg, sizeof resume_cfg, "%s/config.json", resume_dir);
        json_t *doc = json_load_file(resume_cfg, 0, NULL);
        const char *of = json_string_value(json_object_get(json_object_get(doc, "launcher"), "replay_of"));
        if (of && of[0]) snprintf(resume_log, sizeof resume_log, "%s", of);
        json_decref(doc);
        if (!resume_log[0]) {
            fprintf(stderr, "rlhf replay: error: %s: not the output of a replay (no launcher.replay_of)\n", resume_cfg);
            return 2;
        }
        log_path = resume_log;
        config_path = resume_cfg;
        out_dir = resume_dir;
    }
    if (!log_path || !config_path) {
        fprintf(stderr, "rlhf replay: error: %s\n%s", !log_path ? "missing LOG" : "missing --config", usage);
        return 2;
    }
    rlhf_error err = {0};
    updater_dist *dist = NULL;
    if (updaters > 1) {
        if (updater_dist_create(&dist, &err)) {
            rlhf_error_print("rlhf replay", &err);
            return 3;
        }
        if (updater_dist_size(dist) != updaters) {
            fprintf(stderr, "rlhf replay: error: --updaters %d, but mpirun started %d ranks\n", updaters,
                    updater_dist_size(dist));
            updater_dist_abort(dist, 2);
        }
    }
    run_config cfg;
    if (run_config_load(&cfg, config_path, sets, set.n, &err)) {
        rlhf_error_print("rlhf replay", &err);
        if (updater_dist_rank(dist) > 0) updater_dist_abort(dist, 2);
        updater_policy_release_followers(dist);
        updater_dist_destroy(&dist);
        return 2;
    }
    if (last_step > 0) {
        cfg.steps = (int)last_step;
        json_object_set_new(json_object_get(cfg.resolved, "rl"), "steps", json_integer(last_step));
    }
    char dir[1024];
    if (out_dir) snprintf(dir, sizeof dir, "%s", out_dir);
    else {
        const char *slash = strrchr(log_path, '/');
        int n = slash ? (int)(slash - log_path) : 1;
        snprintf(dir, sizeof dir, "%.*s/replay", n, slash ? log_path : ".");
    }
    snprintf(cfg.run_dir, sizeof cfg.run_dir, "%s", dir);
    if (updater_dist_rank(dist) > 0) return replay_follower(&cfg, dist, threads);
    int recorded_clock = 0, rewards_changed = 1, n_differ = -1;
    if (cmd_replay_check_config(log_path, &cfg, &recorded_clock, &rewards_changed, &n_differ, &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_config_free(&cfg);
        return replay_leader_end(&dist, 2);
    }
    model_set_threads(updater_dist_threads(dist, threads >= 0 ? threads : cfg.train_threads));
    updater_dist_set_bucket(dist, (size_t)cfg.upd_bucket_mb << 18);
    /* one run per directory: a replay into a directory a run or another replay is writing is refused */
    run_dir_lock lock;
    if (run_dir_lock_acquire(&lock, dir, "rlhf replay", &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_config_free(&cfg);
        return replay_leader_end(&dist, 1);
    }
    /* a config with only model.arch gets its base initialised (from rl.seed) in the output dir */
    if (run_prepare_base(&cfg, &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_dir_lock_release_unused(&lock);
        run_config_free(&cfg);
        return replay_leader_end(&dist, 1);
    }
    updater_session u;
    if (updater_session_init(&u, &cfg, 0, &err)) {
        rlhf_error_print("rlhf replay", &err);
        run_dir_lock_release(&lock);
        run_config_free(&cfg);
        return replay_leader_end(&dist, 2);
    }
    u.ps.dist = dist;
    int rc = 0, other_model = 0;
    replay_reader *rr = NULL;
    json_t *scores = NULL;
    char(*hashes)[17] = NULL;      /* the live run's weights_hash per step */
    json_t *log_index = NULL;      /* "GENERATOR\tSEQ" -> record index */
    replay_pos *positions = NULL; /* (records) where each record is */
    long *order = NULL;            /* (records) the order pass 2 takes them in */
    u.ps.recorded_clock = recorded_clock;
    long n_score_lines = 0;
    int use_recorded = 0;
    /* what the live updater did with each group: its rewards, and the order it consumed them in */
    scores = cmd_replay_load_scores(log_path, &n_score_lines);
    if (!rewards_mode || !strcmp(rewards_mode, "recorded")) {
        if (rewards_mode && !scores) {
            rc = rlhf_error_set(&err, RLHF_EINVAL, log_path, "--rewards recorded: no %s beside the log (recorded "
                                "before runs kept it); --rewards recompute scores the completions again",
                                UPDATER_SCORES_FILE);
            goto out;
        }
        if (rewards_mode && rewards_changed) {
            rc = rlhf_error_set(&err, RLHF_EINVAL, "--rewards recorded", "the config's rewards differ from the "
                                "recording's: recorded scores would not be what these sources give; --rewards "
                                "recompute scores with them");
            goto out;
        }
        use_recorded = scores && !rewards_changed;
    }
    if (use_recorded) {
        fprintf(stderr, "rlhf replay: rewards: recorded (%ld groups in %s beside the log): training on what the live "
                        "run trained with\n", n_score_lines, UPDATER_SCORES_FILE);
    } else {
        fprintf(stderr, "rlhf replay: rewards: recomputed with the config's sources (%s)\n",
                rewards_mode ? "--rewards recompute"
                : rewards_changed ? "they differ from the recording's" : "no " UPDATER_SCORES_FILE " beside the log");
        size_t i;
        json_t *src;
        json_array_foreach(cfg.rewards, i, src) {
            const char *type = json_string_value(json_object_get(src, "type"));
            if (type && (!strcmp(type, "judge") || !strcmp(type, "remote_rm")))
                fprintf(stderr, "rlhf replay: warning: rewards[%zu] (%s) is not deterministic: recomputed scores, and so "
                                "the weights, may differ from the live run's\n", i, type);
        }
    }
    if ((rc = cmd_replay_check_model(log_path, &u.ps, allow_other, &other_model, &err))) goto out;
    long skip = 0; /* groups of the order already trained or dropped before the start */
    if (resume_dir) {
        json_t *extra = NULL;
        int loaded = updater_checkpoint_load_latest(&u.ps, dir, &extra, &err);
        if (loaded < 0) {
            rc = loaded;
            goto out;
        }
        if (loaded == 0) {
            rc = rlhf_error_set(&err, RLHF_EINVAL, dir, "no checkpoint to resume from: start the replay again");
            goto out;
        }
        skip = (long)u.ps.log_records;
        u.ps.recorded_version = (uint64_t)json_integer_value(json_object_get(extra, "replay_recorded_version"));
        json_decref(extra);
        if ((rc = updater_metrics_truncate_after(u.metrics_path, u.ps.step, &err))) goto out;
        fprintf(stderr, "rlhf replay: resuming %s at step %ld (%ld groups of the log done)\n", dir, u.ps.step, skip);
    } else {
        /* a fresh output: replays must not continue an older replay's checkpoints or metrics */
        if (updater_latest_checkpoint_step(dir) >= 0) {
            rc = rlhf_error_set(&err, RLHF_EINVAL, dir, "already holds a replay's checkpoints; choose another --out, or "
                                "continue it with --resume %s", dir);
            goto out;
        }
        remove(u.metrics_path);
    }
    if (steps_range && !scores) {
        rc = rlhf_error_set(&err, RLHF_EINVAL, log_path, "--steps needs the live updater's %s beside the log (which "
                            "groups each step consumed)", UPDATER_SCORES_FILE);
        goto out;
    }
    if (steps_range && first_step > 1) {
        /* the live run's state before step A: its checkpoint, and the groups it had consumed by then */
        char live_dir[1100];
        cmd_replay_dir_of(log_path, live_dir, sizeof live_dir);
        json_t *extra = NULL;
        if ((rc = updater_checkpoint_load_step(&u.ps, live_dir, (int)first_step - 1, &extra, &err)) < 0) {
            char why[900];
            snprintf(why, sizeof why, "%s", err.msg);
            rc = rlhf_error_set(&err, RLHF_EINVAL, "--steps", "starting at step %ld needs the live run's checkpoint "
                                "step_%ld (checkpoint.keep may have removed it): %s", first_step, first_step - 1, why);
            goto out;
        }
        rc = 0;
        json_decref(extra);
        const char *key;
        json_t *line;
        json_object_foreach(scores, key, line) {
            if (json_integer_value(json_object_get(line, "step")) < first_step) {
                skip++;
                uint64_t v = (uint64_t)json_integer_value(json_object_get(line, "policy_version"));
                if (v > u.ps.recorded_version) u.ps.recorded_version = v;
            }
        }
        fprintf(stderr, "rlhf replay: steps %ld..%ld: from the live run's checkpoint step_%ld, after the %ld groups it "
                        "had consumed\n", first_step, last_step, first_step - 1, skip);
    }
    char cfg_out[1100];
    snprintf(cfg_out, sizeof cfg_out, "%s/config.json", dir);
    /* marks the directory as a replay's: `rlhf run --resume` of it then asks before going live */
    json_t *launcher = json_object_get(cfg.resolved, "launcher");
    char *log_abs = realpath(log_path, NULL);
    if (json_is_object(launcher)) json_object_set_new(launcher, "replay_of", json_string(log_abs ? log_abs : log_path));
    free(log_abs);
    if ((rc = run_config_write(&cfg, cfg_out, &err))) goto out;
    /* pass 1: every record must fit this model */
    if ((rc = replay_reader_open(&rr, log_path, &err))) goto out;
    replay_reader_skip_corrupt(rr, 1);
    long n_records = 0, cap_pos = 0;
    log_index = json_object();
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
        if (!rc && n_records == cap_pos) {
            cap_pos = cap_pos ? 2 * cap_pos : 1024;
            replay_pos *np = realloc(positions, sizeof *positions * (size_t)cap_pos);
            if (!np) rc = RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
            else positions = np;
        }
        if (!rc) {
            char key[600];
            cmd_replay_group_key(key, sizeof key, g.generator_id, g.seq);
            json_object_set_new(log_index, key, json_integer(n_records));
            positions[n_records] = pos;
        }
        wire_rollout_group_free(&g);
        if (rc) goto out;
        n_records++;
    }
    if ((rc = report_damage(rr, log_path, n_records, skip_corrupt, &err))) goto out;
    replay_reader_close(&rr);
    fprintf(stderr, "rlhf replay: %ld records in %s; training up to %d steps into %s\n", n_records, log_path,
            cfg.steps, dir);
    /* pass 2: train, in the order the live updater consumed the groups when that is known (the broker
     * drops groups that went stale in its queue: they are in the log, but the live updater never saw
     * them), else in log order */
    long n_read = 0, n_unrecorded = 0, n_consumed = 0;
    if (scores && !(order = cmd_replay_live_order(scores, log_index, n_records, &n_consumed))) {
        rc = RLHF_FAIL(&err, RLHF_ENOMEM, "out of memory");
        goto out;
    }
    if (order)
        fprintf(stderr, "rlhf replay: order: the live updater's (%s): the %ld groups it consumed, then the %ld it never "
                        "got (dropped by the broker as stale, or in flight when the run ended)\n",
                UPDATER_SCORES_FILE, n_consumed, n_records - n_consumed);
    else
        fprintf(stderr, "rlhf replay: order: the log's (no %s beside it)\n", UPDATER_SCORES_FILE);
    /* the other ranks start from rank 0's state (a base, a resumed replay or a live checkpoint alike) */
    if ((rc = updater_policy_share_state(&u.ps, &err))) goto out;
    if (dist)
        fprintf(stderr, "rlhf replay: %d data-parallel updater ranks (MPI), %d OpenMP thread(s) each\n",
                updater_dist_size(dist), updater_dist_threads(dist, threads >= 0 ? threads : cfg.train_threads));
    if ((rc = replay_reader_open(&rr, log_path, &err))) goto out;
    replay_reader_skip_corrupt(rr, 1); /* pass 1 found none, or --skip-corrupt */
    n_read = skip < n_records ? skip : n_records;
    /* a step's worth of groups is read and scored (on a thread of its own) while the one before trains:
     * scoring (a sandboxed checker, a judge) then costs what training does not already */
    replay_batch cur = {0}, next = {0};
    long n_hashes = cmd_replay_recorded_hashes(log_path, &hashes), n_same = 0, diverged = 0;
    replay_feed feed = {.rr = rr, .positions = positions, .order = order, .n_records = n_records, .next = n_read,
                        .scores = use_recorded ? scores : NULL, .u = &u};
    if ((rc = replay_read_batch(&feed, &cur, cfg.prompts_per_step, &err))) goto out;
    replay_score_batch(&cur);
    while (cur.n > 0 && !rc) {
        if (u.ps.step < cfg.steps && (rc = replay_read_batch(&feed, &next, cfg.prompts_per_step, &err))) break;
        int scoring = next.n > 0 && pthread_create(&next.thread, NULL, replay_score_thread, &next) == 0;
        if (next.n > 0 && !scoring) replay_score_batch(&next);
        for (int i = 0; i < cur.n && !rc; i++) {
            scored_group *sg = cur.g[i];
            cur.g[i] = NULL;
            if (u.ps.step >= cfg.steps) {
                updater_scored_group_free(sg);
                continue;
            }
            n_read++;
            if (u.ps.recorded_clock && sg->g.policy_version > u.ps.recorded_version)
                u.ps.recorded_version = sg->g.policy_version;
            int ready = updater_session_offer(&u, sg);
            if (u.failed) { /* a reward source broke its max_error_rate */
                err = u.failed_err;
                rc = err.code ? err.code : RLHF_EIO;
                break;
            }
            if (!ready) continue;
            json_t *m = NULL;
            if ((rc = updater_session_step(&u, &m, &err))) break;
            if (other_model && u.ps.step <= 3)
                fprintf(stderr, "rlhf replay: warning: step %ld on another model's log: is_ratio/mean %.4g, "
                                "is_ratio/clip_frac %.4g\n", u.ps.step,
                        json_number_value(json_object_get(m, "is_ratio/mean")),
                        json_number_value(json_object_get(m, "is_ratio/clip_frac")));
            /* the same config trains the same weights: each version's content against the live run's */
            const char *mine = json_string_value(json_object_get(m, "weights_hash"));
            if (n_differ == 0 && mine && u.ps.step < n_hashes && hashes[u.ps.step][0]) {
                if (strcmp(mine, hashes[u.ps.step]) == 0) n_same++;
                else if (!diverged) {
                    diverged = u.ps.step;
                    fprintf(stderr, "rlhf replay: warning: the weights after step %ld differ from the live run's "
                                    "(weights_hash %s, recorded %s): a different thread count or kernel (RLHF_ISA), or "
                                    "a non-deterministic reward source, changes the bits\n", u.ps.step, mine,
                            hashes[u.ps.step]);
                }
            }
            /* timings vary run to run; the replay's metrics keep only what the data determines */
            json_object_set_new(m, "replayed", json_true());
            rc = updater_session_write_metrics(&u, m, &err);
            json_decref(m);
            if (rc) break;
            if (u.ps.step % cfg.checkpoint_every == 0 || u.ps.step == cfg.steps)
                if ((rc = replay_checkpoint(&u, dir, &err))) break;
        }
        if (scoring) pthread_join(next.thread, NULL);
        replay_batch_free(&cur);
        cur = next;
        memset(&next, 0, sizeof next);
        if (u.ps.step >= cfg.steps) break;
    }
    replay_batch_free(&cur);
    n_unrecorded = feed.n_unrecorded;
    if (!rc && u.ps.step > 0 && updater_latest_checkpoint_step(dir) != u.ps.step)
        rc = replay_checkpoint(&u, dir, &err);
    if (!rc && n_same && !diverged)
        fprintf(stderr, "rlhf replay: the weights of all %ld versions compared are the live run's, bit for bit "
                        "(weights_hash in metrics.jsonl)\n", n_same);
    if (!rc && n_unrecorded)
        fprintf(stderr, "rlhf replay: %ld groups had no recorded rewards (the live updater never got them); they were "
                        "scored with the config's sources\n", n_unrecorded);
    if (!rc && u.ps.step < cfg.steps)
        fprintf(stderr, "rlhf replay: %s at step %ld of rl.steps=%d: %ld of the log's %ld records trained or dropped "
                        "(%ld more held back, fewer than rl.prompts_per_step=%d)\n",
                "the log ran out", u.ps.step, cfg.steps, n_read - (long)u.n_window, n_records,
                (long)u.n_window, cfg.prompts_per_step);
    if (!rc)
        fprintf(stderr, "rlhf replay: %ld steps; final checkpoint %s/checkpoints/step_%ld/model.safetensors\n",
                u.ps.step, dir, u.ps.step);
out:
    if (rc) rlhf_error_print("rlhf replay", &err);
    json_decref(scores);
    json_decref(log_index);
    free(hashes);
    free(positions);
    free(order);
    replay_reader_close(&rr);
    updater_session_fini(&u);
    run_dir_lock_release(&lock);
    run_config_free(&cfg);
    return replay_leader_end(&dist, rc ? 1 : 0);
}
