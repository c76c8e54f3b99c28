#!/usr/bin/env bash
# Prepares the default countdown task once (cached): train + held-out prompts, the pretraining corpus,
# and the pretrained base model, all under DIR (default runs/data/countdown). Used by `make run`
# (scripts/run-default.sh) and the bench/ scripts.
#   scripts/prepare-countdown.sh [DIR [ARCH_JSON NAME]]
# With ARCH_JSON and NAME, the base pretrained (the same corpus, steps and schedule) is that model
# config's, in DIR/base-NAME.safetensors (bench/bench_model_variants_rl.sh's 8-layer variants).
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
DATA=${1:-runs/data/countdown}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
THREADS=${THREADS:-2}
ARCH=${2:-examples/configs/countdown-arch.json}
BASE="$DATA/base.safetensors"
INIT="$DATA/init.safetensors"
if [ $# -ge 2 ]; then
  [ $# -eq 3 ] || { echo "usage: prepare-countdown.sh [DIR [ARCH_JSON NAME]]" >&2; exit 2; }
  BASE="$DATA/base-$3.safetensors"
  INIT="$DATA/init-$3.safetensors"
fi
mkdir -p "$DATA"
if [ ! -s "$DATA/train.jsonl" ] || [ ! -s "$DATA/heldout.jsonl" ]; then
  echo "== countdown prompts: $DATA/train.jsonl, $DATA/heldout.jsonl"
  "$R" prompts gen --task countdown --n 2000 --out "$DATA/train.jsonl" \
       --heldout "$DATA/heldout.jsonl" --n-heldout 200 --seed 1
fi
if [ ! -s "$DATA/corpus.jsonl" ]; then
  echo "== pretraining corpus: $DATA/corpus.jsonl"
  "$R" prompts corpus --task countdown --n 60000 --out "$DATA/corpus.txt" --seed 2 --p-correct 0.5
  # one document per line (BOS + line + EOS), as the generator prompts the model
  awk '{printf "{\"text\":\"%s\"}\n", $0}' "$DATA/corpus.txt" > "$DATA/corpus.jsonl.tmp"
  mv "$DATA/corpus.jsonl.tmp" "$DATA/corpus.jsonl"
fi
if [ ! -s "$BASE" ]; then
  echo "== pretraining the base model $BASE ($ARCH, $PRETRAIN_STEPS steps; a few minutes on 2 cores)"
  "$R" init --arch "$ARCH" --out "$INIT" --seed 1
  "$R" pretrain --model "$INIT" --data "$DATA/corpus.jsonl" --steps "$PRETRAIN_STEPS" \
       --batch 32 --seq 48 --lr 3e-3 --warmup 50 --schedule cosine --min-lr-ratio 0.1 \
       --threads "$THREADS" --log-every 100 --out "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
fi

