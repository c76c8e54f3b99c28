#!/usr/bin/env bash
# Issue 24's RL comparison: the countdown run with LoRA (rank 1, 8, 32) against full fine-tuning, and with
# the seed's KV sharing and local/global attention against a plain model of the same dims pretrained the
# same way. Same config, seeds, step budget and machine, back to back; one plot.
#   bench/bench_model_variants_rl.sh [STEPS]        (from the repository root, after `make`)
# Variants (VARIANTS chooses; MODES default "async", SEEDS default "1 2 3"):
#   full          examples/configs/countdown.json as it is (4 layers, rl.lr 3e-4)
#   lora_rR       the same with model.lora {rank R, alpha 32, all-linear}, rl.lr 10x full's (LORA_LR,
#                 default 3e-3: docs/MODEL.md's rule, applied to this config's full-tuning rate)
#   plain8        8 layers (countdown dims otherwise), pretrained like the 4-layer base
#   kvshare       8 layers, kv_share "seed" (examples/configs/countdown-arch-kvshare.json)
#   local         8 layers, 3 local (W 16) : 1 global NoPE (countdown-arch-local.json)
#   kvshare_local both (countdown-arch-kvshare-local.json)
# Each 8-layer base is pretrained once (cached, scripts/prepare-countdown.sh with an arch file) on the
# same corpus, steps and schedule as the 4-layer base. After each run `rlhf eval` scores every checkpoint
# greedily and the last one with 4 samples at temperature 1; bench/rl_recipes_report.py --ref full
# prints pass rate against tokens and wall time (mean and spread over seeds) and draws OUT/recipes.png.
# REUSE=DIR takes the "full" runs from an earlier bench_rl_recipes.sh output (its MODE-rloo_tis-sSEED runs
# are the same config) instead of running them again.
set -euo pipefail
. bench/countdown_run.sh
STEPS=${1:-${STEPS:-150}}
SEEDS=${SEEDS:-"1 2 3"}
MODES=${MODES:-"async"}
VARIANTS=${VARIANTS:-"full lora_r1 lora_r8 lora_r32 plain8 kvshare local kvshare_local"}
LORA_LR=${LORA_LR:-3e-3}
CONFIG=examples/configs/countdown.json
DATA=${DATA:-runs/data/countdown}   # the arch variants' bases are pretrained here (prompts: CONFIG's)
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-runs/bench-variants-$STAMP}
REUSE=${REUSE:-}
BUILD=$BUILD THREADS=$THREADS bash scripts/prepare-countdown.sh "$DATA"
mkdir -p "$OUT"

arch_file() {
  case $1 in
    plain8) echo "$OUT/countdown-arch-plain8.json" ;;
    kvshare) echo examples/configs/countdown-arch-kvshare.json ;;
    local) echo examples/configs/countdown-arch-local.json ;;
    kvshare_local) echo examples/configs/countdown-arch-kvshare-local.json ;;
    *) echo "" ;;
  esac
}
variant_args() {  # one --set argument per line
  case $1 in
    full) ;;
    lora_r[0-9]*) echo "model.lora={\"rank\":${1#lora_r},\"alpha\":32,\"targets\":\"all-linear\"}"
                  echo "rl.lr=$LORA_LR" ;;
    plain8|kvshare|local|kvshare_local)
      echo "model.base_checkpoint=$DATA/base-$1.safetensors"
      echo "model.arch=$(tr -d '\n' < "$(arch_file "$1")")" ;;
    *) echo "bench_model_variants_rl: unknown variant '$1'" >&2; return 2 ;;
  esac
}
# the plain 8-layer arch: the countdown arch with 8 layers and nothing else changed
sed 's/"n_layers": *4/"n_layers": 8/' examples/configs/countdown-arch.json > "$OUT/countdown-arch-plain8.json"
for v in $VARIANTS; do variant_args "$v" > /dev/null; done   # a typo fails before any run
for v in $VARIANTS; do
  a=$(arch_file "$v")
  if [ -n "$a" ]; then
    BUILD=$BUILD THREADS=$THREADS bash scripts/prepare-countdown.sh "$DATA" "$a" "$v"
  fi
done

for seed in $SEEDS; do
  for mode in $MODES; do
    case $mode in sync|async) ;; *) echo "bench_model_variants_rl: unknown mode '$mode'" >&2; exit 2 ;; esac
    for v in $VARIANTS; do
      name="$mode-$v-s$seed"
      if [ "$v" = full ] && [ -n "$REUSE" ] && [ -d "$REUSE/$mode-rloo_tis-s$seed" ]; then
        ln -sfn "$(cd "$REUSE/$mode-rloo_tis-s$seed" && pwd)" "$OUT/$name"
        echo "== $OUT/$name: reused $REUSE/$mode-rloo_tis-s$seed" >&2
        continue
      fi
      extra=()
      while IFS= read -r kv; do [ -n "$kv" ] && extra+=(--set "$kv"); done < <(variant_args "$v")
      countdown_run_and_eval "$name" "$mode" "$seed" ${extra[@]+"${extra[@]}"}
    done
  done
done
first=$(echo $SEEDS | cut -d' ' -f1)
firstmode=$(echo $MODES | cut -d' ' -f1)
"$R" eval --config "$OUT/$firstmode-full-s$first/config.json" \
    --checkpoint "$DATA/base.safetensors" --threads "$THREADS" > "$OUT/eval_base.json" || true
python3 bench/rl_recipes_report.py --steps "$STEPS" --ref full "$OUT"
