/* model/sampler.c — batched generation with a KV cache.
 *
 * One forward "step" processes a ragged batch of rows: each row is one token of one sequence
 * (cache slot) at one position. Prefill rows (many per sequence) and decode rows (one per
 * sequence) share the same step, so every weight matrix is read once per step for all rows
 * (sampler_matmul_packed: weights repacked into 32-column panels that the kernels stream; the kernels
 * exist per instruction set, chosen at run time, in kernels*.c; bench/bench_model_sample measures the
 * packed matmul against OpenBLAS sgemv for one row and sgemm for 64 rows).
 * Within a step all rows' keys/values are written to the cache before attention, so a prefill
 * row sees the earlier prompt rows of its own sequence: causal masking is just "positions
 * 0..pos". Attention is OpenMP-parallel over (row, head).
 *
 * Why one file of ~1,250 lines: the forward step (with the per-layer caches of kv_share and the ring
 * buffers of local layers, and the pass splitting those need), the slot bookkeeping of continuous batching
 * and the per-request sampling and stop rules all work on the same private sampler state; the parts that
 * stand alone already live elsewhere (kernels*.c, sampler_ref.c, sampler_int.h).
 *
 * Sampling of each sequence draws from its own RNG stream (one uniform per token), and no kernel
 * lets one row's arithmetic depend on the others or on the thread count, so a sequence's tokens
 * depend on its seed and the weights only, not on its batch neighbours.
 */
#include "model/kernels_int.h"
#include "model/model.h"
#include "model/sampler_int.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef struct cand {
    float z; /* temperature-scaled logit minus the largest: <= 0 */
    float w; /* exp(z): unnormalised probability */
    int id;
} cand;

struct sampler {
    const model *m;
    const model_kernels *k; /* the kernel table: chosen from the CPU's flags or RLHF_ISA at create */
    int max_batch; /* cache slots */
    int max_rows;  /* rows per step: max_batch decode rows + a prefill budget */
    int T;         /* max_seq_len */
    /* The caches hold only the layers that project their own K/V (kv_share); a global layer keeps T
     * positions per slot, a local one a ring of kv_len = min(T, W + SAMPLER_RING_SLACK) positions where
     * position p lives at index p % kv_len. Layer l's block starts at kv_off[l] (its source's when it
     * shares) and is (max_batch, KVH, D, kv_len) for keys, (max_batch, kv_len, KVH*D) for values. */
    float *k_cache;  /* keys, transposed per head (see attend_head) */
    float *v_cache;
    size_t *kv_off;  /* (L) floats from the cache start to the layer's (or its source's) block */
    int *kv_len;     /* (L) positions per slot in that block */
    size_t kv_floats; /* floats of each cache */
    int ring_rows;   /* most rows of one slot a forward pass may hold (0: no limit; see forward_step) */
    int *split_idx;  /* (6 R) scratch of forward_step: row ranks, then a pass's rows and logit rows */
    int *split_cnt;  /* (max_batch) */
    float *rope_cos; /* (T, D/2) */
    float *rope_sin; /* (T, D/2) */
    /* per-step scratch, R = max_rows */
    float *x;        /* (R, C) residual stream */
    float *xn;       /* (R, C) normalised */
    float *qkv;      /* (R, H*D + 2*KVH*D) queries, keys, values of each row side by side */
    float *att;      /* (R, H*D) attention output */
    float *gu;       /* (R, 2F) gate | up; swiglu writes its result over the gate half */
    float *xl;       /* (R, C) normalised rows that need logits */
    float *logits;   /* (max_batch, V) for sampler_run */
    int *row_slot, *row_pos, *logit_rows; /* (R) step bookkeeping for sampler_run */
    int32_t *row_tok;                     /* (R) */
    /* The model's matrices repacked for matmul_packed: an (O, I) matrix becomes ceil(O/32) panels of
     * (I, 32), so the kernel streams each panel contiguously. Per layer four matrices: q|k|v stacked
     * (one matmul instead of three), o, gate|up stacked, down. */
    void *wpack;          /* float, or uint16_t bf16 when bf16 (sampler_weights) */
    int bf16;
    size_t pk_off[4];     /* offsets (in elements) of qkv, o, gate|up, down within a layer's block */
    size_t pk_layer;      /* elements per layer */
    size_t pk_head;       /* offset of the packed lm_head */
    uint64_t packed_fingerprint; /* weights_fingerprint() when wpack was filled */
    /* per-thread scratch, allocated up front so no kernel allocates: n_threads = omp_get_max_threads()
     * at create; parallel regions use at most that many threads */
    int n_threads;
    float *att_scratch;  /* (n_threads, T + 128 + D) attention scores (padded) and scaled query */
    cand *pick_cands;    /* (n_threads, V) token choice candidates */
    float *pick_e;       /* (n_threads, V) exponentials */
    int32_t *pick_tok;   /* (max_batch) tokens chosen in a step */
    float *pick_lp;      /* (max_batch, 2) their log pi, log q */
};

static int region_threads(const sampler *s) {
    int t = omp_get_max_threads();
    return t < s->n_threads ? t : s->n_threads;
}

/* ---------------------------------------------------------------- kernels */

enum { PANEL = KERNEL_PANEL }; /* output columns per packed panel (kernels_int.h) */

/* A local layer's ring holds W + SAMPLER_RING_SLACK positions, so one forward pass can take up to
 * SAMPLER_RING_SLACK + 1 consecutive rows of a sequence (a prefill chunk) without a row's key overwriting
 * one an earlier row of the same pass still sees (forward_step splits longer runs). 32 rows keep prefill
 * matmuls efficient at a memory cost of 31 positions per local layer. */
enum { SAMPLER_RING_SLACK = 31 };

size_t sampler_packed_size(int O, int I) { return (size_t)((O + PANEL - 1) / PANEL) * PANEL * (size_t)I; }

/* Wp (ceil(O/32), I, 32) <- the rows of W0 (O0, I) then W1 (O1, I) then W2 (O2, I) stacked into one
 * (O, I) matrix, O = O0 + O1 + O2, zero-padded past O; floats, or bf16 (rounded to nearest even). */
static void pack_any(void *Wp, int bf16, int I, const float *W0, int O0, const float *W1, int O1, const float *W2,
                     int O2) {
    int O = O0 + O1 + O2, np = (O + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++)
        for (int j = 0; j < PANEL; j++) {
            int o = p * PANEL + j;
            const float *row = o < O0 ? W0 + (size_t)o * I
                               : o < O0 + O1 ? W1 + (size_t)(o - O0) * I
                               : o < O ? W2 + (size_t)(o - O0 - O1) * I
                                       : NULL;
            for (int i = 0; i < I; i++) {
                size_t at = ((size_t)p * I + i) * PANEL + j;
                float v = row ? row[i] : 0.0f;
                if (bf16)
                    ((uint16_t *)Wp)[at] = model_bf16_round(v);
                else
                    ((float *)Wp)[at] = v;
            }
        }
}

void sampler_pack_matrix(float *Wp, int I, const float *W0, int O0, const float *W1, int O1, const float *W2,
                         int O2) {
    pack_any(Wp, 0, I, W0, O0, W1, O1, W2, O2);
}

void sampler_pack_matrix_bf16(uint16_t *Wp, int I, const float *W0, int O0, const float *W1, int O1, const float *W2,
                              int O2) {
    pack_any(Wp, 1, I, W0, O0, W1, O1, W2, O2);
}

/* out (R, OC) = in (R, IC; rows ld_in apart) @ W^T with W packed (fp32 or bf16 panels); out += ... when
 * accumulate. OpenMP over panels (output rows, never a sum); within a panel, blocks of up to
 * k->panel_rows rows share each weight load. */
