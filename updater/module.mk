# updater/: policy updaters: RL math, scoring threads, the policy and its optimizer step, checkpoints,
# metrics, the updater session and the process body (updater_main). Every updater/*.c goes into
# librlhf.a, except *_cli.c (the `rlhf updater` command line).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard updater/*.c))
CMD_SRCS += $(wildcard updater/*_cli.c)
HEADERS  += updater/updater.h
TESTS    += test_updater
SAN_TESTS += test_updater
test_updater_SRCS = $(wildcard tests/updater/*.c)
