"""`twlab report`: one self-contained HTML file of a run or of capture files.

    capture_report(paths, out, profile, time_wait_s) -> str
    run_report(results, ledgers, out, profile, time_wait_s) -> str
    write_report(html, out)                                    atomic: no partial file on any error

Everything is inline (CSS, the ladders' SVG, the charts' SVG): the file makes no request when opened.
The ladders are drawn by lab.analysis.svg from the narrator's rows; the charts by matplotlib (Agg,
SVG); the page by the jinja2 templates in lab/analysis/templates. Links to captures are relative to
the report's folder.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.analysis import svg
from lab.core.model import Segment
from lab.core.report import Connection, Finding, Report
from lab.errors import LabError, UsageError
from lab.pcap.readers import ReaderStats

MAX_LADDERS_PER_CAPTURE = 12
MAX_TABLE_ROWS = 200
MAX_LADDER_ROWS = 80
TOP_DESTINATIONS = 5
_TEMPLATES = Path(__file__).with_name("templates")


# --- what the page shows ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Picture:
    """One connection's ladder."""

    anchor: str
    title: str
    svg: str


@dataclass(slots=True)
class CaptureSection:
    name: str
    link: str
    link_text: str
    anchor: str
    packets: int
    segments: int
    profile: str
    time_wait_s: float
    connections: int
    closes: list[tuple[str, dict[str, int], int]]      # kind, {initiator: n}, total
    findings: list[dict[str, Any]]                    # kind, connection, anchor (or ""), frames, detail
    findings_total: int
    charts: list[Any] = field(default_factory=list)   # lab.analysis.charts.Chart
    ladders: list[Picture] = field(default_factory=list)
    not_drawn: int = 0
    warning: str = ""                                 # e.g. the capture was cut short


@dataclass(slots=True)
class ExperimentSection:
    result: Mapping[str, Any]
    anchor: str
    capture: CaptureSection | None
    capture_error: str = ""          # the capture could not be read: the one line saying why


# --- analysis of one capture -----------------------------------------------------------------------------

def _analyze(path: Path, profile: str, time_wait_s: float | None) -> tuple[Report, ReaderStats, float]:
    """The Report, the reader's stats and the timestamp of the capture's first frame (t0: the zero of
    Wireshark's Time column, as the narrator's times). A capture cut short is analyzed up to its last
    complete frame (stats.cut says so), as `twlab analyze` does."""
    from lab.core.tracker import Analyzer
    from lab.pcap.annotate import capture_t0
    from lab.pcap.feed import feed_file

    analyzer = Analyzer(profile, time_wait_s)
    stats = feed_file(path, analyzer, lenient=True)
    return analyzer.finish(), stats, capture_t0(path)


def connections_of_interest(report: Report, main: Iterable[int] = ()) -> list[Connection]:
    """Closes with findings (a reuse finding: the old incarnation whose TIME_WAIT was hit, then the new one),
    reused four-tuples and the experiment's main connections, in that order; a capture without any of them:
    its first connection that closed."""
    by_id = {c.id: c for c in report.connections}
    order: list[int] = []
    for f in report.findings:
        previous = f.extra.get("previous_connection")
        order += [i for i in (previous, f.connection) if isinstance(i, int)]
    order += [c.id for c in report.connections if c.incarnation > 0]
    order += [i for i in main if i in by_id]
    if not order:
        order = [c.id for c in report.connections if c.close.kind != "incomplete"][:1] or \
                [c.id for c in report.connections][:1]
    seen: dict[int, None] = {}
    for i in order:
        if i in by_id:
            seen.setdefault(i, None)
    return [by_id[i] for i in seen]


def _segments_of(path: Path, conns: Sequence[Connection]) -> dict[int, list[Segment]]:
    """Each chosen connection's segments, in one pass over the file (only those are kept)."""
    from lab.pcap.readers import CaptureReader

    want: dict[frozenset[str], list[Connection]] = {}
    for c in conns:
        want.setdefault(frozenset((c.client, c.server)), []).append(c)
    out: dict[int, list[Segment]] = {c.id: [] for c in conns}
    for s in CaptureReader(path, lenient=True):
        key = frozenset((_endpoint(s.src_ip, s.sport), _endpoint(s.dst_ip, s.dport)))
        for c in want.get(key, ()):
            if c.first_frame <= s.frame <= c.last_frame:
                out[c.id].append(s)
    return out


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _anchor(prefix: str, cid: int) -> str:
    return f"{prefix}-conn-{cid}"


def _closes(report: Report) -> list[tuple[str, dict[str, int], int]]:
    counts = Counter((c.close.kind, c.close.initiator or "none") for c in report.connections)
    kinds = sorted({k for k, _ in counts})
    return [(k, {who: counts.get((k, who), 0) for who in ("client", "server", "both", "none")},
             sum(n for (kk, _), n in counts.items() if kk == k)) for k in kinds]


def _finding_row(f: Finding, drawn: Mapping[int, str]) -> dict[str, Any]:
    frames = list(f.frames[:8])
    return {"kind": f.kind, "connection": f.connection, "anchor": drawn.get(f.connection, "")
            if f.connection is not None else "", "frames": ", ".join(map(str, frames))
            + (" …" if len(f.frames) > 8 else ""), "detail": f.detail}


