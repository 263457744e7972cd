"""The compiled capture walk behind lab.pcap.feed.feed_file: pcap/pcapng records -> Analyzer.feed_fields.

Written for mypyc (python -m lab.build): byte indexing on a `bytes` buffer, native ints, no generators or
struct in the hot loop, one native call per TCP segment into the (compiled) Analyzer. It decodes the
common packets itself: Ethernet (802.1Q/QinQ), SLL, SLL2, raw IP, BSD NULL/LOOP; IPv4 with or without
options; IPv6 without extension headers; TCP with any options (the TS option is found by walking them).
Every other packet (tunnels, IPv6 extension headers, fragments, packets cut short, non-TCP) goes to
lab.pcap.readers' Python decoder, so frames, timestamps, segments, stats and BadCapture errors are exactly
those of CaptureReader. Uncompiled this module still works (slower than the plain reader: the bytes
indexing that is fast in C is slow in the interpreter); lab.pcap.feed uses it only when compiled.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from lab.core.tracker import Analyzer
from lab.pcap import readers
from lab.pcap.filters import FILTERED, SegmentFilter
from lab.pcap.frag import Reassembler
from lab.pcap.readers import ReaderStats, _Source

if TYPE_CHECKING:   # a type only: mypyc compiles i64 to a C int64_t (no tagged-int checks per byte read)
    from mypy_extensions import i64

_CACHE_MAX = 65_536   # bound the address caches on scans with many addresses


class _If:
    """A pcapng interface (IDB) as native ints."""

    def __init__(self, lt: int, snaplen: int, mul: int, div: int, shift: int, offset_ns: int) -> None:
        self.lt = lt
        self.supported = lt in readers.SUPPORTED_LINKTYPES
        self.snaplen = snaplen
        self.mul = mul
        self.div = div
        self.shift = shift
        self.offset_ns = offset_ns


class _Dec:
    """Decoder state shared by the walks: address caches and the fallback's skip counts."""

    def __init__(self, a: Analyzer, skipped: dict[str, int], filt: SegmentFilter | None) -> None:
        self.a = a
        self.skipped = skipped
        self.filt = filt            # --port/--host/--since/--until; None: every segment
        self.filtered = 0
        self.first_ts = -1.0
        self.v4: dict[int, str] = {}
        self.v6: dict[bytes, str] = {}
        self.tcp = 0
        self.last_key: i64 = -1     # the last IPv4 address looked up: most packets repeat it (a dict
        self.last_str = ""          # lookup needs a boxed key)
        self.frags = Reassembler(skipped)   # fragments (never fast: the fallback reassembles them), one per walk

    def v4str(self, buf: bytes, p: i64) -> str:
        key: i64 = _be32(buf, p)
        if key == self.last_key:
            return self.last_str
        s = self.v4.get(key)
        if s is None:
            if len(self.v4) > _CACHE_MAX:
                self.v4.clear()
            s = socket.inet_ntop(socket.AF_INET, buf[p:p + 4])
            self.v4[key] = s
        self.last_key = key
        self.last_str = s
        return s

    def v6str(self, buf: bytes, p: i64) -> str:
        key = buf[p:p + 16]
        s = self.v6.get(key)
        if s is None:
            if len(self.v6) > _CACHE_MAX:
                self.v6.clear()
            s = socket.inet_ntop(socket.AF_INET6, key)
            self.v6[key] = s
        return s

    def packet(self, lt: int, buf: bytes, off: int, end: int, frame: int, ts: float) -> None:
        """One captured packet at buf[off:end]: fed natively when common, else by readers' decoder."""
        filt = self.filt
        if frame == 1:
            self.first_ts = ts
            if filt is not None:
                filt.first(ts)
        if not self.fast(lt, buf, off, end, frame, ts):
            try:
                r = readers._decode(lt, buf, off, end, frame, ts, (), self.frags)
            except (struct.error, IndexError):
                r = readers.MALFORMED
            if isinstance(r, str):
                self.skipped[r] = self.skipped.get(r, 0) + 1
            else:
                self.tcp += 1
                if filt is not None and not filt.keep(r.src_ip, r.sport, r.dst_ip, r.dport, r.ts_s):
                    self.filtered += 1
                    return
                self.a.feed(r)

    def done(self, stats: ReaderStats, frame: int) -> None:
        self.frags.finish()
        stats.packets = frame
        stats.tcp_segments = self.tcp
        stats.reassembled = self.frags.reassembled
        if frame:
            stats.first_ts = self.first_ts
        if self.filtered:
            stats.skipped[FILTERED] = self.filtered

    def fast(self, lt: i64, buf: bytes, off: i64, end: i64, frame: int, ts: float) -> bool:
        """Decode and feed the common case; False (nothing fed) for anything else."""
        # link layer -> off at the IP header
        et: i64
        if lt == 1:
            if off + 14 > end:
                return False
            et = _be16(buf, off + 12)
            off += 14
            while et == 0x8100 or et == 0x88A8 or et == 0x9100:
                if off + 4 > end:
                    return False
                et = _be16(buf, off + 2)
                off += 4
            if et != 0x0800 and et != 0x86DD:
                return False
        elif lt == 113:
            if off + 16 > end:
                return False
            et = _be16(buf, off + 14)
            if et != 0x0800 and et != 0x86DD:
                return False
            off += 16
        elif lt == 276:
            if off + 20 > end:
                return False
            et = _be16(buf, off)
            if et != 0x0800 and et != 0x86DD:
                return False
            off += 20
        elif lt == 0 or lt == 108:
            off += 4
        elif not (lt == 101 or lt == 12 or lt == 14 or lt == 228 or lt == 229):
            return False
        if off >= end:
            return False
        v: i64 = _b(buf, off) >> 4
        ip_end: i64
        t: i64
        ipid: i64
        if v == 4:
            if off + 20 > end:
                return False
            ihl: i64 = (_b(buf, off) & 15) << 2
            if ihl < 20 or _b(buf, off + 9) != 6 or _be16(buf, off + 6) & 0x3FFF:  # any fragment
                return False
            tot: i64 = _be16(buf, off + 2)
            ip_end = off + tot if tot >= ihl else end  # tot 0: TSO capture; use what was captured
            t = off + ihl
            if t > end:
                return False
            src = self.v4str(buf, off + 12)
            dst = self.v4str(buf, off + 16)
            ipid = _be16(buf, off + 4)
        elif v == 6:
            if off + 40 > end or _b(buf, off + 6) != 6:
                return False
            plen6: i64 = _be16(buf, off + 4)
            ip_end = off + 40 + plen6 if plen6 else end  # 0: jumbogram
            t = off + 40
            src = self.v6str(buf, off + 8)
            dst = self.v6str(buf, off + 24)
            ipid = -1
        else:
            return False
        # TCP
        if t + 20 > end:
            return False
        thl: i64 = (_b(buf, t + 12) >> 4) << 2
        if thl < 20:
            return False
        tsval: i64 = -1
        wscale: i64 = -1
        flags: i64 = _b(buf, t + 13)
        if thl > 20:
            o: i64 = t + 20
            oend: i64 = t + thl
            if oend > end:
                oend = end
            syn = (flags & 0x02) != 0   # only a SYN's window-scale option counts: walk all of a SYN's options
            while o < oend:
                kind: i64 = _b(buf, o)
                if kind == 0:
                    break
                if kind == 1:
                    o += 1
                    continue
                if o + 1 >= oend:
                    break
                olen: i64 = _b(buf, o + 1)
                if olen < 2:
                    break
                if kind == 8 and olen == 10 and o + 10 <= oend:
                    if tsval < 0:
                        tsval = _be32(buf, o + 2)
                    if not syn:
                        break
                elif kind == 3 and olen == 3 and syn and o + 3 <= oend and wscale < 0:
                    wscale = _b(buf, o + 2)
                o += olen
        plen: i64 = ip_end - t - thl
        if plen < 0:
            plen = 0
        self.tcp += 1
        filt = self.filt
        # the ports and the window read here, not by 3 _be16 calls (mypyc inlines no function)
        sp0: i64 = buf[t]
        sp1: i64 = buf[t + 1]
        dp0: i64 = buf[t + 2]
        dp1: i64 = buf[t + 3]
        w0: i64 = buf[t + 14]
        w1: i64 = buf[t + 15]
        sport: i64 = (sp0 << 8) | sp1
        dport: i64 = (dp0 << 8) | dp1
        if filt is not None and not filt.keep(src, sport, dst, dport, ts):
            self.filtered += 1
            return True
        self.a.feed_fields(frame, ts, src, sport, dst, dport, _be32(buf, t + 4),
                           _be32(buf, t + 8), flags, (w0 << 8) | w1, plen, tsval, wscale, ipid)
        return True


