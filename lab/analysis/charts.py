"""The census of a capture as charts, inline SVG (matplotlib, Agg backend, text kept as text).

    census_charts(report, t0, end, top, salt) -> [Chart(caption, svg), ...]

The numbers are the census's (lab.analysis.census.CensusFold over the report's connections, the pure parts in
lab.core.census); this module only draws them:
1. TIME_WAIT held at once over the capture, per side (client / server), on the capture's clock.
2. Connections opened per second to each of the busiest destinations, against the port capacity: a client
   address that holds each port for the TIME_WAIT length opens at most ports / TIME_WAIT s connections per
   second to one destination (ip, port) (28,232 / 60 s on Linux's default range).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lab.analysis.census import CensusFold
from lab.core import census as cc
from lab.core.report import Report

# Okabe-Ito colours, none of them used by the ladders (the browser test finds each chart by its colour)
SIDE_COLOUR = {"client": "#0072b2", "server": "#d55e00"}
DEST_COLOURS = ("#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_CAPACITY_COLOUR = "#7b3294"
_AFTER_CAPTURE = "#edf2f7"
_FIG_SIZE = (9.0, 3.0)
_OCCUPANCY_POINTS = 400       # the chart's resolution (the census's own timeline has cc.TIMELINE_POINTS)
_MAX_BINS = 1000


@dataclass(frozen=True, slots=True)
class Chart:
    caption: str
    svg: str


def census(report: Report, t0: float, end: float) -> tuple[CensusFold, dict[str, Any]]:
    """The census fold over the report's connections and its document (analyze --json's `census`)."""
    fold = CensusFold()
    fold(list(report.connections), list(report.findings))
    return fold, fold.result(report.profile, report.time_wait_s, None, t0, end)


def occupancy(fold: CensusFold, side: str, start: float, end: float) -> cc.Occupancy:
    return cc.sweep(fold.fold.side_steps[side], start, end, _OCCUPANCY_POINTS)


def per_destination(fold: CensusFold, dests: list[str], t0: float, end: float) -> tuple[float, dict[str, Any]]:
    """The bin width (1 s; wider only for very long captures) and, per destination, (bin edges on the capture's
    clock, connections opened in each bin), from the census's per-second counts (keyed by epoch second)."""
    first = int(t0)
    span = max(end - first, 0.0)
    width = 1.0 if span <= _MAX_BINS else float(int(span / _MAX_BINS) + 1)
    nbins = int(span / width) + 1
    out: dict[str, Any] = {}
    for dest in dests:
        counts = [0] * nbins
        for (_client, server), secs in fold.fold.per_pair.items():
            if server == dest:
                for sec, n in secs.items():
                    counts[min(max(int((sec - first) / width), 0), nbins - 1)] += n
        out[dest] = ([first - t0 + i * width for i in range(nbins + 1)], counts)
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


def _legend(ax: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def time_wait_chart(fold: CensusFold, doc: Mapping[str, Any], t0: float, salt: str) -> str:
    cap = doc["capture"]
    start, end = cap["first_ts"], cap["last_ts"]
    fig, ax = _figure()
    for side, colour in SIDE_COLOUR.items():
        occ = occupancy(fold, side, start, end)
        edges = [start - t0 + i * occ.bucket_s for i in range(len(occ.timeline) + 1)]
        peak = doc["time_wait"]["sides"][side]
        ax.stairs(occ.timeline, edges, color=colour, linewidth=1.8,
                  label=f"{side} side (peak {peak['peak']}" + (f" at t={peak['peak_t']:.3f} s)"
                                                               if peak["peak_t"] is not None else ")"))
    ax.set_xlabel("seconds since the capture's first frame")
    ax.set_ylabel("TIME_WAIT held at once")
    ax.set_ylim(bottom=0)
    _legend(ax)
    return _svg(fig, salt + "-tw")


def rate_chart(fold: CensusFold, doc: Mapping[str, Any], t0: float, top: int, salt: str) -> str:
    nc = doc["new_connections"]
    dests = [d["server"] for d in nc["destinations"][:min(top, len(DEST_COLOURS))]]
    width, series = per_destination(fold, dests, t0, doc["capture"]["last_ts"])
    per_s_cap = nc["capacity"]["per_s"]
    fig, ax = _figure()
    highest = 0.0
    for (dest, (edges, counts)), colour in zip(series.items(), DEST_COLOURS, strict=False):
        rates = [n / width for n in counts]
        ax.stairs(rates, edges, color=colour, linewidth=1.5, label=f"to {dest}")
        highest = max(highest, *rates)
    if per_s_cap is not None:
        c = nc["capacity"]
        ax.axhline(per_s_cap, color=_CAPACITY_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"port capacity: {c['ports']} ports / {c['time_wait_s']:g} s = {per_s_cap:.0f}/s")
        highest = max(highest, per_s_cap)
    ax.set_yscale("symlog", linthresh=1)   # 1 connection/s and a capacity of hundreds both visible
    ax.set_ylim(0, max(highest * 2, 2))
    ax.set_xlabel(f"seconds since the capture's first frame (bins of {width:g} s)")
    ax.set_ylabel("connections opened per second")
    _legend(ax)
    return _svg(fig, salt + "-rate")


def _rate_caption(nc: Mapping[str, Any]) -> str:
    text = ("connections opened per second to the busiest destinations, against the port capacity of one "
            "client address")
    worst = max(nc["destinations"], key=lambda d: d["utilisation"], default=None)
    if worst is not None:
        text += (f"; busiest: {worst['busiest_client']} to {worst['server']} at {worst['rate_per_s']:g}/s over "
                 f"{worst['window_s']} s = {worst['utilisation']:.1%} of capacity")
        if worst["runs_out_after_s"] is not None:
            text += f", out of ports after {worst['runs_out_after_s']:g} s"
    return text


def census_charts(report: Report, t0: float, end: float, top: int, salt: str) -> list[Chart]:
    fold, doc = census(report, t0, end)
    return [
        Chart("TIME_WAIT held at once, per side, while the capture ran", time_wait_chart(fold, doc, t0, salt)),
        Chart(_rate_caption(doc["new_connections"]), rate_chart(fold, doc, t0, top, salt)),
    ]
