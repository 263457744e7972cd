"""The close analyzer on synthetic segment streams: every close kind, TIME_WAIT windows, every finding."""

from __future__ import annotations

import json

import pytest

from lab.core.narrate import frame_notes
from lab.core.profiles import PROFILES, get_profile
from lab.core.report import Report
from lab.core.tcpstate import TcpState
from lab.core.tracker import Analyzer, analyze
from tests.unit.synth import A, Capture, F, Flow, P, R, S

TW = TcpState.TIME_WAIT


def final_states(report: Report, cid: int = 0) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in report.connection(cid).transitions:
        out[t.side] = t.to_state.value
    return out


def kinds(report: Report) -> list[tuple[str, tuple[int, ...]]]:
    return [(f.kind, f.frames) for f in report.findings]


def established(cap: Capture | None = None, **kw: object) -> tuple[Capture, Flow]:
    cap = cap or Capture()
    f = cap.flow(**kw)  # type: ignore[arg-type]
    f.handshake()
    f.data("client", 120)
    f.data("server", 300)
    f.ack("client")
    return cap, f


# --- close kinds -------------------------------------------------------------------------------------

@pytest.mark.parametrize("first", ["client", "server"])
def test_four_way_close(first: str) -> None:
    cap, f = established()
    fin_m, ack_m, fin_n, ack_n = f.four_way(first)
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("four-way", first)
    assert c.close.frames == (fin_m.frame, ack_m.frame, fin_n.frame, ack_n.frame)
    [w] = c.time_wait
    assert (w.side, w.start_frame) == (first, ack_n.frame)
    assert w.start_ts == ack_n.ts_s and w.end_ts - w.start_ts == pytest.approx(60.0)
    assert r.findings == ()
    second = Flow.other(first)
    assert final_states(r) == {first: "TIME_WAIT", second: "CLOSED"}
    path = [(t.side, t.from_state.value, t.to_state.value) for t in c.transitions if t.frame >= fin_m.frame]
    assert path == [(first, "ESTABLISHED", "FIN_WAIT_1"), (second, "ESTABLISHED", "CLOSE_WAIT"),
                    (first, "FIN_WAIT_1", "FIN_WAIT_2"), (second, "CLOSE_WAIT", "LAST_ACK"),
                    (first, "FIN_WAIT_2", "TIME_WAIT"), (second, "LAST_ACK", "CLOSED")]
    assert not any(t.inferred for t in c.transitions)


def test_frame_notes_tell_the_textbook_story() -> None:
    cap, f = established()
    fin_m, ack_m, fin_n, ack_n = f.four_way("server")
    notes = frame_notes(analyze(cap.segments), cap.segments[0].ts_s)
    assert notes[fin_m.frame][0].startswith("FIN M (seq 301 rel. to server ISN) — server active close: "
                                            "ESTABLISHED -> FIN_WAIT_1")
    assert notes[ack_m.frame][0] == "ACK M+1 — client: ESTABLISHED -> CLOSE_WAIT; server: FIN_WAIT_1 -> FIN_WAIT_2"
    assert notes[fin_n.frame][0].startswith("FIN N (seq 121 rel. to client ISN) — client: CLOSE_WAIT -> LAST_ACK")
    assert notes[ack_n.frame][0].startswith("ACK N+1 — server: FIN_WAIT_2 -> TIME_WAIT (60 s, until t=+60.")
    assert "client: LAST_ACK -> CLOSED" in notes[ack_n.frame][0]
    assert notes[1][0].startswith("SYN (ISN 1000) — client: CLOSED -> SYN_SENT")


@pytest.mark.parametrize("first", ["client", "server"])
def test_three_way_close(first: str) -> None:
    cap, f = established()
    fin_m, fin_n, ack_n = f.three_way(first)
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("three-way", first)
    assert c.close.frames == (fin_m.frame, fin_n.frame, ack_n.frame)
    assert [(w.side, w.start_frame) for w in c.time_wait] == [(first, ack_n.frame)]
    notes = frame_notes(r, cap.segments[0].ts_s)
    assert notes[fin_n.frame][0].startswith("FIN N (seq ")
    assert " + ACK M+1 — " in notes[fin_n.frame][0]
    assert f"— {Flow.other(first)}: ESTABLISHED -> CLOSE_WAIT -> LAST_ACK; {first}: FIN_WAIT_1 -> FIN_WAIT_2" \
        in notes[fin_n.frame][0]


@pytest.mark.parametrize("first", ["client", "server"])
def test_simultaneous_close_both_pass_closing_and_hold_time_wait(first: str) -> None:
    cap, f = established()
    f.simultaneous(first)
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("simultaneous", "both")
    assert sorted(w.side for w in c.time_wait) == ["client", "server"]
    for side in ("client", "server"):
        states = [t.to_state for t in c.transitions if t.side == side]
        assert states[-2:] == [TcpState.CLOSING, TW], (side, states)
    assert final_states(r) == {"client": "TIME_WAIT", "server": "TIME_WAIT"}


def test_half_close_data_after_fin() -> None:
    cap, f = established()
    f.fin("client")
    f.ack("server")
    f.data("server", 1000)          # the server keeps sending after the client's FIN
    f.ack("client")
    f.data("server", 1000)
    f.ack("client")
    fin_n = f.fin("server")
    ack_n = f.ack("client")
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("half-close", "client")
    assert [(w.side, w.start_frame) for w in c.time_wait] == [("client", ack_n.frame)]
    assert fin_n.frame in c.close.frames


def test_one_fin_only_is_half_close_with_data_else_incomplete() -> None:
    cap, f = established()
    f.fin("client")
    f.ack("server")
    r = analyze(cap.segments)
    assert (r.connections[0].close.kind, r.connections[0].close.initiator) == ("incomplete", "client")
    assert r.connections[0].time_wait == ()
    cap, f = established()
    f.fin("client")
    f.ack("server")
    f.data("server", 10)
    r = analyze(cap.segments)
    assert r.connections[0].close.kind == "half-close"


