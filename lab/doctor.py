"""`twlab doctor`: can this machine run the lab, and what to do where it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from lab import accel
from lab.run.context import is_root, new_run_id

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


Need = Literal["essential", "optional"]

# what runs without each tool: a missing optional one costs only the commands named here
OPTIONAL_USE = {
    "tshark": "only 'twlab verify' needs it",
    "tcpdump": "not needed by the lab (its own capture is a raw socket); handy to compare",
    "nstat": "only the counters some experiments add to their evidence",
    "iptables": "only the experiments that drop or hold a segment (lost-final-ack, time-wait-zero, ...)",
    "nginx": "only http-close-side and proxy-port-exhaustion (a real nginx in lab namespaces)",
    "curl": "only http-close-side (the real HTTP client)",
}
ESSENTIAL = ("root", "CAP_NET_ADMIN", "CAP_NET_RAW", "ip", "netns")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    need: Need = "essential"

    def status(self) -> str:
        if self.ok:
            return "OK"
        return "missing" if self.need == "essential" else "missing (optional)"


def effective_caps() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _tool(name: str, fix: str) -> Check:
    path = shutil.which(name)
    need: Need = "optional" if name in OPTIONAL_USE else "essential"
    detail = path or ("not found: " + OPTIONAL_USE[name] if need == "optional" else "not found")
    return Check(name, path is not None, detail, "" if path else fix, need)


def _netns_usable() -> Check:
    if not is_root():
        return Check("netns", False, "needs root to create namespaces", "run as root")
    if not shutil.which("ip"):
        return Check("netns", False, "ip not found", "apt-get install -y iproute2")
    name = f"twl{new_run_id()}dr"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return Check("netns", False, made.stderr.strip() or "ip netns add failed",
                     "run on a host (or VM) where network namespaces are allowed; see the Vagrantfile")
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return Check("netns", True, f"created and removed {name}")


def checks() -> list[Check]:
    caps = effective_caps()
    root = is_root()
    out = [
        Check("root", root, f"euid {os.geteuid()}", "" if root else "run as root (sudo twlab ...)"),
        Check("CAP_NET_ADMIN", bool(caps >> CAP_NET_ADMIN & 1), "netns, iptables, sock_diag destroy",
              "" if caps >> CAP_NET_ADMIN & 1 else "run as root or grant CAP_NET_ADMIN"),
        Check("CAP_NET_RAW", bool(caps >> CAP_NET_RAW & 1), "packet capture and injection",
              "" if caps >> CAP_NET_RAW & 1 else "run as root or grant CAP_NET_RAW"),
        _tool("tshark", "apt-get install -y tshark (or run: bash setup.sh)"),
        _tool("tcpdump", "apt-get install -y tcpdump"),
        _tool("iptables", "apt-get install -y iptables"),
        _tool("ip", "apt-get install -y iproute2"),
        _tool("nstat", "apt-get install -y iproute2"),
        _tool("nginx", "apt-get install -y nginx (or run: bash setup.sh)"),
        _tool("curl", "apt-get install -y curl (or run: bash setup.sh)"),
        _netns_usable(),
        Check("accelerator", *accel.doctor_check(), need="optional"),
    ]
    from lab.run import resources

    left = resources.leftovers()
    out.append(Check("leftovers", not left, ", ".join(left) if left else "no lab resources left behind",
                     "twlab doctor --cleanup" if left else "", "optional"))
    return out


def essential_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.name in ESSENTIAL)
