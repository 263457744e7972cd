"""Streaming close analyzer: TCP segments in capture order -> connections, per-endpoint state timelines,
close kinds, TIME_WAIT windows and findings.

How a capture point sees the two endpoints: a segment on the wire proves what its sender did (sent a SYN,
a FIN, an RST) and, through its ACK field, what its sender had received. So a side's *send* events apply
at the frame of its segment, and its *receive* events apply at the first of its own segments that
acknowledges them (the textbook ladder: "ACK M+1 — client: ESTABLISHED -> CLOSE_WAIT"). When the peer
must have received something before it acts on a later segment (segments of one direction arrive in
order), the earlier receipt is applied first and marked inferred. A receipt of a bare ACK (of a SYN or a
FIN) has no answer to prove it: it applies at the ACK's own frame, and is taken back if the sender's
retransmitted FIN proves that ACK lost (back along its arc: tcpstate.UNDO). States come only from
lab.core.tcpstate.TRANSITIONS (here flattened into lists indexed by state and input codes), forward or back,
and only Analyzer._go writes them.

When a side enters TIME_WAIT (one convention, everywhere: transitions, windows, JSON --detail): at the
segment that completes its close, as in RFC 9293's state diagram, and the window's 2*MSL counts from that
frame's timestamp:
  - FIN_WAIT_2 -> TIME_WAIT ("rcv FIN, snd ACK"): at the side's own ACK of the peer's FIN, the frame that
    proves it received the FIN (the active closer of a four-way or three-way close);
  - CLOSING -> TIME_WAIT ("rcv ACK of FIN"): at the peer's ACK of the side's FIN (crossed FINs: each side
    enters at the other's ACK).
A window ends by "timeout" only when the capture shows its 2*MSL pass (a later segment, of any connection,
at or after its end), early by "rst" (assassination) or "syn" (a new incarnation takes the four-tuple), and
by "capture-end" when the capture stops first (left_s: how much was left). Linux restarts it on any ACK
reaching it (profile restart_on_any_ack), RFC 9293 on a retransmitted FIN.

Memory follows open connections: a connection is finished into a compact Connection record once a later
incarnation of its four-tuple is under way (both sides of the new one have sent), or once it is over (no
side holds it) with its TIME_WAIT windows passed in capture time and idle for 2*MSL; an open connection
stays open however long it idles (until the capture's end). Of a finished connection its four-tuple keeps
only a fixed-size history (_Tuple: ids, sequence spaces, clocks, ISNs, TIME_WAIT windows), what the reuse,
delayed-duplicate and stale-answer checks of a next incarnation read; with its dict entry and int key about
0.27 KiB compiled (~0.43 KiB interpreted) per four-tuple ever seen (tests/unit/test_history_memory.py).

Written for mypyc (lab/build.py compiles this module; the same source runs interpreted): hot fields are
plain ints with -1 for "not seen" instead of Optional, states and inputs are small int codes, and the
TcpState/Input enums appear only in the records handed out (and in the steps a connection collects with detail).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from lab.core.model import ACK as _ACK
from lab.core.model import FIN as _FIN
from lab.core.model import RST as _RST
from lab.core.model import SYN as _SYN
from lab.core.model import Segment, endpoint_text
from lab.core.profiles import Profile, get_profile
from lab.core.report import (
    THREE_DIGITS,
    Close,
    CloseKind,
    Connection,
    DuplicateVerdict,
    EndedBy,
    Finding,
    FindingKind,
    Initiator,
    Report,
    ReuseVerdict,
    Side,
    TimeWaitWindow,
    record,
)
from lab.core.seqnum import HALF as _HALF
from lab.core.seqnum import MASK as _M32
from lab.core.seqnum import diff as _d  # signed a - b in 32-bit sequence (or TSval) space
from lab.core.tcpstate import TRANSITIONS, UNDO, Input, TcpState, bridge, path_to

if TYPE_CHECKING:   # a type only: mypyc compiles i64 to a C int64_t; interpreted it is never looked up
    from mypy_extensions import i64

_SWEEP_EVERY: Final = 4096
_ADDR_COMPACT: Final = 1 << 14     # address numbers below this make a four-tuple key a native int (Analyzer._key)
_KEY_WIDE: Final = 1 << 127
_FINISH_BATCH: Final = 4096      # connections finished at the capture's end between two on_batch() calls
# a segment identical to its sender's previous one (seq, ack, flags, window, length, TSval, IPv4 ID) this
# soon after it is the capture seeing one packet twice (two interfaces, a mirror port), not a retransmission:
# no retransmission timer or loss probe fires within half a millisecond, and a resent packet gets a new IPv4 ID
_SAME_PACKET_S: Final = 0.0005
NONE: Final = -1          # "not seen" for sequence numbers, ISNs, timestamps (all are >= 0)
_NEG_INF: Final = float("-inf")   # a constant: float("-inf") in a function parses the string on every call
# round(x, 6) and f"{x:.3f}" of an elapsed time cost ~2.5k instructions each (dtoa) and there is one of each per
# reuse finding: compiled, x * 10**k is rounded to an integer in floats instead when that cannot differ. x * 1e6
# below 2**40 is within 2**-12 of the exact product, so when its fraction is further than 0.001 from a half the
# exact product rounds the same way; the result n / 1e6 is one correctly rounded division, as round()'s is.
_COMPILED: Final = not __file__.endswith(".py")
_ROUNDABLE: Final = 1048576.0     # 2**20 s
_NEAR_HALF: Final = 0.001


def _scaled_round(x: float, scale: float) -> int:
    """x * scale rounded to the nearest integer as exact decimal rounding would, or -1 when the float product
    is too close to a half to tell (or x is not in (0, _ROUNDABLE))."""
    if not (0.0 < x < _ROUNDABLE):
        return -1
    p = x * scale
    n = int(p)
    f = p - n
    if -_NEAR_HALF < f - 0.5 < _NEAR_HALF:
        return -1
    return n + 1 if f > 0.5 else n


def _round6(x: float) -> float:
    """round(x, 6)."""
    if _COMPILED:
        n = _scaled_round(x, 1e6)
        if n >= 0:
            return n / 1e6
    return round(x, 6)


def _fixed3(x: float) -> str:
    """f"{x:.3f}"."""
    if _COMPILED:
        n = _scaled_round(x, 1e3)
        if n >= 0:
            return f"{n // 1000}.{THREE_DIGITS[n % 1000]}"
    return f"{x:.3f}"

# state and input codes: positions in the enums. Literal ints so that mypyc inlines them; every one is checked
# against the enums at import (a reordered or added member fails the import, not a verdict).
CLOSED: Final = 0
LISTEN: Final = 1
SYN_SENT: Final = 2
SYN_RECEIVED: Final = 3
ESTABLISHED: Final = 4
FIN_WAIT_1: Final = 5
FIN_WAIT_2: Final = 6
CLOSE_WAIT: Final = 7
CLOSING: Final = 8
LAST_ACK: Final = 9
TIME_WAIT: Final = 10

SEND_SYN: Final = 0
RCV_SYN: Final = 1
SEND_SYNACK: Final = 2
RCV_SYNACK: Final = 3
RCV_ACK_OF_SYN: Final = 4
SEND_FIN: Final = 5
RCV_FIN: Final = 6
RCV_ACK_OF_FIN: Final = 7
SEND_RST: Final = 8
RCV_RST: Final = 9
TIMEOUT_2MSL: Final = 10

STATES: Final = tuple(TcpState)
INPUTS: Final = tuple(Input)
_NS: Final = 11
_NI: Final = 11
_STATE_CODES: Final = (
    (TcpState.CLOSED, CLOSED), (TcpState.LISTEN, LISTEN), (TcpState.SYN_SENT, SYN_SENT),
    (TcpState.SYN_RECEIVED, SYN_RECEIVED), (TcpState.ESTABLISHED, ESTABLISHED), (TcpState.FIN_WAIT_1, FIN_WAIT_1),
    (TcpState.FIN_WAIT_2, FIN_WAIT_2), (TcpState.CLOSE_WAIT, CLOSE_WAIT), (TcpState.CLOSING, CLOSING),
    (TcpState.LAST_ACK, LAST_ACK), (TcpState.TIME_WAIT, TIME_WAIT))
_INPUT_CODES: Final = (
    (Input.SEND_SYN, SEND_SYN), (Input.RCV_SYN, RCV_SYN), (Input.SEND_SYNACK, SEND_SYNACK),
    (Input.RCV_SYNACK, RCV_SYNACK), (Input.RCV_ACK_OF_SYN, RCV_ACK_OF_SYN), (Input.SEND_FIN, SEND_FIN),
    (Input.RCV_FIN, RCV_FIN), (Input.RCV_ACK_OF_FIN, RCV_ACK_OF_FIN), (Input.SEND_RST, SEND_RST),
    (Input.RCV_RST, RCV_RST), (Input.TIMEOUT_2MSL, TIMEOUT_2MSL))


def _codes_match(members: tuple[Any, ...], codes: tuple[tuple[Any, int], ...]) -> bool:
    """Every enum member listed once, in enum order, at its position."""
    return len(codes) == len(members) and all(members[i] is m and c == i for i, (m, c) in enumerate(codes))


if not (_codes_match(STATES, _STATE_CODES) and _codes_match(INPUTS, _INPUT_CODES)
        and (len(STATES), len(INPUTS)) == (_NS, _NI)):
    raise ImportError("tracker's state/input codes no longer match lab.core.tcpstate's enums")


def _next_table() -> list[int]:
    """TRANSITIONS as next[state * _NI + input]; -1: no arc."""
    nxt = [-1] * (_NS * _NI)
    for (st, inp), to in TRANSITIONS.items():
        nxt[STATES.index(st) * _NI + INPUTS.index(inp)] = STATES.index(to)
    return nxt


def _undo_table() -> list[int]:
    """tcpstate.UNDO as undo[state * _NI + input]; -1: no unique arc back."""
    back = [-1] * (_NS * _NI)
    for (st, inp), frm in UNDO.items():
        back[STATES.index(st) * _NI + INPUTS.index(inp)] = STATES.index(frm)
    return back


def _bridge_table() -> list[list[int] | None]:
    """tcpstate.bridge() for every (state, input) pair, as input codes."""
    out: list[list[int] | None] = []
    for st in STATES:
        for inp in INPUTS:
            path = bridge(st, inp)
            out.append(None if path is None else [INPUTS.index(i) for i in path])
    return out


# Final: mypyc keeps these in C statics instead of looking them up in the module dict per use
_NEXT: Final = _next_table()
_UNDO: Final = _undo_table()
_BRIDGE: Final = _bridge_table()
_LISTEN_TO_EST: Final = [INPUTS.index(i) for i in path_to(TcpState.LISTEN, TcpState.ESTABLISHED) or ()]
# a list: mypyc iterates a list[int] natively (a tuple literal goes through the iterator protocol, boxed)
_BOTH_SIDES: Final = [0, 1]



def _name(s: int) -> Side:
    return "client" if s == 0 else "server"


class _TW:
    """One side's TIME_WAIT window in capture time."""

    __slots__ = ("end_frame", "end_ts", "ended_by", "restarts", "start_frame", "start_ts")

    def __init__(self, start_ts: float, start_frame: int, end_ts: float) -> None:
        self.start_ts = start_ts
        self.start_frame = start_frame
        self.end_ts = end_ts
        self.restarts: tuple[int, ...] = ()
        self.ended_by: EndedBy = "timeout"
        self.end_frame = 0                    # the RST or SYN that ended it early (0: none)


