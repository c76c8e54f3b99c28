/* updater/process.c — updater_main, the body of the online policy updater process (`rlhf updater
 * --config RUN_DIR/config.json`, also `rlhf-updater`; the command line is updater/updater_cli.c).
 *
 * Threads: the main thread talks to the broker (credit, groups, prompt stats, weights); one trainer
 * thread runs the optimizer steps; updaters.reward_threads scoring threads run the reward pipeline.
 * While a step trains, the main thread keeps receiving the next step's groups and the scorers score
 * them, so neither a slow reward nor the broker round trip waits behind the optimizer: with one
 * thread, the next step's groups would sit in the socket until the step ended and scoring would be
 * on the critical path of every step. Flow control: the updater grants the broker credit so that it
 * holds at most rl.prompts_per_step groups besides the training step's (received, being scored, or
 * waiting for the next step).
 *
 * Resume: the newest checkpoint in RUN_DIR/checkpoints is loaded (model, optimizer, RNG, step,
 * version, and per generator the highest sequence number already finished). The replay log is then
 * read from the start and every group not yet finished is scored and trained on, so groups that
 * were delivered to a previous incarnation that died are not lost. Groups the broker later
 * delivers again are recognised by (generator_id, seq) and skipped.
 *
 * Stop (SIGTERM/SIGINT in the process): finish the current step, write a checkpoint, return 0.
 * Returns 2 for a bad config or input. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/broker.h"
#include "updater/updater_int.h"

/* seen = highest seq per generator already scored/queued in this process (or finished before) */
static int seen_before(json_t *seen, const wire_rollout_group *g) {
    json_t *v = json_object_get(seen, g->generator_id ? g->generator_id : "");
    return v && (uint64_t)json_integer_value(v) >= g->seq;
}
static void mark_seen(json_t *seen, const wire_rollout_group *g) {
    const char *gid = g->generator_id ? g->generator_id : "";
    json_t *v = json_object_get(seen, gid);
    if (!v || (uint64_t)json_integer_value(v) < g->seq) json_object_set_new(seen, gid, json_integer((json_int_t)g->seq));
}

/* The optimizer thread: runs updater_session_step on request. The main thread does not touch the session's
 * window or policy while a step is in flight (job set, done not yet seen). */
typedef struct trainer {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job, done, quit, threads;
    updater_session *u;
    json_t *metrics; /* the finished step's record */
    int rc;
    rlhf_error err;
} trainer;

static void *trainer_main(void *arg) {
    trainer *t = arg;
    model_set_threads(t->threads); /* the OpenMP thread count is per thread: set it on this one */
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->job && !t->quit) pthread_cond_wait(&t->cv, &t->mu);
        if (t->quit) break;
        pthread_mutex_unlock(&t->mu);
        json_t *m = NULL;
        rlhf_error e;
        rlhf_error_clear(&e);
        int rc = updater_session_step(t->u, &m, &e);
        pthread_mutex_lock(&t->mu);
        t->metrics = m;
        t->rc = rc;
        t->err = e;
        t->job = 0;
        t->done = 1;
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static int trainer_create(trainer **out, updater_session *u, int threads, rlhf_error *err) {
    trainer *t = calloc(1, sizeof *t);
    if (!t) return rlhf_error_set(err, RLHF_ENOMEM, "updater", "out of memory");
    t->u = u;
    t->threads = threads;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (pthread_create(&t->thread, NULL, trainer_main, t) != 0) {
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        free(t);
        return rlhf_error_set(err, RLHF_EIO, "updater", "cannot start the trainer thread");
    }
    *out = t;
    return 0;
}

static void trainer_start(trainer *t) {
    pthread_mutex_lock(&t->mu);
    t->job = 1;
    t->done = 0;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* 1 when the step in flight has finished (waiting up to wait_ms), 0 if not yet. */
static int trainer_finished(trainer *t, int wait_ms) {
    pthread_mutex_lock(&t->mu);
    if (!t->done && wait_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)wait_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (!t->done && pthread_cond_timedwait(&t->cv, &t->mu, &ts) == 0) {
        }
    }
    int d = t->done;
    pthread_mutex_unlock(&t->mu);
    return d;
}

