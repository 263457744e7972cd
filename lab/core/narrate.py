"""The one narrator: every human sentence about TCP states is rendered here, from the analyzer's records
(`Connection.steps`, `.roles`, `.time_wait`, the report's findings). Pure: records in, text out.

Clock. `t0` is the timestamp of the capture's first frame: Wireshark's Time column counts from it. Every time
this module writes is on that clock ("t=+150.512 s": 150.512 s after the capture's first frame) or says what it
is relative to ("60 s from this frame"). JSON keeps absolute timestamps; only text is relative.

TIME_WAIT convention (the tracker's, RFC 9293's diagram): a side's state changes at the segment that shows it.
The active closer leaves FIN_WAIT_2 for TIME_WAIT at the ACK of the peer's FIN that it sends (ACK N+1); from
CLOSING it enters TIME_WAIT at the peer's ACK of its own FIN. A FIN received in FIN_WAIT_1 together with the
ACK of our FIN (FIN N + ACK M+1) moves FIN_WAIT_1 -> FIN_WAIT_2 at that segment and FIN_WAIT_2 -> TIME_WAIT
at our ACK of it.

API
    frame_notes(report, t0, capture_end=None) -> {frame: [comment, ...]}
        per-frame pcapng comments for the whole capture: each segment's role (FIN M, ACK M+1, FIN N,
        ACK N+1, ...), one state chain per side ("server: CLOSE_WAIT -> LAST_ACK"), TIME_WAIT windows
        ("60 s, until t=+60.352 s"; "open at capture end, 58.9 s left" for a window the capture did not see
        end), TIME_WAIT restarts and early ends, connections still open at capture end, findings.
        `capture_end` (the last frame's timestamp) matters only for records without ended_by "capture-end".
    note_records(report, t0, capture_end=None) -> [(frame, order, tie, text), ...]
        frame_notes for a capture narrated in batches: sorted by (order, tie) a frame's notes come in
        frame_notes' order for the whole capture.
    connection_notes(conn, t0, capture_end=None) -> {frame: [comment, ...]}   the same for one connection.
    side_chain(conn, side, since_frame=0) -> str      "client: ESTABLISHED -> FIN_WAIT_1 -> ... -> TIME_WAIT"
    final_states(conn) -> {side: state}                each side's last state the capture shows
    window_text(w, t0, capture_end=None) -> str        "60 s, until t=+60.352 s" (one TIME_WAIT window)
    left_at_capture_end(w, capture_end=None) -> float | None   seconds a window had left when the capture ended
    open_at_end_text(conn) -> str                      "connection 3 still open at capture end (client ...)"
    window_cell(w) -> str                              "client 60.0 s (frame 11, open at capture end, 59.9 s left)"

    ladder_rows(conn, segments, t0, findings=()) -> [LadderRow]   one row per segment of the connection
    ladder_start(conn) -> (client_state, server_state)               each side's state before the first row
    ladder_windows(conn, t0, capture_end=None) -> [TimeWaitBar]      the TIME_WAIT bars under the ladder
    ladder_footnote(conn, segments) -> str                           "M: client's FIN (relative seq 7); ..."

A chain is only state names ("FIN_WAIT_1 -> CLOSING -> TIME_WAIT"); what was inferred and the TIME_WAIT window
follow it in parentheses, so its last name is the side's state after the frame.

`LadderRow` fields: frame, t (capture clock, s), sender ("client" | "server"), flags (tcpdump letters, "F."),
label (seq/ack labels: "FIN M", "ACK M+1", "data 1:7 (6 B)", "ack 1", relative to each side's ISN), role (the
analyzer's role(s) of the segment, "" if none), client/server (each side's state after the segment),
client_passed/server_passed (the states a side entered at this segment, in order; "*" marks one the capture
point could not see directly), notes (findings on this frame, retransmissions, duplicates).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from lab.core.model import Flags, Segment
from lab.core.report import FINDING_KINDS, SIDES, Connection, Report, Side, TimeWaitWindow, Transition
from lab.core.seqnum import MASK
from lab.core.tcpstate import TcpState

INFERRED_MARK = "*"
_LADDER_NOTE_WORDS = ("retrans", "duplicate", "lost", "challenge", "ignored", "refuses")


def other(side: str) -> Side:
    return "server" if side == "client" else "client"


def at(ts: float, t0: float) -> str:
    """A time on the capture's clock: seconds since its first frame, as Wireshark's Time column shows."""
    return f"t=+{ts - t0:.3f} s"


# -- TIME_WAIT windows --------------------------------------------------------------------------------------


def left_at_capture_end(w: TimeWaitWindow, capture_end: float | None = None) -> float | None:
    """Seconds the window still had when the capture ended, or None when the capture saw it end.

    The analyzer's record says so (ended_by "capture-end", left_s); `capture_end` (the last frame's timestamp)
    is only needed for records made without that verdict (an old `analyze --json`)."""
    if w.ended_by == "capture-end":
        return w.left_s
    if w.ended_by == "timeout" and capture_end is not None and capture_end < w.end_ts:
        return w.end_ts - capture_end
    return None


def _length(length_s: float) -> str:
    """A TIME_WAIT length as "60 s" (format g), "2MSL" when unknown (0)."""
    if 0.0 < length_s < 1e6 and length_s == int(length_s):   # whole seconds (most): g gives the int's digits
        return f"{int(length_s)} s"                          # (compiled: no float formatting call)
    return f"{length_s:g} s" if length_s else "2MSL"


def window_text(w: TimeWaitWindow, t0: float, capture_end: float | None = None) -> str:
    """One TIME_WAIT window in a few words: its length, restarts, and how it ended (or that it had not)."""
    length = _length(w.length_s)
    if w.ended_by in ("rst", "syn"):
        how = "an RST" if w.ended_by == "rst" else "a new SYN"
        return f"{length}; ended early by {how} in frame {w.end_frame}, {at(w.end_ts, t0)}"
    restarted = f", restarted {len(w.restarts)}x" if w.restarts else ""
    text = f"{length}{restarted}, until {at(w.end_ts, t0)}"
    left = left_at_capture_end(w, capture_end)
    if left is not None:
        text += f"; open at capture end, {max(left, 0.0):.1f} s left"
    return text


def window_cell(w: TimeWaitWindow) -> str:
    """One window in a table cell: "client 60.0 s (frame 11, open at capture end, 59.9 s left)"."""
    dur = w.end_ts - w.start_ts
    how = {"rst": ", ended by RST", "syn": ", ended by a new SYN",
           "capture-end": f", open at capture end, {w.left_s:.1f} s left"}.get(w.ended_by, "")
    length = f"{dur:.3f}" if dur < 10 else f"{dur:.1f}"
    return f"{w.side} {length} s (frame {w.start_frame}{how})"


def open_at_end_text(conn: Connection) -> str:
    """For a connection a side still held when the capture ended: "still open at capture end (client
    ESTABLISHED, server CLOSE_WAIT)"."""
    states = final_states(conn)
    said = ", ".join(f"{side} {states[side]}" for side in SIDES if side in states)
    return f"connection {conn.id} still open at capture end" + (f" ({said})" if said else "")


