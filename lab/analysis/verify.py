"""The lab's cross-check against Wireshark: the only module that runs tshark or pyshark.

`scan(path)` reads one file with one `tshark -T fields` pass (fast: ~55 k packets/s here) and gives,
per frame, tshark's stream number, flags and the analysis labels the lab compares with
(`tcp.analysis.reused_ports`, retransmission and its variants), plus the packet comments.
`verify_file(path)` (`twlab verify`) sets that beside the lab's own reading and analysis of the file and
lists every disagreement with the reason, saying which ones are explained by a known difference between
tshark's rules and the lab's. Both are streamed side by side in frame order and compared connection by
connection as the analyzer finishes them (memory follows the open connections; see "The comparison,
streamed" below); `verify(path, report)` does the same for an analysis already made.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import gc
import heapq
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from lab.errors import BadCapture, EnvironmentProblem

if TYPE_CHECKING:
    from lab.core.tracker import Analyzer

INSTALL_HINT = ("install it: apt-get install -y tshark (preseed 'wireshark-common/install-setuid boolean false' "
                "for a non-interactive install)")
_AGG = "\x1e"  # record separator: comments may hold commas, '|' and tabs
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

# name in TsharkFrame -> tshark field; order is the column order of the fields pass
_FIELDS = (
    ("frame", "frame.number"),
    ("stream", "tcp.stream"),
    ("flags", "tcp.flags"),
    ("reused_ports", "tcp.analysis.reused_ports"),
    ("retransmission", "tcp.analysis.retransmission"),
    ("fast_retransmission", "tcp.analysis.fast_retransmission"),
    ("spurious_retransmission", "tcp.analysis.spurious_retransmission"),
    ("out_of_order", "tcp.analysis.out_of_order"),
    ("icmp", "icmp.type"),
    ("icmpv6", "icmpv6.type"),
    ("comment", "frame.comment"),  # last: the rest of the line belongs to it
)


def tshark_bin() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise EnvironmentProblem("tshark not found", INSTALL_HINT)
    return path


@lru_cache(maxsize=1)
def version() -> str:
    """e.g. '4.0.17'."""
    out = subprocess.run([tshark_bin(), "--version"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 and parts[0] == "TShark" else first or "unknown"


def _unescape(text: str) -> str:
    """tshark -T fields writes '\\n', '\\t', '\\r' and '\\\\' for those characters."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _cut_short(stderr: bytes) -> bool:
    """tshark read a capture cut short up to the cut (and said so, exit 2): what twlab also analyzes."""
    return b"cut short in the middle of a packet" in stderr


def _run_fields(path: Path, fields: Iterable[str], display_filter: str | None = None) -> list[str]:
    return list(_iter_fields(path, fields, display_filter))


def _iter_fields(path: Path, fields: Iterable[str], display_filter: str | None = None) -> Iterator[str]:
    """tshark -T fields' lines as tshark writes them (parsing overlaps tshark's own pass)."""
    path = Path(path)
    if not path.is_file():
        raise BadCapture(f"{path}: no such file", "check the path")
    cmd = [tshark_bin(), "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={_AGG}"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for f in fields:
        cmd += ["-e", f]
    with tempfile.TemporaryFile() as err, \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err) as proc:
        assert proc.stdout is not None
        rest = b""
        while True:
            chunk = proc.stdout.read(1 << 20)
            if not chunk:
                break
            # not splitlines(): it also splits on \x1e (our aggregator), \x85 and \u2028, which comments may hold
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line:
                    yield line.decode("utf-8", errors="replace")
        code = proc.wait()
        err.seek(0)
        if code != 0 and not _cut_short(err.read()):
            raise BadCapture(f"{path}: tshark could not read it (exit {code})", f"run 'tshark -r {path}' to see why")
        if rest:
            yield rest.decode("utf-8", errors="replace")


class TsharkFrame(NamedTuple):
    """One frame as tshark reads it (a NamedTuple: a million are built per million packets, and a frozen
    dataclass's __init__ costs several times more)."""

    frame: int
    stream: int | None
    flags: int
    reused_ports: bool
    retransmission: bool
    fast_retransmission: bool
    spurious_retransmission: bool
    out_of_order: bool
    icmp: bool
    comments: tuple[str, ...]

    @property
    def label(self) -> str:
        """tshark's own name for the segment, as Wireshark's Info column would show it."""
        for attr, text in (("spurious_retransmission", "Spurious Retransmission"),
                           ("fast_retransmission", "Fast Retransmission"),
                           ("retransmission", "Retransmission"), ("out_of_order", "Out-Of-Order"),
                           ("reused_ports", "Port numbers reused")):
            if getattr(self, attr):
                return text
        return ""


_REUSED, _RETX, _FAST_RETX, _SPURIOUS, _OOO, _ICMP = (1 << i for i in range(6))   # _FrameTable.bits


