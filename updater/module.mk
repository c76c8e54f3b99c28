# updater/: policy updaters, RL math, run config, the launcher (`rlhf run`), replay and eval.
# Every updater/*.c goes into librlhf.a, except *_cli.c (rlhf subcommands).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard updater/*.c))
CMD_SRCS += $(wildcard updater/*_cli.c)
HEADERS  += updater/updater.h
TESTS    += test_updater test_e2e
SAN_TESTS += test_updater test_e2e
test_updater_SRCS = $(wildcard tests/updater/*.c)
test_e2e_SRCS = $(wildcard tests/e2e/*.c)
