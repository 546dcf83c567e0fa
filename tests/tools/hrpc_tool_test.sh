#!/usr/bin/env bash
# The hrpc command-line tool against a real echo_server process.
# (case chat: echo_client's bidirectional Chat stream against it).
#   hrpc_tool_test.sh CASE HRPC ECHO_SERVER ECHO_PROTO [ECHO_CLIENT]
# CASE: call | call_reflection | attachment | list | bad_input | press | stats | chat
set -euo pipefail
CASE=$1 HRPC=$2 SERVER=$3 PROTO=$4 CLIENT=${5:-}
TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$SERVER" --listen=tcp://127.0.0.1:0 --log=info >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
URI=
for _ in $(seq 1 300); do
  URI=$(grep -oE 'echo_server: listening on tcp://127\.0\.0\.1:[0-9]+' "$TMP/server.log" | grep -oE 'tcp://.*' || true)
  [ -n "$URI" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server.log" >&2; fail "echo_server exited"; }
  sleep 0.1
done
[ -n "$URI" ] || { cat "$TMP/server.log" >&2; fail "echo_server did not start"; }

# run EXPECTED_RC CMD...: runs CMD, output in $TMP/out and $TMP/err, checks the exit code.
run() {
  local want=$1; shift
  set +e
  "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  set -e
  echo "\$ ${*##*/} -> exit $rc"; cat "$TMP/out"; cat "$TMP/err" >&2
  [ "$rc" -eq "$want" ] || fail "exit code $rc, expected $want: $*"
}
expect_out() { grep -qE -- "$1" "$TMP/out" || fail "stdout lacks /$1/"; }
expect_err() { grep -qE -- "$1" "$TMP/err" || fail "stderr lacks /$1/"; }

case $CASE in
  call)
    run 0 "$HRPC" call "$URI" hrpc_examples.Echo.Echo --proto "$PROTO" '{"text": "hello from json"}'
    expect_out '"text": "hello from json"'
    expect_out '"attachment_bytes": "0"'
    ;;
  call_reflection)  # no --proto: the types come from the server's hrpc.Reflection; a bare service name
    run 0 "$HRPC" call "$URI" Echo/Echo '{"text": "via reflection"}'
    expect_out '"text": "via reflection"'
    ;;
  attachment)
    head -c 300000 /dev/urandom >"$TMP/in.bin"
    run 0 "$HRPC" call "$URI" hrpc_examples.Echo.Echo --proto "$PROTO" --attachment "$TMP/in.bin" \
      --save-attachment "$TMP/back.bin" '{"text": "a", "echo_attachment": true}'
    expect_out '"attachment_bytes": "300000"'
    cmp "$TMP/in.bin" "$TMP/back.bin" || fail "the echoed attachment differs from the file sent"
    ;;
  list)
    run 0 "$HRPC" list "$URI"
    expect_out '^hrpc_examples\.Echo +\(id 0x1ee9d1b7, echo/echo\.proto\)'
    expect_out '^  rpc Echo\(hrpc_examples\.EchoRequest\) returns \(hrpc_examples\.EchoResponse\)'
    expect_out '^  rpc ServerStats\(hrpc_examples\.StatsRequest\) returns \(hrpc_examples\.StatsResponse\)'
    expect_out '^  rpc Chat\(stream hrpc_examples\.EchoRequest\) returns \(stream hrpc_examples\.EchoResponse\)'
    expect_out '^hrpc\.Reflection '
    ;;
  bad_input)
    run 2 "$HRPC" call "$URI" hrpc_examples.Echo.Echo --proto "$PROTO" '{"text": '
    expect_err 'request is not a valid hrpc_examples\.EchoRequest in JSON'
    run 2 "$HRPC" call "$URI" hrpc_examples.Echo.Echo --proto "$PROTO" '{"no_such_field": 1}'
    expect_err 'not a valid hrpc_examples\.EchoRequest'
    run 2 "$HRPC" call "$URI" hrpc_examples.Echo.Nope --proto "$PROTO" '{}'
    expect_err "service hrpc_examples\.Echo has no method 'Nope' \(it has: Echo, ServerStats, Chat\)"
    run 2 "$HRPC" call "$URI" hrpc_examples.Nope.Echo '{}'
    expect_err "serves no service 'hrpc_examples\.Nope' \(it serves: hrpc\.Reflection, hrpc_examples\.Echo\)"
    echo 'syntax = "proto3"; message {' >"$TMP/broken.proto"
    run 2 "$HRPC" call "$URI" X.Y --proto "$TMP/broken.proto" '{}'
    expect_err 'broken\.proto:1:'
    run 2 "$HRPC" list "$URI" --no-such-flag
    expect_err 'no-such-flag'
    ;;
  press)
    run 0 "$HRPC" press "$URI" hrpc_examples.Echo.Echo '{"text": "load"}' --duration 2 --warmup 0.2 --concurrency 4
    expect_out '^method +qps +conc +calls +errors +seconds +rps +p50_us +p90_us +p99_us +p999_us +max_us'
    # calls > 0, errors 0, rps > 0, p50 > 0
    awk '$1 == "hrpc_examples.Echo.Echo" { ok = ($4 > 0 && $5 == 0 && $7 > 0 && $8 > 0) } END { exit ok ? 0 : 1 }' \
      "$TMP/out" || fail "press table has no calls, or errors"
    expect_err 'calls +[0-9]+ +[0-9]+ rps'  # the progress line
    run 0 "$HRPC" press "$URI" hrpc_examples.Echo.Echo --proto "$PROTO" --qps 200 --duration 1 --warmup 0 \
      --no-progress
    # 200 calls per second for 1 s, paced: not above 200 (plus the slot at each edge).
    awk '$1 == "hrpc_examples.Echo.Echo" { ok = ($4 >= 100 && $4 <= 215) } END { exit ok ? 0 : 1 }' \
      "$TMP/out" || fail "--qps 200 for 1 s did not make about 200 calls"
    ;;
  stats)
    for i in 1 2 3; do run 0 "$HRPC" call "$URI" hrpc_examples.Echo.Echo --proto "$PROTO" '{"text": "x"}'; done
    run 0 "$HRPC" stats "$URI"
    expect_out '^tcp://127\.0\.0\.1:[0-9]+ \(up [0-9.]+ s\)'
    expect_out '^method +calls +errors'
    awk '$1 == "hrpc_examples.Echo.Echo" { ok = ($2 >= 3) } END { exit ok ? 0 : 1 }' "$TMP/out" ||
      fail "stats do not show the 3 Echo calls"
    expect_out '^hrpc_examples\.Echo\.ServerStats +0 '
    ! grep -q 'hrpc\.Reflection' "$TMP/out" || fail "stats count reflection calls"
    ;;
  chat)
    # Five messages with 64 KiB attachments over one stream, each echoed back.
    run 0 "$CLIENT" --uri="$URI" --chat --count=5 --attachment=64K
    [ "$(grep -c 'echoed back 65536 bytes, crc ok' "$TMP/out")" -eq 5 ] || fail "not every chat message came back intact"
    expect_out '^chat 4: "hello, hrpc #4"'
    expect_out '^chat ended: OK'
    expect_out '^hrpc_examples\.Echo\.Chat +1 +0 '
    ;;
  *) fail "unknown case $CASE" ;;
esac
echo "PASS $CASE"
