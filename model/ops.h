/* model/ops.h — private fp32 kernels of the training path (model/ only; tests include it too).
 *
 * Conventions (llm.c-like): every op is a pair x_forward / x_backward with arguments in the fixed
 * order outputs, inputs, sizes, then flags. Parameter gradients are always ACCUMULATED (+=). Each
 * activation gradient a fast backward writes has an `acc_*` flag: 1 = accumulate (+=), 0 = overwrite
 * (=, the buffer's old contents are ignored). The tape passes 0 for the first contribution to a
 * gradient and 1 afterwards, so a tensor consumed twice (the residual stream) gets both contributions
 * and no gradient buffer needs zeroing before the backward pass. Reference kernels always accumulate.
 * Every fast kernel is OpenMP-parallel in forward
 * and backward; the `_ref` twin beside it is a plain single-threaded loop used only by tests.
 * Shapes: N = B*T rows, C = channels, V = vocab, H/KVH = query/key-value heads, D = head_dim. */
#ifndef RLHF_MODEL_OPS_H
#define RLHF_MODEL_OPS_H

#include <stddef.h>
#include <stdint.h>

/* ---- embedding: out[n] = embed[tokens[n]] */
void embedding_forward(float *out, const int32_t *tokens, const float *embed, int N, int C);
void embedding_backward(float *dembed, const float *dout, const int32_t *tokens, int N, int C);
void embedding_forward_ref(float *out, const int32_t *tokens, const float *embed, int N, int C);
void embedding_backward_ref(float *dembed, const float *dout, const int32_t *tokens, int N, int C);

/* ---- RMSNorm: out = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps); rstd (N) is saved */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
/* dweight NULL: a frozen weight, no weight gradient */
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C, int acc_inp);
void rmsnorm_forward_ref(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rmsnorm_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C);

/* ---- linear without bias: out (N, OC) = inp (N, IC) · weight^T, weight (OC, IC) (HF layout).
 * Fast versions call OpenBLAS sgemm (OpenMP build: shares our thread pool). */
void matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC);
/* Two products of the same input and size, out_a = inp · weight_a^T and out_b = inp · weight_b^T,
 * each (N, OC); with exactly two threads each runs whole on its own thread. */
void matmul_forward_pair(float *out_a, float *out_b, const float *inp, const float *weight_a, const float *weight_b,
                         int N, int IC, int OC);
/* dweight NULL: a frozen weight (LoRA's base), only dinp is computed; dinp NULL: no input gradient. */
void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N,
                     int IC, int OC, int acc_inp);
void matmul_forward_ref(float *out, const float *inp, const float *weight, int N, int IC, int OC);
void matmul_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                         int N, int IC, int OC);

/* ---- linear with a frozen bf16 weight (a LoRA base kept in bfloat16, model.bf16_mem): weight (OC, IC) holds
 * bfloat16 bits, each widened to fp32 exactly, so the results are matmul_forward's and matmul_backward's input
 * gradient on the widened weights. The fast versions widen MATMUL_BF16_SCRATCH / IC rows at a time into wbuf
 * (MATMUL_BF16_SCRATCH floats, the caller's) and call sgemm on them: an fp32 copy of the weight never exists
 * whole. A frozen weight has no weight gradient. */
enum { MATMUL_BF16_SCRATCH = 1 << 18 };
void matmulbf16_forward(float *out, float *wbuf, const float *inp, const uint16_t *weight, int N, int IC, int OC);
void matmulbf16_backward(float *dinp, float *wbuf, const float *dout, const uint16_t *weight, int N, int IC, int OC,
                          int acc_inp);
void matmulbf16_forward_ref(float *out, const float *inp, const uint16_t *weight, int N, int IC, int OC);
void matmulbf16_backward_ref(float *dinp, const float *dout, const uint16_t *weight, int N, int IC, int OC);
/* ---- embedding from a bf16 table (V, C): out[n] = widen(embed[tokens[n]]) */
void embeddingbf16_forward(float *out, const int32_t *tokens, const uint16_t *embed, int N, int C);
void embeddingbf16_forward_ref(float *out, const int32_t *tokens, const uint16_t *embed, int N, int C);

/* ---- LoRA branch of a linear layer (Hu et al., 2021): out (N, OC) += scale · (inp · A^T) · B^T, with
 * A (R, IC), B (OC, R), R the rank. The forward saves u (N, R) = inp · A^T for the backward, which
 * accumulates dA (R, IC) and dB (OC, R), and writes or accumulates (acc_inp) dinp (N, IC) = scale · dout
 * · B · A; du (N, R) is its scratch. inp is what A reads: the layer's input, or its dropout copy. */
void lora_forward(float *out, float *u, const float *inp, const float *a, const float *b, float scale, int N, int IC,
                  int OC, int R);
