"""tcp-tw-recycle (explain only): the old advice "set net.ipv4.tcp_tw_recycle=1" cannot be followed any more: the
sysctl was removed in Linux 4.12 ("tcp: remove tcp_tw_recycle"). The lab checks that it is
absent on this kernel and says why it went; it does not try to reproduce what it broke.

Why it went: tw_recycle kept the last timestamp seen per peer *host* and dropped any SYN from that host whose TSval
was older (a per-host PAWS). Behind NAT many clients share one address, each with its own timestamp clock, so SYNs
of all but the client with the highest clock were silently dropped (connections from NATed users hanging in
SYN_SENT). Since Linux 4.10 each connection's timestamps start at a random offset (tcp_timestamps=1), so no two
connections of even one host share a clock, and a per-host check cannot work at all.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

from lab.run.context import Experiment, Outcome, RunContext

SYSCTL = Path("/proc/sys/net/ipv4/tcp_tw_recycle")
TIMESTAMPS = Path("/proc/sys/net/ipv4/tcp_timestamps")
REMOVED_IN = (4, 12)
TIMESTAMP_MODES = {"0": "timestamps off", "1": "on, a random offset per connection (since 4.10)",
                   "2": "on, no random offset"}


def _release_tuple(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def run(ctx: RunContext) -> Outcome:
    release = platform.release()
    version = _release_tuple(release)
    present = SYSCTL.exists()
    stamps = _read(TIMESTAMPS)
    ctx.events.log("sysctl-check", path=str(SYSCTL), present=present, tcp_timestamps=stamps)
    should_be_gone = version is not None and version >= REMOVED_IN
    story = [
        (f"look for {SYSCTL} on this kernel ({release})",
         "absent: the sysctl does not exist, it cannot be set" if not present
         else "present (a kernel older than 4.12)"),
        ("read net.ipv4.tcp_timestamps (read only)",
         f"{stamps}: {TIMESTAMP_MODES.get(stamps or '', 'unknown')}"),
    ]
    notes = ["tcp_tw_recycle was removed in Linux 4.12: its per-host timestamp check dropped SYNs from clients behind "
             "NAT (one address, many timestamp clocks), and per-connection random timestamp offsets (4.10) made it "
             "wrong even for a single host. The remaining knob is tcp_tw_reuse (for outgoing connections, with "
             "timestamps: see ephemeral-exhaustion). Nothing was reproduced here."]
    obs: dict[str, Any] = {"lore_holds": not present, "sysctl_present": present, "kernel": release,
                           "removed_in": ".".join(map(str, REMOVED_IN)), "kernel_should_lack_it": should_be_gone,
                           "tcp_timestamps": stamps, "explain_only": True}
    return Outcome(reproduced=not present, observations=obs, story=story, notes=notes,
                   skipped=["no reproduction: the sysctl is gone from this kernel (explain only)"])


EXPERIMENT = Experiment(
    id="tcp-tw-recycle",
    claim="net.ipv4.tcp_tw_recycle no longer exists (removed in Linux 4.12): it broke clients behind NAT.",
    lore="'Set tcp_tw_recycle=1 to get rid of TIME_WAIT' (old tuning guides); it dropped SYNs from NATed clients.",
    run=run,
    topology="none",
    needs_root=False,
    duration_hint_s=0.1,
    tags=("time-wait", "sysctl", "explain-only", "wave2"),
)
