#!/usr/bin/env bash
# replication_bench.sh [BUILD_DIR] — the replicated blockstore over TCP loopback:
# blockstore_client -> leader -> 2 followers (three blockstore_server processes,
# fixed roles, --ack=all, each on its own files, O_DIRECT), sequential writes of
# 1 MiB and 16 KiB at 1 and 8 requests in flight. Every case runs twice in the
# same run: zero-copy (the pulled payload slabs go to the log, to the followers
# and to the chunk file as they are) and the copying baseline (--copy-payload:
# each node first copies the payload into a fresh aligned buffer, the path Curve
# had before its zero-copy work). One line per case:
#   replication_bench bs=1048576 concurrency=8 MBps=… MB_per_cpu_s=… copied_bytes=0 head_bytes_per_write=4096
#     leader_cpu_s_per_GB=… follower1_cpu_s_per_GB=… follower2_cpu_s_per_GB=…
#     baseline_MBps=… baseline_MB_per_cpu_s=… baseline_copied_bytes=… ratio_MB_per_cpu_s=… (pinning)
# MB_per_cpu_s: bytes written by the client / the CPU seconds of all three
# server processes during the run (user + system, from their Stat); cpu_s_per_GB
# per node; copied_bytes: payload bytes the three servers' CPUs copied (CountedCopy);
# head_bytes_per_write: on the leader (the followers build none).
# Pinning: the leader on REPL_LEADER_CPU (default 0), both followers on
# REPL_FOLLOWER_CPU (default 1), the client on REPL_CLIENT_CPU (default 1).
#
# Environment: REPL_DIR (default BUILD_DIR/bench/replication; files are removed
# at the end), REPL_MIB_LARGE (default 256: MiB written per 1 MiB case),
# REPL_MIB_SMALL (default 32: per 16 KiB case), REPL_DURABILITY (default none;
# dsync makes the virtual disk's flushes the bottleneck), REPL_REPEAT (default 2:
# each mode runs this many times, the two modes alternating; per case the run
# with the most MB per CPU-second of each mode is reported — the machine is shared),
# REPL_RAW=1 (the client's own lines, per node, on stderr), REPL_SPIN_US (default
# 50: how long each server's worker polls before it blocks; 0 blocks at once).
# BUILD_DIR defaults to build/release (HRPC_BUILD_EXAMPLES=ON, a Release build).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd -P)
root=$(cd "$here/.." && pwd -P)
BUILD=$(cd "${1:-$root/build/release}" && pwd -P) || exit 2
SERVER=$BUILD/examples/blockstore/blockstore_server
CLIENT=$BUILD/examples/blockstore/blockstore_client
DIR=${REPL_DIR:-$BUILD/bench/replication}
MIB_LARGE=${REPL_MIB_LARGE:-256}
MIB_SMALL=${REPL_MIB_SMALL:-32}
DURABILITY=${REPL_DURABILITY:-none}
REPEAT=${REPL_REPEAT:-2}
LCPU=${REPL_LEADER_CPU:-0}
FCPU=${REPL_FOLLOWER_CPU:-1}
CCPU=${REPL_CLIENT_CPU:-1}
SPIN_US=${REPL_SPIN_US:-50}
for b in "$SERVER" "$CLIENT"; do
  [ -x "$b" ] || { echo "replication_bench: build $b first (-DHRPC_BUILD_EXAMPLES=ON)" >&2; exit 2; }
done
command -v taskset >/dev/null || { echo "replication_bench: taskset is not installed (util-linux)" >&2; exit 2; }
mkdir -p "$DIR"
SIZE=$(( (MIB_LARGE * 4 + MIB_SMALL * 4 + 64) << 20 ))  # every case writes its own range

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
}
trap 'stop_all; rm -rf "$DIR"' EXIT

