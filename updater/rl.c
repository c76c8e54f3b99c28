/* updater/rl.c — the RL math of one update: RLOO advantages, importance ratios, truncated IS,
 * PPO-clip and the KL penalty. Plain loops over small arrays: the cost is negligible next to the
 * forward/backward pass, and plain code is easy to check against hand-computed values. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "updater/updater.h"

int rl_rloo_advantages(float *adv, int *keep, const float *rewards, int G, int k) {
    int dropped = 0;
    for (int g = 0; g < G; g++) {
        const float *r = rewards + (size_t)g * k; // (k)
        float *a = adv + (size_t)g * k;           // (k)
        double sum = 0;
        float lo = r[0], hi = r[0];
        for (int i = 0; i < k; i++) {
            sum += r[i];
            if (r[i] < lo) lo = r[i];
            if (r[i] > hi) hi = r[i];
        }
        /* no spread = no learning signal: every leave-one-out baseline equals the reward */
        if (k < 2 || hi - lo <= 1e-6f) {
            keep[g] = 0;
            dropped++;
            for (int i = 0; i < k; i++) a[i] = 0.0f;
            continue;
        }
        keep[g] = 1;
        for (int i = 0; i < k; i++) a[i] = (float)(r[i] - (sum - r[i]) / (k - 1));
    }
    return dropped;
}

int rl_rloo_advantages_scored(float *adv, int *keep, const float *rewards, const unsigned char *scored, int G, int k) {
    if (!scored) return rl_rloo_advantages(adv, keep, rewards, G, k);
    int dropped = 0;
    for (int g = 0; g < G; g++) {
        const float *r = rewards + (size_t)g * k;        // (k)
        const unsigned char *m = scored + (size_t)g * k; // (k)
        float *a = adv + (size_t)g * k;                  // (k)
        double sum = 0;
        int n = 0;
        float lo = 0, hi = 0;
        for (int i = 0; i < k; i++) {
            if (!m[i]) continue;
            if (!n || r[i] < lo) lo = r[i];
            if (!n || r[i] > hi) hi = r[i];
            sum += r[i];
            n++;
        }
        for (int i = 0; i < k; i++) a[i] = 0.0f;
        /* a sample no source scored has no reward at all (not a 0): it is neither a baseline for the
         * others nor trained; fewer than 2 scored leaves no baseline */
        if (n < 2 || hi - lo <= 1e-6f) {
            keep[g] = 0;
            dropped++;
            continue;
        }
        keep[g] = 1;
        for (int i = 0; i < k; i++)
            if (m[i]) a[i] = (float)(r[i] - (sum - r[i]) / (n - 1));
    }
    return dropped;
}

