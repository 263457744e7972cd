"""Merge the analyzer's records of one capture analyzed in parts (shards split by four-tuple, each part
analyzed by its own process or machine) into the records one analyzer would have made. Pure: records in,
records out.

Every incarnation of a four-tuple is in exactly one part, so the parts' connections are disjoint and each
finding belongs to one part. What differs between parts is only the numbering: each part numbers its own
connections 0, 1, ... in the order of their first segment. One analyzer numbers all of them in that order,
so the merge sorts every connection by its first frame (a frame starts at most one connection) and gives
ids 0..n-1 in that order, and rewrites each id a finding names: `connection`, `previous_connection` in its
facts, and "connection N" in its text (the previous incarnation it compares with is in the same part).

Counts (segments, skipped-by-reason) add up; the reader's own counts (packets, TCP segments) are the same in
every part that read the whole capture and are not merged here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from lab.core.report import Connection, Finding

_ID_IN_TEXT = re.compile(r"\bconnection (\d+)")
_ID_FACTS = ("previous_connection",)


class Part(NamedTuple):
    """One part's records (ids its own, 0..) and the TCP segments its analyzer took."""

    connections: Sequence[Connection]
    findings: Sequence[Finding]
    segments: int = 0


class Merged(NamedTuple):
    """The records as one analyzer numbers them: connections by id, findings in the Report's order."""

    connections: tuple[Connection, ...]
    findings: tuple[Finding, ...]
    segments: int


def merge_parts(parts: Sequence[Part]) -> Merged:
    """The parts' records renumbered in first-segment order (see the module's docstring)."""
    order = sorted(((c.first_frame, p, c.id) for p, part in enumerate(parts) for c in part.connections))
    new_id: list[dict[int, int]] = [{} for _ in parts]
    for n, (_frame, p, old) in enumerate(order):
        new_id[p][old] = n
    by_key = {(p, c.id): c for p, part in enumerate(parts) for c in part.connections}
    make = Connection._make     # _replace is Python code per call; the tuple with its new id is cheaper
    conns = [make((n, *by_key[p, old][1:])) for n, (_frame, p, old) in enumerate(order)]
    findings = [renumber_finding(f, new_id[p]) for p, part in enumerate(parts) for f in part.findings]
    findings.sort(key=finding_order)
    return Merged(tuple(conns), tuple(findings), sum(part.segments for part in parts))


def renumber_finding(f: Finding, ids: Mapping[int, int]) -> Finding:
    """`f` with every connection id it names mapped through `ids` (ids it does not know stay)."""
    def mapped(i: int | None) -> int | None:
        return None if i is None else ids.get(i, i)

    detail = f.detail
    if "connection " in detail:
        detail = _ID_IN_TEXT.sub(lambda m: f"connection {mapped(int(m.group(1)))}", detail)
    extra = f.extra
    if any(k in extra for k in _ID_FACTS):
        extra = {k: (mapped(v) if k in _ID_FACTS and isinstance(v, int) else v) for k, v in extra.items()}
    return f._replace(connection=mapped(f.connection), detail=detail, extra=extra)


def finding_order(f: Finding) -> tuple[int, str]:
    """The Report's order of findings: by first frame, then kind (tracker.finish())."""
    return (f.frames[0] if f.frames else 0, f.kind)


def add_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Per-reason counts (e.g. ReaderStats.skipped) of several parts or files, added."""
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out
