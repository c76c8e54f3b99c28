#!/usr/bin/env bash
# bench/bench_prompts_ablation.sh — the REAL prompt-selection ablation (issue 7): uniform vs
# zero_variance_filter vs cohesion on the countdown task, same base model, seeds and step budget,
# two reward sources that can disagree (the exact sandboxed `countdown` check and a sloppy grader,
# bench/bench_prompts_noisy_grader.py, wrong 15% of the time). Reports held-out pass rate (the
# countdown check, `rlhf eval`) against generated tokens (sum of the updater's gen/tokens metric up to
# each checkpoint), and the tokens each policy needs to reach uniform's final pass rate.
#
#   BUILD=build bash bench/bench_prompts_ablation.sh
# Knobs (environment): DATA (runs/data/countdown; prepared by scripts/prepare-countdown.sh if absent),
# OUT (runs/ablation-prompts), STEPS (150), CKPT_EVERY (25), SEEDS ("1 2"), N_TRAIN (256 prompts:
# a prompt must come back within the budget for its statistics to matter), EVAL_N (200), EVAL_SAMPLES
# (4, at temperature 1), FLIP (0.15), CONFUSED (0: share of prompts on which the grader guesses),
# CONFUSED_FLIP (0.5), CORRUPT (0: share of train prompts whose record "target" - the exact checker's
# answer key - is wrong; the grader then reads the target from the prompt text), UNSOLVABLE (0: share
# of train prompts whose target is moved to the nearest value in [1, 100] that no expression over the
# numbers reaches - exhaustive search with + - * / as the exact checker allows - so no completion is
# right and the sources' only spread there is the grader's error; held-out prompts stay solvable),
# POLICIES ("uniform zero_variance_filter cohesion"), COHESION_KNOBS (extra selector keys for the
# cohesion runs, as JSON members: '"stale_after_epochs":4,"decay":0.3'). SUMMARY_ONLY=1 re-prints the summary of an
# existing OUT (its results.jsonl, run directories and train.jsonl; seeds from several OUTs can be
# pooled by linking their run directories into one OUT and concatenating their results.jsonl).
# The summary ends with, per kind of train prompt (clean / unsolvable / corrupt), how often each
# policy served it and the selector's cohesion estimate at the end, and what the generated groups were
# by the countdown reward applied to the replay log (some samples right / all / none / unsolvable).
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
DATA=${DATA:-runs/data/countdown}
OUT=${OUT:-runs/ablation-prompts}
STEPS=${STEPS:-150}
CKPT_EVERY=${CKPT_EVERY:-25}
SEEDS=${SEEDS:-"1 2"}
N_TRAIN=${N_TRAIN:-256}
EVAL_N=${EVAL_N:-200}
EVAL_SAMPLES=${EVAL_SAMPLES:-4}
FLIP=${FLIP:-0.15}
CONFUSED=${CONFUSED:-0}
CONFUSED_FLIP=${CONFUSED_FLIP:-0.5}
CORRUPT=${CORRUPT:-0}
UNSOLVABLE=${UNSOLVABLE:-0}
POLICIES=${POLICIES:-"uniform zero_variance_filter cohesion"}
COHESION_KNOBS=${COHESION_KNOBS:-}
CONFIG=${CONFIG:-examples/configs/countdown.json}

[ -x "$R" ] || { echo "bench_prompts_ablation: error: $R not built (make BUILD=$BUILD)" >&2; exit 1; }
[ -s "$DATA/base.safetensors" ] || BUILD="$BUILD" bash scripts/prepare-countdown.sh "$DATA"
mkdir -p "$OUT"
# SUMMARY_ONLY=1 re-reports an earlier OUT: its train.jsonl (with the kinds of prompts) stays as it was
PREPARE=1
[ "${SUMMARY_ONLY:-0}" = 1 ] && PREPARE=0
[ "$PREPARE" = 1 ] && head -n "$N_TRAIN" "$DATA/train.jsonl" > "$OUT/train.jsonl"
FROM_PROMPT=false
[ "$CORRUPT" != 0 ] && FROM_PROMPT=true
if [ "$PREPARE" = 1 ] && [ "$CORRUPT" != 0 ]; then
  python3 - "$OUT/train.jsonl" "$CORRUPT" <<'PY'