def test_abortive_close_is_rst_without_time_wait() -> None:
    cap, f = established()
    rst = f.send("client", R | A)
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator, c.close.frames) == ("rst", "client", (rst.frame,))
    assert c.time_wait == ()
    assert final_states(r) == {"client": "CLOSED", "server": "CLOSED"}
    assert r.findings == ()


def test_connection_refused() -> None:
    cap = Capture()
    f = cap.flow()
    f.send("client", S)
    f.send("server", R | A)
    r = analyze(cap.segments)
    [c] = r.connections
    # issue 12 class 7: a SYN answered by RST is its own kind (connect() fails with ECONNREFUSED)
    assert (c.close.kind, c.close.initiator) == ("refused", "server")
    assert final_states(r)["client"] == "CLOSED"
    assert r.to_dict()["connections"][0]["close"]["kind"] == "refused"


def test_rst_after_the_handshake_is_not_refused() -> None:
    cap = Capture()
    f = cap.flow()
    f.handshake()
    f.send("server", R | A)
    assert analyze(cap.segments).connections[0].close.kind == "rst"


@pytest.mark.parametrize(("data", "ack_off", "accepted"), [
    (10, 11, True),    # TFO: the RST acknowledges the SYN and its 10 bytes (tcp_rcv_synsent_state_process)
    (10, 1, True),     # ... or the SYN only
    (10, 12, False),   # beyond what was sent: SEG.ACK > SND.NXT
    (0, 0, False),     # does not acknowledge the SYN: SEG.ACK =< ISS
])
def test_rst_in_syn_sent_is_judged_by_what_its_ack_covers(data: int, ack_off: int, accepted: bool) -> None:
    """Issue 12 class 1: ISS < SEG.ACK =< SND.NXT (RFC 9293 3.10.7.3), SYN data included."""
    cap = Capture()
    f = cap.flow(cisn=5000)
    f.send("client", S, data)
    rst = f.send("server", R | A, seq=0, ack=5000 + ack_off)
    r = analyze(cap.segments)
    [c] = r.connections
    if accepted:
        assert (c.close.kind, c.close.initiator, c.close.frames) == ("refused", "server", (rst.frame,))
        assert final_states(r) == {"client": "CLOSED"}
    else:
        assert c.close.kind == "incomplete" and c.open_at_end
        assert any("ignored" in role for _f, _i, role in c.roles)


def test_rst_at_the_rcv_nxt_the_receivers_own_ack_proves() -> None:
    """Issue 12 class 2: the client's FIN never reached the server (retransmitted; the server's data still
    ACKs below it); the client's RST at the FIN's seq is exactly the server's rcv_nxt and resets it."""
    cap, f = established()
    fin = f.fin("client", deliver=False)
    f.data("server", 4)
    for _ in range(3):
        f.send("client", F | A, seq=fin.seq, advance=False, deliver=False)
    rst = f.send("client", R, seq=fin.seq)
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("rst", "client") and rst.frame in c.close.frames
    assert final_states(r) == {"client": "CLOSED", "server": "CLOSED"}
    assert not any(t.to_state in (TcpState.CLOSE_WAIT, TcpState.LAST_ACK) for t in c.transitions)


@pytest.mark.parametrize("server_fin", [False, True])
def test_rst_one_below_rcv_nxt_after_a_fin_resets_close_wait_and_last_ack(server_fin: bool) -> None:
    """Issue 12 class 8: Linux tcp_reset_check accepts seq == rcv_nxt - 1 in CLOSE_WAIT, CLOSING, LAST_ACK."""
    cap, f = established()
    fin = f.fin("client")
    f.ack("server")
    if server_fin:
        f.fin("server")
    rst = f.send("client", R, seq=fin.seq)          # its FIN's seq: one below the server's rcv_nxt
    r = analyze(cap.segments)
    [c] = r.connections
    assert rst.frame in c.close.frames and c.close.initiator == "client"
    last = [t for t in c.transitions if t.side == "server"][-1]
    assert (last.frame, last.to_state) == (rst.frame, TcpState.CLOSED)


def test_rst_one_below_rcv_nxt_does_not_reset_established() -> None:
    cap, f = established()
    rst = f.send("client", R, seq=f.client_nxt - 1)
    r = analyze(cap.segments)
    [c] = r.connections
    assert c.close.kind == "incomplete" and rst.frame not in c.close.frames


def test_incomplete_without_close() -> None:
    cap, _f = established()
    r = analyze(cap.segments)
    assert r.connections[0].close.kind == "incomplete" and r.connections[0].close.initiator is None


# --- losses, retransmissions, RST answers ---------------------------------------------------------

def lost_final_ack(profile: str = "linux") -> tuple[Report, dict[str, int], Capture]:
    cap, f = established()
    fin_m = f.fin("client")
    f.ack("server")
    fin_n = f.fin("server")
    final = f.ack("client", deliver=False)         # captured, never reaches the server
    retx = f.send("server", F | A, seq=fin_n.seq, dt=0.2)
    reack = f.ack("client")
    return analyze(cap.segments, profile=profile), {"fin_m": fin_m.frame, "fin_n": fin_n.frame,
                                                     "final": final.frame, "retx": retx.frame,
                                                     "reack": reack.frame}, cap


def test_lost_final_ack_retransmitted_fin_restarts_time_wait() -> None:
    r, fr, cap = lost_final_ack()
    assert kinds(r) == [("fin-retransmitted", (fr["fin_n"], fr["retx"])), ("final-ack-lost", (fr["final"], fr["retx"]))]
    [c] = r.connections
    assert c.close.kind == "four-way"
    [w] = c.time_wait
    assert (w.side, w.start_frame) == ("client", fr["final"])
    retx_ts = cap.segments[fr["retx"] - 1].ts_s
    assert w.restarts == (fr["retx"],)           # Linux: the FIN's arrival reschedules TIME_WAIT
    assert w.end_ts == pytest.approx(retx_ts + 60.0)
    notes = frame_notes(r, cap.segments[0].ts_s)
    assert any("re-ACK" in n for n in notes[fr["reack"]])
    assert any("final-ack-lost" in n for n in notes[fr["retx"]])