static double std_unbiased(const float *x, int n, double mean) {
    if (n < 2) return 0.0;
    double ss = 0;
    for (int i = 0; i < n; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
    return sqrt(ss / (n - 1));
}

int rl_advantages(float *adv, int *keep, const float *rewards, const int *k, int G, int estimator, int scale) {
    int dropped = 0, S = 0;
    for (int g = 0; g < G; g++) S += k[g];
    double batch_mean = 0;
    for (int s = 0; s < S; s++) batch_mean += rewards[s];
    batch_mean = S ? batch_mean / S : 0;
    const double batch_std = std_unbiased(rewards, S, batch_mean), eps = 1e-6;
    int off = 0;
    for (int g = 0; g < G; off += k[g++]) {
        const float *r = rewards + off; // (k)
        float *a = adv + off;           // (k)
        int kg = k[g];
        double sum = 0;
        float lo = kg ? r[0] : 0, hi = lo;
        for (int i = 0; i < kg; i++) {
            sum += r[i];
            if (r[i] < lo) lo = r[i];
            if (r[i] > hi) hi = r[i];
        }
        for (int i = 0; i < kg; i++) a[i] = 0.0f;
        /* no spread = no learning signal, under every estimator */
        if (kg < 2 || hi - lo <= 1e-6f) {
            keep[g] = 0;
            dropped++;
            continue;
        }
        keep[g] = 1;
        double mean = sum / kg;
        if (estimator == RL_ADV_RLOO) {
            for (int i = 0; i < kg; i++) a[i] = (float)(r[i] - (sum - r[i]) / (kg - 1));
        } else if (estimator == RL_ADV_GRPO) {
            double d = scale == RL_SCALE_GROUP ? std_unbiased(r, kg, mean) + eps
                       : scale == RL_SCALE_BATCH ? batch_std + eps
                                                 : 1.0;
            for (int i = 0; i < kg; i++) a[i] = (float)((r[i] - mean) / d);
        } else { /* dr_grpo, reinforce_pp: centred on the group mean */
            for (int i = 0; i < kg; i++) a[i] = (float)(r[i] - mean);
        }
    }
    if (estimator == RL_ADV_REINFORCE_PP) { /* then whitened over the step's kept samples */
        double m = 0;
        int n = 0;
        off = 0;
        for (int g = 0; g < G; off += k[g++])
            if (keep[g])
                for (int i = 0; i < k[g]; i++) m += adv[off + i], n++;
        m = n ? m / n : 0;
        double ss = 0;
        off = 0;
        for (int g = 0; g < G; off += k[g++])
            if (keep[g])
                for (int i = 0; i < k[g]; i++) ss += (adv[off + i] - m) * (adv[off + i] - m);
        double sd = n > 1 ? sqrt(ss / (n - 1)) : 0;
        off = 0;
        for (int g = 0; g < G; off += k[g++])
            if (keep[g])
                for (int i = 0; i < k[g]; i++) adv[off + i] = (float)((adv[off + i] - m) / (sd + eps));
    }
    return dropped;
}

void rl_interpolate_prox(float *logprox, const float *logp, const float *logmu, const float *mask, const long *lag,
                         int B, int T) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            double alpha = lag[i] > 0 ? (double)lag[i] / (double)(lag[i] + 1) : 0.0;
            logprox[i] = mask[i] != 0.0f ? (float)(logmu[i] + alpha * ((double)logp[i] - (double)logmu[i])) : 0.0f;
        }
    }
}

/* The clip range: clip_low / clip_high, or clip_eps on both sides when they are not set. */
static void clip_range(const rl_loss_config *cfg, double *lo, double *hi) {
    double l = cfg->clip_low > 0 || cfg->clip_high > 0 ? cfg->clip_low : cfg->clip_eps;
    double h = cfg->clip_low > 0 || cfg->clip_high > 0 ? cfg->clip_high : cfg->clip_eps;
    *lo = 1.0 - l;
    *hi = 1.0 + h;
}

/* The weight of each token of a sequence of `len` tokens in the aggregate (rl.loss_agg). */
static double agg_weight(int agg, long len, double N, double G, double L) {
    return agg == RL_AGG_SEQ_MEAN_TOKEN_SUM        ? 1.0 / G
           : agg == RL_AGG_SEQ_MEAN_TOKEN_MEAN     ? 1.0 / (G * (double)len)
           : agg == RL_AGG_SEQ_MEAN_TOKEN_SUM_NORM ? 1.0 / (G * L)
                                                   : 1.0 / N;
}

/* One token's term of a token-level loss: its objective value (what the loss reports) and the
 * derivative of that objective with respect to log pi (the coefficient before aggregation). Returns 1
 * when a clip (or the cap) is active on this token. */
typedef int (*token_term_fn)(const rl_loss_config *cfg, double rho, double logp, double logmu, double logprox,
                             double A, double *obj, double *grad, rl_step_stats *st);

static int term_tis(const rl_loss_config *cfg, double rho, double logp, double logmu, double logprox, double A,
                    double *obj, double *grad, rl_step_stats *st) {
    (void)logmu, (void)logprox, (void)st;
    double w = rho < cfg->is_cap ? rho : cfg->is_cap;
    *grad = w * A;
    *obj = w * A * logp; /* surrogate whose gradient is w A grad log pi */
    return rho > cfg->is_cap;
}

/* min(r A, clip(r) A) in r = exp(logp - base); the dual clip bounds it below by c A for A < 0 */
static int clipped_ratio_term(const rl_loss_config *cfg, double r, double A, double *obj, double *grad) {
    double lo, hi;
    clip_range(cfg, &lo, &hi);
    double rc = r < lo ? lo : r > hi ? hi : r;
    double unclipped = r * A, clippedv = rc * A;
    /* the objective is min(unclipped, clipped); its gradient flows only when the unclipped term is the
     * minimum (strictly smaller, or equal with r in range) */
    int active = clippedv < unclipped;
    double m = active ? clippedv : unclipped;
    if (cfg->clip_c > 0 && A < 0 && m < cfg->clip_c * A) {
        *obj = cfg->clip_c * A;
        *grad = 0;
        return 1;
    }
    *obj = m;
    *grad = active ? 0.0 : r * A;
    return active;
}