static void matmul_any(const model_kernels *k, float *out, const float *in, int ld_in, const void *Wp, int bf16,
                       int R, int IC, int OC, int accumulate) {
    int np = (OC + PANEL - 1) / PANEL, rows = k->panel_rows;
#pragma omp parallel for schedule(static) if (np > 1 && (size_t)R * IC * OC > 32768)
    for (int p = 0; p < np; p++) {
        size_t panel = (size_t)p * IC * PANEL;
        for (int r0 = 0; r0 < R; r0 += rows) {
            int nr = R - r0 < rows ? R - r0 : rows;
            if (bf16)
                k->panel_bf16(out + (size_t)r0 * OC, in + (size_t)r0 * ld_in, ld_in, (const uint16_t *)Wp + panel, nr,
                              IC, OC, p * PANEL, accumulate);
            else
                k->panel(out + (size_t)r0 * OC, in + (size_t)r0 * ld_in, ld_in, (const float *)Wp + panel, nr, IC, OC,
                         p * PANEL, accumulate);
        }
    }
}

void sampler_matmul_packed(const model_kernels *k, float *out, const float *in, int ld_in, const float *Wp, int R,
                           int IC, int OC, int accumulate) {
    matmul_any(k, out, in, ld_in, Wp, 0, R, IC, OC, accumulate);
}

void sampler_matmul_packed_bf16(const model_kernels *k, float *out, const float *in, int ld_in, const uint16_t *Wp,
                                int R, int IC, int OC, int accumulate) {
    matmul_any(k, out, in, ld_in, Wp, 1, R, IC, OC, accumulate);
}

/* A cheap fingerprint of the weights: the policy version and 256 evenly spaced values of every
 * tensor. Any training step or checkpoint load changes it, so a stale packed copy is noticed. */
static uint64_t weights_fingerprint(const model *m) {
    uint64_t h = 0xcbf29ce484222325ull ^ m->version;
    for (int t = 0; t < m->n_tensors; t++) {
        const model_tensor_info *ti = &m->tensors[t];
        const float *w = m->params_mem + ti->offset;
        for (size_t j = 0; j < 256; j++) {
            uint32_t bits;
            memcpy(&bits, &w[j * ti->numel / 256], sizeof bits);
            h = (h ^ bits) * 0x100000001b3ull;
        }
        uint32_t last;
        memcpy(&last, &w[ti->numel - 1], sizeof last);
        h = (h ^ last) * 0x100000001b3ull;
    }
    return h;
}

/* Packs (O0 + O1 + O2, I) stacked at element offset `off` of the sampler's packed copy, in its precision. */
static void pack_into(sampler *s, size_t off, int I, const float *W0, int O0, const float *W1, int O1,
                      const float *W2, int O2) {
    pack_any((char *)s->wpack + off * (s->bf16 ? sizeof(uint16_t) : sizeof(float)), s->bf16, I, W0, O0, W1, O1, W2,
             O2);
}

void sampler_sync_weights(sampler *s) {
    const model *m = s->m;
    const model_config *c = &m->cfg;
    const model_params *p = &m->p;
    int C = c->dim, D = model_head_dim(c), HD = c->n_heads * D, KD = c->n_kv_heads * D, F = c->ffn_dim;
    for (int l = 0; l < c->n_layers; l++) {
        size_t base = (size_t)l * s->pk_layer;
        int ks = model_kv_slot(c, l); /* -1: a kv_share layer, q only */
        if (ks >= 0)
            pack_into(s, base + s->pk_off[0], C, p->wq + (size_t)l * HD * C, HD, p->wk + (size_t)ks * KD * C, KD,
                      p->wv + (size_t)ks * KD * C, KD);
        else
            pack_into(s, base + s->pk_off[0], C, p->wq + (size_t)l * HD * C, HD, NULL, 0, NULL, 0);
        pack_into(s, base + s->pk_off[1], HD, p->wo + (size_t)l * C * HD, C, NULL, 0, NULL, 0);
        pack_into(s, base + s->pk_off[2], C, p->w_gate + (size_t)l * F * C, F, p->w_up + (size_t)l * F * C, F, NULL, 0);
        pack_into(s, base + s->pk_off[3], F, p->w_down + (size_t)l * C * F, C, NULL, 0, NULL, 0);
    }
    pack_into(s, s->pk_head, C, p->lm_head, c->vocab_size, NULL, 0, NULL, 0);
    s->packed_fingerprint = weights_fingerprint(m);
}

static void ensure_packed(sampler *s) {
    if (weights_fingerprint(s->m) != s->packed_fingerprint) sampler_sync_weights(s);
}

/* The sampler's own forward kernels (smp_*): ragged rows of (slot, position) reading the KV cache, no
 * tape, no backward. The training kernels of the same names without the prefix are in model/ops.c. */

/* out (R, C) = in (R, C) / rms(in) * w (C) */
static void smp_rmsnorm_forward(const model_kernels *k, float *out, const float *in, const float *w, int R, int C,
                                float eps) {
#pragma omp parallel for if (R >= 8) schedule(static)
    for (int r = 0; r < R; r++) k->rmsnorm(out + (size_t)r * C, in + (size_t)r * C, w, C, eps);
}

/* In place on x (R, NH*D; rows ld apart): rotate pairs (i, i + D/2) of every head by pos[r] * freq_i
 * (HF rotate_half). */
static void smp_rope_forward(const model_kernels *k, float *x, int ld, const int *pos, const float *cos_t,
                             const float *sin_t, int R, int NH, int D) {
    int half = D / 2;
#pragma omp parallel for if (R >= 8) schedule(static)
    for (int r = 0; r < R; r++)
        k->rope(x + (size_t)r * ld, cos_t + (size_t)pos[r] * half, sin_t + (size_t)pos[r] * half, NH, D);
}

/* In place on qkv (R, H*D | KVH*D | KVH*D; rows ld apart): + bq, bk, bv (Qwen2's projection biases; fp32
 * in both weight precisions, like the norm weights). */
static void smp_qkv_bias_forward(float *qkv, int ld, const float *bq, const float *bk, const float *bv, int R, int HD,
                                 int KD) {
#pragma omp parallel for if ((size_t)R * ld >= 16384) schedule(static)
    for (int r = 0; r < R; r++) {
        float *q = qkv + (size_t)r * ld, *k = q + HD, *v = k + KD;
        for (int i = 0; i < HD; i++) q[i] += bq[i];
        for (int i = 0; i < KD; i++) k[i] += bk[i];
        for (int i = 0; i < KD; i++) v[i] += bv[i];
    }
}

/* In place on x (R, NH*D; rows ld apart): RMSNorm over each head's D values with weight w (D) (Qwen3's
 * q/k norm), by the table's rmsnorm kernel one head at a time. */
static void smp_head_rmsnorm_forward(const model_kernels *k, float *x, int ld, const float *w, int R, int NH, int D,
                                     float eps) {
#pragma omp parallel for if (R >= 8) schedule(static)
    for (int r = 0; r < R; r++)
        for (int h = 0; h < NH; h++) {
            float *xh = x + (size_t)r * ld + (size_t)h * D;
            k->rmsnorm(xh, xh, w, D, eps);
        }
}

/* gu (R, 2F): gate half <- silu(gate) * up */
static void smp_swiglu_forward(const model_kernels *k, float *gu, int R, int F) {
#pragma omp parallel for if ((size_t)R * F >= 16384) schedule(static)
    for (int r = 0; r < R; r++) k->swiglu(gu + (size_t)r * 2 * F, gu + (size_t)r * 2 * F + F, F);
}

/* out (R, H*D): row r, head h attends over positions 0..pos[r] of its slot's cache (the last W of them when
 * W > 0). For this layer: kc (max_batch, KVH, D, Tc) keys transposed, vc (max_batch, Tc, KVH*D) values,
 * position p at index p % Tc (Tc = T for global layers: no wrap); Tc * KVH * D floats per slot in both.
 * OpenMP over (row, head); per-thread scratch (T) scores. */
