#!/usr/bin/env bash
# Every program with command-line flags answers --help (exit 0, the flags on
# stdout) and refuses an unknown flag or a bad value with exit code 2.
#   flags_test.sh PROGRAM...   (a PROGRAM may carry a subcommand: "hrpc call")
set -uo pipefail
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failed=0
check() {  # check WANT_RC PATTERN STREAM CMD...
  local want=$1 pattern=$2 stream=$3; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
  local rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qE -- "$pattern" "$TMP/$stream"; then
    echo "FAIL: '${*##*/}' exited $rc (want $want), $stream lacks /$pattern/:" >&2
    cat "$TMP/out" "$TMP/err" >&2
    failed=1
  else
    echo "ok: '${*##*/}' -> $rc"
  fi
}
for prog in "$@"; do
  # shellcheck disable=SC2086  # "hrpc call" splits into program and subcommand
  set -- $prog
  check 0 '--help' out "$@" --help
  check 2 'no-such-flag' err "$@" --no-such-flag
  check 2 'no-such-flag' err "$@" --no-such-flag=1
done
exit $failed
