#!/usr/bin/env bash
# What users feel of generation speed: `make run`'s asynchronous run (examples/configs/countdown.json on
# the cached base model) with two rlhf binaries, alternating, same config and steps; per run the
# generators' speed (tokens sampled per second of sampling: metrics.jsonl gen/tokens over gen/seconds,
# the groups' sampling times), the tokens trained per second (gen/tokens_per_s: the run's pace, which
# the updater sets when it is the slower side), the wall time, the mean staleness and the last reward.
#
#   bash bench/bench_run_generation.sh BEFORE_RLHF AFTER_RLHF [RL_STEPS] [ROUNDS] [-- --set KEY=VALUE ...]
#     BEFORE_RLHF / AFTER_RLHF   two rlhf binaries (e.g. one built from an older commit in a git worktree)
#     RL_STEPS (default 150), ROUNDS (default 2); extra --set arguments go to every run
#     AFTER_BF16=1  a third run per round: AFTER with generators.weights = "bf16"
# Needs runs/data/countdown (make run prepares it: scripts/prepare-countdown.sh). Runs land under
# runs/bench-gen-*; they are removed at the end.
set -euo pipefail
me=bench_run_generation.sh
[ $# -ge 2 ] || { echo "usage: $me BEFORE_RLHF AFTER_RLHF [RL_STEPS] [ROUNDS] [-- --set K=V ...]" >&2; exit 2; }
BEFORE=$1
AFTER=$2
shift 2
STEPS=150
ROUNDS=2
[ $# -gt 0 ] && [ "$1" != "--" ] && { STEPS=$1; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { ROUNDS=$1; shift; }
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
EXTRA=("$@")
for b in "$BEFORE" "$AFTER"; do [ -x "$b" ] || { echo "$me: error: $b is not an executable" >&2; exit 2; }; done
[ -s runs/data/countdown/base.safetensors ] || { echo "$me: error: runs/data/countdown/base.safetensors missing (run make run once)" >&2; exit 1; }
CONFIG=examples/configs/countdown.json
created=()
trap 'for d in "${created[@]}"; do rm -rf "$d"; done' EXIT

one() { # label binary round [more --set arguments]
  local name="bench-gen-$1-$3-$$" label=$1 bin=$2
  shift 3
  created+=("runs/$name")
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" run "$CONFIG" --quiet --set "name=$name" --set "rl.steps=$STEPS" "${EXTRA[@]}" "$@" >/dev/null 2>&1 ||
    { echo "$me: error: the $label run failed (runs/$name/logs)" >&2; trap - EXIT; exit 1; }
  t1=$(date +%s.%N)
  python3 - "$label" "runs/$name/metrics.jsonl" "$t0" "$t1" <<'EOF'
import json, sys
label, path, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(l) for l in open(path) if l.strip()]
gen = [r["gen/tokens_per_s"] for r in rows if "gen/tokens_per_s" in r]
toks = sum(r.get("gen/tokens", 0) for r in rows)
secs = sum(r.get("gen/seconds", 0) for r in rows)
stale = [r["staleness/mean"] for r in rows if "staleness/mean" in r]
print(f"{label:10s} steps {len(rows)}: sampling {toks / secs:8.1f} tokens per sampling-second, "
      f"trained {sum(gen)/len(gen):7.1f} tokens/s (mean over steps), "
      f"wall {t1 - t0:6.1f} s, staleness {sum(stale)/len(stale):.2f}, reward at the end {rows[-1].get('reward/mean', float('nan')):.3f}")
EOF
}

echo "== $me: $STEPS steps, $ROUNDS rounds, alternating; ${EXTRA[*]:-no overrides}"
echo "   before: $BEFORE ($("$BEFORE" --version 2>/dev/null | head -1 || echo 'no --version'))"
echo "   after:  $AFTER ($("$AFTER" --version 2>/dev/null | tr '\n' ' '))"
for r in $(seq 1 "$ROUNDS"); do
  one before "$BEFORE" "$r"
  one after "$AFTER" "$r"
  [ -n "${AFTER_BF16:-}" ] && one after-bf16 "$AFTER" "$r" --set 'generators.weights="bf16"'
  true
done
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