static void trainer_destroy(trainer **tp) {
    trainer *t = *tp;
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    while (t->job) pthread_cond_wait(&t->cv, &t->mu); /* never abandon a step mid-way */
    t->quit = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    json_decref(t->metrics);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
    *tp = NULL;
}

/* A version of the policy: the whole model, or with model.lora the adapters alone (their content hash
 * in the message; generators merge them into their own copy of the base). */
static int publish(broker_client *bc, policy_state *ps, double *seconds, rlhf_error *err) {
    double t0 = rlhf_now();
    wire_weights w;
    ps->m->version = ps->version;
    int rc = ps->lora ? run_weights_from_lora(ps->lora, ps->version, &w, err) : run_weights_from_model(ps->m, &w, err);
    if (rc) return rc;
    rc = broker_client_publish_weights(bc, &w, err);
    free(w.tensors);
    *seconds = rlhf_now() - t0;
    return rc;
}

/* Copies the broker's selector metrics (prompts/zero_spread_share, prompts/mean_cohesion,
 * prompts/sampling_entropy, ...: the "selector" object of its STATS) into this step's metrics record.
 * A broker that does not answer in time (restarting) or serves no dataset leaves them out of this
 * step and counts it in prompts/stats_unavailable. */
static void add_selector_metrics(broker_client *bc, json_t *m, uint64_t *unavailable) {
    json_t *st = NULL;
    rlhf_error e;
    rlhf_error_clear(&e);
    json_t *sel = NULL;
    if (broker_client_get_stats(bc, &st, 2000, &e) == 0) sel = json_object_get(st, "selector");
    if (json_is_object(sel)) {
        const char *k;
        json_t *v;
        json_object_foreach(sel, k, v) json_object_set(m, k, v);
    } else {
        (*unavailable)++;
    }
    json_object_set_new(m, "prompts/stats_unavailable", json_integer((json_int_t)*unavailable));
    json_decref(st);
}

static int send_stats(broker_client *bc, const scored_group *s, int n_sources, const char *const *names,
                      rlhf_error *err) {
    wire_prompt_stats st;
    memset(&st, 0, sizeof st);
    st.prompt_id = s->g.prompt_id;
    st.policy_version = s->g.policy_version;
    st.k = s->g.k;
    st.n_sources = (uint32_t)n_sources;
    st.source_names = (char **)names;
    st.rewards = s->src;
    st.total = s->total;
    return broker_client_send_prompt_stats(bc, &st, err);
}

/* RUN_DIR/model_identity.json from the base model just loaded (before any checkpoint): what the replay
 * log's token ids and log-probs belong to (run/identity.c). Written once; a resume whose base differs
 * says so on its log (the rollouts of the two parts then come from different models). */
