"""The census charts of a capture, as inline SVG (matplotlib, Agg backend, text kept as text).

    census_charts(report, t0, ports, top, salt) -> [(caption, svg), ...]

1. TIME_WAIT held at once over time, per side (client / server), on the capture's clock.
2. Connections opened per second to each of the busiest destinations, against the port capacity: a
   client that holds each port for the TIME_WAIT length can open at most ports / TIME_WAIT s
   connections per second to one destination (ip, port).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

from lab.core.report import Report

# Okabe-Ito colours, none of them used by the ladders (the browser test finds each chart by its colour)
SIDE_COLOUR = {"client": "#0072b2", "server": "#d55e00"}
DEST_COLOURS = ("#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_CAPACITY_COLOUR = "#7b3294"
_FIG_SIZE = (9.0, 3.0)
_MAX_BINS = 1000


def time_wait_series(report: Report, t0: float, side: str) -> tuple[list[float], list[int]]:
    """(times, count held) as a step function: +1 at each window's start, -1 at its end."""
    deltas: Counter[float] = Counter()
    for c in report.connections:
        for w in c.time_wait:
            if w.side == side:
                deltas[w.start_ts - t0] += 1
                deltas[w.end_ts - t0] -= 1
    xs: list[float] = [0.0]
    ys: list[int] = [0]
    held = 0
    for t in sorted(deltas):
        held += deltas[t]
        xs.append(t)
        ys.append(held)
    return xs, ys


def connection_rates(report: Report, t0: float, top: int) -> tuple[float, dict[str, tuple[list[float], list[int]]]]:
    """The bin width (1 s; wider only for very long captures) and, per busiest destination, (bin edges,
    connections opened in each bin)."""
    if not report.connections:
        return 1.0, {}
    span = max(c.first_ts for c in report.connections) - t0
    width = max(1.0, span / _MAX_BINS)
    busiest = [d for d, _ in Counter(c.server for c in report.connections).most_common(top)]
    nbins = int(span / width) + 1
    out: dict[str, tuple[list[float], list[int]]] = {}
    for dest in busiest:
        counts = [0] * nbins
        for c in report.connections:
            if c.server == dest:
                counts[min(int((c.first_ts - t0) / width), nbins - 1)] += 1
        out[dest] = ([i * width for i in range(nbins + 1)], counts)
    return width, out


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=_FIG_SIZE)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _svg(fig: Any, salt: str) -> str:
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]   # no XML prolog or DOCTYPE inside HTML
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def time_wait_chart(report: Report, t0: float, capture_end: float, salt: str) -> str:
    fig, ax = _figure()
    for side, colour in SIDE_COLOUR.items():
        xs, ys = time_wait_series(report, t0, side)
        ax.step(xs, ys, where="post", color=colour, linewidth=1.8, label=f"{side} side")
    ax.axvline(capture_end - t0, color="#718096", linestyle="--", linewidth=1, label="capture ends")
    ax.set_xlabel("seconds since the capture's first frame")
    ax.set_ylabel("TIME_WAIT held at once")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return _svg(fig, salt + "-tw")


def rate_chart(report: Report, t0: float, ports: int, busiest: int, salt: str) -> str:
    width, rates = connection_rates(report, t0, min(busiest, len(DEST_COLOURS)))
    capacity = ports / report.time_wait_s if report.time_wait_s else float("inf")
    fig, ax = _figure()
    top = 0.0
    for (dest, (edges, counts)), colour in zip(rates.items(), DEST_COLOURS, strict=False):
        per_s = [n / width for n in counts]
        ax.stairs(per_s, edges, color=colour, linewidth=1.5, label=f"to {dest}")
        top = max(top, *per_s)
    if capacity != float("inf"):
        ax.axhline(capacity, color=_CAPACITY_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"port capacity: {ports} ports / {report.time_wait_s:g} s = {capacity:.0f}/s")
        top = max(top, capacity)
    ax.set_yscale("symlog", linthresh=1)   # 1 connection/s and a capacity of hundreds both visible
    ax.set_ylim(0, max(top * 2, 2))
    ax.set_xlabel(f"seconds since the capture's first frame (bins of {width:g} s)")
    ax.set_ylabel("connections opened per second")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return _svg(fig, salt + "-rate")


def census_charts(report: Report, t0: float, ports: int, top: int, salt: str) -> list[tuple[str, str]]:
    end = max((c.last_ts for c in report.connections), default=t0)
    return [
        ("TIME_WAIT held at once, per side (windows past the capture's end are what the "
         f"{report.profile} profile's {report.time_wait_s:g} s would give)", time_wait_chart(report, t0, end, salt)),
        ("connections opened per second to the busiest destinations, against the port capacity of one client "
         "address", rate_chart(report, t0, ports, top, salt)),
    ]
