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
RL_STEPS=${RL_STEPS:-}
RUN_NAME=${RUN_NAME:-countdown-$(date +%Y%m%d-%H%M%S)}
THREADS=${THREADS:-2}
PRETRAIN_STEPS=$PRETRAIN_STEPS THREADS=$THREADS BUILD=$BUILD bash scripts/prepare-countdown.sh "$DATA"

SETS=(--set "name=$RUN_NAME")
[ -n "$RL_STEPS" ] && SETS+=(--set "rl.steps=$RL_STEPS")
echo "== asynchronous RLOO run: runs/$RUN_NAME (config $CONFIG)"
"$R" run "$CONFIG" "${SETS[@]}"

RUN="runs/$RUN_NAME"
LAST=$(cat "$RUN/checkpoints/latest")
echo "== held-out pass rate (greedy, 200 held-out prompts)"
BASE_JSON=$("$R" eval --config "$RUN/config.json" --checkpoint "$DATA/base.safetensors" --threads "$THREADS")
TRAINED_JSON=$("$R" eval --config "$RUN/config.json" --checkpoint "$RUN/checkpoints/$LAST/model.safetensors" \
               --threads "$THREADS")
echo "base:    $BASE_JSON"
echo "trained: $TRAINED_JSON"
python3 - "$BASE_JSON" "$TRAINED_JSON" <<'EOF' || true
import json, sys
b, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"held-out pass rate: base {100*b['pass_rate']:.1f}% -> trained {100*t['pass_rate']:.1f}% "
      f"(reward {b['reward_mean']:.3f} -> {t['reward_mean']:.3f}, {t['prompts']} prompts)")
EOF
