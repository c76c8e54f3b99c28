#!/usr/bin/env bash
# bench/bench_train_vs_llmc.sh — same-run regression guard for the training step: the project's step
# (bench_model_train: forward + backward + AdamW) against Karpathy's llm.c CPU fp32 trainer (train_gpt2.c)
# on the same work, compared by model FLOP rate with one formula (bench/bench_model_train.c's top comment):
#   FLOPs/step = 6 * (matmul params) * B*T + 12 * L * B * H * T^2 * D
#
#   LLMC_DIR=/path/to/built/llm.c BUILD=build THREADS=2 REPS=3 bash bench/bench_train_vs_llmc.sh
#
# LLMC_DIR is a checkout of llm.c with train_gpt2 built as its Makefile builds it for the CPU; this script
# only runs it. llm.c's main() fixes B=4, T=64 and 41 steps and opens gpt2_124M.bin, gpt2_tokenizer.bin and
# dev/data/tinyshakespeare/*.bin relative to its working directory, so it runs inside a temp dir holding
# a random-weight checkpoint and random token files from bench/llmc_checkpoint.py.
#
# Shapes: the project's "ref" model (dim 256, 4 layers, 4 heads, SwiGLU ffn 688, vocab 512) and the
# nearest GPT-2 (channels 256, 4 layers, 4 heads, MLP 4C = 1024, vocab 512 = its padded vocab, max_seq 64),
# both at batch 4 x seq 64. Matmul params: project L*(4C^2 + 3*F*C) + V*C = 3,293,184; llm.c
# L*(3C^2 + C^2 + 4C^2 + 4C^2) + V*C = 3,276,800 (tied wte counted once, as lm_head).
#
# Timing: each side's figure is the median step of one run (project: after its 2 warm-up steps; llm.c:
# its "took X ms" training-step lines except step 0, which allocates; its validation and sampling sit
# outside its timer), and the fastest such median of REPS alternating runs, so a burst of load from other
# processes on a shared machine does not decide the ratio. OMP_NUM_THREADS=THREADS for both; an
# OMP_WAIT_POLICY in the environment reaches both (both use libgomp), as docs/PERFORMANCE.md requires.
# Prints one result line (CPU, shape, both sides' ms/step and GFLOP/s, the project/llm.c FLOP-rate ratio,
# and whether the guard "project >= 3x llm.c" is met) and a line with per-run medians and load average.
# The verdict needs THREADS idle CPUs. The script measures the CPU time other processes took while it ran
# (all CPUs' busy time in /proc/stat less its own children's CPU time, per second of wall time); above
# CPUs - THREADS + 0.25 CPUs the line says "machine busy, verdict unreliable". Busy-waiting OpenMP teams
# lose most when one thread is descheduled, and llm.c runs attention backward, layernorm, GELU and AdamW
# on one thread, so contention moves the ratio either way.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
BIN="$BUILD/bench/bench_model_train"
PY=/usr/bin/python3
GUARD=3
if [ -z "${LLMC_DIR:-}" ] || [ ! -x "$LLMC_DIR/train_gpt2" ]; then
  echo "bench_train_vs_llmc.sh: llm.c's train_gpt2 not found: set LLMC_DIR to a built llm.c (\$LLMC_DIR/train_gpt2)" >&2
  exit 1
fi
[ -x "$BIN" ] || { echo "bench_train_vs_llmc.sh: $BIN not built (make BUILD=$BUILD bench)" >&2; exit 1; }
LLMC_BIN=$(cd "$LLMC_DIR" && pwd)/train_gpt2
export OMP_NUM_THREADS=$THREADS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

C=256 L=4 H=4 F=688 V=512 B=4 T=64 STEPS=30
load0=$(cut -d' ' -f1-3 /proc/loadavg)
"$PY" bench/llmc_checkpoint.py "$tmp/llmc" --channels $C --layers $L --heads $H --vocab $V --max-seq $T \
  --batch $B --seq $T >/dev/null
