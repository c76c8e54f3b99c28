/* model/speculative_run.c — sampler_run_stream_spec and sampler_run_spec: the streaming loop of
 * sampler_run_stream (admission, chunked prefill, refeed after new weights, the same per-token
 * bookkeeping through sampler_int_accept) with speculation through the step API of model/speculative.c
 * (sampler_spec_batch), the one rlhf serve's worker uses too. */
#include "model/model.h"
#include "model/sampler_int.h"

#include <stdlib.h>
#include <string.h>

/* A request in a cache slot: what the loop owns beside the batch's speculative state. */
typedef struct run_slot {
    long req;        /* admission index, -1: free */
    sample_request rq;
    sample_result res;
    size_t text_cap;
    int fed, refeed; /* prompt positions fed; refeed position after new weights (-1: none) */
    int lrow;        /* first logits row of this step, -1: none */
} run_slot;

static int32_t run_ctx_token(const run_slot *sl, int i) {
    return i < sl->rq.prompt_len ? sl->rq.prompt[i] : sl->res.tokens[i - sl->rq.prompt_len];
}

static int spec_loop(sampler *s, sampler_spec *sp, const tokenizer *tok, const sampler_source *src, rlhf_error *err) {
    const model *m = sampler_int_model(s);
    int V = m->cfg.vocab_size, B = sampler_int_max_batch(s), G = sampler_spec_options_of(sp)->gamma;
    int maxr = sampler_max_rows(s);
    if (tok && tok->vocab_size != V)
        return RLHF_FAIL(err, RLHF_EINVAL, "tokenizer vocab_size %d differs from the model's %d", tok->vocab_size, V);
    sampler_spec_batch *bt = NULL;
    int rc = sampler_spec_batch_create(&bt, sp, s, err);
    if (rc) return rc;
    /* logits rows: one per generating slot plus the drafts, bounded by the rows of a step and memory */
    int LC = B * (G + 1);
    if (LC > maxr) LC = maxr;
    if ((size_t)LC * V > ((size_t)64 << 20)) LC = (int)(((size_t)64 << 20) / (size_t)V);
    if (LC < B) LC = B;
    run_slot *st = calloc((size_t)B, sizeof *st);
    float *logits = malloc((size_t)LC * V * sizeof(float));
    int *rslot = malloc((size_t)maxr * sizeof(int)), *rpos = malloc((size_t)maxr * sizeof(int));
    int *lrows = malloc((size_t)LC * sizeof(int)), *vlist = malloc((size_t)B * sizeof(int));
    int *vlrow = malloc((size_t)B * sizeof(int)), *gen = malloc((size_t)B * sizeof(int));
    int32_t *rtok = malloc((size_t)maxr * sizeof(int32_t));
    if (!st || !logits || !rslot || !rpos || !lrows || !vlist || !vlrow || !gen || !rtok)
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    for (int b = 0; st && b < B; b++) st[b].req = -1;
    long admitted = 0;
    int active = 0;
    while (!rc) {
        if (src->before_step) {
            int r = src->before_step(src->ctx, err);
            if (r < 0) {
                rc = r;
                break;
            }
            if (r > 0 && src->recompute_on_new_weights)
                for (int b = 0; b < B; b++) {
                    if (st[b].req < 0) continue;
                    if (st[b].res.n_tokens == 0) st[b].fed = 0;
                    else st[b].refeed = 0;
                }
        }
        int source_empty = 0;
        for (int b = 0; b < B && !source_empty && !rc; b++) {
            if (st[b].req >= 0) continue;
            while (!rc) {
                sample_request rq;
                int got = src->next(src->ctx, &rq, err);
                if (got <= 0) {
                    if (got < 0) rc = got;
                    source_empty = 1;
                    break;
                }
                if ((rc = sampler_int_validate(s, tok, &rq, (int)admitted, err))) break;
                long index = admitted++;
                run_slot *sl = &st[b];
                memset(sl, 0, sizeof *sl);
                sl->req = -1;
                sl->rq = rq;
                if (sampler_int_result_start(s, tok, &rq, &sl->res, &sl->text_cap)) {
                    sample_result_free(&sl->res);
                    rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for sampling results");
                    break;
                }
                if (rq.params.max_new_tokens == 0) {
                    sl->res.finish = SAMPLE_FINISH_LENGTH;
                    rc = src->done(src->ctx, &sl->rq, index, &sl->res, err);
                    memset(&sl->res, 0, sizeof sl->res);
                    continue;
                }
                sl->req = index;
                sl->refeed = -1;
                sampler_spec_seq_begin(bt, b, sl->rq.prompt, sl->rq.prompt_len, &sl->rq.params);
                active++;
                break;
            }
        }
        if (rc || active == 0) break;
        /* drafts for the generating slots, leaving a row for every slot still in its prompt */
        int n_gen = 0, n_prefill = 0;
        for (int b = 0; b < B; b++) {
            run_slot *sl = &st[b];
            sl->lrow = -1;
            if (sl->req < 0) continue;
            if (sl->fed < sl->rq.prompt_len) n_prefill++;
            else if (sl->refeed < 0) gen[n_gen++] = b;
        }
        int budget = (LC < maxr ? LC : maxr) - n_gen - n_prefill;
        if ((rc = sampler_spec_propose(bt, n_gen, gen, budget, err))) break;
        /* rows: each generating slot's last token and drafts (all with logits), then refeeds, then prompts */
        int R = 0, NL = 0;
        for (int i = 0; i < n_gen; i++) {
            int b = gen[i];
            run_slot *sl = &st[b];
            int L = sl->rq.prompt_len + sl->res.n_tokens;
            const int32_t *draft;
            int g = sampler_spec_drafts(bt, b, &draft);
            sl->lrow = NL;
            for (int t = 0; t <= g; t++) {
                rslot[R] = b;
                rpos[R] = L - 1 + t;
                rtok[R] = t == 0 ? sl->res.tokens[sl->res.n_tokens - 1] : draft[t - 1];
                lrows[NL++] = R++;
            }
        }
        for (int b = 0; b < B && R < maxr; b++) {
            run_slot *sl = &st[b];
            if (sl->req < 0 || sl->refeed < 0) continue;
            int need = sl->rq.prompt_len + sl->res.n_tokens - 1, chunk = need - sl->refeed;
            if (chunk > maxr - R) chunk = maxr - R;
            for (int t = 0; t < chunk; t++) {
                rslot[R] = b;
                rpos[R] = sl->refeed + t;
                rtok[R] = run_ctx_token(sl, sl->refeed + t);
                R++;
            }
            sl->refeed += chunk;
            if (sl->refeed == need) sl->refeed = -1;
        }
        for (int b = 0; b < B && R < maxr; b++) {
            run_slot *sl = &st[b];
            if (sl->req < 0 || sl->fed >= sl->rq.prompt_len) continue;
            int chunk = sl->rq.prompt_len - sl->fed;
            if (chunk > maxr - R) chunk = maxr - R;
            for (int t = 0; t < chunk; t++) {
                rslot[R] = b;
                rpos[R] = sl->fed + t;
                rtok[R] = sl->rq.prompt[sl->fed + t];
                R++;
            }
            sl->fed += chunk;
            if (sl->fed == sl->rq.prompt_len) { /* its first token comes from this row (no drafts) */
                sl->lrow = NL;
                lrows[NL++] = R - 1;
            }
        }
        if (R == 0) continue; /* only refeeds waiting for room: cannot happen with R budget > 0 */
        if ((rc = sampler_step(s, R, rslot, rpos, rtok, NL, lrows, logits, err))) break;
        int nv = 0;
        for (int b = 0; b < B; b++)
            if (st[b].req >= 0 && st[b].lrow >= 0) vlist[nv] = b, vlrow[nv++] = st[b].lrow;
        sampler_spec_verify(bt, nv, vlist, vlrow, logits, R);
        int oom = 0;
        for (int i = 0; i < nv && !rc; i++) {
            int b = vlist[i];
            run_slot *sl = &st[b];
            const int32_t *emit;
            const float *lp, *lq;
            int n_emit = sampler_spec_emitted(bt, b, &emit, &lp, &lq), finished = 0, taken = 0;
            for (int e = 0; e < n_emit && !finished; e++) {
                finished = sampler_int_accept(s, tok, &sl->rq, &sl->res, &sl->text_cap, emit[e], lp[e], lq[e], &oom);
                taken++;
            }
            if (oom) {
                rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for sampled text");
                break;
            }
            if ((rc = sampler_spec_commit(bt, b, taken, err))) break;
            if (finished) {
                sampler_spec_seq_end(bt, b, 1);
                long index = sl->req;
                sl->req = -1;
                active--;
                rc = src->done(src->ctx, &sl->rq, index, &sl->res, err);
                memset(&sl->res, 0, sizeof sl->res);
            }
        }
    }
    for (int b = 0; st && b < B; b++) sample_result_free(&st[b].res);
    sampler_spec_batch_destroy(&bt);
    free(st);
    free(logits);
    free(rslot);
    free(rpos);
    free(lrows);
    free(vlist);
    free(vlrow);
    free(gen);
    free(rtok);
    return rc;
}

