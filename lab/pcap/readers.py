"""Capture files -> TCP segments, fast: a plain struct walk, no scapy dissection.

Formats: pcap (both byte orders, microsecond and nanosecond magic), pcapng (SHB in either byte order and
several sections, IDB with if_tsresol/if_tsoffset, EPB, SPB, OPB, per-packet opt_comment), and either of
them gzip-compressed (detected by magic, not by the file name).

Link types: Ethernet (802.1Q/QinQ tags), Linux cooked SLL (113) and SLL2 (276), raw IP (12, 14, 101, 228,
229), BSD loopback NULL (0) and LOOP (108), Linux NFLOG (239). Network: IPv4 and IPv6 (extension headers
skipped); fragments are reassembled per walk (lab.pcap.frag: the segment comes at the frame completing its
datagram, as in tshark; ReaderStats.reassembled, skipped "ip-fragment-reassembled" / "ip-fragment").
Tunnels: GTP-U (UDP 2152), IP-in-IP / IPv6-in-IPv4 (4/41), GRE, and lab.pcap.encap's (MPLS, PPPoE, PBB,
VN-Tag, E-Tag, ERSPAN, VXLAN(-GPE), Geneve, GRE-in-UDP, Teredo, AYIYA): the innermost IP/TCP is the
segment's four-tuple.

Frame numbers count every packet (1-based) and equal tshark's frame.number. A packet too short for its
TCP header is a counted skip ("truncated-packet"); a damaged *file* (record or block past end of file,
garbage, wrong magic, absurd lengths) raises lab.errors.BadCapture naming the file and the frame.
Memory stays bounded: the file is read in 128 KiB chunks and no record may exceed 16 MiB.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from lab.core.model import Segment
from lab.errors import BadCapture
from lab.pcap import encap
from lab.pcap.frag import Reassembler

if TYPE_CHECKING:
    pass

__all__ = ["STDIN", "SUPPORTED_LINKTYPES", "CaptureReader", "CutShort", "RawFrame", "ReaderStats", "decode_frame",
           "iter_frames", "lenient", "read_segments"]


class RawFrame(NamedTuple):
    """One packet as stored in the file, for tools that copy packets verbatim (annotate)."""

    frame: int
    ts_ns: int
    linktype: int
    data: bytes
    orig_len: int
    comments: tuple[str, ...] = ()
    interface: int = 0


@dataclass
class ReaderStats:
    """Filled in while a CaptureReader is iterated (complete once iteration ends)."""

    packets: int = 0
    tcp_segments: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    cut: str | None = None        # lenient reads of a capture cut short: the one warning line
    first_ts: float | None = None  # the capture's first frame (any protocol): the zero of Wireshark's Time column
    reassembled: int = 0           # IP datagrams put together from fragments (lab.pcap.frag)


def lenient(stats: ReaderStats, read: Callable[[], Any]) -> Any:
    """Run read(); a capture cut short (CutShort) ends it with `stats.cut` set and the frames counted up to
    the last complete one, instead of an error. Other damage still raises BadCapture."""
    try:
        return read()
    except CutShort as exc:
        stats.cut = exc.warning()
        stats.packets = exc.last_good
        return None


# --- limits and constants ---------------------------------------------------------------------------------

# bytes per read; the compiled walk also hands its finished records to on_batch once per chunk (lab.pcap.feed):
# at 1 MiB (~11 k packets of churn) they had left the CPU cache before they were written out (analyze --json of
# 1 M churn packets 1.46 -> 1.2 CPU s, annotate 3.7 -> 2.7 s at 128 KiB)
_CHUNK = 1 << 17
_PIPE_SIZE = 1 << 20   # a pipe we read from is widened to this (F_SETPIPE_SZ)
_F_SETPIPE_SZ = 1031   # fcntl.F_SETPIPE_SZ (Linux; the constant is in the fcntl module only from 3.10 on some builds)
MAX_RECORD = 16 << 20  # larger than any real packet or block; bounds memory on garbage lengths
_MAX_TUNNEL_DEPTH = 8

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_LOOP = 108
LINKTYPE_SLL = 113
LINKTYPE_SLL2 = 276
_RAW_LINKTYPES = frozenset({12, 14, 101, 228, 229})
SUPPORTED_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_SLL, LINKTYPE_SLL2,
                                 encap.LINKTYPE_NFLOG} | _RAW_LINKTYPES)

_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSION = ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\x04\x22\x4d\x18", "lz4"), (b"\xfd7zX", "xz"),
                      (b"BZh", "bzip2"))

# skip reasons (keys of ReaderStats.skipped)
TRUNC = "truncated-packet"
NON_IP = "non-ip"
NON_TCP = "non-tcp"
FRAGMENT = "ip-fragment"
MALFORMED = "malformed"
GTP_OTHER = "gtp-non-data"

_HINT_TRUNC = "the file ends inside a packet (capture cut short?); re-capture, or cut it with editcap -r"
_HINT_GARBAGE = "this is not an intact pcap/pcapng file; check that the file is a capture and was fully copied"

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBH")
_II = struct.Struct("!II")
_HH = struct.Struct("!HH")
_H = struct.Struct("!H")

_III = struct.Struct("!III").unpack_from
_IP4_TCP = "BxHHHxBxx4s4sHHIIBBH"  # IPv4 without options (its ID kept), then the TCP header's first 16 bytes
# link type -> (link header + IPv4 + TCP in one Struct, link header length) for the pcap fast path
_FAST = {1: (struct.Struct("!12xH" + _IP4_TCP), 14), 113: (struct.Struct("!14xH" + _IP4_TCP), 16),
         276: (struct.Struct("!H18x" + _IP4_TCP), 20)}

_new = tuple.__new__
_ip_cache: dict[bytes, str] = {}
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_ntop = socket.inet_ntop


def _ipstr(raw: bytes) -> str:
    s = _ip_cache.get(raw)
    if s is None:
        if len(_ip_cache) > 65_536:  # bound the cache on scans with many addresses
            _ip_cache.clear()
        s = _ntop(_AF_INET if len(raw) == 4 else _AF_INET6, raw)
        _ip_cache[raw] = s
    return s


# --- the packet decoder (hot path) ------------------------------------------------------------------------

def _linux_syn_wscale(buf: bytes, ip: int) -> int | None:
    """The WS shift of a Linux SYN's options (MSS SACK-permitted TS NOP WS) after an option-less IPv4
    header at `ip`; None when the last four option bytes are laid out otherwise (the general walk decides)."""
    if buf[ip + 56] == 1 and buf[ip + 57] == 3 and buf[ip + 58] == 3:
        return buf[ip + 59]
    return None


def _tcp(buf: bytes, t: int, ip_end: int, end: int, src: str, dst: str, frame: int, ts: float,
         comments: tuple[str, ...], ipid: int | None) -> Segment | str:
    if t + 20 > end:
        return TRUNC
    sport, dport, seq, ack, doff, flags, win = _TCP.unpack_from(buf, t)
    thl = (doff >> 4) << 2
    if thl < 20:
        return MALFORMED
    tsval = tsecr = wscale = None
    if thl > 20:
        o = t + 20
        oend = t + thl
        if oend > end:
            oend = end
        syn = flags & 0x02  # only a SYN's window-scale option counts (RFC 7323): walk all of a SYN's options
        if not syn and o + 12 <= oend and buf[o] == 1 and buf[o + 1] == 1 and buf[o + 2] == 8 and buf[o + 3] == 10:
            tsval, tsecr = _II.unpack_from(buf, o + 4)  # the usual NOP NOP TS layout
        else:
            while o < oend:
                kind = buf[o]
                if kind == 0:
                    break
                if kind == 1:
                    o += 1
                    continue
                if o + 1 >= oend:
                    break
                olen = buf[o + 1]
                if olen < 2:
                    break
                if kind == 8 and olen == 10 and o + 10 <= oend:
                    if tsval is None:
                        tsval, tsecr = _II.unpack_from(buf, o + 2)
                    if not syn:
                        break
                elif kind == 3 and olen == 3 and syn and o + 3 <= oend and wscale is None:
                    wscale = buf[o + 2]
                o += olen
    plen = ip_end - t - thl
    if plen < 0:
        plen = 0
    return _new(Segment, (frame, ts, src, sport, dst, dport, seq, ack, flags, win, plen, tsval, tsecr, comments,
                          wscale, ipid))


def _ip(buf: bytes, off: int, end: int, frame: int, ts: float, comments: tuple[str, ...],
        depth: int, frags: Reassembler | None = None) -> Segment | str:
    """IPv4/IPv6 at buf[off:end] (end = captured end); tunnels recurse to the innermost IP. With `frags` a
    fragment goes to the walk's reassembler (without: a first fragment is read as is, the others skipped)."""
    if off >= end:
        return TRUNC
    v = buf[off] >> 4
    if v == 4:
        if off + 20 > end:
            return TRUNC
        vihl, _tos, tot, ipid, frag, _ttl, proto, _ck, s, d = _IP4.unpack_from(buf, off)
        ihl = (vihl & 15) << 2
        if ihl < 20:
            return MALFORMED
        if frag & 0x3FFF and frags is not None:   # more fragments or an offset: reassemble
            if depth >= _MAX_TUNNEL_DEPTH:
                return MALFORMED
            whole = frags.ipv4(buf, off, end, ts)
            if isinstance(whole, str):
                return whole
            return _ip(whole, 0, len(whole), frame, ts, comments, depth + 1, frags)
        if frag & 0x1FFF:
            return FRAGMENT
        ip_end = off + tot if tot >= ihl else end  # tot 0: TSO capture; use what was captured
        p = off + ihl
        if p > end:
            return TRUNC
        src = _ip_cache.get(s) or _ipstr(s)
        dst = _ip_cache.get(d) or _ipstr(d)
    elif v == 6:
        if off + 40 > end:
            return TRUNC
        _vtf, plen, proto, _hl, s, d = _IP6.unpack_from(buf, off)
        ipid = None
        ip_end = off + 40 + plen if plen else end  # 0: jumbogram
        p = off + 40
        while proto == 0 or proto == 43 or proto == 60 or proto == 44 or proto == 51:
            if p + 8 > end:
                return TRUNC
            if proto == 44:
                fo = _H.unpack_from(buf, p + 2)[0]
                if fo & 0xFFF9 and frags is not None:   # an offset or more fragments (not atomic): reassemble
                    if depth >= _MAX_TUNNEL_DEPTH:
                        return MALFORMED
                    whole = frags.ipv6(buf, off, p, ip_end, end, ts)
                    if isinstance(whole, str):
                        return whole
                    return _ip(whole, 0, len(whole), frame, ts, comments, depth + 1, frags)
                if fo & 0xFFF8:
                    return FRAGMENT
                hlen = 8
            elif proto == 51:
                hlen = (buf[p + 1] + 2) << 2
            else:
                hlen = (buf[p + 1] + 1) << 3
            proto = buf[p]
            p += hlen
        src = _ip_cache.get(s) or _ipstr(s)
        dst = _ip_cache.get(d) or _ipstr(d)
    else:
        return NON_IP
    if proto == 6:
        return _tcp(buf, p, ip_end, end, src, dst, frame, ts, comments, ipid)
    if depth >= _MAX_TUNNEL_DEPTH:
        return MALFORMED
    inner_end = ip_end if ip_end < end else end
    if proto == 4 or proto == 41:
        return _ip(buf, p, inner_end, frame, ts, comments, depth + 1, frags)
    if proto == 17:
        if p + 8 > inner_end:
            return NON_TCP
        sport, dport = _HH.unpack_from(buf, p)
        if sport == 2152 or dport == 2152:
            return _gtpu(buf, p + 8, inner_end, frame, ts, comments, depth, frags)
        inner = encap.udp(sport, dport, buf, p + 8, inner_end)
        if inner is None:
            return NON_TCP
        return _inner(inner, buf, inner_end, frame, ts, comments, depth + 1, frags)
    if proto == 47:
        return _gre(buf, p, inner_end, frame, ts, comments, depth, frags)
    return NON_TCP


