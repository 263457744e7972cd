"""Bounded IPv4/IPv6 fragment reassembly for the capture walks (one Reassembler per walk of a file).

A datagram is keyed by (source, destination, identification, protocol) -- RFC 791 for IPv4; RFC 8200 keys
IPv6 by (source, destination, identification) and the protocol is the fragment header's next header. Pieces
are kept as they arrive; overlapping bytes keep the first piece that brought them (first wins, as Wireshark's
reassembly and RFC 5722's "do not let a later piece rewrite earlier bytes"). The datagram is complete when the
piece without More Fragments has arrived and the pieces cover every byte before its end; it is then handed
back whole (the first piece's IP header, lengths and fragment fields fixed) at the frame that completed it,
which is where tshark shows the reassembled TCP segment.

Bounds: pieces older than TIMEOUT_S of capture time (Linux's ipfrag_time default), more than MAX_PENDING
datagrams, more than MAX_HELD_BYTES held, more than MAX_PIECES pieces per datagram or a datagram longer than an
IP length field can say are given up (oldest first). Counting keeps packets == tcp_segments + sum(skipped):
a held piece is counted (by the walk, from the reason returned) under PENDING at once and moved to MERGED
(its bytes reached a datagram) or DROPPED (given up) when its datagram is decided; finish() gives up what is
still pending at the end of the walk.
"""

from __future__ import annotations

PENDING = "ip-fragment-pending"       # held, not decided yet (none left once finish() ran)
MERGED = "ip-fragment-reassembled"    # part of a datagram reassembled at a later frame (counted there)
DROPPED = "ip-fragment"               # given up: incomplete, timed out, over a bound, or cut by the snaplen

TIMEOUT_S = 30.0                # Linux net.ipv4.ipfrag_time default
MAX_PENDING = 1024              # datagrams being put together at once
MAX_HELD_BYTES = 16 << 20       # payload bytes held over all of them
MAX_PIECES = 512                # pieces of one datagram (tiny-fragment floods)
MAX_PAYLOAD = 65_535            # no IP length field can say more

_IP6_FIXED = 40


class _Datagram:
    """The pieces of one datagram so far."""

    __slots__ = ("covered", "first_ts", "header", "nbytes", "pieces", "tags", "total")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.header = b""                              # the IP header to put in front (from the offset-0 piece)
        self.pieces: list[tuple[int, bytes]] = []      # (offset, bytes) in arrival order
        self.covered: list[tuple[int, int]] = []       # sorted, disjoint [start, end) byte ranges
        self.total = -1                                # payload length, once the last piece came
        self.nbytes = 0
        self.tags: list[object] = []                   # the caller's handles of the pieces' packets

    def add(self, start: int, data: bytes, last: bool) -> bool:
        """Add one piece; False when it contradicts what arrived before (a second, different end)."""
        end = start + len(data)
        if last:
            if self.total >= 0 and self.total != end:
                return False
            self.total = end
        if self.total >= 0 and end > self.total:
            return False
        self.pieces.append((start, data))
        self.nbytes += len(data)
        self.covered = _merge(self.covered, start, end)
        return True

    def complete(self) -> bool:
        return (self.total >= 0 and bool(self.header) and len(self.covered) == 1
                and self.covered[0] == (0, self.total))

    def payload(self) -> bytes:
        out = bytearray(self.total)
        for start, data in reversed(self.pieces):   # later pieces first, so the first arrival wins on overlap
            out[start:start + len(data)] = data
        return bytes(out)