void lora_backward(float *dinp, float *da, float *db, float *du, const float *dout, const float *inp, const float *u,
                   const float *a, const float *b, float scale, int N, int IC, int OC, int R, int acc_inp);
void lora_forward_ref(float *out, float *u, const float *inp, const float *a, const float *b, float scale, int N,
                      int IC, int OC, int R);
void lora_backward_ref(float *dinp, float *da, float *db, const float *dout, const float *inp, const float *u,
                       const float *a, const float *b, float scale, int N, int IC, int OC, int R);

/* ---- bias of a linear layer (Qwen2's q/k/v projections): out (N, OC) += bias (OC) on every row; the
 * backward adds the column sums of dout to dbias (dout itself passes through unchanged). */
void bias_forward(float *out, const float *bias, int N, int OC);
void bias_backward(float *dbias, const float *dout, int N, int OC);
void bias_forward_ref(float *out, const float *bias, int N, int OC);
void bias_backward_ref(float *dbias, const float *dout, int N, int OC);

/* ---- RoPE, Hugging Face "rotate_half" convention: for i < D/2, pairs (i, i + D/2) rotate by
 * angle pos * theta^(-2i/D). inp/out (B, T, NH, D); positions are 0..T-1 per sequence.
 * cos/sin tables are (T, D/2), built by ops_rope_tables. */
struct model_config;
void ops_rope_tables(float *cos_t, float *sin_t, int T, const struct model_config *c);
void rope_forward(float *out, const float *inp, const float *cos_t, const float *sin_t, int B, int T, int NH, int D);
void rope_backward(float *dinp, const float *dout, const float *cos_t, const float *sin_t, int B, int T, int NH,
                   int D, int acc_inp);
void rope_forward_ref(float *out, const float *inp, const float *cos_t, const float *sin_t, int B, int T, int NH,
                      int D);
void rope_backward_ref(float *dinp, const float *dout, const float *cos_t, const float *sin_t, int B, int T, int NH,
                       int D);

/* ---- causal self-attention with grouped KV heads (query head h reads kv head h / (H/KVH)); W > 0 makes it
 * local: position t sees positions max(0, t-W+1)..t only (W <= 0: all of 0..t).
 * q (B, T, H, D), k/v (B, T, KVH, D), out (B, T, H, D); att (B, H, T, T) saves the softmax
 * probabilities (zero above the diagonal). scratch: at least ops_attention_scratch_floats(T) floats per
 * OpenMP thread (omp_get_max_threads()). */
size_t ops_attention_scratch_floats(int T);
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B, int T, int H,
                       int KVH, int D, int W);
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                        const float *k, const float *v, float *scratch, int B, int T, int H, int KVH, int D, int W,
                        int acc_q, int acc_k, int acc_v);
void attention_forward_ref(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                           int H, int KVH, int D, int W);
void attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *att, const float *q,
                            const float *k, const float *v, int B, int T, int H, int KVH, int D, int W);

/* ---- SwiGLU: out = silu(gate) * up, all (N) elements */
void swiglu_forward(float *out, const float *gate, const float *up, size_t N);
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t N,
                     int acc_gate, int acc_up);
void swiglu_forward_ref(float *out, const float *gate, const float *up, size_t N);
void swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t N);

/* ---- residual: out = a + b */
void residual_forward(float *out, const float *a, const float *b, size_t N);
void residual_backward(float *da, float *db, const float *dout, size_t N, int acc_a, int acc_b);
void residual_forward_ref(float *out, const float *a, const float *b, size_t N);
void residual_backward_ref(float *da, float *db, const float *dout, size_t N);

/* ---- log-softmax over the vocabulary, read at the targets.
 * logits (N, V); targets (N), -1 = masked. Outputs per row: logp (N) = log p(target) (0 when masked),
 * entropy (N) = -sum p log p (computed for every row, masked or not), lse (N) = logsumexp (saved).
 * Backward from arbitrary per-row weights: dlogits += dlogp[n] * d logp/d logits
 * + dentropy[n] * d entropy/d logits; dlogp or dentropy may be NULL (= zero). Masked rows get
 * no logp gradient. */
void logsoftmax_forward(float *logp, float *entropy, float *lse, const float *logits, const int32_t *targets, int N,
                        int V);
void logsoftmax_backward(float *dlogits, const float *dlogp, const float *dentropy, const float *logits,
                         const float *lse, const float *entropy, const int32_t *targets, int N, int V,
                         int acc_logits);
void logsoftmax_forward_ref(float *logp, float *entropy, float *lse, const float *logits, const int32_t *targets,
                            int N, int V);
void logsoftmax_backward_ref(float *dlogits, const float *dlogp, const float *dentropy, const float *logits,
                             const float *lse, const float *entropy, const int32_t *targets, int N, int V);

#endif
