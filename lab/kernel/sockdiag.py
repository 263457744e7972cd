"""The kernel's own account: sock_diag socket states and timers, and the SNMP counters (nstat), per namespace.

    sockets(netns=None, ports=(), states=None) -> list[SockSample]    # one sock_diag dump, TCP v4+v6
    nstat(netns=None) -> dict[str, int]                               # absolute counters, nstat names
    with Sampler(ctx, netns=ns.name, ports=[P]) as smp: ...           # every state/timer change -> ctx.events
    smp.reading_within(t_a, t_b, local_port=P) -> Reading | None         # what a dump wholly inside (t_a, t_b) said
    time_wait_observations(smp.samples) -> list[TimeWaitObservation]
    compare_time_wait(observations, connections) -> list[dict]        # against the analyzer's windows

Another namespace is entered only by the calling thread (setns is per thread), and /proc is read through
/proc/thread-self so that a thread inside a namespace reads that namespace's counters, not the process's.

When: a sample carries the span of the dump that produced it, from before its first request was sent (`wall_s`)
to after its last reply was read (`wall_end_s`); the kernel reported the state at some instant inside that span,
and nothing says which. A claim about capture times (this state held between two segments) needs the whole span
inside the window; a reported time says its span.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lab.errors import EnvironmentProblem
from lab.run.context import scaled

if TYPE_CHECKING:
    from lab.run.context import RunSpace

# include/net/tcp_states.h, with RFC 9293 names
STATE_NAMES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECEIVED", 4: "FIN_WAIT_1", 5: "FIN_WAIT_2",
               6: "TIME_WAIT", 7: "CLOSED", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
               12: "NEW_SYN_RECV"}
STATE_CODES = {v: k for k, v in STATE_NAMES.items()}
# idiag_timer (net/ipv4/inet_diag.c): 1 retransmit (also the loss probe), 2 keepalive, 3 TIME_WAIT, 4 zero-window probe
TIMER_NAMES = {0: None, 1: "retransmit", 2: "keepalive", 3: "timewait", 4: "probe"}
ALL_STATES = (1 << 13) - 1
# a TIME_WAIT timer only counts down; a jump up by more than a few jiffies (4 ms at HZ=250) is a restart
RESTART_JUMP_MS = 20
FAMILIES: dict[int, str] = {int(socket.AF_INET): "inet", int(socket.AF_INET6): "inet6"}


@dataclass(frozen=True)
class SockSample:
    state: str                 # RFC 9293 name: "TIME_WAIT", "ESTABLISHED", "FIN_WAIT_2", ...
    family: str                # "inet" | "inet6"
    src: str
    sport: int
    dst: str
    dport: int
    timer: str | None          # "timewait" | "retransmit" | "keepalive" | "probe" | None
    expires_ms: int            # remaining time of that timer
    retransmits: int
    inode: int                 # 0 for TIME_WAIT mini-sockets
    netns: str | None
    wall_s: float = 0.0        # when the dump's first request was sent (epoch, like capture timestamps)
    wall_end_s: float = 0.0    # when its last reply was read (a sample built without one: wall_s, no span)

    def __post_init__(self) -> None:
        if self.wall_end_s < self.wall_s:
            object.__setattr__(self, "wall_end_s", self.wall_s)

    @property
    def local(self) -> str:
        return f"{self.src}:{self.sport}"

    @property
    def remote(self) -> str:
        return f"{self.dst}:{self.dport}"

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.family, self.src, self.sport, self.dst, self.dport)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# entering a namespace in this thread only


def _setns_fd(fd: int) -> None:
    from pyroute2 import netns as pnetns

    pnetns.setns(fd, flags=0)


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread inside lab namespace `name` (None: stay). Never creates a namespace."""
    if name is None:
        yield
        return
    path = f"/run/netns/{name}"
    if not os.path.exists(path):
        raise EnvironmentProblem(f"network namespace {name} does not exist",
                                 "it was removed; run the experiment again")
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns_fd(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns_fd(saved)
    finally:
        os.close(saved)


# ---------------------------------------------------------------------------------------------
# sock_diag


def _decode(msg: Mapping[str, Any], netns: str | None, wall_s: float, wall_end_s: float) -> SockSample:
    return SockSample(
        state=STATE_NAMES.get(int(msg["idiag_state"]), f"STATE_{msg['idiag_state']}"),
        family=FAMILIES.get(int(msg["idiag_family"]), str(msg["idiag_family"])),
        src=str(msg["idiag_src"]), sport=int(msg["idiag_sport"]),
        dst=str(msg["idiag_dst"]), dport=int(msg["idiag_dport"]),
        timer=TIMER_NAMES.get(int(msg["idiag_timer"]), str(msg["idiag_timer"])),
        expires_ms=int(msg["idiag_expires"]), retransmits=int(msg["idiag_retrans"]),
        inode=int(msg["idiag_inode"]), netns=netns, wall_s=wall_s, wall_end_s=wall_end_s)


def _state_mask(states: Iterable[str] | None) -> int:
    if states is None:
        return ALL_STATES
    mask = 0
    for s in states:
        if s not in STATE_CODES:
            raise ValueError(f"unknown TCP state {s!r}; one of {', '.join(STATE_CODES)}")
        mask |= 1 << STATE_CODES[s]
    return mask


@dataclass(frozen=True)
class Dump:
    """One sock_diag dump: its span (epoch) and the sockets it reported."""

    began_s: float
    done_s: float
    samples: tuple[SockSample, ...]


@dataclass(frozen=True)
class Reading:
    """What one whole dump said about one socket: its state (None: no such socket then) and that dump's span."""

    state: str | None
    began_s: float
    done_s: float
    sample: SockSample | None

    def to_dict(self) -> dict[str, Any]:
        s = self.sample
        return {"state": self.state, "timer": s.timer if s else None, "expires_ms": s.expires_ms if s else None,
                "retransmits": s.retransmits if s else None, "dump_wall_s": self.began_s,
                "dump_wall_end_s": self.done_s}


class _Diag:
    """A sock_diag netlink socket opened inside `netns` (a netlink socket stays in the namespace it was made in)."""

    def __init__(self, netns: str | None) -> None:
        from pyroute2 import DiagSocket

        self.netns = netns
        with in_netns(netns):
            self.ds = DiagSocket()
            self.ds.bind()

    def dump(self, ports: Sequence[int] = (), mask: int = ALL_STATES) -> Dump:
        """Both families' sockets, each stamped with the whole dump's span (the replies are read to the end
        before any is decoded, so the span's end is after the kernel's last report)."""
        began = time.time()
        msgs = [msg for fam in (socket.AF_INET, socket.AF_INET6)
                for msg in self.ds.get_sock_stats(family=fam, states=mask)]
        done = time.time()
        want = set(ports)
        out = []
        for msg in msgs:
            s = _decode(msg, self.netns, began, done)
            if want and s.sport not in want and s.dport not in want:
                continue
            out.append(s)
        return Dump(began, done, tuple(out))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ds.close()


def sockets(netns: str | None = None, ports: Sequence[int] = (), states: Iterable[str] | None = None
            ) -> list[SockSample]:
    """One sock_diag dump of TCP sockets (IPv4 and IPv6) in `netns`, those with a local or remote port in `ports`."""
    d = _Diag(netns)
    try:
        return list(d.dump(ports, _state_mask(states)).samples)
    finally:
        d.close()


# ---------------------------------------------------------------------------------------------
# counters


def config_hz() -> int | None:
    """This kernel's CONFIG_HZ from /proc/config.gz (None where the kernel does not expose its config)."""
    import gzip
    import re

    with contextlib.suppress(OSError, EOFError, gzip.BadGzipFile):
        with gzip.open("/proc/config.gz") as fh:
            m = re.search(rb"^CONFIG_HZ=(\d+)$", fh.read(), re.M)
        return int(m.group(1)) if m else None
    return None


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/snmp and /proc/net/netstat: pairs of 'Tcp: names' / 'Tcp: values' lines -> {'TcpOutSegs': n}."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for names, values in zip(lines[0::2], lines[1::2], strict=False):
        prefix, _, keys = names.partition(":")
        vprefix, _, vals = values.partition(":")
        if prefix != vprefix:
            continue
        for k, v in zip(keys.split(), vals.split(), strict=False):
            with contextlib.suppress(ValueError):
                out[prefix + k] = int(v)
    return out


def parse_snmp6(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _read_counters() -> dict[str, int]:
    base = "/proc/thread-self/net/"
    out: dict[str, int] = {}
    for name, parse in (("snmp", parse_snmp), ("netstat", parse_snmp), ("snmp6", parse_snmp6)):
        with contextlib.suppress(OSError), open(base + name, encoding="ascii") as fh:
            out.update(parse(fh.read()))
    return out


def nstat(netns: str | None = None) -> dict[str, int]:
    """Absolute SNMP counters of `netns` with nstat's names (TcpOutSegs, TcpExtTCPTimeWaitOverflow, ...).

    Read from /proc inside the namespace; no nstat history file is involved (docs/kernel-facts.md §13)."""
    with in_netns(netns):
        return _read_counters()


def deltas(before: Mapping[str, int], after: Mapping[str, int], names: Iterable[str] | None = None
           ) -> dict[str, int]:
    keys = list(names) if names is not None else sorted(set(before) | set(after))
    return {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in keys}


# ---------------------------------------------------------------------------------------------
# sampling during a run


@dataclass
class Sampler:
    """A thread that dumps sock_diag every `interval_s` and logs each change (new socket, state, timer, timer
    restart, gone) to ctx.events as kind "sock". `samples` keeps every dump's sockets (deduplicated per
    change, plus the TIME_WAIT timer readings needed to see restarts); `spans` keeps every dump's span, so the
    state of a socket at any dump is its last sample up to that dump (reading_within). Dumps are serialized
    (the thread's and sample_now's), so samples and spans are in time order."""

    ctx: RunSpace
    netns: str | None = None
    ports: Sequence[int] = ()
    interval_s: float = 0.05
    samples: list[SockSample] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)   # (began_s, done_s) of every dump, in order
    dumps: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[tuple[str, str, int, str, int], SockSample] = {}
        self._lock = threading.Lock()
        self._dumping = threading.Lock()   # one dump at a time: a dump and its record are one step
        self._ready = threading.Event()

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name=f"sampler-{self.netns or 'host'}", daemon=True)
        self._thread.start()
        self._ready.wait(scaled(5))    # the first dump is in
        self.ctx.stack.callback(self.stop)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def sample_now(self) -> list[SockSample]:
        """One extra dump right now (from the calling thread), recorded like the periodic ones."""
        d = _Diag(self.netns)
        try:
            with self._dumping:
                snap = d.dump(self.ports)
                self._record(snap)
        finally:
            d.close()
        return list(snap.samples)

    def _loop(self) -> None:
        try:
            d = _Diag(self.netns)
        except Exception as exc:  # reported through .error and the event log
            self.error = f"{type(exc).__name__}: {exc}"
            self.ctx.events.log("sock-sampler-error", netns=self.netns, error=self.error)
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                try:
                    with self._dumping:
                        self._record(d.dump(self.ports))
                except Exception as exc:  # a namespace removed under us ends sampling
                    self.error = f"{type(exc).__name__}: {exc}"
                    break
                if self._stop.wait(self.interval_s):
                    break
        finally:
            d.close()

    def _record(self, snap: Dump) -> None:
        with self._lock:
            self.dumps += 1
            # a change since the previous dump happened after that dump's first request (its report of the old
            # state came no earlier) and before this dump's last reply
            after = self.spans[-1][0] if self.spans else None
            self.spans.append((snap.began_s, snap.done_s))
            now = {s.key: s for s in snap.samples}
            for key, s in now.items():
                old = self._last.get(key)
                change = None
                if old is None:
                    change = "new"
                elif old.state != s.state:
                    change = "state"
                elif old.timer != s.timer:
                    change = "timer"
                elif s.timer == "timewait" and s.expires_ms > old.expires_ms + RESTART_JUMP_MS:
                    change = "timer-restart"
                if change is not None:
                    self._log(change, s, old, after)
                if change is not None or s.state == "TIME_WAIT":
                    self.samples.append(s)
            for key, old in self._last.items():
                if key not in now:
                    gone = SockSample("GONE", old.family, old.src, old.sport, old.dst, old.dport, None, 0,
                                      old.retransmits, old.inode, old.netns, snap.began_s, snap.done_s)
                    self.samples.append(gone)
                    self._log("gone", gone, old, after)
            self._last = now

    def _log(self, change: str, s: SockSample, old: SockSample | None, after: float | None) -> None:
        rec = {"change": change, "netns": s.netns, "local": s.local, "remote": s.remote, "state": s.state,
               "from_state": old.state if old else None, "timer": s.timer, "expires_ms": s.expires_ms,
               "retransmits": s.retransmits, "sample_wall_s": s.wall_s, "sample_wall_end_s": s.wall_end_s,
               "changed_after_wall_s": after}
        self.changes.append(rec)
        self.ctx.events.log("sock", **rec)

    def states_of(self, local_port: int | None = None, remote_port: int | None = None) -> list[str]:
        """The sequence of distinct states one side went through (by its local or remote port)."""
        out: list[str] = []
        for s in self.samples:
            if not _on_ports(s, local_port, remote_port):
                continue
            if s.state != "GONE" and (not out or out[-1] != s.state):
                out.append(s.state)
        return out

    def reading_within(self, t_a: float, t_b: float, local_port: int | None = None,
                       remote_port: int | None = None) -> Reading | None:
        """What the last dump whose whole span lies inside (t_a, t_b) said about one socket (by its local or remote
        port); None when no dump lies wholly inside. A dump that began before t_a or ended after t_b may have
        reported outside the window, so it does not count, whatever its stamps."""
        with self._lock:
            spans, samples = list(self.spans), list(self.samples)
        inside = [sp for sp in spans if t_a < sp[0] and sp[1] < t_b]
        if not inside:
            return None
        began, done = inside[-1]
        # change-only storage: the socket's state at that dump is its last sample recorded up to that dump
        last = None
        for s in samples:
            if s.wall_s > began:
                break
            if _on_ports(s, local_port, remote_port):
                last = s
        if last is None or last.state == "GONE":
            return Reading(None, began, done, None)
        return Reading(last.state, began, done, last)


