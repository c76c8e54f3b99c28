# rewards/: every rewards/*.c goes into librlhf.a, except *_cli.c (rlhf subcommands).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard rewards/*.c))
CMD_SRCS += $(wildcard rewards/*_cli.c)
HEADERS  += rewards/rewards.h
TESTS    += test_rewards test_judge
test_rewards_SRCS = $(wildcard tests/rewards/*.c)
test_judge_SRCS = $(wildcard tests/judge/*.c)
SAN_TESTS += test_rewards
BENCHES  += bench_sandbox
bench_sandbox_SRCS = bench/bench_sandbox.c
# --- targets added by the judge/serve/reward-model work go below this line ---
# The fault-injecting chat server the judge tests and bench_judge talk to (a test peer, not a model).
PROGRAMS += fault_http_server
fault_http_server_SRCS = tests/judge/fault/fault_http_server.c
# Benchmarks start their peers (fault_http_server, rlhf serve) with the tests' process helpers.
BENCHES  += $(patsubst bench/%.c,%,$(wildcard bench/bench_judge*.c bench/bench_rm*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_judge*.c bench/bench_rm*.c)),$(eval $(b)_SRCS = bench/$(b).c tests/judge/judge_peer.c))
SAN_TESTS += test_judge
