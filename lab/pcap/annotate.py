"""Per-packet comments into a pcapng: copy every packet of a capture, keep its bytes, timestamp and
existing comments, and add the lab's notes for its frame number.

The pcapng writer and the atomic write are lab.pcap.writer's (the one writer every capture the lab writes
goes through); PcapngWriter is re-exported here for existing callers.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lab.pcap.writer import PcapngWriter, atomic_write, spool

if TYPE_CHECKING:
    from lab.pcap.filters import SegmentFilter

__all__ = ["PcapngWriter", "annotate_file", "capture_t0", "narrated", "write_annotated"]


def write_annotated(src: Path, dst: Path, notes: Mapping[int, Sequence[str]]) -> int:
    """Copy `src` (any format lab.pcap.readers reads) to `dst` as pcapng, adding `notes[frame]` as comments.

    Existing comments are kept; a note equal to one the packet already carries is not repeated.
    Returns the number of packets written. Atomic: `dst` appears complete or not at all, and an existing
    `dst` is left untouched on any error; `dst == src` is allowed.
    """
    return _copy_with_notes(src, dst, lambda frame: notes.get(frame, ()))[0]


def _copy_with_notes(src: Path, dst: Path, notes_of: Callable[[int], Sequence[str]]) -> tuple[int, int]:
    """write_annotated with notes_of(frame) asked once per frame in file order; (packets, frames annotated)."""
    from lab.pcap.readers import iter_frames

    src, dst = Path(src), Path(dst)
    count = annotated = 0
    with atomic_write(dst) as out:   # lab.pcap.writer: complete or not at all; dst == src is allowed
        w = PcapngWriter(out)
        write = w.write
        for fr in iter_frames(src):
            add = notes_of(fr.frame)
            if add:
                annotated += 1
                # a note the packet already carries is not added twice (annotating a file again is idempotent)
                extra = [t for t in add if t not in fr.comments]
                comments: Sequence[str] = (*fr.comments, *extra)
            else:
                comments = fr.comments
            write(fr.ts_ns, fr.data, fr.orig_len, comments, interface=fr.interface, linktype=fr.linktype)
            count += 1
    return count, annotated


# --- streaming annotate: notes spooled in sorted runs while the analyzer streams, merged while copying ----

_RUN_NOTES = 1 << 15      # notes in memory before they go to the spool as one sorted run (~60 MiB peak)
_READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Annotated:
    """What `twlab annotate` did: packets copied, frames that got notes, the analyzer's records."""

    packets: int
    annotated: int
    connections: int
    findings: int


class _NoteSpool:
    """Per-frame notes of finished connections, in bounded memory: up to _RUN_NOTES in a list, then sorted by
    frame into the spool file as one run; merged() yields every (frame, note) in frame order (heapq.merge of
    the runs: stable, so the notes of one frame keep the order the narrator gave them)."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        self.pending: list[tuple[int, str]] = []
        self.runs: list[tuple[int, int]] = []     # (offset, length) in the spool

    def add(self, notes: Mapping[int, Sequence[str]]) -> None:
        pending = self.pending
        for frame, texts in notes.items():
            for t in texts:
                pending.append((frame, t))
        if len(pending) >= _RUN_NOTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.pending.sort(key=_frame_of)
        text = "".join([f"{f}\t{_escape(t)}\n" for f, t in self.pending])
        data = text.encode("utf-8", errors="replace")
        at = self.spool.seek(0, os.SEEK_END)
        self.spool.write(data)
        self.runs.append((at, len(data)))
        self.pending = []

    def merged(self) -> Iterator[tuple[int, str]]:
        if not self.runs:
            self.pending.sort(key=_frame_of)
            return iter(self.pending)
        self.flush()
        self.spool.flush()
        fd = self.spool.fileno()
        return heapq.merge(*(_run(fd, at, n) for at, n in self.runs), key=_frame_of)


def _frame_of(item: tuple[int, str]) -> int:
    return item[0]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n") if ("\n" in text or "\\" in text) else text


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")


def _run(fd: int, at: int, length: int) -> Iterator[tuple[int, str]]:
    """One sorted run of the spool, read in chunks with pread (the runs share one file descriptor)."""
    end = at + length
    rest = b""
    while at < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - at), at)
        if not chunk:
            break
        at += len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            frame, _, text = line.decode("utf-8").partition("\t")
            yield int(frame), _unescape(text)


class _Lookup:
    """notes_of(frame) over the merged (frame, note) stream; frames are asked in increasing order."""

    def __init__(self, merged: Iterator[tuple[int, str]]) -> None:
        self.merged = merged
        self.head = next(merged, None)

    def __call__(self, frame: int) -> Sequence[str]:
        head = self.head
        if head is None or head[0] > frame:
            return ()
        out: list[str] = []
        merged = self.merged
        while head is not None and head[0] <= frame:
            if head[0] == frame:
                out.append(head[1])
            head = next(merged, None)
        self.head = head
        return out


class Narrated:
    """The first pass's result: the notes of every connection in the spool, and the records' counts."""

    def __init__(self, src: Path, notes: _NoteSpool) -> None:
        self.src = src
        self.notes = notes
        self.connections = 0
        self.findings = 0

    def write(self, dst: Path) -> Annotated:
        """The second pass: copy every packet of the capture to `dst` with its notes (atomically)."""
        packets, annotated = _copy_with_notes(self.src, dst, _Lookup(self.notes.merged()))
        return Annotated(packets, annotated, self.connections, self.findings)


@contextlib.contextmanager
def narrated(src: Path, profile: str = "linux", time_wait_s: float | None = None,
             filt: SegmentFilter | None = None) -> Iterator[Narrated]:
    """`twlab annotate`'s first streaming pass, in bounded memory: the capture is fed to a streaming Analyzer
    (detail, keep=False) and each batch of finished connections is narrated at once
    (lab.core.narrate.frame_notes), its notes spooled in sorted runs. A bad or cut capture fails here,
    before anything is written; Narrated.write(dst) is the second pass. `filt` narrows what is analyzed
    (and so annotated); every packet is copied."""
    from lab.core.narrate import frame_notes
    from lab.core.report import Report
    from lab.core.tracker import Analyzer
    from lab.pcap.feed import feed_file

    t0 = capture_t0(src)
    analyzer = Analyzer(profile, time_wait_s, detail=True, keep=False)
    name, tw = analyzer.profile.name, analyzer.tw_s
    with spool("notes", ".txt") as notes_file:
        result = Narrated(Path(src), _NoteSpool(notes_file))

        def on_batch() -> None:
            conns, findings = analyzer.drain()
            if conns or findings:
                result.connections += len(conns)
                result.findings += len(findings)
                result.notes.add(frame_notes(Report(tuple(conns), tuple(findings), name, tw), t0))

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
