"""The JSON text of the analyzer's records, written straight from them: exactly `json.dumps(record.to_dict())`
(its separators, number format and ASCII escapes) without building the dicts.

`twlab analyze --json` writes one such text per finished connection and finding; on a churn capture with
100 k connections dict-building + json.dumps cost more than the analysis itself. This module is in the
compiled group (lab.accel.COMPILED): mypyc turns the f-strings below into one allocation each. Anything
outside the records' declared types (a float that is not finite, an int subclass, an extra value json
would write differently) goes to json's own encoder, so the text cannot drift from to_dict();
tests/unit/test_jsontext.py checks that on generated records.
"""

from __future__ import annotations

import json
from _json import make_encoder
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as _q
from math import copysign
from typing import Any, Final, cast

from lab.core.report import (
    CLOSE_KINDS,
    DUPLICATE_VERDICTS,
    ENDED_BY,
    FINDING_KINDS,
    REUSE_VERDICTS,
    SIDES,
    THREE_DIGITS,
    Close,
    Connection,
    Finding,
    TimeWaitWindow,
)
from lab.core.tcpstate import Input, TcpState

_dumps = json.JSONEncoder(check_circular=False).encode
_FINDING_BASE: Final = frozenset({"kind", "connection", "frames", "detail"})
_SIDE_TEXT: Final = ('"client"', '"server"')
# TcpState/Input members by id(): their text is fixed, and an id is cheaper than any hash
_ENUM_TEXT: Final[dict[int, str]] = {id(m): _q(m.value) for e in (TcpState, Input) for m in e}
# the quoted text of the records' fixed words (their Literal values, the tracker's `extra` keys and answers): a
# dict lookup is ~6x cheaper than encode_basestring_ascii; a word missing here is only quoted the slow way
_WORDS: Final[dict[str, str]] = {w: _q(w) for w in (
    *SIDES, "both", *CLOSE_KINDS, *FINDING_KINDS, *ENDED_BY, *REUSE_VERDICTS, *DUPLICATE_VERDICTS,
    "verdict", "elapsed_s", "time_wait_side", "previous_connection", "answer", "answer_frame", "side", "ack",
    "first_frame", "retransmissions", "count", "repeats", "ack_frame", "retransmission_frame", "lost_by",
    "fin_frame", "rst_frame", "rst_side", "time_wait_start_frame",
    "SYN-ACK (accepted)", "RST", "none seen", "old connection's ACK (refused)", "old connection's state")}

_KEY_TEXT: Final[dict[str, str]] = {w: f"{t}: " for w, t in _WORDS.items()}   # a word as a member's key


def _text(s: str) -> str:
    """_q(s), looked up when s is one of the fixed words."""
    t = _WORDS.get(s)
    return _q(s) if t is None else t


# the ASCII bytes that JSON writes as they are: printable, not a quote or a backslash
_UNESCAPED: Final = bytes([b for b in range(0x20, 0x7F) if b not in b'"\\'])


def _q_text(s: str) -> str:
    """_q(s) of a sentence (a finding's detail): compiled, one that needs no escape (printable ASCII without
    quotes or backslashes, most) is found by one C pass over its bytes (what is left once those are deleted),
    ~3x cheaper than _q on ~150 characters and than str.isprintable."""
    if _COMPILED and s.isascii() and not s.encode().translate(None, _UNESCAPED):
        return f'"{s}"'
    return _q(s)


def _ints(t: tuple[int, ...]) -> str:
    """A tuple of ints as a JSON list."""
    n = len(t)
    if n == 1:                       # the common lengths (a finding's frames, a close's) in one build
        return f"[{t[0]}]"
    if n == 2:
        return f"[{t[0]}, {t[1]}]"
    if n == 3:
        return f"[{t[0]}, {t[1]}, {t[2]}]"
    if n == 4:
        return f"[{t[0]}, {t[1]}, {t[2]}, {t[3]}]"
    if not t:
        return "[]"
    return "[" + ", ".join([str(x) for x in t]) + "]"


