/* model/bench_cli.c — `rlhf bench sample|train ...`: dispatches to the sampling benchmark
 * (model_bench_sample, model/sampler_bench.c) and the training one (model_bench_train). */
#include "model/model.h"

#include <stdio.h>
#include <string.h>

/* Weak so the CLI links while the training benchmark is still being written. */
int model_bench_train(int argc, char **argv) __attribute__((weak));

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: rlhf bench sample [options]   (KV-cache sampling, rlhf bench sample --help)\n"
                "       rlhf bench train [options]    (training step)\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "sample")) return model_bench_sample(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) {
        if (!model_bench_train) {
            fprintf(stderr, "rlhf bench: error: the training benchmark is not built into this binary\n");
            return 2;
        }
        return model_bench_train(argc - 1, argv + 1);
    }
    fprintf(stderr, "rlhf bench: error: unknown benchmark '%s' (sample or train)\n", argv[1]);
    return 2;
}
