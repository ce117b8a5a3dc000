#!/usr/bin/env bash
# Every test: format and lint checks, the Rust tests, then the C/C++ suite (ctest) built
# against a fresh install of the package in a temporary prefix. Called by `make test` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo doc (no broken or private intra-doc links in the public API docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps -p kvr
# The object tier's tests (Rust and ctest) run against a real S3 server: SeaweedFS on
# 127.0.0.1, installed once into a cache directory, stopped by its watcher when this script
# exits (also after a failed test).
echo "== S3 test server (SeaweedFS) for the object tier"
KVR_SEAWEEDFS_STATE=$(mktemp -d "${TMPDIR:-/tmp}/kvr-seaweedfs.XXXXXX")
export KVR_SEAWEEDFS_STATE
eval "$(KVR_SEAWEEDFS_WATCH_PID=$$ scripts/seaweedfs.sh start)"
echo "KVR_S3_TEST_ENDPOINT=$KVR_S3_TEST_ENDPOINT"

echo "== cargo test"
cargo test --locked --workspace

echo "== fs store on GlusterFS: one brick, two FUSE mounts as two hosts (scripts/glusterfs.sh)"
gluster_rc=0
gluster_env=$(scripts/glusterfs.sh start) || gluster_rc=$?
if [ "$gluster_rc" -eq 77 ]; then
  echo "skipped: this machine cannot run the GlusterFS test bed (reason above)"
elif [ "$gluster_rc" -ne 0 ]; then
  scripts/glusterfs.sh stop
  exit "$gluster_rc"
else
  trap 'scripts/glusterfs.sh stop' EXIT
  # One test at a time: they share one brick, and the kill test times its signals.
  env $gluster_env KVR_REQUIRE_GLUSTER=1 \
    cargo test --locked --test gluster_two_hosts -- --test-threads=1
  scripts/glusterfs.sh stop
  trap - EXIT
fi

# The committed include/kvr.h is checked by tests/header.rs: with CI set, build.rs never
# rewrites it, so a stale committed header fails `cargo test` there.

prefix=$(mktemp -d "${TMPDIR:-/tmp}/kvr-prefix.XXXXXX")
ctest_build=$(mktemp -d "${TMPDIR:-/tmp}/kvr-cpp-tests.XXXXXX")
asan_build=$(mktemp -d "${TMPDIR:-/tmp}/kvr-cpp-tests-asan.XXXXXX")
trap 'rm -rf "$prefix" "$ctest_build" "$asan_build"' EXIT

echo "== build and install into $prefix"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
cmake --install build --prefix "$prefix" >/dev/null

echo "== C/C++ suite (ctest) against the installed package"
cmake -S cpp_tests -B "$ctest_build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$ctest_build" -j "$jobs"
(cd "$ctest_build" && ctest --output-on-failure -j "$jobs")

echo "== C/C++ suite again under AddressSanitizer + UBSan"
cmake -S cpp_tests -B "$asan_build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Debug \
  -DKVR_SANITIZE=ON >/dev/null
cmake --build "$asan_build" -j "$jobs"
(cd "$asan_build" &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j "$jobs")

echo "== llama.cpp integration (ctest on the tiny random model; builds llama.cpp once)"
scripts/test-llama.sh "$prefix"
