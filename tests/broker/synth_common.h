/* tests/broker/synth_common.h — deterministic made-up payloads shared by the synthetic peers,
 * test_broker and the benchmarks, so every receiver can check every byte it got. */
#ifndef RLHF_SYNTH_COMMON_H
#define RLHF_SYNTH_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/wire.h"

static inline uint32_t synth_hash(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static inline int32_t synth_token(const char *gen, uint64_t seq, uint32_t sample, uint32_t t) {
    return (int32_t)((synth_hash(gen) % 1000u + seq * 31u + sample * 7u + t) % 50000u);
}

static inline float synth_logprob(uint64_t seq, uint32_t sample, uint32_t t) {
    return -0.001f * (float)((seq + sample + t) % 1000u) - 0.01f;
}

/* Fills a group with k samples of about n_tokens each (lengths vary by sample); arrays are malloc'd into g.
 * Free with synth_group_free (not wire_rollout_group_free: strings are borrowed). */
static inline void synth_group_make(wire_rollout_group *g, const char *gen, uint64_t seq, uint64_t version, uint32_t k,
                                    uint32_t n_tokens, const char *prompt_id, const char *prompt_text) {
    memset(g, 0, sizeof *g);
    g->prompt_id = (char *)prompt_id;
    g->prompt_text = (char *)prompt_text;
    g->generator_id = (char *)gen;
    g->seq = seq;
    g->policy_version = version;
    g->k = k;
    g->n_prompt_tokens = 5;
    g->prompt_tokens = malloc(5 * sizeof(int32_t));
    for (int i = 0; i < 5; i++) g->prompt_tokens[i] = 100 + i;
    g->n_tokens = malloc(k * sizeof(uint32_t));
    g->finish = malloc(k);
    uint64_t total = 0;
    for (uint32_t s = 0; s < k; s++) {
        g->n_tokens[s] = n_tokens > 2 ? n_tokens - (s % 3) : n_tokens;
        g->finish[s] = (uint8_t)(s % 2);
        total += g->n_tokens[s];
    }
    g->tokens = malloc((total + 1) * sizeof(int32_t));
    g->logprobs = malloc((total + 1) * sizeof(float));
    uint64_t off = 0;
    for (uint32_t s = 0; s < k; s++)
        for (uint32_t t = 0; t < g->n_tokens[s]; t++, off++) {
            g->tokens[off] = synth_token(gen, seq, s, t);
            g->logprobs[off] = synth_logprob(seq, s, t);
        }
    g->gen_seconds = 0.001;
}

static inline void synth_group_free(wire_rollout_group *g) {
    free(g->prompt_tokens);
    free(g->n_tokens);
    free(g->finish);
    free(g->tokens);
    free(g->logprobs);
    memset(g, 0, sizeof *g);
}

/* 1 if every token and log-prob of a received group is what synth_group_make produced. */
static inline int synth_group_check(const wire_rollout_group *g) {
    uint64_t off = 0;
    for (uint32_t s = 0; s < g->k; s++)
        for (uint32_t t = 0; t < g->n_tokens[s]; t++, off++)
            if (g->tokens[off] != synth_token(g->generator_id, g->seq, s, t) ||
                g->logprobs[off] != synth_logprob(g->seq, s, t))
                return 0;
    return 1;
}

/* Weights: two tensors over n floats, value pattern depends on the version. */
static inline float synth_weight(uint64_t version, uint64_t i) { return (float)(version % 1000) + (float)(i % 997) * 1e-3f; }

static inline void synth_weights_make(wire_weights *w, wire_tensor t[2], uint64_t version, uint64_t n_floats) {
    memset(w, 0, sizeof *w);
    float *d = malloc(n_floats * sizeof(float) + 1);
    for (uint64_t i = 0; i < n_floats; i++) d[i] = synth_weight(version, i);
    uint64_t a = n_floats / 2;
    memset(t, 0, 2 * sizeof *t);
    strcpy(t[0].name, "layer0.w");
    t[0].ndim = 1;
    t[0].shape[0] = a;
    t[0].offset = 0;
    t[0].nbytes = a * 4;
    strcpy(t[1].name, "layer1.w");
    t[1].ndim = 2;
    t[1].shape[0] = 1;
    t[1].shape[1] = n_floats - a;
    t[1].offset = a * 4;
    t[1].nbytes = (n_floats - a) * 4;
    w->version = version;
    w->n_tensors = 2;
    w->tensors = t;
    w->nbytes = n_floats * 4;
    w->data = (const uint8_t *)d;
}

static inline int synth_weights_check(const wire_weights *w) {
    const float *d = (const float *)w->data;
    uint64_t n = w->nbytes / 4;
    for (uint64_t i = 0; i < n; i++)
        if (d[i] != synth_weight(w->version, i)) return 0;
    return 1;
}

#endif
