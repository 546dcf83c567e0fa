#!/usr/bin/env bash
# The main job: installs what is missing, builds an optimized tree into
# build/release, and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hrpc_install_deps

BUILD=${HRPC_DEMO_BUILD:-build/release}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHRPC_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j "$(nproc)"

echo "== hrpc mempool benchmark (pool vs malloc/posix_memalign, same run) =="
"$BUILD/bench/mempool_bench" --benchmark_min_time=0.2
echo
echo "The echo and throughput samples arrive with the RPC layer (hrpc/)."
