#!/usr/bin/env bash
# The tests: installs what is missing, builds with HRPC_SANITIZE=address,undefined
# into build/test, runs ctest (every label but rdma and netem), then the fuzz targets for a
# few seconds each in a small clang tree of their own (build/fuzz, label fuzz),
# then the rdma and netem labels inside the Soft-RoCE guest when it can start (otherwise
# says why: a skip, not a pass).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source scripts/fuzz.sh
hrpc_install_deps

BUILD=${HRPC_TEST_BUILD:-build/test}
JOBS=${HRPC_JOBS:-$(nproc)}
# -O1 -g1: sanitizer-friendly code with line tables, and a build that fits CI's budget.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DHRPC_SANITIZE=address,undefined -DHRPC_BUILD_BENCH=ON -DHRPC_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -LE '^(rdma|netem)$' "$@"

# libFuzzer needs clang: the fuzz targets and the libraries they link only.
FUZZ_BUILD=${HRPC_FUZZ_BUILD:-build/fuzz}
hrpc_build_fuzz "$FUZZ_BUILD" "$JOBS"
ctest --test-dir "$FUZZ_BUILD" --output-on-failure -j "$JOBS" -L fuzz

if [ -x scripts/rdma-tests.sh ]; then
  scripts/rdma-tests.sh "$BUILD"
fi