def _float(x: float) -> str:
    if _COMPILED:
        if _TS_LOW <= x < _TS_HIGH:
            text = _timestamp(x)
            if text:
                return text
        elif -_INTEGRAL < x < _INTEGRAL and x == int(x) and (x != 0.0 or copysign(1.0, x) > 0.0):
            # integral (a window's length_s 60.0, left_s 0.0): repr writes "N.0" below 1e16; -0.0 takes repr
            return f"{int(x)}.0"
    if x - x == 0.0:   # finite: json writes float.__repr__ (nan and inf differ)
        return repr(x)
    return _dumps(x)


# float.__repr__ (the shortest text that reads back as the same float) of a capture timestamp or an elapsed
# time rounded to 6 places, 2-3x faster. In [1e-4, 2**32) two 6-decimal numbers are further apart than a
# float's spacing (2**-21 at most), so a 6-decimal text that reads back as x is the only one, hence the
# shortest (a shorter text would be another one with at most 6 decimals): it is repr(x) once its trailing
# zeros go (repr writes no exponent from 1e-4 up). "Reads back" is checked exactly: (sec * 1e6 + usec) / 1e6
# is one correctly rounded division of two exact integers, as float("sec.usec") is. Anything else
# (nanosecond captures, a duration with more decimals) fails the check and takes repr().
# Only compiled: interpreted, these few operations cost more than float.__repr__ itself.
_COMPILED: Final = not __file__.endswith(".py")
_TS_LOW: Final = 1e-4
_TS_HIGH: Final = 4294967296.0
_USEC: Final = 1000000
# the microseconds' text as two 3-digit groups, the last without its trailing zeros: a tuple index, not a loop
_TRIMMED: Final[tuple[str, ...]] = tuple([f"{i:03d}".rstrip("0") for i in range(1000)])
_INTEGRAL: Final = 1e16                   # repr of an integral float below this has no exponent


def _timestamp(x: float) -> str:
    """repr(x) for x in [_TS_LOW, _TS_HIGH) with at most 6 decimals, else ""."""
    sec = int(x)
    usec = int((x - sec) * 1e6 + 0.5)
    # in floats, exactly (integers below 2**53): a tagged-int product above 2**31 takes the big-int path
    if usec >= _USEC or (float(sec) * 1e6 + usec) / 1e6 != x:
        return ""
    if usec == 0:
        return f"{sec}.0"
    milli = usec // 1000
    rest = usec - milli * 1000
    if rest == 0:
        return f"{sec}.{_TRIMMED[milli]}"
    return f"{sec}.{THREE_DIGITS[milli]}{_TRIMMED[rest]}"


def _no_default(o: object) -> Any:
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


# json.dumps' own C encoder, made once (json.dumps makes one per call): the findings' `extra` dicts
_encode_dict: Final = make_encoder(None, _no_default, _q, None, ": ", ", ", False, False, True)


def _members(d: Mapping[str, Any]) -> str:
    """The "key": value pairs of a mapping as json.dumps writes them, without braces."""
    return "".join(_encode_dict(d if type(d) is dict else dict(d), 0))[1:-1]


def _plain_members(d: dict[str, Any]) -> str:
    """_members of a dict of str keys whose values are None, bool, int, float, str or a list of those (what
    the tracker's findings carry), written here: json's encoder costs ~20k instructions per finding (a call,
    its accumulator, a quoting call per string). "" for anything else (json's encoder writes that), for a
    key a Finding's own fields shadow, and for an empty dict. Compiled only, as _timestamp."""
    parts: list[str] = []     # key texts, values and separators: one join, no string per member
    for k, v in d.items():
        if type(k) is not str or k in _FINDING_BASE:
            return ""
        t = _plain(v, True)
        if not t:
            return ""
        if parts:
            parts.append(", ")
        key = _KEY_TEXT.get(k)
        parts.append(f"{_q(k)}: " if key is None else key)
        parts.append(t)
    return "".join(parts)


def _plain(v: object, top: bool) -> str:
    """A value's JSON text when it is None, bool, int, float, str or (top) a list of those; else ""."""
    if v is None:
        return "null"
    tv = type(v)
    if tv is str:
        return _text(cast(str, v))
    if tv is int:
        return str(cast(int, v))
    if tv is float:
        return _float(cast(float, v))
    if tv is bool:
        return "true" if v else "false"
    if top and tv is list:
        items: list[str] = []
        for x in cast(list[object], v):
            t = _plain(x, False)
            if not t:
                return ""
            items.append(t)
        return f"[{', '.join(items)}]"
    return ""