static void smp_attention_forward(const model_kernels *k, float *out, const float *q, int ldq, const float *kc, const float *vc,
                                  const int *slot, const int *pos, int R, int H, int KVH, int D, int Tc, int W,
                                  float *scratch, int T, int n_threads) {
    size_t slot_stride = (size_t)Tc * KVH * D;
    int group = H / KVH, KD = KVH * D;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel if (R * H > 1) num_threads(n_threads)
    {
        float *sc = scratch + (size_t)omp_get_thread_num() * (T + 128 + D); // (T) scores, then (D) scaled query
        float *qs = sc + T + 128;
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int r = 0; r < R; r++) {
            for (int h = 0; h < H; h++) {
                const float *qh = q + (size_t)r * ldq + (size_t)h * D;
                for (int i = 0; i < D; i++) qs[i] = qh[i] * scale;
                const float *kT = kc + (size_t)slot[r] * slot_stride + (size_t)(h / group) * D * Tc;
                const float *vb = vc + (size_t)slot[r] * slot_stride + (size_t)(h / group) * D;
                int n = W > 0 && pos[r] + 1 > W ? W : pos[r] + 1, start = (pos[r] - n + 1) % Tc;
                k->attend_head(out + ((size_t)r * H + h) * D, qs, kT, vb, KD, start, n, D, Tc, sc);
            }
        }
    }
}

/* ---------------------------------------------------------------- create / destroy */

/* Large buffers (packed weights, KV cache) on 2 MiB boundaries with transparent huge pages requested:
 * fewer TLB misses when streaming tens of MB per token and writing keys with a stride of T floats. */
static void *big_alloc(size_t bytes) {
    size_t huge = (size_t)2 << 20, rounded = (bytes + huge - 1) / huge * huge;
    void *p = aligned_alloc(huge, rounded ? rounded : huge);
    if (p) madvise(p, rounded, MADV_HUGEPAGE); /* advice only: ignore failure */
    return p;
}

int sampler_max_rows(const sampler *s) { return s->max_rows; }

const char *sampler_kernels_name(const sampler *s) { return s->k->name; }

sampler_weights sampler_weights_of(const sampler *s) { return s->bf16 ? SAMPLER_WEIGHTS_BF16 : SAMPLER_WEIGHTS_FP32; }

const char *sampler_weights_name(sampler_weights w) { return w == SAMPLER_WEIGHTS_BF16 ? "bf16" : "fp32"; }

int sampler_weights_parse(sampler_weights *w, const char *name, const char *where, rlhf_error *err) {
    if (!strcmp(name, "fp32")) *w = SAMPLER_WEIGHTS_FP32;
    else if (!strcmp(name, "bf16")) *w = SAMPLER_WEIGHTS_BF16;
    else return rlhf_error_set(err, RLHF_EINVAL, where, "weights must be \"fp32\" or \"bf16\", got \"%s\"", name);
    return 0;
}

int sampler_create(sampler **out, const model *m, int max_batch, rlhf_error *err) {
    sampler_options o = {.max_batch = max_batch, .weights = SAMPLER_WEIGHTS_FP32};
    return sampler_create_with(out, m, &o, err);
}

int sampler_create_with(sampler **out, const model *m, const sampler_options *opt, rlhf_error *err) {
    *out = NULL;
    int max_batch = opt->max_batch;
    int rc0 = model_require_fp32(m, "sampling", err);
    if (rc0) return rc0;
    if (opt->weights != SAMPLER_WEIGHTS_FP32 && opt->weights != SAMPLER_WEIGHTS_BF16)
        return RLHF_FAIL(err, RLHF_EINVAL, "sampler weights: unknown precision %d", (int)opt->weights);
    if (max_batch < 1 || max_batch > 65536)
        return RLHF_FAIL(err, RLHF_EINVAL, "sampler max_batch must be in 1..65536, got %d", max_batch);
    const model_config *c = &m->cfg;
    const model_kernels *kern;
    int rc = model_kernels_select(&kern, err);
    if (rc) return rc;
    sampler *s = calloc(1, sizeof *s);
    if (!s) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    s->m = m;
    s->k = kern;
    s->bf16 = opt->weights == SAMPLER_WEIGHTS_BF16;
    s->max_batch = max_batch;
    s->T = c->max_seq_len;
    s->max_rows = max_batch + (c->max_seq_len < 512 ? c->max_seq_len : 512);
    int D = model_head_dim(c), KD = c->n_kv_heads * D, HD = c->n_heads * D;
    size_t R = (size_t)s->max_rows, C = (size_t)c->dim, F = (size_t)c->ffn_dim, V = (size_t)c->vocab_size;
    s->kv_off = calloc((size_t)c->n_layers, sizeof *s->kv_off);
    s->kv_len = calloc((size_t)c->n_layers, sizeof *s->kv_len);
    s->split_idx = malloc(6 * R * sizeof(int));
    s->split_cnt = malloc((size_t)max_batch * sizeof(int));
    size_t cache = 0;
    for (int l = 0; s->kv_off && s->kv_len && l < c->n_layers; l++) {
        int src = model_kv_source(c, l);
        if (src != l) { /* kv_share: no cache of its own */
            s->kv_off[l] = s->kv_off[src];
            s->kv_len[l] = s->kv_len[src];
            continue;
        }
        int W = model_attn_window(c, l);
        /* a consumer's window never exceeds its source's (model_config_validate) */
        s->kv_len[l] = W > 0 && W + SAMPLER_RING_SLACK < s->T ? W + SAMPLER_RING_SLACK : s->T;
        if (s->kv_len[l] < s->T) s->ring_rows = SAMPLER_RING_SLACK + 1;
        s->kv_off[l] = cache;
        cache += (size_t)max_batch * s->kv_len[l] * KD;
    }
    s->kv_floats = cache;
    s->k_cache = big_alloc(cache * sizeof(float));
    s->v_cache = big_alloc(cache * sizeof(float));
    s->rope_cos = malloc((size_t)s->T * (D / 2) * sizeof(float));
    s->rope_sin = malloc((size_t)s->T * (D / 2) * sizeof(float));
    s->x = malloc(R * C * sizeof(float));
    s->xn = malloc(R * C * sizeof(float));
    s->qkv = malloc(R * (HD + 2 * KD) * sizeof(float));
    s->att = malloc(R * HD * sizeof(float));
    s->gu = malloc(R * 2 * F * sizeof(float));
    s->xl = malloc(R * C * sizeof(float));
    s->logits = big_alloc((size_t)max_batch * V * sizeof(float));
    s->row_slot = malloc(R * sizeof(int));
    s->row_pos = malloc(R * sizeof(int));
    s->logit_rows = malloc(R * sizeof(int));
    s->row_tok = malloc(R * sizeof(int32_t));
    s->n_threads = omp_get_max_threads();
    s->att_scratch = malloc((size_t)s->n_threads * (s->T + 128 + D) * sizeof(float));
    s->pick_cands = malloc((size_t)s->n_threads * V * sizeof(cand));
    s->pick_e = malloc((size_t)s->n_threads * V * sizeof(float));
    s->pick_tok = malloc((size_t)max_batch * sizeof(int32_t));
    s->pick_lp = malloc((size_t)max_batch * 2 * sizeof(float));
    {
        int HDs = c->n_heads * D;
        size_t sizes[4] = {sampler_packed_size(HDs + 2 * KD, c->dim), sampler_packed_size(c->dim, HDs),
                           sampler_packed_size(2 * c->ffn_dim, c->dim), sampler_packed_size(c->dim, c->ffn_dim)};
        size_t off = 0;
        for (int i = 0; i < 4; i++) {
            s->pk_off[i] = off;
            off += sizes[i];
        }
        s->pk_layer = off;
        s->pk_head = off * (size_t)c->n_layers;
        s->wpack = big_alloc((s->pk_head + sampler_packed_size(c->vocab_size, c->dim)) *
                             (s->bf16 ? sizeof(uint16_t) : sizeof(float)));
    }
    if (!s->wpack || !s->k_cache || !s->v_cache || !s->kv_off || !s->kv_len || !s->split_idx || !s->split_cnt || !s->rope_cos || !s->rope_sin || !s->x || !s->xn || !s->qkv ||
        !s->att || !s->gu || !s->xl || !s->logits || !s->row_slot || !s->row_pos || !s->logit_rows ||
        !s->row_tok || !s->att_scratch || !s->pick_cands || !s->pick_e || !s->pick_tok || !s->pick_lp) {
        sampler_destroy(&s);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate the sampler (KV cache %zu MiB for %d slots x %d positions)",
                         2 * cache * sizeof(float) >> 20, max_batch, c->max_seq_len);
    }
    sampler_sync_weights(s);
    /* angle = pos * inverse frequency, computed in double then rounded once */
    for (int p = 0; p < s->T; p++)
        for (int i = 0; i < D / 2; i++) {
            double ang = (double)p * model_rope_inv_freq(c, i);
            s->rope_cos[(size_t)p * (D / 2) + i] = (float)cos(ang);
            s->rope_sin[(size_t)p * (D / 2) + i] = (float)sin(ang);
        }
    *out = s;
    return 0;
}

