#!/usr/bin/env python3
"""Report for bench/bench_rl_recipes.sh: reads OUT/MODE-RECIPE-sSEED run directories (metrics.jsonl,
eval_step_N.json for every checkpoint, eval_sampled.json) and prints, per mode and recipe, the held-out
pass rate (greedy at every checkpoint, 4 samples at temperature 1 at the last) as mean and standard
deviation over seeds, the completion tokens and wall time spent to each checkpoint, and each recipe's
per-seed difference from the reference recipe (--ref, default rloo_tis: the paired comparison, same
seed, same prompts order). Draws OUT/recipes.png: pass rate against tokens and against wall time, one
panel pair per mode (gnuplot). bench/bench_model_variants_rl.sh uses it too, with its variants as the
"recipes" and --ref full."""
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys

ORDER = ["rloo_tis", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp", "ppo_epochs",
         "full", "lora_r1", "lora_r8", "lora_r32", "plain8", "kvshare", "local", "kvshare_local"]


def mean_sd(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def load(run, steps):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    by_step = {}
    tokens = 0
    for r in rows:  # one row per step; a resumed run could repeat one: the last wins
        by_step[r["step"]] = r
    cum, walls = {}, {}
    for s in sorted(by_step):
        tokens += by_step[s].get("gen/tokens", 0) or 0
        cum[s] = tokens
        walls[s] = by_step[s]["wall_s"]
    evals = {}
    for f in glob.glob(f"{run}/eval_step_*.json"):
        s = int(re.search(r"eval_step_(\d+)\.json$", f).group(1))
        try:
            evals[s] = json.load(open(f))["pass_rate"]
        except (OSError, ValueError, KeyError):
            pass
    try:
        sampled = json.load(open(f"{run}/eval_sampled.json"))["pass_rate"]
    except (OSError, ValueError, KeyError):
        sampled = float("nan")
    last = [by_step[s]["reward/mean"] for s in sorted(by_step) if steps - 20 < s <= steps]
    return {"cum_tokens": cum, "wall": walls, "evals": evals, "sampled": sampled,
            "reward_last20": statistics.mean(last) if last else float("nan"),
            "steps": max(by_step) if by_step else 0}


def main():
    args = sys.argv[1:]
    steps, ref_name = None, "rloo_tis"
    while len(args) >= 2 and args[0] in ("--steps", "--ref"):
        if args[0] == "--steps":
            steps = int(args[1])
        else:
            ref_name = args[1]
        args = args[2:]
    if len(args) != 1:
        sys.exit("usage: rl_recipes_report.py [--steps N] [--ref RECIPE] OUT_DIR")
    out = args[0]
    runs = {}  # (mode, recipe) -> {seed: data}
    for d in sorted(glob.glob(os.path.join(out, "*-s[0-9]*"))):
        m = re.match(r"^(sync|async)-(.+)-s(\d+)$", os.path.basename(d))
        if not m or not os.path.exists(f"{d}/metrics.jsonl"):
            continue
        data = load(d, steps or 10**9)
        if not data["evals"]:
            continue
        runs.setdefault((m.group(1), m.group(2)), {})[int(m.group(3))] = data
    if not runs:
        sys.exit(f"rl_recipes_report: no finished runs in {out}")
    if steps is None:
        steps = max(max(d["steps"] for d in v.values()) for v in runs.values())
    modes = [m for m in ("sync", "async") if any(k[0] == m for k in runs)]
    recipes = [r for r in ORDER if any(k[1] == r for k in runs)] + \
        sorted({k[1] for k in runs if k[1] not in ORDER})
    try:
        base = json.load(open(f"{out}/eval_base.json"))["pass_rate"]
        print(f"base model held-out pass rate (greedy): {base:.3f}")
    except (OSError, ValueError, KeyError):
        base = None
    plot_rows = []
    for mode in modes:
        print(f"\n== {mode} mode, {steps} steps (mean ± sd over seeds; wall: median)")
        print(f"{'recipe':14} {'seeds':>5} {'greedy@end':>13} {'sampled@end':>13} {'greedy AUC':>11} "
              f"{'reward(last20)':>14} {'tokens':>8} {'wall_s':>7}   greedy pass rate at each checkpoint")
        ref = runs.get((mode, ref_name), {})
        for rec in recipes:
            rs = runs.get((mode, rec))
            if not rs:
                continue
            seeds = sorted(rs)
            cks = sorted(set.intersection(*(set(rs[s]["evals"]) for s in seeds)))
            end = cks[-1] if cks else None
            g_end = mean_sd([rs[s]["evals"].get(end) for s in seeds])
            smp = mean_sd([rs[s]["sampled"] for s in seeds])
            auc = mean_sd([statistics.mean(rs[s]["evals"][c] for c in cks) for s in seeds])
            rew = mean_sd([rs[s]["reward_last20"] for s in seeds])
            tok = statistics.mean(rs[s]["cum_tokens"].get(end, float("nan")) for s in seeds)
            wall = statistics.median(rs[s]["wall"].get(end, float("nan")) for s in seeds)
            curve = " ".join(f"{statistics.mean(rs[s]['evals'][c] for s in seeds):.3f}" for c in cks)
            print(f"{rec:14} {len(seeds):>5} {g_end[0]:>6.3f}±{g_end[1]:.3f} {smp[0]:>6.3f}±{smp[1]:.3f} "
                  f"{auc[0]:>5.3f}±{auc[1]:.3f} {rew[0]:>7.3f}±{rew[1]:.3f} {tok:>8.0f} {wall:>7.1f}   {curve}")
            for c in cks:
                g = mean_sd([rs[s]["evals"][c] for s in seeds])
                plot_rows.append((mode, rec, statistics.mean(rs[s]["cum_tokens"].get(c, float("nan")) for s in seeds),
                                  statistics.median(rs[s]["wall"].get(c, float("nan")) for s in seeds), g[0], g[1]))
        if ref:
            print(f"paired with {ref_name} (same seed): greedy@end difference, mean ± sd over seeds, and seeds where "
                  f"the recipe is ahead / behind")
            for rec in recipes:
                rs = runs.get((mode, rec))
                if not rs or rec == ref_name:
                    continue
                seeds = sorted(set(rs) & set(ref))
                diffs = []
                for s in seeds:
                    end = max(set(rs[s]["evals"]) & set(ref[s]["evals"]), default=None)
                    if end is not None:
                        diffs.append(rs[s]["evals"][end] - ref[s]["evals"][end])
                if diffs:
                    md = mean_sd(diffs)
                    print(f"  {rec:14} {md[0]:+.3f} ± {md[1]:.3f}  ahead {sum(d > 0 for d in diffs)}, "
                          f"behind {sum(d < 0 for d in diffs)} of {len(diffs)}")
    draw(out, modes, recipes, plot_rows, base)


def draw(out, modes, recipes, rows, base):
    dat = os.path.join(out, "recipes_curves.dat")
    with open(dat + ".tmp", "w") as f:
        for mode in modes:
            for rec in recipes:
                pts = [r for r in rows if r[0] == mode and r[1] == rec]
                if not pts:
                    continue
                f.write(f"# {mode} {rec}\n")
                for _, _, tok, wall, g, sd in pts:
                    f.write(f"{tok / 1000:.3f} {wall:.2f} {g:.4f} {sd:.4f}\n")
                f.write("\n\n")
    os.replace(dat + ".tmp", dat)
    blocks = []  # (mode, recipe, gnuplot index)
    i = 0
    for mode in modes:
        for rec in recipes:
            if any(r[0] == mode and r[1] == rec for r in rows):
                blocks.append((mode, rec, i))
                i += 1
    png = os.path.join(out, "recipes.png")
    gp = [f"set terminal pngcairo size 1400,{520 * len(modes)} font ',10' noenhanced",
          f"set output '{png}.tmp'",
          f"set multiplot layout {len(modes)},2",
          "set key bottom right font ',9'", "set grid", "set ylabel 'held-out pass rate (greedy)'"]
    for mode in modes:
        for xcol, xlabel in ((1, "completion tokens trained on (thousands)"), (2, "wall time (s, median over seeds)")):
            mine = [b for b in blocks if b[0] == mode]
            gp.append(f"set title '{mode} mode: mean ± sd over seeds'")
            gp.append(f"set xlabel '{xlabel}'")
            plots = [f"'{dat}' index {idx} using {xcol}:3:4 with yerrorlines title '{rec}'" for _, rec, idx in mine]
            if base is not None:
                plots.append(f"{base} with lines dashtype 2 lc 'gray' title 'base model'")
            gp.append("plot " + ", ".join(plots))
    gp.append("unset multiplot")
    gp.append("set output")
    try:
        subprocess.run(["gnuplot"], input="\n".join(gp) + "\n", text=True, check=True)
        os.replace(png + ".tmp", png)
        print(f"\nplot: {png}")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"rl_recipes_report: no plot ({e})", file=sys.stderr)


if __name__ == "__main__":
    main()
