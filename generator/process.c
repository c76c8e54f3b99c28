/* generator/process.c — generator_main, the body of a trajectory generator process (`rlhf generator
 * --config RUN_DIR/config.json --id N`, also `rlhf-generator`; the command line is
 * generator/generator_cli.c). See generator/generator.h. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/broker.h"
#include "generator/generator.h"
#include "run/run.h"

/* The policy this generator samples with: m. With model.lora also the base weights and the adapter set:
 * every version carries adapters alone, and m becomes base + adapters (merged once per version, so
 * sampling costs what it costs without LoRA). */
typedef struct gen_policy {
    model *m;
    model *base;
    model_lora *lora;
} gen_policy;

static int policy_apply(gen_policy *p, const wire_weights *w, rlhf_error *err) {
    if (!p->lora) return run_weights_apply(p->m, w, err);
    double t0 = rlhf_now();
    int rc = run_weights_apply_lora(p->m, p->base, p->lora, w, err);
    /* the version and content hash applied, so a run's log proves which adapters sampled which version */
    if (!rc)
        fprintf(stderr, "generator: applied LoRA adapters of version %llu: %llu bytes, content hash %s, merged in %.1f ms\n",
                (unsigned long long)w->version, (unsigned long long)w->nbytes, w->content_hash, 1e3 * (rlhf_now() - t0));
    return rc;
}

/* Applies the newest weights the broker fanned out, if any arrived (waits up to timeout_ms). */
static int take_weights(broker_client *bc, gen_policy *pol, int timeout_ms, rlhf_error *err) {
    model *m = pol->m;
    wire_weights w;
    memset(&w, 0, sizeof w);
    uint64_t failed_before = 0, failed = 0;
    broker_client_weights_shm(bc, &failed_before, NULL);
    int r = broker_client_poll_weights(bc, &w, timeout_ms, err);
    rlhf_error why;
    uint64_t via_shm = broker_client_weights_shm(bc, &failed, &why);
    if (failed != failed_before) /* the broker now sends this generator the bytes; say why, once per failure */
        fprintf(stderr, "generator: the weights file could not be used (%llu so far), the bytes come over ZeroMQ: "
                "%s: %s\n", (unsigned long long)failed, why.where, why.msg);
    if (r <= 0) return r;
    /* from a shared-memory file the blob is in the client's kept buffer (read there, checked): copied into
     * the parameters before the next poll */
    int rc = 0;
    if (w.version > m->version || m->version == 0) rc = policy_apply(pol, &w, err);
    if (!rc && via_shm == 1) /* the first one: say which path weights take */
        fprintf(stderr, "generator: weights come through a shared-memory file (broker.weights_shm), from version %llu\n",
                (unsigned long long)w.version);
    wire_weights_free(&w);
    return rc ? rc : 1;
}

/* ---------------------------------------------------------------- the streaming loop (async mode)
 *
 * The sampler keeps its slots full across prompt batches: once every request of the prompts in hand is
 * admitted and a slot is free, the next batch is asked for without waiting (one request in flight; the
 * broker answers it while decoding goes on), and a group is pushed as soon as its k completions are
 * done. New weights are taken between forward steps (generators.inflight_updates), so a sequence may
 * finish under a newer version than it started with: every token's behaviour log-prob is the one of the
 * weights that sampled it, every token records that version (the group's token_versions), and the
 * group carries the OLDEST version any of its tokens saw (the version when its first sample was
 * admitted), the one the broker's staleness bound reads. generators.inflight_kv says whether a running
 * sequence keeps its KV cache across new weights or recomputes it under them. With inflight_updates
 * false, a new version waits until the sequences in flight end (no new one starts meanwhile). */

typedef struct pending_prompt pending_prompt;
typedef struct sample_tag {
    pending_prompt *pp;
    int j; /* which of its k samples */
} sample_tag;

struct pending_prompt {
    wire_prompt p;            /* owned copies */
    int32_t *pids;
    int plen;
    sample_request *reqs;     /* (k); reqs[j].user = &tags[j] */
    sample_result *res;       /* (k) */
    sample_tag *tags;         /* (k) */
    guided_matcher **gm;      /* (k) task.guided: each sample's matcher */
    int admitted, done;
    uint64_t seq, version;    /* version: when its first sample was admitted */
};