void sampler_destroy(sampler **ps) {
    if (!ps || !*ps) return;
    sampler *s = *ps;
    free(s->wpack);
    free(s->k_cache);
    free(s->v_cache);
    free(s->kv_off);
    free(s->kv_len);
    free(s->split_idx);
    free(s->split_cnt);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->x);
    free(s->xn);
    free(s->qkv);
    free(s->att);
    free(s->gu);
    free(s->xl);
    free(s->logits);
    free(s->row_slot);
    free(s->row_pos);
    free(s->logit_rows);
    free(s->row_tok);
    free(s->att_scratch);
    free(s->pick_cands);
    free(s->pick_e);
    free(s->pick_tok);
    free(s->pick_lp);
    free(s);
    *ps = NULL;
}

/* ---------------------------------------------------------------- forward step */

/* out (R, OC) (+)= in (R, IC) @ W^T for the packed matrix at element offset off, in the sampler's precision */
static void packed_matmul(sampler *s, float *out, const float *in, int ld_in, size_t off, int R, int IC, int OC,
                          int accumulate) {
    matmul_any(s->k, out, in, ld_in, (const char *)s->wpack + off * (s->bf16 ? sizeof(uint16_t) : sizeof(float)),
               s->bf16, R, IC, OC, accumulate);
}

/* Unchecked step: see sampler_step. The logits of logit_rows[i] go to row logit_dst[i] of logits (logit_dst
 * ascending; NULL: row i). */
static void forward_rows(sampler *s, int R, const int *slot, const int *pos, const int32_t *tok, int n_logits,
                         const int *logit_rows, const int *logit_dst, float *logits) {
    const model *m = s->m;
    const model_config *c = &m->cfg;
    const model_params *p = &m->p;
    int C = c->dim, H = c->n_heads, KVH = c->n_kv_heads, D = model_head_dim(c), F = c->ffn_dim, V = c->vocab_size;
    int HD = H * D, KD = KVH * D, QKV = HD + 2 * KD;
    float *x = s->x;   // (R, C)
    float *xn = s->xn; // (R, C)
    for (int r = 0; r < R; r++) {
        memcpy(x + (size_t)r * C, p->embed + (size_t)tok[r] * C, (size_t)C * sizeof(float));
        if (s->bf16) /* every matrix of a bf16 sampler is bf16, the embedding too */
            for (int i = 0; i < C; i++) x[(size_t)r * C + i] = model_bf16_to_f32(model_bf16_round(x[(size_t)r * C + i]));
    }
    for (int l = 0; l < c->n_layers; l++) {
        size_t pk = (size_t)l * s->pk_layer; /* this layer's packed matrices */
        int ks = model_kv_slot(c, l), own = ks >= 0, rope = model_attn_rope(c, l);
        int ld = own ? QKV : HD; /* a kv_share layer projects q only: rows HD apart */
        smp_rmsnorm_forward(s->k, xn, x, p->attn_norm + (size_t)l * C, R, C, c->norm_eps);
        packed_matmul(s, s->qkv, xn, C, pk + s->pk_off[0], R, C, ld, 0); // (R, H*D | KVH*D | KVH*D) or (R, H*D)
        float *q = s->qkv, *k = s->qkv + HD, *v = s->qkv + HD + KD;     // rows ld apart
        if (c->attn_bias)
            smp_qkv_bias_forward(s->qkv, ld, p->bq + (size_t)l * HD, own ? p->bk + (size_t)ks * KD : NULL,
                                 own ? p->bv + (size_t)ks * KD : NULL, R, HD, own ? KD : 0);
        if (c->qk_norm) { /* per head, before RoPE */
            smp_head_rmsnorm_forward(s->k, q, ld, p->q_norm + (size_t)l * D, R, H, D, c->norm_eps);
            if (own) smp_head_rmsnorm_forward(s->k, k, ld, p->k_norm + (size_t)ks * D, R, KVH, D, c->norm_eps);
        }
        if (rope) smp_rope_forward(s->k, q, ld, pos, s->rope_cos, s->rope_sin, R, H, D);
        if (rope && own) smp_rope_forward(s->k, k, ld, pos, s->rope_cos, s->rope_sin, R, KVH, D);
        int Tc = s->kv_len[l];                      /* positions per slot in this layer's (or its source's) cache */
        size_t slot_stride = (size_t)Tc * KD;
        float *kc = s->k_cache + s->kv_off[l]; // (B, KVH, D, Tc)
        float *vc = s->v_cache + s->kv_off[l]; // (B, Tc, KVH*D)
        for (int r = 0; own && r < R; r++) {
            const float *kr = k + (size_t)r * QKV;
            int at = pos[r] % Tc; /* ring index (= pos for a global layer) */
            float *kT = kc + (size_t)slot[r] * slot_stride + at;
            for (int j = 0; j < KD; j++) kT[(size_t)j * Tc] = kr[j]; /* (KVH*D) -> column at of (KVH, D, Tc) */
            memcpy(vc + (size_t)slot[r] * slot_stride + (size_t)at * KD, v + (size_t)r * QKV,
                   (size_t)KD * sizeof(float));
        }
        smp_attention_forward(s->k, s->att, q, ld, kc, vc, slot, pos, R, H, KVH, D, Tc, model_attn_window(c, l),
                              s->att_scratch, s->T, region_threads(s));
        packed_matmul(s, x, s->att, HD, pk + s->pk_off[1], R, HD, C, 1); // x += att @ wo^T
        smp_rmsnorm_forward(s->k, xn, x, p->ffn_norm + (size_t)l * C, R, C, c->norm_eps);
        packed_matmul(s, s->gu, xn, C, pk + s->pk_off[2], R, C, 2 * F, 0); // (R, F | F)
        smp_swiglu_forward(s->k, s->gu, R, F);
        packed_matmul(s, x, s->gu, 2 * F, pk + s->pk_off[3], R, F, C, 1); // x += h @ w_down^T
    }
    /* only the rows whose next-token distribution is wanted go through the final norm and lm_head */
    for (int i = 0; i < n_logits; i++)
        smp_rmsnorm_forward(s->k, s->xl + (size_t)i * C, x + (size_t)logit_rows[i] * C, p->final_norm, 1, C, c->norm_eps);
    /* (n_logits, V); one matmul per run of consecutive destination rows */
    for (int i0 = 0, i1; i0 < n_logits; i0 = i1) {
        for (i1 = i0 + 1; logit_dst && i1 < n_logits && logit_dst[i1] == logit_dst[i1 - 1] + 1; i1++) {}
        if (!logit_dst) i1 = n_logits;
        packed_matmul(s, logits + (size_t)(logit_dst ? logit_dst[i0] : i0) * V, s->xl + (size_t)i0 * C, C, s->pk_head,
                      i1 - i0, C, V, 0);
    }
}

/* forward_rows, split into passes when local layers keep ring buffers: a pass holds at most ring_rows
 * rows of any one sequence (its rows in step order), so no row's key or value overwrites a ring entry a
 * row of the same pass still attends to; later passes see the earlier ones' entries like a later step. */
