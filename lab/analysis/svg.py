"""The ladder diagram of one connection as inline SVG (the HTML report's picture of `twlab show`).

    connection_ladder(conn, segs, t0, findings, anchor, title) -> (rows, head)   the narrator's rows
    svg_ladder(rows, head) -> str        one <svg> element, no external references

`rows` are lab.core.narrate.LadderRow: one per segment, in capture order, with the sender, the arrow's
label (FIN M / ACK M+1 / relative numbers), both endpoints' states after the segment and the notes.
The layout is the textbook one: the client's lifeline on the left, the server's on the right, each
segment an arrow sloping down from its sender, each side's state written beside its lifeline after every
segment (bold where it changed), the TIME_WAIT window as a bar on the holder's lifeline with its
restarts marked. Rows are evenly spaced (capture time is written at the left), so a
60 s TIME_WAIT does not stretch the picture. Only the layout is written here: every word comes in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Literal

from lab.core.model import Segment
from lab.core.narrate import LadderRow, TimeWaitBar, ladder_footnote, ladder_rows, ladder_start, ladder_windows
from lab.core.report import Connection, Finding

Side = Literal["client", "server"]
Tone = Literal["syn", "fin", "rst", "data", "ack"]

# geometry, in SVG user units (the element scales to the page's width)
WIDTH = 1100
_FRAME_X = 8             # frame number and time column
_CLIENT_STATE_RIGHT = 286
_CLIENT_X = 300
_SERVER_X = 640
_SERVER_STATE_LEFT = 654
_NOTES_X = 850
_TOP = 64                # below the two endpoint headers and the initial states
_ROW_H = 36
_DROP = 18               # how far an arrow falls from sender to receiver
_NOTE_LINE_H = 13
_NOTE_CHARS = 40         # wrap width of the notes column (at 11 px)
_STATE_CHARS = 26        # a state chain longer than this wraps at its arrows
_LABEL_CHARS = 44        # an arrow's label longer than this (at 11.5 px) wraps at its commas
_BAR_W = 7
_TONE_COLOUR: dict[str, str] = {"syn": "#2c7a7b", "fin": "#b7791f", "rst": "#c53030", "data": "#2f855a",
                                "ack": "#4a5568"}
_TIME_WAIT_COLOUR = "#9b2c9b"


@dataclass(frozen=True, slots=True)
class LadderHead:
    """What the picture is of: both endpoints, their states before the first segment, the title line,
    the TIME_WAIT bars, the footnotes (e.g. "M: client's FIN (relative seq 7)"), an id for links (#...)."""

    anchor: str
    title: str
    client: str
    server: str
    client_before: str = ""
    server_before: str = ""
    bars: tuple[TimeWaitBar, ...] = ()
    footnotes: tuple[str, ...] = ()
    hidden: dict[int, int] = field(default_factory=dict)   # row index -> segments left out before it


def wrap(text: str, width: int, sep: str = " ") -> list[str]:
    """Greedy wrap at `sep` (a word longer than width stays whole)."""
    out: list[str] = []
    cur = ""
    for word in text.split(sep):
        cand = word if not cur else cur + sep + word
        if len(cand) <= width or not cur:
            cur = cand
        else:
            out.append(cur)
            cur = word
    if cur:
        out.append(cur)
    return out


def _text(x: float, y: float, body: str, cls: str, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:g}" y="{y:g}" class="{cls}" text-anchor="{anchor}"{extra}>{escape(body)}</text>')


def _lines(x: float, y: float, rows: Sequence[str], cls: str, anchor: str, step: float) -> str:
    return "".join(_text(x, y + i * step, r, cls, anchor) for i, r in enumerate(rows))


def _state_rows(row: LadderRow, side: Side) -> tuple[list[str], bool]:
    """The state text beside one lifeline: the chain passed through at this segment (bold), else the
    state it stays in."""
    chain = row.passed(side)
    if chain:
        return wrap(" → ".join(chain), _STATE_CHARS, " → "), True
    return [row.state(side)], False


def tone_of(row: LadderRow) -> Tone:
    if "R" in row.flags:
        return "rst"
    if "F" in row.flags:
        return "fin"
    if "S" in row.flags:
        return "syn"
    return "data" if "data " in row.label else "ack"


def _row_height(line: LadderRow) -> float:
    note_rows = sum(len(wrap(n, _NOTE_CHARS)) for n in line.notes)
    state_rows = max(len(_state_rows(line, "client")[0]), len(_state_rows(line, "server")[0]))
    return max(_ROW_H, _DROP + 8 + max(note_rows, state_rows) * _NOTE_LINE_H)


def _arrow(line: LadderRow, y: float) -> str:
    """A sloped arrow from the sender's lifeline to the receiver's, its label above the middle."""
    x1, x2 = (_CLIENT_X, _SERVER_X) if line.sender == "client" else (_SERVER_X, _CLIENT_X)
    tone = tone_of(line)
    colour = _TONE_COLOUR[tone]
    tip = x2 - 9 if x2 > x1 else x2 + 9
    head = f"{x2},{y + _DROP} {tip},{y + _DROP - 5} {tip},{y + _DROP + 4}"
    mid = (x1 + x2) / 2
    return (f'<g class="seg {tone}" data-frame="{line.frame}" data-sender="{line.sender}">'
            f"<title>frame {line.frame}: {escape(line.label)}</title>"
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y + _DROP}" stroke="{colour}" stroke-width="1.6"/>'
            f'<polygon points="{head}" fill="{colour}"/>'
            + _label(mid, y + _DROP / 2 - 6, line.label, tone)
            + "</g>")


