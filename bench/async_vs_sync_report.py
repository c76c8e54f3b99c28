#!/usr/bin/env python3
"""Report for bench/bench_async_vs_sync.sh: reads OUT/{sync,async[,sync2]}-sSEED run directories and
prints time-to-reward, speedup, held-out pass rates and the time breakdown from metrics.jsonl.

Time to reward: the target is the sync runs' final mean reward (10-step moving average of the
seed-averaged reward/mean at step STEPS); a mode reaches it at the first step where its own
seed-averaged moving average does, at the median over seeds of the wall time of that step."""
import glob
import json
import os
import statistics
import sys

WINDOW = int(os.environ.get("WINDOW", "20"))  # steps in the moving average of reward/mean (seed-averaged)


def load(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    ev = json.load(open(f"{run}/eval.json"))
    try:
        ev["sampled"] = json.load(open(f"{run}/eval_sampled.json"))["pass_rate"]
    except OSError:
        ev["sampled"] = float("nan")
    return rows, ev


def moving(vals):
    return [sum(vals[max(0, i - WINDOW + 1): i + 1]) / len(vals[max(0, i - WINDOW + 1): i + 1])
            for i in range(len(vals))]


def breakdown(rows):
    s = lambda k: sum(r.get(k, 0.0) or 0.0 for r in rows)
    return {
        "wall_s": rows[-1]["wall_s"],
        "train_s": s("train/seconds"),
        "wait_s": s("time/wait_s"),
        "score_s": s("time/score_s"),
        "publish_s": s("time/publish_s"),
        "gen_busy_s": s("gen/seconds"),
        "gen_tokens": s("gen/tokens"),
        "staleness_mean": sum(r["staleness/mean"] for r in rows) / len(rows),
        "dropped_stale": rows[-1].get("groups/dropped_stale_total", 0),
    }


def main():
    args = sys.argv[1:]
    steps = None
    if len(args) >= 2 and args[0] == "--steps":
        steps, args = int(args[1]), args[2:]
    out = args[0]
    modes = {}
    for d in sorted(glob.glob(os.path.join(out, "*-s*"))):
        mode, seed = os.path.basename(d).rsplit("-s", 1)
        if os.path.exists(f"{d}/eval.json"):
            modes.setdefault(mode, {})[int(seed)] = load(d)
    known = ("sync", "async", "sync2", "async-noinf", "dppo-rec", "dppo-int", "dppo-rec-noinf", "dppo-int-noinf")
    order = [m for m in known if m in modes] + sorted(m for m in modes if m not in known)
    if "sync" not in modes:
        sys.exit("async_vs_sync_report: no sync runs (they set the target)")
    seeds = sorted(set.intersection(*(set(modes[m]) for m in order)))
    if not seeds:
        sys.exit("async_vs_sync_report: no seed has every mode")
    steps = steps or min(r[-1]["step"] for r, _ in modes["sync"].values())
    curve, wall_at = {}, {}
    for m in order:
        n = min(len(modes[m][s][0]) for s in seeds)
        avg = [statistics.mean(modes[m][s][0][i]["reward/mean"] for s in seeds) for i in range(n)]
        curve[m] = moving(avg)
        wall_at[m] = [statistics.median(modes[m][s][0][i]["wall_s"] for s in seeds) for i in range(n)]
    target = curve["sync"][steps - 1]
    print(f"seeds {seeds}; target: the sync runs' final mean reward (seed-averaged, last {WINDOW} steps, "
          f"step {steps}) = {target:.4f}")
    print(f"{'mode':14} {'wall@' + str(steps):>9} {'reward@' + str(steps):>10} {'t_target_s':>10} {'at_step':>7} "
          f"{'pass_greedy':>11} {'pass_sampled':>12}   (wall: median over seeds; pass rates: mean over seeds, at step {steps})")
    tt = {}
    for m in order:
        hit = next((i for i, v in enumerate(curve[m]) if v >= target), None)
        tt[m] = wall_at[m][hit] if hit is not None else None
        pg = statistics.mean(modes[m][s][1]["pass_rate"] for s in seeds)
        ps = statistics.mean(modes[m][s][1]["sampled"] for s in seeds)
        ts = f"{tt[m]:.1f}" if tt[m] is not None else "not reached"
        print(f"{m:14} {wall_at[m][steps - 1]:>9.1f} {curve[m][steps - 1]:>10.4f} {ts:>10} "
              f"{str(hit + 1 if hit is not None else None):>7} {pg:>11.3f} {ps:>12.3f}")
    try:
        base = json.load(open(f"{out}/eval_base.json"))["pass_rate"]
        bs = json.load(open(f"{out}/eval_base_sampled.json"))["pass_rate"]
        print(f"base model held-out pass rate: greedy {base:.3f}, sampled {bs:.3f}")
    except OSError:
        pass
    for m in [m for m in order if m != "sync"]:
        thr = wall_at["sync"][steps - 1] / wall_at[m][steps - 1]
        if tt["sync"] and tt[m]:
            print(f"speedup of {m} over sync: {tt['sync'] / tt[m]:.2f}x to the sync runs' final reward; "
                  f"{thr:.2f}x in wall time for the same {steps} steps")
        else:
            print(f"speedup of {m} over sync: target not reached; {thr:.2f}x in wall time for the same {steps} steps")
    print(f"\nreward curve (seed-averaged {WINDOW}-step moving mean, every 25 steps):")
    for m in order:
        print(f"  {m:14} " + " ".join(f"{curve[m][i]:.3f}" for i in range(24, len(curve[m]), 25)))
    print(f"\nwhere the time went over the first {steps} steps (seconds, summed over steps, mean over seeds; gen_busy ="
          " generator sampling time of the groups used):")
    keys = ["wall_s", "train_s", "wait_s", "score_s", "publish_s", "gen_busy_s", "gen_tokens", "staleness_mean",
            "dropped_stale"]
    print(f"{'mode':14} " + " ".join(f"{k:>14}" for k in keys))
    for m in order:
        bs = [breakdown([r for r in modes[m][s][0] if r["step"] <= steps]) for s in seeds]
        print(f"{m:14} " + " ".join(f"{statistics.mean(b[k] for b in bs):>14.1f}" for k in keys))


if __name__ == "__main__":
    main()
