# template/: the Jinja subset of Hugging Face chat templates (lexer, parser, evaluator, builtins) and
# `rlhf chat-template`. Checked against @huggingface/jinja by test_template.
LIB_SRCS  += $(filter-out %_cli.c,$(wildcard template/*.c))
CMD_SRCS  += $(wildcard template/*_cli.c)
HEADERS   += template/template.h
TESTS     += test_template
SAN_TESTS += test_template
test_template_SRCS = $(wildcard tests/template/*.c)
