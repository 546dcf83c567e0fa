#!/usr/bin/env bash
# The fuzz targets (tests/fuzz): builds a clang tree of only them and the
# libraries they link (build/fuzz: ASan + UBSan + libFuzzer), then runs each
# target for SECONDS (default 300) over its seed corpus and what earlier runs
# found (build/fuzz/tests/fuzz/fuzz-work/<target>). Prints one line per target:
#   fuzz target=wire seconds=300 execs=... execs_per_s=... corpus_added=... crash=0
# and exits non-zero when a target crashed (its input is written beside the
# work corpus as <target>-crash-*; add it to tests/fuzz/corpus/<target>/ with a
# regression test once fixed).
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: wire uri tcp_stream dispatch wal
# scripts/test.sh sources this file for hrpc_build_fuzz and runs the short
# ctest version (label fuzz, HRPC_FUZZ_SECONDS each).
set -euo pipefail

HRPC_FUZZ_TARGETS=(wire uri tcp_stream dispatch wal)

# hrpc_build_fuzz <build dir> <jobs>: configures (clang) and builds the fuzz targets only.
hrpc_build_fuzz() {
  local dir=$1 jobs=$2
  CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DHRPC_SANITIZE=address,undefined,fuzzer-no-link -DHRPC_BUILD_FUZZ=ON \
    -DHRPC_BUILD_TESTS=OFF -DHRPC_BUILD_BENCH=OFF -DHRPC_BUILD_EXAMPLES=OFF -DHRPC_BUILD_TOOLS=OFF \
    -DHRPC_WITH_RDMA=OFF >/dev/null
  cmake --build "$dir" -j "$jobs" --target hrpc_fuzz
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "$0")/.."
  source scripts/deps.sh
  hrpc_install_deps
  SECONDS_EACH=${1:-300}
  shift || true
  targets=("$@")
  [ ${#targets[@]} -gt 0 ] || targets=("${HRPC_FUZZ_TARGETS[@]}")
  BUILD=${HRPC_FUZZ_BUILD:-build/fuzz}
  hrpc_build_fuzz "$BUILD" "${HRPC_JOBS:-$(nproc)}"
  work="$BUILD/tests/fuzz/fuzz-work"
  failed=0
  for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    log="$work/$t.log"
    rc=0
    leaks=()
    # Targets that run a transport's threads: no per-input leak check (see tests/fuzz/CMakeLists.txt).
    case "$t" in tcp_stream|dispatch) leaks=(-detect_leaks=0) ;; esac
    "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=4096 "${leaks[@]}" \
      -print_final_stats=1 -artifact_prefix="$work/$t-" "$work/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs=$(stat number_of_executed_units)
    echo "fuzz target=$t seconds=$SECONDS_EACH execs=${execs:-0} execs_per_s=$(( ${execs:-0} / SECONDS_EACH ))" \
         "corpus_added=$(stat new_units_added) peak_rss_mb=$(stat peak_rss_mb) crash=$([ $rc -eq 0 ] && echo 0 || echo 1)"
    if [ $rc -ne 0 ]; then
      failed=1
      grep -a -E "fuzz check failed|ERROR: |SUMMARY|Test unit written" "$log" | head -5 | sed 's/^/  /'
    fi
  done
  exit $failed
fi
