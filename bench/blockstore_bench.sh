#!/usr/bin/env bash
# blockstore_bench.sh [BUILD_DIR] — examples/blockstore end to end over TCP loopback:
# blockstore_server on a file (O_DIRECT, io_uring), blockstore_client
# writing then reading that file sequentially in 1 MiB blocks with N requests in flight,
# and in the same run fio on the same file with the same block size, iodepth=N,
# direct=1, io_uring + fixedbufs (the disk alone: the ceiling the RPC path runs
# against). One line per case:
#   blockstore_bench op=write transport=tcp bs=1048576 concurrency=4 bytes=… MBps=… copied_bytes=0
#     fixed_slices=… vectored_slices=0 fio_MBps=… ratio_vs_fio=… server_cpu=0 client_cpu=1 fio_cpu=0
# copied_bytes: payload bytes the server's CPU copied during that client run (Stat, CountedCopy);
# fixed/vectored_slices: how the sink sent them to the disk (WRITE_FIXED/READ_FIXED vs WRITEV/READV).
# The server (and fio, which stands in for the server's disk I/O) is pinned to
# BLOCKSTORE_SERVER_CPU (default 0), the client to BLOCKSTORE_CLIENT_CPU (default 1).
#
# Environment: BLOCKSTORE_FILE (default BUILD_DIR/bench/blockstore_bench.dat),
# BLOCKSTORE_SIZE_MIB (default 512), BLOCKSTORE_BS (default 1048576),
# BLOCKSTORE_CONCURRENCY (default "1 4 16"), BLOCKSTORE_REPEAT (default 2: each case
# runs this many times, client and fio alternating which goes first; best of each —
# the disk is virtual and shared).
# BUILD_DIR defaults to build/release; it needs HRPC_BUILD_EXAMPLES=ON (a Release build).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd -P)
root=$(cd "$here/.." && pwd -P)
BUILD=$(cd "${1:-$root/build/release}" && pwd -P) || exit 2
SERVER=$BUILD/examples/blockstore/blockstore_server
CLIENT=$BUILD/examples/blockstore/blockstore_client
FILE=${BLOCKSTORE_FILE:-$BUILD/bench/blockstore_bench.dat}
SIZE_MIB=${BLOCKSTORE_SIZE_MIB:-512}
BS=${BLOCKSTORE_BS:-1048576}
CONCURRENCY=${BLOCKSTORE_CONCURRENCY:-1 4 16}
REPEAT=${BLOCKSTORE_REPEAT:-2}
SCPU=${BLOCKSTORE_SERVER_CPU:-0}
CCPU=${BLOCKSTORE_CLIENT_CPU:-1}
for b in "$SERVER" "$CLIENT"; do
  [ -x "$b" ] || { echo "blockstore_bench: build $b first (-DHRPC_BUILD_EXAMPLES=ON)" >&2; exit 2; }
done
command -v fio >/dev/null || { echo "blockstore_bench: fio is not installed (apt-get install fio)" >&2; exit 2; }
command -v taskset >/dev/null || { echo "blockstore_bench: taskset is not installed (util-linux)" >&2; exit 2; }
mkdir -p "$(dirname "$FILE")"

out=$(mktemp)
spid=
cleanup() {
  if [ -n "$spid" ]; then kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; fi
  rm -f "$out"
}
trap cleanup EXIT
# The server creates and sizes the file (fallocate); the first write pass below
# turns every extent into written blocks before anything is measured.
taskset -c "$SCPU" "$SERVER" --file="$FILE" --size="$((SIZE_MIB << 20))" --listen=tcp://127.0.0.1:0 \
  --log=warn >"$out" 2>&1 &
spid=$!
uri=
for _ in $(seq 100); do
  uri=$(sed -n 's/^READY //p' "$out")
  [ -n "$uri" ] && break
  kill -0 "$spid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$uri" ] || { echo "blockstore_bench: server did not start:" >&2; cat "$out" >&2; exit 1; }

client() {  # op concurrency -> the client's blockstore_bench line
  taskset -c "$CCPU" "$CLIENT" --server="$uri" --size="$((SIZE_MIB << 20))" --block_size="$BS" \
    --concurrency="$2" --ops="$1" --log=warn | grep '^blockstore_bench '
}
fio_mbps() {  # op concurrency -> MB/s (10^6) of one sequential pass over the file
  local line
  line=$(taskset -c "$SCPU" fio --name=blockstore --filename="$FILE" --rw="$1" --bs="$BS" --iodepth="$2" \
    --ioengine=io_uring --fixedbufs --direct=1 --size="${SIZE_MIB}m" --numjobs=1 --thread \
    --output-format=terse 2>/dev/null) || { echo 0; return; }
  # terse v3: field 7 = read bandwidth, field 48 = write bandwidth, KiB/s
  awk -F';' -v op="$1" '{ printf "%.1f", (op == "read" ? $7 : $48) * 1024 / 1e6 }' <<<"$line"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? a : b }'; }

echo "blockstore_bench file=$FILE size_mib=$SIZE_MIB bs=$BS repeat=$REPEAT server=$uri server_cpu=$SCPU client_cpu=$CCPU"
client write 16 >/dev/null || { echo "blockstore_bench: warm-up write failed" >&2; exit 1; }
rc=0
for op in write read; do
  for c in $CONCURRENCY; do
    best= fbest=0
    for r in $(seq "$REPEAT"); do
      if [ $((r % 2)) = 0 ]; then fbest=$(max "$fbest" "$(fio_mbps "$op" "$c")"); fi
      line=$(client "$op" "$c") || { echo "blockstore_bench op=$op concurrency=$c FAILED"; rc=1; continue; }
      if [ -z "$best" ] || awk -v a="$(field MBps "$line")" -v b="$(field MBps "$best")" 'BEGIN { exit !(a > b) }'; then
        best=$line
      fi
      if [ $((r % 2)) = 1 ]; then fbest=$(max "$fbest" "$(fio_mbps "$op" "$c")"); fi
    done
    [ -n "$best" ] || continue
    mbps=$(field MBps "$best")
    ratio=$(awk -v a="$mbps" -v b="$fbest" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    echo "blockstore_bench op=$op transport=$(field transport "$best") bs=$BS concurrency=$c" \
      "bytes=$(field bytes "$best") MBps=$mbps copied_bytes=$(field copied_bytes "$best")" \
      "fixed_slices=$(field fixed_slices "$best") vectored_slices=$(field vectored_slices "$best")" \
      "fio_MBps=$fbest ratio_vs_fio=$ratio server_cpu=$SCPU client_cpu=$CCPU fio_cpu=$SCPU"
  done
done
exit $rc