static void forward_step(sampler *s, int R, const int *slot, const int *pos, const int32_t *tok, int n_logits,
                         const int *logit_rows, float *logits) {
    int most = 0, *rank = s->split_idx, *cnt = s->split_cnt;
    if (s->ring_rows) {
        for (int r = 0; r < R; r++) cnt[slot[r]] = 0;
        for (int r = 0; r < R; r++) {
            rank[r] = cnt[slot[r]]++;
            most = rank[r] + 1 > most ? rank[r] + 1 : most;
        }
    }
    if (!s->ring_rows || most <= s->ring_rows) {
        forward_rows(s, R, slot, pos, tok, n_logits, logit_rows, NULL, logits);
        return;
    }
    int *ps = rank + R; /* a pass's rows, logit rows and logit destinations */
    int *p_slot = ps, *p_pos = ps + R, *p_tok = ps + 2 * R, *p_lrow = ps + 3 * R, *p_ldst = ps + 4 * R;
    for (int pass = 0; pass * s->ring_rows < most; pass++) {
        int n = 0, nl = 0, lo = pass * s->ring_rows, hi = lo + s->ring_rows;
        for (int r = 0; r < R; r++) {
            if (rank[r] < lo || rank[r] >= hi) continue;
            p_slot[n] = slot[r];
            p_pos[n] = pos[r];
            p_tok[n] = tok[r];
            for (int i = 0; i < n_logits; i++)
                if (logit_rows[i] == r) {
                    p_lrow[nl] = n;
                    p_ldst[nl++] = i;
                }
            n++;
        }
        /* destinations ascending, as forward_rows wants */
        for (int a = 1; a < nl; a++)
            for (int b = a; b > 0 && p_ldst[b] < p_ldst[b - 1]; b--) {
                int t = p_ldst[b]; p_ldst[b] = p_ldst[b - 1]; p_ldst[b - 1] = t;
                t = p_lrow[b]; p_lrow[b] = p_lrow[b - 1]; p_lrow[b - 1] = t;
            }
        forward_rows(s, n, p_slot, p_pos, (const int32_t *)p_tok, nl, p_lrow, p_ldst, logits);
    }
}

size_t sampler_kv_bytes(const sampler *s) { return 2 * s->kv_floats * sizeof(float); }

void sampler_kv_fill(sampler *s, uint64_t seed) {
    float *caches[2] = {s->k_cache, s->v_cache};
    for (int c = 0; c < 2; c++) {
        float *p = caches[c];
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < s->kv_floats; i++) {
            uint64_t h = (i + seed + (uint64_t)c * 0x9e3779b97f4a7c15ull) * 0xd1b54a32d192ed03ull;
            p[i] = (float)((h >> 40) & 0xffff) / 65536.0f - 0.5f;
        }
    }
}

int sampler_step(sampler *s, int n_rows, const int *slot, const int *pos, const int32_t *tok, int n_logits,
                 const int *logit_rows, float *logits, rlhf_error *err) {
    if (n_rows < 1 || n_rows > s->max_rows)
        return RLHF_FAIL(err, RLHF_EINVAL, "sampler_step: n_rows must be in 1..%d, got %d", s->max_rows, n_rows);
    if (n_logits < 0 || n_logits > n_rows)
        return RLHF_FAIL(err, RLHF_EINVAL, "sampler_step: n_logits must be in 0..%d, got %d", n_rows, n_logits);
    for (int r = 0; r < n_rows; r++) {
        if (slot[r] < 0 || slot[r] >= s->max_batch)
            return RLHF_FAIL(err, RLHF_EINVAL, "sampler_step: row %d: slot %d out of range 0..%d", r, slot[r],
                             s->max_batch - 1);
        if (pos[r] < 0 || pos[r] >= s->T)
            return RLHF_FAIL(err, RLHF_EINVAL, "sampler_step: row %d: position %d out of range 0..%d", r, pos[r],
                             s->T - 1);
        if (tok[r] < 0 || tok[r] >= s->m->cfg.vocab_size)
            return RLHF_FAIL(err, RLHF_EINVAL, "sampler_step: row %d: token %d outside the vocabulary", r, tok[r]);
    }
    for (int i = 0; i < n_logits; i++)
        if (logit_rows[i] < 0 || logit_rows[i] >= n_rows)
            return RLHF_FAIL(err, RLHF_EINVAL, "sampler_step: logit row %d out of range", logit_rows[i]);
    ensure_packed(s);
    forward_step(s, n_rows, slot, pos, tok, n_logits, logit_rows, logits);
    return 0;
}

/* ---------------------------------------------------------------- token choice */

sample_params sample_params_default(void) {
    sample_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.max_new_tokens = 64;
    return p;
}

const char *sample_finish_name(sample_finish f) {
    switch (f) {
    case SAMPLE_FINISH_STOP: return "stop";
    case SAMPLE_FINISH_LENGTH: return "length";
    case SAMPLE_FINISH_MAX_SEQ_LEN: return "max_seq_len";
    default: return "none";
    }
}


/* min-heap on (z, -id) ordering used to keep the k best candidates */
static int cand_worse(const cand *a, const cand *b) { return a->z < b->z || (a->z == b->z && a->id > b->id); }

static void heap_sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && cand_worse(&h[l], &h[w])) w = l;
        if (r < n && cand_worse(&h[r], &h[w])) w = r;
        if (w == i) return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* a comes before b in the nucleus order: larger scaled logit (more probable) first, ties by smaller id */
static inline int cand_before(const cand *a, const cand *b) { return a->z > b->z || (a->z == b->z && a->id < b->id); }

static inline void cand_swap(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Reorders c[0..n) so that c[0..keep) is the smallest prefix, in cand_before order, whose mass (sum of w)
 * reaches `need`, and returns keep. Quickselect with a median-of-three pivot: expected O(n). */
static int nucleus_quickselect(cand *c, int n, double need) {
    int lo = 0, hi = n;
    double acc = 0.0; /* mass of c[0..lo), all inside the nucleus */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, last = hi - 1;
        /* median of three to c[last] */
        if (cand_before(&c[mid], &c[lo])) cand_swap(&c[mid], &c[lo]);
        if (cand_before(&c[last], &c[lo])) cand_swap(&c[last], &c[lo]);
        if (cand_before(&c[mid], &c[last])) cand_swap(&c[mid], &c[last]);
        int store = lo;
        double mass = 0.0;
        for (int i = lo; i < last; i++)
            if (cand_before(&c[i], &c[last])) {
                mass += c[i].w;
                cand_swap(&c[i], &c[store++]);
            }
        cand_swap(&c[store], &c[last]); /* pivot in place: c[lo..store) come before it */
        if (acc + mass >= need) {
            hi = store;
        } else {
            acc += mass + c[store].w;
            if (acc >= need) return store + 1;
            lo = store + 1;
        }
    }
    return lo;
}

/* Same result as nucleus_quickselect, faster on flat distributions over a large vocabulary (where the
 * nucleus holds most candidates and quickselect's data-dependent branches dominate): bucket the
 * candidates by z (monotone, so buckets respect cand_before), find the bucket where the mass crosses
 * `need` with one branch-free pass, and quickselect only inside that bucket. */
static int nucleus_select(cand *c, int n, double need) {
    enum { NB = 1024 };
    if (n < 4 * NB) {
        int keep = nucleus_quickselect(c, n, need);
        return keep > 0 ? keep : 1;
    }
    float zmin = 0.0f;
    for (int i = 0; i < n; i++) zmin = c[i].z < zmin ? c[i].z : zmin;
    float scale = zmin < 0.0f ? (float)(NB - 1) / -zmin : 0.0f;
    double mass[NB];
    memset(mass, 0, sizeof mass);
    for (int i = 0; i < n; i++) mass[(int)((c[i].z - zmin) * scale)] += c[i].w;
    int bb = NB - 1;
    double above = 0.0; /* mass of buckets above bb */
    while (bb > 0 && above + mass[bb] < need) above += mass[bb--];
    /* three groups in place: above bb | bb | below */
    int hi = 0;
    for (int i = 0; i < n; i++)
        if ((int)((c[i].z - zmin) * scale) > bb) cand_swap(&c[i], &c[hi++]);
    int mid = hi;
    for (int i = hi; i < n; i++)
        if ((int)((c[i].z - zmin) * scale) == bb) cand_swap(&c[i], &c[mid++]);
    int keep = hi + nucleus_quickselect(c + hi, mid - hi, need - above);
    return keep > 0 ? keep : 1;
}

static double rng_uniform53(rlhf_rng *r) { return (double)(rlhf_rng_u64(r) >> 11) * 0x1.0p-53; }

