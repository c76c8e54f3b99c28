#!/usr/bin/python3
"""tests/oracle/hf_fixture.py - random-weight Hugging Face model directories and an independent float64
PyTorch implementation of the Hugging Face modelling code they stand for (LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM), the oracle of tests/model_hf.

    hf_fixture.py make OUT        write OUT/NAME/ (config.json, model.safetensors or shards + index) for
                                  every case below, and OUT/NAME.ref.json {"tokens": [...], "logp": [...]}:
                                  logp[t] = log p(tokens[t+1] | tokens[0..t]) computed by reading NAME/ back
    hf_fixture.py logp DIR IN OUT read the model directory DIR with this file's own reader, the tokens of
                                  IN (a .ref.json), and write {"logp": [...]} to OUT

No safetensors or transformers package is used: files are written and read by hand (u64 LE header
length, JSON header padded with spaces, raw little-endian data). The semantics implemented here are
those of transformers' modelling files, written from their documented behaviour:
  x = embed[tokens]; per layer: h = rmsnorm(x) * w (variance over the last axis, + eps, rsqrt);
  q, k, v = h W^T (+ bias for Qwen2); Qwen3: rmsnorm over each head of q and k with q_norm / k_norm;
  rotate_half RoPE with inv_freq = theta^(-2i/D), scaled by rope_scaling (linear: / factor; llama3:
  long wavelengths / factor, short kept, smooth blend between); causal softmax(q k^T / sqrt(D)) v with
  key/value head h // (H / KVH); o_proj; residual; rmsnorm; down(silu(gate(h)) * up(h)); residual;
  final rmsnorm; lm_head (embed_tokens when tie_word_embeddings).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

F64 = torch.float64

# name: (architecture, dtype, shards, config overrides, extras)
CASES = {
    # GQA, untied, a derived rotary buffer stored beside the weights (transformers < 4.40 wrote it)
    "llama_f32": ("LlamaForCausalLM", "F32", 1, {"num_key_value_heads": 2}, {"inv_freq": True}),
    # tied (and lm_head.weight stored anyway, as an exact copy), llama3 rope scaling, sharded
    "llama3_bf16_sharded_tied": ("LlamaForCausalLM", "BF16", 3,
                                 {"tie_word_embeddings": True, "head_dim": 16, "num_attention_heads": 2,
                                  "num_key_value_heads": 1,
                                  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
                                 {"tied_copy": True}),
    # F16 weights; a sliding window no sequence can reach (inactive); GQA 4:1
    "mistral_f16_sharded": ("MistralForCausalLM", "F16", 2, {"num_key_value_heads": 1, "sliding_window": 64}, {}),
    "mistral_f32": ("MistralForCausalLM", "F32", 1, {"sliding_window": None, "rope_theta": 500.0}, {}),
    # q/k/v biases, tied, linear rope scaling, a (disabled) sliding window
    "qwen2_f32_tied": ("Qwen2ForCausalLM", "F32", 1,
                       {"num_key_value_heads": 2, "tie_word_embeddings": True, "use_sliding_window": False,
                        "sliding_window": 4, "rope_scaling": {"type": "linear", "factor": 2.0}}, {}),
    "qwen2_bf16_sharded": ("Qwen2ForCausalLM", "BF16", 2, {"use_sliding_window": False, "sliding_window": 32768}, {}),
    # q/k norms, head_dim 16 != hidden 32 / 4 heads
    "qwen3_bf16_sharded": ("Qwen3ForCausalLM", "BF16", 2,
                           {"head_dim": 16, "num_key_value_heads": 2, "attention_bias": False,
                            "use_sliding_window": False, "sliding_window": None}, {}),
    "qwen3_f32_tied": ("Qwen3ForCausalLM", "F32", 1, {"head_dim": 12, "tie_word_embeddings": True}, {}),
}

MODEL_TYPE = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
              "Qwen3ForCausalLM": "qwen3"}


def base_config(arch):
    return {"architectures": [arch], "model_type": MODEL_TYPE[arch], "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 67,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
            "transformers_version": "4.46.0"}


def dims(cfg):
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KVH = cfg.get("num_key_value_heads") or H
    D = cfg.get("head_dim") or C // H
    return C, H, KVH, D, cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]


def make_weights(cfg, gen):
    arch = cfg["architectures"][0]
    C, H, KVH, D, F, V, L = dims(cfg)

    def mat(o, i, gain=1.0):
        return torch.randn(o, i, generator=gen) * (gain / math.sqrt(i))

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=gen)

    w = {"model.embed_tokens.weight": torch.randn(V, C, generator=gen)}
    for l in range(L):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(C)
        w[p + "self_attn.q_proj.weight"] = mat(H * D, C, 2.0)
        w[p + "self_attn.k_proj.weight"] = mat(KVH * D, C, 2.0)
        w[p + "self_attn.v_proj.weight"] = mat(KVH * D, C)
        if arch == "Qwen2ForCausalLM":
            w[p + "self_attn.q_proj.bias"] = 0.5 * torch.randn(H * D, generator=gen)
            w[p + "self_attn.k_proj.bias"] = 0.5 * torch.randn(KVH * D, generator=gen)
            w[p + "self_attn.v_proj.bias"] = 0.5 * torch.randn(KVH * D, generator=gen)
        if arch == "Qwen3ForCausalLM":
            w[p + "self_attn.q_norm.weight"] = norm(D)
            w[p + "self_attn.k_norm.weight"] = norm(D)
        w[p + "self_attn.o_proj.weight"] = mat(C, H * D)
        w[p + "post_attention_layernorm.weight"] = norm(C)
        w[p + "mlp.gate_proj.weight"] = mat(F, C)
        w[p + "mlp.up_proj.weight"] = mat(F, C)
        w[p + "mlp.down_proj.weight"] = mat(C, F)
    w["model.norm.weight"] = norm(C)
    if not cfg.get("tie_word_embeddings", False):
        w["lm_head.weight"] = mat(V, C, 3.0)
    return w


# ---------------------------------------------------------------- safetensors by hand

def tensor_bytes(t, dtype):
    t = t.detach().contiguous()
    if dtype == "F32":
        return t.to(torch.float32).numpy().astype("<f4").tobytes()
    if dtype == "F16":
        return t.to(torch.float16).numpy().astype("<f2").tobytes()
    if dtype == "BF16":  # torch rounds to nearest even; the int16 view is the stored bit pattern
        return t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        dt = "F32" if name.endswith("inv_freq") else dtype
        b = tensor_bytes(t, dt)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = data[b:end]
        if e["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif e["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif e["dtype"] == "BF16":  # the top half of an fp32
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise ValueError(f"{path}: {name}: dtype {e['dtype']}")
        out[name] = torch.from_numpy(a.copy()).reshape(e["shape"])
    return out


def write_dir(d, cfg, weights, dtype, shards, extras):
    os.makedirs(d, exist_ok=True)
    tensors = dict(weights)
    C, H, KVH, D, F, V, L = dims(cfg)
    if extras.get("inv_freq"):
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(D // 2)
    if extras.get("tied_copy"):
        tensors["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    names = list(tensors)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors, dtype)
        return
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        write_safetensors(os.path.join(d, fn), part, dtype)
        weight_map.update({n: fn for n in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)


def read_dir(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    single = os.path.join(d, "model.safetensors")
    if os.path.exists(single):
        return cfg, read_safetensors(single)
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    w = {}
    for fn in sorted(set(idx["weight_map"].values())):
        w.update(read_safetensors(os.path.join(d, fn)))
    return cfg, w


# ---------------------------------------------------------------- the model, float64

def inv_freq(cfg, D):
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=F64) / D))
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        lo_wl, hi_wl = old / lo, old / hi
        scaled = torch.where(wavelen > lo_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= hi_wl) & (wavelen <= lo_wl)
        return torch.where(medium, blended, scaled)
    raise ValueError(kind)


def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def logits_of(cfg, w, tokens):
    arch = cfg["architectures"][0]
    C, H, KVH, D, F, V, L = dims(cfg)
    eps = cfg.get("rms_norm_eps", 1e-6)
    T = len(tokens)
    ang = torch.outer(torch.arange(T, dtype=F64), inv_freq(cfg, D))
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()  # (T, D)
    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]  # (T, C)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    for l in range(L):
        p = f"model.layers.{l}."

        def lin(name, inp):
            y = inp @ w[p + name + ".weight"].T
            b = w.get(p + name + ".bias")
            return y if b is None else y + b

        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", h).view(T, H, D)
        k = lin("self_attn.k_proj", h).view(T, KVH, D)
        v = lin("self_attn.v_proj", h).view(T, KVH, D)
        if arch == "Qwen3ForCausalLM":
            q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps)
        q = q * cos[:, None] + rotate_half(q) * sin[:, None]
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        out = torch.empty(T, H, D, dtype=F64)
        for hh in range(H):
            kv = hh // (H // KVH)
            s = (q[:, hh] @ k[:, kv].T) / math.sqrt(D)  # (T, T)
            s = s.masked_fill(mask, float("-inf"))
            out[:, hh] = torch.softmax(s, -1) @ v[:, kv]
        x = x + lin("self_attn.o_proj", out.reshape(T, H * D))
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin("mlp.gate_proj", h)
        x = x + lin("mlp.down_proj", g * torch.sigmoid(g) * lin("mlp.up_proj", h))
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return x @ head.T  # (T, V)


def token_logp(d, tokens):
    cfg, w = read_dir(d)
    lp = torch.log_softmax(logits_of(cfg, w, tokens), -1)
    return [lp[t, tokens[t + 1]].item() for t in range(len(tokens) - 1)]


def make(out):
    os.makedirs(out, exist_ok=True)
    for i, (name, (arch, dtype, shards, over, extras)) in enumerate(CASES.items()):
        gen = torch.Generator().manual_seed(1000 + i)
        cfg = base_config(arch)
        cfg.update(over)
        cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
        d = os.path.join(out, name)
        write_dir(d, cfg, make_weights(cfg, gen), dtype, shards, extras)
        tokens = torch.randint(0, cfg["vocab_size"], (14,), generator=gen).tolist()
        with open(os.path.join(out, name + ".ref.json"), "w") as f:
            json.dump({"tokens": tokens, "logp": token_logp(d, tokens)}, f)


def main():
    torch.set_num_threads(1)
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "logp":
        tokens = json.load(open(sys.argv[3]))["tokens"]
        with open(sys.argv[4], "w") as f:
            json.dump({"logp": token_logp(sys.argv[2], tokens)}, f)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
