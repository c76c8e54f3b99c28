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

/* Applies the newest weights the broker fanned out, if any arrived (waits up to timeout_ms). */
static int take_weights(broker_client *bc, model *m, int timeout_ms, rlhf_error *err) {
    wire_weights w;
    memset(&w, 0, sizeof w);
    int r = broker_client_poll_weights(bc, &w, timeout_ms, err);
    if (r <= 0) return r;
    int rc = 0;
    if (w.version > m->version || m->version == 0) rc = run_weights_apply(m, &w, err);
    wire_weights_free(&w);
    return rc ? rc : 1;
}

int generator_main(const generator_options *o, rlhf_error *err) {
    run_process proc;
    if (run_process_open(&proc, o->config_path, WIRE_ROLE_GENERATOR, err)) return 2;
    const run_config *cfg = &proc.cfg;
    const broker_config *bcfg = &proc.broker;
    int id = o->id;
    model *m = NULL;
    tokenizer *tok = NULL;
    sampler *smp = NULL;
    broker_client *bc = NULL;
    int rc = 0;
    if ((rc = run_load_base(cfg, &m, err))) goto out;
    m->version = bcfg->initial_version;
    if ((rc = tokenizer_create_bytes(&tok, m->cfg.vocab_size, err))) goto out;
    int per_batch = cfg->gen_batch;
    if (cfg->mode == RUN_MODE_SYNC) per_batch = (cfg->prompts_per_step + cfg->gen_count - 1) / cfg->gen_count;
    int slots = per_batch * cfg->k;
    if (slots > 256) slots = 256;
    sampler_options so = {.max_batch = slots, .weights = cfg->gen_weights};
    if ((rc = sampler_create_with(&smp, m, &so, err))) goto out;

    /* the pid makes ids unique across restarts, so (generator_id, seq) names one group for good */
    char peer[64];
    snprintf(peer, sizeof peer, "generator-%d.%d", id, (int)getpid());
    if ((rc = broker_client_connect(&bc, bcfg->endpoint, WIRE_ROLE_GENERATOR, peer, 60000, err))) goto out;
    broker_client_wake_on_weights(bc, 1); /* take new weights while a prompt request waits (max_generation_lag) */
    fprintf(stderr, "generator %s: connected to %s, %s mode, %d prompt(s) x k=%d per batch, %s weights, %s kernels\n",
            peer, bcfg->endpoint, cfg->mode == RUN_MODE_SYNC ? "sync" : "async", per_batch, cfg->k,
            sampler_weights_name(cfg->gen_weights), sampler_kernels_name(smp));
    /* a restarted generator joins at the newest version: the broker sends it right after WELCOME */
    const wire_welcome *wel = broker_client_welcome(bc);
    if (wel && wel->has_weights) {
        if ((rc = take_weights(bc, m, 5000, err)) < 0) goto out;
        rc = 0;
    }
    gen_params gp = {.k = cfg->k, .temperature = cfg->temperature, .top_p = cfg->top_p, .max_tokens = cfg->max_tokens,
                     .seed = cfg->seed * 7919u + (uint64_t)id * 104729u + (uint64_t)getpid()};
    uint64_t seq = 0;
    long sampled_version = -1; /* sync: the version whose quota is done */
    int quota_left = per_batch;
    double tok_total = 0, t_start = rlhf_now();
    while (!(o->stop && *o->stop)) {
        if (o->reconnect && *o->reconnect) {
            *o->reconnect = 0;
            broker_client_close(&bc);
            if ((rc = broker_client_connect(&bc, bcfg->endpoint, WIRE_ROLE_GENERATOR, peer, 60000, err))) goto out;
            broker_client_wake_on_weights(bc, 1);
            fprintf(stderr, "generator %s: reconnected to a restarted broker\n", peer);
        }
        if (broker_client_stopped(bc)) break;
        int r = take_weights(bc, m, 0, err);
        if (r < 0) {
            rlhf_error_print("generator: weights (ignored)", err);
        }
        if (cfg->mode == RUN_MODE_SYNC) {
            if ((long)m->version == sampled_version) {
                /* synchronous baseline: wait for the updater's next version */
                broker_client_set_state(bc, "waiting_for_weights");
                r = take_weights(bc, m, 500, err);
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
out:
    broker_client_close(&bc);
    sampler_destroy(&smp);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    run_process_close(&proc);
    return rc ? 1 : 0;
}