def test_rfc793_profile_restarts_at_the_re_ack() -> None:
    r, fr, cap = lost_final_ack("rfc793")
    [w] = r.connections[0].time_wait
    assert w.restarts == (fr["reack"],)
    assert w.end_ts == pytest.approx(cap.segments[fr["reack"] - 1].ts_s + 240.0)


def test_final_ack_lost_before_the_capture_point() -> None:
    cap, f = established()
    f.fin("client")
    f.ack("server")
    fin_n = f.fin("server")
    f.ack("client", capture=False, deliver=False)   # lost before the capture point: never on the wire here
    retx = f.send("server", F | A, seq=fin_n.seq, dt=0.2)
    reack = f.ack("client")
    r = analyze(cap.segments)
    assert kinds(r) == [("fin-retransmitted", (fin_n.frame, retx.frame))]
    [w] = r.connections[0].time_wait
    assert (w.side, w.start_frame) == ("client", reack.frame)


def test_time_wait_zero_retransmitted_fin_meets_rst() -> None:
    cap, f = established()
    f.fin("client")
    f.ack("server")
    fin_n = f.fin("server")
    f.ack("client", deliver=False)
    retx = f.send("server", F | A, seq=fin_n.seq, dt=0.2)
    rst = f.send("client", R, seq=f.client_nxt)
    r = analyze(cap.segments)
    assert ("rst-after-fin", (retx.frame, rst.frame)) in kinds(r)
    [c] = r.connections
    assert c.time_wait == ()                     # the RST shows the client kept no TIME_WAIT
    assert c.close.kind == "four-way"


def test_orphaned_fin_wait_2_answers_fin_with_rst() -> None:
    cap, f = established()
    f.fin("client")
    f.ack("server")
    fin_n = f.fin("server", dt=0.5)
    rst = f.send("client", R, seq=f.client_nxt)
    r = analyze(cap.segments)
    assert kinds(r) == [("rst-after-fin", (fin_n.frame, rst.frame))]
    [c] = r.connections
    assert (c.close.kind, c.close.initiator, c.time_wait) == ("rst", "client", ())


def test_fin_retransmitted_before_any_ack() -> None:
    cap, f = established()
    fin = f.fin("client", deliver=False)
    retx = f.send("client", F | A, seq=fin.seq, dt=0.2)
    f.ack("server")
    f.fin("server")
    f.ack("client")
    r = analyze(cap.segments)
    assert kinds(r) == [("fin-retransmitted", (fin.frame, retx.frame))]
    assert r.connections[0].close.kind == "four-way"


def test_time_wait_assassination() -> None:
    for off, flagged in ((0, True), (1, False), (-1, False)):
        cap, f = established()
        f.four_way("server")                    # the server holds TIME_WAIT
        rst = f.send("client", R, seq=f.client_nxt + off, dt=1.0)
        r = analyze(cap.segments)
        [c] = r.connections
        [w] = c.time_wait
        if flagged:
            assert kinds(r) == [("time-wait-assassinated", (rst.frame,))]
            assert (w.ended_by, w.end_frame, w.end_ts) == ("rst", rst.frame, rst.ts_s)
            assert "tcp_rfc1337" in r.findings[0].detail
        else:
            assert r.findings == ()
            assert (w.ended_by, w.end_frame) == ("capture-end", None)   # ignored RST; the capture ends 1 s in


@pytest.mark.parametrize("first", ["client", "server"])
def test_crossed_fins_reaching_the_capture_reordered(first: str) -> None:
    """Issue 12 class 3: the second side's FIN (its ACK field does not cover the first FIN) reaches the
    capture point after that side's ACK of the first FIN, whose seq is already past its own FIN. The FINs
    crossed: both pass CLOSING and hold TIME_WAIT (RFC 9293 3.6 case 2), whatever the arrival order."""
    cap, f = established()
    second = Flow.other(first)
    late_fin = f.fin(second, capture=False, deliver=False)     # sent first, seen late
    fin_m = f.fin(first, deliver=True)
    ack_m = f.ack(second)                                      # seq past its own FIN, acks FIN M
    cap.frame += 1
    seen = cap.add(late_fin._replace(frame=cap.frame, ts_s=cap.t + 0.0005))
    cap.t += 0.001
    f.deliver(late_fin)
    ack_n = f.ack(first)
    assert seen.ack != (fin_m.seq + 1) and ack_m.seq == seen.seq + 1
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("simultaneous", "both")
    assert sorted(w.side for w in c.time_wait) == ["client", "server"]
    path = [(t.from_state.value, t.to_state.value, t.inferred) for t in c.transitions
            if t.side == second and t.frame >= fin_m.frame]
    assert path == [("ESTABLISHED", "FIN_WAIT_1", True), ("FIN_WAIT_1", "CLOSING", False),
                    ("CLOSING", "TIME_WAIT", False)]
    assert [t.frame for t in c.transitions if t.side == second and t.frame >= fin_m.frame] == \
        [ack_m.frame, ack_m.frame, ack_n.frame]
    assert not any(t.to_state is TcpState.CLOSE_WAIT for t in c.transitions)
    assert any(f_ == seen.frame and "crossed" in role for f_, _i, role in c.roles)


