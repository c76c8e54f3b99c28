# rewards/: every rewards/*.c goes into librlhf.a, except *_cli.c (rlhf subcommands).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard rewards/*.c))
CMD_SRCS += $(wildcard rewards/*_cli.c)
HEADERS  += rewards/rewards.h
TESTS    += test_rewards test_judge
test_rewards_SRCS = $(wildcard tests/rewards/*.c)
test_judge_SRCS = $(wildcard tests/judge/*.c)
# --- targets added by the judge/serve/reward-model work go below this line ---
