"""lab.pcap.readers against real tshark: the corpus, byte-level synthetic files of every format and link type,
and damaged input (which must give BadCapture naming the file, never another exception or a hang)."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.packet import Raw, raw

from lab.errors import BadCapture
from lab.pcap import readers
from lab.pcap.readers import CaptureReader, RawFrame, decode_frame, iter_frames, read_segments

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (setup.sh installs it)")


# --- tshark ---------------------------------------------------------------------------------------------

def tshark_rows(path: Path, fields: Sequence[str], display_filter: str = "tcp",
                extra: Sequence[str] = ()) -> list[list[str]]:
    assert TSHARK
    cmd = [TSHARK, "-n", "-r", str(path), *extra, "-Y", display_filter, "-T", "fields", "-E", "occurrence=l"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("\t") for line in out.splitlines()]


def tshark_frames(path: Path, display_filter: str) -> list[int]:
    return [int(r[0]) for r in tshark_rows(path, ["frame.number"], display_filter)]


def tshark_count(path: Path) -> int:
    return len(tshark_rows(path, ["frame.number"], "frame"))


# --- the corpus -----------------------------------------------------------------------------------------

def _readme_packets(corpus: Path) -> dict[str, int]:
    counts = {}
    for line in (corpus / "README.md").read_text().splitlines():
        m = re.match(r"\| `([^`]+)` \|", line)
        if m:
            cells = [c.strip() for c in line.strip("|").split("|")]
            counts[m.group(1)] = int(cells[4])
    return counts


CORPUS_FILES = [
    "arkime__gtp-iphone.pcap", "arkime__tcp-reassembly-synthetic.pcap", "arkime__tcp_handshake_synthetic.pcap",
    "chrissanders__tcp_teardown.pcapng", "deepflow__handshake-error.pcap", "deepflow__l4-source-port-reuse.pcap",
    "deepflow__server-reset.pcap", "deepflow__tcp-n-syn-ack.pcap", "zeek__echo-connections.pcap.gz",
    "zeek__mysql__auth.pcap", "zeek__tcp__fin_retransmission.pcap", "zeek__tcp__rst-inject-rae.pcap",
    "zeek__tls__ocsp-revoked.pcap",
]


def test_corpus_list_is_complete(corpus: Path) -> None:
    assert sorted(_readme_packets(corpus)) == sorted(CORPUS_FILES)
    assert sorted(p.name for p in corpus.iterdir() if p.name != "README.md") == sorted(CORPUS_FILES)


@needs_tshark
@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_matches_tshark(corpus: Path, name: str) -> None:
    path = corpus / name
    reader = CaptureReader(path)
    segs = list(reader)
    assert reader.stats.packets == _readme_packets(corpus)[name]
    assert len(list(iter_frames(path))) == reader.stats.packets
    assert reader.stats.tcp_segments == len(segs)
    assert reader.stats.packets == reader.stats.tcp_segments + sum(reader.stats.skipped.values())

    rows = tshark_rows(path, ["frame.number", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw",
                              "tcp.len", "tcp.options.timestamp.tsval", "tcp.window_size_value",
                              "tcp.options.wscale.shift"])
    assert [s.frame for s in segs] == [int(r[0]) for r in rows]
    assert [(s.sport, s.dport, s.seq, s.ack, s.payload_len, s.window) for s in segs] == \
        [(int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[7])) for r in rows]
    assert [s.tsval for s in segs] == [int(r[6]) if r[6] else None for r in rows]
    assert [s.wscale for s in segs] == [int(r[8]) if r[8] and s.flags & 0x02 else None
                                        for s, r in zip(segs, rows, strict=True)]
    assert [s.frame for s in segs if s.flags & 0x01] == tshark_frames(path, "tcp.flags.fin==1")
    assert [s.frame for s in segs if s.flags & 0x04] == tshark_frames(path, "tcp.flags.reset==1")
    assert [s.frame for s in segs if s.flags & 0x02] == tshark_frames(path, "tcp.flags.syn==1")


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_fast_path_equals_general_decoder(corpus: Path, name: str) -> None:
    # read_segments takes a one-unpack shortcut for plain IPv4/TCP; readers._link always walks the layers
    segs = {s.frame: s for s in read_segments(corpus / name)}
    walked = {}
    for f in iter_frames(corpus / name):
        seg = readers._link(f.linktype, f.data, 0, len(f.data), f.frame, f.ts_ns / 1e9, f.comments)
        if not isinstance(seg, str):
            walked[f.frame] = seg
        assert decode_frame(f.linktype, f.data, f.frame, f.ts_ns) == (None if isinstance(seg, str) else
                                                                      seg._replace(comments=()))
    assert sorted(walked) == sorted(segs)
    for n, seg in segs.items():
        assert seg._replace(ts_s=0.0, comments=()) == walked[n]._replace(ts_s=0.0), n
        assert seg.ts_s == pytest.approx(walked[n].ts_s, abs=1e-6)


def test_pcapng_and_pcap_of_the_same_packets_agree(tmp_path: Path) -> None:
    pkts = [eth(p) for p in _conv() + _conv(mk=v6) + _conv(slow_opts=True) + _conv(ts=None)]
    a = list(read_segments(_write(tmp_path, "a.pcap", pcap([(TS0 + i * 1000, d) for i, d in enumerate(pkts)]))))
    ng = ng_shb() + ng_idb(1, 9) + b"".join(ng_epb(0, TS0 + i * 1000, d) for i, d in enumerate(pkts))
    b = list(read_segments(_write(tmp_path, "b.pcapng", ng)))
    assert len(a) == len(pkts)
    assert [s._replace(ts_s=0.0) for s in a] == [s._replace(ts_s=0.0) for s in b]
    assert [s.ts_s for s in a] == pytest.approx([s.ts_s for s in b], abs=1e-6)


def test_corpus_fin_rst_counts_from_readme(corpus: Path) -> None:
    # the README's FIN/RST columns, independent of a live tshark
    expect = {"zeek__mysql__auth.pcap": (39, 0), "zeek__tcp__rst-inject-rae.pcap": (0, 3),
              "zeek__echo-connections.pcap.gz": (1000, 0), "arkime__gtp-iphone.pcap": (8, 0),
              "arkime__tcp-reassembly-synthetic.pcap": (19, 0), "zeek__tcp__fin_retransmission.pcap": (2, 1)}
    for name, (fins, rsts) in expect.items():
        segs = list(read_segments(corpus / name))
        assert (sum(1 for s in segs if s.flags & 1), sum(1 for s in segs if s.flags & 4)) == (fins, rsts), name


def test_gtp_gives_the_inner_ipv6_tuple(corpus: Path) -> None:
    reader = CaptureReader(corpus / "arkime__gtp-iphone.pcap")
    segs = list(reader)
    assert reader.linktypes == [113]
    ends = {frozenset({(s.src_ip, s.sport), (s.dst_ip, s.dport)}) for s in segs}
    assert ends == {frozenset({("fd00:183:1:1:1886:9040:8605:32b8", 5060), ("fd01::183", 5060)})}
    assert sum(1 for s in segs if s.flags == 0x02) == 4  # four SYNs: the reused tuple
    assert reader.stats.skipped == {"non-tcp": 48}  # the outer-only UDP/other packets


def test_pcapng_comments_and_timestamps(corpus: Path) -> None:
    frames = list(iter_frames(corpus / "chrissanders__tcp_teardown.pcapng"))
    assert [f.frame for f in frames] == [1, 2, 3, 4]
    assert all(isinstance(f, RawFrame) and f.linktype == 1 and f.interface == 0 for f in frames)
    segs = list(read_segments(corpus / "chrissanders__tcp_teardown.pcapng"))
    assert [round(s.ts_s * 1e9) for s in segs] == pytest.approx([f.ts_ns for f in frames], abs=300)


# --- synthetic files: byte-level writers ----------------------------------------------------------------

A4, B4 = "192.0.2.1", "198.51.100.2"
A6, B6 = "2001:db8::1", "2001:db8:1::2"


def tcp(sport: int = 40000, dport: int = 80, flags: str = "S", seq: int = 1000, ack: int = 0, payload: bytes = b"",
        ts: tuple[int, int] | None = (111, 222), slow_opts: bool = False) -> TCP:
    opts: list[tuple[str, object]] = []
    if ts is not None:
        opts = ([("MSS", 1460), ("SAckOK", b""), ("Timestamp", ts), ("NOP", None), ("WScale", 7)] if slow_opts
                else [("NOP", None), ("NOP", None), ("Timestamp", ts)])
    return TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=5000, options=opts) / Raw(payload)


@pytest.mark.parametrize("opts", [
    [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 9)],   # Linux's layout
    [("WScale", 9), ("NOP", None), ("MSS", 1460)],
    [("NOP", None), ("NOP", None), ("Timestamp", (1, 0)), ("MSS", 1460), ("NOP", None), ("WScale", 9)],
])
@pytest.mark.parametrize("mk", [None, "v6"])
def test_window_scale_of_a_syn(tmp_path: Path, opts: list[tuple[str, object]], mk: str | None) -> None:
    syn = TCP(sport=40000, dport=80, flags="S", seq=1, window=5000, options=opts)
    ack = TCP(sport=40000, dport=80, flags="A", seq=2, ack=9, window=5000, options=opts)   # WS outside a SYN
    pkts = [eth(v6(p) if mk else v4(p)) for p in (syn, ack)]
    f = tmp_path / "ws.pcap"
    f.write_bytes(pcap([(i * 1000, p) for i, p in enumerate(pkts)]))
    segs = list(read_segments(f))
    assert [s.wscale for s in segs] == [9, None]
    walked = [readers._link(1, p, 0, len(p), i + 1, 0.0, ()) for i, p in enumerate(pkts)]
    assert [getattr(w, "wscale", "?") for w in walked] == [9, None]


def v4(seg: object, src: str = A4, dst: str = B4) -> bytes:
    return raw(IP(src=src, dst=dst) / seg)


def v6(seg: object, src: str = A6, dst: str = B6) -> bytes:
    return raw(IPv6(src=src, dst=dst) / seg)


def eth(ip: bytes, vlans: Sequence[tuple[int, int]] = ()) -> bytes:
    et = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + tags + struct.pack("!H", et) + ip


def sll(ip: bytes) -> bytes:
    et = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", et) + ip


def sll2(ip: bytes) -> bytes:
    et = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    return struct.pack("!HHIHBB8s", et, 0, 3, 1, 4, 6, b"\x02\0\0\0\0\x01\0\0") + ip


def pcap(records: Sequence[tuple[int, bytes]], linktype: int = 1, endian: str = "<", ns: bool = False,
         snaplen: int = 262144, caplen: dict[int, int] | None = None) -> bytes:
    out = struct.pack(endian + "IHHiIII", 0xA1B23C4D if ns else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
    for i, (ts_ns, data) in enumerate(records):
        sec, rem = divmod(ts_ns, 10**9)
        cut = (caplen or {}).get(i, len(data))
        out += struct.pack(endian + "IIII", sec, rem if ns else rem // 1000, cut, len(data)) + data[:cut]
    return out


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def ng_block(btype: int, body: bytes, e: str = "<") -> bytes:
    body = _pad(body)
    return struct.pack(e + "II", btype, len(body) + 12) + body + struct.pack(e + "I", len(body) + 12)


def ng_opts(opts: Sequence[tuple[int, bytes]], e: str = "<") -> bytes:
    if not opts:
        return b""
    return b"".join(struct.pack(e + "HH", c, len(v)) + _pad(v) for c, v in opts) + struct.pack(e + "HH", 0, 0)


def ng_shb(e: str = "<") -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def ng_idb(linktype: int, tsresol: int | None = None, e: str = "<", snaplen: int = 0) -> bytes:
    opts = [(9, bytes([tsresol]))] if tsresol is not None else []
    return ng_block(1, struct.pack(e + "HHI", linktype, 0, snaplen) + ng_opts(opts, e), e)


def ng_epb(iface: int, ts_units: int, data: bytes, comments: Sequence[str] = (), e: str = "<") -> bytes:
    body = struct.pack(e + "IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    return ng_block(6, body + _pad(data) + ng_opts([(1, c.encode()) for c in comments], e), e)


def ng_spb(data: bytes, e: str = "<") -> bytes:
    return ng_block(3, struct.pack(e + "I", len(data)) + data, e)


def ng_opb(iface: int, ts_units: int, data: bytes, e: str = "<") -> bytes:
    body = struct.pack(e + "HHIIII", iface, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    return ng_block(2, body + data, e)


def ng_other(e: str = "<") -> bytes:
    # an interface statistics block: carries no packet, must not count as a frame
    return ng_block(5, struct.pack(e + "III", 0, 0, 0), e)


TS0 = 1_700_000_000_123_456_789


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def assert_same_as_tshark(path: Path, extra: Sequence[str] = ()) -> list:
    """Our segments against tshark's dissection of the same synthetic file, field by field."""
    segs = list(read_segments(path))
    if TSHARK is None:
        return segs
    rows = tshark_rows(path, ["frame.number", "frame.time_epoch", "ip.src", "ipv6.src", "tcp.srcport",
                              "ip.dst", "ipv6.dst", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags",
                              "tcp.len", "tcp.options.timestamp.tsval", "tcp.options.timestamp.tsecr",
                              "frame.comment"], extra=extra)
    assert [s.frame for s in segs] == [int(r[0]) for r in rows]
    for s, r in zip(segs, rows, strict=True):
        # occurrence=l: the innermost IP layer (tshark lists both IPv4 and IPv6 fields for 6-in-4)
        src, dst = (r[3], r[6]) if r[3] and (not r[2] or s.src_ip == r[3]) else (r[2], r[5])
        assert (s.src_ip, s.sport, s.dst_ip, s.dport) == (src, int(r[4]), dst, int(r[7])), r
        assert (s.seq, s.ack, s.flags, s.payload_len) == (int(r[8]), int(r[9]), int(r[10], 16) & 0xFF, int(r[11]))
        assert s.tsval == (int(r[12]) if r[12] else None)
        assert s.tsecr == (int(r[13]) if r[13] else None)
        assert s.ts_s == pytest.approx(float(r[1]), abs=2e-6)
    return segs