def test_rst_from_syn_sent_answering_a_bad_syn_ack_keeps_one_connection() -> None:
    """Issue 12 class 4: a SYN-ACK whose ACK is not ISN+1; the client answers <SEQ=SEG.ACK><CTL=RST> and stays
    in SYN_SENT (RFC 9293 3.10.7.3); the right SYN-ACK with the same ISN completes the same connection."""
    cap = Capture()
    f = cap.flow(cisn=1000, sisn=7000)
    syn = f.send("client", S)
    bad = f.send("server", S | A, ack=1000 + 1001, deliver=False, advance=False)
    rst = f.send("client", R, seq=bad.ack)
    f.send("server", S | A)
    f.send("client", A)
    f.three_way("client")
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("three-way", "client") and rst.frame not in c.close.frames
    client = [(t.frame, t.to_state.value) for t in c.transitions if t.side == "client"]
    assert client[:2] == [(syn.frame, "SYN_SENT"), (rst.frame + 2, "ESTABLISHED")]
    assert [w.side for w in c.time_wait] == ["client"]
    assert any("stays in SYN_SENT" in role for fr, _i, role in c.roles if fr == rst.frame)


def test_stale_peer_answering_a_new_syn_is_named_not_a_handshake() -> None:
    """Issue 12 class 5: the old connection's data answers the new SYN (its ACK is the old one's): finding
    stale-peer-ack, no inferred handshake, the client's RST answers it and the client stays in SYN_SENT."""
    cap = Capture()
    old = cap.flow(cisn=1000, sisn=3000)
    old.handshake()
    old.data("client", 3)
    old.ack("server")
    old.rst("server")
    new = cap.flow(cisn=900_000, sisn=5000)
    new.send("client", S)
    stale = old.send("server", P | A, 5, deliver=False)
    rst = new.send("client", R, seq=stale.ack)
    new.send("server", S | A)
    new.send("client", A)
    new.three_way("client")
    r = analyze(cap.segments)
    assert [c.close.kind for c in r.connections] == ["rst", "three-way"]
    c = r.connections[1]
    assert not [t for t in c.transitions if t.frame in (stale.frame, rst.frame)]
    [f] = [f for f in r.findings if f.kind == "stale-peer-ack"]
    assert f.frames == (stale.frame,) and f.extra["previous_connection"] == r.connections[0].id
    assert "client's next seq in connection" in f.detail and f.extra["elapsed_s"] >= 0


def test_data_the_capture_missed_after_a_syn_ack_is_not_a_stale_peer() -> None:
    """The SYN-ACK was captured; the server's next segment ACKs client data the capture never saw (above the
    client's SND.NXT as the capture knows it): the handshake went on, no stale-peer-ack."""
    cap = Capture()
    f = cap.flow()
    f.send("client", S)
    f.send("server", S | A)
    f.send("client", A, capture=False)
    f.send("client", P | A, 50, capture=False)
    f.data("server", 100)
    r = analyze(cap.segments)
    assert [fi.kind for fi in r.findings] == []
    assert not any("stale" in role for _f, _i, role in r.connections[0].roles)


def test_simultaneous_open_story() -> None:
    """Issue 12 class 6: crossed SYNs; each side's SYN-ACK (its SYN's ISN) answers the other's SYN:
    CLOSED -> SYN_SENT -> SYN_RECEIVED -> ESTABLISHED on both sides, no LISTEN, no retransmission."""
    cap = Capture()
    f = cap.flow()
    a = f.send("client", S, deliver=False)
    b = f.send("server", S, deliver=False)
    f.deliver(a)
    f.deliver(b)
    f.send("client", S | A, seq=a.seq, advance=False)
    f.send("server", S | A, seq=b.seq, advance=False)
    f.ack("client")
    f.three_way("client")
    r = analyze(cap.segments)
    [c] = r.connections
    for side in ("client", "server"):
        states = [t.to_state.value for t in c.transitions if t.side == side]
        assert states[:3] == ["SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"], (side, states)
        assert next(t.from_state.value for t in c.transitions if t.side == side) == "CLOSED"
    assert not any("retransmission" in role for _f, _i, role in c.roles)
    assert (c.close.kind, c.close.initiator) == ("three-way", "client")


@pytest.mark.parametrize("keep", [True, False])
def test_idle_connection_is_not_finished_by_idleness(keep: bool) -> None:
    """Issue 12 class 9: 75 s of idleness with 20,000 unrelated segments (sweeps run) leaves one connection."""
    cap, f = established()
    t_idle = cap.t
    for i in range(5000):
        cap.t = t_idle + 75.0 * i / 5000
        g = cap.flow(client=("203.0.113.10", 10000 + i % 50000), server=("203.0.113.20", 80), cisn=1000 + i)
        g.handshake()
        g.rst("client")
    cap.t = t_idle + 75.0
    f.data("client", 10)
    f.three_way("server")
    a = Analyzer(keep=keep)
    got = []
    for seg in cap.segments:
        a.feed(seg)
        if not keep:
            got += a.drain()[0]
    r = a.finish()
    conns = list(r.connections) if keep else got + a.drain()[0]
    mine = [c for c in conns if c.client == "192.0.2.1:40000"]
    assert len(conns) == 5001 and len(mine) == 1
    assert (mine[0].close.kind, mine[0].close.initiator, mine[0].mid_capture) == ("three-way", "server", False)


@pytest.mark.parametrize(("gap", "lost"), [(0.003, False), (0.25, True)])
def test_fin_resent_below_the_rto_floor_is_not_a_lost_final_ack(gap: float, lost: bool) -> None:
    """Issue 12 class 10: a FIN sent again 2 ms after the final ACK passed the capture point was not sent for
    want of that ACK (Linux's RTO is at least 200 ms): the ACK was possibly in flight. After 250 ms it was lost."""
    cap, f = established()
    fin_m = f.fin("server")
    fin_n = f.fin("client")
    final = f.ack("server", deliver=False)
    cap.t = fin_n.ts_s + gap - 0.001
    again = f.send("client", F | A, seq=fin_n.seq, advance=False)
    f.ack("server")
    r = analyze(cap.segments)
    [c] = r.connections
    assert [fi.kind for fi in r.findings if fi.kind == "final-ack-lost"] == (["final-ack-lost"] if lost else [])
    assert fin_m.frame in c.close.frames
    roles = [role for fr, _i, role in c.roles if fr == again.frame]
    assert any("possibly in flight" in role for role in roles) is not lost
    client_closed = [t.frame for t in c.transitions if t.side == "client" and t.to_state is TcpState.CLOSED]
    assert client_closed == ([again.frame + 1] if lost else [final.frame])


