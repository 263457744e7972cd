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


def watch(ports: Sequence[int], netns: str | None, interval_s: float, once: bool, duration_s: float | None) -> None:
    from rich.live import Live

    from lab.kernel.sockdiag import sockets
    from lab.ui import console

    if netns is not None:
        check_netns(netns)
    where = f"netns {netns}" if netns else "this host"
    title = f"TCP sockets on {where}" + (f", ports {', '.join(map(str, ports))}" if ports else "")
    con = console()
    if once:
        con.print(snapshot_table(sockets(netns=netns, ports=tuple(ports)), title))
        return
    end = time.monotonic() + duration_s if duration_s else None
    with Live(console=con, refresh_per_second=4) as live:
        while end is None or time.monotonic() < end:
            live.update(snapshot_table(sockets(netns=netns, ports=tuple(ports)), title))
            time.sleep(interval_s)