int sampler_run_stream_spec(sampler *s, sampler_spec *sp, const tokenizer *tok, const sampler_source *src,
                            rlhf_error *err) {
    if (!sp || sampler_spec_options_of(sp)->kind == SAMPLER_SPEC_OFF) return sampler_run_stream(s, tok, src, err);
    return spec_loop(s, sp, tok, src, err);
}

int sampler_run_spec(sampler *s, sampler_spec *sp, const tokenizer *tok, const sample_request *reqs, int n,
                     sample_result *results, rlhf_error *err) {
    if (!sp || sampler_spec_options_of(sp)->kind == SAMPLER_SPEC_OFF) return sampler_run(s, tok, reqs, n, results, err);
    if (n < 0) return RLHF_FAIL(err, RLHF_EINVAL, "negative request count");
    int rc;
    for (int i = 0; i < n; i++)
        if ((rc = sampler_int_validate(s, tok, &reqs[i], i, err))) return rc;
    for (int i = 0; i < n; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].stop_string = -1;
    }
    sampler_array_source a = {.reqs = reqs, .n = n, .results = results};
    sampler_source src = {.ctx = &a, .next = sampler_array_next, .done = sampler_array_done};
    rc = spec_loop(s, sp, tok, &src, err);
    if (rc)
        for (int i = 0; i < n; i++) sample_result_free(&results[i]);
    return rc;
}
