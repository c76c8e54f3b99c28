#!/usr/bin/env bash
# Runs libFuzzer targets: first every committed crash input of the target once (a regression test),
# then SECONDS of fuzzing from its seed corpus. New inputs go to a scratch directory, never into the
# committed corpus; a crash, sanitizer report, leak, timeout or out-of-memory fails the run and leaves the
# input in BUILD/fuzz-artifacts/. Prints one line per target (executions, edges covered, time).
#
#   scripts/fuzz-run.sh BUILD SECONDS NAME:MAX_LEN ...
#   RUNS=N scripts/fuzz-run.sh ...    stop each target after N executions (campaigns; docs/FUZZING.md)
#   FUZZ_LOG_DIR=DIR ...              keep each target's full libFuzzer output in DIR/NAME.log
set -u
BUILD=$1 SECONDS_EACH=$2
shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
failed=()
mkdir -p "$BUILD/fuzz-artifacts"
for spec in "$@"; do
  name=${spec%%:*} max_len=${spec##*:}
  bin="$BUILD/fuzz/$name"
  corpus="$ROOT/tests/fuzz/corpus/$name"
  regress="$ROOT/tests/fuzz/regressions/$name"
  log=$(mktemp)
  opts=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 -max_len="$max_len"
        -artifact_prefix="$BUILD/fuzz-artifacts/$name-")
  [ -f "$ROOT/tests/fuzz/$name.dict" ] && opts+=(-dict="$ROOT/tests/fuzz/$name.dict")
  if [ -d "$regress" ] && [ -n "$(ls -A "$regress")" ]; then
    if ! "$bin" "${opts[@]}" "$regress"/* >"$log" 2>&1; then
      echo "fuzz $name: a committed crash input crashes again:"; tail -n 40 "$log"
      failed+=("$name"); rm -f "$log"; continue
    fi
  fi
  work=$(mktemp -d)
  start=$(date +%s)
  runs=()
  [ -n "${RUNS:-}" ] && runs=(-runs="$RUNS")
  "$bin" "${opts[@]}" "${runs[@]}" -max_total_time="$SECONDS_EACH" -print_final_stats=1 "$work" "$corpus" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  execs=$(grep -Eo 'stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | awk '{print $2}')
  rss=$(grep -Eo 'stat::peak_rss_mb:[[:space:]]+[0-9]+' "$log" | awk '{print $2}')
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
  [ -n "${FUZZ_LOG_DIR:-}" ] && mkdir -p "$FUZZ_LOG_DIR" && cp "$log" "$FUZZ_LOG_DIR/$name.log"
  if [ $rc -ne 0 ]; then
    echo "fuzz $name: FAILED (exit $rc) after ${secs}s:"; tail -n 60 "$log"
    failed+=("$name")
  else
    echo "fuzz $name: ${execs:-?} execs, ${cov:-cov: ?}, peak ${rss:-?} MB, ${secs}s"
  fi
  rm -rf "$work" "$log"
done
echo "fuzz: $(( $# - ${#failed[@]} )) passed, ${#failed[@]} failed${failed[*]:+ (${failed[*]})}"
[ ${#failed[@]} -eq 0 ]