def _label_rows(label: str) -> list[str]:
    rows = wrap(label, _LABEL_CHARS, ", ") if len(label) > _LABEL_CHARS else [label]
    return [r + ("," if i < len(rows) - 1 else "") for i, r in enumerate(rows)]


def _label(x: float, y: float, label: str, tone: str) -> str:
    """The arrow's label centred above its middle; a label longer than the gap wraps upwards."""
    rows = _label_rows(label)
    return "".join(_text(x, y - (len(rows) - 1 - i) * _NOTE_LINE_H, r, f"label {tone}", "middle")
                   for i, r in enumerate(rows))


def _row(line: LadderRow, y: float) -> str:
    parts = [_text(_FRAME_X, y + _DROP / 2, str(line.frame), "frame"),
             _text(_FRAME_X + 44, y + _DROP / 2, f"+{line.t:.6f}", "time"),
             _arrow(line, y)]
    for side, x, anchor in (("client", _CLIENT_STATE_RIGHT, "end"), ("server", _SERVER_STATE_LEFT, "start")):
        rows, changed = _state_rows(line, side)  # type: ignore[arg-type]
        cls = f"state {side}" + (" changed" if changed else "") + (" tw" if "TIME_WAIT" in rows[-1] else "")
        parts.append(f'<g class="{cls}" data-frame="{line.frame}">'
                     + _lines(x, y + _DROP + 4, rows, "st", anchor, _NOTE_LINE_H) + "</g>")
    notes = [r for n in line.notes for r in wrap(n, _NOTE_CHARS)]
    if notes:
        parts.append(_lines(_NOTES_X, y + 4, notes, "note", "start", _NOTE_LINE_H))
    return "".join(parts)


def _bar(w: TimeWaitBar, row_y: dict[int, float], bottom: float) -> str:
    """The TIME_WAIT bar beside the holder's lifeline, a tick at each restart, the caption below."""
    x = _CLIENT_X - _BAR_W - 1 if w.side == "client" else _SERVER_X + 1
    y0 = row_y.get(w.start_frame, _TOP) + _DROP
    early = w.ended_by in ("rst", "syn") and w.end_frame in row_y
    y1 = row_y[w.end_frame] + _DROP if early and w.end_frame is not None else bottom
    ticks = "".join(
        f'<line x1="{x - 4}" y1="{row_y[f] + _DROP}" x2="{x + _BAR_W + 4}" y2="{row_y[f] + _DROP}" '
        f'stroke="{_TIME_WAIT_COLOUR}" stroke-width="2"/>' for f in w.restarts if f in row_y)
    return (f'<g class="time-wait {w.side}" data-start-frame="{w.start_frame}">'
            f'<rect x="{x}" y="{y0}" width="{_BAR_W}" height="{max(y1 - y0, 4):g}" fill="{_TIME_WAIT_COLOUR}" '
            f'opacity="0.75"/>{ticks}</g>')


def bar_caption(w: TimeWaitBar) -> str:
    return f"{w.side} TIME_WAIT" + (f" {w.length_s:g} s" if w.length_s else "") + f": {w.text}"