def _merge(covered: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """covered with [start, end) added, still sorted and disjoint (touching ranges joined)."""
    if end <= start:
        return covered
    out: list[tuple[int, int]] = []
    for a, b in covered:
        if b < start or a > end:
            out.append((a, b))
        else:
            start, end = min(a, start), max(b, end)
    out.append((start, end))
    out.sort()
    return out


class Reassembler:
    """IPv4/IPv6 reassembly state of one walk; counts go to `skipped` (the walk's ReaderStats.skipped)."""

    def __init__(self, skipped: dict[str, int], timeout_s: float = TIMEOUT_S, max_pending: int = MAX_PENDING,
                 max_held_bytes: int = MAX_HELD_BYTES) -> None:
        self.skipped = skipped
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_held_bytes = max_held_bytes
        self.pending: dict[tuple[bytes, bytes, int, int], _Datagram] = {}   # oldest first (insertion order)
        self.held = 0
        self.now = float("-inf")   # the latest capture time seen (captures can step back in time)
        self.reassembled = 0       # datagrams put together
        self.tag: object = None    # optional: the caller's handle of the packet it is decoding now ...
        self.completed: tuple[object, ...] = ()   # ... and those of the pieces of the last datagram completed

    # -- the walk's entry points: a str result is the skip reason the walk counts for the piece's packet

    def ipv4(self, buf: bytes, off: int, end: int, ts: float) -> bytes | str:
        """The IPv4 fragment at buf[off:] (end = captured end): the whole datagram (header + payload) once
        this piece completes it, else PENDING (held) or DROPPED (given up)."""
        ihl = (buf[off] & 15) << 2
        tot = (buf[off + 2] << 8) | buf[off + 3]
        frag = (buf[off + 6] << 8) | buf[off + 7]
        key = (buf[off + 12:off + 16], buf[off + 16:off + 20], (buf[off + 4] << 8) | buf[off + 5], buf[off + 9])
        start = (frag & 0x1FFF) << 3
        header = buf[off:off + ihl] if start == 0 else b""
        if tot < ihl or off + tot > end:   # cut by the snaplen (or a TSO length): its bytes are not all here
            return self._give_up(key)
        whole = self._piece(key, ts, start, buf[off + ihl:off + tot], not frag & 0x2000, header)
        if isinstance(whole, str):
            return whole
        hdr, payload = whole
        length = len(hdr) + len(payload)
        return (hdr[:2] + bytes(((length >> 8) & 0xFF, length & 0xFF)) + hdr[4:6] + b"\0\0" + hdr[8:10]
                + b"\0\0" + hdr[12:] + payload)

    def ipv6(self, buf: bytes, off: int, fh: int, ip_end: int, end: int, ts: float) -> bytes | str:
        """The IPv6 fragment whose header starts at off and whose fragment header is at fh; ip_end is where
        its payload length says it ends. The whole datagram once complete, as a plain IPv6 header (the
        extension headers before the fragment header left out) + payload, else PENDING or DROPPED."""
        key = (buf[off + 8:off + 24], buf[off + 24:off + 40],
               (buf[fh + 4] << 24) | (buf[fh + 5] << 16) | (buf[fh + 6] << 8) | buf[fh + 7], -1)
        fo = (buf[fh + 2] << 8) | buf[fh + 3]
        start = fo & 0xFFF8
        nh = buf[fh]
        header = buf[off:off + 6] + bytes((nh,)) + buf[off + 7:off + _IP6_FIXED] if start == 0 else b""
        if ip_end > end or ip_end < fh + 8:
            return self._give_up(key)
        whole = self._piece(key, ts, start, buf[fh + 8:ip_end], not fo & 1, header)
        if isinstance(whole, str):
            return whole
        hdr, payload = whole
        n = len(payload)
        return hdr[:4] + bytes(((n >> 8) & 0xFF, n & 0xFF)) + hdr[6:] + payload

    def finish(self) -> None:
        """The end of the walk: what is still pending is given up."""
        for key in list(self.pending):
            self._drop(key)

    # -- the state

    def _piece(self, key: tuple[bytes, bytes, int, int], ts: float, start: int, data: bytes, last: bool,
               header: bytes) -> tuple[bytes, bytes] | str:
        if ts > self.now:
            self.now = ts
            self._expire()
        if start + len(data) > MAX_PAYLOAD:
            return self._give_up(key)
        dg = self.pending.get(key)
        if dg is None:
            while len(self.pending) >= self.max_pending or (self.pending and self.held + len(data)
                                                              > self.max_held_bytes):
                self._drop(next(iter(self.pending)))
            dg = self.pending[key] = _Datagram(ts)
        if len(dg.pieces) >= MAX_PIECES or not dg.add(start, data, last):
            return self._give_up(key)
        self.held += len(data)
        dg.tags.append(self.tag)
        if header and not dg.header:
            dg.header = header
        if not dg.complete():
            return PENDING
        del self.pending[key]
        self.held -= dg.nbytes
        self.completed = tuple(dg.tags)
        self._move(len(dg.pieces) - 1, MERGED)   # the completing piece is its datagram's own packet
        self.reassembled += 1
        return dg.header, dg.payload()

    def _give_up(self, key: tuple[bytes, bytes, int, int]) -> str:
        """This piece cannot be used: its datagram (if any) is given up with it."""
        self._drop(key)
        return DROPPED

    def _drop(self, key: tuple[bytes, bytes, int, int]) -> None:
        dg = self.pending.pop(key, None)
        if dg is not None:
            self.held -= dg.nbytes
            self._move(len(dg.pieces), DROPPED)

    def _expire(self) -> None:
        limit = self.now - self.timeout_s
        while self.pending:
            key = next(iter(self.pending))
            if self.pending[key].first_ts >= limit:
                return
            self._drop(key)

    def _move(self, n: int, to: str) -> None:
        if n <= 0:
            return
        s = self.skipped
        left = s.get(PENDING, 0) - n
        if left > 0:
            s[PENDING] = left
        else:
            s.pop(PENDING, None)
        s[to] = s.get(to, 0) + n
