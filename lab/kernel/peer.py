"""A scripted userspace TCP endpoint behind a TUN device in a lab namespace (docs/kernel-facts.md §9).

The kernel side owns 198.51.100.1 on the TUN device; the peer plays 198.51.100.2, an address the
kernel does not have, so the kernel never answers for it (no RSTs for the peer's port). The peer
writes segments into the TUN device and reads what the kernel sends back: handshakes, data and
closes with a chosen ISN, chosen timestamps and chosen timing — the lab's packetdrill, as data:

    conn = peer.connection(sport=40001, dport=5000)
    report = conn.run([
        {"send": {"flags": "S", "seq": 1000000, "ts": [1000, 0], "wscale": 7}},
        {"expect": {"flags": "SA", "ack": "peer.isn+1", "timeout_s": 1}},
        {"send": {"flags": "A", "ts": ["peer.tsval+1", "kernel.tsval"]}},
        {"send": {"flags": "PA", "data": "hello", "ts": ["peer.tsval+1", "kernel.tsval"]}},
        {"expect": {"flags": "A", "ack": "peer.nxt"}},
        {"sleep": 0.2},
    ])

Steps (each may carry "label"):
  {"send": {flags, seq, ack, window, ts: [tsval, tsecr], data | hex, mss, wscale, sack_ok, mark}}
      seq defaults to peer.nxt; ack to kernel.nxt when the A flag is set; no options unless given.
  {"expect": {flags, seq, ack, ack_min, len, data, ts: true|false, timeout_s, skip_other}}
      the next segment the kernel sends; with skip_other, segments that do not match are set aside
      (in the result's `collected`) until one matches or the time is up
  {"expect_none": {timeout_s}}          nothing may arrive (e.g. a RST that must not be answered)
  {"collect": {timeout_s}}              everything that arrives within the time (counting replies)
  {"sleep": seconds}
  {"set": {"name": expr}}               remember a value, e.g. {"old.rcv_nxt": "peer.nxt"}
Numbers may be expressions over names, joined with + and -: "peer.isn+1", "kernel.nxt-100000".
Names: peer.isn, peer.nxt, peer.tsval, kernel.isn, kernel.seq, kernel.nxt, kernel.ack, kernel.tsval,
kernel.tsecr, kernel.window, plus whatever `set` stored or the caller passed in `variables`.
Every step's result says what was expected, what the kernel answered, and pass/fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import select
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lab.errors import EnvironmentProblem, LabError
from lab.kernel.inject import Injector, craft, describe, flags_value
from lab.run.context import scaled

if TYPE_CHECKING:
    from lab.kernel.inject import _Netns
    from lab.run.context import RunSpace

KERNEL_IP = "198.51.100.1"
PEER_IP = "198.51.100.2"
PREFIX = 24
KERNEL_IP6 = "2001:db8:51::1"   # the same roles in IPv6 (TunPeer.open(..., kernel_ip=KERNEL_IP6, peer_ip=PEER_IP6))
PEER_IP6 = "2001:db8:51::2"
PREFIX6 = 64
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MOD = 1 << 32


class PeerScriptError(LabError):
    """A peer script that cannot be executed (unknown name, bad step): a lab bug, not a TCP finding."""

    exit_code = 2


_TERM = re.compile(r"\s*([+-])?\s*([A-Za-z_][\w.]*|\d+)\s*")


def evaluate(expr: int | str, variables: Mapping[str, int]) -> int:
    """An integer or a sum/difference of names and integers, modulo 2^32."""
    if isinstance(expr, bool):
        raise PeerScriptError(f"not a number: {expr!r}", "use an integer or an expression such as 'peer.isn+1'")
    if isinstance(expr, int):
        return expr % MOD
    total, pos = 0, 0
    text = expr.strip()
    first = True
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or (not first and not m.group(1)):
            raise PeerScriptError(f"cannot read expression {expr!r} at {text[pos:]!r}",
                                  "write names and integers joined by + or -, e.g. 'kernel.nxt-100'")
        sign = -1 if m.group(1) == "-" else 1
        tok = m.group(2)
        if tok.isdigit():
            val = int(tok)
        elif tok in variables:
            val = variables[tok]
        else:
            raise PeerScriptError(f"unknown name {tok!r} in {expr!r}",
                                  f"known now: {', '.join(sorted(variables)) or 'none'}")
        total += sign * val
        pos = m.end()
        first = False
    if first:
        raise PeerScriptError(f"empty expression {expr!r}", "give a number or a name")
    return total % MOD


def _is_tcp(raw: bytes) -> bool:
    """An IPv4 or IPv6 packet carrying TCP directly (no IPv6 extension headers: the kernel sends none here)."""
    if len(raw) >= 20 and raw[0] >> 4 == 4:
        return raw[9] == 6
    return len(raw) >= 40 and raw[0] >> 4 == 6 and raw[6] == 6


def _same_flags(got: str, want: str) -> bool:
    return flags_value(got) == flags_value(want)


@dataclass
class StepResult:
    i: int
    label: str
    kind: str
    ok: bool
    expected: dict[str, Any] | None = None
    got: dict[str, Any] | None = None            # the kernel's segment (expect) or the sent one (send)
    collected: list[dict[str, Any]] = field(default_factory=list)
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"i": self.i, "label": self.label, "kind": self.kind, "ok": self.ok, "expected": self.expected,
                "got": self.got, "collected": self.collected or None, "why": self.why or None}


@dataclass
class PeerReport:
    steps: list[StepResult]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def by_label(self, label: str) -> StepResult:
        for s in self.steps:
            if s.label == label:
                return s
        raise KeyError(label)

    def failures(self) -> list[str]:
        return [f"{s.label}: {s.why}" for s in self.steps if not s.ok]

    def to_list(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]


def short(seg: Mapping[str, Any] | None) -> str:
    """tcpdump-like one-liner of a segment dict from `describe`."""
    if not seg:
        return "nothing"
    ts = f" TS {seg['tsval']}:{seg['tsecr']}" if seg.get("tsval") is not None else ""
    data = f" len {seg['len']}" if seg.get("len") else ""
    return f"[{seg['flags']}] seq {seg['seq']} ack {seg['ack']}{ts}{data}"


class TunPeer:
    """The TUN device and its reader; `connection()` gives a scripted endpoint for one port pair."""

    def __init__(self, ctx: RunSpace, ns: _Netns, fd: int, name: str, kernel_ip: str, peer_ip: str) -> None:
        self.ctx = ctx
        self.ns = ns
        self.fd = fd
        self.name = name
        self.kernel_ip = kernel_ip
        self.peer_ip = peer_ip
        self._queues: dict[tuple[int, int], queue.Queue[dict[str, Any]]] = {}
        self._qlock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name=f"tun-{name}", daemon=True)
        self._reader.start()
        self.injector_ = Injector.tun(ctx, fd, netns=ns.name, by="peer")  # guarded by the TUN's namespace

    @classmethod
    def open(cls, ctx: RunSpace, ns: _Netns, *, kernel_ip: str = KERNEL_IP, peer_ip: str = PEER_IP,
             role: str = "t") -> TunPeer:
        """Create the TUN device ctx.name(role) inside `ns`, give the kernel `kernel_ip`, bring it up."""
        name = ctx.name(role)
        try:
            with ns.entered():
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
                except OSError:
                    os.close(fd)
                    raise
        except FileNotFoundError:
            raise EnvironmentProblem("no /dev/net/tun: the peer needs a TUN device",
                                     "load/enable CONFIG_TUN or run in a VM that has it") from None
        except PermissionError:
            raise EnvironmentProblem("creating a TUN device needs CAP_NET_ADMIN", "run as root") from None
        ctx.ledger.add("link", name, netns=ns.name)
        peer = cls(ctx, ns, fd, name, kernel_ip, peer_ip)
        ctx.stack.callback(peer.close)
        # `ip -n`, not pyroute2's IPRoute(netns=...): that forks, and a fork under the runner's SIGTERM handler
        # can run the parent's teardown in the child
        # IPv6: /64 and nodad, so the address is usable at once (a tentative address drops the peer's SYNs)
        addr = ["addr", "add", f"{kernel_ip}/{PREFIX6}", "dev", name, "nodad"] if ":" in kernel_ip else \
            ["addr", "add", f"{kernel_ip}/{PREFIX}", "dev", name]
        for argv in (["ip", "-n", ns.name, *addr],
                     ["ip", "-n", ns.name, "link", "set", name, "up"]):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            if res.returncode != 0:
                raise EnvironmentProblem(f"could not configure TUN {name}: {res.stderr.strip()}",
                                         "check that iproute2 is installed and the namespace exists")
        ctx.events.log("tun-open", name=name, netns=ns.name, kernel_ip=kernel_ip, peer_ip=peer_ip)
        return peer

    # -- I/O

    def write(self, raw: bytes) -> None:
        os.write(self.fd, raw)

    def injector(self) -> Injector:
        """An injector that writes into this TUN (guarded against the namespace's addresses, logged)."""
        return self.injector_

    def _read_loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd, self._stop_r], [], [], 1.0)
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            if self.fd not in ready:
                continue
            try:
                raw = os.read(self.fd, 65535)
            except OSError:
                return
            if not _is_tcp(raw):
                continue  # ICMPv6 chatter (router solicitations, MLD), non-TCP
            try:
                seg = describe(raw)
            except (ValueError, IndexError):
                continue
            if seg["dst"] != self.peer_ip:
                continue
            seg["wall_s"] = time.time()
            seg["raw_hex"] = raw.hex()
            self.ctx.events.log("peer-recv", **{k: v for k, v in seg.items() if k != "raw_hex"})
            self._queue(seg["dport"], seg["sport"]).put(seg)

    def _queue(self, local_port: int, remote_port: int) -> queue.Queue[dict[str, Any]]:
        with self._qlock:
            return self._queues.setdefault((local_port, remote_port), queue.Queue())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._reader.join(timeout=2)
        for fd in (self.fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.ctx.ledger.discard("link", self.name)  # the device goes with its last fd
        self.ctx.events.log("tun-close", name=self.name)

    def connection(self, sport: int, dport: int, variables: Mapping[str, int] | None = None) -> PeerConnection:
        return PeerConnection(self, sport, dport, dict(variables or {}))


class PeerConnection:
    """One scripted endpoint (peer_ip:sport <-> kernel_ip:dport); variables persist across `run` calls,
    so one connection object can play several incarnations of the same five-tuple."""

    def __init__(self, peer: TunPeer, sport: int, dport: int, variables: dict[str, int]) -> None:
        self.peer = peer
        self.sport = sport
        self.dport = dport
        self.vars: dict[str, int] = {"peer.nxt": 0, **variables}
        self.q = peer._queue(sport, dport)
        self.sent: dict[str, bytes] = {}          # label -> raw bytes of what was sent (for replays)
        self.sent_records: dict[str, dict[str, Any]] = {}   # label -> the injector's log record
        self.received: list[dict[str, Any]] = []

    # -- variables

    def _after_send(self, d: Mapping[str, Any]) -> None:
        fl = flags_value(d["flags"])
        if fl & 0x02 and not fl & 0x10:
            self.vars["peer.isn"] = d["seq"]
        length = d["len"] + (1 if fl & 0x02 else 0) + (1 if fl & 0x01 else 0)
        self.vars["peer.nxt"] = (d["seq"] + length) % MOD
        if d["tsval"] is not None:
            self.vars["peer.tsval"] = d["tsval"]

    def _after_recv(self, d: Mapping[str, Any]) -> None:
        fl = flags_value(d["flags"])
        if fl & 0x02:
            self.vars["kernel.isn"] = d["seq"]
        length = d["len"] + (1 if fl & 0x02 else 0) + (1 if fl & 0x01 else 0)
        self.vars["kernel.seq"] = d["seq"]
        self.vars["kernel.nxt"] = (d["seq"] + length) % MOD
        self.vars["kernel.ack"] = d["ack"]
        self.vars["kernel.window"] = d["window"]
        if d["tsval"] is not None:
            self.vars["kernel.tsval"] = d["tsval"]
            self.vars["kernel.tsecr"] = d["tsecr"]

    def _next(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            d = self.q.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None
        self.received.append(d)
        self._after_recv(d)
        return d

    def drain(self) -> list[dict[str, Any]]:
        """Whatever arrived unasked (e.g. retransmissions), consumed."""
        out = []
        while (d := self._next(0)) is not None:
            out.append(d)
        return out

    # -- steps

    def build(self, spec: Mapping[str, Any]) -> bytes:
        v = self.vars
        flags = spec.get("flags", "A")
        seq = evaluate(spec.get("seq", "peer.nxt"), v)
        ack_default: int | str = "kernel.nxt" if flags_value(flags) & 0x10 else 0
        ack = evaluate(spec.get("ack", ack_default), v)
        ts = None
        if spec.get("ts") is not None:
            ts = (evaluate(spec["ts"][0], v), evaluate(spec["ts"][1], v))
        payload = bytes.fromhex(spec["hex"]) if "hex" in spec else str(spec.get("data", "")).encode()
        return craft(self.peer.peer_ip, self.sport, self.peer.kernel_ip, self.dport, flags=flags, seq=seq, ack=ack,
                     window=int(spec.get("window", 65535)), ts=ts, payload=payload, mss=spec.get("mss"),
                     wscale=spec.get("wscale"), sack_ok=bool(spec.get("sack_ok", False)))

    def send_raw(self, raw: bytes, *, label: str, mark: str | None = None, **extra: Any) -> dict[str, Any]:
        rec = self.peer.injector_.send(raw, label=label, mark=mark, **extra)
        self.sent[label] = raw
        self.sent_records[label] = rec
        self._after_send(rec)
        return rec

    def run(self, steps: Sequence[Mapping[str, Any]], *, stop_on_fail: bool = True) -> PeerReport:
        results: list[StepResult] = []
        failed = False
        for i, step in enumerate(steps):
            kind = next((k for k in ("send", "expect", "expect_none", "collect", "sleep", "set") if k in step), None)
            if kind is None:
                raise PeerScriptError(f"step {i} has no known kind: {dict(step)!r}",
                                      "use send, expect, expect_none, collect, sleep or set")
            label = str(step.get("label", f"{i}:{kind}"))
            if failed and stop_on_fail:
                results.append(StepResult(i, label, kind, False, why="not run: an earlier step failed"))
                continue
            res = self._step(i, label, kind, step[kind])
            results.append(res)
            d = res.to_dict()
            d["step"] = d.pop("kind")
            self.peer.ctx.events.log("peer-step", conn=f"{self.sport}->{self.dport}", **d)
            failed = failed or not res.ok
        return PeerReport(results)

    def _step(self, i: int, label: str, kind: str, arg: Any) -> StepResult:
        if kind == "sleep":
            time.sleep(float(arg))
            return StepResult(i, label, kind, True)
        if kind == "set":
            for name, expr in dict(arg).items():
                self.vars[name] = evaluate(expr, self.vars)
            return StepResult(i, label, kind, True, got={k: self.vars[k] for k in arg})
        if kind == "send":
            spec = dict(arg)
            rec = self.send_raw(self.build(spec), label=label, mark=spec.get("mark"))
            return StepResult(i, label, kind, True, got=_public(rec))
        timeout_s = float(dict(arg).get("timeout_s", 1.0))
        if kind == "expect_none":
            d = self._next(timeout_s)
            return StepResult(i, label, kind, d is None, expected={"nothing_for_s": timeout_s}, got=_public(d),
                              why="" if d is None else f"kernel sent {short(d)}")
        if kind == "collect":
            end = time.monotonic() + timeout_s
            got = []
            while (left := end - time.monotonic()) > 0 and (d := self._next(left)) is not None:
                got.append(_public(d))
            return StepResult(i, label, kind, True, collected=[g for g in got if g])
        spec = dict(arg)
        expected = {k: v for k, v in spec.items() if k != "timeout_s"}
        # resolve expressions before the segment updates the variables
        want: dict[str, Any] = {}
        for k in ("seq", "ack"):
            if k in spec:
                want[k] = evaluate(spec[k], self.vars)
        if "ack_min" in spec:
            want["ack_min"] = evaluate(spec["ack_min"], self.vars)
        skipped: list[dict[str, Any]] = []
        # an expected answer is waited for with a deadline stretched by the timeout scale (a late reader thread is
        # not a kernel finding); expect_none and collect are measurement windows and keep their length
        timeout_s = round(scaled(timeout_s), 3)
        end = time.monotonic() + timeout_s
        while True:
            d = self._next(end - time.monotonic())
            if d is None:
                return StepResult(i, label, kind, False, expected=expected, collected=skipped,
                                  why=f"nothing{' matching' if skipped else ''} within {timeout_s} s")
            problems = self._mismatch(spec, want, d)
            if not problems or not spec.get("skip_other"):
                break
            skipped.append(_public(d) or {})
        return StepResult(i, label, kind, not problems, expected=expected, got=_public(d), collected=skipped,
                          why="; ".join(problems))

    @staticmethod
    def _mismatch(spec: Mapping[str, Any], want: Mapping[str, int], d: Mapping[str, Any]) -> list[str]:
        problems = []
        if "flags" in spec and not _same_flags(d["flags"], spec["flags"]):
            problems.append(f"flags {d['flags']} (wanted {spec['flags']})")
        for k, val in want.items():
            if k == "ack_min":
                if signed(d["ack"] - val) < 0:
                    problems.append(f"ack {d['ack']} (wanted at least {spec[k]} = {val})")
            elif d[k] != val:
                problems.append(f"{k} {d[k]} (wanted {spec[k]} = {val})")
        if "len" in spec and d["len"] != int(spec["len"]):
            problems.append(f"len {d['len']} (wanted {spec['len']})")
        if "data" in spec and d["payload_text"] != spec["data"]:
            problems.append(f"data {d['payload_text']!r} (wanted {spec['data']!r})")
        if "ts" in spec and (d["tsval"] is not None) != bool(spec["ts"]):
            problems.append("timestamp option " + ("present" if d["tsval"] is not None else "missing"))
        return problems


def _public(d: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {k: d[k] for k in ("flags", "seq", "ack", "window", "tsval", "tsecr", "len", "payload_text", "wall_s",
                              "sent_wall_s", "mark") if k in d}


# ---------------------------------------------------------------------------------------------
# script builders shared by the experiments (plain data; compose them into one script)

TS_NEXT = ["peer.tsval+1", "kernel.tsval"]


def handshake(isn: int | str, *, tsval: int | str | None = None, wscale: int | None = None, mss: int = 1460,
              window: int = 65535, mark: str | None = None, tag: str = "") -> list[dict[str, Any]]:
    """SYN with a chosen ISN (and TSval), expect SYN-ACK acking it, ACK."""
    ts = tsval is not None
    syn: dict[str, Any] = {"flags": "S", "seq": isn, "mss": mss, "window": window, "mark": mark}
    if ts:
        syn["ts"] = [tsval, 0]
    if wscale is not None:
        syn["wscale"] = wscale
    return [
        {"label": f"{tag}syn", "send": syn},
        {"label": f"{tag}syn-ack", "expect": {"flags": "SA", "ack": "peer.isn+1", "ts": ts, "timeout_s": 1.5}},
        {"label": f"{tag}ack", "send": {"flags": "A", "window": window, "ts": TS_NEXT if ts else None}},
    ]


def send_data(text: str, *, ts: bool, tag: str = "", window: int = 65535) -> list[dict[str, Any]]:
    return [
        {"label": f"{tag}data", "send": {"flags": "PA", "data": text, "window": window,
                                         "ts": TS_NEXT if ts else None}},
        {"label": f"{tag}data-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 1.5}},
    ]


def close_after_kernel(*, ts: bool, tag: str = "", window: int = 65535) -> list[dict[str, Any]]:
    """The kernel closes first: expect its FIN, answer FIN+ACK in one segment (so an orphaned kernel socket
    goes FIN_WAIT_1 -> TIME_WAIT directly, docs/kernel-facts.md §4), expect the final ACK."""
    return [
        {"label": f"{tag}kernel-fin", "expect": {"flags": "FA", "timeout_s": 3}},
        {"label": f"{tag}fin-ack", "send": {"flags": "FA", "window": window, "ts": TS_NEXT if ts else None}},
        {"label": f"{tag}final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 1.5}},
    ]


def server_steps(ip: str, port: int, *, second: bool = False,
                 recv_timeout_s: float = 0.6) -> list[dict[str, Any]]:
    """A kernel server (lab.kernel.agent program): accept, read, close first; optionally accept the next incarnation
    and read from it once the controller releases 'recv2'. Ends at gate 'end'."""
    steps: list[dict[str, Any]] = [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [ip, port]},
        {"op": "listen", "sock": "l", "label": "listen"},
        {"op": "accept", "sock": "l", "as": "c", "timeout_s": 10, "label": "accept1"},
        {"op": "recv", "sock": "c", "timeout_s": 5, "label": "recv1"},
        {"op": "close", "sock": "c", "label": "close1"},
    ]
    if second:
        steps += [
            {"op": "accept", "sock": "l", "as": "c2", "timeout_s": 10, "label": "accept2"},
            {"op": "gate", "name": "recv2"},
            {"op": "recv", "sock": "c2", "timeout_s": recv_timeout_s, "label": "recv2", "on_error": "continue"},
        ]
    steps += [{"op": "gate", "name": "end"}, {"op": "close", "sock": "l", "label": "close-listener"}]
    return steps


def open_in_namespace(ctx: RunSpace, role: str = "k", sysctls: Mapping[str, Any] | None = None
                      ) -> tuple[Any, TunPeer]:
    """A lab namespace (lab.kernel.hosts.netns) with a TUN device: the kernel at KERNEL_IP, the peer at PEER_IP."""
    import pyroute2.config

    from lab.kernel.hosts.netns import Namespace

    # pyroute2's IPRoute(netns=...) forks a helper and stops it with SIGTERM; without this the helper keeps the
    # runner's SIGTERM handler (KeyboardInterrupt) and unwinds the run's teardown stack in the child, deleting
    # the namespace under the parent. With it the helper resets SIGTERM to the default and just exits.
    pyroute2.config.disable_mp_signal = True
    ns = Namespace.create(ctx, role, sysctls=dict(sysctls) if sysctls else None)
    return ns, TunPeer.open(ctx, ns)


# ---------------------------------------------------------------------------------------------
# small measurement helpers shared by the experiments


def signed(d: int) -> int:
    """A sequence-space difference as a signed 32-bit number."""
    d %= MOD
    return d - MOD if d >= MOD // 2 else d


def counter_deltas(before: Mapping[str, int], after: Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    """Deltas of nstat counters; names without prefix ('PAWSEstab') match 'TcpExtPAWSEstab' too."""
    out = {}
    for n in names:
        for key in (n, f"TcpExt{n}", f"Tcp{n}"):
            if key in after or key in before:
                out[n] = int(after.get(key, 0)) - int(before.get(key, 0))
                break
        else:
            out[n] = 0
    return out


def time_wait_of(samples: Sequence[Any], peer_port: int) -> dict[str, Any] | None:
    """The TIME_WAIT socket towards `peer_port` among sock_diag samples (lab.kernel.sockdiag.SockSample), or None."""
    for s in samples:
        if getattr(s, "state", None) == "TIME_WAIT" and int(getattr(s, "dport", -1)) == peer_port:
            return {"state": s.state, "expires_ms": getattr(s, "expires_ms", None)}
    return None
