/* model/train.c — the training forward/backward: a tape of ops recorded during the forward pass and
 * replayed in reverse. Each tape entry names an op kind and the buffers its backward needs; every
 * activation lives in one arena and its gradient at the same offset in a twin arena, so an op only
 * records value pointers and finds gradients by offset (GRAD(t, p)). */
#include "model/model.h"
#include "model/ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    OP_EMBEDDING,
    OP_RMSNORM,
    OP_MATMUL,
    OP_ROPE,
    OP_ATTENTION,
    OP_SWIGLU,
    OP_RESIDUAL,
    OP_LOGSOFTMAX,
    OP_LORA, /* a LoRA branch added to the output of the matmul at tape index base_op */
} op_kind;

typedef struct tape_op {
    op_kind kind;
    float *out;        /* activation written by the op (its gradient is GRAD(out)) */
    float *out2;       /* second output (entropy for OP_LOGSOFTMAX), or NULL */
    size_t out_numel;  /* floats of `out` (and of out2) */
    float *in[3];      /* activation inputs */
    int prod[3];       /* tape index of the op that produced in[k] (-1: none) */
    const float *w;    /* parameter read (matmul/norm weight, embedding table) */
    const uint16_t *w16; /* or the matmul's frozen bf16 weight (model.bf16_mem) */
    float *dw;         /* its gradient */
    const float *b;    /* matmul bias added to every output row (attn_bias), or NULL */
    float *db;         /* its gradient */
    float *aux;        /* saved statistics: rstd, attention probabilities, lse; LoRA: u (N, R) */
    int n, ic, oc;     /* rows and matmul sizes / C for norms and embedding, V for log-softmax */
    /* OP_LORA: B (w is A) and its gradient, the input A read (in[0] or its dropout copy), rank, scale,
     * the dropout key, and the tape index of the base matmul whose output it adds to */
    const float *w2;
    float *dw2;
    const float *xa;
    int r, base_op;
    float scale;
    uint64_t drop_key;
} tape_op;

typedef struct layer_acts {
    float *ln1, *rstd1;        // (N, C), (N)
    float *q, *k, *v;          // (N, H*D), (N, KVH*D), (N, KVH*D) projections (+ bias) (v never rotates)
    float *qn, *kn;            // (N, H*D), (N, KVH*D) per-head RMSNorm of q, k (qk_norm only)
    float *rstdq, *rstdk;      // (N*H), (N*KVH) their saved 1/rms (qk_norm only)
    float *qr, *kr;            // after RoPE
    float *att;                // (B, H, T, T) probabilities
    float *atty;               // (N, H*D)
    float *attproj, *res1;     // (N, C)
    float *ln2, *rstd2;        // (N, C), (N)
    float *gate, *up, *swi;    // (N, F)
    float *mlp, *res2;         // (N, C)
    float *katt;               // (N, KVH*D) the keys attention reads (kr, or k/kn without RoPE); not an arena slot
} layer_acts;

struct model_trainer {
    model *m;
    int max_B, max_T;
    int B, T;                  /* of the last forward */
    float *act, *act_grad;     /* twin arenas */
    size_t act_numel;
    float *grads;              /* parameter gradients, model layout */
    model_params dp;           /* views into grads */
    float *scratch;            /* attention backward, per thread */
    float *wbuf;               /* (MATMUL_BF16_SCRATCH) widened rows of a bf16 base's matrices, or NULL */
    int scratch_threads;       /* threads `scratch` has room for */
    float *rope_cos, *rope_sin; // (max_T, D/2)
    int32_t *tokens, *targets; // (max_B * max_T)
    layer_acts *layers;
    float *x0;                 // (N, C) embedding output
    float *lnf, *rstdf;        // (N, C), (N)
    float *logits;             // (N, V)
    float *logp, *ent, *lse;   // (N)
    tape_op *tape;
    int tape_len, tape_cap;
    unsigned char *touched;    /* during a backward: tape entry i's output gradient has been written */
    int hidden_end;            /* tape entries up to and including the final norm */
    int has_head, has_targets;
    double loss_sum;
    int loss_count;
    int backward_pending;      /* a tape exists that has not been replayed */
    /* LoRA (model_trainer_set_lora): the adapters (NULL: none; the base weights then train), their
     * gradients (l->mem's layout), the saved u of every adapter op of a forward, and scratch */
    model_lora *lora;
    float *lora_grads;
    size_t lora_grads_bytes;
    float *lora_u, *lora_u_next;   // (n_lora_ops, max_N, R) pool, bump pointer during a forward
    float *lora_du;                // (max_N, R)
    float *lora_xd, *lora_xd_next; // dropout copies of the adapters' inputs (dropout > 0 only)
    float *lora_dx;                // (max_N, max(C, H*D, F)) dropout backward scratch (dropout > 0 only)
    size_t lora_u_numel, lora_xd_numel;
    uint64_t dropout_seed, forward_count;
    int base_tape_cap;             /* tape entries without adapters */
};

#define GRAD(t, p) ((t)->act_grad + ((p) - (t)->act))

/* Tape entries one forward records: per layer norm, q, k, v, rope q, rope k, attention, o, residual,
 * norm, gate, up, swiglu, down, residual (+ q norm, k norm with qk_norm; biases ride on their matmul's
 * entry); outside: embedding, final norm, lm_head, log-softmax. */
enum { TAPE_OPS_PER_LAYER = 15, TAPE_OPS_QK_NORM = 2, TAPE_OPS_OUTSIDE_LAYERS = 4 };

