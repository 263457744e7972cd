"""Socket-option measurements shared by bind-matrix, reuseaddr-uses, reuseport, multicast-reuse and
ephemeral-port-allocation: logged socket calls, free ports, the bind-matrix case runner, a small
lab namespace for multicast, and /proc readers. Runs on any OS with Python where possible
(Linux-only constants are looked up with getattr)."""

from __future__ import annotations

import contextlib
import errno as errno_mod
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.core.bindrules import ADDRS, OK, BindCase, Verdict
from lab.run.context import scaled

if TYPE_CHECKING:
    from lab.run.context import EventLog, RunSpace

SO_REUSEPORT: int | None = getattr(socket, "SO_REUSEPORT", None)
IPV6_V6ONLY: int | None = getattr(socket, "IPV6_V6ONLY", None)
IS_LINUX = sys.platform.startswith("linux")
LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}: close() sends RST, no TIME_WAIT


def errno_name(exc: OSError) -> str:
    return errno_mod.errorcode.get(exc.errno or 0, str(exc.errno))


class Calls:
    """Every socket call goes through here: logged to ctx.events as kind 'call' with its errno."""

    def __init__(self, events: EventLog, **context: Any) -> None:
        self.events = events
        self.context = context

    def do(self, op: str, fn: Callable[[], Any], **fields: Any) -> tuple[Any, str | None]:
        try:
            res = fn()
        except OSError as exc:
            name = errno_name(exc)
            self.events.log("call", op=op, ok=False, errno=name, **{**self.context, **fields})
            return None, name
        extra = {"result": res} if isinstance(res, (int, str, tuple)) else {}
        self.events.log("call", op=op, ok=True, errno=None, **{**self.context, **fields, **extra})
        return res, None

    def with_context(self, **more: Any) -> Calls:
        return Calls(self.events, **{**self.context, **more})


def set_opt(calls: Calls, s: socket.socket, opt: str, sock: str = "") -> str | None:
    """Set 'reuseaddr' / 'reuseport' (or nothing for 'none'); returns the errno name on failure."""
    if opt == "none":
        return None
    if opt == "reuseaddr":
        _, err = calls.do("setsockopt", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
                          sock=sock, opt="SO_REUSEADDR")
        return err
    if SO_REUSEPORT is None:
        return "ENOPROTOOPT"
    port_opt = SO_REUSEPORT
    _, err = calls.do("setsockopt", lambda: s.setsockopt(socket.SOL_SOCKET, port_opt, 1),
                      sock=sock, opt="SO_REUSEPORT")
    return err


# ---------------------------------------------------------------------------------------------
# what this host can test


@dataclass(frozen=True)
class Caps:
    ipv6: bool            # ::1 is configured
    lo2: bool             # 127.0.0.2 is usable (Linux: all of 127/8 on lo; macOS/FreeBSD: usually not)
    reuseport: bool
    system: str = field(default_factory=platform.system)

    def untestable(self, case: BindCase) -> str | None:
        if case.needs_ipv6 and not self.ipv6:
            return "IPv6 loopback (::1) not available"
        if case.needs_lo2 and not self.lo2:
            return "127.0.0.2 not configured on this host's loopback"
        if "reuseport" in (case.first_opt, case.second_opt) and not self.reuseport:
            return "SO_REUSEPORT not defined on this OS"
        return None


def _can_bind(family: int, addr: str) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False


def detect_caps() -> Caps:
    ipv6 = socket.has_ipv6 and _can_bind(socket.AF_INET6, "::1")
    return Caps(ipv6=ipv6, lo2=_can_bind(socket.AF_INET, "127.0.0.2"), reuseport=SO_REUSEPORT is not None)