import hashlib, json, sys
path, share = sys.argv[1], float(sys.argv[2])
rows = [json.loads(l) for l in open(path)]
for r in rows:  # a fixed subset by id; the key moves by 1..3 either way, the prompt text keeps the truth
    h = hashlib.sha256(("corrupt\0" + r["id"]).encode()).digest()
    if int.from_bytes(h[:8], "little") / 2.0**64 < share:
        d = 1 + h[8] % 3
        r["target"] = r["target"] + (d if h[9] % 2 else -d)
        r["corrupt"] = True  # for the summary only; the reward sources do not read it
with open(path, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
PY
fi
if [ "$PREPARE" = 1 ] && [ "$UNSOLVABLE" != 0 ]; then
  python3 - "$OUT/train.jsonl" "$UNSOLVABLE" <<'PY'
import hashlib, json, sys
from fractions import Fraction
from itertools import combinations
path, share = sys.argv[1], float(sys.argv[2])
def reachable(nums):  # every value of an expression using each given number at most once
    memo = {}
    def vals(ms):     # ms: tuple of indices, all used
        if ms in memo:
            return memo[ms]
        out = {Fraction(nums[ms[0]])} if len(ms) == 1 else set()
        for r in range(1, len(ms)):
            for left in combinations(ms, r):
                right = tuple(i for i in ms if i not in left)
                for a in vals(left):
                    for b in vals(right):
                        out |= {a + b, a - b, a * b}
                        if b != 0:
                            out.add(a / b)
        memo[ms] = out
        return out
    idx = range(len(nums))
    return set().union(*(vals(c) for r in range(1, len(nums) + 1) for c in combinations(idx, r)))
rows = [json.loads(l) for l in open(path)]
n = 0
for r in rows:  # a fixed subset by id; the prompt and the record get the same unreachable target
    h = hashlib.sha256(("unsolvable\0" + r["id"]).encode()).digest()
    if int.from_bytes(h[:8], "little") / 2.0**64 >= share:
        continue
    reach = reachable(r["numbers"])
    # the generator built each target from an expression: the search must find it (checks the search)
    assert Fraction(r["target"]) in reach, (r["id"], r["numbers"], r["target"])
    cands = sorted((abs(t - r["target"]), t) for t in range(1, 101) if Fraction(t) not in reach)
    if not cands:
        continue
    old = f"target {r['target']}:"
    assert r["prompt"].endswith(old), r["prompt"]
    r["target"] = cands[0][1]
    r["prompt"] = r["prompt"][: -len(old)] + f"target {r['target']}:"
    r.pop("answer", None)
    r["unsolvable"] = True
    n += 1
with open(path, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(f"unsolvable: {n} of {len(rows)} train prompts", file=sys.stderr)
PY
fi
GRADER=$(readlink -f bench/bench_prompts_noisy_grader.py)

eval_ckpt() { # CONFIG CHECKPOINT -> pass rate
  "$R" eval --config "$1" --checkpoint "$2" --data "$DATA/heldout.jsonl" --n "$EVAL_N" \
       --samples "$EVAL_SAMPLES" --temperature 1 2>/dev/null |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["pass_rate"])'
}

RESULTS="$OUT/results.jsonl"
[ "${SUMMARY_ONLY:-0}" = 1 ] || : > "$RESULTS"
[ "${SUMMARY_ONLY:-0}" = 1 ] && SEEDS=""  # re-print the summary of an earlier OUT
for seed in $SEEDS; do
  for policy in $POLICIES; do
    name="abl-$policy-s$seed"
    run_dir="$OUT/$name"
    rm -rf "$run_dir" "$OUT/$name.ckpts"
    echo "== $name"
    # the run keeps only its two newest checkpoints: copy each one aside as it appears
    mkdir -p "$OUT/$name.ckpts"
    "$R" run "$CONFIG" --quiet \
      --set name="$name" --set run_dir="$run_dir" --set task.train="$OUT/train.jsonl" \
      --set task.eval="$DATA/heldout.jsonl" --set model.base_checkpoint="$DATA/base.safetensors" \
      --set "prompts.selector={\"policy\":\"$policy\"$([ "$policy" = cohesion ] && [ -n "$COHESION_KNOBS" ] && echo ",$COHESION_KNOBS")}" \
      --set "rewards=[{\"type\":\"countdown\",\"name\":\"countdown\",\"weight\":1},{\"type\":\"process\",\"name\":\"grader\",\"weight\":1,\"command\":[\"python3\",\"$GRADER\"],\"config\":{\"flip\":$FLIP,\"confused\":$CONFUSED,\"confused_flip\":$CONFUSED_FLIP,\"target_from_prompt\":$FROM_PROMPT,\"seed\":$seed}}]" \
      --set rl.steps="$STEPS" --set rl.checkpoint_every="$CKPT_EVERY" --set rl.seed="$seed" \
      > "$OUT/$name.log" 2>&1 &
    run_pid=$!
    harvest() {
      for ck in "$run_dir"/checkpoints/step_*; do
        case "$ck" in *.tmp) continue ;; esac
        [ -s "$ck/model.safetensors" ] && [ ! -d "$OUT/$name.ckpts/${ck##*/}" ] &&
          rm -rf "$OUT/$name.ckpts/${ck##*/}.part" && cp -r "$ck" "$OUT/$name.ckpts/${ck##*/}.part" 2>/dev/null &&
          mv "$OUT/$name.ckpts/${ck##*/}.part" "$OUT/$name.ckpts/${ck##*/}"
      done
      return 0
    }
    while kill -0 "$run_pid" 2>/dev/null; do harvest; sleep 1; done
    wait "$run_pid" || { echo "run failed, see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; exit 1; }
    harvest
    base_rate=$(eval_ckpt "$run_dir/config.json" "$DATA/base.safetensors")
    echo "{\"policy\":\"$policy\",\"seed\":$seed,\"step\":0,\"pass_rate\":$base_rate}" >> "$RESULTS"
    for ck in "$OUT/$name.ckpts"/step_*; do
      step=${ck##*step_}
      rate=$(eval_ckpt "$run_dir/config.json" "$ck/model.safetensors")
      echo "{\"policy\":\"$policy\",\"seed\":$seed,\"step\":$step,\"pass_rate\":$rate}" >> "$RESULTS"
      echo "   step $step: held-out pass rate $rate"
    done
  done
done

python3 - "$OUT" "$RESULTS" "$R" <<'EOF'
import json, sys, os, statistics
out, results, rlhf = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(results)]
def tokens(policy, seed):  # cumulative generated tokens by step, from the updater's metrics
    cum, t = {0: 0}, 0
    for l in open(os.path.join(out, f"abl-{policy}-s{seed}", "metrics.jsonl")):
        m = json.loads(l); t += m.get("gen/tokens", 0); cum[m["step"]] = t
    return cum
def zero_share(policy, seed):
    last = [json.loads(l) for l in open(os.path.join(out, f"abl-{policy}-s{seed}", "metrics.jsonl"))][-1]
    return last.get("groups/dropped_zero_var_total", 0) / max(1, last.get("groups/total", 1))
policies = list(dict.fromkeys(r["policy"] for r in rows)); seeds = sorted({r["seed"] for r in rows})
curves = {}
for p in policies:
    for s in seeds:
        cum = tokens(p, s)
        pts = sorted((r["step"], r["pass_rate"]) for r in rows if r["policy"] == p and r["seed"] == s)
        curves[p, s] = [(cum.get(st, max(cum.values())), pr) for st, pr in pts]
print("\nheld-out pass rate vs generated tokens (per seed):")
for (p, s), c in curves.items():
    print(f"  {p:22s} seed {s}: " + "  ".join(f"{t/1000:.0f}k:{r:.3f}" for t, r in c))
print(f"\n{'policy':22s} {'final':>8s} {'mean_ckpts':>10s} {'tokens_to_U':>12s} {'ratio_vs_U':>10s} {'zero_share':>10s}")
for p in policies:
    fin, ratios, toks, means = [], [], [], []
    for s in seeds:
        means.append(statistics.mean(r for _, r in curves[p, s][1:]))  # every checkpoint after the base
        u = curves["uniform", s] if ("uniform", s) in curves else None
        c = curves[p, s]; fin.append(c[-1][1])
        if u:
            target = u[-1][1]
            tu = next(t for t, r in u if r >= target)
            tp = next((t for t, r in c if r >= target), None)
            toks.append(tp if tp is not None else float("inf"))
            # tu == 0: uniform's final is no better than the base model, the ratio means nothing
            ratios.append(float("nan") if tu == 0 else tp / tu if tp is not None else float("inf"))
    zs = statistics.median(zero_share(p, s) for s in seeds)
    med = lambda v: statistics.median(v) if v else float("nan")
    print(f"{p:22s} {med(fin):8.3f} {statistics.mean(means):10.3f} {med(toks):12.0f} {med(ratios):10.3f} {zs:10.3f}")
# pooled over seeds: average each policy's curve point by point (checkpoints are at the same steps; tokens
# averaged too), then the tokens at which the averaged curve first reaches uniform's averaged final
print("\npooled over seeds (curves averaged point by point):")
pooled = {}
for p in policies:
    cs = [curves[p, s] for s in seeds]
    n = min(len(c) for c in cs)
    pooled[p] = [(statistics.mean(c[i][0] for c in cs), statistics.mean(c[i][1] for c in cs)) for i in range(n)]
if "uniform" in pooled:
    target = pooled["uniform"][-1][1]
    tu = next(t for t, r in pooled["uniform"] if r >= target)
    for p in policies:
        tp = next((t for t, r in pooled[p] if r >= target), None)
        ratio = (tp / tu if tp is not None else float("inf")) if tu else float("nan")
        per_seed = []
        for s in seeds:
            u, c = curves["uniform", s], curves[p, s]
            tus = next(t for t, r in u if r >= u[-1][1]); tps = next((t for t, r in c if r >= u[-1][1]), None)
            per_seed.append("nan" if tus == 0 else "inf" if tps is None else f"{tps / tus:.2f}")
        print(f"  {p:22s} " + "  ".join(f"{t/1000:.0f}k:{r:.3f}" for t, r in pooled[p]) +
              f"   ratio_vs_U {ratio:.3f}   per seed: {' '.join(per_seed)}")
# how sure: bootstrap over seeds (resample the seeds with replacement, recompute the pooled ratio with
# the crossing interpolated linearly between checkpoints)
import random
def crossing(curve, target):
    for i, (t, r) in enumerate(curve):
        if r >= target:
            if i == 0:
                return t
            t0, r0 = curve[i - 1]
            return t0 + (t - t0) * (target - r0) / (r - r0)
    return None
def pooled_ratio(p, ss):
    pc = lambda q: [(statistics.mean(curves[q, s][i][0] for s in ss), statistics.mean(curves[q, s][i][1] for s in ss))
                    for i in range(min(len(curves[q, s]) for s in ss))]
    u, c = pc("uniform"), pc(p)
    tu, tp = crossing(u, u[-1][1]), crossing(c, u[-1][1])
    return float("nan") if not tu else (tp / tu if tp is not None else float("inf"))
if "uniform" in pooled and len(seeds) > 1:
    rng = random.Random(12345)
    print("\nbootstrap over seeds (2000 resamples; crossing interpolated between checkpoints):")
    for p in policies:
        if p == "uniform":
            continue
        point = pooled_ratio(p, seeds)
        rs = sorted(pooled_ratio(p, [rng.choice(seeds) for _ in seeds]) for _ in range(2000))
        share = sum(1 for r in rs if r <= 0.70) / len(rs)
        print(f"  {p:22s} pooled ratio {point:.3f}; 5%..95%: {rs[100]:.3f}..{rs[1899]:.3f}; "
              f"share of resamples <= 0.70: {share:.2f}")
# per kind of train prompt (UNSOLVABLE / CORRUPT runs): how often each policy served it, and the
# selector's cohesion estimate at the end of the run (selector_state.json), mean over seeds
records = {}
for l in open(os.path.join(out, "train.jsonl")):
    r = json.loads(l)
    records[r["id"]] = r
kind = {i: "unsolvable" if r.get("unsolvable") else "corrupt" if r.get("corrupt") else "clean" for i, r in records.items()}
kinds = sorted(set(kind.values()))
if len(kinds) > 1:
    print("\nper kind of train prompt (mean over seeds): groups served per prompt, cohesion estimate at the end")
    for p in policies:
        acc = {k: ([], []) for k in kinds}
        for s in seeds:
            path = os.path.join(out, f"abl-{p}-s{s}", "selector_state.json")
            if not os.path.exists(path):
                continue
            st = {q["id"]: q for q in json.load(open(path))["prompts"]}
            for k in kinds:
                ids = [i for i in kind if kind[i] == k]
                acc[k][0].append(statistics.mean(st[i]["served"] if i in st else 0 for i in ids))
                seen = [st[i]["cohesion"] for i in ids if i in st and st[i].get("cohesion_n", st[i]["groups"])]
                if seen:
                    acc[k][1].append(statistics.mean(seen))
        print(f"  {p:22s} " + "   ".join(f"{k} ({sum(1 for i in kind if kind[i] == k)}): served "
              f"{statistics.mean(acc[k][0]):.2f}, cohesion {statistics.mean(acc[k][1]):.2f}"
              for k in kinds if acc[k][0] and acc[k][1]))
# what the generated groups were, by the countdown reward itself (`rlhf reward-test`, the sandboxed
# checker) on the recorded samples of the replay log: "mixed" (some samples right: the groups RLOO can
# learn from), "solved" (all right), "failed" (none right, the prompt solvable), "unsolvable" - the
# share of generation that went to prompts that could teach. (About a second per run.)
import subprocess, tempfile
from collections import Counter
print("\ngenerated groups by the countdown reward on the recorded samples (share, all seeds): mixed = some right")
for p in policies:
    groups = []  # (prompt id, number of samples)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for s in seeds:
            log = os.path.join(out, f"abl-{p}-s{s}", "rollouts.log")
            if not os.path.exists(log):
                continue
            cat = subprocess.run([rlhf, "replay-cat", log], capture_output=True, text=True, check=True).stdout
            for line in cat.splitlines():
                g = json.loads(line)
                if g["prompt_id"] not in records:
                    continue
                groups.append((g["prompt_id"], len(g["samples"])))
                for x in g["samples"]:
                    # as the updater builds it: byte ids, a C string (ends at a NUL byte)
                    text = bytes(t for t in x["tokens"] if t < 256).split(b"\0", 1)[0].decode("latin-1")
                    f.write(json.dumps({"completion": text, "record": records[g["prompt_id"]]}) + "\n")
        samples = f.name
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"type": "countdown", "name": "countdown"}], f)
        reward_config = f.name
    try:
        scored = subprocess.run([rlhf, "reward-test", "--batch", "256", "--jsonl", reward_config, samples],
                                capture_output=True, text=True, check=True).stdout.splitlines()
    finally:
        os.unlink(samples)
        os.unlink(reward_config)
    right = [json.loads(l)["sources"]["countdown"].get("reason") == "correct" for l in scored]
    if len(right) != sum(n for _, n in groups):
        sys.exit(f"bench_prompts_ablation: error: reward-test scored {len(right)} samples, expected {sum(n for _, n in groups)}")
    c, i = Counter(), 0
    for pid, n in groups:
        ys = right[i:i + n]
        i += n
        c["unsolvable" if records[pid].get("unsolvable") else "solved" if all(ys) else "failed" if not any(ys) else "mixed"] += 1
    if groups:
        print(f"  {p:22s} " + "  ".join(f"{k} {c[k] / len(groups):.3f}" for k in ("mixed", "solved", "failed", "unsolvable")) +
              f"   ({len(groups)} groups)")
print("\nmean_ckpts: held-out pass rate averaged over the checkpoints after the base and over seeds (less noisy than"
      "\nthe final point). ratio_vs_U: generated tokens to reach uniform's final held-out pass rate / uniform's tokens for it,"
      "\nper seed, median over seeds (inf = never within the budget; nan = uniform did not beat the base). Issue 7 target: cohesion <= 0.70, final not lower.")
EOF
# the runs' curves overlaid (rlhf plot; one line per policy and seed): docs/PERFORMANCE.md shows it
runs=()
for d in "$OUT"/abl-*; do [ -f "$d/metrics.jsonl" ] && runs+=("$d"); done
if [ ${#runs[@]} -gt 0 ]; then
  "$R" plot "${runs[@]}" -o "$OUT/reward.png" --smooth 20 --metric reward/mean --metric pass_rate ||
    echo "bench_prompts_ablation: no $OUT/reward.png (rlhf plot failed)" >&2
fi