# Byte reads as C int64_t arithmetic when compiled (an int expression on bytes items is tagged-int
# arithmetic: an overflow check per shift, or, add). This module runs interpreted only when not compiled.
def _b(buf: bytes, p: i64) -> i64:
    x: i64 = buf[p]
    return x


def _be16(buf: bytes, p: i64) -> i64:
    hi: i64 = buf[p]
    lo: i64 = buf[p + 1]
    return (hi << 8) | lo


def _le16(buf: bytes, p: i64) -> i64:
    lo: i64 = buf[p]
    hi: i64 = buf[p + 1]
    return (hi << 8) | lo


def _be32(buf: bytes, p: i64) -> i64:   # four reads here, not two _be16 calls (4 per segment, 2 per address)
    b0: i64 = buf[p]
    b1: i64 = buf[p + 1]
    b2: i64 = buf[p + 2]
    b3: i64 = buf[p + 3]
    return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3


def _le32(buf: bytes, p: i64) -> i64:   # as _be32: three per pcap record header
    b0: i64 = buf[p]
    b1: i64 = buf[p + 1]
    b2: i64 = buf[p + 2]
    b3: i64 = buf[p + 3]
    return (b3 << 24) | (b2 << 16) | (b1 << 8) | b0


def _u32(buf: bytes, p: int, big: bool) -> int:
    if big:
        return _be32(buf, p)
    return _le32(buf, p)


