"""Real-kernel scenarios for the classes of issue 12, each with the kernel's own account of what happened.

Every scenario returns a `Judged`: the packets captured (on the TUN device of lab.kernel.peer, or on a veth of
a lab namespace pair), the kernel truth (inet_sock_set_state path of the kernel socket, sock_diag after the
close, the errno the application got) and the expectation for the analyzer derived from that truth. The
kernel truth holds nothing run-specific (no ISNs, no times), so a re-run can be compared with the stored one.

Sides: the analyzer calls the SYN sender "client". With the TUN peer the kernel side is at 198.51.100.1.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core.model import Flags, Segment
from lab.kernel import sockdiag
from lab.kernel.capture import LiveCapture
from lab.kernel.peer import KERNEL_IP, KERNEL_IP6, PEER_IP, PEER_IP6, PeerConnection, TunPeer, open_in_namespace
from lab.kernel.tracepoints import StateTrace
from lab.pcap.readers import decode_frame
from lab.pcap.writer import PcapngWriter, atomic_write, write_pcap_ns
from lab.run.context import RunContext, scaled

LINKTYPE_RAW = 101
MSG_FASTOPEN = 0x20000000
WAIT_S = 3.0             # for a kernel transition or a socket call (stretched by lab.run.context.scaled)
# the kernel's RTO floor in the peer's namespace: a scripted peer that a busy machine delays by a few hundred ms
# must not make the kernel retransmit (the capture, and so the verdict, would depend on load)
NO_TIMER_RETRANSMISSIONS = {"net.ipv4.tcp_rto_min_us": 5_000_000}
# between the peer's retransmissions: identical segments closer than ~1 ms are what a capture seeing one packet
# twice looks like (class 11), so a scripted retransmission keeps well clear of that
RTX_GAP_S = 0.05
SETTLE_S = 0.05          # the last segment the kernel sends (from softirq) reaches the capture socket
Packet = tuple[int, bytes, int, int]      # ts_ns, data, orig_len, interface


@dataclass
class Judged:
    id: str
    klass: int
    family: str
    scenario: str
    packets: list[Packet]
    linktypes: dict[int, int]
    kernel: dict[str, Any]
    expect: dict[str, Any]
    peer: dict[str, Any] = field(default_factory=dict)   # the scripted side's state machine, where it matters
    derive: dict[str, Any] | None = None   # the test builds the capture it judges from the stored one (class 9)

    @property
    def suffix(self) -> str:
        return ".pcapng" if len(self.linktypes) > 1 else ".pcap"

    def write(self, path: Path) -> Path:
        """The capture as classic ns pcap (one interface) or pcapng with one IDB per interface."""
        if len(self.linktypes) == 1:
            (lt,) = self.linktypes.values()
            return write_pcap_ns(path, lt, 65535, [(t, d, n) for t, d, n, _i in self.packets])
        with atomic_write(path) as fh:
            w = PcapngWriter(fh, app="twlab judges")
            for t, d, n, i in self.packets:
                w.write(t, d, n, interface=i, linktype=self.linktypes[i])
        return path

    def segments(self) -> list[Segment]:
        out = []
        for frame, (t, d, _n, i) in enumerate(self.packets, start=1):
            seg = decode_frame(self.linktypes[i], d, frame, t)
            if seg is not None:
                out.append(seg)
        return out

    def frame_of(self, pred: Callable[[Segment], bool], nth: int = 0) -> int:
        hits = [s.frame for s in self.segments() if pred(s)]
        if len(hits) <= nth:
            raise AssertionError(f"{self.id}: the capture has no such segment (#{nth})")
        return hits[nth]

    def first_rst(self) -> int:
        """The frame of the capture's first RST."""
        return self.frame_of(lambda g: bool(g.flags & Flags.RST))

    def truth(self) -> dict[str, Any]:
        out = {"id": self.id, "class": self.klass, "family": self.family, "scenario": self.scenario,
               "kernel": self.kernel, "peer": self.peer, "expect": self.expect}
        if self.derive:
            out["derive"] = self.derive
        return out


def errno_name(exc: OSError | int | None) -> str | None:
    num = exc.errno if isinstance(exc, OSError) else exc
    return errno.errorcode.get(num, str(num)) if num else None


# ---------------------------------------------------------------------------------------------
# the TUN peer against one kernel socket


class PeerLab:
    """A lab namespace with the scripted peer, a capture on its TUN device and the state trace on `kport`."""

    def __init__(self, ctx: RunContext, kport: int, pport: int, sysctls: dict[str, Any] | None = None,
                 family: str = "inet") -> None:
        self.family = family
        if family == "inet6":   # the same ports one hundred up, so IPv4 and IPv6 fixtures never share a port
            kport, pport = kport + 100, pport + 100
        self.ctx, self.kport, self.pport = ctx, kport, pport
        self.kernel_ip, self.peer_ip = (KERNEL_IP6, PEER_IP6) if family == "inet6" else (KERNEL_IP, PEER_IP)
        sysctls = {**NO_TIMER_RETRANSMISSIONS, **(sysctls or {})}
        if family == "inet6":
            import pyroute2.config

            from lab.kernel.hosts.netns import Namespace

            pyroute2.config.disable_mp_signal = True   # as open_in_namespace does
            self.ns = Namespace.create(ctx, "k", sysctls)
            self.peer = TunPeer.open(ctx, self.ns, kernel_ip=KERNEL_IP6, peer_ip=PEER_IP6)
        else:
            self.ns, self.peer = open_in_namespace(ctx, "k", sysctls)
        self.trace = StateTrace(ctx.name("tr"), [kport])
        ctx.stack.callback(self.trace.close)
        self.trace.__enter__()
        self.cap = LiveCapture(self.peer.name, f"tcp port {kport}", netns=self.ns.name)
        self.cap.start()
        ctx.stack.callback(self._stop)
        self.conn: PeerConnection = self.peer.connection(pport, kport)

    def _stop(self) -> None:
        if self.cap.stats is None:
            self.cap.stop()

    def kernel_socket(self) -> socket.socket:
        """A kernel socket in the lab namespace, bound to the kernel's address and kport."""
        with self.ns.entered():
            s = socket.socket(socket.AF_INET6 if self.family == "inet6" else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.kernel_ip, self.kport))
        return s

    def listener(self) -> socket.socket:
        s = self.kernel_socket()
        s.listen(4)
        s.settimeout(scaled(WAIT_S))
        return s

    def run(self, steps: list[dict[str, Any]]) -> None:
        rep = self.conn.run(steps)
        if not rep.ok:
            raise AssertionError(f"peer script: {rep.failures()}")

    def wait_state(self, newstate: str, oldstate: str | None = None, timeout_s: float = WAIT_S, nth: int = 1
                   ) -> None:
        ev = self.trace.wait_for(lambda e: e.sport == self.kport and e.dport == self.pport and e.newstate == newstate
                                 and (oldstate is None or e.oldstate == oldstate), scaled(timeout_s), nth)
        if ev is None:
            raise AssertionError(f"the kernel socket never went to {newstate}: {self.path()}")

    def path(self) -> list[str]:
        return self.trace.path_of(self.kport, self.pport)

    def diag_states(self) -> list[str]:
        return sorted(s.state for s in sockdiag.sockets(netns=self.ns.name, ports=[self.kport])
                      if s.dport == self.pport)

    def finish(self) -> list[Packet]:
        time.sleep(SETTLE_S)
        self._stop()
        return [(t, d, n, 0) for t, d, n in self.cap.packets]

    def judged(self, id_: str, klass: int, scenario: str, kernel: dict[str, Any], peer: dict[str, Any] | None = None
               ) -> Judged:
        v6 = self.family == "inet6"
        return Judged(id_ + ("_v6" if v6 else ""), klass, self.family, scenario + (" (IPv6)" if v6 else ""),
                      self.finish(), {0: LINKTYPE_RAW}, kernel, {}, peer or {})


