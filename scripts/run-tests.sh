#!/usr/bin/env bash
# Runs the named CUnit test binaries from $BUILD/tests and prints one closing line
# "tests: N passed, N failed". Exits non-zero if any test failed or any binary crashed.
set -u
BUILD=${BUILD:-build}
total_pass=0; total_fail=0; crashed=()
for t in "$@"; do
  bin="$BUILD/tests/$t"
  echo "=== $t"
  out=$(mktemp)
  start=$(date +%s)
  "$bin" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  line=$(grep -E "^$t: [0-9]+ passed, [0-9]+ failed" "$out" | tail -n1)
  if [ -z "$line" ]; then
    echo "=== $t: exited $rc without a summary (crash?)"
    crashed+=("$t"); total_fail=$((total_fail + 1))
  else
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then crashed+=("$t"); total_fail=$((total_fail + 1)); fi
  fi
  echo "=== $t: $(( $(date +%s) - start ))s"
  rm -f "$out"
done
[ ${#crashed[@]} -gt 0 ] && echo "binaries that exited abnormally: ${crashed[*]}"
echo
echo "tests: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
