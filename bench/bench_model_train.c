/* bench/bench_model_train.c — the training-step benchmark as a stand-alone program; same as
 * `rlhf bench train ARGS` (model/train_bench.c). bench/bench_model_train.sh runs it with the PyTorch peer. */
#include "model/model.h"

int main(int argc, char **argv) { return model_bench_train(argc, argv); }
