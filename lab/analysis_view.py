"""rich tables for `twlab analyze` and `twlab verify` (people's view; --json never imports this)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

_KIND_STYLE = {"four-way": "green", "three-way": "green", "simultaneous": "cyan", "half-close": "yellow",
               "rst": "red", "incomplete": "dim"}


def _secs(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def time_wait_cell(conn: Mapping[str, Any]) -> str:
    parts = []
    for w in conn.get("time_wait", []):
        dur = w["end_ts"] - w["start_ts"]
        how = {"rst": ", ended by RST", "syn": ", ended by a new SYN"}.get(w.get("ended_by", "timeout"), "")
        parts.append(f"{w['side']} {_secs(dur)} s (frame {w['start_frame']}{how})")
    return "; ".join(parts) or "-"


def connections_table(doc: Mapping[str, Any], limit: int = 200) -> Table:
    conns = doc["connections"]
    title = f"{doc.get('file', '')}: {len(conns)} connection(s), {doc.get('packets', '?')} packets"
    t = Table(title=Text(title), title_justify="left", show_lines=False)
    t.add_column("id", justify="right")
    t.add_column("client")
    t.add_column("server")
    t.add_column("inc", justify="right", header_style="bold")
    t.add_column("frames")
    t.add_column("close")
    t.add_column("initiator")
    t.add_column("TIME_WAIT (side, length, from frame)")
    for c in conns[:limit]:
        kind = c["close"]["kind"]
        t.add_row(str(c["id"]), Text(c["client"]), Text(c["server"]), str(c["incarnation"]),
                  f"{c['first_frame']}-{c['last_frame']}", Text(kind, style=_KIND_STYLE.get(kind, "")),
                  c["close"]["initiator"] or "-", time_wait_cell(c))
    if len(conns) > limit:
        t.caption = f"first {limit} of {len(conns)} connections shown; --json lists all"
    return t


def findings_table(doc: Mapping[str, Any], limit: int = 200) -> Table | Text:
    findings = doc["findings"]
    if not findings:
        return Text("no findings", style="dim")
    t = Table(title=f"findings ({len(findings)})", title_justify="left")
    t.add_column("kind", style="bold magenta")
    t.add_column("connection", justify="right")
    t.add_column("frames")
    t.add_column("detail")
    for f in findings[:limit]:
        frames = ", ".join(str(n) for n in f["frames"][:8]) + (" ..." if len(f["frames"]) > 8 else "")
        detail = f["detail"] if isinstance(f["detail"], str) else _detail_text(f["detail"])
        t.add_row(f["kind"], "-" if f["connection"] is None else str(f["connection"]), frames, Text(detail))
    if len(findings) > limit:
        t.caption = f"first {limit} of {len(findings)} findings shown; --json lists all"
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


def verify_view(res: Mapping[str, Any]) -> Group:
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
    if res["disagreements"]:
        d = Table(title="disagreements", title_justify="left", show_lines=True)
        d.add_column("check")
        d.add_column("frames")
        d.add_column("tshark")
        d.add_column("lab")
        d.add_column("reason")
        for x in res["disagreements"]:
            mark = Text("explained:", style="green") if x["explained"] else Text("UNEXPLAINED:", style="bold red")
            reason = Text.assemble(mark, " ", x["reason"])
            d.add_row(x["check"], ", ".join(map(str, x["frames"])), Text(x["tshark"]), Text(x["ours"]), reason)
        parts.append(d)
    verdict = ("[green]no unexplained disagreement[/]" if res["ok"]
               else f"[bold red]{sum(not x['explained'] for x in res['disagreements'])} unexplained "
                    "disagreement(s)[/]")
    parts.append(Text.from_markup(verdict))
    return Group(*parts)
