# prompts/: datasets, task generators, prompt selection. Every prompts/*.c goes into librlhf.a,
# except *_cli.c (the `rlhf prompts ...` subcommand).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard prompts/*.c))
CMD_SRCS += $(wildcard prompts/*_cli.c)
HEADERS  += prompts/prompts.h
TESTS    += test_prompts
SAN_TESTS += test_prompts
test_prompts_SRCS = $(wildcard tests/prompts/*.c)
BENCHES  += $(patsubst bench/%.c,%,$(wildcard bench/bench_prompts*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_prompts*.c)),$(eval $(b)_SRCS = bench/$(b).c))
