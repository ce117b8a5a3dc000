#!/usr/bin/env bash
# The llama.cpp integration's tests: builds (or reuses) llama.cpp via scripts/llama-env.sh,
# builds integrations/llama.cpp against the installed kvr at KVR_PREFIX and runs its ctest
# suite on the tiny random model (a few seconds each; the first run builds llama.cpp once).
# Usage: scripts/test-llama.sh KVR_PREFIX
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: scripts/test-llama.sh KVR_PREFIX}
jobs=$(nproc 2>/dev/null || echo 2)

eval "$(scripts/llama-env.sh)"
# llama.cpp's CPU back end runs on OpenMP, whose idle threads spin after every parallel
# region; on a small or shared machine the spinning threads starve each other and kvr's I/O
# threads (a tiny-model prefill measured 16x slower at load 10 on 2 cores). Passive waiting
# unless the caller chose otherwise.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
build=$(mktemp -d "${TMPDIR:-/tmp}/kvr-llama-tests.XXXXXX")
trap 'rm -rf "$build"' EXIT

echo "== llama.cpp integration (llama-cpp-python's llama.cpp $LLAMA_CPP_COMMIT) against $prefix"
cmake -S integrations/llama.cpp -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DLLAMA_LIB_DIR="$LLAMA_LIB_DIR" -DLLAMA_INCLUDE_DIR="$LLAMA_INCLUDE_DIR" \
  -DLLAMA_PYTHON="$LLAMA_PYTHON" -DLLAMA_CPP_COMMIT="$LLAMA_CPP_COMMIT" >/dev/null
cmake --build "$build" -j "$jobs"
(cd "$build" && ctest --output-on-failure -j "$jobs")
