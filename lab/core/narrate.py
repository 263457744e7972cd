"""The one narrator: every human sentence about TCP states is rendered here, from the analyzer's records.

    frame_notes(report, t0) -> {frame: [comment, ...]}

`t0` is the timestamp of the capture's first frame (Wireshark's Time column counts from it): every time in a
comment is on that clock ("t=+150.512 s") or says what it is relative to.
"""

from __future__ import annotations

from lab.core.report import Connection, Report, Transition
from lab.core.tcpstate import TcpState

_SIDES = ("client", "server")


def frame_notes(report: Report, t0: float) -> dict[int, list[str]]:
    """Per-frame annotation text: each interesting segment's role, the state changes it shows, and findings.

    e.g. "FIN M — server active close: ESTABLISHED -> FIN_WAIT_1"."""
    notes: dict[int, list[str]] = {}
    later: dict[int, list[str]] = {}     # TIME_WAIT restarts/ends: after the segment's own role
    for c in report.connections:
        _connection_notes(c, t0, notes, later)
    for frame, texts in later.items():
        notes.setdefault(frame, []).extend(texts)
    for f in report.findings:
        for fr in f.frames:
            notes.setdefault(fr, []).append(f"{f.kind}: {f.detail}")
    return notes


def _fmt_ts(ts: float, t0: float) -> str:
    return f"t=+{ts - t0:.3f} s"


def _connection_notes(c: Connection, t0: float, notes: dict[int, list[str]], later: dict[int, list[str]]) -> None:
    """One line per frame of interest: "<roles> — <sender>[ active close]: <its transitions>; <peer>: <...>"."""
    by_frame: dict[int, list[Transition]] = {}
    for t in c.transitions:  # built once per connection here
        by_frame.setdefault(t.frame, []).append(t)
    roles: dict[int, tuple[str, list[str]]] = {}
    for frame, i, role in c.roles:
        entry = roles.setdefault(frame, (_SIDES[i], []))
        if role not in entry[1]:
            entry[1].append(role)
    first_close = c.close.frames[0] if c.close.frames and c.close.kind not in ("rst", "incomplete") else None
    for frame in sorted(set(by_frame) | set(roles)):
        sender, names = roles.get(frame, ("", []))
        own: list[tuple[str, str]] = []
        other: list[tuple[str, str]] = []
        for t in by_frame.get(frame, ()):
            txt = f"{t.from_state.value} -> {t.to_state.value}"
            if t.inferred:
                txt += " (inferred)"
            if t.to_state is TcpState.TIME_WAIT:
                w = next((w for w in c.time_wait if w.side == t.side and w.start_frame == frame), None)
                if w is not None:
                    length = f"{w.length_s:g} s" if w.length_s else "2MSL"
                    if w.ended_by != "timeout":
                        txt += f" ({length}; ended early by {'an RST' if w.ended_by == 'rst' else 'a new SYN'} " \
                               f"in frame {w.end_frame})"
                    elif w.restarts:
                        txt += f" ({length}, restarted {len(w.restarts)}x, until {_fmt_ts(w.end_ts, t0)})"
                    else:
                        txt += f" ({length}, until {_fmt_ts(w.end_ts, t0)})"
            (own if t.side == sender else other).append((t.side, txt))
        names = sorted(names, key=lambda n: not n.startswith("FIN"))   # "FIN N + ACK M+1"
        head = " + ".join(names) if names else "segment"
        if sender:
            who = sender
            if frame == first_close and any(n.startswith("FIN") for n in names):
                who += " active close" if c.close.initiator != "both" else " closes first (the FINs cross)"
            head += f" — {who}"
        parts = []
        if own:
            parts.append(" -> ".join([own[0][1].split(" -> ")[0]] + [o[1].split(" -> ", 1)[1] for o in own])
                         if len(own) > 1 else own[0][1])
        seen_sides: dict[str, list[str]] = {}
        for side, txt in other:
            seen_sides.setdefault(side, []).append(txt)
        for side, txts in seen_sides.items():
            chain = txts[0] if len(txts) == 1 else " -> ".join([txts[0].split(" -> ")[0]] +
                                                                [x.split(" -> ", 1)[1] for x in txts])
            parts.append(f"{side}: {chain}")
        sep = ": " if own else "; "
        text = head + (sep + "; ".join(parts) if parts else "")
        notes.setdefault(frame, []).append(text)
    for w in c.time_wait:
        for fr in w.restarts:
            later.setdefault(fr, []).append(f"{w.side}'s TIME_WAIT restarts: 2MSL from here")
        if w.ended_by != "timeout" and w.end_frame is not None:
            why = "the new connection takes the four-tuple" if w.ended_by == "syn" else "assassinated by RST"
            later.setdefault(w.end_frame, []).append(f"{w.side}'s TIME_WAIT (connection {c.id}) ends here: {why}")