def free_port(proto: str = "tcp", ipv6: bool = True) -> int:
    """A port the kernel hands out for bind(port 0) right now, free on IPv4 and (dual-stack) IPv6."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    if ipv6 and IPV6_V6ONLY is not None:
        with socket.socket(socket.AF_INET6, kind) as s:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_V6ONLY, 0)
            s.bind(("::", 0))
            return int(s.getsockname()[1])
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# kernel socket states without privileges (Linux /proc)

TCP_STATE_NAMES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECEIVED", 4: "FIN_WAIT_1", 5: "FIN_WAIT_2",
                   6: "TIME_WAIT", 7: "CLOSED", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_states_on_port(port: int) -> list[str] | None:
    """States of TCP sockets whose local port is `port` (from /proc/net/tcp{,6}); None if not Linux."""
    out: list[str] = []
    found_any = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as fh:
                found_any = True
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) > 3 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        out.append(TCP_STATE_NAMES.get(int(parts[3], 16), parts[3]))
        except OSError:
            continue
    return out if found_any else None


def read_proc(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# one bind-matrix case, measured


def _family(key: str) -> int:
    return socket.AF_INET6 if ADDRS[key][0] == 6 else socket.AF_INET


def _sockaddr(key: str, port: int) -> tuple[str, int]:
    return ADDRS[key][1], port


def _connect_target(key: str, port: int) -> tuple[int, tuple[str, int]]:
    """Where the lab connects to reach a first socket bound to `key` (see bindrules.first_effective_addr)."""
    if key == "any6only":
        return socket.AF_INET6, ("::1", port)
    if key == "lo2":
        return socket.AF_INET, ("127.0.0.2", port)
    return socket.AF_INET, ("127.0.0.1", port)


def _new_socket(calls: Calls, key: str, proto: str, opt: str, who: str, keep: list[socket.socket]) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(_family(key), kind)
    keep.append(s)
    if ADDRS[key][0] == 6 and IPV6_V6ONLY is not None:
        v6only = 1 if ADDRS[key][2] else 0
        calls.do("setsockopt", lambda: s.setsockopt(socket.IPPROTO_IPV6, IPV6_V6ONLY, v6only),
                 sock=who, opt="IPV6_V6ONLY", value=v6only)
    set_opt(calls, s, opt, who)
    return s


class SetupFailed(Exception):
    pass


def _wait_state(port: int, want: str, timeout_s: float = 1.0) -> str | None:
    """Poll /proc until a socket on `port` is in `want`; returns the states seen (joined) or None off Linux."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        states = tcp_states_on_port(port)
        if states is None:
            time.sleep(0.02)   # no /proc: loopback delivers within the syscall; a short grace suffices
            return None
        if want in states or time.monotonic() > deadline:
            return ",".join(sorted(set(states))) or "none"
        time.sleep(0.005)


def _setup_first(calls: Calls, case: BindCase, port: int, keep: list[socket.socket]) -> str | None:
    """Create the first socket in its state; returns the state seen in /proc (None off Linux)."""
    c = calls.with_context(sock="first")
    s = _new_socket(c, case.first_addr, case.proto, case.first_opt, "first", keep)
    _, err = c.do("bind", lambda: s.bind(_sockaddr(case.first_addr, port)), addr=_sockaddr(case.first_addr, port))
    if err:
        raise SetupFailed(f"first bind: {err}")
    if case.first_state == "bound":
        return None
    if case.proto == "udp":   # connected UDP socket
        fam, target = _connect_target(case.first_addr, port)
        peer = socket.socket(fam, socket.SOCK_DGRAM)
        keep.append(peer)
        peer.bind((target[0], 0))
        dest = peer.getsockname()[:2]
        if s.family == socket.AF_INET6 and fam == socket.AF_INET:   # dual-stack socket to an IPv4 peer
            dest = ("::ffff:" + dest[0], dest[1])
        _, err = c.do("connect", lambda: s.connect(dest), addr=dest)
        if err:
            raise SetupFailed(f"udp connect: {err}")
        return None
    _, err = c.do("listen", lambda: s.listen(8))
    if err:
        raise SetupFailed(f"first listen: {err}")
    if case.first_state == "listening":
        return _wait_state(port, "LISTEN", 0.2)
    fam, target = _connect_target(case.first_addr, port)
    cli = socket.socket(fam, socket.SOCK_STREAM)
    keep.append(cli)
    _, err = c.do("connect", lambda: cli.connect(target), sock="client", addr=target)
    if err:
        raise SetupFailed(f"connect: {err}")
    s.settimeout(scaled(2))
    res, err = c.do("accept", lambda: s.accept())
    if err or res is None:
        raise SetupFailed(f"accept: {err}")
    child: socket.socket = res[0]
    keep.append(child)
    c.do("close", s.close, what="listener")   # only the connection stays on the port
    if case.first_state == "connected":
        return _wait_state(port, "ESTABLISHED", 0.2)
    # TIME_WAIT: the server side closes first, the client answers with its FIN
    c.do("close", child.close, what="accepted child (server closes first)")
    cli.settimeout(scaled(2))
    c.do("recv", lambda: cli.recv(16), sock="client")
    c.do("close", cli.close, sock="client")
    return _wait_state(port, "TIME_WAIT", 1.0)