static int updater_record_model_identity(const policy_state *ps, const char *run_dir, rlhf_error *err) {
    json_t *mine = NULL;
    int rc = run_model_identity(ps->m, ps->tok, &mine, err);
    if (rc) return rc;
    char path[2200];
    snprintf(path, sizeof path, "%s/%s", run_dir, RUN_MODEL_IDENTITY_FILE);
    json_t *old = json_load_file(path, 0, NULL);
    if (old) {
        char what[400];
        if (run_model_identity_compare(old, mine, what, sizeof what))
            fprintf(stderr, "updater: warning: %s: this run's base model differs from the one it started with (%s); "
                            "its replay log now holds rollouts of both\n", path, what);
    } else {
        char *text = json_dumps(mine, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        rc = text ? rlhf_write_file_atomic(path, text, strlen(text), err) : RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        free(text);
    }
    json_decref(old);
    json_decref(mine);
    return rc;
}

static int updater_checkpoint(updater_session *u, rlhf_error *err) {
    json_t *extra = json_object();
    json_object_set(extra, "consumed", u->consumed);
    int rc = updater_checkpoint_save(&u->ps, u->cfg->run_dir, extra, err);
    json_decref(extra);
    return rc;
}

/* Submits for scoring every group of the replay log not seen yet (by generator id and seq): after
 * a restart of this process, the groups a dead incarnation held; after a broker restart, the groups
 * the old broker had accepted but not delivered. Returns how many. */
static long recover_from_log(const char *log_path, json_t *seen, scorer *sc) {
    if (access(log_path, F_OK) != 0) return 0;
    rlhf_error err = {0};
    replay_reader *rr = NULL;
    if (replay_reader_open(&rr, log_path, &err) != 0) {
        rlhf_error_print("updater: replay log (not recovering from it)", &err);
        return 0;
    }
    replay_reader_skip_corrupt(rr, 1); /* a damaged record costs itself, not the valid ones after it */
    long n = 0;
    for (;;) {
        scored_group *sg = calloc(1, sizeof *sg);
        replay_pos pos;
        int r = replay_reader_next(rr, &sg->g, &pos, &err);
        if (r <= 0) {
            free(sg);
            if (r < 0) rlhf_error_print("updater: replay log (continuing)", &err);
            break;
        }
        if (seen_before(seen, &sg->g)) {
            updater_scored_group_free(sg);
            continue;
        }
        mark_seen(seen, &sg->g);
        sg->log_index = UINT64_MAX;
        updater_scorer_submit(sc, sg);
        n++;
    }
    const replay_damage *d;
    size_t nd = replay_reader_damage(rr, &d);
    if (nd)
        fprintf(stderr, "updater: replay log %s: skipped %zu damaged stretch(es), the first at segment %u offset %llu\n",
                log_path, nd, d[0].pos.segment, (unsigned long long)d[0].pos.offset);
    replay_reader_close(&rr);
    return n;
}

/* A failure before the loop (config, reward sources, checkpoint) repeats at every restart: environment
 * when the class says so, else config, never transient. */
static int start_failure_status(const rlhf_error *err) {
    return rlhf_exit_status(err) == RLHF_EXIT_ENV ? RLHF_EXIT_ENV : RLHF_EXIT_CONFIG;
}

/* The launcher's restarts so far: the "restart" lines of RUN_DIR/restarts.jsonl (cli/launcher.c writes
 * one line per restart or stop). Logged each step as supervision/restarts, so a metrics plot shows
 * when processes crashed. */
static long count_restarts(const char *run_dir) {
    char path[8400], line[1024];
    snprintf(path, sizeof path, "%s/restarts.jsonl", run_dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "\"action\":\"restart\"")) n++;
    fclose(f);
    return n;
}

/* Set by the caller (its SIGTERM/SIGINT handler): finish the step in flight, checkpoint, return. */
static int stop_requested(const updater_options *o) { return o->stop && *o->stop; }

/* Data-parallel ranks on one host share its cores (updater_dist_threads); the gradient sum's bucket
 * size comes from the config. Nothing changes for a single updater. */
static void dist_configure(run_config *cfg, updater_dist *dist) {
    if (updater_dist_size(dist) < 2) return;
    int t = updater_dist_threads(dist, cfg->train_threads);
    if (t != cfg->train_threads) {
        cfg->train_threads = t;
        model_set_threads(t);
    }
    updater_dist_set_bucket(dist, (size_t)cfg->upd_bucket_mb << 18); /* MB of floats */
}

typedef struct serve_arg {
    const run_config *cfg;
    const tokenizer *tok;
    int vocab;
    updater_dist *dist;
    int rc;
    rlhf_error err;
} serve_arg;

static void *serve_main(void *p) {
    serve_arg *a = p;
    char where[1200];
    snprintf(where, sizeof where, "%s/config.json: rewards", a->cfg->run_dir);
    a->rc = updater_scorer_serve(a->cfg->rewards, where, a->tok, a->vocab, a->dist, &a->err);
    if (a->rc) {
        /* rank 0 waits for this rank's scores: the job cannot go on without them */
        fprintf(stderr, "updater rank %d: scoring: %s: %s\n", updater_dist_rank(a->dist), a->err.where, a->err.msg);
        updater_dist_abort(a->dist, rlhf_exit_status(&a->err));
    }
    return NULL;
}

/* A follower rank of a data-parallel updater (updaters.count > 1, rank > 0): the same policy and
 * optimizer as rank 0, loaded from the same checkpoint, stepped with the groups rank 0 broadcasts. */
