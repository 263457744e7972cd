"""`twlab analyze -j N`: several captures in parallel processes, or one capture sharded by four-tuple.

Files. Each capture is analyzed by lab.analysis.stream in a process of its own (up to N at once); the
outputs come back in the order the files were named: a JSON document is spooled to a temporary file by the
worker and copied to stdout by the parent; the people's Summary is pickled back and printed.

Shards. One capture: N processes each read the whole file (the compiled walk) but feed their analyzer only
the four-tuples whose hash falls in their share (ShardFilter: symmetric, so both directions of a
connection land in the same shard, and every incarnation of a four-tuple too). Their records are merged by
lab.core.merge (ids renumbered in first-segment order), so the result is the one a single analyzer makes;
the analyzers' clock at the capture's end is the whole capture's (the latest timestamp any shard saw), so
TIME_WAIT windows open at the end say the same. The merged connections are listed by id (one process lists
them in the order they end). Memory: each shard holds its records until the merge (one process streams).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.analysis import stream
from lab.analysis.census import CensusFold
from lab.core.merge import Merged, Part, merge_parts
from lab.core.report import Close, Connection, Finding, Report, TimeWaitWindow
from lab.core.tracker import Analyzer
from lab.errors import BadCapture, LabError
from lab.pcap.feed import feed_file
from lab.pcap.filters import FILTERED, SegmentFilter
from lab.pcap.readers import ReaderStats
from lab.pcap.writer import SPOOL_PREFIX, spool_prefix, temp_file

OutputKind = str   # "json" | "jsonl" | "summary"


class ShardFilter(SegmentFilter):
    """keep() only the four-tuples of shard `index` of `count` (after the user's own filter, if any).

    The hash is symmetric in the two ends and does not depend on the process (str hashes are salted per
    process): ports plus a CRC of each address."""

    def __init__(self, index: int, count: int, user: SegmentFilter | None = None) -> None:
        super().__init__()
        self.index = index
        self.count = count
        self.user = user if user is not None and user.active else None
        self.foreign = 0                  # segments left to the other shards
        self.last_ts = float("-inf")      # the latest segment any shard analyzes: the capture's clock at its end
        self._crc: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return True

    def first(self, ts: float) -> None:
        if self.user is not None:
            self.user.first(ts)

    def _addr_hash(self, ip: str) -> int:
        h = self._crc.get(ip)
        if h is None:
            if len(self._crc) > 65_536:
                self._crc.clear()
            h = self._crc[ip] = zlib.crc32(ip.encode())
        return h

    def keep(self, src: str, sport: int, dst: str, dport: int, ts: float) -> bool:
        if self.user is not None and not self.user.keep(src, sport, dst, dport, ts):
            return False
        if ts > self.last_ts:
            self.last_ts = ts
        if (sport + dport + self._addr_hash(src) + self._addr_hash(dst)) % self.count != self.index:
            self.foreign += 1
            return False
        return True


@dataclass(frozen=True)
class Settings:
    """What a worker needs to analyze (plain data: it is pickled to the worker process)."""

    profile: str = "linux"
    time_wait_s: float | None = None
    detail: bool = False
    lenient: bool = True
    port_range: tuple[int, int] | None = None
    filter_args: tuple[tuple[int, ...], tuple[str, ...], str | None, str | None] = ((), (), None, None)
    fail_on: tuple[str, ...] = ()
    limit: int = stream.SHOWN

    def segment_filter(self) -> SegmentFilter | None:
        filt = SegmentFilter(*self.filter_args)
        return filt if filt.active else None

    def options(self) -> stream.Options:
        return stream.Options(self.profile, self.time_wait_s, self.detail, self.segment_filter(), self.lenient,
                              self.port_range)


# --- one capture in shards ----------------------------------------------------------------------------------

@dataclass
class ShardResult:
    part: Part
    stats: ReaderStats
    last_ts: float

    def __getstate__(self) -> dict[str, Any]:
        # records as plain nested tuples: pickling NamedTuples calls Python code per record (~5x slower)
        part = self.part
        return {"conns": [(*c[:6], tuple(c.close), tuple([tuple(w) for w in c.time_wait]), *c[8:])
                          for c in part.connections],
                "findings": [tuple(f) for f in part.findings], "segments": part.segments, "stats": self.stats,
                "last_ts": self.last_ts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        conns = [Connection._make((*a[:6], Close._make(a[6]), tuple([TimeWaitWindow._make(w) for w in a[7]]),
                                   *a[8:])) for a in state["conns"]]
        self.part = Part(conns, [Finding._make(f) for f in state["findings"]], state["segments"])
        self.stats = state["stats"]
        self.last_ts = state["last_ts"]


def analyze_shard(path: Path, index: int, count: int, settings: Settings) -> ShardResult:
    """Shard `index` of `count` of one capture: its records (ids its own) and the reader's stats (filtered-out
    counts only what the user's filter left out)."""
    filt = ShardFilter(index, count, settings.segment_filter())
    analyzer = Analyzer(settings.profile, settings.time_wait_s, detail=settings.detail, keep=False)
    conns: list[Connection] = []
    findings: list[Finding] = []

    def on_batch() -> None:
        c, f = analyzer.drain()
        conns.extend(c)
        findings.extend(f)

    stats = feed_file(path, analyzer, on_batch, filt=filt, lenient=settings.lenient)
    # the capture's clock at its end is the whole capture's, not this shard's last segment (TIME_WAIT windows
    # still open at the end are measured against it)
    analyzer.clock_reached(filt.last_ts)
    report = analyzer.finish()
    on_batch()
    left = stats.skipped.get(FILTERED, 0) - filt.foreign
    if left > 0:
        stats.skipped[FILTERED] = left
    else:
        stats.skipped.pop(FILTERED, None)
    return ShardResult(Part(conns, findings, report.segments), stats, filt.last_ts)


def analyze_sharded(path: Path, jobs: int, settings: Settings) -> tuple[Merged, ReaderStats, Report]:
    """One capture analyzed by `jobs` processes, merged: the records one analyzer makes, by id."""
    if not path.exists():
        raise BadCapture(f"{path}: no such file", "check the path")
    with _pool(jobs) as pool:
        futures = [pool.submit(_call, analyze_shard, path, k, jobs, settings) for k in range(jobs)]
        results: list[ShardResult] = [_result(f) for f in futures]
    merged = merge_parts([r.part for r in results])
    stats = results[0].stats   # every shard read the whole capture: the same packets, TCP segments, skips
    prof = Analyzer(settings.profile, settings.time_wait_s, keep=False).finish()
    report = Report((), (), prof.profile, prof.time_wait_s, merged.segments, stats.packets)
    return merged, stats, report


def write_sharded(path: Path, out: IO[bytes], kind: OutputKind, jobs: int, settings: Settings,
                  records: stream.Records | None = None, name: str | None = None,
                  warn: Callable[[str], None] | None = None) -> stream.Summary | None:
    """`analyze -j N FILE`: the JSON document (kind "json"), the JSON lines ("jsonl") or the people's Summary
    ("summary", returned) of one capture analyzed in `jobs` shards. warn(line): a capture cut short."""
    # as lab.analysis.stream.run: the cyclic GC would walk every record again and again (no cycles here)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _write_sharded(path, out, kind, jobs, settings, records, name, warn)
    finally:
        if was_enabled:
            gc.enable()


def _write_sharded(path: Path, out: IO[bytes], kind: OutputKind, jobs: int, settings: Settings,
                   records: stream.Records | None, name: str | None,
                   warn: Callable[[str], None] | None) -> stream.Summary | None:
    merged, stats, report = analyze_sharded(path, jobs, settings)
    if stats.cut and warn is not None:
        warn(stats.cut)
    conns, findings = list(merged.connections), list(merged.findings)
    census = CensusFold()
    census(conns, findings)
    if records is not None:
        records(conns, findings)
    opts = settings.options()
    name = name or str(path)
    if kind == "summary":
        return _summary(name, conns, findings, stats, report, census, settings)
    head = stream.document_head(name)
    prof = f'"profile": {stream._dumps(report.profile)}, "time_wait_s": {stream._dumps(report.time_wait_s)}'
    tail = stream._tail_json(report, stats, census, opts)
    if kind == "jsonl":
        for c in conns:
            out.write(f'{{"type": "connection", {stream.connection_json(c, settings.detail)[1:]}\n'.encode())
        for f in findings:
            out.write(f'{{"type": "finding", {stream.finding_json(f)[1:]}\n'.encode())
        out.write(f'{{"type": "summary", {head}, {prof}, "connections": {len(conns)}, "findings": {len(findings)}, '
                  f'{tail}}}\n'.encode())
    else:
        out.write(f'{{{head}, {prof}, "connections": ['.encode())
        out.write(", ".join([stream.connection_json(c, settings.detail) for c in conns]).encode())
        out.write(b'], "findings": [')
        out.write(", ".join([stream.finding_json(f) for f in findings]).encode())
        out.write(f'], {tail}}}\n'.encode())
    out.flush()
    return None


def _summary(name: str, conns: list[Connection], findings: list[Finding], stats: ReaderStats, report: Report,
             census: CensusFold, settings: Settings) -> stream.Summary:
    summary = stream.Summary(name, limit=settings.limit)
    counting = stream._Counting(summary)
    counting(conns, findings)
    summary.census = census.result(report.profile, report.time_wait_s, settings.port_range, stats.first_ts)
    summary.warnings = stream.warnings_of(stats)
    summary.profile, summary.time_wait_s, summary.segments = report.profile, report.time_wait_s, report.segments
    summary.packets, summary.tcp_segments, summary.skipped = stats.packets, stats.tcp_segments, dict(stats.skipped)
    summary.first_connections = [json.loads(stream.connection_json(c)) for c in counting.first_conns.sorted()]
    summary.first_findings = [f.to_dict() for f in counting.first_finds.sorted()]
    return summary


# --- several captures in parallel ----------------------------------------------------------------------------

@dataclass
class FileResult:
    """One capture's output: a spooled JSON document (json/jsonl) or a Summary, and --fail-on's hits."""

    spool: str | None
    summary: stream.Summary | None
    fail_on_hits: int
    warnings: list[str]


def analyze_one(path: Path, kind: OutputKind, settings: Settings) -> FileResult:
    """A worker: analyze one capture as `twlab analyze` does in one process."""
    if not path.exists():
        raise BadCapture(f"{path}: no such file", "check the path")
    if path.is_dir():
        raise BadCapture(f"{path}: is a directory", "give a pcap, pcapng or .gz capture file (or - for stdin)")
    failing = stream.FailOn(settings.fail_on)
    warnings: list[str] = []
    opts = dataclasses.replace(settings.options(), warn=warnings.append)
    if kind == "summary":
        summary = stream.summarize(path, limit=settings.limit, opts=opts, records=failing, name=str(path))
        return FileResult(None, summary, failing.hits, warnings)
    # kept after a clean write: the parent copies it to stdout in turn, then removes it (map_files)
    with temp_file(spool_prefix("doc"), ".json", keep=True) as (spool, out):
        write = stream.write_jsonl if kind == "jsonl" else stream.write_json
        write(path, out, opts=opts, records=failing, name=str(path))
    return FileResult(spool, None, failing.hits, warnings)


def map_files(paths: Sequence[Path], kind: OutputKind, jobs: int, settings: Settings,
              each: Callable[[Path, FileResult | LabError], None]) -> None:
    """Analyze `paths` in up to `jobs` processes; each(path, result or its LabError) in the order given, as
    soon as that file and every one before it are done. Spool files are removed after each() returns, and on
    an interrupt once the pool has stopped (a worker still running then finishes its file first)."""
    futures: list[Future[tuple[str, Any]]] = []
    try:
        with _pool(min(jobs, len(paths))) as pool:
            futures = [pool.submit(_call, analyze_one, p, kind, settings) for p in paths]
            for p, fut in zip(paths, futures, strict=True):
                try:
                    res: FileResult | LabError = _result(fut)
                except LabError as exc:
                    res = exc
                try:
                    each(p, res)
                finally:
                    _remove_spool(res)
    finally:
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                _remove_spool(fut.result()[-1])


def _remove_spool(res: object) -> None:
    if isinstance(res, FileResult) and res.spool:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(res.spool)


def copy_spool(res: FileResult, out: IO[bytes]) -> None:
    assert res.spool is not None
    with open(res.spool, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    out.flush()


# --- process plumbing ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    # fork: the workers start at once with everything imported (the CLI process is single-threaded here)
    pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("fork"),
                               initializer=_worker_signals, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        # an interrupt (or an error): the workers stop now (SIGTERM: they remove their temporary files and
        # exit) instead of finishing their file and the one the pool has queued ahead
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_PR_SET_PDEATHSIG = 1   # prctl(2): the signal this process gets when its parent dies


def _worker_signals(parent: int) -> None:
    """In each worker: Ctrl-C is the parent's to handle (the terminal sends it to the whole group); SIGTERM
    from the parent ends the worker at once, after removing its temporary files (named twl-spool-<pid>-*).
    Raising from the handler instead could land inside the compiled walk (mypyc aborts there); the handlers
    inherited from the CLI would os._exit without cleaning up. A parent killed with -9 cannot send that
    SIGTERM, so the kernel does (PR_SET_PDEATHSIG): else the worker waited forever on the pool's queue, its
    spools kept by a live pid that doctor --cleanup leaves alone."""
    import ctypes

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_term)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:   # the parent died before prctl took effect
        _worker_term(signal.SIGTERM, None)


def _worker_term(signum: int, frame: object) -> None:
    for name in glob.glob(os.path.join(tempfile.gettempdir(), f"{SPOOL_PREFIX}{os.getpid()}-*")):
        with contextlib.suppress(OSError):
            os.unlink(name)
    os._exit(128 + signum)


def _call(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """Run in the worker: a LabError comes back as (kind, message, hint) (its pickle would lose the hint)."""
    try:
        return "ok", fn(*args)
    except LabError as exc:
        return "error", (type(exc), str(exc), exc.hint)


_POLL_S = 0.1   # the parent waits for a worker's result in slices of this


def _result(fut: Future[tuple[str, Any]]) -> Any:
    # in slices: a Ctrl-C that the kernel hands to one of the pool's threads (any thread may take a process
    # signal) is run by Python in the main thread only when it wakes; a wait without a timeout would sleep
    # on until the worker's whole file was done
    while not wait([fut], timeout=_POLL_S).done:
        pass
    status, value = fut.result()
    if status == "error":
        cls, message, hint = value
        raise cls(message, hint)
    return value