@pytest.mark.parametrize(("dt", "ipids", "seen_twice"), [
    (0.000001, (None, None), True),     # IPv6, or the ID unknown: same fields, 1 us later
    (0.0, (7, 7), True),                # two interfaces: same packet, same IPv4 ID
    (0.000018, (7, 8), False),          # two packets (new IPv4 ID): the sender did send it twice
    (0.2, (None, None), False),         # a real retransmission (RTO)
])
def test_capture_seeing_a_fin_twice_is_not_a_retransmission(dt: float, ipids: tuple[int | None, int | None],
                                                            seen_twice: bool) -> None:
    """Issue 12 classes 11 and 13: an identical frame (same TCP fields, IPv4 ID, near-identical time) is one
    packet the capture holds twice (a mirror, two interfaces), not a retransmission."""
    cap, f = established()
    fin = f.fin("client")
    first = cap.segments.pop()
    cap.add(first._replace(ipid=ipids[0]))
    cap.frame += 1
    cap.add(first._replace(frame=cap.frame, ts_s=first.ts_s + dt, ipid=ipids[1]))
    cap.t += dt
    f.ack("server")
    f.fin("server")
    f.ack("client")
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.close.kind, c.close.initiator) == ("four-way", "client")
    kinds_ = [fi.kind for fi in r.findings]
    assert kinds_ == (["capture-duplicate"] if seen_twice else ["fin-retransmitted"])
    if seen_twice:
        assert r.findings[0].frames == (fin.frame + 1,) and r.findings[0].extra["repeats"] == [fin.frame]


def test_kind_is_judged_by_sequence_space_not_capture_order() -> None:
    """The second side's bare ACK of the first FIN (seq = its own FIN's) reaching the capture after its FIN
    was still sent first: four-way, not three-way. Its data below its FIN, seen after the FIN and acking the
    first FIN: a half-close."""
    def close(data: bool) -> Report:
        cap, f = established()
        f.fin("client")
        ack = f.ack("server", capture=False)
        extra = f.data("server", 50) if data else None
        if extra is not None:
            cap.segments.pop()
            cap.frame -= 1
        fin = f.fin("server")
        cap.frame += 1
        cap.add(ack._replace(frame=cap.frame, ts_s=cap.t))
        if extra is not None:
            cap.frame += 1
            cap.add(extra._replace(frame=cap.frame, ts_s=cap.t))
        f.ack("client")
        assert fin.frame < cap.frame
        return analyze(cap.segments)

    assert (close(False).connections[0].close.kind, close(True).connections[0].close.kind) == \
        ("four-way", "half-close")


# --- what the capture saw: windows and connections at its end ------------------------------------------

def test_time_wait_still_running_at_capture_end_says_how_much_was_left() -> None:
    cap, f = established()
    *_, ack_n = f.four_way("client")
    cap.t += 1.5
    cap.flow(client=("192.0.2.1", 40001)).send("client", S)   # the capture goes on 1.5 s more, then ends
    r = analyze(cap.segments)
    c = r.connection(0)
    [w] = c.time_wait
    assert (w.ended_by, w.end_frame) == ("capture-end", None)
    assert w.end_ts == pytest.approx(ack_n.ts_s + 60.0)          # the window's own end is kept
    assert w.left_s == pytest.approx(60.0 - 1.5 - 0.001, abs=0.01)
    assert not c.open_at_end
    assert r.to_dict()["connections"][0]["time_wait"][0]["left_s"] == pytest.approx(w.left_s)


def test_time_wait_timeout_only_when_a_later_segment_shows_2msl_passed() -> None:
    cap, f = established()
    f.four_way("client")
    cap.t += 61.0
    other = cap.flow(client=("192.0.2.1", 40001))   # an unrelated connection, after the window's end
    other.handshake()
    r = analyze(cap.segments)
    w = r.connection(0).time_wait[0]
    assert (w.ended_by, w.left_s) == ("timeout", 0.0)


def test_connection_open_at_capture_end() -> None:
    cap, _f = established()
    r = analyze(cap.segments)
    [c] = r.connections
    assert c.open_at_end and c.close.kind == "incomplete" and c.time_wait == ()
    assert r.to_dict()["connections"][0]["open_at_end"] is True
    cap2, f2 = established()
    f2.fin("client")                               # half-closed: the client in FIN_WAIT_1/2, the server open
    assert analyze(cap2.segments).connections[0].open_at_end
    cap3, f3 = established()
    f3.four_way("server")
    assert not analyze(cap3.segments).connections[0].open_at_end
    cap4, f4 = established()
    f4.rst("client")
    assert not analyze(cap4.segments).connections[0].open_at_end


def test_superseded_incarnation_waits_for_its_time_wait_verdict() -> None:
    """A new incarnation takes the four-tuple over (its SYN unseen: no reuse check ends the old window) while
    the old client's TIME_WAIT still runs: how that window ended is known only later."""
    def capture(more_s: float) -> Report:
        cap, f = established()
        f.four_way("client")
        cap.t += 1.0
        g = cap.flow(cisn=900_000, sisn=700_000)               # same four-tuple
        g.send("client", S, capture=False)
        g.send("server", S | A)
        g.send("client", A)
        g.data("client")
        if more_s:
            cap.t += more_s
            h = cap.flow(client=("192.0.2.1", 40001))          # another connection, later
            h.handshake()
        return analyze(cap.segments, time_wait_s=5.0)

    r = capture(0.0)
    assert [c.incarnation for c in r.connections if c.client.endswith(":40000")] == [0, 1]
    w = r.connection(0).time_wait[0]
    assert w.ended_by == "capture-end" and w.left_s == pytest.approx(4.0, abs=0.01)
    assert capture(10.0).connection(0).time_wait[0].ended_by == "timeout"


