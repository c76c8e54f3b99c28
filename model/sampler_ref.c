/* model/sampler_ref.c — the plain reference forward pass the sampler's fast path is tested against:
 * one sequence, no cache, no BLAS, no threads, straight loops over fp32 tensors (dot products
 * accumulate in double so the reference is at least as accurate as the fast path). */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* y (O) = W (O, I) @ x (I) */
static void ref_matvec(float *y, const float *W, const float *x, int O, int I) {
    for (int o = 0; o < O; o++) {
        double acc = 0.0;
        for (int i = 0; i < I; i++) acc += (double)W[(size_t)o * I + i] * x[i];
        y[o] = (float)acc;
    }
}

static void ref_rmsnorm(float *y, const float *x, const float *w, int C, float eps) {
    double ss = 0.0;
    for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
    double s = 1.0 / sqrt(ss / C + eps);
    for (int i = 0; i < C; i++) y[i] = (float)(x[i] * s) * w[i];
}

/* HF rotate_half: pairs (i, i + D/2), angle pos * theta^(-2i/D) */
static void ref_rope(float *v, int pos, int D, const model_config *cfg) {
    for (int i = 0; i < D / 2; i++) {
        double ang = pos * model_rope_inv_freq(cfg, i);
        double c = cos(ang), s = sin(ang), a = v[i], b = v[i + D / 2];
        v[i] = (float)(a * c - b * s);
        v[i + D / 2] = (float)(b * c + a * s);
    }
}

