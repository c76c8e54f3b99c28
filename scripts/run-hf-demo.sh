#!/usr/bin/env bash
# The countdown job on a real vocabulary, through Hugging Face formats end to end (docs/HF_MODELS.md):
#   1. the countdown prompts and corpus of `make run` (scripts/prepare-countdown.sh, cached);
#   2. a byte-level BPE tokenizer learned from that corpus (scripts/train_bpe_tokenizer.py);
#   3. a model of that vocabulary: `rlhf init`, exported with `rlhf export --hf --tokenizer-from`, pretrained
#      with `rlhf pretrain` on the HF directory (its tokenizer.json), exported again: the base is an HF
#      directory (config.json, model.safetensors in bf16, tokenizer files), as a downloaded model would be;
#   4. `rlhf run examples/configs/countdown-bpe.json` on it (checkpoints also written as HF directories);
#   5. held-out pass rates of the base and the trained model (`rlhf eval`).
# Everything lands under runs/ (runs/data/countdown-bpe for the tokenizer and base). Knobs: PRETRAIN_STEPS,
# RL_STEPS, RUN_NAME, THREADS.
set -euo pipefail
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
DATA=runs/data/countdown
BPE=runs/data/countdown-bpe
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
RL_STEPS=${RL_STEPS:-600}
RUN_NAME=${RUN_NAME:-countdown-bpe-$(date +%Y%m%d-%H%M%S)}
THREADS=${THREADS:-2}
CONFIG=examples/configs/countdown-bpe.json
PRETRAIN_STEPS=$PRETRAIN_STEPS THREADS=$THREADS BUILD=$BUILD bash scripts/prepare-countdown.sh "$DATA"
mkdir -p "$BPE"
if [ ! -s "$BPE/tokenizer/tokenizer.json" ]; then
  echo "== byte-level BPE tokenizer learned from $DATA/corpus.txt"
  /usr/bin/python3 scripts/train_bpe_tokenizer.py "$DATA/corpus.txt" "$BPE/tokenizer" --merges 500
fi
if [ ! -s "$BPE/base-hf/config.json" ]; then
  V=$(/usr/bin/python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print(max(a["id"] for a in t["added_tokens"]) + 1)' \
      "$BPE/tokenizer/tokenizer.json")
  echo "== base model: vocabulary $V, pretrained $PRETRAIN_STEPS steps on the corpus with that tokenizer"
  printf '{"dim": 128, "n_layers": 4, "n_heads": 4, "ffn_dim": 384, "vocab_size": %d, "max_seq_len": 48}\n' "$V" \
    >"$BPE/arch.json"
  rm -rf "$BPE/init-hf" "$BPE/base-hf.tmp"
  "$R" init --arch "$BPE/arch.json" --out "$BPE/init.safetensors" --seed 1
  "$R" export "$BPE/init.safetensors" --hf "$BPE/init-hf" --dtype f32 --tokenizer-from "$BPE/tokenizer"
  "$R" pretrain --model "$BPE/init-hf" --data "$DATA/corpus.jsonl" --steps "$PRETRAIN_STEPS" \
       --batch 32 --seq 32 --lr 3e-3 --warmup 50 --schedule cosine --min-lr-ratio 0.1 \
       --threads "$THREADS" --log-every 100 --out "$BPE/base.safetensors"
  "$R" export "$BPE/base.safetensors" --hf "$BPE/base-hf.tmp" --dtype bf16 --tokenizer-from "$BPE/tokenizer"
  mv "$BPE/base-hf.tmp" "$BPE/base-hf"
fi
SETS=(--set "name=$RUN_NAME")
[ -n "$RL_STEPS" ] && SETS+=(--set "rl.steps=$RL_STEPS")
echo "== asynchronous RLOO run on the HF directory: runs/$RUN_NAME (config $CONFIG)"
"$R" run "$CONFIG" "${SETS[@]}"
RUN="runs/$RUN_NAME"
LAST=$(readlink "$RUN/checkpoints/latest")  # a symlink to step_N
echo "== held-out pass rate, 200 held-out prompts (greedy; sampled at temperature 1, 4 samples per prompt)"
ev() { "$R" eval --config "$RUN/config.json" --threads "$THREADS" --checkpoint "$@"; }
BG=$(ev "$BPE/base-hf")
TG=$(ev "$RUN/checkpoints/$LAST/hf")
BS=$(ev "$BPE/base-hf" --samples 4 --temperature 1)
TS=$(ev "$RUN/checkpoints/$LAST/hf" --samples 4 --temperature 1)
printf 'base    greedy:  %s\ntrained greedy:  %s\nbase    sampled: %s\ntrained sampled: %s\n' "$BG" "$TG" "$BS" "$TS"
echo "trained model as a Hugging Face directory: $RUN/checkpoints/$LAST/hf"
