#!/usr/bin/env bash
# Issue 25's draft-model target, measured where it applies: single-stream decoding of a target whose
# weights do not fit the last-level cache (memory-bound: a verify step of gamma + 1 rows reads the weights
# once, as one token does), with a draft of about 1/8 its parameters pretrained on the same corpus.
#   target  dim 384, 8 layers, ffn 1024: 14.4 M parameters, 58 MB of fp32 weights (the L3 of the machines
#           here is 32 MB); pretrained here on the countdown corpus (cached as DATA/target-14m.safetensors)
#   draft   DRAFT_KIND "shallow" (default): dim 256, 2 layers, ffn 768: 1.83 M parameters (1/7.8), pretrained
#           here like the countdown bases (1,000 steps; DATA/base-draft-2x256.safetensors); "deep": the 8-layer
#           dim-128 base of bench_model_variants_rl.sh (1.77 M, 1/8.1; DATA/base-plain8.safetensors). Same
#           parameter count, but a draft step costs per layer: the shallow one is the faster drafter.
# Then bench/bench_spec.sh with TARGET / DRAFT, one stream, plain vs draft (and n-gram), interleaved repeats.
#   bash bench/bench_spec_memory_bound.sh [REPEATS] [PRETRAIN_STEPS]     (defaults 5, 600)
set -euo pipefail
REPEATS=${1:-5}
STEPS=${2:-600}
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
DATA=${DATA:-runs/data/countdown}
THREADS=${THREADS:-2}
[ -s "$DATA/base.safetensors" ] || BUILD="$BUILD" bash scripts/prepare-countdown.sh "$DATA"
DRAFT_KIND=${DRAFT_KIND:-shallow}
if [ "$DRAFT_KIND" = deep ]; then
  DRAFT=$DATA/base-plain8.safetensors
  if [ ! -s "$DRAFT" ]; then
    tmp=$(mktemp)
    sed 's/"n_layers": *4/"n_layers": 8/' examples/configs/countdown-arch.json > "$tmp"
    BUILD="$BUILD" bash scripts/prepare-countdown.sh "$DATA" "$tmp" plain8
    rm -f "$tmp"
  fi
else
  DRAFT=$DATA/base-draft-2x256.safetensors
  if [ ! -s "$DRAFT" ]; then
    tmp=$(mktemp)
    printf '{"dim": 256, "n_layers": 2, "n_heads": 4, "ffn_dim": 768, "vocab_size": 259, "max_seq_len": 48}\n' > "$tmp"
    BUILD="$BUILD" bash scripts/prepare-countdown.sh "$DATA" "$tmp" draft-2x256
    rm -f "$tmp"
  fi
fi
TARGET=$DATA/target-14m.safetensors
if [ ! -s "$TARGET" ]; then
  echo "== pretraining the target model $TARGET ($STEPS steps of 32x48 on $DATA/corpus.jsonl, $THREADS threads)"
  arch=$(mktemp)
  printf '{"dim": 384, "n_layers": 8, "n_heads": 6, "ffn_dim": 1024, "vocab_size": 259, "max_seq_len": 48}\n' > "$arch"
  "$R" init --arch "$arch" --out "$DATA/target-14m-init.safetensors" --seed 5
  "$R" pretrain --model "$DATA/target-14m-init.safetensors" --data "$DATA/corpus.jsonl" --steps "$STEPS" --batch 32 \
       --seq 48 --lr 1e-3 --warmup 50 --schedule cosine --min-lr-ratio 0.1 --threads "$THREADS" \
       --log-every 50 --out "$TARGET.tmp"
  mv "$TARGET.tmp" "$TARGET"
  rm -f "$arch"
fi
TARGET="$TARGET" DRAFT="$DRAFT" STREAMS=1 THREADS=1 MODES="${MODES:-plain draft ngram}" \
  BUILD="$BUILD" DATA="$DATA" bash bench/bench_spec.sh "$REPEATS"
