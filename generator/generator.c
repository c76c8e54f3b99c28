/* generator/generator.c — sampling rollout groups, and moving weights between a model and WEIGHTS
 * messages. */
#include <stdlib.h>
#include <string.h>

#include "generator/generator.h"
#include "run/run.h"

static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

void generator_params_from_config(const run_config *cfg, gen_params *gp) {
    memset(gp, 0, sizeof *gp);
    gp->k = cfg->k;
    gp->temperature = cfg->temperature;
    gp->top_p = cfg->top_p;
    gp->top_k = cfg->top_k;
    gp->min_p = cfg->min_p;
    gp->max_tokens = cfg->max_tokens;
    gp->stop = (const char *const *)cfg->stop;
    gp->n_stop = cfg->n_stop;
    gp->include_stop = cfg->include_stop;
    gp->policy_logprobs = cfg->behaviour_logprobs == RUN_BEHAVIOUR_POLICY;
}

int generator_prompt_requests(const model *m, const tokenizer *tok, const wire_prompt *p, const gen_params *gp,
                              uint64_t seq, int32_t **pids, int *plen, sample_request *reqs, guided_matcher **gm,
                              rlhf_error *err) {
    int rc = tokenizer_encode(tok, p->text, strlen(p->text), 1, pids, plen, err);
    if (rc) return rc;
    int room = m->cfg.max_seq_len - *plen;
    if (room < 1) {
        rc = rlhf_error_set(err, RLHF_EINVAL, p->id, "prompt is %d tokens, model max_seq_len is %d", *plen,
                            m->cfg.max_seq_len);
        free(*pids);
        *pids = NULL;
        return rc;
    }
    for (int j = 0; j < gp->k; j++) {
        sample_request *r = &reqs[j];
        r->prompt = *pids;
        r->prompt_len = *plen;
        r->params = sample_params_default();
        r->params.temperature = gp->temperature;
        r->params.top_p = gp->top_p;
        r->params.top_k = gp->top_k;
        r->params.min_p = gp->min_p;
        r->params.max_new_tokens = gp->max_tokens < room ? gp->max_tokens : room;
        r->params.seed = gp->seed ^ mix64(seq * 1000003ull + (uint64_t)j);
        r->params.stop_ids = tok->eos_ids;
        r->params.n_stop_ids = tok->n_eos_ids;
        r->params.stop_strings = gp->n_stop ? gp->stop : NULL;
        r->params.n_stop_strings = gp->n_stop;
        r->params.include_stop = gp->include_stop;
        if (gp->guided) {
            if ((rc = guided_matcher_create(&gm[j], gp->guided, gp->guided_vocab, err))) {
                free(*pids);
                *pids = NULL;
                return rc;
            }
            r->params.constraint = guided_matcher_constraint(gm[j]);
        }
    }
    return 0;
}