def _inner(inner: encap.Inner, buf: bytes, end: int, frame: int, ts: float, comments: tuple[str, ...],
           depth: int, frags: Reassembler | None) -> Segment | str:
    """Walk on from what a lab.pcap.encap decoder found: an IP packet, an Ethernet frame or a GRE header."""
    if isinstance(inner, str):
        return inner
    kind, p = inner
    if depth > _MAX_TUNNEL_DEPTH:
        return MALFORMED
    if kind == encap.IP:
        return _ip(buf, p, end, frame, ts, comments, depth, frags)
    if kind == encap.ETHER:
        return _link(LINKTYPE_ETHERNET, buf, p, end, frame, ts, comments, depth, frags)
    return _gre(buf, p, end, frame, ts, comments, depth, frags)


def _ether_other(et: int, buf: bytes, off: int, end: int, frame: int, ts: float, comments: tuple[str, ...],
                 depth: int, frags: Reassembler | None) -> Segment | str:
    """An Ethernet/SLL payload that is not plain IPv4/IPv6: tags, MPLS, PPPoE, PBB, ERSPAN (lab.pcap.encap)."""
    return _inner(encap.ethertype(et, buf, off, end), buf, end, frame, ts, comments, depth + 1, frags)


def _gtpu(buf: bytes, g: int, end: int, frame: int, ts: float, comments: tuple[str, ...],
          depth: int, frags: Reassembler | None = None) -> Segment | str:
    if g + 8 > end:
        return NON_TCP
    gflags = buf[g]
    if gflags >> 5 != 1 or not gflags & 0x10 or buf[g + 1] != 0xFF:  # GTPv1, not GTP', G-PDU only
        return GTP_OTHER
    p = g + 8
    if gflags & 0x07:
        if p + 4 > end:
            return TRUNC
        nxt = buf[p + 3]
        p += 4
        while nxt:
            if p + 1 > end:
                return TRUNC
            elen = buf[p] << 2
            if elen == 0 or p + elen > end:
                return MALFORMED
            nxt = buf[p + elen - 1]
            p += elen
    return _ip(buf, p, end, frame, ts, comments, depth + 1, frags)


