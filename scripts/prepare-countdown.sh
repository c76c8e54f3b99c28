#!/usr/bin/env bash
# Prepares the default countdown task once (cached): train + held-out prompts, the pretraining corpus,
# and the pretrained base model, all under DIR (default runs/data/countdown). Used by `make run`
# (scripts/run-default.sh) and bench/bench_async_vs_sync.sh.
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
DATA=${1:-runs/data/countdown}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
THREADS=${THREADS:-2}
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
if [ ! -s "$DATA/base.safetensors" ]; then
  echo "== pretraining the base model ($PRETRAIN_STEPS steps; a few minutes on 2 cores)"
  "$R" init --arch examples/configs/countdown-arch.json --out "$DATA/init.safetensors" --seed 1
  "$R" pretrain --model "$DATA/init.safetensors" --data "$DATA/corpus.jsonl" --steps "$PRETRAIN_STEPS" \
       --batch 32 --seq 48 --lr 3e-3 --warmup 50 --schedule cosine --min-lr-ratio 0.1 \
       --threads "$THREADS" --log-every 100 --out "$DATA/base.safetensors.tmp"
  mv "$DATA/base.safetensors.tmp" "$DATA/base.safetensors"
fi