class _Side:
    """What the capture shows of one endpoint in one incarnation (-1: not seen; frame 0: none)."""

    __slots__ = (
        "acked",
        "acked_before_own_fin",
        "acked_peer_fin",
        "acked_peer_fin_ts",
        "base",
        "data_max",
        "ep",
        "fin_ack_applied",
        "fin_ack_val",
        "fin_ack_wire",
        "fin_acked_frame",
        "fin_crossed",
        "fin_frame",
        "fin_retx",
        "fin_seq",
        "fin_ts",
        "got_fin",
        "got_fin_frame",
        "got_fin_seq",
        "isn",
        "last_fin_frame",
        "last_fin_ts",
        "last_frame",
        "reack_pending",
        "rst_frame",
        "rtt",
        "seen_ack",
        "seen_flags",
        "seen_frame",
        "seen_ipid",
        "seen_len",
        "seen_seq",
        "seen_ts",
        "seen_tsval",
        "seen_win",
        "shift",
        "snd_max",
        "state",
        "syn_ack",
        "syn_frame",
        "syn_ts",
        "syn_win",
        "ts_first",
        "ts_last",
        "tw",
        "win",
        "ws",
    )

    def __init__(self, ep: str, state: int) -> None:
        self.ep = ep
        self.state = state
        self.isn = NONE
        self.base = NONE                      # ISN, or first seq - 1 without a SYN (as Wireshark numbers)
        self.syn_frame = 0
        self.snd_max = NONE                   # highest seq + len sent
        self.data_max = NONE                  # highest end of its data seen, from its FIN on (what was new)
        self.acked = NONE                     # highest ACK field sent: its rcv_nxt as the wire proves it
        self.fin_seq = NONE                   # sequence number the FIN occupies
        self.fin_frame = 0
        self.last_fin_frame = 0
        self.last_fin_ts = 0.0
        self.fin_retx: tuple[int, ...] = ()
        self.fin_ack_applied = False          # the receipt of the ACK of its FIN is applied (taken back if lost)
        self.fin_acked_frame = 0              # the peer's ACK of this side's FIN that this side received
        self.fin_ack_wire = 0                 # the first ACK of it on the wire (received or not)
        self.fin_crossed = False              # its FIN was sent before it received the peer's (crossed FINs)
        self.got_fin = False                  # this side has received the peer's FIN
        self.got_fin_frame = 0                # ... proved by this side's ACK in this frame
        self.got_fin_seq = NONE               # ... whose seq was this
        self.acked_before_own_fin = False     # a bare ACK of the peer's FIN sent before its own FIN (seen later)
        self.acked_peer_fin = 0               # this side's latest segment that ACKs the peer's FIN
        self.acked_peer_fin_ts = 0.0
        self.syn_ts = 0.0
        self.syn_ack = NONE                   # the ACK field of its SYN-ACK
        self.fin_ts = 0.0
        self.fin_ack_val = NONE               # the ACK field of its latest FIN transmission (-1: no ACK flag)
        self.rtt = -1.0                       # shortest time it took to answer a SYN/SYN-ACK/FIN seen here
        self.ts_first = NONE
        self.ts_last = NONE
        self.win = 65535                      # the latest advertised window, as on the wire
        self.syn_win = False                  # ... from a SYN (never scaled)
        self.ws = NONE                        # the window-scale shift its SYN offered (-1: none)
        self.shift = 0                        # the scale in effect for its windows (both SYNs offered one)
        self.rst_frame = 0
        self.last_frame = 0
        # its previous segment through the full path, to recognise the capture seeing it twice
        self.seen_ts = _NEG_INF
        self.seen_frame = 0
        self.seen_seq = NONE
        self.seen_ack = NONE
        self.seen_flags = NONE
        self.seen_win = NONE
        self.seen_len = NONE
        self.seen_tsval = NONE
        self.seen_ipid = NONE                 # IPv4 ID: a retransmission is a new packet with its own
        self.reack_pending = False
        self.tw: _TW | None = None


class _Reuse:
    __slots__ = ("answer", "answer_frame", "elapsed_s", "holder_sides", "holders", "kind", "old", "old_id", "reason",
                 "syn_frame", "syn_ts", "verdict")

    def __init__(self) -> None:
        self.kind: FindingKind = "reuse-in-time-wait"     # or "reuse-after-time-wait"
        self.syn_frame = 0
        self.old_id = 0
        self.holders: list[str] = []
        self.elapsed_s = 0.0
        self.verdict: ReuseVerdict = "acceptable"
        self.reason = ""
        self.answer = ""
        self.answer_frame = 0
        self.old: _Conn | None = None
        self.holder_sides: list[int] = []
        self.syn_ts = 0.0


# a finished incarnation's TIME_WAIT window as its four-tuple's history keeps it
_NO_TW: Final = 0          # the side held none
_TW_TIMEOUT: Final = 1     # nothing ended it early (it runs out at its end)
_TW_RST: Final = 2         # ended early by an RST (assassination)
_TW_SYN: Final = 3         # ended early by a new incarnation's SYN


class _Tuple:
    """One four-tuple: its live incarnation, and what the next incarnation's reuse and delayed-duplicate
    checks need of the last finished one (its "history"), as plain fields: this object, its dict key and
    entry are all an analyzer keeps of a four-tuple that never comes back (the finished _Conn is dropped).
    Directions are those of the analyzer's key: d = 0 for the four-tuple's first sender."""

    __slots__ = ("conn", "count", "flip", "h_base0", "h_base1", "h_cdir", "h_id", "h_isn0", "h_isn1", "h_last_ts",
                 "h_snd0", "h_snd1", "h_tsl0", "h_tsl1", "h_tw0", "h_tw1", "h_twe0", "h_twe1", "h_tws0", "h_tws1")

    def __init__(self, flip: int) -> None:
        self.flip = flip                      # the key's direction of d = 0 (see Analyzer._key)
        self.conn: _Conn | None = None
        self.count = 0                        # incarnations seen: the next one's number
        self.h_id = NONE                      # the last finished incarnation's connection id (-1: no history)
        self.h_cdir = 0
        self.h_last_ts = 0.0
        # per side of that incarnation (0 client, 1 server): sequence space, clock, ISN, TIME_WAIT window
        self.h_base0 = NONE
        self.h_base1 = NONE
        self.h_snd0 = NONE
        self.h_snd1 = NONE
        self.h_tsl0 = NONE
        self.h_tsl1 = NONE
        self.h_isn0 = NONE                    # its ISN, or the peer's SYN-ACK's ACK - 1 when its SYN went unseen
        self.h_isn1 = NONE
        self.h_tw0 = _NO_TW
        self.h_tw1 = _NO_TW
        self.h_tws0 = 0.0
        self.h_tws1 = 0.0
        self.h_twe0 = 0.0
        self.h_twe1 = 0.0

    def remember(self, conn: _Conn) -> None:
        """Keep the history of `conn`, the four-tuple's latest incarnation, now finished."""
        c = conn.sides[0]
        sv = conn.sides[1]
        self.h_id = conn.id
        self.h_cdir = conn.cdir
        self.h_last_ts = conn.last_ts
        self.h_base0 = c.base
        self.h_base1 = sv.base
        self.h_snd0 = c.snd_max
        self.h_snd1 = sv.snd_max
        self.h_tsl0 = c.ts_last
        self.h_tsl1 = sv.ts_last
        self.h_isn0 = _isn_seen(c, sv)
        self.h_isn1 = _isn_seen(sv, c)
        w = c.tw
        if w is not None:
            self.h_tw0 = _tw_code(w.ended_by)
            self.h_tws0 = w.start_ts
            self.h_twe0 = w.end_ts
        else:
            self.h_tw0 = _NO_TW
        w = sv.tw
        if w is not None:
            self.h_tw1 = _tw_code(w.ended_by)
            self.h_tws1 = w.start_ts
            self.h_twe1 = w.end_ts
        else:
            self.h_tw1 = _NO_TW

    def recall(self) -> _Conn:
        """The remembered incarnation as a finished (done) _Conn carrying exactly the fields the checks of a
        later incarnation read of a finished one (ids, sequence spaces, clocks, ISNs, TIME_WAIT windows);
        built only when a new incarnation comes."""
        old = _Conn(self.h_id, self, "", "", self.h_cdir, self.count - 1, 0, self.h_last_ts, True, False)
        old.done = True
        c = old.sides[0]
        sv = old.sides[1]
        c.base = self.h_base0
        sv.base = self.h_base1
        c.snd_max = self.h_snd0
        sv.snd_max = self.h_snd1
        c.ts_last = self.h_tsl0
        sv.ts_last = self.h_tsl1
        c.isn = self.h_isn0
        sv.isn = self.h_isn1
        if self.h_tw0 != _NO_TW:
            c.tw = _tw_back(self.h_tw0, self.h_tws0, self.h_twe0)
        if self.h_tw1 != _NO_TW:
            sv.tw = _tw_back(self.h_tw1, self.h_tws1, self.h_twe1)
        return old


def _isn_seen(side: _Side, peer: _Side) -> int:
    """The side's ISN, or the one the peer's SYN-ACK acknowledged when its SYN went unseen (-1: neither)."""
    if side.isn >= 0:
        return side.isn
    return (peer.syn_ack - 1) & _M32 if peer.syn_ack >= 0 else NONE


def _tw_code(how: EndedBy) -> int:
    return _TW_TIMEOUT if how == "timeout" else _TW_RST if how == "rst" else _TW_SYN


def _tw_back(code: int, start_ts: float, end_ts: float) -> _TW:
    w = _TW(start_ts, 0, end_ts)
    w.ended_by = "timeout" if code == _TW_TIMEOUT else "rst" if code == _TW_RST else "syn"
    return w


