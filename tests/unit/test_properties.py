"""Property tests: random valid close interleavings from a model; the analyzer must recover who closed first,
the close kind, which sides hold TIME_WAIT and the loss findings, whatever the ISNs (wraparound included),
data sizes, timestamps and loss pattern."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lab.core.model import Segment
from lab.core.narrate import frame_notes
from lab.core.tracker import analyze
from tests.unit.synth import A, Capture, F, Flow, P

U32 = st.integers(min_value=0, max_value=(1 << 32) - 1)
NEAR_WRAP = st.integers(min_value=(1 << 32) - 3000, max_value=(1 << 32) - 1)


@dataclass
class Plan:
    first: str
    mode: str               # four-way | three-way | simultaneous
    cisn: int
    sisn: int
    ts: bool
    pre_data: list[tuple[str, int]]
    after_fin_data: int     # segments the second side sends after ACKing the first FIN (half-close)
    lose_final: int         # how many final ACKs are lost (each followed by a FIN retransmission)
    lost_on_wire: bool      # the lost ACK was captured (lost after the capture point) or not
    fin_retx_first: bool    # the first FIN is retransmitted before the peer ACKs it


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    mode = draw(st.sampled_from(["four-way", "three-way", "simultaneous"]))
    isn = st.one_of(U32, NEAR_WRAP)
    return Plan(
        first=draw(st.sampled_from(["client", "server"])),
        mode=mode,
        cisn=draw(isn), sisn=draw(isn), ts=draw(st.booleans()),
        pre_data=draw(st.lists(st.tuples(st.sampled_from(["client", "server"]), st.integers(1, 3000)), max_size=5)),
        after_fin_data=draw(st.integers(0, 3)) if mode == "four-way" else 0,
        lose_final=draw(st.integers(0, 2)) if mode != "simultaneous" else 0,
        lost_on_wire=draw(st.booleans()),
        fin_retx_first=draw(st.booleans()) if mode != "simultaneous" else False,
    )


def build(p: Plan) -> tuple[Capture, dict[str, list[int]]]:
    cap = Capture()
    f = cap.flow(cisn=p.cisn, sisn=p.sisn, ts=p.ts)
    f.handshake()
    for side, n in p.pre_data:
        f.data(side, n)
        f.ack(Flow.other(side))
    first, second = p.first, Flow.other(p.first)
    marks: dict[str, list[int]] = {"fin_retx": [], "final_on_wire": []}
    if p.mode == "simultaneous":
        f.simultaneous(first)
        return cap, marks
    fin_m = f.fin(first, deliver=not p.fin_retx_first)
    if p.fin_retx_first:
        f.send(first, F | A, seq=fin_m.seq, dt=0.2)
    if p.mode == "four-way":
        f.ack(second)
        for _ in range(p.after_fin_data):
            f.data(second, 500)
            f.ack(first)
        fin_n = f.fin(second)
    else:
        fin_n = f.fin(second)           # carries ACK M+1
    for _ in range(p.lose_final):
        ack = f.ack(first, deliver=False, capture=p.lost_on_wire)
        if p.lost_on_wire:
            marks["final_on_wire"].append(ack.frame)
        retx = f.send(second, F | A, seq=fin_n.seq, dt=0.2)
        marks["fin_retx"].append(retx.frame)
    f.ack(first)
    return cap, marks


@settings(max_examples=300, deadline=None)
@given(plans())
def test_close_is_recovered(p: Plan) -> None:
    cap, marks = build(p)
    r = analyze(cap.segments)
    assert len(r.connections) == 1
    [c] = r.connections
    if p.mode == "simultaneous":
        assert (c.close.kind, c.close.initiator) == ("simultaneous", "both")
        assert sorted(w.side for w in c.time_wait) == ["client", "server"]
        assert r.findings == ()
        return
    expect_kind = "half-close" if p.after_fin_data else p.mode
    assert (c.close.kind, c.close.initiator) == (expect_kind, p.first)
    assert [w.side for w in c.time_wait] == [p.first]
    w = c.time_wait[0]
    assert w.end_ts >= w.start_ts + 60.0 - 1e-6
    got = {f.kind: f for f in r.findings}
    retx_frames = {fr for f in r.findings if f.kind == "fin-retransmitted" for fr in f.frames[1:]}
    expected_retx = set(marks["fin_retx"])
    if p.fin_retx_first:
        assert "fin-retransmitted" in got
    assert expected_retx <= retx_frames
    lost = [f for f in r.findings if f.kind == "final-ack-lost"]
    assert sorted(f.frames[0] for f in lost) == marks["final_on_wire"]
    assert set(got) <= {"fin-retransmitted", "final-ack-lost"}
    # the side that closed second ends CLOSED, the first closer in TIME_WAIT
    last = {t.side: t.to_state.value for t in c.transitions}
    assert last == {p.first: "TIME_WAIT", Flow.other(p.first): "CLOSED"}
    # each TIME_WAIT restart is a retransmitted FIN's arrival (Linux)
    # (TIME_WAIT starts at the first final ACK on the wire; a lost one not on the wire proves nothing)
    assert set(w.restarts) == (set(marks["fin_retx"]) if p.lost_on_wire else set())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(plans(), st.floats(0.0, 200.0)), min_size=2, max_size=4))
def test_incarnations_and_reuse_findings(items: list[tuple[Plan, float]]) -> None:
    """Several incarnations on one four-tuple: one connection each, in order, and a reuse finding exactly
    for each new SYN after a close that left TIME_WAIT (in or after the window by the gap)."""
    cap = Capture()
    expected: list[str] = []
    prev_tw_end: float | None = None
    isns = [p.cisn for p, _ in items]
    assume(all(a != b for a, b in itertools.pairwise(isns)))   # the same ISN again is a duplicate SYN
    for i, (p, gap) in enumerate(items):
        if i:
            cap.t += gap
        sub, _ = build(p)
        base_frame = cap.frame
        offset = cap.t - sub.segments[0].ts_s + 0.001
        for s in sub.segments:
            cap.add(s._replace(frame=s.frame + base_frame, ts_s=s.ts_s + offset))
        cap.frame += len(sub.segments)
        cap.t = cap.segments[-1].ts_s
        syn_ts = sub.segments[0].ts_s + offset
        if prev_tw_end is not None:
            expected.append("reuse-in-time-wait" if syn_ts <= prev_tw_end else "reuse-after-time-wait")
        r_one = analyze(sub.segments)
        prev_tw_end = max(w.end_ts for w in r_one.connections[0].time_wait) + offset
    r = analyze(cap.segments)
    assert [c.incarnation for c in r.connections] == list(range(len(items)))
    reuse = [f.kind for f in r.findings if f.kind.startswith("reuse")]
    assert reuse == expected
    assert not [f for f in r.findings if f.kind == "delayed-duplicate"]


SEG = st.tuples(
    st.integers(0, 3),                                    # which endpoint pair / direction
    st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x01, 0x03, 0x06, 0x00, 0x3F]),
    st.one_of(st.integers(0, 50), NEAR_WRAP, U32),        # seq
    st.one_of(st.integers(0, 50), U32),                   # ack
    st.integers(0, 40),                                   # payload
    st.one_of(st.none(), st.integers(0, 10), U32),        # tsval
    st.floats(0, 100),                                    # time step
)

SOUP_ENDS = [("10.0.0.1", 1000, "10.0.0.2", 80), ("10.0.0.2", 80, "10.0.0.1", 1000),
             ("10.0.0.1", 1001, "10.0.0.2", 80), ("10.0.0.2", 80, "10.0.0.1", 1001)]


def soup_segments(soup: list[tuple[int, int, int, int, int, int | None, float]]) -> list[Segment]:
    """SEG draws as segments on two four-tuples, one frame each, time steps added up."""
    t = 1000.0
    segs = []
    for i, (e, flags, seq, ack, plen, tsval, dt) in enumerate(soup, start=1):
        t += dt
        si, sp, di, dp = SOUP_ENDS[e]
        segs.append(Segment(i, t, si, sp, di, dp, seq, ack, flags, 1000, plen, tsval, 0 if tsval is not None else None))
    return segs


@settings(max_examples=300, deadline=None)
@given(st.lists(SEG, max_size=40), st.sampled_from(["linux", "rfc793"]))
def test_any_segment_soup_gives_a_consistent_report(soup: list[tuple[int, int, int, int, int, int | None, float]],
                                                    profile: str) -> None:
    """Garbage in (random flags, sequence numbers, timestamps on two four-tuples): no exception, and the
    report keeps its invariants."""
    from lab.core.report import Report

    segs = soup_segments(soup)
    r = analyze(segs, profile=profile)
    ids = {c.id for c in r.connections}
    assert sorted(ids) == list(range(len(ids)))
    seen = set()
    for c in r.connections:
        assert c.first_frame <= c.last_frame
        assert all(c.first_frame <= fr <= c.last_frame for fr in c.close.frames)
        for w in c.time_wait:
            assert w.end_ts >= w.start_ts
        seen.update(range(c.first_frame, c.last_frame + 1))
    assert {s.frame for s in segs} <= seen
    for f in r.findings:
        assert f.connection in ids and f.frames
    d = r.to_dict()
    assert Report.from_dict(d).to_dict() == d
    frame_notes(r, segs[0].ts_s if segs else 0.0)


# --- closes from a model of both endpoints, captured in any causal order ----------------------------------
#
# Two endpoints (RFC 9293 states, Linux's RST checks) exchange segments through a network that delays each
# one at random: a segment passes the capture point after it is sent and before it is delivered, so the
# capture order is any order the causality allows - FINs that cross, a FIN captured after its sender's later
# ACK, ACKs overtaking data. What the endpoints went through is the truth the analyzer must recover.

_EST, _FW1, _FW2, _CW, _CLOSING, _LA, _TW, _CLOSED = ("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT",
                                                      "CLOSING", "LAST_ACK", "TIME_WAIT", "CLOSED")


@dataclass
class _End:
    name: str
    nxt: int
    rcv: int
    plan: str                        # close | react | combined | after_data
    state: str = _EST
    fin_seq: int | None = None
    fin_before_peer_fin: bool = False
    got_fin: bool = False
    was_tw: bool = False
    half_closed: bool = False
    aborted: bool = False
    reset: bool = False
    ooo: dict[int, tuple[int, bool]] | None = None


@dataclass
class _Net:
    cap: Capture
    f: Flow
    rnd: object
    max_delay: float
    events: list[tuple[float, int, str, object]]
    n: int = 0
    captured: list[tuple[float, int, object]] | None = None
    rst_accepted: str | None = None
    fin_acked: set[str] | None = None


def _model_close(p: dict[str, object], rnd: object) -> tuple[list[object], dict[str, object]]:
    """Run the model; the captured segments in capture order and the truth."""
    import heapq
    import random

    from lab.core.model import Segment
    assert isinstance(rnd, random.Random)
    cap = Capture()
    f = cap.flow(cisn=int(p["cisn"]), sisn=int(p["sisn"]))    # type: ignore[call-overload]
    f.handshake()
    f.data("client", 100)
    f.ack("server")
    t0 = cap.t + 0.01
    c, s = f.ends["client"], f.ends["server"]
    ends = {"client": _End("client", c.nxt, s.nxt, str(p["client"])),
            "server": _End("server", s.nxt, c.nxt, str(p["server"]))}
    for e in ends.values():
        e.ooo = {}
    events: list[tuple[float, int, str, object]] = []
    count = [0]
    out: list[tuple[float, int, Segment]] = []
    fin_acked: set[str] = set()
    rst_accepted: list[str] = []
    delay = float(p["delay"])   # type: ignore[arg-type]

    def push(t: float, kind: str, what: object) -> None:
        count[0] += 1
        heapq.heappush(events, (t, count[0], kind, what))

    def send(e: _End, now: float, flags: int, plen: int = 0) -> None:
        other = ends[Flow.other(e.name)]
        peer_end = f.ends[other.name]
        me = f.ends[e.name]
        ack = e.rcv if flags & A else 0
        seg = Segment(0, 0.0, me.ip, me.port, peer_end.ip, peer_end.port, e.nxt, ack, flags, 65535, plen)
        e.nxt = (e.nxt + plen + (1 if flags & F else 0)) & 0xFFFFFFFF
        t_cap = now + rnd.uniform(0.0001, delay)
        out.append((t_cap, count[0], seg))
        push(t_cap + rnd.uniform(0.0001, delay), "deliver", (other.name, seg))

    def close(e: _End, now: float) -> None:
        if e.aborted or e.state not in (_EST, _CW):
            return
        e.fin_seq = e.nxt
        e.fin_before_peer_fin = not e.got_fin
        e.state = _FW1 if e.state == _EST else _LA
        send(e, now, F | A)

    def deliver(e: _End, seg: Segment, now: float) -> None:
        if e.aborted or e.state == _CLOSED:
            return
        if seg.flags & 0x04:                          # RST: Linux takes seq == rcv_nxt (tcp_reset_check: -1 too)
            if seg.seq == e.rcv or (e.state in (_CW, _CLOSING, _LA) and seg.seq == (e.rcv - 1) & 0xFFFFFFFF):
                e.state, e.reset = _CLOSED, True
                rst_accepted.append(Flow.other(e.name))
            return
        if e.fin_seq is not None and ((seg.ack - e.fin_seq - 1) & 0xFFFFFFFF) < (1 << 31):
            if e.name not in fin_acked:
                fin_acked.add(e.name)
            e.state = {_FW1: _FW2, _CLOSING: _TW, _LA: _CLOSED}.get(e.state, e.state)
        if e.state == _TW:
            e.was_tw = True
        seg_len = seg.payload_len + (1 if seg.flags & F else 0)
        if not seg_len:
            return
        assert e.ooo is not None
        e.ooo[seg.seq] = (seg.payload_len, bool(seg.flags & F))
        fin_now = False
        while e.rcv in e.ooo:
            n, fin = e.ooo.pop(e.rcv)
            e.rcv = (e.rcv + n + (1 if fin else 0)) & 0xFFFFFFFF
            if fin:
                e.got_fin = fin_now = True
                e.state = {_EST: _CW, _FW1: _CLOSING, _FW2: _TW}[e.state]
                e.was_tw = e.was_tw or e.state == _TW
        if fin_now and e.state == _CW and e.plan == "combined":
            close(e, now)                              # FIN + ACK in one segment: three-way
            return
        send(e, now, A)
        if fin_now and e.state == _CW:
            if e.plan == "after_data":
                e.half_closed = True
                send(e, now + 0.0002, P | A, 500)
                push(now + 0.0004, "close", e.name)
            elif e.plan == "react":
                push(now + rnd.uniform(0.0001, delay), "close", e.name)

    for name, e in ends.items():
        if e.plan == "close":
            push(t0 + float(p[f"{name}_at"]), "close", name)    # type: ignore[arg-type]
    if p["abort"]:
        push(t0 + float(p["abort_at"]), "abort", p["abort"])    # type: ignore[arg-type]
    while events:
        now, _n, kind, what = heapq.heappop(events)
        if kind == "close":
            close(ends[str(what)], now)
        elif kind == "abort":
            e = ends[str(what)]
            if not e.aborted and e.state in (_EST, _CW):       # an application can abort before it closes
                send(e, now, 0x04)
                e.aborted = True
                e.state = _CLOSED
        else:
            to, seg = what    # type: ignore[misc]
            deliver(ends[to], seg, now)
    out.sort(key=lambda x: (x[0], x[1]))
    segs = list(cap.segments)
    for i, (t, _n, seg) in enumerate(out, start=len(segs) + 1):
        segs.append(seg._replace(frame=i, ts_s=t))
    # whose FIN an ACK on the wire covers (what the analyzer can see)
    acked_on_wire = {e.name for e in ends.values() if e.fin_seq is not None and any(
        x.flags & A and (x.src_ip, x.sport) != (f.ends[e.name].ip, f.ends[e.name].port)
        and ((x.ack - e.fin_seq - 1) & 0xFFFFFFFF) < (1 << 31) for _t, _n, x in out)}
    truth = {"ends": ends, "fin_acked": acked_on_wire, "rst_accepted": rst_accepted}
    return segs, truth


@st.composite
def model_plans(draw: st.DrawFn) -> dict[str, object]:
    first = draw(st.sampled_from(["client", "server"]))
    second = Flow.other(first)
    p: dict[str, object] = {first: "close", f"{first}_at": 0.0,
                            second: draw(st.sampled_from(["close", "react", "combined", "after_data"])),
                            f"{second}_at": draw(st.floats(0.0, 0.004)),
                            "delay": draw(st.sampled_from([0.0005, 0.002, 0.01])),
                            "cisn": draw(st.one_of(U32, NEAR_WRAP)), "sisn": draw(st.one_of(U32, NEAR_WRAP)),
                            "abort": draw(st.sampled_from([None, None, "client", "server"])),
                            "abort_at": draw(st.floats(0.0, 0.02))}
    return p


@settings(max_examples=300, deadline=None)
@given(model_plans(), st.randoms(use_true_random=False))
def test_closes_from_a_model_of_both_endpoints(p: dict[str, object], rnd: object) -> None:
    """Issue 12: crossed FINs arriving in any order, RSTs at every point of a close, half-closes with data
    before/after the ACK of the first FIN: kind, initiator and TIME_WAIT sides as the endpoints lived them."""
    segs, truth = _model_close(p, rnd)
    r = analyze(segs)
    assert len(r.connections) == 1
    [c] = r.connections
    ends: dict[str, _End] = truth["ends"]           # type: ignore[assignment]
    rsts: list[str] = truth["rst_accepted"]         # type: ignore[assignment]
    both_acked = truth["fin_acked"] == {"client", "server"}
    if any(e.aborted for e in ends.values()):
        if rsts and not both_acked:
            assert (c.close.kind, c.close.initiator) == ("rst", rsts[0]), (p, c.close)
        return        # an ignored RST leaves the model's endpoints where a kernel would answer with more RSTs
    fins = [e for e in ends.values() if e.fin_seq is not None]
    assert len(fins) == 2
    crossed = all(e.fin_before_peer_fin for e in fins)
    if crossed:
        assert (c.close.kind, c.close.initiator) == ("simultaneous", "both"), (p, c.close)
    else:
        first = next(e.name for e in fins if e.fin_before_peer_fin)
        second = ends[Flow.other(first)]
        kind = "half-close" if second.half_closed else "three-way" if second.plan == "combined" else "four-way"
        assert (c.close.kind, c.close.initiator) == (kind, first), (p, c.close)
    assert sorted(w.side for w in c.time_wait) == sorted(e.name for e in ends.values() if e.was_tw), (p, c)
