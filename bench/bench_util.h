/* bench/bench_util.h — small helpers shared by the benchmark programs (static inline, header-only):
 * cmp_double for qsort over doubles and the median of an array of timings. Wall-clock time is
 * rlhf_now() (common/common.h, monotonic). */
#ifndef RLHF_BENCH_UTIL_H
#define RLHF_BENCH_UTIL_H

#include <stdlib.h>

/* qsort comparator: ascending doubles. */
static inline int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (n >= 1; the mean of the two middle values when n is even). Sorts v in place. */
static inline double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
