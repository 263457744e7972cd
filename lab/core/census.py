"""The census's pure parts: how many sockets a capture shows held at once, and how close a client is to
running out of ephemeral ports. Functions of numbers and records only (the fold over an analysis is
lab.analysis.census).

Fold is the per-connection fold itself (compiled with the accelerator group: it runs once per finished
connection of a capture); lab.analysis.census builds the census document from it.

Occupancy (TIME_WAIT held at once) is swept over +1/-1 steps at a fixed resolution (RESOLUTION_S): a window
counts from its start to its end, the end taken first when both fall on one tick. The port forecast is the
classic one: a client address holds one ephemeral port per connection to a destination (server ip:port)
for the connection's life plus TIME_WAIT when the client closes first, so it sustains at most
ports / TIME_WAIT connections per second to that destination (28,232 / 60 s = ~470/s on Linux defaults).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from lab.core.report import Connection

__all__ = ["DEFAULT_PORT_RANGES", "FIXES", "MAX_KEYS", "OTHER", "RESOLUTION_S", "Capacity", "Fold", "Keyed",
           "Occupancy", "capacity", "client_key", "host_of", "open_states", "peak_rate", "sweep"]

RESOLUTION_S: Final = 0.001      # occupancy is counted to the millisecond
TIMELINE_POINTS: Final = 60      # buckets of a timeline (a sparkline's width)

# the ephemeral port range each profile's system uses by default (inclusive)
DEFAULT_PORT_RANGES: Mapping[str, tuple[int, int]] = {
    "linux": (32768, 60999),      # net.ipv4.ip_local_port_range
    "freebsd": (10000, 65535),    # net.inet.ip.portrange.first/last
    "macos": (49152, 65535),      # net.inet.ip.portrange.first/last
    "windows": (49152, 65535),    # netsh int ipv4 show dynamicport tcp
    "solaris": (32768, 65535),    # tcp_smallest_anon_port / tcp_largest_anon_port
    "rfc793": (49152, 65535),     # RFC 6335's dynamic range
}

FIXES = (
    "keep connections alive and reuse them (HTTP keep-alive, connection pools): one port serves many requests",
    "net.ipv4.tcp_tw_reuse=1 on the client: a new connect() may take a port still in TIME_WAIT "
    "(needs TCP timestamps; Linux's default 2 allows it on loopback only)",
    "more source addresses: each client address has its own port range per destination",
    "IP_BIND_ADDRESS_NO_PORT before bind() to a source address: the port is chosen at connect() "
    "with the full four-tuple, so ports are shared across destinations",
    "a wider ip_local_port_range (more ports per TIME_WAIT length)",
)

OpenState = Literal["CLOSE_WAIT", "FIN_WAIT_1", "FIN_WAIT_2"]


def host_of(endpoint: str) -> str:
    """'192.0.2.7:40000' -> '192.0.2.7', '[2001:db8::1]:40000' -> '2001:db8::1'."""
    i = endpoint.rfind(":")
    host = endpoint if i < 0 else endpoint[:i]
    return host[1:-1] if host.startswith("[") else host


def client_key(side: str, endpoint: str) -> str:
    """How an endpoint is grouped: a server by ip:port, a client by its address (its port is ephemeral)."""
    return endpoint if side == "server" else host_of(endpoint)


def open_states(kind: str, initiator: str | None, close_frames: int) -> dict[str, OpenState]:
    """The half-closed states a connection's close record leaves open at capture end, by side: one side
    sent FIN and the other never did (close kinds "incomplete" and "half-close" with one FIN). The FIN's
    sender is in FIN_WAIT_2 once its FIN was acknowledged (two close frames), else FIN_WAIT_1; the other
    side is in CLOSE_WAIT: its application has not closed (the application-bug signature)."""
    if initiator not in ("client", "server") or kind not in ("incomplete", "half-close") or close_frames > 2:
        return {}
    other = "server" if initiator == "client" else "client"
    return {initiator: "FIN_WAIT_2" if close_frames >= 2 else "FIN_WAIT_1", other: "CLOSE_WAIT"}


@dataclass(frozen=True)
class Occupancy:
    """How many windows were held at once: the peak (and the first tick it was reached) and a timeline of
    the maximum per bucket between `start_ts` and `end_ts`."""

    peak: int
    peak_ts: float | None
    timeline: tuple[int, ...]
    start_ts: float
    bucket_s: float

    def to_dict(self, t0: float) -> dict[str, object]:
        return {"peak": self.peak, "peak_ts": self.peak_ts,
                "peak_t": None if self.peak_ts is None else round(self.peak_ts - t0, 6),
                "bucket_s": self.bucket_s, "timeline": list(self.timeline)}


def tick(ts: float) -> int:
    return int(ts / RESOLUTION_S)


def sweep(steps: Mapping[int, int], start_ts: float, end_ts: float, points: int = TIMELINE_POINTS) -> Occupancy:
    """Occupancy from +1/-1 steps keyed by tick (see tick()); the timeline covers [start_ts, end_ts]."""
    span = max(end_ts - start_ts, RESOLUTION_S)
    bucket = span / points
    timeline = [0] * points
    held = peak = 0
    peak_tick: int | None = None
    last_bucket = 0
    for t in sorted(steps):
        b = min(max(int((t * RESOLUTION_S - start_ts) / bucket), 0), points - 1)
        for i in range(last_bucket + 1, b + 1):   # buckets without a step keep the count they started with
            timeline[i] = max(timeline[i], held)
        last_bucket = max(last_bucket, b)
        held += steps[t]
        if held > peak:
            peak, peak_tick = held, t
        timeline[b] = max(timeline[b], held)
    for i in range(last_bucket + 1, points):
        timeline[i] = max(timeline[i], held)
    return Occupancy(peak, None if peak_tick is None else round(peak_tick * RESOLUTION_S, 6), tuple(timeline),
                     start_ts, round(bucket, 6))


def add_window(steps: dict[int, int], a: int, b: int) -> None:
    """One window held from tick a to tick b (see tick()) as two steps (nothing when it ends on its first
    tick)."""
    if b <= a:
        return
    steps[a] = steps.get(a, 0) + 1
    steps[b] = steps.get(b, 0) - 1


MAX_KEYS: Final = 10_000     # endpoints (or client-server pairs) tracked one by one; the rest under OTHER
OTHER: Final = "(other)"


class Keyed:
    """TIME_WAIT occupancy steps (see add_window) and window counts per key, for at most MAX_KEYS keys."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[int, int]] = {}
        self.windows: dict[str, int] = {}

    def add(self, key: str, a: int, b: int) -> None:
        steps = self.steps.get(key)
        if steps is None:
            if len(self.steps) >= MAX_KEYS:
                key = OTHER
                steps = self.steps.get(key)
            if steps is None:
                steps = self.steps[key] = {}
        add_window(steps, a, b)
        self.windows[key] = self.windows.get(key, 0) + 1


