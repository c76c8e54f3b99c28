# rewards/sandbox/: the code-execution sandbox (namespaces, seccomp, rlimits, cgroups) and
# `rlhf sandbox-run`. Public header: rewards/sandbox/sandbox.h. Every rewards/sandbox/*.c goes into
# librlhf.a, except *_cli.c. Tested by test_sandbox (tests/sandbox/); the exec sources built on it
# are tested in test_rewards.
LIB_SRCS += $(filter-out %_cli.c,$(wildcard rewards/sandbox/*.c))
CMD_SRCS += $(wildcard rewards/sandbox/*_cli.c)
HEADERS  += rewards/sandbox/sandbox.h
BENCHES  += $(patsubst bench/%.c,%,$(wildcard bench/bench_sandbox*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_sandbox*.c)),$(eval $(b)_SRCS = bench/$(b).c))
TESTS    += test_sandbox
SAN_TESTS += test_sandbox
test_sandbox_SRCS = $(wildcard tests/sandbox/*.c)
