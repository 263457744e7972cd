"""The lab's cross-check against Wireshark: the only module that runs tshark or pyshark.

`scan(path)` reads one file with one `tshark -T fields` pass (fast: ~55 k packets/s here) and gives,
per frame, tshark's stream number, flags and the analysis labels the lab compares with
(`tcp.analysis.reused_ports`, retransmission and its variants), plus the packet comments.
`verify(path, report)` sets that beside the lab's own reading of the file and lists every
disagreement with the reason, saying which ones are explained by a known difference between
tshark's rules and the lab's.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from lab.errors import BadCapture, EnvironmentProblem

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
    ncols = len(_FIELDS)
    packets = 0
    agg = _AGG
    for line in lines:
        cols = line.split("\t", ncols - 1)
        if len(cols) < ncols or not cols[0].isdigit():
            continue
        packets += 1
        cell = cols[1]
        stream = (int(cell) if cell and agg not in cell else _last_int(cell))   # one TCP header: the usual case
        comments = tuple(_unescape(c) for c in cols[10].split(agg)) if cols[10] else ()
        if stream is None and not comments:
            continue
        cell = cols[2]
        flags = (int(cell, 16) if cell and agg not in cell else _last_int(cell, 16)) or 0
        bits = ((_REUSED if cols[3] else 0) | (_RETX if cols[4] else 0) | (_FAST_RETX if cols[5] else 0)
                | (_SPURIOUS if cols[6] else 0) | (_OOO if cols[7] else 0) | (_ICMP if cols[8] or cols[9] else 0))
        add(int(cols[0]), stream, flags, bits, comments)
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

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tshark_version": self.tshark_version, "packets": self.packets, "ok": self.ok,
                "checks": [c.to_dict() for c in self.checks], "classes": self.classes(),
                "disagreements": [d.to_dict() for d in self.disagreements]}


_NUMBERS = re.compile(r"\d+(?:\.\d+)?")
_CLASS_FRAMES = 5   # example frames per class


_REUSE_KINDS = ("reuse-in-time-wait", "reuse-after-time-wait")
PYSHARK_MAX_COMMENTED = 5000  # pyshark parses each commented packet in Python: keep verify quick


class _ConnOf:
    """frame -> our connection id, as one array indexed by frame (-1: none): a dict of a million frames
    costs a hundred bytes each."""

    def __init__(self, size: int) -> None:
        self.ids = array("i", [-1]) * size

    def __setitem__(self, n: int, cid: int) -> None:
        self.ids[n] = cid

    def get(self, n: int) -> int | None:
        cid = self.ids[n] if 0 <= n < len(self.ids) else -1
        return None if cid < 0 else cid

    def __getitem__(self, n: int) -> int:
        cid = self.get(n)
        if cid is None:
            raise KeyError(n)
        return cid

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and self.get(n) is not None


def _conn_of_frames(report: Mapping[str, Any], segs: _Segments) -> _ConnOf:
    """Our connection id for every TCP frame, from the connections' frame spans on its four-tuple: the
    latest-starting connection whose [first_frame, last_frame] holds the frame (incarnations may overlap,
    e.g. a one-segment SYN incarnation inside a handshake), else the latest one started before it."""
    by_tuple: dict[frozenset[str], list[tuple[int, int, int]]] = defaultdict(list)
    for c in report["connections"]:
        by_tuple[frozenset((c["client"], c["server"]))].append((c["first_frame"], c["last_frame"], c["id"]))
    firsts: dict[frozenset[str], list[int]] = {}
    for key, span_list in by_tuple.items():
        span_list.sort()
        firsts[key] = [f for f, _, _ in span_list]
    out = _ConnOf(len(segs.row_of))
    for (a, b), frames in segs.by_tuple.items():   # per four-tuple: its key once, then its frames
        key = frozenset((_ep(*a), _ep(*b)))
        spans = by_tuple.get(key)
        if not spans:
            continue
        starts = firsts[key]
        for n in frames:
            i = bisect.bisect_right(starts, n) - 1
            if i < 0:
                continue
            chosen = spans[i][2]
            for j in range(i, max(i - 16, -1), -1):  # a few steps back suffice: overlaps are short
                if spans[j][1] >= n:
                    chosen = spans[j][2]
                    break
            out[n] = chosen
    return out


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _flag_text(flags: int) -> str:
    from lab.core.model import Flags

    return Flags.text(flags)


def scan_in_background(path: Path) -> Callable[[], TsharkScan]:
    """Start scan(path) in a thread (tshark runs as its own process, on another core) and return a function
    that waits for it: verify's analysis runs meanwhile, so verify takes about tshark's own time."""
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(scan(path))
        except BaseException as exc:  # handed to the caller
            box.append(exc)

    t = threading.Thread(target=work, name="tshark-scan", daemon=True)
    t.start()

    def result() -> TsharkScan:
        t.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]
    return result


def _theirs(path: Path, given: TsharkScan | Callable[[], TsharkScan] | None) -> TsharkScan:
    if given is None:
        return scan(path)
    return given if isinstance(given, TsharkScan) else given()


def verify(path: Path, report: Any, tshark_scan: TsharkScan | Callable[[], TsharkScan] | None = None
           ) -> VerifyResult:
    """Compare the lab's analysis of `path` (a Report, or its to_dict()) with tshark's reading: scan(path),
    unless given, or a function that waits for it (scan_in_background: the lab's side is read meanwhile)."""
    from lab.pcap.readers import CaptureReader

    path = Path(path)
    rep: Mapping[str, Any] = report if isinstance(report, Mapping) else report.to_dict()
    segs = _Segments(CaptureReader(path, lenient=True))   # up to a cut, as tshark reads it
    ts = _theirs(path, tshark_scan)
    ver = version()
    dis: list[Disagreement] = []
    checks: list[Check] = []

    # --- FIN and RST frames: the reader against tshark's dissector --------------------------------
    for name, bit in (("fin", _FIN), ("rst", _RST)):
        theirs = set(ts.with_flag(bit))
        ours = segs.with_flag(bit)
        checks.append(Check(name, len(theirs), len(ours), theirs == ours))
        for n in sorted(theirs - ours):
            if ts.frames.is_icmp(n):
                dis.append(Disagreement(name, (n,), f"{name.upper()} flag set", "no TCP segment",
                                        "the TCP header is quoted inside an ICMP error message, not a segment "
                                        "on the wire; the lab skips ICMP", True))
            else:
                dis.append(Disagreement(name, (n,), f"{name.upper()} flag set", "not seen by the lab's reader",
                                        "the reader did not decode this frame as this TCP segment", False))
        for n in sorted(ours - theirs):
            dis.append(Disagreement(name, (n,), "flag not set / not TCP", f"{name.upper()} flag set",
                                    "the reader decoded a TCP segment tshark does not see here", False))

    # --- streams against connections ---------------------------------------------------------------
    conns = rep["connections"]
    incarnations = _Incarnations(conns)
    checks.append(Check("streams", ts.streams, len(conns), ts.streams == len(conns)))
    ours_of = _conn_of_frames(rep, segs)
    stream_frames = ts.stream_frames()
    our_starts = {c["first_frame"]: c["id"] for c in conns}
    ts_starts = {frames[0]: st for st, frames in stream_frames.items()}
    # the lab starts a connection where tshark goes on with a stream
    for n in sorted(set(our_starts) - set(ts_starts)):
        st = ts.frames.stream(n)
        if st is not None:
            dis.append(_split_reason(ver, st, our_starts[n], n, ts, segs))
    # tshark starts a stream where the lab goes on with a connection
    for n in sorted(set(ts_starts) - set(our_starts)):
        if n in ours_of:
            dis.append(_merge_reason(ver, ours_of[n], ts_starts[n], n, ts.frames.get(n), segs.get(n), segs))
    # frames that land in a different pair: neither in the connection that starts their stream nor in the
    # stream that starts their connection (e.g. after a SYN both tools see, replies tshark moves to the new
    # stream while the lab keeps them in the old connection)
    conn_at = {st: ours_of.get(frames[0]) for st, frames in stream_frames.items()}
    stream_at = {c["id"]: ts.frames.stream(c["first_frame"]) for c in conns}
    odd: dict[tuple[int, int], list[int]] = defaultdict(list)
    for n, st in ts.frames.streamed():
        cid = ours_of.get(n)
        if cid is not None and conn_at.get(st) != cid and stream_at.get(cid) != st:
            odd[(st, cid)].append(n)
    for (st, cid), frames in sorted(odd.items()):
        dis.append(_pairing_reason(ver, st, cid, frames, conn_at.get(st), stream_frames[st][0], segs))
    # frames tshark puts in a stream that belong to no connection of ours
    lost = [n for n, _ in ts.frames.streamed() if n not in ours_of and not ts.frames.is_icmp(n)]
    if lost:
        dis.append(Disagreement("streams", tuple(lost[:20]), "in a TCP stream", "in no connection",
                                f"{len(lost)} TCP frame(s) the analyzer did not assign to a connection", False))

    # --- who closed: the sender of a stream's first FIN against the lab's initiator ------------------
    checks.append(_close_initiators(ver, conns, ts, segs, dis))
    # --- which RST ended it: the stream's first RST against the one the lab found acceptable ----------
    checks.append(_closing_rsts(ver, conns, ts, dis))

    # --- port reuse ----------------------------------------------------------------------------------
    reuse_frames: dict[int, str] = {}
    for f in rep["findings"]:
        if f["kind"] in _REUSE_KINDS:
            for n in f["frames"]:
                s = segs.get(n)
                if s is not None and s.flags & _SYN and not s.flags & _ACK:
                    reuse_frames[n] = f["kind"]
    theirs = set(ts.reused_port_frames)
    checks.append(Check("reused-ports", len(theirs), len(reuse_frames), theirs == set(reuse_frames)))
    new_incarnation = {c["first_frame"]: c for c in conns if c["incarnation"] > 0}
    for n in sorted(theirs - set(reuse_frames)):
        dis.append(_reuse_theirs_only(ver, n, segs.get(n), new_incarnation.get(n), incarnations, ours_of))
    for n in sorted(set(reuse_frames) - theirs):
        tf = ts.frames.get(n)
        old_syn = _old_isn_frame(n, segs)
        if tf is not None and (tf.retransmission or tf.spurious_retransmission) and old_syn is not None:
            dis.append(Disagreement("reused-ports", (n,), f"[TCP {tf.label}]", reuse_frames[n],
                                    f"tshark {ver} calls a SYN carrying the old ISN (see frame {old_syn}) a "
                                    "retransmission; the lab counts a new incarnation because the earlier one had "
                                    "closed", True))
        else:
            dis.append(Disagreement("reused-ports", (n,), tf.label if tf else "not TCP", reuse_frames[n],
                                    "tshark sees no reuse here", False))

    # --- retransmitted FINs ----------------------------------------------------------------------------
    ours_rx: set[int] = set()
    for f in rep["findings"]:
        if f["kind"] == "fin-retransmitted":
            ours_rx.update(_retransmitted_fins(f["frames"], segs))
    theirs = set(ts.fin_retransmissions)
    checks.append(Check("fin-retransmitted", len(theirs), len(ours_rx), theirs == ours_rx))
    for n in sorted(theirs - ours_rx):
        dis.append(_finrx_theirs_only(ver, n, segs))
    for n in sorted(ours_rx - theirs):
        tf = ts.frames.get(n)
        label = tf.label if tf else ""
        if label:
            dis.append(Disagreement("fin-retransmitted", (n,), f"[TCP {label}]", "FIN retransmitted",
                                    f"tshark labels this repeated FIN '{label}' rather than a plain retransmission",
                                    True))
        else:
            dis.append(Disagreement("fin-retransmitted", (n,), "not a retransmission", "FIN retransmitted",
                                    "tshark does not label this FIN", False))

    # --- packet comments: the reader against tshark --------------------------------------------------
    tcomm = {n: list(c) for n, c in ts.frames.comments.items()}
    if tcomm:
        ours_c = {n: list(c) for n, c in segs.comments.items()}
        tcp_tc = {n: c for n, c in tcomm.items() if n in segs}
        agree = tcp_tc == ours_c
        checks.append(Check("comments", len(tcp_tc), len(ours_c), agree))
        if not agree:
            bad = sorted(n for n in set(tcp_tc) | set(ours_c) if tcp_tc.get(n) != ours_c.get(n))
            dis.append(Disagreement("comments", tuple(bad[:20]), "comments differ", "comments differ",
                                    "the reader's packet comments differ from tshark's frame.comment", False))
    if tcomm and len(tcomm) <= PYSHARK_MAX_COMMENTED:
        # pyshark (the design's cross-check library) must read the same comments as tshark -T fields
        py = comments_pyshark(path)
        checks.append(Check("comments-pyshark", len(tcomm), len(py), py == tcomm))
        if py != tcomm:
            bad = sorted(n for n in set(tcomm) | set(py) if tcomm.get(n) != py.get(n))
            dis.append(Disagreement("comments-pyshark", tuple(bad[:20]), "tshark -T fields", "pyshark",
                                    "pyshark and tshark -T fields read different packet comments", False))

    return VerifyResult(str(path), ver, ts.packets, tuple(checks), tuple(dis))


class _Segments:
    """frame -> segment, held as columns (a few dozen bytes per segment instead of a few hundred for a
    Segment in a dict), plus each four-tuple's frames (either direction) in order: the reasons look at a
    segment's neighbours on its own four-tuple instead of scanning the whole capture per disagreement.
    Segments are built again on access (window, timestamps and options are not kept: verify does not read
    them)."""

    def __init__(self, segs: Iterable[Any]) -> None:
        self.row_of = array("i")              # frame -> row (-1: no TCP segment)
        self.frames = array("I")
        self.ts = array("d")
        self.src = array("I")                 # address ids (self.addrs)
        self.dst = array("I")
        self.sport = array("H")
        self.dport = array("H")
        self.seq = array("I")
        self.ack = array("I")
        self.flags = array("H")
        self.plen = array("I")
        self.comments: dict[int, tuple[str, ...]] = {}
        self.addrs: list[str] = []
        self._addr_id: dict[str, int] = {}
        self.by_tuple: dict[tuple[tuple[str, int], tuple[str, int]], array[int]] = {}
        for s in segs:
            self._add(s)

    def _addr(self, ip: str) -> int:
        i = self._addr_id.get(ip)
        if i is None:
            i = self._addr_id[ip] = len(self.addrs)
            self.addrs.append(ip)
        return i

    def _add(self, s: Any) -> None:
        n = s.frame
        if n >= len(self.row_of):
            self.row_of.extend([-1] * (n + 1 - len(self.row_of) + len(self.row_of) // 2))
        self.row_of[n] = len(self.frames)
        self.frames.append(n)
        self.ts.append(s.ts_s)
        self.src.append(self._addr(s.src_ip))
        self.dst.append(self._addr(s.dst_ip))
        self.sport.append(s.sport)
        self.dport.append(s.dport)
        self.seq.append(s.seq)
        self.ack.append(s.ack)
        self.flags.append(s.flags)
        self.plen.append(s.payload_len)
        if s.comments:
            self.comments[n] = s.comments
        key = _tuple_key(s)
        frames = self.by_tuple.get(key)
        if frames is None:
            frames = self.by_tuple[key] = array("I")
        frames.append(n)   # file order: ascending frames

    def _row(self, n: int) -> int:
        return self.row_of[n] if 0 <= n < len(self.row_of) else -1

    def _segment(self, r: int) -> Any:
        from lab.core.model import Segment

        n = self.frames[r]
        return Segment(n, self.ts[r], self.addrs[self.src[r]], self.sport[r], self.addrs[self.dst[r]],
                       self.dport[r], self.seq[r], self.ack[r], self.flags[r], payload_len=self.plen[r],
                       comments=self.comments.get(n, ()))

    def get(self, n: int) -> Any:
        r = self._row(n)
        return None if r < 0 else self._segment(r)

    def __getitem__(self, n: int) -> Any:
        r = self._row(n)
        if r < 0:
            raise KeyError(n)
        return self._segment(r)

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and self._row(n) >= 0

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[int]:
        return iter(self.frames)

    def items(self) -> Iterator[tuple[int, Any]]:
        for r in range(len(self.frames)):
            yield self.frames[r], self._segment(r)

    def with_flag(self, bit: int) -> set[int]:
        """The frames whose segment has `bit` set (without building the segments)."""
        frames, flags = self.frames, self.flags
        return {frames[r] for r in range(len(frames)) if flags[r] & bit}

    def before(self, s: Any) -> list[int]:
        """The frames on s's four-tuple before s, nearest first."""
        frames = self.by_tuple.get(_tuple_key(s))
        if frames is None:
            return []
        return frames[:bisect.bisect_left(frames, s.frame)].tolist()[::-1]

    def after(self, s: Any) -> list[int]:
        """The frames on s's four-tuple after s, in order."""
        frames = self.by_tuple.get(_tuple_key(s))
        if frames is None:
            return []
        return frames[bisect.bisect_right(frames, s.frame):].tolist()


def _tuple_key(s: Any) -> tuple[tuple[str, int], tuple[str, int]]:
    a, b = (s.src_ip, s.sport), (s.dst_ip, s.dport)
    return (a, b) if a <= b else (b, a)


def _close_initiators(ver: str, conns: Iterable[Mapping[str, Any]], ts: TsharkScan, segs: _Segments,
                      dis: list[Disagreement]) -> Check:
    """Who closed first, as each tool reads it: tshark (by arrival order: the stream's first FIN on the wire)
    against the lab's close initiator, for the connections that start where their stream starts and close
    with FINs. Counts: the closes each tool puts on the client."""
    stream_frames = ts.stream_frames()
    theirs_client = ours_client = 0
    agree = True
    for c in conns:
        ours = c["close"]["initiator"]
        if ours is None or c["close"]["kind"] in ("rst", "refused", "incomplete"):
            continue
        st = ts.frames.stream(c["first_frame"])
        if st is None or stream_frames[st][0] != c["first_frame"]:
            continue   # the stream and the connection pair up differently: reported under "streams"
        fin = next((m for m in stream_frames[st] if ts.frames.flags[ts.frames.row_of[m]] & _FIN and m in segs), None)
        if fin is None:
            continue
        s = segs[fin]
        theirs = "client" if _ep(s.src_ip, s.sport) == c["client"] else "server"
        theirs_client += theirs == "client"
        ours_client += ours == "client"
        if theirs == ours:
            continue
        agree = False
        if ours == "both":
            dis.append(Disagreement("close-initiator", (fin,), f"first FIN from the {theirs} (frame {fin})",
                                    f"connection {c['id']}: simultaneous close",
                                    f"the FINs crossed (each was sent before the other arrived: neither "
                                    f"acknowledges the other's), so the lab calls the close simultaneous; tshark "
                                    f"{ver} has no close initiator, and by arrival order at the capture point the "
                                    f"first FIN is the {theirs}'s", True))
        else:
            dis.append(Disagreement("close-initiator", (fin,), f"first FIN from the {theirs} (frame {fin})",
                                    f"connection {c['id']}: the {ours} closed first",
                                    "the lab names the other side as the one that closed first", False))
    return Check("close-initiator", theirs_client, ours_client, agree)   # counts: closes put on the client


def _closing_rsts(ver: str, conns: Iterable[Mapping[str, Any]], ts: TsharkScan, dis: list[Disagreement]) -> Check:
    """Which RST ended a connection, as each tool reads it: tshark has no acceptability rule, so by arrival
    the stream's first RST ends it; the lab credits the first RST its receiver would accept (RFC 9293 3.10.7,
    Linux tcp_validate_incoming / tcp_reset_check). Counts: RST-ended connections whose RST is the first."""
    stream_frames = ts.stream_frames()
    theirs_first = ours_first = 0
    agree = True
    for c in conns:
        if c["close"]["kind"] not in ("rst", "refused"):
            continue
        st = ts.frames.stream(c["first_frame"])
        if st is None or stream_frames[st][0] != c["first_frame"]:
            continue   # paired differently: reported under "streams"
        rsts = [m for m in stream_frames[st] if c["first_frame"] <= m <= c["last_frame"]
                and ts.frames.flags[ts.frames.row_of[m]] & _RST]
        ours = [m for m in c["close"]["frames"] if m in rsts]
        if not rsts or not ours:
            continue
        theirs_first += 1
        ours_first += ours[-1] == rsts[0]
        if ours[-1] == rsts[0]:
            continue
        agree = False
        dis.append(Disagreement("closing-rst", (rsts[0], ours[-1]), f"first RST of the stream: frame {rsts[0]}",
                                f"connection {c['id']} ended by the RST in frame {ours[-1]}",
                                f"the lab found the RST in frame {rsts[0]} not acceptable to its receiver (its "
                                f"sequence number is not what the receiver's own segments show it expected), "
                                f"so a later one ended the connection; tshark {ver} does not judge RST "
                                f"acceptability", True))
    return Check("closing-rst", theirs_first, ours_first, agree)


def _old_isn_frame(n: int, segs: _Segments) -> int | None:
    """An earlier frame that shows the SYN in frame `n` carries an ISN already used on its four-tuple:
    a SYN from the same sender with the same sequence number, or a SYN-ACK from the peer acknowledging it."""
    s = segs.get(n)
    if s is None:
        return None
    fwd = (s.src_ip, s.sport, s.dst_ip, s.dport)
    for m in segs.before(s):
        p = segs[m]
        if not p.flags & _SYN:
            continue
        if not p.flags & _ACK and p.seq == s.seq and (p.src_ip, p.sport, p.dst_ip, p.dport) == fwd:
            return m
        if p.flags & _ACK and p.ack == (s.seq + 1) & 0xFFFFFFFF and (p.dst_ip, p.dport, p.src_ip, p.sport) == fwd:
            return m
    return None


def _close_between(a: int, b: int, frames: Iterable[int], segs: _Segments) -> int | None:
    """The first FIN or RST among `frames` strictly between a and b."""
    for m in sorted(frames):
        if a < m < b and m in segs and segs[m].flags & (_FIN | _RST):
            return m
    return None


def _split_reason(ver: str, stream: int, cid: int, start: int, ts: TsharkScan,
                  segs: _Segments) -> Disagreement:
    """tshark keeps `start` in `stream`; the lab starts connection `cid` there."""
    tf = ts.frames.get(start)
    seg = segs.get(start)
    flags = _flag_text(seg.flags) if seg is not None else "?"
    theirs = f"stream {stream} goes on" + (f" [TCP {tf.label}]" if tf is not None and tf.label else "")
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
    before = [m for m in ts.stream_frames().get(stream, []) if m < start]
    old = _old_isn_frame(start, segs)
    if old is not None:
        closed = _close_between(old, start, before, segs)
        if closed is None:
            return Disagreement("streams", (start,), theirs, ours,
                                f"frame {old} already carries or acknowledges this SYN's ISN and nothing closed the "
                                "connection in between: a retransmitted or reordered handshake of the same "
                                "connection; tshark is right, the lab should not start a new incarnation", False)
        label = f"calls it a {tf.label.lower()}" if tf is not None and tf.label else "keeps it in the old stream"
        return Disagreement("streams", (start,), theirs, ours,
                            f"a SYN carrying the old ISN (see frame {old}) after the connection closed (frame "
                            f"{closed}): tshark {ver} {label}, we count a new incarnation (an old duplicate SYN or a "
                            "reused ISN)", True)
    mine = [m for m in before if m in segs and (segs[m].src_ip, segs[m].sport) == (seg.src_ip, seg.sport)]
    if not mine:
        return Disagreement("streams", (start,), theirs, ours,
                            f"tshark {ver} opens a new stream only on a SYN whose ISN differs from the sender's "
                            f"base sequence, and it had none: stream {stream} holds nothing from this sender before "
                            f"frame {start}", True)
    return Disagreement("streams", (start,), theirs, ours,
                        f"tshark keeps this SYN in stream {stream}; the lab starts a new incarnation", False)


def _merge_reason(ver: str, cid: int, stream: int, start: int, tf: TsharkFrame | None, seg: Any,
                  segs: _Segments) -> Disagreement:
    flags = _flag_text(seg.flags) if seg is not None else "?"
    theirs = f"stream {stream} starts" + (f" [TCP {tf.label}]" if tf is not None and tf.label else "")
    ours = f"still connection {cid}"
    if seg is not None and seg.flags & _SYN and not seg.flags & _ACK:
        reply = next((segs[m] for m in segs.after(seg) if segs[m].src_ip == seg.dst_ip
                      and segs[m].sport == seg.dport), None)
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


def _pairing_reason(ver: str, stream: int, cid: int, frames: list[int], their_cid: int | None, stream_start: int,
                    segs: _Segments) -> Disagreement:
    theirs = f"stream {stream} (starts at frame {stream_start})"
    ours = f"connection {cid}" + (f", not {their_cid}" if their_cid is not None else "")
    syn = segs.get(stream_start)
    if syn is not None and syn.flags & _SYN and not syn.flags & _ACK:
        new_ack = (syn.seq + 1) & 0xFFFFFFFF
        replies = [segs[n] for n in frames if n in segs]
        from_peer = all((s.src_ip, s.sport) == (syn.dst_ip, syn.dport) for s in replies)
        if replies and from_peer and all(s.flags & _ACK and s.ack != new_ack for s in replies):
            return Disagreement("streams", tuple(frames[:20]), theirs, ours,
                                f"these segments come from the peer of the new SYN (frame {stream_start}) but "
                                "acknowledge the old connection, not the new ISN+1: the peer answered from the old "
                                "connection (a challenge ACK, an ACK from TIME_WAIT or its own retransmission), so "
                                f"the lab keeps them in "
                                f"connection {cid}; tshark {ver} moves every later segment to the new stream", True)
    return Disagreement("streams", tuple(frames[:20]), theirs, ours,
                        f"{len(frames)} frame(s) that tshark and the lab put in different conversations", False)


def _reuse_theirs_only(ver: str, n: int, seg: Any, incarnation: Mapping[str, Any] | None,
                       incarnations: _Incarnations, ours_of: _ConnOf) -> Disagreement:
    if seg is None:
        return Disagreement("reused-ports", (n,), "Port numbers reused", "not a TCP segment",
                            "the reader did not decode this frame", False)
    flags = _flag_text(seg.flags)
    if seg.flags & _SYN and seg.flags & _ACK:
        return Disagreement("reused-ports", (n,), f"Port numbers reused ({flags})", "no reuse finding",
                            f"tshark's stream is per four-tuple on SYN-ACK too: {ver} flags a SYN-ACK whose ISN "
                            "differs from the conversation's, and a SYN-ACK after an RST; the lab judges reuse "
                            "on the client's SYN only", True)
    if seg.flags & _SYN and incarnation is not None:
        prev = incarnations.previous(incarnation)
        kind = prev["close"]["kind"] if prev else "?"
        if prev and prev["time_wait"]:
            sides = ", ".join(w["side"] for w in prev["time_wait"])
            return Disagreement("reused-ports", (n,), "Port numbers reused", f"connection {incarnation['id']} "
                                f"(incarnation {incarnation['incarnation']}), no reuse finding",
                                f"the previous incarnation (connection {prev['id']}) left TIME_WAIT on {sides}; the "
                                "lab should report reuse-in-time-wait or reuse-after-time-wait here", False)
        tw = "no TIME_WAIT window"
        return Disagreement("reused-ports", (n,), "Port numbers reused", f"connection {incarnation['id']} "
                            f"(incarnation {incarnation['incarnation']}), no reuse finding",
                            f"tshark {ver}'s reuse rule has no time or state condition and flags any SYN with a new "
                            f"ISN on a known four-tuple; the previous incarnation closed '{kind}' and left {tw} "
                            "the SYN could meet, so the lab records a new incarnation but no TIME_WAIT reuse", True)
    if seg.flags & _SYN:
        cid = ours_of.get(n)
        return Disagreement("reused-ports", (n,), "Port numbers reused", f"same connection {cid}",
                            f"tshark {ver} flags a SYN with a new ISN; the lab does not start a new incarnation "
                            "here (the earlier handshake was not finished or closed)", False)
    return Disagreement("reused-ports", (n,), f"Port numbers reused ({flags})", "no reuse finding",
                        "tshark flags a segment without SYN", False)


class _Incarnations:
    """One index from four-tuple to its connections in first-frame order: the previous incarnation of a
    connection is a bisect, not a scan of every connection (which made verify quadratic in reuse)."""

    def __init__(self, conns: Iterable[Mapping[str, Any]]) -> None:
        self.by_tuple: dict[frozenset[str], list[tuple[int, int, Mapping[str, Any]]]] = defaultdict(list)
        for c in conns:
            self.by_tuple[frozenset((c["client"], c["server"]))].append((c["first_frame"], c["id"], c))
        for lst in self.by_tuple.values():
            lst.sort(key=lambda t: (t[0], t[1]))
        self.firsts = {k: [t[0] for t in lst] for k, lst in self.by_tuple.items()}

    def previous(self, conn: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The latest connection on the same four-tuple that started before `conn`."""
        key = frozenset((conn["client"], conn["server"]))
        firsts = self.firsts.get(key)
        if not firsts:
            return None
        i = bisect.bisect_left(firsts, conn["first_frame"]) - 1
        return self.by_tuple[key][i][2] if i >= 0 else None


def _retransmitted_fins(frames: Iterable[int], segs: _Segments) -> set[int]:
    """The repeats among a finding's frames: FINs from a sender that already sent a FIN earlier
    with the same sequence number (the first one is the original, not a retransmission)."""
    out: set[int] = set()
    seen: set[tuple[str, int, int]] = set()
    for n in sorted(frames):
        s = segs.get(n)
        if s is None or not s.flags & _FIN:
            continue
        key = (s.src_ip, s.sport, (s.seq + s.payload_len) & 0xFFFFFFFF)
        if key in seen:
            out.add(n)
        seen.add(key)
    return out


def _finrx_theirs_only(ver: str, n: int, segs: _Segments) -> Disagreement:
    s = segs.get(n)
    if s is None:
        return Disagreement("fin-retransmitted", (n,), "FIN retransmission", "not a TCP segment",
                            "the reader did not decode this frame", False)
    earlier = [segs[m] for m in segs.before(s)
               if segs[m].flags & _FIN and (segs[m].src_ip, segs[m].sport) == (s.src_ip, s.sport)]
    if not earlier:
        return Disagreement("fin-retransmitted", (n,), "FIN retransmission", "first FIN of its sender",
                            f"tshark {ver}'s retransmission rule looks at sequence numbers only (e.g. a segment "
                            "below the highest sequence seen); this is the first FIN its sender put on the wire, "
                            "so it is not a repeated FIN", True)
    return Disagreement("fin-retransmitted", (n,), "FIN retransmission", "no fin-retransmitted finding",
                        f"the sender sent a FIN before (frame {earlier[0].frame}); the analyzer did not report "
                        "this repeat", False)
