"""Build the small encapsulation and fragment captures of tests/data/encap (run from the repo root:
`.venv/bin/python tests/data/encap/build.py`). Each file holds one short TCP exchange (SYN, SYN-ACK, a data
segment, FIN) inside one encapsulation, plus a packet that is not TCP. tests/unit/test_encap.py checks
twlab's segments against tshark on every file; nflog-kernel.pcap is not built here (a real kernel capture,
see test_encap.py)."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path

from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1AD, Dot1AH, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw, raw
from scapy.utils import PcapWriter

HERE = Path(__file__).resolve().parent
TS0 = 1_700_000_000.0

# inner endpoints (documentation ranges) and outer tunnel endpoints
C4, S4 = "192.0.2.1", "198.51.100.2"
C6, S6 = "2001:db8::1", "2001:db8:1::2"
T1, T2 = "203.0.113.1", "203.0.113.2"
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def exchange(v6: bool = False, cport: int = 40001, sport: int = 80) -> list[Packet]:
    """One connection's SYN, SYN-ACK, data, FIN (inner IP + TCP)."""
    ip: Callable[..., Packet] = IPv6 if v6 else IP
    c, s = (C6, S6) if v6 else (C4, S4)
    return [ip(src=c, dst=s) / TCP(sport=cport, dport=sport, flags="S", seq=1000),
            ip(src=s, dst=c) / TCP(sport=sport, dport=cport, flags="SA", seq=5000, ack=1001),
            ip(src=c, dst=s) / TCP(sport=cport, dport=sport, flags="PA", seq=1001, ack=5001) / Raw(b"hello"),
            ip(src=c, dst=s) / TCP(sport=cport, dport=sport, flags="FA", seq=1006, ack=5001)]


def eth(p: Packet, *tags: Packet) -> Packet:
    out: Packet = Ether(src=MAC1, dst=MAC2)
    for t in tags:
        out = out / t
    return out / p


def outer4(p: Packet | bytes, udp_dport: int, udp_sport: int = 49152) -> Packet:
    return Ether(src=MAC1, dst=MAC2) / IP(src=T1, dst=T2) / UDP(sport=udp_sport, dport=udp_dport) / p


def write(name: str, pkts: list[Packet | bytes], linktype: int = 1, endianness: str = "") -> None:
    frames = [p if isinstance(p, Packet) else Raw(p) for p in pkts]
    for i, f in enumerate(frames):
        f.time = TS0 + i * 0.001
    with PcapWriter(str(HERE / name), linktype=linktype, endianness=endianness) as w:
        for f in frames:
            w.write(f)


def mpls() -> None:
    cw = b"\0\0\0\0"   # pseudowire control word (RFC 4385)
    pkts: list[Packet | bytes] = [eth(p, MPLS(label=100, s=0), MPLS(label=200, s=1)) for p in exchange()]
    pkts += [eth(p, MPLS(label=300, s=1)) for p in exchange(v6=True, cport=40002)]
    pkts += [raw(Ether(src=MAC1, dst=MAC2, type=0x8847) / MPLS(label=400, s=1)) + cw
             + raw(eth(p)) for p in exchange(cport=40003)]
    pkts += [eth(eth(p), MPLS(label=500, s=1)) for p in exchange(cport=40004)]   # Ethernet PW without CW
    pkts.append(eth(IP(src=C4, dst=S4) / ICMP(), MPLS(label=100, s=1)))
    write("mpls.pcap", pkts)


def pppoe() -> None:
    pkts: list[Packet | bytes] = [Ether(src=MAC1, dst=MAC2) / PPPoE(sessionid=7) / PPP(proto=0x21) / p
                                  for p in exchange()]
    pkts += [Ether(src=MAC1, dst=MAC2) / PPPoE(sessionid=7) / PPP(proto=0x57) / p
             for p in exchange(v6=True, cport=40002)]
    pkts.append(Ether(src=MAC1, dst=MAC2) / PPPoE(sessionid=7) / PPP(proto=0xC021) / Raw(b"\x09\x01\x00\x08abcd"))
    write("pppoe.pcap", pkts)


def vxlan() -> None:
    pkts: list[Packet | bytes] = [outer4(VXLAN(vni=42) / eth(p), 4789) for p in exchange()]
    pkts += [outer4(VXLAN(vni=42) / eth(p, Dot1Q(vlan=5)), 4789) for p in exchange(v6=True, cport=40002)]
    pkts.append(outer4(VXLAN(vni=42) / eth(IP(src=C4, dst=S4) / ICMP()), 4789))
    pkts.append(outer4(VXLAN(flags=0, vni=42) / eth(exchange(cport=40004)[0]), 4789))   # no I flag: still read
    gpe = bytes([0x0C, 0, 0, 1]) + struct.pack("!I", 42 << 8)   # VXLAN-GPE: I and P flags, next protocol IPv4
    pkts += [outer4(gpe + raw(p), 4790) for p in exchange(cport=40003)]
    write("vxlan.pcap", pkts)