static int follower_main(const updater_options *o, updater_dist *dist, rlhf_error *err) {
    run_process proc;
    if (run_process_open(&proc, o->config_path, WIRE_ROLE_UPDATER, err)) return start_failure_status(err);
    dist_configure(&proc.cfg, dist);
    policy_state ps;
    int rc = updater_policy_init(&ps, &proc.cfg, err);
    if (rc) {
        run_process_close(&proc);
        return start_failure_status(err);
    }
    ps.dist = dist;
    /* rank 0 sends this rank a share of the groups to score while the steps go on (its scorer's threads) */
    serve_arg sa = {.cfg = &proc.cfg, .tok = ps.tok, .vocab = ps.m->cfg.vocab_size, .dist = dist};
    pthread_t server;
    int serving = proc.cfg.upd_distributed_scoring && updater_dist_scoring_possible(dist) &&
                  pthread_create(&server, NULL, serve_main, &sa) == 0;
    if (updater_checkpoint_load_latest(&ps, proc.cfg.run_dir, NULL, err) >= 0) rc = updater_policy_follow(&ps, err);
    else rc = -1;
    if (serving && !rc) {
        /* rank 0 stopped the server before it said stop to this loop */
        pthread_join(server, NULL);
        if (sa.rc) {
            *err = sa.err;
            rc = sa.rc;
        }
    }
    if (!rc)
        fprintf(stderr, "updater rank %d: stopped with rank 0 after its step %ld (the last that trained)\n",
                updater_dist_rank(dist), ps.step);
    updater_policy_fini(&ps);
    run_process_close(&proc);
    if (!rc) return RLHF_EXIT_OK;
    int st = rlhf_exit_status(err);
    return st == RLHF_EXIT_OK ? RLHF_EXIT_TRANSIENT : st;
}

static int leader_main(const updater_options *o, updater_dist *dist, rlhf_error *err);

int updater_main(const updater_options *o, rlhf_error *err) {
    updater_dist *dist = NULL;
    if (updater_dist_create(&dist, err)) return RLHF_EXIT_ENV;
    int st = updater_dist_rank(dist) > 0 ? follower_main(o, dist, err) : leader_main(o, dist, err);
    if (updater_dist_rank(dist) > 0 && st != RLHF_EXIT_OK) {
        /* rank 0 would wait for this rank in the next gradient sum: end the whole group with the class */
        fprintf(stderr, "updater rank %d: %s: %s\n", updater_dist_rank(dist), err->where, err->msg);
        updater_dist_abort(dist, st);
    }
    /* whatever way rank 0 ends, the followers stop with it (they wait in a broadcast) */
    if (updater_dist_rank(dist) == 0) updater_policy_release_followers(dist);
    updater_dist_destroy(&dist);
    return st;
}

