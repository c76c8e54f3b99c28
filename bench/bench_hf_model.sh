#!/usr/bin/env bash
# bench/bench_hf_model.sh — a Hugging Face model directory at the SmolLM2-135M shape (dim 576, 30 layers,
# 9 heads, 3 KV heads, ffn 1536, vocab 49152, tied; random weights stored as BF16, as that model ships),
# sampled by rlhf and by PyTorch eager with a KV cache, in one script (same shape, threads, token counts):
#
#   BUILD=build THREADS=2 NEW_TOKENS=64 BATCH=64 REPEATS=3 bash bench/bench_hf_model.sh
#
# 1. writes the directory with `rlhf init` + `rlhf export --hf --dtype bf16` (into a temp dir);
# 2. rlhf: bench_model_sample --model DIR, fp32 and bf16 sampler weights, single stream and BATCH streams;
# 3. PyTorch: bench/bench_model_sample_torch.py at the same shape (fp32, its default);
# then the ratios of the medians. The training step at this shape is bench_model_train.sh's "smollm2" size.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
NEW_TOKENS=${NEW_TOKENS:-64}
BATCH=${BATCH:-64}
REPEATS=${REPEATS:-3}
R="$BUILD/bin/rlhf"
BIN="$BUILD/bench/bench_model_sample"
for x in "$R" "$BIN"; do
  [ -x "$x" ] || { echo "bench_hf_model.sh: $x not built (make BUILD=$BUILD all bench)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/arch.json" <<EOF
{"dim":576,"n_layers":30,"n_heads":9,"n_kv_heads":3,"ffn_dim":1536,"vocab_size":49152,"max_seq_len":2048,
 "rope_theta":100000,"norm_eps":1e-5,"tie_embeddings":true}
EOF
"$R" init --arch "$tmp/arch.json" --out "$tmp/init.safetensors" --seed 1 >/dev/null
"$R" export "$tmp/init.safetensors" --hf "$tmp/smollm2-shape" --dtype bf16 >/dev/null
rm -f "$tmp/init.safetensors"
echo "== HF directory: $(du -sh "$tmp/smollm2-shape" | cut -f1) ($(ls "$tmp/smollm2-shape" | tr '\n' ' '))"
run_ours() {
  "$BIN" --model "$tmp/smollm2-shape" --weights "$1" --threads "$THREADS" --new-tokens "$NEW_TOKENS" \
    --batch "$BATCH" --repeats "$REPEATS" --cpu-name | tee "$tmp/ours-$1.txt"
}
echo "== rlhf, fp32 sampler weights"
run_ours fp32
echo "== rlhf, bf16 sampler weights"
run_ours bf16
echo "== PyTorch eager (KV cache), same shape"
/usr/bin/python3 bench/bench_model_sample_torch.py --threads "$THREADS" --new-tokens "$NEW_TOKENS" --batch "$BATCH" \
  --repeats "$REPEATS" --dim 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536 --vocab 49152 | tee "$tmp/torch.txt"
med() { sed -nE "s/^$2: median ([0-9.]+).*/\1/p" "$1"; }
sp=$(med "$tmp/torch.txt" "torch single-stream")
bp=$(med "$tmp/torch.txt" "torch batched x$BATCH")
echo "== ratios (medians; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
for w in fp32 bf16; do
  so=$(med "$tmp/ours-$w.txt" "single-stream")
  bo=$(med "$tmp/ours-$w.txt" "batched x$BATCH")
  awk -v w="$w" -v so="$so" -v bo="$bo" -v sp="$sp" -v bp="$bp" -v b="$BATCH" 'BEGIN {
    printf "%s: single stream rlhf %.1f vs torch %.1f tokens/s = %.2fx; %d streams rlhf %.1f vs torch %.1f = %.2fx\n",
           w, so, sp, so / sp, b, bo, bp, bo / bp }'
done
