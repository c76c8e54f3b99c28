#!/usr/bin/env python3
"""Report for bench/bench_async_vs_sync.sh: reads two run directories (sync, async) and prints
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
    sync_dir, async_dir = sys.argv[1], sys.argv[2]
    srows, sev = load(sync_dir)
    arows, aev = load(async_dir)
    target = moving(srows, "reward/mean")[-1]
    ts, ss = time_to(srows, target)
    ta, sa = time_to(arows, target)
    try:
        base = json.load(open(f"{sync_dir}/eval_base.json"))
    except OSError:
        base = None
    print(f"target: the sync run's final mean reward (last {WINDOW} steps) = {target:.4f}")
    print(f"{'run':6} {'steps':>5} {'wall_s':>8} {'t_target_s':>10} {'at_step':>7} {'final_reward':>12} "
          f"{'pass_greedy':>12} {'pass_sampled':>12}")
    for name, rows, ev, t, st in (("sync", srows, sev, ts, ss), ("async", arows, aev, ta, sa)):
        fr = moving(rows, "reward/mean")[-1]
        tt = f"{t:.1f}" if t is not None else "not reached"
        print(f"{name:6} {rows[-1]['step']:>5} {rows[-1]['wall_s']:>8.1f} {tt:>10} {str(st):>7} {fr:>12.4f} "
              f"{ev['pass_rate']:>12.3f} {ev['sampled']:>12.3f}")
    if base:
        try:
            bs = json.load(open(f"{sync_dir}/eval_base_sampled.json"))["pass_rate"]
        except OSError:
            bs = float("nan")
        print(f"base model held-out pass rate: greedy {base['pass_rate']:.3f}, sampled {bs:.3f}")
    if ts and ta:
        print(f"speedup to the sync run's final reward: {ts / ta:.2f}x  (wall: {srows[-1]['wall_s'] / arows[-1]['wall_s']:.2f}x for the same steps)")
    print("\nwhere the time went (seconds, summed over steps; gen_busy = generator sampling time of the groups used):")
    keys = ["wall_s", "train_s", "wait_s", "score_s", "publish_s", "gen_busy_s", "gen_tokens", "staleness_mean",
            "dropped_stale"]
    print(f"{'run':6} " + " ".join(f"{k:>14}" for k in keys))
    for name, rows in (("sync", srows), ("async", arows)):
        b = breakdown(rows)
        print(f"{name:6} " + " ".join(f"{b[k]:>14.1f}" for k in keys))


if __name__ == "__main__":
    main()
