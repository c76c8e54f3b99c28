#!/usr/bin/env python3
"""tests/oracle/replay_export_check.py EXPORT.jsonl METRICS.jsonl K — reads `rlhf replay-export`'s output
with pandas, as a researcher would, and checks its numbers against the run's own metrics.jsonl:

  - every row has the documented columns; each group (generator, seq) has K rows, samples 0..K-1;
  - per step, over the groups the step consumed (fate trained or zero_var): the mean of "total"
    equals metrics' reward/mean, and the mean group staleness equals staleness/mean;
  - "advantage" of a trained group is total minus the mean of the other samples' totals (RLOO),
    recomputed here; null for other fates;
  - n_tokens is the length of tokens.
Prints one line per failed check and exits 1 on any; prints the counts and exits 0 otherwise."""
import json
import sys

import numpy as np
import pandas as pd

export, metrics_path, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
df = pd.read_json(export, lines=True)
fails = []
cols = {"step", "generator", "seq", "prompt_id", "prompt", "sample", "completion", "tokens", "n_tokens", "finish", "scored",
        "logprob_sum", "rewards", "total", "advantage", "policy_version", "staleness", "fate"}
missing = cols - set(df.columns)
if missing:
    fails.append(f"missing columns {sorted(missing)}")
sizes = df.groupby(["generator", "seq"]).size()
if not (sizes == k).all():
    fails.append(f"groups without {k} rows: {sizes[sizes != k].to_dict()}")
if not (df["n_tokens"] == df["tokens"].map(len)).all():
    fails.append("n_tokens differs from len(tokens)")

metrics = {}
with open(metrics_path) as f:
    for line in f:
        m = json.loads(line)
        metrics[m["step"]] = m
in_step = df[df["fate"].isin(["trained", "zero_var", "unscored"])]
checked = 0
for step, rows in in_step.groupby("step"):
    m = metrics.get(int(step))
    if m is None:
        fails.append(f"step {step}: not in metrics.jsonl")
        continue
    if abs(rows["total"].mean() - m["reward/mean"]) > 1e-5:
        fails.append(f"step {step}: mean total {rows['total'].mean()} vs reward/mean {m['reward/mean']}")
    lag = rows.groupby(["generator", "seq"])["staleness"].first().mean()
    if abs(lag - m["staleness/mean"]) > 1e-9:
        fails.append(f"step {step}: mean staleness {lag} vs staleness/mean {m['staleness/mean']}")
    checked += 1
for (gen, seq), g in df.groupby(["generator", "seq"]):
    g = g.sort_values("sample")
    g = g[g["scored"]]  # a sample no source scored is in no baseline
    tot = g["total"].to_numpy(dtype=float)
    adv = g["advantage"].to_numpy(dtype=float)
    if len(g) and (g["fate"] == "trained").all():
        want = tot - (tot.sum() - tot) / (len(tot) - 1)
        if not np.allclose(adv, want, atol=1e-6):
            fails.append(f"group {gen} #{seq}: advantage {adv} vs RLOO {want}")
    elif not np.isnan(adv).all():
        fails.append(f"group {gen} #{seq} ({g['fate'].iloc[0]}): advantage should be null, got {adv}")
for f_ in fails:
    print(f_)
print(f"{len(df)} rows, {len(sizes)} groups, {checked} steps checked against metrics")
sys.exit(1 if fails or checked == 0 else 0)
