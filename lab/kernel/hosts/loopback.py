"""The default host: this machine's loopback, with no namespace. The same minimal interface as
lab.kernel.hosts.netns.Namespace where it makes sense; settings are refused (the host's sysctls are not the lab's)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.errors import UsageError

HOST_ADDR4, HOST_ADDR6 = "127.0.0.1", "::1"


@dataclass
class Loopback:
    name: None = None                 # netns=None everywhere means "the host"
    role: str = "host"
    addr4: str = HOST_ADDR4
    addr6: str = HOST_ADDR6
    iface: str = "lo"
    settings: dict[str, str] = field(default_factory=dict)

    def sysctl(self, key: str, value: Any) -> str:
        raise UsageError(f"refusing to set {key} on the host",
                         "per-host settings live in lab namespaces: use lab.kernel.hosts.netns.Namespace")

    def read_sysctl(self, key: str) -> str:
        with open("/proc/sys/" + key.replace(".", "/"), encoding="ascii") as fh:
            return " ".join(fh.read().split())

    def run(self, argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(list(argv), check=check, **kw)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        yield

    def describe(self) -> dict[str, Any]:
        return {"name": None, "role": self.role, "addr4": self.addr4, "addr6": self.addr6, "iface": self.iface,
                "sysctls": {}}


@dataclass
class LoopbackPair:
    """Client and server both on the host's loopback (the topology of loopback experiments)."""

    client: Loopback = field(default_factory=Loopback)
    server: Loopback = field(default_factory=Loopback)

    def describe(self) -> dict[str, Any]:
        return {"client": self.client.describe(), "server": self.server.describe()}
