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
    ev["by_step"] = {}  # step -> greedy held-out pass rate of that checkpoint (eval_step_N.json)
    for f in glob.glob(f"{run}/eval_step_*.json"):
        try:
            ev["by_step"][int(f.rsplit("_", 1)[1].split(".")[0])] = json.load(open(f))["pass_rate"]
        except (OSError, ValueError, KeyError):
            pass
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
        "staleness_max": max(r.get("staleness/max", 0) for r in rows),
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
        # only where the moving mean spans a whole window (its first points average one or two steps)
        hit = next((i for i, v in enumerate(curve[m]) if i >= WINDOW - 1 and v >= target), None)
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
            "staleness_max", "dropped_stale"]
    print(f"{'mode':14} " + " ".join(f"{k:>14}" for k in keys))
    for m in order:
        bs = [breakdown([r for r in modes[m][s][0] if r["step"] <= steps]) for s in seeds]
        print(f"{m:14} " + " ".join(f"{statistics.mean(b[k] for b in bs):>14.1f}" for k in keys))
    write_means(out, modes, order, seeds)
    equal_wall(modes, order, seeds, steps, wall_at)
    two_core_bound(modes, order, seeds, steps)
    cpu_bound(out, order, seeds)


def write_means(out, modes, order, seeds):
    """OUT/means/MODE/metrics.jsonl: one line per step with the seed-mean reward/mean and pass_rate and the
    seed-median wall_s, so that `rlhf plot OUT/means/*` draws one readable curve per mode (every run
    overlaid is 8 lines a mode)."""
    for m in order:
        n = min(len(modes[m][s][0]) for s in seeds)
        d = os.path.join(out, "means", m)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "metrics.jsonl.tmp"), "w") as f:
            for i in range(n):
                rows = [modes[m][s][0][i] for s in seeds]
                f.write(json.dumps({"step": rows[0]["step"],
                                    "wall_s": statistics.median(r["wall_s"] for r in rows),
                                    "reward/mean": statistics.mean(r["reward/mean"] for r in rows),
                                    "pass_rate": statistics.mean(r.get("pass_rate", 0.0) for r in rows)}) + "\n")
        os.replace(os.path.join(d, "metrics.jsonl.tmp"), os.path.join(d, "metrics.jsonl"))


def pass_at_wall(rows, by_step, wall):
    """The greedy held-out pass rate at a wall time, interpolated linearly between the run's checkpoints
    (by the wall time of their steps); past the last checkpoint, the last one's."""
    walls = {r["step"]: r["wall_s"] for r in rows}
    pts = sorted((walls[s], p) for s, p in by_step.items() if s in walls)
    if not pts:
        return None
    if wall <= pts[0][0]:
        return pts[0][1]
    for (w0, p0), (w1, p1) in zip(pts, pts[1:]):
        if w0 <= wall <= w1:
            return p0 + (p1 - p0) * (wall - w0) / (w1 - w0) if w1 > w0 else p1
    return pts[-1][1]


def equal_wall(modes, order, seeds, steps, wall_at):
    if not all(modes[m][s][1]["by_step"] for m in order for s in seeds):
        return
    wall = wall_at["sync"][steps - 1]
    sync = {s: modes["sync"][s][1]["by_step"].get(steps) for s in seeds}
    sd_sync = statistics.stdev(sync.values()) if len(seeds) > 1 else 0.0
    print(f"\nheld-out pass rate (greedy, 200 prompts) at equal wall time: {wall:.1f} s, the sync runs' median wall "
          f"time at step {steps} (async: interpolated between their checkpoints); seed noise = the sync runs' "
          f"sd over seeds {sd_sync:.3f}, of a mean over {len(seeds)} seeds {sd_sync / len(seeds) ** 0.5:.3f}")
    print(f"{'mode':14} {'pass@wall':>9} {'sd':>6} {'vs sync (paired)':>17} {'sd':>6} {'ahead/behind':>12}")
    for m in order:
        ps = {s: pass_at_wall(modes[m][s][0], modes[m][s][1]["by_step"], wall) for s in seeds}
        d = [ps[s] - sync[s] for s in seeds]
        print(f"{m:14} {statistics.mean(ps.values()):>9.3f} {statistics.stdev(ps.values()) if len(seeds) > 1 else 0:>6.3f} "
              f"{statistics.mean(d):>+17.3f} {statistics.stdev(d) if len(seeds) > 1 else 0:>6.3f} "
              f"{sum(x > 0 for x in d):>6}/{sum(x < 0 for x in d)}")
    print(f"greedy pass rate by checkpoint (mean over seeds):")
    for m in order:
        cks = sorted(set.intersection(*(set(modes[m][s][1]["by_step"]) for s in seeds)))
        print(f"  {m:14} " + " ".join(f"{c}:{statistics.mean(modes[m][s][1]['by_step'][c] for s in seeds):.3f}"
                                      for c in cks))


