#!/usr/bin/python3
"""Independent safetensors reader (json + numpy only, no `safetensors` package).

Usage: st_read.py FILE  -> prints JSON: {"metadata": {...}, "config": {...} or null,
"tensors": {name: {"shape": [...], "sum": float, "first": float, "last": float, "row3": [...]}}}
Used by tests/model_infer/test_checkpoint.c to check that other tools can open our checkpoints.
"""
import json
import struct
import sys

import numpy as np


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, ent in header.items():
        assert ent["dtype"] == "F32", (name, ent["dtype"])
        b, e = ent["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype="<f4").reshape(ent["shape"])
        tensors[name] = arr
    return meta, tensors


def main():
    meta, tensors = read(sys.argv[1])
    out = {"metadata": meta, "config": None, "tensors": {}}
    if "rlhf_model_config" in meta:
        out["config"] = json.loads(meta["rlhf_model_config"])
    for name, arr in tensors.items():
        flat = arr.reshape(-1).astype(np.float64)
        ent = {"shape": list(arr.shape), "sum": float(flat.sum()), "first": float(flat[0]), "last": float(flat[-1])}
        if arr.ndim == 2 and arr.shape[0] > 3:
            ent["row3"] = [float(x) for x in arr[3].astype(np.float64)]
        out["tensors"][name] = ent
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
