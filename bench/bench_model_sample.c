/* bench/bench_model_sample.c — the sampling benchmark as a standalone program; same options as
 * `rlhf bench sample` (see docs/PERFORMANCE.md, "Model core", "Sampling"). */
#include "model/model.h"

int main(int argc, char **argv) { return model_bench_sample(argc, argv); }