def _gre(buf: bytes, g: int, end: int, frame: int, ts: float, comments: tuple[str, ...],
         depth: int, frags: Reassembler | None = None) -> Segment | str:
    if g + 4 > end:
        return NON_TCP
    gflags, ptype = _HH.unpack_from(buf, g)
    if gflags & 0x0007:  # version 1 is PPTP's enhanced GRE: not IP-in-GRE
        return NON_TCP
    p = g + 4 + (4 if gflags & 0x8000 else 0) + (4 if gflags & 0x2000 else 0) + (4 if gflags & 0x1000 else 0)
    if ptype == 0x0800 or ptype == 0x86DD:
        return _ip(buf, p, end, frame, ts, comments, depth + 1, frags)
    if ptype == 0x6558:  # transparent Ethernet bridging
        return _link(LINKTYPE_ETHERNET, buf, p, end, frame, ts, comments, depth + 1, frags)
    if ptype == 0x8847 or ptype == 0x88BE or ptype == 0x22EB:  # MPLS in GRE (RFC 4023), ERSPAN II/III
        return _ether_other(ptype, buf, p, end, frame, ts, comments, depth, frags)
    return NON_TCP


def _link(lt: int, buf: bytes, off: int, end: int, frame: int, ts: float, comments: tuple[str, ...],
          depth: int = 0, frags: Reassembler | None = None) -> Segment | str:
    if lt == 1:
        if off + 14 > end:
            return TRUNC
        et = (buf[off + 12] << 8) | buf[off + 13]
        off += 14
        while et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if off + 4 > end:
                return TRUNC
            et = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
        if et != 0x0800 and et != 0x86DD:
            return _ether_other(et, buf, off, end, frame, ts, comments, depth, frags)
    elif lt == 113:
        if off + 16 > end:
            return TRUNC
        et = (buf[off + 14] << 8) | buf[off + 15]
        if et != 0x0800 and et != 0x86DD:
            return _ether_other(et, buf, off + 16, end, frame, ts, comments, depth, frags)
        off += 16
    elif lt == 276:
        if off + 20 > end:
            return TRUNC
        et = (buf[off] << 8) | buf[off + 1]
        if et != 0x0800 and et != 0x86DD:
            return _ether_other(et, buf, off + 20, end, frame, ts, comments, depth, frags)
        off += 20
    elif lt == 0 or lt == 108:
        off += 4  # address family in either byte order; the IP version nibble decides
    elif lt == encap.LINKTYPE_NFLOG:
        return _inner(encap.nflog(buf, off, end), buf, end, frame, ts, comments, depth, frags)
    elif lt not in _RAW_LINKTYPES:
        return f"linktype-{lt}"
    return _ip(buf, off, end, frame, ts, comments, depth, frags)


