#!/usr/bin/python3
"""bench/peer_weights.py — turns a llama2.c checkpoint (as bench_model_sample --llama2c-out writes it) into
the files the generation peers read, for bench/bench_generate_peers.sh:

    LLAMA_CPP_DIR=/path/to/llama.cpp /usr/bin/python3 bench/peer_weights.py CKPT.bin OUTDIR [--tokenizer-bin]

writes OUTDIR/model-f32.gguf and OUTDIR/model-bf16.gguf (llama.cpp, architecture "llama"; norm weights stay
F32 in the BF16 file) and, when the vocabulary is not llama2.c's own 32000 tokens (or with --tokenizer-bin),
OUTDIR/tokenizer.bin in run.c's format. Needs numpy and llama.cpp's own gguf-py ($LLAMA_CPP_DIR/gguf-py);
the tokenizer metadata is copied from a vocab-only GGUF in $LLAMA_CPP_DIR/models with the same number of
tokens (ggml-vocab-llama-spm.gguf for 32000, ggml-vocab-starcoder.gguf for 49152, else the first that fits).

Layout: every matrix is (out, in) row-major in the checkpoint; GGUF lists dimensions innermost first, so a
numpy (out, in) array becomes ggml {in, out}, which is what llama.cpp's llama loader expects. The checkpoint's
wq/wk already use llama2.c's interleaved RoPE pairs, which is llama.cpp's "llama" RoPE too (its HF converter
permutes Q/K into that order), so the tensors are copied as they are. The tied head is not written
(no output.weight): llama.cpp then reuses token_embd.weight, as for tied models.
"""
import importlib.util
import os
import sys
import types

import numpy as np