# --- reuse of a four-tuple --------------------------------------------------------------------------

def server_tw(ts: bool = False) -> tuple[Capture, Flow]:
    cap, f = established(ts=ts)
    f.four_way("server")
    return cap, f


def test_reuse_in_time_wait_isn_above_is_acceptable_and_ends_the_window() -> None:
    cap, old = server_tw()
    cap.t += 2.0
    new = cap.flow(cisn=old.client_nxt + 100_000, sisn=old.server_nxt + 65537)
    syn, synack, _ = new.handshake()
    new.data("client")
    r = analyze(cap.segments)
    assert [c.incarnation for c in r.connections] == [0, 1]
    [fd] = r.findings
    assert (fd.kind, fd.connection, fd.frames) == ("reuse-in-time-wait", 1, (syn.frame,))
    assert fd.extra["verdict"] == "acceptable" and fd.extra["time_wait_side"] == ["server"]
    assert fd.extra["elapsed_s"] == pytest.approx(2.001, abs=0.01)
    assert fd.extra["answer_frame"] == synack.frame
    [w] = r.connections[0].time_wait
    assert (w.ended_by, w.end_frame) == ("syn", syn.frame)


def test_reuse_in_time_wait_isn_below_is_refused_and_the_old_ack_stays_with_the_old_connection() -> None:
    cap, old = server_tw()
    cap.t += 1.0
    new = cap.flow(cisn=old.client_nxt - 100_000)
    syn = new.send("client", S)
    # TIME_WAIT answers with the old connection's ACK
    answer = old.ack("server")
    r = analyze(cap.segments)
    [fd] = r.findings
    assert fd.kind == "reuse-in-time-wait" and fd.frames == (syn.frame,)
    assert fd.extra["verdict"] == "refused" and fd.extra["answer_frame"] == answer.frame
    assert r.connections[0].last_frame == answer.frame
    assert r.connections[1].first_frame == r.connections[1].last_frame == syn.frame


@pytest.mark.parametrize(("delta_isn", "delta_ts", "verdict"), [
    (-100_000, +50, "acceptable"),   # newer timestamp rescues an ISN below
    (+100_000, -50, "refused"),      # PAWS: an older timestamp refuses even an ISN above
    (+100_000, +50, "acceptable"),
])
def test_reuse_in_time_wait_with_timestamps(delta_isn: int, delta_ts: int, verdict: str) -> None:
    cap, old = server_tw(ts=True)
    last_ts = max(s.tsval for s in cap.segments if s.sport == 40000 and s.tsval is not None)
    cap.t += 1.0
    new = cap.flow(cisn=old.client_nxt + delta_isn, ts=True)
    syn = new.send("client", S, tsval=last_ts + delta_ts)
    r = analyze(cap.segments)
    [fd] = r.findings
    assert (fd.kind, fd.frames, fd.extra["verdict"]) == ("reuse-in-time-wait", (syn.frame,), verdict)
    w = r.connections[0].time_wait[0]
    if verdict == "refused":            # Linux reschedules TIME_WAIT on a PAWS-rejected segment
        assert w.restarts == (syn.frame,)


def test_refused_syn_that_gets_a_syn_ack_is_dangerous() -> None:
    cap, old = server_tw()
    new = cap.flow(cisn=old.client_nxt - 5)
    new.handshake()
    r = analyze(cap.segments)
    [fd] = r.findings
    assert fd.extra["verdict"] == "dangerous" and "SYN-ACK" in fd.detail
    [w] = r.connections[0].time_wait
    assert (w.ended_by, w.end_frame) == ("syn", fd.frames[0])     # the new connection took the four-tuple


def test_client_reusing_its_own_time_wait_port() -> None:
    for delta, verdict in ((+70_000, "acceptable"), (-10, "dangerous")):
        cap, old = established()
        old.four_way("client")
        new = cap.flow(cisn=old.client_nxt + delta)
        new.handshake()
        r = analyze(cap.segments)
        [fd] = r.findings
        assert fd.extra["verdict"] == verdict and fd.extra["time_wait_side"] == ["client"]


def test_reuse_after_time_wait() -> None:
    cap, old = server_tw()
    cap.t += 75.0
    new = cap.flow(cisn=old.client_nxt - 5)
    syn, *_ = new.handshake()
    r = analyze(cap.segments)
    [fd] = r.findings
    assert (fd.kind, fd.frames) == ("reuse-after-time-wait", (syn.frame,))
    assert fd.extra["elapsed_s"] == pytest.approx(15.0, abs=0.1)


def test_retransmitted_syn_is_not_a_new_incarnation() -> None:
    cap = Capture()
    f = cap.flow()
    syn = f.send("client", S)
    f.send("client", S, seq=syn.seq, advance=False, dt=1.0)
    f.send("server", S | A)
    f.send("client", A)
    r = analyze(cap.segments)
    assert len(r.connections) == 1


# --- delayed duplicates -----------------------------------------------------------------------------

def old_incarnation(ts: bool) -> tuple[Capture, Flow, object]:
    """A closed connection (ISN 2,000,000) whose 10 data bytes a later incarnation may see again."""
    cap = Capture()
    old = cap.flow(cisn=2_000_000, ts=ts)
    old.handshake()
    old_data = old.data("client", 10)
    old.ack("server")
    old.three_way("server")
    cap.t += 0.5
    return cap, old, old_data


