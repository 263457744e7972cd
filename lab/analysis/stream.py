"""`twlab analyze` on captures of any size: the analyzer in streaming mode (keep=False), its finished
records written out as they come (JSON) or counted (the people's summary), so memory follows the open
connections, not the file size.

JSON: one object per file, keys in the order they become known: `file`, `profile`, `time_wait_s`, then
`connections` (in the order they end), `findings` (in the order their connection ended), then the counts
only the end of the file gives (`packets`, `tcp_segments`, `skipped`, `segments`). Both lists go to
temporary spool files while the file is read; the object reaches the output only once the whole file was
read, so a capture damaged in the middle leaves no half-written line.

The records' JSON text (the contract's, docs/design.md) comes from lab.core.jsontext, written straight from
the records and compiled with the analyzer: exactly json.dumps(record.to_dict()) without building the dicts
(tests/unit/test_jsontext.py), ~3x faster than that on a churn capture even when interpreted.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab import __version__
from lab.analysis.census import CensusFold
from lab.core.jsontext import connection_json, connections_json, finding_json, findings_json
from lab.core.report import Connection, Finding, Report
from lab.core.tracker import Analyzer
from lab.errors import UsageError
from lab.pcap.feed import Progress, feed_file
from lab.pcap.filters import SegmentFilter
from lab.pcap.readers import ReaderStats
from lab.pcap.writer import spool

Records = Callable[[list[Connection], list[Finding]], None]
# feeds an Analyzer from some source (a capture file, a pipe, a live capture), calling on_batch() now and then
Feeder = Callable[[Analyzer, Callable[[], None]], ReaderStats]

SCHEMA = 1   # "schema" of every JSON document analyze writes (docs/schema/analyze.schema.json)

_SIDES = ("client", "server")
SHOWN = 200  # connections and findings a people's summary lists (the counters cover all of them)
_VERDICT_KINDS = ("reuse-in-time-wait", "delayed-duplicate")
_dumps = json.JSONEncoder(check_circular=False).encode


# --- the streaming loop ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """How to analyze: the profile, the filters, what to do with a capture cut short, the census's ports."""

    profile: str = "linux"
    time_wait_s: float | None = None
    detail: bool = False
    filt: SegmentFilter | None = None
    lenient: bool = False                        # a capture cut short: analyze up to the cut (stats.cut)
    port_range: tuple[int, int] | None = None    # the census's ephemeral range (default: the profile's)
    progress: Progress | None = None
    warn: Callable[[str], None] | None = None    # told the warning line of a capture cut short


def file_feeder(path: Path, opts: Options) -> Feeder:
    def feed(analyzer: Analyzer, on_batch: Callable[[], None]) -> ReaderStats:
        return feed_file(path, analyzer, on_batch, filt=opts.filt, lenient=opts.lenient, progress=opts.progress)
    return feed


def run(path: str | Path | Feeder, records: Records, profile: str = "linux", time_wait_s: float | None = None,
        detail: bool = False, opts: Options | None = None) -> tuple[Report, ReaderStats]:
    """Analyze one capture (a path, or a Feeder such as a live capture), handing each batch of finished
    connections and findings to records(...).

    Returns the analyzer's Report (counts only: keep=False) and the reader's stats. BadCapture propagates
    (at the file header before any records; mid-file after some)."""
    if opts is None:
        opts = Options(profile, time_wait_s, detail)
    analyzer = Analyzer(opts.profile, opts.time_wait_s, detail=opts.detail, keep=False)
    drain = analyzer.drain
    feed = file_feeder(Path(path), opts) if isinstance(path, (str, Path)) else path

    def on_batch() -> None:
        conns, findings = drain()
        if conns or findings:
            records(conns, findings)

    # as tracker.analyze(): the cyclic GC would walk every live connection again and again; the records
    # here form no cycles
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        stats = feed(analyzer, on_batch)
        report = analyzer.finish(on_batch)     # the connections open at the end, a batch at a time
        on_batch()
    finally:
        if was_enabled:
            gc.enable()
    if stats.cut and opts.warn is not None:
        opts.warn(stats.cut)
    return report, stats


def tee(*sinks: Records) -> Records:
    """One Records callback that hands every batch to each of `sinks`."""
    def records(conns: list[Connection], findings: list[Finding]) -> None:
        for sink in sinks:
            sink(conns, findings)
    return records


class FailOn:
    """`--fail-on KIND[:VERDICT]`: counts the findings that match any of the specs (exit 4 when any did)."""

    def __init__(self, specs: tuple[str, ...]) -> None:
        from lab.core.report import FINDING_KINDS

        self.specs: list[tuple[str, str | None]] = []
        for spec in specs:
            kind, _, verdict = spec.partition(":")
            if kind not in FINDING_KINDS:
                raise UsageError(f"--fail-on {spec!r}: unknown finding kind {kind!r}",
                                 f"one of {', '.join(FINDING_KINDS)} (optionally :VERDICT, e.g. "
                                 "reuse-in-time-wait:dangerous)")
            self.specs.append((kind, verdict or None))
        self.hits = 0

    def __call__(self, conns: list[Connection], findings: list[Finding]) -> None:
        if not self.specs:
            return
        for f in findings:
            for kind, verdict in self.specs:
                if f.kind == kind and (verdict is None or str(f.extra.get("verdict")) == verdict):
                    self.hits += 1
                    break


