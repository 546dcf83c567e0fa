#!/usr/bin/env bash
# The main job: installs what is missing, builds an optimized tree into
# build/release, and runs the samples: echo_server/echo_client once, then
# throughput_server and throughput_client as separate processes on loopback
# over the best available transport (RDMA if a device exists, else TCP;
# HRPC_TRANSPORT=tcp|rdma overrides), printing the throughput table; then a
# replicated blockstore of three blockstore_server processes (a leader and two
# followers) written by blockstore_client, with a line per node.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hrpc_install_deps

BUILD=${HRPC_DEMO_BUILD:-build/release}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHRPC_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target echo_server echo_client throughput_server throughput_client hrpc_tool \
  blockstore_server blockstore_client

EX="$BUILD/examples"
DURATION=${HRPC_DEMO_SECONDS:-4}
if [ "$(nproc)" -ge 2 ]; then SRV_CPU=(--cpus=0); CLI_CPU=(--cpus=1); else SRV_CPU=(); CLI_CPU=(); fi
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# Starts a server that prints "READY <uri>" (or "...listening on <uri>"); sets
# ADDR=host:port and SERVER_PID (not in a subshell, so cleanup can stop it).
start_server() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1 100); do
    if grep -qE '^(READY|echo_server: listening on) ' "$log"; then
      ADDR=$(grep -E '^(READY|echo_server: listening on) ' "$log" | grep -oE '[0-9.]+:[0-9]+$' | head -1 | sed 's/^0\.0\.0\.0/127.0.0.1/')
      return 0
    fi
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$log" >&2; return 1
}

echo "== echo: echo_server + echo_client (a 1 MiB attachment: streamed behind the frame on TCP, pulled by RDMA READ and pushed back by WRITE on RDMA) =="
start_server "$TMP/echo.log" "$EX/echo_server" --listen=127.0.0.1:0
"$EX/echo_client" --uri="$ADDR" --count=3 --attachment=1M
echo "-- the hrpc tool: list, call (JSON; the types from the server's hrpc.Reflection), stats"
"$BUILD/hrpc/hrpc" list "$ADDR"
"$BUILD/hrpc/hrpc" call "$ADDR" hrpc_examples.Echo.Echo '{"text": "hello from hrpc call"}'
"$BUILD/hrpc/hrpc" stats "$ADDR"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
echo

echo "== throughput: throughput_server (cpu 0) <- throughput_client (cpu 1), ${DURATION}s per run =="
start_server "$TMP/tput.log" "$EX/throughput_server" --listen=127.0.0.1:0 "${SRV_CPU[@]}"
echo "server: $(grep -E '^READY' "$TMP/tput.log")   (transport: ${HRPC_TRANSPORT:-auto-selected})"
echo "-- small messages: 2 connections x 32 in flight x 64 B"
"$EX/throughput_client" --uri="$ADDR" --connections=2 --concurrency=32 --payload=64 \
  --duration="$DURATION" --warmup=1 "${CLI_CPU[@]}"
echo
echo "-- bulk: 1 connection x 8 in flight x 1 MiB (TCP: each payload streamed behind its request; RDMA: pulled by one-sided READ)"
"$EX/throughput_client" --uri="$ADDR" --connections=1 --concurrency=8 --payload=1M \
  --duration="$DURATION" --warmup=1 "${CLI_CPU[@]}"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
echo
echo "== throughput_server's own stats =="
sed -n '/stopped/,$p' "$TMP/tput.log" | grep -v '\[info\]' 
echo

echo "== replicated blockstore: blockstore_client -> leader -> 2 followers (WAL on each node, O_DIRECT, --ack=all) =="
# Files under the build tree: /tmp may be tmpfs, which refuses O_DIRECT.
REPL="$BUILD/demo-replication"
rm -rf "$REPL" && mkdir -p "$REPL"
trap 'cleanup; rm -rf "$REPL"' EXIT
start_server "$TMP/f1.log" "$EX/blockstore/blockstore_server" --file="$REPL/f1.img" --size=64M --role=follower \
  --listen=127.0.0.1:0 --log=warn
F1=$ADDR
start_server "$TMP/f2.log" "$EX/blockstore/blockstore_server" --file="$REPL/f2.img" --size=64M --role=follower \
  --listen=127.0.0.1:0 --log=warn
F2=$ADDR
start_server "$TMP/leader.log" "$EX/blockstore/blockstore_server" --file="$REPL/leader.img" --size=64M \
  --role=leader --followers="$F1,$F2" --ack=all --listen=127.0.0.1:0 --log=warn
LEADER=$ADDR
for bs in 1M 12K; do
  echo "-- 32 MiB in ${bs} writes, 8 in flight, read back from the leader and verified (CRC32C)"
  "$EX/blockstore/blockstore_client" --server="$LEADER" --nodes="$LEADER,$F1,$F2" --size=32M --block_size="$bs" \
    --concurrency=8 --offset="$([ "$bs" = 1M ] && echo 0 || echo 32M)" --log=warn |
    awk '/^verify:/ { print } /^replication node=/ {
           for (i = 2; i <= NF; ++i) { split($i, kv, "="); v[kv[1]] = kv[2] }
           printf "  %-22s %-8s %8s MB/s  copied payload bytes %s  head bytes built per write %s  cpu %ss\n",
                  v["node"], v["role"], v["MBps"], v["copied_bytes"], v["head_bytes_per_write"], v["cpu_s"] }'
done