def dup_setup(delta_isn: int, ts: bool) -> tuple[Capture, Flow, Flow, object]:
    cap, old, old_data = old_incarnation(ts)
    new = cap.flow(cisn=2_000_000 + delta_isn, sisn=old.server_nxt + 65537, ts=ts, cts=5000)
    new.handshake()
    return cap, old, new, old_data


def replay(cap: Capture, seg: object, **change: object) -> object:
    cap.t += 0.05
    cap.frame += 1
    new = seg._replace(frame=cap.frame, ts_s=cap.t, **change)  # type: ignore[attr-defined]
    return cap.add(new)


@pytest.mark.parametrize(("delta", "ts", "change", "verdict"), [
    (100_012, True, {}, "PAWS would reject"),
    (-5, True, {"ack": None}, "PAWS would reject"),
    (-5, True, {"ack": None, "tsval": None, "tsecr": None}, "could be accepted"),
    (-10_000_000, True, {"ack": None, "tsval": None, "tsecr": None}, "rejected by window"),
    (100_012, False, {}, "rejected by window"),
    (-5, False, {"ack": None}, "could be accepted"),
    (-5, False, {}, "rejected by ACK check"),
    (-10_000_000, False, {"ack": None}, "rejected by window"),
])
def test_delayed_duplicate_verdicts(delta: int, ts: bool, change: dict[str, object], verdict: str) -> None:
    cap, _old, new, old_data = dup_setup(delta, ts)
    if "ack" in change and change["ack"] is None:
        change = {**change, "ack": new.server_nxt}
    dup = replay(cap, old_data, **change)
    new.data("client", 5)
    new.ack("server")
    new.data("client", 20)
    new.send("client", R)
    r = analyze(cap.segments)
    dups = [f for f in r.findings if f.kind == "delayed-duplicate"]
    assert [f.frames for f in dups] == [(dup.frame,)]          # type: ignore[attr-defined]
    assert dups[0].extra["verdict"] == verdict, dups[0].detail
    assert dups[0].connection == 1


@pytest.mark.parametrize(("client_ws", "server_ws", "verdict", "says"), [
    (7, 7, "could be accepted", "fits the receive window"),   # 1000 << 7 = 128,000 bytes: the old data fits
    (None, 7, "rejected by window", "no window scaling"),      # scaling needs both SYNs to offer it
    (7, None, "rejected by window", "no window scaling"),
])
def test_delayed_duplicate_window_is_scaled_when_both_syns_offer_it(
        client_ws: int | None, server_ws: int | None, verdict: str, says: str) -> None:
    cap, old, old_data = old_incarnation(ts=False)
    # the new incarnation's ISN is 100,000 below the old data: the replay lands 100,000 bytes ahead of rcv_nxt
    new = cap.flow(cisn=2_000_000 - 100_000, sisn=old.server_nxt + 65537, ts=False)
    new.ends["client"].wscale = client_ws
    new.ends["server"].wscale = server_ws
    new.ends["server"].win = 1000
    new.handshake()
    new.ack("server")                      # a window after the SYN-ACK's (a SYN's window is never scaled)
    dup = replay(cap, old_data, ack=new.server_nxt)
    r = analyze(cap.segments)
    [f] = [f for f in r.findings if f.kind == "delayed-duplicate"]
    assert f.frames == (dup.frame,)        # type: ignore[attr-defined]
    assert f.extra["verdict"] == verdict and says in f.detail, f.detail


def test_duplicate_window_without_the_handshake_is_said_to_be_unscaled() -> None:
    cap, old, old_data = old_incarnation(ts=False)
    new = cap.flow(cisn=2_000_000 - 100_000, sisn=old.server_nxt + 65537, ts=False)
    new.ends["server"].win = 1000
    syn = new.send("client", S)
    new.send("server", S | A, capture=False)   # the SYN-ACK was not captured: the scaling stays unknown
    new.send("client", A)
    new.ack("server")
    replay(cap, old_data, ack=new.server_nxt)
    r = analyze(cap.segments)
    [f] = [f for f in r.findings if f.kind == "delayed-duplicate"]
    assert f.extra["verdict"] == "rejected by window" and "unscaled" in f.detail, f.detail
    assert syn.wscale is None


def test_ordinary_retransmissions_in_a_later_incarnation_are_not_duplicates() -> None:
    cap, _old, new, _ = dup_setup(200_000, True)
    d1 = new.data("client", 100)
    new.send("client", A, 100, seq=d1.seq, dt=0.2)           # retransmission, fresh TSval
    new.ack("server")
    new.four_way("client")
    r = analyze(cap.segments)
    assert [f.kind for f in r.findings] == ["reuse-in-time-wait"]


def test_old_syn_duplicate_after_close() -> None:
    cap = Capture()
    old = cap.flow(cisn=7777)
    old.handshake()
    old.data("client")
    old.four_way("client")
    cap.t += 0.002
    dup_syn = old.send("client", S, seq=7777)
    r = analyze(cap.segments)
    assert len(r.connections) == 2
    assert kinds(r) == [("delayed-duplicate", (dup_syn.frame,)), ("reuse-in-time-wait", (dup_syn.frame,))]
    dup, reuse = r.findings
    assert reuse.extra["verdict"] == "dangerous"   # the client's own TIME_WAIT would not stop an old SYN
    assert dup.extra["verdict"] == "could be accepted" and "ISN of incarnation 0" in dup.detail
    # a duplicate does not take over TIME_WAIT: it still runs when the capture ends
    assert r.connections[0].time_wait[0].ended_by == "capture-end"


# --- capture started mid-connection, wraparound, profiles ----------------------------------------