def document_head(name: str) -> str:
    """The first keys of every analyze JSON document: its schema version, twlab's version and the file."""
    return f'"schema": {SCHEMA}, "twlab": {_dumps(__version__)}, "file": {_dumps(name)}'


def warnings_of(stats: ReaderStats) -> list[str]:
    return [stats.cut] if stats.cut else []


# --- JSON -------------------------------------------------------------------------------------------------

class _JsonSpools:
    """Receives batches of records and appends their JSON text to two spool files."""

    def __init__(self, conns: IO[bytes], findings: IO[bytes], detail: bool) -> None:
        self.conns = conns
        self.findings = findings
        self.detail = detail
        self.n_conns = 0
        self.n_findings = 0

    def __call__(self, conns: list[Connection], findings: list[Finding]) -> None:
        if conns:
            text = connections_json(conns, self.detail)
            self.conns.write(((", " if self.n_conns else "") + text).encode())
            self.n_conns += len(conns)
        if findings:
            text = findings_json(findings)
            self.findings.write(((", " if self.n_findings else "") + text).encode())
            self.n_findings += len(findings)


def write_json(path: Path | Feeder, out: IO[bytes], profile: str = "linux", time_wait_s: float | None = None,
               detail: bool = False, opts: Options | None = None, records: Records | None = None,
               name: str | None = None) -> tuple[int, int]:
    """Analyze `path` (or a Feeder) and write its one-line `analyze --json` object to `out` (only once the
    whole capture was read: on BadCapture nothing is written). `records` also sees every batch (--fail-on).
    Returns (connections, findings) written."""
    if opts is None:
        opts = Options(profile, time_wait_s, detail)
    with spool("conns", ".json") as conns, spool("finds", ".json") as finds:
        sink = _JsonSpools(conns, finds, opts.detail)
        census = CensusFold()
        report, stats = run(path, tee(sink, census, *(() if records is None else (records,))), opts=opts)
        out.write(f'{{{document_head(name or str(path))}, "profile": {_dumps(report.profile)}, '
                  f'"time_wait_s": {_dumps(report.time_wait_s)}, "connections": ['.encode())
        conns.seek(0)
        shutil.copyfileobj(conns, out, 1 << 20)
        out.write(b'], "findings": [')
        finds.seek(0)
        shutil.copyfileobj(finds, out, 1 << 20)
        out.write(f'], {_tail_json(report, stats, census, opts)}}}\n'.encode())
        out.flush()
        return sink.n_conns, sink.n_findings


def _tail_json(report: Report, stats: ReaderStats, census: CensusFold, opts: Options) -> str:
    """The keys only the end of the capture gives: counts, the census, warnings."""
    doc = census.result(report.profile, report.time_wait_s, opts.port_range, stats.first_ts)
    return (f'"packets": {stats.packets}, "tcp_segments": {stats.tcp_segments}, '
            f'"skipped": {_dumps(dict(stats.skipped))}, "segments": {report.segments}, '
            f'"census": {_dumps(doc)}, "warnings": {_dumps(warnings_of(stats))}')


class _JsonLines:
    """--jsonl: one line per connection as it ends, each followed by its findings' lines, flushed per batch
    (so the lines do not depend on where batches fall: the same for the compiled and the pure walk)."""

    def __init__(self, out: IO[bytes], detail: bool) -> None:
        self.out = out
        self.detail = detail
        self.n_conns = 0
        self.n_findings = 0

    def __call__(self, conns: list[Connection], findings: list[Finding]) -> None:
        of: dict[int | None, list[str]] = {}
        for f in findings:
            of.setdefault(f.connection, []).append(f'{{"type": "finding", {finding_json(f)[1:]}\n')
        lines = []
        for c in conns:
            lines.append(f'{{"type": "connection", {connection_json(c, self.detail)[1:]}\n')
            lines += of.pop(c.id, ())
        for rest in of.values():      # findings whose connection ended in an earlier batch (none today)
            lines += rest
        if lines:
            self.out.write("".join(lines).encode())
            self.out.flush()
        self.n_conns += len(conns)
        self.n_findings += len(findings)