/* Smallest i with e[0] + ... + e[i] > target (blocks of 16 first), or the last nonzero entry when
 * rounding leaves the running sum short of target. */
static int walk_cdf(const model_kernels *k, const float *e, int n, double target) {
    double acc = 0.0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        double bs = k->sum16(e + i);
        if (acc + bs > target) break;
        acc += bs;
    }
    for (; i < n; i++) {
        acc += e[i];
        if (acc > target) return i;
    }
    for (i = n - 1; i > 0 && e[i] == 0.0f; i--) {}
    return i;
}

/* Chooses the next token from logits (V). Writes log pi(y) at temperature 1 and log q(y) under the
 * actual sampling distribution: temperature, then top-k, then top-p, then min-p (model_infer.h), then
 * renormalised. Scratch: V cands and V floats. One uniform is drawn unless greedy. */
static int32_t choose_token(const model_kernels *k, const float *logits, int V, const sample_params *sp, rlhf_rng *rng, cand *scratch,
                            float *e, float *lp_pi, float *lp_q) {
    float mx = k->max_value(logits, V);
    int amax = 0;
    while (amax < V - 1 && logits[amax] != mx) amax++; /* bounded: NaN logits must not run off */
    double sum = k->exp_shifted(e, logits, V, mx, 1.0f); /* e = exp(logits - max) */
    double lse = (double)mx + log(sum);
    if (sp->temperature == 0.0f) {
        *lp_pi = (float)((double)logits[amax] - lse);
        *lp_q = 0.0f;
        return amax;
    }
    double u = rng_uniform53(rng);
    int plain = sp->temperature == 1.0f && (sp->top_k <= 0 || sp->top_k >= V) && sp->top_p >= 1.0f &&
                sp->min_p <= 0.0f;
    if (plain) {
        int y = walk_cdf(k, e, V, u * sum);
        *lp_pi = (float)((double)logits[y] - lse);
        *lp_q = *lp_pi;
        return y;
    }
    /* scaled logits z = (logit - max) / temperature <= 0; the candidates: top-k (heap order) or all that
     * could be in the nucleus (id order) */
    float inv_t = 1.0f / sp->temperature;
    int n;
    double total;
    if (sp->top_k > 0 && sp->top_k < V) {
        int k = sp->top_k;
        for (int i = 0; i < k; i++) scratch[i] = (cand){(logits[i] - mx) * inv_t, 0.0f, i};
        for (int i = k / 2 - 1; i >= 0; i--) heap_sift_down(scratch, k, i);
        for (int i = k; i < V; i++) {
            cand c = {(logits[i] - mx) * inv_t, 0.0f, i};
            if (cand_worse(&scratch[0], &c)) {
                scratch[0] = c;
                heap_sift_down(scratch, k, 0);
            }
        }
        n = k;
        total = 0.0;
        for (int i = 0; i < n; i++) total += (scratch[i].w = expf(scratch[i].z));
    } else {
        /* A token with probability below (1 - top_p) / (V - 1) can never be inside the nucleus (all such
         * tokens together hold less than 1 - top_p), so it is not even a candidate; nor is one below
         * min_p times the most probable token's weight e[amax] (the min-p filter below would drop it, and
         * dropping it first leaves the nucleus of the rest unchanged: it is a suffix in nucleus order). */
        total = inv_t == 1.0f ? sum : k->exp_shifted(e, logits, V, mx, inv_t);
        double cut = sp->top_p < 1.0f && V > 1 ? (1.0 - (double)sp->top_p) / (double)(V - 1) * total : 0.0;
        if (sp->min_p > 0.0f && (double)sp->min_p * e[amax] > cut) cut = (double)sp->min_p * e[amax];
        n = 0;
        for (int i = 0; i < V; i++)
            if (!(e[i] < cut)) scratch[n++] = (cand){(logits[i] - mx) * inv_t, e[i], i};
    }
    /* the nucleus: smallest set of most likely candidates holding top_p of the (top-k renormalised or
     * full) mass, found by selection, not sorting; it ends up in scratch[0..keep) */
    int keep = sp->top_p < 1.0f ? nucleus_select(scratch, n, (double)sp->top_p * total) : n;
    if (sp->min_p > 0.0f) {
        /* min-p against the most probable survivor, compacting in place (order kept: the draw below
         * walks the survivors in the order the selection left them) */
        float wmax = 0.0f;
        for (int i = 0; i < keep; i++) wmax = scratch[i].w > wmax ? scratch[i].w : wmax;
        float floor_w = sp->min_p * wmax;
        int m = 0;
        for (int i = 0; i < keep; i++)
            if (scratch[i].w >= floor_w) scratch[m++] = scratch[i];
        keep = m;
    }
    double kept = 0.0;
    for (int i = 0; i < keep; i++) kept += scratch[i].w;
    double target = u * kept, acc = 0.0;
    int pick = keep - 1;
    for (int i = 0; i < keep; i++) {
        acc += scratch[i].w;
        if (acc > target) {
            pick = i;
            break;
        }
    }
    int32_t y = scratch[pick].id;
    *lp_pi = (float)((double)logits[y] - lse);
    *lp_q = (float)(log((double)scratch[pick].w) - log(kept));
    return y;
}

/* A constrained choice (sample_constraint): the allowed logits are gathered (in id order) and chosen from
 * by choose_token, so temperature and the filters act on the masked distribution and log q is its
 * renormalised log-prob; log pi is the unmasked policy's. One allowed token is taken without a draw. */
typedef struct cmask_t {
    const uint64_t *bits; /* NULL: the sequence is not constrained */
    int n;
    int32_t only;
} cmask_t;

static int32_t choose_masked(const model_kernels *k, const float *logits, int V, const sample_params *sp, rlhf_rng *rng,
                             cand *scratch, float *e, float *sub, const cmask_t *cm, float *lp_pi, float *lp_q) {
    float mx = k->max_value(logits, V);
    double lse = (double)mx + log(k->exp_shifted(e, logits, V, mx, 1.0f));
    int32_t y;
    if (cm->n == 1) {
        y = cm->only;
        *lp_q = 0.0f;
    } else {
        int32_t *ids = (int32_t *)(sub + V);
        int n = 0;
        for (int w = 0; w < (V + 63) / 64; w++)
            for (uint64_t b = cm->bits[w]; b; b &= b - 1) {
                int id = w * 64 + __builtin_ctzll(b);
                if (id >= V) break;
                sub[n] = logits[id];
                ids[n++] = id;
            }
        float ignored;
        y = ids[choose_token(k, sub, n, sp, rng, scratch, e, &ignored, lp_q)];
    }
    *lp_pi = (float)((double)logits[y] - lse);
    return y;
}

/* ---------------------------------------------------------------- sampler_run */

typedef struct slot_state {
    long req;       /* admission index of the request in this slot, -1 when free */
    sample_request rq;  /* the request (its arrays are the caller's until done) */
    sample_result res;  /* its result so far */
    int fed;        /* prompt tokens already in the cache */
    int refeed;     /* >= 0: recomputing the cache after new weights, positions [0, refeed) done; -1: not */
    int32_t last;   /* last sampled token (fed at the next decode step) */
    size_t text_cap;
    rlhf_rng rng;
} slot_state;

void sample_result_free(sample_result *r) {
    if (!r) return;
    free(r->tokens);
    free(r->logprobs);
    free(r->sampling_logprobs);
    free(r->versions);
    free(r->text);
    memset(r, 0, sizeof *r);
    r->stop_string = -1;
}

