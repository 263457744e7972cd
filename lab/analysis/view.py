"""rich tables for `twlab analyze` and `twlab verify` (people's view; --json never imports this)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from lab.analysis.stream import Summary

_KIND_STYLE = {"four-way": "green", "three-way": "green", "simultaneous": "cyan", "half-close": "yellow",
               "rst": "red", "refused": "magenta", "incomplete": "dim"}   # every report.CLOSE_KINDS


def _secs(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def time_wait_cell(conn: Mapping[str, Any]) -> str:
    """The connection's TIME_WAIT windows in the narrator's words (lab.core.narrate.window_cell)."""
    from lab.core.narrate import window_cell
    from lab.core.report import TimeWaitWindow

    return "; ".join(window_cell(TimeWaitWindow.from_dict(w)) for w in conn.get("time_wait", [])) or "-"


def connections_table(doc: Mapping[str, Any], limit: int = 200) -> Table:
    """The first `limit` connections of doc["connections"]; doc["connections_total"] (if given) counts all."""
    conns = doc["connections"]
    total = doc.get("connections_total", len(conns))
    title = f"{doc.get('file', '')}: {total} connection(s), {doc.get('packets', '?')} packets"
    # at 80 columns nothing is cut to "192.0.2.…": compact columns; the TIME_WAIT column wraps first, and what
    # still does not fit folds onto the next line
    t = Table(title=Text(title), title_justify="left", show_lines=False, box=None, pad_edge=False, padding=(0, 1),
              collapse_padding=True, header_style="bold underline")
    t.add_column("id", justify="right", no_wrap=True, overflow="fold")
    t.add_column("client", no_wrap=True, overflow="fold")
    t.add_column("server", no_wrap=True, overflow="fold")
    t.add_column("inc", justify="right", no_wrap=True, overflow="fold")
    t.add_column("frames", no_wrap=True, overflow="fold")
    t.add_column("close", no_wrap=True, overflow="fold")
    t.add_column("first", no_wrap=True, overflow="fold")   # who closed first: the initiator
    t.add_column("TIME_WAIT (side, length, from frame)", overflow="fold", min_width=12)
    for c in conns[:limit]:
        kind = c["close"]["kind"]
        t.add_row(str(c["id"]), Text(c["client"]), Text(c["server"]), str(c["incarnation"]),
                  f"{c['first_frame']}-{c['last_frame']}", Text(kind, style=_KIND_STYLE.get(kind, "")),
                  c["close"]["initiator"] or "-", time_wait_cell(c))
    shown = min(limit, len(conns))
    if total > shown:
        t.caption = f"first {shown} of {total} connections shown ({total - shown} not shown); --json lists all"
    return t


def findings_table(doc: Mapping[str, Any], limit: int = 200) -> Table | Text:
    findings = doc["findings"]
    total = doc.get("findings_total", len(findings))
    if not total:
        return Text("no findings", style="dim")
    t = Table(title=f"findings ({total})", title_justify="left")
    t.add_column("kind", style="bold magenta")
    t.add_column("connection", justify="right")
    t.add_column("frames")
    t.add_column("detail")
    for f in findings[:limit]:
        frames = ", ".join(str(n) for n in f["frames"][:8]) + (" ..." if len(f["frames"]) > 8 else "")
        detail = f["detail"] if isinstance(f["detail"], str) else _detail_text(f["detail"])
        t.add_row(f["kind"], "-" if f["connection"] is None else str(f["connection"]), frames, Text(detail))
    shown = min(limit, len(findings))
    if total > shown:
        t.caption = f"first {shown} of {total} findings shown ({total - shown} not shown); --json lists all"
    return t


def _detail_text(detail: Any) -> str:
    if isinstance(detail, Mapping):
        return ", ".join(f"{k}={v}" for k, v in detail.items())
    return str(detail)


def skipped_text(doc: Mapping[str, Any]) -> Text | None:
    skipped = doc.get("skipped") or {}
    if not skipped:
        return None
    return Text("skipped packets: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())), style="dim")


def analysis_view(doc: Mapping[str, Any]) -> Group:
    parts: list[Any] = [connections_table(doc), findings_table(doc)]
    sk = skipped_text(doc)
    if sk is not None:
        parts.append(sk)
    return Group(*parts)


_INITIATORS = ("client", "server", "both", "-")
_ENDED_BY = (("timeout", "2MSL ran out"), ("rst", "ended by RST"), ("syn", "ended by a new SYN"),
             ("capture-end", "open at capture end"))


def summary_counts(s: Summary) -> Group:
    """Counters over every connection and finding of a file (twlab analyze for people, any file size)."""
    head = Text(f"{s.file}: {s.packets} packets, {s.tcp_segments} TCP segments, {s.connections} connection(s), "
                f"{s.findings} finding(s); profile {s.profile}, TIME_WAIT {s.time_wait_s:g} s", style="bold")
    closes = Table(title="closes (kind x initiator)", title_justify="left")
    closes.add_column("close")
    for who in _INITIATORS:
        closes.add_column("none" if who == "-" else who, justify="right")
    closes.add_column("total", justify="right", style="bold")
    kinds = [k for k in _KIND_STYLE if any(kk == k for kk, _ in s.closes)]
    kinds += sorted({k for k, _ in s.closes} - set(kinds))
    for kind in kinds:
        row = [s.closes.get((kind, who), 0) for who in _INITIATORS]
        closes.add_row(Text(kind, style=_KIND_STYLE.get(kind, "")), *[str(n) if n else "-" for n in row],
                       str(sum(row)))
    tw = Table(title="TIME_WAIT windows (side)", title_justify="left")
    tw.add_column("side")
    tw.add_column("windows", justify="right", style="bold")
    for _, label in _ENDED_BY:
        tw.add_column(label, justify="right")
    for side in ("client", "server"):
        row = [s.time_wait.get((side, how), 0) for how, _ in _ENDED_BY]
        total = sum(n for (sd, _), n in s.time_wait.items() if sd == side)
        tw.add_row(side, str(total), *[str(n) for n in row])
    parts: list[Any] = [head, closes, tw]
    if s.finding_kinds:
        fk = Table(title="findings (kind)", title_justify="left")
        fk.add_column("kind", style="bold magenta")
        fk.add_column("count", justify="right")
        fk.add_column("verdicts")
        for kind, n in sorted(s.finding_kinds.items(), key=lambda kv: (-kv[1], kv[0])):
            verdicts = sorted(((v, m) for (k, v), m in s.verdicts.items() if k == kind), key=lambda vm: -vm[1])
            fk.add_row(kind, str(n), ", ".join(f"{v} {m}" for v, m in verdicts) or "-")
        parts.append(fk)
    return Group(*parts)


def summary_view(s: Summary) -> Group:
    """The summary counters, the census, then the first connections and findings (bounded, whatever the
    file size)."""
    doc = s.view_doc()
    if s.connections:
        parts: list[Any] = [summary_counts(s)]
        if s.census:
            parts.append(census_view(s.census))
        parts += [connections_table(doc, s.limit), findings_table(doc, s.limit)]
    else:
        parts = [Text(f"{s.file}: {s.packets} packets, no TCP connection", style="bold")]
    sk = skipped_text(doc)
    if sk is not None:
        parts.append(sk)
    return Group(*parts)


_SPARK_WIDTH = 30


def _shrink(values: list[int], width: int = _SPARK_WIDTH) -> list[int]:
    """A timeline cut to `width` points, each the maximum of the points it covers."""
    if len(values) <= width:
        return values
    step = len(values) / width
    return [max(values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]


def _t(value: Any) -> str:
    return "-" if value is None else f"t={float(value):.3f} s"


def census_view(census: Mapping[str, Any]) -> Group:
    """The census (lab.analysis.census) in a few lines: TIME_WAIT held at once with a sparkline per side,
    half-closed sockets left at capture end, and new connections per destination against port capacity."""
    from lab.analysis.census import sparkline

    tw = census["time_wait"]
    dur = census["capture"]["duration_s"]
    t = Table(title=f"census: TIME_WAIT held at once over the capture ({_secs(dur)} s)", title_justify="left")
    t.add_column("side")
    t.add_column("windows", justify="right")
    t.add_column("peak", justify="right", style="bold")
    t.add_column("when")
    t.add_column("over time", no_wrap=True)
    for side, o in tw["sides"].items():
        t.add_row(side, str(o["windows"]), str(o["peak"]), _t(o["peak_t"]), sparkline(_shrink(o["timeline"])))
    parts: list[Any] = [t]
    if tw["by_local"]:
        parts.append(Text("busiest local endpoints: " + ", ".join(
            f"{r['endpoint']} (peak {r['peak']})" for r in tw["by_local"][:3]), style="dim"))
    oe = census["open_at_end"]
    if oe["close_wait"] or oe["fin_wait_1"] or oe["fin_wait_2"]:
        where = ", ".join(f"{r['state']} {r['endpoint']} x{r['sockets']}" for r in oe["by_endpoint"][:3])
        parts.append(Text(f"half-closed at capture end: {oe['close_wait']} CLOSE_WAIT (the application has not "
                          f"closed), {oe['fin_wait_2']} FIN_WAIT_2, {oe['fin_wait_1']} FIN_WAIT_1: {where}"))
    parts.extend(_ports_view(census["new_connections"]))
    return Group(*parts)


def _ports_view(nc: Mapping[str, Any]) -> list[Any]:
    cap = nc["capacity"]
    if not nc["destinations"] or cap["per_s"] is None:
        return []
    lo, hi = cap["port_range"]
    t = Table(title=f"new connections per destination vs ports: {cap['ports']:,} ports ({lo}-{hi}) / "
                    f"{cap['time_wait_s']:g} s TIME_WAIT = {cap['per_s']:,.1f}/s per client address",
              title_justify="left")
    t.add_column("destination")
    t.add_column("conns", justify="right")
    t.add_column("rate/s", justify="right")
    t.add_column("use", justify="right", style="bold")
    t.add_column("runs out")
    for d in nc["destinations"]:
        use = d["utilisation"]
        style = "red" if use > 1 else ("yellow" if use > 0.5 else "green")
        out = "-" if d["runs_out_after_s"] is None else f"after {d['runs_out_after_s']:g} s ({_t(d['runs_out_t'])})"
        t.add_row(Text(d["server"]), f"{d['connections']:,}", f"{d['rate_per_s']:,.1f}",
                  Text(f"{use:.0%}", style=style), out)
    parts: list[Any] = [t]
    if nc["fixes"]:
        parts.append(Text("above 100 % the client runs out of ports; fixes: "
                          + "; ".join(f.split(":")[0] for f in nc["fixes"]) + " (--json: why)", style="yellow"))
    return parts


def verify_classes_table(res: Mapping[str, Any]) -> Table:
    """Disagreements by class, with counts and the first frames (verify's default for many rows)."""
    t = Table(title=f"disagreements by class ({len(res['disagreements'])} in all; --rows N lists them)",
              title_justify="left")
    t.add_column("check")
    t.add_column("count", justify="right", style="bold")
    t.add_column("first frames")
    t.add_column("reason (numbers as N)")
    for c in res.get("classes", []):
        mark = Text("explained:", style="green") if c["explained"] else Text("UNEXPLAINED:", style="bold red")
        t.add_row(c["check"], str(c["count"]), ", ".join(map(str, c["frames"])),
                  Text.assemble(mark, " ", c["reason"]))
    return t


def verify_view(res: Mapping[str, Any], rows: int | None = None) -> Group:
    head = Text(f"{res['file']}: the lab vs tshark {res['tshark_version']}", style="bold")
    t = Table()
    t.add_column("check")
    t.add_column("tshark", justify="right")
    t.add_column("lab", justify="right")
    t.add_column("")
    for c in res["checks"]:
        t.add_row(c["check"], str(c["tshark"]), str(c["ours"]),
                  Text("agree", style="green") if c["agree"] else Text("differ", style="yellow"))
    parts: list[Any] = [head, t]
    listed = res["disagreements"] if rows is None else res["disagreements"][:rows]
    if res["disagreements"] and len(listed) < len(res["disagreements"]):
        parts.append(verify_classes_table(res))
    if listed:
        d = Table(title="disagreements", title_justify="left", show_lines=True)
        d.add_column("check")
        d.add_column("frames")
        d.add_column("tshark")
        d.add_column("lab")
        d.add_column("reason")
        for x in listed:
            mark = Text("explained:", style="green") if x["explained"] else Text("UNEXPLAINED:", style="bold red")
            reason = Text.assemble(mark, " ", x["reason"])
            d.add_row(x["check"], ", ".join(map(str, x["frames"])), Text(x["tshark"]), Text(x["ours"]), reason)
        parts.append(d)
    verdict = ("[green]no unexplained disagreement[/]" if res["ok"]
               else f"[bold red]{sum(not x['explained'] for x in res['disagreements'])} unexplained "
                    "disagreement(s)[/]")
    parts.append(Text.from_markup(verdict))
    return Group(*parts)


class ReadProgress:
    """A progress bar on stderr for reads that take more than ~2 s, only when stderr is a terminal (never
    in pipes or files): bytes read of the total when the size is known, else bytes and rate; packets read
    and connections open when the caller knows them (lab.pcap.feed.Progress).

        with ReadProgress(path) as progress:
            ... feed_file(..., progress=progress) ...
    """

    DELAY_S = 2.0

    def __init__(self, path: Any, enabled: bool | None = None) -> None:
        import os
        import sys
        import time

        self._clock = time.monotonic
        self.t0 = self._clock()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total: int | None = None
        try:
            st = os.stat(path)
            if st.st_size and os.path.isfile(path) and not str(path).endswith(".gz"):
                self.total = st.st_size
        except (OSError, TypeError, ValueError):
            pass
        self._bar: Any = None
        self._task: Any = None
        self.label = str(path)

    def __call__(self, nread: int, packets: int | None = None, open_now: int | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            if self._clock() - self.t0 < self.DELAY_S:
                return
            self._start()
        self._bar.update(self._task, completed=nread, counts=self._counts(packets, open_now))

    @staticmethod
    def _counts(packets: int | None, open_now: int | None) -> str:
        parts = []
        if packets is not None:
            parts.append(f"{packets:,} packets")
        if open_now is not None:
            parts.append(f"{open_now:,} connections open")
        return ", ".join(parts)

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[counts]}"),
                             console=Console(stderr=True), transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, counts="")

    def __enter__(self) -> ReadProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
