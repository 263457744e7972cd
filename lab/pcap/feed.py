"""Feed a capture file to an Analyzer: the compiled walk (lab.pcap.fastdecode) when the accelerator is active,
else the Python CaptureReader. Both read through lab.pcap.readers' byte source and give identical results."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from lab import accel
from lab.core.tracker import Analyzer
from lab.pcap import fastdecode
from lab.pcap.readers import CaptureReader, ReaderStats, _check_linktype, _file_header, _pcap_header, _Source

_BATCH = 8_192  # segments between on_batch() calls on the plain path (~1 MiB of a typical capture)


def feed_file(path: str | Path, analyzer: Analyzer, on_batch: Callable[[], None] | None = None) -> ReaderStats:
    """Feed every TCP segment of a capture file to `analyzer` in file order; returns the reader's stats.

    on_batch() is called after every ~1 MiB of the file (and once at the end) so a streaming caller can
    drain finished records. Same formats, frames, segments, stats and BadCapture errors as CaptureReader.
    With the compiled accelerator (python -m lab.build) the walk runs in lab.pcap.fastdecode as native code.
    """
    fast = accel.active() and type(analyzer) is Analyzer
    return _feed_file(Path(path), analyzer, on_batch, fast)


def _feed_file(path: Path, analyzer: Analyzer, on_batch: Callable[[], None] | None, fast: bool) -> ReaderStats:
    # The cyclic GC would walk the growing report again and again (see tracker.analyze); nothing here needs it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        stats = _feed_fast(path, analyzer, on_batch) if fast else _feed_plain(path, analyzer, on_batch)
    finally:
        if was_enabled:
            gc.enable()
    if on_batch is not None:
        on_batch()
    return stats


def _feed_plain(path: Path, analyzer: Analyzer, on_batch: Callable[[], None] | None) -> ReaderStats:
    reader = CaptureReader(path)
    feed = analyzer.feed
    n = 0
    for seg in reader:
        feed(seg)
        n += 1
        if n == _BATCH:
            n = 0
            if on_batch is not None:
                on_batch()
    return reader.stats


def _feed_fast(path: Path, analyzer: Analyzer, on_batch: Callable[[], None] | None) -> ReaderStats:
    stats = ReaderStats()
    src = _Source(path)
    try:
        head, kind = _file_header(src)
        if kind == "pcap":
            hdr = _pcap_header(src, head)
            _check_linktype(src, hdr.linktype, 1)
            fastdecode.walk_pcap(src, hdr.endian == ">", hdr.ns, hdr.linktype, analyzer, on_batch, stats)
        else:
            fastdecode.walk_pcapng(src, head, analyzer, on_batch, stats)
    finally:
        src.close()
    return stats