static int validate_request(const sampler *s, const tokenizer *tok, const sample_request *rq, int i,
                            rlhf_error *err) {
    char where[64];
    snprintf(where, sizeof where, "request %d", i);
    const sample_params *p = &rq->params;
    if (!rq->prompt || rq->prompt_len < 1) return rlhf_error_set(err, RLHF_EINVAL, where, "empty prompt");
    if (rq->prompt_len >= s->T)
        return rlhf_error_set(err, RLHF_EINVAL, where,
                              "prompt has %d tokens but max_seq_len is %d (at most %d prompt tokens leave room to "
                              "generate)",
                              rq->prompt_len, s->T, s->T - 1);
    for (int t = 0; t < rq->prompt_len; t++)
        if (rq->prompt[t] < 0 || rq->prompt[t] >= s->m->cfg.vocab_size)
            return rlhf_error_set(err, RLHF_EINVAL, where, "prompt token %d at index %d is outside the vocabulary",
                                  rq->prompt[t], t);
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return rlhf_error_set(err, RLHF_EINVAL, where, "temperature must be >= 0, got %g", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return rlhf_error_set(err, RLHF_EINVAL, where, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (p->top_k < 0) return rlhf_error_set(err, RLHF_EINVAL, where, "top_k must be >= 0, got %d", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return rlhf_error_set(err, RLHF_EINVAL, where, "min_p must be in [0, 1], got %g", (double)p->min_p);
    if (p->max_new_tokens < 0)
        return rlhf_error_set(err, RLHF_EINVAL, where, "max_new_tokens must be >= 0, got %d", p->max_new_tokens);
    if (p->n_stop_ids < 0 || (p->n_stop_ids && !p->stop_ids))
        return rlhf_error_set(err, RLHF_EINVAL, where, "bad stop id list");
    for (int j = 0; j < p->n_stop_ids; j++)
        if (p->stop_ids[j] < 0 || p->stop_ids[j] >= s->m->cfg.vocab_size)
            return rlhf_error_set(err, RLHF_EINVAL, where, "stop id %d is outside the vocabulary", p->stop_ids[j]);
    if (p->n_stop_strings < 0 || (p->n_stop_strings && !p->stop_strings))
        return rlhf_error_set(err, RLHF_EINVAL, where, "bad stop string list");
    if (p->n_stop_strings && !tok) return rlhf_error_set(err, RLHF_EINVAL, where, "stop strings need a tokenizer");
    for (int j = 0; j < p->n_stop_strings; j++)
        if (!p->stop_strings[j] || !p->stop_strings[j][0])
            return rlhf_error_set(err, RLHF_EINVAL, where, "stop string %d is empty", j);
    return 0;
}

static int grow_text(sample_result *res, size_t *cap, size_t need) {
    if (need + 1 <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need + 1) nc *= 2;
    char *p = realloc(res->text, nc);
    if (!p) return RLHF_ENOMEM;
    res->text = p;
    *cap = nc;
    return 0;
}

/* Records token y for the slot's request; returns 1 when the sequence is finished. */
static int accept_token(sampler *s, const tokenizer *tok, const sample_request *rq, sample_result *res,
                        slot_state *st, int32_t y, float lp_pi, float lp_q, int *oom) {
    const sample_params *p = &rq->params;
    res->tokens[res->n_tokens] = y;
    res->logprobs[res->n_tokens] = lp_pi;
    res->sampling_logprobs[res->n_tokens] = lp_q;
    res->versions[res->n_tokens] = s->m->version;
    res->n_tokens++;
    st->last = y;
    if (tok) {
        char piece[64];
        size_t k = tok->ops->token_bytes(tok, y, piece, sizeof piece);
        size_t old = res->text_len;
        if (grow_text(res, &st->text_cap, old + k)) {
            *oom = 1;
            return 1;
        }
        if (k <= sizeof piece)
            memcpy(res->text + old, piece, k);
        else
            tok->ops->token_bytes(tok, y, res->text + old, k);
        res->text_len = old + k;
        res->text[res->text_len] = 0;
        /* a stop string can only newly appear in a window ending in the new bytes; take the earliest */
        size_t best = (size_t)-1;
        for (int j = 0; j < p->n_stop_strings && k; j++) {
            size_t sl = strlen(p->stop_strings[j]);
            size_t from = old + 1 > sl ? old + 1 - sl : 0;
            const char *hit = memmem(res->text + from, res->text_len - from, p->stop_strings[j], sl);
            if (hit && (size_t)(hit - res->text) < best) {
                best = (size_t)(hit - res->text);
                res->stop_string = j;
            }
        }
        if (best != (size_t)-1) {
            if (p->include_stop) best += strlen(p->stop_strings[res->stop_string]);
            res->text_len = best;
            res->text[best] = 0;
            res->finish = SAMPLE_FINISH_STOP;
            return 1;
        }
    }
    for (int j = 0; j < p->n_stop_ids; j++)
        if (y == p->stop_ids[j]) {
            res->finish = SAMPLE_FINISH_STOP;
            return 1;
        }
    if (res->n_tokens >= p->max_new_tokens) {
        res->finish = SAMPLE_FINISH_LENGTH;
        return 1;
    }
    if (rq->prompt_len + res->n_tokens >= s->T) {
        res->finish = SAMPLE_FINISH_MAX_SEQ_LEN;
        return 1;
    }
    return 0;
}

/* Starts result res for request rq: arrays sized for the most tokens it can produce. */
static int result_start(sampler *s, const tokenizer *tok, const sample_request *rq, sample_result *res,
                        size_t *text_cap) {
    memset(res, 0, sizeof *res);
    res->stop_string = -1;
    *text_cap = 64;
    if (tok && !(res->text = calloc(1, 64))) return RLHF_ENOMEM;
    int cap = rq->params.max_new_tokens;
    if (cap > s->T - rq->prompt_len) cap = s->T - rq->prompt_len;
    if (cap < 1) cap = 1;
    res->tokens = malloc((size_t)cap * sizeof(int32_t));
    res->logprobs = malloc((size_t)cap * sizeof(float));
    res->sampling_logprobs = malloc((size_t)cap * sizeof(float));
    res->versions = malloc((size_t)cap * sizeof(uint64_t));
    return res->tokens && res->logprobs && res->sampling_logprobs && res->versions ? 0 : RLHF_ENOMEM;
}

/* The pieces model/speculative.c shares with this loop (sampler_int.h). */
int sampler_int_validate(const sampler *s, const tokenizer *tok, const sample_request *rq, int i, rlhf_error *err) {
    return validate_request(s, tok, rq, i, err);
}
int sampler_int_result_start(sampler *s, const tokenizer *tok, const sample_request *rq, sample_result *res,
                             size_t *text_cap) {
    return result_start(s, tok, rq, res, text_cap);
}
int sampler_int_accept(sampler *s, const tokenizer *tok, const sample_request *rq, sample_result *res,
                       size_t *text_cap, int32_t y, float lp_pi, float lp_q, int *oom) {
    slot_state st;
    memset(&st, 0, sizeof st);
    st.text_cap = *text_cap;
    int r = accept_token(s, tok, rq, res, &st, y, lp_pi, lp_q, oom);
    *text_cap = st.text_cap;
    return r;
}
int sampler_int_max_batch(const sampler *s) { return s->max_batch; }
const model *sampler_int_model(const sampler *s) { return s->m; }
const model_kernels *sampler_int_kernels(const sampler *s) { return s->k; }

int sampler_run_stream(sampler *s, const tokenizer *tok, const sampler_source *src, rlhf_error *err) {
    if (tok && tok->vocab_size != s->m->cfg.vocab_size)
        return RLHF_FAIL(err, RLHF_EINVAL, "tokenizer vocab_size %d differs from the model's %d", tok->vocab_size,
                         s->m->cfg.vocab_size);
    int V = s->m->cfg.vocab_size, B = s->max_batch;
    slot_state *st = calloc((size_t)B, sizeof *st);
    int *logit_slot = malloc((size_t)B * sizeof(int));
    cmask_t *cmask = calloc((size_t)B, sizeof *cmask);
    float *sub_logits = NULL; /* (n_threads, 2V): the allowed logits and their ids, when a request is constrained */
    if (!st || !logit_slot || !cmask) {
        free(st);
        free(logit_slot);
        free(cmask);
        return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    }
    for (int b = 0; b < B; b++) st[b].req = -1;
    ensure_packed(s);
    long admitted = 0;
    int active = 0, source_empty = 0, rc = 0;
    for (;;) {
        if (src->before_step) {
            int r = src->before_step(src->ctx, err);
            if (r < 0) {
                rc = r;
                break;
            }
            if (r > 0) {
                ensure_packed(s); /* the weights may have changed */
                if (src->recompute_on_new_weights)
                    for (int b = 0; b < B; b++) {
                        if (st[b].req < 0) continue;
                        if (st[b].res.n_tokens == 0) st[b].fed = 0; /* its prompt again */
                        else st[b].refeed = 0;                      /* its prompt and tokens again */
                    }
            }
        }
        /* admit waiting requests into free slots; asked again before every step while any is in flight */
        source_empty = 0;
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
                if ((rc = validate_request(s, tok, &rq, (int)admitted, err))) break;
                long index = admitted++;
                st[b].rq = rq;
                if (result_start(s, tok, &rq, &st[b].res, &st[b].text_cap)) {
                    sample_result_free(&st[b].res);
                    rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for sampling results");
                    break;
                }
                if (rq.params.max_new_tokens == 0) { /* nothing to generate: finished at once */
                    st[b].res.finish = SAMPLE_FINISH_LENGTH;
                    rc = src->done(src->ctx, &st[b].rq, index, &st[b].res, err);
                    memset(&st[b].res, 0, sizeof st[b].res);
                    continue;
                }
                st[b].req = index;
                st[b].fed = 0;
                st[b].refeed = -1;
                rlhf_rng_seed(&st[b].rng, rq.params.seed);
                active++;
                break;
            }
        }
        if (rc || active == 0) break;
        /* rows: one decode row per generating slot, then prompt rows within the remaining budget */
        int R = 0, NL = 0;
        for (int b = 0; b < B; b++) {
            if (st[b].req < 0 || st[b].fed < st[b].rq.prompt_len || st[b].refeed >= 0) continue;
            s->row_slot[R] = b;
            s->row_pos[R] = st[b].rq.prompt_len + st[b].res.n_tokens - 1;
            s->row_tok[R] = st[b].last;
            logit_slot[NL] = b;
            s->logit_rows[NL++] = R++;
        }
        /* a sequence recomputing its cache under new weights: prompt and sampled tokens but the last
         * (which the next decode row feeds), no logits; it samples again from the next step on */
        for (int b = 0; b < B && R < s->max_rows; b++) {
            if (st[b].req < 0 || st[b].refeed < 0) continue;
            const sample_request *rq = &st[b].rq;
            int need = rq->prompt_len + st[b].res.n_tokens - 1, chunk = need - st[b].refeed;
            if (chunk > s->max_rows - R) chunk = s->max_rows - R;
            for (int t = 0; t < chunk; t++) {
                int pos = st[b].refeed + t;
                s->row_slot[R] = b;
                s->row_pos[R] = pos;
                s->row_tok[R] = pos < rq->prompt_len ? rq->prompt[pos] : st[b].res.tokens[pos - rq->prompt_len];
                R++;
            }
            st[b].refeed += chunk;
            if (st[b].refeed == need) st[b].refeed = -1;
        }
        for (int b = 0; b < B && R < s->max_rows; b++) {
            if (st[b].req < 0) continue;
            const sample_request *rq = &st[b].rq;
            if (st[b].fed >= rq->prompt_len) continue;
            int chunk = rq->prompt_len - st[b].fed;
            if (chunk > s->max_rows - R) chunk = s->max_rows - R;
            for (int t = 0; t < chunk; t++) {
                s->row_slot[R] = b;
                s->row_pos[R] = st[b].fed + t;
                s->row_tok[R] = rq->prompt[st[b].fed + t];
                R++;
            }
            st[b].fed += chunk;
            if (st[b].fed == rq->prompt_len) {
                logit_slot[NL] = b;
                s->logit_rows[NL++] = R - 1;
            }
        }
        forward_step(s, R, s->row_slot, s->row_pos, s->row_tok, NL, s->logit_rows, s->logits);
        /* constrained sequences: their masks, asked on this thread (sample_constraint) */
        for (int i = 0; i < NL && !rc; i++) {
            const sample_constraint *c = st[logit_slot[i]].rq.params.constraint;
            cmask[i].bits = NULL;
            if (!c) continue;
            if (!sub_logits && !(sub_logits = malloc((size_t)s->n_threads * V * (sizeof(float) + sizeof(int32_t))))) {
                rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
                break;
            }
            if ((rc = c->mask(c->ctx, &cmask[i].bits, &cmask[i].n, &cmask[i].only, err))) break;
            if (cmask[i].n <= 0 || !cmask[i].bits) {
                rc = rlhf_error_set(err, RLHF_EINVAL, "sampler", "the constraint allows no token");
                break;
            }
        }
        if (rc) break;
        /* choose tokens: independent per sequence, so parallel and order-free */
        int32_t *ys = s->pick_tok; // (NL)
        float *lps = s->pick_lp;   // (NL, 2)
#pragma omp parallel if (NL > 1) num_threads(region_threads(s))
        {
            cand *scratch = s->pick_cands + (size_t)omp_get_thread_num() * V; // (V)
            float *e = s->pick_e + (size_t)omp_get_thread_num() * V;          // (V)
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < NL; i++) {
                slot_state *ss = &st[logit_slot[i]];
                if (cmask[i].bits)
                    ys[i] = choose_masked(s->k, s->logits + (size_t)i * V, V, &ss->rq.params, &ss->rng, scratch, e,
                                          sub_logits + (size_t)omp_get_thread_num() * V * 2, &cmask[i], &lps[2 * i],
                                          &lps[2 * i + 1]);
                else
                    ys[i] = choose_token(s->k, s->logits + (size_t)i * V, V, &ss->rq.params, &ss->rng, scratch, e,
                                         &lps[2 * i], &lps[2 * i + 1]);
            }
        }
        int oom = 0;
        for (int i = 0; i < NL && !rc; i++) {
            slot_state *ss = &st[logit_slot[i]];
            const sample_constraint *c = ss->rq.params.constraint;
            if (c && (rc = c->accept(c->ctx, ys[i], err))) break;
            if (accept_token(s, tok, &ss->rq, &ss->res, ss, ys[i], lps[2 * i], lps[2 * i + 1], &oom)) {
                if (oom) {
                    rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory for sampled text");
                    break;
                }
                long index = ss->req;
                ss->req = -1;
                active--;
                rc = src->done(src->ctx, &ss->rq, index, &ss->res, err); /* the result is the callee's now */
                memset(&ss->res, 0, sizeof ss->res);
            }
        }
    }
    for (int b = 0; b < B; b++) sample_result_free(&st[b].res); /* sequences cut short by an error */
    free(st);
    free(logit_slot);
    free(cmask);
    free(sub_logits);
    return rc;
}