class _FrameTable(Mapping[int, TsharkFrame]):
    """tshark's frames as columns (tens of bytes per frame instead of a TsharkFrame in a dict); a frame is
    built as a TsharkFrame on access. Rows are in frame order, as tshark writes them."""

    def __init__(self) -> None:
        self.row_of = array("i")
        self.frames = array("I")
        self.streams = array("i")      # -1: no TCP stream (e.g. only a comment)
        self.flags = array("H")
        self.bits = array("B")
        self.comments: dict[int, tuple[str, ...]] = {}

    def add(self, n: int, stream: int | None, flags: int, bits: int, comments: tuple[str, ...]) -> None:
        if n >= len(self.row_of):
            self.row_of.extend([-1] * (n + 1 - len(self.row_of) + len(self.row_of) // 2))
        self.row_of[n] = len(self.frames)
        self.frames.append(n)
        self.streams.append(-1 if stream is None else stream)
        self.flags.append(flags)
        self.bits.append(bits)
        if comments:
            self.comments[n] = comments

    def _row(self, n: int) -> int:
        return self.row_of[n] if 0 <= n < len(self.row_of) else -1

    def __getitem__(self, n: int) -> TsharkFrame:
        r = self._row(n)
        if r < 0:
            raise KeyError(n)
        st, b = self.streams[r], self.bits[r]
        return TsharkFrame(n, None if st < 0 else st, self.flags[r], bool(b & _REUSED), bool(b & _RETX),
                           bool(b & _FAST_RETX), bool(b & _SPURIOUS), bool(b & _OOO), bool(b & _ICMP),
                           self.comments.get(n, ()))

    def __iter__(self) -> Iterator[int]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and self._row(n) >= 0

    def stream(self, n: int) -> int | None:
        r = self._row(n)
        return None if r < 0 or self.streams[r] < 0 else self.streams[r]

    def streamed(self) -> Iterator[tuple[int, int]]:
        """(frame, stream) of every frame in a TCP stream, in frame order."""
        frames, streams = self.frames, self.streams
        for r in range(len(frames)):
            if streams[r] >= 0:
                yield frames[r], streams[r]

    def where(self, flag_mask: int = 0, bit_mask: int = 0) -> list[int]:
        """The frames (in order) with all of `flag_mask`'s TCP flags and all of `bit_mask`'s analysis bits."""
        frames, flags, bits = self.frames, self.flags, self.bits
        return [frames[r] for r in range(len(frames))
                if flags[r] & flag_mask == flag_mask and bits[r] & bit_mask == bit_mask]

    def is_icmp(self, n: int) -> bool:
        r = self._row(n)
        return r >= 0 and bool(self.bits[r] & _ICMP)


@dataclass(frozen=True)   # no slots: stream_frames is cached on the instance
class TsharkScan:
    path: str
    packets: int
    frames: _FrameTable  # TCP frames (and frames with comments) only

    @property
    def streams(self) -> int:
        return len({st for _, st in self.frames.streamed()})

    def with_flag(self, bit: int) -> list[int]:
        return self.frames.where(flag_mask=bit)

    @property
    def fin_frames(self) -> list[int]:
        return self.with_flag(_FIN)

    @property
    def rst_frames(self) -> list[int]:
        return self.with_flag(_RST)

    @property
    def reused_port_frames(self) -> list[int]:
        return self.frames.where(bit_mask=_REUSED)

    @property
    def fin_retransmissions(self) -> list[int]:
        """As the corpus README counts them: tcp.flags.fin==1 && tcp.analysis.retransmission."""
        return self.frames.where(flag_mask=_FIN, bit_mask=_RETX)

    def stream_frames(self) -> dict[int, list[int]]:
        """stream -> its frames in order; built once per scan (verify asks for it per disagreement)."""
        return self._stream_frames

    @cached_property
    def _stream_frames(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for n, st in self.frames.streamed():
            out[st].append(n)
        return dict(out)


def _last_int(cell: str, base: int = 10) -> int | None:
    if not cell:
        return None
    # several TCP headers in one frame (e.g. one quoted in an ICMP error): the innermost is last
    return int(cell.split(_AGG)[-1], base)


def scan(path: Path) -> TsharkScan:
    """One tshark pass over `path`: every frame's TCP facts and comments."""
    lines = _iter_fields(path, [f for _, f in _FIELDS])
    frames = _FrameTable()
    add = frames.add
    packets = 0
    for line in lines:
        got = _parse_line(line)
        if got is None:
            continue
        packets += 1
        n, stream, flags, bits, comments = got
        if stream is not None or comments:
            add(n, stream, flags, bits, comments)
    return TsharkScan(str(path), packets, frames)


def comments(path: Path) -> dict[int, list[str]]:
    """Per-frame packet comments as tshark reads them (frame.comment, all occurrences)."""
    out: dict[int, list[str]] = {}
    for line in _run_fields(path, ["frame.number", "frame.comment"], "frame.comment"):
        num, _, text = line.partition("\t")
        if num.isdigit() and text:
            out[int(num)] = [_unescape(c) for c in text.split(_AGG)]
    return out


def comments_pyshark(path: Path) -> dict[int, list[str]]:
    """The same read-back through pyshark, the cross-check library the design fixes.

    JSON mode on purpose: in pyshark's default PDML mode the pkt_comment proto comes second and
    pyshark takes it for the frame layer (docs/kernel-facts.md §2)."""
    tshark_bin()
    import pyshark
    from pyshark.capture.capture import TSharkCrashException

    out: dict[int, list[str]] = {}
    cap = pyshark.FileCapture(str(path), use_json=True, keep_packets=False, display_filter="frame.comment")
    try:
        for pkt in cap:
            layer = getattr(pkt, "pkt_comment", None)
            if layer is None:
                continue
            value = layer.comment
            out[int(pkt.number)] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    except TSharkCrashException as exc:
        # tshark exits 2 on a file cut inside a packet after reading what precedes the cut, as the
        # tshark -T fields pass did: keep those comments; any other crash is the file's problem
        if "cut short" not in str(exc):
            raise BadCapture(f"{path}: tshark (through pyshark) could not read it: {str(exc).splitlines()[-1]}",
                             "check the file with: tshark -r FILE") from None
    finally:
        with contextlib.suppress(TSharkCrashException):
            cap.close()
        # after a raising close pyshark still lists the exited tshark, and its __del__ would raise again
        cap._running_processes.clear()
    return out


# ----------------------------------------------------------------------------------------------
# verify: the lab's reading of a file beside tshark's


@dataclass(frozen=True, slots=True)
class Disagreement:
    check: str          # streams | fin | rst | reused-ports | fin-retransmitted | comments
    frames: tuple[int, ...]
    tshark: str         # what tshark says
    ours: str           # what the lab says
    reason: str
    explained: bool     # True when the reason is a known difference of rules, not a suspected bug

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "frames": list(self.frames), "tshark": self.tshark, "ours": self.ours,
                "reason": self.reason, "explained": self.explained}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    tshark: int
    ours: int
    agree: bool

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "tshark": self.tshark, "ours": self.ours, "agree": self.agree}


@dataclass(frozen=True, slots=True)
class VerifyResult:
    file: str
    tshark_version: str
    packets: int
    checks: tuple[Check, ...]
    disagreements: tuple[Disagreement, ...] = field(default=())

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.disagreements if not d.explained]

    @property
    def ok(self) -> bool:
        return not self.unexplained

    def classes(self) -> list[dict[str, Any]]:
        """The disagreements summarised: one row per class (check, explained, the reason with its numbers
        taken out) with a count and the first frames, unexplained classes first, then the largest."""
        groups: dict[tuple[str, bool, str], list[Disagreement]] = {}
        for d in self.disagreements:
            groups.setdefault((d.check, d.explained, _NUMBERS.sub("N", d.reason)), []).append(d)
        rows = [{"check": check, "explained": explained, "reason": reason, "count": len(ds),
                 "frames": [f for d in ds[:_CLASS_FRAMES] for f in d.frames[:1]], "example": ds[0].reason}
                for (check, explained, reason), ds in groups.items()]
        return sorted(rows, key=lambda r: (r["explained"], -r["count"], r["check"], r["reason"]))

    def to_dict(self, lazy_rows: bool = False) -> dict[str, Any]:
        """lazy_rows: `disagreements` is a sequence that makes each row's dict when asked (the people's view
        of 20 k rows shows the classes and counts them; it need not hold 20 k dicts)."""
        rows: Sequence[dict[str, Any]] = (_RowDicts(self.disagreements) if lazy_rows
                                          else [d.to_dict() for d in self.disagreements])
        return {"file": self.file, "tshark_version": self.tshark_version, "packets": self.packets, "ok": self.ok,
                "checks": [c.to_dict() for c in self.checks], "classes": self.classes(), "disagreements": rows}

    def json_chunks(self, per: int = 1000) -> Iterator[str]:
        """json.dumps(self.to_dict()) in pieces, the rows `per` at a time: the same text, never all of it held."""
        head = self.to_dict(lazy_rows=True)
        del head["disagreements"]     # the last key
        yield json.dumps(head)[:-1] + ', "disagreements": ['
        rows = self.disagreements
        for i in range(0, len(rows), per):
            yield (", " if i else "") + ", ".join([json.dumps(d.to_dict()) for d in rows[i:i + per]])
        yield "]}"


