#!/usr/bin/python3
"""Charts of benchmark output: throughput and p50/p99 latency by payload size.

Reads the one-line-per-case output of the benchmarks in bench/ (a program name,
then key=value fields, as echo_bench, rpc_bench and transport_bench print) from
files or stdin and writes one PNG: a column of panels per concurrency (when the
lines have one), throughput (MBps, or rps when a line has no MBps) on top and
latency below (bar: p50, whisker: p99), each case's bars grouped by payload
size. Every run's same-run baselines (gRPC, raw sockets, perftest, ...) are
series of their own, beside hrpc's. Lines with error= and lines that are not
key=value are skipped (and counted on stderr).

    build/release/bench/echo_bench | tee echo.txt
    bench/plot.py echo.txt -o docs/img/echo_bench.png
"""
import argparse
import math
import shlex
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# Fields that are measurements or run details, not what names a series.
METRICS = {"rps", "MBps", "GBps", "p50_us", "p99_us", "p999_us", "cpu", "rounds", "iters", "seconds", "calls",
           "errors", "copied", "copied_bytes"}
METRIC_PREFIXES = ("ratio", "raw_", "p50_vs", "baseline_")
X_FIELDS = ("payload", "size", "bytes")
PANEL_FIELD = "concurrency"
HRPC_TRANSPORTS = {"tcp", "rdma", "loop"}


def parse(stream, bad):
    """Yields (bench, {field: value}) for each key=value line."""
    for line in stream:
        line = line.strip()
        if not line or "=" not in line:
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            bad["unparsable"] += 1
            continue
        if "=" in tokens[0] or len(tokens) < 2:
            bad["unparsable"] += 1
            continue
        fields = {}
        for tok in tokens[1:]:
            key, sep, value = tok.partition("=")
            if not sep:
                break
            fields[key] = value
        else:
            if "error" in fields:
                bad["error"] += 1
                continue
            if "per_round" in fields:  # a baseline's median over rounds, drawn from its own line
                bad["per_round"] += 1
                continue
            yield tokens[0], fields
            continue
        bad["unparsable"] += 1


def number(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def is_metric(key, value):
    return key in METRICS or key.startswith(METRIC_PREFIXES) or number(value) is not None


def series_label(bench, fields, x_field):
    """hrpc lines are named by their transport; baselines by what they are.
    Numeric fields are measurements, not names."""
    parts = []
    transport = fields.get("transport")
    if transport in HRPC_TRANSPORTS:
        parts.append("hrpc " + transport)
    elif transport:
        parts.append(transport)
    for key, value in fields.items():
        if key in ("transport", x_field, PANEL_FIELD) or is_metric(key, value):
            continue
        parts.append(value if key in ("case", "poll") else f"{key}={value}")
    return " ".join(parts) or bench


def size_label(n):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def collect(lines):
    """{panel: {x: {series: fields}}}, the series in order of appearance."""
    panels = OrderedDict()
    series = OrderedDict()
    for bench, fields in lines:
        x_field = next((f for f in X_FIELDS if number(fields.get(f)) is not None), None)
        if x_field is None:
            continue
        x = int(number(fields[x_field]))
        panel = fields.get(PANEL_FIELD)
        label = series_label(bench, fields, x_field)
        series.setdefault(label, None)
        panels.setdefault(panel, {}).setdefault(x, OrderedDict())[label] = fields
    return panels, list(series)


def throughput(fields):
    if number(fields.get("MBps")) is not None:
        return number(fields["MBps"]), "MB/s"
    if number(fields.get("GBps")) is not None:
        return number(fields["GBps"]) * 1000, "MB/s"
    if number(fields.get("rps")) is not None:
        return number(fields["rps"]), "calls/s"
    return None, None


def draw(panels, series, title, out):
    def panel_key(p):
        return (p is None, number(p) or 0)

    keys = sorted(panels, key=panel_key)
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(series)}
    fig, axes = plt.subplots(2, len(keys), figsize=(5.2 * len(keys) + 1, 8.5), squeeze=False)
    for col, key in enumerate(keys):
        by_x = panels[key]
        xs = sorted(by_x)
        top, bottom = axes[0][col], axes[1][col]
        units = set()
        values = {top: [], bottom: []}
        width = 0.8 / max(len(by_x[x]) for x in xs)  # one bar width per panel
        for i, x in enumerate(xs):
            present = [s for s in series if s in by_x[x]]
            start = i - width * len(present) / 2
            for j, s in enumerate(present):
                f = by_x[x][s]
                pos = start + width * (j + 0.5)
                value, unit = throughput(f)
                if value is not None and value > 0:
                    units.add(unit)
                    top.bar(pos, value, width, color=colors[s])
                    values[top].append(value)
                p50, p99 = number(f.get("p50_us")), number(f.get("p99_us"))
                if p50 is not None and p50 > 0:
                    bottom.bar(pos, p50, width, color=colors[s])
                    values[bottom].append(p50)
                    if p99 is not None and p99 >= p50:
                        bottom.errorbar(pos, p50, yerr=[[0], [p99 - p50]], color="black", capsize=3, lw=1)
                        values[bottom].append(p99)
        name = f"{PANEL_FIELD}={key}" if key is not None else ""
        for ax, ylabel in ((top, "throughput (" + " or ".join(sorted(units)) + ")"), (bottom, "latency (µs)")):
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels([size_label(x) for x in xs])
            ax.set_yscale("log")
            if values[ax]:  # whole decades: bars compare as ratios, not as zoomed-in differences
                low, high = min(values[ax]), max(values[ax]) * 1.05
                ax.set_ylim(10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high)))
            ax.grid(axis="y", which="both", alpha=0.3)
            ax.set_xlabel("payload")
            ax.set_ylabel(ylabel)
        top.set_title(f"throughput {name}".strip())
        bottom.set_title(f"latency {name}: bar p50, whisker p99".strip())
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[s]) for s in series]
    fig.legend(handles, series, loc="lower center", ncol=min(len(series), 4), frameon=False)
    fig.suptitle(title)
    rows = (len(series) + 3) // 4
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 0.97))
    fig.savefig(out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="*", help="benchmark output files (default: stdin)")
    ap.add_argument("-o", "--output", required=True, help="the PNG to write")
    ap.add_argument("--bench", help="only lines of this program (default: the first one seen)")
    ap.add_argument("--title", help="figure title (default: the program name)")
    args = ap.parse_args()

    bad = {"error": 0, "unparsable": 0, "per_round": 0}
    lines = []
    for path in args.inputs or ["-"]:
        with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
            lines.extend(parse(f, bad))
    bench = args.bench or (lines[0][0] if lines else None)
    lines = [(b, f) for b, f in lines if b == bench]
    panels, series = collect(lines)
    if not panels:
        sys.exit(f"plot.py: no {bench or 'benchmark'} lines with a payload size and a measurement")
    draw(panels, series, args.title or bench, args.output)
    cases = sum(len(s) for p in panels.values() for s in p.values())
    print(f"plot.py: {args.output}: {cases} cases of {bench} in {len(series)} series"
          f" ({bad['error']} error lines, {bad['per_round']} per-round baseline medians,"
          f" {bad['unparsable']} other lines skipped)", file=sys.stderr)


if __name__ == "__main__":
    main()