def cpu_account(run):
    """RUN/cpu.json (the launcher's wait4 of each process): {process: user + sys seconds}, or None."""
    try:
        doc = json.load(open(f"{run}/cpu.json"))
    except (OSError, ValueError):
        return None
    return {k: v["user_s"] + v["sys_s"] for k, v in doc["processes"].items()}, doc["wall_s"]


def cpu_bound(out, order, seeds):
    """The bound from measured CPU time: the whole run's CPU seconds (every process, reward sandboxes
    included) of the sync runs, over 2 cores, against each mode's wall time. Whole runs (sync to STEPS,
    async to ASYNC_STEPS), so per step."""
    acc = {}
    for m in order:
        rows = []
        for s in seeds:
            a = cpu_account(os.path.join(out, f"{m}-s{s}"))
            if a is None:
                return
            procs, wall = a
            steps = max(json.loads(l)["step"] for l in open(os.path.join(out, f"{m}-s{s}", "metrics.jsonl")) if l.strip())
            rows.append(({k: v / steps for k, v in procs.items()}, wall / steps))
        acc[m] = rows
    sync_cpu = statistics.mean(sum(p.values()) for p, _ in acc["sync"])
    sync_wall = statistics.mean(w for _, w in acc["sync"])
    bound = sync_wall / (sync_cpu / 2)
    procs = sorted({k for m in order for p, _ in acc[m] for k in p})
    print(f"\nmeasured CPU time (RUN/cpu.json: user + sys of every process, its reward sandboxes included), per "
          f"step, mean over seeds: sync spends {1e3 * sync_cpu:.0f} ms of CPU in {1e3 * sync_wall:.0f} ms of wall time "
          f"a step, so 2 cores could do a step in {1e3 * sync_cpu / 2:.0f} ms: a bound of {bound:.2f}x over sync")
    print(f"{'mode':14} {'wall ms':>8} {'x sync':>7} {'of bound':>8} {'CPU ms':>7} {'cores':>6} {'CPU vs sync':>11}   "
          + " ".join(f"{k:>12}" for k in procs) + "   (CPU ms per step)")
    for m in order:
        wall = statistics.mean(w for _, w in acc[m])
        cpu = statistics.mean(sum(p.values()) for p, _ in acc[m])
        x = sync_wall / wall
        per = " ".join(f"{1e3 * statistics.mean(p.get(k, 0) for p, _ in acc[m]):>12.0f}" for k in procs)
        print(f"{m:14} {1e3 * wall:>8.0f} {x:>7.2f} {x / bound:>8.2f} {1e3 * cpu:>7.0f} {cpu / wall:>6.2f} "
              f"{cpu / sync_cpu:>11.2f}   {per}")


def two_core_bound(modes, order, seeds, steps):
    """The stages' time (generator sampling, scoring, training, publishing), each one thread, summed over the
    first STEPS steps. On 2 cores no schedule finishes before half that sum of the sync runs' (uncontended)
    stage times: sync wall / (sum / 2) is the speedup bound. A variant reaches a fraction of it; the rest is
    the stages running slower side by side (the contention factor: the async stage sum over the sync one)
    and the time the busiest stage still waits."""
    def stage_sum(b):
        return b["gen_busy_s"] + b["score_s"] + b["train_s"] + b["publish_s"]
    sb = [breakdown([r for r in modes["sync"][s][0] if r["step"] <= steps]) for s in seeds]
    sync_wall = statistics.mean(b["wall_s"] for b in sb)
    sync_sum = statistics.mean(stage_sum(b) for b in sb)
    bound = sync_wall / (sync_sum / 2)
    print(f"\n2-core bound over the first {steps} steps: the sync runs' stage times sum to {sync_sum:.1f} s "
          f"(wall {sync_wall:.1f} s), so 2 cores could finish in {sync_sum / 2:.1f} s at best: a bound of "
          f"{bound:.2f}x over sync")
    print(f"{'mode':14} {'wall_s':>7} {'x sync':>7} {'of bound':>8} {'stage sum':>9} {'cores busy':>10} {'contention':>10}")
    for m in order:
        bs = [breakdown([r for r in modes[m][s][0] if r["step"] <= steps]) for s in seeds]
        wall = statistics.mean(b["wall_s"] for b in bs)
        ssum = statistics.mean(stage_sum(b) for b in bs)
        x = sync_wall / wall
        print(f"{m:14} {wall:>7.1f} {x:>7.2f} {x / bound:>8.2f} {ssum:>9.1f} {ssum / wall:>10.2f} {ssum / sync_sum:>10.2f}")


if __name__ == "__main__":
    main()
