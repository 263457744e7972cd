"""The analyzer's result as frozen records, and their JSON shape (`twlab analyze --json`, design.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from lab.core.tcpstate import Input, TcpState

_SIDES = ("client", "server")
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
CLOSE_KINDS = ("four-way", "three-way", "simultaneous", "half-close", "rst", "incomplete")
FINDING_KINDS = ("fin-retransmitted", "final-ack-lost", "rst-after-fin", "reuse-in-time-wait",
                 "reuse-after-time-wait", "delayed-duplicate", "time-wait-assassinated")


class Transition(NamedTuple):
    """One endpoint's state change. `inferred`: the capture point did not see the segment that caused it.

    Immutable like the other records, but a NamedTuple: a churn capture makes ~9 per connection, and a
    frozen dataclass costs several times more to build (same reason as model.Segment)."""

    frame: int
    side: str                # "client" | "server"
    from_state: TcpState
    to_state: TcpState
    inferred: bool = False
    cause: str = ""          # the tcpstate.Input that drove it, e.g. "rcv FIN"

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "side": self.side, "from": self.from_state.value, "to": self.to_state.value,
                "inferred": self.inferred, "cause": self.cause}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Transition:
        return Transition(int(d["frame"]), str(d["side"]), TcpState(d["from"]), TcpState(d["to"]),
                          bool(d.get("inferred", False)), str(d.get("cause", "")))


class TimeWaitWindow(NamedTuple):
    """Where one side holds TIME_WAIT, in capture time. `end_ts` is the last (re)start + 2*MSL unless the
    window ended early: `ended_by` "rst" (assassinated) or "syn" (a new incarnation took the four-tuple over)."""

    side: str
    start_ts: float
    end_ts: float
    start_frame: int
    restarts: tuple[int, ...] = ()       # frames that restarted the 2*MSL timer
    ended_by: str = "timeout"            # timeout | rst | syn
    end_frame: int | None = None         # the RST or SYN frame when ended_by is not "timeout"
    length_s: float = 0.0                # the profile's 2*MSL that was applied

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "start_ts": self.start_ts, "end_ts": self.end_ts, "start_frame": self.start_frame,
                "restarts": list(self.restarts), "ended_by": self.ended_by, "end_frame": self.end_frame,
                "length_s": self.length_s}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TimeWaitWindow:
        return TimeWaitWindow(str(d["side"]), float(d["start_ts"]), float(d["end_ts"]), int(d["start_frame"]),
                              tuple(int(x) for x in d.get("restarts", ())), str(d.get("ended_by", "timeout")),
                              None if d.get("end_frame") is None else int(d["end_frame"]),
                              float(d.get("length_s", 0.0)))


class Close(NamedTuple):
    kind: str                        # one of CLOSE_KINDS
    initiator: str | None            # client | server | both | None
    frames: tuple[int, ...] = ()     # the closing segments (first FINs, their first ACKs, RSTs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "initiator": self.initiator, "frames": list(self.frames)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Close:
        return Close(str(d["kind"]), d.get("initiator"), tuple(int(x) for x in d.get("frames", ())))


class Connection(NamedTuple):
    """One incarnation of a four-tuple, finished.

    Connection, Close, TimeWaitWindow and Finding are immutable NamedTuples rather than frozen dataclasses:
    the analyzer builds several per connection, and a frozen dataclass's __init__ (object.__setattr__ per
    field) cost more than the whole per-segment analysis of a churn capture (measured, compiled with mypyc).
    """

    id: int
    client: str                      # "ip:port" (str(Endpoint))
    server: str
    incarnation: int                 # earlier connections on the same four-tuple in this capture
    first_frame: int
    last_frame: int
    close: Close
    time_wait: tuple[TimeWaitWindow, ...] = ()
    # state changes, compact: (frame, side 0=client/1=server, from, to, inferred, tcpstate.Input); read them
    # through .transitions (Transition records are built on demand: a churn capture has ~9 per connection)
    steps: tuple[tuple[int, int, TcpState, TcpState, bool, Input], ...] = ()
    first_ts: float = 0.0
    last_ts: float = 0.0
    packets: int = 0
    client_isn: int | None = None
    server_isn: int | None = None
    mid_capture: bool = False        # no SYN seen: the capture started after the handshake
    # (frame, side 0=client/1=server, role) for the segments of interest, e.g. (12, 1, "FIN M"); see frame_notes()
    roles: tuple[tuple[int, int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "client": self.client, "server": self.server, "incarnation": self.incarnation,
            "first_frame": self.first_frame, "last_frame": self.last_frame,
            "close": self.close.to_dict(), "time_wait": [w.to_dict() for w in self.time_wait],
            "first_ts": self.first_ts, "last_ts": self.last_ts, "packets": self.packets,
            "isn": {"client": self.client_isn, "server": self.server_isn}, "mid_capture": self.mid_capture,
            "transitions": [t.to_dict() for t in self.transitions],
            "roles": [[f, _SIDES[i], r] for f, i, r in self.roles],
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Connection:
        isn = d.get("isn") or {}
        return Connection(
            int(d["id"]), str(d["client"]), str(d["server"]), int(d["incarnation"]), int(d["first_frame"]),
            int(d["last_frame"]), Close.from_dict(d["close"]),
            tuple(TimeWaitWindow.from_dict(w) for w in d.get("time_wait", ())),
            tuple((int(t["frame"]), _SIDES.index(t["side"]), TcpState(t["from"]), TcpState(t["to"]),
                   bool(t.get("inferred", False)), Input(t.get("cause") or Input.TIMEOUT_2MSL.value))
                  for t in d.get("transitions", ())),
            float(d.get("first_ts", 0.0)), float(d.get("last_ts", 0.0)), int(d.get("packets", 0)),
            isn.get("client"), isn.get("server"), bool(d.get("mid_capture", False)),
            tuple((int(r[0]), _SIDES.index(r[1]), str(r[2])) for r in d.get("roles", ())),
        )

    @property
    def transitions(self) -> tuple[Transition, ...]:
        return tuple([Transition(f, _SIDES[i], a, b, inf, inp.value) for f, i, a, b, inf, inp in self.steps])

    def side_endpoint(self, side: str) -> str:
        return self.client if side == "client" else self.server


class Finding(NamedTuple):
    kind: str                        # one of FINDING_KINDS
    connection: int | None
    frames: tuple[int, ...]
    detail: str
    extra: Mapping[str, Any] = _NO_EXTRA   # structured facts, e.g. verdict, elapsed_s

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "connection": self.connection, "frames": list(self.frames),
                               "detail": self.detail}
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Finding:
        extra = {k: v for k, v in d.items() if k not in ("kind", "connection", "frames", "detail")}
        return Finding(str(d["kind"]), d.get("connection"), tuple(int(x) for x in d["frames"]), str(d["detail"]),
                       extra)


@dataclass(frozen=True, slots=True)
class Report:
    connections: tuple[Connection, ...]
    findings: tuple[Finding, ...]
    profile: str = "linux"
    time_wait_s: float = 60.0
    segments: int = 0                # TCP segments analyzed
    packets: int = 0                 # highest frame number seen (all packets, TCP or not, up to the last TCP one)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "time_wait_s": self.time_wait_s, "segments": self.segments,
                "connections": [c.to_dict() for c in self.connections],
                "findings": [f.to_dict() for f in self.findings]}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Report:
        return Report(tuple(Connection.from_dict(c) for c in d["connections"]),
                      tuple(Finding.from_dict(f) for f in d["findings"]), str(d.get("profile", "linux")),
                      float(d.get("time_wait_s", 60.0)), int(d.get("segments", 0)), int(d.get("packets", 0)))

    def connection(self, cid: int) -> Connection:
        for c in self.connections:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def frame_notes(self) -> dict[int, list[str]]:
        """Per-frame annotation text: each interesting segment's role, the state changes it shows, and findings.

        e.g. "FIN M — server active close: ESTABLISHED -> FIN_WAIT_1"."""
        notes: dict[int, list[str]] = {}
        later: dict[int, list[str]] = {}     # TIME_WAIT restarts/ends: after the segment's own role
        for c in self.connections:
            _connection_notes(c, notes, later)
        for frame, texts in later.items():
            notes.setdefault(frame, []).extend(texts)
        for f in self.findings:
            for fr in f.frames:
                notes.setdefault(fr, []).append(f"{f.kind}: {f.detail}")
        return notes


def _fmt_ts(ts: float, t0: float) -> str:
    return f"t=+{ts - t0:.3f} s"


def _connection_notes(c: Connection, notes: dict[int, list[str]], later: dict[int, list[str]]) -> None:
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
                        txt += f" ({length}, restarted {len(w.restarts)}x, until {_fmt_ts(w.end_ts, c.first_ts)})"
                    else:
                        txt += f" ({length}, until {_fmt_ts(w.end_ts, c.first_ts)})"
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
