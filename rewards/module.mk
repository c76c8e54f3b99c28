# rewards/: the reward interface (rewards/rewards.h, the plugin ABI), the pipeline, the source-type
# registry, the built-in, plugin and process sources, and the adapters that plug the sub-packages into
# the pipeline: exec.c (rewards/sandbox), judge_source.c (rewards/judge), rm_source.c (rewards/rm).
# Every rewards/*.c goes into librlhf.a, except *_cli.c (rlhf subcommands); each sub-package has its
# own module.mk.
LIB_SRCS += $(filter-out %_cli.c,$(wildcard rewards/*.c))
CMD_SRCS += $(wildcard rewards/*_cli.c)
HEADERS  += rewards/rewards.h
TESTS    += test_rewards
SAN_TESTS += test_rewards
test_rewards_SRCS = $(wildcard tests/rewards/*.c)
BENCHES  += bench_plugin_isolation
bench_plugin_isolation_SRCS = bench/bench_plugin_isolation.c
