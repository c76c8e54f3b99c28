/* bench/bench_dist_allreduce.c — the gradient sum of data-parallel updaters (updater/dist.c) on this host.
 *
 *   mpirun -np 2 build/bench/bench_dist_allreduce [REPEAT]      (bench/bench_dist_updaters.sh sets the MPI env)
 *
 * For the gradient sizes of the default task's model (0.84 M parameters), the SmolLM2-135M shape and a 500 M
 * one, times updater_dist_sum_f32 (the rank-ordered, reproducible sum the updaters use) and MPI_Allreduce
 * with the built-in MPI_SUM (whatever order Open MPI picks) on float buffers; prints the median of REPEAT
 * (default 5) on rank 0 with the bus bandwidth 2 (U-1)/U x bytes / time, the usual figure for a ring.
 * Then the SmolLM2-135M gradient summed in buckets of 1, 4, 16, 64 and 256 MB (updaters.bucket_mb). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "updater/updater.h"

int main(int argc, char **argv) {
    int repeat = argc > 1 ? atoi(argv[1]) : 5;
    if (repeat < 1 || repeat > 100) repeat = 5;
    rlhf_error err = {0};
    updater_dist *d = NULL;
    if (updater_dist_create(&d, &err)) {
        fprintf(stderr, "%s: %s\n", err.where, err.msg);
        return 1;
    }
    int U = updater_dist_size(d), rank = updater_dist_rank(d);
    if (U < 2) {
        fprintf(stderr, "bench_dist_allreduce: run it under mpirun -np 2 (or more)\n");
        updater_dist_destroy(&d);
        return 2;
    }
    static const struct {
        const char *name;
        size_t n;
    } sizes[] = {{"default task (0.84 M params)", 838144}, {"SmolLM2-135M shape", 134515008}, {"500 M params", 500000000}};
    if (rank == 0) printf("%d ranks; median of %d\n", U, repeat);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k].n;
        float *buf = malloc(n * sizeof *buf);
        if (!buf) {
            fprintf(stderr, "rank %d: cannot allocate %zu MB\n", rank, n * 4 >> 20);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        for (size_t i = 0; i < n; i++) buf[i] = (float)((i * 2654435761u) & 1023) * 1e-3f;
        double t_ord[100], t_mpi[100];
        for (int r = 0; r < repeat; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = rlhf_now();
            if (updater_dist_sum_f32(d, buf, n, &err)) MPI_Abort(MPI_COMM_WORLD, 1);
            MPI_Barrier(MPI_COMM_WORLD);
            t_ord[r] = rlhf_now() - t0;
            t0 = rlhf_now();
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)(n < (1u << 30) ? n : (1u << 30)), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            MPI_Barrier(MPI_COMM_WORLD);
            t_mpi[r] = rlhf_now() - t0;
        }
        double to = median(t_ord, repeat), tm = median(t_mpi, repeat);
        double bytes = (double)n * 4, bus = 2.0 * (U - 1) / U * bytes;
        if (rank == 0)
            printf("%-30s %8.1f MB: rank-ordered sum %9.2f ms (%5.2f GB/s bus)  MPI_SUM %9.2f ms (%5.2f GB/s bus)\n",
                   sizes[k].name, bytes / 1e6, to * 1e3, bus / to / 1e9, tm * 1e3, bus / tm / 1e9);
        free(buf);
    }
    /* bucket sizes: the sum of one gradient in pieces, each a rank-ordered all-reduce */
    size_t n = 134515008;
    float *buf = malloc(n * sizeof *buf);
    if (!buf) MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < n; i++) buf[i] = (float)((i * 2654435761u) & 1023) * 1e-3f;
    static const int bucket_mb[] = {1, 4, 16, 64, 256};
    for (size_t k = 0; k < sizeof bucket_mb / sizeof bucket_mb[0]; k++) {
        updater_dist_set_bucket(d, (size_t)bucket_mb[k] << 18);
        double t[100];
        for (int r = 0; r < repeat; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = rlhf_now();
            if (updater_dist_sum_f32(d, buf, n, &err)) MPI_Abort(MPI_COMM_WORLD, 1);
            MPI_Barrier(MPI_COMM_WORLD);
            t[r] = rlhf_now() - t0;
        }
        double tm = median(t, repeat), bus = 2.0 * (U - 1) / U * (double)n * 4;
        if (rank == 0)
            printf("SmolLM2-135M gradient, buckets of %3d MB: %9.2f ms (%5.2f GB/s bus)\n", bucket_mb[k], tm * 1e3,
                   bus / tm / 1e9);
    }
    free(buf);
    updater_dist_destroy(&d);
    return 0;
}