# -- per-frame comments -------------------------------------------------------------------------------------


def frame_notes(report: Report, t0: float, capture_end: float | None = None) -> dict[int, list[str]]:
    """Per-frame annotation text for a whole capture: each connection's notes, then the findings.

    e.g. "FIN M (seq 7 rel. to client ISN) — client active close: ESTABLISHED -> FIN_WAIT_1"."""
    notes: dict[int, list[str]] = {}
    later: dict[int, list[str]] = {}     # TIME_WAIT restarts/ends: after the frame's own segment notes
    for c in report.connections:
        _into(notes, later, c, t0, capture_end)
    for frame, texts in later.items():
        notes.setdefault(frame, []).extend(texts)
    for f in report.findings:
        for fr in f.frames:
            notes.setdefault(fr, []).append(f"{f.kind}: {f.detail}")
    return notes


# note_records' order keys: a connection's own notes by its id, then the later ones (TIME_WAIT restarts and
# ends, open at capture end) by id, then the findings by (first frame, kind, connection): frame_notes' order
_LATER: Final = 1 << 60          # (below 2**62: a native int when compiled)
_FINDINGS: Final = 2 << 60
_KIND_RANK: Final = {k: i for i, k in enumerate(sorted(FINDING_KINDS))}   # findings of one frame: by kind's name
NoteRecord = tuple[int, int, int, str]   # frame, order, tie, text


