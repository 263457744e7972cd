"""feed_file (and its compiled walk, lab.pcap.fastdecode) gives exactly what CaptureReader + Analyzer give: the same
Report, the same reader stats, the same BadCapture message, on the corpus, the lab's captures, synthetic
files of every format/link type/option layout, and damaged files. Each comparison runs here (compiled when
the accelerator is built, as in CI) and again in a subprocess with TWLAB_PURE=1 (the .py sources)."""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import GRE, ICMP, IP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.packet import Raw, raw

from lab import accel
from lab.core.tracker import Analyzer, analyze
from lab.errors import BadCapture
from lab.pcap import feed
from lab.pcap.feed import feed_file
from lab.pcap.readers import CaptureReader, ReaderStats
from tests.unit.test_readers import (
    A4,
    A6,
    B4,
    B6,
    TS0,
    _conv,
    _valid_pcap,
    _valid_pcapng,
    eth,
    ng_block,
    ng_epb,
    ng_idb,
    ng_opb,
    ng_opts,
    ng_other,
    ng_shb,
    ng_spb,
    pcap,
    sll,
    sll2,
    tcp,
    v4,
    v6,
)

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = sorted((ROOT / "captures").glob("*.pcapng"))


# --- the comparison -----------------------------------------------------------------------------------------

def _outcome(run: Callable[[Analyzer], ReaderStats | None]) -> tuple[Any, ...]:
    """(report dict, stats, BadCapture message or None) of one way of feeding an Analyzer."""
    a = Analyzer()
    try:
        stats = run(a)
        err = None
    except BadCapture as exc:
        stats, err = None, exc.one_line()
    rep = a.finish().to_dict()
    return rep, (stats.packets, stats.tcp_segments, dict(stats.skipped)) if stats else None, err


def _reference(path: Path) -> tuple[Any, ...]:
    reader = CaptureReader(path)

    def run(a: Analyzer) -> ReaderStats:
        for seg in reader:
            a.feed(seg)
        return reader.stats

    return _outcome(run)


def mismatches(paths: list[str]) -> list[str]:
    """Every path whose feed_file / fastdecode outcome differs from CaptureReader's (empty: all equal)."""
    bad = []
    for name in paths:
        path = Path(name)
        want = _reference(path)
        ways: dict[str, Callable[[Analyzer], ReaderStats | None]] = {
            "feed_file": lambda a, p=path: feed_file(p, a),
            "fastdecode": lambda a, p=path: feed._feed_file(p, a, None, True),
            "plain": lambda a, p=path: feed._feed_file(p, a, None, False),
        }
        if not accel.active():
            del ways["plain"]   # feed_file is the plain path then
        for way, run in ways.items():
            got = _outcome(run)
            if got != want:
                what = [k for k, g, w in zip(("report", "stats", "error"), got, want, strict=True) if g != w]
                bad.append(f"{path.name} [{way}]: {', '.join(what)} differ: {got[1:]} != {want[1:]}")
    return bad


def _row(seg: Any) -> tuple[Any, ...]:
    """A Segment as the arguments of Analyzer.feed_fields."""
    return (*seg[:11], -1 if seg.tsval is None else seg.tsval, -1 if seg.wscale is None else seg.wscale,
            -1 if seg.ipid is None else seg.ipid)


def segment_rows_differ(paths: list[str]) -> list[str]:
    """Segment by segment (interpreted only: a compiled Analyzer cannot be subclassed to record its calls)."""
    class Rec(Analyzer):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[Any, ...]] = []

        def feed(self, seg: Any) -> None:
            self.rows.append(_row(seg))

        def feed_fields(self, *fields: Any) -> None:
            self.rows.append(fields)

    bad = []
    for name in paths:
        want: list[tuple[Any, ...]] = []
        try:
            for seg in CaptureReader(name):
                want.append(_row(seg))
        except BadCapture:
            pass
        rec = Rec()
        try:
            feed._feed_file(Path(name), rec, None, True)
        except BadCapture:
            pass
        if [tuple(r) for r in rec.rows] != want:
            diff = next((i for i, (g, w) in enumerate(zip(rec.rows, want, strict=False)) if tuple(g) != w),
                        min(len(rec.rows), len(want)))
            got_row = rec.rows[diff] if diff < len(rec.rows) else None
            bad.append(f"{Path(name).name}: segment {diff}: {got_row} != {want[diff] if diff < len(want) else None}")
    return bad


