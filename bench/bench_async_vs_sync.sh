#!/usr/bin/env bash
# Async vs sync on the default task, back to back, same config, seeds and machine.
#   bench/bench_async_vs_sync.sh [STEPS]        (from the repository root, after `make`)
# For every seed in SEEDS (default "1 2 3") runs `rlhf run examples/configs/countdown.json` with
# mode=sync (generation waits for every new version, max_staleness 0) and then mode=async, evaluates
# both at step STEPS on the held-out set, and prints (bench/async_vs_sync_report.py) the wall time
# each mode needed to reach the sync runs' final mean reward (on the seed-averaged reward curve: one
# run's 10-step mean moves by +-0.05 from seed to seed, as much as the last 50 steps gain), the
# speedup, the held-out pass rates, and where each run's time went (generating, waiting, training,
# scoring) from its metrics.jsonl.
# The async runs may go on past STEPS (ASYNC_STEPS, default 1.25 x STEPS) so that their time to the
# sync runs' final reward is measured even when it is first crossed a few steps later. Every run keeps a
# checkpoint every CK_EVERY steps (default 25) and `rlhf eval` scores each greedily on the held-out set
# after the run (eval.every is 0, so no evaluation runs inside the timed runs): the held-out pass rate at
# equal steps (step STEPS) and at equal wall time (the sync runs' median wall time at STEPS, interpolated
# between checkpoints). OUT sets the output directory (default runs/bench-avs-DATE).
# SYNC2=1 adds a third mode: sync with 2 OpenMP threads in the model and generator (sync's phases run
# one at a time, so each could use both cores).
# MODES chooses the modes (default "sync async"; sync must be among them, it sets the target). Besides
# sync, async and sync2 (above), the staleness variants of issue 19, all async:
#   async-noinf        TIS, new weights applied only between batches (generators.inflight_updates false)
#   dppo-rec, dppo-int decoupled PPO with the proximal policy recomputed / interpolated, in-flight updates on
#   dppo-rec-noinf, dppo-int-noinf   the same with in-flight updates off
# ("async" is TIS with in-flight updates on, the config's default.)
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
STEPS=${1:-${STEPS:-150}}
SEEDS=${SEEDS:-"1 2 3"}
CONFIG=${CONFIG:-examples/configs/countdown.json}
THREADS=${THREADS:-2}
ASYNC_STEPS=${ASYNC_STEPS:-$(( STEPS * 5 / 4 ))}
SYNC2=${SYNC2:-0}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-runs/bench-avs-$STAMP}
CK_EVERY=${CK_EVERY:-25}   # STEPS must be a multiple
BASE=runs/data/countdown/base.safetensors
BUILD=$BUILD THREADS=$THREADS bash scripts/prepare-countdown.sh runs/data/countdown
mkdir -p "$OUT"

modes=${MODES:-"sync async"}
[ "$SYNC2" = 1 ] && modes="$modes sync2"
for seed in $SEEDS; do
  for mode in $modes; do
    name="$mode-s$seed"
    steps=$STEPS
    extra=()
    run_mode=async
    case $mode in
      sync) run_mode=sync ;;
      async) steps=$ASYNC_STEPS ;;
      async-noinf) steps=$ASYNC_STEPS; extra=(--set generators.inflight_updates=false) ;;
      dppo-rec|dppo-int|dppo-rec-noinf|dppo-int-noinf)
        steps=$ASYNC_STEPS
        prox=recompute; [ "${mode#dppo-int}" != "$mode" ] && prox=interpolate
        extra=(--set rl.loss=decoupled_ppo --set "rl.prox=$prox")
        [ "${mode%-noinf}" != "$mode" ] && extra+=(--set generators.inflight_updates=false) ;;
      sync2) run_mode=sync; extra=(--set model.threads=2 --set generators.threads=2) ;;
      *) echo "bench_async_vs_sync: unknown mode '$mode'" >&2; exit 2 ;;
    esac
    echo "== $OUT/$name ($steps steps)" >&2
    "$R" run "$CONFIG" --quiet --set "name=$name" --set "run_dir=$OUT/$name" --set "mode=$run_mode" \
        --set "rl.steps=$steps" --set "rl.seed=$seed" --set "rl.checkpoint_every=$CK_EVERY" \
        --set checkpoint.keep=1000 --set eval.every=0 ${extra[@]+"${extra[@]}"}
    # every checkpoint greedily on the held-out set: the pass rate at equal steps (step STEPS) and, by
    # interpolation between checkpoints, at the sync runs' wall time
    for ((s = CK_EVERY; s <= steps; s += CK_EVERY)); do
      "$R" eval --config "$OUT/$name/config.json" --checkpoint "$OUT/$name/checkpoints/step_$s/model.safetensors" \
          --threads "$THREADS" > "$OUT/$name/eval_step_$s.json"
    done
    ck="$OUT/$name/checkpoints/step_$STEPS/model.safetensors"
    cp "$OUT/$name/eval_step_$STEPS.json" "$OUT/$name/eval.json"
    "$R" eval --config "$OUT/$name/config.json" --checkpoint "$ck" \
        --threads "$THREADS" --samples 4 --temperature 1 > "$OUT/$name/eval_sampled.json"
  done
done
first=$(echo $SEEDS | cut -d' ' -f1)
"$R" eval --config "$OUT/sync-s$first/config.json" --checkpoint "$BASE" --threads "$THREADS" > "$OUT/eval_base.json"
"$R" eval --config "$OUT/sync-s$first/config.json" --checkpoint "$BASE" --threads "$THREADS" \
    --samples 4 --temperature 1 > "$OUT/eval_base_sampled.json"
python3 bench/async_vs_sync_report.py --steps "$STEPS" "$OUT"
# every run's reward curve overlaid (20-step trailing mean), by step and by wall time (rlhf plot, gnuplot;
# docs/PERFORMANCE.md)
"$R" plot "$OUT"/*-s[0-9]* -o "$OUT/reward.png" --smooth 20 --metric reward/mean --metric pass_rate ||
  echo "bench_async_vs_sync: no $OUT/reward.png (rlhf plot failed)" >&2
"$R" plot "$OUT"/*-s[0-9]* -o "$OUT/reward_wall.png" --smooth 20 --x wall --metric reward/mean --metric pass_rate ||
  echo "bench_async_vs_sync: no $OUT/reward_wall.png (rlhf plot failed)" >&2
# one curve per mode: the seed-mean reward and pass rate by step and by (seed-median) wall time
# (OUT/means/MODE, written by the report)
for x in step wall; do
  "$R" plot "$OUT"/means/* -o "$OUT/reward_means_$x.png" --smooth 20 --x $x --metric reward/mean --metric pass_rate ||
    echo "bench_async_vs_sync: no $OUT/reward_means_$x.png (rlhf plot failed)" >&2
done
