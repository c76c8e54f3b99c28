# generator/: trajectory generator processes. Every generator/*.c goes into librlhf.a, except
# *_cli.c (the `rlhf generator` subcommand). Its tests live in tests/e2e (test_e2e, cli/module.mk).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard generator/*.c))
CMD_SRCS += $(wildcard generator/*_cli.c)
HEADERS  += generator/generator.h
