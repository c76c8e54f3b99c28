# broker/: the ZeroMQ hub, its client API and the replay log. Public header: broker/broker.h.
LIB_SRCS  += $(filter-out %_cli.c,$(wildcard broker/*.c))
CMD_SRCS  += $(wildcard broker/*_cli.c)
HEADERS   += broker/broker.h broker/wire.h
TESTS     += test_broker
SAN_TESTS += test_broker
test_broker_SRCS = $(filter-out tests/broker/synth_%.c,$(wildcard tests/broker/*.c))
# Synthetic peers (real processes over real sockets) used by test_broker and the benchmarks.
PROGRAMS  += synth_generator synth_updater
synth_generator_SRCS = tests/broker/synth_generator.c
synth_updater_SRCS = tests/broker/synth_updater.c
BENCHES   += $(patsubst bench/%.c,%,$(wildcard bench/bench_broker*.c))
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_broker*.c)),$(eval $(b)_SRCS = bench/$(b).c))
BENCHES   += bench_weights_shm
bench_weights_shm_SRCS = bench/bench_weights_shm.c