def _decode(lt: int, buf: bytes, off: int, end: int, frame: int, ts: float, comments: tuple[str, ...],
            frags: Reassembler | None = None) -> Segment | str:
    """_link with the one-unpack shortcut for link/IPv4/TCP (same logic as inlined in _pcap_segments);
    `frags`: the walk's fragment reassembler (None: each packet on its own)."""
    fast = _FAST.get(lt)
    if fast is not None:
        l2 = fast[1]
        if end - off >= l2 + 40:
            et, vihl, tot, ipid, frag, proto, s, d, sport, dport, seq, ack, doff, flags, win = \
                fast[0].unpack_from(buf, off)
            thl = (doff >> 4) << 2
            if (et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF and tot >= 20
                    and (thl == 20 or (thl == 32 and end - off >= l2 + 52) or (thl == 40 and end - off >= l2 + 60))):
                tsval = tsecr = wscale = None
                if thl == 32:
                    kl, tsval, tsecr = _III(buf, off + l2 + 40)
                    if kl != 0x0101080A:
                        thl = 0
                elif thl == 40:
                    kl, tsval, tsecr = _III(buf, off + l2 + 44)
                    if kl != 0x0402080A or buf[off + l2 + 40] != 2:
                        thl = 0
                    elif flags & 0x02:
                        wscale = _linux_syn_wscale(buf, off + l2)
                        if wscale is None:
                            thl = 0
                if thl:
                    plen = tot - 20 - thl
                    return _new(Segment, (frame, ts, _ip_cache.get(s) or _ipstr(s), sport,
                                          _ip_cache.get(d) or _ipstr(d), dport, seq, ack, flags, win,
                                          plen if plen > 0 else 0, tsval, tsecr, comments, wscale, ipid))
    return _link(lt, buf, off, end, frame, ts, comments, 0, frags)


def decode_frame(linktype: int, data: bytes, frame: int, ts_ns: int,
                 frags: Reassembler | None = None) -> Segment | None:
    """One captured packet -> its innermost TCP segment, or None (not TCP, cut short, malformed, a fragment
    held by `frags`, the caller's lab.pcap.frag.Reassembler kept across its packets)."""
    try:
        r = _decode(linktype, data, 0, len(data), frame, ts_ns / 1e9, (), frags)
    except (struct.error, IndexError):
        return None
    return None if type(r) is str else r  # type: ignore[return-value]


# --- file access -----------------------------------------------------------------------------------------

STDIN = "-"   # the file name that means standard input (a pipe: `tcpdump -w - | twlab analyze -`)


class CutShort(BadCapture):
    """The capture ends inside a record (a file still being written, a pipe closed mid-packet, a gzip stream
    cut off). Everything before `last_good` was read; lenient readers stop there with a warning."""

    def __init__(self, message: str, hint: str, last_good: int) -> None:
        super().__init__(message, hint)
        self.last_good = last_good

    def warning(self) -> str:
        """The one warning line, as tshark says it: what was analyzed and why the rest was not."""
        return f"{self.message}; analyzed up to frame {self.last_good}, the last complete one"


def _open(path: Path) -> BinaryIO:
    """The capture's byte stream: a file, FIFO, /dev/stdin, /dev/fd/N (process substitution) or `-`.
    Nothing is seeked, so pipes read exactly like files; gzip is recognised by its magic."""
    if str(path) == STDIN:
        f: BinaryIO = sys.stdin.buffer
    else:
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the caller's finally)
        except FileNotFoundError:
            raise BadCapture(f"{path}: no such file", "check the path") from None
        except IsADirectoryError:
            raise BadCapture(f"{path}: is a directory", "give a pcap, pcapng or .gz capture file") from None
        except OSError as exc:
            raise BadCapture(f"{path}: cannot open: {exc.strerror}", "check the path and its permissions") from None
    try:
        head = f.peek(2)[:2]  # type: ignore[attr-defined]  # a BufferedReader: no seek needed (pipes)
    except OSError as exc:
        f.close()
        raise BadCapture(f"{path}: cannot read: {exc.strerror}", "check the path and its permissions") from None
    if head == _GZIP_MAGIC:
        return _Gunzip(f)  # type: ignore[return-value]
    return f


