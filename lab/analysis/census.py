"""The census of a capture (`analyze --json`'s `census`, the human "Census" section): folded from the
analyzer's finished records as they stream by, in memory that follows the capture's length and its
distinct endpoints, not its connections.

- time_wait: TIME_WAIT held at once per side (peak, when, a timeline), and the busiest local endpoints and
  peers (a server endpoint by ip:port, a client by address: its ports are ephemeral);
- open_at_end: sockets the capture leaves half-closed: CLOSE_WAIT (the application never closed) and
  FIN_WAIT_1/2, by endpoint;
- new_connections: per destination (server ip:port), the busiest client address's sustained rate of new
  connections against its ephemeral-port capacity (lab.core.census), and when it runs out above 100 %.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lab.core import census as cc
from lab.core.report import Connection, Finding

_TOP = 10                    # rows per "by ..." list
_MAX_KEYS = 10_000           # endpoints tracked one by one; the rest are counted under "(other)"
_OTHER = "(other)"
_SIDES = ("client", "server")


def _rel(ts: float | None, t0: float) -> float | None:
    return None if ts is None else round(ts - t0, 6)


def _other_side(side: str) -> str:
    return "server" if side == "client" else "client"


@dataclass
class _Keyed:
    """Occupancy steps per key, for a bounded number of keys."""

    steps: dict[str, dict[int, int]] = field(default_factory=dict)
    windows: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, start: float, end: float) -> None:
        if key not in self.steps and len(self.steps) >= _MAX_KEYS:
            key = _OTHER
        cc.add_window(self.steps.setdefault(key, {}), start, end)
        self.windows[key] += 1

    def rows(self, start: float, end: float, t0: float, label: str) -> list[dict[str, Any]]:
        peaks = [(k, cc.sweep(s, start, end, 1)) for k, s in self.steps.items()]
        best = cc.top(((k, o.peak) for k, o in peaks), _TOP)
        occ = dict(peaks)
        return [{label: k, "windows": self.windows[k], "peak": p, "peak_ts": occ[k].peak_ts,
                 "peak_t": _rel(occ[k].peak_ts, t0)} for k, p in best]


class CensusFold:
    """Receives batches of finished connections (the Records callback of lab.analysis.stream) and builds
    the census document at the end with result(...)."""

    def __init__(self) -> None:
        self.side_steps: dict[str, dict[int, int]] = {s: {} for s in _SIDES}
        self.side_windows: Counter[str] = Counter()
        self.by_local = _Keyed()
        self.by_peer = _Keyed()
        self.open_states: Counter[str] = Counter()
        self.open_by: Counter[tuple[str, str]] = Counter()      # (state, endpoint key)
        self.per_pair: dict[tuple[str, str], dict[int, int]] = {}   # (client address, server) -> second -> new
        self.per_dest: Counter[str] = Counter()
        self.clients: dict[str, set[str]] = {}
        self.first_ts = float("inf")
        self.last_ts = float("-inf")

    def __call__(self, conns: list[Connection], findings: list[Finding]) -> None:
        for c in conns:
            self.add(c)

    def add(self, c: Connection) -> None:
        if c.first_ts < self.first_ts:
            self.first_ts = c.first_ts
        if c.last_ts > self.last_ts:
            self.last_ts = c.last_ts
        for w in c.time_wait:
            if w.side not in self.side_steps:
                continue
            cc.add_window(self.side_steps[w.side], w.start_ts, w.end_ts)
            self.side_windows[w.side] += 1
            local = c.client if w.side == "client" else c.server
            peer = c.server if w.side == "client" else c.client
            self.by_local.add(cc.client_key(w.side, local), w.start_ts, w.end_ts)
            self.by_peer.add(cc.client_key(_other_side(w.side), peer), w.start_ts, w.end_ts)
        half_closed = cc.open_states(c.close.kind, c.close.initiator, len(c.close.frames))
        if not getattr(c, "open_at_end", True):   # the analyzer saw it end otherwise (e.g. a later incarnation)
            half_closed = {}
        for side, state in half_closed.items():
            self.open_states[state] += 1
            self.open_by[state, cc.client_key(side, c.client if side == "client" else c.server)] += 1
        if not c.mid_capture:
            self._new_connection(c)

    def _new_connection(self, c: Connection) -> None:
        client = cc.host_of(c.client)
        pair = (client, c.server)
        secs = self.per_pair.get(pair)
        if secs is None:
            if len(self.per_pair) >= _MAX_KEYS:
                pair = (_OTHER, c.server)
            secs = self.per_pair.setdefault(pair, {})
        s = int(c.first_ts)
        secs[s] = secs.get(s, 0) + 1
        self.per_dest[c.server] += 1
        seen = self.clients.setdefault(c.server, set())
        if len(seen) < _MAX_KEYS:
            seen.add(client)

    # --- the document ------------------------------------------------------------------------------------

    def result(self, profile: str, time_wait_s: float, port_range: tuple[int, int] | None = None,
               capture_first_ts: float | None = None, capture_last_ts: float | None = None) -> dict[str, Any]:
        """The `census` object. Times: `*_ts` absolute (epoch s), `*_t` capture-relative (Wireshark's Time)."""
        seen = self.first_ts != float("inf")        # any connection at all
        t0 = capture_first_ts if capture_first_ts is not None else (self.first_ts if seen else 0.0)
        start = min(t0, self.first_ts) if seen else t0
        end = max(capture_last_ts if capture_last_ts is not None else start, self.last_ts if seen else start)
        cap = cc.capacity(profile, time_wait_s, port_range)
        return {
            "resolution_s": cc.RESOLUTION_S,
            "capture": {"first_ts": start, "last_ts": end, "duration_s": round(end - start, 6)},
            "time_wait": self._time_wait(start, end, t0),
            "open_at_end": self._open_at_end(),
            "new_connections": self._new_connections(cap, end - start, t0),
        }

    def _time_wait(self, start: float, end: float, t0: float) -> dict[str, Any]:
        sides = {}
        for s in _SIDES:
            occ = cc.sweep(self.side_steps[s], start, end)
            sides[s] = {"windows": self.side_windows[s], **occ.to_dict(t0)}
        return {"sides": sides,
                "by_local": self.by_local.rows(start, end, t0, "endpoint"),
                "by_peer": self.by_peer.rows(start, end, t0, "peer")}

    def _open_at_end(self) -> dict[str, Any]:
        rows = cc.top(((f"{st} {ep}", n) for (st, ep), n in self.open_by.items()), _TOP)
        return {"close_wait": self.open_states["CLOSE_WAIT"], "fin_wait_1": self.open_states["FIN_WAIT_1"],
                "fin_wait_2": self.open_states["FIN_WAIT_2"],
                "by_endpoint": [{"state": k.split(" ", 1)[0], "endpoint": k.split(" ", 1)[1], "sockets": n}
                                for k, n in rows]}

    def _new_connections(self, cap: cc.Capacity, span_s: float, t0: float) -> dict[str, Any]:
        # the rate that fills ports is the one sustained over a TIME_WAIT length (or the whole capture when
        # it is shorter): ports come back only when TIME_WAIT ends
        window = max(1, min(int(cap.time_wait_s), int(span_s) or 1))
        worst: dict[str, tuple[float, int | None, str]] = {}
        for (client, server), secs in self.per_pair.items():
            rate, at = cc.peak_rate(secs, window)
            if server not in worst or rate > worst[server][0]:
                worst[server] = (rate, at, client)
        dests = []
        for server, n in cc.top(self.per_dest.items(), _TOP):
            rate, at, client = worst[server]
            fc = cc.forecast(rate, cap)
            row: dict[str, Any] = {"server": server, "connections": n, "clients": len(self.clients[server]),
                                   "busiest_client": client, "rate_per_s": round(rate, 3), "window_s": window,
                                   "window_t": None if at is None else round(max(at - t0, 0.0), 6), **fc}
            out_after = fc["runs_out_after_s"]
            row["runs_out_t"] = (None if out_after is None or row["window_t"] is None
                                 else round(row["window_t"] + float(out_after), 3))  # type: ignore[arg-type]
            dests.append(row)
        over = any(d["utilisation"] > 1 for d in dests)
        return {"capacity": cap.to_dict(), "destinations": dests, "fixes": list(cc.FIXES) if over else []}


def sparkline(values: list[int] | tuple[int, ...]) -> str:
    """▁▂▃▄▅▆▇█ scaled to the largest value (blank for an all-zero series)."""
    bars = "▁▂▃▄▅▆▇█"
    top_v = max(values, default=0)
    if top_v <= 0:
        return " " * len(values)
    return "".join(" " if v == 0 else bars[min(len(bars) - 1, (v * (len(bars) - 1) + top_v - 1) // top_v)]
                   for v in values)
