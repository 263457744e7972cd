"""Feed a capture to an Analyzer: the compiled walk (lab.pcap.fastdecode) when the accelerator is active,
else the Python CaptureReader. Both read through lab.pcap.readers' byte source (files, pipes, `-` for
stdin) and give identical results, filtered or not."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from lab import accel
from lab.core.tracker import Analyzer
from lab.pcap import fastdecode
from lab.pcap.filters import FILTERED, SegmentFilter
from lab.pcap.readers import CaptureReader, CutShort, ReaderStats, _check_linktype, _file_header, _pcap_header, _Source

_BATCH = 1_024  # segments between on_batch() calls on the plain path (~128 KiB of a typical capture, as the walk)

Progress = Callable[[int, int, int], None]   # (bytes read, packets read, connections open), once per ~128 KiB


def feed_file(path: str | Path, analyzer: Analyzer, on_batch: Callable[[], None] | None = None, *,
              filt: SegmentFilter | None = None, lenient: bool = False,
              progress: Progress | None = None) -> ReaderStats:
    """Feed every TCP segment of a capture (file, pipe, `-`) to `analyzer` in file order; returns the stats.

    on_batch() is called after every ~128 KiB of the file (readers._CHUNK; and once at the end) so a streaming
    caller can drain finished records. Same formats, frames, segments, stats and BadCapture errors as CaptureReader.
    `filt` leaves segments out (counted in stats.skipped["filtered-out"]). lenient: a capture cut short
    (lab.pcap.readers.CutShort) is analyzed up to its last complete frame and stats.cut says so.
    With the compiled accelerator (python -m lab.build) the walk runs in lab.pcap.fastdecode as native code.
    """
    fast = accel.active() and type(analyzer) is Analyzer
    if filt is not None and not filt.active:
        filt = None
    return _feed_file(Path(path), analyzer, on_batch, fast, filt, lenient, progress)


def _feed_file(path: Path, analyzer: Analyzer, on_batch: Callable[[], None] | None, fast: bool,
               filt: SegmentFilter | None = None, lenient: bool = False,
               progress: Progress | None = None) -> ReaderStats:
    # The cyclic GC would walk the growing report again and again (see tracker.analyze); nothing here needs it.
    was_enabled = gc.isenabled()
    gc.disable()
    stats = ReaderStats()
    try:
        if fast:
            _feed_fast(path, analyzer, on_batch, stats, filt, progress)
        else:
            _feed_plain(path, analyzer, on_batch, stats, filt, progress)
    except CutShort as exc:
        if not lenient:
            raise
        stats.cut = exc.warning()
        stats.packets = exc.last_good
    finally:
        if was_enabled:
            gc.enable()
    if on_batch is not None:
        on_batch()
    return stats


def _batch_hook(on_batch: Callable[[], None] | None, progress: Progress | None,
                src: Callable[[], _Source | None], analyzer: Analyzer) -> Callable[[], None] | None:
    if progress is None:
        return on_batch

    def hook() -> None:
        s = src()
        if s is not None:
            frames, open_now = analyzer.progress()
            progress(s.nread, frames, open_now)
        if on_batch is not None:
            on_batch()
    return hook


def _feed_plain(path: Path, analyzer: Analyzer, on_batch: Callable[[], None] | None, stats: ReaderStats,
                filt: SegmentFilter | None, progress: Progress | None) -> None:
    reader = CaptureReader(path)
    hook = _batch_hook(on_batch, progress, lambda: reader.source, analyzer)
    feed = analyzer.feed
    n = 0
    filtered = 0
    try:
        for seg in reader:
            if filt is None:
                feed(seg)
            else:
                if filt.t0 is None and reader.stats.first_ts is not None:
                    filt.first(reader.stats.first_ts)
                if filt.keep(seg.src_ip, seg.sport, seg.dst_ip, seg.dport, seg.ts_s):
                    feed(seg)
                else:
                    filtered += 1
            n += 1
            if n == _BATCH:
                n = 0
                if hook is not None:
                    hook()
    finally:
        got = reader.stats
        stats.packets, stats.tcp_segments, stats.first_ts = got.packets, got.tcp_segments, got.first_ts
        stats.reassembled = got.reassembled
        stats.skipped.update(got.skipped)
        if filtered:
            stats.skipped[FILTERED] = filtered


def _feed_fast(path: Path, analyzer: Analyzer, on_batch: Callable[[], None] | None, stats: ReaderStats,
               filt: SegmentFilter | None, progress: Progress | None) -> None:
    src = _Source(path)
    hook = _batch_hook(on_batch, progress, lambda: src, analyzer)
    try:
        head, kind = _file_header(src)
        if kind == "pcap":
            hdr = _pcap_header(src, head)
            _check_linktype(src, hdr.linktype, 1)
            fastdecode.walk_pcap(src, hdr.endian == ">", hdr.ns, hdr.linktype, analyzer, hook, stats, filt)
        else:
            fastdecode.walk_pcapng(src, head, analyzer, hook, stats, filt)
    finally:
        src.close()