class _Gunzip:
    """gzip decompression that hands over every byte before a cut: gzip.GzipFile drops the data of the read()
    that hits the end of a truncated stream, so the frames just before the cut would be lost. Reads
    concatenated members like gzip does; zero padding after the last member is ignored."""

    _RAW = 1 << 16

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.buf = b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            if self.d.eof:
                rest = self.d.unused_data or self.f.read(self._RAW)
                if not rest.strip(b"\0"):
                    break                      # a clean end (maybe zero padding)
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self.buf += self.d.decompress(rest)
                continue
            raw = self.f.read(self._RAW)
            if not raw:
                if self.buf:
                    break                      # hand over what there is; the next read reports the cut
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            self.buf += self.d.decompress(raw)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self) -> None:
        self.f.close()


class _Source:
    """Chunked reads with the file's name and the frame in every error; `nread` counts the bytes read."""

    __slots__ = ("f", "nread", "path", "stream")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = _open(path)
        self.nread = 0
        # a pipe, FIFO or terminal: hand over what has arrived instead of waiting for a whole chunk, so a live
        # feed (tcpdump -w - | twlab analyze - --jsonl) is analyzed as it comes
        try:
            mode = os.fstat(self.f.fileno()).st_mode
            self.stream = not stat.S_ISREG(mode) and hasattr(self.f, "read1")
            if stat.S_ISFIFO(mode):   # a 1 MiB pipe (ours only): the writer runs ahead instead of 64 KiB ping-pong
                with contextlib.suppress(OSError):
                    fcntl.fcntl(self.f.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        except (OSError, ValueError, AttributeError):
            self.stream = False

    def read(self, n: int, frame: int, need: int = -1) -> bytes:
        """Up to n bytes: n unless the input ends first; from a stream at least `need` (default n; fewer only
        at its end)."""
        try:
            data = self._read_stream(n, n if need < 0 else need) if self.stream else self.f.read(n)
        except EOFError as exc:   # gzip: "Compressed file ended before the end-of-stream marker was reached"
            raise self.fail(f"compressed stream cut short: {exc}", frame, _HINT_TRUNC) from None
        except (OSError, zlib.error) as exc:
            raise BadCapture(f"{self.path}: cannot read at frame {frame}: {exc}",
                             "the (compressed) file is damaged or cut short; re-copy or re-capture it") from None
        self.nread += len(data)
        return data

    def _read_stream(self, n: int, need: int) -> bytes:
        read1 = self.f.read1  # type: ignore[attr-defined]
        data = read1(n)
        while data and len(data) < need:
            more = read1(n - len(data))
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass

    def fail(self, what: str, frame: int, hint: str = _HINT_GARBAGE) -> BadCapture:
        if hint == _HINT_TRUNC and frame > 1:   # the capture was cut short after some complete frames
            return CutShort(f"{self.path}: {what} (frame {frame})", hint, frame - 1)
        return BadCapture(f"{self.path}: {what} (frame {frame})", hint)


class _PcapHeader(NamedTuple):
    endian: str
    ns: bool
    snaplen: int
    linktype: int


def _file_header(src: _Source) -> tuple[bytes, str]:
    head = src.read(4, 1)
    if not head:
        raise BadCapture(f"{src.path}: empty file (frame 1)", "the capture has no bytes; re-capture it")
    if len(head) < 4:
        raise src.fail("file too short for a capture header", 1)
    le = struct.unpack("<I", head)[0]
    if le in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) or struct.unpack(">I", head)[0] in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
        return head, "pcap"
    if le == _PCAPNG_SHB:
        return head, "pcapng"
    for magic, tool in _OTHER_COMPRESSION:
        if head.startswith(magic):
            raise src.fail(f"{tool}-compressed file", 1, f"decompress it first ({tool} -d), or give a pcap, "
                                                           "pcapng or gzip-compressed capture")
    raise src.fail(f"not a pcap or pcapng file (magic {head.hex()})", 1,
                   "give a pcap, pcapng or gzip-compressed capture (e.g. from tcpdump -w or Wireshark)")


def _pcap_header(src: _Source, head: bytes) -> _PcapHeader:
    rest = src.read(20, 1)
    if len(rest) < 20:
        raise src.fail("pcap file header cut short", 1, _HINT_TRUNC)
    le = struct.unpack("<I", head)[0]
    endian = "<" if le in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS) else ">"
    magic = struct.unpack(endian + "I", head)[0]
    major, _minor, _zone, _sig, snaplen, network = struct.unpack(endian + "HHiIII", rest)
    if major != 2:
        raise src.fail(f"unsupported pcap version {major}", 1)
    # the header snaplen is only a hint (tshark reads files with 0xFFFFFFFF there); records are capped below
    return _PcapHeader(endian, magic == _PCAP_MAGIC_NS, snaplen, network & 0xFFFF)


def _check_linktype(src: _Source, lt: int, frame: int) -> None:
    if lt not in SUPPORTED_LINKTYPES:
        raise src.fail(f"unsupported link type {lt}", frame,
                       "supported: Ethernet, Linux SLL/SLL2, raw IP, BSD loopback, NFLOG; "
                       "convert with editcap or capture with tcpdump -i any")


# --- pcap -------------------------------------------------------------------------------------------------