def window_json(w: TimeWaitWindow) -> str:
    """TimeWaitWindow.to_dict() as JSON text."""
    side = _text(w.side)
    ended_by = _text(w.ended_by)
    return (f'{{"side": {side}, "start_ts": {_float(w.start_ts)}, "end_ts": {_float(w.end_ts)}, '
            f'"start_frame": {w.start_frame}, "restarts": {_ints(w.restarts)}, '
            f'"ended_by": {ended_by}, "end_frame": {"null" if w.end_frame is None else str(w.end_frame)}, '
            f'"length_s": {_float(w.length_s)}, "left_s": {_float(w.left_s)}}}')


def close_json(cl: Close) -> str:
    who = cl.initiator
    initiator = "null" if who is None else _text(who)
    return (f'{{"kind": {_text(cl.kind)}, "initiator": {initiator}, '
            f'"frames": {_ints(cl.frames)}}}')


def connection_json(c: Connection, detail: bool = False) -> str:
    """Connection.to_dict() as JSON text; without `detail` no `transitions` and `roles` (the keys stay in
    to_dict()'s order, those two last)."""
    tw = c.time_wait
    if not tw:
        windows = "[]"
    elif len(tw) == 1:
        windows = f"[{window_json(tw[0])}]"
    else:
        windows = f"[{', '.join([window_json(w) for w in tw])}]"
    cisn = c.client_isn
    sisn = c.server_isn
    text = (f'{{"id": {c.id}, "client": {_q(c.client)}, "server": {_q(c.server)}, '
            f'"incarnation": {c.incarnation}, "first_frame": {c.first_frame}, '
            f'"last_frame": {c.last_frame}, "close": {close_json(c.close)}, "time_wait": {windows}, '
            f'"first_ts": {_float(c.first_ts)}, "last_ts": {_float(c.last_ts)}, "packets": {c.packets}, '
            f'"isn": {{"client": {"null" if cisn is None else str(cisn)}, '
            f'"server": {"null" if sisn is None else str(sisn)}}}, '
            f'"mid_capture": {"true" if c.mid_capture else "false"}, '
            f'"open_at_end": {"true" if c.open_at_end else "false"}')
    if detail:
        return f'{text}, "transitions": [{_steps_json(c)}], "roles": [{_roles_json(c)}]}}'
    return text + "}"


def _steps_json(c: Connection) -> str:
    """Connection.steps as Transition.to_dict() writes them, straight from the compact tuples."""
    e = _ENUM_TEXT
    return ", ".join([f'{{"frame": {f}, "side": {_SIDE_TEXT[i]}, "from": {e[id(a)]}, "to": {e[id(b)]}, '
                      f'"inferred": {"true" if inferred else "false"}, "cause": {e[id(inp)]}}}'
                      for f, i, a, b, inferred, inp in c.steps])


def _roles_json(c: Connection) -> str:
    return ", ".join([f"[{f}, {_SIDE_TEXT[i]}, {_q(r)}]" for f, i, r in c.roles])


def finding_json(f: Finding) -> str:
    """Finding.to_dict() as JSON text."""
    extra = f.extra
    members = _plain_members(extra) if _COMPILED and extra and type(extra) is dict else ""
    if extra and not members:
        if not _FINDING_BASE.isdisjoint(extra):
            return _dumps(f.to_dict())  # an extra key shadowed by a base key: to_dict() decides
        members = _members(extra)
    cid = f.connection
    head = (f'{{"kind": {_text(f.kind)}, '
            f'"connection": {"null" if cid is None else str(cid)}, '
            f'"frames": {_ints(f.frames)}, "detail": {_q_text(f.detail)}')
    if not extra:
        return head + "}"
    return f"{head}, {members}}}"


def connections_json(conns: list[Connection], detail: bool) -> str:
    """connection_json of each, joined by ", " (a stretch of a JSON list)."""
    return ", ".join([connection_json(c, detail) for c in conns])


def findings_json(findings: list[Finding]) -> str:
    return ", ".join([finding_json(f) for f in findings])
