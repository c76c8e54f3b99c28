# serve/: `rlhf serve`, the OpenAI-compatible HTTP server for a checkpoint and/or a reward model.
# Every serve/*.c goes into librlhf.a, except *_cli.c (the `rlhf serve` subcommand). Public header:
# serve/serve.h (serve/serve_int.h is private to serve/ and tests/serve).
LIB_SRCS  += $(filter-out %_cli.c,$(wildcard serve/*.c))
CMD_SRCS  += $(wildcard serve/*_cli.c)
HEADERS   += serve/serve.h
TESTS     += test_serve
SAN_TESTS += test_serve
test_serve_SRCS = $(wildcard tests/serve/*.c) tests/peer/peer.c
# bench_serve starts `rlhf serve` with the tests' process helpers.
BENCHES   += $(patsubst bench/%.c,%,$(wildcard bench/bench_serve*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_serve*.c)),$(eval $(b)_SRCS = bench/$(b).c tests/peer/peer.c))
