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
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from lab.core.report import Close, Connection, Finding, TimeWaitWindow
from lab.core.tcpstate import Input, TcpState

_dumps = json.JSONEncoder(check_circular=False).encode
_FINDING_BASE: Final = frozenset({"kind", "connection", "frames", "detail"})
_SIDE_TEXT: Final = ('"client"', '"server"')
# TcpState/Input members by id(): their text is fixed, and an id is cheaper than any hash
_ENUM_TEXT: Final[dict[int, str]] = {id(m): encode_basestring_ascii(m.value) for e in (TcpState, Input) for m in e}


def _str(s: str) -> str:
    return encode_basestring_ascii(s)


def _opt_int(n: int | None) -> str:
    return "null" if n is None else str(n)


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _ints(t: tuple[int, ...]) -> str:
    """A tuple of ints as a JSON list."""
    if not t:
        return "[]"
    return "[" + ", ".join([str(x) for x in t]) + "]"


def _float(x: float) -> str:
    if _TS_LOW <= x < _TS_HIGH:
        text = _timestamp(x)
        if text:
            return text
    if x - x == 0.0:   # finite: json writes float.__repr__ (nan and inf differ)
        return repr(x)
    return _dumps(x)


# float.__repr__ (the shortest text that reads back as the same float) of a capture timestamp, 2-3x faster:
# a pcap timestamp is seconds + microseconds. In [2**14, 2**32) two 6-decimal numbers are further apart
# than a float's spacing (2**-21 at most), so a 6-decimal text that reads back as x is the only one, hence
# the shortest: it is repr(x) once its trailing zeros go. "Reads back": sec + usec / 1e6 rounds twice, but
# a decimal with 6 places is never within 2**-54 (the error of usec / 1e6) of a midpoint between two floats
# of 2**13 or more (the midpoints' denominators are powers of two >= 2**7, the decimal's 2**6 * 5**6), so it
# rounds as float("sec.usec") does. Anything else (nanosecond captures) fails the check and takes repr().
_TS_LOW: Final = 16384.0
_TS_HIGH: Final = 4294967296.0
_USEC: Final = 1000000


def _timestamp(x: float) -> str:
    """repr(x) for x in [_TS_LOW, _TS_HIGH) with at most 6 decimals, else ""."""
    sec = int(x)
    usec = int((x - sec) * 1e6 + 0.5)
    if usec >= _USEC or sec + usec / 1e6 != x:
        return ""
    if usec == 0:
        return f"{sec}.0"
    return f"{sec}.{str(usec + _USEC)[1:].rstrip('0')}"


def value(o: object) -> str:
    """Any JSON value as json.dumps writes it; the common types here, the rest by json itself."""
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if isinstance(o, str):
        return encode_basestring_ascii(o)
    if type(o) is int:
        return str(o)
    if type(o) is float:
        return _float(o)
    if isinstance(o, (list, tuple)):
        return "[" + ", ".join([value(x) for x in o]) + "]"
    if isinstance(o, dict):
        return "{" + _members(o) + "}"
    return _dumps(o)


def _members(d: Mapping[Any, Any]) -> str:
    """The "key": value pairs of a mapping, without braces."""
    parts: list[str] = []
    for k, v in d.items():
        if not isinstance(k, str):   # json converts int/float/bool/None keys: let it
            return _dumps(dict(d))[1:-1]
        parts.append(f"{encode_basestring_ascii(k)}: {value(v)}")
    return ", ".join(parts)


def window_json(w: TimeWaitWindow) -> str:
    """TimeWaitWindow.to_dict() as JSON text."""
    return (f'{{"side": {_str(w.side)}, "start_ts": {_float(w.start_ts)}, "end_ts": {_float(w.end_ts)}, '
            f'"start_frame": {w.start_frame}, "restarts": {_ints(w.restarts)}, '
            f'"ended_by": {_str(w.ended_by)}, "end_frame": {_opt_int(w.end_frame)}, '
            f'"length_s": {_float(w.length_s)}, "left_s": {_float(w.left_s)}}}')


def close_json(cl: Close) -> str:
    who = cl.initiator
    return (f'{{"kind": {_str(cl.kind)}, "initiator": {"null" if who is None else _str(who)}, '
            f'"frames": {_ints(cl.frames)}}}')


def connection_json(c: Connection, detail: bool = False) -> str:
    """Connection.to_dict() as JSON text; without `detail` no `transitions` and `roles` (the keys stay in
    to_dict()'s order, those two last)."""
    tw = c.time_wait
    if not tw:
        windows = "[]"
    elif len(tw) == 1:
        windows = "[" + window_json(tw[0]) + "]"
    else:
        windows = "[" + ", ".join([window_json(w) for w in tw]) + "]"
    text = (f'{{"id": {c.id}, "client": {_str(c.client)}, "server": {_str(c.server)}, '
            f'"incarnation": {c.incarnation}, "first_frame": {c.first_frame}, '
            f'"last_frame": {c.last_frame}, "close": {close_json(c.close)}, "time_wait": {windows}, '
            f'"first_ts": {_float(c.first_ts)}, "last_ts": {_float(c.last_ts)}, "packets": {c.packets}, '
            f'"isn": {{"client": {_opt_int(c.client_isn)}, "server": {_opt_int(c.server_isn)}}}, '
            f'"mid_capture": {_bool(c.mid_capture)}, "open_at_end": {_bool(c.open_at_end)}')
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
    return ", ".join([f"[{f}, {_SIDE_TEXT[i]}, {_str(r)}]" for f, i, r in c.roles])


def finding_json(f: Finding) -> str:
    """Finding.to_dict() as JSON text."""
    extra = f.extra
    if extra and not _FINDING_BASE.isdisjoint(extra):
        return _dumps(f.to_dict())  # an extra key shadowed by a base key: to_dict() decides
    head = (f'{{"kind": {_str(f.kind)}, "connection": {_opt_int(f.connection)}, "frames": {_ints(f.frames)}, '
            f'"detail": {_str(f.detail)}')
    if not extra:
        return head + "}"
    return head + ", " + _members(extra) + "}"


def connections_json(conns: list[Connection], detail: bool) -> str:
    """connection_json of each, joined by ", " (a stretch of a JSON list)."""
    return ", ".join([connection_json(c, detail) for c in conns])


def findings_json(findings: list[Finding]) -> str:
    return ", ".join([finding_json(f) for f in findings])