def _pcap_records(src: _Source, hdr: _PcapHeader) -> Iterator[tuple[int, int, int, bytes, int, int, int]]:
    """(frame, sec, frac, buf, off, end, orig_len) per record; buf is a chunk shared by several records."""
    unpack = struct.Struct(hdr.endian + "IIII").unpack_from
    buf = b""
    pos = 0
    blen = 0
    frame = 0
    read = src.read
    while True:
        if pos + 16 > blen:
            buf = buf[pos:] + read(_CHUNK, frame + 1, pos + 16 - blen)
            pos = 0
            blen = len(buf)
            if blen == 0:
                return
            if blen < 16:
                raise src.fail("record header cut short at end of file", frame + 1, _HINT_TRUNC)
        sec, frac, incl, orig = unpack(buf, pos)
        frame += 1
        if incl > MAX_RECORD:
            raise src.fail(f"absurd captured length {incl}", frame)
        start = pos + 16
        end = start + incl
        if end > blen:
            buf = buf[pos:] + read(max(_CHUNK, end - blen), frame, end - blen)
            pos = 0
            start = 16
            end = 16 + incl
            blen = len(buf)
            if end > blen:
                raise src.fail(f"record body cut short: {incl} bytes announced, {blen - 16} left", frame,
                               _HINT_TRUNC)
        yield frame, sec, frac, buf, start, end, orig
        pos = end


def _pcap_segments(src: _Source, hdr: _PcapHeader, stats: ReaderStats, skip_to: int = 0) -> Iterator[Segment]:
    """The hot loop: the record walk of _pcap_records inlined with the decoder (frames below skip_to: only
    their record headers are read)."""
    unpack = struct.Struct(hdr.endian + "IIII").unpack_from
    scale = 1e-9 if hdr.ns else 1e-6
    lt = hdr.linktype
    link = _link
    fast_struct = _FAST.get(lt)
    fast = fast_struct[0].unpack_from if fast_struct else None
    l2 = fast_struct[1] if fast_struct else 0
    new = _new
    segment = Segment
    cache = _ip_cache
    buf = b""
    pos = 0
    blen = 0
    frame = 0
    tcp = 0
    skipped = stats.skipped
    frags = Reassembler(skipped)
    read = src.read
    try:
        while True:
            if pos + 16 > blen:
                buf = buf[pos:] + read(_CHUNK, frame + 1, pos + 16 - blen)
                pos = 0
                blen = len(buf)
                if blen == 0:
                    return
                if blen < 16:
                    raise src.fail("record header cut short at end of file", frame + 1, _HINT_TRUNC)
                if frame == 0:
                    sec, frac = unpack(buf, 0)[:2]
                    stats.first_ts = sec + frac * scale
            sec, frac, incl, _orig = unpack(buf, pos)
            frame += 1
            if incl > MAX_RECORD:
                raise src.fail(f"absurd captured length {incl}", frame)
            start = pos + 16
            end = start + incl
            if end > blen:
                buf = buf[pos:] + read(max(_CHUNK, end - blen), frame, end - blen)
                pos = 0
                start = 16
                end = 16 + incl
                blen = len(buf)
                if end > blen:
                    raise src.fail(f"record body cut short: {incl} bytes announced, {blen - 16} left", frame,
                                   _HINT_TRUNC)
            pos = end
            if frame < skip_to:
                continue
            if fast is not None and end - start >= l2 + 40:
                # the common case in one unpack: link header, option-less IPv4, TCP (no or NOP NOP TS options)
                et, vihl, tot, ipid, frag, proto, s, d, sport, dport, seq, ack, doff, flags, win = fast(buf, start)
                thl = (doff >> 4) << 2
                if (et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF and tot >= 20
                        and (thl == 20 or (thl == 32 and end - start >= l2 + 52)
                             or (thl == 40 and end - start >= l2 + 60))):
                    tsval = tsecr = wscale = None
                    if thl == 32:  # NOP NOP TS: data segments
                        kl, tsval, tsecr = _III(buf, start + l2 + 40)
                        if kl != 0x0101080A:  # another option layout: let the general decoder walk it
                            thl = 0
                    elif thl == 40:  # MSS SACK-permitted TS NOP WS: Linux SYN and SYN-ACK
                        kl, tsval, tsecr = _III(buf, start + l2 + 44)
                        if kl != 0x0402080A or buf[start + l2 + 40] != 2:
                            thl = 0
                        elif flags & 0x02:
                            wscale = _linux_syn_wscale(buf, start + l2)
                            if wscale is None:
                                thl = 0
                    if thl:
                        plen = tot - 20 - thl
                        tcp += 1
                        yield new(segment, (frame, sec + frac * scale, cache.get(s) or _ipstr(s), sport,
                                            cache.get(d) or _ipstr(d), dport, seq, ack, flags, win,
                                            plen if plen > 0 else 0, tsval, tsecr, (), wscale, ipid))
                        continue
            try:
                r = link(lt, buf, start, end, frame, sec + frac * scale, (), 0, frags)
            except (struct.error, IndexError):
                r = MALFORMED
            if type(r) is str:
                skipped[r] = skipped.get(r, 0) + 1
            else:
                tcp += 1
                yield r  # type: ignore[misc]
    finally:
        frags.finish()
        stats.packets = frame
        stats.tcp_segments = tcp
        stats.reassembled = frags.reassembled
        src.close()


