"""The analyzer's four-tuple key (Analyzer._key): one key for both directions of a four-tuple, distinct keys
for distinct four-tuples, in its compact form (address numbers below 2**14: a native int when compiled) and
its wide form (more addresses), and the same verdicts whichever form a four-tuple gets."""

from __future__ import annotations

from lab.core.model import ACK, FIN, SYN
from lab.core.report import Connection
from lab.core.tracker import Analyzer

COMPACT = 1 << 14


def _addr(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _numbered(count: int) -> Analyzer:
    """An analyzer that has seen `count` addresses (numbered 0..count-1 in order of first sight)."""
    a = Analyzer("linux", None, detail=True)
    for n in range(count):
        a._addr_no(_addr(n))
    return a


def _close(a: Analyzer, cl: str, srv: str, frame: int) -> None:
    """A handshake, one byte of data and a four-way close on cl:40000 -> srv:80."""
    a.feed_fields(frame, 1.0, cl, 40000, srv, 80, 1000, 0, SYN, 65535, 0, -1)
    a.feed_fields(frame + 1, 1.1, srv, 80, cl, 40000, 5000, 1001, SYN | ACK, 65535, 0, -1)
    a.feed_fields(frame + 2, 1.2, cl, 40000, srv, 80, 1001, 5001, ACK, 65535, 1, -1)
    a.feed_fields(frame + 3, 1.3, cl, 40000, srv, 80, 1002, 5001, FIN | ACK, 65535, 0, -1)
    a.feed_fields(frame + 4, 1.4, srv, 80, cl, 40000, 5001, 1003, ACK, 65535, 0, -1)
    a.feed_fields(frame + 5, 1.5, srv, 80, cl, 40000, 5001, 1003, FIN | ACK, 65535, 0, -1)
    a.feed_fields(frame + 6, 1.6, cl, 40000, srv, 80, 1003, 5002, ACK, 65535, 0, -1)


def _summary(c: Connection) -> tuple[object, ...]:
    return (c.close, c.packets, c.time_wait, c.steps, c.roles, c.client_isn, c.server_isn)


def test_both_directions_share_a_key_and_four_tuples_do_not() -> None:
    a = _numbered(COMPACT + 3)
    keys = set()
    pairs = set()
    for x, y in ((0, 1), (1, 0), (5, 5), (COMPACT - 1, COMPACT - 2), (COMPACT, 0), (2, COMPACT + 2),
                 (COMPACT + 1, COMPACT + 2)):
        for sp, dp in ((80, 40000), (40000, 80), (443, 443)):
            k1 = a._key(_addr(x), sp, _addr(y), dp)
            k2 = a._key(_addr(y), dp, _addr(x), sp)
            assert k1 >> 1 == k2 >> 1
            assert (k1 & 1) != (k2 & 1) or (x == y and sp == dp)
            wide = x >= COMPACT or y >= COMPACT
            assert (k1 >> 1 >= 1 << 127) == wide
            keys.add(k1 >> 1)
            pairs.add(frozenset({(x, sp), (y, dp)}))
    assert len(keys) == len(pairs) == 17      # one key per unordered pair of endpoints


def test_a_wide_key_tracks_a_connection_as_a_compact_one_does() -> None:
    small = Analyzer("linux", None, detail=True)
    _close(small, _addr(1), _addr(2), 1)
    big = _numbered(COMPACT + 5)
    _close(big, _addr(COMPACT + 3), _addr(COMPACT + 4), 1)
    mixed = _numbered(COMPACT + 5)
    _close(mixed, _addr(7), _addr(COMPACT + 4), 1)
    got = [r.finish().connections for r in (small, big, mixed)]
    assert [len(c) for c in got] == [1, 1, 1]
    assert got[0][0].close.kind == "four-way" and got[0][0].packets == 7
    assert _summary(got[1][0]) == _summary(got[0][0]) == _summary(got[2][0])