class _RowDicts(Sequence[dict[str, Any]]):
    def __init__(self, rows: tuple[Disagreement, ...]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [d.to_dict() for d in self.rows[i]]
        return self.rows[i].to_dict()


_NUMBERS = re.compile(r"\d+(?:\.\d+)?")
_CLASS_FRAMES = 5   # example frames per class


_REUSE_KINDS = ("reuse-in-time-wait", "reuse-after-time-wait")
PYSHARK_MAX_COMMENTED = 5000  # pyshark parses each commented packet in Python: keep verify quick


# ----------------------------------------------------------------------------------------------
# The comparison, streamed: the lab's reader and analyzer and tshark's pass are read side by side in frame
# order. A frame's facts (our segment, tshark's stream, flags and labels) wait in its four-tuple's buffer
# until every connection of ours that could hold it has finished (all those that started at or before it);
# then it is compared and dropped. What a later frame's reasons need of earlier ones is kept per four-tuple
# in a few fixed-size fields (the latest incarnations, the latest SYNs, each sender's latest FIN), so memory
# follows the open connections, as analyze's does.

_BATCH = 4096          # segments read between two drains of the analyzer
_SPAN_BACK = 16        # incarnations that overlap a frame are among the 16 latest started before it
_SYN_HISTORY = 16      # ISNs per four-tuple a SYN's is looked for in (one used longer ago is not found)
_RETIRED = 256         # superseded streams kept for a late frame (e.g. an ICMP error quoting the old stream)
_AHEAD = 16 << 20      # bytes of tshark's output read ahead of the comparison (~500 k frames) before tshark waits
_PIPE = 1 << 20        # tshark's pipe: it writes on while our side is busy, and one read moves a lot
_SHOWN = 20            # frames a "streams" row lists
_TEXTS = 4096          # distinct reason texts shared among rows
_INF = 1 << 62
_PLAIN_FLAGS = 0x07    # FIN, SYN, RST: a frame with none of them (both tools) may be one of _Plains

# one frame as tshark's pass gives it: (frame, stream or None, TCP flags, analysis bits, comments)
TFrame = tuple[int, int | None, int, int, tuple[str, ...]]


_EMPTY_TAIL = "\t" * (len(_FIELDS) - 3)   # no analysis label, no ICMP, no comment: most lines


def _parse_line(line: str, agg: str = _AGG) -> TFrame | None:
    """One line of the fields pass (None: not a frame line)."""
    if line.endswith(_EMPTY_TAIL):
        n, st, fl, _ = line.split("\t", 3)
        if st and fl and n.isdigit() and agg not in st and agg not in fl:
            return (int(n), int(st), int(fl, 16), 0, ())
    cols = line.split("\t", len(_FIELDS) - 1)
    if len(cols) < len(_FIELDS) or not cols[0].isdigit():
        return None
    cell = cols[1]
    stream = (int(cell) if cell and agg not in cell else _last_int(cell))   # one TCP header: the usual case
    comments = tuple(_unescape(c) for c in cols[10].split(agg)) if cols[10] else ()
    if stream is None and not comments:
        return (int(cols[0]), None, 0, 0, ())
    cell = cols[2]
    flags = (int(cell, 16) if cell and agg not in cell else _last_int(cell, 16)) or 0
    bits = ((_REUSED if cols[3] else 0) | (_RETX if cols[4] else 0) | (_FAST_RETX if cols[5] else 0)
            | (_SPURIOUS if cols[6] else 0) | (_OOO if cols[7] else 0) | (_ICMP if cols[8] or cols[9] else 0))
    return (int(cols[0]), stream, flags, bits, comments)


class _TsharkPass:
    """tshark's fields pass over one file, as frames in order. A thread only moves tshark's output into a
    queue (tshark runs at its own pace on another core); the frames are parsed where they are compared."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise BadCapture(f"{path}: no such file", "check the path")
        self.path = path
        self.packets = 0
        cmd = [tshark_bin(), "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={_AGG}"]
        for _, f in _FIELDS:
            cmd += ["-e", f]
        self._err = tempfile.TemporaryFile()   # noqa: SIM115 - closed by close(), as the process is
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err)
        assert self._proc.stdout is not None
        with contextlib.suppress(OSError, AttributeError):   # Linux only; a default pipe is slower, not wrong
            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._ahead = 0                       # bytes in the queue (bounded by _AHEAD, not by chunks: they vary)
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="tshark-pass", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | None) -> bool:
        with self._room:
            while self._ahead > _AHEAD and not self._stop.is_set():
                self._room.wait(0.2)
            if self._stop.is_set():
                return False
            self._ahead += len(item) if item else 0
        self._queue.put(item)
        return True

    def _took(self, chunk: bytes) -> None:
        with self._room:
            self._ahead -= len(chunk)
            self._room.notify()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        try:
            while True:
                # each read takes the GIL back once: a small read per 4 KiB tshark writes would have tshark
                # wait for our side's switch interval again and again
                chunk = os.read(fd, _PIPE)
                if not chunk or not self._put(chunk):
                    break
        except OSError:
            pass
        finally:
            self._put(None)

    def __iter__(self) -> Iterator[TFrame]:
        rest = b""
        parse = _parse_line
        while True:
            chunk = self._queue.get()
            if chunk is None:
                break
            self._took(chunk)
            block = rest + chunk
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            # not splitlines(): it also splits on \x1e (our aggregator), \x85 and \u2028, which comments may hold;
            # one decode per block: a newline byte is never inside a UTF-8 sequence
            for line in block[:cut].decode("utf-8", errors="replace").split("\n"):
                if line:
                    got = parse(line)
                    if got is not None:
                        self.packets += 1
                        yield got
        code = self._proc.wait()
        self._err.seek(0)
        if code != 0 and not _cut_short(self._err.read()):
            raise BadCapture(f"{self.path}: tshark could not read it (exit {code})",
                             f"run 'tshark -r {self.path}' to see why")
        if rest:
            got = parse(rest.decode("utf-8", errors="replace"))
            if got is not None:
                self.packets += 1
                yield got

    def close(self) -> None:
        self._stop.set()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._thread.join()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._err.close()

    def __enter__(self) -> _TsharkPass:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Replay:
    """A finished TsharkScan given as frames in order (verify(..., tshark_scan))."""

    def __init__(self, ts: TsharkScan) -> None:
        self.ts = ts
        self.packets = ts.packets

    def __iter__(self) -> Iterator[TFrame]:
        t = self.ts.frames
        for r in range(len(t.frames)):
            n = t.frames[r]
            st = t.streams[r]
            yield (n, None if st < 0 else st, t.flags[r], t.bits[r], t.comments.get(n, ()))


def _label(bits: int) -> str:
    """TsharkFrame.label from the analysis bits."""
    for bit, text in ((_SPURIOUS, "Spurious Retransmission"), (_FAST_RETX, "Fast Retransmission"),
                      (_RETX, "Retransmission"), (_OOO, "Out-Of-Order"), (_REUSED, "Port numbers reused")):
        if bits & bit:
            return text
    return ""


class _ConnSum:
    """What the comparison reads of one of our connections (from a Connection record or its to_dict())."""

    __slots__ = ("client", "close_frames", "first", "id", "incarnation", "initiator", "kind", "last", "server",
                 "stream_at", "tw_sides")

    def __init__(self, cid: int, client: str, server: str, incarnation: int, first: int, last: int, kind: str,
                 initiator: str | None, close_frames: tuple[int, ...], tw_sides: tuple[str, ...]) -> None:
        self.id = cid
        self.client = client
        self.server = server
        self.incarnation = incarnation
        self.first = first
        self.last = last
        self.kind = kind
        self.initiator = initiator
        self.close_frames = close_frames
        self.tw_sides = tw_sides
        self.stream_at: int | None = None     # tshark's stream of our first frame

    @classmethod
    def of_record(cls, c: Any) -> _ConnSum:
        return cls(c.id, c.client, c.server, c.incarnation, c.first_frame, c.last_frame, c.close.kind,
                   c.close.initiator, tuple(c.close.frames), tuple(w.side for w in c.time_wait))

    @classmethod
    def of_dict(cls, c: Mapping[str, Any]) -> _ConnSum:
        return cls(c["id"], c["client"], c["server"], c["incarnation"], c["first_frame"], c["last_frame"],
                   c["close"]["kind"], c["close"]["initiator"], tuple(c["close"]["frames"]),
                   tuple(w["side"] for w in c["time_wait"]))


class _Stream:
    """One tshark stream while frames can still come for it."""

    __slots__ = ("closes", "conn_at", "dirs", "first_fin", "st", "start", "start_seg", "superseded", "tup",
                 "waiting")

    def __init__(self, st: int, start: int, start_seg: Any) -> None:
        self.st = st
        self.start = start                    # its first frame
        self.start_seg = start_seg            # our segment in that frame (None: none)
        self.conn_at: int | None = None       # our connection of that frame
        self.first_fin: tuple[int, Any] | None = None    # its first FIN (tshark's flags) we read a segment in
        self.waiting: list[_ConnSum] = []     # connections whose close-initiator check waits for that FIN
        self.closes: list[int] = []           # its frames whose segment (ours) has FIN or RST
        self.dirs = 0                         # bit d: it holds a segment of ours sent in direction d
        self.tup: _Tup | None = None
        self.superseded = False


class _Frame:
    """One frame waiting in its four-tuple's buffer."""

    __slots__ = ("bits", "d", "n", "seg", "ss", "tf", "tflags", "x")

    def __init__(self, n: int, seg: Any, d: int, ss: _Stream | None, tf: bool, tflags: int, bits: int) -> None:
        self.n = n
        self.seg = seg                        # our segment (None: the reader has none in this frame)
        self.d = d                            # its direction on the four-tuple
        self.ss = ss                          # tshark's stream (None: none)
        self.tf = tf                          # tshark has a row for it (a TCP stream or comments)
        self.tflags = tflags
        self.bits = bits
        self.x: _Extra | None = None          # the few frames the reasons or our findings say more of

    def extra(self) -> _Extra:
        x = self.x
        if x is None:
            x = self.x = _Extra()
        return x


class _Plains:
    """A run of a four-tuple's frames nothing but their pairing is asked of (no SYN, FIN or RST from either tool,
    no label, no comment; all in the tuple's current stream): compared a span of one connection at a time."""

    __slots__ = ("ns", "segs", "ss")

    def __init__(self, ss: _Stream, n: int, seg: Any) -> None:
        self.ss = ss
        self.ns = [n]
        self.segs = [seg]


class _Extra:
    __slots__ = ("closed", "mine", "old", "prev_fin", "reply", "reuse", "rx")

    def __init__(self) -> None:
        self.old: int | None = None           # a bare SYN: an earlier frame showing its ISN (_old_isn_frame)
        self.closed: int | None = None        # ... and the first FIN/RST of its stream in between
        self.mine = False                     # ... its stream held a segment from its sender before it
        self.prev_fin: int | None = None      # its sender's latest FIN before it on the four-tuple
        self.reply: Any = None                # a bare SYN: the peer's next segment (_merge_reason)
        self.reuse = ""                       # our reuse finding on this SYN
        self.rx = False                       # our fin-retransmitted finding counts it a repeat


_NO_EXTRA = _Extra()


class _Tup:
    """One four-tuple (either direction): its frames still to compare and its fixed-size history."""

    __slots__ = ("firsts", "frames", "head", "holds", "incs", "isns", "last_fin", "spans", "starts", "stream")

    def __init__(self) -> None:
        self.frames: list[_Frame | _Plains] = []
        self.head = 0                         # frames[:head] are compared (dropped now and then)
        self.spans: list[tuple[int, int, int, _ConnSum]] = []   # (first, last, id, conn), sorted
        self.firsts: list[int] = []
        self.starts: dict[int, _ConnSum] = {}   # first frame -> our connection starting there (the latest id)
        self.incs: dict[int, _ConnSum] = {}     # ... a later incarnation (incarnation > 0)
        self.isns: dict[tuple[int, int], int] = {}   # (direction, ISN) -> the latest frame showing it
        self.last_fin: list[int | None] = [None, None]   # per direction
        self.stream: _Stream | None = None
        self.holds: list[_Frame] = []         # bare SYNs waiting for the peer's next segment

    def add(self, c: _ConnSum) -> None:
        i = bisect.bisect_left(self.spans, (c.first, c.last, c.id), key=_span_key)
        self.spans.insert(i, (c.first, c.last, c.id, c))
        self.firsts.insert(i, c.first)
        for d in (self.starts, self.incs):
            if d is self.incs and not c.incarnation:
                continue
            was = d.get(c.first)
            if was is None or was.id < c.id:
                d[c.first] = c

    def conn_of(self, n: int) -> _ConnSum | None:
        """Our connection of frame n, as the spans say: the latest-starting one whose [first, last] holds it
        (incarnations may overlap, e.g. a one-segment SYN incarnation inside a handshake), else the latest one
        started before it."""
        spans = self.spans
        i = bisect.bisect_right(self.firsts, n) - 1
        if i < 0:
            return None
        for j in range(i, max(i - _SPAN_BACK, -1), -1):
            if spans[j][1] >= n:
                return spans[j][3]
        return spans[i][3]

    def previous(self, c: _ConnSum) -> _ConnSum | None:
        """The latest connection on the four-tuple that started before `c` (the highest id among ties)."""
        i = bisect.bisect_left(self.firsts, c.first) - 1
        if i < 0:
            return None
        f = self.firsts[i]
        best = self.spans[i][3]
        for j in range(i - 1, -1, -1):
            if self.firsts[j] != f:
                break
            if self.spans[j][3].id > best.id:
                best = self.spans[j][3]
        return best

    def forget_before(self, cut: int) -> None:
        """Drop the incarnations no frame from `cut` on can be paired with or ask for as the previous one."""
        k = bisect.bisect_left(self.firsts, cut) - _SPAN_BACK - 1
        if k > 0:
            del self.spans[:k]
            del self.firsts[:k]


def _span_key(e: tuple[int, int, int, _ConnSum]) -> tuple[int, int, int]:
    return e[0], e[1], e[2]


class _Odd:
    """Frames a stream and a connection share though neither starts the other (one "streams" row)."""

    __slots__ = ("count", "frames", "ok", "ss")

    def __init__(self, ss: _Stream) -> None:
        self.ss = ss
        self.count = 0
        self.frames: list[int] = []
        self.ok = True      # every frame comes from the peer of the stream's SYN and acknowledges the old ISN


# rows in the order the report lists them
_KINDS = ("fin+", "fin-", "rst+", "rst-", "split", "merge", "odd", "lost", "close-initiator", "closing-rst",
          "reuse+", "reuse-", "finrx+", "finrx-", "comments", "comments-pyshark")


class _Comparison:
    """tshark's frames and ours, compared as each four-tuple's connections finish (see the section above)."""

    def __init__(self, ver: str) -> None:
        self.ver = ver
        self.tups: dict[tuple[str, int, str, int], tuple[_Tup, int]] = {}   # (tuple, direction)
        self.tups_by_eps: dict[tuple[str, str], _Tup] = {}
        self.streams: dict[int, _Stream] = {}
        self.retired: dict[int, _Stream] = {}          # insertion order: the oldest goes first
        self.stream_seen = bytearray()                  # one bit per stream number
        self.n_streams = 0
        self.pending: dict[int, _Frame] = {}            # buffered _Frames by number (findings mark them)
        self.dirty: dict[_Tup, None] = {}               # four-tuples with frames in their buffer
        self.rows: dict[str, list[tuple[Any, Disagreement]]] = {k: [] for k in _KINDS}
        self.texts: dict[str, str] = {}
        self.flag_counts = {"fin": [0, 0], "rst": [0, 0]}
        self.n_conns = 0
        self.ci = [0, 0, True]          # close-initiator: tshark's client closes, ours, agree
        self.cr = [0, 0, True]          # closing-rst: RST-ended connections, those ended by the first RST
        self.reuse_counts = [0, 0]
        self.rx_counts = [0, 0]
        self.odd: dict[tuple[int, int], _Odd] = {}
        self.merges: list[tuple[int, int, int, _Frame]] = []
        self.lost: list[int] = []       # the smallest frames, negated (a max-heap)
        self.n_lost = 0
        self.tcomm: dict[int, list[str]] | None = {}   # tshark's comments while few enough for pyshark
        self.n_tcomm = 0
        self.n_tcp_comm = 0
        self.n_our_comm = 0
        self.bad_comm: list[int] = []
        self.n_bad_comm = 0

    def _row(self, kind: str, key: Any, d: Disagreement) -> None:
        # rows of one class share their reason's text (e.g. 20 k "tshark's reuse rule has no time condition"
        # rows on the 1 M churn file: ~9 MiB of copies)
        text = self.texts.get(d.reason)
        if text is None:
            if len(self.texts) < _TEXTS:
                self.texts[d.reason] = d.reason
        elif text is not d.reason:
            d = Disagreement(d.check, d.frames, d.tshark, d.ours, text, d.explained)
        self.rows[kind].append((key, d))

    # -- frames arrive in order --------------------------------------------------------------------------

    def _tup(self, seg: Any) -> tuple[_Tup, int]:
        key = (seg.src_ip, seg.sport, seg.dst_ip, seg.dport)
        hit = self.tups.get(key)
        if hit is None:
            a, b = _ep(seg.src_ip, seg.sport), _ep(seg.dst_ip, seg.dport)
            eps = (a, b) if a <= b else (b, a)
            t = self.tups_by_eps.get(eps)
            if t is None:
                t = self.tups_by_eps[eps] = _Tup()
            hit = self.tups[key] = (t, 0)
            self.tups[(seg.dst_ip, seg.dport, seg.src_ip, seg.sport)] = (t, 1)
        return hit

    def tup_of(self, a: str, b: str) -> _Tup | None:
        return self.tups_by_eps.get((a, b) if a <= b else (b, a))

    def _stream(self, st: int, n: int, seg: Any) -> _Stream:
        ss = self.streams.get(st)
        if ss is not None:
            return ss
        ss = self.retired.get(st)
        if ss is not None:
            return ss
        byte, bit = st >> 3, 1 << (st & 7)
        if byte >= len(self.stream_seen):
            self.stream_seen.extend(bytes(byte + 1 - len(self.stream_seen) + len(self.stream_seen) // 2))
        if not self.stream_seen[byte] & bit:
            self.stream_seen[byte] |= bit
            self.n_streams += 1
        ss = self.streams[st] = _Stream(st, n, seg)
        return ss

    def _attach(self, ss: _Stream, t: _Tup) -> None:
        """A stream's first frame on a four-tuple: it supersedes the tuple's older stream (tshark puts a
        tuple's later frames in its latest stream)."""
        ss.tup = t
        old = t.stream
        t.stream = ss
        if old is None or old is ss:
            return
        old.superseded = True
        old.waiting = []          # no FIN will come: those checks are skipped, as tshark has no first FIN
        if self.streams.get(old.st) is old:
            del self.streams[old.st]
            self.retired[old.st] = old
            if len(self.retired) > _RETIRED:
                del self.retired[next(iter(self.retired))]

    def frame(self, n: int, tf: TFrame | None, seg: Any) -> None:
        if tf is not None and seg is not None:
            st = tf[1]
            if st is not None and not tf[3] and not tf[4] and not (tf[2] | seg.flags) & _PLAIN_FLAGS \
                    and not seg.comments:
                hit = self.tups.get((seg.src_ip, seg.sport, seg.dst_ip, seg.dport))
                if hit is not None:
                    t, d = hit
                    ss = t.stream
                    if ss is not None and ss.st == st and not t.holds:
                        ss.dirs |= 1 << d
                        buf = t.frames
                        if buf:
                            last = buf[-1]
                            if isinstance(last, _Plains) and last.ss is ss:
                                last.ns.append(n)
                                last.segs.append(seg)
                                return
                        else:
                            self.dirty[t] = None
                        buf.append(_Plains(ss, n, seg))   # not in pending: no finding names such a frame
                        return
        if tf is not None and tf[1] is None and not tf[4]:
            tf = None                 # no TCP stream, no comment: not in tshark's table
        if tf is not None:
            st, tflags, bits = tf[1], tf[2], tf[3]
            if tf[4]:
                self._comments(n, tf, seg)
            if bits:
                if bits & _REUSED:
                    self.reuse_counts[0] += 1
                if tflags & _FIN and bits & _RETX:
                    self.rx_counts[0] += 1
        else:
            st, tflags, bits = None, 0, 0
        sflags = seg.flags if seg is not None else 0
        if (tflags | sflags) & (_FIN | _RST):
            self._flags(n, tf is not None, tflags, bits, sflags)
        if seg is not None and seg.comments and (tf is None or not tf[4]):
            self._comments(n, tf, seg)
        if st is None and seg is None:
            return
        ss = self._stream(st, n, seg) if st is not None else None
        d = 0
        if seg is not None:
            t, d = self._tup(seg)
        elif ss is not None and ss.tup is not None:
            t = ss.tup
        else:                          # a stream frame we read no segment of, on no four-tuple we know
            self._orphan(n, tflags, bits)
            return
        if ss is not None and ss.tup is None:
            self._attach(ss, t)
        rec = _Frame(n, seg, d, ss, tf is not None, tflags, bits)
        if seg is not None:
            self._segment_facts(t, rec, seg, ss, tflags, bits)
        t.frames.append(rec)
        self.pending[n] = rec
        self.dirty[t] = None

    def _orphan(self, n: int, tflags: int, bits: int) -> None:
        if not bits & _ICMP:
            self._lost(n)
        if bits & _REUSED:
            self._row("reuse+", n, _reuse_theirs_only(self.ver, n, None, None, None, None))
        if tflags & _FIN and bits & _RETX:
            self._row("finrx+", n, _finrx_theirs_only(self.ver, n, None, None))

    def _segment_facts(self, t: _Tup, rec: _Frame, seg: Any, ss: _Stream | None, tflags: int, bits: int) -> None:
        """What the reasons will need of the frames before this one, taken while they are at hand."""
        n, d = rec.n, rec.d
        if t.holds:
            for h in [h for h in t.holds if h.d != d]:
                h.extra().reply = seg
                t.holds.remove(h)
        if tflags & _FIN and bits & _RETX:
            rec.extra().prev_fin = t.last_fin[d]
        if seg.flags & (_SYN | _FIN | _RST):
            self._close_facts(t, rec, seg, ss)
        if ss is not None:
            ss.dirs |= 1 << d
            if tflags & _FIN and ss.first_fin is None:
                ss.first_fin = (n, seg)
                waiting, ss.waiting = ss.waiting, []
                for c in waiting:
                    self._close_initiator(c, n, seg)

    def _close_facts(self, t: _Tup, rec: _Frame, seg: Any, ss: _Stream | None) -> None:
        """A SYN, FIN or RST of ours: what reasons about it or later segments need."""
        n, d, flags = rec.n, rec.d, seg.flags
        if flags & _SYN:
            if not flags & _ACK:
                x = rec.extra()
                key = (d, seg.seq)
                x.old = t.isns.get(key)
                if ss is not None:
                    if x.old is not None:
                        x.closed = next((m for m in ss.closes if x.old < m < n), None)
                    x.mine = bool(ss.dirs >> d & 1)
                    if ss.start == n:
                        t.holds.append(rec)   # a stream starts here: _merge_reason may want the peer's answer
            else:
                key = (d ^ 1, (seg.ack - 1) & 0xFFFFFFFF)   # the SYN-ACK shows the peer's ISN
            # an earlier frame showing a SYN's ISN (_old_isn_frame of the old design): a SYN from the same sender
            # with that sequence number, or a SYN-ACK from the peer acknowledging it; the latest one wins
            isns = t.isns
            isns.pop(key, None)
            isns[key] = n
            if len(isns) > _SYN_HISTORY:
                del isns[next(iter(isns))]
        if flags & _FIN:
            t.last_fin[d] = n
        if ss is not None and flags & (_FIN | _RST):
            ss.closes.append(n)

    def _flags(self, n: int, tf: bool, tflags: int, bits: int, sflags: int) -> None:
        for name, bit in (("fin", _FIN), ("rst", _RST)):
            theirs = tf and tflags & bit
            ours = sflags & bit
            counts = self.flag_counts[name]
            if theirs:
                counts[0] += 1
            if ours:
                counts[1] += 1
            if theirs and not ours:
                if bits & _ICMP:
                    self._row(name + "+", n, Disagreement(
                        name, (n,), f"{name.upper()} flag set", "no TCP segment",
                        "the TCP header is quoted inside an ICMP error message, not a segment on the wire; the lab "
                        "skips ICMP", True))
                else:
                    self._row(name + "+", n, Disagreement(name, (n,), f"{name.upper()} flag set",
                                                          "not seen by the lab's reader",
                                                          "the reader did not decode this frame as this TCP segment",
                                                          False))
            elif ours and not theirs:
                self._row(name + "-", n, Disagreement(name, (n,), "flag not set / not TCP", f"{name.upper()} flag set",
                                                      "the reader decoded a TCP segment tshark does not see here",
                                                      False))

    def _comments(self, n: int, tf: TFrame | None, seg: Any) -> None:
        theirs = list(tf[4]) if tf is not None and tf[4] else None
        if theirs is not None:
            self.n_tcomm += 1
            if self.tcomm is not None:
                self.tcomm[n] = theirs
                if len(self.tcomm) > PYSHARK_MAX_COMMENTED:
                    self.tcomm = None
        if seg is None:
            return
        tcp_theirs = theirs
        ours = list(seg.comments) if seg.comments else None
        self.n_tcp_comm += tcp_theirs is not None
        self.n_our_comm += ours is not None
        if tcp_theirs != ours:
            self.n_bad_comm += 1
            if len(self.bad_comm) < _SHOWN:
                self.bad_comm.append(n)

    def _lost(self, n: int) -> None:
        self.n_lost += 1
        if len(self.lost) < _SHOWN:
            heapq.heappush(self.lost, -n)
        elif -self.lost[0] > n:
            heapq.heapreplace(self.lost, -n)

    # -- our connections and findings arrive as the analyzer finishes them ----------------------------------

    def connection(self, c: _ConnSum) -> None:
        """A finished connection: its frames are all in, none compared yet (it was open)."""
        self.n_conns += 1
        t = self.tup_of(c.client, c.server)
        if t is None:
            t = self.tups_by_eps[(c.client, c.server) if c.client <= c.server else (c.server, c.client)] = _Tup()
        ss = self._stream_of(t, c.first)
        c.stream_at = ss.st if ss is not None else None
        t.add(c)
        if ss is None or ss.start != c.first:
            return     # the stream and the connection pair up differently: reported under "streams"
        if c.kind in ("rst", "refused"):
            self._closing_rst(t, c, ss)
        elif c.initiator is not None and c.kind != "incomplete":
            if ss.first_fin is not None:
                self._close_initiator(c, *ss.first_fin)
            elif not ss.superseded:
                ss.waiting.append(c)

    def _stream_of(self, t: _Tup, n: int) -> _Stream | None:
        """tshark's stream of buffered frame n (a connection's first frame: a SYN, as a rule, so a _Frame)."""
        rec = self.pending.get(n)
        if rec is not None:
            return rec.ss
        for r in t.frames[t.head:]:
            if isinstance(r, _Plains) and r.ns[0] <= n <= r.ns[-1] and n in r.ns:
                return r.ss
        return None

    def _closing_rst(self, t: _Tup, c: _ConnSum, ss: _Stream) -> None:
        """Which RST ended it, as each tool reads it: tshark has no acceptability rule, so by arrival the stream's
        first RST ends it; the lab credits the first RST its receiver would accept (RFC 9293 3.10.7, Linux
        tcp_validate_incoming / tcp_reset_check). Counts: RST-ended connections whose RST is the first."""
        rsts = [r.n for r in t.frames[t.head:] if isinstance(r, _Frame) and c.first <= r.n <= c.last and r.ss is ss
                and r.tflags & _RST]
        ours = [m for m in c.close_frames if m in rsts]
        if not rsts or not ours:
            return
        self.cr[0] += 1
        self.cr[1] += ours[-1] == rsts[0]
        if ours[-1] == rsts[0]:
            return
        self.cr[2] = False
        self._row("closing-rst", c.id, Disagreement(
            "closing-rst", (rsts[0], ours[-1]), f"first RST of the stream: frame {rsts[0]}",
            f"connection {c.id} ended by the RST in frame {ours[-1]}",
            f"the lab found the RST in frame {rsts[0]} not acceptable to its receiver (its sequence number is not "
            f"what the receiver's own segments show it expected), so a later one ended the connection; tshark "
            f"{self.ver} does not judge RST acceptability", True))

    def _close_initiator(self, c: _ConnSum, fin: int, s: Any) -> None:
        """Who closed first, as each tool reads it: tshark (by arrival order: the stream's first FIN on the wire)
        against the lab's close initiator. Counts: the closes each tool puts on the client."""
        ours = c.initiator
        theirs = "client" if _ep(s.src_ip, s.sport) == c.client else "server"
        self.ci[0] += theirs == "client"
        self.ci[1] += ours == "client"
        if theirs == ours:
            return
        self.ci[2] = False
        if ours == "both":
            d = Disagreement("close-initiator", (fin,), f"first FIN from the {theirs} (frame {fin})",
                             f"connection {c.id}: simultaneous close",
                             f"the FINs crossed (each was sent before the other arrived: neither acknowledges the "
                             f"other's), so the lab calls the close simultaneous; tshark {self.ver} has no close "
                             f"initiator, and by arrival order at the capture point the first FIN is the {theirs}'s",
                             True)
        else:
            d = Disagreement("close-initiator", (fin,), f"first FIN from the {theirs} (frame {fin})",
                             f"connection {c.id}: the {ours} closed first",
                             "the lab names the other side as the one that closed first", False)
        self._row("close-initiator", c.id, d)

    def finding(self, kind: str, frames: Iterable[int]) -> None:
        if kind in _REUSE_KINDS:
            for n in frames:
                rec = self.pending.get(n)
                if rec is None:
                    continue     # not in a buffer (a _Plain has no SYN)
                s = rec.seg
                if s is not None and s.flags & _SYN and not s.flags & _ACK:
                    x = rec.extra()
                    if not x.reuse:
                        self.reuse_counts[1] += 1
                    x.reuse = max(x.reuse, kind)     # as the findings' order (frame, kind) left it
        elif kind == "fin-retransmitted":
            # the repeats among the frames: FINs from a sender that already sent a FIN earlier with the same
            # sequence number (the first one is the original, not a retransmission)
            seen: set[tuple[str, int, int]] = set()
            for n in sorted(frames):
                rec = self.pending.get(n)
                if rec is None:
                    continue     # not in a buffer (a _Plain has no FIN)
                s = rec.seg
                if s is None or not s.flags & _FIN:
                    continue
                key = (s.src_ip, s.sport, (s.seq + s.payload_len) & 0xFFFFFFFF)
                if key in seen and not rec.extra().rx:
                    rec.extra().rx = True
                    self.rx_counts[1] += 1
                seen.add(key)

    # -- frames are compared once no connection that could hold them is open --------------------------------

    def settle(self, open_first: Mapping[_Tup, int], upto: int) -> None:
        """Compare every buffered frame before its four-tuple's cut: the first frame of an open connection of
        ours on it (open_first), or `upto`."""
        for t in list(self.dirty):
            cut = min(open_first.get(t, _INF), upto)
            frames = t.frames
            i, nf = t.head, len(frames)
            while i < nf:
                r = frames[i]
                if isinstance(r, _Plains):
                    k = bisect.bisect_left(r.ns, cut)
                    if k:
                        self._compare_plains(t, r, k)
                    if k < len(r.ns):
                        del r.ns[:k]
                        del r.segs[:k]
                        break
                else:
                    if r.n >= cut:
                        break
                    self._compare(t, r)
                frames[i] = _DONE
                i += 1
            if i == len(frames):
                frames.clear()
                t.head = 0
                del self.dirty[t]
            elif i > 64 and i * 2 > len(frames):
                del frames[:i]
                t.head = 0
            else:
                t.head = i
            t.forget_before(cut)

    def _compare_plains(self, t: _Tup, r: _Plains, end: int) -> None:
        """Compare r's first `end` frames: a connection's first frame among them one by one, the others a span
        of frames one connection holds at a time."""
        ns, lo = r.ns, 0
        first, last = ns[0], ns[end - 1]
        starts = sorted(k for d in (t.starts, t.incs) for k in d if first <= k <= last)
        for k in starts:
            at = bisect.bisect_left(ns, k, lo, end)
            if at == end or ns[at] != k or at < lo:
                continue
            self._compare_span(t, r, lo, at)
            self._compare(t, _Frame(k, r.segs[at], 0, r.ss, True, 0, 0))
            lo = at + 1
        self._compare_span(t, r, lo, end)

    def _compare_span(self, t: _Tup, r: _Plains, lo: int, hi: int) -> None:
        """Frames r.ns[lo:hi], none a connection's first: the connection of a frame (_Tup.conn_of) stays the
        same up to the next connection's first frame and, when it holds the frame, up to its last one."""
        ns, ss, firsts = r.ns, r.ss, t.firsts
        while lo < hi:
            n = ns[lo]
            c = t.conn_of(n)
            nxt = bisect.bisect_right(firsts, n)
            limit = firsts[nxt] if nxt < len(firsts) else _INF
            if c is not None and c.last >= n:
                limit = min(limit, c.last + 1)
            q = max(bisect.bisect_left(ns, limit, lo, hi), lo + 1)
            if c is None:
                for m in ns[lo:q]:
                    self._lost(m)
            elif ss.conn_at != c.id and c.stream_at != ss.st:
                for m, s in zip(ns[lo:q], r.segs[lo:q], strict=True):
                    self._odd(ss, c.id, m, s)
            lo = q

    def _compare(self, t: _Tup, rec: _Frame) -> None:
        n, seg, ss = rec.n, rec.seg, rec.ss
        self.pending.pop(n, None)
        c = t.conn_of(n) if seg is not None else None
        cid = c.id if c is not None else None
        start = t.starts.pop(n, None)
        inc = t.incs.pop(n, None)
        ver = self.ver
        if ss is not None:
            ts_start = ss.start == n
            if ts_start:
                ss.conn_at = cid
            if start is not None and not ts_start:
                self._row("split", n, _split_reason(ver, ss.st, start.id, rec))
            if ts_start and start is None and c is not None:
                self.merges.append((n, c.id, ss.st, rec))   # written at the end: the peer's answer may be to come
            elif t.holds and rec in t.holds:
                t.holds.remove(rec)
            if c is not None:
                if ss.conn_at != cid and c.stream_at != ss.st:
                    self._odd(ss, c.id, n, seg)
            elif not rec.bits & _ICMP:
                self._lost(n)
        x = rec.x or _NO_EXTRA
        if rec.bits & _REUSED:
            if not x.reuse:
                prev = t.previous(inc) if inc is not None else None
                self._row("reuse+", n, _reuse_theirs_only(ver, n, seg, inc, prev, cid))
        elif x.reuse:
            tf = rec.bits if rec.tf else None
            if tf is not None and tf & (_RETX | _SPURIOUS) and x.old is not None:
                label = _label(tf)
                self._row("reuse-", n, Disagreement(
                    "reused-ports", (n,), f"[TCP {label}]", x.reuse,
                    f"tshark {ver} calls a SYN carrying the old ISN (see frame {x.old}) a retransmission; the lab "
                    "counts a new incarnation because the earlier one had closed", True))
            else:
                self._row("reuse-", n, Disagreement("reused-ports", (n,), _label(tf) if tf is not None else "not TCP",
                                                    x.reuse, "tshark sees no reuse here", False))
        theirs_rx = rec.tflags & _FIN and rec.bits & _RETX
        if theirs_rx and not x.rx:
            self._row("finrx+", n, _finrx_theirs_only(ver, n, seg, x.prev_fin))
        elif x.rx and not theirs_rx:
            label = _label(rec.bits) if rec.tf else ""
            if label:
                self._row("finrx-", n, Disagreement(
                    "fin-retransmitted", (n,), f"[TCP {label}]", "FIN retransmitted",
                    f"tshark labels this repeated FIN '{label}' rather than a plain retransmission", True))
            else:
                self._row("finrx-", n, Disagreement("fin-retransmitted", (n,), "not a retransmission",
                                                    "FIN retransmitted", "tshark does not label this FIN", False))

    def _odd(self, ss: _Stream, cid: int, n: int, s: Any) -> None:
        key = (ss.st, cid)
        g = self.odd.get(key)
        if g is None:
            g = self.odd[key] = _Odd(ss)
        g.count += 1
        if len(g.frames) < _SHOWN:
            g.frames.append(n)
        syn = ss.start_seg
        if g.ok and syn is not None:
            g.ok = ((s.src_ip, s.sport) == (syn.dst_ip, syn.dport) and bool(s.flags & _ACK)
                    and s.ack != (syn.seq + 1) & 0xFFFFFFFF)

    # -- the end ---------------------------------------------------------------------------------------------

    def end(self) -> None:
        """The capture is over: nothing more comes for any frame still waiting."""
        self.settle({}, _INF)

    def result(self, path: Path) -> tuple[tuple[Check, ...], tuple[Disagreement, ...]]:
        ver = self.ver
        checks: list[Check] = []
        for name in ("fin", "rst"):
            theirs, ours = self.flag_counts[name]
            checks.append(Check(name, theirs, ours, not self.rows[name + "+"] and not self.rows[name + "-"]))
        checks.append(Check("streams", self.n_streams, self.n_conns, self.n_streams == self.n_conns))
        checks.append(Check("close-initiator", self.ci[0], self.ci[1], bool(self.ci[2])))
        checks.append(Check("closing-rst", self.cr[0], self.cr[1], bool(self.cr[2])))
        checks.append(Check("reused-ports", self.reuse_counts[0], self.reuse_counts[1],
                            not self.rows["reuse+"] and not self.rows["reuse-"]))
        checks.append(Check("fin-retransmitted", self.rx_counts[0], self.rx_counts[1],
                            not self.rows["finrx+"] and not self.rows["finrx-"]))
        for n, cid, st, rec in self.merges:
            self._row("merge", n, _merge_reason(ver, cid, st, rec))
        for (st, cid), g in sorted(self.odd.items()):
            self._row("odd", (st, cid), _pairing_reason(ver, st, cid, g, g.ss.conn_at))
        if self.n_lost:
            lost = sorted(-m for m in self.lost)
            self._row("lost", 0, Disagreement("streams", tuple(lost), "in a TCP stream", "in no connection",
                                              f"{self.n_lost} TCP frame(s) the analyzer did not assign to a "
                                              "connection", False))
        if self.n_tcomm:
            agree = not self.n_bad_comm
            checks.append(Check("comments", self.n_tcp_comm, self.n_our_comm, agree))
            if not agree:
                self._row("comments", 0, Disagreement("comments", tuple(self.bad_comm), "comments differ",
                                                      "comments differ", "the reader's packet comments differ from "
                                                      "tshark's frame.comment", False))
        if self.n_tcomm and self.tcomm is not None:
            # pyshark (the design's cross-check library) must read the same comments as tshark -T fields
            tcomm = self.tcomm
            py = comments_pyshark(path)
            checks.append(Check("comments-pyshark", len(tcomm), len(py), py == tcomm))
            if py != tcomm:
                bad = sorted(n for n in set(tcomm) | set(py) if tcomm.get(n) != py.get(n))
                self._row("comments-pyshark", 0, Disagreement(
                    "comments-pyshark", tuple(bad[:_SHOWN]), "tshark -T fields", "pyshark",
                    "pyshark and tshark -T fields read different packet comments", False))
        dis: list[Disagreement] = []
        for kind in _KINDS:
            rows = self.rows[kind]
            rows.sort(key=_row_key)
            dis.extend(d for _, d in rows)
        return tuple(checks), tuple(dis)


def _row_key(row: tuple[Any, Disagreement]) -> Any:
    return row[0]


_DONE = _Frame(-1, None, 0, None, False, 0, 0)   # a compared frame's place in its buffer until the buffer is cut


class _Run:
    """Feeds a _Comparison: our segments in batches, tshark's frames merged in by frame number, then the
    connections that finished meanwhile, then the comparison of what no open connection can still hold."""

    def __init__(self, cmp: _Comparison, theirs: Iterable[TFrame]) -> None:
        self.cmp = cmp
        self.theirs = iter(theirs)
        self.peek: TFrame | None = None
        self.theirs_done = False

    def frames(self, segs: list[Any], upto: int) -> None:
        """Every frame up to `upto` (our segments in `segs`, tshark's from its pass) to the comparison."""
        it, frame = self.theirs, self.cmp.frame
        tf = self.peek
        k, nseg = 0, len(segs)
        while True:
            if tf is None and not self.theirs_done:
                tf = next(it, None)
                if tf is None:
                    self.theirs_done = True
            if k < nseg and tf is not None and tf[0] == segs[k].frame:   # the usual frame: both have it
                s = segs[k]
                if s.frame > upto:
                    break
                k += 1
                frame(s.frame, tf, s)
                tf = None
                continue
            if tf is None and not self.theirs_done:
                tf = next(it, None)
                if tf is None:
                    self.theirs_done = True
            tn = tf[0] if tf is not None else _INF
            sn = segs[k].frame if k < nseg else _INF
            n = tn if tn < sn else sn
            if n > upto or n == _INF:
                break
            t: TFrame | None = None
            if tn == n:
                t, tf = tf, None
            s = None
            if sn == n:
                s = segs[k]
                k += 1
            frame(n, t, s)
        self.peek = tf


def _open_firsts(cmp: _Comparison, analyzer: Analyzer) -> dict[_Tup, int]:
    """Per four-tuple, the first frame of its earliest connection the analyzer still has open."""
    out: dict[_Tup, int] = {}
    for f, client, server in analyzer.open_connections():
        t = cmp.tup_of(client, server)
        if t is not None and f < out.get(t, _INF):
            out[t] = f
    return out


def verify_file(path: Path, profile: str = "linux", time_wait_s: float | None = None, strict: bool = False,
                warn: Callable[[str], None] | None = None, progress: Callable[[int, int, int], None] | None = None
                ) -> VerifyResult:
    """`twlab verify`: analyze `path` and read it with tshark at the same time (tshark runs in its own process),
    comparing connection by connection as the analyzer finishes them; memory follows the open connections.

    A capture cut short is read up to the cut, as tshark reads it, with warn(line) (strict: BadCapture);
    progress(bytes read, packets, connections open) is called once per batch (lab.analysis.view.ReadProgress)."""
    from lab.core.tracker import Analyzer
    from lab.pcap.readers import CaptureReader

    path = Path(path)
    ver = version()
    cmp = _Comparison(ver)
    with _TsharkPass(path) as theirs:
        reader = CaptureReader(path, lenient=not strict)
        analyzer = Analyzer(profile, time_wait_s, detail=False, keep=False)
        run = _Run(cmp, theirs)
        feed, drain = analyzer.feed, analyzer.drain

        def step(segs: list[Any], upto: int, at_end: bool) -> None:
            if progress is not None and reader.source is not None:
                progress(reader.source.nread, *analyzer.progress())   # bytes, packets, connections open
            run.frames(segs, upto)
            conns, findings = drain()
            for c in conns:
                cmp.connection(_ConnSum.of_record(c))
            for f in findings:
                cmp.finding(f.kind, f.frames)
            cmp.settle({} if at_end else _open_firsts(cmp, analyzer), upto + 1)

        # the cyclic GC would walk the buffered frames again and again; nothing here forms cycles that matter
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            batch: list[Any] = []
            for seg in reader:
                feed(seg)
                batch.append(seg)
                if len(batch) >= _BATCH:
                    step(batch, batch[-1].frame, False)
                    batch = []
            analyzer.finish()
            step(batch, _INF - 1, True)
            cmp.end()
        finally:
            if was_enabled:
                gc.enable()
        packets = theirs.packets
    if reader.stats.cut and warn is not None:
        warn(reader.stats.cut)
    checks, dis = cmp.result(path)
    return VerifyResult(str(path), ver, packets, checks, dis)


def verify(path: Path, report: Any, tshark_scan: TsharkScan | Callable[[], TsharkScan] | None = None
           ) -> VerifyResult:
    """Compare a given analysis of `path` (a Report, or its to_dict()) with tshark's reading (its pass over the
    file, or the given scan): the same comparison as verify_file, the report's connections taken as finished
    where their last frame is read."""
    from lab.pcap.readers import CaptureReader

    path = Path(path)
    if tshark_scan is not None and not isinstance(tshark_scan, TsharkScan):
        tshark_scan = tshark_scan()
    rep: Mapping[str, Any] = report if isinstance(report, Mapping) else report.to_dict()
    ver = version()
    cmp = _Comparison(ver)
    conns = sorted((_ConnSum.of_dict(c) for c in rep["connections"]), key=lambda c: (c.last, c.id))
    found: dict[int | None, list[tuple[str, tuple[int, ...]]]] = defaultdict(list)
    for f in rep["findings"]:
        found[f["connection"]].append((f["kind"], tuple(f["frames"])))
    for fs in found.values():
        fs.sort(key=lambda kf: (kf[1][0] if kf[1] else 0, kf[0]))
    unfinished: dict[tuple[str, str], list[int]] = defaultdict(list)   # first frames, sorted
    for c in sorted(conns, key=lambda c: c.first):
        unfinished[(c.client, c.server) if c.client <= c.server else (c.server, c.client)].append(c.first)
    released = 0

    def step(segs: list[Any], upto: int) -> None:
        nonlocal released
        run.frames(segs, upto)
        while released < len(conns) and conns[released].last <= upto:
            c = conns[released]
            released += 1
            cmp.connection(c)
            for kind, frames in found.pop(c.id, ()):
                cmp.finding(kind, frames)
            eps = (c.client, c.server) if c.client <= c.server else (c.server, c.client)
            unfinished[eps].remove(c.first)
        open_first: dict[_Tup, int] = {}
        for eps, firsts in list(unfinished.items()):
            if not firsts:
                del unfinished[eps]
                continue
            t = cmp.tups_by_eps.get(eps)
            if t is not None:
                open_first[t] = firsts[0]
        cmp.settle(open_first, upto + 1)

    with contextlib.ExitStack() as stack:
        theirs: _TsharkPass | _Replay = (_Replay(tshark_scan) if tshark_scan is not None
                                         else stack.enter_context(_TsharkPass(path)))
        run = _Run(cmp, theirs)
        batch: list[Any] = []
        for seg in CaptureReader(path, lenient=True):   # up to a cut, as tshark reads it
            batch.append(seg)
            if len(batch) >= _BATCH:
                step(batch, batch[-1].frame)
                batch = []
        step(batch, _INF - 1)
        for fs in found.values():                  # findings of no connection we were given
            for kind, frames in fs:
                cmp.finding(kind, frames)
        cmp.end()
        packets = theirs.packets
    checks, dis = cmp.result(path)
    return VerifyResult(str(path), ver, packets, checks, dis)


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _flag_text(flags: int) -> str:
    from lab.core.model import Flags

    return Flags.text(flags)


# --- the reasons ---------------------------------------------------------------------------------------------

def _split_reason(ver: str, stream: int, cid: int, rec: _Frame) -> Disagreement:
    """tshark keeps frame `rec` in `stream`; the lab starts connection `cid` there."""
    start, seg = rec.n, rec.seg
    label = _label(rec.bits) if rec.tf else ""
    flags = _flag_text(seg.flags) if seg is not None else "?"
    theirs = f"stream {stream} goes on" + (f" [TCP {label}]" if label else "")
    ours = f"connection {cid} starts (new incarnation)"
    if seg is None:
        return Disagreement("streams", (start,), theirs, ours, "the reader did not decode this frame", False)
    if seg.flags & _SYN and seg.flags & _ACK:
        return Disagreement("streams", (start,), theirs, ours,
                            f"tshark's stream is per four-tuple on SYN-ACK too: {ver} flags a SYN-ACK with a new "
                            "ISN as reused ports but keeps it in the same stream; we start a new incarnation", True)
    if not seg.flags & _SYN:
        return Disagreement("streams", (start,), theirs, ours,
                            f"we start a new connection at a {flags} segment that tshark keeps in stream {stream}",
                            False)
    # a bare SYN tshark keeps in the old stream
    x = rec.x or _NO_EXTRA
    old = x.old
    if old is not None:
        closed = x.closed
        if closed is None:
            return Disagreement("streams", (start,), theirs, ours,
                                f"frame {old} already carries or acknowledges this SYN's ISN and nothing closed the "
                                "connection in between: a retransmitted or reordered handshake of the same "
                                "connection; tshark is right, the lab should not start a new incarnation", False)
        said = f"calls it a {label.lower()}" if label else "keeps it in the old stream"
        return Disagreement("streams", (start,), theirs, ours,
                            f"a SYN carrying the old ISN (see frame {old}) after the connection closed (frame "
                            f"{closed}): tshark {ver} {said}, we count a new incarnation (an old duplicate SYN or a "
                            "reused ISN)", True)
    if not x.mine:
        return Disagreement("streams", (start,), theirs, ours,
                            f"tshark {ver} opens a new stream only on a SYN whose ISN differs from the sender's "
                            f"base sequence, and it had none: stream {stream} holds nothing from this sender before "
                            f"frame {start}", True)
    return Disagreement("streams", (start,), theirs, ours,
                        f"tshark keeps this SYN in stream {stream}; the lab starts a new incarnation", False)


def _merge_reason(ver: str, cid: int, stream: int, rec: _Frame) -> Disagreement:
    start, seg = rec.n, rec.seg
    label = _label(rec.bits) if rec.tf else ""
    flags = _flag_text(seg.flags) if seg is not None else "?"
    theirs = f"stream {stream} starts" + (f" [TCP {label}]" if label else "")
    ours = f"still connection {cid}"
    if seg is not None and seg.flags & _SYN and not seg.flags & _ACK:
        reply = (rec.x or _NO_EXTRA).reply
        if reply is not None and reply.flags & _ACK and reply.ack != (seg.seq + 1) & 0xFFFFFFFF:
            return Disagreement("streams", (start,), theirs, ours,
                                f"tshark {ver} opens a new stream on any SYN with a new ISN; the peer answered it "
                                f"(frame {reply.frame}) with ack {reply.ack}, not ISN+1, i.e. from the old "
                                "connection (a challenge ACK, RFC 9293 3.10.7.4, or an ACK from TIME_WAIT), so the "
                                "lab keeps the incarnation", True)
        return Disagreement("streams", (start,), theirs, ours,
                            f"tshark {ver} opens a new stream at a {flags} with a new ISN on a four-tuple it has "
                            "seen; the lab keeps it in the same incarnation", False)
    return Disagreement("streams", (start,), theirs, ours,
                        f"tshark starts stream {stream} at a {flags} segment; the lab keeps connection {cid}", False)


def _pairing_reason(ver: str, stream: int, cid: int, g: _Odd, their_cid: int | None) -> Disagreement:
    stream_start = g.ss.start
    theirs = f"stream {stream} (starts at frame {stream_start})"
    ours = f"connection {cid}" + (f", not {their_cid}" if their_cid is not None else "")
    syn = g.ss.start_seg
    if syn is not None and syn.flags & _SYN and not syn.flags & _ACK and g.count and g.ok:
        return Disagreement("streams", tuple(g.frames), theirs, ours,
                            f"these segments come from the peer of the new SYN (frame {stream_start}) but "
                            "acknowledge the old connection, not the new ISN+1: the peer answered from the old "
                            "connection (a challenge ACK, an ACK from TIME_WAIT or its own retransmission), so "
                            f"the lab keeps them in "
                            f"connection {cid}; tshark {ver} moves every later segment to the new stream", True)
    return Disagreement("streams", tuple(g.frames), theirs, ours,
                        f"{g.count} frame(s) that tshark and the lab put in different conversations", False)


def _reuse_theirs_only(ver: str, n: int, seg: Any, inc: _ConnSum | None, prev: _ConnSum | None,
                       cid: int | None) -> Disagreement:
    if seg is None:
        return Disagreement("reused-ports", (n,), "Port numbers reused", "not a TCP segment",
                            "the reader did not decode this frame", False)
    flags = _flag_text(seg.flags)
    if seg.flags & _SYN and seg.flags & _ACK:
        return Disagreement("reused-ports", (n,), f"Port numbers reused ({flags})", "no reuse finding",
                            f"tshark's stream is per four-tuple on SYN-ACK too: {ver} flags a SYN-ACK whose ISN "
                            "differs from the conversation's, and a SYN-ACK after an RST; the lab judges reuse "
                            "on the client's SYN only", True)
    if seg.flags & _SYN and inc is not None:
        kind = prev.kind if prev else "?"
        if prev and prev.tw_sides:
            sides = ", ".join(prev.tw_sides)
            return Disagreement("reused-ports", (n,), "Port numbers reused", f"connection {inc.id} "
                                f"(incarnation {inc.incarnation}), no reuse finding",
                                f"the previous incarnation (connection {prev.id}) left TIME_WAIT on {sides}; the "
                                "lab should report reuse-in-time-wait or reuse-after-time-wait here", False)
        tw = "no TIME_WAIT window"
        return Disagreement("reused-ports", (n,), "Port numbers reused", f"connection {inc.id} "
                            f"(incarnation {inc.incarnation}), no reuse finding",
                            f"tshark {ver}'s reuse rule has no time or state condition and flags any SYN with a new "
                            f"ISN on a known four-tuple; the previous incarnation closed '{kind}' and left {tw} "
                            "the SYN could meet, so the lab records a new incarnation but no TIME_WAIT reuse", True)
    if seg.flags & _SYN:
        return Disagreement("reused-ports", (n,), "Port numbers reused", f"same connection {cid}",
                            f"tshark {ver} flags a SYN with a new ISN; the lab does not start a new incarnation "
                            "here (the earlier handshake was not finished or closed)", False)
    return Disagreement("reused-ports", (n,), f"Port numbers reused ({flags})", "no reuse finding",
                        "tshark flags a segment without SYN", False)


def _finrx_theirs_only(ver: str, n: int, s: Any, prev_fin: int | None) -> Disagreement:
    if s is None:
        return Disagreement("fin-retransmitted", (n,), "FIN retransmission", "not a TCP segment",
                            "the reader did not decode this frame", False)
    if prev_fin is None:
        return Disagreement("fin-retransmitted", (n,), "FIN retransmission", "first FIN of its sender",
                            f"tshark {ver}'s retransmission rule looks at sequence numbers only (e.g. a segment "
                            "below the highest sequence seen); this is the first FIN its sender put on the wire, "
                            "so it is not a repeated FIN", True)
    return Disagreement("fin-retransmitted", (n,), "FIN retransmission", "no fin-retransmitted finding",
                        f"the sender sent a FIN before (frame {prev_fin}); the analyzer did not report "
                        "this repeat", False)
