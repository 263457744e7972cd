"""Writing captures: ONE pcapng writer, the classic nanosecond pcap writer, ONE atomic-write helper that
every capture the lab writes goes through (annotate, live capture, recordings, `analyze -i ... -w FILE`), and
ONE temporary-file helper (temp_file) under it and under every spool and copy (analyze's spools, the copies of
stdin and of a filtered capture).

The pcapng writer is a few lines of struct packing (SHB, one IDB per interface and link type with
if_tsresol=9, EPB with opt_comment options) because that is all Wireshark needs and it streams: memory
stays constant however large the capture is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from lab.errors import UsageError

__all__ = ["PCAP_NS_MAGIC", "SPOOL_PREFIX", "TMP_SUFFIX", "PcapngWriter", "atomic_write", "fit_comment", "spool",
           "spool_prefix", "temp_file", "write_pcap_ns", "write_pcapng"]

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT = 0
_OPT_COMMENT = 1
_IF_NAME = 2
_IF_TSRESOL = 9
_SHB_USERAPPL = 4
MAX_OPT = 0xFFFF - 3  # option length is 16 bits; keep the padded length representable
PCAP_NS_MAGIC = 0xA1B23C4D
TMP_SUFFIX = ".twl-tmp"     # atomic_write's temp beside its output: ".NAME.<pid>.<random>.twl-tmp"
EPB_HEAD = struct.Struct("<IIIIIII")   # block type, total length, interface, ts high, ts low, caplen, len
U32 = struct.Struct("<I")
PADS = (b"", b"\0", b"\0\0", b"\0\0\0")   # by -len % 4: the zeros that pad data to 4 bytes
_BUFFER = 1 << 20


SPOOL_PREFIX = "twl-spool-"   # + pid + "-" + role + "-": doctor --cleanup removes those of dead pids (run.resources)


def spool_prefix(role: str) -> str:
    """twl-spool-<pid>-<role>-: how every temp file of this process in the system temp dir starts its name, so that
    after a kill -9 `twlab doctor --cleanup` removes it because its pid is dead (lab.run.resources.stale_temp_files)
    and an analyze worker's SIGTERM handler finds it (lab.analysis.shard)."""
    return f"{SPOOL_PREFIX}{os.getpid()}-{role}-"


def _temp_name(prefix: str, suffix: str, folder: str | Path | None) -> str:
    return os.path.join(folder if folder is not None else tempfile.gettempdir(),
                        f"{prefix}{secrets.token_hex(8)}{suffix}")


def _open_new(name: str) -> int:
    """Create `name` (it must not exist yet: O_EXCL never opens a file someone else made), mode 0600."""
    return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)


@contextlib.contextmanager
def temp_file(prefix: str, suffix: str, folder: str | Path | None = None, *, keep: bool = False,
              buffering: int = -1) -> Iterator[tuple[str, BinaryIO]]:
    """A new file PREFIX<random>SUFFIX in `folder` (default: the system temp dir), mode 0600, open for reading
    and writing: (its name, the file). It is removed when the block ends, on every path (an error, Ctrl-C, a
    SIGTERM turned into an exception); with keep=True it outlives a block that ends cleanly (its owner removes
    it later) and is still removed when the block fails.

    The name is chosen before the file exists, so a signal at any moment leaves nothing this cleanup does not
    know (tempfile.mkstemp hands the name out only after it created the file: a signal in between left a file
    no one knew; CI saw one). Every temporary file the lab writes comes from here."""
    name = _temp_name(prefix, suffix, folder)
    remove = True
    try:
        try:
            fd = _open_new(name)
        except FileExistsError:
            remove = False   # someone else's file (O_EXCL): neither opened nor removed
            raise
        with os.fdopen(fd, "w+b", buffering=buffering) as f:
            yield name, f
        remove = not keep
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@contextlib.contextmanager
def spool(role: str, suffix: str) -> Iterator[BinaryIO]:
    """A temporary file twl-spool-<pid>-<role>-* in the system temp dir (see spool_prefix), removed after."""
    with temp_file(spool_prefix(role), suffix) as (_, f):
        yield f


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temporary `.NAME.*.twl-tmp` next to `path` for writing; on a clean exit flush, fsync and
    rename it over `path`; on any error (Ctrl-C included) remove it and leave an existing `path` untouched.

    One clear UsageError when `path` is a folder or its folder does not exist."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory", "give a file name for the capture to write, e.g. out.pcapng")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"folder {parent} does not exist", "create it first or choose another output path")
    # ".NAME.<pid>.*.twl-tmp": with the writer's pid, so that doctor --cleanup can tell a dead writer's temp.
    # keep: once renamed over `path` it is the output; until then any failure removes it
    with temp_file(f".{path.name}.{os.getpid()}.", TMP_SUFFIX, parent, keep=True, buffering=_BUFFER) as (tmp, out):
        yield out
        out.flush()
        os.fsync(out.fileno())
        os.chmod(tmp, mode)  # temp_file makes 0600; a capture is meant to be opened by the user's tools
        os.replace(tmp, path)


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
    return fit_comment(text.encode("utf-8", errors="replace"))