class _Conn:
    __slots__ = ("cdir", "close_extra", "detail", "done", "dups", "fin_first", "first_frame", "first_ts",
                 "half_close_frame", "id", "incarnation", "last_frame", "last_ts", "mid", "nfin", "owed_rst", "packets",
                 "prev", "refused", "reuse", "roles", "rsts", "seen_twice", "sides", "trans", "tuple", "ws_known")

    def __init__(self, cid: int, tup: _Tuple, client: str, server: str, cdir: int, incarnation: int, frame: int,
                 ts: float, mid: bool, synack: bool) -> None:
        self.id = cid
        self.tuple = tup
        self.cdir = cdir                      # direction index of the client's segments in tup
        self.incarnation = incarnation
        self.first_frame = frame
        self.last_frame = frame
        self.first_ts = ts
        self.last_ts = ts
        self.packets = 0
        self.mid = mid
        # no SYN seen: both ESTABLISHED (assumed); first seen a SYN-ACK: the client's SYN went unseen
        if mid:
            st_c, st_s = ESTABLISHED, ESTABLISHED
        else:
            st_c, st_s = (SYN_SENT if synack else CLOSED), LISTEN
        self.sides = [_Side(client, st_c), _Side(server, st_s)]
        # (frame, side, from, to, inferred, input): the record's steps as they come; kept only with detail
        self.trans: list[tuple[int, int, TcpState, TcpState, bool, Input]] = []
        self.roles: list[tuple[int, int, str]] = []
        self.nfin = 0                         # sides that have sent a FIN (0..2)
        self.fin_first = -1                   # the side whose FIN came first
        self.rsts: tuple[tuple[int, int], ...] = ()    # (frame, side); tuples: most connections have none
        self.half_close_frame = 0
        self.prev: _Conn | None = None
        self.reuse: _Reuse | None = None
        self.refused = False                  # the first RST that closed it answered a SYN (SYN_SENT)
        self.seen_twice: tuple[tuple[int, int], ...] = ()   # (frame, the frame it repeats): capture duplicates
        self.owed_rst = NONE                  # the ACK a SYN_SENT side could not take (its RST answers it)
        self.dups: tuple[tuple[int, int, DuplicateVerdict, str], ...] = ()     # (frame, side, verdict, why)
        self.close_extra: tuple[tuple[FindingKind, tuple[int, ...], str, dict[str, Any]], ...] = ()
        self.done = False                     # finalized into a Connection record: read-only from here
        self.detail = False                   # keeps its transitions and segment roles (see Analyzer.detail_only)
        self.ws_known = False                 # both SYNs seen: whether windows are scaled is known


