#!/usr/bin/env bash
# The GPU paths on a GPU: builds kvr, runs its CUDA tests (the Rust CUDA unit tests and the
# ctest suite, whose pinned-region and device-copy tests take their CUDA branch when a GPU is
# there) and a small copy benchmark (scripts/gpu_copy_bench.cpp: cudaMemcpyAsync H2D and D2H
# from a pinned 4 GiB region's views vs unpinned memory, kvr_tensors_read_into_device),
# printing GB/s. Without a GPU or a CUDA toolkit it says so, prints "skipped" and exits 0.
#
#   scripts/gpu-check.sh [BYTES]     BYTES: region size, default 4 GiB (4294967296)
#
# The benchmark compiles with nvcc if there is one (on PATH or in $CUDA_HOME/bin), else with
# $CXX (default c++) against $CUDA_HOME/include/cuda_runtime.h and -lcudart from
# $CUDA_HOME/lib64 (CUDA_HOME defaults to /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  echo "gpu-check: $*"
  echo "skipped"
  exit 0
}

bytes=${1:-4294967296}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
jobs=$(nproc 2>/dev/null || echo 2)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  skip "no NVIDIA GPU here (nvidia-smi missing or lists no device)"
fi
nvidia-smi -L

nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x "$cuda_home/bin/nvcc" ] && nvcc="$cuda_home/bin/nvcc"
if [ -n "$nvcc" ]; then
  compile=("$nvcc" -x cu -std=c++17 -O2)
  link=(-lcudart)
elif [ -f "$cuda_home/include/cuda_runtime.h" ]; then
  compile=("${CXX:-c++}" -std=c++17 -O2 -I"$cuda_home/include")
  link=(-L"$cuda_home/lib64" -Wl,-rpath,"$cuda_home/lib64" -lcudart)
else
  skip "a GPU but no CUDA toolkit (no nvcc, no $cuda_home/include/cuda_runtime.h; set CUDA_HOME)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kvr-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

echo "== build and install kvr into $prefix"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
cmake --install build --prefix "$prefix" >/dev/null

echo "== Rust CUDA tests"
cargo test --release --lib cuda -- --nocapture

echo "== C/C++ suite (the CUDA branches of the region and tensor tests)"
cmake -S cpp_tests -B "$work/ctest" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/ctest" -j "$jobs"
(cd "$work/ctest" && ctest --output-on-failure -j "$jobs" -E fuzz_files)

# Containers often give /dev/shm 64 MiB: put the region in the work directory then.
region_dir=""
shm_free=$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1 || echo 0)
if [ "${shm_free:-0}" -lt $((bytes + (256 << 20))) ]; then
  region_dir="$work"
  echo "(/dev/shm has ${shm_free:-0} bytes free: region file in $work)"
fi

echo "== copy benchmark ($bytes bytes)"
"${compile[@]}" scripts/gpu_copy_bench.cpp -I"$prefix/include" -o "$work/gpu_copy_bench" \
  -L"$prefix/lib" -Wl,-rpath,"$prefix/lib" -lkvr "${link[@]}"
"$work/gpu_copy_bench" "$bytes" "$work" "$region_dir"