def note_records(report: Report, t0: float, capture_end: float | None = None) -> list[NoteRecord]:
    """frame_notes as records (frame, order, tie, text) for a caller that narrates a capture report by report
    (streaming: lab.pcap.annotate): the notes of one frame sorted by (order, tie) are in frame_notes' order
    for the whole capture, however its connections and findings fell into reports."""
    out: list[NoteRecord] = []
    for c in report.connections:
        _connection_notes(c, t0, capture_end, out)
    for f in report.findings:
        text = f"{f.kind}: {f.detail}"
        order = _FINDINGS | (f.frames[0] if f.frames else 0)
        tie = (_KIND_RANK.get(f.kind, 15) << 56) | (0 if f.connection is None else f.connection + 1)
        for fr in f.frames:
            out.append((fr, order, tie, text))
    return out


def connection_notes(conn: Connection, t0: float, capture_end: float | None = None) -> dict[int, list[str]]:
    """frame_notes for one connection (no findings)."""
    notes: dict[int, list[str]] = {}
    later: dict[int, list[str]] = {}
    _into(notes, later, conn, t0, capture_end)
    for frame, texts in later.items():
        notes.setdefault(frame, []).extend(texts)
    return notes


def _into(notes: dict[int, list[str]], later: dict[int, list[str]], conn: Connection, t0: float,
          capture_end: float | None) -> None:
    records: list[NoteRecord] = []
    _connection_notes(conn, t0, capture_end, records)
    for frame, order, _tie, text in records:
        (notes if order < _LATER else later).setdefault(frame, []).append(text)


def _by_frame(conn: Connection) -> dict[int, list[Transition]]:
    out: dict[int, list[Transition]] = {}
    for t in conn.transitions:
        out.setdefault(t.frame, []).append(t)
    return out


def _roles_by_frame(conn: Connection) -> dict[int, tuple[Side, list[str]]]:
    """frame -> (sender, its roles) with FINs first: "FIN N + ACK M+1"."""
    roles: dict[int, tuple[Side, list[str]]] = {}
    for frame, i, role in conn.roles:
        entry = roles.setdefault(frame, (SIDES[i], []))
        if role not in entry[1]:
            entry[1].append(role)
    for _sender, names in roles.values():
        names.sort(key=lambda n: not n.startswith("FIN"))
    return roles


# The per-frame notes read Connection.steps (frame, side index, from, to, inferred, input) and .roles (frame,
# side index, role) as tuple[Any, ...]: compiled with mypyc, a field is then read by a native index (a typed
# tuple would be unboxed into a struct and boxed again at every use; a tuple typed Any is indexed through the
# generic protocol with a boxed index).
Record = tuple[Any, ...]
_NAME: Final[dict[TcpState, str]] = {s: s.value for s in TcpState}   # Enum.value is a property: slow per call
_ARROW: Final[dict[TcpState, dict[TcpState, str]]] = {a: {b: f"{a.value} -> {b.value}" for b in TcpState}
                                                      for a in TcpState}


def _frame_of(record: Record) -> int:
    return int(record[0])


