#!/usr/bin/env python3
"""tests/fuzz/make_dicts.py — writes tests/fuzz/<target>.dict, libFuzzer dictionaries of the JSON keys and
literals the target's parser looks for (the string literals of its sources) plus JSON's own tokens.
Byte mutations almost never spell a key such as "n_tokens"; with the dictionary the fuzzer inserts it.

    python3 tests/fuzz/make_dicts.py
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = {
    "fuzz_wire": ["broker/wire.c"],
    "fuzz_safetensors": ["model/safetensors.c"],
    "fuzz_hf": ["model/hf.c", "model/model.c"],
    "fuzz_tokenizer": ["model/tokenizer_bpe.c", "model/tokenizer_bpe_encode.c"],
    "fuzz_run_config": ["run/config.c", "broker/config.c", "rewards/registry.c", "rewards/builtin.c",
                        "prompts/selector.c", "model/model.c"],
    "fuzz_prompts": ["prompts/dataset.c"],
    "fuzz_judge": ["rewards/judge/judge_parse.c"],
    "fuzz_judge_http": ["rewards/judge/judge.c", "rewards/judge/judge_parse.c"],
    "fuzz_remote_rm": ["rewards/rm_source.c"],
    "fuzz_process": ["rewards/process.c"],
    "fuzz_serve": ["serve/serve.c"],
}
JSON_TOKENS = ['{', '}', '[', ']', ':', ',', '"', 'true', 'false', 'null', '-1', '0', '1e308', '4294967296',
               '18446744073709551616', '\\u0000', '\\ud800']
LITERAL = re.compile(r'"((?:[^"\\\n]|\\.){2,40})"')


def escape(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def main():
    for target, files in SOURCES.items():
        words = set()
        for f in files:
            path = os.path.join(ROOT, f)
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            for m in LITERAL.finditer(text):
                w = m.group(1)
                # keys and enum values, not messages or format strings
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", w):
                    words.add('"' + w + '"')
        lines = [f'"{escape(t)}"' for t in JSON_TOKENS] + [f'"{escape(w)}"' for w in sorted(words)]
        with open(os.path.join(ROOT, "tests/fuzz", target + ".dict"), "w") as out:
            out.write(f"# libFuzzer dictionary of {target}: written by tests/fuzz/make_dicts.py\n")
            out.write("\n".join(lines) + "\n")
        print(f"{target}.dict: {len(lines)} entries")


if __name__ == "__main__":
    main()
