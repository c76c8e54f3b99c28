#!/usr/bin/python3
"""tests/oracle/llama_ref.py - an independent PyTorch implementation of the project's Llama-style model,
used as the oracle of test_model_train and as the PyTorch peer of bench/bench_model_train.sh.
Written from the Hugging Face model definitions: Llama, Qwen2 (q/k/v Linear layers with bias=True) and
Qwen3 (q_norm/k_norm: RMSNorm(head_dim) over each head of q and k, before the rotary embedding); any
head_dim (not necessarily dim / n_heads); rope_scaling "linear" and "llama3"; and the project's own
per-layer options, written from docs/MODEL.md: kv_share (a layer without k/v projections attends with an
earlier layer's keys after RoPE and its values) and attention_pattern (global with RoPE, global_nope
without position encoding, local: RoPE and only the last attention_window positions).

    llama_ref.py oracle DIR   read DIR/case.json, params.bin, tokens.bin, targets.bin; compute in float64
                              the logits, log-probs, entropies, mean masked cross-entropy, every parameter
                              gradient, then run the case's AdamW steps; write *.f64 files back to DIR.
                              With "lora" in case.json ({"rank", "alpha", "targets": PEFT module names}) and
                              DIR/lora.bin, the base is frozen and the adapters train: grads.f64 and
                              params_after.f64 then hold the adapters' gradients and values.
    llama_ref.py bench ARCH_JSON B T STEPS THREADS
                              time float32 training steps (forward + backward + AdamW), print JSON.

Parameter file layout (float32, one flat buffer, the order of model/model.h): embed (V,C), then per layer
stacked: attn_norm (L,C), wq (L,H*D,C), wk (L,KVH*D,C), wv (L,KVH*D,C), [bq (L,H*D), bk (L,KVH*D),
bv (L,KVH*D) with attn_bias], [q_norm (L,D), k_norm (L,D) with qk_norm], wo (L,C,H*D), ffn_norm (L,C),
w_gate (L,F,C), w_up (L,F,C), w_down (L,C,F), then final_norm (C), lm_head (V,C) unless tied. With
kv_share, wk, wv, bk, bv and k_norm stack only the LK layers that have their own K/V (in layer order).
LoRA file layout (written from docs/MODEL.md "LoRA"): for each targeted module in the order q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj: A (S, R, IC) then B (S, OC, R), S the layers of the base
tensor's stack; the branch adds (alpha / R) * (x A^T) B^T to the module's output.
"""
import array
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as Fn


def head_dim(cfg):
    return cfg.get("head_dim") or cfg["dim"] // cfg["n_heads"]


def kv_sources(cfg):
    """Per layer: the layer whose K/V it attends with (itself unless kv_share names another)."""
    share = cfg.get("kv_share") or [-1] * cfg["n_layers"]
    return [l if s < 0 else s for l, s in enumerate(share)]


def layout(cfg):
    C, L, H = cfg["dim"], cfg["n_layers"], cfg["n_heads"]
    KVH = cfg.get("n_kv_heads", H)
    D, F, V = head_dim(cfg), cfg["ffn_dim"], cfg["vocab_size"]
    LK = sum(1 for l, s in enumerate(kv_sources(cfg)) if s == l)
    spec = [("embed", (V, C)), ("attn_norm", (L, C)), ("wq", (L, H * D, C)), ("wk", (LK, KVH * D, C)),
            ("wv", (LK, KVH * D, C))]
    if cfg.get("attn_bias", False):
        spec += [("bq", (L, H * D)), ("bk", (LK, KVH * D)), ("bv", (LK, KVH * D))]
    if cfg.get("qk_norm", False):
        spec += [("q_norm", (L, D)), ("k_norm", (LK, D))]
    spec += [("wo", (L, C, H * D)), ("ffn_norm", (L, C)), ("w_gate", (L, F, C)), ("w_up", (L, F, C)),
             ("w_down", (L, C, F)), ("final_norm", (C,))]
    if not cfg.get("tie_embeddings", False):
        spec.append(("lm_head", (V, C)))
    return spec