static int leader_main(const updater_options *o, updater_dist *dist, rlhf_error *err) {
    run_process proc;
    if (run_process_open(&proc, o->config_path, WIRE_ROLE_UPDATER, err)) return start_failure_status(err);
    run_config *cfg = &proc.cfg;
    dist_configure(cfg, dist);
    /* the followers start scoring servers by the same rule; whatever happens next, rank 0's end stops them */
    if (cfg->upd_distributed_scoring && updater_dist_scoring_possible(dist)) updater_dist_set_scoring_servers(dist, 1);
    broker_config *bcfg = &proc.broker;
    updater_session u;
    if (updater_session_init(&u, cfg, 1, err)) {
        run_process_close(&proc);
        return start_failure_status(err);
    }
    u.ps.dist = dist;
    if (updater_dist_size(dist) > 1) {
        int spread = cfg->upd_distributed_scoring && updater_scorer_attach_ranks(u.sc, dist) == 0;
        fprintf(stderr, "updater: rank 0 of %d data-parallel updaters (MPI), %d OpenMP thread(s) per rank, scoring %s\n",
                updater_dist_size(dist), cfg->train_threads,
                spread ? "on every rank"
                : cfg->upd_distributed_scoring ? "on rank 0 (this MPI gives no MPI_THREAD_MULTIPLE)"
                                                : "on rank 0 (updaters.distributed_scoring false)");
    }
    u.ps.mark_eval = 1; /* the launcher evaluates the checkpoints eval.every marks */
    if (u.ps.lora)
        fprintf(stderr, "updater: LoRA rank %d on %zu adapter parameters; the base (%zu parameters) is frozen, kept in "
                "%s\n", u.ps.lora->cfg.rank, u.ps.lora->n_params, u.ps.m->n_params,
                u.ps.m->bf16_mem ? "bf16 as its file stores it (half the memory of fp32)" : "fp32");
    if (updater_record_model_identity(&u.ps, cfg->run_dir, err)) {
        updater_session_fini(&u);
        run_process_close(&proc);
        return start_failure_status(err);
    }
    int rc = 0;
    broker_client *bc = NULL;
    json_t *seen = NULL, *extra = NULL;
    int loaded = updater_checkpoint_load_latest(&u.ps, cfg->run_dir, &extra, err);
    if (loaded < 0) {
        rc = 2;
        goto out;
    }
    if (loaded && extra && json_is_object(json_object_get(extra, "consumed"))) {
        json_decref(u.consumed);
        u.consumed = json_deep_copy(json_object_get(extra, "consumed"));
    }
    json_decref(extra);
    updater_scorer_set_step(u.sc, u.ps.step); /* the training state v2 reward plugins see */
    seen = json_deep_copy(u.consumed);
    if (updater_metrics_truncate_after(u.metrics_path, u.ps.step, err)) {
        rc = 1;
        goto out;
    }
    char path[8400];
    snprintf(path, sizeof path, "%s/consumed.log", cfg->run_dir);
    u.consumed_log = fopen(path, "a");
    if (u.consumed_log) setvbuf(u.consumed_log, NULL, _IOLBF, 0);
    snprintf(path, sizeof path, "%s/%s", cfg->run_dir, UPDATER_SCORES_FILE);
    u.scores_log = fopen(path, "a");
    if (u.scores_log) setvbuf(u.scores_log, NULL, _IOLBF, 0);
    fprintf(stderr, "updater: pid %d, %s at step %ld, policy_version %llu\n", (int)getpid(),
            loaded ? "resumed" : "starting", u.ps.step, (unsigned long long)u.ps.version);

    char peer[64];
    snprintf(peer, sizeof peer, "updater.%d", (int)getpid());
    char cred[8400]; /* the launcher's credentials for this run (docs/BROKER.md "Authentication") */
    snprintf(cred, sizeof cred, "%s/%s", cfg->run_dir, BROKER_CREDENTIALS_DIR);
    if (broker_client_connect_with(&bc, bcfg->endpoint, WIRE_ROLE_UPDATER, peer, cred, 60000, err)) {
        rc = 1;
        goto out;
    }
    broker_client_set_state(bc, "starting");
    double pub_s = 0;
    /* A restarted updater may be behind the broker: its previous incarnation published versions after
     * the checkpoint it resumed from. Those weights are discarded, so the restored weights become a
     * new, higher version (versions only grow; staleness stays meaningful). */
    const wire_welcome *wel = broker_client_welcome(bc);
    if (loaded && wel && wel->has_weights && wel->newest_version >= u.ps.version) {
        fprintf(stderr, "updater: broker is at version %llu; continuing as version %llu\n",
                (unsigned long long)wel->newest_version, (unsigned long long)wel->newest_version + 1);
        u.ps.version = wel->newest_version + 1;
    }
    /* generators (re)started against a broker that lost its weights must get the current version */
    if (u.ps.version > 0) {
        if (publish(bc, &u.ps, &pub_s, err)) {
            rc = 1;
            goto out;
        }
    }
    /* recover accepted groups that a previous incarnation received but never finished */
    long recovered = 0;
    uint64_t selector_stats_unavailable = 0;
    if (bcfg->replay_path[0]) {
        snprintf(path, sizeof path, "%s/%s", cfg->run_dir, bcfg->replay_path);
        recovered = recover_from_log(path, seen, u.sc);
        fprintf(stderr, "updater: recovered %ld accepted group(s) from the replay log\n", recovered);
    }

    /* hold at most one step of groups beyond the one training: the main thread receives them and
     * the scorers score them while the trainer thread trains, so they are ready when the step ends;
     * holding more only adds staleness (every step held adds one version) */
    int cap = cfg->prompts_per_step;
    long granted_outstanding = 0; /* credit granted, group not yet received */
    double wait_t0 = rlhf_now(), last_group = rlhf_now();
    trainer *tr = NULL;
    if ((rc = trainer_create(&tr, &u, cfg->train_threads, err))) goto out;
    int training = 0;           /* a step is in flight on the trainer thread */
    int held_leftover = 0;      /* groups beyond the step's own in the window when it started */
    long steps_done = u.ps.step; /* u.ps.step as of the last finished step (main thread's copy) */
    scored_group **pending = calloc((size_t)cap + 64, sizeof *pending); /* scored during training */
    int n_pending = 0, cap_pending = cap + 64;
    uint64_t v_before = u.ps.version; /* policy_version when the step in flight started */
    while (training || (!stop_requested(o) && steps_done < cfg->steps)) {
        if (o->reconnect && *o->reconnect && !training) {
            /* a new broker: new session, no credit outstanding, and it needs the current weights */
            *o->reconnect = 0;
            broker_client_close(&bc);
            if ((rc = broker_client_connect_with(&bc, bcfg->endpoint, WIRE_ROLE_UPDATER, peer, cred, 60000, err))) break;
            granted_outstanding = 0;
            last_group = rlhf_now();
            long more = 0;
            if (bcfg->replay_path[0]) {
                snprintf(path, sizeof path, "%s/%s", cfg->run_dir, bcfg->replay_path);
                more = recover_from_log(path, seen, u.sc);
                recovered += more;
            }
            fprintf(stderr, "updater: reconnected to a restarted broker; %ld accepted group(s) recovered from the "
                            "replay log\n", more);
            if (u.ps.version > 0 && (rc = publish(bc, &u.ps, &pub_s, err))) break;
        }
        if (!training && broker_client_stopped(bc)) break;
        int holding = updater_scorer_in_flight(u.sc) + n_pending + (training ? held_leftover : u.n_window);
        long want = stop_requested(o) ? 0 : cap - holding - granted_outstanding;
        if (want > 0) {
            if ((rc = broker_client_grant_credit(bc, (uint32_t)want, err))) break;
            granted_outstanding += want;
        }
        if (!training) broker_client_set_state(bc, "waiting");
        wire_rollout_group g;
        memset(&g, 0, sizeof g);
        /* while a step trains, poll briefly so its end is noticed at once */
        int r = broker_client_recv_group(bc, &g, training ? 2 : 20, err);
        if (r < 0) {
            if (!training && (r == RLHF_ESTATE || broker_client_stopped(bc))) break;
            if (r != RLHF_ESTATE) rlhf_error_print("updater: receive", err);
            rc = 0;
            r = 0;
            if (training) trainer_finished(tr, 5); /* do not spin on a failing socket */
        }
        if (r == 0 && granted_outstanding > 0 && rlhf_now() - last_group > 10.0) {
            /* nothing for a long while: credit may have been lost with a broker that went away */
            granted_outstanding = 0;
            last_group = rlhf_now();
        }
        if (r == 1) {
            last_group = rlhf_now();
            if (granted_outstanding > 0) granted_outstanding--;
            if (seen_before(seen, &g)) {
                wire_rollout_group_free(&g);
            } else {
                mark_seen(seen, &g);
                scored_group *sg = calloc(1, sizeof *sg);
                sg->g = g;
                sg->log_index = UINT64_MAX;
                updater_scorer_submit(u.sc, sg);
            }
        }
        scored_group *sg;
        int ready = 0;
        while ((sg = updater_scorer_take(u.sc, 0)) != NULL) {
            if (!sg->skipped && send_stats(bc, sg, u.n_sources, u.src_names, err))
                rlhf_error_print("updater: prompt stats", err);
            if (training) {
                if (n_pending == cap_pending) {
                    cap_pending *= 2;
                    pending = realloc(pending, sizeof *pending * (size_t)cap_pending);
                }
                pending[n_pending++] = sg;
            } else {
                ready |= updater_session_offer(&u, sg);
            }
        }
        /* a source with on_error "fail" failed, or one failed more than its max_error_rate: training
         * on would learn from a broken reward; stop with the cause (exit class 4, RLHF_EREWARD: a restart
         * fails alike) */
        if (updater_scorer_failed(u.sc, err) || (u.failed && (*err = u.failed_err, 1))) {
            rc = RLHF_EREWARD;
            break;
        }
        if (training) {
            if (!trainer_finished(tr, 0)) continue;
            /* the step is done: publish, metrics, checkpoint, then hand over what was scored meanwhile */
            training = 0;
            json_t *m = tr->metrics;
            tr->metrics = NULL;
            if ((rc = tr->rc)) {
                *err = tr->err;
                break;
            }
            steps_done = u.ps.step;
            if (u.ps.version != v_before) {
                if ((rc = publish(bc, &u.ps, &pub_s, err))) {
                    json_decref(m);
                    break;
                }
                json_object_set_new(m, "time/publish_s", json_real(pub_s));
            }
            json_object_set_new(m, "recovered_groups", json_integer(recovered));
            if (updater_dist_size(dist) > 1)
                json_object_set_new(m, "scoring/remote_groups", json_integer(updater_scorer_remote_groups(u.sc)));
            add_selector_metrics(bc, m, &selector_stats_unavailable);
            json_object_set_new(m, "supervision/restarts", json_integer(count_restarts(cfg->run_dir)));
            if ((rc = updater_session_write_metrics(&u, m, err))) {
                json_decref(m);
                break;
            }
            json_decref(m);
            if (u.ps.step % cfg->checkpoint_every == 0 || u.ps.step == cfg->steps)
                if ((rc = updater_checkpoint(&u, err))) break;
            wait_t0 = rlhf_now();
            for (int i = 0; i < n_pending; i++) ready |= updater_session_offer(&u, pending[i]);
            n_pending = 0;
            if (u.failed) {
                *err = u.failed_err;
                rc = RLHF_EREWARD;
                break;
            }
            ready |= u.n_window >= cfg->prompts_per_step;
        }
        if (stop_requested(o) || steps_done >= cfg->steps) continue;
        /* leftovers (e.g. groups recovered from the log) may already fill the next step */
        if (!ready && u.n_window < cfg->prompts_per_step) continue;
        /* start one optimizer step on the trainer thread */
        u.wait_seconds += rlhf_now() - wait_t0;
        u.queue_depth = updater_scorer_in_flight(u.sc);
        broker_client_set_state(bc, "training");
        v_before = u.ps.version;
        held_leftover = u.n_window > cfg->prompts_per_step ? u.n_window - cfg->prompts_per_step : 0;
        training = 1;
        trainer_start(tr);
    }
    if (training) {
        /* an error on the main thread while a step was in flight: let it finish (it owns the session) */
        while (!trainer_finished(tr, 100)) {
        }
        json_decref(tr->metrics);
        tr->metrics = NULL;
        if (tr->rc == 0) steps_done = u.ps.step;
    }
    trainer_destroy(&tr);
    /* the launcher names this line as the cause of a run that ended early */
    if (bc && broker_client_stopped(bc) && u.ps.step < cfg->steps)
        fprintf(stderr, "updater: the broker said stop (%s) at step %ld of %d\n", broker_client_stop_reason(bc), u.ps.step,
                cfg->steps);
    for (int i = 0; i < n_pending; i++) updater_scored_group_free(pending[i]);
    free(pending);
    if (rc == 0 && updater_latest_checkpoint_step(cfg->run_dir) != u.ps.step) rc = updater_checkpoint(&u, err);
    if (!rc)
        fprintf(stderr, "updater: %s at step %ld (policy_version %llu)\n",
                u.ps.step >= cfg->steps ? "finished" : "stopped", u.ps.step, (unsigned long long)u.ps.version);
out:
    broker_client_close(&bc);
    if (u.consumed_log) fclose(u.consumed_log);
    u.consumed_log = NULL;
    if (u.scores_log) fclose(u.scores_log);
    u.scores_log = NULL;
    json_decref(seen);
    updater_session_fini(&u);
    run_process_close(&proc);
    if (rc == 0) return RLHF_EXIT_OK;
    if (rc == 2) return start_failure_status(err);
    int st = rlhf_exit_status(err);
    return st == RLHF_EXIT_OK ? RLHF_EXIT_TRANSIENT : st;
}
