# model/: every model/*.c goes into librlhf.a, except *_cli.c (rlhf subcommands).
LIB_SRCS += $(filter-out %_cli.c,$(wildcard model/*.c))
CMD_SRCS += $(wildcard model/*_cli.c)
HEADERS  += model/model.h model/model_train.h model/model_infer.h
# Hugging Face tokenizers: PCRE2 (JIT, UTF/UCP) for pre-tokenizer regexes, utf8proc for NFC.
LDLIBS   += -lpcre2-8 -lutf8proc
# Test binaries: training numerics; inference (byte tokenizer, checkpoints, sampling);
# Hugging Face tokenizers, whose oracle is Hugging Face's `tokenizers` (node) over a generated corpus.
TESTS    += test_model_train test_model_infer test_model_tokenizer
SAN_TESTS += test_model_train test_model_infer test_model_tokenizer
test_model_train_SRCS = $(wildcard tests/model_train/*.c)
test_model_infer_SRCS = $(wildcard tests/model_infer/*.c)
# Hugging Face directories against the PyTorch oracle tests/oracle/hf_fixture.py.
TESTS    += test_model_hf
SAN_TESTS += test_model_hf
test_model_hf_SRCS = $(wildcard tests/model_hf/*.c)
test_model_tokenizer_SRCS = $(wildcard tests/model_tokenizer/*.c)
BENCHES  += $(patsubst bench/%.c,%,$(wildcard bench/bench_model_*.c)) bench_tokenizer
bench_tokenizer_SRCS = bench/bench_tokenizer.c
$(foreach b,$(patsubst bench/%.c,%,$(wildcard bench/bench_model_*.c)),$(eval $(b)_SRCS = bench/$(b).c))
$(BUILD)/obj/model/%.o: CFLAGS += -fno-math-errno # sqrtf/expf loops vectorize; nothing here reads errno
# Speculative decoding (model/speculative.c) against the reference forward, plain decoding and the scorer.
TESTS    += test_model_spec
# under ASan too: its n-gram distribution test found a read before a prompt's array (2026-12-06)
SAN_TESTS += test_model_spec
test_model_spec_SRCS = $(wildcard tests/model_spec/*.c)
