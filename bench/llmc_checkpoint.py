#!/usr/bin/python3
"""bench/llmc_checkpoint.py — writes the inputs llm.c's CPU trainer (train_gpt2.c) expects, with random
contents, so bench/bench_train_vs_llmc.sh can time llm.c on a model shaped like the project's "ref" one
without any download:

  OUTDIR/gpt2_124M.bin          GPT-2 checkpoint, random weights (llm.c format: 256 int32 header, magic
                                20240326, version 3, max_seq_len, vocab_size, num_layers, num_heads,
                                channels, padded_vocab_size; then the fp32 tensors in llm.c's order)
  OUTDIR/gpt2_tokenizer.bin     tokenizer (magic 20240328, version 2, eot id) with one-byte-plus-digits
                                token strings: llm.c samples text at steps 20 and 40 starting from the
                                eot id, which would be left uninitialised if the file were missing
  OUTDIR/dev/data/tinyshakespeare/tiny_shakespeare_{train,val}.bin
                                token files (magic 20240520, version 1, count; then uint16 tokens < vocab)

usage: llmc_checkpoint.py OUTDIR [--channels 256] [--layers 4] [--heads 4] [--vocab 512]
                                 [--max-seq 64] [--batch 4] [--seq 64] [--seed 1]
The file names are the ones train_gpt2.c's main() opens relative to its working directory; its batch 4
and sequence 64 are fixed in main(), so --batch/--seq only size the token files.
"""
import argparse
import os
import sys

import numpy as np


def header(magic, version, *fields):
    h = np.zeros(256, dtype=np.int32)
    h[0], h[1] = magic, version
    for i, f in enumerate(fields):
        h[2 + i] = f
    return h


def write_checkpoint(path, C, L, H, V, maxT, rng):
    Vp = (V + 127) // 128 * 128  # llm.c pads the vocab to a multiple of 128
    std, proj_std = 0.02, 0.02 / np.sqrt(2 * L)

    def normal(shape, s):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(s)

    wte = normal((Vp, C), std)
    wte[V:] = 0.0  # padded rows are never a target
    tensors = [
        wte,                                   # wte (Vp, C), also the lm_head
        normal((maxT, C), 0.01),               # wpe
        np.ones((L, C), np.float32),           # ln1w
        np.zeros((L, C), np.float32),          # ln1b
        normal((L, 3 * C, C), std),            # qkvw
        np.zeros((L, 3 * C), np.float32),      # qkvb
        normal((L, C, C), proj_std),           # attprojw
        np.zeros((L, C), np.float32),          # attprojb
        np.ones((L, C), np.float32),           # ln2w
        np.zeros((L, C), np.float32),          # ln2b
        normal((L, 4 * C, C), std),            # fcw
        np.zeros((L, 4 * C), np.float32),      # fcb
        normal((L, C, 4 * C), proj_std),       # fcprojw
        np.zeros((L, C), np.float32),          # fcprojb
        np.ones(C, np.float32),                # lnfw
        np.zeros(C, np.float32),               # lnfb
    ]
    with open(path, "wb") as f:
        header(20240326, 3, maxT, V, L, H, C, Vp).tofile(f)
        for t in tensors:
            np.ascontiguousarray(t, dtype=np.float32).tofile(f)
    return sum(t.size for t in tensors)


def write_tokenizer(path, V):
    with open(path, "wb") as f:
        header(20240328, 2, V, V - 1).view(np.uint32).tofile(f)  # vocab_size, eot id
        for i in range(V):
            s = ("t%d " % i).encode()
            f.write(bytes([len(s)]) + s)


def write_tokens(path, n, V, rng):
    with open(path, "wb") as f:
        header(20240520, 1, n).tofile(f)
        rng.integers(0, V, size=n, dtype=np.uint16).tofile(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--max-seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.channels % a.heads or not (0 < a.vocab <= 65536) or a.seq > a.max_seq:
        sys.exit("llmc_checkpoint.py: error: need channels %% heads == 0, 0 < vocab <= 65536, seq <= max-seq")
    rng = np.random.default_rng(a.seed)
    data = os.path.join(a.outdir, "dev", "data", "tinyshakespeare")
    os.makedirs(data, exist_ok=True)
    n = write_checkpoint(os.path.join(a.outdir, "gpt2_124M.bin"), a.channels, a.layers, a.heads, a.vocab,
                         a.max_seq, rng)
    write_tokenizer(os.path.join(a.outdir, "gpt2_tokenizer.bin"), a.vocab)
    bt = a.batch * a.seq
    # train: more batches than train_gpt2.c's 41 steps; val: its 5 validation batches and a spare
    write_tokens(os.path.join(data, "tiny_shakespeare_train.bin"), 64 * bt + 1, a.vocab, rng)
    write_tokens(os.path.join(data, "tiny_shakespeare_val.bin"), 8 * bt + 1, a.vocab, rng)
    print("llmc_checkpoint.py: %d parameters (C %d, L %d, H %d, V %d, maxT %d) in %s" % (
        n, a.channels, a.layers, a.heads, a.vocab, a.max_seq, a.outdir))


if __name__ == "__main__":
    main()