def write_jsonl(path: Path | Feeder, out: IO[bytes], opts: Options, records: Records | None = None,
                name: str | None = None) -> tuple[int, int]:
    """`analyze --jsonl`: a line per connection and finding as each ends, then one `"type": "summary"` line
    with the counts and the census. Lines already written stay when the capture turns out damaged."""
    lines = _JsonLines(out, opts.detail)
    census = CensusFold()
    report, stats = run(path, tee(lines, census, *(() if records is None else (records,))), opts=opts)
    out.write(f'{{"type": "summary", {document_head(name or str(path))}, "profile": {_dumps(report.profile)}, '
              f'"time_wait_s": {_dumps(report.time_wait_s)}, "connections": {lines.n_conns}, '
              f'"findings": {lines.n_findings}, {_tail_json(report, stats, census, opts)}}}\n'.encode())
    out.flush()
    return lines.n_conns, lines.n_findings


# --- the people's summary ----------------------------------------------------------------------------------

class _First:
    """The `limit` smallest items by key, in bounded memory (the list is cut back whenever it doubles)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[tuple[Any, Any]] = []
        self.bound: Any = None       # items with a key >= bound cannot be among the first `limit`

    def offer(self, key: Any, item: Any) -> None:
        if self.bound is not None and key >= self.bound:
            return
        self.items.append((key, item))
        if len(self.items) >= 2 * self.limit:
            self._cut()

    def _cut(self) -> None:
        self.items.sort(key=lambda kv: kv[0])
        del self.items[self.limit:]
        if len(self.items) == self.limit:
            self.bound = self.items[-1][0]

    def sorted(self) -> list[Any]:
        self._cut()
        return [item for _, item in self.items]


@dataclass
class Summary:
    """What `twlab analyze` shows people about one file: counters over every record, plus the first rows."""

    file: str
    profile: str = "linux"
    time_wait_s: float = 60.0
    limit: int = SHOWN
    connections: int = 0
    findings: int = 0
    closes: Counter[tuple[str, str]] = field(default_factory=Counter)         # (kind, initiator or "-")
    time_wait: Counter[tuple[str, str]] = field(default_factory=Counter)      # (side, ended_by)
    finding_kinds: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)       # (kind, verdict)
    packets: int = 0
    tcp_segments: int = 0
    segments: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_connections: list[dict[str, Any]] = field(default_factory=list)   # by id
    first_findings: list[dict[str, Any]] = field(default_factory=list)      # by first frame, kind
    census: dict[str, Any] = field(default_factory=dict)                    # lab.analysis.census's document
    warnings: list[str] = field(default_factory=list)                       # e.g. a capture cut short
    fail_on_hits: int = 0                                                   # findings --fail-on matched

    def view_doc(self) -> dict[str, Any]:
        """The shape analysis_view's tables read (`connections`/`findings` hold only the first rows)."""
        return {"file": self.file, "profile": self.profile, "time_wait_s": self.time_wait_s,
                "packets": self.packets, "tcp_segments": self.tcp_segments, "segments": self.segments,
                "skipped": self.skipped, "connections": self.first_connections, "findings": self.first_findings,
                "connections_total": self.connections, "findings_total": self.findings}


class _Counting:
    def __init__(self, summary: Summary) -> None:
        self.s = summary
        self.first_conns = _First(summary.limit)
        self.first_finds = _First(summary.limit)
        self.seq = 0

    def __call__(self, conns: list[Connection], findings: list[Finding]) -> None:
        s = self.s
        s.connections += len(conns)
        s.findings += len(findings)
        closes = s.closes
        tw = s.time_wait
        offer = self.first_conns.offer
        for c in conns:
            cl = c.close
            closes[cl.kind, cl.initiator or "-"] += 1
            for w in c.time_wait:
                tw[w.side, w.ended_by] += 1
            offer(c.id, c)
        offer = self.first_finds.offer
        for f in findings:
            s.finding_kinds[f.kind] += 1
            if f.kind in _VERDICT_KINDS:
                s.verdicts[f.kind, str(f.extra.get("verdict", "?"))] += 1
            self.seq += 1
            offer((f.frames[0] if f.frames else 0, f.kind, self.seq), f)


def summarize(path: Path | Feeder, profile: str = "linux", time_wait_s: float | None = None,
              limit: int = SHOWN, opts: Options | None = None, records: Records | None = None,
              name: str | None = None) -> Summary:
    """Analyze `path` keeping only counters, the census and the first `limit` connections and findings."""
    if opts is None:
        opts = Options(profile, time_wait_s)
    summary = Summary(name or str(path), limit=limit)
    sink = _Counting(summary)
    census = CensusFold()
    report, stats = run(path, tee(sink, census, *(() if records is None else (records,))),
                        opts=dataclasses.replace(opts, detail=False))
    summary.census = census.result(report.profile, report.time_wait_s, opts.port_range, stats.first_ts)
    summary.warnings = warnings_of(stats)
    summary.profile, summary.time_wait_s, summary.segments = report.profile, report.time_wait_s, report.segments
    summary.packets, summary.tcp_segments, summary.skipped = stats.packets, stats.tcp_segments, dict(stats.skipped)
    summary.first_connections = [json.loads(connection_json(c)) for c in sink.first_conns.sorted()]
    summary.first_findings = [f.to_dict() for f in sink.first_finds.sorted()]
    return summary
