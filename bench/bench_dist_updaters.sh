#!/usr/bin/env bash
# Data-parallel updaters (updaters.count) against one, on this machine, back to back.
#   bench/bench_dist_updaters.sh [BASE.safetensors] [STEPS]     (from the repository root, after `make`)
# Times STEPS RL steps (build/bin/dist_step_check: 10 groups x 4 samples per step, completions of 1..8
# tokens after 3..5 prompt tokens, PPO-clip, KL penalty; the time of updater_policy_train_step on rank 0,
# broadcast and gradient sums included) for 1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread
# (mpirun, shared memory). BASE defaults to the default task's pretrained model
# (runs/data/countdown/base.safetensors: dim 128, 4 layers). Prints the median of REPEAT (default 3)
# runs of each and the ratios. (That the ranks compute what one updater does: tests/updater/test_dist.c; over
# many steps at a high learning rate any change of summation order, threads included, moves Adam's updates.)
set -euo pipefail
BUILD=${BUILD:-build}
BASE=${1:-runs/data/countdown/base.safetensors}
STEPS=${2:-20}
REPEAT=${REPEAT:-3}
P="$BUILD/bin/dist_step_check"
OUT=$(mktemp -d /tmp/bench_dist_XXXXXX)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
       OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
run() { # name, ranks, threads
  local t
  if [ "$2" = 1 ]; then t=$("$P" "$BASE" "$OUT/$1" "$STEPS" "$3" 2>&1 | awk '/train_s/{print $2}')
  else t=$(mpirun -np "$2" --bind-to none "$P" "$BASE" "$OUT/$1" "$STEPS" "$3" 2>&1 | awk '/train_s/{print $2}'); fi
  echo "$t"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; base $BASE; $STEPS steps"
declare -A med
for cfg in "1 1" "1 2" "2 1"; do
  set -- $cfg
  ts=()
  for i in $(seq 1 "$REPEAT"); do ts+=("$(run "r$1t$2" "$1" "$2")"); done
  m=$(printf '%s\n' "${ts[@]}" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  med["$1x$2"]=$m
  printf '%d rank(s) x %d thread(s): median %.3f s for %d steps (%.1f ms/step)  [%s]\n' "$1" "$2" "$m" "$STEPS" \
    "$(echo "$m * 1000 / $STEPS" | bc -l)" "${ts[*]}"
done
printf 'ratio 2 ranks x 1 thread vs 1 rank x 2 threads: %.2fx faster; vs 1 rank x 1 thread: %.2fx\n' \
  "$(echo "${med[1x2]} / ${med[2x1]}" | bc -l)" "$(echo "${med[1x1]} / ${med[2x1]}" | bc -l)"
rm -rf "$OUT"
