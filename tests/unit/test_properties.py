"""Property tests: random valid close interleavings from a model; the analyzer must recover who closed first,
the close kind, which sides hold TIME_WAIT and the loss findings, whatever the ISNs (wraparound included),
data sizes, timestamps and loss pattern."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lab.core.narrate import frame_notes
from lab.core.tracker import analyze
from tests.unit.synth import A, Capture, F, Flow

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


@settings(max_examples=300, deadline=None)
@given(st.lists(SEG, max_size=40), st.sampled_from(["linux", "rfc793"]))
def test_any_segment_soup_gives_a_consistent_report(soup: list[tuple[int, int, int, int, int, int | None, float]],
                                                    profile: str) -> None:
    """Garbage in (random flags, sequence numbers, timestamps on two four-tuples): no exception, and the
    report keeps its invariants."""
    from lab.core.model import Segment
    from lab.core.report import Report

    ends = [("10.0.0.1", 1000, "10.0.0.2", 80), ("10.0.0.2", 80, "10.0.0.1", 1000),
            ("10.0.0.1", 1001, "10.0.0.2", 80), ("10.0.0.2", 80, "10.0.0.1", 1001)]
    t = 1000.0
    segs = []
    for i, (e, flags, seq, ack, plen, tsval, dt) in enumerate(soup, start=1):
        t += dt
        si, sp, di, dp = ends[e]
        segs.append(Segment(i, t, si, sp, di, dp, seq, ack, flags, 1000, plen, tsval, 0 if tsval is not None else None))
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