def _u16(buf: bytes, p: int, big: bool) -> int:
    if big:
        return _be16(buf, p)
    return _le16(buf, p)


def walk_pcap(src: _Source, big: bool, ns: bool, lt: int, a: Analyzer, on_batch: Callable[[], None] | None,
              stats: ReaderStats, filt: SegmentFilter | None = None) -> None:
    """readers._pcap_segments' record walk (same reads, same errors), feeding `a`."""
    scale = 1e-9 if ns else 1e-6
    chunk: int = readers._CHUNK
    max_record: int = readers.MAX_RECORD
    dec = _Dec(a, stats.skipped, filt)
    buf = b""
    pos = 0
    blen = 0
    frame = 0
    try:
        while True:
            if pos + 16 > blen:
                if frame and on_batch is not None:
                    on_batch()
                buf = buf[pos:] + src.read(chunk, frame + 1, pos + 16 - blen)
                pos = 0
                blen = len(buf)
                if blen == 0:
                    return
                if blen < 16:
                    raise src.fail("record header cut short at end of file", frame + 1, readers._HINT_TRUNC)
            if big:
                sec = _be32(buf, pos)
                frac = _be32(buf, pos + 4)
                incl = _be32(buf, pos + 8)
            else:
                sec = _le32(buf, pos)
                frac = _le32(buf, pos + 4)
                incl = _le32(buf, pos + 8)
            frame += 1
            if incl > max_record:
                raise src.fail(f"absurd captured length {incl}", frame)
            start = pos + 16
            end = start + incl
            if end > blen:
                if on_batch is not None:
                    on_batch()
                need = end - blen
                buf = buf[pos:] + src.read(chunk if chunk > need else need, frame, need)
                pos = 0
                start = 16
                end = 16 + incl
                blen = len(buf)
                if end > blen:
                    raise src.fail(f"record body cut short: {incl} bytes announced, {blen - 16} left", frame,
                                   readers._HINT_TRUNC)
            pos = end
            dec.packet(lt, buf, start, end, frame, float(sec) + float(frac) * scale)
    finally:
        dec.done(stats, frame)


