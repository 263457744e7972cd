"""TCP connection states (RFC 9293 names) and the one transition table everything else derives from.

Inputs are what one endpoint sends or receives (as far as a capture can tell), not user calls:
a capture never shows close() itself, only the FIN it causes.
"""

from __future__ import annotations

import enum
from collections import deque


class TcpState(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    # members are singletons: identity hashing is correct and much faster than Enum's name hash
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


class Input(enum.Enum):
    SEND_SYN = "send SYN"
    RCV_SYN = "rcv SYN"
    SEND_SYNACK = "send SYN-ACK"
    RCV_SYNACK = "rcv SYN-ACK"
    RCV_ACK_OF_SYN = "rcv ACK of SYN"
    SEND_FIN = "send FIN"
    RCV_FIN = "rcv FIN"
    RCV_ACK_OF_FIN = "rcv ACK of FIN"
    SEND_RST = "send RST"
    RCV_RST = "rcv RST"
    TIMEOUT_2MSL = "2MSL timeout"

    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


S = TcpState
I = Input  # noqa: E741

# RFC 9293 figure 5 plus the RST arcs of section 3.10.7; (state, input) absent = no state change.
TRANSITIONS: dict[tuple[TcpState, Input], TcpState] = {
    (S.CLOSED, I.SEND_SYN): S.SYN_SENT,
    (S.LISTEN, I.RCV_SYN): S.SYN_RECEIVED,
    (S.LISTEN, I.SEND_SYN): S.SYN_SENT,
    (S.SYN_SENT, I.RCV_SYNACK): S.ESTABLISHED,
    (S.SYN_SENT, I.RCV_SYN): S.SYN_RECEIVED,        # simultaneous open
    (S.SYN_RECEIVED, I.RCV_ACK_OF_SYN): S.ESTABLISHED,
    (S.SYN_RECEIVED, I.SEND_FIN): S.FIN_WAIT_1,
    (S.ESTABLISHED, I.SEND_FIN): S.FIN_WAIT_1,
    (S.ESTABLISHED, I.RCV_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, I.RCV_ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, I.RCV_FIN): S.CLOSING,
    (S.FIN_WAIT_2, I.RCV_FIN): S.TIME_WAIT,
    (S.CLOSING, I.RCV_ACK_OF_FIN): S.TIME_WAIT,
    (S.CLOSE_WAIT, I.SEND_FIN): S.LAST_ACK,
    (S.LAST_ACK, I.RCV_ACK_OF_FIN): S.CLOSED,
    (S.TIME_WAIT, I.TIMEOUT_2MSL): S.CLOSED,
    # RSTs: the sender's connection is gone at once; an acceptable RST ends the receiver's
    (S.SYN_SENT, I.SEND_RST): S.CLOSED,
    (S.SYN_RECEIVED, I.SEND_RST): S.CLOSED,
    (S.ESTABLISHED, I.SEND_RST): S.CLOSED,
    (S.FIN_WAIT_1, I.SEND_RST): S.CLOSED,
    (S.FIN_WAIT_2, I.SEND_RST): S.CLOSED,
    (S.CLOSE_WAIT, I.SEND_RST): S.CLOSED,
    (S.CLOSING, I.SEND_RST): S.CLOSED,
    (S.LAST_ACK, I.SEND_RST): S.CLOSED,
    (S.SYN_SENT, I.RCV_RST): S.CLOSED,               # "connection refused"
    (S.SYN_RECEIVED, I.RCV_RST): S.LISTEN,           # passive open goes back to listening
    (S.ESTABLISHED, I.RCV_RST): S.CLOSED,
    (S.FIN_WAIT_1, I.RCV_RST): S.CLOSED,
    (S.FIN_WAIT_2, I.RCV_RST): S.CLOSED,
    (S.CLOSE_WAIT, I.RCV_RST): S.CLOSED,
    (S.CLOSING, I.RCV_RST): S.CLOSED,
    (S.LAST_ACK, I.RCV_RST): S.CLOSED,
    (S.TIME_WAIT, I.RCV_RST): S.CLOSED,              # TIME_WAIT assassination (RFC 1337); Linux: tcp_rfc1337=0
    (S.TIME_WAIT, I.SEND_RST): S.CLOSED,             # it answered with RST: it held no TIME_WAIT socket after all
}



def _undo_arcs() -> dict[tuple[TcpState, Input], TcpState]:
    """(state, input) -> the state before, for every arc whose target and input name its source: how a
    receipt the capture seemed to show is taken back when a later segment proves it did not happen then
    (an ACK of a FIN that was lost; a FIN that crossed ours but reached the capture point late)."""
    back: dict[tuple[TcpState, Input], TcpState] = {}
    ambiguous: set[tuple[TcpState, Input]] = set()
    for (src, inp), dst in TRANSITIONS.items():
        if (dst, inp) in back:
            ambiguous.add((dst, inp))
        back[(dst, inp)] = src
    return {k: v for k, v in back.items() if k not in ambiguous}


UNDO: dict[tuple[TcpState, Input], TcpState] = _undo_arcs()

# Inputs the capture point may have missed (a lost or unseen segment), used to bridge gaps.
UNSEEN_OK = frozenset({I.RCV_SYNACK, I.RCV_ACK_OF_SYN, I.RCV_SYN, I.RCV_ACK_OF_FIN, I.RCV_FIN, I.SEND_SYNACK})


def step(state: TcpState, inp: Input) -> TcpState | None:
    """The next state, or None when the table has no arc (the input changes nothing)."""
    return TRANSITIONS.get((state, inp))


def path_to(state: TcpState, target: TcpState, max_len: int = 3) -> list[Input] | None:
    """Shortest list of unseen inputs (UNSEEN_OK) leading from `state` to `target`; None if there is none."""
    if state is target:
        return []
    seen = {state}
    todo: deque[tuple[TcpState, list[Input]]] = deque([(state, [])])
    while todo:
        cur, path = todo.popleft()
        if len(path) >= max_len:
            continue
        for (s, i), nxt in TRANSITIONS.items():
            if s is not cur or i not in UNSEEN_OK or nxt in seen:
                continue
            if nxt is target:
                return [*path, i]
            seen.add(nxt)
            todo.append((nxt, [*path, i]))
    return None


def bridge(state: TcpState, inp: Input, max_len: int = 3) -> list[Input] | None:
    """Shortest list of unseen inputs that leads from `state` to a state where `inp` has an arc.

    [] when `inp` applies directly, None when no short path exists. Used when a segment proves the
    sender is further along than the capture showed (e.g. a FIN while still in SYN_SENT: the SYN-ACK
    was not seen)."""
    if (state, inp) in TRANSITIONS:
        return []
    seen = {state}
    todo: deque[tuple[TcpState, list[Input]]] = deque([(state, [])])
    while todo:
        cur, path = todo.popleft()
        if len(path) >= max_len:
            continue
        for (s, i), nxt in TRANSITIONS.items():
            if s is not cur or i not in UNSEEN_OK or nxt in seen:
                continue
            if (nxt, inp) in TRANSITIONS:
                return [*path, i]
            seen.add(nxt)
            todo.append((nxt, [*path, i]))
    return None
