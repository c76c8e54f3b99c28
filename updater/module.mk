# updater/: policy updaters: RL math, scoring threads, the policy and its optimizer step, checkpoints,
# metrics, the updater session and the process body (updater_main). Every updater/*.c goes into
# librlhf.a, except *_cli.c (the `rlhf updater` command line).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard updater/*.c))
CMD_SRCS += $(wildcard updater/*_cli.c)
HEADERS  += updater/updater.h
TESTS    += test_updater
SAN_TESTS += test_updater
test_updater_SRCS = $(filter-out tests/updater/dist_%.c,$(wildcard tests/updater/*.c))
# the data-parallel step on fixed data, run alone and under mpirun by tests/updater/test_dist.c
PROGRAMS += dist_step_check
dist_step_check_SRCS = tests/updater/dist_step_check.c
# Data-parallel updaters (updater/dist.c) use MPI (Debian's OpenMPI: libopenmpi-dev, openmpi-bin from
# scripts/install-deps.sh). The fallbacks are Debian's paths, for a first `make` before mpicc exists.
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null || echo -I/usr/lib/x86_64-linux-gnu/openmpi/include)
MPI_LIBS   := $(shell mpicc --showme:link 2>/dev/null || echo -L/usr/lib/x86_64-linux-gnu/openmpi/lib -lmpi)
$(BUILD)/obj/updater/dist.o: CFLAGS += $(MPI_CFLAGS)
LDLIBS += $(MPI_LIBS)
# the gradient sum's bandwidth on this host (run under mpirun: bench/bench_dist_updaters.sh)
BENCHES += bench_dist_allreduce
bench_dist_allreduce_SRCS = bench/bench_dist_allreduce.c
$(BUILD)/obj/bench/bench_dist_allreduce.o: CFLAGS += $(MPI_CFLAGS)
