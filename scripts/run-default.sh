#!/usr/bin/env bash
# `make run`: the embedded default job, end to end on 2 CPU cores.
#   1. countdown prompts (train + disjoint held-out set) and a pretraining corpus   (once, cached)
#   2. the base model: `rlhf init` + `rlhf pretrain` on the corpus                 (once, cached)
#   3. an asynchronous RLOO run: `rlhf run examples/configs/countdown.json` (broker, generator and
#      updater processes; live progress line; Ctrl-C stops cleanly with a final checkpoint)
#   4. held-out pass rate of the base model and of the trained one (`rlhf eval`).
# Everything lands under runs/ (runs/data/countdown for the cached data and base model).
# Knobs (environment): PRETRAIN_STEPS, RL_STEPS, RUN_NAME, CONFIG.
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
CONFIG=${CONFIG:-examples/configs/countdown.json}
DATA=runs/data/countdown
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
RL_STEPS=${RL_STEPS:-600}   # about 80 s of RL on 2 idle cores; the config says 150
RUN_NAME=${RUN_NAME:-countdown-$(date +%Y%m%d-%H%M%S)}
THREADS=${THREADS:-2}
PRETRAIN_STEPS=$PRETRAIN_STEPS THREADS=$THREADS BUILD=$BUILD bash scripts/prepare-countdown.sh "$DATA"

SETS=(--set "name=$RUN_NAME")
[ -n "$RL_STEPS" ] && SETS+=(--set "rl.steps=$RL_STEPS")
echo "== asynchronous RLOO run: runs/$RUN_NAME (config $CONFIG)"
"$R" run "$CONFIG" "${SETS[@]}"

RUN="runs/$RUN_NAME"
LAST=$(readlink "$RUN/checkpoints/latest")  # a symlink to step_N
TRAINED="$RUN/checkpoints/$LAST/model.safetensors"
echo "== held-out pass rate, 200 held-out prompts: greedy, and sampled (temperature 1, 4 samples per prompt)"
ev() { "$R" eval --config "$RUN/config.json" --threads "$THREADS" --checkpoint "$@"; }
BG=$(ev "$DATA/base.safetensors")
TG=$(ev "$TRAINED")
BS=$(ev "$DATA/base.safetensors" --samples 4 --temperature 1)
TS=$(ev "$TRAINED" --samples 4 --temperature 1)
printf 'base    greedy:  %s\ntrained greedy:  %s\nbase    sampled: %s\ntrained sampled: %s\n' "$BG" "$TG" "$BS" "$TS"
python3 - "$BG" "$TG" "$BS" "$TS" <<'EOF2' || true
import json, sys
bg, tg, bs, ts = (json.loads(a) for a in sys.argv[1:5])
print(f"held-out pass rate, greedy:  base {100*bg['pass_rate']:.1f}% -> trained {100*tg['pass_rate']:.1f}%")
print(f"held-out pass rate, sampled: base {100*bs['pass_rate']:.1f}% -> trained {100*ts['pass_rate']:.1f}%")
EOF2