class Llama(torch.nn.Module):
    def __init__(self, cfg, flat, dtype, split_layers=False):
        """split_layers: one Parameter per layer (a ParameterList) instead of one stacked (L, ...) tensor;
        the same numbers, but indexing a stacked Parameter makes autograd build a full-size gradient per
        layer, which the benchmark peer should not pay for."""
        super().__init__()
        self.cfg = cfg
        self.names = []
        off = 0
        stacked = ("attn_norm", "wq", "wk", "wv", "bq", "bk", "bv", "q_norm", "k_norm", "wo", "ffn_norm", "w_gate",
                   "w_up", "w_down")
        for name, shape in layout(cfg):
            n = math.prod(shape)
            t = torch.tensor(flat[off:off + n], dtype=dtype).reshape(shape)
            if split_layers and name in stacked:
                setattr(self, name, torch.nn.ParameterList([torch.nn.Parameter(t[l].clone()) for l in range(shape[0])]))
            else:
                setattr(self, name, torch.nn.Parameter(t))
            self.names.append(name)
            off += n
        assert off == len(flat), f"parameter file has {len(flat)} floats, layout wants {off}"

    def linear(self, h, name, i):
        return h @ getattr(self, name)[i].T

    def head(self):
        return self.embed if self.cfg.get("tie_embeddings", False) else self.lm_head

    @staticmethod
    def rmsnorm(x, w, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    @staticmethod
    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

    @staticmethod
    def inv_freq(cfg):
        """RoPE inverse frequencies, with Hugging Face's rope_scaling rules ("linear": positions divided by
        factor, i.e. every frequency; "llama3": per band of wavelength)."""
        D = head_dim(cfg)
        theta = cfg.get("rope_theta", 10000.0)
        f = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        rs = cfg.get("rope_scaling")
        if not rs:
            return f
        factor = rs["factor"]
        if rs["type"] == "linear":
            return f / factor
        assert rs["type"] == "llama3", rs
        orig, lo, hi = rs["original_max_position_embeddings"], rs["low_freq_factor"], rs["high_freq_factor"]
        wavelen = 2 * math.pi / f
        scaled = torch.where(wavelen > orig / lo, f / factor, f)  # long wavelengths: slowed down
        smooth = (orig / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= orig / hi) & (wavelen <= orig / lo)
        return torch.where(medium, blended, scaled)

    def forward(self, tokens):
        cfg = self.cfg
        B, T = tokens.shape
        H = cfg["n_heads"]
        KVH = cfg.get("n_kv_heads", H)
        D = head_dim(cfg)
        eps = cfg.get("norm_eps", 1e-5)
        dt = self.embed.dtype
        inv_freq = self.inv_freq(cfg)
        ang = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
        emb = torch.cat((ang, ang), dim=-1)
        cos, sin = emb.cos().to(dt)[None, None], emb.sin().to(dt)[None, None]  # (1, 1, T, D)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        pattern = cfg.get("attention_pattern") or ["global"] * cfg["n_layers"]
        W = cfg.get("attention_window", 0)
        # local layers: position t sees t-W+1..t, so also mask everything W or more below the diagonal
        local_mask = mask | torch.ones(T, T, dtype=torch.bool).tril(-W) if W else mask
        srcs = kv_sources(cfg)
        kv_of = {}  # producing layer -> its (k after RoPE, v), (B, KVH, T, D)
        x = self.embed[tokens]  # (B, T, C)
        for l in range(cfg["n_layers"]):
            own, slot = srcs[l] == l, sum(1 for i in range(l) if srcs[i] == i)
            rope = pattern[l] != "global_nope"
            h = self.rmsnorm(x, self.attn_norm[l], eps)
            q = self.linear(h, "wq", l)
            if cfg.get("attn_bias", False):  # Qwen2
                q = q + self.bq[l]
            q = q.view(B, T, H, D)
            if cfg.get("qk_norm", False):  # Qwen3: each head of q and k, before the rotary embedding
                q = self.rmsnorm(q, self.q_norm[l], eps)
            q = q.transpose(1, 2)
            if rope:
                q = q * cos + self.rotate_half(q) * sin
            if own:
                k, v = self.linear(h, "wk", slot), self.linear(h, "wv", slot)
                if cfg.get("attn_bias", False):
                    k, v = k + self.bk[slot], v + self.bv[slot]
                k, v = k.view(B, T, KVH, D), v.view(B, T, KVH, D)
                if cfg.get("qk_norm", False):
                    k = self.rmsnorm(k, self.k_norm[slot], eps)
                k, v = k.transpose(1, 2), v.transpose(1, 2)
                if rope:
                    k = k * cos + self.rotate_half(k) * sin
                kv_of[l] = (k, v)
            k, v = kv_of[srcs[l]]
            k = k.repeat_interleave(H // KVH, dim=1)
            v = v.repeat_interleave(H // KVH, dim=1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            s = s.masked_fill(local_mask if pattern[l] == "local" else mask, float("-inf"))
            y = torch.softmax(s, dim=-1) @ v  # (B, H, T, D)
            y = y.transpose(1, 2).reshape(B, T, H * D)
            x = x + self.linear(y, "wo", l)
            h = self.rmsnorm(x, self.ffn_norm[l], eps)
            x = x + self.linear(Fn.silu(self.linear(h, "w_gate", l)) * self.linear(h, "w_up", l), "w_down", l)
        hidden = self.rmsnorm(x, self.final_norm, eps)
        return hidden @ self.head().T  # (B, T, V)


LORA_MODULES = [("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo"), ("gate_proj", "w_gate"),
                ("up_proj", "w_up"), ("down_proj", "w_down")]


class LoraLlama(Llama):
    """The Llama above with frozen base weights and LoRA adapters on the case's target modules."""

    def __init__(self, cfg, flat, lora_cfg, lora_flat, dtype):
        super().__init__(cfg, flat, dtype)
        for n in self.names:
            getattr(self, n).requires_grad_(False)
        self.scale = lora_cfg["alpha"] / lora_cfg["rank"]
        R = lora_cfg["rank"]
        shapes = dict(layout(cfg))
        self.lora_names, off = [], 0
        for module, base in LORA_MODULES:
            if module not in lora_cfg["targets"]:
                continue
            S, OC, IC = shapes[base]
            for part, shape in (("A", (S, R, IC)), ("B", (S, OC, R))):
                n = math.prod(shape)
                name = f"lora_{part}_{base}"
                setattr(self, name, torch.nn.Parameter(torch.tensor(lora_flat[off:off + n], dtype=dtype).reshape(shape)))
                self.lora_names.append(name)
                off += n
        assert off == len(lora_flat), f"lora file has {len(lora_flat)} floats, layout wants {off}"

    def linear(self, h, base, i):
        y = h @ getattr(self, base)[i].T
        if hasattr(self, f"lora_A_{base}"):
            a, b = getattr(self, f"lora_A_{base}")[i], getattr(self, f"lora_B_{base}")[i]
            y = y + self.scale * ((h @ a.T) @ b.T)
        return y


def masked_ce(logits, targets):
    V = logits.shape[-1]
    return Fn.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1, reduction="mean")


def make_optimizer(model, oc):
    # norm weights and biases are not decayed (the project decays matrices only; they are 2-D here only
    # because layers are stacked)
    norms = ("attn_norm", "ffn_norm", "final_norm", "q_norm", "k_norm", "bq", "bk", "bv")
    decay = [p for n, p in model.named_parameters() if n.split(".")[0] not in norms]
    no_decay = [p for n, p in model.named_parameters() if n.split(".")[0] in norms]
    return torch.optim.AdamW([{"params": decay, "weight_decay": oc["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]), eps=oc["eps"])


def lr_at(oc, step):
    """Warmup then constant or cosine (written from the description in model_train.h)."""
    if step < oc["warmup_steps"]:
        return oc["lr"] * (step + 1) / oc["warmup_steps"]
    if oc["schedule"] != "cosine" or oc["total_steps"] <= oc["warmup_steps"]:
        return oc["lr"]
    prog = min(1.0, (step - oc["warmup_steps"]) / (oc["total_steps"] - oc["warmup_steps"]))
    lo = oc["lr"] * oc["min_lr_ratio"]
    return lo + 0.5 * (oc["lr"] - lo) * (1 + math.cos(math.pi * prog))


def read(path, dtype):
    return torch.frombuffer(bytearray(open(path, "rb").read()), dtype=dtype)


def write(path, t):
    # no numpy on the test machine: go through the array module
    with open(path, "wb") as f:
        f.write(array.array("d", t.detach().to(torch.float64).reshape(-1).tolist()).tobytes())


def oracle(d):
    case = json.load(open(os.path.join(d, "case.json")))
    cfg, oc, B, T = case["model"], case["adamw"], case["B"], case["T"]
    flat = read(os.path.join(d, "params.bin"), torch.float32).tolist()
    tokens = read(os.path.join(d, "tokens.bin"), torch.int32).long().view(B, T)
    targets = read(os.path.join(d, "targets.bin"), torch.int32).long().view(B, T)
    lora_cfg = case.get("lora")
    if lora_cfg:
        lora_flat = read(os.path.join(d, "lora.bin"), torch.float32).tolist()
        model = LoraLlama(cfg, flat, lora_cfg, lora_flat, torch.float64)
    else:
        model = Llama(cfg, flat, torch.float64)
    trained = model.lora_names if lora_cfg else model.names
    logits = model(tokens)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets >= 0)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss = masked_ce(logits, targets)
    loss.backward()
    write(os.path.join(d, "logits.f64"), logits)
    write(os.path.join(d, "logp.f64"), logp)
    write(os.path.join(d, "entropy.f64"), entropy)
    write(os.path.join(d, "loss.f64"), loss.reshape(1))
    write(os.path.join(d, "grads.f64"), torch.cat([getattr(model, n).grad.reshape(-1) for n in trained]))
    if lora_cfg:  # every adapter is decayed, as torch's AdamW decays what PEFT hands it
        opt = torch.optim.AdamW([getattr(model, n) for n in trained], lr=oc["lr"], betas=(oc["beta1"], oc["beta2"]),
                                eps=oc["eps"], weight_decay=oc["weight_decay"])
    else:
        opt = make_optimizer(model, oc)
    for step in range(case["steps"]):
        opt.zero_grad()
        loss = masked_ce(model(tokens), targets)
        loss.backward()
        if oc["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_([getattr(model, n) for n in trained], oc["grad_clip"])
        for g in opt.param_groups:
            g["lr"] = lr_at(oc, step)
        opt.step()
    write(os.path.join(d, "params_after.f64"), torch.cat([getattr(model, n).detach().reshape(-1) for n in trained]))


def bench(arch_path, B, T, steps, threads):
    torch.set_num_threads(threads)
    cfg = json.load(open(arch_path))
    n = sum(math.prod(s) for _, s in layout(cfg))
    g = torch.Generator().manual_seed(1)
    flat = (torch.randn(n, generator=g) * 0.02).tolist()
    model = Llama(cfg, flat, torch.float32, split_layers=True)
    with torch.no_grad():
        for p in list(model.attn_norm) + list(model.ffn_norm) + [model.final_norm]:
            p.fill_(1.0)
    oc = {"lr": 3e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
    opt = make_optimizer(model, oc)
    tokens = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    targets = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = masked_ce(model(tokens), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    med = times[len(times) // 2]
    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": n, "median_ms": med * 1e3, "tokens_per_s": B * T / med}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "oracle":
        oracle(sys.argv[2])
    elif len(sys.argv) == 7 and sys.argv[1] == "bench":
        bench(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit("usage: llama_ref.py oracle DIR | bench ARCH_JSON B T STEPS THREADS")
