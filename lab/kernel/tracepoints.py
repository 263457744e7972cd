"""The kernel's own state transitions: the `sock:inet_sock_set_state` tracepoint, read from a PRIVATE tracefs
instance (never the global one), so a judge of the analyzer comes from the kernel, not from twlab.

    with StateTrace("twl" + run_id, ports=[5000]) as tr:
        ...traffic...
        tr.wait_for(lambda e: e.newstate == "TIME_WAIT")      # gate on the event, not on a sleep
    tr.events      # [StateEvent(ts, sport, dport, saddr, daddr, family, oldstate, newstate), ...]

The event carries no network namespace, so it is filtered by port (sport or dport in `ports`): use ports that
only the lab's scenario uses. If tracefs is not mounted anywhere, it is mounted inside a private mount namespace
held by a small helper process (docs/kernel-facts.md §16) and reached through /proc/<pid>/root: the host's mount
table never changes, and the mount goes with the helper, which exits when this process closes its stdin or dies.
The instance directory is removed on every exit path (rmdir of an instance disables its events and frees its
buffer); with a ledger, it is recorded first, so `twlab doctor --cleanup` removes it after a kill -9.

Linux emits no TIME_WAIT transition here: the full socket goes FIN_WAIT_2/CLOSING -> CLOSED when the
timewait mini-socket replaces it (tcp_time_wait -> tcp_done); ask sock_diag for the TIME_WAIT socket.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.errors import EnvironmentProblem
from lab.kernel.sockdiag import STATE_NAMES
from lab.run.resources import TRACEFS_INSTANCE, Ledger, private_tracefs_command

EVENT = "sock/inet_sock_set_state"
KNOWN_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
IPPROTO_TCP = 6
# "<task>-<pid> [cpu] flags  <ts>: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=.. ..."
_LINE = re.compile(r"\s(?P<ts>\d+\.\d+): inet_sock_set_state: (?P<fields>.*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")
# the print format names states TCP_<NAME>; sockdiag's RFC 9293 names are the lab's vocabulary
_KERNEL_TO_RFC: dict[str, str] = {"TCP_" + n.replace("SYN_RECEIVED", "SYN_RECV").replace("FIN_WAIT_", "FIN_WAIT")
                  .replace("CLOSED", "CLOSE"): n for n in STATE_NAMES.values()}


@dataclass(frozen=True)
class StateEvent:
    ts: float              # the instance's trace clock ("mono": comparable with time.monotonic())
    sport: int
    dport: int
    saddr: str
    daddr: str
    family: str            # "inet" | "inet6"
    oldstate: str          # RFC 9293 names as in lab.kernel.sockdiag: "FIN_WAIT_1", "CLOSED", ...
    newstate: str
    # no skaddr: the event's print format has none, and the `fields` output option that shows it cannot print
    # the IPv6 addresses (<INVALID-SIZE> on 6.18); sockets are told apart by their four-tuple and order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rfc(kernel_name: str) -> str:
    return _KERNEL_TO_RFC.get(kernel_name, kernel_name)


def parse_line(line: str) -> StateEvent | None:
    """One trace_pipe line -> StateEvent (None for anything else, e.g. a lost-events marker)."""
    m = _LINE.search(line)
    if not m:
        return None
    f = dict(_FIELD.findall(m.group("fields")))
    if f.get("protocol") != "IPPROTO_TCP":
        return None
    v6 = f.get("family") == "AF_INET6"
    return StateEvent(ts=float(m.group("ts")), sport=int(f["sport"]), dport=int(f["dport"]),
                      saddr=f["saddrv6"] if v6 else f["saddr"], daddr=f["daddrv6"] if v6 else f["daddr"],
                      family="inet6" if v6 else "inet", oldstate=_rfc(f["oldstate"]), newstate=_rfc(f["newstate"]))


def port_filter(ports: Sequence[int]) -> str:
    """The event filter: TCP and one of the ports on either side (evaluated in the kernel)."""
    ors = " || ".join(f"sport == {p} || dport == {p}" for p in ports)
    return f"protocol == {IPPROTO_TCP}" + (f" && ({ors})" if ors else "")


def _find_tracefs() -> Path | None:
    for p in KNOWN_MOUNTS:
        if (p / "instances").is_dir():
            return p
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs" and Path(parts[1], "instances").is_dir():
                return Path(parts[1])
    return None


class StateTrace:
    """A private tracefs instance with only inet_sock_set_state enabled, read by a thread into `events`."""

    def __init__(self, name: str, ports: Sequence[int] = (), ledger: Ledger | None = None) -> None:
        if not re.fullmatch(r"twl[\w-]+", name):
            raise ValueError(f"instance name {name!r} must start with 'twl' (the lab's prefix)")
        self.name = name
        self.ports = tuple(ports)
        self.ledger = ledger
        self.events: list[StateEvent] = []
        self._cond = threading.Condition()
        self._helper: subprocess.Popen[bytes] | None = None
        self._mountpoint: Path | None = None
        self._instance: Path | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        self._fd = -1

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> StateTrace:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _start(self) -> None:
        root = _find_tracefs() or self._mount_private()
        inst = root / "instances" / self.name
        if self.ledger is not None:
            self.ledger.add(TRACEFS_INSTANCE, self.name)
        try:
            inst.mkdir()
        except FileExistsError:
            raise EnvironmentProblem(f"tracefs instance {self.name} exists already",
                                     "another run with the same id is tracing; use a fresh run id") from None
        except PermissionError:
            raise EnvironmentProblem("creating a tracefs instance needs root", "run as root") from None
        self._instance = inst
        (inst / "trace_clock").write_text("mono")
        (inst / "events" / EVENT / "filter").write_text(port_filter(self.ports))
        (inst / "events" / EVENT / "enable").write_text("1")
        self._fd = os.open(inst / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read_loop, name=f"trace-{self.name}", daemon=True)
        self._thread.start()

    def _mount_private(self) -> Path:
        where = Path(tempfile.mkdtemp(prefix=f"{self.name}-tracefs-"))
        self._mountpoint = where
        self._helper = subprocess.Popen(private_tracefs_command(str(where), 'echo ok && read _'),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self.ledger is not None:
            self.ledger.add("pid", str(self._helper.pid))
        assert self._helper.stdout is not None
        if self._helper.stdout.readline().strip() != b"ok":
            err = self._helper.stderr.read().decode(errors="replace").strip() if self._helper.stderr else ""
            raise EnvironmentProblem(f"cannot mount tracefs in a private mount namespace: {err or 'no answer'}",
                                     "run as root on a kernel with CONFIG_TRACING (tracefs) and util-linux unshare")
        return Path(f"/proc/{self._helper.pid}/root{where}")

    def close(self) -> None:
        """Stop the reader, then remove the instance (and a private mount), whatever state we got to."""
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
        if self._instance is not None:
            with contextlib.suppress(OSError):
                (self._instance / "events" / EVENT / "enable").write_text("0")
            for _ in range(50):   # rmdir fails with EBUSY while a reader still holds trace_pipe
                try:
                    self._instance.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            self._instance = None
        if self.ledger is not None:
            self.ledger.discard(TRACEFS_INSTANCE, self.name)
        if self._helper is not None:
            with contextlib.suppress(OSError):
                if self._helper.stdin is not None:
                    self._helper.stdin.close()   # its `read` returns: the helper exits, its mount goes with it
            try:
                self._helper.wait(5)
            except subprocess.TimeoutExpired:
                self._helper.kill()
                self._helper.wait()
            for stream in (self._helper.stdout, self._helper.stderr):
                if stream is not None:
                    stream.close()
            if self.ledger is not None:
                self.ledger.discard("pid", str(self._helper.pid))
            self._helper = None
        if self._mountpoint is not None:
            with contextlib.suppress(OSError):
                self._mountpoint.rmdir()
            self._mountpoint = None

    # -- reading -------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        pending = b""
        while True:
            try:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [], 0.2)
            except (OSError, ValueError):
                return
            chunk = self._read_available()
            if chunk:
                pending = self._take_lines(pending + chunk)
            if self._stop_r in ready and not chunk:
                return

    def _read_available(self) -> bytes:
        out = b""
        while True:
            try:
                b = os.read(self._fd, 65536)
            except BlockingIOError:
                return out
            except OSError:
                return out
            if not b:
                return out
            out += b

    def _take_lines(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        parsed = [e for e in (parse_line(ln.decode("ascii", "replace")) for ln in lines) if e is not None]
        if parsed:
            with self._cond:
                self.events.extend(parsed)
                self._cond.notify_all()
        return rest

    def wait_for(self, pred: Callable[[StateEvent], bool], timeout_s: float = 5.0, nth: int = 1
                 ) -> StateEvent | None:
        """The nth event matching pred (already seen or arriving within timeout_s), else None. nth > 1 for a
        transition the same ports go through again (a second incarnation)."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while True:
                hits = [e for e in self.events if pred(e)]
                if len(hits) >= nth:
                    return hits[nth - 1]
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def snapshot(self) -> list[StateEvent]:
        with self._cond:
            return list(self.events)

    def path_of(self, local_port: int, remote_port: int | None = None) -> list[str]:
        """The states one local socket went through, e.g. ['ESTABLISHED', 'FIN_WAIT_1', 'FIN_WAIT_2', ...]."""
        out: list[str] = []
        for e in self.snapshot():
            if e.sport != local_port or (remote_port is not None and e.dport != remote_port):
                continue
            if not out:
                out.append(e.oldstate)
            out.append(e.newstate)
        return out
