#!/usr/bin/env bash
# bench/plot.py on a real echo_bench output: a PNG with every case, and a
# clear failure on input without benchmark lines.
#   plot_test.sh PLOT_PY ECHO_BENCH_OUTPUT OUT_DIR
set -euo pipefail
PLOT=$1 INPUT=$2 OUT=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
mkdir -p "$OUT"
rm -f "$OUT/echo.png"
"$PLOT" "$INPUT" -o "$OUT/echo.png" 2>"$OUT/err" || { cat "$OUT/err" >&2; fail "plot.py failed"; }
cat "$OUT/err"
# Every well-formed case line of the input is plotted (the medians of
# baselines measured again in each round are not: their own lines are).
cases=$(grep -E '^echo_bench .*payload=[0-9]+' "$INPUT" | grep -v ' error=' | grep -vc ' per_round=' || true)
grep -qE "plot.py: .*: $cases cases of echo_bench in [0-9]+ series" "$OUT/err" ||
  fail "expected $cases cases in the summary"
[ "$(head -c 8 "$OUT/echo.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "not a PNG"
[ "$(stat -c %s "$OUT/echo.png")" -gt 20000 ] || fail "PNG suspiciously small"
# No benchmark lines: a message and a non-zero exit, no PNG.
rm -f "$OUT/none.png"
if echo "hello" | "$PLOT" -o "$OUT/none.png" 2>"$OUT/err"; then fail "plot.py accepted input without cases"; fi
grep -q "no benchmark lines" "$OUT/err" || fail "no clear message for empty input"
[ ! -e "$OUT/none.png" ] || fail "a PNG was written for empty input"
echo "PASS"
