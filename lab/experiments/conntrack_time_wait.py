"""conntrack-time-wait: a NAT middlebox keeps its own TIME_WAIT. Between the clients and the server sits a router
namespace with iptables MASQUERADE (conntrack is built into this kernel); its connection tracking holds each closed
connection's entry in TIME_WAIT for net.netfilter.nf_conntrack_tcp_timeout_time_wait (120 s by default; set small
in the router's namespace only, to keep the run short), beside the endpoints' own 60 s TIME_WAIT, and while the
entry lives the NAT mapping (outside address and port) stays reserved.

  A. client .1 connects from port P through the NAT, exchanges a line, closes first: sock_diag shows A's TIME_WAIT
     on the client (60 s), /proc/net/nf_conntrack in the router shows the entry in TIME_WAIT (its own timer).
  B. inside the conntrack window, client .3 connects from the same port P to the same server: the outside tuple
     (router:P -> server) is still taken by A's entry, so MASQUERADE maps B to another port.
  C. after the entry expired (the lab waits for it to vanish from /proc/net/nf_conntrack), client .4 connects
     from P: it gets outside port P again, a new incarnation of A's outside four-tuple, while A's own TIME_WAIT on
     the client is still running.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.experiments import _wave2 as w2
from lab.kernel import sockdiag
from lab.kernel.hosts.netns import Namespace
from lab.run import addrplan
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext, scaled

PORT = 7050
CLIENT_PORT = 45050
CONNTRACK_DEFAULT_S = 120
KNOBS = {
    "conntrack_time_wait": w2.Knob(4, "s", "net.netfilter.nf_conntrack_tcp_timeout_time_wait in the router's "
                                   f"namespace (default {CONNTRACK_DEFAULT_S} s)", 1, 50),
}
ENTRY = re.compile(r"^ipv4\s+2\s+tcp\s+6\s+(?P<timeout>\d+)\s+(?P<state>\S+)\s+src=(?P<src>\S+)\s+dst=(?P<dst>\S+)\s+"
                   r"sport=(?P<sport>\d+)\s+dport=(?P<dport>\d+)\s+(?:\[\S+\]\s+)?src=(?P<rsrc>\S+)\s+"
                   r"dst=(?P<rdst>\S+)\s+sport=(?P<rsport>\d+)\s+dport=(?P<rdport>\d+)")


@dataclass
class NatLab:
    client: Namespace
    router: Namespace
    server: Namespace
    clients: list[str]         # the client namespace's addresses (A, B, C)
    router_in: str
    router_out: str
    server_addr: str
    out_iface: str


def _link(ctx: RunContext, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
    a.run(["ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name])
    ctx.events.log("link", action="add", name=a_if, peer=b_if, netns=a.name, peer_netns=b.name)


def _build(ctx: RunContext, ct_tw: int) -> NatLab:
    """client (.1 .3 .4 /24) -- (.2/25) router (.129/25) -- server (.130/25), all in the lab's /24 (one that
    overlaps none of the host's networks); the client routes the server's /25 via the router (more specific than
    its /24), the router masquerades out of its server-side veth; no default route anywhere."""
    net = ipaddress.ip_network(addrplan.current().pair4)
    h = [str(net.network_address + i) for i in range(256)]
    client = Namespace.create(ctx, "c")
    router = Namespace.create(ctx, "m", {"net.ipv4.ip_forward": 1})
    server = Namespace.create(ctx, "s")
    vc, vmc, vms, vs = ctx.name("vc"), ctx.name("vmc"), ctx.name("vms"), ctx.name("vs")
    _link(ctx, client, vc, router, vmc)
    _link(ctx, router, vms, server, vs)
    client_addrs = [h[1], h[3], h[4]]
    for a in client_addrs:
        client.run(["ip", "addr", "add", f"{a}/24", "dev", vc])
    router.run(["ip", "addr", "add", f"{h[2]}/25", "dev", vmc])
    router.run(["ip", "addr", "add", f"{h[129]}/25", "dev", vms])
    server.run(["ip", "addr", "add", f"{h[130]}/25", "dev", vs])
    for ns, ifs in ((client, [vc]), (router, [vmc, vms]), (server, [vs])):
        for i in ifs:
            ns.run(["ip", "link", "set", i, "up"])
    client.run(["ip", "route", "add", f"{h[128]}/25", "via", h[2], "dev", vc])
    router.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", vms, "-p", "tcp", "-m", "comment", "--comment",
                ctx.name("nat"), "-j", "MASQUERADE"])
    ctx.events.log("iptables", netns=router.name, table="nat", rule=f"POSTROUTING -o {vms} -p tcp MASQUERADE")
    router.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", ct_tw)
    client.addr4, server.addr4, router.addr4 = h[1], h[130], h[129]
    client.iface, server.iface, router.iface = vc, vs, vms
    return NatLab(client, router, server, client_addrs, h[2], h[129], h[130], vms)


def conntrack_entries(router: Namespace, port: int) -> list[dict[str, Any]]:
    """The router's conntrack table (/proc/net/nf_conntrack read inside its namespace), TCP entries to `port`."""
    with router.entered(), open("/proc/thread-self/net/nf_conntrack", encoding="ascii") as fh:
        lines = fh.read().splitlines()
    out = []
    for ln in lines:
        m = ENTRY.match(ln)
        if m and int(m["dport"]) == port:
            out.append({"state": m["state"], "timeout_s": int(m["timeout"]), "orig": f"{m['src']}:{m['sport']}",
                        "reply_to": f"{m['rdst']}:{m['rdport']}", "outside_port": int(m["rdport"]),
                        "client": m["src"], "client_port": int(m["sport"])})
    return out


