"""Encapsulations seen in public captures, as pure byte functions for lab.pcap.readers' decoder.

Each decoder takes the captured bytes and the offset of its header and returns (INNER, offset) -- what
follows and where: an IP packet (its version nibble decides), an Ethernet frame or a GRE header -- or a skip
reason (the same strings as lab.pcap.readers'). Nothing here keeps state or recurses: the reader walks on
from the returned offset (and bounds the depth).

- Ethernet payloads (ethertype): 802.1Q/802.1ad/QinQ tags, VN-Tag (0x8926), E-Tag (802.1BR, 0x893F), MPLS
  unicast/multicast (0x8847/0x8848: label stack, then IPv4/IPv6 by the first nibble, or an Ethernet
  pseudowire with or without a control word), PPPoE session (0x8864: PPP IPv4 0x0021 / IPv6 0x0057), PBB
  (802.1ah I-TAG 0x88E7: the customer's Ethernet frame follows), ERSPAN type II (0x88BE) and III (0x22EB).
- UDP ports: VXLAN 4789, VXLAN-GPE 4790, Geneve 6081, GRE-in-UDP 4754 (RFC 8086), Teredo 3544 (RFC 4380,
  with its authentication and origin indications), AYIYA 5072 (forward operation).
- Link type 239 NFLOG (Linux `iptables -j NFLOG`): the NFULA_PAYLOAD TLV holds the IP packet; TLV lengths
  and types are in the capturing host's byte order (libpcap writes them as they came), told apart here by
  which reading gives a sane TLV chain.
"""

from __future__ import annotations

IP = 0        # an IPv4 or IPv6 packet follows (its version nibble decides)
ETHER = 1     # an Ethernet frame follows
GRE = 2       # a GRE header follows

# skip reasons: the same strings as lab.pcap.readers' (tests/unit/test_encap.py checks they agree)
TRUNC = "truncated-packet"
NON_IP = "non-ip"
NON_TCP = "non-tcp"
MALFORMED = "malformed"

Inner = tuple[int, int] | str

LINKTYPE_NFLOG = 239

_TAGS = {0x8100: 4, 0x88A8: 4, 0x9100: 4, 0x8926: 6, 0x893F: 8}   # ethertype -> tag + next ethertype bytes
_MAX_TAGS = 8
_MAX_LABELS = 16
_PW_ETHERTYPES = frozenset({0x0800, 0x86DD, 0x8100, 0x88A8, 0x8847})

UDP_VXLAN = 4789
UDP_VXLAN_GPE = 4790
UDP_GENEVE = 6081
UDP_GRE = 4754
UDP_TEREDO = 3544
UDP_AYIYA = 5072


def _u16(buf: bytes, p: int) -> int:
    return (buf[p] << 8) | buf[p + 1]


def ethertype(et: int, buf: bytes, off: int, end: int) -> Inner:
    """What an Ethernet payload of type `et` at buf[off:end] carries (tags are walked here)."""
    for _ in range(_MAX_TAGS):
        size = _TAGS.get(et)
        if size is None:
            break
        if off + size > end:
            return TRUNC
        et = _u16(buf, off + size - 2)
        off += size
    if et == 0x0800 or et == 0x86DD:
        return IP, off
    if et == 0x8847 or et == 0x8848:
        return mpls(buf, off, end)
    if et == 0x8864:
        return pppoe_session(buf, off, end)
    if et == 0x88E7:
        return pbb(buf, off, end)
    if et == 0x88BE or et == 0x22EB:
        return erspan(et, buf, off, end)
    return NON_IP


def mpls(buf: bytes, off: int, end: int) -> Inner:
    """An MPLS label stack (RFC 3032) down to its bottom, then what Wireshark reads there: IPv4/IPv6 by the
    first nibble; a zero nibble is an Ethernet pseudowire, with or without a control word (RFC 4385)."""
    for _ in range(_MAX_LABELS):
        if off + 4 > end:
            return TRUNC
        bottom = buf[off + 2] & 1
        off += 4
        if bottom:
            break
    else:
        return MALFORMED
    if off >= end:
        return TRUNC
    nibble = buf[off] >> 4
    if nibble == 4 or nibble == 6:
        return IP, off
    if nibble == 0:   # an Ethernet pseudowire: after a control word when that reading gives a known ethertype
        if off + 18 <= end and _u16(buf, off + 16) in _PW_ETHERTYPES:
            return ETHER, off + 4
        return ETHER, off    # else without one (what tshark reads by default)
    return NON_IP


def pppoe_session(buf: bytes, off: int, end: int) -> Inner:
    """PPPoE session stage (RFC 2516): 6 bytes (version/type, code, session, length; read as tshark does,
    unchecked), then PPP: IPv4 0x0021, IPv6 0x0057 (a one-byte protocol field when compressed, RFC 1661 6.5)."""
    if off + 7 > end:
        return TRUNC
    p = off + 6
    if buf[p] & 1:
        proto, p = buf[p], p + 1
    elif p + 2 <= end:
        proto, p = _u16(buf, p), p + 2
    else:
        return TRUNC
    if proto == 0x21 or proto == 0x57:
        return IP, p
    return NON_IP


def pbb(buf: bytes, off: int, end: int) -> Inner:
    """802.1ah Provider Backbone Bridging: a 4-byte I-TAG, then the customer's whole Ethernet frame."""
    if off + 4 > end:
        return TRUNC
    return ETHER, off + 4


def erspan(et: int, buf: bytes, off: int, end: int) -> Inner:
    """ERSPAN type II (0x88BE: 8-byte header) or III (0x22EB: 12 bytes, + 8 with the O flag), then the
    mirrored Ethernet frame."""
    if et == 0x88BE:
        size = 8
    else:
        if off + 12 > end:
            return TRUNC
        size = 20 if buf[off + 11] & 1 else 12
    if off + size > end:
        return TRUNC
    return ETHER, off + size