def _handshake(isn: int = 1_000_000) -> list[dict[str, Any]]:
    return [{"label": "syn", "send": {"flags": "S", "seq": isn, "mss": 1460}},
            {"label": "syn-ack", "expect": {"flags": "SA", "ack": "peer.isn+1", "timeout_s": 2}},
            {"label": "ack", "send": {"flags": "A"}}]


def _accept(lab: PeerLab, lst: socket.socket) -> socket.socket:
    s, _ = lst.accept()
    s.settimeout(scaled(WAIT_S))
    return s


def _established(lab: PeerLab) -> tuple[socket.socket, socket.socket]:
    """The kernel's listener and the connection it accepted from the peer's handshake."""
    lst = lab.listener()
    lab.run(_handshake())
    return lst, _accept(lab, lst)


def _recv_errno(s: socket.socket) -> str | None:
    try:
        s.recv(100)
    except OSError as exc:
        return errno_name(exc)
    return None


def _send_errno(s: socket.socket) -> str | None:
    try:
        s.send(b"late")
    except OSError as exc:
        return errno_name(exc)
    return None


# ---------------------------------------------------------------------------------------------
# class 1: a TFO SYN with data answered by RST ack ISN+11


def _tfo_syn_sent(ctx: RunContext, kport: int, pport: int, family: str) -> tuple[PeerLab, socket.socket]:
    """A kernel client that sent a TFO SYN with 10 bytes of data (tcp_fastopen=5: no cookie needed)."""
    tfo_client_without_cookie = {"net.ipv4.tcp_fastopen": 5}
    lab = PeerLab(ctx, kport, pport, sysctls=tfo_client_without_cookie, family=family)
    s = lab.kernel_socket()
    s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        s.sendto(b"0123456789", MSG_FASTOPEN, (lab.peer_ip, lab.pport))
    return lab, s


def class_01_tfo_rst(ctx: RunContext, family: str = "inet") -> Judged:
    lab, s = _tfo_syn_sent(ctx, 47401, 47501, family)
    lab.run([{"label": "tfo-syn", "expect": {"flags": "S", "len": 10, "timeout_s": 2}},
             {"label": "rst", "send": {"flags": "RA", "seq": 0, "ack": "kernel.nxt"}}])
    lab.wait_state("CLOSED", "SYN_SENT")
    s.setblocking(True)
    err = _recv_errno(s)
    kernel = {"socket": "client", "path": lab.path(), "errno_recv": err, "sockdiag_after": lab.diag_states()}
    j = lab.judged("01_tfo_rst", 1, "kernel client sends a TFO SYN with 10 bytes (tcp_fastopen=5); the peer "
                   "answers RST+ACK with ack = ISN+11 (acking SYN and data); the kernel accepts it in SYN_SENT",
                   kernel)
    rst = j.first_rst()
    # connect() got ECONNREFUSED: a SYN answered by RST, i.e. refused (class 7's kind), not an abort
    j.expect = {"connections": 1, "conns": [{"kind": "refused", "initiator": "server", "time_wait": [],
                                             "close_frame": rst}]}
    s.close()
    return j


def class_01_tfo_rst_after_synack(ctx: RunContext, family: str = "inet") -> Judged:
    lab, s = _tfo_syn_sent(ctx, 47431, 47531, family)
    lab.run([{"label": "tfo-syn", "expect": {"flags": "S", "len": 10, "timeout_s": 2}},
             # a server that does not take the SYN's data: its SYN-ACK acks the SYN only
             {"label": "syn-ack", "send": {"flags": "SA", "seq": 4_000_000, "ack": "kernel.isn+1", "mss": 1460}},
             {"label": "data-again", "expect": {"flags": "PA", "len": 10, "timeout_s": 2, "skip_other": True}},
             {"label": "rst", "send": {"flags": "RA", "seq": "peer.nxt", "ack": "kernel.nxt"}}])
    lab.wait_state("CLOSED", "ESTABLISHED")
    s.setblocking(True)
    kernel = {"socket": "client", "path": lab.path(), "errno_recv": _recv_errno(s),
              "sockdiag_after": lab.diag_states()}
    j = lab.judged("01_tfo_rst_after_synack", 1, "kernel client sends a TFO SYN with 10 bytes; the peer's SYN-ACK "
                   "acks the SYN only; the kernel sends the 10 bytes again; the peer answers RST+ACK seq 1 ack 11 "
                   "(relative): the kernel accepts it in ESTABLISHED", kernel)
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "rst", "initiator": "server", "time_wait": [],
                                             "close_frame": rst, "closed_at": {"client": rst}}]}
    s.close()
    return j


# ---------------------------------------------------------------------------------------------
# class 2: FINs that never arrived, then an RST at the FIN's sequence number


def class_02_rst_after_lost_fins(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47402, 47502, family=family)
    lst = lab.listener()
    # the capture (AF_PACKET on the TUN device) sees the peer's FINs; netfilter drops them before TCP does
    lab.ns.run(["ip6tables" if family == "inet6" else "iptables", "-A", "INPUT", "-p", "tcp", "-s", lab.peer_ip,
                "--sport", str(lab.pport),
                "--tcp-flags", "FIN", "FIN", "-j", "DROP"])
    lab.run(_handshake())
    srv = _accept(lab, lst)
    steps: list[dict[str, Any]] = [{"label": "fin", "send": {"flags": "FA"}},
                                   {"set": {"fin.seq": "peer.nxt-1"}}]
    lab.run(steps)
    srv.send(b"data")     # its ACK field shows the FIN never arrived
    lab.run([{"label": "kernel-data", "expect": {"flags": "PA", "ack": "fin.seq", "timeout_s": 2}},
             {"label": "ack-data", "send": {"flags": "A"}}]
            + [step for i in range(1, 5) for step in ({"sleep": RTX_GAP_S},
                                                       {"label": f"fin-rtx{i}", "send": {"flags": "FA",
                                                                                         "seq": "fin.seq"}})]
            + [{"label": "rst", "send": {"flags": "R", "seq": "fin.seq", "ack": 0}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "errno_recv": _recv_errno(srv),
              "sockdiag_after": lab.diag_states()}
    j = lab.judged("02_rst_after_lost_fins", 2, "peer (client) sends FIN, dropped by netfilter after the capture "
                   "point, 4 times; the kernel's data still acks the FIN's seq; the peer's RST with seq = FIN seq "
                   "is exactly the kernel's rcv_nxt: ESTABLISHED -> CLOSED, recv gets ECONNRESET", kernel)
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "rst", "initiator": "client", "time_wait": [],
                                             "close_frame": rst, "no_state": ["CLOSE_WAIT", "LAST_ACK"]}]}
    srv.close()
    lst.close()
    return j


