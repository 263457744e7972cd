"""Per-packet comments into a pcapng: copy every packet of a capture, keep its bytes, timestamp and
existing comments, and add the lab's notes for its frame number.

The pcapng writer and the atomic write are lab.pcap.writer's (the one writer every capture the lab writes
goes through); PcapngWriter is re-exported here for existing callers.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lab.pcap import fastcopy
from lab.pcap.fastcopy import comment_option
from lab.pcap.writer import PcapngWriter, atomic_write, spool

if TYPE_CHECKING:
    from lab.core.narrate import NoteRecord
    from lab.pcap.filters import SegmentFilter
    from lab.pcap.readers import _Source

__all__ = ["PcapngWriter", "annotate_file", "capture_t0", "narrated", "write_annotated"]


def write_annotated(src: Path, dst: Path, notes: Mapping[int, Sequence[str]]) -> int:
    """Copy `src` (any format lab.pcap.readers reads) to `dst` as pcapng, adding `notes[frame]` as comments.

    Existing comments are kept; a note equal to one the packet already carries is not repeated.
    Returns the number of packets written. Atomic: `dst` appears complete or not at all, and an existing
    `dst` is left untouched on any error; `dst == src` is allowed.
    """
    def options_of(w: int) -> dict[int, bytes]:
        out = {}
        for frame in range(w << _WINDOW_BITS, (w + 1) << _WINDOW_BITS):
            texts = notes.get(frame)
            if texts:
                out[frame] = b"".join([comment_option(t.encode("utf-8", errors="replace")) for t in texts])
        return out
    return _copy_with_notes(src, dst, options_of)[0]


OptionsOf = Callable[[int], dict[int, bytes]]   # window -> {frame: its notes as packed opt_comments}
# (window, base, size) -> its frames' notes as packed opt_comments by frame - base (lab.pcap.fastcopy.window_table)
TableOf = Callable[[int, int, int], list[bytes | None]]


def _copy_with_notes(src: Path, dst: Path, options_of: OptionsOf, table_of: TableOf | None = None) -> tuple[int, int]:
    """Copy `src` to `dst` with the notes of options_of(w) for the frames of window w (2**_WINDOW_BITS frames;
    asked in increasing order, each once; table_of, when given, is asked instead for a classic pcap):
    (packets, frames annotated)."""
    src, dst = Path(src), Path(dst)
    with atomic_write(dst) as out:   # lab.pcap.writer: complete or not at all; dst == src is allowed
        w = PcapngWriter(out)
        copied = _copy_pcap(src, w, out, options_of, table_of)
        return copied if copied is not None else _copy_frames(src, w, options_of)


def _copy_frames(src: Path, w: PcapngWriter, options_of: OptionsOf) -> tuple[int, int]:
    """Any capture, frame by frame (lab.pcap.readers.iter_frames), its own comments kept."""
    from lab.pcap.readers import iter_frames

    count = annotated = 0
    options: dict[int, bytes] = {}
    next_window = 0                     # the first frame past the window whose notes are in `options`
    for fr in iter_frames(src):
        frame = fr.frame
        if frame >= next_window:
            window = frame >> _WINDOW_BITS
            options = options_of(window)
            next_window = (window + 1) << _WINDOW_BITS
        opts = options.get(frame)
        if opts is None:
            w.write(fr.ts_ns, fr.data, fr.orig_len, fr.comments, interface=fr.interface, linktype=fr.linktype)
        elif fr.comments:
            annotated += 1
            # a note the packet already carries is not added twice (annotating a file again is idempotent)
            texts = [t.decode("utf-8") for t in fastcopy.option_texts(opts)]
            extra = [t for t in texts if t not in fr.comments]
            w.write(fr.ts_ns, fr.data, fr.orig_len, (*fr.comments, *extra), interface=fr.interface,
                    linktype=fr.linktype)
        else:
            annotated += 1
            w.write_options(fr.ts_ns, fr.data, fr.orig_len, opts + fastcopy.END_OF_OPTIONS, interface=fr.interface,
                            linktype=fr.linktype)
        count += 1
    return count, annotated


def _copy_pcap(src: Path, w: PcapngWriter, out: IO[bytes], options_of: OptionsOf,
               table_of: TableOf | None = None) -> tuple[int, int] | None:
    """A classic pcap (no comments of its own): its records packed straight into EPBs with the notes of a window
    of frames at a time (lab.pcap.fastcopy.pcap_epbs, the hot loop of the copy); None for any other format."""
    from lab.pcap import readers

    source = readers._Source(src)
    try:
        head, kind = readers._file_header(source)
        if kind != "pcap":
            return None
        hdr = readers._pcap_header(source, head)
        idx = w.interface_index(0, hdr.linktype)
        mul = 1 if hdr.ns else 1000
        big = hdr.endian == ">"
        buf, pos, frame, annotated = b"", 0, 0, 0
        options: list[bytes | None] = []
        base = stop = 0                 # the window whose notes are in `options`: frames base .. stop - 1
        owed = 0                        # the last EPB's end, not written yet (lab.pcap.fastcopy.pcap_epbs)
        epbs = bytearray()
        while True:
            why, pos, frame, got, owed = fastcopy.pcap_epbs(buf, pos, frame, big, mul, idx, readers.MAX_RECORD,
                                                            options, base, stop, epbs, owed)
            annotated += got
            if epbs:
                out.write(epbs)
                del epbs[:]
            if why == fastcopy.WINDOW_END:
                window = (frame + 1) >> _WINDOW_BITS
                base, stop = window << _WINDOW_BITS, (window + 1) << _WINDOW_BITS
                options = table_of(window, base, stop - base) if table_of is not None else \
                    fastcopy.by_offset(options_of(window), base, stop - base)
            elif why == fastcopy.TOO_LONG:
                incl = struct.unpack_from(hdr.endian + "I", buf, pos + 8)[0]
                raise source.fail(f"absurd captured length {incl}", frame + 1)
            else:
                more = source.read(_READ, frame + 1)
                if not more:
                    _check_whole(source, buf, pos, frame, hdr.endian)
                    if owed:
                        out.write(fastcopy.trailer(owed))
                    return frame, annotated   # frames are numbered from 1: the last one is the count
                buf = buf[pos:] + more
                pos = 0
    finally:
        source.close()


def _check_whole(source: _Source, buf: bytes, pos: int, frame: int, endian: str) -> None:
    """At the end of the file: nothing left over, or the reader's error for a record cut short."""
    from lab.pcap.readers import _HINT_TRUNC

    left = len(buf) - pos
    if left == 0:
        return
    if left < 16:
        raise source.fail("record header cut short at end of file", frame + 1, _HINT_TRUNC)
    incl = struct.unpack_from(endian + "I", buf, pos + 8)[0]
    raise source.fail(f"record body cut short: {incl} bytes announced, {left - 16} left", frame + 1, _HINT_TRUNC)