start() {  # log cpu args... -> sets URI (not in a subshell: pids must reach stop_all)
  local log=$1 cpu=$2; shift 2
  URI=
  rm -f "$log"
  taskset -c "$cpu" "$SERVER" "$@" --listen=tcp://127.0.0.1:0 --durability="$DURABILITY" --spin_us="$SPIN_US" --log=warn >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 200); do
    URI=$(sed -n 's/^READY //p' "$log" 2>/dev/null)
    [ -n "$URI" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "replication_bench: server did not start:" >&2
  cat "$log" >&2
  return 1
}

# One run of a mode (zero_copy | copy): fresh files, three servers, every case;
# sets RESULT[mode,bs,c,rep].
declare -A RESULT
run_mode() {
  local mode=$1 rep=$2 flag=
  [ "$mode" = copy ] && flag=--copy-payload
  rm -f "$DIR"/*.img "$DIR"/*.wal
  local f1 f2 l
  start "$DIR/f1.out" "$FCPU" --file="$DIR/f1.img" --size="$SIZE" --role=follower $flag || return 1
  f1=$URI
  start "$DIR/f2.out" "$FCPU" --file="$DIR/f2.img" --size="$SIZE" --role=follower $flag || return 1
  f2=$URI
  start "$DIR/l.out" "$LCPU" --file="$DIR/l.img" --size="$SIZE" --role=leader --followers="$f1,$f2" --ack=all \
    $flag || return 1
  l=$URI
  local off=0
  for bs in 1048576 16384; do
    local mib=$MIB_LARGE
    [ "$bs" = 16384 ] && mib=$MIB_SMALL
    for c in 1 8; do
      local out
      if out=$(taskset -c "$CCPU" "$CLIENT" --server="$l" --nodes="$l,$f1,$f2" --ops=write --offset="$off" \
        --size="$((mib << 20))" --block_size="$bs" --concurrency="$c" --log=warn); then
        RESULT[$mode,$bs,$c,$rep]=$out
        [ -n "${REPL_RAW:-}" ] && sed "s/^/  [$mode run $rep] /" <<<"$out" >&2
      else
        echo "replication_bench mode=$mode bs=$bs concurrency=$c: $out" >&2
        RESULT[$mode,$bs,$c,$rep]=
      fi
      off=$((off + (mib << 20)))
    done
  done
  stop_all
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2" | head -1; }
node_field() { grep "^replication node=.* role=$2 " <<<"$3" | sed -n "${4:-1}p" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
summ() {  # result -> "MBps MB_per_cpu_s copied head leader_cpg f1_cpg f2_cpg"
  local r=$1
  local mbps cpu_sum copied=0 l f1 f2 head
  mbps=$(sed -n 's/^blockstore_bench .* op=write .* MBps=\([^ ]*\).*/\1/p' <<<"$r")
  l=$(node_field cpu_s_per_GB leader "$r")
  f1=$(node_field cpu_s_per_GB follower "$r" 1)
  f2=$(node_field cpu_s_per_GB follower "$r" 2)
  head=$(node_field head_bytes_per_write leader "$r")
  for c in $(grep '^replication node=' <<<"$r" | sed -n 's/.* copied_bytes=\([0-9]*\).*/\1/p'); do copied=$((copied + c)); done
  cpu_sum=$(awk -v a="$l" -v b="$f1" -v c="$f2" 'BEGIN { print a + b + c }')
  echo "$mbps $(awk -v s="$cpu_sum" 'BEGIN { printf "%.1f", (s > 0 ? 1000 / s : 0) }') $copied $head $l $f1 $f2"
}

echo "replication_bench dir=$DIR durability=$DURABILITY ack=all transport=tcp spin_us=$SPIN_US repeat=$REPEAT leader_cpu=$LCPU follower_cpu=$FCPU client_cpu=$CCPU nproc=$(nproc)"
for rep in $(seq "$REPEAT"); do
  if [ $((rep % 2)) = 1 ]; then order="zero_copy copy"; else order="copy zero_copy"; fi
  for mode in $order; do run_mode "$mode" "$rep" || exit 1; done
done
best() {  # mode bs c -> the summary of the run with the most MB per CPU-second
  local line= top=-1 rep s
  for rep in $(seq "$REPEAT"); do
    [ -n "${RESULT[$1,$2,$3,$rep]}" ] || continue
    s=$(summ "${RESULT[$1,$2,$3,$rep]}")
    if awk -v a="$(cut -d' ' -f2 <<<"$s")" -v b="$top" 'BEGIN { exit !(a > b) }'; then line=$s; top=$(cut -d' ' -f2 <<<"$s"); fi
  done
  echo "$line"
}
rc=0
for bs in 1048576 16384; do
  for c in 1 8; do
    z=$(best zero_copy "$bs" "$c")
    b=$(best copy "$bs" "$c")
    if [ -z "$z" ] || [ -z "$b" ]; then echo "replication_bench bs=$bs concurrency=$c FAILED"; rc=1; continue; fi
    read -r zm zc zcopied zhead zl zf1 zf2 <<<"$z"
    read -r bm bc bcopied _ _ _ _ <<<"$b"
    ratio=$(awk -v a="$zc" -v b="$bc" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    echo "replication_bench bs=$bs concurrency=$c MBps=$zm MB_per_cpu_s=$zc copied_bytes=$zcopied" \
      "head_bytes_per_write=$zhead leader_cpu_s_per_GB=$zl follower1_cpu_s_per_GB=$zf1 follower2_cpu_s_per_GB=$zf2" \
      "baseline_MBps=$bm baseline_MB_per_cpu_s=$bc baseline_copied_bytes=$bcopied ratio_MB_per_cpu_s=$ratio" \
      "leader_cpu=$LCPU follower_cpu=$FCPU client_cpu=$CCPU"
  done
done
exit $rc
