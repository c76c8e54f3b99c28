#!/usr/bin/env bash
# Token generation against two C/C++ peers in one run, on the same random weights:
#   karpathy/llama2.c (run.c) and llama.cpp (llama-bench, llama-batched-bench).
#
#   LLAMA2C_DIR=... LLAMA_CPP_DIR=... LLAMA_CPP_BUILD=... bash bench/bench_generate_peers.sh [THREADS_LIST] [REPEATS]
#     THREADS_LIST  thread counts, e.g. "1 2" or 1,2 (default "1 2"); REPEATS (default 3)
#   LLAMA2C_DIR      a llama2.c checkout with run built (gcc -O3 -march=native -fopenmp -ffast-math run.c -lm -o run;
#                    run_plain, built without -march=native -ffast-math, is measured too when present) and tokenizer.bin
#   LLAMA_CPP_DIR    llama.cpp's source tree (gguf-py/ and the vocab files in models/, for bench/peer_weights.py)
#   LLAMA_CPP_BUILD  its CMake build directory (bin/llama-bench, bin/llama-batched-bench)
#   BUILD            this project's build directory (default build; make BUILD=... bench)
#   OURS             this project's variants KERNELS-WEIGHTS (default: the best kernels and, on AVX-512, avx2 too,
#                    each with fp32 and bf16 weights; KERNELS is what RLHF_ISA gets)
#   SHAPES           default "stories15M smollm2-135m"; NPL llama-batched-bench's batch sizes (default 16,64);
#                    BATCH this project's batched size (default 64); BATCHED_REPEATS llama-batched-bench's runs
#                    (default REPEATS); LLAMA_BATCHED_FLAGS extra llama-batched-bench flags (e.g. -fa)
# Nothing is downloaded or built here; a missing peer is one error line.
#
# For each shape: bench_model_sample creates the model with its random weights (seed 1234) and writes them as a
# llama2.c checkpoint (--llama2c-out); bench/peer_weights.py turns that into F32 and BF16 GGUF files (vocabulary
# metadata from llama.cpp's models/ggml-vocab-*.gguf) and, for a vocabulary other than llama2.c's 32000 tokens,
# a tokenizer.bin for run.c. Then, per thread count, REPEATS rounds alternate the programs (this project's single
# stream, run, run_plain, llama-bench F32, llama-bench BF16), so machine noise hits all alike; medians per program.
# Then the batched aggregate: this project with --batch BATCH (its own REPEATS runs inside) and
# llama-batched-bench (-npp 8 -ntg 256 -npl NPL, REPEATS runs, median), one after the other.
#
# What is measured, and how the programs differ:
# - 256 new tokens after a prompt of 8, temperature 1, top-p 1 (this project, run.c). The checkpoint's seq_len is
#   264 and run.c runs -n 264 positions, so it does the same 264 forward passes; its "achieved tok/s" counts every
#   position after the first (run.c has no batched prompt pass, so prompt positions cost what new ones do). run.c
#   stops early if it samples token 1 (BOS), about 1 chance in 125 per run at vocab 32000.
# - llama-bench tg256 decodes 256 tokens from an empty context and does not sample (no softmax over the vocab).
# - llama-batched-bench decodes B sequences of 8 + 256 tokens, no sampling; compared here is B*256 / T (T the whole
#   time, prompt included: what this project's "batched xB" figure counts); S_TG (decode only) is shown too.
#   Its context is B*(8+256) tokens so every B fits (with a smaller -c it skips the B that do not). At this
#   llama.cpp version the B sequences share one KV cache and each token's attention spans all of its cells
#   (masked), so its aggregate falls as B and the token count grow; -fa (flash attention) lessens that.
# - RoPE: this project rotates pairs (i, i+D/2) (Hugging Face layout); llama2.c and llama.cpp's "llama" rotate
#   interleaved pairs. --llama2c-out permutes the rows of wq/wk within each head so the checkpoint is the same
#   function in run.c's convention, and the GGUF files copy it unchanged; outputs still differ (different
#   samplers and random streams), and speed would not depend on it either way.
set -euo pipefail
THREADS_LIST=${1:-1 2}
THREADS_LIST=${THREADS_LIST//,/ }
REPEATS=${2:-3}
BUILD=${BUILD:-build}
SHAPES=${SHAPES:-stories15M smollm2-135m}
NPL=${NPL:-16,64}
BATCH=${BATCH:-64}
BATCHED_REPEATS=${BATCHED_REPEATS:-$REPEATS}
LLAMA_BATCHED_FLAGS=${LLAMA_BATCHED_FLAGS:-}
PROMPT_LEN=8
NEW_TOKENS=256
# this project's single-stream variants, KERNELS-WEIGHTS: the best kernels this CPU runs, and AVX2 forced
# (on an AVX-512 machine, what an AVX2-only CPU would run), each with fp32 and bf16 weights
BEST=$(RLHF_ISA= "${BUILD:-build}/bin/rlhf" --version 2>/dev/null | sed -nE 's/^sampling kernels: ([a-z0-9]+).*/\1/p')
BEST=${BEST:-avx2}
OURS=${OURS:-"$BEST-fp32 $BEST-bf16"}
[ "$BEST" = avx2 ] || OURS="$OURS avx2-fp32 avx2-bf16"
READ_RATE=--read-rate
me=bench_generate_peers.sh
die() { echo "$me: error: $*" >&2; exit 1; }

BIN="$BUILD/bench/bench_model_sample"
[ -x "$BIN" ] || die "$BIN not built (make BUILD=$BUILD bench)"
[ -n "${LLAMA2C_DIR:-}" ] || die "LLAMA2C_DIR is not set (a karpathy/llama2.c checkout with run built)"
[ -x "$LLAMA2C_DIR/run" ] || die "llama2.c peer missing: $LLAMA2C_DIR/run not found or not executable"
[ -f "$LLAMA2C_DIR/tokenizer.bin" ] || die "llama2.c peer missing: $LLAMA2C_DIR/tokenizer.bin not found"
[ -n "${LLAMA_CPP_BUILD:-}" ] || die "LLAMA_CPP_BUILD is not set (llama.cpp's CMake build directory)"
LB="$LLAMA_CPP_BUILD/bin/llama-bench"
LBB="$LLAMA_CPP_BUILD/bin/llama-batched-bench"
[ -x "$LB" ] || die "llama.cpp peer missing: $LB not found or not executable"
[ -x "$LBB" ] || die "llama.cpp peer missing: $LBB not found or not executable"
[ -n "${LLAMA_CPP_DIR:-}" ] || die "LLAMA_CPP_DIR is not set (llama.cpp's source tree, for gguf-py and models/)"
[ -d "$LLAMA_CPP_DIR/gguf-py/gguf" ] || die "llama.cpp source missing: $LLAMA_CPP_DIR/gguf-py/gguf not found"
PY=/usr/bin/python3
[ -x "$PY" ] || die "$PY not found (bench/peer_weights.py needs it, with numpy)"
RUNS=("run")
[ -x "$LLAMA2C_DIR/run_plain" ] && RUNS+=("run_plain")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

shape_flags() {
  case "$1" in
    stories15M) echo "--dim 288 --layers 6 --heads 6 --kv-heads 6 --ffn 768 --vocab 32000" ;;
    smollm2-135m) echo "--dim 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536 --vocab 49152" ;;
    *) die "unknown shape '$1' (stories15M, smollm2-135m)" ;;
  esac
}
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END {if (!NR) exit 1; printf "%.1f\n", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
need() { [ -n "$2" ] || die "could not parse $1 (output kept in $3)"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
peer_name() {
  case "$1" in
    run) echo "llama2.c run (gcc -O3 -march=native -ffast-math)" ;;
    run_plain) echo "llama2.c run_plain (gcc -O3)" ;;
    f32) echo "llama.cpp llama-bench F32" ;;
    bf16) echo "llama.cpp llama-bench BF16" ;;
  esac
}