# --- UDP -----------------------------------------------------------------------------------------------------

UDP_PORTS = frozenset({UDP_VXLAN, UDP_VXLAN_GPE, UDP_GENEVE, UDP_GRE, UDP_TEREDO, UDP_AYIYA})


def udp(sport: int, dport: int, buf: bytes, p: int, end: int) -> Inner | None:
    """The UDP payload at buf[p:end] by its port (destination first); None: no encapsulation port."""
    port = dport if dport in UDP_PORTS else sport if sport in UDP_PORTS else 0
    if port == 0:
        return None
    if port == UDP_VXLAN:
        return vxlan(buf, p, end)
    if port == UDP_VXLAN_GPE:
        return vxlan_gpe(buf, p, end)
    if port == UDP_GENEVE:
        return geneve(buf, p, end)
    if port == UDP_GRE:
        return (GRE, p) if p + 4 <= end else TRUNC
    if port == UDP_TEREDO:
        return teredo(buf, p, end)
    return ayiya(buf, p, end)


def vxlan(buf: bytes, p: int, end: int) -> Inner:
    """VXLAN (RFC 7348): 8 bytes, then Ethernet (the flags are not checked: tshark does not either)."""
    if p + 8 > end:
        return TRUNC
    return ETHER, p + 8


def vxlan_gpe(buf: bytes, p: int, end: int) -> Inner:
    """VXLAN-GPE: 8 bytes; next protocol 1 IPv4, 2 IPv6, 3 Ethernet."""
    if p + 8 > end:
        return TRUNC
    nxt = buf[p + 3]
    if nxt == 1 or nxt == 2:
        return IP, p + 8
    if nxt == 3:
        return ETHER, p + 8
    return NON_IP


def geneve(buf: bytes, p: int, end: int) -> Inner:
    """Geneve (RFC 8926): version 0, 8 bytes + options (length in 4-byte words), protocol type an ethertype."""
    if p + 8 > end:
        return TRUNC
    if buf[p] >> 6:
        return MALFORMED
    q = p + 8 + ((buf[p] & 0x3F) << 2)
    if q > end:
        return TRUNC
    proto = _u16(buf, p + 2)
    if proto == 0x6558:
        return ETHER, q
    return ethertype(proto, buf, q, end)


def teredo(buf: bytes, p: int, end: int) -> Inner:
    """Teredo (RFC 4380 5.1.1): optional authentication (0x0001) and origin (0x0000) indications, then IPv6."""
    if p + 2 <= end and buf[p] == 0 and buf[p + 1] == 1:   # authentication: ids, auth value, nonce, confirmation
        if p + 4 > end:
            return TRUNC
        p += 4 + buf[p + 2] + buf[p + 3] + 9
    if p + 2 <= end and buf[p] == 0 and buf[p + 1] == 0:   # origin indication
        p += 8
    if p >= end:
        return TRUNC
    if buf[p] >> 4 != 6:
        return NON_TCP
    return IP, p


def ayiya(buf: bytes, p: int, end: int) -> Inner:
    """AYIYA ("anything in anything", the SixXS tunnel): identity and signature lengths in the first two bytes,
    opcode 1 (forward) carries the packet whose IP protocol number is byte 3 (41 IPv6, 4 IPv4)."""
    if p + 8 > end:
        return TRUNC
    id_len = 1 << (buf[p] >> 4)
    sig_len = (buf[p + 1] >> 4) << 2
    if buf[p + 2] & 0x0F != 1 or (buf[p + 3] != 41 and buf[p + 3] != 4):
        return NON_TCP
    q = p + 8 + id_len + sig_len
    if q >= end:
        return TRUNC
    return IP, q


# --- link type 239 -----------------------------------------------------------------------------------------

_NFULA_PAYLOAD = 9


def nflog(buf: bytes, off: int, end: int) -> Inner:
    """A Linux NFLOG record: family, version, resource id (4 bytes), then TLVs (length incl. its 4-byte
    header, type; padded to 4 bytes); the packet is NFULA_PAYLOAD's value. Non-packet records: NON_IP."""
    if off + 4 > end:
        return TRUNC
    little = _tlv_chain_ok(buf, off + 4, end, True) or not _tlv_chain_ok(buf, off + 4, end, False)
    p = off + 4
    while p + 4 <= end:
        if little:
            tlen, ttype = buf[p] | (buf[p + 1] << 8), buf[p + 2] | (buf[p + 3] << 8)
        else:
            tlen, ttype = _u16(buf, p), _u16(buf, p + 2)
        if tlen < 4:
            return MALFORMED
        if ttype & 0x7FFF == _NFULA_PAYLOAD:   # the top bit is netlink's NLA_F_NESTED/byte-order flags
            return (IP, p + 4) if p + 4 < end else TRUNC
        p += (tlen + 3) & ~3
    return NON_IP


def _tlv_chain_ok(buf: bytes, p: int, end: int, little: bool) -> bool:
    """Whether the TLVs from p read in this byte order step exactly to the end or to a payload TLV."""
    for _ in range(64):
        if p == end:
            return True
        if p + 4 > end:
            return False
        tlen = buf[p] | (buf[p + 1] << 8) if little else _u16(buf, p)
        ttype = buf[p + 2] | (buf[p + 3] << 8) if little else _u16(buf, p + 2)
        if tlen < 4 or ttype & 0x7FFF > 64:
            return False
        if ttype & 0x7FFF == _NFULA_PAYLOAD:
            return True
        p += (tlen + 3) & ~3
    return False
