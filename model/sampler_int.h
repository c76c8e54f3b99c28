/* model/sampler_int.h — internals of the sampler shared with its benchmark (bench/bench_model_sample.c);
 * not part of model/'s public API. */
#ifndef RLHF_SAMPLER_INT_H
#define RLHF_SAMPLER_INT_H
#include <stddef.h>
#include <stdint.h>

#include "model/kernels_int.h"

/* Floats of an (O, I) matrix packed as ceil(O/32) panels of (I, 32). */
size_t sampler_packed_size(int O, int I);
/* Wp <- rows of W0 (O0, I), W1 (O1, I), W2 (O2, I) stacked (W1/W2 may be NULL with 0 rows), packed. */
void sampler_pack_matrix(float *Wp, int I, const float *W0, int O0, const float *W1, int O1, const float *W2,
                         int O2);
void sampler_pack_matrix_bf16(uint16_t *Wp, int I, const float *W0, int O0, const float *W1, int O1, const float *W2,
                              int O2);
void sampler_matmul_packed_bf16(const model_kernels *k, float *out, const float *in, int ld_in, const uint16_t *Wp,
                                int R, int IC, int OC, int accumulate);
/* out (R, OC) (+)= in (R, IC; rows ld_in apart) @ W^T, W packed; k's panel kernel, OpenMP over panels. */
void sampler_matmul_packed(const model_kernels *k, float *out, const float *in, int ld_in, const float *Wp, int R,
                           int IC, int OC, int accumulate);

#include "model/model.h"

/* sampler_run's requests as a stream (sampler_source with these two): in order, each result into its
 * place (results[index]); used by sampler_run and sampler_run_spec. */
typedef struct sampler_array_source {
    const sample_request *reqs;
    int n, next;
    sample_result *results;
} sampler_array_source;
int sampler_array_next(void *ctx, sample_request *req, rlhf_error *err);
int sampler_array_done(void *ctx, const sample_request *req, long index, sample_result *res, rlhf_error *err);

/* For model/speculative.c, which runs its own decoding loop over the same sampler: request checks,
 * result set-up and the per-token bookkeeping (stop ids and strings, limits) of sampler_run_stream. */
int sampler_int_validate(const sampler *s, const tokenizer *tok, const sample_request *rq, int i, rlhf_error *err);
int sampler_int_result_start(sampler *s, const tokenizer *tok, const sample_request *rq, sample_result *res,
                             size_t *text_cap);
/* Records y (log pi, log q) for rq; 1 when the sequence is finished (or *oom set). */
int sampler_int_accept(sampler *s, const tokenizer *tok, const sample_request *rq, sample_result *res,
                       size_t *text_cap, int32_t y, float lp_pi, float lp_q, int *oom);
int sampler_int_max_batch(const sampler *s);
const struct model *sampler_int_model(const sampler *s);
const model_kernels *sampler_int_kernels(const sampler *s);
/* Writes every float of the KV cache (keys and values, every slot and position) with small pseudo-random
 * values: the decode benchmark's stand-in for a long prefill, so its timed steps read resident, written
 * pages, not the shared zero page. */
typedef struct sampler sampler;
void sampler_kv_fill(sampler *s, uint64_t seed);
#endif
