#!/usr/bin/env bash
# Installs every Debian 12 package the build, the tests and the benchmarks need.
# Idempotent: when everything is already present it prints nothing and exits 0.
# Called by the Makefile (target `deps`), so `make run` / `make test` work on a fresh machine.
set -euo pipefail

PKGS=(
  build-essential pkg-config
  libzmq3-dev          # wire protocol (ZeroMQ)
  libjansson-dev       # configs, metadata (JSON)
  libcurl4-openssl-dev # LLM-judge / remote reward-model HTTP client
  libcunit1-dev        # unit tests
  libopenblas-openmp-dev # GEMM, OpenMP build (one thread pool with ours)
  libseccomp-dev       # code-execution sandbox syscall filter
  libmicrohttpd-dev    # rlhf serve (OpenAI-compatible HTTP)
  python3 python3-numpy python3-torch # numerical oracle tests (run with /usr/bin/python3)
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