def _chain(sts: tuple[Record, ...], lo: int, hi: int, conn: Connection, t0: float, capture_end: float | None) -> str:
    """One side's state changes at one frame (sts[lo:hi]): "FIN_WAIT_2 -> TIME_WAIT (60 s, until t=+60.352 s)".
    The chain itself is only state names (a reader, or a regex, finds where it ends); what was inferred follows
    it: "FIN_WAIT_1 -> CLOSING -> TIME_WAIT (CLOSING inferred; 60 s, ...)"."""
    last = sts[hi - 1]
    to: TcpState = last[3]
    if hi - lo == 1:
        text = _ARROW[last[2]][to]
        if not last[4] and to is not TcpState.TIME_WAIT:   # the common case: nothing follows the chain
            return text
        extra = [_NAME[to] + " inferred"] if last[4] else []
    else:
        names = [_NAME[sts[lo][2]]]
        inferred: list[str] = []
        for k in range(lo, hi):
            st = sts[k]
            names.append(_NAME[st[3]])
            if st[4]:
                inferred.append(_NAME[st[3]])
        text = " -> ".join(names)
        extra = [", ".join(inferred) + " inferred"] if inferred else []
    if to is TcpState.TIME_WAIT:
        side: str = SIDES[last[1]]
        frame: int = last[0]
        for w in conn.time_wait:
            if w.side == side and w.start_frame == frame:
                extra.append(window_text(w, t0, capture_end))
                break
    return f"{text} ({'; '.join(extra)})" if extra else text


def _connection_notes(conn: Connection, t0: float, capture_end: float | None, out: list[NoteRecord]) -> None:
    """The connection's notes as note_records: one line per frame of interest, in frame order (_frame_lines;
    order: the connection's id); then the notes that follow a frame's own (order: _LATER | id; TIME_WAIT
    restarts and early ends, open at capture end)."""
    start = len(out)
    if not _frame_lines(conn, conn.steps, conn.roles, t0, capture_end, out):
        # steps or roles out of frame order (the tracker records them in order; a foreign JSON need not):
        # again, from both sorted by frame (stable: a frame's in their order)
        del out[start:]
        _frame_lines(conn, tuple(sorted(conn.steps, key=_frame_of)), tuple(sorted(conn.roles, key=_frame_of)), t0,
                     capture_end, out)
    later = _LATER | conn.id
    tie = 0
    if conn.open_at_end:
        out.append((conn.last_frame, later, tie, open_at_end_text(conn)))
        tie += 1
    for w in conn.time_wait:
        if not w.restarts and w.ended_by not in ("rst", "syn"):
            continue
        length = _length(w.length_s)
        for fr in w.restarts:
            out.append((fr, later, tie, f"{w.side}'s TIME_WAIT restarts: {length} from this frame"))
            tie += 1
        if w.ended_by in ("rst", "syn") and w.end_frame is not None:
            why = "the new connection takes the four-tuple" if w.ended_by == "syn" else "assassinated by RST"
            out.append((w.end_frame, later, tie, f"{w.side}'s TIME_WAIT (connection {conn.id}) ends here: {why}"))
            tie += 1


