"""The textbook ladder diagram of one connection, in rich.

    frame  time      client   ─────── FIN M, ack 7 ────────>   server
        8  0.004656  FIN_WAIT_1 ─────── FIN M, ack 7 ───────>  ESTABLISHED
        9  0.016572  FIN_WAIT_2 <────── FIN N, ACK M+1 ───────  CLOSE_WAIT → LAST_ACK   fin-retransmitted
    ...
                     ▇▇▇▇ TIME_WAIT 60 s  frame 10 t=+0.017 s → t=+60.224 s, restarted by frame 11

Every word about states and every label comes from lab.core.narrate (ladder_rows, ladder_windows,
ladder_footnote); this module only lays them out. Times are on the capture's clock (Wireshark's Time column).
A '*' marks a state the capture point could not see directly.

Width. Every column is always there: frame, time, both sides' states and the arrow. At its natural width
the ladder also has a notes column; when that does not fit (`width`, e.g. an 80-column terminal) the
arrows get narrower, long labels and state chains wrap, and notes go on a line of their own under their
row. `show` prints at the terminal's width, or at the natural width when stdout is not a terminal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from lab.core.model import Segment
from lab.core.narrate import LadderRow, TimeWaitBar, ladder_footnote, ladder_rows, ladder_start, ladder_windows
from lab.core.report import Connection, Finding
from lab.errors import UsageError
from lab.pcap.filters import SegmentFilter

_ARROW_PAD = 8           # an arrow is its label plus at least this many line characters and the head
_ARROW_MIN = 12          # narrower than this an arrow stops reading as one
_NOTES_MIN = 18          # a notes column narrower than this moves the notes under their rows
_NOTES_MAX = 60
_STATE_MIN = len("SYN_RECEIVED")
_BAR = "▇" * 4
_TIME_HEAD = "time"
_UNBOUNDED = 10_000      # a console this wide measures a renderable's natural width
_FRAME_HEAD = "frame"


@dataclass(frozen=True, slots=True)
class Widths:
    """Column widths of one ladder; notes == 0: notes go under their rows."""

    frame: int
    time: int
    client: int
    arrow: int
    server: int
    notes: int

    @property
    def total(self) -> int:
        cols = [self.frame, self.time, self.client, self.arrow, self.server] + ([self.notes] if self.notes else [])
        return sum(cols) + len(cols) - 1      # one space between columns


def _arrow(label: str, to_right: bool, style: str, width: int) -> Text:
    """An arrow of exactly `width` characters; a label too long for it goes on lines above the arrow."""
    body = f" {label} "
    if len(body) + 5 > width:
        lines = _wrap(label, width)
        body = ""
    else:
        lines = []
    fill = width - len(body) - 1
    left = fill // 2
    line = "─" * left + body + "─" * (fill - left)
    arrow = line + ">" if to_right else "<" + line
    return Text("\n".join([*(ln.center(width) for ln in lines), arrow]), style=style)


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    cur = ""
    for word in text.split(" "):
        cand = f"{cur} {word}" if cur else word
        if len(cand) <= width or not cur:
            cur = cand
        else:
            out.append(cur)
            cur = word
    return [*out, cur] if cur else out


def _style(flags: str) -> str:
    if "R" in flags:
        return "bold red"
    if "F" in flags:
        return "bold yellow"
    if "S" in flags:
        return "bold cyan"
    return ""


def _state_text(row: LadderRow, side: str) -> str:
    passed = row.passed(side)
    return " → ".join(passed) if passed else row.state(side)


def _state_cell(row: LadderRow, side: str, tw_sides: AbstractSet[str]) -> Text:
    tw = row.state(side) == "TIME_WAIT" and side in tw_sides
    if row.passed(side):  # changed at this segment: every state it passed through
        return Text(_state_text(row, side), style="bold magenta" if tw else "bold")
    return Text(row.state(side), style="magenta" if tw else "dim")


def _bar_label(w: TimeWaitBar) -> str:
    return f"{_BAR} TIME_WAIT" + (f" {w.length_s:g} s" if w.length_s else "")


def _longest_word(texts: Iterable[str]) -> int:
    """The narrowest a wrapped state column can be: its longest unbreakable piece ("CLOSE_WAIT →")."""
    widths = [len(p) + (2 if i < len(parts) - 1 else 0)
              for t in texts for parts in [t.split(" → ")] for i, p in enumerate(parts)]
    return max(widths, default=0)


def layout(rows: Sequence[LadderRow], start: tuple[str, str], width: int | None) -> Widths:
    """Natural widths when `width` is None or they fit; else narrower arrows and states, notes under rows."""
    frame = max(len(_FRAME_HEAD), *(len(str(r.frame)) for r in rows))
    time = max(len(_TIME_HEAD), *(len(f"{r.t:.6f}") for r in rows))
    states = {side: [_state_text(r, side) for r in rows] + [start[i]] for i, side in enumerate(("client", "server"))}
    client = max(_STATE_MIN, *(len(t) for t in states["client"]))
    server = max(_STATE_MIN, *(len(t) for t in states["server"]))
    arrow = max(len(r.label) for r in rows) + _ARROW_PAD
    notes = min(_NOTES_MAX, max((len(", ".join(r.notes)) for r in rows), default=0))
    natural = Widths(frame, time, client, arrow, server, notes)
    if width is None or natural.total <= width:
        return natural
    with_notes = width - Widths(frame, time, client, arrow, server, 0).total - 1
    if notes and with_notes >= _NOTES_MIN:
        return Widths(frame, time, client, arrow, server, with_notes)
    # narrower: state columns down to their longest unbreakable piece, the arrow takes what is left
    client = max(_STATE_MIN, _longest_word(states["client"]))
    server = max(_STATE_MIN, _longest_word(states["server"]))
    rest = width - Widths(frame, time, client, 0, server, 0).total
    return Widths(frame, time, client, max(_ARROW_MIN, min(arrow, rest)), server, 0)


def _table(w: Widths) -> Table:
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=False, padding=(0, 1),
              collapse_padding=True)
    t.add_column(_FRAME_HEAD, justify="right", style="dim", no_wrap=True, width=w.frame)
    t.add_column(_TIME_HEAD, justify="right", style="dim", no_wrap=True, width=w.time)
    t.add_column("client", justify="right", width=w.client, overflow="fold")
    t.add_column("", justify="center", width=w.arrow, overflow="fold")
    t.add_column("server", justify="left", width=w.server, overflow="fold")
    if w.notes:
        t.add_column("", style="magenta", width=w.notes, overflow="fold")
    return t


def _add(t: Table, w: Widths, *cells: Any) -> None:
    t.add_row(*cells[:5], *(cells[5:6] if w.notes else ()))


def _elide(rows: list[LadderRow], max_rows: int) -> list[LadderRow | None]:
    if len(rows) <= max_rows:
        return list(rows)
    head = max_rows // 4
    return [*rows[:head], None, *rows[len(rows) - (max_rows - head):]]


def ladder(conn: Connection, segs: Sequence[Segment], t0: float, *, capture_end: float | None = None,
           max_rows: int = 60, title: str = "", findings: Iterable[Any] = (), width: int | None = None) -> Group:
    """Render one connection (its record and its segments in capture order) on the capture's clock `t0`.

    `findings`: the report's findings (those of this connection are shown beside their frames);
    `capture_end`: the last frame's timestamp (a TIME_WAIT window still open then says so);
    `width`: the columns to fit in (None: the ladder's natural width)."""
    if not segs:
        return Group(Text("no segments for this connection", style="dim"))
    rows = ladder_rows(conn, segs, t0, findings)
    windows = ladder_windows(conn, t0, capture_end)
    tw_sides = {w.side for w in windows}
    start = ladder_start(conn)
    w = layout(rows, start, width)
    t = _table(w)
    if any(start):
        _add(t, w, "", "", Text(start[0], style="dim"), "", Text(start[1], style="dim"), "")
    shown = _elide(rows, max_rows)
    for row in shown:
        if row is None:
            _add(t, w, "", "", "", Text(f"… {len(rows) - max_rows} segments …", style="dim"), "", "")
            continue
        note = Text(", ".join(row.notes), style="magenta")
        _add(t, w, str(row.frame), f"{row.t:.6f}", _state_cell(row, "client", tw_sides),
             _arrow(row.label, row.sender == "client", _style(row.flags), w.arrow),
             _state_cell(row, "server", tw_sides), note)
        if row.notes and not w.notes:
            _add(t, w, "", "", "", Text("↳ " + ", ".join(row.notes), style="magenta", justify="left"), "", "")
    bars = [_bar_line(bar, w, width) for bar in windows]

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
    return Group(head_txt, t, *bars, foot)


def _bar_line(bar: TimeWaitBar, w: Widths, width: int | None) -> Padding:
    """A TIME_WAIT window under the table, starting below its holder's state column when there is room
    (wrapped lines keep the indent)."""
    room = width or w.total
    client_at = w.frame + w.time + 2
    server_at = client_at + w.client + w.arrow + 2
    at = server_at if bar.side == "server" and room - server_at >= 40 else client_at
    text = Text(_bar_label(bar) + f" ({bar.side})", style="bold magenta")
    text.append("  " + bar.text, style="magenta")
    return Padding(text, (0, 0, 0, at))


def print_ladder(con: Console, conn: Connection, segs: Sequence[Segment], t0: float, *, width: int | None = None,
                 **kw: Any) -> None:
    """Print at `width`, else at the terminal's width, else (stdout not a terminal) at the natural width."""
    target = width or (con.width if con.is_terminal else None)
    rendered = ladder(conn, segs, t0, width=target, **kw)
    if target is None:   # as wide as its widest line: the table, the header, a TIME_WAIT bar's sentence
        con.width = _UNBOUNDED
        target = max(con.measure(rendered).maximum, 40)
    con.width = target
    con.print(rendered)


# --- the data path of `twlab show`: one streaming pass that stops once the chosen connection is finished -------

class _Found(Exception):
    """Raised from the walk's batch hook: the chosen connection is known, nothing more needs reading."""


@dataclass
class Chosen:
    """The connection `show` draws: its record, its findings, its segments (capture order), the capture's t0."""

    conn: Connection
    findings: list[Finding]
    segments: list[Segment]
    t0: float
    read_all: bool                  # the walk reached the file's end (False: it stopped early)
    warnings: list[str] = field(default_factory=list)


class _Picker:
    """Watches the drained records for the wanted connection.

    want is None: the first connection (smallest id) with a close, else the first one; ids are given in order
    of a connection's first frame, so that one is known once every smaller id was finished."""

    def __init__(self, want: int | None) -> None:
        self.want = want
        self.best: Connection | None = None       # the answer so far
        self.first: Connection | None = None      # id 0: the answer when no connection has a close
        self.findings: dict[int, list[Finding]] = {}
        self.low = 0                              # every id below this was finished
        self.above: set[int] = set()              # finished ids above `low`
        self.max_id = -1

    def take(self, conns: list[Connection], findings: list[Finding]) -> bool:
        """True once the answer cannot change any more."""
        keep = set()
        for c in conns:
            cid = c.id
            self.max_id = max(self.max_id, cid)
            if self.want is not None:
                if cid == self.want:
                    self.best = c
                    keep.add(cid)
                continue
            if cid == 0:
                self.first = c
                keep.add(cid)
            if c.close.kind != "incomplete" and (self.best is None or cid < self.best.id):
                if self.best is not None:
                    self.findings.pop(self.best.id, None)
                self.best = c
                keep.add(cid)
            self.above.add(cid)
        for f in findings:
            if f.connection in keep:
                self.findings.setdefault(f.connection, []).append(f)
        if self.want is not None:
            return self.best is not None
        while self.low in self.above:
            self.above.discard(self.low)
            self.low += 1
        return self.best is not None and self.low > self.best.id

    def answer(self) -> Connection | None:
        return self.best if self.best is not None else self.first


def choose(path: Path, conn_id: int | None = None, stream: int | None = None, *, profile: str = "linux",
           time_wait_s: float | None = None, filt: SegmentFilter | None = None, lenient: bool = True) -> Chosen:
    """The connection `twlab show` draws, read in two streaming passes that both stop early: the analyzer's
    walk (lab.pcap.feed.feed_file, Analyzer(detail, keep=False)) ends once the chosen connection is finished
    (and, by default, every earlier one), then the segments are read up to its last frame.

    conn_id: twlab's id; stream: Wireshark's tcp.stream (twlab gives ids in order of the first frame, so the
    N-th stream in first-frame order is id N); neither: the first connection with a close (else the first).
    UsageError when there is no such connection."""
    from lab.core.tracker import Analyzer
    from lab.pcap.annotate import capture_t0
    from lab.pcap.feed import feed_file

    want = stream if stream is not None else conn_id
    picker = _Picker(want)
    # asked by id/stream: only that connection keeps the transitions and roles the ladder draws
    analyzer = Analyzer(profile, time_wait_s, detail=True, keep=False, detail_only=-1 if want is None else want)
    drain = analyzer.drain

    def on_batch() -> None:
        conns, findings = drain()
        if (conns or findings) and picker.take(conns, findings):
            raise _Found

    read_all = False
    warnings: list[str] = []
    try:
        stats = feed_file(path, analyzer, on_batch, filt=filt, lenient=lenient)
        read_all = True
        if stats.cut:
            warnings.append(stats.cut)
        analyzer.finish(on_batch)     # stops at the chosen connection among those open at the end too
        on_batch()
    except _Found:
        pass
    conn = picker.answer()
    if conn is None:
        _no_such(path, picker, conn_id, stream, filt)
    assert conn is not None
    segs = _segments_of(path, conn, lenient)
    # in the report's order (first frame, kind); drained they come in the order they were found
    findings = sorted(picker.findings.get(conn.id, []), key=lambda f: (f.frames[0] if f.frames else 0, f.kind))
    return Chosen(conn, findings, segs, capture_t0(path), read_all, warnings)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _segments_of(path: Path, conn: Connection, lenient: bool) -> list[Segment]:
    """The connection's segments in capture order: frames before its first one are not decoded, the read
    stops after its last one; the ports are compared before the endpoint texts are built."""
    from lab.pcap.readers import CaptureReader

    ends = {conn.client, conn.server}
    ports = {_port(conn.client), _port(conn.server)}
    segs = []
    last = conn.last_frame
    reader = CaptureReader(path, lenient=lenient, skip_to=conn.first_frame)
    # lenient like the walk: a capture cut short after the connection's last frame ends the loop quietly
    with contextlib.closing(iter(reader)) as all_segs:  # type: ignore[type-var]
        for s in all_segs:
            if s.frame > last:
                break
            if s.sport in ports and s.dport in ports and {str(s.src), str(s.dst)} == ends:
                segs.append(s)
    return segs


def _no_such(path: Path, picker: _Picker, conn_id: int | None, stream: int | None,
             filt: SegmentFilter | None) -> None:
    if picker.max_id < 0:
        raise UsageError(f"{path}: no TCP connection in this file{' matches the filter' if filt else ''}",
                         "nothing to draw")
    if stream is not None:
        raise UsageError(f"{path}: no stream {stream}", f"streams are 0..{picker.max_id}")
    raise UsageError(f"{path}: no connection {conn_id}",
                     f"ids are 0..{picker.max_id}; 'twlab analyze {path}' lists them")
