"""Per-packet comments into a pcapng: copy every packet of a capture, keep its bytes, timestamp and
existing comments, and add the lab's notes for its frame number.

The writer is a few lines of struct packing (SHB, one IDB per interface and link type with
if_tsresol=9, EPB with opt_comment options) because that is all Wireshark needs and it streams:
memory stays constant however large the capture is.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from lab.errors import UsageError

if TYPE_CHECKING:
    from lab.pcap.filters import SegmentFilter

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT = 0
_OPT_COMMENT = 1
_IF_NAME = 2
_IF_TSRESOL = 9
_SHB_USERAPPL = 4
_MAX_OPT = 0xFFFF - 3  # option length is 16 bits; keep the padded length representable
_EPB_HEAD = struct.Struct("<IIIIIII")   # block type, total length, interface, ts high, ts low, caplen, len
_U32 = struct.Struct("<I")
_PADS = (b"", b"\0", b"\0\0", b"\0\0\0")   # by -len % 4: the zeros that pad data to 4 bytes


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _options(opts: Iterable[tuple[int, bytes]]) -> bytes:
    body = b"".join(_option(c, v) for c, v in opts)
    return body + struct.pack("<HH", _OPT_ENDOFOPT, 0) if body else b""


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def _comment_bytes(text: str) -> bytes:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= _MAX_OPT:
        return raw
    # cut at a character boundary so Wireshark still sees valid UTF-8
    return raw[:_MAX_OPT].decode("utf-8", errors="ignore").encode("utf-8")


class PcapngWriter:
    """Streaming little-endian pcapng writer: section header, interfaces on first use, EPBs."""

    def __init__(self, out: BinaryIO, app: str = "twlab") -> None:
        self._out = out
        self._ifaces: dict[tuple[int, int], int] = {}
        shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _options([(_SHB_USERAPPL, app.encode())])
        out.write(_block(_SHB, shb))

    def _interface(self, interface: int, linktype: int) -> int:
        key = (interface, linktype)
        idx = self._ifaces.get(key)
        if idx is None:
            idx = len(self._ifaces)
            self._ifaces[key] = idx
            # snaplen 0 = no limit: packets keep whatever length the source file had
            body = struct.pack("<HHI", linktype, 0, 0) + _options(
                [(_IF_NAME, f"if{interface}".encode()), (_IF_TSRESOL, b"\x09")])
            self._out.write(_block(_IDB, body))
        return idx

    def write(self, ts_ns: int, data: bytes, orig_len: int, comments: Sequence[str] = (), *,
              interface: int = 0, linktype: int = 1) -> None:
        idx = self._ifaces.get((interface, linktype))
        if idx is None:
            idx = self._interface(interface, linktype)
        n = len(data)
        pad = -n % 4
        opts = _options((_OPT_COMMENT, _comment_bytes(c)) for c in comments) if comments else b""
        total = 32 + n + pad + len(opts)    # 28 bytes of block and EPB header, the data, options, 4 of trailer
        # one write per packet, packed in one go: a million packets are a second of this loop
        self._out.write(b"".join((_EPB_HEAD.pack(_EPB, total, idx, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF,
                                                 n, orig_len if orig_len > n else n),
                                  data, _PADS[pad], opts, _U32.pack(total))))


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
    if dst.is_dir():
        raise UsageError(f"{dst} is a directory", "give a file name for the annotated pcapng, e.g. -o out.pcapng")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"folder {parent} does not exist", "create it first or choose another output path")
    # ".NAME.<pid>.*.twl-tmp": the writer's pid lets doctor --cleanup remove it after a kill -9 (lab.run.resources)
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{dst.name}.{os.getpid()}.", suffix=".twl-tmp")
    tmp = Path(tmp_name)
    count = annotated = 0
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
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
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a capture is meant to be opened by the user's tools
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return count, annotated


# --- streaming annotate: notes spooled in sorted runs while the analyzer streams, merged while copying ----

_RUN_NOTES = 1 << 18      # notes held in memory before they go to the spool as one sorted run
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
    with _spool_file() as spool:
        result = Narrated(Path(src), _NoteSpool(spool))

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


@contextlib.contextmanager
def _spool_file() -> Iterator[IO[bytes]]:
    """A temporary file named twl-spool-<pid>-notes-* (doctor --cleanup removes it after a kill -9)."""
    name = ""
    try:
        fd, name = tempfile.mkstemp(prefix=f"twl-spool-{os.getpid()}-notes-", suffix=".txt")
        with os.fdopen(fd, "w+b") as f:
            yield f
    finally:
        if name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def capture_t0(src: Path) -> float:
    """The timestamp of the capture's first frame (s): the zero of Wireshark's Time column; 0.0 when empty."""
    from lab.pcap.readers import iter_frames

    with contextlib.closing(iter_frames(Path(src))) as frames:   # type: ignore[type-var]  # a generator
        first = next(frames, None)
    return 0.0 if first is None else first.ts_ns / 1e9