def _frame_lines(conn: Connection, steps: tuple[Record, ...], roles: tuple[Record, ...], t0: float,
                 capture_end: float | None, out: list[NoteRecord]) -> bool:
    """One line per frame of interest: "<roles> — <sender>[ active close]: <its chain>; <peer>: <its chain>".
    Walks the steps and the roles together in frame order (a frame's roles: the first one's sender, each role
    once, FINs first); False (lines left half done) when they are not in frame order."""
    cid: Any = conn.id   # Any: compiled, boxed once here, not again in every note's record
    close = conn.close
    first_close = close.frames[0] if close.frames and close.kind not in ("rst", "incomplete") else -1
    active = " active close" if close.initiator != "both" else " closes first (the FINs cross)"
    i = j = 0
    ns, nr = len(steps), len(roles)
    last = -1
    while i < ns or j < nr:
        step_frame: int = steps[i][0] if i < ns else -1
        role_frame: int = roles[j][0] if j < nr else -1
        frame = step_frame if j >= nr or (i < ns and step_frame < role_frame) else role_frame
        if frame <= last:
            return False
        last = frame
        sender = -1
        head = "segment"
        names: list[str] | None = None   # only for a frame with more than one role
        fin = False                      # a role of this frame is a FIN
        while j < nr:
            role = roles[j]
            rf: int = role[0]
            if rf != frame:
                break
            name: str = role[2]
            if sender < 0:
                sender = role[1]
                head = name
                fin = name.startswith("FIN")
            elif name != head and (names is None or name not in names):
                if names is None:
                    names = [head]
                names.append(name)
                fin = fin or name.startswith("FIN")
            j += 1
        if names is not None:   # FINs first, each group in its order: "FIN N + ACK M+1"
            head = " + ".join([n for n in names if n.startswith("FIN")] + [n for n in names if not n.startswith("FIN")])
        first = i
        split = False                # another side's step came: each side's steps in its own list
        while i < ns:                # the common case: only the sender's state changes here
            st = steps[i]
            sf: int = st[0]
            if sf != frame:
                break
            side: int = st[1]
            if side != sender:
                split = True
                break
            i += 1
        if split:
            peers, mine, lo, hi, i = _split_sides(steps, first, i, frame, sender, conn, t0, capture_end)
        else:
            peers = ""
            mine = steps
            lo, hi = first, i
        if hi > lo:
            who: str = SIDES[sender]
            if frame == first_close and fin:
                who += active
            chain = _chain(mine, lo, hi, conn, t0, capture_end)
            text = f"{head} — {who}: {chain}; {peers}" if peers else f"{head} — {who}: {chain}"
        elif sender >= 0:   # "FIN N retransmission from the server"; a role that already says "from": "sent by"
            text = head + (f", sent by the {SIDES[sender]}" if " from " in head else f" from the {SIDES[sender]}")
            if peers:
                text += "; " + peers
        else:
            text = head + (" — " + peers if peers else "")
        out.append((frame, cid, 0, text))
    return True


def _split_sides(steps: tuple[Record, ...], first: int, i: int, frame: int, sender: int, conn: Connection, t0: float,
                 capture_end: float | None) -> tuple[str, tuple[Record, ...], int, int, int]:
    """A frame whose steps (steps[first:] of `frame`) change both sides, the sender's (steps[first:i]) first:
    (the peer's chains, "server: ..."; the sender's steps as mine[lo:hi]; the index past the frame's steps)."""
    ns = len(steps)
    j = i
    mixed = sender < 0           # no sender, or the sender's steps again after the peer's
    while j < ns:
        st = steps[j]
        sf: int = st[0]
        if sf != frame:
            break
        side: int = st[1]
        if side == sender:
            mixed = True
        j += 1
    if not mixed:                # the common case: the sender's steps, then the peer's: no lists made
        return f"{SIDES[1 - sender]}: {_chain(steps, i, j, conn, t0, capture_end)}", steps, first, i, j
    per_side: list[list[Record]] = [[], []]
    order: list[int] = []        # the sides in the order their first change comes
    if i > first:
        per_side[sender] = list(steps[first:i])
        order.append(sender)
    while i < j:
        st = steps[i]
        side = st[1]
        if not per_side[side]:
            order.append(side)
        per_side[side].append(st)
        i += 1
    peers = "; ".join([f"{SIDES[k]}: {_side_chain(per_side[k], conn, t0, capture_end)}" for k in order if k != sender])
    mine = tuple(per_side[sender]) if sender >= 0 else ()
    return peers, mine, 0, len(mine), j


def _side_chain(sts: list[Record], conn: Connection, t0: float, capture_end: float | None) -> str:
    return _chain(tuple(sts), 0, len(sts), conn, t0, capture_end)


# -- whole-connection sentences (experiment panels, claims evidence) -----------------------------------------


def side_chain(conn: Connection, side: str, since_frame: int = 0) -> str:
    """Every state `side` passed through (from frame `since_frame` on): "client: ESTABLISHED -> ... -> TIME_WAIT"."""
    ts = [t for t in conn.transitions if t.side == side and t.frame >= since_frame]
    if not ts:
        return f"{side}: no state change seen"
    return f"{side}: " + " -> ".join([ts[0].from_state.value, *(t.to_state.value for t in ts)])