int model_reference_logits(const model *m, const int32_t *tokens, int T, float *logits, rlhf_error *err) {
    const model_config *c = &m->cfg;
    const model_params *p = &m->p;
    if (T < 1 || T > c->max_seq_len)
        return RLHF_FAIL(err, RLHF_EINVAL, "reference forward: T must be in 1..%d, got %d", c->max_seq_len, T);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return RLHF_FAIL(err, RLHF_EINVAL, "reference forward: token %d at %d outside the vocabulary", tokens[t], t);
    int C = c->dim, H = c->n_heads, KVH = c->n_kv_heads, D = model_head_dim(c), F = c->ffn_dim, V = c->vocab_size;
    int HD = H * D, KD = KVH * D;
    float *x = calloc((size_t)T * C, sizeof(float));   // (T, C)
    float *xn = calloc((size_t)C, sizeof(float));      // (C)
    float *q = calloc((size_t)T * HD, sizeof(float));  // (T, H*D)
    float *k_all = calloc((size_t)c->n_layers * T * KD, sizeof(float)); // (L, T, KVH*D): a sharing layer reads its source's
    float *v_all = calloc((size_t)c->n_layers * T * KD, sizeof(float)); // (L, T, KVH*D)
    float *k = k_all, *v = v_all;
    float *att = calloc((size_t)HD, sizeof(float));    // (H*D)
    float *tmp = calloc((size_t)C, sizeof(float));     // (C)
    float *g = calloc((size_t)F, sizeof(float));       // (F)
    float *u = calloc((size_t)F, sizeof(float));       // (F)
    double *sc = calloc((size_t)T, sizeof(double));    // (T)
    int rc = 0;
    if (!x || !xn || !q || !k_all || !v_all || !att || !tmp || !g || !u || !sc) {
        rc = RLHF_FAIL(err, RLHF_ENOMEM, "out of memory");
        goto done;
    }
    for (int t = 0; t < T; t++) memcpy(x + (size_t)t * C, p->embed + (size_t)tokens[t] * C, (size_t)C * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        /* kv_share: a sharing layer projects no K/V and reads its source layer's (kept in k_all, v_all);
         * attention_pattern: local layers see the last W positions, global_nope ones skip RoPE. */
        int src = model_kv_source(c, l), own = src == l, ks = own ? model_kv_slot(c, l) : 0;
        int rope = model_attn_rope(c, l), W = model_attn_window(c, l);
        k = k_all + (size_t)src * T * KD;
        v = v_all + (size_t)src * T * KD;
        const float *wq = p->wq + (size_t)l * HD * C, *wk = p->wk + (size_t)ks * KD * C, *wv = p->wv + (size_t)ks * KD * C;
        const float *wo = p->wo + (size_t)l * C * HD;
        for (int t = 0; t < T; t++) {
            ref_rmsnorm(xn, x + (size_t)t * C, p->attn_norm + (size_t)l * C, C, c->norm_eps);
            ref_matvec(q + (size_t)t * HD, wq, xn, HD, C);
            if (own) {
                ref_matvec(k + (size_t)t * KD, wk, xn, KD, C);
                ref_matvec(v + (size_t)t * KD, wv, xn, KD, C);
            }
            if (c->attn_bias) { /* Qwen2 */
                for (int i = 0; i < HD; i++) q[(size_t)t * HD + i] += p->bq[(size_t)l * HD + i];
                for (int i = 0; own && i < KD; i++) k[(size_t)t * KD + i] += p->bk[(size_t)ks * KD + i];
                for (int i = 0; own && i < KD; i++) v[(size_t)t * KD + i] += p->bv[(size_t)ks * KD + i];
            }
            if (c->qk_norm) { /* Qwen3: per head, before RoPE */
                for (int h = 0; h < H; h++)
                    ref_rmsnorm(q + (size_t)t * HD + h * D, q + (size_t)t * HD + h * D, p->q_norm + (size_t)l * D, D,
                                c->norm_eps);
                for (int h = 0; own && h < KVH; h++)
                    ref_rmsnorm(k + (size_t)t * KD + h * D, k + (size_t)t * KD + h * D, p->k_norm + (size_t)ks * D, D,
                                c->norm_eps);
            }
            for (int h = 0; rope && h < H; h++) ref_rope(q + (size_t)t * HD + h * D, t, D, c);
            for (int h = 0; rope && own && h < KVH; h++) ref_rope(k + (size_t)t * KD + h * D, t, D, c);
        }
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < H; h++) {
                int kh = h / (H / KVH);
                const float *qh = q + (size_t)t * HD + h * D;
                double mx = -INFINITY, sum = 0.0;
                int s0 = W && t - W + 1 > 0 ? t - W + 1 : 0; /* first visible position */
                for (int s = s0; s <= t; s++) {
                    double d = 0.0;
                    for (int i = 0; i < D; i++) d += (double)qh[i] * k[(size_t)s * KD + kh * D + i];
                    sc[s] = d / sqrt((double)D);
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = s0; s <= t; s++) sum += (sc[s] = exp(sc[s] - mx));
                for (int i = 0; i < D; i++) {
                    double o = 0.0;
                    for (int s = s0; s <= t; s++) o += sc[s] / sum * v[(size_t)s * KD + kh * D + i];
                    att[h * D + i] = (float)o;
                }
            }
            ref_matvec(tmp, wo, att, C, HD);
            for (int i = 0; i < C; i++) x[(size_t)t * C + i] += tmp[i];
        }
        for (int t = 0; t < T; t++) {
            float *xt = x + (size_t)t * C;
            ref_rmsnorm(xn, xt, p->ffn_norm + (size_t)l * C, C, c->norm_eps);
            ref_matvec(g, p->w_gate + (size_t)l * F * C, xn, F, C);
            ref_matvec(u, p->w_up + (size_t)l * F * C, xn, F, C);
            for (int i = 0; i < F; i++) g[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
            ref_matvec(tmp, p->w_down + (size_t)l * C * F, g, C, F);
            for (int i = 0; i < C; i++) xt[i] += tmp[i];
        }
    }
    for (int t = 0; t < T; t++) {
        ref_rmsnorm(xn, x + (size_t)t * C, p->final_norm, C, c->norm_eps);
        ref_matvec(logits + (size_t)t * V, p->lm_head, xn, V, C);
    }
done:
    free(x);
    free(xn);
    free(q);
    free(k_all);
    free(v_all);
    free(att);
    free(tmp);
    free(g);
    free(u);
    free(sc);
    return rc;
}