def _on_ports(s: SockSample, local_port: int | None, remote_port: int | None) -> bool:
    return (local_port is None or s.sport == local_port) and (remote_port is None or s.dport == remote_port)


# ---------------------------------------------------------------------------------------------
# TIME_WAIT as the kernel saw it, and against the analyzer


@dataclass(frozen=True)
class TimeWaitObservation:
    local: str                    # "ip:port" of the side in TIME_WAIT
    remote: str
    netns: str | None
    first_seen_s: float           # start of the first dump that showed it (wall_s)
    first_expires_ms: int         # remaining timer then
    last_seen_s: float
    gone_s: float | None          # start of the first dump without it (None: still there when sampling stopped)
    restarts: tuple[tuple[float, int], ...] = ()   # (wall_s, expires_ms) where the timer jumped up
    # the ends of those dumps' spans (None: the dump had no span, = its start): each reading came in between
    first_seen_end_s: float | None = None
    gone_end_s: float | None = None
    restarts_end_s: tuple[float, ...] = ()   # one per restart

    @property
    def first_seen_latest_s(self) -> float:
        return self.first_seen_s if self.first_seen_end_s is None else self.first_seen_end_s

    @property
    def expected_end_s(self) -> float:
        return self.first_seen_s + self.first_expires_ms / 1000.0

    @property
    def started_s(self) -> float:
        """When the socket entered TIME_WAIT, by the kernel's own timer (60 s minus the remaining time), if the
        first reading came at its dump's start: the earliest the timer allows."""
        return self.first_seen_s - max(0.0, 60.0 - self.first_expires_ms / 1000.0)

    @property
    def started_latest_s(self) -> float:
        """The same if the first reading came at its dump's end: the latest the timer allows."""
        return self.first_seen_latest_s - max(0.0, 60.0 - self.first_expires_ms / 1000.0)

    def timer_end_range_s(self) -> tuple[float, float]:
        """When the timer will fire by the last reading that (re)started it (the first, or the last restart):
        the reading came somewhere inside its dump's span, so the end lies in this range."""
        if self.restarts:
            (wall, exp), end = self.restarts[-1], (self.restarts_end_s or (self.restarts[-1][0],))[-1]
        else:
            wall, exp, end = self.first_seen_s, self.first_expires_ms, self.first_seen_latest_s
        return wall + exp / 1000.0, max(wall, end) + exp / 1000.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["restarts"] = [list(r) for r in self.restarts]
        d["restarts_end_s"] = list(self.restarts_end_s)
        d["lifetime_s"] = round(self.gone_s - self.first_seen_s, 3) if self.gone_s else None
        # present at a reading inside the first span, absent at one inside the gone span
        gone_end = self.gone_end_s if self.gone_end_s is not None else self.gone_s
        d["lifetime_range_s"] = ([round(self.gone_s - self.first_seen_latest_s, 3),
                                  round(gone_end - self.first_seen_s, 3)] if self.gone_s and gone_end else None)
        return d


