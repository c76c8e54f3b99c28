#!/usr/bin/env bash
# Speculative decoding (model/speculative.c) against plain decoding with `rlhf sample`: tokens/s,
# acceptance and tokens per verify step, at 1 and 64 streams, for the n-gram drafter and a draft model.
# Repeats are interleaved (plain, n-gram, draft, plain, ...) and the report gives medians, so a load
# change on a shared machine hits every mode alike. docs/PERFORMANCE.md has the figures.
#
#   bash bench/bench_spec.sh [REPEATS]       (default 5)
#
# Environment: BUILD (build), DATA (runs/data/countdown: the countdown task, its corpus and pretrained
# base model, made by scripts/prepare-countdown.sh when missing), DRAFT (a draft checkpoint; default
# DATA/draft.safetensors, pretrained here on the same corpus when missing: dim 56, 2 layers, about 1/8
# of the base model's parameters), THREADS (1), N_PROMPTS (32), K (8), TEMPS ("1.0"; e.g. "1.0 0.5"),
# TARGET (the model decoded; default DATA/base.safetensors), TASKS ("countdown long"), STREAMS ("1 64"),
# MODES ("plain ngram draft"; plain first: the ratios are against it), GAMMA (4: most draft tokens per
# verify step).
set -euo pipefail
REPEATS=${1:-5}
BUILD=${BUILD:-build}
R="$BUILD/bin/rlhf"
DATA=${DATA:-runs/data/countdown}
THREADS=${THREADS:-1}
N_PROMPTS=${N_PROMPTS:-32}
K=${K:-8}
OUT=${OUT:-$(mktemp -d)}
[ -s "$DATA/base.safetensors" ] || BUILD="$BUILD" bash scripts/prepare-countdown.sh "$DATA"
DRAFT=${DRAFT:-$DATA/draft.safetensors}
TARGET=${TARGET:-$DATA/base.safetensors}
if [ ! -s "$DRAFT" ]; then
  echo "== pretraining the draft model on $DATA/corpus.jsonl"
  printf '{"dim": 56, "n_layers": 2, "n_heads": 4, "ffn_dim": 168, "vocab_size": 259, "max_seq_len": 48}\n' \
    > "$OUT/draft-arch.json"
  "$R" init --arch "$OUT/draft-arch.json" --out "$OUT/draft-init.safetensors" --seed 3
  "$R" pretrain --model "$OUT/draft-init.safetensors" --data "$DATA/corpus.jsonl" --steps 1000 --batch 32 \
       --seq 48 --lr 3e-3 --warmup 50 --schedule cosine --min-lr-ratio 0.1 --threads "$THREADS" \
       --log-every 200 --out "$DRAFT.tmp"
  mv "$DRAFT.tmp" "$DRAFT"
fi
python3 - "$DATA/train.jsonl" "$N_PROMPTS" > "$OUT/prompts.jsonl" <<'EOF'
import json, sys
for i, line in enumerate(open(sys.argv[1])):
    if i >= int(sys.argv[2]): break
    d = json.loads(line)
    print(json.dumps({"id": d["id"], "prompt": d["prompt"]}))
EOF
# tasks: "countdown" = one line per completion (ends at EOS, as in a run); "long" = the model writes on
# past EOS (further "nums ... target ...:" lines, up to max_seq_len 48): longer, repetitive completions
run_one() { # task streams mode temperature -> one line "task streams mode T tok/s acceptance tokens/verify"
  local task=$1 streams=$2 mode=$3 temp=$4 extra=()
  [ "$task" = long ] && extra+=(--no-eos-stop --max-tokens 48) || extra+=(--max-tokens 24)
  case $mode in
    ngram) extra+=(--ngram-draft --gamma "${GAMMA:-4}") ;;
    draft) extra+=(--draft-model "$DRAFT" --gamma "${GAMMA:-4}") ;;
  esac
  local log="$OUT/log.txt"
  "$R" sample --model "$TARGET" --prompts "$OUT/prompts.jsonl" -n "$K" --temperature "$temp" \
      --batch "$streams" --threads "$THREADS" --seed 7 "${extra[@]}" > /dev/null 2> "$log"
  python3 - "$log" "$task" "$streams" "$mode" "$temp" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
tps = re.search(r"\(([0-9.]+) tokens/s", t).group(1)
cpu = re.search(r"([0-9.]+) tokens per CPU s", t).group(1)
acc = re.search(r"acceptance ([0-9.]+)\), ([0-9.]+) tokens per verify", t)
print(*sys.argv[2:6], tps, acc.group(1) if acc else "-", acc.group(2) if acc else "-", cpu)
EOF
}
echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load average/load average/') threads=$THREADS prompts=$N_PROMPTS k=$K"
for rep in $(seq "$REPEATS"); do
  for task in ${TASKS:-countdown long}; do
    for temp in ${TEMPS:-1.0}; do
      for streams in ${STREAMS:-1 64}; do
        for mode in ${MODES:-plain ngram draft}; do
          run_one "$task" "$streams" "$mode" "$temp"
        done
      done
    done
  done
done | tee "$OUT/raw.txt"
echo "# medians over $REPEATS interleaved repeats ($(uptime | sed 's/.*load average/load average/'))"
python3 - "$OUT/raw.txt" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    task, streams, mode, temp, tps, acc, tpv, cpu = line.split()
    rows.setdefault((task, temp, int(streams)), {}).setdefault(mode, []).append((float(tps), acc, tpv, float(cpu)))
# wall: tokens/s (what a user waits for; on a shared machine it carries the neighbours' load too);
# cpu: tokens per CPU second of the sampling (the work it took, less sensitive to the load)
for metric, idx in (("wall tokens/s", 0), ("tokens per CPU s", 3)):
    print(f"## {metric}")
    print(f"{'task':10} {'T':>4} {'streams':>7} {'plain':>8} {'ngram':>8} {'x':>5} {'acc':>5} {'tok/ver':>7}"
          f" {'draft':>8} {'x':>5} {'acc':>5} {'tok/ver':>7}")
    for (task, temp, streams), m in sorted(rows.items()):
        med = {k: statistics.median(v[idx] for v in m[k]) for k in m}
        def col(k):
            if k not in m:
                return f"{'-':>8} {'-':>5} {'-':>5} {'-':>7}"
            acc = statistics.median(float(v[1]) for v in m[k]) if m[k][0][1] != "-" else float("nan")
            tpv = statistics.median(float(v[2]) for v in m[k]) if m[k][0][2] != "-" else float("nan")
            return f"{med[k]:8.0f} {med[k] / med['plain']:5.2f} {acc:5.2f} {tpv:7.2f}"
        print(f"{task:10} {temp:>4} {streams:7d} {med['plain']:8.0f} {col('ngram')} {col('draft')}")
EOF