@dataclass
class Measured:
    second: str
    first_listen: str | None
    first_state_seen: str | None
    port: int
    attempts: int

    def verdict(self) -> Verdict:
        return Verdict(self.second, self.first_listen)


def _measure_once(calls: Calls, case: BindCase, port: int) -> Measured:
    keep: list[socket.socket] = []
    try:
        seen = _setup_first(calls, case, port, keep)
        c = calls.with_context(sock="second")
        s2 = _new_socket(c, case.second_addr, case.proto, case.second_opt, "second", keep)
        addr = _sockaddr(case.second_addr, port)
        _, err = c.do("bind", lambda: s2.bind(addr), addr=addr)
        if err:
            return Measured(f"bind:{err}", None, seen, port, 1)
        if case.proto == "tcp":
            _, err = c.do("listen", lambda: s2.listen(8))
            if err:
                return Measured(f"listen:{err}", None, seen, port, 1)
        first_listen = None
        if case.checks_first_listen:
            s1 = keep[0]
            _, err = calls.with_context(sock="first").do("listen", lambda: s1.listen(8), after="second listening")
            first_listen = OK if err is None else f"listen:{err}"
        return Measured(OK, first_listen, seen, port, 1)
    finally:
        for s in reversed(keep):
            with contextlib.suppress(OSError):
                if s.type == socket.SOCK_STREAM and s.fileno() >= 0:
                    # never leave TIME_WAIT from the lab's own clean-up (the measured TIME_WAIT stays)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            s.close()


def measure_case(calls: Calls, case: BindCase, ipv6: bool,
                 expect: Callable[[BindCase], Verdict] | None = None, retries: int = 2) -> tuple[Measured, list[str]]:
    """Measure a case on a fresh port (bind port 0 to find one). A first socket that cannot be set up
    (another program took the port between the probe and our bind) is retried on a new port; so is a
    result that disagrees with `expect`, once: a foreign socket on the port is not what we measure.
    Returns the last measurement and every result seen (so a disagreement is never hidden)."""
    last: Exception | None = None
    seen: list[str] = []
    m: Measured | None = None
    measured = 0
    for attempt in range(1, retries + 2):
        port = free_port(case.proto, ipv6)
        try:
            m = _measure_once(calls.with_context(case=case.id, port=port, attempt=attempt), case, port)
        except SetupFailed as exc:
            last = exc
            seen.append(f"setup failed: {exc}")
            continue
        m.attempts = attempt
        seen.append(m.verdict().text())
        measured += 1
        if expect is None or m.verdict().same_result(expect(case)) or measured > 1:
            return m, seen
    if m is not None:
        return m, seen
    raise SetupFailed(f"{case.id}: could not set up the first socket ({last})")


# ---------------------------------------------------------------------------------------------
# a lab network namespace (for multicast and per-namespace sysctls)


def make_netns(ctx: RunSpace, role: str, multicast: bool = False,
               sysctls: dict[str, Any] | None = None) -> str:
    """A lab namespace twl<run><role> (lab.kernel.hosts.netns: ledger, teardown on ctx.stack) with lo up; for
    multicast also `lo multicast on` and a 224.0.0.0/4 route on lo (docs/kernel-facts.md §12). Returns its name."""
    from lab.kernel.hosts.netns import Namespace

    ns = Namespace.create(ctx, role, sysctls=sysctls)
    if multicast:
        ns.run(["ip", "link", "set", "lo", "multicast", "on"])
        ns.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"])
        ctx.events.log("netns", name=ns.name, action="multicast on lo, route 224.0.0.0/4 dev lo")
    return ns.name


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Sockets created inside belong to `name` (setns affects only this thread)."""
    if name is None:
        yield
        return
    from lab.kernel.sockdiag import in_netns as kernel_in_netns

    with kernel_in_netns(name):
        yield


def netns_read(name: str | None, key: str) -> str | None:
    path = "/proc/sys/" + key.replace(".", "/")
    with in_netns(name):
        return read_proc(path)