int generator_group_fill(wire_rollout_group *g, const wire_prompt *p, const int32_t *pids, int plen,
                         const sample_result *res, const gen_params *gp, const char *generator_id, uint64_t seq,
                         uint64_t policy_version, double gen_seconds) {
    int k = gp->k;
    memset(g, 0, sizeof *g);
    g->prompt_id = strdup(p->id);
    g->prompt_text = strdup(p->text);
    g->prompt_record = p->record ? json_incref(p->record) : NULL;
    g->generator_id = strdup(generator_id);
    g->seq = seq;
    g->policy_version = policy_version;
    g->k = (uint32_t)k;
    g->n_prompt_tokens = (uint32_t)plen;
    g->prompt_tokens = malloc(sizeof(int32_t) * (size_t)(plen ? plen : 1));
    g->n_tokens = calloc((size_t)k, sizeof(uint32_t));
    g->finish = calloc((size_t)k, 1);
    /* The texts go with the group: only the generator has the tokenizer that decoded them and knows
     * where a stop string cut them (the token ids run on to the end of the token that completed it).
     * JSON metadata carries only valid UTF-8, so invalid bytes arrive as U+FFFD, as the updater's own
     * decoding of byte ids would give them. */
    g->texts = calloc((size_t)k, sizeof *g->texts);
    for (int j = 0; j < k && g->texts; j++)
        if (!(g->texts[j] = rlhf_utf8_sanitize(res[j].text ? res[j].text : "", res[j].text ? res[j].text_len : 0)))
            return RLHF_ENOMEM;
    size_t total = 0;
    for (int j = 0; j < k; j++) total += (size_t)res[j].n_tokens;
    g->tokens = malloc(sizeof(int32_t) * (total ? total : 1));
    g->logprobs = malloc(sizeof(float) * (total ? total : 1));
    /* each token's version (weights taken between decode steps); the wire sends it only where it is not
     * policy_version */
    g->token_versions = malloc(sizeof(uint64_t) * (total ? total : 1));
    if (!g->prompt_id || !g->prompt_text || !g->generator_id || !g->prompt_tokens || !g->n_tokens || !g->finish ||
        !g->texts || !g->tokens || !g->logprobs || !g->token_versions)
        return RLHF_ENOMEM;
    memcpy(g->prompt_tokens, pids, sizeof(int32_t) * (size_t)plen);
    size_t off = 0;
    for (int j = 0; j < k; j++) {
        const sample_result *r = &res[j];
        g->n_tokens[j] = (uint32_t)r->n_tokens;
        memcpy(g->tokens + off, r->tokens, sizeof(int32_t) * (size_t)r->n_tokens);
        /* the behaviour log-prob: log q by default (the ratio's mu must be what was sampled from) */
        memcpy(g->logprobs + off, gp->policy_logprobs ? r->logprobs : r->sampling_logprobs,
               sizeof(float) * (size_t)r->n_tokens);
        for (int t = 0; t < r->n_tokens; t++)
            g->token_versions[off + t] = r->versions ? r->versions[t] : policy_version;
        off += (size_t)r->n_tokens;
        g->finish[j] = r->finish == SAMPLE_FINISH_STOP ? WIRE_FINISH_STOP : WIRE_FINISH_LENGTH;
    }
    g->gen_seconds = gen_seconds;
    g->created_at = rlhf_wall_time();
    return 0;
}

void generator_group_spec_counters(wire_rollout_group *g, const sampler_spec_stats *before,
                                   const sampler_spec_stats *after) {
    g->spec_drafted = after->drafted - before->drafted;
    g->spec_accepted = after->accepted - before->accepted;
    g->spec_verifies = after->verifies - before->verifies;
    g->spec_tokens = after->spec_tokens - before->spec_tokens;
}

int generator_sample_groups(model *m, sampler *s, const tokenizer *tok, const wire_prompt *prompts, int n,
                            const gen_params *gp, const char *generator_id, uint64_t seq0, wire_rollout_group *groups,
                            rlhf_error *err) {
    int k = gp->k, R = n * k, rc = 0;
    sample_request *reqs = calloc((size_t)R, sizeof *reqs);
    sample_result *res = calloc((size_t)R, sizeof *res);
    int32_t **pids = calloc((size_t)n, sizeof *pids);
    int *plen = calloc((size_t)n, sizeof *plen);
    guided_matcher **gm = calloc((size_t)R, sizeof *gm);
    if (!reqs || !res || !pids || !plen || !gm) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto done;
    }
    double t0 = rlhf_now();
    for (int i = 0; i < n; i++)
        if ((rc = generator_prompt_requests(m, tok, &prompts[i], gp, seq0 + (uint64_t)i, &pids[i], &plen[i],
                                            &reqs[i * k], &gm[i * k], err)))
            goto done;
    sampler_spec_stats before, after;
    sampler_spec_get_stats(gp->spec, &before);
    if ((rc = sampler_run_spec(s, gp->spec, tok, reqs, R, res, err))) goto done;
    sampler_spec_get_stats(gp->spec, &after);
    double dt = rlhf_now() - t0;
    for (int i = 0; i < n && !rc; i++) {
        if (generator_group_fill(&groups[i], &prompts[i], pids[i], plen[i], &res[i * k], gp, generator_id,
                                 seq0 + (uint64_t)i, m->version, dt / n))
            rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        else if (i == n - 1) /* the batch's counters: with its last group (the updater sums them per step) */
            generator_group_spec_counters(&groups[i], &before, &after);
    }
done:
    for (int i = 0; i < R && res; i++) sample_result_free(&res[i]);
    for (int i = 0; i < n && pids; i++) free(pids[i]);
    for (int i = 0; i < R && gm; i++) guided_matcher_destroy(&gm[i]);
    free(gm);
    free(pids);
    free(plen);
    free(reqs);
    free(res);
    return rc;
}