class Fold:
    """The census's counts, folded from finished connections one at a time (memory follows the capture's
    length and its distinct endpoints, not its connections): TIME_WAIT steps per side, per local endpoint and
    per peer; the half-closed states left at capture end; new connections per (client address, server) and
    second."""

    def __init__(self) -> None:
        self.side_steps: dict[str, dict[int, int]] = {"client": {}, "server": {}}
        self.side_windows: dict[str, int] = {"client": 0, "server": 0}
        self.by_local = Keyed()
        self.by_peer = Keyed()
        self.open_states: dict[str, int] = {}
        self.open_by: dict[tuple[str, str], int] = {}              # (state, endpoint key) -> sockets
        self.per_pair: dict[tuple[str, str], dict[int, int]] = {}   # (client address, server) -> second -> new
        self.per_dest: dict[str, int] = {}
        self.clients: dict[str, set[str]] = {}
        self.first_ts = float("inf")
        self.last_ts = float("-inf")

    def add_all(self, conns: list[Connection]) -> None:
        for c in conns:
            self.add(c)

    def add(self, c: Connection) -> None:
        if c.first_ts < self.first_ts:
            self.first_ts = c.first_ts
        if c.last_ts > self.last_ts:
            self.last_ts = c.last_ts
        client = client_key("client", c.client)    # the client's address
        server = client_key("server", c.server)
        for w in c.time_wait:
            side = w.side
            if side == "client":
                local, peer = client, server
            elif side == "server":
                local, peer = server, client
            else:
                continue
            a, b = tick(w.start_ts), tick(w.end_ts)
            add_window(self.side_steps[side], a, b)
            self.side_windows[side] += 1
            self.by_local.add(local, a, b)
            self.by_peer.add(peer, a, b)
        if c.open_at_end:   # else the analyzer saw it end otherwise (e.g. a later incarnation)
            for holder, state in open_states(c.close.kind, c.close.initiator, len(c.close.frames)).items():
                self.open_states[state] = self.open_states.get(state, 0) + 1
                key = (state, client if holder == "client" else server)
                self.open_by[key] = self.open_by.get(key, 0) + 1
        if not c.mid_capture:
            self._new_connection(client, c.server, c.first_ts)

    def _new_connection(self, client: str, server: str, first_ts: float) -> None:
        pair = (client, server)
        secs = self.per_pair.get(pair)
        if secs is None:
            if len(self.per_pair) >= MAX_KEYS:
                pair = (OTHER, server)
                secs = self.per_pair.get(pair)
            if secs is None:
                secs = self.per_pair[pair] = {}
        s = int(first_ts)
        secs[s] = secs.get(s, 0) + 1
        self.per_dest[server] = self.per_dest.get(server, 0) + 1
        seen = self.clients.get(server)
        if seen is None:
            seen = self.clients[server] = set()
        if len(seen) < MAX_KEYS:
            seen.add(client)


