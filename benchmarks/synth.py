"""Synthetic captures for the analyzer benchmark (stdlib only, written straight as pcap).

distinct(path, tuples): `tuples` connections whose four-tuples never repeat, each a handshake and an abort
(SYN, SYN-ACK, ACK, RST-ACK from the client: four packets), 1 ms apart, so the capture spans ~tuples/1,000 s:
a connection is over long before the capture ends (an analyzer's sweep finishes it after its 2*MSL idle, so
~60 k are open at any time) and what stays is what an analyzer keeps of a four-tuple it saw once. Clients
are 198.51.100.1.. with ports 1025..61024 (60,000 per address), the server 203.0.113.1:80 (documentation
ranges; nothing is sent anywhere). What it measures: the memory an analyzer keeps per four-tuple it has
seen when none comes back.

repeated(src, dst, times): a pcap `times` times over, each copy shifted by the source's span plus 1 s (the
same four-tuples come back, as in a longer run of the same churn): the 10 M-packet scaling file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

_PCAP_HEAD = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)   # microseconds, Ethernet
_REC = struct.Struct("<IIII")
_ETH = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00"
_SYN, _ACK, _RST = 0x02, 0x10, 0x04
PORTS_PER_CLIENT = 60_000
GAP_US = 1000
SERVER = bytes([203, 0, 113, 1])


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return _ETH + ip + tcp   # TCP checksum left 0: the analyzers do not check it (tshark does not by default)


def distinct(path: Path, tuples: int) -> int:
    """Write the distinct-four-tuple capture (atomically); returns the packets written."""
    if tuples > 254 * PORTS_PER_CLIENT:
        raise ValueError(f"at most {254 * PORTS_PER_CLIENT} distinct four-tuples (198.51.100.1-254)")
    tmp = path.with_suffix(".tmp")
    n = 0
    t = 1_700_000_000 * 1_000_000
    with open(tmp, "wb", buffering=1 << 20) as out:
        out.write(_PCAP_HEAD)
        for i in range(tuples):
            k, port = divmod(i, PORTS_PER_CLIENT)
            client = bytes([198, 51, 100, 1 + k])
            cport = 1025 + port
            cisn, sisn = (i * 7919) & 0xFFFFFFFF, (i * 104729 + 12345) & 0xFFFFFFFF
            pkts = (_packet(client, SERVER, cport, 80, cisn, 0, _SYN),
                    _packet(SERVER, client, 80, cport, sisn, cisn + 1, _SYN | _ACK),
                    _packet(client, SERVER, cport, 80, cisn + 1, sisn + 1, _ACK),
                    _packet(client, SERVER, cport, 80, cisn + 1, sisn + 1, _RST | _ACK))
            for j, p in enumerate(pkts):
                ts = t + j * 10
                out.write(_REC.pack(ts // 1_000_000, ts % 1_000_000, len(p), len(p)) + p)
                n += 1
            t += GAP_US
    os.replace(tmp, path)
    return n


def repeated(src: Path, dst: Path, times: int) -> int:
    """`src` (a little-endian microsecond or nanosecond pcap, as tcpdump writes) `times` times over."""
    data = src.read_bytes()
    head, body = data[:24], memoryview(data)[24:]
    ns = head[:4] == b"\x4d\x3c\xb2\xa1"
    scale = 1_000_000_000 if ns else 1_000_000
    records = []
    pos = 0
    while pos + 16 <= len(body):
        sec, frac, incl, _orig = _REC.unpack_from(body, pos)
        records.append((pos, sec * scale + frac, incl))
        pos += 16 + incl
    span = records[-1][1] - records[0][1] + scale       # each copy starts 1 s after the previous one ends
    tmp = dst.with_suffix(".tmp")
    n = 0
    with open(tmp, "wb", buffering=1 << 22) as out:
        out.write(head)
        for k in range(times):
            shift = k * span
            for at, ts, incl in records:
                ts += shift
                out.write(_REC.pack(ts // scale, ts % scale, incl, _REC.unpack_from(body, at)[3]))
                out.write(body[at + 16: at + 16 + incl])
                n += 1
    os.replace(tmp, dst)
    return n
