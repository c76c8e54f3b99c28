# Top-level Makefile. Each folder adds its sources in its own `module.mk`
# (LIB_SRCS, CMD_SRCS, TESTS, BENCHES, PROGRAMS); this file only knows how to build them.
#
#   make            build everything (library, rlhf CLI, tests, benchmarks, helper programs)
#   make run        the main job on the embedded default (see README)
#   make test       install dependencies, build, check the layout (scripts/check_includes.py), run every CUnit test binary
#   make sanitize   ASan + UBSan build of the tests in SAN_TESTS, and run them
#   make fuzz       libFuzzer targets (tests/fuzz/, clang, ASan + UBSan) into build-fuzz/fuzz/; `make test`
#                   runs each for FUZZ_SECONDS over its committed corpus (fuzz-smoke; docs/FUZZING.md)
#   make bench      build the benchmarks (run them as docs/PERFORMANCE.md says)
#   make install    the rlhf binary (and its rlhf-broker/-generator/-updater names), library, public
#                   headers and pkg-config files under PREFIX (default /usr/local): rlhf.pc (the
#                   library) and rlhf-plugin.pc (only the include path a reward plugin needs); the
#                   dashboard's charting library under PREFIX/share/rlhf/dashboard

# `make` alone builds everything: module.mk files add rules of their own before `all` is defined
.DEFAULT_GOAL := all
CC       ?= gcc
BUILD    ?= build
PREFIX   ?= /usr/local
# x86-64-v3 (AVX2, FMA: every CPU kind this project runs on) rather than -march=native, so a binary built
# on one machine runs on the others; the sampling kernels carry AVX-512 themselves and are chosen at run
# time (model/kernels_int.h). For a CPU without AVX2: make OPT=-O3 (the sampler then runs its reference
# kernels; `rlhf` refuses to start on such a CPU when built with the default).
OPT      ?= -O3 -march=x86-64-v3
SAN      ?=
# RLHF_SOURCE_ROOT lets tests find fixtures under the source tree wherever BUILD is.
CFLAGS_BASE := -std=gnu11 -g -Wall -Wextra -fopenmp -I. -MMD -MP -D_GNU_SOURCE -DRLHF_SOURCE_ROOT='"$(CURDIR)"'
ifeq ($(SAN),1)
  CFLAGS := $(CFLAGS_BASE) -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(FUZZ),1)
  # libFuzzer needs clang; the library gets coverage instrumentation (fuzzer-no-link), the targets the driver.
  CC := clang
  CFLAGS := $(CFLAGS_BASE) -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=fuzzer,address,undefined
  # clang ignores the kernels' `#pragma GCC target`: give it their instruction sets as flags (still chosen
  # at run time, model/kernels_int.h)
  $(BUILD)/obj/model/kernels_avx2.o: CFLAGS += -mavx2 -mfma -Wno-unknown-pragmas
  $(BUILD)/obj/model/kernels_avx512.o: CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma \
                                                 -Wno-unknown-pragmas
  CFLAGS += -Wno-pass-failed
else
  CFLAGS := $(CFLAGS_BASE) $(OPT)
endif
LDFLAGS += -fopenmp -rdynamic
LDLIBS  := -lzmq -ljansson -lcurl -lopenblas -lseccomp -lmicrohttpd -lpthread -ldl -lm

LIB_SRCS   :=   # everything in librlhf.a
CMD_SRCS   :=   # rlhf subcommand implementations (linked as objects into the rlhf binary)
TESTS      :=   # test binary names; NAME_SRCS lists each one's sources (tests/test_main.c is added)
SAN_TESTS  :=   # the subset `make sanitize` runs
BENCHES    :=   # benchmark binary names; NAME_SRCS
PROGRAMS   :=   # other programs (synthetic peers, ...); NAME_SRCS
FUZZERS    :=   # libFuzzer targets (tests/fuzz/module.mk); NAME_SRCS, NAME_MAX_LEN
FUZZ_HELPERS :=  # programs the fuzz targets run (built beside them)
HEADERS    :=   # public headers for `make install`
CLI_ALIASES := rlhf-broker rlhf-generator rlhf-updater

