"""`twlab watch`: a live table of TCP sockets (states and TIME_WAIT timers) from sock_diag."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.table import Table


def _fmt_ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def snapshot_table(samples: Sequence[Any], title: str, limit: int = 40) -> Table:
    counts = Counter(s.state for s in samples)
    caption = "  ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no sockets"
    t = Table(title=title, caption=caption, expand=True)
    t.add_column("state", no_wrap=True)
    t.add_column("local")
    t.add_column("peer")
    t.add_column("timer", no_wrap=True)
    t.add_column("left", justify="right")
    t.add_column("TIME_WAIT bar (60 s)", ratio=1)
    order = sorted(samples, key=lambda s: (s.state != "TIME_WAIT", s.sport, s.dport))
    for s in order[:limit]:
        left_s = (s.expires_ms or 0) / 1000.0
        bar = ""
        if s.state == "TIME_WAIT":
            filled = max(0, min(30, round(left_s / 60.0 * 30)))
            bar = "[magenta]" + "█" * filled + "[/]" + "·" * (30 - filled)
        t.add_row(s.state, _fmt_ep(s.src, s.sport), _fmt_ep(s.dst, s.dport), s.timer or "-",
                  f"{left_s:.1f} s" if s.expires_ms else "-", bar)
    if len(order) > limit:
        t.add_row(f"... {len(order) - limit} more", "", "", "", "", "")
    return t


def check_netns(name: str) -> None:
    """A namespace that does not exist: one line that lists the ones that do (a typo is the usual cause)."""
    from pathlib import Path

    from lab.errors import UsageError

    root = Path("/run/netns")
    if "/" not in name and (root / name).exists():
        return
    existing = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    shown = ", ".join(existing[:12]) + (f" and {len(existing) - 12} more" if len(existing) > 12 else "")
    raise UsageError(f"no network namespace {name!r}",
                     f"existing: {shown}" if existing else "there are none ('ip netns list' shows them)")


# --- the census, live (issue 14): --state, --group-by, --json -------------------------------------------

GROUP_BY = ("port", "peer")
_CENSUS_STATES = ("TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT_2", "ESTABLISHED")   # the columns of a grouped table
_FIXED_ROWS = 13  # title, totals, a header wrapped on 3 lines at 80 columns, borders, "more", caption


def _service_port(s: Any, seen: Counter[int]) -> int:
    """Of a socket's two ports the one more sockets share (a service port; an ephemeral port belongs to one
    connection), the lower on a tie: a client's TIME_WAIT counts under the server port it went to."""
    a, b = s.sport, s.dport
    return a if (seen[a], -a) > (seen[b], -b) else b


def group_key(s: Any, by: str, seen: Counter[int] | None = None) -> str:
    """--group-by port: the service port (see _service_port); peer: the peer's address."""
    if by == "port":
        return str(_service_port(s, seen if seen is not None else Counter()))
    return str(s.dst)


def totals(samples: Sequence[Any]) -> Counter[str]:
    return Counter(s.state for s in samples)


def grouped(samples: Sequence[Any], by: str) -> list[tuple[str, Counter[str]]]:
    """Per group: sockets by state; the groups with the most TIME_WAIT (then most sockets) first."""
    groups: dict[str, Counter[str]] = {}
    seen: Counter[int] = Counter()
    for s in samples:
        seen[s.sport] += 1
        seen[s.dport] += 1
    for s in samples:
        groups.setdefault(group_key(s, by, seen), Counter())[s.state] += 1
    return sorted(groups.items(), key=lambda kv: (-kv[1]["TIME_WAIT"], -sum(kv[1].values()), kv[0]))


def totals_text(samples: Sequence[Any]) -> str:
    counts = totals(samples)
    return f"{len(samples)} sockets: " + ("  ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")


def grouped_table(samples: Sequence[Any], title: str, by: str, limit: int = 40) -> Table:
    """The census live: sockets per local port (or peer) and state; totals in the title, so they stay
    visible however many groups there are."""
    t = Table(title=f"{title}\n{totals_text(samples)}", expand=False)
    t.add_column("service port" if by == "port" else "peer", no_wrap=True)
    for st in _CENSUS_STATES:
        t.add_column(st, justify="right")
    t.add_column("other", justify="right")
    t.add_column("total", justify="right", style="bold")
    rows = grouped(samples, by)
    for key, c in rows[:limit]:
        other = sum(n for st, n in c.items() if st not in _CENSUS_STATES)
        t.add_row(key, *[str(c[st]) if c[st] else "-" for st in _CENSUS_STATES], str(other) if other else "-",
                  str(sum(c.values())))
    if len(rows) > limit:
        t.caption = f"{len(rows) - limit} more groups not shown"
    return t


def snapshot_doc(samples: Sequence[Any], where: str, by: str | None) -> dict[str, Any]:
    """One --json document (a line per snapshot)."""
    from lab import __version__

    doc: dict[str, Any] = {"schema": 1, "twlab": __version__, "kind": "watch", "where": where,
                           "ts": samples[0].wall_s if samples else time.time(), "sockets_total": len(samples),
                           # the dump's span: its sockets were read somewhere between ts and ts_end
                           "ts_end": samples[0].wall_end_s if samples else None,   # None: no socket, no span
                           "totals": dict(sorted(totals(samples).items()))}
    if by is not None:
        doc["group_by"] = by
        doc["groups"] = [{"key": k, "states": dict(sorted(c.items())), "total": sum(c.values())}
                         for k, c in grouped(samples, by)]
    else:
        doc["sockets"] = [{"state": s.state, "local": _fmt_ep(s.src, s.sport), "peer": _fmt_ep(s.dst, s.dport),
                           "timer": s.timer, "expires_ms": s.expires_ms} for s in samples]
    return doc


def watch(ports: Sequence[int], netns: str | None, interval_s: float, once: bool, duration_s: float | None,
          states: Sequence[str] = (), group_by: str | None = None, as_json: bool = False) -> None:
    import json

    from rich.live import Live

    from lab.kernel.sockdiag import sockets
    from lab.ui import console

    if netns is not None:
        check_netns(netns)
    where = f"netns {netns}" if netns else "this host"
    title = (f"TCP sockets on {where}" + (f", ports {', '.join(map(str, ports))}" if ports else "")
             + (f", {' '.join(states)}" if states else ""))
    con = console()

    def take() -> list[Any]:
        return sockets(netns=netns, ports=tuple(ports), states=tuple(states) or None)

    def view(samples: list[Any]) -> Table:
        rows = max(5, con.height - _FIXED_ROWS)   # the totals stay on screen at 80x24
        if group_by is not None:
            return grouped_table(samples, title, group_by, rows)
        return snapshot_table(samples, f"{title}\n{totals_text(samples)}", rows)

    end = time.monotonic() + duration_s if duration_s else None
    if as_json:
        while True:
            print(json.dumps(snapshot_doc(take(), where, group_by)), flush=True)
            if once or (end is not None and time.monotonic() >= end):
                return
            time.sleep(interval_s)
    if once:
        con.print(view(take()))
        return
    with Live(console=con, refresh_per_second=4) as live:
        while end is None or time.monotonic() < end:
            live.update(view(take()))
            time.sleep(interval_s)