: >"$tmp/c.txt"
cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
times >"$tmp/times0"  # in this shell: a subshell's `times` would not see this shell's children
busy0=$(cpu_busy) wall0=$(date +%s.%N)
for i in $(seq "$REPS"); do
  "$BIN" --dim $C --layers $L --heads $H --kv-heads $H --ffn $F --vocab $V --batch $B --seq $T --steps $STEPS \
    --threads "$THREADS" | grep '^{' >>"$tmp/c.txt"
  if ! (cd "$tmp/llmc" && "$LLMC_BIN" >"$tmp/llmc_$i.txt" 2>&1); then
    echo "bench_train_vs_llmc.sh: llm.c's train_gpt2 failed (run $i): $(tail -n 1 "$tmp/llmc_$i.txt")" >&2
    exit 1
  fi
done
times >"$tmp/times1"
busy1=$(cpu_busy) wall1=$(date +%s.%N)
load1=$(cut -d' ' -f1-3 /proc/loadavg)
hz=$(getconf CLK_TCK)
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ncpu=$(nproc)

"$PY" - "$tmp" "$REPS" "$THREADS" "$GUARD" "$cpu" "$load0" "$load1" "$ncpu" $C $L $H $F $V $B $T \
  "$(tail -n 1 "$tmp/times0")" "$(tail -n 1 "$tmp/times1")" "$busy0" "$busy1" "$wall0" "$wall1" "$hz" <<'EOF'
import json, re, statistics, sys
tmp, reps, threads, guard, cpu, load0, load1, ncpu = sys.argv[1:9]
C, L, H, F, V, B, T = map(int, sys.argv[9:16])
reps, guard, D, ncpu = int(reps), float(guard), C // H, int(ncpu)
def kids_s(t):  # bash `times` children line: "XmY.YYYs XmY.YYYs" (user, system)
    return sum(int(m) * 60 + float(x) for m, x in re.findall(r"(\d+)m([0-9.]+)s", t))
k0, k1, b0, b1, w0, w1, hz = sys.argv[16:23]
others = ((int(b1) - int(b0)) / float(hz) - (kids_s(k1) - kids_s(k0))) / (float(w1) - float(w0))
others = max(others, 0.0)
busy = others > ncpu - int(threads) + 0.25
c_runs = [json.loads(l) for l in open(tmp + "/c.txt") if l.startswith("{")]
if len(c_runs) != reps:
    sys.exit("bench_train_vs_llmc.sh: bench_model_train printed %d results for %d runs" % (len(c_runs), reps))
l_meds = []
for i in range(1, reps + 1):
    steps = [(int(s), float(ms)) for s, ms in
             re.findall(r"^step (\d+): train loss \S+ \(took ([0-9.]+) ms\)", open("%s/llmc_%d.txt" % (tmp, i)).read(), re.M)]
    ms = [m for s, m in steps if s > 0]  # step 0 allocates gradients and optimizer state
    if not ms:
        sys.exit("bench_train_vs_llmc.sh: llm.c run %d printed no timed training steps" % i)
    l_meds.append(statistics.median(ms))
attn = 12.0 * L * B * H * T * T * D
c = min(c_runs, key=lambda r: r["median_ms"])
c_ms, c_gf = c["median_ms"], c["model_gflops"]
l_mm = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + V * C  # qkv, attn proj, fc, fc proj; lm_head
l_ms = min(l_meds)
l_gf = (6.0 * l_mm * B * T + attn) / (l_ms * 1e-3) / 1e9
ratio = c_gf / l_gf
print("cpu %s | B%d T%d C%d L%d H%d V%d (project ffn %d SwiGLU, llm.c MLP %d GELU) | project %.2f ms/step %.1f GFLOP/s"
      " | llm.c %.2f ms/step %.1f GFLOP/s | project/llm.c %.2fx | guard >= %gx: %s%s" % (
          cpu, B, T, C, L, H, V, F, 4 * C, c_ms, c_gf, l_ms, l_gf, ratio, guard, "met" if ratio >= guard else "NOT met",
          " (machine busy, verdict unreliable)" if busy else ""))
print("threads %s; fastest of %d alternating runs (project run medians %s ms; llm.c run medians %s ms); "
      "project sgemm 1024^3 %.1f GFLOP/s, model at %.0f%% of it; %d CPUs, other processes used %.2f CPUs meanwhile; "
      "load average %s before, %s after" % (
          threads, reps, " ".join("%.1f" % r["median_ms"] for r in c_runs), " ".join("%.1f" % m for m in l_meds),
          c["sgemm_gflops"], 100 * c_gf / c["sgemm_gflops"], ncpu, others, load0, load1))
EOF
