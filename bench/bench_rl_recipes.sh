#!/usr/bin/env bash
# The RL recipes of docs/RL.md side by side on the countdown task (issue 26): same config, token budget,
# seeds and machine, in sync and in async mode, back to back.
#   bench/bench_rl_recipes.sh [STEPS]        (from the repository root, after `make`)
# Every recipe × mode × seed is one `rlhf run examples/configs/countdown.json` of STEPS steps (the same
# rl.k × rl.prompts_per_step samples per step, so the same sample budget; tokens are counted from
# metrics.jsonl) with a checkpoint every CK_EVERY steps and no evaluation inside the timed run
# (eval.every 0). After each run `rlhf eval` scores every checkpoint greedily on the held-out set
# (eval.json per checkpoint) and the last one also with 4 samples at temperature 1; then
# bench/rl_recipes_report.py prints pass rate against tokens and wall time (mean and spread over seeds)
# and draws OUT/recipes.png (gnuplot).
# RECIPES, MODES (default "sync async"), SEEDS (default "1 2 3 4 5 6") choose what runs; the recipes:
#   rloo_tis      RLOO advantages, truncated importance sampling, token mean (the seed's, the default)
#   grpo          GRPO: group-normalised advantages, PPO-clip, per-sequence token mean
#   dr_grpo       Dr. GRPO: mean-centred advantages, PPO-clip, constant length divisor
#   dapo          DAPO: GRPO advantages, PPO-clip with clip-higher (0.2 / 0.28), token mean, overlong
#                 shaping (the last 4 of max_tokens 12, penalty 1), zero-spread groups dropped (always)
#   gspo          GSPO: GRPO advantages, the sequence-level ratio clipped at 3e-4 / 4e-4 (the paper's)
#   cispo         CISPO: GRPO advantages, the importance weight clipped above at 1 + 2 (a constant), token mean
#   reinforce_pp  REINFORCE++ (group baseline, batch-whitened advantages), PPO-clip, token mean
#   ppo_epochs    RLOO with PPO-clip and 2 epochs over the step's batch (one mini-batch)
set -euo pipefail
. bench/countdown_run.sh
STEPS=${1:-${STEPS:-150}}
SEEDS=${SEEDS:-"1 2 3 4 5 6"}
MODES=${MODES:-"sync async"}
RECIPES=${RECIPES:-"rloo_tis grpo dr_grpo dapo gspo cispo reinforce_pp ppo_epochs"}
CONFIG=${CONFIG:-examples/configs/countdown.json}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-runs/bench-recipes-$STAMP}
BUILD=$BUILD THREADS=$THREADS bash scripts/prepare-countdown.sh runs/data/countdown
mkdir -p "$OUT"

recipe_args() {
  case $1 in
    rloo_tis) ;;
    grpo) echo "rl.advantage=grpo rl.loss=ppo_clip rl.loss_agg=seq_mean_token_mean" ;;
    dr_grpo) echo "rl.advantage=dr_grpo rl.loss=ppo_clip rl.loss_agg=seq_mean_token_sum_norm" ;;
    dapo) echo "rl.advantage=grpo rl.loss=ppo_clip rl.clip_eps_low=0.2 rl.clip_eps_high=0.28 rl.loss_agg=token_mean" \
               "rl.overlong.buffer=4 rl.overlong.penalty=1.0" ;;
    gspo) echo "rl.advantage=grpo rl.loss=gspo rl.clip_eps_low=0.0003 rl.clip_eps_high=0.0004 rl.loss_agg=seq_mean_token_mean" ;;
    cispo) echo "rl.advantage=grpo rl.loss=cispo rl.clip_eps_high=2.0 rl.loss_agg=token_mean" ;;
    reinforce_pp) echo "rl.advantage=reinforce_pp rl.loss=ppo_clip rl.loss_agg=token_mean" ;;
    ppo_epochs) echo "rl.loss=ppo_clip rl.ppo_epochs=2 rl.mini_batches=1" ;;
    *) echo "bench_rl_recipes: unknown recipe '$1'" >&2; return 2 ;;
  esac
}
for r in $RECIPES; do recipe_args "$r" > /dev/null; done   # a typo fails before any run

# seed-major, so that a stopped bench still has every recipe for its first seeds
for seed in $SEEDS; do
  for mode in $MODES; do
    case $mode in sync|async) ;; *) echo "bench_rl_recipes: unknown mode '$mode'" >&2; exit 2 ;; esac
    for recipe in $RECIPES; do
      name="$mode-$recipe-s$seed"
      extra=()
      for kv in $(recipe_args "$recipe"); do extra+=(--set "$kv"); done
      countdown_run_and_eval "$name" "$mode" "$seed" ${extra[@]+"${extra[@]}"}
    done
  done
done
first=$(echo $SEEDS | cut -d' ' -f1)
firstmode=$(echo $MODES | cut -d' ' -f1)
firstrecipe=$(echo $RECIPES | cut -d' ' -f1)
"$R" eval --config "$OUT/$firstmode-$firstrecipe-s$first/config.json" \
    --checkpoint runs/data/countdown/base.safetensors --threads "$THREADS" > "$OUT/eval_base.json"
python3 bench/rl_recipes_report.py --steps "$STEPS" "$OUT"