def die(msg):
    print(f"peer_weights.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def import_gguf():
    root = os.environ.get("LLAMA_CPP_DIR")
    if not root or not os.path.isdir(os.path.join(root, "gguf-py", "gguf")):
        die(f"LLAMA_CPP_DIR must point at a llama.cpp source tree with gguf-py/ (got {root!r})")
    sys.path.insert(0, os.path.join(root, "gguf-py"))
    if importlib.util.find_spec("sentencepiece") is None:  # gguf-py's vocab module imports it; unused here
        stub = types.ModuleType("sentencepiece")
        stub.SentencePieceProcessor = None
        sys.modules["sentencepiece"] = stub
    import gguf
    return root, gguf


def read_checkpoint(path):
    """Returns (config dict, {name: array}) from a llama2.c version-0 checkpoint (run.c's reader)."""
    try:
        hdr = np.fromfile(path, dtype=np.int32, count=7)
    except OSError as e:
        die(f"{path}: {e.strerror}")
    if hdr.size != 7:
        die(f"{path}: too short for a llama2.c header")
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = (int(x) for x in hdr)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len) <= 0 or dim % n_heads:
        die(f"{path}: not a llama2.c checkpoint (header {hdr.tolist()})")
    D = dim // n_heads
    C, F, L, V = dim, hidden, n_layers, vocab
    shapes = [("token_embd", (V, C)), ("attn_norm", (L, C)), ("wq", (L, n_heads * D, C)),
              ("wk", (L, n_kv_heads * D, C)), ("wv", (L, n_kv_heads * D, C)), ("wo", (L, C, n_heads * D)),
              ("ffn_norm", (L, C)), ("w1", (L, F, C)), ("w2", (L, C, F)), ("w3", (L, F, C)),
              ("output_norm", (C,)), ("freq_cos", (seq_len, D // 2)), ("freq_sin", (seq_len, D // 2))]
    if not shared:
        shapes.append(("output", (V, C)))
    n = sum(int(np.prod(s)) for _, s in shapes)
    size = os.path.getsize(path)
    if size != 28 + 4 * n:
        die(f"{path}: {size} bytes, expected {28 + 4 * n} for header {hdr.tolist()}")
    data = np.memmap(path, dtype=np.float32, mode="r", offset=28, shape=(n,))
    out, off = {}, 0
    for name, s in shapes:
        k = int(np.prod(s))
        out[name] = data[off:off + k].reshape(s)
        off += k
    cfg = dict(dim=C, ffn=F, layers=L, heads=n_heads, kv_heads=n_kv_heads, vocab=V, seq_len=seq_len,
               head_dim=D, tied=shared)
    return cfg, out


def field_value(gguf, field):
    """Decodes a GGUFReader field into what GGUFWriter.add_key_value takes (strings as bytes in arrays)."""
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        vals = [v for i in field.data for v in field.parts[i].tolist()]
        want = {gguf.GGUFValueType.INT32: int, gguf.GGUFValueType.FLOAT32: float, gguf.GGUFValueType.BOOL: bool}
        if sub not in want:
            die(f"cannot copy array {field.name} of {sub.name} (gguf-py writes only int32/float32/bool/string arrays)")
        return [want[sub](v) for v in vals]
    if t == gguf.GGUFValueType.STRING:
        return str(bytes(field.parts[-1]), encoding="utf-8")
    return field.parts[-1].tolist()[0]


def find_vocab(gguf, root, n_vocab):
    models = os.path.join(root, "models")
    preferred = {32000: "ggml-vocab-llama-spm.gguf", 49152: "ggml-vocab-starcoder.gguf"}.get(n_vocab)
    names = sorted(f for f in os.listdir(models) if f.startswith("ggml-vocab-") and f.endswith(".gguf"))
    if preferred in names:
        names.remove(preferred)
        names.insert(0, preferred)
    for name in names:
        path = os.path.join(models, name)
        try:
            r = gguf.GGUFReader(path)
        except Exception:  # absent (e.g. a Git LFS pointer) or unreadable: try the next
            continue
        f = r.fields.get("tokenizer.ggml.tokens")
        if f is not None and len(f.data) == n_vocab:
            return path, r
    die(f"no vocab GGUF with {n_vocab} tokens in {models}")


def write_gguf(gguf, path, cfg, w, reader, bf16):
    tmp = path + ".tmp"
    ftype = gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32
    g = gguf.GGUFWriter(tmp, "llama")
    g.add_name(f"random-d{cfg['dim']}-l{cfg['layers']}-v{cfg['vocab']}")
    g.add_file_type(ftype)
    g.add_context_length(cfg["seq_len"])
    g.add_embedding_length(cfg["dim"])
    g.add_block_count(cfg["layers"])
    g.add_feed_forward_length(cfg["ffn"])
    g.add_head_count(cfg["heads"])
    g.add_head_count_kv(cfg["kv_heads"])
    g.add_rope_dimension_count(cfg["head_dim"])
    g.add_layer_norm_rms_eps(1e-5)   # run.c's and the project's RMSNorm epsilon
    g.add_rope_freq_base(10000.0)    # run.c's and the project's RoPE base
    g.add_vocab_size(cfg["vocab"])
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            g.add_key_value(key, field_value(gguf, field), field.types[0])

    def put(name, a, matrix):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if bf16 and matrix:
            g.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.BF16),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            g.add_tensor(name, a)

    put("token_embd.weight", w["token_embd"], True)
    for l in range(cfg["layers"]):
        b = f"blk.{l}."
        put(b + "attn_norm.weight", w["attn_norm"][l], False)
        put(b + "attn_q.weight", w["wq"][l], True)
        put(b + "attn_k.weight", w["wk"][l], True)
        put(b + "attn_v.weight", w["wv"][l], True)
        put(b + "attn_output.weight", w["wo"][l], True)
        put(b + "ffn_norm.weight", w["ffn_norm"][l], False)
        put(b + "ffn_gate.weight", w["w1"][l], True)
        put(b + "ffn_down.weight", w["w2"][l], True)
        put(b + "ffn_up.weight", w["w3"][l], True)
    put("output_norm.weight", w["output_norm"], False)
    if not cfg["tied"]:
        put("output.weight", w["output"], True)
    try:
        g.write_header_to_file()
        g.write_kv_data_to_file()
        g.write_tensors_to_file()
        g.close()
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        die(f"{path}: {e.strerror}")


def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode (byte-level BPE token text -> raw bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def write_tokenizer_bin(gguf, path, reader):
    """run.c's tokenizer: int max_token_length, then per token float score, int len, bytes (len >= 1)."""
    model = field_value(gguf, reader.fields["tokenizer.ggml.model"])
    toks = field_value(gguf, reader.fields["tokenizer.ggml.tokens"])
    scores = (field_value(gguf, reader.fields["tokenizer.ggml.scores"])
              if "tokenizer.ggml.scores" in reader.fields else [-float(i) for i in range(len(toks))])
    dec = byte_decoder()
    pieces = []
    for t in toks:
        if model == "llama":   # SentencePiece: U+2581 is the space; <0xNN> byte tokens are kept (run.c parses them)
            p = t.replace("\u2581".encode(), b" ")
        else:                  # byte-level BPE (gpt2 family)
            s = t.decode("utf-8", errors="replace")
            p = bytes(dec[ch] for ch in s) if all(ch in dec for ch in s) else t
        pieces.append(p if p else b"?")  # run.c's fread of a zero-length piece fails
    if b" " not in pieces:
        die(f"{path}: the vocabulary has no ' ' token (run.c's encoder needs one for its dummy prefix)")
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(np.int32(max(len(p) for p in pieces)).tobytes())
            for p, s in zip(pieces, scores):
                f.write(np.float32(s).tobytes())
                f.write(np.int32(len(p)).tobytes())
                f.write(p)
        os.replace(tmp, path)
    except OSError as e:
        die(f"{path}: {e.strerror}")


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = [a for a in argv[1:] if a.startswith("--")]
    if len(args) != 2 or any(f not in ("--tokenizer-bin",) for f in flags):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ckpt, outdir = args
    root, gguf = import_gguf()
    cfg, w = read_checkpoint(ckpt)
    os.makedirs(outdir, exist_ok=True)
    vocab_path, reader = find_vocab(gguf, root, cfg["vocab"])
    for bf16 in (False, True):
        out = os.path.join(outdir, "model-bf16.gguf" if bf16 else "model-f32.gguf")
        write_gguf(gguf, out, cfg, w, reader, bf16)
        print(f"peer_weights.py: wrote {out}")
    if cfg["vocab"] != 32000 or "--tokenizer-bin" in flags:
        out = os.path.join(outdir, "tokenizer.bin")
        write_tokenizer_bin(gguf, out, reader)
        print(f"peer_weights.py: wrote {out}")
    print(f"peer_weights.py: vocabulary from {os.path.basename(vocab_path)} ({cfg['vocab']} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