int sampler_array_next(void *ctx, sample_request *req, rlhf_error *err) {
    (void)err;
    sampler_array_source *a = ctx;
    if (a->next >= a->n) return 0;
    *req = a->reqs[a->next++];
    return 1;
}

int sampler_array_done(void *ctx, const sample_request *req, long index, sample_result *res, rlhf_error *err) {
    (void)err;
    (void)req;
    sampler_array_source *a = ctx;
    a->results[index] = *res;
    return 0;
}

int sampler_run(sampler *s, const tokenizer *tok, const sample_request *reqs, int n, sample_result *results,
                rlhf_error *err) {
    int rc;
    if (n < 0) return RLHF_FAIL(err, RLHF_EINVAL, "negative request count");
    if (tok && tok->vocab_size != s->m->cfg.vocab_size)
        return RLHF_FAIL(err, RLHF_EINVAL, "tokenizer vocab_size %d differs from the model's %d", tok->vocab_size,
                         s->m->cfg.vocab_size);
    for (int i = 0; i < n; i++)
        if ((rc = validate_request(s, tok, &reqs[i], i, err))) return rc;
    for (int i = 0; i < n; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].stop_string = -1;
    }
    sampler_array_source a = {.reqs = reqs, .n = n, .results = results};
    sampler_source src = {.ctx = &a, .next = sampler_array_next, .done = sampler_array_done};
    rc = sampler_run_stream(s, tok, &src, err);
    if (rc)
        for (int i = 0; i < n; i++) sample_result_free(&results[i]);
    return rc;
}
