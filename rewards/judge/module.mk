# rewards/judge/: the LLM-judge HTTP client (concurrent requests, retries, circuit breaker, cache).
# Public header: rewards/judge/judge.h; the "judge" reward source is rewards/judge_source.c.
LIB_SRCS  += $(filter-out %_cli.c,$(wildcard rewards/judge/*.c))
HEADERS   += rewards/judge/judge.h
TESTS     += test_judge
SAN_TESTS += test_judge
test_judge_SRCS = $(wildcard tests/judge/*.c) tests/peer/peer.c
# The fault-injecting chat server test_judge and bench_judge talk to (a test peer, not a model).
PROGRAMS  += fault_http_server
fault_http_server_SRCS = tests/judge/fault/fault_http_server.c
# bench_judge starts fault_http_server with the tests' process helpers.
BENCHES   += $(patsubst bench/%.c,%,$(wildcard bench/bench_judge*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_judge*.c)),$(eval $(b)_SRCS = bench/$(b).c tests/peer/peer.c))