def _in_pure_subprocess(paths: list[Path]) -> list[str]:
    """mismatches() and segment_rows_differ() with TWLAB_PURE=1."""
    code = ("import json, sys\nfrom tests.unit import test_fastdecode as t\npaths = json.loads(sys.stdin.read())\n"
            "print(json.dumps(t.mismatches(paths) + t.segment_rows_differ(paths)))\n")
    env = dict(os.environ, TWLAB_PURE="1")
    res = subprocess.run([sys.executable, "-c", code], input=json.dumps([str(p) for p in paths]), cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out: list[str] = json.loads(res.stdout.splitlines()[-1])
    return out


def assert_same(paths: list[Path]) -> None:
    assert mismatches([str(p) for p in paths]) == []
    if not accel.active():
        assert segment_rows_differ([str(p) for p in paths]) == []


# --- inputs -------------------------------------------------------------------------------------------------

def tcp_bytes(opts: bytes, flags: int = 0x18, payload: bytes = b"", sport: int = 40000, dport: int = 80,
              seq: int = 1000, ack: int = 2000, doff: int | None = None) -> bytes:
    """A TCP header with exactly these option bytes (padded with EOL to 32 bits); doff can lie."""
    opts += b"\0" * (-len(opts) % 4)
    hl = doff if doff is not None else (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, hl << 4, flags, 4321, 0, 0) + opts + payload


def ip4(tcpb: bytes, src: str = A4, dst: str = B4, options: bytes = b"", tot: int | None = None,
        frag: int = 0, proto: int = 6) -> bytes:
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    length = tot if tot is not None else 4 * ihl + len(tcpb)
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 7, frag, 64, proto, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + options + tcpb


TS = b"\x08\x0a\x00\x00\x12\x34\x00\x00\x56\x78"
ODD_OPTIONS = [
    b"",                                                   # no options
    b"\x01\x01" + TS,                                      # NOP NOP TS (the usual)
    TS,                                                    # TS first, unaligned padding
    b"\x02\x04\x05\xb4\x04\x02" + TS + b"\x01\x03\x03\x07",  # Linux SYN layout
    b"\x02\x04\x05\xb4\x01\x03\x03\x07" + TS,              # TS last
    b"\x01\x05\x0a" + b"\0" * 8 + TS,                      # SACK block before TS
    b"\x00" + TS,                                          # EOL before TS: no TS
    b"\x01\x01\x08\x0a\x00\x00",                           # TS cut by the header length
    b"\x04\x01" + TS,                                      # option length 1: malformed, stop
    b"\x08\x08\x00\x00\x00\x01\x00\x00" + TS,              # a TS-kind option of the wrong length, then TS
    b"\x1e\x06\x00\x00\x00\x00" + TS,                      # MPTCP-ish unknown option then TS
    b"\x01" * 40,                                          # 40 NOPs
]


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def synthetic_files(tmp: Path) -> list[Path]:
    """Every format, byte order, resolution, link type, option layout and odd packet feed_file decodes."""
    files: list[Path] = []
    conv4, conv6 = _conv(mk=v4), _conv(mk=v6, slow_opts=True)
    both = conv4 + conv6
    for endian in "<>":
        for ns in (False, True):
            recs = [(TS0 + i * 1_000_001, eth(p)) for i, p in enumerate(both)]
            files.append(_write(tmp, f"pcap{'BE' if endian == '>' else 'LE'}{'ns' if ns else 'us'}.pcap",
                                pcap(recs, endian=endian, ns=ns)))
    # pcapng: two interfaces, comments, SPB/OPB, a statistics block, a big-endian section, tsresol variants
    e4 = [eth(p) for p in conv4]
    blob = (ng_shb() + ng_idb(1, 9) + ng_idb(101, 6)
            + ng_epb(0, TS0, e4[0], ["first", "zwei"]) + ng_epb(1, TS0 // 1000 + 5, conv6[0]) + ng_other()
            + ng_epb(0, TS0 + 10, e4[1]) + ng_spb(e4[2]) + ng_opb(1, TS0 // 1000 + 7, conv6[1])
            + ng_shb(">") + ng_idb(113, 0x80 | 20, ">") + ng_epb(0, 5 << 20, sll(conv6[2]), ["be"], ">"))
    files.append(_write(tmp, "multi.pcapng", blob))
    for res in (None, 0, 3, 6, 9, 12, 0x80 | 10, 0x80 | 30):
        files.append(_write(tmp, f"tsresol{res}.pcapng", ng_shb() + ng_idb(1, res) + b"".join(
            ng_epb(0, (TS0 // 10**9) * 10**6 + 123_457 * i, eth(p)) for i, p in enumerate(both))))
    tsoffset = ng_block(1, struct.pack("<HHI", 1, 0, 0) + ng_opts([(14, struct.pack("<q", 1_600_000_000))]))
    files.append(_write(tmp, "tsoffset.pcapng", ng_shb() + tsoffset + b"".join(
        ng_epb(0, 1000 * i + 17, eth(p)) for i, p in enumerate(both))))
    files.append(_write(tmp, "spb-snaplen.pcapng", ng_shb() + ng_idb(1, snaplen=60) + b"".join(
        ng_spb(eth(p)) for p in both)))
    # gzip of both formats
    files.append(_write(tmp, "gz.pcap", gzip.compress(pcap([(TS0 + i, eth(p)) for i, p in enumerate(both)]))))
    files.append(_write(tmp, "gz.pcapng", gzip.compress(_valid_pcapng())))
    # link types
    wraps: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
        "sll": (113, sll), "sll2": (276, sll2), "raw101": (101, lambda p: p), "raw12": (12, lambda p: p),
        "raw14": (14, lambda p: p), "null-le": (0, lambda p: struct.pack("<I", 2 if p[0] >> 4 == 4 else 30) + p),
        "null-be": (0, lambda p: struct.pack(">I", 2 if p[0] >> 4 == 4 else 24) + p),
        "loop": (108, lambda p: struct.pack(">I", 2 if p[0] >> 4 == 4 else 24) + p),
        "vlan": (1, lambda p: eth(p, [(0x8100, 42)])), "qinq": (1, lambda p: eth(p, [(0x88A8, 7), (0x8100, 42)])),
        "qinq9100": (1, lambda p: eth(p, [(0x9100, 7), (0x8100, 42)])),
    }
    for name, (lt, wrap) in wraps.items():
        files.append(_write(tmp, f"{name}.pcap", pcap([(TS0 + i, wrap(p)) for i, p in enumerate(both)], lt)))
    files.append(_write(tmp, "raw228.pcap", pcap([(TS0 + i, p) for i, p in enumerate(conv4)], 228)))
    files.append(_write(tmp, "raw229.pcap", pcap([(TS0 + i, p) for i, p in enumerate(conv6)], 229)))
    # TCP option layouts, IPv4 options, odd lengths
    odd: list[bytes] = []
    for k, opts in enumerate(ODD_OPTIONS):
        odd.append(ip4(tcp_bytes(opts, payload=b"p" * k, seq=1000 + k)))
        odd.append(raw(IPv6(src=A6, dst=B6, nh=6) / Raw(tcp_bytes(opts, flags=0x11, sport=80, dport=40000))))
    odd += [
        raw(IP(src=A4, dst=B4, options=[IPOption_RR()]) / tcp(flags="PA", payload=b"rr")),  # IPv4 options
        ip4(tcp_bytes(b"\x01\x01" + TS, payload=b"abc"), options=b"\x94\x04\x00\x00"),       # router alert
        ip4(tcp_bytes(b"", payload=b"tso"), tot=0),                # TSO capture: length 0
        ip4(tcp_bytes(b"", payload=b"xy"), tot=10),                # tot < ihl
        ip4(tcp_bytes(b"", payload=b"short"), tot=45),             # tot shorter than the headers: plen 0
        ip4(tcp_bytes(b"", payload=b"long"), tot=1400),            # tot beyond what was captured
        ip4(tcp_bytes(b"", doff=4)),                               # TCP header length < 20: malformed
        ip4(tcp_bytes(b"", doff=15)),                              # doff beyond the captured bytes
        ip4(tcp_bytes(b""))[:1] + b"\x44" + ip4(tcp_bytes(b""))[2:],  # (TOS byte edit, harmless)
        b"\x43" + ip4(tcp_bytes(b""))[1:],                          # IHL 3: malformed
        ip4(tcp_bytes(b""), frag=0x2000),                           # MF, offset 0: a first fragment, decoded
        ip4(Raw(b"z" * 16).build(), frag=5),                        # non-first fragment
        raw(IPv6(src=A6, dst=B6, plen=0, nh=6) / Raw(tcp_bytes(b"", payload=b"jumbo"))),  # plen 0
        raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / tcp(flags="PA", payload=b"x")),
        raw(IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(offset=0, m=1, id=7) / tcp(flags="PA")),
        raw(IPv6(src=A6, dst=B6, nh=44) / IPv6ExtHdrFragment(offset=3, m=0, id=7, nh=6) / Raw(b"y" * 16)),
        raw(IP(src=A4, dst=B4) / ICMP()), raw(IP(src=A4, dst=B4) / UDP(sport=53, dport=53) / Raw(b"q")),
        raw(IP(src="192.0.2.10", dst="192.0.2.20", proto=4) / Raw(v4(tcp(flags="PA", payload=b"abc")))),
        raw(IP(src="192.0.2.10", dst="192.0.2.20") / GRE(proto=0x0800) / Raw(v4(tcp(flags="FA")))),
        b"\x50" + b"\0" * 40,                                      # IP version 5: not IP
    ]
    files.append(_write(tmp, "odd-eth.pcap", pcap([(TS0 + i * 1000, eth(p)) for i, p in enumerate(odd)])))
    files.append(_write(tmp, "odd-raw.pcap", pcap([(TS0 + i * 1000, p) for i, p in enumerate(odd)], 101)))
    files.append(_write(tmp, "odd-sll2.pcapng", ng_shb() + ng_idb(276, 9) + b"".join(
        ng_epb(0, TS0 + i, sll2(p)) for i, p in enumerate(odd))))
    # packets cut short at every offset of link + IP + TCP + options
    full = eth(ip4(tcp_bytes(b"\x02\x04\x05\xb4\x01\x01" + TS, payload=b"data")))
    cuts = {i: i for i in range(len(full) + 1)}
    files.append(_write(tmp, "cut.pcap", pcap([(TS0 + i, full) for i in cuts], caplen=cuts)))
    full6 = sll(raw(IPv6(src=A6, dst=B6, nh=6) / Raw(tcp_bytes(TS, payload=b"d6"))))
    cuts6 = {i: i for i in range(len(full6) + 1)}
    files.append(_write(tmp, "cut6.pcap", pcap([(TS0 + i, full6) for i in cuts6], 113, caplen=cuts6)))
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    files.append(_write(tmp, "arp.pcap", pcap([(TS0, arp), (TS0, eth(conv4[0])), (TS0, b"")])))
    # more than one chunk, records across chunk boundaries, one record larger than a chunk, many addresses
    many = []
    tmpl = eth(ip4(tcp_bytes(b"\x01\x01" + TS, payload=b"m" * 100)))
    for i in range(20_000):
        rec = bytearray(tmpl)
        rec[14 + 12:14 + 16] = struct.pack("!I", 0xC0000200 + (i % 7000))       # 7000 client addresses
        rec[14 + 20:14 + 22] = struct.pack("!H", 1024 + i % 50_000)
        rec[14 + 20 + 13] = (0x02, 0x12, 0x14, 0x11)[i % 4]
        # 300 s: the RST-closed connections finish on the way (open ones only at the end: never by idleness)
        many.append((TS0 + i * 10_000_000, bytes(rec)))
    many.insert(10_000, (TS0 + 10_000_000, eth(ip4(tcp_bytes(b"", payload=b"J" * (3 << 20)), tot=0))))  # TSO-sized
    hdr = pcap([])
    files.append(_write(tmp, "big.pcap", hdr + b"".join(struct.pack("<IIII", t // 10**9, t % 10**9 // 1000, len(d),
                                                                     len(d)) + d for t, d in many)))
    files.append(_write(tmp, "big.pcapng", ng_shb() + ng_idb(1, 9) + b"".join(
        ng_epb(0, t, d) for t, d in many[:6_000])))
    return files


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthetic_files(tmp_path_factory.mktemp("fastdecode"))


def damaged_files(tmp: Path) -> list[Path]:
    """Damaged captures: cut anywhere, garbage, wrong magic, empty, huge lengths, bad pcapng blocks."""
    out: list[Path] = []
    good, ng = _valid_pcap(), _valid_pcapng()
    be = pcap([(TS0 + i, eth(p)) for i, p in enumerate(_conv())], endian=">")
    for base, name in ((good, "pcap"), (ng, "pcapng"), (be, "be.pcap")):
        for cut in sorted({3, 10, 23, 24, 31, 40, 60, 100, len(base) // 2, len(base) - 1, len(base) - 3}):
            out.append(_write(tmp, f"cut{cut}.{name}", base[:cut]))
            out.append(_write(tmp, f"cut{cut}.{name}.gz", gzip.compress(base[:cut])))
    out.append(_write(tmp, "cutstream.gz", gzip.compress(good)[:-20]))
    out.append(_write(tmp, "empty.pcap", b""))
    out.append(_write(tmp, "garbage.pcap", bytes(range(256)) * 4))
    out.append(_write(tmp, "text.pcap", b"hello, this is not a capture\n" * 10))
    out.append(_write(tmp, "magic.pcap", b"\xd4\xc3\xb2\xa2" + good[4:]))
    out.append(_write(tmp, "version.pcap", good[:4] + b"\x03\x00" + good[6:]))
    out.append(_write(tmp, "zstd.pcap", b"\x28\xb5\x2f\xfd" + b"\0" * 40))
    huge = good[:16] + struct.pack("<I", 0xFFFFFFFF) + good[20:32] + struct.pack("<II", 0xFFFFFFF0, 0xFFFFFFF0)
    out.append(_write(tmp, "huge.pcap", huge + good[40:]))
    out.append(_write(tmp, "snaplen.pcap", good[:16] + struct.pack("<I", 0xFFFFFFFF) + good[20:]))
    out.append(_write(tmp, "lt147.pcap", pcap([(TS0, b"\0" * 60)], linktype=147)))
    shb_len = struct.unpack_from("<I", ng, 4)[0]
    p = shb_len + struct.unpack_from("<I", ng, shb_len + 4)[0]
    for total in (0xFFFFFFF0, 8, 13, 20000):
        out.append(_write(tmp, f"huge{total}.pcapng", ng[:p + 4] + struct.pack("<I", total) + ng[p + 8:]))
    out.append(_write(tmp, "trailer.pcapng", ng[:-1] + b"\x99"))
    epb = ng_block(6, struct.pack("<IIIII", 0, 0, 0, 500, 500) + b"\0" * 40)
    out.append(_write(tmp, "overrun.pcapng", ng_shb() + ng_idb(1) + epb))
    out.append(_write(tmp, "shortepb.pcapng", ng_shb() + ng_idb(1) + ng_block(6, b"\0" * 8)))
    out.append(_write(tmp, "shortspb.pcapng", ng_shb() + ng_idb(1) + ng_block(3, b"")))
    out.append(_write(tmp, "shortopb.pcapng", ng_shb() + ng_idb(1) + ng_block(2, b"\0" * 12)))
    out.append(_write(tmp, "shortidb.pcapng", ng_shb() + ng_block(1, b"\0" * 4)))
    out.append(_write(tmp, "noif.pcapng", ng_shb() + ng_idb(1) + ng_epb(3, 0, b"\0" * 60)))
    out.append(_write(tmp, "spb-noif.pcapng", ng_shb() + ng_spb(b"\0" * 60)))
    out.append(_write(tmp, "lt147.pcapng", ng + ng_idb(147) + ng_epb(1, 0, b"\0" * 60)))
    out.append(_write(tmp, "bom.pcapng", ng[:8] + b"\x11\x22\x33\x44" + ng[12:]))
    out.append(_write(tmp, "ngversion.pcapng", ng[:12] + b"\x02\x00" + ng[14:]))
    out.append(_write(tmp, "shortshb.pcapng", ng_block(0x0A0D0D0A, struct.pack("<I", 0x1A2B3C4D)) + ng[shb_len:]))
    # deterministic mutations: byte edits, inserts and cuts of small files of both formats
    rnd = random.Random(20261124)
    bases = [good, ng, be, ng_shb() + ng_idb(113, 6) + ng_idb(1, 9)
             + b"".join(ng_epb(i % 2, TS0 // 1000 + i, (sll(p) if i % 2 == 0 else eth(p)))
                        for i, p in enumerate(_conv() + _conv(mk=v6)))]
    for k in range(240):
        data = bytearray(rnd.choice(bases))
        for _ in range(rnd.randint(0, 5)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            at = rnd.randrange(len(data))
            data[at:at] = rnd.randbytes(rnd.randint(1, 24))
        if rnd.random() < 0.5:
            data = data[:rnd.randrange(len(data) + 1)]
        blob = gzip.compress(bytes(data)) if rnd.random() < 0.2 else bytes(data)
        out.append(_write(tmp, f"mut{k}.cap", blob))
    return out


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return damaged_files(tmp_path_factory.mktemp("damaged"))


# --- tests --------------------------------------------------------------------------------------------------

def test_corpus_and_lab_captures(corpus: Path) -> None:
    files = sorted(p for p in corpus.iterdir() if p.name != "README.md") + CAPTURES
    assert len(files) > 20
    assert_same(files)


def test_synthetic_files(synth: list[Path]) -> None:
    assert_same(synth)


def test_damaged_files_give_the_same_error_and_partial_report(damaged: list[Path]) -> None:
    assert_same(damaged)
    errors = sum(_reference(p)[2] is not None for p in damaged)
    assert errors > 60   # most of them really are damaged (the comparison covers BadCapture, not only success)


def test_pure_sources_agree_too(corpus: Path, synth: list[Path], damaged: list[Path]) -> None:
    """The same comparisons with TWLAB_PURE=1: lab.pcap.fastdecode and the tracker as interpreted Python."""
    files = sorted(p for p in corpus.iterdir() if p.name != "README.md") + CAPTURES + synth + damaged[::3]
    assert _in_pure_subprocess(files) == []


def test_timestamps_are_the_readers_floats(synth: list[Path]) -> None:
    """ts floats bit for bit (first/last ts of every connection), across resolutions and both formats."""
    for path in synth:
        if "tsresol" in path.name or path.name.startswith("pcap"):
            a = Analyzer()
            feed_file(path, a)
            got = [(c.first_ts, c.last_ts) for c in a.finish().connections]
            want = [(c.first_ts, c.last_ts) for c in analyze(CaptureReader(path)).connections]
            assert got == want and got, path.name


@pytest.mark.parametrize("fast", [True, False])
def test_on_batch_is_called_per_chunk_and_at_the_end(synth: list[Path], fast: bool) -> None:
    big = next(p for p in synth if p.name == "big.pcap")   # 6.9 MB, 20001 segments
    a = Analyzer(keep=False, detail=False)
    drained: list[int] = []

    def on_batch() -> None:
        drained.append(len(a.drain()[0]))

    stats = feed._feed_file(big, a, on_batch, fast)
    assert stats.packets == 20_001 and stats.tcp_segments == 20_001
    # fast: after each 1 MiB chunk (one of them holds the 3 MiB record); plain: every 8192 segments
    assert len(drained) >= (5 if fast else 3)
    a.finish()
    total = sum(drained) + len(a.drain()[0])
    assert total == len(analyze(CaptureReader(big)).connections)
    assert sum(drained[:-1]) > 0   # records came out before the end


def test_feed_file_takes_str_and_returns_reader_stats(synth: list[Path]) -> None:
    path = next(p for p in synth if p.name == "odd-eth.pcap")
    stats = feed_file(str(path), Analyzer())
    ref = CaptureReader(path)
    list(ref)
    assert stats == ref.stats
    assert stats.skipped   # the odd file has skips of several kinds
    assert {"malformed", "non-tcp", "ip-fragment", "non-ip"} <= set(stats.skipped)


def test_bad_capture_message_names_file_and_frame(damaged: list[Path]) -> None:
    path = next(p for p in damaged if p.name == "huge.pcap")
    with pytest.raises(BadCapture, match=r"huge\.pcap: absurd captured length \d+ \(frame 1\)"):
        feed_file(path, Analyzer())


@pytest.mark.skipif(not accel.active(), reason="accelerator not built here (python -m lab.build); CI builds it")
def test_compiled_modules_are_the_ones_in_use() -> None:
    import lab.core.tracker
    import lab.pcap.fastdecode

    assert lab.core.tracker.__file__.endswith(accel.EXT_SUFFIX)
    assert lab.pcap.fastdecode.__file__.endswith(accel.EXT_SUFFIX)
