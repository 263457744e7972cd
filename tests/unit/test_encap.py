"""The analyzer's reach (issue 12 class 12): encapsulations (lab.pcap.encap) and IP fragment reassembly
(lab.pcap.frag), on the small captures of tests/data/encap: built with scapy by build.py there, plus two
from this machine's kernel: nflog-kernel.pcap (loopback TCP logged by `iptables -j NFLOG`, captured with
`tcpdump -i nflog:5`; nflog-kernel.sh) and vxlan-kernel.pcap (TCP over a kernel VXLAN whose outer IPv4 the
kernel fragments; vxlan-kernel.sh). Every file's segments must agree with tshark's; the compiled and
the plain walk must agree with CaptureReader (the judges of test_fastdecode)."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw, raw

from lab.core.tracker import analyze
from lab.pcap import encap, frag, readers
from lab.pcap.frag import Reassembler
from lab.pcap.readers import CaptureReader, decode_frame
from tests.unit.test_fastdecode import _in_pure_subprocess, assert_same
from tests.unit.test_readers import tshark_rows

DATA = Path(__file__).resolve().parents[1] / "data" / "encap"
FILES = sorted(DATA.glob("*.pcap"))
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (setup.sh installs it)")

# tshark 4.0 guesses an MPLS Ethernet pseudowire's control word wrongly both ways; tell it what each label is
TSHARK_OPTS = {"mpls.pcap": ["-d", "mpls.label==400,pwethcw", "-d", "mpls.label==500,pwethnocw"]}

# file -> (packets, TCP segments, skipped): what each capture holds (build.py), so the test stands without tshark
EXPECT = {
    "ayiya.pcap": (9, 8, {"non-tcp": 1}),
    "erspan.pcap": (8, 8, {}),
    "fragments.pcap": (23, 8, {"ip-fragment-reassembled": 12, "ip-fragment": 3}),
    "geneve.pcap": (9, 8, {"non-tcp": 1}),
    "gre-udp.pcap": (9, 8, {"non-tcp": 1}),
    "mpls.pcap": (17, 16, {"non-tcp": 1}),
    "nflog-be.pcap": (4, 4, {}),
    "nflog-kernel.pcap": (20, 20, {}),
    "nflog.pcap": (8, 8, {}),
    "pbb.pcap": (8, 8, {}),
    "pppoe.pcap": (9, 8, {"non-ip": 1}),
    "teredo.pcap": (5, 4, {"non-tcp": 1}),
    "vntag.pcap": (12, 12, {}),
    "vxlan-kernel.pcap": (53, 36, {"non-tcp": 9, "non-ip": 2, "ip-fragment-reassembled": 6}),
    "vxlan.pcap": (14, 13, {"non-tcp": 1}),
}

INNER = {"192.0.2.1", "198.51.100.2", "2001:db8::1", "2001:db8:1::2", "127.0.0.1", "::1",
         "203.0.113.1", "203.0.113.2", "2001:db8:1::1"}


def _rows(path: Path) -> list[tuple[int, str, int, int, int, int]]:
    return [(s.frame, s.src_ip, s.sport, s.dport, s.seq, s.payload_len) for s in CaptureReader(path)]


def test_every_file_is_expected() -> None:
    assert sorted(p.name for p in FILES) == sorted(EXPECT)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_counts_and_innermost_tuple(path: Path) -> None:
    reader = CaptureReader(path)
    segs = list(reader)
    packets, tcp, skipped = EXPECT[path.name]
    assert (reader.stats.packets, reader.stats.tcp_segments, reader.stats.skipped) == (packets, tcp, skipped)
    assert packets == tcp + sum(skipped.values())
    assert {s.src_ip for s in segs} <= INNER and {s.dst_ip for s in segs} <= INNER   # never the tunnel's


@needs_tshark
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_segments_agree_with_tshark(path: Path) -> None:
    rows = tshark_rows(path, ["frame.number", "ip.src", "ipv6.src", "tcp.srcport", "tcp.dstport", "tcp.seq_raw",
                              "tcp.len"], "tcp", TSHARK_OPTS.get(path.name, []))
    want = [(int(fr), a6 or a4, int(sp), int(dp), int(seq), int(ln)) for fr, a4, a6, sp, dp, seq, ln in rows]
    assert _rows(path) == want


def test_compiled_and_plain_walks_agree() -> None:
    """feed_file (compiled when built) == CaptureReader, here and with the .py sources (TWLAB_PURE=1)."""
    assert_same(FILES)
    assert _in_pure_subprocess(FILES) == []


def test_fragments_file_datagrams() -> None:
    """In order, out of order, overlapping (first wins), IPv6, GTP-U with its outer IPv4 fragmented; the
    datagram missing its last piece gives nothing and its 3 pieces are counted as ip-fragment."""
    reader = CaptureReader(DATA / "fragments.pcap")
    segs = list(reader)
    assert reader.stats.reassembled == 5
    data = [(s.frame, s.sport, s.seq, s.payload_len) for s in segs if s.payload_len]
    assert data == [(6, 40001, 1001, 2000), (10, 40001, 3001, 2000), (14, 40001, 5001, 1200),
                    (20, 40002, 1001, 1500), (22, 5060, 9, 1500)]
    gtp = next(s for s in segs if s.sport == 5060)
    assert (gtp.src_ip, gtp.dst_ip) == ("2001:db8::1", "2001:db8:1::2")   # the inner tuple, not the tunnel's


def test_nflog_kernel_capture_closes() -> None:
    """Real kernel output: loopback IPv4 and IPv6 connections logged by iptables -j NFLOG, both closed by FIN."""
    rep = analyze(CaptureReader(DATA / "nflog-kernel.pcap"))
    assert [(c.close.kind, c.close.initiator) for c in rep.connections] == [("three-way", "client")] * 2
    assert [c.server for c in rep.connections] == ["127.0.0.1:8080", "[::1]:8080"]


def test_skip_reasons_are_the_readers() -> None:
    assert (encap.TRUNC, encap.NON_IP, encap.NON_TCP, encap.MALFORMED) == (
        readers.TRUNC, readers.NON_IP, readers.NON_TCP, readers.MALFORMED)
    assert frag.DROPPED == readers.FRAGMENT
    assert encap.LINKTYPE_NFLOG in readers.SUPPORTED_LINKTYPES


# --- the reassembler on its own --------------------------------------------------------------------------

def _v4_pieces(payload_len: int = 1400, size: int = 400, ident: int = 9) -> tuple[bytes, list[bytes]]:
    body = (bytes(range(256)) * (payload_len // 256 + 1))[:payload_len]
    dg = IP(src="192.0.2.1", dst="198.51.100.2", id=ident) / TCP(sport=1, dport=2, seq=7) / Raw(body)
    return raw(dg), [raw(p) for p in fragment(dg, fragsize=size)]


def _feed(r: Reassembler, pieces: list[bytes], ts: float = 0.0) -> list[bytes | str]:
    return [r.ipv4(p, 0, len(p), ts) for p in pieces]


def test_out_of_order_gives_the_datagram_once() -> None:
    whole, pieces = _v4_pieces()
    skipped: dict[str, int] = {}
    r = Reassembler(skipped)
    order = [2, 0, 3, 1]
    got = _feed(r, [pieces[i] for i in order])
    assert got[:3] == [frag.PENDING] * 3 and isinstance(got[3], bytes)
    assert got[3][20:] == whole[20:] and IP(got[3]).len == len(whole)
    assert r.reassembled == 1


def test_accounting_moves_pending_pieces() -> None:
    _, pieces = _v4_pieces()
    skipped: dict[str, int] = {}
    r = Reassembler(skipped)
    for p in pieces[:-1]:
        res = r.ipv4(p, 0, len(p), 0.0)
        assert res == frag.PENDING
        skipped[res] = skipped.get(res, 0) + 1   # as the walk does
    assert skipped == {frag.PENDING: 3}
    assert isinstance(r.ipv4(pieces[-1], 0, len(pieces[-1]), 0.0), bytes)
    assert skipped == {frag.MERGED: 3}


def test_overlap_first_wins() -> None:
    whole, pieces = _v4_pieces(800)
    later = bytearray(pieces[1])
    later[20:] = b"Z" * (len(later) - 20)
    r = Reassembler({})
    got = _feed(r, [pieces[1], bytes(later), pieces[0], pieces[2]])
    assert got[:3] == [frag.PENDING] * 3 and isinstance(got[3], bytes)
    assert got[3][20:] == whole[20:]


def test_timeout_and_finish_drop() -> None:
    _, pieces = _v4_pieces(ident=1)
    _, others = _v4_pieces(ident=2)
    skipped: dict[str, int] = {}
    r = Reassembler(skipped, timeout_s=30.0)
    for p in pieces[:2]:
        skipped[frag.PENDING] = skipped.get(frag.PENDING, 0) + 1
        assert r.ipv4(p, 0, len(p), 100.0) == frag.PENDING
    skipped[frag.PENDING] += 1
    assert r.ipv4(others[0], 0, len(others[0]), 131.0) == frag.PENDING   # 31 s later: the first one expires
    assert skipped == {frag.DROPPED: 2, frag.PENDING: 1}
    assert r.ipv4(pieces[2], 0, len(pieces[2]), 131.0) == frag.PENDING   # a new, incomplete datagram
    skipped[frag.PENDING] += 1
    r.finish()
    assert skipped == {frag.DROPPED: 4}


def test_bounds_evict_the_oldest() -> None:
    skipped: dict[str, int] = {}
    r = Reassembler(skipped, max_pending=4)
    for ident in range(10):
        p = _v4_pieces(ident=ident)[1][0]
        skipped[frag.PENDING] = skipped.get(frag.PENDING, 0) + 1
        r.ipv4(p, 0, len(p), 0.0)
    assert len(r.pending) == 4 and skipped == {frag.PENDING: 4, frag.DROPPED: 6}


def test_contradicting_last_piece_and_snaplen_cut_are_dropped() -> None:
    _, pieces = _v4_pieces(800)
    r = Reassembler({})
    assert r.ipv4(pieces[-1], 0, len(pieces[-1]), 0.0) == frag.PENDING
    moved = IP(pieces[-1])
    moved.frag += 1
    bad = raw(moved)
    assert r.ipv4(bad, 0, len(bad), 0.0) == frag.DROPPED          # a second, different end
    cut = pieces[0][:100]
    assert r.ipv4(cut, 0, len(cut), 0.0) == frag.DROPPED          # not all its bytes were captured


def test_ipv6_atomic_fragment_is_just_a_packet() -> None:
    pkt = raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=3, m=0, offset=0)
              / TCP(sport=1, dport=2, seq=5))
    seg = decode_frame(101, pkt, 1, 0, Reassembler({}))
    assert seg is not None and seg.seq == 5


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.integers(min_value=1, max_value=60), st.randoms())
def test_any_order_any_size_reassembles_exactly(payload_len: int, size8: int, rnd: random.Random) -> None:
    whole, pieces = _v4_pieces(payload_len, size8 * 8)
    pieces = [*pieces, pieces[rnd.randrange(len(pieces))]]   # one duplicate
    rnd.shuffle(pieces)
    r = Reassembler({})
    out = [x for x in _feed(r, pieces) if isinstance(x, bytes)]
    assert len(out) >= 1 and out[0][20:] == whole[20:]
    assert struct.unpack("!H", out[0][2:4])[0] == len(whole)


def test_live_analysis_reassembles_across_batches() -> None:
    """analyze -i: fragments held from one take() to the next give the file walk's segments."""
    from lab.analysis.live import LiveRun
    from lab.core.tracker import Analyzer
    from lab.pcap.readers import iter_frames

    path = DATA / "fragments.pcap"
    frames = [(f.ts_ns, f.data, f.orig_len) for f in iter_frames(path)]

    class Source:
        linktype = 1

        def __init__(self) -> None:
            self.batches = [frames[i:i + 3] for i in range(0, len(frames), 3)]

        def take(self) -> list[tuple[int, bytes, int]]:
            return self.batches.pop(0) if self.batches else []

        def stop(self) -> None:
            pass

    fed: list[tuple[int, int, int]] = []

    class Rec(Analyzer):
        def feed(self, seg: object) -> None:
            fed.append((seg.frame, seg.seq, seg.payload_len))  # type: ignore[attr-defined]

    src = Source()
    clock = iter(range(1000))
    run = LiveRun(src, duration_s=len(src.batches) + 1, clock=lambda: float(next(clock)))
    try:
        a = Rec()
    except TypeError:   # a compiled Analyzer cannot be subclassed; the stats still tell
        a = Analyzer()
    stats = run(a, lambda: None)
    assert stats.reassembled == 5 and stats.tcp_segments == 8
    if type(a) is not Analyzer:
        assert fed == [(s.frame, s.seq, s.payload_len) for s in CaptureReader(path)]


