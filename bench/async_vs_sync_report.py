#!/usr/bin/env python3
"""Report for bench/bench_async_vs_sync.sh: reads the run directories (sync, async[, sync2]) and prints
time-to-reward, speedup, held-out pass rates and the time breakdown from metrics.jsonl."""
import json
import sys

WINDOW = 10  # steps in the moving average of reward/mean


def load(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    ev = json.load(open(f"{run}/eval.json"))
    try:
        ev["sampled"] = json.load(open(f"{run}/eval_sampled.json"))["pass_rate"]
    except OSError:
        ev["sampled"] = float("nan")
    return rows, ev


def moving(rows, key):
    out = []
    for i in range(len(rows)):
        w = rows[max(0, i - WINDOW + 1): i + 1]
        out.append(sum(r[key] for r in w) / len(w))
    return out


def time_to(rows, target):
    avg = moving(rows, "reward/mean")
    for r, a in zip(rows, avg):
        if a >= target:
            return r["wall_s"], r["step"]
    return None, None


def breakdown(rows):
    wall = rows[-1]["wall_s"]
    s = lambda k: sum(r.get(k, 0.0) or 0.0 for r in rows)
    return {
        "wall_s": wall,
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
    runs = [("sync", args[0]), ("async", args[1])] + ([("sync2", args[2])] if len(args) > 2 else [])
    data = {}
    for name, d in runs:
        rows, ev = load(d)
        data[name] = (rows, ev)
    srows = data["sync"][0]
    steps = steps or srows[-1]["step"]
    target = moving(srows, "reward/mean")[-1]
    try:
        base = json.load(open(f"{args[0]}/eval_base.json"))
    except OSError:
        base = None
    print(f"target: the sync run's final mean reward (last {WINDOW} steps) = {target:.4f}")
    print(f"{'run':6} {'steps':>5} {'wall_s@' + str(steps):>10} {'t_target_s':>10} {'at_step':>7} "
          f"{'reward@' + str(steps):>11} {'pass_greedy':>12} {'pass_sampled':>12}  (pass rates at step {steps})")
    tt = {}
    for name, _ in runs:
        rows, ev = data[name]
        upto = [r for r in rows if r["step"] <= steps]
        t, st = time_to(rows, target)
        tt[name] = t
        fr = moving(upto, "reward/mean")[-1]
        ts = f"{t:.1f}" if t is not None else "not reached"
        print(f"{name:6} {rows[-1]['step']:>5} {upto[-1]['wall_s']:>10.1f} {ts:>10} {str(st):>7} {fr:>11.4f} "
              f"{ev['pass_rate']:>12.3f} {ev['sampled']:>12.3f}")
    if base:
        try:
            bs = json.load(open(f"{args[0]}/eval_base_sampled.json"))["pass_rate"]
        except OSError:
            bs = float("nan")
        print(f"base model held-out pass rate: greedy {base['pass_rate']:.3f}, sampled {bs:.3f}")
    wall_at = lambda name: [r for r in data[name][0] if r["step"] <= steps][-1]["wall_s"]
    for ref in [n for n, _ in runs if n != "async"]:
        if tt[ref] and tt["async"]:
            print(f"speedup of async over {ref}: {tt[ref] / tt['async']:.2f}x to the sync run's final reward; "
                  f"{wall_at(ref) / wall_at('async'):.2f}x in wall time for the same {steps} steps")
        else:
            print(f"speedup of async over {ref}: target not reached by one of them; "
                  f"{wall_at(ref) / wall_at('async'):.2f}x in wall time for the same {steps} steps")
    print(f"\nwhere the time went over the first {steps} steps (seconds, summed over steps; gen_busy = generator "
          "sampling time of the groups used):")
    keys = ["wall_s", "train_s", "wait_s", "score_s", "publish_s", "gen_busy_s", "gen_tokens", "staleness_mean",
            "dropped_stale"]
    print(f"{'run':6} " + " ".join(f"{k:>14}" for k in keys))
    for name, _ in runs:
        b = breakdown([r for r in data[name][0] if r["step"] <= steps])
        print(f"{name:6} " + " ".join(f"{b[k]:>14.1f}" for k in keys))


if __name__ == "__main__":
    main()
