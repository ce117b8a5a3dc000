#!/usr/bin/env bash
# The llama.cpp TTFT benchmark (make bench-llama): builds (or reuses) llama.cpp and the
# benchmark model (about 124M parameters, kept in the llama cache directory), builds the
# integration against the installed kvr at KVR_PREFIX, then in one run measures the raw tier
# load rates with `kvr bench` at the block size the benchmark stores and runs kvr-llama-bench.
# Usage: scripts/llama-bench.sh KVR_PREFIX [WORK_DIR]   (WORK_DIR on the disk to measure)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: scripts/llama-bench.sh KVR_PREFIX [WORK_DIR]}
work=${2:-${TMPDIR:-/tmp}/kvr-llama-bench}
jobs=$(nproc 2>/dev/null || echo 2)

eval "$(scripts/llama-env.sh)"
# llama.cpp's CPU back end runs on OpenMP, whose idle threads spin after every parallel
# region; on a small or shared machine the spinning threads starve each other and kvr's I/O
# threads (a tiny-model prefill measured 16x slower at load 10 on 2 cores). Passive waiting
# unless the caller chose otherwise.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
model="$LLAMA_VENV/models/bench-seed1.gguf"
if [ ! -e "$model" ]; then
  mkdir -p "$(dirname "$model")"
  "$LLAMA_PYTHON" integrations/llama.cpp/make_model.py --size bench --seed 1 "$model.tmp"
  mv "$model.tmp" "$model"
fi

build=build/llama
cmake -S integrations/llama.cpp -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DLLAMA_LIB_DIR="$LLAMA_LIB_DIR" -DLLAMA_INCLUDE_DIR="$LLAMA_INCLUDE_DIR" \
  -DLLAMA_PYTHON="$LLAMA_PYTHON" -DLLAMA_CPP_COMMIT="$LLAMA_CPP_COMMIT" >/dev/null
cmake --build "$build" -j "$jobs" --target kvr-llama-bench

mkdir -p "$work"
echo "== raw tier rates at the benchmark's block size (a 256-token block is 3 MiB)"
"$prefix/bin/kvr" bench --tier fs --block-size 3M --dir "$work/kvr-bench" --bytes 384M --runs 3
"$prefix/bin/kvr" bench --tier disk --block-size 3M --dir "$work/kvr-bench" --bytes 384M --runs 3
rm -rf "$work/kvr-bench"
echo "== kvr-llama-bench"
"$build/kvr-llama-bench" --model "$model" --dir "$work/run" --block 256 --markdown "$work/ttft.md"