# --- streaming annotate: notes spooled by window of frames while the analyzer streams, read back while copying -

_SPOOL_BYTES = 4 << 20    # note bytes in memory before they go to the spool file
_WINDOW_BITS = 14         # the copy pass holds the notes of 2**14 frames at a time
_READ = 1 << 17           # bytes of the capture read at a time by the copy (its EPBs stay in the CPU cache)


@dataclass(frozen=True)
class Annotated:
    """What `twlab annotate` did: packets copied, frames that got notes, the analyzer's records."""

    packets: int
    annotated: int
    connections: int
    findings: int


class _NoteSpool:
    """Per-frame notes of finished connections, in bounded memory. Each note is a record (frame, order, tie,
    its opt_comment: lab.pcap.fastcopy) appended to the buffer of its window (2**_WINDOW_BITS frames); past
    _SPOOL_BYTES every buffer goes to the spool file as one extent of its window. window(w) and options(w)
    read a window's extents and what is still buffered; a frame's notes sorted by (order, tie) come in the
    order the narrator gives them for the whole capture (lab.core.narrate.note_records), however the batches
    fell: the output does not depend on when connections were drained."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        self.pending: dict[int, bytearray] = {}   # window -> its records, not in the file yet
        self.pending_bytes = 0
        self.extents: dict[int, list[tuple[int, int]]] = {}   # window -> (offset, length) in the spool
        self.size = 0

    def add(self, records: list[NoteRecord]) -> None:
        """Notes as lab.core.narrate.note_records: (frame, order, tie, text)."""
        self.pending_bytes += fastcopy.add_notes(records, self.pending, _WINDOW_BITS)
        if self.pending_bytes >= _SPOOL_BYTES:
            self.flush()

    def flush(self) -> None:
        for w, buf in self.pending.items():
            self.spool.write(buf)
            self.extents.setdefault(w, []).append((self.size, len(buf)))
            self.size += len(buf)
        self.pending = {}
        self.pending_bytes = 0

    def _chunks(self, w: int) -> list[bytes]:
        """Window w's records: its extents in the spool in the order written, then what is still buffered."""
        chunks: list[bytes] = []
        extents = self.extents.get(w)
        if extents:
            self.spool.flush()
            fd = self.spool.fileno()
            chunks += (_pread(fd, n, at) for at, n in extents)
        buffered = self.pending.get(w)
        if buffered:
            chunks.append(bytes(buffered))
        return chunks

    def window(self, w: int) -> dict[int, list[bytes]]:
        """The notes of window w's frames: {frame: [UTF-8 text, ...]} in the order they were added."""
        return fastcopy.window_notes(self._chunks(w))

    def options(self, w: int) -> dict[int, bytes]:
        """Window w's frames' packed opt_comments (without the end of options, lab.pcap.fastcopy.pcap_epbs adds it)."""
        return fastcopy.window_options(self._chunks(w))

    def table(self, w: int, base: int, size: int) -> list[bytes | None]:
        """options(w) as a list by frame - base (lab.pcap.fastcopy.window_table)."""
        return fastcopy.window_table(self._chunks(w), base, size)