def time_wait_observations(samples: Iterable[SockSample]) -> list[TimeWaitObservation]:
    """Per four-tuple: when TIME_WAIT was first seen, its timer then, when it went, and timer restarts."""
    acc: dict[tuple[Any, ...], dict[str, Any]] = {}
    order: list[tuple[Any, ...]] = []
    for s in samples:
        k = (s.netns, *s.key)
        a = acc.get(k)
        if s.state == "TIME_WAIT":
            if a is None or a.get("gone") is not None:
                a = {"local": s.local, "remote": s.remote, "netns": s.netns, "first": s.wall_s,
                     "first_end": s.wall_end_s, "exp": s.expires_ms, "last": s.wall_s, "last_exp": s.expires_ms,
                     "gone": None, "gone_end": None, "restarts": [], "restarts_end": []}
                acc[k] = a
                order.append(k)
                continue
            if s.expires_ms > a["last_exp"] + RESTART_JUMP_MS:
                a["restarts"].append((s.wall_s, s.expires_ms))
                a["restarts_end"].append(s.wall_end_s)
            a["last"], a["last_exp"] = s.wall_s, s.expires_ms
        elif a is not None and a.get("gone") is None:
            a["gone"], a["gone_end"] = s.wall_s, s.wall_end_s
    out = []
    seen: set[int] = set()
    for k in order:
        a = acc[k]
        if id(a) in seen:
            continue
        seen.add(id(a))
        out.append(TimeWaitObservation(a["local"], a["remote"], a["netns"], a["first"], a["exp"], a["last"],
                                       a["gone"], tuple(a["restarts"]), a["first_end"], a["gone_end"],
                                       tuple(a["restarts_end"])))
    return out


