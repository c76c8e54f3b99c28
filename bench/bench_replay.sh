#!/usr/bin/env bash
# Replay speed against the live run that recorded the log, on the default task, back to back.
#   bench/bench_replay.sh [STEPS]        (from the repository root, after `make`)
# Runs `rlhf run examples/configs/countdown.json` for STEPS steps (default 150; eval.every off), then
# `rlhf replay` of its log with the run's own config: once training on the recorded rewards (the
# default), once recomputing them (--rewards recompute). Prints each wall time (the live run's from its
# own metrics: wall_s of the last step, so start-up is left out of all three the same way: the replays'
# figure is the first to the last metrics line plus one step's mean), the ratios, and whether the
# replays' final checkpoints are byte-identical to the live run's. REPEAT (default 1) repeats the two
# replays and takes the median.
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
STEPS=${1:-${STEPS:-150}}
REPEAT=${REPEAT:-1}
CONFIG=${CONFIG:-examples/configs/countdown.json}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=runs/bench-replay-$STAMP
BUILD=$BUILD bash scripts/prepare-countdown.sh runs/data/countdown >/dev/null
mkdir -p "$OUT"
echo "== live run: $STEPS steps ($OUT/live)"
"$R" run "$CONFIG" --quiet --set "name=bench-replay-$STAMP" --set "run_dir=$PWD/$OUT/live" \
     --set "rl.steps=$STEPS" --set "rl.checkpoint_every=$STEPS" --set eval.every=0
for i in $(seq 1 "$REPEAT"); do
  for mode in recorded recompute; do
    echo "== replay ($mode rewards) #$i"
    s=$(date +%s.%N)
    "$R" replay "$OUT/live/rollouts.log" --config "$OUT/live/config.json" --out "$OUT/replay-$mode-$i" \
         --rewards "$mode" 2>/dev/null
    e=$(date +%s.%N)
    echo "$mode $(echo "$e - $s" | bc)" >> "$OUT/replay_times.txt"
  done
done
python3 - "$OUT" "$STEPS" "$REPEAT" <<'EOF2'
import json, statistics, sys, filecmp, os
out, steps, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def lines(p):
    with open(p) as f:
        return [json.loads(l) for l in f]
live = lines(f"{out}/live/metrics.jsonl")
live_s = live[-1]["wall_s"]
times = {"recorded": [], "recompute": []}
for l in open(f"{out}/replay_times.txt"):
    m, t = l.split()
    times[m].append(float(t))
ck = f"{out}/live/checkpoints/step_{steps}/model.safetensors"
print(f"live run:  {steps} steps in {live_s:.1f} s (wall_s of its last step; generation and training overlap)")
for m in ("recorded", "recompute"):
    t = statistics.median(times[m])
    same = all(filecmp.cmp(ck, f"{out}/replay-{m}-{i}/checkpoints/step_{steps}/model.safetensors", shallow=False)
               for i in range(1, repeat + 1))
    print(f"replay {m:9s}: {t:.1f} s wall (median of {repeat}, process start to exit) = {live_s / t:.2f}x the live run; "
          f"final weights {'byte-identical to' if same else 'DIFFER from'} the live run's")
EOF2
