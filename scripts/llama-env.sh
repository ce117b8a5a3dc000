#!/usr/bin/env bash
# Installs (once) llama.cpp as an ordinary dependency: `pip install llama-cpp-python==<pinned>`
# into a virtual environment kept in a cache directory outside the checkout, keyed by the
# version, the machine architecture and the Python version, then reused. pip builds llama.cpp
# for this CPU; CMAKE_ARGS leaves out what the integration does not need (server, tools,
# examples, tests, multimodal, GPU back ends, TLS) so the one-time build stays short.
# The same venv gets the `gguf` package used by integrations/llama.cpp/make_model.py.
#
# Prints shell assignments (eval-able) naming where everything is:
#   LLAMA_VENV, LLAMA_PYTHON, LLAMA_LIB_DIR (libllama, libggml*: llama_cpp/lib),
#   LLAMA_INCLUDE_DIR (llama.h, ggml*.h: site-packages/include),
#   LLAMA_CPP_COMMIT (the llama.cpp commit the pinned package carries)
# Usage: eval "$(scripts/llama-env.sh)"     (progress goes to stderr)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_COMMIT=0c1e570 # the llama.cpp commit vendored by llama-cpp-python 0.3.36
GGUF_VERSION=0.19.0

python=${PYTHON:-python3}
arch=$(uname -m)
py_tag=$("$python" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
cache_dir=${KVR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvr}
venv="$cache_dir/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$arch-$py_tag"
stamp="$venv/.kvr-installed"

if [ ! -e "$stamp" ]; then
  echo "== installing llama-cpp-python $LLAMA_CPP_PYTHON_VERSION into $venv (one-time build of llama.cpp)" >&2
  rm -rf "$venv"
  mkdir -p "$cache_dir"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  jobs=$(nproc 2>/dev/null || echo 2)
  CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
-DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_RPC=OFF \
-DGGML_BLAS=OFF" \
    "$venv/bin/python" -m pip install --quiet --no-cache-dir \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" "gguf==$GGUF_VERSION" >&2
  touch "$stamp"
fi

pkg_dir=$("$venv/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("llama_cpp")
print(os.path.dirname(spec.origin))
PY
)
lib_dir="$pkg_dir/lib"
# llama.cpp's own install rules put the C headers (llama.h, ggml*.h) beside the package, in
# site-packages/include; older wheels had them in llama_cpp/include.
include_dir="$pkg_dir/include"
[ -e "$include_dir/llama.h" ] || include_dir="$(dirname "$pkg_dir")/include"
if [ ! -e "$lib_dir/libllama.so" ] || [ ! -e "$include_dir/llama.h" ]; then
  echo "llama-env: $pkg_dir lacks lib/libllama.so, or llama.h is not installed beside it" >&2
  exit 1
fi

printf 'LLAMA_VENV=%q\n' "$venv"
printf 'LLAMA_PYTHON=%q\n' "$venv/bin/python"
printf 'LLAMA_LIB_DIR=%q\n' "$lib_dir"
printf 'LLAMA_INCLUDE_DIR=%q\n' "$include_dir"
printf 'LLAMA_CPP_COMMIT=%q\n' "$LLAMA_CPP_COMMIT"