class Analyzer:
    """Feed segments in capture order, then finish() for the Report."""

    def __init__(self, profile: str | Profile = "linux", time_wait_s: float | None = None,
                 detail: bool = True, keep: bool = True, detail_only: int = NONE) -> None:
        if isinstance(profile, Profile):
            prof = profile if time_wait_s is None else get_profile(profile.name, time_wait_s)
        else:
            prof = get_profile(profile, time_wait_s)
        self.profile = prof
        self.tw_s = prof.time_wait_s
        self._any_ack_restarts = prof.restart_on_any_ack
        self._min_rto = prof.min_rto_s
        self._sweep_gap = max(1.0, self.tw_s / 4)   # capture seconds between sweeps for finished connections
        # one entry per four-tuple, under an int key made of its endpoints in one order (see feed_fields)
        self._tuples: dict[int, _Tuple] = {}
        self._last_key = -1                   # the last four-tuple looked up (keys are >= 0), and its entry
        self._last_tuple = _Tuple(0)
        self._addrs: dict[str, int] = {}      # address -> its number, in order of first sight
        self._last_addr = ""                  # most segments repeat one of the last addresses
        self._last_no = 0
        self._open: dict[int, _Conn] = {}
        self._done: list[Connection] = []
        self._findings: list[Finding] = []
        self._next_id = 0
        self._segments = 0
        self._max_frame = 0
        self._last_ts = _NEG_INF         # the capture's latest timestamp so far (its clock at the end)
        self._finished: Report | None = None
        self._last_sweep = 0.0
        # detail=False: finished connections keep no state timeline or segment roles (no frame notes, no
        # ladder), which roughly halves the memory of a report on a churn capture with 100k+ connections
        self.detail = detail
        # detail_only >= 0 (with detail): only that connection keeps them (`show` draws one; its id is known
        # when it is created, ids going in order of first segment)
        self.detail_only = detail_only
        # keep=False (streaming): finished records are not kept for finish()'s Report; drain() hands them out
        self.keep = keep

    # -- the per-segment path -----------------------------------------------------------------------

    def feed(self, seg: Segment) -> None:
        t = seg.tsval
        self.feed_fields(seg.frame, seg.ts_s, seg.src_ip, seg.sport, seg.dst_ip, seg.dport, seg.seq, seg.ack,
                         seg.flags, seg.window, seg.payload_len, NONE if t is None else t,
                         NONE if seg.wscale is None else seg.wscale, NONE if seg.ipid is None else seg.ipid)

    def feed_fields(self, frame: int, ts: float, si: str, sp: int, di: str, dp: int, seq: int, ack: int,
                    flags: int, win: int, plen: int, tsval: int, wscale: int = NONE, ipid: int = NONE) -> None:
        """feed() without a Segment (the readers' compiled fast path calls this); tsval -1: no TS option,
        wscale -1: no window-scale option (or not a SYN), ipid -1: no IPv4 Identification (IPv6)."""
        self._segments += 1
        if frame > self._max_frame:
            self._max_frame = frame
        if ts > self._last_ts:
            self._last_ts = ts
        kf = self._key(si, sp, di, dp)
        k = kf >> 1
        if k == self._last_key:               # the previous segment's four-tuple (2 of 3 on a churn)
            tup = self._last_tuple
            d = (kf & 1) ^ tup.flip
        else:
            found = self._tuples.get(k)
            if found is None:
                tup = self._new_tuple(kf, si, sp, di, dp)
                d = 0
            else:
                tup = found
                d = (kf & 1) ^ tup.flip
            self._last_key = k
            self._last_tuple = tup
        conn = tup.conn
        if conn is None or flags & _SYN or (conn.incarnation and not flags & _RST
                                            and conn.sides[d ^ conn.cdir].snd_max < 0):
            routed = self._route(tup, d, conn, frame, ts, seq, ack, flags, tsval, plen, si, sp, di, dp)
            if routed is None:
                return
            conn = routed
        s = d ^ conn.cdir
        side = conn.sides[s]
        conn.packets += 1
        conn.last_frame = frame
        conn.last_ts = ts
        # fast path: an ACK/data segment with nothing pending on the connection (data in a later
        # incarnation needs the delayed-duplicate check)
        if not flags & 0x07 and not conn.nfin and side.state == ESTABLISHED \
                and conn.sides[s ^ 1].state == ESTABLISHED \
                and (not plen or not conn.incarnation or (
                    # plainly inside this incarnation's own sequence space and clock: no duplicate check needed
                    side.base >= 0 and side.snd_max >= 0
                    and ((seq - side.base) & _M32) <= ((side.snd_max - side.base) & _M32)
                    and (tsval < 0 or side.ts_first < 0 or ((tsval - side.ts_first) & _M32) < _HALF))):
            side.last_frame = frame
            end = (seq + plen) & _M32
            if side.snd_max < 0:
                side.snd_max = end
                side.base = (seq - 1) & _M32
            elif plen and 0 < ((end - side.snd_max) & _M32) < _HALF:
                side.snd_max = end
            if tsval >= 0:
                if side.ts_first < 0:
                    side.ts_first = tsval
                side.ts_last = tsval
            if flags & _ACK and (side.acked < 0 or 0 < ((ack - side.acked) & _M32) < _HALF):
                side.acked = ack
            side.win = win
            side.syn_win = False
            return
        self._segment(conn, s, frame, ts, seq, ack, flags, win, plen, tsval, wscale, ipid)
        prev = conn.prev
        if prev is not None and not prev.done and conn.sides[0].snd_max >= 0 and conn.sides[1].snd_max >= 0 \
                and not _tw_pending(prev.sides[0], ts) and not _tw_pending(prev.sides[1], ts):
            # both sides of the new incarnation have sent: nothing more can belong to the old one (a TIME_WAIT
            # window of it still running waits for the sweep or the capture's end, which say how it ended)
            self._finish_conn(prev)
        if self._segments % _SWEEP_EVERY == 0 and ts - self._last_sweep >= self._sweep_gap:
            self._last_sweep = ts
            self._sweep(ts)

    def _key(self, si: str, sp: int, di: str, dp: int) -> int:
        """The four-tuple's key (both directions share it) shifted left by one, with this segment's order in
        bit 0 (its flip): the endpoint with the lower port first (the lower address number on a tie), its
        address number, the other's, both ports."""
        a: i64 = self._addr_no(si)
        b: i64 = self._addr_no(di)
        # below 2**61 (C arithmetic when compiled, no long ints) while both address numbers are below 2**14
        if sp < dp or (sp == dp and a <= b):
            if a < _ADDR_COMPACT and b < _ADDR_COMPACT:
                return ((a << 46) | (b << 32) | (sp << 16) | dp) << 1
            return _wide_key(a, b, sp, dp) << 1
        if a < _ADDR_COMPACT and b < _ADDR_COMPACT:
            return (((b << 46) | (a << 32) | (dp << 16) | sp) << 1) | 1
        return (_wide_key(b, a, dp, sp) << 1) | 1

    def _new_tuple(self, kf: int, si: str, sp: int, di: str, dp: int) -> _Tuple:
        """A four-tuple seen for the first time, from this segment's sender (its direction 0)."""
        flip = kf & 1
        tup = _Tuple(flip)
        self._tuples[kf >> 1] = tup
        if si == di and sp == dp:
            tup.flip = flip ^ 1               # a connection to itself: its later segments count as direction 1
        return tup

    def _addr_no(self, ip: str) -> int:
        if ip == self._last_addr:
            return self._last_no
        n = self._addrs.get(ip)
        if n is None:
            n = len(self._addrs)
            self._addrs[ip] = n
        self._last_addr = ip
        self._last_no = n
        return n

    def _route(self, tup: _Tuple, d: int, conn: _Conn | None, frame: int, ts: float, seq: int, ack: int,
               flags: int, tsval: int, plen: int, si: str, sp: int, di: str, dp: int) -> _Conn | None:
        """The incarnation this segment (from si:sp, direction d) belongs to (a new one on a new SYN); None when
        handled here."""
        if flags & _SYN:
            if not flags & _ACK:
                if conn is None or self._syn_starts_new(conn, d ^ conn.cdir, seq):
                    return self._new_conn(tup, d, si, sp, di, dp, frame, ts, seq, tsval, True, False)
                return conn
            if conn is None or self._over(conn):
                return self._new_conn(tup, d ^ 1, di, dp, si, sp, frame, ts, seq, tsval, False, False)
            if conn.incarnation and conn.prev is not None and conn.sides[d ^ conn.cdir].snd_max < 0 \
                    and self._old_answer(conn, d, frame, ts, seq, ack, flags, plen):
                return None
            return conn
        if conn is None:
            # no handshake seen: the lower port is taken as the server (80 vs 3363), else the first sender
            if sp < dp:
                return self._new_conn(tup, d ^ 1, di, dp, si, sp, frame, ts, seq, tsval, False, True)
            return self._new_conn(tup, d, si, sp, di, dp, frame, ts, seq, tsval, False, True)
        if conn.incarnation and conn.prev is not None and not flags & _RST:
            s = d ^ conn.cdir
            if conn.sides[s].snd_max < 0 and self._old_answer(conn, d, frame, ts, seq, ack, flags, plen):
                return None
        return conn

    def _syn_starts_new(self, conn: _Conn, s: int, seq: int) -> bool:
        side = conn.sides[s]
        if side.isn >= 0 and side.syn_frame:
            if seq == side.isn:
                return self._over(conn)       # a retransmission, unless that incarnation is over
            return True
        peer = conn.sides[s ^ 1]
        if not conn.mid and peer.syn_ack >= 0 and peer.syn_ack == (seq + 1) & _M32 and not self._over(conn):
            return False                      # the SYN-ACK answering this SYN was captured first
        # simultaneous open: both sides send a SYN
        return not (peer.syn_frame and (peer.state == SYN_SENT or peer.state == CLOSED) and not conn.nfin
                    and not conn.rsts)

    @staticmethod
    def _over(conn: _Conn) -> bool:
        if conn.rsts:
            return True
        c = conn.sides[0].state
        s = conn.sides[1].state
        return c in (CLOSED, TIME_WAIT) and s in (CLOSED, TIME_WAIT) and conn.nfin > 0

    def _old_answer(self, conn: _Conn, d: int, frame: int, ts: float, seq: int, ack: int, flags: int,
                    plen: int) -> bool:
        """A segment that answers a new SYN from the previous incarnation's state: TIME_WAIT's ACK refusing
        it, or a stale half-open connection's ACK / SYN-ACK. It belongs to the previous incarnation."""
        prev = conn.prev
        assert prev is not None
        ps = d ^ prev.cdir
        old = prev.sides[ps]
        if prev.done or plen or not flags & _ACK or flags & _FIN or old.snd_max < 0 or old.state == CLOSED:
            return False
        if prev.sides[ps ^ 1].snd_max != ack:
            return False
        if flags & _SYN:
            if seq != old.isn:
                return False
        elif seq != old.snd_max:
            return False
        prev.packets += 1
        prev.last_frame = frame
        prev.last_ts = ts
        old.last_frame = frame
        tw = old.state == TIME_WAIT
        if prev.detail:
            what = ("ACK of the old connection: TIME_WAIT refuses the new SYN" if tw else
                    "answer from the old connection's state (SYN-ACK retransmission)" if flags & _SYN else
                    "ACK of the old connection (its half-open state answers the new SYN)")
            prev.roles.append((frame, ps, what))
        r = conn.reuse
        if r is not None and not r.answer:
            r.answer = "old connection's ACK (refused)" if tw else "old connection's state"
            r.answer_frame = frame
        return True

    def _new_conn(self, tup: _Tuple, cdir: int, cip: str, cport: int, sip: str, sport: int, frame: int, ts: float,
                  seq: int, tsval: int, syn: bool, mid: bool) -> _Conn:
        """A new incarnation of the four-tuple, with the client (cip, cport) sending in direction cdir; the
        previous one (still open, or recalled from the four-tuple's history) is its prev."""
        old = tup.conn
        if old is not None:
            # the live previous incarnation names the same two endpoints: its texts, not two new ones
            i = cdir ^ old.cdir
            client = old.sides[i].ep
            server = old.sides[i ^ 1].ep
        else:
            client = endpoint_text(cip, cport)
            server = endpoint_text(sip, sport)
            if tup.h_id >= 0:
                old = tup.recall()
        conn = _Conn(self._next_id, tup, client, server, cdir, tup.count, frame, ts, mid, not syn and not mid)
        conn.detail = self.detail and (self.detail_only < 0 or conn.id == self.detail_only)
        self._next_id += 1
        tup.count += 1
        if old is not None:
            conn.prev = old
            if syn:
                self._check_reuse(old, conn, cdir, frame, ts, seq, tsval)
        tup.conn = conn
        self._open[conn.id] = conn
        return conn

    # -- reuse of a four-tuple ------------------------------------------------------------------------

    def _check_reuse(self, old: _Conn, conn: _Conn, cdir: int, frame: int, ts: float, seq: int,
                     tsval: int) -> None:
        """A new SYN from the side at direction cdir: judged against the old incarnation's TIME_WAIT windows
        as Linux's tcp_timewait_state_process (RFC 6191) would."""
        snd = cdir ^ old.cdir                 # the SYN sender's side index in the old incarnation
        rcv = snd ^ 1
        open_w: list[int] = []
        ended: list[int] = []
        for i in _BOTH_SIDES:
            w = old.sides[i].tw
            if w is not None:
                if w.ended_by == "timeout" and w.end_ts >= ts:
                    open_w.append(i)
                else:
                    ended.append(i)
        if not open_w and not ended:
            return
        r = _Reuse()
        r.syn_frame = frame
        r.old_id = old.id
        osnd, orcv = old.sides[snd], old.sides[rcv]
        if not open_w:
            r.kind = "reuse-after-time-wait"
            end = _NEG_INF
            for i in ended:
                w = old.sides[i].tw
                if w is not None and w.end_ts > end:
                    end = w.end_ts
            r.elapsed_s = ts - end
            r.holders = [_name(i) for i in ended]
            conn.reuse = r
            return
        r.kind = "reuse-in-time-wait"
        r.holders = [_name(i) for i in open_w]
        r.holder_sides = open_w
        r.old = old
        r.syn_ts = ts
        w0 = old.sides[open_w[0]].tw
        assert w0 is not None
        r.elapsed_s = ts - w0.start_ts
        newer_ts = tsval >= 0 and osnd.ts_last >= 0 and _d(tsval, osnd.ts_last) > 0
        older_ts = tsval >= 0 and osnd.ts_last >= 0 and _d(tsval, osnd.ts_last) < 0
        if rcv in open_w:
            rcv_nxt = osnd.snd_max
            if older_ts:
                r.verdict, r.reason = "refused", "its timestamp is older than the last one TIME_WAIT saw (PAWS)"
                if self._any_ack_restarts:     # a PAWS-rejected segment reschedules TIME_WAIT on Linux
                    self._tw_restart(orcv, frame, ts)
            elif rcv_nxt >= 0 and _d(seq, rcv_nxt) > 0:
                r.verdict, r.reason = "acceptable", "its ISN is above the old connection's sequence space"
            elif newer_ts:
                r.verdict, r.reason = "acceptable", "its timestamp is newer than the old connection's"
            else:
                r.verdict, r.reason = ("refused", "its ISN is not above the old rcv_nxt and it has no newer "
                                                  "timestamp")
            if r.verdict == "acceptable":
                self._tw_end(orcv, "syn", frame, ts)
                if snd in open_w:              # both held TIME_WAIT: the sender reused its own too
                    self._tw_end(osnd, "syn", frame, ts)
        else:
            # the SYN's own sender holds TIME_WAIT (a client reusing its port): nothing on the peer refuses it
            old_isn = osnd.isn if osnd.isn >= 0 else (
                (orcv.syn_ack - 1) & _M32 if orcv.syn_ack >= 0 else NONE)   # its SYN unseen: SYN-ACK's ack
            if old_isn >= 0 and seq == old_isn:
                r.verdict, r.reason = ("dangerous", "it carries the old connection's ISN: a delayed duplicate of "
                                                    "the old SYN, which a listener would take as new")
                conn.dups += ((frame, 0, "could be accepted",
                               f"SYN with the ISN of incarnation {old.incarnation} (connection {old.id}); the "
                               "SYN sender's TIME_WAIT cannot stop it and a listener would answer it"),)
                conn.reuse = r
                return
            if osnd.snd_max >= 0 and _d(seq, osnd.snd_max) > 0:
                r.verdict, r.reason = "acceptable", "its ISN is above its old sequence space"
            elif newer_ts:
                r.verdict, r.reason = "acceptable", "its timestamp is newer than the old connection's"
            else:
                r.verdict, r.reason = ("dangerous", "its ISN overlaps the old sequence space and no newer "
                                                    "timestamp protects the new connection")
            self._tw_end(osnd, "syn", frame, ts)
        conn.reuse = r

    # -- state machine ---------------------------------------------------------------------------------

    def _go(self, conn: _Conn, s: int, inp: int, frame: int, ts: float, inferred: bool) -> bool:
        """The one place a side's state changes: the arc of TRANSITIONS for (state, input), after bridging
        inputs the capture did not show (tcpstate.bridge); False when there is no arc."""
        side = conn.sides[s]
        st = side.state
        nxt = _NEXT[st * _NI + inp]
        if nxt < 0:
            path = _BRIDGE[st * _NI + inp]
            if not path:
                return False
            for i in path:
                self._go(conn, s, i, frame, ts, True)
            st = side.state
            nxt = _NEXT[st * _NI + inp]
        side.state = nxt
        if conn.detail:
            conn.trans.append((frame, s, STATES[st], STATES[nxt], inferred, INPUTS[inp]))
        if inp == RCV_ACK_OF_FIN:
            side.fin_ack_applied = True
        if nxt == TIME_WAIT:
            side.tw = _TW(ts, frame, ts + self.tw_s)
        return True

    def _go_back(self, conn: _Conn, s: int, inp: int) -> int:
        """Take back side s's latest `inp` (tcpstate.UNDO): a later segment proved that receipt did not happen
        when the capture seemed to show it. Its record goes too. Returns the record's frame (0: none kept);
        -1: the state has no arc back for `inp` (nothing changes)."""
        side = conn.sides[s]
        st = side.state
        prev = _UNDO[st * _NI + inp]
        if prev < 0:
            return -1
        side.state = prev
        if inp == RCV_ACK_OF_FIN:
            side.fin_ack_applied = False
        if st == TIME_WAIT:
            side.tw = None
        return _drop_last_record(conn.trans, s, inp) if conn.detail else 0

    def _tw_restart(self, side: _Side, frame: int, ts: float) -> None:
        tw = side.tw
        if tw is not None and tw.ended_by == "timeout" and ts <= tw.end_ts:
            tw.end_ts = ts + self.tw_s
            tw.restarts += (frame,)

    @staticmethod
    def _tw_end(side: _Side, how: EndedBy, frame: int, ts: float) -> None:
        tw = side.tw
        if tw is not None and tw.ended_by == "timeout" and ts <= tw.end_ts:
            tw.end_ts = ts
            tw.ended_by = how
            tw.end_frame = frame

    def _segment(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, ack: int, flags: int, win: int,
                 plen: int, tsval: int, wscale: int, ipid: int) -> None:
        """One segment from side s, by what it does: an RST ends here; otherwise its SYN (or first sight of a
        sender without one), what its ACK field proves, its FIN, and the sequence space it covers."""
        side = conn.sides[s]
        if ts - side.seen_ts < _SAME_PACKET_S and seq == side.seen_seq and ack == side.seen_ack \
                and flags == side.seen_flags and win == side.seen_win and plen == side.seen_len \
                and tsval == side.seen_tsval and ipid == side.seen_ipid:
            self._seen_twice(conn, s, frame, ts)
            return
        side.seen_ts = ts
        side.seen_frame = frame
        side.seen_seq = seq
        side.seen_ack = ack
        side.seen_flags = flags
        side.seen_win = win
        side.seen_len = plen
        side.seen_tsval = tsval
        side.seen_ipid = ipid
        if conn.incarnation and (plen or flags & _FIN) and not flags & (_SYN | _RST) and conn.prev is not None \
                and not conn.mid and self._from_previous_incarnation(conn, s, frame, seq, ack, flags, plen, tsval):
            return
        peer = conn.sides[s ^ 1]
        if flags & _ACK and not flags & (_SYN | _RST) and peer.state == SYN_SENT and peer.isn >= 0 \
                and not side.syn_frame and not _acks_syn_sent(peer, ack):
            # (after a SYN-ACK of its own, an ACK above SND.NXT rather shows data the capture missed)
            self._stale_answer(conn, s, frame, ts, ack)
            return
        prev_last = side.last_frame
        side.last_frame = frame
        if flags & _RST:
            self._rst(conn, s, frame, ts, seq, ack, flags, prev_last)
            return
        if flags & _SYN:
            self._syn(conn, s, frame, ts, seq, ack, flags, wscale)
        else:
            self._sent_without_syn(conn, s, frame, ts, seq, flags)
        # what this side proves it received (its ACK field), then what the peer receives from it
        if flags & _ACK:
            self._ack(conn, s, frame, ts, seq, ack, flags)
        if flags & _FIN:
            self._fin(conn, s, frame, ts, seq, ack, flags, plen)
        self._advance(conn, s, frame, seq, flags, win, plen, tsval)

    def _seen_twice(self, conn: _Conn, s: int, frame: int, ts: float) -> None:
        """The capture holds side s's previous segment again: one packet, recorded and otherwise ignored."""
        side = conn.sides[s]
        conn.seen_twice += ((frame, side.seen_frame),)
        if conn.detail:
            conn.roles.append((frame, s, f"frame {side.seen_frame} again, {(ts - side.seen_ts) * 1e6:.0f} µs later: "
                                         "the capture saw one packet twice (not a retransmission)"))

    def _from_previous_incarnation(self, conn: _Conn, s: int, frame: int, seq: int, ack: int, flags: int,
                                   plen: int, tsval: int) -> bool:
        """A data/FIN segment outside this incarnation's own sequence space or clock that is a delayed
        duplicate of the previous one (handled and recorded by _duplicate)."""
        side = conn.sides[s]
        lo = side.base
        hi = side.snd_max
        plain = (lo >= 0 and hi >= 0 and ((seq - lo) & _M32) <= ((hi - lo) & _M32)
                 and (tsval < 0 or side.ts_first < 0 or ((tsval - side.ts_first) & _M32) < _HALF))
        return not plain and self._duplicate(conn, s, frame, seq, ack, flags, plen, tsval)

    def _syn(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, ack: int, flags: int,
             wscale: int) -> None:
        """A SYN or SYN-ACK: a retransmission (same ISN) or this side's ISN."""
        side = conn.sides[s]
        note = ""
        if side.syn_frame and seq == side.isn:
            if not flags & _ACK:
                what = "SYN retransmission"
            elif side.syn_ack < 0:
                # its SYN's ISN, now with an ACK: simultaneous open, it answers the peer's SYN (SYN_SENT ->
                # SYN_RECEIVED, RFC 9293 3.5 figure 7)
                note = self._syn_ack(conn, s, frame, ts, ack)
                what = "SYN-ACK (ISN {isn}, its SYN's: simultaneous open)"
            elif side.state == LISTEN or ack != side.syn_ack:
                # the same ISN again after an RST took it back to LISTEN, or acknowledging another SYN
                note = self._syn_ack(conn, s, frame, ts, ack)
                what = "SYN-ACK (ISN {isn}) again"
            else:
                what = "SYN-ACK retransmission"
        else:
            if not flags & _ACK and side.state == LISTEN and side.snd_max < 0:
                # a SYN from the side assumed to listen: an active opener (simultaneous open), so CLOSED
                side.state = CLOSED
            self._take_isn(conn, s, frame, ts, seq, wscale)
            if flags & _ACK:
                note = self._syn_ack(conn, s, frame, ts, ack)
                what = "SYN-ACK (ISN {isn})"
            else:
                self._go(conn, s, SEND_SYN, frame, ts, False)
                what = "SYN (ISN {isn})"
        if conn.detail:
            conn.roles.append((frame, s, what.replace("{isn}", str(seq)) + note))

    @staticmethod
    def _take_isn(conn: _Conn, s: int, frame: int, ts: float, seq: int, wscale: int) -> None:
        side = conn.sides[s]
        peer = conn.sides[s ^ 1]
        side.isn = seq
        side.base = seq
        side.syn_frame = frame
        side.syn_ts = ts
        side.ws = wscale
        if peer.syn_frame:
            # RFC 7323: windows are scaled only when both SYNs offered it (a shift above 14 means 14)
            on = side.ws >= 0 and peer.ws >= 0
            side.shift = min(side.ws, 14) if on else 0
            peer.shift = min(peer.ws, 14) if on else 0
            conn.ws_known = True

    def _syn_ack(self, conn: _Conn, s: int, frame: int, ts: float, ack: int) -> str:
        """Side s answers the peer's SYN: it has received that SYN. Returns a note for its role when the SYN's
        sender cannot take its ACK in SYN_SENT ("" otherwise)."""
        side = conn.sides[s]
        peer = conn.sides[s ^ 1]
        side.syn_ack = ack
        role = ""
        if peer.state == SYN_SENT and peer.isn >= 0 and not _acks_syn_sent(peer, ack):
            # RFC 9293 3.10.7.3: SEG.ACK =< ISS or > SND.NXT: the SYN's sender answers <SEQ=SEG.ACK><CTL=RST>
            # and stays in SYN_SENT (Linux tcp_rcv_synsent_state_process: reset_and_undo)
            conn.owed_rst = ack
            role = f": its ACK is not acceptable to the {_name(s ^ 1)} in SYN_SENT"
        r = conn.reuse
        if r is not None and r.verdict == "refused" and r.old is not None and not r.old.done:
            # answered although TIME_WAIT should have refused it: no TIME_WAIT was there
            for i in r.holder_sides:
                self._tw_end(r.old.sides[i], "syn", r.syn_frame, r.syn_ts)
        if peer.syn_frame:
            self._rtt(side, ts - peer.syn_ts)
        if side.state == LISTEN or side.state == SYN_SENT:
            self._go(conn, s, RCV_SYN, frame, ts, False)
        return role

    def _stale_answer(self, conn: _Conn, s: int, frame: int, ts: float, ack: int) -> None:
        """A segment whose ACK the SYN_SENT peer cannot take (RFC 9293 3.10.7.3): not a handshake but a stale
        peer (e.g. the old connection's state answering the new SYN). The peer answers RST and stays in
        SYN_SENT; nothing here changes a state."""
        p = s ^ 1
        prev = conn.prev
        conn.owed_rst = ack
        old = ""
        extra: dict[str, Any] = {"side": _name(s), "ack": ack}
        if prev is not None:
            old_peer = prev.sides[(conn.cdir ^ s) ^ prev.cdir ^ 1]   # the SYN sender in the previous incarnation
            mine = old_peer.snd_max == ack
            old = f"; its ACK is {'the' if mine else 'not the'} {_name(p)}'s next seq in connection {prev.id}"
            extra.update({"previous_connection": prev.id, "elapsed_s": _round6(ts - prev.last_ts)})
        text = (f"{_name(s)}'s segment answers the {_name(p)}'s new SYN with ACK {ack}, which SYN_SENT cannot take "
                f"(not above its ISN, or above what it sent){old}: the {_name(p)} answers RST and stays in SYN_SENT")
        conn.close_extra += (("stale-peer-ack", (frame,), text, extra),)
        if conn.detail:
            conn.roles.append((frame, s, "stale segment: its ACK is not acceptable in SYN_SENT"))

    def _sent_without_syn(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, flags: int) -> None:
        side = conn.sides[s]
        if side.base < 0:
            side.base = (seq - 1) & _M32
        if side.state == LISTEN and flags & _ACK:
            # a "listener" that sends ACKs/data holds a connection the capture never saw open
            for inp in _LISTEN_TO_EST:
                self._go(conn, s, inp, frame, ts, True)

    def _ack(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, ack: int, flags: int) -> None:
        """Side s's ACK field: what it has received of the peer's SYN and FIN; the peer receives the ACK."""
        side = conn.sides[s]
        p = s ^ 1
        peer = conn.sides[p]
        # an ACK of data the peer never sent acknowledges nothing (e.g. a forged or broken ACK)
        ack_ok = peer.snd_max < 0 or _d(ack, peer.snd_max) <= 0
        if ack_ok and (side.acked < 0 or _d(ack, side.acked) > 0):
            side.acked = ack
        fin_acked = ack_ok and peer.fin_seq >= 0 and _d(ack, peer.fin_seq) >= 1
        if fin_acked:
            side.acked_peer_fin = frame
            side.acked_peer_fin_ts = ts
            if side.fin_seq >= 0 and seq == side.fin_seq and not flags & _FIN:
                # its sequence number is not past its own FIN: sent before that FIN, though seen after it
                side.acked_before_own_fin = True
        if side.state == SYN_SENT and peer.syn_frame and peer.isn >= 0 and ack_ok \
                and _d(ack, peer.isn) >= 1 and not flags & _SYN:
            self._go(conn, s, RCV_SYNACK, frame, ts, False)
            self._rtt(side, ts - peer.syn_ts)
            if conn.detail:
                conn.roles.append((frame, s, "ACK — handshake complete"))
        if fin_acked and not side.got_fin_frame:
            self._acks_peer_fin(conn, s, frame, ts, seq)
        elif side.reack_pending and peer.fin_seq >= 0 and ack == (peer.fin_seq + 1) & _M32:
            side.reack_pending = False
            if conn.detail:
                conn.roles.append((frame, s, "re-ACK of the retransmitted FIN from TIME_WAIT"))
            if not self._any_ack_restarts:
                self._tw_restart(side, frame, ts)
        if peer.state == SYN_RECEIVED and peer.isn >= 0 and ack_ok and _d(ack, peer.isn) >= 1:
            self._go(conn, p, RCV_ACK_OF_SYN, frame, ts, False)
        if fin_acked and not peer.fin_acked_frame:
            peer.fin_acked_frame = frame
            if not peer.fin_ack_wire:
                peer.fin_ack_wire = frame
            self._flush_fin(conn, s, frame, ts)
            self._go(conn, p, RCV_ACK_OF_FIN, frame, ts, False)
        elif peer.state == TIME_WAIT and self._any_ack_restarts:
            tw = peer.tw
            if tw is not None and frame != tw.start_frame:
                # Linux: any ACK-bearing segment reaching TIME_WAIT restarts its 60 s timer
                self._tw_restart(peer, frame, ts)

    def _acks_peer_fin(self, conn: _Conn, s: int, frame: int, ts: float, seq: int) -> None:
        """Side s's first segment that acknowledges the peer's FIN: it has received that FIN."""
        side = conn.sides[s]
        p = s ^ 1
        side.got_fin_frame = frame
        side.got_fin_seq = seq
        self._rtt(side, ts - conn.sides[p].fin_ts)
        if not side.got_fin:
            side.got_fin = True
            self._go(conn, s, RCV_FIN, frame, ts, False)
        if conn.detail:
            name = "M" if conn.nfin and conn.fin_first == p else "N"
            conn.roles.append((frame, s, f"ACK {name}+1"))

    def _fin(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, ack: int, flags: int,
             plen: int) -> None:
        side = conn.sides[s]
        fseq = (seq + plen) & _M32
        ack_val = ack if flags & _ACK else NONE
        if side.fin_seq < 0:
            self._first_fin(conn, s, frame, ts, fseq, ack_val)
        elif fseq == side.fin_seq:
            self._fin_retransmitted(conn, s, frame, ts, ack_val)

    def _first_fin(self, conn: _Conn, s: int, frame: int, ts: float, fseq: int, ack_val: int) -> None:
        side = conn.sides[s]
        peer = conn.sides[s ^ 1]
        side.data_max = side.snd_max           # before the FIN: bytes below it seen later are new
        side.fin_seq = fseq
        side.fin_frame = frame
        side.fin_ts = ts
        side.fin_ack_val = ack_val
        side.last_fin_frame = frame
        side.last_fin_ts = ts
        name = "N" if conn.nfin else "M"
        if not conn.nfin:
            conn.fin_first = s
        conn.nfin += 1
        # crossed FINs are judged by what this FIN acknowledges, not by arrival order (RFC 9293 3.6, case 2):
        # a FIN whose ACK field does not cover the peer's FIN was sent before its sender received that FIN
        side.fin_crossed = peer.fin_seq >= 0 and not (
            ack_val >= 0 and (peer.snd_max < 0 or _d(ack_val, peer.snd_max) <= 0) and _d(ack_val, peer.fin_seq) >= 1)
        late = 0
        if side.fin_crossed and side.got_fin:
            late = self._fin_sent_before_its_receipt(conn, s, frame, ts)
        elif side.got_fin and side.got_fin_seq >= 0 and _d(side.got_fin_seq, fseq) > 0 \
                and self._go_back(conn, s, RCV_FIN) >= 0:
            # the ACK that seemed to show the receipt first is past this FIN in sequence space: sent after it
            # (it overtook this FIN+ACK), so this FIN+ACK is the first proof of the receipt (three-way)
            side.got_fin_frame = frame
            side.got_fin_seq = NONE
            self._go(conn, s, RCV_FIN, frame, ts, False)
        if conn.detail:
            base = side.base
            rel = f" (seq {(fseq - base) & _M32} rel. to {_name(s)} ISN)" if base >= 0 else ""
            when = f", sent before frame {late}: the FINs crossed" if late > 0 else ""
            conn.roles.append((frame, s, f"FIN {name}{rel}{when}"))
        if not late:
            self._go(conn, s, SEND_FIN, frame, ts, False)

    def _fin_sent_before_its_receipt(self, conn: _Conn, s: int, frame: int, ts: float) -> int:
        """Side s's FIN reached the capture point after s's own ACK of the peer's FIN, yet it does not
        acknowledge that FIN: s sent it first (ESTABLISHED -> FIN_WAIT_1), then received the peer's FIN
        (-> CLOSING). The receipt applied at that ACK is replayed in this order. Returns the ACK's frame
        (the FIN's own frame when no record is kept); 0: s is not where that reading applies."""
        back = self._go_back(conn, s, RCV_FIN)
        if back < 0:
            return 0
        at = back if back else frame
        self._go(conn, s, SEND_FIN, at, ts, True)
        self._go(conn, s, RCV_FIN, at, ts, False)
        return at

    def _fin_retransmitted(self, conn: _Conn, s: int, frame: int, ts: float, ack_val: int) -> None:
        side = conn.sides[s]
        p = s ^ 1
        peer = conn.sides[p]
        side.fin_retx += (frame,)
        prev_fin = side.last_fin_frame
        since = ts - side.last_fin_ts
        side.last_fin_frame = frame
        side.last_fin_ts = ts
        name = "M" if conn.fin_first == s else "N"
        role = f"FIN {name} retransmission"
        lost = peer.acked_peer_fin
        same_ack = side.fin_ack_val == ack_val
        side.fin_ack_val = ack_val
        # a lost ACK: the retransmission acknowledges nothing new (else it only carries a fresher ACK,
        # as in a crossed close), and it comes later than the ACK could have reached the sender
        if lost and lost > prev_fin and same_ack and (side.rtt < 0 or ts - peer.acked_peer_fin_ts > side.rtt):
            if since < self._min_rto:
                # sooner than any retransmission timer (Linux: tcp_rto_min) fires: not sent for want of the
                # ACK, which may still have been on its way
                role += (f", {since * 1000:.1f} ms after the previous one (below the {self._min_rto * 1000:g} ms "
                         f"RTO floor): {_name(p)}'s ACK in frame {lost} was possibly in flight")
            else:
                self._final_ack_lost(conn, s, frame, lost, name)
        if conn.detail:
            conn.roles.append((frame, s, role))
        if peer.state == TIME_WAIT:
            peer.reack_pending = True

    def _final_ack_lost(self, conn: _Conn, s: int, frame: int, lost: int, name: str) -> None:
        """The peer had ACKed side s's FIN since its last transmission, yet s's retransmission timer fired:
        that ACK did not arrive."""
        p = s ^ 1
        conn.close_extra += ((
            "final-ack-lost", (lost, frame),
            f"{_name(s)} retransmitted FIN {name} after {_name(p)}'s ACK in frame {lost}: "
            f"that ACK was lost between the capture point and {_name(s)}",
            {"ack_frame": lost, "retransmission_frame": frame, "lost_by": _name(p)}),)
        side = conn.sides[s]
        if side.fin_acked_frame and side.fin_acked_frame < frame:
            self._unreceive_fin_ack(conn, s)

    @staticmethod
    def _advance(conn: _Conn, s: int, frame: int, seq: int, flags: int, win: int, plen: int, tsval: int) -> None:
        """The sender's sequence space, clock and window after this segment; data after it received the
        peer's FIN proves a half-close."""
        side = conn.sides[s]
        end = (seq + plen + (1 if flags & _SYN else 0) + (1 if flags & _FIN else 0)) & _M32
        grew = side.snd_max < 0 or _d(end, side.snd_max) > 0
        # bytes below its FIN that reached the capture after the FIN (reordered): new data all the same
        filled = not grew and plen > 0 and side.fin_seq >= 0 and side.data_max >= 0 and _d(end, side.data_max) > 0
        if ((grew and side.snd_max >= 0) or filled) and plen and side.acked_peer_fin == frame \
                and not flags & _FIN and not conn.half_close_frame:
            # new data sent after its sender received the peer's FIN: its own ACK field covers that FIN (also
            # when it reached the capture before the bare ACK); a FIN with data is its close
            conn.half_close_frame = frame
        if grew:
            side.snd_max = end
        if filled:
            side.data_max = end
        if tsval >= 0:
            if side.ts_first < 0:
                side.ts_first = tsval
                side.ts_last = tsval
            elif side.ts_last < 0 or _d(tsval, side.ts_last) > 0:
                side.ts_last = tsval
        side.win = win
        side.syn_win = bool(flags & _SYN)

    @staticmethod
    def _rtt(side: _Side, dt: float) -> None:
        if dt >= 0 and (side.rtt < 0 or dt < side.rtt):
            side.rtt = dt

    def _unreceive_fin_ack(self, conn: _Conn, s: int) -> None:
        """Side s retransmitted its FIN after the peer's ACK of it: that ACK never arrived, so its receipt is
        taken back (LAST_ACK, CLOSING or FIN_WAIT_1 again); the next ACK of the FIN applies it again."""
        side = conn.sides[s]
        side.fin_acked_frame = 0
        if side.fin_ack_applied:
            self._go_back(conn, s, RCV_ACK_OF_FIN)

    def _flush_fin(self, conn: _Conn, s: int, frame: int, ts: float) -> None:
        """Before the peer of side s acts on s's segment, it has received s's earlier FIN (in-order)."""
        side = conn.sides[s]
        peer = conn.sides[s ^ 1]
        if side.fin_seq >= 0 and side.fin_frame < frame and not peer.got_fin:
            peer.got_fin = True
            self._go(conn, s ^ 1, RCV_FIN, frame, ts, True)

    def _rst(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, ack: int, flags: int,
             prev_last: int) -> None:
        side = conn.sides[s]
        p = s ^ 1
        peer = conn.sides[p]
        if side.state == SYN_SENT and not flags & _ACK and conn.owed_rst >= 0:
            self._rst_from_syn_sent(conn, s, frame, ts, seq, ack, flags)
            return
        if flags & _ACK and side.got_fin and peer.fin_seq >= 0 and _d(ack, peer.fin_seq) < 1:
            self._rst_sent_before_receipts(conn, s)
        # a FIN answered by RST: the RST is the sender's next segment after the peer's (latest) FIN
        if peer.fin_seq >= 0 and prev_last < peer.last_fin_frame < frame:
            had_tw = side.tw is not None
            if had_tw:
                side.tw = None
            conn.close_extra += ((
                "rst-after-fin", (peer.last_fin_frame, frame),
                f"{_name(s)} answered {_name(p)}'s FIN (frame {peer.last_fin_frame}) with RST: no TIME_WAIT on "
                f"{_name(s)}'s side" + (" (it had sent the final ACK, yet kept no TIME_WAIT socket: e.g. "
                                        "tcp_max_tw_buckets exhausted)" if had_tw else ""),
                {"fin_frame": peer.last_fin_frame, "rst_frame": frame, "rst_side": _name(s)}),)
        why = self._rst_unacceptable(conn, s, seq, ack, flags)
        if why:
            if conn.detail:
                conn.roles.append((frame, s, f"RST, ignored ({why})"))
            return
        pst = peer.state
        if pst == SYN_SENT and not conn.rsts:
            conn.refused = True
        if conn.detail:
            conn.roles.append((frame, s, "RST"))
        conn.rsts += ((frame, s),)
        if not side.rst_frame:
            side.rst_frame = frame
        if _NEXT[side.state * _NI + SEND_RST] >= 0:
            self._go(conn, s, SEND_RST, frame, ts, False)
        if pst == TIME_WAIT:
            w = peer.tw
            if w is not None and w.ended_by == "timeout":
                conn.close_extra += ((
                    "time-wait-assassinated", (frame,),
                    f"RST with seq = {_name(p)}'s rcv_nxt reached {_name(p)} in TIME_WAIT {_fixed3(ts - w.start_ts)} s "
                    f"after it began (frame {w.start_frame}): the window ends early on Linux with tcp_rfc1337=0 "
                    "(the default); tcp_rfc1337=1 ignores it (RFC 1337)",
                    {"side": _name(p), "time_wait_start_frame": w.start_frame,
                     "elapsed_s": _round6(ts - w.start_ts)}),)
                self._tw_end(peer, "rst", frame, ts)
        self._go(conn, p, RCV_RST, frame, ts, False)

    def _rst_sent_before_receipts(self, conn: _Conn, s: int) -> None:
        """Side s's RST+ACK does not acknowledge the peer's FIN (an RST carries its sender's rcv_nxt: Linux
        tcp_send_active_reset): it was sent before s received that FIN, and before anything the peer sent
        after it. The receipts applied to s from there on are taken back (e.g. a TIME_WAIT it never held)."""
        side = conn.sides[s]
        peer = conn.sides[s ^ 1]
        if side.fin_ack_applied and side.fin_acked_frame > peer.fin_frame:
            self._go_back(conn, s, RCV_ACK_OF_FIN)
            side.fin_acked_frame = 0
        if self._go_back(conn, s, RCV_FIN) >= 0:
            side.got_fin = False
            side.got_fin_frame = 0

    def _rst_from_syn_sent(self, conn: _Conn, s: int, frame: int, ts: float, seq: int, ack: int,
                           flags: int) -> None:
        """An RST from SYN_SENT answering a segment it could not take (RFC 9293 3.10.7.3: <SEQ=SEG.ACK><CTL=RST>;
        some stacks use another seq): its sender stays in SYN_SENT; a peer in SYN_RECEIVED takes it as any RST
        (back to LISTEN)."""
        p = s ^ 1
        if conn.detail:
            conn.roles.append((frame, s, f"RST answering the unacceptable ACK: the {_name(s)} stays in SYN_SENT"))
        if conn.sides[p].state == SYN_RECEIVED and not self._rst_unacceptable(conn, s, seq, ack, flags):
            self._go(conn, p, RCV_RST, frame, ts, False)

    @staticmethod
    def _rst_unacceptable(conn: _Conn, s: int, seq: int, ack: int, flags: int) -> str:
        """Why side s's RST does not reset the peer ("" when it does), judged from what the wire proves of the
        peer's receive state (RFC 9293 3.10.7; RFC 5961 3.2 and Linux tcp_validate_incoming/tcp_reset_check
        where they are stricter)."""
        side = conn.sides[s]
        peer = conn.sides[s ^ 1]
        pst = peer.state
        no = f"not acceptable to the {_name(s ^ 1)} in {STATES[pst].value}"
        sent = side.snd_max                    # the receiver's rcv_nxt if it got everything sent
        if pst == TIME_WAIT:
            # Linux tcp_timewait_state_process: only an RST at rcv_nxt ends TIME_WAIT
            return "" if sent >= 0 and seq == sent else "seq is not TIME_WAIT's rcv_nxt"
        if pst == SYN_SENT:
            # RFC 9293 3.10.7.3 / tcp_rcv_synsent_state_process: acceptable when its ACK acknowledges the SYN
            # and no more than was sent (SYN data of TCP Fast Open included): ISS < SEG.ACK =< SND.NXT
            if flags & _ACK and peer.isn >= 0 and _acks_syn_sent(peer, ack):
                return ""
            return no
        if pst in (LISTEN, CLOSED):
            return no
        if sent < 0 or 0 <= _d(seq, sent) <= max(peer.win, 1) << 14:
            return ""
        # the peer's own latest ACK proves its rcv_nxt (e.g. FINs lost on the way: it still ACKs below them)
        proven = peer.acked
        if proven >= 0 and seq == proven:
            return ""
        # Linux tcp_reset_check: rcv_nxt - 1 (the sender's FIN seq, as some stacks send it) also resets in
        # CLOSE_WAIT, CLOSING and LAST_ACK
        if pst in (CLOSE_WAIT, CLOSING, LAST_ACK) and (
                (proven >= 0 and seq == (proven - 1) & _M32) or seq == (sent - 1) & _M32):
            return ""
        return no

    # -- delayed duplicates -------------------------------------------------------------------------------

    def _duplicate(self, conn: _Conn, s: int, frame: int, seq: int, ack: int, flags: int, plen: int,
                   tsval: int) -> bool:
        """A data/FIN segment whose sequence numbers or timestamp belong to the previous incarnation."""
        if not plen and not flags & _FIN:
            return False
        prev = conn.prev
        assert prev is not None
        side = conn.sides[s]
        d = conn.cdir ^ s                      # direction of this segment in the tuple
        old = prev.sides[d ^ prev.cdir]
        if old.base < 0 or old.snd_max < 0:
            return False
        seg_end = (seq + plen + (1 if flags & _FIN else 0)) & _M32
        lo = side.base
        hi = side.snd_max
        outside_cur = lo >= 0 and hi >= 0 and (_d(seq, lo) < 0 or _d(seq, hi) > 0)
        in_old = _d(seq, old.base) > 0 and _d(seg_end, old.snd_max) <= 0
        by_seq = outside_cur and in_old
        by_ts = (tsval >= 0 and side.ts_first >= 0 and _d(tsval, side.ts_first) < 0
                 and old.ts_last >= 0 and _d(tsval, old.ts_last) <= 0)
        if not (by_seq or by_ts):
            return False
        peer = conn.sides[s ^ 1]
        rcv_nxt = side.snd_max
        rwin = peer.win if peer.syn_win else peer.win << peer.shift   # the receiver's window in bytes
        scaling = ((f"{peer.win} << {peer.shift}" if peer.shift else "no window scaling") if conn.ws_known else
                   "unscaled: the handshake with the window-scale options was not captured")
        verdict: DuplicateVerdict
        if tsval >= 0 and side.ts_last >= 0 and _d(tsval, side.ts_last) < 0:
            verdict, why = "PAWS would reject", (f"its TSval {tsval} is older than the {_name(s)}'s latest "
                                                 f"{side.ts_last} in this incarnation")
        elif rcv_nxt >= 0 and _d(seq, rcv_nxt) < 0:
            verdict, why = "rejected by window", f"it lies {-_d(seq, rcv_nxt)} bytes below rcv_nxt"
        elif rcv_nxt >= 0 and _d(seq, rcv_nxt) >= max(rwin, 1):
            verdict, why = "rejected by window", (f"it starts {_d(seq, rcv_nxt)} bytes after rcv_nxt, beyond "
                                                  f"the {rwin}-byte window ({scaling})")
        elif flags & _ACK and peer.snd_max >= 0 and peer.base >= 0 and (
                _d(ack, peer.snd_max) > 0 or _d(ack, peer.base) < 0):
            verdict, why = "rejected by ACK check", ("its ACK is outside this incarnation's sent data "
                                                     "(RFC 5961: challenge ACK)")
        else:
            off = _d(seq, rcv_nxt) if rcv_nxt >= 0 else 0
            verdict, why = "could be accepted", (f"it fits the receive window ({off} bytes after rcv_nxt) and "
                                                 "nothing else rejects it: old bytes would enter the new stream")
        basis = "sequence numbers" if by_seq else "timestamp"
        if by_seq and by_ts:
            basis = "sequence numbers and timestamp"
        conn.dups += ((frame, s, verdict, f"{basis} of incarnation {prev.incarnation} (connection {prev.id}); {why}"),)
        if conn.detail:
            conn.roles.append((frame, s, f"delayed duplicate from incarnation {prev.incarnation}"))
        return True

    # -- finishing ------------------------------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Finish the connections that are over: both sides closed (or in TIME_WAIT whose 2*MSL has passed),
        idle for 2*MSL. An open connection is never finished by idleness alone (keep-alive pools, databases
        idle for minutes): only a new incarnation of its four-tuple or the capture's end finishes it."""
        grace = self.tw_s
        for conn in list(self._open.values()):
            if now - conn.last_ts <= grace:
                continue
            c = conn.sides[0]
            sv = conn.sides[1]
            if _open_state(c.state) or _open_state(sv.state) or _tw_open(c, now) or _tw_open(sv, now):
                continue
            self._finish_conn(conn)

    def _finish_conn(self, conn: _Conn) -> None:
        del self._open[conn.id]
        self._finalize(conn, False)

    def _finalize(self, conn: _Conn, at_end: bool) -> None:
        """The connection's record. at_end: the capture ended with it unfinished (finish()): a side not
        closed is open at capture end, a TIME_WAIT window the capture did not see run out ends by
        "capture-end" with the time it had left."""
        c = conn.sides[0]
        sv = conn.sides[1]
        if conn.detail:
            steps = tuple(conn.trans)
            roles = tuple(conn.roles)
        else:
            steps = ()
            roles = ()
        open_at_end = at_end and (_open_state(c.state) or _open_state(sv.state))
        rec = record(Connection, (conn.id, c.ep, sv.ep, conn.incarnation, conn.first_frame, conn.last_frame,
                                  self._close_of(conn), self._windows_of(conn, at_end), steps, conn.first_ts,
                                  conn.last_ts, conn.packets, c.isn if c.isn >= 0 else None,
                                  sv.isn if sv.isn >= 0 else None, conn.mid, roles, open_at_end))
        self._done.append(rec)
        self._conn_findings(conn)
        # keep only what reuse/duplicate checks of a later incarnation need
        conn.done = True
        if conn.detail:                       # (without detail they were never filled)
            conn.trans = []
            conn.roles = []
        conn.close_extra = ()
        conn.dups = ()
        conn.prev = None
        conn.reuse = None
        tup = conn.tuple
        if tup.conn is conn:
            tup.conn = None
            tup.remember(conn)

    def _windows_of(self, conn: _Conn, at_end: bool) -> tuple[TimeWaitWindow, ...]:
        windows: list[TimeWaitWindow] = []
        last = self._last_ts
        for i in _BOTH_SIDES:
            w = conn.sides[i].tw
            if w is None:
                continue
            ended_by = w.ended_by
            left = 0.0
            if at_end and ended_by == "timeout" and w.end_ts > last:
                ended_by = "capture-end"
                left = w.end_ts - last
            windows.append(record(TimeWaitWindow, (_name(i), w.start_ts, w.end_ts, w.start_frame, w.restarts,
                                                   ended_by, w.end_frame if w.end_frame else None, self.tw_s, left)))
        if len(windows) == 2 and windows[1].start_frame < windows[0].start_frame:
            windows.reverse()
        return tuple(windows)

    @staticmethod
    def _close_of(conn: _Conn) -> Close:
        c = conn.sides[0]
        sv = conn.sides[1]
        both_acked = conn.nfin == 2 and c.fin_ack_wire and sv.fin_ack_wire
        frames: list[int] = []
        if conn.nfin:
            a = conn.fin_first
            first, other = conn.sides[a], conn.sides[a ^ 1]
            frames.append(first.fin_frame)
            if first.fin_ack_wire:
                frames.append(first.fin_ack_wire)
            if other.fin_frame:
                frames.append(other.fin_frame)
                if other.fin_ack_wire:
                    frames.append(other.fin_ack_wire)
        initiator: Initiator | None
        kind: CloseKind
        if conn.rsts and not both_acked:
            # a SYN answered by an acceptable RST: the connection never existed (Zeek's REJ)
            kind = "refused" if conn.refused else "rst"
            initiator = _name(conn.rsts[0][1])
            for f, _s in conn.rsts[:2]:
                frames.append(f)
        elif conn.nfin:
            a = conn.fin_first
            first, other = conn.sides[a], conn.sides[a ^ 1]
            initiator = _name(a)
            if other.fin_frame and other.fin_crossed:
                kind, initiator = "simultaneous", "both"
            elif conn.half_close_frame:
                kind = "half-close"
            elif not other.fin_frame:
                kind = "incomplete"
            elif other.got_fin_frame == other.fin_frame and not other.acked_before_own_fin:
                kind = "three-way"
            else:
                kind = "four-way"
        else:
            kind, initiator = "incomplete", None
        return record(Close, (kind, initiator, _ascending(frames)))

    def _conn_findings(self, conn: _Conn) -> None:
        out = self._findings
        cid = conn.id
        r = conn.reuse
        if r is not None:
            # the number apart: an f-string with a format spec is built field by field by str.format when
            # compiled, one without it in a single step
            elapsed = _fixed3(r.elapsed_s)
            elapsed_s = _round6(r.elapsed_s)
            holders = " and ".join(r.holders)
            if r.kind == "reuse-in-time-wait":
                answer = r.answer
                if not answer:
                    synack = conn.sides[1].syn_frame
                    if synack:
                        answer, r.answer_frame = "SYN-ACK (accepted)", synack
                    elif conn.rsts:
                        answer, r.answer_frame = "RST", conn.rsts[0][0]
                    else:
                        answer = "none seen"
                verdict = r.verdict
                if verdict == "refused" and answer.startswith("SYN-ACK"):
                    verdict = "dangerous"
                    reason = (r.reason + "; yet it was answered with a SYN-ACK: no TIME_WAIT protected the "
                              "four-tuple (e.g. tcp_max_tw_buckets=0, or another stack)")
                else:
                    reason = r.reason
                detail = (f"new SYN {elapsed} s into {holders}'s TIME_WAIT of connection {r.old_id}: "
                          f"{verdict} ({reason}); answer: {answer}"
                          + (f" (frame {r.answer_frame})" if r.answer_frame else ""))
                out.append(record(Finding, (r.kind, cid, (r.syn_frame,), detail, {
                    "verdict": verdict, "elapsed_s": elapsed_s, "time_wait_side": list(r.holders),
                    "previous_connection": r.old_id, "answer": answer, "answer_frame": r.answer_frame or None})))
            else:
                detail = f"new SYN {elapsed} s after the {holders}'s TIME_WAIT of connection {r.old_id} ended"
                out.append(record(Finding, (r.kind, cid, (r.syn_frame,), detail, {
                    "elapsed_s": elapsed_s, "time_wait_side": list(r.holders),
                    "previous_connection": r.old_id})))
        for i in _BOTH_SIDES:
            sd = conn.sides[i]
            if sd.fin_retx:
                name = "M" if conn.nfin and conn.fin_first == i else "N"
                out.append(record(Finding, (
                    "fin-retransmitted", cid, (sd.fin_frame, *sd.fin_retx),
                    f"{_name(i)}'s FIN {name} (frame {sd.fin_frame}) sent {len(sd.fin_retx) + 1} times",
                    {"side": _name(i), "first_frame": sd.fin_frame, "retransmissions": len(sd.fin_retx)})))
        if conn.close_extra:
            seen_lost: set[int] = set()
            for kind, frames, text, extra in conn.close_extra:
                if kind == "final-ack-lost":
                    if frames[0] in seen_lost:
                        continue
                    seen_lost.add(frames[0])
                out.append(record(Finding, (kind, cid, frames, text, extra)))
        if conn.seen_twice:
            pairs = conn.seen_twice
            shown = ", ".join(f"{f} = {o}" for f, o in pairs[:8]) + (", ..." if len(pairs) > 8 else "")
            out.append(record(Finding, (
                "capture-duplicate", cid, tuple(f for f, _o in pairs),
                f"{len(pairs)} segment(s) the capture holds twice (identical, within "
                f"{_SAME_PACKET_S * 1000:g} ms; e.g. two interfaces): frames {shown}; one packet each, "
                "not retransmissions", {"count": len(pairs), "repeats": [o for _f, o in pairs]})))
        for frame, s, dv, why in conn.dups:
            out.append(record(Finding, ("delayed-duplicate", cid, (frame,), f"{_name(s)}'s segment: {dv} — {why}",
                                        {"verdict": dv, "side": _name(s),
                                         "previous_connection": conn.prev.id if conn.prev is not None else None})))

    def progress(self) -> tuple[int, int]:
        """(the highest frame number fed so far, connections open now): what a progress display shows."""
        return self._max_frame, len(self._open)

    def clock_reached(self, ts: float) -> None:
        """The capture's clock reached ts, though no segment fed here says so (a shard is fed only its own
        four-tuples): TIME_WAIT windows open at finish() are measured against it."""
        if ts > self._last_ts:
            self._last_ts = ts

    def open_connections(self) -> list[tuple[int, str, str]]:
        """(first frame, client endpoint, server endpoint) of every connection open now."""
        return [(c.first_frame, c.sides[0].ep, c.sides[1].ep) for c in self._open.values()]

    def drain(self) -> tuple[list[Connection], list[Finding]]:
        """Streaming (keep=False): the connections and findings finished since the last drain(), in the
        order they finished. After finish(), one more drain() returns the rest."""
        conns, findings = self._done, self._findings
        self._done, self._findings = [], []
        return conns, findings

    def finish(self, on_batch: Callable[[], None] | None = None) -> Report:
        """Ends the capture: every open connection is finished, in id order. keep=False: the Report carries
        only the counts; drain() returns the records, and on_batch() (a streaming caller's drain) is called
        after every few thousand of them, so the records of all connections open at the end (tens of
        thousands on busy traffic) are not all held at once."""
        if self._finished is not None:
            return self._finished
        for n, cid in enumerate(sorted(self._open), start=1):
            self._finalize(self._open.pop(cid), True)
            if on_batch is not None and n % _FINISH_BATCH == 0:
                on_batch()
        self._open.clear()                    # frees its table (pop() never shrinks it)
        if not self.keep:
            self._finished = Report((), (), self.profile.name, self.tw_s, self._segments, self._max_frame)
            return self._finished
        conns = tuple(sorted(self._done, key=_record_id))
        findings = tuple(sorted(self._findings, key=_finding_order))
        self._finished = Report(conns, findings, self.profile.name, self.tw_s, self._segments, self._max_frame)
        return self._finished