def svg_ladder(lines: Sequence[LadderRow], head: LadderHead) -> str:
    """The whole ladder as one <svg> string (escaped text, no scripts, no external references)."""
    rows: list[str] = []
    row_y: dict[int, float] = {}
    y = float(_TOP)
    for i, line in enumerate(lines):
        if i in head.hidden:
            rows.append(_text((_CLIENT_X + _SERVER_X) / 2, y + 12, f"… {head.hidden[i]} segments not drawn …",
                              "hidden", "middle"))
            y += _ROW_H
        y += (len(_label_rows(line.label)) - 1) * _NOTE_LINE_H   # room for a wrapped label above the arrow
        row_y[line.frame] = y
        rows.append(_row(line, y))
        y += _row_height(line)
    bottom = y + 6
    bars = [_bar(w, row_y, bottom) for w in head.bars]
    captions = [c for w in head.bars for c in wrap(bar_caption(w), 120)]
    foot_rows = captions + [r for f in head.footnotes for r in wrap(f, 150)]
    height = bottom + 14 + len(foot_rows) * 15
    header = (_text(_CLIENT_X, 18, f"client {head.client}", "end", "middle")
              + _text(_SERVER_X, 18, f"server {head.server}", "end", "middle")
              + _text(_CLIENT_STATE_RIGHT, 46, head.client_before, "st before", "end")
              + _text(_SERVER_STATE_LEFT, 46, head.server_before, "st before", "start")
              + _text(_FRAME_X, 46, "frame", "frame") + _text(_FRAME_X + 44, 46, "time", "time"))
    lifelines = "".join(f'<line x1="{x}" y1="26" x2="{x}" y2="{bottom:g}" class="lifeline"/>'
                        for x in (_CLIENT_X, _SERVER_X))
    foot = "".join(_text(_FRAME_X, bottom + 18 + i * 15, r, "caption" if i < len(captions) else "foot")
                   for i, r in enumerate(foot_rows))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="ladder" id="{escape(head.anchor)}" '
            f'viewBox="0 0 {WIDTH} {height:g}" width="{WIDTH}" height="{height:g}" role="img" '
            f'aria-label="{escape(head.title)}"><title>{escape(head.title)}</title>{_STYLE}'
            f"{lifelines}{header}{''.join(bars)}{''.join(rows)}{foot}</svg>")


_STYLE = ("<style>"
          ".ladder text{font-family:DejaVu Sans Mono,Menlo,Consolas,monospace;font-size:12px;fill:#1a202c}"
          ".ladder .end{font-weight:bold;font-size:13px}"
          ".ladder .frame,.ladder .time{fill:#718096;font-size:11px}"
          ".ladder .st{fill:#718096}.ladder .changed .st{fill:#1a202c;font-weight:bold}"
          f".ladder .tw .st{{fill:{_TIME_WAIT_COLOUR}}}"
          ".ladder .label{font-size:11.5px;paint-order:stroke;stroke:#fff;stroke-width:4px}"
          + "".join(f".ladder .label.{k}{{fill:{v}}}" for k, v in _TONE_COLOUR.items())
          + f".ladder .note{{fill:{_TIME_WAIT_COLOUR};font-size:11px}}"
          f".ladder .caption{{fill:{_TIME_WAIT_COLOUR};font-weight:bold}}"
          ".ladder .foot,.ladder .hidden{fill:#718096;font-size:11px}"
          ".ladder .lifeline{stroke:#a0aec0;stroke-width:2}"
          "</style>")


# --- one connection, from the narrator's rows --------------------------------------------------------------

def connection_ladder(conn: Connection, segs: Sequence[Segment], t0: float, findings: Iterable[Finding],
                      anchor: str, title: str, max_rows: int = 80, capture_end: float | None = None,
                      ) -> tuple[list[LadderRow], LadderHead]:
    """The rows to draw (at most max_rows: the start and the end) and the head of one connection's ladder."""
    rows, hidden = _elide(ladder_rows(conn, segs, t0, findings), max_rows)
    foot = [p for p in ladder_footnote(conn, segs).split("; ") if p]
    if not conn.time_wait:
        foot.append("no TIME_WAIT window on either side")
    before = ladder_start(conn)
    title += f": close {conn.close.kind}, initiator {conn.close.initiator or '-'}"
    if conn.incarnation:
        title += f", incarnation {conn.incarnation}"
    head = LadderHead(anchor, title, conn.client, conn.server, before[0], before[1],
                      tuple(ladder_windows(conn, t0, capture_end)), tuple(foot), hidden)
    return rows, head


def _elide(rows: list[LadderRow], max_rows: int) -> tuple[list[LadderRow], dict[int, int]]:
    """At most max_rows rows: the first quarter and the end; the gap is marked where it is."""
    if len(rows) <= max_rows:
        return rows, {}
    head = max_rows // 4
    tail = max_rows - head
    return rows[:head] + rows[-tail:], {head: len(rows) - max_rows}
