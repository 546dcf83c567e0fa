#!/usr/bin/env bash
# rdma-tests.sh BUILD_DIR — runs the ctest labels `rdma` and `netem` inside the Soft-RoCE
# guest (../shared/rxe/run-in-rxe-guest.sh: QEMU + rdma_rxe device rxe0 on 10.11.0.1;
# `netem`: network-namespace tests that need tc netem, which only the guest's kernel has).
#
# Exit status:
#   0  the rdma tests passed — or they were SKIPPED (no guest script, no qemu, the guest
#      could not be set up, or no rdma tests are registered). A skip prints a line starting
#      with "SKIPPED rdma tests:" and the reason: it is not a pass.
#   1  a test failed, or the guest ran out of time (RXE_GUEST_TIMEOUT).
#
# Environment:
#   HRPC_RXE_GUEST      path of run-in-rxe-guest.sh (default: ../shared/rxe/ next to the repo)
#   RXE_GUEST_TIMEOUT   overall guest limit in seconds, boot included (default here: 1500; the rdma label takes 6–11 minutes in the guest here, netem about 30 s, longer while the host is busy)
#   HRPC_RDMA_REQUIRED  1 = a skip is an error (exit 1), for machines that must run them
#   ASAN_OPTIONS / UBSAN_OPTIONS are passed through to the guest (its whole exported env is).
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 BUILD_DIR [extra ctest args...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd -P)
BUILD=$1; shift
BUILD=$(cd "$BUILD" 2>/dev/null && pwd -P) || { echo "rdma-tests: no build dir $1" >&2; exit 2; }
GUEST=${HRPC_RXE_GUEST:-$ROOT/../shared/rxe/run-in-rxe-guest.sh}

skip() {
  echo "SKIPPED rdma tests: $* (this is a skip, not a pass)"
  if [ "${HRPC_RDMA_REQUIRED:-0}" = 1 ]; then
    echo "rdma-tests: HRPC_RDMA_REQUIRED=1, so a skip fails" >&2
    exit 1
  fi
  exit 0
}

[ -x "$GUEST" ] || skip "no Soft-RoCE guest script at $GUEST"
command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 is not installed"
command -v ctest >/dev/null 2>&1 || skip "ctest is not installed"

LABELS='^(rdma|netem)$'
# Count the rdma tests on the host first: no guest boot (10+ s of TCG) when there are none.
n=$(ctest --test-dir "$BUILD" -N -L "$LABELS" 2>/dev/null | awk '/^Total Tests:/ {print $3}')
if [ -z "$n" ] || [ "$n" = 0 ]; then
  skip "no tests with label rdma or netem in $BUILD"
fi

export RXE_GUEST_TIMEOUT=${RXE_GUEST_TIMEOUT:-1500}
# ASan reserves terabytes of virtual memory but little RSS; the guest (2 GiB, no swap,
# overcommit on) runs it fine. LeakSanitizer works too (the command runs as root).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "rdma-tests: running $n rdma and netem test(s) from $BUILD in the Soft-RoCE guest (limit ${RXE_GUEST_TIMEOUT}s)"
t0=$(date +%s)
# Tests inside the guest run one at a time: the guest has 2 emulated vCPUs and each
# test forks servers and clients of its own.
"$GUEST" ctest --test-dir "$BUILD" -L "$LABELS" --output-on-failure "$@"
rc=$?
t1=$(date +%s)
case $rc in
  0)   echo "rdma-tests: PASSED ($n test(s), $((t1 - t0)) s in the guest)"; exit 0 ;;
  124) echo "rdma-tests: FAILED: the guest hit its time limit of ${RXE_GUEST_TIMEOUT}s" >&2; exit 1 ;;
  125) skip "the Soft-RoCE guest could not be set up (run-in-rxe-guest.sh exit 125; see its log above)" ;;
  *)   echo "rdma-tests: FAILED: ctest -L '$LABELS' exited with $rc in the guest ($((t1 - t0)) s)" >&2; exit 1 ;;
esac
