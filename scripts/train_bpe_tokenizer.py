#!/usr/bin/python3
"""Trains a small byte-level BPE tokenizer on a text corpus and writes it as a Hugging Face tokenizer
directory (tokenizer.json + tokenizer_config.json), the GPT-2 kind: ByteLevel pre-tokenizer with its
built-in split regex, no normaliser, merges learned by counting adjacent pairs.

Used to give the countdown task a real multi-byte vocabulary (the test of the whole pipeline on an
HF-format model, and docs/HF_MODELS.md's demonstration run) without downloading anything.

  train_bpe_tokenizer.py CORPUS OUT_DIR [--merges 500] [--min-count 2]

CORPUS: text, one document per line; a .jsonl file is read as {"text": ...} records. Only ASCII is
accepted: the split regex of the GPT-2 byte-level pre-tokenizer uses Unicode letter/number classes
that Python's `re` lacks, and on ASCII text the classes below are exactly those.
Ids: 0..255 are the 256 byte symbols in byte order, merges follow in the order learned, then the
special tokens <|endoftext|> (BOS and EOS) and <|pad|>. Ties between equally frequent pairs are
broken by the pair's text, so the output depends on the corpus only.
"""
import argparse
import collections
import json
import os
import re
import sys
import tempfile

# GPT-2's split, with \\p{L} = [A-Za-z] and \\p{N} = [0-9] (ASCII input only)
SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def byte_symbols():
    """The ByteLevel alphabet: byte b -> the printable character standing for it."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_docs(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if path.endswith(".jsonl"):
                if not line.strip():
                    continue
                line = json.loads(line)["text"]
            if not line.isascii():
                sys.exit(f"train_bpe_tokenizer: {path}:{n}: non-ASCII text (this trainer handles ASCII only)")
            yield line


def train(words, n_merges, min_count):
    """words: Counter of symbol tuples -> count. Returns the merges learned, in order."""
    words = {w: c for w, c in words.items()}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], [-ord(ch) for ch in kv[0][0] + "\0" + kv[0][1]]))
        (a, b), count = best
        if count < min_count:
            break
        merges.append((a, b))
        merged = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def write_atomic(path, obj):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("out_dir")
    ap.add_argument("--merges", type=int, default=500)
    ap.add_argument("--min-count", type=int, default=2)
    a = ap.parse_args()
    sym = byte_symbols()
    counts = collections.Counter()
    for doc in read_docs(a.corpus):
        for piece in SPLIT.findall(doc):
            counts[tuple(sym[b] for b in piece.encode("utf-8"))] += 1
    merges = train(counts, a.merges, a.min_count)
    vocab = {sym[b]: b for b in range(256)}
    for a_, b_ in merges:
        vocab[a_ + b_] = len(vocab)
    eot, pad = len(vocab), len(vocab) + 1
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, t in ((eot, "<|endoftext|>"), (pad, "<|pad|>"))]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        # BOS before every sequence encoded with special tokens, as Llama-3's tokenizer does it
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [eot], "tokens": ["<|endoftext|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{x} {y}" for x, y in merges]},
    }
    cfg = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
           "pad_token": "<|pad|>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 1024,
           "clean_up_tokenization_spaces": False,
           "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}}
    os.makedirs(a.out_dir, exist_ok=True)
    write_atomic(os.path.join(a.out_dir, "tokenizer.json"), tok)
    write_atomic(os.path.join(a.out_dir, "tokenizer_config.json"), cfg)
    print(f"train_bpe_tokenizer: {len(merges)} merges, vocab {pad + 1} (<|endoftext|> = {eot}, <|pad|> = {pad}) "
          f"-> {a.out_dir}")


if __name__ == "__main__":
    main()