def final_states(conn: Connection) -> dict[str, str]:
    """Each side's last state the capture shows (sides without transitions are left out)."""
    out: dict[str, str] = {}
    for t in conn.transitions:
        out[t.side] = t.to_state.value
    return out


# -- the ladder -----------------------------------------------------------------------------------------------


class LadderRow(NamedTuple):
    frame: int
    t: float                          # seconds on the capture's clock (Wireshark's Time column)
    sender: Side
    flags: str                        # tcpdump letters, e.g. "F." (model.Flags.text)
    label: str                        # "FIN M", "ACK M+1", "data 1:7 (6 B), ack 8", ...
    role: str                         # the analyzer's role(s), e.g. "FIN N + ACK M+1"; "" if none
    client: str                       # each side's state after this segment ("" while unknown)
    server: str
    client_passed: tuple[str, ...]    # states the client entered at this segment ("*": inferred)
    server_passed: tuple[str, ...]
    notes: tuple[str, ...]            # findings on this frame, retransmissions, duplicates

    def state(self, side: str) -> str:
        return self.client if side == "client" else self.server

    def passed(self, side: str) -> tuple[str, ...]:
        return self.client_passed if side == "client" else self.server_passed


class TimeWaitBar(NamedTuple):
    side: Side
    start_frame: int
    start_t: float                    # capture clock, s
    end_t: float                      # capture clock, s: 2MSL after the last (re)start, or the early end
    length_s: float
    ended_by: str                     # timeout | rst | syn | capture-end
    end_frame: int | None
    restarts: tuple[int, ...]
    text: str                         # "frame 11 t=+0.352 s → t=+60.352 s, restarted by frame 14"


class _Labeller:
    """Names seq/ack values: FIN M / ACK M+1 / FIN N / ACK N+1 (M: the first FIN on the wire), else numbers
    relative to each side's ISN (or, without its SYN, to its first sequence number minus one, as Wireshark)."""

    def __init__(self, segs: Iterable[Segment], client: str) -> None:
        self.client = client
        self.isn: dict[str, int] = {}
        self.from_syn: set[str] = set()
        self.fin_seq: dict[str, int] = {}     # side -> the sequence number its FIN occupies
        self.fin_name: dict[str, str] = {}
        for s in segs:
            side = self.side(s)
            if s.flags & Flags.SYN and side not in self.from_syn:
                self.isn[side] = s.seq
                self.from_syn.add(side)
            elif side not in self.isn:
                self.isn[side] = (s.seq - 1) & MASK
            if s.flags & Flags.FIN and side not in self.fin_seq:
                self.fin_seq[side] = (s.seq + s.payload_len) & MASK
                self.fin_name[side] = "N" if self.fin_name else "M"

    def side(self, s: Segment) -> Side:
        return "client" if str(s.src) == self.client else "server"

    def rel(self, side: str, value: int) -> int:
        isn = self.isn.get(side)
        return value if isn is None else (value - isn) & MASK   # raw when that side never sent

    def label(self, s: Segment) -> str:
        side = self.side(s)
        f = s.flags
        parts: list[str] = []
        if f & Flags.SYN:
            parts.append(("SYN-ACK" if f & Flags.ACK else "SYN") + f" {self.rel(side, s.seq)}")
        if f & Flags.RST:
            parts.append(f"RST seq {self.rel(side, s.seq)}")
        if f & Flags.FIN:
            fin = (s.seq + s.payload_len) & MASK
            parts.append(f"FIN {self.fin_name[side]}" if fin == self.fin_seq.get(side)
                         else f"FIN seq {self.rel(side, fin)}")
        if s.payload_len:
            start = self.rel(side, s.seq)
            parts.append(f"data {start}:{(start + s.payload_len) & MASK} ({s.payload_len} B)")
        if f & Flags.ACK:
            peer = other(side)
            pfin = self.fin_seq.get(peer)
            parts.append(f"ACK {self.fin_name[peer]}+1" if pfin is not None and s.ack == (pfin + 1) & MASK
                         else f"ack {self.rel(peer, s.ack)}")
        return ", ".join(parts) or Flags.text(f)


