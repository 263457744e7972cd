"""Lab hosts in network namespaces (pyroute2): one namespace, or a client/server pair joined by a veth.

    ns = Namespace.create(ctx, "k", sysctls={"net.ipv4.tcp_timestamps": 0})
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", 0)     # inside the namespace only; recorded in ns.settings
    ns.run(["ss", "-tan"])                            # ip netns exec
    with ns.entered(): s = socket.socket()           # this thread's new sockets belong to ns

    pair = NetnsPair.create(ctx, client_sysctls={...}, server_sysctls={...})
    pair.client.addr4, pair.server.addr4, pair.client.iface

Every name is ctx.name(role) ('twl' + run id + role), recorded in the run's ledger and removed on
ctx.stack, so teardown runs in reverse order on success, exception, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import EnvironmentProblem
from lab.kernel.sockdiag import in_netns
from lab.run import addrplan
from lab.run.context import scaled

if TYPE_CHECKING:
    from lab.run.context import RunSpace

PREFIX4, PREFIX6 = 24, 64   # the pair's subnets: lab.run.addrplan


@contextlib.contextmanager
def _iproute(netns: str) -> Iterator[Any]:
    """A pyroute2 IPRoute whose netlink socket was opened by this thread inside `netns` (no fork)."""
    from pyroute2 import IPRoute

    with in_netns(netns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _sysctl_path(key: str) -> str:
    if not key.startswith("net."):
        raise ValueError(f"{key}: only per-namespace net.* sysctls may be set by the lab")
    return "/proc/sys/" + key.replace(".", "/")


def _value_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "\t".join(str(v) for v in value)
    return str(value)


@dataclass
class Namespace:
    ctx: RunSpace
    name: str
    role: str
    settings: dict[str, str] = field(default_factory=dict)
    addr4: str | None = None
    addr6: str | None = None
    iface: str | None = None
    owner_pid: int = field(default_factory=os.getpid)

    @classmethod
    def create(cls, ctx: RunSpace, role: str, sysctls: Mapping[str, Any] | None = None) -> Namespace:
        if not ctx.root:
            raise EnvironmentProblem("lab namespaces need root", "run as root: sudo twlab run ...")
        name = ctx.name(role)
        ctx.ledger.add("netns", name)   # before creating: a crash in between still leaves a record
        # `ip netns add`, not pyroute2's netns.create/IPRoute(netns=...): those fork this Python process, and a
        # forked copy that receives SIGTERM would unwind the run's teardown stack too
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if made.returncode != 0:
            ctx.ledger.discard("netns", name)
            raise EnvironmentProblem(f"cannot create network namespace {name}: {made.stderr.strip()}",
                                     "run as root on a host where network namespaces are allowed")
        ns = cls(ctx, name, role)
        ctx.stack.callback(ns.remove)
        ctx.events.log("netns", action="add", name=name, role=role)
        with _iproute(name) as ipr:
            lo = ipr.link_lookup(ifname="lo")
            ipr.link("set", index=lo[0], state="up")
        for k, v in (sysctls or {}).items():
            ns.sysctl(k, v)
        return ns

    def remove(self) -> None:
        if os.getpid() != self.owner_pid:   # a forked child never tears down the parent's run
            return
        if Path("/run/netns", self.name).exists():
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, text=True)
        self.ctx.ledger.discard("netns", self.name)
        self.ctx.events.log("netns", action="del", name=self.name)

    # -- settings ------------------------------------------------------------------------------

    def sysctl(self, key: str, value: Any) -> str:
        """Write a net.* sysctl inside this namespace (never the host's); returns the value read back."""
        path = _sysctl_path(key)
        text = _value_text(value)
        with in_netns(self.name):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            with open(path, encoding="ascii") as fh:
                got = " ".join(fh.read().split())
        self.settings[key] = got
        self.ctx.events.log("sysctl", netns=self.name, key=key, value=got)
        return got

    def read_sysctl(self, key: str) -> str:
        with in_netns(self.name), open(_sysctl_path(key), encoding="ascii") as fh:
            return " ".join(fh.read().split())

    # -- processes and sockets -----------------------------------------------------------------

    def run(self, argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        r = subprocess.run(["ip", "netns", "exec", self.name, *argv], **kw)
        if check and r.returncode != 0:
            raise EnvironmentProblem(f"{' '.join(argv)} in {self.name} failed: {(r.stderr or '').strip()[:200]}",
                                     "see the run's events.jsonl; twlab doctor checks the tools")
        return r

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread inside the namespace (sockets created here belong to it)."""
        with in_netns(self.name):
            yield

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "addr4": self.addr4, "addr6": self.addr6,
                "iface": self.iface, "sysctls": dict(self.settings)}


def _wait_ready(netns: str, ifname: str, timeout_s: float = 3.0) -> float:
    """Wait until the veth carries traffic: operstate UP and an IPv6 link-local address that is not tentative
    (before that, IPv6 SYNs are lost and connect() takes the 1 s SYN retransmission)."""
    t0 = time.monotonic()
    with _iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        while time.monotonic() - t0 < scaled(timeout_s):
            link = ipr.get_links(idx)[0]
            up = link.get_attr("IFLA_OPERSTATE") == "UP"
            ll = [a for a in ipr.get_addr(index=idx, family=socket.AF_INET6)
                  if str(a.get_attr("IFA_ADDRESS")).startswith("fe80") and not (a["flags"] & 0x40)]  # TENTATIVE
            if up and ll:
                break
            time.sleep(0.02)
    return time.monotonic() - t0


@dataclass
class NetnsPair:
    """Client and server namespaces joined by one veth, .1 <-> .2 of a documentation /24 and /64 that overlaps
    none of the host's own networks (lab.run.addrplan: 192.0.2.0/24 unless the host uses it, then
    203.0.113.0/24), no default route (nothing else is reachable)."""

    client: Namespace
    server: Namespace

    @classmethod
    def create(cls, ctx: RunSpace, client_sysctls: Mapping[str, Any] | None = None,
               server_sysctls: Mapping[str, Any] | None = None) -> NetnsPair:
        client = Namespace.create(ctx, "c", client_sysctls)
        server = Namespace.create(ctx, "s", server_sysctls)
        vc, vs = ctx.name("vc"), ctx.name("vs")
        # disable DAD before the addresses exist, so IPv6 is usable at once
        for ns in (client, server):
            for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
                with contextlib.suppress(OSError):
                    ns.sysctl(key, 0)
        ctx.ledger.add("link", vc, netns=client.name)
        with _iproute(client.name) as ipr:
            ipr.link("add", ifname=vc, kind="veth", peer={"ifname": vs, "net_ns_fd": server.name})
        ctx.events.log("link", action="add", name=vc, peer=vs, netns=client.name, peer_netns=server.name)
        plan = addrplan.current()   # documentation subnets that overlap none of the host's own (recorded in the run)
        for ns, ifname, a4, a6 in ((client, vc, plan.client4(), plan.client6()),
                                   (server, vs, plan.server4(), plan.server6())):
            with _iproute(ns.name) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=idx, address=a4, prefixlen=PREFIX4)
                ipr.addr("add", index=idx, address=a6, prefixlen=PREFIX6, flags=0x02)  # IFA_F_NODAD
                ipr.link("set", index=idx, state="up")
            ns.addr4, ns.addr6, ns.iface = a4, a6, ifname
        # the veth goes with its namespaces; nothing left to remove by hand
        ctx.ledger.discard("link", vc)
        waited = max(_wait_ready(client.name, vc), _wait_ready(server.name, vs))
        ctx.events.log("link", action="ready", name=vc, waited_s=round(waited, 3))
        return cls(client, server)

    def describe(self) -> dict[str, Any]:
        return {"client": self.client.describe(), "server": self.server.describe()}