def _conv(n: int = 4, mk=v4, **kw: object) -> list[bytes]:
    """A little conversation: SYN, SYN-ACK, data, FIN; alternating directions."""
    a, b = (A4, B4) if mk is v4 else (A6, B6)
    return [mk(tcp(flags="S", seq=1000, **kw), a, b),  # type: ignore[arg-type]
            mk(tcp(sport=80, dport=40000, flags="SA", seq=5000, ack=1001, **kw), b, a),  # type: ignore[arg-type]
            mk(tcp(flags="PA", seq=1001, ack=5001, payload=b"hello", **kw), a, b),  # type: ignore[arg-type]
            mk(tcp(flags="FA", seq=1006, ack=5001, **kw), a, b)][:n]  # type: ignore[arg-type]


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("ns", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, endian: str, ns: bool) -> None:
    pkts = [eth(p) for p in _conv(mk=v4)] + [eth(p) for p in _conv(mk=v6, slow_opts=True)]
    recs = [(TS0 + i * 1_000_001, d) for i, d in enumerate(pkts)]
    path = _write(tmp_path, "x.pcap", pcap(recs, endian=endian, ns=ns))
    segs = assert_same_as_tshark(path)
    assert len(segs) == 8
    assert [s.tsval for s in segs] == [111] * 8 and [s.tsecr for s in segs] == [222] * 8
    assert segs[2].payload_len == 5 and segs[3].flags == 0x11
    frames = list(iter_frames(path))
    assert [f.ts_ns for f in frames] == [t if ns else t // 1000 * 1000 for t, _ in recs]
    assert [f.data for f in frames] == pkts


def test_pcapng_two_interfaces_comments_sections_and_blocks(tmp_path: Path) -> None:
    e4 = [eth(p) for p in _conv(mk=v4)]
    r6 = _conv(mk=v6)
    blob = (ng_shb() + ng_idb(1, 9) + ng_idb(101, 6)          # if0 Ethernet ns, if1 raw IP us
            + ng_epb(0, TS0, e4[0], ["first", "zwei, mit | Sonderzeichen"])
            + ng_epb(1, TS0 // 1000 + 5, r6[0])
            + ng_other()
            + ng_epb(0, TS0 + 10, e4[1])
            + ng_spb(e4[2])                                     # SPB: interface 0, no timestamp
            + ng_opb(1, TS0 // 1000 + 7, r6[1])
            # a second section, big-endian, with its own interfaces (2^-20 s resolution)
            + ng_shb(">") + ng_idb(113, 0x80 | 20, ">") + ng_epb(0, 5 << 20, sll(r6[2]), ["be"], ">"))
    path = _write(tmp_path, "x.pcapng", blob)
    frames = list(iter_frames(path))
    assert [(f.frame, f.linktype, f.interface) for f in frames] == \
        [(1, 1, 0), (2, 101, 1), (3, 1, 0), (4, 1, 0), (5, 101, 1), (6, 113, 0)]
    assert frames[0].comments == ("first", "zwei, mit | Sonderzeichen")
    assert frames[5].comments == ("be",)
    assert [f.ts_ns for f in frames] == [TS0, (TS0 // 1000 + 5) * 1000, TS0 + 10, 0, (TS0 // 1000 + 7) * 1000,
                                        5 * 10**9]
    reader = CaptureReader(path)
    segs = list(reader)
    assert reader.linktypes == [1, 101, 113]
    assert [s.frame for s in segs] == [1, 2, 3, 4, 5, 6]
    assert segs[0].comments == ("first", "zwei, mit | Sonderzeichen") and segs[1].comments == ()
    assert (segs[5].src_ip, segs[5].payload_len) == (A6, 5)
    if TSHARK:
        assert tshark_count(path) == 6
        assert [int(r[0]) for r in tshark_rows(path, ["frame.number"], "frame.comment")] == [1, 6]


def test_pcapng_matches_tshark(tmp_path: Path) -> None:
    blob = ng_shb() + ng_idb(1, 9) + ng_idb(276) + b"".join(
        ng_epb(0, TS0 + i, eth(p)) + ng_epb(1, TS0 // 1000 + i, sll2(p)) for i, p in enumerate(_conv()))
    assert_same_as_tshark(_write(tmp_path, "y.pcapng", blob))


@pytest.mark.parametrize("inner", ["pcap", "pcapng"])
def test_gzip_by_magic_not_name(tmp_path: Path, inner: str) -> None:
    pkts = [eth(p) for p in _conv()]
    body = (pcap([(TS0, d) for d in pkts]) if inner == "pcap"
            else ng_shb() + ng_idb(1) + b"".join(ng_epb(0, TS0 // 1000, d) for d in pkts))
    path = _write(tmp_path, "no-gz-suffix.cap", gzip.compress(body))
    segs = assert_same_as_tshark(path)
    assert len(segs) == 4
    plain = _write(tmp_path, "plain.cap.gz", body)  # a .gz name on an uncompressed file is fine too
    assert list(read_segments(plain)) == segs


@pytest.mark.parametrize("name,linktype,wrap", [
    ("sll", 113, sll),
    ("sll2", 276, sll2),
    ("raw101", 101, lambda p: p),
    ("ipv4-228", 228, lambda p: p),
    ("null-le", 0, lambda p: struct.pack("<I", 2 if p[0] >> 4 == 4 else 30) + p),
    ("null-be", 0, lambda p: struct.pack(">I", 2 if p[0] >> 4 == 4 else 24) + p),
    ("loop", 108, lambda p: struct.pack(">I", 2 if p[0] >> 4 == 4 else 24) + p),
    ("vlan", 1, lambda p: eth(p, [(0x8100, 42)])),
    ("qinq", 1, lambda p: eth(p, [(0x88A8, 7), (0x8100, 42)])),
])
def test_link_types(tmp_path: Path, name: str, linktype: int, wrap) -> None:
    pkts = _conv(mk=v4) if linktype == 228 else _conv(mk=v4) + _conv(mk=v6)
    path = _write(tmp_path, f"{name}.pcap", pcap([(TS0 + i, wrap(p)) for i, p in enumerate(pkts)], linktype))
    segs = assert_same_as_tshark(path)
    assert len(segs) == len(pkts)
    assert [(s.src_ip, s.dst_ip) for s in segs[:2]] == [(A4, B4), (B4, A4)]


@pytest.mark.parametrize("linktype", [12, 14, 229])
def test_raw_ip_variants(tmp_path: Path, linktype: int) -> None:
    pkts = _conv(mk=v6) if linktype == 229 else _conv(mk=v4) + _conv(mk=v6)
    path = _write(tmp_path, "raw.pcap", pcap([(TS0, p) for p in pkts], linktype))
    segs = assert_same_as_tshark(path)
    assert [s.payload_len for s in segs] == [0, 0, 5, 0] * (len(pkts) // 4)


def test_ipv6_extension_headers_and_fragments(tmp_path: Path) -> None:
    seg = tcp(flags="PA", payload=b"x" * 7)
    pkts = [
        raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / seg),
        raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrRouting(addresses=["2001:db8::9"]) / seg),
        raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=0, m=1, id=7) / seg),   # first fragment: has TCP
        raw(IPv6(src=A6, dst=B6, nh=44) / IPv6ExtHdrFragment(offset=3, m=0, id=7, nh=6) / Raw(b"y" * 16)),
        raw(IP(src=A4, dst=B4, flags="MF", frag=0, proto=6) / seg),
        raw(IP(src=A4, dst=B4, frag=5, proto=6) / Raw(b"z" * 16)),                    # non-first fragment
        raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrDestOpt() / UDP(sport=53, dport=53) / Raw(b"q")),
        raw(IP(src=A4, dst=B4) / ICMP()),
    ]
    path = _write(tmp_path, "v6ext.pcap", pcap([(TS0 + i, eth(p)) for i, p in enumerate(pkts)]))
    reader = CaptureReader(path)
    segs = list(reader)
    # the IPv6 pieces overlap (first wins) and make one datagram at frame 4; the IPv4 ones leave a hole
    assert [(s.frame, s.payload_len) for s in segs] == [(1, 7), (2, 7), (4, 8)]
    assert all(s.tsval == 111 for s in segs)
    assert reader.stats.packets == 8 and reader.stats.tcp_segments == 3 and reader.stats.reassembled == 1
    assert reader.stats.skipped == {"ip-fragment-reassembled": 1, "ip-fragment": 2, "non-tcp": 2}
    first = decode_frame(1, eth(pkts[4]), 5, TS0)   # one packet on its own: a first fragment is read as is
    assert first is not None and first.payload_len == 7
    if TSHARK:  # tshark reassembles the same way (its defaults)
        assert [(int(r[0]), int(r[1])) for r in tshark_rows(path, ["frame.number", "tcp.len"])] == \
            [(1, 7), (2, 7), (4, 8)]


def test_tunnels_innermost_tuple(tmp_path: Path) -> None:
    from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer

    inner4 = v4(tcp(flags="PA", payload=b"abc"), "198.51.100.7", "198.51.100.8")
    inner6 = v6(tcp(flags="FA"))
    pkts = [
        raw(IP(src="192.0.2.10", dst="192.0.2.20") / UDP(sport=2152, dport=2152)
            / GTP_U_Header(teid=1, gtp_type=255) / inner6),
        raw(IP(src="192.0.2.10", dst="192.0.2.20") / UDP(sport=2152, dport=2152)
            / GTP_U_Header(teid=2, gtp_type=255, E=1, next_ex=0x85) / GTPPDUSessionContainer(QFI=5) / inner4),
        raw(IP(src="192.0.2.10", dst="192.0.2.20", proto=4) / Raw(inner4)),      # IP-in-IP
        raw(IP(src="192.0.2.10", dst="192.0.2.20", proto=41) / Raw(inner6)),     # 6in4
        raw(IP(src="192.0.2.10", dst="192.0.2.20") / GRE(proto=0x0800, key_present=1, key=9) / Raw(inner4)),
        raw(IPv6(src=A6, dst=B6) / GRE(proto=0x6558) / Raw(eth(inner6))),
        raw(IP(src="192.0.2.10", dst="192.0.2.20") / UDP(sport=2152, dport=2152)
            / GTP_U_Header(teid=3, gtp_type=1)),                                    # echo request: not data
    ]
    path = _write(tmp_path, "tun.pcap", pcap([(TS0 + i, p) for i, p in enumerate(pkts)], 101))
    reader = CaptureReader(path)
    segs = list(reader)
    w4, w6 = ("198.51.100.7", "198.51.100.8"), (A6, B6)
    want = [w6, w4, w4, w6, w4, w6]
    assert [(s.src_ip, s.dst_ip) for s in segs] == want
    assert [s.frame for s in segs] == [1, 2, 3, 4, 5, 6]
    assert [s.payload_len for s in segs] == [0, 3, 3, 0, 3, 0]
    assert reader.stats.skipped == {"gtp-non-data": 1}
    if TSHARK:
        assert tshark_frames(path, "tcp") == [1, 2, 3, 4, 5, 6]
        assert [int(r[1]) for r in tshark_rows(path, ["frame.number", "tcp.len"])] == [0, 3, 3, 0, 3, 0]


def test_truncated_packet_is_a_counted_skip(tmp_path: Path) -> None:
    pkts = [eth(p) for p in _conv()]
    # frame 2 keeps only 14+20+10 bytes: no full TCP header; frame 3 loses its payload only (still a segment)
    path = _write(tmp_path, "cut.pcap", pcap([(TS0, d) for d in pkts], caplen={1: 44, 2: 14 + 20 + 32}))
    reader = CaptureReader(path)
    segs = list(reader)
    assert [s.frame for s in segs] == [1, 3, 4]
    assert segs[1].payload_len == 5  # from the IP header, as tshark's tcp.len
    assert reader.stats.skipped == {"truncated-packet": 1}
    frames = list(iter_frames(path))
    assert [(len(f.data), f.orig_len) for f in frames][1] == (44, len(pkts[1]))


def test_non_ip_is_skipped_and_counted(tmp_path: Path) -> None:
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    path = _write(tmp_path, "arp.pcap", pcap([(TS0, arp), (TS0, eth(_conv()[0])), (TS0, arp)]))
    reader = CaptureReader(path)
    assert [s.frame for s in reader] == [2]
    assert reader.stats.skipped == {"non-ip": 2}


def test_decode_frame_for_live_capture() -> None:
    p = v4(tcp(flags="FA", seq=7, ack=9))
    seg = decode_frame(1, eth(p), 12, 1_500_000_000_250_000_000)
    assert seg is not None
    assert (seg.frame, seg.src_ip, seg.dst_ip, seg.seq, seg.ack, seg.flags, seg.tsval) == (12, A4, B4, 7, 9, 0x11, 111)
    assert seg.ts_s == pytest.approx(1_500_000_000.25)
    assert decode_frame(1, eth(p)[:30], 1, 0) is None
    assert decode_frame(101, p, 1, 0) == seg._replace(frame=1, ts_s=0.0)
    assert decode_frame(1, b"", 1, 0) is None


# --- bad input ------------------------------------------------------------------------------------------

def _valid_pcap() -> bytes:
    return pcap([(TS0 + i, eth(p)) for i, p in enumerate(_conv() + _conv(mk=v6))])


def _valid_pcapng() -> bytes:
    return ng_shb() + ng_idb(1, 9) + b"".join(ng_epb(0, TS0 + i, eth(p), ["c"]) for i, p in enumerate(_conv()))


def _read_all(path: Path) -> None:
    list(read_segments(path))
    list(iter_frames(path))


def _expect_bad(path: Path, frame: int | None = None) -> str:
    with pytest.raises(BadCapture) as info:
        _read_all(path)
    msg = info.value.one_line()
    assert str(path) in msg and "\n" not in msg and info.value.hint
    if frame is not None:
        assert f"frame {frame}" in msg
    return msg


@pytest.mark.parametrize("kind", ["pcap", "pcapng", "pcap.gz"])
def test_truncated_files(tmp_path: Path, kind: str) -> None:
    good = _valid_pcap() if kind != "pcapng" else _valid_pcapng()
    n_frames = 8 if kind != "pcapng" else 4
    # cuts inside the file header, inside a record header, inside a record body, one byte short of the end
    cuts = [3, 10, 24 + 7, 24 + 16 + 20, 100, len(good) // 2, len(good) - 1]
    if kind == "pcapng":  # a cut exactly between two blocks leaves a valid (shorter) file: move off it
        bounds, p = set(), 0
        while p < len(good):
            p += struct.unpack_from("<I", good, p + 4)[0]
            bounds.add(p)
        cuts = [c + 1 if c in bounds else c for c in cuts]
    for cut in cuts:
        data = good[:cut]
        if kind == "pcap.gz":
            data = gzip.compress(data)
        path = _write(tmp_path, f"cut{cut}.{kind}", data)
        msg = _expect_bad(path)
        m = re.search(r"frame (\d+)", msg)
        assert m and 1 <= int(m.group(1)) <= n_frames, msg
    # the gzip stream itself cut short
    path = _write(tmp_path, "cutstream.gz", gzip.compress(good)[:-20])
    _expect_bad(path)


def test_truncated_pcap_names_the_frame(tmp_path: Path) -> None:
    good = _valid_pcap()
    _expect_bad(_write(tmp_path, "t.pcap", good[:-3]), frame=8)


def test_zero_length_garbage_wrong_magic(tmp_path: Path) -> None:
    assert "empty" in _expect_bad(_write(tmp_path, "empty.pcap", b""), frame=1)
    _expect_bad(_write(tmp_path, "garbage.pcap", bytes(range(256)) * 4), frame=1)
    _expect_bad(_write(tmp_path, "text.pcap", b"hello, this is not a capture\n" * 10), frame=1)
    _expect_bad(_write(tmp_path, "magic.pcap", b"\xd4\xc3\xb2\xa2" + _valid_pcap()[4:]), frame=1)
    _expect_bad(_write(tmp_path, "gzgarbage.pcap.gz", b"\x1f\x8b" + b"\x00" * 50))
    _expect_bad(_write(tmp_path, "gztext.gz", gzip.compress(b"not a capture at all")))
    assert "zstd" in _expect_bad(_write(tmp_path, "z.pcapng.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 40), frame=1)
    _expect_bad(tmp_path / "missing.pcap")
    _expect_bad(tmp_path)


def test_huge_lengths(tmp_path: Path) -> None:
    good = _valid_pcap()
    # a record announcing a 4 GiB body right after a huge header snaplen
    bad = good[:16] + struct.pack("<I", 0xFFFFFFFF) + good[20:24] + good[24:32] + struct.pack("<II", 0xFFFFFFF0,
                                                                                              0xFFFFFFF0)
    _expect_bad(_write(tmp_path, "huge.pcap", bad + good[40:]), frame=1)
    # a huge header snaplen alone is only a hint (tshark reads such files, so do we)
    ok = _write(tmp_path, "snap.pcap", good[:16] + struct.pack("<I", 0xFFFFFFFF) + good[20:])
    assert len(list(read_segments(ok))) == 8
    ng = _valid_pcapng()
    shb_len = struct.unpack_from("<I", ng, 4)[0]
    idb_len = struct.unpack_from("<I", ng, shb_len + 4)[0]
    p = shb_len + idb_len
    for total in (0xFFFFFFF0, 8, 13):
        bad_ng = ng[:p + 4] + struct.pack("<I", total) + ng[p + 8:]
        _expect_bad(_write(tmp_path, f"huge{total}.pcapng", bad_ng), frame=1)
    # EPB whose captured length overruns its block; packet on an undescribed interface; unknown link type
    epb = ng_block(6, struct.pack("<IIIII", 0, 0, 0, 500, 500) + b"\0" * 40)
    _expect_bad(_write(tmp_path, "overrun.pcapng", ng_shb() + ng_idb(1) + epb), frame=1)
    _expect_bad(_write(tmp_path, "noif.pcapng", ng_shb() + ng_idb(1) + ng_epb(3, 0, b"\0" * 60)), frame=1)
    msg = _expect_bad(_write(tmp_path, "lt.pcap", pcap([(TS0, b"\0" * 60)], linktype=147)), frame=1)
    assert "link type 147" in msg
    # iter_frames copies any link type verbatim
    assert len(list(iter_frames(tmp_path / "lt.pcap"))) == 1


BASES = {"pcap": _valid_pcap(), "pcapng": _valid_pcapng()}


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(BASES)), gz=st.booleans(), cut=st.integers(min_value=0, max_value=2000),
       edits=st.lists(st.tuples(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=255)),
                      max_size=6),
       insert=st.binary(max_size=24), insert_at=st.integers(min_value=0, max_value=2000))
def test_mutated_captures_give_segments_or_badcapture(tmp_path: Path, base: str, gz: bool, cut: int,
                                                     edits: list[tuple[int, int]], insert: bytes,
                                                     insert_at: int) -> None:
    data = bytearray(BASES[base])
    for pos, val in edits:
        if pos < len(data):
            data[pos] = val
    at = min(insert_at, len(data))
    data[at:at] = insert
    blob = bytes(data[:cut] if cut < len(data) else data)
    if gz:
        blob = gzip.compress(blob)
    path = tmp_path / "m.cap"
    path.write_bytes(blob)
    try:
        reader = CaptureReader(path)
        segs = list(reader)
        frames = list(iter_frames(path))
    except BadCapture as exc:
        assert str(path) in exc.one_line()
        return
    assert reader.stats.packets == len(frames)
    assert all(1 <= s.frame <= len(frames) for s in segs)
    assert [s.frame for s in segs] == sorted({s.frame for s in segs})
