"""The analyzer's result as frozen records, and their JSON shape (`twlab analyze --json`, docs/design.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, TypeVar, get_args

from lab.core.tcpstate import Input, TcpState

Side = Literal["client", "server"]
Initiator = Literal["client", "server", "both"]
# "refused": a SYN answered by an RST (connect() gets ECONNREFUSED); "rst": an RST ended a connection
CloseKind = Literal["four-way", "three-way", "simultaneous", "half-close", "rst", "refused", "incomplete"]
FindingKind = Literal["fin-retransmitted", "final-ack-lost", "rst-after-fin", "reuse-in-time-wait",
                      "reuse-after-time-wait", "delayed-duplicate", "time-wait-assassinated", "stale-peer-ack",
                      "capture-duplicate"]
# how a TIME_WAIT window ended: the capture saw its 2*MSL run out, an RST assassinated it, a new SYN took the
# four-tuple over, or the capture ended while it still ran ("capture-end", with left_s)
EndedBy = Literal["timeout", "rst", "syn", "capture-end"]
ReuseVerdict = Literal["acceptable", "refused", "dangerous"]          # a new SYN against a TIME_WAIT
DuplicateVerdict = Literal["PAWS would reject", "rejected by window", "rejected by ACK check", "could be accepted"]

SIDES: Final[tuple[Side, ...]] = get_args(Side)
CLOSE_KINDS: Final[tuple[CloseKind, ...]] = get_args(CloseKind)
FINDING_KINDS: Final[tuple[FindingKind, ...]] = get_args(FindingKind)
ENDED_BY: Final[tuple[EndedBy, ...]] = get_args(EndedBy)
REUSE_VERDICTS: Final[tuple[ReuseVerdict, ...]] = get_args(ReuseVerdict)
DUPLICATE_VERDICTS: Final[tuple[DuplicateVerdict, ...]] = get_args(DuplicateVerdict)
# "000" .. "999": the text of three decimals by a tuple index (jsontext's float texts, the tracker's "{x:.3f}")
THREE_DIGITS: Final[tuple[str, ...]] = tuple([f"{i:03d}" for i in range(1000)])
_SIDES = SIDES
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_K = TypeVar("_K", bound=str)
_R = TypeVar("_R", bound=tuple[Any, ...])
_tuple_new: Final = tuple.__new__


def record(cls: type[_R], fields: tuple[Any, ...]) -> _R:
    """cls(*fields) for a record NamedTuple given all its fields in order, without the Python-level __new__
    that namedtuple generates: the analyzer builds ~4 records per connection, and from compiled code that
    interpreted frame cost more than the rest of the record (measured: ~3,000 instructions each)."""
    return _tuple_new(cls, fields)


def _one_of(value: object, kinds: tuple[_K, ...], what: str) -> _K:
    """A JSON value checked against a Literal's members (from_dict of a foreign file)."""
    for k in kinds:
        if value == k:
            return k
    raise ValueError(f"{what} {value!r} is not one of {', '.join(kinds)}")


class Transition(NamedTuple):
    """One endpoint's state change. `inferred`: the capture point did not see the segment that caused it.

    Immutable like the other records, but a NamedTuple: a churn capture makes ~9 per connection, and a
    frozen dataclass costs several times more to build (same reason as model.Segment)."""

    frame: int
    side: Side
    from_state: TcpState
    to_state: TcpState
    inferred: bool = False
    cause: str = ""          # the tcpstate.Input that drove it, e.g. "rcv FIN"

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "side": self.side, "from": self.from_state.value, "to": self.to_state.value,
                "inferred": self.inferred, "cause": self.cause}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Transition:
        return Transition(int(d["frame"]), _one_of(d["side"], SIDES, "side"), TcpState(d["from"]), TcpState(d["to"]),
                          bool(d.get("inferred", False)), str(d.get("cause", "")))


class TimeWaitWindow(NamedTuple):
    """Where one side holds TIME_WAIT, in capture time. `end_ts` is the last (re)start + 2*MSL unless the
    window ended early: `ended_by` "rst" (assassinated) or "syn" (a new incarnation took the four-tuple over).
    "timeout" only when the capture saw the 2*MSL pass (a later segment, of any connection, at or after
    end_ts); "capture-end" when the capture ended first: `left_s` is how much of it was left then."""

    side: Side
    start_ts: float
    end_ts: float
    start_frame: int
    restarts: tuple[int, ...] = ()       # frames that restarted the 2*MSL timer
    ended_by: EndedBy = "timeout"
    end_frame: int | None = None         # the RST or SYN frame when ended_by is not "timeout"
    length_s: float = 0.0                # the profile's 2*MSL that was applied
    left_s: float = 0.0                  # ended_by "capture-end": end_ts - the capture's last timestamp

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "start_ts": self.start_ts, "end_ts": self.end_ts, "start_frame": self.start_frame,
                "restarts": list(self.restarts), "ended_by": self.ended_by, "end_frame": self.end_frame,
                "length_s": self.length_s, "left_s": self.left_s}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TimeWaitWindow:
        return TimeWaitWindow(_one_of(d["side"], SIDES, "side"), float(d["start_ts"]), float(d["end_ts"]),
                              int(d["start_frame"]), tuple(int(x) for x in d.get("restarts", ())),
                              _one_of(d.get("ended_by", "timeout"), ENDED_BY, "ended_by"),
                              None if d.get("end_frame") is None else int(d["end_frame"]),
                              float(d.get("length_s", 0.0)), float(d.get("left_s", 0.0)))


class Close(NamedTuple):
    kind: CloseKind
    initiator: Initiator | None
    frames: tuple[int, ...] = ()     # the closing segments (first FINs, their first ACKs, RSTs)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "initiator": self.initiator, "frames": list(self.frames)}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Close:
        who = d.get("initiator")
        return Close(_one_of(d["kind"], CLOSE_KINDS, "close kind"),
                     None if who is None else _one_of(who, get_args(Initiator), "initiator"),
                     tuple(int(x) for x in d.get("frames", ())))


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
    # (frame, side 0=client/1=server, role) for the segments of interest, e.g. (12, 1, "FIN M"); see lab.core.narrate
    roles: tuple[tuple[int, int, str], ...] = ()
    # the capture ended while a side still held the connection (not CLOSED, LISTEN or TIME_WAIT): its last
    # transition says in which state
    open_at_end: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "client": self.client, "server": self.server, "incarnation": self.incarnation,
            "first_frame": self.first_frame, "last_frame": self.last_frame,
            "close": self.close.to_dict(), "time_wait": [w.to_dict() for w in self.time_wait],
            "first_ts": self.first_ts, "last_ts": self.last_ts, "packets": self.packets,
            "isn": {"client": self.client_isn, "server": self.server_isn}, "mid_capture": self.mid_capture,
            "open_at_end": self.open_at_end,
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
            bool(d.get("open_at_end", False)),
        )

    @property
    def transitions(self) -> tuple[Transition, ...]:
        return tuple([Transition(f, _SIDES[i], a, b, inf, inp.value) for f, i, a, b, inf, inp in self.steps])


class Finding(NamedTuple):
    kind: FindingKind
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
        return Finding(_one_of(d["kind"], FINDING_KINDS, "finding kind"), d.get("connection"),
                       tuple(int(x) for x in d["frames"]), str(d["detail"]),
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
