"""What the analyzer keeps of a four-tuple after its connection is finished (issue 15 item 19, issue 18 item 3):
a small fixed-size history in the four-tuple's own entry, not the finished connection. The reuse, delayed-
duplicate and stale-answer checks of a later incarnation must reach the same verdicts from that history as from
the whole finished connection (the design before), and the history must stay small."""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import accel
from lab.core.model import Segment
from lab.core.tracker import Analyzer
from lab.pcap.readers import CaptureReader
from tests.unit.synth import A, Capture, Flow, P, S
from tests.unit.test_properties import SEG, build, plans, soup_segments

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = sorted((ROOT / "captures").glob("*.pcapng"))
CORPUS_FILES = ["deepflow__l4-source-port-reuse.pcap", "zeek__echo-connections.pcap.gz", "zeek__mysql__auth.pcap",
                "zeek__tcp__rst-inject-rae.pcap", "arkime__tcp-reassembly-synthetic.pcap"]
HISTORY_BYTES_COMPILED = 350     # per four-tuple, its dict entry and key included (measured ~275; was ~1,975)
HISTORY_BYTES_PURE = 600         # interpreted, its ints and floats are objects of their own (~440; was ~2,400)


def _keeping_whole_connections() -> ModuleType:
    """The tracker from its .py source, patched back to the design before: a four-tuple keeps its whole
    finished connection, which a later incarnation reads as its previous one."""
    spec = importlib.util.spec_from_file_location("_tracker_keeping_whole", accel.source_path("lab.core.tracker"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kept: dict[int, Any] = {}

    def remember(self: Any, conn: Any) -> None:
        kept[id(self)] = conn              # the analyzer keeps every _Tuple alive: ids stay unique
        self.h_id = conn.id

    def recall(self: Any) -> Any:
        return kept[id(self)]

    mod._Tuple.remember = remember
    mod._Tuple.recall = recall
    return mod


WHOLE = _keeping_whole_connections()


def _eager(make: Any, segs: list[Segment], profile: str, time_wait_s: float | None) -> dict[str, Any]:
    """The report when every connection that is over is finished before the next segment (the sweep that
    normally runs every few thousand segments), so later incarnations meet only the four-tuple's history."""
    a = make(profile, time_wait_s)
    swept = float("-inf")
    for s in segs:
        if s.ts_s - swept >= 0.05:
            a._sweep(s.ts_s)
            swept = s.ts_s
        a.feed(s)
    return dict(a.finish().to_dict())


def _same_from_history(segs: list[Segment], profile: str = "linux",
                       time_wait_s: float | None = None) -> dict[str, Any]:
    got = _eager(Analyzer, segs, profile, time_wait_s)
    assert got == _eager(WHOLE.Analyzer, segs, profile, time_wait_s)
    return got


def _closed_then_back(gap_s: float) -> tuple[Capture, Flow]:
    """Connection 0: a four-way close from the client (client TIME_WAIT); `gap_s` later the same four-tuple."""
    cap = Capture()
    old = cap.flow(cisn=1000, sisn=50000, ts=True)
    old.handshake()
    old.data("client", 3000)
    old.ack("server")
    old.data("server", 2000)
    old.ack("client")
    old.four_way("client")
    cap.t += gap_s
    return cap, old


def test_reuse_after_time_wait_from_history() -> None:
    cap, old = _closed_then_back(90.0)
    new = cap.flow(cisn=old.client_nxt - 5, sisn=900000, ts=True)
    syn, *_ = new.handshake()
    d = _same_from_history(cap.segments)
    [fd] = d["findings"]
    assert (fd["kind"], fd["frames"], fd["previous_connection"]) == ("reuse-after-time-wait",
                                                                             [syn.frame], 0)
    assert 29.0 < fd["elapsed_s"] < 31.0          # 90 s after the close, the window ended at 60 s


def test_delayed_duplicate_from_history() -> None:
    cap, old = _closed_then_back(90.0)
    new = cap.flow(cisn=old.client_nxt + 100_000, sisn=900000)
    new.handshake()
    new.data("client", 100)
    # a data segment of the old incarnation's client, long delayed in the network
    cap.frame += 1
    cap.t += 0.01
    dup = cap.add(Segment(cap.frame, cap.t, "192.0.2.1", 40000, "192.0.2.2", 80, 1001 + 1000, 50001, int(A),
                          65535, 500, None, None))
    # and one of the old server's
    new.data("server", 100)
    cap.frame += 1
    cap.t += 0.01
    dup2 = cap.add(Segment(cap.frame, cap.t, "192.0.2.2", 80, "192.0.2.1", 40000, 50001 + 500, 1001 + 3000, int(A),
                           65535, 300, None, None))
    d = _same_from_history(cap.segments)
    found = [f for f in d["findings"] if f["kind"] == "delayed-duplicate"]
    assert [(f["frames"], f["side"]) for f in found] == [([dup.frame], "client"), ([dup2.frame], "server")]
    assert all(f["previous_connection"] == 0 and "incarnation 0 (connection 0)" in f["detail"] for f in found)


def test_delayed_duplicate_by_timestamp_from_history() -> None:
    """A segment inside the new incarnation's sequence space whose timestamp is the old incarnation's."""
    cap, old = _closed_then_back(90.0)
    last = [seg.tsval for seg in cap.segments if seg.sport == 40000 and seg.tsval is not None][-1]
    old_tsval = last - 5                                  # older than the old client's last timestamp
    new = cap.flow(cisn=old.client_nxt + 100_000, sisn=900000, ts=True, cts=old_tsval + 500_000)
    new.handshake()
    new.data("client", 100)
    dup = new.send("client", P | A, 100, seq=new.client_nxt - 100, tsval=old_tsval, advance=False)
    d = _same_from_history(cap.segments)
    found = [f for f in d["findings"] if f["kind"] == "delayed-duplicate"]
    assert [f["frames"] for f in found] == [[dup.frame]] and "timestamp of incarnation 0" in found[0]["detail"]


def test_isn_a_syn_ack_proved_is_kept_when_time_goes_backwards() -> None:
    """The old client's SYN went unseen (its ISN is what the server's SYN-ACK acknowledged); the capture's clock
    then steps back into the client's finished TIME_WAIT and the client sends a SYN with that ISN again."""
    cap = Capture()
    old = cap.flow(cisn=7000, sisn=50000)
    old.send("client", S, capture=False)
    old.send("server", S | A)
    old.ack("client")
    old.four_way("client")
    closed = cap.t
    other = cap.flow(client=("192.0.2.9", 41000))
    cap.t += 100.0
    other.send("client", S)                               # the sweep finishes the old connection here
    cap.t = closed + 10.0
    new = cap.flow(cisn=7000, sisn=90000)
    syn = new.send("client", S)
    d = _same_from_history(cap.segments)
    [fd] = [f for f in d["findings"] if f["kind"] == "reuse-in-time-wait"]
    assert (fd["frames"], fd["verdict"]) == ([syn.frame], "dangerous") and "old connection's ISN" in fd["detail"]


def test_stale_answer_from_history() -> None:
    cap, old = _closed_then_back(90.0)
    new = cap.flow(cisn=old.client_nxt + 100_000, sisn=900000)
    syn = new.send("client", S)
    # the server answers the new SYN with an ACK that SYN_SENT cannot take
    cap.frame += 1
    cap.t += 0.001
    cap.add(Segment(cap.frame, cap.t, "192.0.2.2", 80, "192.0.2.1", 40000, 50001 + 7, syn.seq, int(A), 65535, 0,
                    None, None))
    d = _same_from_history(cap.segments)
    [fd] = [f for f in d["findings"] if f["kind"] == "stale-peer-ack"]
    assert fd["previous_connection"] == 0 and fd["elapsed_s"] > 89.0


@pytest.mark.parametrize("name", [p.name for p in CAPTURES] + CORPUS_FILES)
def test_real_captures_judged_alike_from_history(name: str, corpus: Path) -> None:
    """The gallery's captures and the third-party corpus, with a 1 s TIME_WAIT so that connections are finished
    (and their four-tuples come back to history) within these short captures; and with the profile's own."""
    path = ROOT / "captures" / name if name.endswith(".pcapng") and (ROOT / "captures" / name).exists() \
        else corpus / name
    segs = list(CaptureReader(path))
    for tw in (1.0, None):
        _same_from_history(segs, "linux", tw)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(plans(), st.floats(0.0, 200.0)), min_size=2, max_size=4))
