"""reuseaddr-uses: Stevens' four uses of SO_REUSEADDR (UNP 7.5), each measured on this kernel.

(a) restart a listening server while connections of its previous incarnation still use the port
    (an ESTABLISHED child with the listener gone, and a server-side TIME_WAIT);
(b) several server instances (separate processes) on one port with different local IPs;
(c) one process with several sockets on the same port and different local IPs (TCP and UDP);
(d) completely duplicate bindings: TCP, and UDP (multicast; unicast for comparison).
Expectations come from lab.core.bindrules (the Linux rules read from the kernel source), never
from a measured table; Stevens' text is set beside each answer.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
from typing import Any

from lab.core.bindrules import AddrKey, BindCase, expected_bsd, expected_linux
from lab.core.model import Flags
from lab.kernel.agent import Agent
from lab.kernel.recording import Recording
from lab.kernel.sockopts import (
    IS_LINUX,
    LINGER_RST,
    Calls,
    free_port,
    make_netns,
    measure_case,
    set_opt,
    tcp_states_on_port,
)
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext, scaled

OPTNAME = {"none": "no option", "reuseaddr": "SO_REUSEADDR", "reuseport": "SO_REUSEPORT"}
ACCEPT_S = 30.0     # deadlines on an idle machine (scaled): an instance's accept once released,
ASK_S = 3.0         # a client's connect and answer, a select() for a datagram or a connection


def _verdict(measured: str, expected: str, stevens: str) -> str:
    if measured == expected:
        return "as the Linux rules say" + ("" if measured == stevens else "; not as Stevens describes")
    return "NOT as the Linux rules say"


# ---------------------------------------------------------------------------------------------
# (a) restart with live connections


A_CASES = (  # (first state, old server's option, new server's option)
    ("connected", "none", "none"),
    ("connected", "none", "reuseaddr"),
    ("connected", "reuseaddr", "reuseaddr"),
    ("time_wait", "none", "reuseaddr"),
    ("time_wait", "reuseaddr", "reuseaddr"),
)


def _use_a(ctx: RunContext, calls: Calls, ports: list[int], rec_notes: list[tuple[int, str]]) -> list[dict[str, Any]]:
    out = []
    for (state, old, new), port in zip(A_CASES, ports, strict=True):
        c = calls.with_context(use="a", port=port, case=f"{state}/{old}/{new}")
        keep: list[socket.socket] = []
        try:
            ls = socket.socket()
            keep.append(ls)
            set_opt(c, ls, old, "old-listener")
            c.do("bind", functools.partial(ls.bind, ("127.0.0.1", port)), sock="old-listener")
            c.do("listen", functools.partial(ls.listen, 8), sock="old-listener")
            cl = socket.socket()
            keep.append(cl)
            c.do("connect", functools.partial(cl.connect, ("127.0.0.1", port)), sock="client")
            child, _ = ls.accept()
            keep.append(child)
            cl.sendall(b"request")
            child.recv(64)
            child.sendall(b"reply")
            cl.recv(64)
            c.do("close", ls.close, sock="old-listener", note="the old server's listener goes away")
            if state == "time_wait":
                c.do("close", child.close, sock="old-child", note="server closes first")
                cl.settimeout(scaled(ASK_S))
                cl.recv(16)
                c.do("close", cl.close, sock="client")
            left = tcp_states_on_port(port)
            new_l = socket.socket()
            keep.append(new_l)
            set_opt(c, new_l, new, "new-listener")
            _, err = c.do("bind", functools.partial(new_l.bind, ("127.0.0.1", port)), sock="new-listener")
            if err is None:
                _, err2 = c.do("listen", functools.partial(new_l.listen, 8), sock="new-listener")
                measured = "ok" if err2 is None else f"listen:{err2}"
            else:
                measured = f"bind:{err}"
            served = None
            if measured == "ok":   # the restarted server really serves
                cl2 = socket.socket()
                keep.append(cl2)
                cl2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                _, cerr = c.do("connect", functools.partial(cl2.connect, ("127.0.0.1", port)), sock="client2")
                if cerr is None:
                    ch2, _ = new_l.accept()
                    keep.append(ch2)
                    served = cl2.getsockname()[1]
                    rec_notes.append((port, f"restart ({state}, old {OPTNAME[old]}, new {OPTNAME[new]}): "
                                            f"the restarted server accepts a new client"))
            case = BindCase("tcp", "lo1", "lo1", old, new, state)  # type: ignore[arg-type]
            lin, bsd = expected_linux(case), expected_bsd(case)
            out.append({"first_state": state, "old_option": old, "new_option": new, "port": port,
                        "left_on_port": left, "measured": measured, "expected_linux": lin.second,
                        "stevens": bsd.second, "rule": lin.rule, "new_client_port": served,
                        "verdict": _verdict(measured, lin.second, bsd.second)})
        finally:
            for s in reversed(keep):
                with contextlib.suppress(OSError):
                    if s.fileno() >= 0 and s is not keep[0]:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                s.close()
    return out


# ---------------------------------------------------------------------------------------------
# (b) several server instances (processes), one port, different local IPs


def _server_steps(name: str, ip: str, port: int, opt: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"op": "socket", "sock": "l"}]
    if opt == "reuseaddr":
        steps.append({"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1})
    steps += [
        {"op": "bind", "sock": "l", "addr": [ip, port], "label": "bind"},
        {"op": "listen", "sock": "l", "label": "listen"},
        # listening until the controller has judged instance 2's bind and asks: no deadline can expire meanwhile
        {"op": "gate", "name": "serve", "label": "gate-serve"},
        {"op": "accept", "sock": "l", "as": "c", "label": "accept", "timeout_s": ACCEPT_S},
        {"op": "recv", "sock": "c", "label": "recv"},
        {"op": "send", "sock": "c", "data": f"served by {name} on {ip}"},
        {"op": "recv_eof", "sock": "c", "on_error": "continue"},   # the client closes first (with RST)
        {"op": "close", "sock": "c"}, {"op": "close", "sock": "l"},
    ]
    return steps


def _ask(calls: Calls, ip: str, port: int) -> str | None:
    s = socket.socket()
    s.settimeout(scaled(ASK_S))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)   # client resets: no TIME_WAIT left behind
    try:
        _, err = calls.do("connect", functools.partial(s.connect, (ip, port)), sock="client", addr=[ip, port])
        if err:
            return f"connect:{err}"
        s.sendall(b"who serves?")
        return s.recv(128).decode()
    except OSError as exc:
        return f"error:{exc}"
    finally:
        s.close()


B_CASES = (  # (instance 1 address, instance 2 address, option on both)
    ("127.0.0.2", "127.0.0.3", "none"),
    ("0.0.0.0", "127.0.0.2", "reuseaddr"),
    ("127.0.0.2", "0.0.0.0", "reuseaddr"),
)
KEY: dict[str, AddrKey] = {"0.0.0.0": "any4", "127.0.0.1": "lo1", "127.0.0.2": "lo2", "127.0.0.3": "lo3"}


def _use_b(ctx: RunContext, calls: Calls, ports: list[int]) -> list[dict[str, Any]]:
    out = []
    for (ip1, ip2, opt), port in zip(B_CASES, ports, strict=True):
        c = calls.with_context(use="b", port=port)
        a1 = Agent.start(ctx, _server_steps("instance1", ip1, port, opt), name="b-instance1")
        r1 = a1.wait("listen")   # the event that gates instance 2: instance 1 is listening (and stays so)
        if not r1.get("ok"):
            raise CouldNotRun(f"(b) instance 1 could not listen on {ip1}:{port}: {r1.get('errno') or r1.get('error')}")
        a2 = Agent.start(ctx, _server_steps("instance2", ip2, port, opt), name="b-instance2")
        r2 = a2.wait("bind")
        if r2.get("ok"):
            r2 = a2.wait("listen")
        m2 = "ok" if r2.get("ok") else f"{r2['op']}:{r2.get('errno')}"
        for a in (a1, a2):
            a.release("serve")
        # ask for the contested address (127.0.0.3 stands for "any other address" when instance 2 is the
        # wildcard one), and for instance 1's own address when both instances run
        asks = [ip2 if ip2 != "0.0.0.0" else "127.0.0.3"]
        if m2 == "ok":
            asks.insert(0, ip1 if ip1 != "0.0.0.0" else "127.0.0.3")
        answers = {ip: _ask(c, ip, port) for ip in asks}
        for a in (a1, a2):
            a.kill()
        case = BindCase("tcp", KEY[ip1], KEY[ip2], opt, opt, "listening")  # type: ignore[arg-type]
        lin, bsd = expected_linux(case), expected_bsd(case)
        out.append({"instance1": ip1, "instance2": ip2, "option": opt, "port": port,
                    "instance1_listen": "ok" if r1.get("ok") else r1.get("errno"), "instance2_result": m2,
                    "answers": answers, "expected_linux": lin.second, "stevens": bsd.second, "rule": lin.rule,
                    "verdict": _verdict(m2, lin.second, bsd.second)})
    return out


# ---------------------------------------------------------------------------------------------
# (c) one process, several sockets, same port, different IPs


def _use_c(ctx: RunContext, calls: Calls, tcp_port: int) -> dict[str, Any]:
    ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    c = calls.with_context(use="c-tcp", port=tcp_port)
    keep: list[socket.socket] = []
    tcp: dict[str, Any] = {}
    try:
        listeners = {}
        for ip in ips:
            s = socket.socket()
            keep.append(s)
            _, err = c.do("bind", functools.partial(s.bind, (ip, tcp_port)), sock=f"listener-{ip}")
            if err is None:
                c.do("listen", functools.partial(s.listen, 4), sock=f"listener-{ip}")
                listeners[ip] = s
            tcp[ip] = {"bind": err or "ok"}
        for ip in listeners:
            cl = socket.socket()
            keep.append(cl)
            cl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.do("connect", functools.partial(cl.connect, (ip, tcp_port)), sock="client")
            ready, _, _ = select.select(list(listeners.values()), [], [], scaled(ASK_S))
            tcp[ip]["accepted_by"] = next((k for k, v in listeners.items() if v in ready), None)
            for r in ready:
                keep.append(r.accept()[0])
    finally:
        for s in keep:
            s.close()

    # UDP: specific sockets plus a wildcard one; which socket gets a datagram sent to each address?
    udp_port = free_port("udp")
    cu = calls.with_context(use="c-udp", port=udp_port)
    socks: dict[str, socket.socket] = {}
    udp: dict[str, Any] = {"port": udp_port, "binds": {}, "received_by": {}}
    try:
        for ip in ("127.0.0.1", "127.0.0.2", "0.0.0.0"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            set_opt(cu, s, "reuseaddr", f"udp-{ip}")
            _, err = cu.do("bind", functools.partial(s.bind, (ip, udp_port)), sock=f"udp-{ip}")
            udp["binds"][ip] = err or "ok"
            if err is None:
                socks[ip] = s
                s.setblocking(False)
            else:
                s.close()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for dst in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            cu.do("sendto", functools.partial(tx.sendto, dst.encode(), (dst, udp_port)), sock="sender")
            ready, _, _ = select.select(list(socks.values()), [], [], scaled(ASK_S))
            got = []
            for r in ready:
                with contextlib.suppress(BlockingIOError):
                    r.recv(64)
                    got.append(next(k for k, v in socks.items() if v is r))
            udp["received_by"][dst] = got
        tx.close()
    finally:
        for s in socks.values():
            s.close()
    return {"tcp_port": tcp_port, "tcp": tcp, "udp": udp}


# ---------------------------------------------------------------------------------------------
# (d) completely duplicate bindings


def _use_d(ctx: RunContext, calls: Calls) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cases = {
        "tcp_first_listening": BindCase("tcp", "lo1", "lo1", "reuseaddr", "reuseaddr", "listening"),
        "tcp_both_bound_then_listen": BindCase("tcp", "lo1", "lo1", "reuseaddr", "reuseaddr", "bound"),
        "udp_unicast": BindCase("udp", "lo1", "lo1", "reuseaddr", "reuseaddr", "bound"),
    }
    for name, case in cases.items():
        m, _ = measure_case(calls.with_context(use="d", part=name), case, ipv6=False)
        lin, bsd = expected_linux(case), expected_bsd(case)
        out[name] = {"measured": m.verdict().text(), "expected_linux": lin.text(), "stevens": bsd.text(),
                     "rule": lin.rule, "matches_linux": m.verdict().same_result(lin), "port": m.port}
    # UDP multicast: both bind the group address with SO_REUSEADDR; delivery needs a lab namespace (root)
    port = free_port("udp")
    c = calls.with_context(use="d", part="udp_multicast_bind", port=port)
    socks = []
    binds = []
    for i in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(s)
        set_opt(c, s, "reuseaddr", f"member{i}")
        _, err = c.do("bind", functools.partial(s.bind, ("239.1.2.3", port)), sock=f"member{i}")
        binds.append(err or "ok")
    for s in socks:
        s.close()
    mc: dict[str, Any] = {"binds": binds, "port": port}
    if ctx.root and IS_LINUX:
        from lab.experiments.multicast_reuse import _case

        ns = make_netns(ctx, "d", multicast=True)
        r = _case(ctx, calls.with_context(use="d"), ns, "reuseaddr", port)
        mc.update(netns=ns, received=r.get("received"), sent=r.get("sent"),
                  every_socket_got_every_datagram=r.get("every_socket_got_every_datagram"))
    out["udp_multicast"] = mc
    return out


# ---------------------------------------------------------------------------------------------


def run(ctx: RunContext) -> Outcome:
    calls = Calls(ctx.events)
    story: list[tuple[str, str]] = []
    notes: list[str] = []
    skipped: list[str] = []
    a_ports = [free_port("tcp", ipv6=False) for _ in A_CASES]
    b_ports = [free_port("tcp", ipv6=False) for _ in B_CASES]
    c_port = free_port("tcp", ipv6=False)
    rec_notes: list[tuple[int, str]] = []
    with Recording(ctx, ports=a_ports + b_ports + [c_port]) as rec:
        ctx.say("(a) restart with connections of the old server on the port")
        a = _use_a(ctx, calls, a_ports, rec_notes)
        ctx.say("(b) several server processes, one port, different local IPs")
        b = _use_b(ctx, calls, b_ports)
        ctx.say("(c) one process, several sockets, one port, different IPs")
        c = _use_c(ctx, calls, c_port)
    if rec.skipped_reason:
        skipped.append(rec.skipped_reason)
    else:
        for port, text in rec_notes:
            syns = rec.find(port=port, flags=int(Flags.SYN), exact=True)
            if len(syns) >= 2:
                rec.note(syns[-1].frame, text)
        for r in a:
            syns = rec.find(port=r["port"], flags=int(Flags.SYN), exact=True)
            if syns:
                rec.note(syns[0].frame, f"restart case: old server {OPTNAME[r['old_option']]}, connection of the "
                                        f"old server left {r['first_state']}; new server {OPTNAME[r['new_option']]}"
                                        f" -> {r['measured']}")
    cap = rec.save()
    ctx.say("(d) completely duplicate bindings")
    d = _use_d(ctx, calls)

    stevens = {
        "a": "SO_REUSEADDR allows a listening server to start and bind its well-known port, even if previously "
             "established connections exist that use this port as their local port",
        "b": "SO_REUSEADDR allows a new server to be started on the same port as an existing server bound to the "
             "wildcard address, as long as each instance binds a different local IP address",
        "c": "SO_REUSEADDR allows a single process to bind the same port to multiple sockets, as long as each bind "
             "specifies a different local IP address",
        "d": "SO_REUSEADDR allows completely duplicate bindings ... normally this feature is supported only for "
             "UDP sockets, for multicasting",
    }
    story.append(("(a) Stevens: " + stevens["a"], ""))
    for r in a:
        left = {"connected": "still ESTABLISHED (only the listener closed)",
                "time_wait": "in TIME_WAIT (the server closed first)"}[r["first_state"]]
        story.append((f"old server {OPTNAME[r['old_option']]}, its connection {left}, /proc shows "
                      f"{', '.join(r['left_on_port'] or []) or '?'} on the port; restarted server "
                      f"{OPTNAME[r['new_option']]} binds and listens", f"{r['measured']} — {r['verdict']}"))
    story.append(("(b) Stevens: " + stevens["b"], ""))
    for r in b:
        story.append((f"instance 1 ({r['instance1']}:{r['port']}) listening; instance 2 binds {r['instance2']} "
                      f"with {OPTNAME[r['option']]} on both",
                      f"instance 2: {r['instance2_result']}; answers: {r['answers']} — {r['verdict']}"))
    story.append(("(c) Stevens: " + stevens["c"], ""))
    story.append((f"one process: TCP listeners on 127.0.0.1/2/3 port {c['tcp_port']} (no option)",
                  "; ".join(f"{ip}: bind {v['bind']}, a connection to it was accepted by the {v.get('accepted_by')}"
                            " socket" for ip, v in c["tcp"].items())))
    story.append((f"one process: UDP sockets on 127.0.0.1, 127.0.0.2 and 0.0.0.0 port {c['udp']['port']} "
                  "(SO_REUSEADDR); one datagram to each of .1, .2, .3",
                  f"binds {c['udp']['binds']}; received by {c['udp']['received_by']} (the most specific "
                  "binding wins)"))
    story.append(("(d) Stevens: " + stevens["d"], ""))
    for name, r in d.items():
        if name == "udp_multicast":
            story.append((f"two UDP sockets bind 239.1.2.3:{r['port']} with SO_REUSEADDR",
                          f"binds {r['binds']}" + (f"; in {r['netns']} each received {r['received']} of "
                                                   f"{r['sent']} datagrams" if "received" in r else "")))
        else:
            story.append((f"{name.replace('_', ' ')}: 127.0.0.1 twice, SO_REUSEADDR on both",
                          f"{r['measured']} (Linux rules: {r['expected_linux']}; Stevens: {r['stevens']})"))
    if "received" not in d["udp_multicast"]:
        skipped.append("(d) multicast delivery: needs root for a lab namespace with a multicast route")

    checks: dict[str, bool] = {
        "a_as_linux_rules": all(r["measured"] == r["expected_linux"] for r in a),
        "b_as_linux_rules": all(r["instance2_result"] == r["expected_linux"] for r in b),
        "c_tcp_each_ip_own_socket": all(v["bind"] == "ok" and v.get("accepted_by") == ip for ip, v in c["tcp"].items()),
        "c_udp_most_specific": c["udp"]["received_by"] == {"127.0.0.1": ["127.0.0.1"], "127.0.0.2": ["127.0.0.2"],
                                                           "127.0.0.3": ["0.0.0.0"]},
        "d_as_linux_rules": all(r["matches_linux"] for k, r in d.items() if k != "udp_multicast"),
        "d_multicast_duplicate_bind": d["udp_multicast"]["binds"] == ["ok", "ok"],
    }
    if "received" in d["udp_multicast"]:
        checks["d_multicast_every_socket"] = bool(d["udp_multicast"]["every_socket_got_every_datagram"])
    if IS_LINUX:
        notes += [
            "(a) Linux needs SO_REUSEADDR on the OLD server too: the connection (ESTABLISHED or TIME_WAIT) keeps the "
            "flag of the listener it was accepted from; Stevens' use needs only the new server to set it",
            "(b) Linux refuses a specific-address TCP server on a port where a wildcard server listens (and the "
            "reverse), SO_REUSEADDR or not; servers on different specific addresses need no option at all",
            "(d) Linux allows completely duplicate UDP unicast bindings with SO_REUSEADDR on both (not just "
            "multicast); only the last bound socket then receives unicast datagrams (see reuseport). TCP duplicates "
            "bind but only one of them can listen",
        ]
    # Stevens' text per use, against what was measured
    stevens_holds = {
        "a": all(r["measured"] == r["stevens"] for r in a),
        "b": all(r["instance2_result"] == r["stevens"] for r in b),
        "c": checks["c_tcp_each_ip_own_socket"] and all(v == "ok" for v in c["udp"]["binds"].values()),
        "d": d["udp_multicast"]["binds"] == ["ok", "ok"]
        and d["tcp_first_listening"]["measured"] == d["tcp_first_listening"]["stevens"],
    }
    for use, held in stevens_holds.items():
        story.append((f"({use}) Stevens' description", "holds here" if held else "does NOT hold here as written"))
    obs = {"stevens_holds": stevens_holds, "lore_holds": all(stevens_holds.values()),
           "a_restart": a, "b_instances": b, "c_one_process": c, "d_duplicates": d, "checks": checks,
           "capture": rec.summary(), "stevens": stevens}
    return Outcome(reproduced=all(checks.values()), observations=obs, story=story, notes=notes, skipped=skipped,
                   capture=cap, analysis=rec.analysis())


EXPERIMENT = Experiment(
    id="reuseaddr-uses",
    claim="Each of Stevens' four uses of SO_REUSEADDR, measured: Linux allows restart over old connections only "
          "when old and new server set it, separates instances by specific address without it, and allows "
          "duplicate bindings for UDP (multicast and unicast) but not for TCP listeners.",
    lore="Stevens UNP 7.5: SO_REUSEADDR (1) restarts a server over existing connections, (2) runs instances on "
         "different local IPs next to a wildcard server, (3) binds one port on several IPs in one process, "
         "(4) allows completely duplicate bindings for UDP multicast.",
    run=run,
    topology="loopback",
    needs_root=False,
    duration_hint_s=2.0,
    tags=("sockopt",),
)