typedef struct stream_ctx {
    model *m;
    gen_policy *pol;
    const tokenizer *tok;
    broker_client *bc;
    const gen_params *gp;
    const char *peer;
    int per_batch;
    volatile const sig_atomic_t *stop;
    pending_prompt **q;       /* prompts in hand, in arrival order; q[0..nq) */
    int nq, capq;
    uint64_t *seq;            /* the process's next group sequence number */
    double *tok_total;
    uint64_t last_version;    /* m->version at the last weights check */
    sampler_spec_stats spec_last; /* the drafter's counters when the previous group was pushed */
    double last_push;         /* when the stream started or last completed a group */
    int prompt_errors;
    int asked_this_step;      /* the broker was polled for prompts since the last forward step */
    /* generators.inflight_updates = false: a version that arrived while sequences were decoding waits
     * here; no new sequence starts until those in flight end, then it is applied */
    int inflight_updates;
    int held;
    wire_weights held_w;
} stream_ctx;

/* Sequences admitted to the sampler and not yet done, over the prompts in hand. */
static int stream_in_flight(const stream_ctx *c) {
    int n = 0;
    for (int i = 0; i < c->nq; i++) n += c->q[i]->admitted - c->q[i]->done;
    return n;
}

static void pending_free(pending_prompt *pp, int k) {
    if (!pp) return;
    for (int j = 0; j < k && pp->res; j++) sample_result_free(&pp->res[j]);
    free(pp->res);
    free(pp->reqs);
    free(pp->tags);
    for (int j = 0; j < k && pp->gm; j++) guided_matcher_destroy(&pp->gm[j]);
    free(pp->gm);
    free(pp->pids);
    free(pp->p.id);
    free(pp->p.text);
    json_decref(pp->p.record);
    free(pp);
}

/* Appends the prompts of pb to the queue (copies; pb stays the caller's). */
static int stream_take_batch(stream_ctx *c, const wire_prompt_batch *pb, rlhf_error *err) {
    int k = c->gp->k;
    for (uint32_t i = 0; i < pb->n; i++) {
        if (c->nq == c->capq) {
            int cap = c->capq ? 2 * c->capq : 16;
            pending_prompt **nq = realloc(c->q, (size_t)cap * sizeof *nq);
            if (!nq) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
            c->q = nq;
            c->capq = cap;
        }
        pending_prompt *pp = calloc(1, sizeof *pp);
        if (!pp) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        pp->p.id = strdup(pb->prompts[i].id);
        pp->p.text = strdup(pb->prompts[i].text);
        pp->p.index = pb->prompts[i].index;
        pp->p.record = pb->prompts[i].record ? json_incref(pb->prompts[i].record) : NULL;
        pp->reqs = calloc((size_t)k, sizeof *pp->reqs);
        pp->res = calloc((size_t)k, sizeof *pp->res);
        pp->tags = calloc((size_t)k, sizeof *pp->tags);
        pp->gm = calloc((size_t)k, sizeof *pp->gm);
        pp->seq = (*c->seq)++;
        int rc = !pp->p.id || !pp->p.text || !pp->reqs || !pp->res || !pp->tags || !pp->gm
                     ? RLHF_FAIL(err, RLHF_ENOMEM, "out of memory")
                     : generator_prompt_requests(c->m, c->tok, &pp->p, c->gp, pp->seq, &pp->pids, &pp->plen,
                                                 pp->reqs, pp->gm, err);
        if (rc) {
            pending_free(pp, k);
            return rc;
        }
        for (int j = 0; j < k; j++) {
            pp->tags[j] = (sample_tag){pp, j};
            pp->reqs[j].user = &pp->tags[j];
        }
        c->q[c->nq++] = pp;
    }
    return 0;
}

