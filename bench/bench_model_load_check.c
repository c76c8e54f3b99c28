/* bench/bench_model_load_check.c — what the loader's non-finite check costs: safetensors_tensor_to_f32
 * (copy + the exponent scan that refuses NaN/Inf) against a bare memcpy of the same bytes, on one F32
 * tensor of N floats (default 100 M = 400 MB, a few hundred MB as a real checkpoint) opened from a
 * file, pages already in memory. Prints the median of R runs of each and the difference.
 *
 *   bench_model_load_check [--floats N] [--runs R] [--file PATH]
 */
#include "bench/bench_util.h"
#include "common/common.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t n = 100u * 1000 * 1000;
    int runs = 5;
    const char *path = "/tmp/bench_model_load_check.safetensors";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--floats")) n = (size_t)strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--file")) path = argv[i + 1];
        else {
            fprintf(stderr, "usage: bench_model_load_check [--floats N] [--runs R] [--file PATH]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 100) runs = 5;
    float *w = malloc(n * sizeof *w), *dst = malloc(n * sizeof *dst);
    if (!w || !dst) return 1;
    for (size_t i = 0; i < n; i++) w[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    safetensors_tensor t = {.name = "w", .ndim = 1, .shape = {(int64_t)n}, .data = w};
    rlhf_error err = {0};
    if (safetensors_write(path, &t, 1, NULL, &err)) {
        rlhf_error_print("bench_model_load_check", &err);
        return 1;
    }
    free(w);
    safetensors_file *f = NULL;
    if (safetensors_open(&f, path, &err)) {
        rlhf_error_print("bench_model_load_check", &err);
        return 1;
    }
    const safetensors_tensor *ft = safetensors_find(f, "w");
    double tc[100], tm[100];
    memcpy(dst, ft->data, n * sizeof *dst); /* fault the pages in */
    for (int r = 0; r < runs; r++) {
        double t0 = rlhf_now();
        memcpy(dst, ft->data, n * sizeof *dst);
        double t1 = rlhf_now();
        if (safetensors_tensor_to_f32(ft, dst, path, &err)) {
            rlhf_error_print("bench_model_load_check", &err);
            return 1;
        }
        double t2 = rlhf_now();
        tm[r] = t1 - t0;
        tc[r] = t2 - t1;
    }
    double mc = median(tm, runs), cc = median(tc, runs);
    double mb = (double)n * 4 / 1e6;
    printf("%zu floats (%.0f MB): memcpy %.1f ms, copy + non-finite check %.1f ms, check costs %.1f ms "
           "(%.2f ms per 100 MB)\n", n, mb, mc * 1e3, cc * 1e3, (cc - mc) * 1e3, (cc - mc) * 1e3 / mb * 100);
    safetensors_close(&f);
    free(dst);
    unlink(path);
    return 0;
}