def capture_section(path: Path, out: Path, prefix: str, profile: str, time_wait_s: float | None,
                    main: Iterable[int] = (), charts: bool = True, label: str = "") -> CaptureSection:
    """Everything the report says about one capture file (`label` names it in the ladders' titles)."""
    report, stats, t0 = _analyze(path, profile, time_wait_s)
    chosen = connections_of_interest(report, main)
    drawn = chosen[:MAX_LADDERS_PER_CAPTURE]
    segs = _segments_of(path, drawn)
    end = max((c.last_ts for c in report.connections), default=t0)   # the last TCP segment's time
    findings_by_conn: dict[int, list[Finding]] = {}
    for f in report.findings:
        if f.connection is not None:
            findings_by_conn.setdefault(f.connection, []).append(f)
    ladders = []
    for c in drawn:
        anchor = _anchor(prefix, c.id)
        lines, head = svg.connection_ladder(c, segs[c.id], t0, findings_by_conn.get(c.id, ()), anchor,
                                            f"{label or path.name}: connection {c.id}", MAX_LADDER_ROWS, end)
        ladders.append(Picture(anchor, head.title, svg.svg_ladder(lines, head)))
    anchors = {c.id: _anchor(prefix, c.id) for c in drawn}
    section = CaptureSection(
        name=path.name, link=_relative_link(path, out), link_text=_relative(path, out), anchor=prefix,
        packets=stats.packets,
        segments=report.segments, profile=report.profile, time_wait_s=report.time_wait_s,
        connections=len(report.connections), closes=_closes(report),
        findings=[_finding_row(f, anchors) for f in report.findings[:MAX_TABLE_ROWS]],
        findings_total=len(report.findings), ladders=ladders, not_drawn=len(chosen) - len(drawn),
        warning=stats.cut or "")
    if charts and report.connections:
        from lab.analysis import charts as ch

        section.charts = ch.census_charts(report, t0, end, TOP_DESTINATIONS, prefix)
    return section


def _relative(path: Path, out: Path) -> str:
    """The capture's path from the report's folder (links keep working when both move together)."""
    return Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()


def _relative_link(path: Path, out: Path) -> str:
    from urllib.parse import quote

    return quote(_relative(path, out))


# --- the two reports -------------------------------------------------------------------------------------

def _render(template: str, **context: Any) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["safe_svg"] = lambda s: jinja2.utils.markupsafe.Markup(s)
    return env.get_template(template).render(**context)


def capture_report(paths: Sequence[Path], out: Path, profile: str = "linux", time_wait_s: float | None = None,
                   version: str = "") -> str:
    sections = [capture_section(p, out, f"c{i}", profile, time_wait_s) for i, p in enumerate(paths)]
    title = "twlab report: " + ", ".join(p.name for p in paths)
    return _render("capture.html.j2", title=title, sections=sections, version=version)


def main_connections(result: Mapping[str, Any]) -> list[int]:
    """The connection ids an experiment names as its own (observations' "analyzer": {"id": N}, at any depth)."""
    ids: list[int] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            a = node.get("analyzer")
            if isinstance(a, Mapping) and isinstance(a.get("id"), int):
                ids.append(a["id"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(result.get("observations") or {})
    return list(dict.fromkeys(ids))


_RESULT_DEFAULTS: Mapping[str, Any] = {"error": None, "lore": "", "story": [], "notes": [], "skipped": [],
                                       "kernel": "unknown", "duration_s": 0.0, "reproduced": False, "claim": ""}


def run_report(results: Sequence[Mapping[str, Any]], ledgers: Mapping[str, Sequence[Mapping[str, Any]]],
               out: Path, run_dir: Path, profile: str = "linux", time_wait_s: float | None = None,
               version: str = "") -> str:
    """`ledgers`: kernel -> the claims ledger of that kernel's results (lab.claims.ledger_dicts)."""
    experiments = []
    for result in results:
        r = {**_RESULT_DEFAULTS, **result}   # result.json of older or foreign runs may lack fields
        cap = r.get("capture")
        section, error = None, ""
        if cap and Path(cap).is_file():
            try:   # one unreadable capture costs its own section, not the report
                section = capture_section(Path(cap), out, _slug(r["experiment"]), profile, time_wait_s,
                                          main=main_connections(r), charts=False, label=r["experiment"])
            except LabError as exc:
                error = exc.one_line()
        elif cap:
            error = f"{cap}: no such file"
        experiments.append(ExperimentSection(r, "exp-" + _slug(r["experiment"]), section, error))
    return _render("run.html.j2", title=f"twlab run {run_dir.name}", run_dir=str(run_dir), ledgers=ledgers,
                   experiments=experiments, version=version)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def check_output(out: Path) -> None:
    """Before any work: the output must be an .html file in an existing folder."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{out}: the report is HTML", "give an output name ending in .html")
    if out.is_dir():
        raise UsageError(f"{out} is a directory", "give a file name, e.g. report.html")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise UsageError(f"folder {out.parent} does not exist", "create it first or choose another output path")


def write_report(html: str, out: Path) -> None:
    """Atomically: a reader never sees half a report, an error leaves no file behind."""
    from lab.pcap.writer import atomic_write

    check_output(out)
    with atomic_write(out) as f:
        f.write(html.encode("utf-8"))