static void *alloc64_raw(size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* The activation arenas and the parameter gradients are left out of fork() (rlhf_big_alloc): the updater
 * forks a sandbox for every reward-checker run, and copying their page tables at fork, then taking a
 * write-protect fault on every page at the next step, cost more CPU than the checker itself (perf of an
 * async run: copy_page_range, do_wp_page and page faults were 24% of the updater's time). A forked child
 * never touches them. */
static void *arena_alloc(size_t bytes) { return rlhf_big_alloc(bytes); }
static void arena_free(void *p, size_t bytes) { rlhf_big_free(p, bytes); }

static void *alloc64(size_t bytes) {
    void *p = alloc64_raw(bytes);
    if (p) memset(p, 0, (bytes + 63) & ~(size_t)63);
    return p;
}

int model_trainer_create(model_trainer **out, model *m, int max_B, int max_T, rlhf_error *err) {
    *out = NULL;
    const model_config *c = &m->cfg;
    if (max_B <= 0 || max_T <= 0)
        return RLHF_FAIL(err, RLHF_EINVAL, "trainer batch shape must be positive, got B=%d T=%d", max_B, max_T);
    if (max_T > c->max_seq_len)
        return RLHF_FAIL(err, RLHF_EINVAL, "trainer max_T %d exceeds the model's max_seq_len %d", max_T,
                         c->max_seq_len);
    model_trainer *t = calloc(1, sizeof *t);
    if (!t) return RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
    t->m = m;
    t->max_B = max_B;
    t->max_T = max_T;
    size_t N = (size_t)max_B * max_T, C = c->dim, L = c->n_layers, H = c->n_heads, KVH = c->n_kv_heads;
    size_t D = model_head_dim(c), F = c->ffn_dim, V = c->vocab_size, T = max_T;
    size_t HD = H * D, KD = KVH * D, QKN = c->qk_norm ? 1 : 0;
    /* Arena offsets: every tensor at its max size, 16-float aligned (the q/k norm slots are empty
     * without qk_norm). */
    size_t per_layer_sizes[] = {N * C,       N,           N * HD,     N * KD, N * KD, QKN * N * HD, QKN * N * KD,
                                QKN * N * H, QKN * N * KVH, N * HD,   N * KD, (size_t)max_B * H * T * T,
                                N * HD,      N * C,       N * C,      N * C,  N,      N * F,        N * F,
                                N * F,       N * C,       N * C};
    enum { PER_LAYER = sizeof per_layer_sizes / sizeof per_layer_sizes[0] };
    size_t top_sizes[] = {N * C, N * C, N, N * V, N, N, N};
    size_t total = 0;
    for (size_t i = 0; i < PER_LAYER; i++) total += L * ((per_layer_sizes[i] + 15) & ~(size_t)15);
    for (size_t i = 0; i < sizeof top_sizes / sizeof top_sizes[0]; i++) total += (top_sizes[i] + 15) & ~(size_t)15;
    t->act_numel = total;
    /* Not zeroed: every activation is written before it is read, and every activation gradient is
     * overwritten by its first contribution. Slots that never get a gradient (attention
     * probabilities, rstd, lse) are never touched, so those pages cost no resident memory. */
    t->act = arena_alloc(total * sizeof(float));
    t->act_grad = arena_alloc(total * sizeof(float));
    t->grads = arena_alloc(m->n_params * sizeof(float));
    if (m->bf16_mem) t->wbuf = alloc64_raw(MATMUL_BF16_SCRATCH * sizeof(float));
    t->scratch_threads = omp_get_max_threads();
    t->scratch = alloc64((size_t)t->scratch_threads * ops_attention_scratch_floats(max_T) * sizeof(float));
    t->rope_cos = alloc64(T * (D / 2) * sizeof(float));
    t->rope_sin = alloc64(T * (D / 2) * sizeof(float));
    t->tokens = alloc64(N * sizeof(int32_t));
    t->targets = alloc64(N * sizeof(int32_t));
    t->layers = calloc(L, sizeof *t->layers);
    t->tape_cap = (int)((TAPE_OPS_PER_LAYER + QKN * TAPE_OPS_QK_NORM) * L + TAPE_OPS_OUTSIDE_LAYERS);
    t->base_tape_cap = t->tape_cap;
    t->tape = calloc((size_t)t->tape_cap, sizeof *t->tape);
    t->touched = calloc((size_t)t->tape_cap, 1);
    if (!t->act || !t->act_grad || !t->grads || !t->scratch || !t->rope_cos || !t->rope_sin || !t->tokens ||
        !t->targets || !t->layers || !t->tape || !t->touched || (m->bf16_mem && !t->wbuf)) {
        model_trainer_destroy(&t);
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate trainer for B=%d T=%d (%zu activation floats)", max_B,
                         max_T, total);
    }
    float *p = t->act;
#define TAKE(dst, n)                                  \
    do {                                              \
        (dst) = p;                                    \
        p += ((size_t)(n) + 15) & ~(size_t)15;        \
    } while (0)
    TAKE(t->x0, N * C);
    for (size_t l = 0; l < L; l++) {
        layer_acts *a = &t->layers[l];
        float **slots[PER_LAYER] = {&a->ln1,   &a->rstd1, &a->q,    &a->k,       &a->v,    &a->qn,
                                    &a->kn,    &a->rstdq, &a->rstdk, &a->qr,     &a->kr,   &a->att,
                                    &a->atty,  &a->attproj, &a->res1, &a->ln2,   &a->rstd2, &a->gate,
                                    &a->up,    &a->swi,   &a->mlp,  &a->res2};
        for (size_t i = 0; i < PER_LAYER; i++) TAKE(*slots[i], per_layer_sizes[i]);
    }
    TAKE(t->lnf, N * C);
    TAKE(t->rstdf, N);
    TAKE(t->logits, N * V);
    TAKE(t->logp, N);
    TAKE(t->ent, N);
    TAKE(t->lse, N);
#undef TAKE
    model_params_view(m, t->grads, &t->dp);
    ops_rope_tables(t->rope_cos, t->rope_sin, max_T, c);
    *out = t;
    return 0;
}

void model_trainer_destroy(model_trainer **pt) {
    if (!pt || !*pt) return;
    model_trainer *t = *pt;
    arena_free(t->act, t->act_numel * sizeof(float));
    arena_free(t->act_grad, t->act_numel * sizeof(float));
    arena_free(t->grads, t->m->n_params * sizeof(float));
    free(t->scratch);
    free(t->wbuf);
    free(t->rope_cos);
    free(t->rope_sin);
    free(t->tokens);
    free(t->targets);
    free(t->layers);
    free(t->tape);
    free(t->touched);
    arena_free(t->lora_grads, t->lora_grads_bytes);
    free(t->lora_u);
    free(t->lora_du);
    free(t->lora_xd);
    free(t->lora_dx);
    free(t);
    *pt = NULL;
}

size_t model_trainer_bytes(const model_trainer *t) {
    const model_config *c = &t->m->cfg;
    size_t D = model_head_dim(c), N = (size_t)t->max_B * t->max_T;
    size_t lora = t->lora ? (t->lora->n_params + t->lora_u_numel + t->lora_xd_numel +
                             (size_t)t->max_B * t->max_T * t->lora->cfg.rank) * sizeof(float) : 0;
    size_t wbuf = t->wbuf ? MATMUL_BF16_SCRATCH * sizeof(float) : 0;
    return lora + wbuf + 2 * t->act_numel * sizeof(float) + t->m->n_params * sizeof(float) +
           (size_t)t->scratch_threads * ops_attention_scratch_floats(t->max_T) * sizeof(float) +
           2 * (size_t)t->max_T * (D / 2) * sizeof(float) + 2 * N * sizeof(int32_t);
}

/* ------------------------------------------------------------------ the tape */

static tape_op *push(model_trainer *t, op_kind kind, float *out, size_t out_numel) {
    if (t->tape_len >= t->tape_cap) { /* an internal invariant: the capacity is exact for the architecture */
        fprintf(stderr, "model/train.c: tape overflow (%d entries)\n", t->tape_cap);
        abort();
    }
    tape_op *op = &t->tape[t->tape_len++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->out = out;
    op->out_numel = out_numel;
    return op;
}

/* A base weight's gradient buffer, or NULL while LoRA adapters are attached or the base is kept in bf16
 * (the base is frozen). */
static float *trainable(const model_trainer *t, float *g) { return t->lora || t->m->bf16_mem ? NULL : g; }

/* RMSNorm of N rows of C: the residual stream (C = dim) or every head of q/k (N*H rows of head_dim). */
static void rec_rmsnorm(model_trainer *t, float *out, float *rstd, float *inp, const float *w, float *dw, int N,
                        int C) {
    rmsnorm_forward(out, rstd, inp, w, N, C, t->m->cfg.norm_eps);
    tape_op *op = push(t, OP_RMSNORM, out, (size_t)N * C);
    op->in[0] = inp;
    op->w = w;
    op->dw = trainable(t, dw);
    op->aux = rstd;
    op->n = N;
    op->ic = C;
}

/* out (N, OC) = inp (N, IC) · w^T (+ b (OC) on every row when b is not NULL); w16 instead of w: the
 * frozen bf16 weight of a base kept in bf16 */
static void rec_matmul_bias(model_trainer *t, float *out, float *inp, const float *w, const uint16_t *w16, float *dw,
                            const float *b, float *db, int N, int IC, int OC) {
    if (w16) matmulbf16_forward(out, t->wbuf, inp, w16, N, IC, OC);
    else matmul_forward(out, inp, w, N, IC, OC);
    if (b) bias_forward(out, b, N, OC);
    tape_op *op = push(t, OP_MATMUL, out, (size_t)N * OC);
    op->in[0] = inp;
    op->w = w;
    op->w16 = w16;
    op->dw = trainable(t, dw);
    op->b = b;
    op->db = trainable(t, db);
    op->n = N;
    op->ic = IC;
    op->oc = OC;
}

static void rec_matmul(model_trainer *t, float *out, float *inp, const float *w, const uint16_t *w16, float *dw, int N,
                       int IC, int OC) {
    rec_matmul_bias(t, out, inp, w, w16, dw, NULL, NULL, N, IC, OC);
}

/* Two matmuls of the same input and shape (q|k, gate|up), computed side by side; recorded as two
 * ordinary tape entries. Biases b_a, b_b (OC) as in rec_matmul_bias, or NULL. */
static void rec_matmul_pair(model_trainer *t, float *out_a, float *out_b, float *inp, const float *w_a,
                            const uint16_t *w16_a, float *dw_a, const float *b_a, float *db_a, const float *w_b,
                            const uint16_t *w16_b, float *dw_b, const float *b_b, float *db_b, int N, int IC, int OC) {
    if (w16_a || w16_b) { /* a bf16 base: one after the other, each through the shared widening buffer */
        rec_matmul_bias(t, out_a, inp, w_a, w16_a, dw_a, b_a, db_a, N, IC, OC);
        rec_matmul_bias(t, out_b, inp, w_b, w16_b, dw_b, b_b, db_b, N, IC, OC);
        return;
    }
    matmul_forward_pair(out_a, out_b, inp, w_a, w_b, N, IC, OC);
    float *outs[2] = {out_a, out_b};
    const float *ws[2] = {w_a, w_b}, *bs[2] = {b_a, b_b};
    float *dws[2] = {dw_a, dw_b}, *dbs[2] = {db_a, db_b};
    for (int i = 0; i < 2; i++) {
        if (bs[i]) bias_forward(outs[i], bs[i], N, OC);
        tape_op *op = push(t, OP_MATMUL, outs[i], (size_t)N * OC);
        op->in[0] = inp;
        op->w = ws[i];
        op->dw = trainable(t, dws[i]);
        op->b = bs[i];
        op->db = trainable(t, dbs[i]);
        op->n = N;
        op->ic = IC;
        op->oc = OC;
    }
}

/* Dropout of the adapters' inputs: element i of the op with key k is kept when a hash of (k, i) is at
 * least p, so the backward recomputes the mask instead of storing it. */
static inline int lora_keep(uint64_t key, size_t i, float p) {
    return (float)(rlhf_mix64(key + (uint64_t)i * 0x9E3779B97F4A7C15ull) >> 40) * (1.0f / 16777216.0f) >= p;
}

/* The LoRA branch of target `target`, slice `slice`, on the matmul that just wrote out (N, OC) from
 * inp (N, IC): out += scale · (inp' A^T) B^T. No adapter for this target: nothing. */
static void rec_lora(model_trainer *t, int target, int slice, float *out, float *inp, int N, int IC, int OC) {
    model_lora *l = t->lora;
    if (!l || !l->a[target]) return;
    int R = l->cfg.rank;
    const float *A = l->a[target] + (size_t)slice * R * IC, *Bm = l->b[target] + (size_t)slice * OC * R;
    float *u = t->lora_u_next; // (N, R)
    t->lora_u_next += (size_t)N * R;
    const float *xa = inp;
    uint64_t key = 0;
    if (l->cfg.dropout > 0) {
        float p = l->cfg.dropout, keep_scale = 1.0f / (1.0f - p);
        float *xd = t->lora_xd_next; // (N, IC)
        t->lora_xd_next += (size_t)N * IC;
        key = t->dropout_seed ^ (t->forward_count * 0xD1B54A32D192ED03ull) ^ ((uint64_t)t->tape_len << 48);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * IC; i++) xd[i] = lora_keep(key, i, p) ? inp[i] * keep_scale : 0.0f;
        xa = xd;
    }
    lora_forward(out, u, xa, A, Bm, l->scale, N, IC, OC, R);
    int base = t->tape_len - 1;
    while (base >= 0 && t->tape[base].out != out) base--;
    tape_op *op = push(t, OP_LORA, out, (size_t)N * OC);
    op->in[0] = inp;
    op->w = A;
    op->dw = t->lora_grads + (A - l->mem);
    op->w2 = Bm;
    op->dw2 = t->lora_grads + (Bm - l->mem);
    op->xa = xa;
    op->aux = u;
    op->scale = l->scale;
    op->r = R;
    op->drop_key = key;
    op->base_op = base;
    op->n = N;
    op->ic = IC;
    op->oc = OC;
}

static void rec_rope(model_trainer *t, float *out, float *inp, int NH) {
    int D = model_head_dim(&t->m->cfg);
    rope_forward(out, inp, t->rope_cos, t->rope_sin, t->B, t->T, NH, D);
    tape_op *op = push(t, OP_ROPE, out, (size_t)t->B * t->T * NH * D);
    op->in[0] = inp;
    op->ic = NH;
}

static void rec_residual(model_trainer *t, float *out, float *a, float *b, size_t n) {
    residual_forward(out, a, b, n);
    tape_op *op = push(t, OP_RESIDUAL, out, n);
    op->in[0] = a;
    op->in[1] = b;
}

static void zero_floats(float *p, size_t n) {
    const size_t chunk = 1 << 14;
    size_t nchunks = (n + chunk - 1) / chunk;
    if (nchunks <= 1) {
        memset(p, 0, n * sizeof(float));
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nchunks; i++) {
        size_t a = i * chunk, len = a + chunk <= n ? chunk : n - a;
        memset(p + a, 0, len * sizeof(float));
    }
}

/* Links every recorded input to the tape entry that produced it (inputs are always outputs of
 * earlier entries), so the backward knows which gradient a contribution is the first to. */
static void link_producers(model_trainer *t) {
    for (int i = 0; i < t->tape_len; i++) {
        tape_op *op = &t->tape[i];
        for (int k = 0; k < 3; k++) {
            op->prod[k] = -1;
            for (int j = i - 1; op->in[k] && j >= 0; j--)
                if (t->tape[j].out == op->in[k]) {
                    op->prod[k] = j;
                    break;
                }
        }
    }
}

/* The accumulate flag for input k of op: 0 for the first contribution to that gradient (overwrite). */
static int acc_flag(model_trainer *t, tape_op *op, int k) {
    int j = op->prod[k];
    if (j < 0) return 1;
    int acc = t->touched[j];
    t->touched[j] = 1;
    return acc;
}

/* Replays tape entries [0, end) in reverse. The caller has written the output gradient of entry
 * end - 1 (the seed). Activation gradients are never zeroed: each op overwrites a gradient on its
 * first contribution and accumulates afterwards (ops.h). */
static int replay_backward(model_trainer *t, int end, rlhf_error *err) {
    const model_config *c = &t->m->cfg;
    int D = model_head_dim(c);
    if (omp_get_max_threads() > t->scratch_threads) { /* the caller raised the thread count since create */
        int n = omp_get_max_threads();
        float *p = alloc64((size_t)n * ops_attention_scratch_floats(t->max_T) * sizeof(float));
        if (!p) return RLHF_FAIL(err, RLHF_ENOMEM, "cannot grow attention scratch to %d threads", n);
        free(t->scratch);
        t->scratch = p;
        t->scratch_threads = n;
    }
    memset(t->touched, 0, (size_t)t->tape_cap);
    t->touched[end - 1] = 1;
    for (int i = end - 1; i >= 0; i--) {
        tape_op *op = &t->tape[i];
        float *dout = GRAD(t, op->out);
        if (!t->touched[i]) zero_floats(dout, op->out_numel); /* no consumer (not in this architecture) */
        switch (op->kind) {
        case OP_EMBEDDING:
            if (op->dw) embedding_backward(op->dw, dout, t->tokens, op->n, op->ic);
            break;
        case OP_RMSNORM:
            rmsnorm_backward(GRAD(t, op->in[0]), op->dw, dout, op->in[0], op->w, op->aux, op->n, op->ic,
                             acc_flag(t, op, 0));
            break;
        case OP_MATMUL:
            if (op->w16)
                matmulbf16_backward(GRAD(t, op->in[0]), t->wbuf, dout, op->w16, op->n, op->ic, op->oc,
                                     acc_flag(t, op, 0));
            else
                matmul_backward(GRAD(t, op->in[0]), op->dw, dout, op->in[0], op->w, op->n, op->ic, op->oc,
                                acc_flag(t, op, 0));
            if (op->db) bias_backward(op->db, dout, op->n, op->oc);
            break;
        case OP_ROPE:
            rope_backward(GRAD(t, op->in[0]), dout, t->rope_cos, t->rope_sin, t->B, t->T, op->ic, D,
                          acc_flag(t, op, 0));
            break;
        case OP_ATTENTION: {
            int aq = acc_flag(t, op, 0), ak = acc_flag(t, op, 1), av = acc_flag(t, op, 2);
            attention_backward(GRAD(t, op->in[0]), GRAD(t, op->in[1]), GRAD(t, op->in[2]), dout, op->aux, op->in[0],
                               op->in[1], op->in[2], t->scratch, t->B, t->T, c->n_heads, c->n_kv_heads, D, op->oc,
                               aq, ak, av);
            break;
        }
        case OP_SWIGLU: {
            int ag = acc_flag(t, op, 0), au = acc_flag(t, op, 1);
            swiglu_backward(GRAD(t, op->in[0]), GRAD(t, op->in[1]), dout, op->in[0], op->in[1], op->out_numel, ag,
                            au);
            break;
        }
        case OP_RESIDUAL: {
            int aa = acc_flag(t, op, 0), ab = acc_flag(t, op, 1);
            residual_backward(GRAD(t, op->in[0]), GRAD(t, op->in[1]), dout, op->out_numel, aa, ab);
            break;
        }
        case OP_LOGSOFTMAX:
            logsoftmax_backward(GRAD(t, op->in[0]), dout, GRAD(t, op->out2), op->in[0], op->aux, op->out2,
                                t->targets, op->n, op->oc, acc_flag(t, op, 0));
            break;
        case OP_LORA: {
            float p = t->lora->cfg.dropout;
            int acc = acc_flag(t, op, 0);
            float *dx = GRAD(t, op->in[0]);
            lora_backward(p > 0 ? t->lora_dx : dx, op->dw, op->dw2, t->lora_du, dout, op->xa, op->aux, op->w, op->w2,
                          op->scale, op->n, op->ic, op->oc, op->r, p > 0 ? 0 : acc);
            if (p > 0) { /* the branch saw dropout(x): its input gradient passes the same mask */
                float keep_scale = 1.0f / (1.0f - p);
                size_t n = (size_t)op->n * op->ic;
#pragma omp parallel for schedule(static)
                for (size_t j = 0; j < n; j++) {
                    float g = lora_keep(op->drop_key, j, p) ? t->lora_dx[j] * keep_scale : 0.0f;
                    dx[j] = acc ? dx[j] + g : g;
                }
            }
            /* the base matmul's output is this op's output: its gradient is complete here */
            if (op->base_op >= 0) t->touched[op->base_op] = 1;
            break;
        }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ forward */

static int check_batch(model_trainer *t, const int32_t *tokens, const int32_t *targets, int B, int T,
                       rlhf_error *err) {
    const model_config *c = &t->m->cfg;
    if (B <= 0 || T <= 0 || B > t->max_B || T > t->max_T)
        return RLHF_FAIL(err, RLHF_EINVAL, "batch (B=%d, T=%d) outside the trainer's (1..%d, 1..%d)", B, T, t->max_B,
                         t->max_T);
    for (long i = 0; i < (long)B * T; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return RLHF_FAIL(err, RLHF_EINVAL, "token id %d at (b=%ld, t=%ld) outside [0, %d)", tokens[i], i / T,
                             i % T, c->vocab_size);
        if (targets && (targets[i] < -1 || targets[i] >= c->vocab_size))
            return RLHF_FAIL(err, RLHF_EINVAL, "target id %d at (b=%ld, t=%ld) outside [-1, %d)", targets[i], i / T,
                             i % T, c->vocab_size);
    }
    return 0;
}

static void forward_body(model_trainer *t) {
    model *m = t->m;
    const model_config *c = &m->cfg;
    int B = t->B, T = t->T, N = B * T;
    int C = c->dim, H = c->n_heads, KVH = c->n_kv_heads, D = model_head_dim(c), F = c->ffn_dim;
    int HD = H * D, KD = KVH * D;
    const model_params *p = &m->p;
    const model_params_bf16 *p16 = m->bf16_mem ? &m->p16 : NULL; /* a base kept in bf16: its matrices */
    model_params *dp = &t->dp;
/* a matrix slice of either storage: the fp32 pointer (NULL for a bf16 base) and the bf16 one (else NULL) */
#define MW(name, off) (p16 ? NULL : p->name + (off))
#define MW16(name, off) (p16 ? p16->name + (off) : NULL)
    t->tape_len = 0;
    t->lora_u_next = t->lora_u;
    t->lora_xd_next = t->lora_xd;
    t->forward_count++;

    if (p16) embeddingbf16_forward(t->x0, t->tokens, p16->embed, N, C);
    else embedding_forward(t->x0, t->tokens, p->embed, N, C);
    tape_op *op = push(t, OP_EMBEDDING, t->x0, (size_t)N * C);
    op->w = p->embed;
    op->dw = trainable(t, dp->embed);
    op->n = N;
    op->ic = C;

    float *x = t->x0; // (N, C) residual stream
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *a = &t->layers[l];
        size_t lc = (size_t)l * C, lqc = (size_t)l * HD * C, lkc = (size_t)l * KD * C, lfc = (size_t)l * F * C;
        size_t lq = (size_t)l * HD, lk = (size_t)l * KD, ld = (size_t)l * D;
        /* Qwen2's q/k/v biases (NULL for Llama: the plain matmuls) */
        /* kv_share: a sharing layer has no k/v projections and attends with its source layer's keys (after
         * RoPE) and values, so their gradients collect every consumer's contribution (the tape's
         * accumulate flags). The K/V tensors stack only producing layers: slice ks. */
        int src = model_kv_source(c, l), own = src == l, ks = own ? model_kv_slot(c, l) : 0;
        int rope = model_attn_rope(c, l), W = model_attn_window(c, l);
        lkc = (size_t)ks * KD * C;
        lk = (size_t)ks * KD;
        size_t lkd = (size_t)ks * D;
        const float *bq = c->attn_bias ? p->bq + lq : NULL, *bk = c->attn_bias ? p->bk + lk : NULL;
        const float *bv = c->attn_bias ? p->bv + lk : NULL;
        float *dbq = c->attn_bias ? dp->bq + lq : NULL, *dbk = c->attn_bias ? dp->bk + lk : NULL;
        float *dbv = c->attn_bias ? dp->bv + lk : NULL;
        rec_rmsnorm(t, a->ln1, a->rstd1, x, p->attn_norm + lc, dp->attn_norm + lc, N, C);
        if (own && HD == KD)
            rec_matmul_pair(t, a->q, a->k, a->ln1, MW(wq, lqc), MW16(wq, lqc), dp->wq + lqc, bq, dbq, MW(wk, lkc),
                            MW16(wk, lkc), dp->wk + lkc, bk, dbk, N, C, HD);
        else {
            rec_matmul_bias(t, a->q, a->ln1, MW(wq, lqc), MW16(wq, lqc), dp->wq + lqc, bq, dbq, N, C, HD);
            if (own) rec_matmul_bias(t, a->k, a->ln1, MW(wk, lkc), MW16(wk, lkc), dp->wk + lkc, bk, dbk, N, C, KD);
        }
        if (own) rec_matmul_bias(t, a->v, a->ln1, MW(wv, lkc), MW16(wv, lkc), dp->wv + lkc, bv, dbv, N, C, KD);
        rec_lora(t, MODEL_LORA_Q, l, a->q, a->ln1, N, C, HD);
        if (own) {
            rec_lora(t, MODEL_LORA_K, ks, a->k, a->ln1, N, C, KD);
            rec_lora(t, MODEL_LORA_V, ks, a->v, a->ln1, N, C, KD);
        }
        float *q = a->q, *k = a->k; // (N, H*D), (N, KVH*D): what RoPE rotates
        if (c->qk_norm) { /* Qwen3: RMSNorm over each head's D values, before RoPE */
            rec_rmsnorm(t, a->qn, a->rstdq, a->q, p->q_norm + ld, dp->q_norm + ld, N * H, D);
            if (own) rec_rmsnorm(t, a->kn, a->rstdk, a->k, p->k_norm + lkd, dp->k_norm + lkd, N * KVH, D);
            q = a->qn;
            k = a->kn;
        }
        if (rope) { /* global_nope layers attend with unrotated q, k */
            rec_rope(t, a->qr, q, H);
            q = a->qr;
            if (own) rec_rope(t, a->kr, k, KVH);
            k = a->kr;
        }
        a->katt = k;
        const layer_acts *sa = &t->layers[src]; /* == a unless this layer shares */
        attention_forward(a->atty, a->att, q, sa->katt, sa->v, B, T, H, KVH, D, W);
        op = push(t, OP_ATTENTION, a->atty, (size_t)N * HD);
        op->in[0] = q;
        op->in[1] = sa->katt;
        op->in[2] = sa->v;
        op->aux = a->att;
        op->oc = W;
        rec_matmul(t, a->attproj, a->atty, MW(wo, lqc), MW16(wo, lqc), dp->wo + lqc, N, HD, C);
        rec_lora(t, MODEL_LORA_O, l, a->attproj, a->atty, N, HD, C);
        rec_residual(t, a->res1, x, a->attproj, (size_t)N * C);
        rec_rmsnorm(t, a->ln2, a->rstd2, a->res1, p->ffn_norm + lc, dp->ffn_norm + lc, N, C);
        rec_matmul_pair(t, a->gate, a->up, a->ln2, MW(w_gate, lfc), MW16(w_gate, lfc), dp->w_gate + lfc, NULL, NULL,
                        MW(w_up, lfc), MW16(w_up, lfc), dp->w_up + lfc, NULL, NULL, N, C, F);
        rec_lora(t, MODEL_LORA_GATE, l, a->gate, a->ln2, N, C, F);
        rec_lora(t, MODEL_LORA_UP, l, a->up, a->ln2, N, C, F);
        swiglu_forward(a->swi, a->gate, a->up, (size_t)N * F);
        op = push(t, OP_SWIGLU, a->swi, (size_t)N * F);
        op->in[0] = a->gate;
        op->in[1] = a->up;
        rec_matmul(t, a->mlp, a->swi, MW(w_down, lfc), MW16(w_down, lfc), dp->w_down + lfc, N, F, C);
        rec_lora(t, MODEL_LORA_DOWN, l, a->mlp, a->swi, N, F, C);
        rec_residual(t, a->res2, a->res1, a->mlp, (size_t)N * C);
        x = a->res2;
    }
    rec_rmsnorm(t, t->lnf, t->rstdf, x, p->final_norm, dp->final_norm, N, C);
#undef MW
#undef MW16
    t->hidden_end = t->tape_len;
    link_producers(t);
    t->has_head = 0;
    t->has_targets = 0;
    t->backward_pending = 1;
}

static int forward_setup(model_trainer *t, const int32_t *tokens, const int32_t *targets, int B, int T,
                         rlhf_error *err) {
    int rc = check_batch(t, tokens, targets, B, T, err);
    if (rc) return rc;
    t->B = B;
    t->T = T;
    memcpy(t->tokens, tokens, (size_t)B * T * sizeof(int32_t));
    if (targets) memcpy(t->targets, targets, (size_t)B * T * sizeof(int32_t));
    return 0;
}

int model_forward_hidden(model_trainer *t, const int32_t *tokens, int B, int T, rlhf_error *err) {
    int rc = forward_setup(t, tokens, NULL, B, T, err);
    if (rc) return rc;
    forward_body(t);
    return 0;
}

int model_forward(model_trainer *t, const int32_t *tokens, const int32_t *targets, int B, int T, rlhf_error *err) {
    int rc = forward_setup(t, tokens, targets, B, T, err);
    if (rc) return rc;
    forward_body(t);
    const model_config *c = &t->m->cfg;
    int N = B * T, C = c->dim, V = c->vocab_size;
    const model *m = t->m;
    rec_matmul(t, t->logits, t->lnf, m->p.lm_head, m->bf16_mem ? m->p16.lm_head : NULL, t->dp.lm_head, N, C, V);
    link_producers(t);
    t->has_head = 1;
    t->loss_sum = 0.0;
    t->loss_count = 0;
    if (!targets) return 0;
    logsoftmax_forward(t->logp, t->ent, t->lse, t->logits, t->targets, N, V);
    tape_op *op = push(t, OP_LOGSOFTMAX, t->logp, (size_t)N);
    op->out2 = t->ent;
    op->in[0] = t->logits;
    op->aux = t->lse;
    op->n = N;
    op->oc = V;
    link_producers(t);
    t->has_targets = 1;
    for (int i = 0; i < N; i++)
        if (t->targets[i] >= 0) {
            t->loss_sum -= t->logp[i];
            t->loss_count++;
        }
    return 0;
}

int model_forward_logits(model_trainer *t, const int32_t *tokens, int B, int T, float *logits_out, rlhf_error *err) {
    int rc = model_forward(t, tokens, NULL, B, T, err);
    if (rc) return rc;
    memcpy(logits_out, t->logits, (size_t)B * T * t->m->cfg.vocab_size * sizeof(float));
    return 0;
}

const float *model_trainer_logits(const model_trainer *t) { return t->logits; }
const float *model_trainer_logprobs(const model_trainer *t) { return t->logp; }
const float *model_trainer_entropy(const model_trainer *t) { return t->ent; }
const float *model_trainer_hidden(const model_trainer *t) { return t->lnf; }

float model_trainer_loss(const model_trainer *t, int *n_tokens_out) {
    if (n_tokens_out) *n_tokens_out = t->loss_count;
    return t->loss_count ? (float)(t->loss_sum / t->loss_count) : 0.0f;
}

/* ------------------------------------------------------------------ backward */

/* A base kept in bf16 is frozen: a backward through it trains adapters or nothing. */
static int check_trainable(const model_trainer *t, rlhf_error *err) {
    if (t->m->bf16_mem && !t->lora)
        return RLHF_FAIL(err, RLHF_ESTATE, "this model keeps a frozen bf16 base: a backward needs LoRA adapters "
                         "attached (model_trainer_set_lora)");
    return 0;
}

int model_backward_logprobs(model_trainer *t, const float *dlogp, const float *dentropy, rlhf_error *err) {
    if (!t->backward_pending || !t->has_targets)
        return RLHF_FAIL(err, RLHF_ESTATE, "model_backward_logprobs needs a model_forward with targets first");
    int frc = check_trainable(t, err);
    if (frc) return frc;
    size_t N = (size_t)t->B * t->T;
    if (dlogp) memcpy(GRAD(t, t->logp), dlogp, N * sizeof(float));
    else memset(GRAD(t, t->logp), 0, N * sizeof(float));
    if (dentropy) memcpy(GRAD(t, t->ent), dentropy, N * sizeof(float));
    else memset(GRAD(t, t->ent), 0, N * sizeof(float));
    int rc = replay_backward(t, t->tape_len, err);
    t->backward_pending = 0;
    return rc;
}

int model_backward_loss(model_trainer *t, rlhf_error *err) {
    if (!t->backward_pending || !t->has_targets)
        return RLHF_FAIL(err, RLHF_ESTATE, "model_backward_loss needs a model_forward with targets first");
    int frc = check_trainable(t, err);
    if (frc) return frc;
    size_t N = (size_t)t->B * t->T;
    memset(GRAD(t, t->ent), 0, N * sizeof(float));
    float *g = GRAD(t, t->logp);
    float w = t->loss_count ? -1.0f / (float)t->loss_count : 0.0f;
    for (size_t i = 0; i < N; i++) g[i] = t->targets[i] >= 0 ? w : 0.0f;
    int rc = replay_backward(t, t->tape_len, err);
    t->backward_pending = 0;
    return rc;
}

int model_backward_hidden(model_trainer *t, const float *dhidden, rlhf_error *err) {
    if (!t->backward_pending)
        return RLHF_FAIL(err, RLHF_ESTATE, "model_backward_hidden needs a forward first");
    int frc = check_trainable(t, err);
    if (frc) return frc;
    memcpy(GRAD(t, t->lnf), dhidden, (size_t)t->B * t->T * t->m->cfg.dim * sizeof(float));
    int rc = replay_backward(t, t->hidden_end, err);
    t->backward_pending = 0;
    return rc;
}

float *model_trainer_grads(model_trainer *t) { return t->grads; }

void model_trainer_zero_grad(model_trainer *t) {
    /* with adapters attached the base's gradients are never written: zeroing them would only make a
     * base-sized buffer resident and cost a pass over it every step */
    if (t->lora) zero_floats(t->lora_grads, t->lora->n_params);
    else zero_floats(t->grads, t->m->n_params);
}

float *model_trainer_lora_grads(model_trainer *t) { return t->lora ? t->lora_grads : NULL; }

int model_trainer_set_lora(model_trainer *t, model_lora *l, uint64_t dropout_seed, rlhf_error *err) {
    const model_config *c = &t->m->cfg;
    arena_free(t->lora_grads, t->lora_grads_bytes);
    free(t->lora_u);
    free(t->lora_du);
    free(t->lora_xd);
    free(t->lora_dx);
    t->lora_grads = t->lora_u = t->lora_du = t->lora_xd = t->lora_dx = NULL;
    t->lora_u_numel = t->lora_xd_numel = 0;
    t->lora = NULL;
    t->backward_pending = 0; /* a tape recorded with or without adapters is not replayed across the change */
    if (!l) {
        t->tape_cap = t->base_tape_cap;
        return 0;
    }
    size_t N = (size_t)t->max_B * t->max_T, R = l->cfg.rank;
    size_t HD = (size_t)c->n_heads * model_head_dim(c), C = c->dim, F = c->ffn_dim;
    size_t widest = C > HD ? C : HD;
    widest = widest > F ? widest : F;
    int ops = 0;
    size_t xd = 0; /* floats of the dropout copies of one forward: N x the input width of each adapter op */
    for (int k = 0; k < MODEL_LORA_N_TARGETS; k++)
        if (l->a[k]) {
            ops += l->n_stack[k];
            xd += (size_t)l->n_stack[k] * N * l->in_dim[k];
        }
    /* each adapter pair (A, B) must fit its base tensor, which the table names by id */
    for (int i = 0; i + 1 < l->n_tensors; i += 2) {
        const model_tensor_info *a = &l->tensors[i], *b = &l->tensors[i + 1];
        const model_tensor_info *base = model_tensor(t->m, a->id);
        if (!base || base->n_stack != a->n_stack || base->cols != a->cols || base->rows != b->rows)
            return RLHF_FAIL(err, RLHF_EINVAL, "LoRA adapter %s does not fit this trainer's model", a->name);
    }
    t->lora_grads = arena_alloc(l->n_params * sizeof(float));
    t->lora_grads_bytes = l->n_params * sizeof(float);
    t->lora_u_numel = (size_t)ops * N * R;
    t->lora_u = alloc64(t->lora_u_numel * sizeof(float));
    t->lora_du = alloc64(N * R * sizeof(float));
    if (l->cfg.dropout > 0) {
        t->lora_xd_numel = xd;
        t->lora_xd = alloc64(xd * sizeof(float));
        t->lora_dx = alloc64(N * widest * sizeof(float));
    }
    int cap = t->base_tape_cap + ops;
    tape_op *tape = realloc(t->tape, (size_t)cap * sizeof *tape);
    if (tape) t->tape = tape;
    unsigned char *touched = tape ? realloc(t->touched, (size_t)cap) : NULL;
    if (touched) t->touched = touched;
    if (!t->lora_grads || !t->lora_u || !t->lora_du || (l->cfg.dropout > 0 && (!t->lora_xd || !t->lora_dx)) ||
        !tape || !touched)
        return RLHF_FAIL(err, RLHF_ENOMEM, "cannot allocate LoRA training buffers (rank %d, %d adapter ops)",
                         l->cfg.rank, ops);
    t->tape_cap = cap;
    t->lora = l;
    t->dropout_seed = dropout_seed;
    t->forward_count = 0;
    return 0;
}
