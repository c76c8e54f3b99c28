# rewards/rm/: reward models (the shared model with a scalar head), Bradley-Terry training and
# `rlhf train-rm`. Public header: rewards/rm/rm.h; the "rm" and "remote_rm" reward sources are
# rewards/rm_source.c. Every rewards/rm/*.c goes into librlhf.a, except *_cli.c. Its tests run in
# test_serve (tests/serve/test_serve.c), next to the /get_reward endpoint they compare against.
LIB_SRCS += $(filter-out %_cli.c,$(wildcard rewards/rm/*.c))
CMD_SRCS += $(wildcard rewards/rm/*_cli.c)
HEADERS  += rewards/rm/rm.h
# bench_rm starts `rlhf serve --reward-model` with the tests' process helpers.
BENCHES  += $(patsubst bench/%.c,%,$(wildcard bench/bench_rm*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_rm*.c)),$(eval $(b)_SRCS = bench/$(b).c tests/peer/peer.c))