def class_02_rst_races_the_kernels_fin(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47442, 47542, family=family)
    lst, srv = _kernel_server_closed(lab, shutdown=True)
    # the peer's FIN crossed the kernel's (ack = the kernel's FIN seq: not received); the kernel (CLOSING)
    # ACKs it; then the peer aborts with RST+ACK whose ACK still does not cover the kernel's FIN
    lab.run([{"set": {"kernel.fin": "kernel.seq"}},
             {"label": "crossed-fin", "send": {"flags": "FA", "ack": "kernel.fin"}},
             {"label": "kernel-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"label": "rst", "send": {"flags": "RA", "ack": "kernel.fin"}}])
    lab.wait_state("CLOSED", "CLOSING")
    kernel = {"socket": "server", "path": lab.path(), "errno_recv": _recv_errno(srv),
              "sockdiag_after": lab.diag_states()}
    srv.close()
    j = lab.judged("02_rst_races_the_kernels_fin", 2, "kernel server shuts down (FIN); the peer's FIN crossed it "
                   "(its ACK does not cover the kernel's FIN), the kernel goes to CLOSING and ACKs; the peer then "
                   "aborts with RST+ACK whose ACK still shows it never got the kernel's FIN: the kernel accepts "
                   "the RST (CLOSING -> CLOSED) and nobody holds TIME_WAIT", kernel,
                   {"time_wait": False, "why": "aborted before it received the kernel's FIN"})
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "rst", "initiator": "client", "time_wait": [],
                                             "close_frame": rst, "closed_at": {"server": rst}}]}
    lst.close()
    return j