def _entry_of(lab: NatLab, client: str) -> dict[str, Any] | None:
    return next((e for e in conntrack_entries(lab.router, PORT) if e["client"] == client), None)


def _connect(ctx: RunContext, lab: NatLab, tag: str, addr: str, port: int) -> dict[str, Any]:
    from lab.kernel.agent import Agent

    steps: list[dict[str, Any]] = [
        {"op": "socket", "sock": "s"},
        {"op": "setsockopt", "sock": "s", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "s", "addr": [addr, port]},
        {"op": "connect", "sock": "s", "addr": [lab.server_addr, PORT], "label": "connect"},
        {"op": "send", "sock": "s", "data": "hello\n"},
        {"op": "recv", "sock": "s", "label": "recv"},
        {"op": "close", "sock": "s", "label": "close"},
    ]
    agent = Agent.start(ctx, steps, netns=lab.client.name, name=f"client-{tag}")
    cc._ok(agent.wait("close"), agent)
    agent.finish()
    return {"client": f"{addr}:{port}"}


def _server(ctx: RunContext, lab: NatLab, n: int) -> Any:
    from lab.kernel.agent import Agent

    steps: list[dict[str, Any]] = [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [lab.server_addr, PORT]},
        {"op": "listen", "sock": "l", "label": "listen"},
    ]
    for i in range(n):
        steps += [{"op": "accept", "sock": "l", "as": "c", "timeout_s": cc.ACCEPT_S, "label": f"accept{i}"},
                  {"op": "recv", "sock": "c"}, {"op": "send", "sock": "c", "data": "world\n"},
                  {"op": "recv_eof", "sock": "c", "timeout_s": cc.PASSIVE_S, "label": f"eof{i}"},
                  {"op": "close", "sock": "c", "label": f"close{i}"}]
    server = Agent.start(ctx, steps, netns=lab.server.name, name="server")
    cc._ok(server.wait("listen"), server)
    return server


def _wait_entry(lab: NatLab, client: str, pred: Any, what: str, timeout_s: float) -> dict[str, Any] | None:
    got: list[dict[str, Any] | None] = [None]

    def ok() -> bool:
        got[0] = _entry_of(lab, client)
        return bool(pred(got[0]))

    if not cc.wait_until(ok, timeout_s, 0.05):
        raise CouldNotRun(f"{what} did not happen within {scaled(timeout_s):g} s (entry {got[0]})")
    return got[0]


