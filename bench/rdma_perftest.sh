#!/usr/bin/env bash
# rdma_perftest.sh — the perftest baseline (the limit hrpc's rdma transport is measured
# against), run server+client over the Soft-RoCE device in ONE guest run.
#
#   bench/rdma_perftest.sh            boots the guest (../shared/rxe/run-in-rxe-guest.sh)
#                                     and runs itself inside it
#   RXE_GUEST=1 bench/rdma_perftest.sh   runs directly (inside the guest, or on a host with
#                                     a real RDMA device: set RXE_GUEST_DEV/ADDR/GID_INDEX)
#
# Prints one line per case (MBps in MiB/s = 2^20 bytes/s, perftest's own unit; the
# latency is perftest's one-way figure, i.e. half the round trip):
#   perftest case=write size=65536 MBps=48.96
#   perftest case=read size=1048576 MBps=...
#   perftest case=send_lat size=64 p50_us=... avg_us=... p99_us=...
# Other scripts source this file (HRPC_PERFTEST_LIB=1) for perftest_bw / perftest_lat.
#
# Settings: PERFTEST_SIZES (default "65536 262144 1048576"), PERFTEST_BYTES (per bw case,
# default 96 MiB), PERFTEST_TX_DEPTH (default 16), PERFTEST_LAT_ITERS (default 5000).
set -uo pipefail

PT_DEV=${RXE_GUEST_DEV:-rxe0}
PT_ADDR=${RXE_GUEST_ADDR:-10.11.0.1}
PT_GID=${RXE_GUEST_GID_INDEX:-1}
PT_PORT=${PERFTEST_PORT:-18600}
PT_TMP=${TMPDIR:-/tmp}

# pt_pair NAME "server command" "client command": starts the server, retries the client
# until the server listens (never a fixed sleep), waits for both. Output in $PT_TMP/NAME.{srv,cli}.
pt_pair() {
  local name=$1 srv=$2 cli=$3 sp rc=1 i src
  timeout 120 bash -c "$srv" > "$PT_TMP/$name.srv" 2>&1 & sp=$!
  for i in $(seq 100); do
    timeout 120 bash -c "$cli" > "$PT_TMP/$name.cli" 2>&1; rc=$?
    if [ $rc != 0 ] && grep -q -E "Couldn't connect|Unable to|Failed to|Connection refused|rdma_connect" "$PT_TMP/$name.cli"; then
      kill -0 $sp 2>/dev/null || break
      sleep 0.3; continue
    fi
    break
  done
  wait $sp; src=$?
  if [ $rc != 0 ] || [ $src != 0 ]; then
    echo "perftest: $name failed (client rc=$rc server rc=$src)" >&2
    tail -n 5 "$PT_TMP/$name.cli" "$PT_TMP/$name.srv" >&2
    return 1
  fi
}

# perftest_bw write|read SIZE → prints the average MiB/s. Iteration mode (-n) moving
# PERFTEST_BYTES (default 96 MiB) with PERFTEST_TX_DEPTH (default 16, the depth
# rdma_transport_bench keeps outstanding) — in duration mode under a loaded TCG guest
# 1 MiB runs can end with no completion inside the window and report 0.
perftest_bw() {
  local op=$1 size=$2 bytes=${PERFTEST_BYTES:-100663296}
  local iters=$((bytes / size)); [ $iters -lt 8 ] && iters=8
  PT_PORT=$((PT_PORT + 1))
  local args="-d $PT_DEV -x $PT_GID -s $size -n $iters -t ${PERFTEST_TX_DEPTH:-16} -F -p $PT_PORT"
  pt_pair "${op}_bw_$size" "ib_${op}_bw $args" "ib_${op}_bw $args $PT_ADDR" || return 1
  awk -v s="$size" '$1 == s && NF >= 5 { v = $4 } END { if (v == "") exit 1; print v }' \
    "$PT_TMP/${op}_bw_$size.cli"
}

# perftest_lat SIZE → prints "p50_us=… avg_us=… p99_us=…" (one-way, perftest's convention)
perftest_lat() {
  local size=$1 iters=${PERFTEST_LAT_ITERS:-5000}
  PT_PORT=$((PT_PORT + 1))
  local args="-d $PT_DEV -x $PT_GID -s $size -n $iters -F -p $PT_PORT"
  pt_pair "send_lat_$size" "ib_send_lat $args" "ib_send_lat $args $PT_ADDR" || return 1
  awk -v s="$size" '$1 == s && NF >= 8 { l = "p50_us=" $5 " avg_us=" $6 " p99_us=" $8 }
                    END { if (l == "") exit 1; print l }' "$PT_TMP/send_lat_$size.cli"
}

perftest_main() {
  local op size v fail=0
  for op in write read; do
    for size in ${PERFTEST_SIZES:-65536 262144 1048576}; do
      if v=$(perftest_bw $op "$size"); then
        echo "perftest case=$op size=$size MBps=$v"
      else
        echo "perftest case=$op size=$size FAILED"; fail=1
      fi
    done
  done
  if v=$(perftest_lat 64); then
    echo "perftest case=send_lat size=64 $v"
  else
    echo "perftest case=send_lat size=64 FAILED"; fail=1
  fi
  return $fail
}

if [ "${HRPC_PERFTEST_LIB:-0}" = 1 ]; then
  return 0 2>/dev/null || true
fi
if [ "${RXE_GUEST:-0}" != 1 ]; then
  here=$(cd "$(dirname "$0")" && pwd -P)
  guest=${HRPC_RXE_GUEST:-$here/../../shared/rxe/run-in-rxe-guest.sh}
  [ -x "$guest" ] || { echo "rdma_perftest: no guest script at $guest" >&2; exit 2; }
  cd "$here/.." && exec "$guest" "$here/rdma_perftest.sh" "$@"
fi
perftest_main