CPU=""
for shape in $SHAPES; do
  flags=$(shape_flags "$shape")
  vocab=$(sed -nE 's/.*--vocab ([0-9]+).*/\1/p' <<<"$flags")
  ckpt="$tmp/$shape.bin"
  echo "== $shape: weights (bench_model_sample $flags --llama2c-out; this run only writes them and is not counted)"
  # shellcheck disable=SC2086
  "$BIN" $flags --threads 1 --repeats 1 --batch 1 --prompt-len $PROMPT_LEN --new-tokens $NEW_TOKENS \
    --llama2c-out "$ckpt" --cpu-name >"$tmp/write.txt" || { cat "$tmp/write.txt"; die "bench_model_sample failed"; }
  CPU=$(sed -n 's/^cpu: //p' "$tmp/write.txt" | head -1)
  LLAMA_CPP_DIR="$LLAMA_CPP_DIR" "$PY" "$(dirname "$0")/peer_weights.py" "$ckpt" "$tmp/$shape"
  tok="$LLAMA2C_DIR/tokenizer.bin"
  [ "$vocab" = 32000 ] || tok="$tmp/$shape/tokenizer.bin"
  seq=$((PROMPT_LEN + NEW_TOKENS))
  for t in $THREADS_LIST; do
    READ_RATE=--read-rate # once per shape and thread count
    declare -A got=()
    echo "== $shape, $t threads: single stream, $REPEATS alternating rounds"
    for r in $(seq 1 "$REPEATS"); do
      line="round $r:"
      for variant in $OURS; do
        isa=${variant%%-*}
        w=${variant##*-}
        out="$tmp/ours.$variant.$t.$r.txt"
        # shellcheck disable=SC2086
        env ${isa:+RLHF_ISA=$isa} "$BIN" $flags --threads "$t" --repeats 1 --batch 1 --prompt-len $PROMPT_LEN \
          --new-tokens $NEW_TOKENS --weights "$w" --cpu-name >"$out" || { cat "$out"; die "bench_model_sample failed"; }
        v=$(sed -nE 's/^single-stream: median ([0-9.]+).*/\1/p' "$out")
        need "bench_model_sample's single-stream median" "$v" "$out"
        got[$variant]+=" $v"
        line+=" rlhf[$variant] $v,"
      done
      for b in "${RUNS[@]}"; do
        err="$tmp/$b.$t.$r.txt"
        OMP_NUM_THREADS=$t "$LLAMA2C_DIR/$b" "$ckpt" -z "$tok" -n $seq -t 1.0 -p 1.0 -s $((1000 + r)) \
          -i "Once upon a time" >/dev/null 2>"$err" || { cat "$err" >&2; die "llama2.c $b failed"; }
        v=$(sed -nE 's/^achieved tok\/s: ([0-9.]+).*/\1/p' "$err" | awk '{printf "%.1f", $1}')
        need "llama2.c $b's achieved tok/s" "$v" "$err"
        got[$b]+=" $v"
        line+=", $b $v"
      done
      for ty in f32 bf16; do
        js="$tmp/lb.$ty.$t.$r.json"
        "$LB" -m "$tmp/$shape/model-$ty.gguf" -p 0 -n $NEW_TOKENS -t "$t" -r 1 -o json >"$js" 2>"$js.err" \
          || { cat "$js.err" >&2; die "llama-bench failed on $ty"; }
        v=$(sed -nE 's/^ *"avg_ts": ([0-9.]+).*/\1/p' "$js" | head -1 | awk '{printf "%.1f", $1}')
        need "llama-bench's avg_ts" "$v" "$js"
        got[$ty]+=" $v"
        line+=", llama.cpp $ty $v"
      done
      echo "  $line tokens/s"
    done
    for variant in $OURS; do
      ours=$(median <<<"${got[$variant]}")
      echo "RESULT | cpu $CPU | $shape | threads $t | rlhf kernels ${variant%%-*} weights ${variant##*-} | single-stream tokens/s (median of $REPEATS): $ours"
      for p in "${RUNS[@]}" f32 bf16; do
        m=$(median <<<"${got[$p]}")
        echo "RESULT | cpu $CPU | $shape | threads $t | rlhf[$variant] vs $(peer_name "$p") | single-stream tokens/s (median of $REPEATS):" \
             "rlhf $ours vs peer $m = $(ratio "$ours" "$m")"
      done
    done
    f=$(median <<<"${got[$BEST-fp32]}")
    b=$(median <<<"${got[$BEST-bf16]}")
    echo "RESULT | cpu $CPU | $shape | threads $t | rlhf bf16 vs fp32 ($BEST kernels) | single-stream: $b vs $f = $(ratio "$b" "$f")"

    echo "== $shape, $t threads: batched (rlhf --batch $BATCH, then llama-batched-bench -npl $NPL $LLAMA_BATCHED_FLAGS)"
    declare -A ourb=()
    for B in $(tr ',' ' ' <<<"$NPL"); do
      for w in fp32 bf16; do
        out="$tmp/ours.batch.$B.$w.$t.txt"
        # shellcheck disable=SC2086
        "$BIN" $flags --threads "$t" --repeats "$REPEATS" --batch "$B" --prompt-len $PROMPT_LEN \
          --new-tokens $NEW_TOKENS --weights $w --cpu-name $READ_RATE | tee "$out" || die "bench_model_sample failed"
        ourb[$B.$w]=$(sed -nE "s/^batched x$B: median ([0-9.]+).*/\1/p" "$out")
        need "bench_model_sample's batched median" "${ourb[$B.$w]}" "$out"
        READ_RATE=""
      done
    done
    ob=${ourb[$BATCH.fp32]:-0}
    maxb=$(tr ',' '\n' <<<"$NPL" | sort -n | tail -1)
    declare -A tg=() tot=()
    for r in $(seq 1 "$BATCHED_REPEATS"); do
      bb="$tmp/lbb.$t.$r.txt"
      # shellcheck disable=SC2086  # LLAMA_BATCHED_FLAGS is a list of flags
      "$LBB" -m "$tmp/$shape/model-f32.gguf" -c $((maxb * seq)) -npp $PROMPT_LEN -ntg $NEW_TOKENS -npl "$NPL" -t "$t" \
        $LLAMA_BATCHED_FLAGS >"$bb" 2>&1 || { tail -20 "$bb" >&2; die "llama-batched-bench failed"; }
      # table rows: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
      while read -r B stg all; do
        tg[$B]+=" $stg"
        tot[$B]+=" $all"
        echo "  llama-batched-bench run $r: B=$B S_TG $stg tokens/s (decode), B*TG/T $all tokens/s (with prompt)"
      done < <(awk -F'|' '$2 ~ /^ *[0-9]+ *$/ {printf "%d %.2f %.2f\n", $4, $9, $4 * $3 / $10}' "$bb")
    done
    for B in $(tr ',' ' ' <<<"$NPL"); do
      [ -n "${tot[$B]:-}" ] || die "llama-batched-bench printed no row for B=$B (kept in $tmp)"
      m=$(median <<<"${tot[$B]}")
      s=$(median <<<"${tg[$B]}")
      cmp="rlhf x$B fp32 ${ourb[$B.fp32]} vs peer $m = $(ratio "${ourb[$B.fp32]}" "$m"); rlhf x$B bf16 ${ourb[$B.bf16]}"
      echo "RESULT | cpu $CPU | $shape | threads $t | llama.cpp llama-batched-bench F32${LLAMA_BATCHED_FLAGS:+ $LLAMA_BATCHED_FLAGS} B=$B | batched aggregate tokens/s" \
           "(median of $BATCHED_REPEATS; peer S_TG decode-only $s): $cmp"
    done
    unset got tg tot ourb
  done
done
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