def _drop_last_record(trans: list[tuple[int, int, TcpState, TcpState, bool, Input]], s: int, inp: int) -> int:
    """Remove side s's latest transition driven by input code `inp`; its frame (0: none)."""
    name = INPUTS[inp]
    for k in range(len(trans) - 1, -1, -1):
        t = trans[k]
        if t[1] == s and t[5] is name:
            del trans[k]
            return t[0]
    return 0


def _wide_key(a: int, b: int, sp: int, dp: int) -> int:
    """Analyzer._key's four-tuple key when an address number is 2**14 or more: above 2**127, never equal
    to a compact key."""
    return _KEY_WIDE | (a << 64) | (b << 32) | (sp << 16) | dp


def _ascending(frames: list[int]) -> tuple[int, ...]:
    """tuple(sorted(set(frames))), without the set and the sort when they come in ascending order already,
    repeats aside (most do: a three-way close's FIN+ACK is both an ACK and a FIN)."""
    if not frames:
        return ()
    out = [frames[0]]
    last = frames[0]
    for k in range(1, len(frames)):
        f = frames[k]
        if f > last:
            out.append(f)
            last = f
        elif f < last:
            return tuple(sorted(set(frames)))
    return tuple(out)


def _acks_syn_sent(side: _Side, ack: int) -> bool:
    """An ACK a side in SYN_SENT can take: ISS < SEG.ACK =< SND.NXT (RFC 9293 3.10.7.3; SND.NXT counts SYN
    data, e.g. TCP Fast Open)."""
    return _d(ack, side.isn) >= 1 and (side.snd_max < 0 or _d(ack, side.snd_max) <= 0)


