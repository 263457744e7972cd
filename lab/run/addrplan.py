"""Which documentation subnets the lab's namespaces use on this machine.

The lab's hosts live in namespaces with no route out, so their addresses never reach the host's network. Still,
a lab address that is also the host's own (or its gateway's) makes captures, logs and guards ambiguous: on some
machines the host's eth0 is 192.0.2.2/24 with the default gateway 192.0.2.1. So at start the lab reads the
host's addresses and routes and picks, for the veth pair, the first documentation subnet that overlaps none
of them; the choice is recorded in the run (event "addr-plan", result field "lab_subnets").
"""

from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
from dataclasses import dataclass

from lab.errors import EnvironmentProblem

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

PAIR4_CANDIDATES = ("192.0.2.0/24", "203.0.113.0/24")      # 198.51.100.0/24 is the TUN peer's (lab.kernel.peer)
PAIR6_CANDIDATES = ("2001:db8::/64", "2001:db8:7::/64", "2001:db8:7e1::/64")
TUN4 = "198.51.100.0/24"


@dataclass(frozen=True)
class Plan:
    pair4: str
    pair6: str
    tun4: str
    host_networks: tuple[str, ...]   # what was avoided: the host's own prefixes and routes

    def client4(self) -> str:
        return str(ipaddress.ip_network(self.pair4)[1])

    def server4(self) -> str:
        return str(ipaddress.ip_network(self.pair4)[2])

    def client6(self) -> str:
        return str(ipaddress.ip_network(self.pair6)[1])

    def server6(self) -> str:
        return str(ipaddress.ip_network(self.pair6)[2])

    def to_dict(self) -> dict[str, object]:
        return {"pair4": self.pair4, "pair6": self.pair6, "tun4": self.tun4, "avoided": list(self.host_networks)}


def _ip_json(argv: list[str]) -> list[dict[str, object]]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    try:
        data = json.loads(out.stdout or "[]")
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def host_networks() -> list[Net]:
    """The host namespace's configured prefixes, their addresses, route destinations and gateways (not default)."""
    nets: list[Net] = []

    def add(text: object, prefix: object = None) -> None:
        if not isinstance(text, str) or text == "default":
            return
        spec = f"{text}/{prefix}" if prefix is not None and "/" not in text else text
        try:
            nets.append(ipaddress.ip_network(spec, strict=False))
        except ValueError:
            return

    for link in _ip_json(["ip", "-j", "addr", "show"]):
        infos = link.get("addr_info", [])
        for a in infos if isinstance(infos, list) else []:
            if isinstance(a, dict):
                add(a.get("local"), a.get("prefixlen"))
                add(a.get("local"))
    for family in ("-4", "-6"):
        for r in _ip_json(["ip", family, "-j", "route", "show", "table", "all"]):
            add(r.get("dst"))
            add(r.get("gateway"))
    return [n for n in nets if not (n.is_loopback or n.is_link_local or n.is_multicast)]


def choose(host: list[Net]) -> Plan:
    """The first candidate of each family that overlaps nothing of the host's; EnvironmentProblem if none."""

    def free(cands: tuple[str, ...]) -> str:
        for c in cands:
            net = ipaddress.ip_network(c)
            if not any(net.version == h.version and net.overlaps(h) for h in host):
                return c
        raise EnvironmentProblem(f"every lab subnet ({', '.join(cands)}) overlaps this host's own networks",
                                 "run the lab on a machine (or VM) whose addresses are outside the documentation "
                                 "ranges")

    return Plan(pair4=free(PAIR4_CANDIDATES), pair6=free(PAIR6_CANDIDATES), tun4=TUN4,
                host_networks=tuple(sorted({str(h) for h in host})))


@functools.lru_cache(maxsize=1)
def current() -> Plan:
    """This process's plan, read once (call it from the host namespace: the runner does at start)."""
    return choose(host_networks())


def tun_overlaps_host(plan: Plan) -> bool:
    tun = ipaddress.ip_network(plan.tun4)
    return any(h.version == 4 and tun.overlaps(h) for h in (ipaddress.ip_network(n) for n in plan.host_networks))
