#!/usr/bin/env python3
"""Draws the peers bench's output as an SVG bar chart: per peer, its overhead over the bare
Router, median (criterion) and p99 (requests timed one by one); and prints the same figures
as a Markdown table (the README's). Standard library only.

    cargo bench -p id6-tower-peers     # writes target/peers.json
    python3 peers/chart.py             # target/peers.json -> docs/peers.svg
    python3 peers/chart.py IN.json OUT.svg
"""
import json
import math
import os
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
MEDIAN_COLOUR = "#2b6cb0"
P99_COLOUR = "#ed8936"


def nice_step(span, ticks=5):
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks."""
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def ns(value):
    """`+608 ns` or `+5.89 µs`."""
    if abs(value) >= 1000:
        return f"{value / 1000:+.2f} µs"
    return f"{value:+.0f} ns"


def chart(data):
    peers = [c for c in data["cases"] if c["case"] != "bare"]
    bare = next(c for c in data["cases"] if c["case"] == "bare")
    values = [v for c in peers for v in (c["overhead_ns"], c["p99_overhead_ns"])]
    low, high = min(0.0, *values), max(0.0, *values)
    step = nice_step(high - low)
    # The axis ends on a tick to the right; to the left it stops just past the smallest bar
    # (a few tens of ns below zero need no whole step).
    high = math.ceil(high / step) * step
    low = low - 0.02 * (high - low) if low < 0 else 0.0

    left, right, top = 150, 150, 104
    plot_width = 420
    bar, gap, group_gap = 16, 4, 22
    group = 2 * bar + gap
    plot_height = len(peers) * group + (len(peers) - 1) * group_gap
    width = left + plot_width + right
    height = top + plot_height + 58

    def x(value):
        return left + (value - low) / (high - low) * plot_width

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="24" font-size="15" font-weight="bold">'
        "What each adds to one request over the bare axum Router</text>",
        f'<text x="{left}" y="43" fill="#555">'
        + escape(
            f"bare Router: median {bare['median_ns']:.0f} ns, p99 {bare['p99_ns']} ns; "
            f"lower is better"
        )
        + "</text>",
        f'<text x="{left}" y="60" fill="#555">'
        + escape(
            f"{data['date_utc']} UTC, {data['cpus']} CPUs, load average "
            f"{data['load_average_before']} (before) / {data['load_average_after']} (after)"
        )
        + "</text>",
    ]
    # Legend.
    legend_y = 82
    for i, (colour, label) in enumerate(
        [(MEDIAN_COLOUR, "median (criterion)"), (P99_COLOUR, "p99 (timed one by one)")]
    ):
        lx = left + i * 190
        out.append(f'<rect x="{lx}" y="{legend_y - 9}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 17}" y="{legend_y + 1}">{escape(label)}</text>')

    # Grid and axis.
    tick = math.ceil(low / step) * step
    while tick <= high + step / 2:
        tx = x(tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{top + plot_height + 4}" '
            f'stroke="{"#888" if tick == 0 else "#e2e2e2"}"/>'
        )
        label = f"{tick / 1000:g} µs" if abs(high) >= 2000 else f"{tick:g} ns"
        out.append(
            f'<text x="{tx:.1f}" y="{top + plot_height + 20}" text-anchor="middle" '
            f'fill="#555">{escape(label)}</text>'
        )
        tick += step
    out.append(
        f'<text x="{left + plot_width / 2}" y="{top + plot_height + 42}" text-anchor="middle" '
        f'fill="#333">overhead over the bare Router, per request</text>'
    )

    # Bars.
    for i, case in enumerate(peers):
        y0 = top + i * (group + group_gap)
        out.append(
            f'<text x="{left - 10}" y="{y0 + group / 2 + 4}" text-anchor="end" '
            f'font-weight="bold">{escape(case["case"])}</text>'
        )
        rows = [
            (case["overhead_ns"], MEDIAN_COLOUR, f"{ns(case['overhead_ns'])} ({case['ratio']:.2f}×)"),
            (
                case["p99_overhead_ns"],
                P99_COLOUR,
                f"{ns(case['p99_overhead_ns'])} (p99 {case['p99_ns']} ns)",
            ),
        ]
        for j, (value, colour, label) in enumerate(rows):
            by = y0 + j * (bar + gap)
            x0, x1 = sorted((x(0), x(value)))
            out.append(
                f'<rect x="{x0:.1f}" y="{by}" width="{max(x1 - x0, 1):.1f}" height="{bar}" '
                f'fill="{colour}"><title>{escape(label)}</title></rect>'
            )
            out.append(
                f'<text x="{max(x1, x(0)) + 5:.1f}" y="{by + bar - 4}" fill="#222">'
                f"{escape(label)}</text>"
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def markdown(data):
    """The README's table."""
    lines = [
        "| case | median | overhead | ratio | p50 | p99 | p99 overhead | p99 / p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in data["cases"]:
        bare = case["case"] == "bare"
        lines.append(
            "| {} | {:,.0f} ns | {} | {} | {:,} ns | {:,} ns | {} | {:.2f}× |".format(
                "bare Router" if bare else case["case"],
                case["median_ns"],
                "" if bare else ns(case["overhead_ns"]),
                "" if bare else f"{case['ratio']:.2f}×",
                case["p50_ns"],
                case["p99_ns"],
                "" if bare else ns(case["p99_overhead_ns"]),
                case["p99_ns"] / case["p50_ns"],
            ).replace(",", " ")
        )
    return "\n".join(lines) + "\n"


def main(argv):
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    source = Path(argv[1]) if len(argv) > 1 else target / "peers.json"
    dest = Path(argv[2]) if len(argv) > 2 else ROOT / "docs" / "peers.svg"
    try:
        data = json.loads(source.read_text())
    except FileNotFoundError:
        sys.exit(f"{source}: not found; run `cargo bench -p id6-tower-peers` first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(chart(data))
    print(markdown(data))
    print(f"written: {dest}")


if __name__ == "__main__":
    main(sys.argv)
