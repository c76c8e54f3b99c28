#!/usr/bin/env bash
# Sampling benchmark with its PyTorch peer in one script (same shape, thread count, token counts):
#   bash bench/bench_model_sample.sh [THREADS] [REPEATS]      (BUILD=build by default)
# Prints both programs' per-run lines, then the ratios of the medians.
set -euo pipefail
THREADS=${1:-2}
REPEATS=${2:-3}
BUILD=${BUILD:-build}
BIN="$BUILD/bench/bench_model_sample"
[ -x "$BIN" ] || { echo "bench_model_sample.sh: error: $BIN not built (make BUILD=$BUILD bench)" >&2; exit 1; }
ours=$(mktemp); peer=$(mktemp)
trap 'rm -f "$ours" "$peer"' EXIT
echo "== rlhf (C): $BIN --threads $THREADS --repeats $REPEATS"
"$BIN" --threads "$THREADS" --repeats "$REPEATS" | tee "$ours"
echo "== PyTorch peer: bench/bench_model_sample_torch.py --threads $THREADS --repeats $REPEATS"
/usr/bin/python3 bench/bench_model_sample_torch.py --threads "$THREADS" --repeats "$REPEATS" | tee "$peer"
s_ours=$(sed -nE 's/^single-stream: median ([0-9.]+).*/\1/p' "$ours")
b_ours=$(sed -nE 's/^batched x[0-9]+: median ([0-9.]+).*/\1/p' "$ours")
s_peer=$(sed -nE 's/^torch single-stream: median ([0-9.]+).*/\1/p' "$peer")
b_peer=$(sed -nE 's/^torch batched x[0-9]+: median ([0-9.]+).*/\1/p' "$peer")
cs_ours=$(sed -nE 's/^per CPU-second: single-stream ([0-9.]+), batched x[0-9]+ ([0-9.]+).*/\1/p' "$ours")
cb_ours=$(sed -nE 's/^per CPU-second: single-stream ([0-9.]+), batched x[0-9]+ ([0-9.]+).*/\2/p' "$ours")
cs_peer=$(sed -nE 's/^torch per CPU-second: single-stream ([0-9.]+), batched x[0-9]+ ([0-9.]+).*/\1/p' "$peer")
cb_peer=$(sed -nE 's/^torch per CPU-second: single-stream ([0-9.]+), batched x[0-9]+ ([0-9.]+).*/\2/p' "$peer")
echo "== ratios (medians; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
awk -v so="$s_ours" -v bo="$b_ours" -v sp="$s_peer" -v bp="$b_peer" \
    -v cso="$cs_ours" -v cbo="$cb_ours" -v csp="$cs_peer" -v cbp="$cb_peer" 'BEGIN {
  printf "single-stream: rlhf %.1f vs torch %.1f tokens/s = %.2fx\n", so, sp, so / sp;
  printf "batched:       rlhf %.1f vs torch %.1f tokens/s = %.2fx\n", bo, bp, bo / bp;
  printf "batched / single-stream: rlhf %.2fx, torch %.2fx\n", bo / so, bp / sp;
  printf "per CPU-second: single-stream rlhf %.1f vs torch %.1f = %.2fx; batched rlhf %.1f vs torch %.1f = %.2fx\n",
         cso, csp, cso / csp, cbo, cbp, cbo / cbp }'
