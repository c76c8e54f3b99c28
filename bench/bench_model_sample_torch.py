#!/usr/bin/python3
"""PyTorch peer for the sampling benchmark: the same Llama-style model (HF conventions: rotate_half
RoPE, RMSNorm, SwiGLU, tied head), random weights, KV-cache decoding with multinomial sampling at
temperature 1, in eager PyTorch with the given thread count.

Usage: bench_model_sample_torch.py [--threads 2] [--batch 64] [--new-tokens 256] [--prompt-len 8]
       [--dim 288 --layers 6 --heads 6 --kv-heads 0 --ffn 768 --vocab 32000] [--repeats 3]
       (--kv-heads 0: as many as --heads; fewer: grouped-query attention, each K/V head serving
       heads / kv_heads query heads, as in SmolLM2 and Llama-3)
Prints per-run lines and, last, "torch single-stream: median X tokens/s" and
"torch batched xB: median Y tokens/s aggregate".
"""
import argparse
import math
import statistics
import time

import torch


def build(dim, layers, heads, kv_heads, ffn, vocab, seed=1234):
    kvd = dim // heads * kv_heads
    g = torch.Generator().manual_seed(seed)
    w = {"embed": torch.randn(vocab, dim, generator=g) * 0.02, "norm": torch.ones(dim), "layers": []}
    out_scale = 0.02 / math.sqrt(2 * layers)
    for _ in range(layers):
        w["layers"].append({
            "attn_norm": torch.ones(dim), "ffn_norm": torch.ones(dim),
            "wq": torch.randn(dim, dim, generator=g) * 0.02, "wk": torch.randn(kvd, dim, generator=g) * 0.02,
            "wv": torch.randn(kvd, dim, generator=g) * 0.02, "wo": torch.randn(dim, dim, generator=g) * out_scale,
            "gate": torch.randn(ffn, dim, generator=g) * 0.02, "up": torch.randn(ffn, dim, generator=g) * 0.02,
            "down": torch.randn(dim, ffn, generator=g) * out_scale,
        })
    return w


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Decoder:
    def __init__(self, w, heads, kv_heads, max_len, batch):
        self.w, self.heads, self.kvh = w, heads, kv_heads
        dim = w["embed"].shape[1]
        self.hd = dim // heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.outer(torch.arange(max_len).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.cos, self.sin = ang.cos(), ang.sin()
        L = len(w["layers"])
        self.k = torch.zeros(L, batch, kv_heads, max_len, self.hd)
        self.v = torch.zeros(L, batch, kv_heads, max_len, self.hd)

    def step(self, tokens, start):
        """tokens (B, T) at positions start..start+T-1 -> logits of the last position (B, V)."""
        B, T = tokens.shape
        x = self.w["embed"][tokens]  # (B, T, C)
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]
        mask = None
        if T > 1:
            mask = torch.full((T, start + T), float("-inf")).triu(start + 1)
        for l, lw in enumerate(self.w["layers"]):
            h = rmsnorm(x, lw["attn_norm"])
            q = (h @ lw["wq"].T).view(B, T, self.heads, self.hd).transpose(1, 2)
            k = (h @ lw["wk"].T).view(B, T, self.kvh, self.hd).transpose(1, 2)
            v = (h @ lw["wv"].T).view(B, T, self.kvh, self.hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            self.k[l, :B, :, start:start + T] = k
            self.v[l, :B, :, start:start + T] = v
            kk, vv = self.k[l, :B, :, :start + T], self.v[l, :B, :, :start + T]
            if self.kvh != self.heads:  # each cached K/V head serves heads / kv_heads query heads
                kk = kk.repeat_interleave(self.heads // self.kvh, dim=1)
                vv = vv.repeat_interleave(self.heads // self.kvh, dim=1)
            att = (q @ kk.transpose(-1, -2)) / math.sqrt(self.hd)
            if mask is not None:
                att = att + mask
            o = (att.softmax(-1) @ vv).transpose(1, 2).reshape(B, T, -1)
            x = x + o @ lw["wo"].T
            h = rmsnorm(x, lw["ffn_norm"])
            x = x + (torch.nn.functional.silu(h @ lw["gate"].T) * (h @ lw["up"].T)) @ lw["down"].T
        return rmsnorm(x[:, -1], self.w["norm"]) @ self.w["embed"].T


def generate(w, heads, kv_heads, batch, prompt_len, new_tokens, seed):
    dec = Decoder(w, heads, kv_heads, prompt_len + new_tokens, batch)
    vocab = w["embed"].shape[0]
    prompt = (torch.arange(prompt_len) * 7919 + 13) % vocab
    tokens = prompt.unsqueeze(0).repeat(batch, 1)
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    logits = dec.step(tokens, 0)
    pos = prompt_len
    n = 0
    for i in range(new_tokens):
        probs = logits.log_softmax(-1).exp()
        nxt = torch.multinomial(probs, 1, generator=g)  # (B, 1)
        n += batch
        if i + 1 < new_tokens:
            logits = dec.step(nxt, pos)
            pos += 1
    return n, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser()
    for name, d in [("threads", 2), ("batch", 64), ("new-tokens", 256), ("prompt-len", 8), ("dim", 288),
                    ("layers", 6), ("heads", 6), ("kv-heads", 0), ("ffn", 768), ("vocab", 32000), ("repeats", 3)]:
        ap.add_argument("--" + name, type=int, default=d)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kvh = a.kv_heads or a.heads
    w = build(a.dim, a.layers, a.heads, kvh, a.ffn, a.vocab)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.inference_mode():
        generate(w, a.heads, kvh, 1, a.prompt_len, 16, 0)  # warm-up
        single, batched, single_cpu, batched_cpu = [], [], [], []
        for r in range(a.repeats):
            n, t, c = generate(w, a.heads, kvh, 1, a.prompt_len, a.new_tokens, 1000 + r)
            single.append(n / t)
            single_cpu.append(n / c)
            print(f"  torch single-stream run {r}: {n} tokens in {t:.3f} s = {n / t:.1f} tokens/s "
                  f"({n / c:.1f} tokens per CPU-second)", flush=True)
        for r in range(a.repeats):
            n, t, c = generate(w, a.heads, kvh, a.batch, a.prompt_len, a.new_tokens, 2000 + r)
            batched.append(n / t)
            batched_cpu.append(n / c)
            print(f"  torch batch {a.batch} run {r}: {n} tokens in {t:.3f} s = {n / t:.1f} tokens/s aggregate "
                  f"({n / c:.1f} tokens per CPU-second)", flush=True)
    print(f"torch single-stream: median {statistics.median(single):.1f} tokens/s")
    print(f"torch batched x{a.batch}: median {statistics.median(batched):.1f} tokens/s aggregate")
    print(f"torch per CPU-second: single-stream {statistics.median(single_cpu):.1f}, "
          f"batched x{a.batch} {statistics.median(batched_cpu):.1f} tokens")


if __name__ == "__main__":
    main()
