"""Impairments inside lab namespaces (netem is not in this kernel, docs/kernel-facts.md §4).

    rule = drop_one(ctx, ns, chain="INPUT", dport=P)   # drops exactly the next matching segment
    ...
    rule.packets()      # the rule's packet counter: 1 proves the drop
    rule.remove()       # also done on ctx.stack

    with Hold(ctx, ns, chain="OUTPUT", sport=P, holds_ms=[60, 100]):    # NFQUEUE: hold the 1st matching packet
        ...                                                              # 60 ms, the 2nd 100 ms, accept the rest

Every rule is scoped to the run's ports/addresses, carries the comment ctx.name(role) ('twl' + run id) and lives
in a lab namespace only (never the host's firewall); removing the namespace removes it too.
"""

from __future__ import annotations

import contextlib
import select
import subprocess
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from lab.errors import EnvironmentProblem, UnsafeTarget
from lab.kernel import nsid
from lab.kernel.sockdiag import in_netns

if TYPE_CHECKING:
    from lab.run.context import RunSpace


class _Host(Protocol):
    name: Any

    def run(self, argv: Sequence[str], check: bool = True, **kw: Any) -> Any: ...


def _lab_ns(ctx: RunSpace, ns: _Host) -> str:
    """The namespace's name once the kernel confirms it is one this run's ledger created (lab.kernel.nsid):
    a name, or an object carrying one, is not enough."""
    name = ns.name
    if not isinstance(name, str) or not name.startswith(f"twl{ctx.run_id}"):
        raise UnsafeTarget(f"refusing to change the firewall outside this run's lab namespaces (got {name!r})",
                           "impairments live in a lab namespace (lab.kernel.hosts.netns)")
    return nsid.verified_name(name, ctx.run_id)


