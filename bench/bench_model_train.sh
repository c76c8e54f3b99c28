#!/usr/bin/env bash
# bench/bench_model_train.sh — training-step benchmark (forward + backward + AdamW) of the C model
# against the PyTorch implementation of the same model (tests/oracle/llama_ref.py, same thread count,
# same B, T) in one run, at the reference config and at ~1M, ~10M and ~100M parameters.
#
#   BUILD=build THREADS=2 bash bench/bench_model_train.sh        (needs $BUILD/bench/bench_model_train)
#   SIZES="ref 1m" bash bench/bench_model_train.sh                 (a subset)
#   REPS=3 ...                                                     (C/torch pairs per size, default 2)
#
# The C run and the torch run alternate REPS times per size and each side reports its fastest median,
# so a burst of load from other processes on the shared machine does not decide the ratio.
# Prints one table: ms/step, tokens/s, model GFLOP/s (formula in bench/bench_model_train.c), OpenBLAS sgemm
# GFLOP/s measured in the same process (1024^3), the PyTorch peer's ms/step, the speed ratio, and
# peak RSS growth against the memory formula.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
SIZES=${SIZES:-"ref 1m 10m 100m"}
REPS=${REPS:-2}
BIN="$BUILD/bench/bench_model_train"
PY=/usr/bin/python3
[ -x "$BIN" ] || { echo "bench_model_train.sh: $BIN not built (make BUILD=$BUILD bench)" >&2; exit 1; }
export OMP_NUM_THREADS=$THREADS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# name dim layers heads kv_heads ffn vocab batch seq c_steps torch_steps tied
# smollm2: the SmolLM2-135M shape (tied embeddings, 3 KV heads) at the issue's B 4, T 256
spec() {
  case $1 in
    ref)  echo "256 4 4 4 688 512 4 64 30 10 0" ;;
    1m)   echo "128 4 4 4 352 512 4 64 30 10 0" ;;
    10m)  echo "384 5 6 6 1024 1024 4 64 15 5 0" ;;
    100m) echo "768 12 12 12 2048 8192 4 64 5 2 0" ;;
    smollm2) echo "576 30 9 3 1536 49152 4 256 4 3 1" ;;
    *) echo "unknown size $1" >&2; exit 1 ;;
  esac
}

printf '%-5s %9s | %9s %8s %8s %8s %5s | %10s %8s %6s | %8s %8s\n' size params "C ms" "C tok/s" "C GF/s" \
  "sgemm" "%" "torch ms" "tok/s" "C/torch" "RSS MiB" "formula"
for s in $SIZES; do
  read -r dim layers heads kvh ffn vocab batch seq csteps tsteps tied <<<"$(spec "$s")"
  tie_json=false
  [ "$tied" = 1 ] && tie_json=true
  printf '{"dim":%d,"n_layers":%d,"n_heads":%d,"n_kv_heads":%d,"ffn_dim":%d,"vocab_size":%d,"max_seq_len":%d,"tie_embeddings":%s}\n' \
    "$dim" "$layers" "$heads" "$kvh" "$ffn" "$vocab" "$seq" "$tie_json" >"$tmp/arch.json"
  : >"$tmp/c.txt"
  : >"$tmp/t.txt"
  for _ in $(seq "$REPS"); do
    "$BIN" --dim "$dim" --layers "$layers" --heads "$heads" --kv-heads "$kvh" --ffn "$ffn" --vocab "$vocab" \
      --batch "$batch" --seq "$seq" --steps "$csteps" --threads "$THREADS" --tie "$tied" | grep '^{' >>"$tmp/c.txt"
    "$PY" tests/oracle/llama_ref.py bench "$tmp/arch.json" "$batch" "$seq" "$tsteps" "$THREADS" >>"$tmp/t.txt" ||
      echo "bench_model_train.sh: the PyTorch peer failed for $s" >&2
  done
  "$PY" - "$s" "$tmp/c.txt" "$tmp/t.txt" <<'EOF'
import json, sys
name, cf, tf = sys.argv[1:4]
c = min((json.loads(l) for l in open(cf) if l.startswith("{")), key=lambda r: r["median_ms"])
ts = [json.loads(l) for l in open(tf) if l.startswith("{")]
t = min(ts, key=lambda r: r["median_ms"]) if ts else {"median_ms": float("nan"), "tokens_per_s": float("nan")}
ratio = t["median_ms"] / c["median_ms"]
print("%-5s %9d | %9.2f %8.0f %8.1f %8.1f %4.0f%% | %10.1f %8.0f %5.2fx | %8.1f %8.1f" % (
    name, c["params"], c["median_ms"], c["tokens_per_s"], c["model_gflops"], c["sgemm_gflops"],
    100 * c["model_gflops"] / c["sgemm_gflops"], t["median_ms"], t["tokens_per_s"], ratio, c["rss_mb"],
    c["formula_mb"]))
EOF
done
echo "threads $THREADS; fastest of $REPS alternating runs each; a run's figure = median step after 2 warm-up steps; torch $("$PY" -c 'import torch; print(torch.__version__)')"