# --- pcapng ------------------------------------------------------------------------------------------------

class _Iface(NamedTuple):
    linktype: int
    snaplen: int
    mul: int  # ts_ns = (ts * mul) // div (>> shift for binary resolutions) + offset_ns
    div: int
    shift: int
    offset_ns: int


def _options(buf: bytes, p: int, end: int, endian: str) -> Iterator[tuple[int, bytes]]:
    unpack = struct.Struct(endian + "HH").unpack_from
    while p + 4 <= end:
        code, olen = unpack(buf, p)
        if code == 0:
            return
        p += 4
        if p + olen > end:
            return  # a damaged option list: Wireshark warns and keeps the packet; so do we
        yield code, buf[p:p + olen]
        p += (olen + 3) & ~3


def _iface(buf: bytes, p: int, end: int, endian: str) -> _Iface:
    lt, _res, snaplen = struct.unpack_from(endian + "HHI", buf, p)
    mul, div, shift, offset_ns = 1000, 1, 0, 0  # default resolution: microseconds
    for code, val in _options(buf, p + 8, end, endian):
        if code == 9 and val:
            r = val[0]
            if r & 0x80:
                mul, div, shift = 1_000_000_000, 1, r & 0x7F
            elif r <= 9:
                mul, div, shift = 10 ** (9 - r), 1, 0
            else:
                mul, div, shift = 1, 10 ** (r - 9), 0
        elif code == 14 and len(val) == 8:
            offset_ns = struct.unpack(endian + "q", val)[0] * 1_000_000_000
    return _Iface(lt, snaplen, mul, div, shift, offset_ns)