def _open_state(st: int) -> bool:
    """A side that still holds a connection (TIME_WAIT aside: its window says how it ended)."""
    return st != CLOSED and st != LISTEN and st != TIME_WAIT


def _tw_pending(side: _Side, now: float) -> bool:
    """A TIME_WAIT window whose 2*MSL has not run out at `now` and nothing ended early."""
    w = side.tw
    return w is not None and w.ended_by == "timeout" and w.end_ts > now


def _tw_open(side: _Side, now: float) -> bool:
    w = side.tw
    return w is not None and w.end_ts >= now


def _record_id(c: Connection) -> int:
    return c.id


def _finding_order(f: Finding) -> tuple[int, str]:
    return (f.frames[0] if f.frames else 0, f.kind)


def analyze(segments: Iterable[Segment], profile: str | Profile = "linux", time_wait_s: float | None = None,
            detail: bool = True) -> Report:
    """The whole capture's Report (connections, TIME_WAIT windows, findings), in one streaming pass.

    detail=False drops each finished connection's transitions and segment roles (see Analyzer). A caller that
    feeds a big capture should disable the cyclic GC around it (as lab.pcap.feed does): it would walk every
    live record again and again as the report grows (measured: 20x slower on a 1 M-segment churn)."""
    a = Analyzer(profile, time_wait_s, detail)
    for seg in segments:
        a.feed(seg)
    return a.finish()