def ladder_start(conn: Connection) -> tuple[str, str]:
    """Each side's state before its first transition ("" for a side without any)."""
    first: dict[str, str] = {}
    for t in conn.transitions:
        first.setdefault(t.side, t.from_state.value)
    return first.get("client", ""), first.get("server", "")


def _row_notes(conn: Connection, findings: Iterable[Any]) -> dict[int, list[str]]:
    """Findings on this connection, and the roles that say more than the arrow (retransmissions, duplicates)."""
    out: dict[int, list[str]] = {}
    for f in findings:
        kind, cid, frames = (f.kind, f.connection, f.frames) if hasattr(f, "kind") else \
            (f["kind"], f.get("connection"), f["frames"])
        if cid == conn.id:
            for n in frames:
                out.setdefault(int(n), []).append(kind)
    for frame, _side, role in conn.roles:
        if any(w in role.lower() for w in _LADDER_NOTE_WORDS) and frame not in out:
            out.setdefault(frame, []).append(role)
    return out


def ladder_rows(conn: Connection, segments: Iterable[Segment], t0: float,
                findings: Iterable[Any] = ()) -> list[LadderRow]:
    """One row per segment of `conn` (give its segments in capture order), with both sides' states after it.

    `findings`: Finding records or their JSON dicts; those of this connection are noted on their frames."""
    segs = list(segments)
    lab = _Labeller(segs, conn.client)
    by_frame = _by_frame(conn)
    roles = _roles_by_frame(conn)
    notes = _row_notes(conn, findings)
    state: dict[str, str] = dict(zip(SIDES, ladder_start(conn), strict=True))
    rows: list[LadderRow] = []
    for s in segs:
        passed: dict[str, list[str]] = {"client": [], "server": []}
        for t in by_frame.get(s.frame, ()):
            state[t.side] = t.to_state.value
            passed[t.side].append(t.to_state.value + (INFERRED_MARK if t.inferred else ""))
        rows.append(LadderRow(s.frame, s.ts_s - t0, lab.side(s), Flags.text(s.flags), lab.label(s),
                              " + ".join(roles.get(s.frame, ("", []))[1]), state["client"], state["server"],
                              tuple(passed["client"]), tuple(passed["server"]), tuple(notes.get(s.frame, ()))))
    return rows


def ladder_windows(conn: Connection, t0: float, capture_end: float | None = None) -> list[TimeWaitBar]:
    """The connection's TIME_WAIT windows as bars on the capture's clock."""
    bars = []
    for w in conn.time_wait:
        text = f"frame {w.start_frame} {at(w.start_ts, t0)} → {at(w.end_ts, t0)}"
        if w.ended_by == "rst":
            text += f", killed by the RST in frame {w.end_frame}"
        elif w.ended_by == "syn":
            text += f", ended by the new SYN in frame {w.end_frame}"
        elif (left := left_at_capture_end(w, capture_end)) is not None:
            text += f", open at capture end ({max(left, 0.0):.1f} s left)"
        if w.restarts:
            text += ", restarted by frame " + ", ".join(str(n) for n in w.restarts)
        side: Side = "client" if w.side == "client" else "server"
        bars.append(TimeWaitBar(side, w.start_frame, w.start_ts - t0, w.end_ts - t0, w.length_s, w.ended_by,
                                w.end_frame, tuple(w.restarts), text))
    return bars


def ladder_footnote(conn: Connection, segments: Iterable[Segment]) -> str:
    """What M and N stand for, and what '*' means when a state was inferred; parts joined by '; '."""
    lab = _Labeller(segments, conn.client)
    parts = [f"{lab.fin_name[side]}: {side}'s FIN (relative seq {lab.rel(side, v)})"
             for side, v in lab.fin_seq.items()]
    if any(t.inferred for t in conn.transitions):
        parts.append(f"{INFERRED_MARK} state inferred, not visible at the capture point")
    return "; ".join(parts)