def geneve() -> None:
    opt = bytes.fromhex("0104 0101 00000001")   # one 8-byte option (class 0x0104, type 1, length 1 word)
    pkts: list[Packet | bytes] = [outer4(GENEVE(vni=9, proto=0x6558) / eth(p), 6081) for p in exchange()]
    pkts += [outer4(raw(GENEVE(vni=9, proto=0x86DD, optionlen=2)) + opt + raw(p), 6081)
             for p in exchange(v6=True, cport=40002)]
    pkts.append(outer4(GENEVE(vni=9, proto=0x0800) / IP(src=C4, dst=S4) / ICMP(), 6081))
    write("geneve.pcap", pkts)


def gre_udp() -> None:
    pkts: list[Packet | bytes] = [outer4(GRE(proto=0x0800) / p, 4754) for p in exchange()]
    pkts += [outer4(GRE(proto=0x86DD) / p, 4754) for p in exchange(v6=True, cport=40002)]
    pkts.append(outer4(GRE(proto=0x0800) / IP(src=C4, dst=S4) / ICMP(), 4754))
    write("gre-udp.pcap", pkts)


def teredo() -> None:
    origin = b"\x00\x00" + struct.pack("!H", 0xFFFF ^ 40000) + bytes(b ^ 0xFF for b in bytes([203, 0, 113, 9]))
    auth = b"\x00\x01\x02\x03" + b"id" + b"aut" + b"N" * 8 + b"\x00"
    ex = exchange(v6=True)
    pkts: list[Packet | bytes] = [
        outer4(ex[0], 3544, 51000),                      # client to server port
        outer4(origin + raw(ex[1]), 51000, 3544),        # with an origin indication
        outer4(auth + raw(ex[2]), 3544, 51000),          # with an authentication indication
        outer4(auth + origin + raw(ex[3]), 3544, 51000),
        outer4(IPv6(src=C6, dst=S6, nh=59), 3544, 51000),  # a bubble: no next header
    ]
    write("teredo.pcap", pkts)


def ayiya_header(next_header: int) -> bytes:
    # identity length 2^4 = 16 bytes (type 1: IPv6 address), signature 5 words (SHA-1), opcode 1 forward
    return bytes([0x41, 0x52, 0x11, next_header]) + struct.pack("!I", 1_700_000_000) + b"\x20\x01" + b"\0" * 14 \
        + b"S" * 20


def ayiya() -> None:
    pkts: list[Packet | bytes] = [outer4(ayiya_header(41) + raw(p), 5072, 5072) for p in exchange(v6=True)]
    pkts += [outer4(ayiya_header(4) + raw(p), 5072, 5072) for p in exchange(cport=40002)]
    pkts.append(outer4(bytes([0x41, 0x52, 0x10, 59]) + b"\0" * 4 + b"\0" * 16 + b"S" * 20, 5072, 5072))  # a nop
    write("ayiya.pcap", pkts)


def pbb() -> None:
    pkts: list[Packet | bytes] = [Ether(src=MAC1, dst=MAC2) / Dot1AD(vlan=10) / Dot1AH(isid=0x1234)
                                  / eth(p) for p in exchange()]
    pkts += [Ether(src=MAC1, dst=MAC2) / Dot1AH(isid=0x1234) / eth(p, Dot1Q(vlan=3))
             for p in exchange(v6=True, cport=40002)]
    write("pbb.pcap", pkts)


def vntag() -> None:
    def tag(p: Packet, et: int) -> bytes:
        return raw(Ether(src=MAC1, dst=MAC2, type=0x8926)) + b"\x80\x05\x00\x07" + struct.pack("!H", et) + raw(p)

    def etag(p: Packet) -> bytes:   # 802.1BR E-Tag: 6 bytes after its ethertype
        return raw(Ether(src=MAC1, dst=MAC2, type=0x893F)) + b"\x00\x00\x10\x05\x00\x00\x08\x00" + raw(p)
    pkts: list[Packet | bytes] = [tag(p, 0x0800) for p in exchange()]
    pkts += [tag(p, 0x86DD) for p in exchange(v6=True, cport=40002)]
    pkts += [etag(p) for p in exchange(cport=40003)]
    write("vntag.pcap", pkts)