def _pread(fd: int, n: int, at: int) -> bytes:
    data = os.pread(fd, n, at)
    while len(data) < n:   # a short read (regular files rarely do): ask for the rest
        more = os.pread(fd, n - len(data), at + len(data))
        if not more:
            raise OSError(f"note spool cut short at {at + len(data)}")
        data += more
    return data


class Narrated:
    """The first pass's result: the notes of every connection in the spool, and the records' counts."""

    def __init__(self, src: Path, notes: _NoteSpool) -> None:
        self.src = src
        self.notes = notes
        self.connections = 0
        self.findings = 0

    def write(self, dst: Path) -> Annotated:
        """The second pass: copy every packet of the capture to `dst` with its notes (atomically)."""
        with _no_cyclic_gc():
            packets, annotated = _copy_with_notes(self.src, dst, self.notes.options, self.notes.table)
        return Annotated(packets, annotated, self.connections, self.findings)


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The copy makes no reference cycles, only many short-lived containers the cyclic GC would walk for nothing
    (as lab.pcap.feed's walk)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def narrated(src: Path, profile: str = "linux", time_wait_s: float | None = None,
             filt: SegmentFilter | None = None) -> Iterator[Narrated]:
    """`twlab annotate`'s first streaming pass, in bounded memory: the capture is fed to a streaming Analyzer
    (detail, keep=False) and each batch of finished connections is narrated at once
    (lab.core.narrate.note_records), its notes spooled by window of frames. A bad or cut capture fails here,
    before anything is written; Narrated.write(dst) is the second pass. `filt` narrows what is analyzed
    (and so annotated); every packet is copied."""
    from lab.core.narrate import note_records
    from lab.core.report import Report
    from lab.core.tracker import Analyzer
    from lab.pcap.feed import feed_file

    t0 = capture_t0(src)
    analyzer = Analyzer(profile, time_wait_s, detail=True, keep=False)
    name, tw = analyzer.profile.name, analyzer.tw_s
    with spool("notes", ".bin") as notes_file:
        result = Narrated(Path(src), _NoteSpool(notes_file))

        def on_batch() -> None:
            conns, findings = analyzer.drain()
            if conns or findings:
                result.connections += len(conns)
                result.findings += len(findings)
                result.notes.add(note_records(Report(tuple(conns), tuple(findings), name, tw), t0))

        with _no_cyclic_gc():   # feed_file's walk runs without it; so do the last batches, after the walk
            feed_file(src, analyzer, on_batch, filt=filt)
            analyzer.finish()
            on_batch()
        yield result


def annotate_file(src: Path, dst: Path, profile: str = "linux", time_wait_s: float | None = None,
                  filt: SegmentFilter | None = None) -> Annotated:
    """Both passes: narrate `src` as it streams, then copy it to `dst` with the notes."""
    with narrated(src, profile, time_wait_s, filt) as n:
        return n.write(dst)


def capture_t0(src: Path) -> float:
    """The timestamp of the capture's first frame (s): the zero of Wireshark's Time column; 0.0 when empty."""
    from lab.pcap.readers import iter_frames

    with contextlib.closing(iter_frames(Path(src))) as frames:   # type: ignore[type-var]  # a generator
        first = next(frames, None)
    return 0.0 if first is None else first.ts_ns / 1e9
