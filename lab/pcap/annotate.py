"""Per-packet comments into a pcapng: copy every packet of a capture, keep its bytes, timestamp and
existing comments, and add the lab's notes for its frame number.

The writer is a few lines of struct packing (SHB, one IDB per interface and link type with
if_tsresol=9, EPB with opt_comment options) because that is all Wireshark needs and it streams:
memory stays constant however large the capture is.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from lab.errors import UsageError

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
        idx = self._interface(interface, linktype)
        body = struct.pack("<IIIII", idx, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF, len(data),
                           max(orig_len, len(data)))
        body += _pad4(data) + _options((_OPT_COMMENT, _comment_bytes(c)) for c in comments)
        self._out.write(_block(_EPB, body))


def write_annotated(src: Path, dst: Path, notes: Mapping[int, Sequence[str]]) -> int:
    """Copy `src` (any format lab.pcap.readers reads) to `dst` as pcapng, adding `notes[frame]` as comments.

    Existing comments are kept; a note equal to one the packet already carries is not repeated.
    Returns the number of packets written. Atomic: `dst` appears complete or not at all, and an existing
    `dst` is left untouched on any error; `dst == src` is allowed.
    """
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
    count = 0
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            w = PcapngWriter(out)
            for fr in iter_frames(src):
                # a note the packet already carries is not added twice (annotating a file again is idempotent)
                extra = [t for t in notes.get(fr.frame, ()) if t not in fr.comments]
                w.write(fr.ts_ns, fr.data, fr.orig_len, (*fr.comments, *extra),
                        interface=fr.interface, linktype=fr.linktype)
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a capture is meant to be opened by the user's tools
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return count


def capture_t0(src: Path) -> float:
    """The timestamp of the capture's first frame (s): the zero of Wireshark's Time column; 0.0 when empty."""
    from lab.pcap.readers import iter_frames

    with contextlib.closing(iter_frames(Path(src))) as frames:   # type: ignore[type-var]  # a generator
        first = next(frames, None)
    return 0.0 if first is None else first.ts_ns / 1e9