@dataclass(frozen=True)
class Capacity:
    """Connections per second one client address can open to one destination without running out."""

    port_range: tuple[int, int]
    time_wait_s: float

    @property
    def ports(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1

    @property
    def per_s(self) -> float:
        return float("inf") if self.time_wait_s <= 0 else self.ports / self.time_wait_s

    def to_dict(self) -> dict[str, object]:
        return {"port_range": list(self.port_range), "ports": self.ports, "time_wait_s": self.time_wait_s,
                "per_s": None if self.time_wait_s <= 0 else round(self.per_s, 3)}


def capacity(profile: str, time_wait_s: float, port_range: tuple[int, int] | None = None) -> Capacity:
    return Capacity(port_range or DEFAULT_PORT_RANGES.get(profile, DEFAULT_PORT_RANGES["linux"]), time_wait_s)


def peak_rate(per_second: Mapping[int, int], window_s: int) -> tuple[float, int | None]:
    """The highest mean rate (connections/s) over `window_s` consecutive whole seconds, and the first second
    of that window; `per_second` maps an epoch second to the connections started in it."""
    if not per_second:
        return 0.0, None
    window_s = max(window_s, 1)
    secs = sorted(per_second)
    best, best_at = 0, secs[0]
    total = 0
    lo = 0
    for s in secs:   # a sliding window over the seconds that have connections
        total += per_second[s]
        while secs[lo] <= s - window_s:
            total -= per_second[secs[lo]]
            lo += 1
        if total > best:
            best, best_at = total, secs[lo]
    return best / window_s, best_at


def forecast(rate: float, cap: Capacity) -> dict[str, object]:
    """Utilisation of one client address's ports to one destination at `rate`, and when it runs out."""
    if cap.time_wait_s <= 0:
        return {"utilisation": 0.0, "runs_out_after_s": None}
    util = rate / cap.per_s
    return {"utilisation": round(util, 4),
            "runs_out_after_s": round(cap.ports / rate, 3) if util > 1 else None}


def top(items: Iterable[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    """The n largest by count, ties by name (stable output)."""
    return sorted(items, key=lambda kv: (-kv[1], kv[0]))[:n]