def half_close_data_on_the_fin_ack(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47443, 47543, family=family)
    lst, srv = _kernel_server_closed(lab, shutdown=True)
    # the first segment the peer sends after the kernel's FIN carries data and ACKs that FIN
    lab.run([{"label": "data-on-ack", "send": {"flags": "PA", "data": "after"}},
             {"label": "data-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    got = srv.recv(100)
    lab.run([{"label": "fin", "send": {"flags": "FA"}},
             {"label": "kernel-final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "recv_after_own_fin": got.decode(),
              "sockdiag_after": lab.diag_states()}
    srv.close()
    j = lab.judged("hc_data_on_the_fin_ack", 0, "kernel server shuts down its sending side (FIN); the peer's next "
                   "segment carries data and ACKs that FIN (the application reads it after its own FIN), then the "
                   "peer's FIN: a half-close whose data rides on the ACK of the first FIN", kernel)
    j.expect = {"connections": 1, "conns": [{"kind": "half-close", "initiator": "server", "time_wait": ["server"]}]}
    lst.close()
    return j


# ---------------------------------------------------------------------------------------------
# class 3: crossed FINs, the peer's ACK (seq past its FIN) delivered before its FIN


def class_03_crossed_fins_reordered(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47403, 47503, family=family)
    lst, srv = _established(lab)
    srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             # the peer had sent FIN(seq P, ack K) before the kernel's FIN arrived, then ACKed that FIN with
             # seq P+1: the ACK overtakes the FIN
             {"label": "ack-past-fin", "send": {"flags": "A", "seq": "peer.nxt+1", "ack": "kernel.nxt"}},
             {"label": "late-fin", "send": {"flags": "FA", "seq": "peer.nxt-1", "ack": "kernel.nxt-1"}},
             {"label": "kernel-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2, "skip_other": True}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    peer = {"path": ["ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT"],
            "why": "its FIN was sent before the kernel's FIN arrived (ack = K), the kernel's FIN then took it "
                   "to CLOSING and the kernel's ACK of its FIN to TIME_WAIT"}
    j = lab.judged("03_crossed_fins_reordered", 3, "kernel server closes; the peer's FIN (ack = kernel's FIN seq, "
                   "not acking it) arrives after the peer's ACK of the kernel FIN whose seq is already past the "
                   "peer's FIN", kernel, peer)
    j.expect = {"connections": 1, "conns": [{"kind": "simultaneous", "initiator": "both",
                                             "time_wait": ["client", "server"]}]}
    lst.close()
    return j


def class_03_crossed_fins_in_order(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47433, 47533, family=family)
    lst, srv = _established(lab)
    srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             # the same crossing as 03_crossed_fins_reordered, delivered in the order sent
             {"label": "crossed-fin", "send": {"flags": "FA", "ack": "kernel.nxt-1"}},
             {"label": "kernel-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"label": "ack-of-kernel-fin", "send": {"flags": "A"}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("03_crossed_fins_in_order", 3, "kernel server closes; the peer's FIN (ack = the kernel's FIN seq: "
                   "it crossed) arrives, then the peer's ACK of the kernel's FIN: the kernel passes CLOSING",
                   kernel, {"path": ["ESTABLISHED", "FIN_WAIT_1", "CLOSING", "TIME_WAIT"]})
    j.expect = {"connections": 1, "conns": [{"kind": "simultaneous", "initiator": "both",
                                             "time_wait": ["client", "server"]}]}
    lst.close()
    return j


def _kernel_server_closed(lab: PeerLab, *, shutdown: bool = False) -> tuple[socket.socket, socket.socket]:
    """Handshake, then the kernel server closes (close(), or shutdown(WR) to keep reading); its FIN expected."""
    lst, srv = _established(lab)
    if shutdown:
        srv.shutdown(socket.SHUT_WR)
    else:
        srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}}])
    return lst, srv


def class_03_pure_ack_overtaken_by_fin(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47434, 47534, family=family)
    lst, _srv = _kernel_server_closed(lab)
    # the peer ACKs the kernel's FIN, then sends its own FIN (both seq P): the FIN arrives first
    lab.run([{"label": "fin", "send": {"flags": "FA"}},
             {"label": "kernel-final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"label": "earlier-pure-ack", "send": {"flags": "A", "seq": "peer.nxt-1"}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("03_pure_ack_overtaken_by_fin", 3, "kernel server closes; the peer ACKs that FIN (seq P) and "
                   "then sends its own FIN (seq P); the FIN arrives first, the pure ACK after it: a four-way close "
                   "delivered out of order (the ACK's seq, equal to the FIN's, shows it was sent before)", kernel,
                   {"sent": ["ACK seq P", "FIN seq P"], "arrived": ["FIN", "ACK"]})
    j.expect = {"connections": 1, "conns": [{"kind": "four-way", "initiator": "server", "time_wait": ["server"]}]}
    lst.close()
    return j


def class_03_ack_overtakes_fin(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47435, 47535, family=family)
    lst, _srv = _kernel_server_closed(lab)
    # the peer answers the kernel's FIN with FIN+ACK (three-way), then sends an ACK (seq P+1); the ACK
    # arrives first
    lab.run([{"label": "later-ack", "send": {"flags": "A", "seq": "peer.nxt+1"}},
             {"label": "fin-ack", "send": {"flags": "FA", "seq": "peer.nxt-1"}},
             {"label": "kernel-final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2,
                                                      "skip_other": True}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("03_ack_overtakes_fin", 3, "kernel server closes; the peer answers with FIN+ACK (seq P) and "
                   "then an ACK (seq P+1); the ACK arrives first: a three-way close delivered out of order (the "
                   "ACK's seq, past the FIN, shows it was sent after)", kernel,
                   {"sent": ["FIN+ACK seq P", "ACK seq P+1"], "arrived": ["ACK", "FIN+ACK"]})
    j.expect = {"connections": 1, "conns": [{"kind": "three-way", "initiator": "server", "time_wait": ["server"]}]}
    lst.close()
    return j


def class_03_half_close_data_overtakes_ack(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47436, 47536, family=family)
    lst, srv = _kernel_server_closed(lab, shutdown=True)
    # the peer ACKs the kernel's FIN, then sends data (both seq P, data after the FIN: a half-close); the data
    # arrives first
    lab.run([{"label": "data", "send": {"flags": "PA", "data": "late"}},
             {"label": "data-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"set": {"after.data": "peer.nxt"}},
             {"label": "earlier-pure-ack", "send": {"flags": "A", "seq": "peer.nxt-4"}}])
    got = srv.recv(100)
    lab.run([{"label": "fin", "send": {"flags": "FA", "seq": "after.data"}},
             {"label": "kernel-final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2,
                                                      "skip_other": True}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "recv_after_own_fin": got.decode(),
              "sockdiag_after": lab.diag_states()}
    srv.close()
    j = lab.judged("03_half_close_data_overtakes_ack", 3, "kernel server shuts down its sending side (FIN); the "
                   "peer ACKs it, then sends data (the application reads it after its own FIN: a half-close), "
                   "then its FIN; the data arrives before the pure ACK", kernel,
                   {"sent": ["ACK seq P", "data seq P", "FIN"], "arrived": ["data", "ACK", "FIN"]})
    j.expect = {"connections": 1, "conns": [{"kind": "half-close", "initiator": "server", "time_wait": ["server"]}]}
    lst.close()
    return j


# ---------------------------------------------------------------------------------------------
# class 4: an unacceptable SYN-ACK, the client's RST, then the right SYN-ACK with the same ISN


def class_04_synack_bad_ack_then_good(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47404, 47504, family=family)
    s = lab.kernel_socket()
    s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        s.connect((lab.peer_ip, lab.pport))
    lab.run([{"label": "syn", "expect": {"flags": "S", "timeout_s": 2}},
             {"label": "bad-synack", "send": {"flags": "SA", "seq": 7_000_000, "ack": "kernel.isn+1001",
                                              "mss": 1460}},
             {"label": "rst", "expect": {"flags": "R", "seq": "kernel.isn+1001", "timeout_s": 2, "skip_other": True}},
             {"label": "good-synack", "send": {"flags": "SA", "seq": 7_000_000, "ack": "kernel.isn+1",
                                               "mss": 1460}},
             {"label": "ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2, "skip_other": True}}])
    lab.wait_state("ESTABLISHED", "SYN_SENT")
    s.setblocking(True)
    s.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             {"label": "fin-ack", "send": {"flags": "FA"}},
             {"label": "final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "client", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("04_synack_bad_ack_then_good", 4, "kernel client; the peer's SYN-ACK acks ISN+1001: the kernel "
                   "answers RST (seq = that ack) and stays SYN_SENT; the right SYN-ACK with the same ISN completes "
                   "the connection, which the kernel then closes (three-way)", kernel)
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "three-way", "initiator": "client", "time_wait": ["client"],
                                             "not_close_frame": rst}]}
    return j


# ---------------------------------------------------------------------------------------------
# class 5: a stale peer's segment (ack of an old incarnation) answering a new SYN


# In the kernel-client scenarios the expects after the kernel's SYN skip other segments: the SYN's first RTO is
# 1 s whatever tcp_rto_min_us says, so a script delayed that long on a busy machine sees a SYN retransmission.


def _client_connect(lab: PeerLab) -> socket.socket:
    s = lab.kernel_socket()
    s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        s.connect((lab.peer_ip, lab.pport))
    return s


def _peer_accepts(isn: int) -> list[dict[str, Any]]:
    return [{"label": "syn", "expect": {"flags": "S", "timeout_s": 2}},
            {"label": "syn-ack", "send": {"flags": "SA", "seq": isn, "ack": "kernel.isn+1", "mss": 1460}},
            {"label": "ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2, "skip_other": True}}]


def _kernel_closes_three_way() -> list[dict[str, Any]]:
    return [{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2, "skip_other": True}},
            {"label": "fin-ack", "send": {"flags": "FA"}},
            {"label": "final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}]


def class_05_stale_peer_ack(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47405, 47505, family=family)
    old = _client_connect(lab)
    lab.run(_peer_accepts(3_000_000))
    lab.wait_state("ESTABLISHED", "SYN_SENT")
    old.setblocking(True)
    old.send(b"old")
    lab.run([{"label": "old-data", "expect": {"flags": "PA", "timeout_s": 2}},
             {"label": "old-ack", "send": {"flags": "A"}},
             {"set": {"old.peer": "peer.nxt", "old.kernel": "kernel.nxt"}},
             {"label": "old-rst", "send": {"flags": "R", "ack": 0}}])
    lab.wait_state("CLOSED", "ESTABLISHED")
    old_errno = _recv_errno(old)
    old.close()
    new = _client_connect(lab)
    lab.run([{"label": "new-syn", "expect": {"flags": "S", "timeout_s": 2}},
             {"label": "stale", "send": {"flags": "PA", "seq": "old.peer", "ack": "old.kernel", "data": "stale"}},
             {"label": "kernel-rst", "expect": {"flags": "R", "seq": "old.kernel", "timeout_s": 2, "skip_other": True}},
             {"label": "syn-ack", "send": {"flags": "SA", "seq": 5_000_000, "ack": "kernel.isn+1", "mss": 1460}},
             {"label": "ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2, "skip_other": True}}])
    lab.wait_state("ESTABLISHED", "SYN_SENT", nth=2)     # the new incarnation's
    path_new = lab.path()
    new.close()
    lab.run(_kernel_closes_three_way())
    lab.wait_state("CLOSED", "FIN_WAIT_2")
    kernel = {"socket": "client", "path": lab.path(), "old_errno_recv": old_errno,
              "sockdiag_after": lab.diag_states(),
              "new_path_until_established": path_new[path_new.index("CLOSED", 2):]}
    j = lab.judged("05_stale_peer_ack", 5, "kernel client; an old incarnation ends by the peer's RST; the new SYN "
                   "on the same ports is answered by a PSH/ACK of the old connection (its seq/ack): the kernel "
                   "answers RST (seq = that ack) and stays SYN_SENT; the real SYN-ACK then completes it", kernel)
    stale = j.frame_of(lambda g: g.payload_len == 5 and g.sport == lab.pport)
    krst = j.frame_of(lambda g: bool(g.flags & Flags.RST) and g.sport == lab.kport)
    j.expect = {"connections": 2,
                "conns": [{"kind": "rst", "initiator": "server", "time_wait": []},
                          {"kind": "three-way", "initiator": "client", "time_wait": ["client"],
                           "no_transition_at": stale, "not_close_frame": krst}],
                "findings_present": ["stale-peer-ack"]}
    return j


# ---------------------------------------------------------------------------------------------
# class 6: simultaneous open


def class_06_simultaneous_open(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47406, 47506, family=family)
    s = _client_connect(lab)
    lab.run([{"label": "syn", "expect": {"flags": "S", "timeout_s": 2}},
             {"label": "peer-syn", "send": {"flags": "S", "seq": 9_000_000, "mss": 1460}},
             {"label": "kernel-synack", "expect": {"flags": "SA", "ack": "peer.isn+1", "timeout_s": 2,
                                                   "skip_other": True}},
             {"label": "peer-synack", "send": {"flags": "SA", "seq": "peer.isn", "ack": "kernel.isn+1",
                                               "mss": 1460}}])
    lab.wait_state("ESTABLISHED", "SYN_RECEIVED")
    s.setblocking(True)
    s.close()
    lab.run(_kernel_closes_three_way())
    lab.wait_state("CLOSED", "FIN_WAIT_2")
    kernel = {"socket": "client", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("06_simultaneous_open", 6, "kernel client's SYN crosses the peer's SYN: SYN_SENT -> "
                   "SYN_RECEIVED (sends SYN-ACK) -> ESTABLISHED on the peer's SYN-ACK; the kernel then closes",
                   kernel)
    j.expect = {"connections": 1, "conns": [{"kind": "three-way", "initiator": "client", "time_wait": ["client"],
                                             "no_state": ["LISTEN"], "no_role": "retransmission"}]}
    return j


# ---------------------------------------------------------------------------------------------
# class 7: SYN answered by RST


def class_07_refused_peer(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47407, 47507, family=family)
    s = _client_connect(lab)
    lab.run([{"label": "syn", "expect": {"flags": "S", "timeout_s": 2}},
             {"label": "rst", "send": {"flags": "RA", "seq": 0, "ack": "kernel.isn+1"}}])
    lab.wait_state("CLOSED", "SYN_SENT")
    kernel = {"socket": "client", "path": lab.path(),
              "errno_connect": errno_name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)),
              "sockdiag_after": lab.diag_states()}
    s.close()
    j = lab.judged("07_refused_peer", 7, "kernel client's SYN answered by RST+ACK ack ISN+1 (a closed port): "
                   "connect fails with ECONNREFUSED", kernel)
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "refused", "initiator": "server", "time_wait": [],
                                             "close_frame": rst}]}
    return j


# ---------------------------------------------------------------------------------------------
# class 8: an RST at rcv_nxt - 1 after the peer's FIN (tcp_reset_check)


def class_08_rst_below_rcv_nxt_close_wait(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47408, 47508, family=family)
    lst, srv = _established(lab)
    lab.run([{"label": "fin", "send": {"flags": "FA"}},
             {"label": "fin-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSE_WAIT")
    lab.run([{"label": "rst", "send": {"flags": "R", "seq": "peer.nxt-1", "ack": 0}}])
    lab.wait_state("CLOSED", "CLOSE_WAIT")
    kernel = {"socket": "server", "path": lab.path(), "errno_send": _send_errno(srv),
              "sockdiag_after": lab.diag_states()}
    j = lab.judged("08_rst_below_rcv_nxt_close_wait", 8, "peer (client) sends FIN, the kernel ACKs (CLOSE_WAIT); "
                   "the peer's RST carries its FIN's seq = rcv_nxt - 1: Linux accepts it (tcp_reset_check), "
                   "the socket goes to CLOSED and send() fails with EPIPE", kernel)
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "rst", "initiator": "client", "time_wait": [],
                                             "close_frame": rst, "closed_at": {"server": rst}}]}
    srv.close()
    lst.close()
    return j


def class_08_rst_below_rcv_nxt_last_ack(ctx: RunContext, family: str = "inet") -> Judged:
    lab = PeerLab(ctx, 47418, 47518, family=family)
    lst, srv = _established(lab)
    lab.run([{"label": "fin", "send": {"flags": "FA"}},
             {"label": "fin-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSE_WAIT")
    srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             {"label": "rst", "send": {"flags": "R", "seq": "peer.nxt-1", "ack": 0}}])
    lab.wait_state("CLOSED", "LAST_ACK")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("08_rst_below_rcv_nxt_last_ack", 8, "peer (client) sends FIN, the kernel ACKs and closes "
                   "(LAST_ACK); instead of the final ACK the peer sends RST with its FIN's seq = rcv_nxt - 1: "
                   "Linux accepts it in LAST_ACK and the socket is gone", kernel)
    rst = j.first_rst()
    # both FINs were sent, the kernel's was never acknowledged: the RST ended it
    j.expect = {"connections": 1, "conns": [{"kind": "rst", "initiator": "client", "time_wait": [], "close_frame": rst,
                                             "closed_at": {"server": rst}}]}
    lst.close()
    return j


# ---------------------------------------------------------------------------------------------
# class 10: the peer's FIN again ~1 ms after the final ACK (the ACK was in flight, not lost)


def _fin_again(ctx: RunContext, family: str, ports: tuple[int, int], delay_s: float) -> tuple[PeerLab, dict[str, Any]]:
    """The kernel server closes; the peer's FIN+ACK, the kernel's final ACK, the peer's FIN again after delay_s."""
    lab = PeerLab(ctx, *ports, family=family)
    lst, srv = _established(lab)
    srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             {"label": "fin-ack", "send": {"flags": "FA"}},
             {"label": "final-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"sleep": delay_s},
             {"label": "fin-again", "send": {"flags": "FA", "seq": "peer.nxt-1"}},
             {"label": "tw-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states(),
              "answer_to_second_fin": "ACK from TIME_WAIT"}
    lst.close()
    return lab, kernel


def class_10_fin_again_after_final_ack(ctx: RunContext, family: str = "inet") -> Judged:
    lab, kernel = _fin_again(ctx, family, (47410, 47510), 0.001)
    j = lab.judged("10_fin_again_after_final_ack", 10, "kernel server closes; the peer's FIN+ACK, the kernel's "
                   "final ACK, and the same FIN again 1 ms later (sent while the ACK was in flight: Linux's RTO is "
                   "at least 200 ms); the kernel holds TIME_WAIT and re-ACKs", kernel)
    j.expect = {"connections": 1, "conns": [{"kind": "three-way", "initiator": "server", "time_wait": ["server"]}],
                "findings_absent": ["final-ack-lost"]}
    return j


def class_10_fin_again_after_an_rto(ctx: RunContext, family: str = "inet") -> Judged:
    """The guard on the other side of class 10: a FIN again 300 ms after the final ACK (more than Linux's
    200 ms minimum RTO, a hundred times the capture's RTT) is what a peer does when that ACK was lost."""
    lab, kernel = _fin_again(ctx, family, (47440, 47540), 0.3)
    j = lab.judged("10_fin_again_after_an_rto", 10, "kernel server closes; the peer's FIN+ACK, the kernel's final "
                   "ACK, and the same FIN again 300 ms later, as a peer whose copy of the ACK was lost would send "
                   "it; the kernel holds TIME_WAIT and re-ACKs", kernel,
                   {"final_ack": "treated as lost: the script retransmits its FIN after more than an RTO"})
    j.expect = {"connections": 1, "conns": [{"kind": "three-way", "initiator": "server", "time_wait": ["server"]}],
                "findings_present": ["final-ack-lost"]}
    return j


# ---------------------------------------------------------------------------------------------
# class 11: the same frame twice in the capture


def _peer_four_way(ctx: RunContext, kport: int, pport: int, family: str
                   ) -> tuple[PeerLab, list[Packet], dict[str, Any]]:
    lab = PeerLab(ctx, kport, pport, family=family)
    lst, srv = _established(lab)
    lab.run([{"label": "data", "send": {"flags": "PA", "data": "hello"}},
             {"label": "data-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"label": "fin", "send": {"flags": "FA"}},
             {"label": "fin-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSE_WAIT")
    assert srv.recv(100) == b"hello"     # unread data would turn the close into an RST
    srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             {"label": "final-ack", "send": {"flags": "A"}}])
    lab.wait_state("CLOSED", "LAST_ACK")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    lst.close()
    return lab, lab.finish(), kernel


def class_11_real_fin_retransmission(ctx: RunContext, family: str = "inet") -> Judged:
    """The guard on the other side of class 11: the peer's FIN sent again 300 ms later (as after a lost ACK)
    is a retransmission, not a capture duplicate, although the bytes are the same (the peer's IP ID is fixed)."""
    lab = PeerLab(ctx, 47441, 47541, family=family)
    lst, srv = _established(lab)
    lab.run([{"label": "fin", "send": {"flags": "FA"}},
             {"label": "fin-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}},
             {"sleep": 0.3},
             {"label": "fin-again", "send": {"flags": "FA", "seq": "peer.nxt-1"}},
             {"label": "dup-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    lab.wait_state("CLOSE_WAIT")
    assert srv.recv(100) == b""
    srv.close()
    lab.run([{"label": "kernel-fin", "expect": {"flags": "FA", "timeout_s": 2}},
             {"label": "final-ack", "send": {"flags": "A"}}])
    lab.wait_state("CLOSED", "LAST_ACK")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states(),
              "answer_to_second_fin": "duplicate ACK"}
    j = lab.judged("11_real_fin_retransmission", 11, "peer (client) closes first; its FIN again 300 ms later "
                   "(identical bytes: a retransmission, the kernel answers it with a duplicate ACK), then the "
                   "kernel's FIN and the peer's final ACK", kernel)
    j.expect = {"connections": 1, "conns": [{"kind": "four-way", "initiator": "client", "time_wait": ["client"]}],
                "findings_present": ["fin-retransmitted"]}
    lst.close()
    return j


def duplicate(packets: list[Packet], index: int, after_ns: int = 1000) -> list[Packet]:
    """The capture with packet `index` (0-based) seen twice: same bytes, `after_ns` later."""
    t, d, n, i = packets[index]
    return [*packets[:index + 1], (t + after_ns, d, n, i), *packets[index + 1:]]


def _first(packets: list[Packet], linktype: int, pred: Callable[[Segment], bool]) -> int:
    for k, (t, d, _n, _i) in enumerate(packets):
        seg = decode_frame(linktype, d, k + 1, t)
        if seg is not None and pred(seg):
            return k
    raise AssertionError("no such packet in the capture")


def class_11_capture_duplicate_peer(ctx: RunContext, family: str = "inet") -> Judged:
    lab, packets, kernel = _peer_four_way(ctx, 47411, 47511, family)
    fin = _first(packets, LINKTYPE_RAW, lambda g: bool(g.flags & Flags.FIN) and g.sport == lab.pport)
    kernel["fins_received"] = 1
    v6 = family == "inet6"
    j = Judged("11_capture_duplicate_peer" + ("_v6" if v6 else ""), 11, family, "peer (client) closes first, "
               "four-way; the capture then holds the peer's FIN twice (identical bytes, 1 us apart) as a capture "
               "seeing one packet twice; the kernel received one FIN" + (" (IPv6)" if v6 else ""),
               duplicate(packets, fin), {0: LINKTYPE_RAW}, kernel, {},
               {"path": ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"]})
    j.expect = {"connections": 1, "conns": [{"kind": "four-way", "initiator": "client", "time_wait": ["client"]}],
                "findings_absent": ["fin-retransmitted"]}
    return j


# ---------------------------------------------------------------------------------------------
# two lab namespaces (IPv4 and IPv6): refused, capture duplicates, the same packets on two interfaces


def _stopper(cap: LiveCapture) -> Callable[[], None]:
    def stop() -> None:
        if cap.stats is None:
            cap.stop()
    return stop


class PairLab:
    """Client and server namespaces joined by a veth (lab.kernel.hosts.netns.NetnsPair), the state trace on
    `port`, captures on the chosen veth ends (interface 0 = client end, 1 = server end)."""

    def __init__(self, ctx: RunContext, port: int, family: str, ends: tuple[str, ...] = ("client",)) -> None:
        from lab.kernel.hosts.netns import NetnsPair

        self.ctx, self.port, self.family = ctx, port, family
        self.pair = NetnsPair.create(ctx)
        self.trace = StateTrace(ctx.name("tr"), [port])
        ctx.stack.callback(self.trace.close)
        self.trace.__enter__()
        self.caps: list[LiveCapture] = []
        for end in ends:
            ns = self.pair.client if end == "client" else self.pair.server
            cap = LiveCapture(str(ns.iface), f"tcp port {port}", netns=ns.name)
            cap.start()
            ctx.stack.callback(_stopper(cap))
            self.caps.append(cap)

    @property
    def af(self) -> int:
        return socket.AF_INET6 if self.family == "inet6" else socket.AF_INET

    def server_addr(self) -> str:
        return str(self.pair.server.addr6 if self.family == "inet6" else self.pair.server.addr4)

    def sock(self, end: str) -> socket.socket:
        ns = self.pair.client if end == "client" else self.pair.server
        with ns.entered():
            s = socket.socket(self.af)
        s.settimeout(scaled(WAIT_S))
        return s

    def wait(self, pred: Callable[[Any], bool], what: str) -> None:
        if self.trace.wait_for(pred, scaled(WAIT_S)) is None:
            raise AssertionError(f"the kernel never showed {what}: {self.trace.snapshot()}")

    def finish(self) -> tuple[list[Packet], dict[int, int]]:
        time.sleep(SETTLE_S)
        packets: list[Packet] = []
        linktypes = {}
        for i, cap in enumerate(self.caps):
            if cap.stats is None:
                cap.stop()
            packets += [(t, d, n, i) for t, d, n in cap.packets]
            linktypes[i] = cap.linktype
        packets.sort(key=lambda p: (p[0], p[3]))
        return packets, linktypes

    def diag(self, end: str) -> list[str]:
        ns = self.pair.client if end == "client" else self.pair.server
        return sorted(s.state for s in sockdiag.sockets(netns=ns.name, ports=[self.port]))


def class_07_refused_v6(ctx: RunContext) -> Judged:
    lab = PairLab(ctx, 47417, "inet6")
    c = lab.sock("client")
    try:
        c.connect((lab.server_addr(), lab.port))
        err = None
    except OSError as exc:
        err = errno_name(exc)
    lab.wait(lambda e: e.dport == lab.port and e.oldstate == "SYN_SENT", "the client leaving SYN_SENT")
    cport = next(e.sport for e in lab.trace.snapshot() if e.dport == lab.port and e.sport)
    kernel = {"socket": "client", "path": ["SYN_SENT"] + [e.newstate for e in lab.trace.snapshot()
                                                           if e.sport == cport and e.dport == lab.port],
              "errno_connect": err, "sockdiag_after": lab.diag("client")}
    c.close()
    packets, lts = lab.finish()
    j = Judged("07_refused_v6", 7, "inet6", "client namespace connects to a port nobody listens on in the server "
               "namespace (IPv6): the server kernel answers RST, connect fails with ECONNREFUSED", packets, lts,
               kernel, {})
    rst = j.first_rst()
    j.expect = {"connections": 1, "conns": [{"kind": "refused", "initiator": "server", "time_wait": [],
                                             "close_frame": rst}]}
    return j


def _pair_four_way(lab: PairLab) -> dict[str, Any]:
    """Client closes first; the server closes once the client is in FIN_WAIT_2 (a four-way close, gated on the
    kernel's transitions); returns the kernel truth."""
    lst = lab.sock("server")
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((lab.server_addr(), lab.port))
    lst.listen(4)
    c = lab.sock("client")
    c.connect((lab.server_addr(), lab.port))
    srv, _ = lst.accept()
    c.send(b"hello")
    assert srv.recv(100) == b"hello"
    cport = c.getsockname()[1]
    c.close()
    lab.wait(lambda e: e.sport == cport and e.newstate == "FIN_WAIT_2", "the client in FIN_WAIT_2")
    assert srv.recv(100) == b""
    srv.close()
    lab.wait(lambda e: e.sport == lab.port and e.dport == cport and e.oldstate == "LAST_ACK", "LAST_ACK ending")
    lst.close()
    tr = lab.trace
    return {"client_path": tr.path_of(cport, lab.port), "server_path": tr.path_of(lab.port, cport),
            "client_sockdiag_after": lab.diag("client"), "server_sockdiag_after": lab.diag("server")}


def _capture_duplicate_pair(ctx: RunContext, family: str, port: int) -> Judged:
    lab = PairLab(ctx, port, family)
    kernel = _pair_four_way(lab)
    packets, lts = lab.finish()
    fin = _first(packets, lts[0], lambda g: bool(g.flags & Flags.FIN) and g.dport == port)
    kernel["fins_sent_by_client"] = 1
    v = "v6" if family == "inet6" else "v4"
    j = Judged(f"11_capture_duplicate_{v}_pair", 11, family, "two namespaces, client closes first (four-way); the "
               "capture then holds the client's FIN twice (identical bytes, 1 us apart)", duplicate(packets, fin),
               lts, kernel, {})
    j.expect = {"connections": 1, "conns": [{"kind": "four-way", "initiator": "client", "time_wait": ["client"]}],
                "findings_absent": ["fin-retransmitted"]}
    return j


def class_11_capture_duplicate_v6(ctx: RunContext) -> Judged:
    return _capture_duplicate_pair(ctx, "inet6", 47421)


def _two_interfaces(ctx: RunContext, family: str, port: int) -> Judged:
    lab = PairLab(ctx, port, family, ends=("client", "server"))
    kernel = _pair_four_way(lab)
    packets, lts = lab.finish()
    v = "v6" if family == "inet6" else "v4"
    j = Judged(f"13_two_interfaces_{v}", 13, family, "two namespaces, client closes first (four-way), captured on "
               "both ends of the veth into one pcapng (two interfaces): every segment appears twice, once per "
               "interface", packets, lts, kernel, {})
    j.expect = {"connections": 1, "conns": [{"kind": "four-way", "initiator": "client", "time_wait": ["client"]}],
                "findings_absent": ["fin-retransmitted"]}
    return j


def class_13_two_interfaces_v4(ctx: RunContext) -> Judged:
    return _two_interfaces(ctx, "inet", 47413)


def class_13_two_interfaces_v6(ctx: RunContext) -> Judged:
    return _two_interfaces(ctx, "inet6", 47423)


# ---------------------------------------------------------------------------------------------
# class 9: a connection idle for more than 60 s while unrelated traffic passes


IDLE_GAP_S = 75.0
FILLER_CONNECTIONS = 5000      # x 4 segments: 20000 unrelated segments during the idle time
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def _raw_segment(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int) -> bytes:
    """A bare IPv4/TCP header pair (checksums zero: the analyzer does not read them)."""
    return _IP4.pack(0x45, 0, 40, 0, 0, 64, 6, 0, src, dst) + _TCP.pack(sport, dport, seq, ack, 5 << 4, flags,
                                                                         65535, 0, 0)


def filler(start_ns: int, end_ns: int, n: int = FILLER_CONNECTIONS) -> list[Packet]:
    """n unrelated short connections (SYN, SYN-ACK, ACK, RST) between 203.0.113.10 and 203.0.113.20, evenly
    spread over [start_ns, end_ns): synthetic traffic that only has to pass during the idle time."""
    a, b = socket.inet_aton("203.0.113.10"), socket.inet_aton("203.0.113.20")
    step = (end_ns - start_ns) // (4 * n + 1)
    out: list[Packet] = []
    t = start_ns
    for k in range(n):
        sport, cisn, sisn = 10000 + k % 50000, 1000 + 7 * k, 900000 + 11 * k
        for raw in (_raw_segment(a, sport, b, 80, cisn, 0, 0x02),
                    _raw_segment(b, 80, a, sport, sisn, cisn + 1, 0x12),
                    _raw_segment(a, sport, b, 80, cisn + 1, sisn + 1, 0x10),
                    _raw_segment(a, sport, b, 80, cisn + 1, sisn + 1, 0x14)):
            t += step
            out.append((t, raw, len(raw), 0))
    return out


def expand_idle_gap(packets: list[Packet], linktype: int, first_after: int) -> list[Packet]:
    """The stored capture with IDLE_GAP_S more idle time before packet index `first_after` and the filler
    traffic in that gap."""
    shift = int(IDLE_GAP_S * 1e9)
    before, after = packets[:first_after], packets[first_after:]
    t0 = before[-1][0]
    return before + filler(t0, t0 + shift) + [(t + shift, d, n, i) for t, d, n, i in after]


def derived_capture(truth: dict[str, Any], stored: Path, out_dir: Path) -> Path:
    """The capture a truth file's expectation is about: the stored one, or the one derived from it."""
    spec = truth.get("derive")
    if not spec:
        return stored
    from lab.pcap.readers import iter_frames

    packets = [(f.ts_ns, f.data, f.orig_len, 0) for f in iter_frames(stored)]
    out = Judged(truth["id"], truth["class"], truth["family"], "", expand_idle_gap(packets, LINKTYPE_RAW,
                                                                                   spec["first_after"]),
                 {0: LINKTYPE_RAW}, {}, {})
    return out.write(out_dir / f"{truth['id']}-derived.pcap")


def class_09_idle_with_unrelated_traffic(ctx: RunContext) -> Judged:
    lab = PeerLab(ctx, 47409, 47509)
    lst, srv = _established(lab)
    lab.run([{"label": "before", "send": {"flags": "PA", "data": "before"}},
             {"label": "before-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    assert srv.recv(100) == b"before"
    lab.run([{"label": "after", "send": {"flags": "PA", "data": "after"}},
             {"label": "after-ack", "expect": {"flags": "A", "ack": "peer.nxt", "timeout_s": 2}}])
    assert srv.recv(100) == b"after"
    srv.close()
    lab.run(_kernel_closes_three_way())
    lab.wait_state("CLOSED")
    kernel = {"socket": "server", "path": lab.path(), "sockdiag_after": lab.diag_states()}
    j = lab.judged("09_idle_with_unrelated_traffic", 9, "kernel server: data, then the connection is idle, "
                   "then data and the kernel's close; the kernel socket stays ESTABLISHED throughout (one "
                   f"connection). The test moves the second half {IDLE_GAP_S:.0f} s later and puts "
                   f"{4 * FILLER_CONNECTIONS} segments of unrelated (synthetic) connections into the idle time",
                   kernel)
    after = j.frame_of(lambda g: g.sport == lab.pport and g.payload_len == len("after"))
    j.derive = {"first_after": after - 1, "gap_s": IDLE_GAP_S, "filler_connections": FILLER_CONNECTIONS}
    j.expect = {"connections": 1 + FILLER_CONNECTIONS,
                "conns": [{"kind": "three-way", "initiator": "server", "time_wait": ["server"],
                           "mid_capture": False}]}
    lst.close()
    return j


def _v6(fn: Callable[[RunContext, str], Judged]) -> Callable[[RunContext], Judged]:
    return lambda ctx: fn(ctx, "inet6")


SCENARIOS: dict[str, Callable[[RunContext], Judged]] = {
    "01_tfo_rst": class_01_tfo_rst,
    "01_tfo_rst_v6": _v6(class_01_tfo_rst),
    "01_tfo_rst_after_synack": class_01_tfo_rst_after_synack,
    "01_tfo_rst_after_synack_v6": _v6(class_01_tfo_rst_after_synack),
    "02_rst_after_lost_fins": class_02_rst_after_lost_fins,
    "02_rst_after_lost_fins_v6": _v6(class_02_rst_after_lost_fins),
    "02_rst_races_the_kernels_fin": class_02_rst_races_the_kernels_fin,
    "02_rst_races_the_kernels_fin_v6": _v6(class_02_rst_races_the_kernels_fin),
    "03_crossed_fins_reordered": class_03_crossed_fins_reordered,
    "03_crossed_fins_reordered_v6": _v6(class_03_crossed_fins_reordered),
    "03_crossed_fins_in_order": class_03_crossed_fins_in_order,
    "03_crossed_fins_in_order_v6": _v6(class_03_crossed_fins_in_order),
    "03_pure_ack_overtaken_by_fin": class_03_pure_ack_overtaken_by_fin,
    "03_pure_ack_overtaken_by_fin_v6": _v6(class_03_pure_ack_overtaken_by_fin),
    "03_ack_overtakes_fin": class_03_ack_overtakes_fin,
    "03_ack_overtakes_fin_v6": _v6(class_03_ack_overtakes_fin),
    "03_half_close_data_overtakes_ack": class_03_half_close_data_overtakes_ack,
    "03_half_close_data_overtakes_ack_v6": _v6(class_03_half_close_data_overtakes_ack),
    "04_synack_bad_ack_then_good": class_04_synack_bad_ack_then_good,
    "04_synack_bad_ack_then_good_v6": _v6(class_04_synack_bad_ack_then_good),
    "05_stale_peer_ack": class_05_stale_peer_ack,
    "05_stale_peer_ack_v6": _v6(class_05_stale_peer_ack),
    "06_simultaneous_open": class_06_simultaneous_open,
    "06_simultaneous_open_v6": _v6(class_06_simultaneous_open),
    "07_refused_peer": class_07_refused_peer,
    "07_refused_peer_v6": _v6(class_07_refused_peer),
    "07_refused_v6": class_07_refused_v6,
    "08_rst_below_rcv_nxt_close_wait": class_08_rst_below_rcv_nxt_close_wait,
    "08_rst_below_rcv_nxt_close_wait_v6": _v6(class_08_rst_below_rcv_nxt_close_wait),
    "08_rst_below_rcv_nxt_last_ack": class_08_rst_below_rcv_nxt_last_ack,
    "08_rst_below_rcv_nxt_last_ack_v6": _v6(class_08_rst_below_rcv_nxt_last_ack),
    "09_idle_with_unrelated_traffic": class_09_idle_with_unrelated_traffic,
    "10_fin_again_after_final_ack": class_10_fin_again_after_final_ack,
    "10_fin_again_after_final_ack_v6": _v6(class_10_fin_again_after_final_ack),
    "10_fin_again_after_an_rto": class_10_fin_again_after_an_rto,
    "11_capture_duplicate_peer": class_11_capture_duplicate_peer,
    "11_capture_duplicate_peer_v6": _v6(class_11_capture_duplicate_peer),
    "11_capture_duplicate_v6_pair": class_11_capture_duplicate_v6,
    "11_real_fin_retransmission": class_11_real_fin_retransmission,
    "13_two_interfaces_v4": class_13_two_interfaces_v4,
    "13_two_interfaces_v6": class_13_two_interfaces_v6,
    # issue 12 "Deliver": half-closes with data on the segment that acknowledges the first FIN
    "hc_data_on_the_fin_ack": half_close_data_on_the_fin_ack,
    "hc_data_on_the_fin_ack_v6": _v6(half_close_data_on_the_fin_ack),
}
