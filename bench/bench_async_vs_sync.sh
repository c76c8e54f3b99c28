#!/usr/bin/env bash
# Async vs sync on the default task, back to back, same config, seeds and machine.
#   bench/bench_async_vs_sync.sh [STEPS]        (from the repository root, after `make`)
# Runs `rlhf run examples/configs/countdown.json` twice — mode=sync (generation waits for every new
# version, max_staleness 0) then mode=async — evaluates both final checkpoints on the held-out set,
# and prints (bench/async_vs_sync_report.py) the wall time each run needed to reach the sync run's
# final mean reward, the speedup, both held-out pass rates, and where each run's time went
# (generating, waiting, training, scoring) from its metrics.jsonl.
# The async run may go on past STEPS (ASYNC_STEPS, default 1.25 x STEPS) so that its time to the sync
# run's final reward is measured even when that reward, a noisy 10-step mean, is first crossed a few
# steps later; its held-out pass rate is evaluated at step STEPS, the same steps as the sync run's.
# SYNC2=1 adds a third run: sync with 2 OpenMP threads in the model and generator (sync's phases run
# one at a time, so each could use both cores): the best synchronous configuration on 2 cores.
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
STEPS=${1:-${STEPS:-150}}
CONFIG=${CONFIG:-examples/configs/countdown.json}
THREADS=${THREADS:-2}
ASYNC_STEPS=${ASYNC_STEPS:-$(( STEPS * 5 / 4 ))}
SYNC2=${SYNC2:-0}
STAMP=$(date +%Y%m%d-%H%M%S)
BASE=runs/data/countdown/base.safetensors
BUILD=$BUILD THREADS=$THREADS bash scripts/prepare-countdown.sh runs/data/countdown

modes="sync async"
[ "$SYNC2" = 1 ] && modes="sync async sync2"
for mode in $modes; do
  name="bench-$mode-$STAMP"
  steps=$STEPS
  extra=()
  case $mode in
    async) steps=$ASYNC_STEPS ;;
    sync2) extra=(--set model.threads=2 --set generators.threads=2) ;;
  esac
  echo "== $mode: runs/$name ($steps steps)" >&2
  "$R" run "$CONFIG" --quiet --set "name=$name" --set "mode=${mode%2}" --set "rl.steps=$steps" \
      --set "rl.checkpoint_every=$STEPS" "${extra[@]}"
  ck="runs/$name/checkpoints/step_$STEPS/model.safetensors"
  "$R" eval --config "runs/$name/config.json" --checkpoint "$ck" --threads "$THREADS" > "runs/$name/eval.json"
  "$R" eval --config "runs/$name/config.json" --checkpoint "$ck" \
      --threads "$THREADS" --samples 4 --temperature 1 > "runs/$name/eval_sampled.json"
done
"$R" eval --config "runs/bench-sync-$STAMP/config.json" --checkpoint "$BASE" --threads "$THREADS" \
    > "runs/bench-sync-$STAMP/eval_base.json"
"$R" eval --config "runs/bench-sync-$STAMP/config.json" --checkpoint "$BASE" --threads "$THREADS" \
    --samples 4 --temperature 1 > "runs/bench-sync-$STAMP/eval_base_sampled.json"
third=()
[ "$SYNC2" = 1 ] && third=("runs/bench-sync2-$STAMP")
python3 bench/async_vs_sync_report.py --steps "$STEPS" "runs/bench-sync-$STAMP" "runs/bench-async-$STAMP" "${third[@]}"
