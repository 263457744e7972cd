"""32-bit TCP sequence-number arithmetic (RFC 9293 section 3.4, RFC 1982 style comparison): the one home of
the modulus. TSvals (RFC 7323) wrap the same way."""

from __future__ import annotations

from typing import Final

MOD: Final = 1 << 32
MASK: Final = 0xFFFFFFFF     # x & MASK == x % MOD (the hot paths mask; Final: mypyc inlines it)
HALF: Final = 1 << 31


def diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space, in [-2^31, 2^31)."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d