static int stream_next(void *ctx, sample_request *req, rlhf_error *err) {
    stream_ctx *c = ctx;
    if (c->held) return 0; /* draining for a held version */
    int k = c->gp->k, open = 0;
    while (open < c->nq && c->q[open]->admitted == k) open++;
    if (open == c->nq) {
        /* everything in hand is admitted and a slot is free: ask for the next batch without waiting */
        if ((c->stop && *c->stop) || broker_client_stopped(c->bc) || c->asked_this_step) return 0;
        c->asked_this_step = 1; /* once per step, not once per free slot */
        wire_prompt_batch pb;
        memset(&pb, 0, sizeof pb);
        rlhf_error perr = {0};
        int r = broker_client_request_prompts(c->bc, (uint32_t)c->per_batch, &pb, 0, &perr);
        if (r < 0) {
            if (r != RLHF_ETIMEOUT && !c->prompt_errors++) rlhf_error_print("generator: prompts", &perr);
            return 0; /* nothing now; the outer loop handles a lasting failure once the slots drain */
        }
        r = stream_take_batch(c, &pb, err);
        wire_prompt_batch_free(&pb);
        if (r) return r;
        if (open == c->nq) return 0;
    }
    pending_prompt *pp = c->q[open];
    if (pp->admitted == 0) pp->version = c->m->version;
    *req = pp->reqs[pp->admitted++];
    return 1;
}

static int stream_done(void *ctx, const sample_request *req, long index, sample_result *res, rlhf_error *err) {
    (void)index;
    stream_ctx *c = ctx;
    int k = c->gp->k;
    const sample_tag *tag = req->user;
    pending_prompt *pp = tag->pp;
    pp->res[tag->j] = *res;
    if (++pp->done < k) return 0;
    /* the group is complete: push it now and drop the prompt from the queue */
    wire_rollout_group g;
    /* gen_seconds: the sampling time since the previous group was completed, so that the groups' times
     * add up to the generator's sampling time, as a batch's time divided among its groups does */
    double now = rlhf_now();
    double gen_seconds = now - c->last_push;
    c->last_push = now;
    if (generator_group_fill(&g, &pp->p, pp->pids, pp->plen, pp->res, c->gp, c->peer, pp->seq, pp->version,
                             gen_seconds)) {
        wire_rollout_group_free(&g);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for a rollout group");
    }
    if (c->gp->spec) { /* the drafter's counters since the previous group, as gen_seconds */
        sampler_spec_stats now_st;
        sampler_spec_get_stats(c->gp->spec, &now_st);
        generator_group_spec_counters(&g, &c->spec_last, &now_st);
        c->spec_last = now_st;
    }
    *c->tok_total += (double)wire_rollout_group_total_tokens(&g);
    rlhf_error perr = {0};
    if (broker_client_push_group(c->bc, &g, &perr)) rlhf_error_print("generator: push", &perr);
    wire_rollout_group_free(&g);
    for (int i = 0; i < c->nq; i++)
        if (c->q[i] == pp) {
            memmove(c->q + i, c->q + i + 1, (size_t)(c->nq - i - 1) * sizeof *c->q);
            c->nq--;
            break;
        }
    pending_free(pp, k);
    return 0;
}

/* Between forward steps: the newest weights, if any arrived (never waits). 1 = the weights changed. */
static int stream_before_step(void *ctx, rlhf_error *err) {
    (void)err;
    stream_ctx *c = ctx;
    c->asked_this_step = 0;
    rlhf_error werr = {0};
    if (!c->inflight_updates) {
        if (!c->held) {
            memset(&c->held_w, 0, sizeof c->held_w);
            int r = broker_client_poll_weights(c->bc, &c->held_w, 0, &werr);
            if (r < 0) rlhf_error_print("generator: weights (ignored)", &werr);
            c->held = r > 0 && (c->held_w.version > c->m->version || c->m->version == 0);
            if (r > 0 && !c->held) wire_weights_free(&c->held_w);
        } /* while one is held, a newer one waits in the client (it keeps the newest) */
        if (c->held && stream_in_flight(c) == 0) {
            if (policy_apply(c->pol, &c->held_w, &werr)) rlhf_error_print("generator: weights (ignored)", &werr);
            wire_weights_free(&c->held_w);
            c->held = 0;
        }
    } else if (take_weights(c->bc, c->pol, 0, &werr) < 0)
        rlhf_error_print("generator: weights (ignored)", &werr);
    if (c->m->version == c->last_version) return 0;
    c->last_version = c->m->version;
    return 1;
}