def test_incarnations_judged_alike_from_history(items: list[tuple[Any, float]]) -> None:
    """Closes of every kind on one four-tuple, some incarnations back within the old TIME_WAIT, some after."""
    cap = Capture()
    for i, (p, gap) in enumerate(items):
        if i:
            cap.t += gap
        sub, _ = build(p)
        offset = cap.t - sub.segments[0].ts_s + 0.001
        for s in sub.segments:
            cap.add(s._replace(frame=s.frame + cap.frame, ts_s=s.ts_s + offset))
        cap.frame += len(sub.segments)
        cap.t = cap.segments[-1].ts_s
    _same_from_history(cap.segments)


@settings(max_examples=200, deadline=None)
@given(st.lists(SEG, max_size=40), st.sampled_from(["linux", "rfc793"]))
def test_any_segment_soup_judged_alike_from_history(soup: list[tuple[int, int, int, int, int, int | None, float]],
                                                    profile: str) -> None:
    _same_from_history(soup_segments(soup), profile)


def _distinct(a: Analyzer, n: int) -> None:
    """n four-tuples that never come back, each a handshake and an RST (as benchmarks/synth.py's distinct)."""
    t = 1_700_000_000.0
    srv = "203.0.113.1"
    clients = [f"198.51.100.{1 + k}" for k in range(n // 60_000 + 1)]   # one string each, as the decoder's cache
    for i in range(n):
        k, port = divmod(i, 60_000)
        cl, cp = clients[k], 1025 + port
        cisn, sisn = (i * 7919) & 0xFFFFFFFF, (i * 104729 + 12345) & 0xFFFFFFFF
        a.feed_fields(4 * i + 1, t, cl, cp, srv, 80, cisn, 0, int(S), 65535, 0, -1)
        a.feed_fields(4 * i + 2, t, srv, 80, cl, cp, sisn, cisn + 1, int(S | A), 65535, 0, -1)
        a.feed_fields(4 * i + 3, t, cl, cp, srv, 80, cisn + 1, sisn + 1, int(A), 65535, 0, -1)
        a.feed_fields(4 * i + 4, t, cl, cp, srv, 80, cisn + 1, sisn + 1, 0x14, 65535, 0, -1)
        t += 0.001
        if i % 1024 == 0:
            a.drain()


def test_history_of_a_four_tuple_stays_small() -> None:
    """20 k four-tuples seen once each: once their connections are finished and handed out, what the analyzer
    still holds is their history, a few hundred bytes each (a whole finished connection was ~2 KiB)."""
    n = 20_000
    tracemalloc.start()
    try:
        a = Analyzer(detail=False, keep=False)
        before = tracemalloc.get_traced_memory()[0]
        _distinct(a, n)
        a.finish()
        a.drain()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(a._open) == 0
    bound = HISTORY_BYTES_COMPILED if accel.active() else HISTORY_BYTES_PURE
    assert held / n < bound, f"{held / n:.0f} bytes per four-tuple"
    assert len(a._tuples) == n                   # one entry per four-tuple, whichever way its segments go


def test_connections_open_at_the_end_are_handed_out_in_batches() -> None:
    """finish(on_batch): the records of the connections still open when the capture ends reach a streaming
    caller a few thousand at a time, in id order, not all at once."""
    n = 10_000
    a = Analyzer(detail=False, keep=False)
    _distinct(a, n)                               # 10 s of capture: every connection is still open at its end
    a.drain()
    batches: list[list[int]] = []

    def on_batch() -> None:
        conns, _findings = a.drain()
        batches.append([c.id for c in conns])

    a.finish(on_batch)
    on_batch()
    ids = [i for b in batches for i in b]
    assert ids == list(range(n))
    assert max(len(b) for b in batches) <= 4096
