"""Records the analyzers work on: endpoints, four-tuples and TCP segments."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Flags(enum.IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80

    @staticmethod
    def text(flags: int) -> str:
        """tcpdump-style flag letters, e.g. 'F.' for FIN+ACK, 'S' for SYN."""
        out = "".join(ch for bit, ch in _LETTERS if flags & bit)
        if flags & Flags.ACK:
            out += "."
        return out or "none"


_LETTERS = ((Flags.SYN, "S"), (Flags.FIN, "F"), (Flags.RST, "R"), (Flags.PSH, "P"), (Flags.URG, "U"),
            (Flags.ECE, "E"), (Flags.CWR, "W"))


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class FourTuple:
    """A direction-free connection key: the two endpoints in sorted order."""

    a: Endpoint
    b: Endpoint

    @staticmethod
    def of(src: Endpoint, dst: Endpoint) -> FourTuple:
        return FourTuple(src, dst) if src <= dst else FourTuple(dst, src)

    def __str__(self) -> str:
        return f"{self.a} <-> {self.b}"


class Segment(NamedTuple):
    """One TCP segment as seen at the capture point.

    A NamedTuple rather than a frozen dataclass: readers build one per packet and
    tuple construction is several times cheaper (measured in benchmarks/).
    `frame` is 1-based and equals tshark's frame.number; `ts_s` is capture time in seconds.
    """

    frame: int
    ts_s: float
    src_ip: str
    sport: int
    dst_ip: str
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 65535
    payload_len: int = 0
    tsval: int | None = None
    tsecr: int | None = None
    comments: tuple[str, ...] = ()
    wscale: int | None = None    # the window-scale shift a SYN offers (None: no WS option, or not a SYN)

    @property
    def src(self) -> Endpoint:
        return Endpoint(self.src_ip, self.sport)

    @property
    def dst(self) -> Endpoint:
        return Endpoint(self.dst_ip, self.dport)

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return self.payload_len + (1 if self.flags & Flags.SYN else 0) + (1 if self.flags & Flags.FIN else 0)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)
