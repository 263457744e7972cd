"""Live capture to a file: a raw AF_PACKET socket with a kernel BPF filter and a big buffer.

Why not scapy's sniffer: on `lo` it sees every packet twice (outgoing and incoming) and, because it
dissects each packet while reading, loses most of them above ~1 k connections/s (docs/kernel-facts.md §1).
Here scapy only compiles the filter (libpcap syntax -> kernel BPF); a reader thread copies raw bytes and
the kernel's nanosecond timestamp into a list, and nothing is dissected until the file is written.

On loopback the filter is prefixed with libpcap's `inbound`, which compiles to a check of the
packet type in the kernel, so each loopback packet is delivered once.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.errors import EnvironmentProblem, UsageError
from lab.pcap.writer import PCAP_NS_MAGIC, write_pcap_ns, write_pcapng
from lab.run.context import scaled

__all__ = ["PCAP_NS_MAGIC", "CaptureStats", "LiveCapture", "write_pcap_ns", "write_pcapng"]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35         # SO_TIMESTAMPNS_OLD: cmsg carries struct timespec (2 x long)
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4

# ARPHRD_* (from getsockname of the bound socket) -> pcap LINKTYPE_*, and the DLT libpcap compiles for
_LINKTYPES = {1: (1, 1), 772: (1, 1), 65534: (101, 12)}   # ether, loopback (ether header), none (tun: raw IP)



@dataclass(frozen=True)
class CaptureStats:
    packets: int              # packets we copied out of the socket
    kernel_seen: int          # packets the kernel passed through our filter (PACKET_STATISTICS tp_packets)
    kernel_drops: int         # packets the kernel dropped because our buffer was full (tp_drops)
    bytes: int
    rcvbuf_bytes: int         # the receive buffer the kernel actually granted
    path: str | None = None   # file written at stop(), if any
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _bpf_bytes(expr: str, dlt: int, snaplen: int) -> bytes:
    """Compile a libpcap filter with scapy (no live handle needed) into a struct sock_fprog payload."""
    from scapy.arch.common import compile_filter
    from scapy.error import Scapy_Exception

    try:
        prog = compile_filter(expr, linktype=dlt)
    except (Scapy_Exception, ImportError) as exc:
        raise UsageError(f"capture filter {expr!r} does not compile: {exc}",
                         "use libpcap filter syntax, e.g. 'tcp port 5000'") from exc
    out = bytearray()
    for i in range(prog.bf_len):
        ins = prog.bf_insns[i]
        k = ins.k & 0xFFFFFFFF
        if ins.code == 0x06 and k:  # BPF_RET|BPF_K accepting the packet: our snaplen
            k = snaplen
        out += struct.pack("HBBI", ins.code, ins.jt, ins.jf, k)
    return bytes(out)


class LiveCapture:
    """Capture packets on one interface (optionally inside a lab network namespace).

        with LiveCapture("lo", "tcp port 5000", path=Path("raw.pcap")) as cap:
            ...traffic...
        cap.stats   # CaptureStats: packets, kernel_drops, ...

    Raises EnvironmentProblem without CAP_NET_RAW (Recording turns that into a skip).
    """

    def __init__(self, iface: str = "lo", bpf: str = "tcp port 5000", netns: str | None = None,
                 buffer_bytes: int = 64 << 20, snaplen: int = 65535, path: Path | None = None,
                 keep: bool = True) -> None:
        self.iface = iface
        self.bpf = bpf
        self.netns = netns
        self.buffer_bytes = buffer_bytes
        self.snaplen = snaplen
        self.path = Path(path) if path else None
        self.packets: list[tuple[int, bytes, int]] = []   # (ts_ns, data, orig_len)
        self.keep = keep            # False: take() hands packets over and forgets them (a long live analysis)
        self._taken = 0             # packets take() returned (with keep, an index into self.packets)
        self._taken_bytes = 0       # bytes of the packets take() forgot (keep=False)
        self.linktype = 1
        self.rcvbuf_bytes = 0
        self.stats: CaptureStats | None = None
        self._seen = 0
        self._drops = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._stop_deadline = 0.0
        self._error: BaseException | None = None
        self._wake_r, self._wake_w = -1, -1
        self._t0 = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LiveCapture:
        """Open the socket, attach the filter and start reading; returns once packets are being captured."""
        if self._thread is not None:
            raise RuntimeError("capture already started")
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.iface}", daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()
        self._ready.wait(scaled(10))   # the reader thread opens the socket and attaches the filter
        if self._error is not None:
            self._close_pipe()
            err = self._error
            if isinstance(err, PermissionError):
                raise EnvironmentProblem(f"packet capture on {self.iface} needs CAP_NET_RAW ({err.strerror})",
                                         "run as root (sudo), or the run goes on without a capture") from err
            if isinstance(err, (EnvironmentProblem, UsageError)):
                raise err
            raise EnvironmentProblem(f"cannot capture on {self.iface}"
                                     f"{' in ' + self.netns if self.netns else ''}: {err}",
                                     "check the interface name (twlab doctor)") from err
        return self

    def stop(self) -> CaptureStats:
        """Drain what the kernel has queued, stop reading, write the file (if a path was given)."""
        if self.stats is not None:
            return self.stats
        if self._thread is None:
            raise RuntimeError("capture not started")
        self._stop_deadline = time.monotonic() + 5.0
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(30)
        self._close_pipe()
        written = None
        if self.path is not None:
            written = str(write_pcap_ns(self.path, self.linktype, self.snaplen, self.packets))
        kept = len(self.packets)
        self.stats = CaptureStats(packets=kept if self.keep else self._taken + kept, kernel_seen=self._seen,
                                  kernel_drops=self._drops,
                                  bytes=sum(len(p[1]) for p in self.packets) + self._taken_bytes,
                                  rcvbuf_bytes=self.rcvbuf_bytes,
                                  path=written, duration_s=round(time.monotonic() - self._t0, 6))
        return self.stats

    def take(self) -> list[tuple[int, bytes, int]]:
        """The packets captured since the last take(), in capture order, while the capture runs (and after
        stop(), the rest). With keep=False they are handed over and dropped here, so memory stays bounded."""
        n = len(self.packets)   # the reader thread only appends: the first n stay where they are
        if self.keep:
            new = self.packets[self._taken:n]
            self._taken = n
            return new
        new = self.packets[:n]
        del self.packets[:n]
        self._taken += n
        self._taken_bytes += sum(len(p[1]) for p in new)
        return new

    def write(self, path: Path) -> Path:
        """Write what was captured so far (after stop()) as a nanosecond pcap, atomically."""
        return write_pcap_ns(path, self.linktype, self.snaplen, self.packets)

    def __enter__(self) -> LiveCapture:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._thread is not None and self.stats is None:
            self.stop()

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- reader thread -----------------------------------------------------------------------

    def _open(self) -> socket.socket:
        if self.netns:
            # setns affects only this thread; the socket stays in the namespace it was made in
            from pyroute2 import netns as pnetns

            if not Path("/run/netns", self.netns).exists():
                raise EnvironmentProblem(f"network namespace {self.netns!r} does not exist",
                                         "capture inside a namespace the run created")
            pnetns.setns(self.netns, flags=0)
        # protocol 0: receives nothing until bind(), so no unfiltered packet slips in before the filter
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.buffer_bytes)
            except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer_bytes)
            self.rcvbuf_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            hatype = self._hatype()
            self.linktype, dlt = _LINKTYPES.get(hatype, (1, 1))
            expr = f"inbound and ({self.bpf})" if self.iface == "lo" and self.bpf else \
                ("inbound" if self.iface == "lo" else self.bpf)
            if expr:
                code = _bpf_bytes(expr, dlt, self.snaplen)
                import ctypes

                buf = ctypes.create_string_buffer(code)
                fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            sock.bind((self.iface, ETH_P_ALL))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _hatype(self) -> int:
        try:
            socket.if_nametoindex(self.iface)
        except OSError as exc:
            raise EnvironmentProblem(f"no interface {self.iface!r}"
                                     f"{' in ' + self.netns if self.netns else ''}",
                                     "name an interface that exists (ip link)") from exc
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            probe.bind((self.iface, 0))
            return int(probe.getsockname()[3])
        finally:
            probe.close()

    def _read_stats(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            seen, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self._seen += seen
            self._drops += drops

    def _run(self) -> None:
        try:
            self._sock = self._open()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        sock = self._sock
        bufsize = max(self.snaplen, 1 << 16) + 64
        buf = bytearray(bufsize)
        view = memoryview(buf)
        append = self.packets.append
        recv = sock.recvmsg_into
        bufs = [view]
        anc_size = socket.CMSG_SPACE(16)
        unpack_ts = struct.Struct("qq").unpack
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                if self._stopping and time.monotonic() > self._stop_deadline:
                    break   # traffic that never pauses: stop anyway
                try:
                    n, anc, _flags, _addr = recv(bufs, anc_size)
                except BlockingIOError:
                    if self._stopping:   # drained after stop was asked: done
                        break
                    poller.poll(1000)
                    continue
                ts_ns = 0
                for _level, _type, data in anc:
                    if len(data) >= 16:
                        sec, nsec = unpack_ts(data[:16])
                        ts_ns = sec * 1_000_000_000 + nsec
                if not ts_ns:
                    ts_ns = time.time_ns()
                append((ts_ns, bytes(view[:n]), n))
        except OSError as exc:  # the socket went away under us: keep what we have
            self._error = exc
        finally:
            self._read_stats()
            sock.close()
