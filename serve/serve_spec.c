/* serve/serve_spec.c — speculative decoding in `rlhf serve` (--draft-model D | --ngram-draft): loading
 * the draft model, the sampler_spec and its step batch the worker decodes with (serve/serve_decode.c),
 * the /health counters and the shutdown log line. The proposers and the verification are model/'s
 * (model/speculative.c), shared with `rlhf sample` and the generators. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "serve/serve_int.h"

int serve_spec_setup(serve_server *s, rlhf_error *err) {
    const serve_config *c = &s->cfg;
    if (!c->draft_model[0] && !c->ngram_draft) return 0;
    if (c->draft_model[0] && c->ngram_draft)
        return rlhf_error_set(err, RLHF_EINVAL, "--ngram-draft", "--ngram-draft and --draft-model exclude each other");
    if (c->spec_gamma < 1 || c->spec_gamma > 16)
        return rlhf_error_set(err, RLHF_EINVAL, "--gamma", "must be in 1..16, got %d", c->spec_gamma);
    sampler_spec_options o = sampler_spec_options_default();
    o.kind = c->ngram_draft ? SAMPLER_SPEC_NGRAM : SAMPLER_SPEC_DRAFT_MODEL;
    o.gamma = c->spec_gamma;
    o.adaptive = c->spec_adaptive;
    int rc;
    if (c->draft_model[0]) {
        /* the draft's context is capped like the model's: its KV cache is sized by max_seq_len */
        model_load_options lo = {.max_seq_len = s->m->cfg.max_seq_len};
        if ((rc = model_load_with(&s->draft_m, c->draft_model, &lo, err))) return rc;
        /* verification compares the two distributions id by id: the vocabularies must be one */
        if (s->draft_m->cfg.vocab_size != s->m->cfg.vocab_size)
            return rlhf_error_set(err, RLHF_EINVAL, "--draft-model",
                                  "%s has vocab_size %d but the model %s has %d: a draft model must share the "
                                  "model's tokenizer", c->draft_model, s->draft_m->cfg.vocab_size, c->model_path,
                                  s->m->cfg.vocab_size);
        if ((rc = sampler_create(&s->draft_smp, s->draft_m, c->max_batch, err))) return rc;
        o.draft = s->draft_smp;
    }
    if ((rc = sampler_spec_create(&s->spec, &o, err))) return rc;
    return sampler_spec_batch_create(&s->spec_bt, s->spec, s->smp, err);
}

void serve_spec_teardown(serve_server *s) {
    if (s->spec_bt && s->worker_started && s->log) {
        sampler_spec_stats st;
        sampler_spec_get_stats(s->spec, &st);
        fprintf(s->log, "rlhf serve: speculative (%s): %llu of %llu draft tokens kept (acceptance %.3f), %.2f tokens "
                "per verify step, %llu verify steps, %llu plain tokens\n",
                sampler_spec_kind_name(sampler_spec_options_of(s->spec)->kind), (unsigned long long)st.accepted,
                (unsigned long long)st.drafted, st.drafted ? (double)st.accepted / (double)st.drafted : 0.0,
                st.verifies ? (double)st.spec_tokens / (double)st.verifies : 0.0, (unsigned long long)st.verifies,
                (unsigned long long)st.plain_tokens);
        fflush(s->log);
    }
    sampler_spec_batch_destroy(&s->spec_bt);
    sampler_spec_destroy(&s->spec);
    sampler_destroy(&s->draft_smp);
    model_destroy(&s->draft_m);
}

json_t *serve_spec_health(const serve_server *s) {
    if (!s->spec) return NULL;
    const sampler_spec_options *o = sampler_spec_options_of(s->spec);
    const sampler_spec_stats *st = &s->spec_stats;
    return json_pack("{s:s, s:i, s:b, s:I, s:I, s:I, s:I, s:f, s:I, s:I}", "drafter", sampler_spec_kind_name(o->kind),
                     "gamma", o->gamma, "adaptive", o->adaptive, "steps", (json_int_t)st->steps, "verifies",
                     (json_int_t)st->verifies, "drafted", (json_int_t)st->drafted, "accepted",
                     (json_int_t)st->accepted, "acceptance", st->drafted ? (double)st->accepted / (double)st->drafted : 0.0,
                     "spec_tokens", (json_int_t)st->spec_tokens, "plain_tokens", (json_int_t)st->plain_tokens);
}
