"""Which segments of a capture to analyze: `--port`, `--host`, `--since`, `--until`.

Port and host select whole four-tuples (a segment matches when either end has the port or the address), so
a filtered connection is analyzed exactly as unfiltered. Times select segments, like `editcap -A/-B`:
a connection that began before `--since` is seen from the middle (`mid_capture`), as in a capture started
then. A time is capture-relative seconds (Wireshark's Time column: seconds after the capture's first
frame, e.g. `90` or `1.5`) or an ISO 8601 time (`2026-11-30T09:41:08Z`; without a zone: this machine's local
time, as `date` prints it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from lab.errors import UsageError

__all__ = ["FILTERED", "SegmentFilter", "TimeBound", "parse_host", "parse_time"]

FILTERED = "filtered-out"   # ReaderStats.skipped key: TCP segments the filter left out
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TimeBound:
    """A time as the user wrote it: seconds after the capture's first frame, or an absolute epoch time."""

    seconds: float
    relative: bool

    def absolute(self, t0: float) -> float:
        return t0 + self.seconds if self.relative else self.seconds


def parse_time(text: str) -> TimeBound:
    """`90`, `1.5` (capture-relative seconds) or an ISO 8601 time; one UsageError otherwise."""
    try:
        return TimeBound(float(text), True)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"time {text!r} is neither seconds nor an ISO 8601 time",
                         "give seconds after the capture's first frame (e.g. 90) or e.g. 2026-11-30T09:41:08Z"
                         ) from None
    return TimeBound(when.timestamp(), False)   # naive: local time (datetime.timestamp's rule)


def parse_host(text: str) -> _Net:
    """An address or a network (`192.0.2.7`, `2001:db8::/32`)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"host {text!r} is not an IP address or network",
                         "give e.g. 192.0.2.7, 198.51.100.0/24 or 2001:db8::1") from None


class SegmentFilter:
    """keep(...) per TCP segment; first(ts) once with the capture's first frame (the zero of relative times)."""

    def __init__(self, ports: tuple[int, ...] = (), hosts: tuple[str, ...] = (), since: str | None = None,
                 until: str | None = None) -> None:
        self.ports = frozenset(ports)
        self.nets = tuple(parse_host(h) for h in hosts)
        self.since = parse_time(since) if since is not None else None
        self.until = parse_time(until) if until is not None else None
        self.lo = float("-inf")
        self.hi = float("inf")
        self._addr: dict[str, bool] = {}   # address text -> inside one of the networks
        if self.since is not None and not self.since.relative:
            self.lo = self.since.seconds
        if self.until is not None and not self.until.relative:
            self.hi = self.until.seconds
        self.t0: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.ports or self.nets or self.since is not None or self.until is not None)

    def first(self, ts: float) -> None:
        """The capture's first frame: relative times count from here."""
        if self.t0 is not None:
            return
        self.t0 = ts
        if self.since is not None:
            self.lo = self.since.absolute(ts)
        if self.until is not None:
            self.hi = self.until.absolute(ts)

    def _host(self, ip: str) -> bool:
        hit = self._addr.get(ip)
        if hit is None:
            addr = ipaddress.ip_address(ip)
            hit = any(addr in n for n in self.nets)
            if len(self._addr) > 65_536:
                self._addr.clear()
            self._addr[ip] = hit
        return hit

    def keep(self, src: str, sport: int, dst: str, dport: int, ts: float) -> bool:
        if self.t0 is None:
            self.first(ts)
        if ts < self.lo or ts > self.hi:
            return False
        if self.ports and sport not in self.ports and dport not in self.ports:
            return False
        return not self.nets or self._host(src) or self._host(dst)