def _iptables(netns: str, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """iptables inside the verified namespace, run here (not through the caller's object, which may lie)."""
    r = subprocess.run(["ip", "netns", "exec", netns, "iptables", *argv], capture_output=True, text=True,
                       timeout=30)
    if check and r.returncode != 0:
        raise EnvironmentProblem(f"iptables {' '.join(argv)} in {netns} failed: {r.stderr.strip()[:200]}",
                                 "see the run's events.jsonl; twlab doctor checks the tools")
    return r


PURE_ACK = ("ALL", "ACK")        # iptables --tcp-flags MASK COMP: exactly ACK among all flags
FIN_SET = ("FIN", "FIN")          # FIN set, whatever else


def _match(proto_args: Sequence[str], src: str | None, dst: str | None, sport: int | None, dport: int | None,
           tcp_flags: tuple[str, str] | None) -> list[str]:
    if sport is None and dport is None:
        raise UnsafeTarget("an impairment needs at least one of the run's ports", "pass sport= or dport=")
    m = ["-p", "tcp", *proto_args]
    if src:
        m += ["-s", src]
    if dst:
        m += ["-d", dst]
    if sport is not None:
        m += ["--sport", str(sport)]
    if dport is not None:
        m += ["--dport", str(dport)]
    if tcp_flags:
        m += ["--tcp-flags", tcp_flags[0], tcp_flags[1]]
    return m


class Rule:
    """One iptables rule in a lab namespace, with its packet counter."""

    def __init__(self, ctx: RunSpace, ns: _Host, chain: str, spec: list[str], comment: str) -> None:
        self.ctx, self.ns, self.chain, self.spec, self.comment = ctx, ns, chain, spec, comment
        self.netns = _lab_ns(ctx, ns)
        self.removed = False
        self.final_packets: int | None = None
        _iptables(self.netns, ["-w", "-I", chain, "1", *spec])
        ctx.events.log("iptables", action="insert", netns=self.netns, chain=chain, rule=" ".join(spec))
        ctx.stack.callback(self.remove)

    def packets(self) -> int:
        if self.removed and self.final_packets is not None:
            return self.final_packets
        out = _iptables(self.netns, ["-w", "-L", self.chain, "-n", "-v", "-x"]).stdout
        for line in out.splitlines():
            if f"/* {self.comment} */" in line:
                return int(line.split()[0])
        return 0

    def remove(self) -> None:
        if self.removed:
            return
        with contextlib.suppress(Exception):
            self.final_packets = self.packets()
        self.removed = True
        r = _iptables(self.netns, ["-w", "-D", self.chain, *self.spec], check=False)
        self.ctx.events.log("iptables", action="delete", netns=self.netns, chain=self.chain, packets=self.final_packets,
                            ok=getattr(r, "returncode", 1) == 0)


def drop_one(ctx: RunSpace, ns: _Host, *, chain: str = "INPUT", src: str | None = None, dst: str | None = None,
             sport: int | None = None, dport: int | None = None, tcp_flags: tuple[str, str] | None = PURE_ACK,
             role: str = "drop") -> Rule:
    """Drop exactly the next segment matching the run's ports/addresses and flags (default: a pure ACK).

    `--mode nth --every 1000 --packet 0` matches the first packet and then only every 1000th
    (docs/kernel-facts.md §7)."""
    comment = ctx.name(role)
    spec = [*_match([], src, dst, sport, dport, tcp_flags), "-m", "statistic", "--mode", "nth", "--every", "1000",
            "--packet", "0", "-m", "comment", "--comment", comment, "-j", "DROP"]
    return Rule(ctx, ns, chain, spec, comment)


class Hold:
    """NFQUEUE: hold the n-th matching packet `holds_ms[n]` ms, then accept it; accept later ones at once.
    A hold of None keeps the packet until the controller calls release(n) (an event, not a timer: timer threads
    on a busy machine fire late and out of order); wait_queued(n) waits until the n-th packet is held.

    The queue is bound from a thread inside the namespace (netlink queues are per namespace). `--queue-bypass`
    lets packets through if the lab's listener is gone, so nothing is stranded."""

    def __init__(self, ctx: RunSpace, ns: _Host, *, chain: str = "OUTPUT", src: str | None = None,
                 dst: str | None = None, sport: int | None = None, dport: int | None = None,
                 tcp_flags: tuple[str, str] | None = None, holds_ms: Sequence[float | None] = (100.0,),
                 queue_num: int = 7,
                 role: str = "hold") -> None:
        self.ctx, self.ns, self.chain = ctx, ns, chain
        self.netns = _lab_ns(ctx, ns)
        self.holds_ms = list(holds_ms)
        self.queue_num = queue_num
        self.comment = ctx.name(role)
        self.spec = [*_match([], src, dst, sport, dport, tcp_flags), "-m", "comment", "--comment", self.comment,
                     "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass"]
        self.log: list[dict[str, Any]] = []
        self._n = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self._rule: Rule | None = None
        self._nfq: Any = None
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._gated: dict[int, Any] = {}          # n -> packet held until release(n)

    def __enter__(self) -> Hold:
        try:
            from netfilterqueue import NetfilterQueue
        except ImportError as exc:
            raise EnvironmentProblem("NetfilterQueue is not installed",
                                     "apt-get install -y libnetfilter-queue-dev libnfnetlink-dev; "
                                     ".venv/bin/pip install 'twlab[nfqueue]'") from exc
        with in_netns(self.netns):
            nfq = NetfilterQueue()
            nfq.bind(self.queue_num, self._on_packet)
        self._nfq = nfq
        self._thread = threading.Thread(target=self._loop, name=f"nfq-{self.netns}", daemon=True)
        self._thread.start()
        self.ctx.stack.callback(self.close)
        self._rule = Rule(self.ctx, self.ns, self.chain, self.spec, self.comment)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _loop(self) -> None:
        fd = self._nfq.get_fd()
        while not self._stop.is_set():
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                with contextlib.suppress(Exception):
                    self._nfq.run(block=False)

    def _on_packet(self, pkt: Any) -> None:
        with self._lock:
            n = self._n
            self._n += 1
            hold = self.holds_ms[n] if n < len(self.holds_ms) else 0.0
            rec = {"n": n, "queued_wall_s": time.time(), "hold_ms": hold, "len": pkt.get_payload_len()}
            self.log.append(rec)
            if hold is None:
                pkt.retain()
                self._gated[n] = (pkt, rec)
            self._queued.notify_all()
        if hold is None:
            self.ctx.events.log("nfqueue", netns=self.netns, action="hold-until-released", **rec)
            return
        if hold <= 0:
            pkt.accept()
            rec["released_wall_s"] = time.time()
            return
        pkt.retain()

        def release() -> None:
            pkt.accept()
            rec["released_wall_s"] = time.time()
            self.ctx.events.log("nfqueue", netns=self.netns, action="release", **rec)

        t = threading.Timer(hold / 1000.0, release)
        t.daemon = True
        self._timers.append(t)
        t.start()
        self.ctx.events.log("nfqueue", netns=self.netns, action="hold", **rec)

    def wait_queued(self, n: int, timeout_s: float) -> bool:
        """Whether the n-th matching packet arrived in the queue within timeout_s."""
        end = time.monotonic() + timeout_s
        with self._queued:
            while self._n <= n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._queued.wait(left)
        return True

    def release(self, n: int) -> None:
        """Let the n-th packet (held with hold None) go."""
        with self._lock:
            held = self._gated.pop(n, None)
        if held is None:
            return
        pkt, rec = held
        pkt.accept()
        rec["released_wall_s"] = time.time()
        self.ctx.events.log("nfqueue", netns=self.netns, action="release", **rec)

    def close(self) -> None:
        if self._nfq is None:
            return
        for n in list(self._gated):   # nothing stays held past the hold's life
            self.release(n)
        for t in self._timers:
            t.join(timeout=max((h or 0.0 for h in self.holds_ms), default=0.0) / 1000.0 + 1)
        if self._rule is not None:
            self._rule.remove()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(Exception):
            self._nfq.unbind()
        self._nfq = None

    @property
    def packets(self) -> int:
        return self._n