def _pcapng_walk(src: _Source, head: bytes, linktypes: list[int], stats: ReaderStats | None,
                 skip_to: int = 0) -> Iterator[Any]:
    """The block walk. Without stats: yields (frame, ts_ns, linktype, buf, off, end, orig_len, comments,
    interface) per packet block. With stats: decodes in the loop (the hot path), yields Segments, counts skips.
    Packet blocks of frames below skip_to are checked and counted, not decoded."""
    buf = head
    pos = 0
    frame = 0
    tcp = 0
    endian = "<"
    ifaces: list[_Iface] = []
    read = src.read
    u32 = struct.Struct("<I").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    skipped = stats.skipped if stats is not None else {}
    frags = Reassembler(skipped)
    decode = _decode
    try:
        while True:
            blen = len(buf)
            if pos + 12 > blen:
                buf = buf[pos:] + read(_CHUNK, frame + 1, pos + 12 - blen)
                pos = 0
                blen = len(buf)
                if blen == 0:
                    return
                if blen < 12:
                    raise src.fail("block header cut short at end of file", frame + 1, _HINT_TRUNC)
            btype, total = u32(buf, pos)[0], u32(buf, pos + 4)[0]
            if btype == _PCAPNG_SHB:
                bom = buf[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise src.fail("pcapng section header with a bad byte-order magic", frame + 1)
                u32 = struct.Struct(endian + "I").unpack_from
                epb = struct.Struct(endian + "IIIII").unpack_from
                total = u32(buf, pos + 4)[0]
                ifaces = []
            if total < 12 or total & 3 or total > MAX_RECORD:
                raise src.fail(f"absurd pcapng block length {total}", frame + 1)
            if pos + total > blen:
                buf = buf[pos:] + read(max(_CHUNK, total - (blen - pos)), frame + 1, total - (blen - pos))
                pos = 0
                blen = len(buf)
                if total > blen:
                    raise src.fail(f"pcapng block cut short: {total} bytes announced, {blen} left", frame + 1,
                                   _HINT_TRUNC)
            bend = pos + total - 4
            if u32(buf, bend)[0] != total:
                raise src.fail("pcapng block length does not match its trailer", frame + 1)
            body = pos + 8
            pos += total
            if btype == 6 or btype == 2 or btype == 3:
                frame += 1
                if btype == 6:
                    if body + 20 > bend:
                        raise src.fail("enhanced packet block too short", frame)
                    iface_no, hi, lo, incl, orig = epb(buf, body)
                elif btype == 2:
                    if body + 20 > bend:
                        raise src.fail("packet block too short", frame)
                    iface_no, _drops, hi, lo, incl, orig = struct.unpack_from(endian + "HHIIII", buf, body)
                else:  # simple packet block: interface 0, no timestamp
                    if body + 4 > bend:
                        raise src.fail("simple packet block too short", frame)
                    orig = u32(buf, body)[0]
                    iface_no = hi = lo = 0
                    incl = min(orig, bend - body - 4)
                    if ifaces and ifaces[0].snaplen:
                        incl = min(incl, ifaces[0].snaplen)
                    body -= 16  # data at body + 4, as if the 20-byte EPB fields were there
                data = body + 20
                if data + incl > bend:
                    raise src.fail(f"packet data ({incl} bytes) overruns its block", frame)
                if iface_no >= len(ifaces):
                    raise src.fail(f"packet on interface {iface_no}, which was never described", frame)
                lt, _snap, mul, div, shift, offset_ns = ifaces[iface_no]
                if btype == 3:
                    ts_ns = 0
                elif shift:
                    ts_ns = ((((hi << 32) | lo) * mul) >> shift) + offset_ns
                else:
                    ts_ns = ((hi << 32) | lo) * mul // div + offset_ns
                if frame == 1 and stats is not None:
                    stats.first_ts = ts_ns / 1e9
                if frame < skip_to:
                    continue
                opt_start = data + ((incl + 3) & ~3)
                comments: tuple[str, ...] = ()
                if btype != 3 and opt_start + 4 <= bend:
                    comments = tuple(v.decode("utf-8", errors="replace")
                                     for c, v in _options(buf, opt_start, bend, endian) if c == 1)
                if stats is None:
                    yield frame, ts_ns, lt, buf, data, data + incl, orig, comments, iface_no
                    continue
                if lt not in SUPPORTED_LINKTYPES:
                    _check_linktype(src, lt, frame)
                try:
                    r = decode(lt, buf, data, data + incl, frame, ts_ns / 1e9, comments, frags)
                except (struct.error, IndexError):
                    r = MALFORMED
                if type(r) is str:
                    skipped[r] = skipped.get(r, 0) + 1
                else:
                    tcp += 1
                    yield r
            elif btype == 1:
                if body + 8 > bend:
                    raise src.fail("interface description block too short", frame + 1)
                ifc = _iface(buf, body, bend, endian)
                ifaces.append(ifc)
                linktypes.append(ifc.linktype)
            elif btype == _PCAPNG_SHB:
                if body + 16 > bend:
                    raise src.fail("section header block too short", frame + 1)
                major = struct.unpack_from(endian + "H", buf, body + 4)[0]
                if major != 1:
                    raise src.fail(f"unsupported pcapng version {major}", frame + 1)
            # other blocks (name resolution, statistics, decryption secrets, custom) carry no packets
    finally:
        if stats is not None:
            frags.finish()
            stats.packets = frame
            stats.tcp_segments = tcp
            stats.reassembled = frags.reassembled
        src.close()


# --- public API ---------------------------------------------------------------------------------------------

class CaptureReader:
    """Iterable of the TCP segments in a capture file; `.stats` and `.linktypes` fill in while iterating.

    Each iteration re-reads the file from the start (and resets the stats).
    """

    def __init__(self, path: str | Path, lenient: bool = False, skip_to: int = 0) -> None:
        self.path = Path(path)
        self.lenient = lenient     # a capture cut short ends the iteration with stats.cut set (no error)
        # frames numbered below skip_to are walked by their record headers only: no segment, no skip count,
        # and an IP fragment among them is not reassembled (`show` reads from a connection's first frame on)
        self.skip_to = skip_to
        self.stats = ReaderStats()
        self.linktypes: list[int] = []
        self.source: _Source | None = None   # the byte source of the current iteration (bytes read so far)

    def __iter__(self) -> Iterator[Segment]:
        self.stats = ReaderStats()
        self.linktypes = []
        src = self.source = _Source(self.path)
        try:  # the file header is read here; the generators close the file when they end
            head, kind = _file_header(src)
            if kind == "pcap":
                hdr = _pcap_header(src, head)
                self.linktypes.append(hdr.linktype)
                _check_linktype(src, hdr.linktype, 1)
                segs = _pcap_segments(src, hdr, self.stats, self.skip_to)
            else:
                segs = self._pcapng(src, head)
        except BaseException:
            src.close()
            raise
        return self._until_cut(segs) if self.lenient else segs

    def _until_cut(self, segs: Iterator[Segment]) -> Iterator[Segment]:
        try:
            yield from segs
        except CutShort as exc:
            self.stats.cut = exc.warning()
            self.stats.packets = exc.last_good

    def _pcapng(self, src: _Source, head: bytes) -> Iterator[Segment]:
        return _pcapng_walk(src, head, self.linktypes, self.stats, self.skip_to)


def read_segments(path: str | Path) -> Iterator[Segment]:
    """The TCP segments of a capture file, in file order (frame numbers count every packet)."""
    return iter(CaptureReader(path))


def iter_frames(path: str | Path, stats: ReaderStats | None = None) -> Iterator[RawFrame]:
    """Every packet of a capture file as stored (any link type), for copying packets verbatim. With `stats`
    a capture cut short ends the iteration with stats.cut set (see lenient) instead of raising CutShort."""
    p = Path(path)
    src = _Source(p)
    try:
        if stats is not None:
            yield from _frames_until_cut(src, stats)
        else:
            yield from _frames(src)
    finally:
        src.close()


def _frames_until_cut(src: _Source, stats: ReaderStats) -> Iterator[RawFrame]:
    n = 0
    try:
        for fr in _frames(src):
            n += 1
            yield fr
    except CutShort as exc:
        stats.cut = exc.warning()
    stats.packets = n


def _frames(src: _Source) -> Iterator[RawFrame]:
    head, kind = _file_header(src)
    if kind == "pcap":
        hdr = _pcap_header(src, head)
        lt = hdr.linktype
        mul = 1 if hdr.ns else 1000
        for frame, sec, frac, buf, off, end, orig in _pcap_records(src, hdr):
            yield RawFrame(frame, sec * 1_000_000_000 + frac * mul, lt, buf[off:end], orig, (), 0)
    else:
        for frame, ts_ns, lt, buf, off, end, orig, comments, iface in _pcapng_walk(src, head, [], None):
            yield RawFrame(frame, ts_ns, lt, buf[off:end], orig, comments, iface)
