"""32-bit TCP sequence-number arithmetic (RFC 9293 section 3.4, RFC 1982 style comparison)."""

from __future__ import annotations

MOD = 1 << 32
HALF = 1 << 31


def add(a: int, n: int) -> int:
    return (a + n) % MOD


def diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space, in [-2^31, 2^31)."""
    d = (a - b) % MOD
    return d - MOD if d >= HALF else d


def lt(a: int, b: int) -> bool:
    return diff(a, b) < 0


def le(a: int, b: int) -> bool:
    return diff(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return diff(a, b) > 0


def ge(a: int, b: int) -> bool:
    return diff(a, b) >= 0


def in_window(seq: int, left: int, size: int) -> bool:
    """True when left <= seq < left + size (mod 2^32); an empty window holds nothing."""
    return 0 <= diff(seq, left) < size if size > 0 else False


def rel(seq: int, isn: int) -> int:
    """Sequence number relative to an ISN, as Wireshark shows it (0 for the SYN)."""
    return (seq - isn) % MOD