def test_vxlan_kernel_capture_fragments() -> None:
    """Real kernel output: full-sized inner segments ride in outer IPv4 fragments (UDP 4789); each is
    reassembled and both connections (inner IPv4 and IPv6) close by the client's FIN."""
    reader = CaptureReader(DATA / "vxlan-kernel.pcap")
    rep = analyze(reader)
    assert reader.stats.reassembled == 6
    assert [(c.close.kind, c.close.initiator) for c in rep.connections] == [("three-way", "client")] * 2
    assert [c.server for c in rep.connections] == ["203.0.113.2:8080", "[2001:db8:1::2]:8080"]
    assert sum(1 for s in CaptureReader(DATA / "vxlan-kernel.pcap") if s.payload_len >= 1400) == 6


@pytest.mark.parametrize("port", [40001, 40002, 5060])
def test_filtered_copy_keeps_every_piece_of_a_kept_datagram(port: int) -> None:
    """verify --port reads a copy of the kept packets: a reassembled segment brings all its fragments, so the
    copy gives the same segments (and tshark can reassemble them too)."""
    from lab.cli import _filtered_copy
    from lab.pcap.filters import SegmentFilter

    path = DATA / "fragments.pcap"
    filt = SegmentFilter(ports=(port,))
    want = [(s.seq, s.payload_len, s.flags) for s in CaptureReader(path) if port in (s.sport, s.dport)]
    with _filtered_copy(path, filt) as copy:
        reader = CaptureReader(copy)
        got = [(s.seq, s.payload_len, s.flags) for s in reader]
        assert got == want
        assert reader.stats.skipped.get("ip-fragment", 0) == 0   # no piece left without its datagram
        if TSHARK:
            rows = tshark_rows(copy, ["tcp.seq_raw", "tcp.len"])
            assert [(int(a), int(b)) for a, b in rows] == [(s, n) for s, n, _ in want]


_FRAMES = [(f.linktype, f.data) for p in FILES for f in readers.iter_frames(p)]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_FRAMES) - 1), st.lists(st.tuples(st.integers(0, 4095),
       st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 4096))
def test_damaged_packets_only_fail_as_the_walk_expects(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    """Any byte of any test packet changed (and the packet cut anywhere): the decoder gives a segment or a
    skip reason, or raises only what the walks turn into `malformed` (struct.error, IndexError)."""
    lt, data = _FRAMES[which]
    buf = bytearray(data)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    pkt = bytes(buf[:max(1, len(buf) - cut % len(buf))])
    r = Reassembler({})
    for frame in (1, 2):   # twice: the second may complete a datagram with the first
        try:
            readers._decode(lt, pkt, 0, len(pkt), frame, 0.0, (), r)
        except (struct.error, IndexError):
            pass
