# bench/countdown_run.sh — sourced by bench_rl_recipes.sh and bench_model_variants_rl.sh: one measured
# countdown run and its held-out evaluation, the same way for every benchmark that compares runs.
#   countdown_run_and_eval NAME MODE SEED [--set KEY=VALUE ...]
# Sets the defaults the function needs (BUILD, R = the rlhf binary, CK_EVERY, THREADS; each overridable
# from the environment); the caller sets CONFIG, OUT and STEPS. Runs `rlhf run CONFIG` into OUT/NAME
# with a checkpoint every CK_EVERY steps and no evaluation inside the timed run (eval.every 0), then
# `rlhf eval` scores every checkpoint greedily on the held-out set (OUT/NAME/eval_step_N.json) and the
# last one also with 4 samples at temperature 1 (OUT/NAME/eval_sampled.json).
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
CK_EVERY=${CK_EVERY:-25}
THREADS=${THREADS:-2}

countdown_run_and_eval() {
  local name=$1 mode=$2 seed=$3 s
  shift 3
  echo "== $OUT/$name ($STEPS steps)" >&2
  "$R" run "$CONFIG" --quiet --set "name=$name" --set "run_dir=$OUT/$name" --set "mode=$mode" \
      --set "rl.steps=$STEPS" --set "rl.seed=$seed" --set "rl.checkpoint_every=$CK_EVERY" --set checkpoint.keep=1000 \
      --set eval.every=0 "$@"
  for ((s = CK_EVERY; s <= STEPS; s += CK_EVERY)); do
    "$R" eval --config "$OUT/$name/config.json" --checkpoint "$OUT/$name/checkpoints/step_$s/model.safetensors" \
        --threads "$THREADS" > "$OUT/$name/eval_step_$s.json"
  done
  "$R" eval --config "$OUT/$name/config.json" --checkpoint "$OUT/$name/checkpoints/step_$STEPS/model.safetensors" \
      --threads "$THREADS" --samples 4 --temperature 1 > "$OUT/$name/eval_sampled.json"
}
