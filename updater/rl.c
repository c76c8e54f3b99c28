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

void rl_token_coeffs(float *coef, rl_step_stats *st, const float *logp, const float *logmu, const float *logprox,
                     const float *mask, const float *adv, int B, int T, const rl_loss_config *cfg) {
    long n = 0;
    for (size_t i = 0; i < (size_t)B * T; i++) n += mask[i] != 0.0f;
    memset(st, 0, sizeof *st);
    st->n_tokens = n;
    if (n == 0) {
        memset(coef, 0, sizeof(float) * (size_t)B * T);
        return;
    }
    double inv_n = 1.0 / (double)n;
    double ratio_sum = 0, ratio_max = 0, loss = 0, behav_sum = 0, behav_max = 0;
    long clipped = 0, dropped = 0;
    for (int b = 0; b < B; b++) {
        double A = adv[b];
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (mask[i] == 0.0f) {
                coef[i] = 0.0f;
                continue;
            }
            double rho = exp((double)logp[i] - (double)logmu[i]);
            ratio_sum += rho;
            if (rho > ratio_max) ratio_max = rho;
            double c;
            if (cfg->loss == RL_LOSS_DECOUPLED_PPO) {
                double w = exp((double)logprox[i] - (double)logmu[i]);
                behav_sum += w;
                if (w > behav_max) behav_max = w;
                if (w > cfg->behav_cap) { /* too far off-policy to trust: no gradient, counted */
                    dropped++;
                    coef[i] = 0.0f;
                    continue;
                }
                double r = exp((double)logp[i] - (double)logprox[i]);
                double lo = 1.0 - cfg->clip_eps, hi = 1.0 + cfg->clip_eps;
                double rc = r < lo ? lo : r > hi ? hi : r;
                double unclipped = r * A, clippedv = rc * A;
                int clip_active = clippedv < unclipped;
                if (clip_active) clipped++;
                c = clip_active ? 0.0 : w * r * A;
                loss -= w * (clip_active ? clippedv : unclipped) * inv_n;
            } else if (cfg->loss == RL_LOSS_PPO_CLIP) {
                double lo = 1.0 - cfg->clip_eps, hi = 1.0 + cfg->clip_eps;
                double rc = rho < lo ? lo : rho > hi ? hi : rho;
                double unclipped = rho * A, clippedv = rc * A;
                /* the objective is min(unclipped, clipped); its gradient flows only when the
                 * unclipped term is the minimum (strictly smaller, or equal with rho in range) */
                int clip_active = clippedv < unclipped;
                if (clip_active) clipped++;
                c = clip_active ? 0.0 : rho * A;
                loss -= (clip_active ? clippedv : unclipped) * inv_n;
            } else {
                double w = rho < cfg->is_cap ? rho : cfg->is_cap;
                if (rho > cfg->is_cap) clipped++;
                c = w * A;
                /* surrogate whose gradient is -w A grad log pi: report -w A log pi */
                loss -= w * A * logp[i] * inv_n;
            }
            coef[i] = (float)(-c * inv_n);
        }
    }
    st->loss = loss;
    st->ratio_mean = ratio_sum / n;
    st->ratio_max = ratio_max;
    st->clip_frac = (double)clipped / n;
    st->behav_mean = behav_sum / n;
    st->behav_max = behav_max;
    st->behav_dropped = dropped;
}

void rl_kl_penalty(float *kl, const float *logp, const float *logref, const float *mask, int B, int T) {
    for (int b = 0; b < B; b++) {
        double s = 0;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (mask[i] != 0.0f) s += (double)logp[i] - (double)logref[i];
        }
        kl[b] = (float)s;
    }
}