static int connect_broker(broker_client **bc, const char *endpoint, const char *peer, const broker_credential *key,
                          const char *cred, rlhf_error *err) {
    if (key) return broker_client_connect_cred(bc, endpoint, WIRE_ROLE_GENERATOR, peer, key, 60000, err);
    return broker_client_connect_with(bc, endpoint, WIRE_ROLE_GENERATOR, peer, cred, 60000, err);
}

int generator_main(const generator_options *o, rlhf_error *err) {
    run_process proc;
    /* the run config is unreadable or invalid: the same at every restart */
    if (run_process_open(&proc, o->config_path, WIRE_ROLE_GENERATOR, err))
        return rlhf_exit_status(err) == RLHF_EXIT_ENV ? RLHF_EXIT_ENV : RLHF_EXIT_CONFIG;
    const run_config *cfg = &proc.cfg;
    const broker_config *bcfg = &proc.broker;
    broker_credential key; /* --key/--server-key: this host's own key pair instead of the run's credentials */
    memset(&key, 0, sizeof key);
    if (o->key_file) { /* a key that cannot be used is the same at every restart: a config error */
        const char *ep = o->endpoint ? o->endpoint : bcfg->endpoint;
        int krc = strncmp(ep, "tcp://", 6) != 0
                      ? rlhf_error_set(err, RLHF_EINVAL, ep, "--key needs a tcp:// broker endpoint (CURVE)")
                      : broker_credential_load_files(&key, WIRE_ROLE_GENERATOR, o->key_file, o->server_key_file, err);
        if (krc) {
            run_process_close(&proc);
            return RLHF_EXIT_CONFIG;
        }
    }
    int id = o->id;
    model *m = NULL;
    tokenizer *tok = NULL;
    sampler *smp = NULL, *draft_s = NULL;
    model *draft_m = NULL;
    sampler_spec *spec = NULL;
    broker_client *bc = NULL;
    guided_grammar *guided = NULL;
    guided_vocab *gvocab = NULL;
    int rc = 0;
    gen_policy pol = {0};
    if ((rc = run_load_base(cfg, &m, err))) goto out;
    m->version = bcfg->initial_version;
    pol.m = m;
    if (cfg->lora.rank) { /* model.lora: keep the base; versions bring adapters */
        if ((rc = model_create(&pol.base, &m->cfg, err)) || (rc = model_copy_weights(pol.base, m, err)) ||
            (rc = model_lora_create(&pol.lora, m, &cfg->lora, err)))
            goto out;
    }
    if ((rc = run_load_tokenizer(cfg, m, &tok, err))) goto out;
    int per_batch = cfg->gen_batch;
    if (cfg->mode == RUN_MODE_SYNC) per_batch = (cfg->prompts_per_step + cfg->gen_count - 1) / cfg->gen_count;
    int slots = per_batch * cfg->k;
    if (slots > 256) slots = 256;
    sampler_options so = {.max_batch = slots, .weights = cfg->gen_weights};
    if ((rc = sampler_create_with(&smp, m, &so, err))) goto out;

    /* the pid makes ids unique across restarts, so (generator_id, seq) names one group for good */
    char peer[64];
    snprintf(peer, sizeof peer, "generator-%d.%d", id, (int)getpid());
    char cred[4200]; /* the launcher's credentials for this run (docs/BROKER.md "Authentication") */
    snprintf(cred, sizeof cred, "%s/%s", cfg->run_dir, BROKER_CREDENTIALS_DIR);
    if (o->credentials) snprintf(cred, sizeof cred, "%s", o->credentials);
    const char *endpoint = o->endpoint ? o->endpoint : bcfg->endpoint;
    if ((rc = connect_broker(&bc, endpoint, peer, o->key_file ? &key : NULL, cred, err))) goto out;
    broker_client_wake_on_weights(bc, 1); /* take new weights while a prompt request waits (max_generation_lag) */
    fprintf(stderr, "generator %s: connected to %s, %s mode, %d prompt(s) x k=%d per batch, %s weights, %s kernels\n",
            peer, endpoint, cfg->mode == RUN_MODE_SYNC ? "sync" : "async", per_batch, cfg->k,
            sampler_weights_name(cfg->gen_weights), sampler_kernels_name(smp));
    /* a restarted generator joins at the newest version: the broker sends it right after WELCOME */
    const wire_welcome *wel = broker_client_welcome(bc);
    if (wel && wel->has_weights) {
        if ((rc = take_weights(bc, &pol, 5000, err)) < 0) goto out;
        rc = 0;
    }
    gen_params gp;
    generator_params_from_config(cfg, &gp);
    if (cfg->gen_spec.kind != SAMPLER_SPEC_OFF) { /* generators.speculative */
        sampler_spec_options spo = cfg->gen_spec;
        if (spo.kind == SAMPLER_SPEC_DRAFT_MODEL) {
            model_load_options lo = {.max_seq_len = m->cfg.max_seq_len};
            if ((rc = model_load_with(&draft_m, cfg->gen_draft_checkpoint, &lo, err))) goto out;
            sampler_options dso = {.max_batch = slots, .weights = cfg->gen_weights};
            if ((rc = sampler_create_with(&draft_s, draft_m, &dso, err))) goto out;
            spo.draft = draft_s;
        }
        if ((rc = sampler_spec_create(&spec, &spo, err))) goto out;
        gp.spec = spec;
        fprintf(stderr, "generator %s: speculative decoding, drafter %s, gamma %d%s\n", peer,
                sampler_spec_kind_name(spo.kind), spo.gamma, spo.adaptive ? " (adaptive)" : "");
    }
    gp.seed = cfg->seed * 7919u + (uint64_t)id * 104729u + (uint64_t)getpid();
    if (cfg->guided) { /* task.guided: one grammar for the run, its masks cached as sampling goes */
        if ((rc = guided_compile_spec(&guided, cfg->guided, "task.guided", err)) ||
            (rc = guided_vocab_create(&gvocab, tok, err)))
            goto out;
        gp.guided = guided;
        gp.guided_vocab = gvocab;
    }
    uint64_t seq = 0;
    long sampled_version = -1; /* sync: the version whose quota is done */
    int quota_left = per_batch;
    double tok_total = 0, t_start = rlhf_now();
    while (!(o->stop && *o->stop)) {
        if (o->reconnect && *o->reconnect) {
            *o->reconnect = 0;
            broker_client_close(&bc);
            if ((rc = connect_broker(&bc, endpoint, peer, o->key_file ? &key : NULL, cred, err))) goto out;
            broker_client_wake_on_weights(bc, 1);
            fprintf(stderr, "generator %s: reconnected to a restarted broker\n", peer);
        }
        if (broker_client_stopped(bc)) break;
        int r = take_weights(bc, &pol, 0, err);
        if (r < 0) {
            rlhf_error_print("generator: weights (ignored)", err);
        }
        if (cfg->mode == RUN_MODE_SYNC) {
            if ((long)m->version == sampled_version) {
                /* synchronous baseline: wait for the updater's next version */
                broker_client_set_state(bc, "waiting_for_weights");
                r = take_weights(bc, &pol, 500, err);
                if (r < 0) rlhf_error_print("generator: weights (ignored)", err);
                continue;
            }
        }
        int want = cfg->mode == RUN_MODE_SYNC ? quota_left : per_batch;
        broker_client_set_state(bc, "requesting");
        wire_prompt_batch pb;
        memset(&pb, 0, sizeof pb);
        r = broker_client_request_prompts(bc, (uint32_t)want, &pb, 1000, err);
        if (r == RLHF_ETIMEOUT) continue;
        if (r < 0) {
            if (broker_client_stopped(bc) || r == RLHF_ESTATE) break;
            rlhf_error_print("generator: prompts", err);
            usleep(200000);
            continue;
        }
        if (pb.n == 0) {
            wire_prompt_batch_free(&pb);
            continue;
        }
        broker_client_set_state(bc, "generating");
        if (cfg->mode == RUN_MODE_ASYNC) {
            stream_ctx sc = {.m = m, .pol = &pol, .tok = tok, .bc = bc, .gp = &gp, .peer = peer, .per_batch = per_batch,
                             .stop = o->stop, .seq = &seq, .tok_total = &tok_total, .last_version = m->version,
                             .last_push = rlhf_now(), .inflight_updates = cfg->gen_inflight_updates};
            rc = stream_take_batch(&sc, &pb, err);
            wire_prompt_batch_free(&pb);
            sampler_source src = {.ctx = &sc, .next = stream_next, .done = stream_done,
                                  .before_step = stream_before_step,
                                  .recompute_on_new_weights = cfg->gen_inflight_recompute};
            sampler_spec_get_stats(gp.spec, &sc.spec_last);
            if (!rc) rc = sampler_run_stream_spec(smp, gp.spec, tok, &src, err);
            if (sc.held) { /* the stream ended while draining (a stop): the version is applied next round */
                rlhf_error werr = {0};
                if (policy_apply(&pol, &sc.held_w, &werr)) rlhf_error_print("generator: weights (ignored)", &werr);
                wire_weights_free(&sc.held_w);
            }
            for (int i = 0; i < sc.nq; i++) pending_free(sc.q[i], cfg->k); /* left only after an error */
            free(sc.q);
            if (rc) goto out;
            continue;
        }
        wire_rollout_group *groups = calloc(pb.n, sizeof *groups);
        rc = generator_sample_groups(m, smp, tok, pb.prompts, (int)pb.n, &gp, peer, seq, groups, err);
        if (rc) {
            free(groups);
            wire_prompt_batch_free(&pb);
            goto out;
        }
        seq += pb.n;
        for (uint32_t i = 0; i < pb.n; i++) {
            tok_total += (double)wire_rollout_group_total_tokens(&groups[i]);
            if (broker_client_push_group(bc, &groups[i], err)) rlhf_error_print("generator: push", err);
            wire_rollout_group_free(&groups[i]);
        }
        free(groups);
        if (cfg->mode == RUN_MODE_SYNC) {
            quota_left -= (int)pb.n;
            if (quota_left <= 0) {
                sampled_version = (long)m->version;
                quota_left = per_batch;
            }
        }
        wire_prompt_batch_free(&pb);
    }
    fprintf(stderr, "generator %s: stopping after %llu groups, %.0f tokens (%.0f tok/s)\n", peer,
            (unsigned long long)seq, tok_total, tok_total / (rlhf_now() - t_start + 1e-9));
    if (spec) {
        sampler_spec_stats ss;
        sampler_spec_get_stats(spec, &ss);
        fprintf(stderr, "generator %s: speculative decoding: %llu of %llu draft tokens kept (%.2f), %.2f tokens per "
                "verify step\n", peer, (unsigned long long)ss.accepted, (unsigned long long)ss.drafted,
                ss.drafted ? (double)ss.accepted / (double)ss.drafted : 0.0,
                ss.verifies ? (double)ss.spec_tokens / (double)ss.verifies : 0.0);
    }
out:
    guided_grammar_destroy(&guided);
    guided_vocab_destroy(&gvocab);
    broker_client_close(&bc);
    broker_credential_clear(&key);
    sampler_spec_destroy(&spec);
    sampler_destroy(&draft_s);
    model_destroy(&draft_m);
    sampler_destroy(&smp);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    model_destroy(&pol.base);
    model_lora_destroy(&pol.lora);
    run_process_close(&proc);
    if (!rc) return RLHF_EXIT_OK;
    int st = rlhf_exit_status(err); /* the class of the failure tells the launcher whether to restart */
    return st == RLHF_EXIT_OK ? RLHF_EXIT_TRANSIENT : st;
}
