"""multicast-reuse: two sockets bound to the same (group, port) both receive every datagram.

In a lab namespace of its own (lo up, multicast on, a 224.0.0.0/4 route), two UDP sockets bind
(239.1.2.3, P) with SO_REUSEADDR (and then with SO_REUSEPORT), join the group, and a third socket
sends 20 datagrams to the group. Without either option the second bind must fail.
"""

from __future__ import annotations

import functools
import select
import socket
import struct
from typing import Any

from lab.errors import EnvironmentProblem
from lab.kernel.capture import LiveCapture, write_pcapng
from lab.kernel.sockopts import Calls, in_netns, make_netns, set_opt
from lab.run.context import Experiment, Outcome, RunContext

GROUP = "239.1.2.3"
DATAGRAMS = 20


def _receiver(calls: Calls, opt: str, who: str, port: int) -> tuple[socket.socket, str | None]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_opt(calls, s, opt, who)
    _, err = calls.do("bind", functools.partial(s.bind, (GROUP, port)), sock=who, addr=[GROUP, port])
    if err:
        return s, f"bind:{err}"
    mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton("0.0.0.0"))
    _, err = calls.do("setsockopt", functools.partial(s.setsockopt, socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                                      mreq), sock=who, opt="IP_ADD_MEMBERSHIP", group=GROUP)
    return s, (f"join:{err}" if err else None)


def _case(ctx: RunContext, calls: Calls, ns: str, opt: str, port: int) -> dict[str, Any]:
    c = calls.with_context(part=f"multicast-{opt}", port=port, netns=ns)
    socks: list[socket.socket] = []
    try:
        with in_netns(ns):
            errs = []
            for i in range(2):
                s, err = _receiver(c, opt, f"receiver{i}", port)
                socks.append(s)
                errs.append(err or "ok")
            if errs != ["ok", "ok"]:
                return {"option": opt, "binds": errs}
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(tx)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sent = 0
        for i in range(DATAGRAMS):
            _, err = c.do("sendto", functools.partial(tx.sendto, f"d{i}".encode(), (GROUP, port)), sock="sender",
                          addr=[GROUP, port])
            sent += err is None
        got: list[list[str]] = [[], []]
        rx = socks[:2]
        for s in rx:
            s.setblocking(False)
        while sum(map(len, got)) < 2 * sent:
            ready, _, _ = select.select(rx, [], [], 1.0)
            if not ready:
                break
            for s in ready:
                try:
                    got[rx.index(s)].append(s.recv(64).decode())
                except BlockingIOError:
                    pass
        ctx.events.log("measure", part=f"multicast-{opt}", received=[len(g) for g in got])
        return {"option": opt, "binds": errs, "sent": sent, "received": [len(g) for g in got],
                "every_socket_got_every_datagram": all(sorted(g) == sorted(f"d{i}" for i in range(DATAGRAMS))
                                                       for g in got)}
    finally:
        for s in socks:
            s.close()


def run(ctx: RunContext) -> Outcome:
    if not hasattr(socket, "IP_ADD_MEMBERSHIP"):
        raise EnvironmentProblem("this Python has no IP_ADD_MEMBERSHIP", "run it on Linux")
    calls = Calls(ctx.events)
    ctx.say("creating a lab namespace with multicast on lo")
    ns = make_netns(ctx, "m", multicast=True)
    port = 40000 + int(ctx.run_id, 16) % 20000   # the namespace is ours: any port is free
    story: list[tuple[str, str]] = [(f"namespace {ns}: lo up, multicast on, route 224.0.0.0/4 dev lo",
                                     "ready")]
    skipped: list[str] = []
    results = {}
    cap_path = None
    capture_stats: dict[str, Any] | None = None
    try:
        cap = LiveCapture("lo", f"udp port {port}", netns=ns)
        cap.start()
    except EnvironmentProblem as exc:
        cap = None
        skipped.append(f"capture skipped: {exc.one_line()}")
    try:
        for opt in ("reuseaddr", "reuseport", "none"):
            ctx.say(f"two sockets on {GROUP}:{port} with {opt}")
            results[opt] = _case(ctx, calls, ns, opt, port)
    finally:
        if cap is not None:
            stats = cap.stop()
            comments: dict[int, list[str]] = {}
            delivered = [o for o in ("reuseaddr", "reuseport") if "received" in results.get(o, {})]
            if len(cap.packets) == DATAGRAMS * len(delivered):   # one frame per datagram, in send order
                for i in range(len(cap.packets)):
                    r = results[delivered[i // DATAGRAMS]]
                    comments[i + 1] = [f"datagram d{i % DATAGRAMS} to {GROUP}:{port}, both sockets bound with "
                                       f"{r['option']}: the kernel delivered "
                                       f"{r['received'][0]}+{r['received'][1]} copies of {r['sent']} in this case"]
            cap_path = write_pcapng(ctx.out_dir / "capture.pcapng", cap.linktype, cap.snaplen, cap.packets,
                                    comments)
            capture_stats = {"packets": stats.packets, "kernel_drops": stats.kernel_drops}
    label = {"reuseaddr": "SO_REUSEADDR", "reuseport": "SO_REUSEPORT", "none": "no option"}
    for opt, r in results.items():
        if "received" in r:
            story.append((f"two sockets bind {GROUP}:{port} with {label[opt]} on both, join the group; "
                          f"{DATAGRAMS} datagrams sent to the group",
                          f"received {r['received'][0]} and {r['received'][1]}"))
        else:
            story.append((f"two sockets bind {GROUP}:{port} with {label[opt]}", ", ".join(r["binds"])))
    checks = {
        "reuseaddr_every_socket_every_datagram": bool(results["reuseaddr"].get("every_socket_got_every_datagram")),
        "reuseport_every_socket_every_datagram": bool(results["reuseport"].get("every_socket_got_every_datagram")),
        "no_option_second_bind_refused": results["none"].get("binds") == ["ok", "bind:EADDRINUSE"],
    }
    obs: dict[str, Any] = {"group": GROUP, "port": port, "netns": ns, "datagrams": DATAGRAMS, "cases": results,
                           "checks": checks, "capture": capture_stats}
    notes = ["For multicast SO_REUSEPORT does not load-balance: every member socket gets a copy, "
             "exactly as with SO_REUSEADDR (unicast SO_REUSEPORT spreads; see the reuseport experiment)"] \
        if checks["reuseport_every_socket_every_datagram"] else []
    return Outcome(reproduced=all(checks.values()), observations=obs, story=story, notes=notes, skipped=skipped,
                   capture=cap_path)


EXPERIMENT = Experiment(
    id="multicast-reuse",
    claim="Two sockets bound to the same multicast group and port (SO_REUSEADDR or SO_REUSEPORT on both) each "
          "receive every datagram; without either option the second bind fails.",
    lore="Completely duplicate bindings are allowed for UDP multicast with SO_REUSEADDR, and every socket "
         "receives a copy (Stevens UNP 7.5).",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=1.0,
    tags=("sockopt",),
)
