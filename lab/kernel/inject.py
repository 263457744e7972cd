"""Craft and send TCP segments into a live five-tuple: replays of old segments, RSTs, SYNs.

Every destination passes `check_target` first: loopback, or an address configured inside this run's
own namespace ('twl' + run id), nothing else (lab.errors.UnsafeTarget). Which namespace a packet leaves from
is asked of the kernel at send time (the sending socket's or TUN device's namespace, lab.kernel.nsid), never
taken from a name the caller passes. Every segment sent is logged to
ctx.events as kind "inject" (time, five-tuple, seq, ack, flags, TSval, payload) so that the frames of a
capture can be matched against the log afterwards (`match_frames`).

Two ways out:
- `Injector.raw(ctx, ns)`: an IPPROTO_RAW socket opened inside the namespace (or on the host's lo). This is
  the socket scapy's send() picks on lo (L3RawSocket): the packet goes through the IP output path, so
  netfilter OUTPUT applies (a DROP rule there makes the send fail with EPERM). docs/kernel-facts.md §8.
- `Injector.tun(ctx, fd, netns=..)` / `TunPeer.injector()`: written into a TUN device, the kernel
  receives it as if it came from the wire (docs/kernel-facts.md §9).
Crafting uses scapy; the bytes are built once and written without scapy's route/iface tables, which go
stale after setns (docs/kernel-facts.md §1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lab.errors import EnvironmentProblem, UnsafeTarget
from lab.kernel import nsid

if TYPE_CHECKING:
    from lab.core.model import Segment
    from lab.run.context import RunSpace

LAB_NETS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                   "2001:db8::/32"))
FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}


class _Netns(Protocol):
    """What the injector needs of lab.kernel.hosts.netns.Namespace."""

    name: str

    def entered(self) -> contextlib.AbstractContextManager[Any]: ...


# ---------------------------------------------------------------------------------------------
# the guard


def _configured(netns_addrs: Iterable[str]) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    out = []
    for a in netns_addrs:
        with contextlib.suppress(ValueError):
            out.append(ipaddress.ip_interface(a))
    return out


def check_target(dst: str, *, run_id: str, netns: str | None = None, netns_addrs: Iterable[str] = (),
                 routes_out: bool = True) -> str:
    """Allow `dst` or raise UnsafeTarget; returns why it is allowed. Pure: the caller says where the packet
    leaves (`netns`: None for the host, else the name of this run's namespace, verified by lab.kernel.nsid).

    Allowed: loopback (127.0.0.0/8, ::1), on the host or in this run's namespace; or, from this run's own
    namespace ('twl' + run_id + role), an address from the lab's documentation ranges that is configured in
    that namespace (`netns_addrs`, "addr" or "addr/prefix"), or that lies in the connected prefix of such an
    address when the namespace has no route out (`routes_out` False: no default route).
    """
    try:
        addr = ipaddress.ip_address(dst.split("%", 1)[0])
    except ValueError:
        raise UnsafeTarget(f"refusing to send to {dst!r}: not an IP address",
                           "give a loopback address or one configured in this run's lab namespace") from None
    if netns is not None:
        own = f"twl{run_id}"
        if len(run_id) != 6 or not netns.startswith(own) or len(netns) > 15:
            raise UnsafeTarget(f"refusing to send into namespace {netns!r}: not this run's own ({own}*)",
                               "inject only into a namespace this run created")
    if addr.is_loopback:
        return f"{addr} is loopback" + (f" in {netns}" if netns else "")
    if netns is None:
        raise UnsafeTarget(f"refusing to send to {addr}: not loopback, and the packet would leave from the "
                           "host's namespace", "use 127.0.0.1/::1, or send from inside this run's lab namespace")
    if not _in_lab_ranges(addr):
        raise UnsafeTarget(f"refusing to send to {addr}: outside the lab ranges "
                           f"{', '.join(str(n) for n in LAB_NETS)}", "lab namespaces use documentation addresses only")
    configured = _configured(netns_addrs)
    if any(addr == c.ip for c in configured):
        return f"{addr} is configured in {netns}"
    if not routes_out and any(addr in c.network and c.network.prefixlen > 0 and _in_lab_ranges(c.ip)
                              for c in configured):
        return f"{addr} is on a connected lab prefix of {netns}, which has no route out"
    raise UnsafeTarget(f"refusing to send to {addr}: not configured in namespace {netns}",
                       "the target must be an address of a lab host in that namespace")


def _in_lab_ranges(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(addr in net for net in LAB_NETS)


def namespace_addresses(netns: str) -> set[str]:
    """Addresses configured in a namespace ("addr/prefix"), for the guard.

    `ip -j -n` rather than pyroute2's IPRoute(netns=...), which forks a helper process: under the runner's
    SIGTERM handler that fork can unwind the parent's teardown stack in the child."""
    out = subprocess.run(["ip", "-j", "-n", netns, "addr", "show"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise UnsafeTarget(f"refusing to send into namespace {netns!r}: cannot list its addresses",
                           out.stderr.strip() or "does the namespace exist?")
    return {f"{a['local']}/{a.get('prefixlen', 128 if ':' in a['local'] else 32)}"
            for link in json.loads(out.stdout or "[]") for a in link.get("addr_info", []) if "local" in a}


def namespace_routes_out(netns: str) -> bool:
    """Does the namespace have a default route (IPv4 or IPv6)? Lab namespaces have none."""
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", family, "-j", "-n", netns, "route", "show", "default"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0 or json.loads(out.stdout or "[]"):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# crafting and reading segments (scapy)


def flags_value(flags: str | int) -> int:
    if isinstance(flags, int):
        return flags
    try:
        return sum(FLAG_BITS[c] for c in set(flags.upper()))
    except KeyError:
        raise ValueError(f"unknown TCP flag in {flags!r} (use letters FSRPAUEC)") from None


def flags_text(value: int) -> str:
    return "".join(c for c, bit in FLAG_BITS.items() if value & bit)


def craft(src: str, sport: int, dst: str, dport: int, *, flags: str | int, seq: int, ack: int = 0,
          window: int = 65535, ts: tuple[int, int] | None = None, payload: bytes = b"",
          mss: int | None = None, wscale: int | None = None, sack_ok: bool = False) -> bytes:
    """One IPv4/IPv6 TCP segment as bytes, checksums filled in by scapy."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    opts: list[tuple[str, Any]] = []
    if mss is not None:
        opts.append(("MSS", mss))
    if sack_ok:
        opts.append(("SAckOK", b""))
    if ts is not None:
        if not opts:
            opts += [("NOP", None), ("NOP", None)]
        opts.append(("Timestamp", (ts[0] % (1 << 32), ts[1] % (1 << 32))))
    if wscale is not None:
        opts += [("NOP", None), ("WScale", wscale)]
    l3 = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    tcp = TCP(sport=sport, dport=dport, flags=flags_value(flags), seq=seq % (1 << 32), ack=ack % (1 << 32),
              window=window, options=opts)
    return bytes(l3 / tcp / payload) if payload else bytes(l3 / tcp)


def describe(raw: bytes) -> dict[str, Any]:
    """The fields the lab logs and matches on, read from an IP packet."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    pkt = IPv6(raw) if raw and raw[0] >> 4 == 6 else IP(raw)
    if TCP not in pkt:
        raise ValueError("not a TCP segment")
    tcp = pkt[TCP]
    opts = dict((k, v) for k, v in tcp.options if isinstance(k, str))
    tsv = opts.get("Timestamp")
    payload = bytes(tcp.payload)
    return {"src": pkt.src, "sport": int(tcp.sport), "dst": pkt.dst, "dport": int(tcp.dport),
            "seq": int(tcp.seq), "ack": int(tcp.ack), "flags": flags_text(int(tcp.flags)),
            "window": int(tcp.window), "tsval": tsv[0] if tsv else None, "tsecr": tsv[1] if tsv else None,
            "len": len(payload), "payload_hex": payload.hex(),
            "payload_text": payload.decode("utf-8", "backslashreplace")}


_LINK_HEADER = {101: 0, 228: 0, 229: 0, 12: 0, 14: 0, 1: 14, 113: 16, 276: 20, 0: 4, 108: 4}


def captured_segment(path: str | Path, frame: int) -> bytes:
    """The IP packet of frame `frame` (1-based, tshark's frame.number) of a capture file, ready to replay."""
    from lab.errors import BadCapture
    from lab.pcap.readers import iter_frames

    for raw in iter_frames(path):
        if raw.frame != frame:
            continue
        skip = _LINK_HEADER.get(raw.linktype)
        if skip is None:
            raise BadCapture(f"{path}: frame {frame} has link type {raw.linktype}, which cannot be replayed",
                             "replay from a capture on lo, a veth or a TUN device")
        data = raw.data[18:] if raw.linktype == 1 and raw.data[12:14] == b"\x81\x00" else raw.data[skip:]
        if not data or data[0] >> 4 not in (4, 6):
            raise BadCapture(f"{path}: frame {frame} is not an IP packet", "pick a TCP segment's frame number")
        describe(data)  # raises ValueError when it is not TCP
        return data
    raise BadCapture(f"{path}: no frame {frame}", "frame numbers are 1-based, as tshark's frame.number")


def variant(raw: bytes, *, shift: int = 0, seq: int | None = None, ack: int | None = None,
            strip_ts: bool = False, ts: tuple[int, int] | None = None, flags: str | int | None = None,
            payload: bytes | None = None) -> bytes:
    """A copy of a captured segment: moved in sequence space, its ACK or flags replaced, timestamps
    stripped or rewritten. Everything not named stays as captured (the old incarnation's values)."""
    d = describe(raw)
    opts = _options_of(raw)
    new_ts = None if strip_ts else (ts if ts is not None else opts.get("ts"))
    return craft(d["src"], d["sport"], d["dst"], d["dport"], flags=flags if flags is not None else d["flags"],
                 seq=(seq if seq is not None else d["seq"]) + shift, ack=ack if ack is not None else d["ack"],
                 window=d["window"], ts=new_ts, payload=bytes.fromhex(d["payload_hex"]) if payload is None
                 else payload, mss=opts.get("mss"), wscale=opts.get("wscale"), sack_ok=bool(opts.get("sack")))


def _options_of(raw: bytes) -> dict[str, Any]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    pkt = IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)
    out: dict[str, Any] = {}
    for k, v in pkt[TCP].options:
        if k == "Timestamp":
            out["ts"] = (int(v[0]), int(v[1]))
        elif k == "MSS":
            out["mss"] = int(v)
        elif k == "WScale":
            out["wscale"] = int(v)
        elif k == "SAckOK":
            out["sack"] = True
    return out


# ---------------------------------------------------------------------------------------------
# sending


class Injector:
    """Sends crafted segments through `write(raw_bytes)`, guarded and logged.

    Only `raw()` and `tun()` send from a lab namespace: they own the socket or TUN device they write to, and
    the guard asks the kernel for its namespace at every send (lab.kernel.nsid). A writer passed to the
    constructor is arbitrary code, so its packets are taken to leave from the host's namespace (loopback only).
    `netns`, a name, is what the caller claims; it must agree with the identity, never replaces it."""

    def __init__(self, ctx: RunSpace, write: Callable[[bytes], None], *, netns: str | None = None,
                 via: str = "custom", by: str = "injector") -> None:
        self.ctx = ctx
        self._write = write
        self.netns = netns
        self.via = via
        self.by = by
        self._origin: Callable[[], nsid.NsId] | None = None   # set only by raw()/tun(), from their own objects
        self.sent: list[dict[str, Any]] = []
        self._addrs: dict[str, tuple[set[str], bool]] = {}
        self._lock = threading.Lock()

    @classmethod
    def raw(cls, ctx: RunSpace, ns: _Netns | None = None) -> Injector:
        """An IPPROTO_RAW socket (IPv4 and IPv6) opened inside `ns` (None: the host's loopback only)."""
        try:
            with ns.entered() if ns is not None else contextlib.nullcontext():
                s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise EnvironmentProblem("injection needs a raw socket (CAP_NET_RAW)", "run as root") from None
        ctx.stack.callback(s4.close)
        ctx.stack.callback(s6.close)

        def write(raw: bytes) -> None:
            d = describe(raw)
            (s6 if ":" in d["dst"] else s4).sendto(raw, (d["dst"], 0))

        def origin() -> nsid.NsId:
            ids = {nsid.of_socket(s4), nsid.of_socket(s6)}
            if len(ids) != 1:
                raise UnsafeTarget("refusing to send: the injector's sockets are in different namespaces",
                                   "open the injector inside one lab namespace")
            return ids.pop()

        inj = cls(ctx, write, netns=ns.name if ns is not None else None, via="raw")
        inj._origin = origin
        return inj

    @classmethod
    def tun(cls, ctx: RunSpace, fd: int, *, netns: str | None = None, by: str = "peer") -> Injector:
        """Writes into an open TUN device: the namespace the device lives in receives the packets."""

        def write(raw: bytes) -> None:
            os.write(fd, raw)

        inj = cls(ctx, write, netns=netns, via="tun", by=by)
        inj._origin = lambda: nsid.of_tun(fd)
        return inj

    def _leaving(self) -> str | None:
        """The run namespace the next packet leaves from (None: the host), by kernel identity."""
        if self.netns is not None:
            check_target("127.0.0.1", run_id=self.ctx.run_id, netns=self.netns)  # a foreign claim: refuse early
        if self._origin is None:
            return None
        where = nsid.leaving_from(self._origin(), self.ctx.run_id)
        if self.netns is not None and where != self.netns:
            raise UnsafeTarget(f"refusing to send: packets would leave from {where or 'the host namespace'}, "
                               f"not from {self.netns}", "open the injector inside the namespace it names")
        return where

    def allowed(self, dst: str) -> str:
        where = self._leaving()
        addrs: set[str] = set()
        routes_out = True
        if where is not None and not ipaddress.ip_address(dst.split("%", 1)[0]).is_loopback:
            if where not in self._addrs:
                self._addrs[where] = (namespace_addresses(where), namespace_routes_out(where))
            addrs, routes_out = self._addrs[where]
        return check_target(dst, run_id=self.ctx.run_id, netns=where, netns_addrs=addrs, routes_out=routes_out)

    def send(self, raw: bytes, *, label: str = "", mark: str | None = None, delay_s: float = 0.0,
             **extra: Any) -> dict[str, Any]:
        """Send one segment (after `delay_s`), log it, return the log record."""
        d = describe(raw)
        self.allowed(d["dst"])
        if delay_s > 0:
            time.sleep(delay_s)
        with self._lock:
            wall = time.time()
            self._write(raw)
        rec = self.ctx.events.log("inject", by=self.by, via=self.via, netns=self.netns, label=label, mark=mark,
                                  sent_wall_s=wall, **d, **extra)
        self.sent.append(rec)
        return rec

    def segment(self, src: str, sport: int, dst: str, dport: int, *, flags: str | int, seq: int, ack: int = 0,
                label: str = "", mark: str | None = None, delay_s: float = 0.0, **opts: Any) -> dict[str, Any]:
        return self.send(craft(src, sport, dst, dport, flags=flags, seq=seq, ack=ack, **opts), label=label,
                         mark=mark, delay_s=delay_s)

    def rst(self, src: str, sport: int, dst: str, dport: int, *, seq: int, ack: int | None = None,
            ts: tuple[int, int] | None = None, label: str = "rst", mark: str | None = "rst",
            delay_s: float = 0.0) -> dict[str, Any]:
        """RST (RST+ACK when `ack` is given) with a chosen sequence number and optional timestamp."""
        return self.segment(src, sport, dst, dport, flags="RA" if ack is not None else "R", seq=seq, ack=ack or 0,
                            ts=ts, window=0, label=label, mark=mark, delay_s=delay_s)

    def syn(self, src: str, sport: int, dst: str, dport: int, *, seq: int, ts: tuple[int, int] | None = None,
            label: str = "syn", mark: str | None = "syn", delay_s: float = 0.0, **opts: Any) -> dict[str, Any]:
        opts.setdefault("mss", 1460)
        return self.segment(src, sport, dst, dport, flags="S", seq=seq, ts=ts, label=label, mark=mark,
                            delay_s=delay_s, **opts)

    def replay(self, captured: bytes, *, delay_s: float = 0.0, label: str = "replay", mark: str | None = "duplicate",
               **change: Any) -> dict[str, Any]:
        """Send a segment captured in an earlier incarnation again, optionally changed (see `variant`)."""
        raw = variant(captured, **change) if change else captured
        original = describe(captured)
        return self.send(raw, label=label, mark=mark, delay_s=delay_s, replay_of={
            "seq": original["seq"], "ack": original["ack"], "tsval": original["tsval"]},
            change={k: (list(v) if isinstance(v, tuple) else v) for k, v in change.items()})


# ---------------------------------------------------------------------------------------------
# matching a capture against the log


def segment_key(seg: Segment) -> tuple[Any, ...]:
    return (seg.src_ip, seg.sport, seg.dst_ip, seg.dport, seg.seq, seg.ack, seg.flags & 0x3F, seg.payload_len,
            seg.tsval)


def record_key(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    return (str(ipaddress.ip_address(rec["src"])), rec["sport"], str(ipaddress.ip_address(rec["dst"])),
            rec["dport"], rec["seq"], rec["ack"], flags_value(rec["flags"]) & 0x3F, rec["len"], rec["tsval"])


def match_frames(segments: Iterable[Segment], records: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Frame number of each logged segment in a capture: {record index: frame} (first unused match,
    in order, so that a segment sent twice maps to two frames)."""
    wanted: dict[tuple[Any, ...], list[int]] = {}
    for i, rec in enumerate(records):
        wanted.setdefault(record_key(rec), []).append(i)
    out: dict[int, int] = {}
    for seg in segments:
        idxs = wanted.get(segment_key(seg))
        if idxs:
            out[idxs.pop(0)] = seg.frame
    return out


def injected(ctx: RunSpace, mark: str | None = None) -> Iterator[dict[str, Any]]:
    """The run's inject records (optionally only those with `mark`)."""
    for rec in ctx.events.records:
        if rec.get("kind") == "inject" and (mark is None or rec.get("mark") == mark):
            yield rec


def analyzer_agreement(findings: Iterable[Mapping[str, Any]], segments: Iterable[Segment],
                       records: Sequence[Mapping[str, Any]], kind: str, marks: Iterable[str]) -> dict[str, Any]:
    """Does the analyzer flag, as `kind`, exactly the frames of the logged segments carrying one of `marks`?

    expected: frames of those segments; flagged: frames named by the `kind` findings; a finding that names
    none of the expected frames is an extra, an expected frame no finding names is a miss."""
    marks = set(marks)
    # match every logged segment in order: a verbatim replay then maps to its own frame, not the original's
    frames_of = match_frames(segments, records)
    chosen = [i for i, r in enumerate(records) if r.get("mark") in marks]
    expected = sorted(frames_of[i] for i in chosen if i in frames_of)
    not_captured = [str(records[i].get("label")) for i in chosen if i not in frames_of]
    finds = [f for f in findings if f.get("kind") == kind]
    flagged = sorted({int(fr) for f in finds for fr in f.get("frames", ())})
    extra = [f for f in finds if not set(f.get("frames", ())) & set(expected)]
    missed = [fr for fr in expected if fr not in flagged]
    return {"kind": kind, "ok": not missed and not extra and not not_captured, "expected_frames": expected,
            "flagged_frames": flagged, "missed_frames": missed,
            "extra_findings": [{"frames": list(f.get("frames", ())), "detail": f.get("detail")} for f in extra],
            "not_in_capture": not_captured}


def capture_check(ctx: RunSpace, rec: Any, checks: Mapping[str, Iterable[str]],
                  notes: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """After a lab.kernel.recording.Recording has stopped: annotate the injected frames, save the capture, and
    compare the analyzer's findings with the injector's log.

    checks: finding kind -> marks of the logged segments that kind must flag (and nothing else).
    notes: mark -> comment text put on each frame of a segment with that mark (plus its label).
    Returns (capture path or None, analysis dict or None, {"ok": bool|None, kind: agreement, ...}).
    """
    if getattr(rec, "skipped_reason", None):
        return None, None, {"ok": None, "why": rec.skipped_reason}
    records = [r for r in ctx.events.records if r.get("kind") == "inject"]
    segments = list(rec.segments)
    frames_of = match_frames(segments, records)
    for i, frame in frames_of.items():
        r = records[i]
        text = (notes or {}).get(str(r.get("mark")))
        if text:
            rec.note(frame, f"{text} [{r.get('label')}]")
    path = rec.save()
    analysis = rec.analysis()
    if rec.report is None:
        return path, analysis, {"ok": None, "why": getattr(rec, "analysis_error", None) or "no analyzer report"}
    findings = rec.report.to_dict()["findings"]
    out: dict[str, Any] = {k: analyzer_agreement(findings, segments, records, k, marks) for k, marks in checks.items()}
    out["ok"] = all(v["ok"] for v in out.values())
    return path, analysis, out


def check_outcome(check: Mapping[str, Any], kind: str, source: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """What an experiment reports of capture_check()'s verdict: notes to add, skipped reasons, observations."""
    notes = ([f"the analyzer's {kind} findings differ from the {source}'s log: see observations.analyzer_check"]
             if check.get("ok") is False else [])
    skipped = [f"capture: {check['why']}"] if check.get("ok") is None and check.get("why") else []
    return notes, skipped, {"analyzer_matches_injector": check.get("ok"), "analyzer_check": check}
