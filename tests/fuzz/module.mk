# tests/fuzz/: libFuzzer targets, one per parser (docs/FUZZING.md). `make fuzz` builds them with clang under
# ASan + UBSan into build-fuzz/fuzz/; `make test` runs each briefly over its corpus (fuzz-smoke).
# NAME_MAX_LEN is the largest input libFuzzer makes for NAME (-max_len).
FUZZ_TARGETS := fuzz_wire fuzz_safetensors fuzz_hf fuzz_tokenizer fuzz_run_config fuzz_replay_log fuzz_judge \
                fuzz_prompts fuzz_remote_rm fuzz_process fuzz_serve fuzz_judge_http fuzz_template fuzz_guided
FUZZERS += $(FUZZ_TARGETS)
$(foreach f,$(FUZZ_TARGETS),$(eval $(f)_SRCS = tests/fuzz/$(f).c))
fuzz_wire_MAX_LEN = 65536
fuzz_safetensors_MAX_LEN = 65536
fuzz_hf_MAX_LEN = 65536
fuzz_tokenizer_MAX_LEN = 65536
fuzz_run_config_MAX_LEN = 16384
fuzz_replay_log_MAX_LEN = 65536
fuzz_judge_MAX_LEN = 8192
fuzz_prompts_MAX_LEN = 16384
fuzz_remote_rm_MAX_LEN = 8192
fuzz_process_MAX_LEN = 8192
fuzz_serve_MAX_LEN = 8192
fuzz_judge_http_MAX_LEN = 8192
fuzz_template_MAX_LEN = 16384
fuzz_guided_MAX_LEN = 4096
# The program that writes the binary seeds from real encodings (tests/fuzz/make_corpus.py runs it).
PROGRAMS += fuzz_seeds
fuzz_seeds_SRCS = tests/fuzz/fuzz_seeds.c
# fuzz_process's plugin: a plain program (no sanitizers, no library) beside the fuzz targets.
FUZZ_HELPERS += fuzz_plugin_echo
$(BUILD)/fuzz/fuzz_plugin_echo: tests/fuzz/fuzz_plugin_echo.c
	@mkdir -p $(@D)
	gcc -std=gnu11 -O2 -Wall -Wextra -o $@ $<