def erspan() -> None:
    pkts: list[Packet | bytes] = [Ether(src=MAC1, dst=MAC2) / IP(src=T1, dst=T2) / GRE(proto=0x88BE, seqnum_present=1,
                                                                                          seqence_number=i)
                                  / ERSPAN_II(session_id=1) / eth(p) for i, p in enumerate(exchange())]
    pkts += [Ether(src=MAC1, dst=MAC2) / IP(src=T1, dst=T2) / GRE(proto=0x22EB, seqnum_present=1, seqence_number=i)
             / ERSPAN_III(session_id=2, o=0) / eth(p) for i, p in enumerate(exchange(v6=True, cport=40002))]
    write("erspan.pcap", pkts)


def nflog_record(p: Packet, little: bool = True) -> bytes:
    """A Linux NFLOG record as libpcap writes it: family, version, resource id, then TLVs in host order."""
    def tlv(t: int, v: bytes) -> bytes:
        h = struct.pack("<HH" if little else ">HH", 4 + len(v), t)
        return h + v + b"\0" * (-len(v) % 4)
    fam = 10 if p.haslayer(IPv6) else 2
    return (bytes([fam, 0]) + struct.pack("!H", 5) + tlv(1, struct.pack("!HBx", 0x0800, 3))
            + tlv(10, b"twl-test\0") + tlv(9, raw(p)))


def nflog() -> None:
    """TLVs in the writing host's byte order, which is the file's (libpcap and Wireshark swap them with it)."""
    four: list[Packet | bytes] = [nflog_record(p) for p in exchange()]
    four += [nflog_record(p) for p in exchange(v6=True, cport=40002)]
    write("nflog.pcap", four, linktype=239)
    write("nflog-be.pcap", [nflog_record(p, little=False) for p in exchange(v6=True, cport=40002)], linktype=239,
          endianness=">")


def fragments() -> None:
    """TCP in fragments: IPv4 in order, out of order and overlapping; IPv6; GTP-U whose outer IPv4 is
    fragmented; a datagram missing a piece (never complete)."""
    big = b"x" * 2000
    c4 = IP(src=C4, dst=S4, id=100) / TCP(sport=40001, dport=80, flags="PA", seq=1001, ack=5001) / Raw(big)
    pieces = fragment(c4, fragsize=600)
    pkts: list[Packet | bytes] = [eth(p) for p in exchange()[:2]]
    pkts += [eth(p) for p in pieces]                               # in order: datagram at the 4th piece
    c4b = IP(src=C4, dst=S4, id=101) / TCP(sport=40001, dport=80, flags="PA", seq=3001, ack=5001) / Raw(big)
    pb = fragment(c4b, fragsize=600)
    pkts += [eth(p) for p in (pb[2], pb[0], pb[3], pb[1])]         # out of order
    c4c = IP(src=C4, dst=S4, id=102) / TCP(sport=40001, dport=80, flags="PA", seq=5001, ack=5001) / Raw(b"y" * 1200)
    pc = fragment(c4c, fragsize=600)
    dup = pc[1].copy()
    dup.load = b"Z" * len(dup.load)                               # an overlapping later copy: first wins
    pkts += [eth(pc[0]), eth(pc[1]), eth(dup), eth(pc[2])]
    c4d = IP(src=C4, dst=S4, id=103) / TCP(sport=40001, dport=80, flags="PA", seq=6201, ack=5001) / Raw(big)
    pkts += [eth(p) for p in fragment(c4d, fragsize=600)[:-1]]     # the last piece never comes
    c6 = IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(id=77, nh=6)
    body = raw(TCP(sport=40002, dport=80, flags="PA", seq=1001, ack=5001) / Raw(b"v" * 1500))
    for off in range(0, len(body), 512):   # offsets in 8-byte units; hand-made so the test knows the pieces
        chunk = body[off:off + 512]
        pkts.append(eth(IPv6(src=C6, dst=S6) / IPv6ExtHdrFragment(id=77, nh=6, offset=off // 8,
                                                                  m=int(off + 512 < len(body))) / Raw(chunk)))
    del c6
    inner = IPv6(src=C6, dst=S6) / TCP(sport=5060, dport=5060, flags="PA", seq=9, ack=1) / Raw(b"SIP" * 500)
    gtp = IP(src=T1, dst=T2, id=555) / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=1) / inner
    pkts += [eth(p) for p in fragment(gtp, fragsize=800)]
    pkts += [eth(exchange()[3])]
    write("fragments.pcap", pkts)


BUILDERS = [mpls, pppoe, vxlan, geneve, gre_udp, teredo, ayiya, pbb, vntag, erspan, nflog, fragments]

if __name__ == "__main__":
    for b in BUILDERS:
        if len(sys.argv) < 2 or b.__name__ in sys.argv[1:]:
            b()
