# run/: what every process of a training run shares: the run config, preparation, the base model,
# weights <-> WEIGHTS, process start-up. Public header: run/run.h. Tested by tests/updater and tests/e2e.
LIB_SRCS += $(wildcard run/*.c)
HEADERS  += run/run.h