def fit_comment(raw: bytes) -> bytes:
    """A UTF-8 comment cut to what an option can hold."""
    if len(raw) <= MAX_OPT:
        return raw
    # cut at a character boundary so Wireshark still sees valid UTF-8
    return raw[:MAX_OPT].decode("utf-8", errors="ignore").encode("utf-8")


class PcapngWriter:
    """Streaming little-endian pcapng writer: section header, interfaces on first use, EPBs."""

    def __init__(self, out: BinaryIO, app: str = "twlab") -> None:
        self._out = out
        self._ifaces: dict[tuple[int, int], int] = {}
        shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _options([(_SHB_USERAPPL, app.encode())])
        out.write(_block(_SHB, shb))

    def interface_index(self, interface: int, linktype: int) -> int:
        """The IDB index of (interface, linktype), written on first use: for callers that pack EPBs themselves."""
        idx = self._ifaces.get((interface, linktype))
        return self._interface(interface, linktype) if idx is None else idx

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
        opts = _options((_OPT_COMMENT, _comment_bytes(c)) for c in comments) if comments else b""
        self.write_options(ts_ns, data, orig_len, opts, interface=interface, linktype=linktype)

    def write_options(self, ts_ns: int, data: bytes, orig_len: int, opts: bytes, *,
                      interface: int = 0, linktype: int = 1) -> None:
        """write() with the options already packed (opt_comments of lab.pcap.fastcopy.comment_option, then the
        end of options)."""
        idx = self._ifaces.get((interface, linktype))
        if idx is None:
            idx = self._interface(interface, linktype)
        n = len(data)
        pad = -n % 4
        total = 32 + n + pad + len(opts)    # 28 bytes of block and EPB header, the data, options, 4 of trailer
        # one write per packet, packed in one go: a million packets are a second of this loop
        self._out.write(b"".join((EPB_HEAD.pack(EPB, total, idx, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF,
                                                 n, orig_len if orig_len > n else n),
                                  data, PADS[pad], opts, U32.pack(total))))


def write_pcapng(path: Path, linktype: int, snaplen: int, packets: Iterable[tuple[int, bytes, int]],
                 comments: Mapping[int, Sequence[str]] | None = None,
                 app: str = "twlab live capture (raw AF_PACKET)") -> Path:
    """(ts_ns, data, orig_len) packets as pcapng (ns timestamps) with per-packet comments keyed by 1-based
    frame number, written atomically. `tshark -r FILE -Y frame.comment` lists the commented packets.
    `snaplen` is accepted for symmetry with write_pcap_ns; the IDB says 0 (no limit)."""
    comments = comments or {}
    with atomic_write(path) as fh:
        w = PcapngWriter(fh, app=app)
        for frame, (ts_ns, data, orig_len) in enumerate(packets, start=1):
            w.write(ts_ns, data, orig_len, comments.get(frame, ()), linktype=linktype)
    return Path(path)


def write_pcap_ns(path: Path, linktype: int, snaplen: int, packets: Iterable[tuple[int, bytes, int]]) -> Path:
    """(ts_ns, data, orig_len) packets as classic pcap with nanosecond timestamps, written atomically."""
    pack = struct.Struct("<IIII").pack
    with atomic_write(path) as fh:
        fh.write(struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, snaplen, linktype))
        for ts_ns, data, orig_len in packets:
            sec, nsec = divmod(ts_ns, 1_000_000_000)
            fh.write(pack(sec, nsec, len(data), orig_len))
            fh.write(data)
    return Path(path)
