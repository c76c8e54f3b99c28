#!/usr/bin/python3
"""tests/oracle/peft_check.py - checks a LoRA adapter directory in the PEFT format against the base model
and the merged checkpoint, reading safetensors itself (an 8-byte little-endian header length, a JSON
header of dtype / shape / data_offsets, then the bytes) and following PEFT's own conventions:
adapter_config.json with peft_type "LORA", r, lora_alpha, target_modules; adapter_model.safetensors with
base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_A.weight (r, in) and lora_B.weight (out, r);
the adapted weight is W + (lora_alpha / r) * B @ A.

    peft_check.py ADAPTER_DIR BASE.safetensors MERGED.safetensors

BASE and MERGED are the project's checkpoints (Hugging Face tensor names, one tensor per layer). Exit 0 when every adapter tensor has PEFT's name and shape, the config names the modules present,
and MERGED equals BASE + the adapters within 1e-5 (relative to each tensor's largest value); else a
message and exit 1."""
import json
import struct
import sys

import torch

MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = torch.frombuffer(bytearray(body[a:b]), dtype=DTYPES[t["dtype"]]).to(torch.float64).reshape(t["shape"])
    return out, header.get("__metadata__", {})


def fail(msg):
    print(f"peft_check: {msg}")
    sys.exit(1)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: peft_check.py ADAPTER_DIR BASE.safetensors MERGED.safetensors")
    adir, base_path, merged_path = sys.argv[1:]
    cfg = json.load(open(f"{adir}/adapter_config.json"))
    if cfg.get("peft_type") != "LORA":
        fail(f"peft_type is {cfg.get('peft_type')!r}")
    r, alpha, modules = cfg["r"], cfg["lora_alpha"], cfg["target_modules"]
    adapters, _ = read_safetensors(f"{adir}/adapter_model.safetensors")
    base, _ = read_safetensors(base_path)
    merged, _ = read_safetensors(merged_path)
    want = dict(base)
    seen = set()
    for key, t in adapters.items():
        parts = key.split(".")
        # base_model.model.model.layers.{i}.{block}.{module}.lora_{A|B}.weight
        if len(parts) != 9 or parts[:4] != ["base_model", "model", "model", "layers"] or parts[8] != "weight":
            fail(f"{key}: not a PEFT LoRA tensor name")
        layer, block, module, part = int(parts[4]), parts[5], parts[6], parts[7]
        if module not in MODULES or MODULES[module] != block or part not in ("lora_A", "lora_B"):
            fail(f"{key}: unknown module")
        if module not in modules:
            fail(f"{key}: module {module} is not in target_modules {modules}")
        seen.add(module)
        if part == "lora_B":
            continue
        a = t
        b = adapters.get(key.replace("lora_A", "lora_B"))
        if b is None:
            fail(f"{key}: no lora_B beside it")
        name = f"model.layers.{layer}.{block}.{module}.weight"
        if name not in base:
            fail(f"{key}: the base has no {name}")
        w = base[name]
        if a.shape != (r, w.shape[1]) or b.shape != (w.shape[0], r):
            fail(f"{key}: A {tuple(a.shape)} and B {tuple(b.shape)}, want ({r}, {w.shape[1]}) and ({w.shape[0]}, {r})")
        want[name] = w + (alpha / r) * (b @ a)
    if seen != set(modules):
        fail(f"target_modules {modules}, tensors for {sorted(seen)}")
    for name, t in merged.items():
        if name not in want:
            fail(f"merged checkpoint has {name}, the base does not")
        err = (t - want[name]).abs().max().item() / max(want[name].abs().max().item(), 1e-30)
        if err > 1e-5:
            fail(f"{name}: merged checkpoint differs from base + adapters by {err:.3g} (relative)")
    print(f"peft_check: {len(adapters)} adapter tensors of {sorted(seen)}, r={r}, alpha={alpha}: merged = base + adapters")


if __name__ == "__main__":
    main()