def walk_pcapng(src: _Source, head: bytes, a: Analyzer, on_batch: Callable[[], None] | None,
                stats: ReaderStats, filt: SegmentFilter | None = None) -> None:
    """readers._pcapng_walk (same reads, same errors), feeding `a`. Packet comments are not read: the
    Analyzer does not use them."""
    chunk: int = readers._CHUNK
    max_record: int = readers.MAX_RECORD
    dec = _Dec(a, stats.skipped, filt)
    buf = head
    pos = 0
    frame = 0
    big = False
    endian = "<"
    ifaces: list[_If] = []
    try:
        while True:
            blen = len(buf)
            if pos + 12 > blen:
                if frame and on_batch is not None:
                    on_batch()
                buf = buf[pos:] + src.read(chunk, frame + 1, pos + 12 - blen)
                pos = 0
                blen = len(buf)
                if blen == 0:
                    return
                if blen < 12:
                    raise src.fail("block header cut short at end of file", frame + 1, readers._HINT_TRUNC)
            btype = _u32(buf, pos, big)
            total = _u32(buf, pos + 4, big)
            if btype == 0x0A0D0D0A:
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    big = False
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    big = True
                    endian = ">"
                else:
                    raise src.fail("pcapng section header with a bad byte-order magic", frame + 1)
                total = _u32(buf, pos + 4, big)
                ifaces = []
            if total < 12 or total & 3 or total > max_record:
                raise src.fail(f"absurd pcapng block length {total}", frame + 1)
            if pos + total > blen:
                if frame and on_batch is not None:
                    on_batch()
                need = total - (blen - pos)
                buf = buf[pos:] + src.read(chunk if chunk > need else need, frame + 1, need)
                pos = 0
                blen = len(buf)
                if total > blen:
                    raise src.fail(f"pcapng block cut short: {total} bytes announced, {blen} left", frame + 1,
                                   readers._HINT_TRUNC)
            bend = pos + total - 4
            if _u32(buf, bend, big) != total:
                raise src.fail("pcapng block length does not match its trailer", frame + 1)
            body = pos + 8
            pos += total
            if btype == 6 or btype == 2 or btype == 3:
                frame += 1
                hi = 0
                lo = 0
                if btype == 6:
                    if body + 20 > bend:
                        raise src.fail("enhanced packet block too short", frame)
                    iface_no = _u32(buf, body, big)
                    hi = _u32(buf, body + 4, big)
                    lo = _u32(buf, body + 8, big)
                    incl = _u32(buf, body + 12, big)
                elif btype == 2:
                    if body + 20 > bend:
                        raise src.fail("packet block too short", frame)
                    iface_no = _u16(buf, body, big)
                    hi = _u32(buf, body + 4, big)
                    lo = _u32(buf, body + 8, big)
                    incl = _u32(buf, body + 12, big)
                else:  # simple packet block: interface 0, no timestamp
                    if body + 4 > bend:
                        raise src.fail("simple packet block too short", frame)
                    orig = _u32(buf, body, big)
                    iface_no = 0
                    room = bend - body - 4
                    incl = orig if orig < room else room
                    if ifaces and ifaces[0].snaplen and ifaces[0].snaplen < incl:
                        incl = ifaces[0].snaplen
                    body -= 16  # data at body + 4, as if the 20-byte EPB fields were there
                data = body + 20
                if data + incl > bend:
                    raise src.fail(f"packet data ({incl} bytes) overruns its block", frame)
                if iface_no >= len(ifaces):
                    raise src.fail(f"packet on interface {iface_no}, which was never described", frame)
                ifc = ifaces[iface_no]
                if btype == 3:
                    ts_ns = 0
                elif ifc.shift:
                    ts_ns = ((((hi << 32) | lo) * ifc.mul) >> ifc.shift) + ifc.offset_ns
                else:
                    ts_ns = ((hi << 32) | lo) * ifc.mul // ifc.div + ifc.offset_ns
                if not ifc.supported:
                    readers._check_linktype(src, ifc.lt, frame)
                dec.packet(ifc.lt, buf, data, data + incl, frame, ts_ns / 1e9)
            elif btype == 1:
                if body + 8 > bend:
                    raise src.fail("interface description block too short", frame + 1)
                f = readers._iface(buf, body, bend, endian)
                ifaces.append(_If(f.linktype, f.snaplen, f.mul, f.div, f.shift, f.offset_ns))
            elif btype == 0x0A0D0D0A:
                if body + 16 > bend:
                    raise src.fail("section header block too short", frame + 1)
                major = _u16(buf, body + 4, big)
                if major != 1:
                    raise src.fail(f"unsupported pcapng version {major}", frame + 1)
            # other blocks (name resolution, statistics, decryption secrets, custom) carry no packets
    finally:
        dec.done(stats, frame)
