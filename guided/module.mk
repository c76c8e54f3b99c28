# guided/: guided generation (JSON Schema / regex -> byte automaton -> token masks). Every guided/*.c goes
# into librlhf.a. Public header: guided/guided.h (guided/guided_int.h is private to guided/, its tests and
# its benchmark).
LIB_SRCS  += $(wildcard guided/*.c)
HEADERS   += guided/guided.h
TESTS     += test_guided
SAN_TESTS += test_guided
test_guided_SRCS = $(wildcard tests/guided/*.c)
BENCHES   += $(patsubst bench/%.c,%,$(wildcard bench/bench_guided*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_guided*.c)),$(eval $(b)_SRCS = bench/$(b).c))
