"""reuseport: SO_REUSEPORT spreads TCP connections and UDP datagrams over sockets that all set it.

Measured on loopback: 200 TCP connections to two SO_REUSEPORT listeners (accepts counted per
listener), 100 UDP sources x 2 datagrams to two SO_REUSEPORT receivers (per socket, and whether
one source always lands on the same socket), the all-sockets-must-set-it rule, the same-user rule
(a child process that setuid()s to nobody, root only), and UDP unicast with SO_REUSEADDR only.
"""

from __future__ import annotations

import functools
import json
import os
import select
import socket
from typing import Any

from lab.kernel.recording import Recording
from lab.kernel.sockopts import LINGER_RST, SO_REUSEPORT, Calls, errno_name, free_port, set_opt
from lab.run.context import Experiment, Outcome, RunContext

HOST = "127.0.0.1"
NOBODY = 65534
TCP_CONNECTIONS = 200
UDP_SOURCES = 100


def _sock(calls: Calls, kind: int, opt: str, who: str, port: int,
          listen: bool = False) -> tuple[socket.socket, str | None]:
    s = socket.socket(socket.AF_INET, kind)
    set_opt(calls, s, opt, who)
    _, err = calls.do("bind", lambda: s.bind((HOST, port)), sock=who, addr=[HOST, port])
    if err is None and listen:
        _, err = calls.do("listen", lambda: s.listen(TCP_CONNECTIONS + 16), sock=who)
        return s, (f"listen:{err}" if err else None)
    return s, (f"bind:{err}" if err else None)


def _tcp_spread(ctx: RunContext, calls: Calls, port: int) -> dict[str, Any]:
    c = calls.with_context(part="tcp-spread", port=port)
    listeners = []
    for i in range(2):
        s, err = _sock(c, socket.SOCK_STREAM, "reuseport", f"listener{i}", port, listen=True)
        listeners.append(s)
        if err:
            for x in listeners:
                x.close()
            return {"error": f"listener{i}: {err}"}
    counts = [0, 0]
    clients = []
    children = []
    try:
        for _ in range(TCP_CONNECTIONS):
            cl = socket.socket()
            cl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)  # no TIME_WAIT left on the host
            clients.append(cl)
            _, err = c.do("connect", functools.partial(cl.connect, (HOST, port)), sock="client", addr=[HOST, port])
            if err:
                return {"error": f"connect: {err}"}
        for s in listeners:
            s.setblocking(False)
        pending = TCP_CONNECTIONS
        while pending:
            ready, _, _ = select.select(listeners, [], [], 2.0)
            if not ready:
                break
            for s in ready:
                try:
                    child, _ = s.accept()
                except BlockingIOError:
                    continue
                children.append(child)
                counts[listeners.index(s)] += 1
                pending -= 1
        ctx.events.log("measure", part="tcp-spread", per_listener=counts)
    finally:
        for x in clients + children + listeners:   # clients first, with RST: no TIME_WAIT on the host
            x.close()
    return {"connections": TCP_CONNECTIONS, "per_listener": counts}


def _udp_spread(calls: Calls, port: int) -> dict[str, Any]:
    c = calls.with_context(part="udp-spread", port=port)
    receivers = []
    for i in range(2):
        s, err = _sock(c, socket.SOCK_DGRAM, "reuseport", f"receiver{i}", port)
        receivers.append(s)
        if err:
            for x in receivers:
                x.close()
            return {"error": f"receiver{i}: {err}"}
    counts = [0, 0]
    by_source: dict[int, set[int]] = {}
    try:
        senders = []
        for _ in range(UDP_SOURCES):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx.bind((HOST, 0))
            senders.append(tx)
        for _round in range(2):
            for tx in senders:
                c.do("sendto", functools.partial(tx.sendto, b"x", (HOST, port)), sock="sender", addr=[HOST, port])
        for s in receivers:
            s.setblocking(False)
        got = 0
        while got < 2 * UDP_SOURCES:
            ready, _, _ = select.select(receivers, [], [], 1.0)
            if not ready:
                break
            for s in ready:
                try:
                    _, src = s.recvfrom(64)
                except BlockingIOError:
                    continue
                i = receivers.index(s)
                counts[i] += 1
                by_source.setdefault(src[1], set()).add(i)
                got += 1
        for tx in senders:
            tx.close()
    finally:
        for x in receivers:
            x.close()
    sticky = sum(1 for v in by_source.values() if len(v) == 1)
    return {"sources": UDP_SOURCES, "datagrams": 2 * UDP_SOURCES, "per_socket": counts,
            "sources_always_same_socket": sticky, "sources_seen": len(by_source)}


