"""Records the analyzers work on: TCP flag bits, endpoints and TCP segments."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple

# TCP header flag bits, the one home: plain ints for hot paths (mypyc inlines Final ints), Flags names them
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80


def endpoint_text(ip: str, port: int) -> str:
    """'ip:port', with the IPv6 address in brackets: how every record and text names an endpoint."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Flags(enum.IntFlag):
    FIN = FIN
    SYN = SYN
    RST = RST
    PSH = PSH
    ACK = ACK
    URG = URG
    ECE = ECE
    CWR = CWR

    @staticmethod
    def text(flags: int) -> str:
        """tcpdump-style flag letters, e.g. 'F.' for FIN+ACK, 'S' for SYN."""
        out = "".join(ch for bit, ch in _LETTERS if flags & bit)
        if flags & ACK:
            out += "."
        return out or "none"


_LETTERS = ((Flags.SYN, "S"), (Flags.FIN, "F"), (Flags.RST, "R"), (Flags.PSH, "P"), (Flags.URG, "U"),
            (Flags.ECE, "E"), (Flags.CWR, "W"))


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return endpoint_text(self.ip, self.port)


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
    ipid: int | None = None      # the IPv4 Identification field (None: IPv6, or not read)

    @property
    def src(self) -> Endpoint:
        return Endpoint(self.src_ip, self.sport)

    @property
    def dst(self) -> Endpoint:
        return Endpoint(self.dst_ip, self.dport)

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return self.payload_len + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)