static int term_ppo(const rl_loss_config *cfg, double rho, double logp, double logmu, double logprox, double A,
                    double *obj, double *grad, rl_step_stats *st) {
    (void)logp, (void)logmu, (void)logprox, (void)st;
    return clipped_ratio_term(cfg, rho, A, obj, grad);
}

static int term_decoupled(const rl_loss_config *cfg, double rho, double logp, double logmu, double logprox, double A,
                          double *obj, double *grad, rl_step_stats *st) {
    (void)rho;
    double w = exp(logprox - logmu);
    st->behav_mean += w; /* a sum here; the caller divides */
    if (w > st->behav_max) st->behav_max = w;
    if (w > cfg->behav_cap) { /* too far off-policy to trust: no gradient, counted */
        st->behav_dropped++;
        *obj = *grad = 0;
        return 0;
    }
    double r = exp(logp - logprox);
    int active = clipped_ratio_term(cfg, r, A, obj, grad);
    *obj *= w;
    *grad *= w;
    return active;
}

static int term_cispo(const rl_loss_config *cfg, double rho, double logp, double logmu, double logprox, double A,
                      double *obj, double *grad, rl_step_stats *st) {
    (void)logmu, (void)logprox, (void)st;
    double lo, hi;
    clip_range(cfg, &lo, &hi);
    double w = rho < lo ? lo : rho > hi ? hi : rho; /* a constant weight: every token keeps its gradient */
    *grad = w * A;
    *obj = w * A * logp;
    return rho < lo || rho > hi;
}

/* the token-level losses, by rl.loss (GSPO is sequence-level, below) */
static const token_term_fn token_terms[] = {
    [RL_LOSS_TIS] = term_tis, [RL_LOSS_PPO_CLIP] = term_ppo, [RL_LOSS_DECOUPLED_PPO] = term_decoupled,
    [RL_LOSS_CISPO] = term_cispo,
};

void rl_token_coeffs(float *coef, rl_step_stats *st, const float *logp, const float *logmu, const float *logprox,
                     const float *mask, const float *adv, int B, int T, const rl_loss_config *cfg) {
    long n = 0, seqs = 0;
    for (int b = 0; b < B; b++) {
        long nb = 0;
        for (int t = 0; t < T; t++) nb += mask[(size_t)b * T + t] != 0.0f;
        n += nb;
        seqs += nb > 0;
    }
    memset(st, 0, sizeof *st);
    st->n_tokens = n;
    memset(coef, 0, sizeof(float) * (size_t)B * T);
    if (n == 0) return;
    const double N = cfg->norm_tokens > 0 ? cfg->norm_tokens : (double)n;
    const double G = cfg->norm_seqs > 0 ? cfg->norm_seqs : (double)seqs;
    const double L = cfg->norm_len > 0 ? cfg->norm_len : 1.0;
    double ratio_sum = 0, ratio_max = 0, loss = 0;
    long clipped = 0;
    for (int b = 0; b < B; b++) {
        const size_t row = (size_t)b * T;
        long len = 0;
        double dsum = 0;
        for (int t = 0; t < T; t++)
            if (mask[row + t] != 0.0f) len++, dsum += (double)logp[row + t] - (double)logmu[row + t];
        if (len == 0) continue;
        double w = agg_weight(cfg->agg, len, N, G, L); /* every token's weight in the aggregate */
        const double A = adv[b];
        for (int t = 0; t < T; t++) {
            if (mask[row + t] == 0.0f) continue;
            double rho = exp((double)logp[row + t] - (double)logmu[row + t]);
            ratio_sum += rho;
            if (rho > ratio_max) ratio_max = rho;
        }
        if (cfg->loss == RL_LOSS_GSPO) {
            /* one ratio per sequence, the geometric mean of its tokens' ratios */
            double sr = exp(dsum / (double)len), obj, grad;
            int active = clipped_ratio_term(cfg, sr, A, &obj, &grad);
            double W = w * (double)len; /* the sequence's total weight */
            loss -= W * obj;
            for (int t = 0; t < T; t++)
                if (mask[row + t] != 0.0f) coef[row + t] = (float)(-W * grad / (double)len);
            clipped += active ? len : 0;
            continue;
        }
        token_term_fn term = token_terms[cfg->loss];
        for (int t = 0; t < T; t++) {
            size_t i = row + t;
            if (mask[i] == 0.0f) continue;
            double rho = exp((double)logp[i] - (double)logmu[i]), obj, grad;
            clipped += term(cfg, rho, logp[i], logmu[i], logprox ? logprox[i] : logmu[i], A, &obj, &grad, st);
            coef[i] = (float)(-w * grad);
            loss -= w * obj;
        }
    }
    st->loss = loss;
    st->ratio_mean = ratio_sum / n;
    st->ratio_max = ratio_max;
    st->clip_frac = (double)clipped / n;
    st->behav_mean /= n;
}