def _all_must_set(calls: Calls) -> dict[str, Any]:
    """TCP and UDP: two SO_REUSEPORT sockets, then a third without -> EADDRINUSE; and the first without,
    the second with -> EADDRINUSE."""
    out: dict[str, Any] = {}
    for proto, kind, listen in (("tcp", socket.SOCK_STREAM, True), ("udp", socket.SOCK_DGRAM, False)):
        port = free_port(proto)
        c = calls.with_context(part=f"{proto}-all-must-set", port=port)
        socks = []
        errs = []
        for i, opt in enumerate(("reuseport", "reuseport", "none")):
            s, err = _sock(c, kind, opt, f"s{i}", port, listen=listen)
            socks.append(s)
            errs.append(err or "ok")
        for s in socks:
            s.close()
        port2 = free_port(proto)
        c2 = calls.with_context(part=f"{proto}-first-without", port=port2)
        a, err_a = _sock(c2, kind, "none", "first", port2, listen=listen)
        b, err_b = _sock(c2, kind, "reuseport", "second", port2, listen=listen)
        a.close()
        b.close()
        out[proto] = {"two_with_then_third_without": errs, "first_without_second_with": [err_a or "ok", err_b or "ok"]}
    return out


def _bind_as(uid: int, proto: str, port: int, listen: bool) -> dict[str, Any]:
    """fork(); the child setuid()s to `uid`, binds (and listens on) the port with SO_REUSEPORT and
    reports through a pipe. fork, not exec: the interpreter may not be executable by that user."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup, report and _exit
        res: dict[str, Any] = {}
        try:
            os.setgid(uid)
            os.setuid(uid)
            res["uid"] = os.geteuid()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT or 15, 1)
            s.bind((HOST, port))
            res["bind"] = "ok"
            if listen:
                s.listen(4)
                res["listen"] = "ok"
        except OSError as exc:
            res["errno"] = errno_name(exc)
        os.write(wfd, json.dumps(res).encode())
        os._exit(0)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 4096):
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return dict(json.loads(data or b"{}"))


def _same_user(ctx: RunContext, calls: Calls) -> dict[str, Any] | None:
    if not ctx.root:
        return None
    out: dict[str, Any] = {}
    for proto, kind, listen in (("tcp", socket.SOCK_STREAM, True), ("udp", socket.SOCK_DGRAM, False)):
        port = free_port(proto)
        c = calls.with_context(part=f"{proto}-same-user", port=port)
        s, err = _sock(c, kind, "reuseport", "root", port, listen=listen)
        try:
            child = _bind_as(NOBODY, proto, port, listen)
        finally:
            s.close()
        ctx.events.log("call", op="bind", part=f"{proto}-same-user", sock="other-user", uid=NOBODY,
                       ok=child.get("errno") is None, errno=child.get("errno"), port=port)
        out[proto] = {"root_socket": err or "ok", "other_user": child}
    return out


def _udp_reuseaddr_unicast(calls: Calls) -> dict[str, Any]:
    port = free_port("udp")
    c = calls.with_context(part="udp-reuseaddr-unicast", port=port)
    a, ea = _sock(c, socket.SOCK_DGRAM, "reuseaddr", "first", port)
    b, eb = _sock(c, socket.SOCK_DGRAM, "reuseaddr", "second", port)
    counts = [0, 0]
    try:
        if ea or eb:
            return {"binds": [ea or "ok", eb or "ok"]}
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
        for tx in senders:
            tx.bind((HOST, 0))
            for _ in range(2):
                tx.sendto(b"u", (HOST, port))
        for s in (a, b):
            s.setblocking(False)
        while sum(counts) < 20:
            ready, _, _ = select.select([a, b], [], [], 0.5)
            if not ready:
                break
            for s in ready:
                try:
                    s.recv(64)
                    counts[0 if s is a else 1] += 1
                except BlockingIOError:
                    pass
        for tx in senders:
            tx.close()
        c.events.log("measure", part="udp-reuseaddr-unicast", per_socket=counts)
    finally:
        a.close()
        b.close()
    return {"binds": ["ok", "ok"], "datagrams": 20, "per_socket": counts}


def run(ctx: RunContext) -> Outcome:
    calls = Calls(ctx.events)
    story: list[tuple[str, str]] = []
    notes: list[str] = []
    skipped: list[str] = []
    obs: dict[str, Any] = {}
    if SO_REUSEPORT is None:
        return Outcome(False, {"so_reuseport": None}, skipped=["SO_REUSEPORT is not defined on this OS"])

    port = free_port("tcp")
    ctx.say("TCP: 200 connections to two SO_REUSEPORT listeners")
    with Recording(ctx, ports=[port]) as rec:
        tcp = _tcp_spread(ctx, calls, port)
    obs["tcp_spread"] = tcp
    cap = rec.save()
    if rec.skipped_reason:
        skipped.append(rec.skipped_reason)
    else:
        syns = [s for s in rec.segments if s.dport == port and s.flags & 0x02 and not s.flags & 0x10]
        obs["tcp_spread"]["syns_captured"] = len(syns)
    split = tcp.get("per_listener", [0, 0])
    story.append((f"two listeners with SO_REUSEPORT on {HOST}:{port}; {TCP_CONNECTIONS} connections",
                  f"accepted {split[0]} / {split[1]}" if "error" not in tcp else tcp["error"]))

    ctx.say("UDP: 100 sources x 2 datagrams to two SO_REUSEPORT sockets")
    udp = _udp_spread(calls, free_port("udp"))
    obs["udp_spread"] = udp
    us = udp.get("per_socket", [0, 0])
    story.append((f"two UDP sockets with SO_REUSEPORT; {UDP_SOURCES} sources send 2 datagrams each",
                  f"received {us[0]} / {us[1]}; {udp.get('sources_always_same_socket')} of "
                  f"{udp.get('sources_seen')} sources always reached the same socket (hash of the four-tuple)"
                  if "error" not in udp else udp["error"]))

    ctx.say("all sockets must set SO_REUSEPORT")
    rule = _all_must_set(calls)
    obs["all_must_set"] = rule
    for proto, r in rule.items():
        story.append((f"{proto.upper()}: two sockets with SO_REUSEPORT, then a third without",
                      ", ".join(r["two_with_then_third_without"])))
        story.append((f"{proto.upper()}: first without SO_REUSEPORT, second with",
                      ", ".join(r["first_without_second_with"])))

    same = _same_user(ctx, calls)
    if same is None:
        skipped.append("same-user rule: needs root to run a second socket as another user (nobody)")
    else:
        obs["same_user"] = same
        for proto, r in same.items():
            story.append((f"{proto.upper()}: root holds the port with SO_REUSEPORT; a process running as nobody "
                          "binds it with SO_REUSEPORT too",
                          r["other_user"].get("errno") or ("ok" if "bind" in r["other_user"] else
                                                           str(r["other_user"]))))

    ctx.say("UDP unicast with SO_REUSEADDR only")
    ua = _udp_reuseaddr_unicast(calls)
    obs["udp_reuseaddr_unicast"] = ua
    story.append(("two UDP sockets with SO_REUSEADDR only on one address; 10 sources x 2 datagrams",
                  f"both bound; received {ua.get('per_socket')}" if "per_socket" in ua else f"binds {ua['binds']}"))

    # verdicts against the documented Linux behaviour
    checks = {
        "tcp_spread_both_nonzero": "error" not in tcp and min(split) > 0 and sum(split) == TCP_CONNECTIONS,
        "udp_spread_both_nonzero": "error" not in udp and min(us) > 0 and sum(us) == 2 * UDP_SOURCES,
        "udp_source_sticky": udp.get("sources_always_same_socket") == udp.get("sources_seen") == UDP_SOURCES,
        "third_without_refused": all(r["two_with_then_third_without"][:2] == ["ok", "ok"]
                                     and r["two_with_then_third_without"][2] == "bind:EADDRINUSE"
                                     for r in rule.values()),
        "first_without_refused": all(r["first_without_second_with"] == ["ok", "bind:EADDRINUSE"]
                                     for r in rule.values()),
        "udp_reuseaddr_no_spread": ua.get("per_socket") is not None and sorted(ua["per_socket"]) == [0, 20],
    }
    if same is not None:
        checks["other_user_refused"] = all(r["root_socket"] == "ok" and r["other_user"].get("errno") == "EADDRINUSE"
                                           for r in same.values())
    obs["checks"] = checks
    if ua.get("per_socket") and sorted(ua["per_socket"]) == [0, 20]:
        last = "second (last bound)" if ua["per_socket"][1] == 20 else "first"
        notes.append(f"UDP unicast with SO_REUSEADDR only: Linux lets both sockets bind the same address, but all "
                     f"20 datagrams went to the {last} socket — no spreading and no copies (BSD would refuse the "
                     "second bind)")
    if same is not None and checks.get("other_user_refused"):
        notes.append("Linux adds a rule Stevens' description does not have: SO_REUSEPORT sockets must belong to the "
                     "same effective user (a TIME_WAIT socket is exempt), so another user cannot take over the port")
    return Outcome(reproduced=all(checks.values()), observations=obs, story=story, notes=notes, skipped=skipped,
                   capture=cap, analysis=rec.analysis())


EXPERIMENT = Experiment(
    id="reuseport",
    claim="SO_REUSEPORT lets sockets that all set it (same user) share one address: the kernel spreads TCP "
          "connections and UDP flows across them; a socket without it, or of another user, gets EADDRINUSE.",
    lore="SO_REUSEPORT allows completely duplicate bindings, but only if every socket sets it (Stevens, BSD); "
         "on Linux it also load-balances.",
    run=run,
    topology="loopback",
    needs_root=False,
    duration_hint_s=1.5,
    tags=("sockopt",),
)