def _norm(endpoint: str) -> str:
    """'::ffff:1.2.3.4:5' and '[2001:db8::1]:5' -> comparable 'ip:port'."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"{host}:{port}"


def compare_time_wait(observations: Sequence[TimeWaitObservation], connections: Sequence[Mapping[str, Any]],
                      start_tolerance_s: float = 0.05, timer_tolerance_s: float = 2.5) -> list[dict[str, Any]]:
    """Each kernel TIME_WAIT against the analyzer's window for the same side (docs/design.md `analyze --json` shape).

    Agreement: the window is on the same side; the kernel first saw it no earlier than the window's start and
    the analyzer's start lies within `start_tolerance_s` before the first sighting plus the time the timer had
    already run (the sampler polls); the remaining time the kernel reported is consistent with the window's end
    (the kernel's 60 s lands 0-2 s late on the timer wheel, docs/kernel-facts.md §5).

    A reading came at some instant inside its dump's span, so each gap is a range (`start_gap_s` from the dump's
    start, `start_gap_max_s` from its end; likewise the end): a check holds when some instant inside the span
    satisfies it (the kernel's account is consistent with the analyzer's), and the span is reported."""

    def meets(lo: float, hi: float, low: float, high: float) -> bool:
        return lo <= high and hi >= low

    out = []
    for ob in observations:
        local, remote = _norm(ob.local), _norm(ob.remote)
        match = None
        for c in connections:
            cl, sv = _norm(str(c.get("client"))), _norm(str(c.get("server")))
            if {cl, sv} != {local, remote}:
                continue
            side = "client" if cl == local else "server"
            wins = [w for w in c.get("time_wait", []) if w.get("side") == side]
            best = None
            for w in wins:
                if best is None or abs(w["start_ts"] - ob.started_s) < abs(best["start_ts"] - ob.started_s):
                    best = w
            match = (c, side, best)
            if best is not None:
                break
        row: dict[str, Any] = {"local": ob.local, "remote": ob.remote, "kernel_first_seen_s": ob.first_seen_s,
                               "kernel_first_seen_end_s": ob.first_seen_latest_s,
                               "kernel_dump_span_ms": round((ob.first_seen_latest_s - ob.first_seen_s) * 1000, 3),
                               "kernel_expires_ms": ob.first_expires_ms, "kernel_restarts": len(ob.restarts)}
        if match is None:
            row.update(agree=False, why="no connection with this four-tuple in the capture")
        elif match[2] is None:
            row.update(connection=match[0].get("id"), side=match[1], agree=False,
                       why=f"the analyzer has no TIME_WAIT window on the {match[1]} side")
        else:
            c, side, w = match[0], match[1], match[2]
            # the kernel's timer says it entered TIME_WAIT between started_s and started_latest_s
            w_start, w_end = float(w["start_ts"]), float(w["end_ts"])
            start_gap, start_gap_max = ob.started_s - w_start, ob.started_latest_s - w_start
            kernel_end, kernel_end_max = ob.timer_end_range_s()
            end_gap, end_gap_max = kernel_end - w_end, kernel_end_max - w_end
            seen_after_start = ob.first_seen_latest_s >= w_start - start_tolerance_s
            start_ok = seen_after_start and meets(start_gap, start_gap_max, -(start_tolerance_s + 0.1),
                                                  start_tolerance_s + 0.1)
            end_ok = (meets(end_gap, end_gap_max, -0.5, timer_tolerance_s)
                      if w.get("ended_by", "timeout") == "timeout" else True)
            row.update(connection=c.get("id"), side=side, analyzer_start_ts=w["start_ts"],
                       analyzer_end_ts=w["end_ts"], start_gap_s=round(start_gap, 4),
                       start_gap_max_s=round(start_gap_max, 4), end_gap_s=round(end_gap, 3),
                       end_gap_max_s=round(end_gap_max, 3), agree=bool(start_ok and end_ok))
            if not row["agree"]:
                row["why"] = ("start differs" if not start_ok else "remaining time differs")
        out.append(row)
    return out
