#!/usr/bin/env bash
# Async vs sync on the default task, back to back, same config, seeds and machine.
#   bench/bench_async_vs_sync.sh [STEPS]        (from the repository root, after `make`)
# Runs `rlhf run examples/configs/countdown.json` twice — mode=sync (generation waits for every new
# version, max_staleness 0) then mode=async — evaluates both final checkpoints on the held-out set,
# and prints (bench/async_vs_sync_report.py) the wall time each run needed to reach the sync run's
# final mean reward, the speedup, both held-out pass rates, and where each run's time went
# (generating, waiting, training, scoring) from its metrics.jsonl.
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
STEPS=${1:-${STEPS:-150}}
CONFIG=${CONFIG:-examples/configs/countdown.json}
THREADS=${THREADS:-2}
STAMP=$(date +%Y%m%d-%H%M%S)
BASE=runs/data/countdown/base.safetensors
BUILD=$BUILD THREADS=$THREADS bash scripts/prepare-countdown.sh runs/data/countdown

for mode in sync async; do
  name="bench-$mode-$STAMP"
  echo "== $mode: runs/$name ($STEPS steps)" >&2
  "$R" run "$CONFIG" --quiet --set "name=$name" --set "mode=$mode" --set "rl.steps=$STEPS"
  last=$(cat "runs/$name/checkpoints/latest")
  "$R" eval --config "runs/$name/config.json" --checkpoint "runs/$name/checkpoints/$last/model.safetensors" \
      --threads "$THREADS" > "runs/$name/eval.json"
  "$R" eval --config "runs/$name/config.json" --checkpoint "runs/$name/checkpoints/$last/model.safetensors" \
      --threads "$THREADS" --samples 4 --temperature 1 > "runs/$name/eval_sampled.json"
done
"$R" eval --config "runs/bench-sync-$STAMP/config.json" --checkpoint "$BASE" --threads "$THREADS" \
    > "runs/bench-sync-$STAMP/eval_base.json"
"$R" eval --config "runs/bench-sync-$STAMP/config.json" --checkpoint "$BASE" --threads "$THREADS" \
    --samples 4 --temperature 1 > "runs/bench-sync-$STAMP/eval_base_sampled.json"
python3 bench/async_vs_sync_report.py "runs/bench-sync-$STAMP" "runs/bench-async-$STAMP"
