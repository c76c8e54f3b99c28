/* tests/model_train/helpers.h — shared helpers of the training tests (static, header-only). */
#ifndef TESTS_MODEL_TRAIN_HELPERS_H
#define TESTS_MODEL_TRAIN_HELPERS_H

#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

static inline float *rand_buf(rlhf_rng *r, size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * rlhf_rng_normal(r);
    return p;
}

static inline float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static inline double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* max|a-b| / max(max|b|, tiny): the relative norm used by every comparison here. */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fabs((double)a[i] - b[i]) > d ? fabs((double)a[i] - b[i]) : d;
    double s = max_abs(b, n);
    return d / (s > 1e-30 ? s : 1e-30);
}

static inline double dot_rd(const float *a, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * r[i];
    return s;
}

/* Central finite differences of loss(x) at up to `samples` coordinates of x (all when n <= samples),
 * compared with grad: |fd - g| <= tol * max(|g|, 0.01 * max|grad|). Returns the worst ratio. */
typedef double (*loss_fn)(void *ctx);
static inline double fd_check(const char *what, loss_fn f, void *ctx, float *x, size_t n, const float *grad,
                              double eps, double tol, int samples, rlhf_rng *rng) {
    double gmax = max_abs(grad, n), worst = 0;
    int count = n <= (size_t)samples ? (int)n : samples;
    for (int s = 0; s < count; s++) {
        size_t i = n <= (size_t)samples ? (size_t)s : (size_t)(rlhf_rng_u64(rng) % n);
        float x0 = x[i];
        x[i] = x0 + (float)eps;
        double lp = f(ctx);
        x[i] = x0 - (float)eps;
        double lm = f(ctx);
        x[i] = x0;
        double h = ((double)(float)(x0 + (float)eps) - (double)(float)(x0 - (float)eps));
        double fd = (lp - lm) / h;
        double denom = fmax(fabs(grad[i]), 0.01 * gmax);
        if (denom < 1e-12) denom = 1e-12;
        double ratio = fabs(fd - grad[i]) / denom;
        if (ratio > worst) worst = ratio;
        if (ratio > tol) {
            fprintf(stderr, "  %s[%zu]: finite difference %.7g vs analytic %.7g (ratio %.3g)\n", what, i, fd,
                    (double)grad[i], ratio);
        }
    }
    CU_ASSERT(worst <= tol);
    return worst;
}

#endif