def test_mid_capture_teardown_server_first() -> None:
    cap = Capture()
    f = cap.flow(client=("172.16.16.128", 3363), server=("67.228.110.120", 80))
    f.ends["client"].rcv = f.ends["server"].nxt   # established before the capture started
    f.ends["server"].rcv = f.ends["client"].nxt
    f.four_way("server")
    r = analyze(cap.segments)
    [c] = r.connections
    assert (c.client, c.server, c.mid_capture) == ("172.16.16.128:3363", "67.228.110.120:80", True)
    assert (c.close.kind, c.close.initiator) == ("four-way", "server")
    assert [w.side for w in c.time_wait] == ["server"]
    assert sorted(frame_notes(r, cap.segments[0].ts_s)) == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["four_way", "three_way", "simultaneous"])
def test_sequence_wraparound(kind: str) -> None:
    cap = Capture()
    f = cap.flow(cisn=(1 << 32) - 50, sisn=(1 << 32) - 3)
    f.handshake()
    f.data("client", 100)    # crosses 2^32
    f.data("server", 100)
    f.ack("client")
    getattr(f, kind)("client")
    r = analyze(cap.segments)
    c = r.connections[0]
    expect = {"four_way": "four-way", "three_way": "three-way", "simultaneous": "simultaneous"}[kind]
    assert c.close.kind == expect
    assert "client" in [w.side for w in c.time_wait]


@pytest.mark.parametrize(("name", "seconds"), [("linux", 60), ("freebsd", 60), ("macos", 30), ("solaris", 60),
                                               ("windows", 240), ("rfc793", 240)])
def test_profiles(name: str, seconds: float) -> None:
    assert PROFILES[name].time_wait_s == seconds
    cap, f = established()
    f.four_way("client")
    [w] = analyze(cap.segments, profile=name).connections[0].time_wait
    assert w.end_ts - w.start_ts == pytest.approx(seconds)
    [w] = analyze(cap.segments, profile=name, time_wait_s=5).connections[0].time_wait
    assert w.end_ts - w.start_ts == pytest.approx(5)


def test_unknown_profile() -> None:
    with pytest.raises(ValueError):
        get_profile("plan9")


def test_report_round_trips_through_json() -> None:
    r, _fr, _cap = lost_final_ack()
    d = r.to_dict()
    again = Report.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d
    assert frame_notes(again, 0.0) == frame_notes(r, 0.0)
    c = d["connections"][0]
    assert {"id", "client", "server", "incarnation", "first_frame", "last_frame", "close", "time_wait"} <= set(c)
    assert {"kind", "initiator", "frames"} == set(c["close"])
    assert {"side", "start_ts", "end_ts", "start_frame"} <= set(c["time_wait"][0])
    assert {"kind", "connection", "frames", "detail"} <= set(d["findings"][0])


def test_streaming_finalizes_old_connections() -> None:
    cap = Capture()
    for i in range(40):
        f = cap.flow(client=("192.0.2.1", 40000 + i))
        f.handshake()
        f.data("client")
        f.four_way("client")
        cap.t += 5.0
    a = Analyzer()
    for s in cap.segments:
        a.feed(s)
    a._sweep(cap.t)
    assert len(a._open) <= 14                      # only the last ~65 s of connections stay open
    r = a.finish()
    assert len(r.connections) == 40 and [c.id for c in r.connections] == list(range(40))
    assert all(c.close.kind == "four-way" for c in r.connections)


def test_ack_flag_constant_sanity() -> None:
    assert int(A) == 0x10 and int(F) == 0x01 and int(S) == 0x02 and int(R) == 0x04


# --- API details --------------------------------------------------------------------------------------

def test_ipv6_endpoints_and_profile_object() -> None:
    cap = Capture()
    f = cap.flow(client=("2001:db8::1", 50000), server=("2001:db8::2", 443))
    f.handshake()
    f.four_way("client")
    r = analyze(cap.segments, profile=PROFILES["macos"])
    c = r.connections[0]
    assert (c.client, c.server) == ("[2001:db8::1]:50000", "[2001:db8::2]:443")
    assert c.time_wait[0].end_ts - c.time_wait[0].start_ts == pytest.approx(30.0)
    assert (r.profile, r.time_wait_s) == ("macos", 30.0)


def test_mid_capture_equal_ports_takes_the_first_sender_as_client() -> None:
    cap = Capture()
    f = cap.flow(client=("192.0.2.9", 7000), server=("192.0.2.1", 7000))
    f.ends["client"].rcv = f.ends["server"].nxt
    f.ends["server"].rcv = f.ends["client"].nxt
    f.data("client")
    f.four_way("server")
    [c] = analyze(cap.segments).connections
    assert (c.client, c.close.initiator) == ("192.0.2.9:7000", "server")


def test_streaming_equals_batch_and_finish_is_idempotent() -> None:
    r1, _fr, cap = lost_final_ack()
    a = Analyzer("linux")
    for s in cap.segments:
        a.feed(s)
    r2 = a.finish()
    assert r2.to_dict() == r1.to_dict() and a.finish() is r2
    assert r2.segments == len(cap.segments) and r2.packets == cap.segments[-1].frame


def test_findings_appear_in_frame_notes() -> None:
    r, fr, cap = lost_final_ack()
    notes = frame_notes(r, cap.segments[0].ts_s)
    assert any(n.startswith("fin-retransmitted:") for n in notes[fr["retx"]])
    assert any("client's TIME_WAIT restarts" in n for n in notes[fr["retx"]])
    last = [t for t in r.connections[0].transitions if t.side == "server"][-1]
    assert (last.frame, last.to_state) == (fr["reack"], TcpState.CLOSED)   # the lost ACK did not close it


def test_detail_false_keeps_the_contract_but_no_timelines() -> None:
    r_full, _fr, cap = lost_final_ack()
    r = analyze(cap.segments, detail=False)
    c = r.connections[0]
    assert c.steps == () and c.roles == () and c.transitions == ()
    full = r_full.to_dict()
    slim = r.to_dict()
    for key in ("close", "time_wait", "incarnation", "first_frame", "last_frame"):
        assert slim["connections"][0][key] == full["connections"][0][key]
    assert slim["findings"] == full["findings"]