# MODULES restricts the build to some folders (e.g. `make MODULES="common broker" BUILD=build-broker`),
# so work on one folder is not blocked by another; by default every folder and sub-folder (rewards/judge,
# ...) with a module.mk.
MODULES ?= $(sort $(patsubst %/module.mk,%,$(wildcard */module.mk */*/module.mk)))
include $(addsuffix /module.mk,$(MODULES))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LIB := $(BUILD)/librlhf.a

.PHONY: all deps run test test-bins check-layout sanitize fuzz fuzz-bins fuzz-smoke bench install clean
# deps first, then a fresh make: what deps installs (npm's uplot, copied into the build by
# dashboard/module.mk) is only seen by a make that parses the makefiles after it.
all: deps
	@$(MAKE) --no-print-directory $(BUILD)/bin/rlhf test-bins bench

deps:
	@bash scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(call obj,$(LIB_SRCS))
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/bin/rlhf: $(call obj,cli/rlhf.c $(CMD_SRCS)) $(LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
	@for a in $(CLI_ALIASES); do ln -sf rlhf $(BUILD)/bin/$$a; done

define PROG_template
$(BUILD)/$(2)/$(1): $$(call obj,$$($(1)_SRCS) $(3)) $$(LIB)
	@mkdir -p $$(@D)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(BUILD)/tests/%: LDLIBS += -lcunit
$(foreach t,$(TESTS),$(eval $(call PROG_template,$(t),tests,tests/test_main.c)))
$(foreach b,$(BENCHES),$(eval $(call PROG_template,$(b),bench,)))
$(foreach p,$(PROGRAMS),$(eval $(call PROG_template,$(p),bin,)))
$(foreach f,$(FUZZERS),$(eval $(call PROG_template,$(f),fuzz,)))

test-bins: $(BUILD)/bin/rlhf $(addprefix $(BUILD)/tests/,$(TESTS)) $(addprefix $(BUILD)/bin/,$(PROGRAMS))

test: deps
	@$(MAKE) --no-print-directory test-bins
	@$(MAKE) --no-print-directory check-layout
	@BUILD=$(BUILD) bash scripts/run-tests.sh $(TESTS)
	@$(MAKE) --no-print-directory fuzz-smoke

# The floors of the tree (docs/ARCHITECTURE.md): includes, symbol prefixes, the checker's own test,
# and every installed public header compiling on its own.
check-layout:
	@python3 scripts/check_includes.py
	@python3 scripts/check_includes.py --symbols $(BUILD)
	@bash -o pipefail -c 'python3 scripts/check_includes.py --self-test | tail -n 1'
	@BUILD=$(BUILD) bash scripts/check_headers.sh

sanitize: deps
	@$(MAKE) --no-print-directory BUILD=build-san SAN=1 test-bins
	@BUILD=build-san ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  bash scripts/run-tests.sh $(SAN_TESTS)

# Fuzzing (docs/FUZZING.md). `make fuzz` builds; fuzz-smoke replays each target's corpus and regression
# inputs and fuzzes FUZZ_SECONDS more, so a parser change that crashes fails `make test`.
FUZZ_SECONDS ?= 8
fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build-fuzz FUZZ=1 fuzz-bins

fuzz-bins: $(addprefix $(BUILD)/fuzz/,$(FUZZERS) $(FUZZ_HELPERS))

fuzz-smoke: fuzz
	@bash scripts/fuzz-run.sh build-fuzz $(FUZZ_SECONDS) $(foreach f,$(FUZZERS),$(f):$($(f)_MAX_LEN))

bench: $(addprefix $(BUILD)/bench/,$(BENCHES)) $(BUILD)/bin/rlhf

run: deps
	@$(MAKE) --no-print-directory $(BUILD)/bin/rlhf $(addprefix $(BUILD)/bin/,$(PROGRAMS))
	@BUILD=$(BUILD) bash scripts/run-default.sh

install: $(LIB) $(BUILD)/bin/rlhf
	install -d $(PREFIX)/bin $(PREFIX)/lib $(PREFIX)/include/rlhf $(PREFIX)/lib/pkgconfig
	install -m 755 $(BUILD)/bin/rlhf $(PREFIX)/bin/
	for a in $(CLI_ALIASES); do ln -sf rlhf $(PREFIX)/bin/$$a; done
	install -m 644 $(LIB) $(PREFIX)/lib/
	for h in $(HEADERS); do install -D -m 644 $$h $(PREFIX)/include/rlhf/$$h; done
	sed 's|@PREFIX@|$(PREFIX)|' scripts/rlhf.pc.in > $(PREFIX)/lib/pkgconfig/rlhf.pc
	sed 's|@PREFIX@|$(PREFIX)|' scripts/rlhf-plugin.pc.in > $(PREFIX)/lib/pkgconfig/rlhf-plugin.pc
	@# the dashboard's charting library (dashboard/module.mk), where the installed binary looks for it
	if [ -d $(BUILD)/share/rlhf/dashboard ]; then install -d $(PREFIX)/share/rlhf/dashboard && \
	  install -m 644 $(BUILD)/share/rlhf/dashboard/* $(PREFIX)/share/rlhf/dashboard/; fi

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
