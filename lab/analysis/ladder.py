"""The textbook ladder diagram of one connection, in rich.

    client 10.0.0.1:3363                                     server 10.0.0.2:80
    ESTABLISHED          <──────── FIN M ────────────        FIN_WAIT_1
    CLOSE_WAIT           ───────── ACK M+1 ────────>         FIN_WAIT_2
    ...
                                                             ▇▇▇▇ TIME_WAIT 60 s, until t=+60.46 s

Every word about states and every label comes from lab.core.narrate (ladder_rows, ladder_windows,
ladder_footnote); this module only lays them out. Times are on the capture's clock (Wireshark's Time column).
A '*' marks a state the capture point could not see directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lab.core.model import Segment
from lab.core.narrate import LadderRow, ladder_footnote, ladder_rows, ladder_start, ladder_windows
from lab.core.report import Connection

_ARROW_W = 38


def _arrow(label: str, to_right: bool, style: str) -> Text:
    body = f" {label} "
    fill = max(_ARROW_W - len(body) - 1, 4)
    left = fill // 2
    right = fill - left
    line = "─" * left + body + "─" * right
    return Text(line + ">" if to_right else "<" + line, style=style)


def _style(flags: str) -> str:
    if "R" in flags:
        return "bold red"
    if "F" in flags:
        return "bold yellow"
    if "S" in flags:
        return "bold cyan"
    return ""


def _state_cell(row: LadderRow, side: str, tw_sides: AbstractSet[str]) -> Text:
    passed = row.passed(side)
    now = row.state(side)
    tw = now == "TIME_WAIT" and side in tw_sides
    if passed:  # changed at this segment: every state it passed through
        return Text(" → ".join(passed), style="bold magenta" if tw else "bold")
    return Text(now, style="magenta" if tw else "dim")


def ladder(conn: Connection, segs: Sequence[Segment], t0: float, *, capture_end: float | None = None,
           max_rows: int = 60, title: str = "", findings: Iterable[Any] = ()) -> Group:
    """Render one connection (its record and its segments in capture order) on the capture's clock `t0`.

    `findings`: the report's findings (those of this connection are shown beside their frames);
    `capture_end`: the last frame's timestamp (a TIME_WAIT window still open then says so)."""
    if not segs:
        return Group(Text("no segments for this connection", style="dim"))
    rows = ladder_rows(conn, segs, t0, findings)
    windows = ladder_windows(conn, t0, capture_end)
    tw_sides = {w.side for w in windows}

    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=False)
    t.add_column("frame", justify="right", style="dim", no_wrap=True)
    t.add_column("time", justify="right", style="dim", no_wrap=True, min_width=10)
    t.add_column("client", justify="right", min_width=20, no_wrap=True)
    t.add_column("", justify="center", min_width=_ARROW_W, no_wrap=True)
    t.add_column("server", justify="left", min_width=20, no_wrap=True)
    t.add_column("", style="magenta", min_width=18)

    start = ladder_start(conn)
    if any(start):
        t.add_row("", "", Text(start[0], style="dim"), "", Text(start[1], style="dim"), "")
    shown: list[LadderRow | None] = list(rows)
    if len(rows) > max_rows:
        head = max_rows // 4
        shown = [*rows[:head], None, *rows[len(rows) - (max_rows - head):]]
    hidden = len(rows) - max_rows if len(rows) > max_rows else 0
    for row in shown:
        if row is None:
            t.add_row("", "", "", Text(f"… {hidden} segments …", style="dim"), "", "")
            continue
        t.add_row(str(row.frame), f"{row.t:.6f}", _state_cell(row, "client", tw_sides),
                  _arrow(row.label, row.sender == "client", _style(row.flags)), _state_cell(row, "server", tw_sides),
                  Text(", ".join(row.notes)))

    for w in windows:
        bar = Text("▇" * 4 + (f" TIME_WAIT {w.length_s:g} s" if w.length_s else " TIME_WAIT"), style="bold magenta")
        until = Text(w.text, style="magenta")
        if w.side == "client":
            t.add_row("", "", bar, until, "", "")
        else:
            t.add_row("", "", "", until, bar, "")

    close = conn.close
    head_txt = Text.assemble(
        (title + "  " if title else "", "bold"),
        (f"connection {conn.id}", "bold"), f" (incarnation {conn.incarnation}): ",
        f"close {close.kind}", f", initiator {close.initiator or '-'}",
        "\n", ("client ", "bold"), conn.client, "  ⇄  ", ("server ", "bold"), conn.server,
        "\n", ("times: seconds since the capture's first frame (Wireshark's Time column)", "dim"),
    )
    foot = Text(ladder_footnote(conn, segs), style="dim")
    if not windows:
        foot.append(("\n" if foot.plain else "") + "no TIME_WAIT window on either side", style="dim")
    return Group(head_txt, t, foot)