void rl_kl_penalty(float *kl, const float *logp, const float *logref, const float *mask, int B, int T) {
    rl_kl_penalty_est(kl, logp, logref, mask, B, T, 1);
}

double rl_kl_token(int estimator, double logp, double logref, double *grad) {
    double d = logref - logp;
    if (estimator == 2) {
        *grad = -d;
        return 0.5 * d * d;
    }
    if (estimator == 3) {
        double e = exp(d);
        *grad = 1.0 - e;
        return e - 1.0 - d;
    }
    *grad = 1.0;
    return -d;
}

void rl_kl_penalty_est(float *kl, const float *logp, const float *logref, const float *mask, int B, int T, int estimator) {
    for (int b = 0; b < B; b++) {
        double s = 0, g;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (mask[i] != 0.0f) s += rl_kl_token(estimator, logp[i], logref[i], &g);
        }
        kl[b] = (float)s;
    }
}

double rl_regularizers(float *coef, float *dent, const float *logp, const float *logref, const float *ent,
                       const float *mask, int B, int T, const rl_loss_config *cfg, double *kl_out) {
    long n = 0, seqs = 0;
    for (int b = 0; b < B; b++) {
        long nb = 0;
        for (int t = 0; t < T; t++) nb += mask[(size_t)b * T + t] != 0.0f;
        n += nb;
        seqs += nb > 0;
    }
    const double N = cfg->norm_tokens > 0 ? cfg->norm_tokens : (double)n;
    const double G = cfg->norm_seqs > 0 ? cfg->norm_seqs : (double)seqs;
    const double L = cfg->norm_len > 0 ? cfg->norm_len : 1.0;
    double added = 0, kl = 0;
    if (dent) memset(dent, 0, sizeof(float) * (size_t)B * T);
    for (int b = 0; b < B; b++) {
        const size_t row = (size_t)b * T;
        long len = 0;
        for (int t = 0; t < T; t++) len += mask[row + t] != 0.0f;
        if (len == 0) continue;
        double w = agg_weight(cfg->agg, len, N, G, L);
        for (int t = 0; t < T; t++) {
            size_t i = row + t;
            if (mask[i] == 0.0f) continue;
            if (cfg->kl_loss_beta > 0 && logref) {
                double g, k = rl_kl_token(cfg->kl_estimator, logp[i], logref[i], &g);
                coef[i] += (float)(cfg->kl_loss_beta * w * g);
                added += cfg->kl_loss_beta * w * k;
                kl += w * k;
            }
            if (cfg->entropy_coef > 0 && dent && ent) {
                dent[i] = (float)(-cfg->entropy_coef * w);
                added -= cfg->entropy_coef * w * ent[i];
            }
        }
    }
    if (kl_out) *kl_out = kl;
    return added;
}

float rl_overlong_shaping(int n_tokens, int max_tokens, int buffer, float penalty) {
    if (buffer <= 0) return 0.0f;
    int start = max_tokens - buffer;
    if (n_tokens <= start) return 0.0f;
    if (n_tokens >= max_tokens) return -penalty;
    return (float)(-(double)penalty * (double)(n_tokens - start) / (double)buffer);
}
