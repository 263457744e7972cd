"""The census of a capture (`analyze --json`'s `census`, the human "Census" section): folded from the
analyzer's finished records as they stream by (lab.core.census.Fold, compiled with the accelerator), in
memory that follows the capture's length and its distinct endpoints, not its connections; this module builds
the document from the fold's counts.

- time_wait: TIME_WAIT held at once per side (peak, when, a timeline), and the busiest local endpoints and
  peers (a server endpoint by ip:port, a client by address: its ports are ephemeral);
- open_at_end: sockets the capture leaves half-closed: CLOSE_WAIT (the application never closed) and
  FIN_WAIT_1/2, by endpoint;
- new_connections: per destination (server ip:port), the busiest client address's sustained rate of new
  connections against its ephemeral-port capacity (lab.core.census), and when it runs out above 100 %.
"""

from __future__ import annotations

from typing import Any

from lab.core import census as cc
from lab.core.report import Connection, Finding

_TOP = 10                    # rows per "by ..." list
_SIDES = ("client", "server")


def _rel(ts: float | None, t0: float) -> float | None:
    return None if ts is None else round(ts - t0, 6)


def _rows(keyed: cc.Keyed, start: float, end: float, t0: float, label: str) -> list[dict[str, Any]]:
    peaks = [(k, cc.sweep(s, start, end, 1)) for k, s in keyed.steps.items()]
    best = cc.top(((k, o.peak) for k, o in peaks), _TOP)
    occ = dict(peaks)
    return [{label: k, "windows": keyed.windows[k], "peak": p, "peak_ts": occ[k].peak_ts,
             "peak_t": _rel(occ[k].peak_ts, t0)} for k, p in best]


class CensusFold:
    """Receives batches of finished connections (the Records callback of lab.analysis.stream), folds them
    into `fold` (lab.core.census.Fold, compiled) and builds the census document at the end with result(...)."""

    def __init__(self) -> None:
        self.fold = cc.Fold()

    def __call__(self, conns: list[Connection], findings: list[Finding]) -> None:
        self.fold.add_all(conns)

    # --- the document ------------------------------------------------------------------------------------

    def result(self, profile: str, time_wait_s: float, port_range: tuple[int, int] | None = None,
               capture_first_ts: float | None = None, capture_last_ts: float | None = None) -> dict[str, Any]:
        """The `census` object. Times: `*_ts` absolute (epoch s), `*_t` capture-relative (Wireshark's Time)."""
        f = self.fold
        seen = f.first_ts != float("inf")        # any connection at all
        t0 = capture_first_ts if capture_first_ts is not None else (f.first_ts if seen else 0.0)
        start = min(t0, f.first_ts) if seen else t0
        end = max(capture_last_ts if capture_last_ts is not None else start, f.last_ts if seen else start)
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
            occ = cc.sweep(self.fold.side_steps[s], start, end)
            sides[s] = {"windows": self.fold.side_windows[s], **occ.to_dict(t0)}
        return {"sides": sides,
                "by_local": _rows(self.fold.by_local, start, end, t0, "endpoint"),
                "by_peer": _rows(self.fold.by_peer, start, end, t0, "peer")}

    def _open_at_end(self) -> dict[str, Any]:
        rows = cc.top(((f"{st} {ep}", n) for (st, ep), n in self.fold.open_by.items()), _TOP)
        states = self.fold.open_states
        return {"close_wait": states.get("CLOSE_WAIT", 0), "fin_wait_1": states.get("FIN_WAIT_1", 0),
                "fin_wait_2": states.get("FIN_WAIT_2", 0),
                "by_endpoint": [{"state": k.split(" ", 1)[0], "endpoint": k.split(" ", 1)[1], "sockets": n}
                                for k, n in rows]}

    def _new_connections(self, cap: cc.Capacity, span_s: float, t0: float) -> dict[str, Any]:
        # the rate that fills ports is the one sustained over a TIME_WAIT length (or the whole capture when
        # it is shorter): ports come back only when TIME_WAIT ends
        window = max(1, min(int(cap.time_wait_s), int(span_s) or 1))
        worst: dict[str, tuple[float, int | None, str]] = {}
        for (client, server), secs in self.fold.per_pair.items():
            rate, at = cc.peak_rate(secs, window)
            if server not in worst or rate > worst[server][0]:
                worst[server] = (rate, at, client)
        dests = []
        for server, n in cc.top(self.fold.per_dest.items(), _TOP):
            rate, at, client = worst[server]
            fc = cc.forecast(rate, cap)
            row: dict[str, Any] = {"server": server, "connections": n, "clients": len(self.fold.clients[server]),
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
