# cli/: the `rlhf` binary. cli/rlhf.c is its subcommand table; the commands that belong to no single
# folder live here: `rlhf run` (cli/launcher.c, its TensorBoard mirror cli/run_events.c), `rlhf replay`
# (cli/replay.c), `rlhf eval` (cli/eval.c), `rlhf plot` (cli/plot.c).
# Every other subcommand is a *_cli.c in the folder it runs. Linked into the rlhf binary only.
CMD_SRCS += cli/launcher.c cli/replay.c cli/replay_check.c cli/replay_tools.c cli/eval.c cli/run_events.c cli/plot.c
# The end-to-end test: `rlhf run`, `rlhf replay`, `rlhf eval` and the processes they start, the run
# directory lock (tests/e2e/test_lock.c), and the command line as a user meets it: every command's
# --help, strict number flags, --version, make install (tests/e2e/test_cli.c).
TESTS    += test_e2e
SAN_TESTS += test_e2e
test_e2e_SRCS = $(wildcard tests/e2e/*.c)
# `rlhf --version` names the commit it was built from (rebuilt when git's index or HEAD moves)
$(BUILD)/obj/cli/rlhf.o: CFLAGS += -DRLHF_GIT_VERSION='"$(shell git describe --always --dirty 2>/dev/null || echo unknown)"'
$(BUILD)/obj/cli/rlhf.o: $(wildcard $(addprefix $(shell git rev-parse --git-dir 2>/dev/null)/,HEAD index))
# and refuses, with one line, a CPU below the x86-64 level OPT's -march names
$(BUILD)/obj/cli/rlhf.o: CFLAGS += -DRLHF_BUILD_MARCH='"$(patsubst -march=%,%,$(lastword $(filter -march=%,$(OPT))))"'