def _window(ctx: RunContext) -> int:
    """conntrack's TIME_WAIT for this run: the knob; by default stretched by the timeout scale, so that case B
    (a program start and a handshake after A's close) still falls inside it on a busy machine."""
    value = int(w2.knob(ctx, KNOBS, "conntrack_time_wait"))
    return value if w2.is_given(ctx, "conntrack_time_wait") else math.ceil(value * ctx.timeout_scale)


def run(ctx: RunContext) -> Outcome:
    ct_tw = _window(ctx)
    lab = _build(ctx, ct_tw)
    a_addr, b_addr, c_addr = lab.clients
    from lab.kernel.recording import Recording

    with Recording(ctx, ports=[PORT], iface=lab.out_iface, netns=lab.router.name) as rec:
        server = _server(ctx, lab, 3)
        ctx.say("A: client .1 connects through the NAT and closes first", 0.1)
        _connect(ctx, lab, "A", a_addr, CLIENT_PORT)
        a_entry = _wait_entry(lab, a_addr, lambda e: e is not None and e["state"] == "TIME_WAIT",
                              "A's conntrack entry reaching TIME_WAIT", cc.SETTLE_S)
        a_tw_t = time.monotonic()
        a_sock = [s.to_dict() for s in sockdiag.sockets(netns=lab.client.name, ports=[PORT], states=["TIME_WAIT"])]
        a_peer = int(server.wait("accept0")["result"]["peer"][1])
        ctx.say("B: client .3 connects from the same port inside conntrack's TIME_WAIT", 0.3)
        _connect(ctx, lab, "B", b_addr, CLIENT_PORT)
        b_peer = int(server.wait("accept1")["result"]["peer"][1])
        a_during = _entry_of(lab, a_addr)
        if a_during is None:   # B came after the window: it says nothing about the reserved port
            raise CouldNotRun(f"A's conntrack entry expired before B had connected (window {ct_tw} s)",
                              "a busy machine: give a longer window, e.g. --set conntrack_time_wait=10")
        ctx.say(f"waiting for conntrack's TIME_WAIT ({ct_tw} s) to end", 0.5)
        _wait_entry(lab, a_addr, lambda e: e is None, "A's conntrack entry expiring", ct_tw + 10)
        a_ct_life = round(time.monotonic() - a_tw_t, 2)
        a_sock_after = [s for s in sockdiag.sockets(netns=lab.client.name, ports=[PORT], states=["TIME_WAIT"])
                        if s.src == a_addr]
        ctx.say("C: client .4 connects from the same port after the window", 0.8)
        _connect(ctx, lab, "C", c_addr, CLIENT_PORT)
        c_peer = int(server.wait("accept2")["result"]["peer"][1])
        table_end = conntrack_entries(lab.router, PORT)
        server.kill()
    syns = [s for s in rec.segments if s.flags & Flags.SYN and not s.flags & Flags.ACK and s.dport == PORT]
    if syns and syns[0].sport == a_peer:
        rec.note(syns[0].frame, f"A (client {a_addr}:{CLIENT_PORT}) leaves the NAT as port {a_peer}")
    b_syn = next((s for s in syns if s.sport == b_peer and s.sport != a_peer), None)
    if b_syn is not None:
        rec.note(b_syn.frame, f"B (client {b_addr}:{CLIENT_PORT}) leaves the NAT as port {b_peer}: the outside "
                              f"tuple :{CLIENT_PORT} is still held by A's conntrack entry (TIME_WAIT)")
    c_syn = next((s for s in syns[1:] if s.sport == c_peer == a_peer), None)
    if c_syn is not None:
        left = f"{a_sock_after[0].expires_ms / 1000:.0f} s" if a_sock_after else "some time"
        rec.note(c_syn.frame, f"C (client {c_addr}:{CLIENT_PORT}) leaves the NAT as port {c_peer}: A's conntrack "
                              "entry expired, the outside four-tuple is reused by another host. A's own TIME_WAIT "
                              f"is on {a_addr} inside (still ~{left} left) and the server held none; behind a NAT "
                              "the outside capture cannot tell the hosts apart")
    capture = rec.save()
    a_client_tw_left = a_sock_after[0].expires_ms / 1000 if a_sock_after else None
    reproduced = bool(a_peer == CLIENT_PORT and b_peer != CLIENT_PORT and c_peer == CLIENT_PORT
                      and a_sock_after and a_entry is not None)
    story = [
        (f"A: client {a_addr}:{CLIENT_PORT} -> NAT ({lab.router_out}) -> server {lab.server_addr}:{PORT}, the client "
         "closes first",
         f"outside port {a_peer}; conntrack entry {a_entry['state'] if a_entry else None} with "
         f"{a_entry['timeout_s'] if a_entry else '?'} s left (nf_conntrack_tcp_timeout_time_wait={ct_tw} in the "
         f"router); the client's own TIME_WAIT: {len(a_sock)} socket(s)"),
        (f"B: client {b_addr} from the same port {CLIENT_PORT}, inside the conntrack window",
         f"outside port {b_peer} ({'remapped' if b_peer != CLIENT_PORT else 'the same'}); A's entry then: "
         f"{a_during['state']}, {a_during['timeout_s']} s left"),
        ("the lab waits until A's entry is gone from /proc/net/nf_conntrack",
         f"gone {a_ct_life} s after it entered TIME_WAIT; A's socket TIME_WAIT on the client still has "
         f"{a_client_tw_left if a_client_tw_left is not None else '?'} s left"),
        (f"C: client {c_addr} from port {CLIENT_PORT} after the window",
         f"outside port {c_peer} ({'the same outside four-tuple as A' if c_peer == a_peer else 'another'})"),
    ]
    notes = [f"conntrack's TIME_WAIT is its own timer ({CONNTRACK_DEFAULT_S} s by default, {ct_tw} s here), "
             "independent of the endpoints' 60 s: with the default the NAT holds an outside port 60 s longer than "
             "the client's TIME_WAIT, so busy NATs run out of outside ports for one destination sooner than the "
             "endpoints do; a shorter one lets a new client reuse an outside four-tuple whose server-side TIME_WAIT "
             "may still exist (here the client closed first, so the server held none)."]
    obs: dict[str, Any] = {
        "lore_holds": reproduced, "conntrack_time_wait_s": ct_tw, "conntrack_default_s": CONNTRACK_DEFAULT_S,
        "outside_ports": {"A": a_peer, "B": b_peer, "C": c_peer}, "a_conntrack_entry": a_entry,
        "a_conntrack_during_b": a_during, "a_conntrack_lifetime_s": a_ct_life,
        "a_client_time_wait_left_s": a_client_tw_left, "a_client_time_wait": a_sock, "conntrack_end": table_end,
        "hosts": {ns.role: ns.describe() for ns in (lab.client, lab.router, lab.server)},
        "capture": rec.summary(), "knobs": w2.knob_record(ctx, KNOBS),
    }
    return Outcome(reproduced, obs, story, notes, [rec.skipped_reason] if rec.skipped_reason else [], capture,
                   rec.analysis())


EXPERIMENT = Experiment(
    id="conntrack-time-wait",
    claim="A NAT's conntrack keeps its own TIME_WAIT (nf_conntrack_tcp_timeout_time_wait, 120 s) beside the "
          "endpoints' 60 s; while it lasts the outside port stays reserved.",
    lore="Behind NAT, TIME_WAIT exists twice: on the endpoints (60 s) and in the middlebox's conntrack (120 s).",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=7.0,
    tags=("nat", "conntrack", "time-wait", "wave2"),
)
