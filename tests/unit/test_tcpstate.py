"""The one transition table (RFC 9293 figure 5) and what is derived from it."""

from __future__ import annotations

import pytest

from lab.core.profiles import PROFILES, get_profile
from lab.core.tcpstate import TRANSITIONS, UNDO, Input, TcpState, bridge, path_to, step

S, I = TcpState, Input  # noqa: E741


def run(state: TcpState, *inputs: Input) -> TcpState:
    for inp in inputs:
        nxt = step(state, inp)
        assert nxt is not None, (state, inp)
        state = nxt
    return state


def test_rfc_9293_names() -> None:
    assert [s.value for s in TcpState] == ["CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED",
                                          "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK",
                                          "TIME_WAIT"]
    assert str(S.TIME_WAIT) == "TIME_WAIT" and TcpState("CLOSE_WAIT") is S.CLOSE_WAIT


@pytest.mark.parametrize(("start", "inputs", "end"), [
    (S.CLOSED, [I.SEND_SYN, I.RCV_SYNACK], S.ESTABLISHED),                           # active open
    (S.LISTEN, [I.RCV_SYN, I.RCV_ACK_OF_SYN], S.ESTABLISHED),                        # passive open
    (S.CLOSED, [I.SEND_SYN, I.RCV_SYN, I.RCV_ACK_OF_SYN], S.ESTABLISHED),            # simultaneous open
    (S.ESTABLISHED, [I.SEND_FIN, I.RCV_ACK_OF_FIN, I.RCV_FIN], S.TIME_WAIT),         # active close
    (S.ESTABLISHED, [I.RCV_FIN, I.SEND_FIN, I.RCV_ACK_OF_FIN], S.CLOSED),            # passive close
    (S.ESTABLISHED, [I.SEND_FIN, I.RCV_FIN, I.RCV_ACK_OF_FIN], S.TIME_WAIT),         # simultaneous: via CLOSING
    (S.TIME_WAIT, [I.TIMEOUT_2MSL], S.CLOSED),
    (S.TIME_WAIT, [I.RCV_RST], S.CLOSED),                                            # assassination
    (S.SYN_SENT, [I.RCV_RST], S.CLOSED),                                             # connection refused
    (S.SYN_RECEIVED, [I.RCV_RST], S.LISTEN),
])
def test_textbook_paths(start: TcpState, inputs: list[Input], end: TcpState) -> None:
    assert run(start, *inputs) is end


def test_simultaneous_close_passes_closing() -> None:
    assert run(S.ESTABLISHED, I.SEND_FIN, I.RCV_FIN) is S.CLOSING


def test_every_state_is_reachable_and_time_wait_only_via_closing_or_fin_wait_2() -> None:
    reach = {S.CLOSED, S.LISTEN}
    grew = True
    while grew:
        grew = False
        for (src, _i), dst in TRANSITIONS.items():
            if src in reach and dst not in reach:
                reach.add(dst)
                grew = True
    assert reach == set(TcpState)
    assert {src for (src, _i), dst in TRANSITIONS.items() if dst is S.TIME_WAIT} == {S.FIN_WAIT_2, S.CLOSING}
    # out of TIME_WAIT only by the 2MSL timer or an RST (received: assassination; sent: it had none)
    assert {i for (src, i) in TRANSITIONS if src is S.TIME_WAIT} == {I.TIMEOUT_2MSL, I.RCV_RST, I.SEND_RST}


def test_undo_takes_back_exactly_one_arc() -> None:
    for (dst, inp), src in UNDO.items():
        assert step(src, inp) is dst
        assert [s for (s, i), d in TRANSITIONS.items() if i is inp and d is dst] == [src]   # no other way there
    # a lost ACK of a FIN, a FIN received later than it seemed
    assert UNDO[(S.CLOSED, I.RCV_ACK_OF_FIN)] is S.LAST_ACK and UNDO[(S.TIME_WAIT, I.RCV_ACK_OF_FIN)] is S.CLOSING
    assert UNDO[(S.CLOSE_WAIT, I.RCV_FIN)] is S.ESTABLISHED
    assert (S.CLOSED, I.RCV_RST) not in UNDO                  # many states reach CLOSED by an RST


def test_the_trackers_int_codes_are_checked_against_every_enum_member() -> None:
    from lab.core import tracker

    assert tracker._codes_match(tracker.STATES, tracker._STATE_CODES)
    assert tracker._codes_match(tracker.INPUTS, tracker._INPUT_CODES)
    swapped = list(tracker._STATE_CODES)
    swapped[2], swapped[3] = (S.SYN_RECEIVED, 2), (S.SYN_SENT, 3)     # SYN_SENT <-> SYN_RECEIVED
    assert not tracker._codes_match(tracker.STATES, tuple(swapped))
    assert not tracker._codes_match(tracker.INPUTS, tracker._INPUT_CODES[:-1])   # a member without a code


def test_retransmissions_change_nothing() -> None:
    assert step(S.FIN_WAIT_1, I.SEND_FIN) is None
    assert step(S.TIME_WAIT, I.RCV_FIN) is None       # a retransmitted FIN is re-ACKed, the state stays
    assert step(S.LISTEN, I.RCV_RST) is None


def test_bridge_fills_unseen_inputs_from_the_table() -> None:
    assert bridge(S.ESTABLISHED, I.SEND_FIN) == []
    assert bridge(S.SYN_SENT, I.SEND_FIN) == [I.RCV_SYNACK]          # a FIN before the SYN-ACK was seen
    assert bridge(S.FIN_WAIT_2, I.SEND_FIN) is None                  # nothing makes a second FIN a new one
    assert bridge(S.CLOSED, I.SEND_FIN) is None                      # no SYN is invented
    assert path_to(S.LISTEN, S.ESTABLISHED) == [I.RCV_SYN, I.RCV_ACK_OF_SYN]
    assert path_to(S.ESTABLISHED, S.ESTABLISHED) == []


def test_profiles_and_override() -> None:
    assert {n: p.time_wait_s for n, p in PROFILES.items()} == {
        "linux": 60.0, "freebsd": 60.0, "macos": 30.0, "solaris": 60.0, "windows": 240.0, "rfc793": 240.0}
    assert PROFILES["linux"].restart_on_any_ack and not PROFILES["rfc793"].restart_on_any_ack
    p = get_profile("macos", 12)
    assert (p.name, p.time_wait_s) == ("macos", 12.0) and "overridden" in p.source
    with pytest.raises(ValueError):
        get_profile("linux", -1)
