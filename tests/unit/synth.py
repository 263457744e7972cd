"""Synthetic but realistic TCP segment streams for the analyzer's unit and property tests.

A `Capture` numbers frames and keeps time; a `Flow` is one incarnation between two endpoints whose sides
track their own snd_nxt and what they have received (their ACK field). A segment sent with deliver=False
is captured but has not reached the peer yet (crossed FINs, a lost final ACK): call flow.deliver(seg)
later, or never (lost after the capture point). Segments lost *before* the capture point are simply
never added (flow.send(..., capture=False)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab.core.model import Flags, Segment
from lab.pcap.annotate import PcapngWriter
from lab.pcap.readers import iter_frames

M32 = 0xFFFFFFFF
F, S, R, P, A = Flags.FIN, Flags.SYN, Flags.RST, Flags.PSH, Flags.ACK


@dataclass
class Capture:
    segments: list[Segment] = field(default_factory=list)
    t: float = 1_700_000_000.0
    frame: int = 0

    def add(self, seg: Segment) -> Segment:
        self.segments.append(seg)
        return seg

    def flow(self, client: tuple[str, int] = ("192.0.2.1", 40000), server: tuple[str, int] = ("192.0.2.2", 80),
             cisn: int = 1000, sisn: int = 50000, ts: bool = False, cts: int = 100, sts: int = 9000) -> Flow:
        return Flow(self, client, server, cisn, sisn, ts, cts, sts)


@dataclass
class _End:
    ip: str
    port: int
    isn: int
    nxt: int
    rcv: int | None = None       # what it ACKs
    ts0: int = 0
    win: int = 65535
    wscale: int | None = None    # the window-scale shift its SYN offers


class Flow:
    def __init__(self, cap: Capture, client: tuple[str, int], server: tuple[str, int], cisn: int, sisn: int,
                 ts: bool, cts: int, sts: int) -> None:
        self.cap = cap
        self.ends = {"client": _End(client[0], client[1], cisn & M32, cisn & M32, ts0=cts),
                     "server": _End(server[0], server[1], sisn & M32, sisn & M32, ts0=sts)}
        self.ts = ts
        self.t_start = cap.t
        self.sent: dict[int, tuple[str, Segment]] = {}

    @staticmethod
    def other(side: str) -> str:
        return "server" if side == "client" else "client"

    def tsval(self, side: str, t: float | None = None) -> int:
        return (self.ends[side].ts0 + int(((t if t is not None else self.cap.t) - self.t_start) * 1000)) & M32

    def send(self, side: str, flags: int = A, data: int = 0, *, seq: int | None = None, ack: int | None = None,
             dt: float = 0.001, deliver: bool = True, capture: bool = True, tsval: int | None = None,
             ts: bool | None = None, advance: bool = True) -> Segment:
        """Send one segment from `side`. seq defaults to snd_nxt (retransmit: pass the old seq and advance=False)."""
        me, peer = self.ends[side], self.ends[self.other(side)]
        self.cap.t += dt
        s = me.nxt if seq is None else seq & M32
        if ack is None and flags & A:
            ack = me.rcv if me.rcv is not None else 0
        use_ts = self.ts if ts is None else ts
        tv = tsval if tsval is not None else (self.tsval(side) if use_ts else None)
        tsecr = None
        if use_ts:
            tsecr = self.tsval(self.other(side)) if flags & A else 0
        length = data + (1 if flags & S else 0) + (1 if flags & F else 0)
        frame = 0
        if capture:
            self.cap.frame += 1
            frame = self.cap.frame
        seg = Segment(frame, self.cap.t, me.ip, me.port, peer.ip, peer.port, s, (ack or 0) & M32, int(flags),
                      me.win, data, tv, tsecr, (), me.wscale if flags & S else None)
        if advance and seq is None:
            me.nxt = (me.nxt + length) & M32
        elif advance and ((s + length - me.nxt) & M32) < (1 << 31) and (s + length) & M32 != me.nxt:
            me.nxt = (s + length) & M32
        if capture:
            self.cap.add(seg)
        if deliver:
            self.deliver(seg)
        return seg

    def deliver(self, seg: Segment) -> None:
        """The peer of the sender receives seg: its ACK field moves past it (in-order assumption)."""
        to = "server" if (seg.src_ip, seg.sport) == (self.ends["client"].ip, self.ends["client"].port) else "client"
        end = (seg.seq + seg.seg_len) & M32
        r = self.ends[to]
        if seg.flags & S or (r.rcv is not None and seg.seg_len and ((end - r.rcv) & M32) < (1 << 31)):
            r.rcv = end

    # -- building blocks --------------------------------------------------------------------------------

    def handshake(self) -> list[Segment]:
        return [self.send("client", S), self.send("server", S | A), self.send("client", A)]

    def data(self, side: str, n: int = 100) -> Segment:
        return self.send(side, P | A, n)

    def ack(self, side: str, **kw: object) -> Segment:
        return self.send(side, A, **kw)  # type: ignore[arg-type]

    def fin(self, side: str, data: int = 0, **kw: object) -> Segment:
        return self.send(side, F | A, data, **kw)  # type: ignore[arg-type]

    def rst(self, side: str, **kw: object) -> Segment:
        return self.send(side, R, **kw)  # type: ignore[arg-type]

    def four_way(self, first: str = "client") -> list[Segment]:
        second = self.other(first)
        return [self.fin(first), self.ack(second), self.fin(second), self.ack(first)]

    def three_way(self, first: str = "client") -> list[Segment]:
        second = self.other(first)
        return [self.fin(first), self.fin(second), self.ack(first)]

    def simultaneous(self, first: str = "client") -> list[Segment]:
        second = self.other(first)
        a = self.fin(first, deliver=False)
        b = self.fin(second, deliver=False)
        self.deliver(a)
        self.deliver(b)
        return [a, b, self.ack(first), self.ack(second)]

    @property
    def client_nxt(self) -> int:
        return self.ends["client"].nxt

    @property
    def server_nxt(self) -> int:
        return self.ends["server"].nxt


def repeated(src: Path, dst: Path, times: int, gap_s: float = 1000.0) -> Path:
    """`src` `times` times over as pcapng, each copy `gap_s` later: the same four-tuples come back as new
    incarnations."""
    frames = list(iter_frames(src))
    with dst.open("wb") as out:
        w = PcapngWriter(out)
        for k in range(times):
            for fr in frames:
                w.write(fr.ts_ns + int(k * gap_s * 1e9), fr.data, fr.orig_len, interface=fr.interface,
                        linktype=fr.linktype)
    return dst
