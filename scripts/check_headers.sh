#!/usr/bin/env bash
# scripts/check_headers.sh — every public header that `make install` puts under PREFIX/include/rlhf
# compiles on its own against that install tree (-Wall -Wextra -Werror), so a header never needs
# one that is not installed. Run by `make check-layout` (part of `make test`).
set -euo pipefail
BUILD=${BUILD:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make --no-print-directory -s install BUILD="$BUILD" PREFIX="$tmp" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log"; echo "check_headers: make install failed"; exit 1; }
n=0; bad=0
while IFS= read -r h; do
  rel=${h#"$tmp/include/rlhf/"}
  printf '#include "%s"\nint main(void) { return 0; }\n' "$rel" >"$tmp/one.c"
  if ! out=$(${CC:-cc} -std=gnu11 -Wall -Wextra -Werror -I"$tmp/include/rlhf" -c "$tmp/one.c" -o "$tmp/one.o" 2>&1); then
    echo "$rel: does not compile on its own from the install tree:"; echo "$out" | head -5; bad=$((bad + 1))
  fi
  n=$((n + 1))
done < <(find "$tmp/include/rlhf" -name '*.h' | sort)
if [ "$bad" -ne 0 ]; then echo "check_headers: $bad of $n installed headers do not compile on their own"; exit 1; fi
echo "check_headers: the $n installed headers each compile on their own"
