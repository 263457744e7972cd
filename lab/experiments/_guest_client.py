"""guest-client: two kernels on the two ends of one connection.

The client runs in a user-mode Linux guest of another kernel (lab.run.guests; default 6.1), the server in a lab
namespace of this host, joined by a private bridge in that namespace (the guest's eth0 is a TAP port of it) on
a documentation subnet the host does not use (lab.run.addrplan). The capture is taken on the bridge and analyzed
like any other. Scenario: the server closes first (TIME_WAIT on this host's kernel); the guest client closes,
then reconnects from the same port: its SYN lands in the server's TIME_WAIT, and this kernel decides by the
guest kernel's ISN and timestamp (RFC 6191) whether to reopen the connection.

Not part of `twlab run all` (the module name starts with '_': it needs an installed guest kernel); run it with
`twlab guest-client [--kernel VER]`.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.run.context import Experiment, Outcome, RunContext

PORT = 7000
CLIENT_PORT = 41500
DEFAULT_KERNEL = "6.1"
REUSE_PAUSE_S = 1.0             # the client's pause between its close and its new SYN (the server holds TIME_WAIT)
ACCEPT_WAIT_S = 60.0            # the server's first accept waits out the guest's boot (idle machine; scaled)
GUEST_RUN_S = 120.0             # boot + client on an idle machine (scaled)

# The guest's program: plain sockets on the guest kernel, one JSON line with what each call did.
CLIENT = r'''
import json, socket, sys, time
server, port, cport, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = {"uname": open("/proc/sys/kernel/osrelease").read().strip()}
def sock():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", cport))
    s.settimeout(60)
    return s
def step(name, fn):
    try:
        out[name] = {"ok": True, "result": fn()}
    except OSError as e:
        out[name] = {"ok": False, "errno": e.errno, "error": str(e)}
        raise
try:
    s = sock()
    step("connect1", lambda: s.connect((server, port)))
    step("send1", lambda: s.sendall(b"HELLO-1"))
    step("recv_eof1", lambda: len(s.recv(100)))      # the server closes first
    step("close1", s.close)
    time.sleep(pause)
    s2 = sock()
    step("connect2", lambda: s2.connect((server, port)))   # the SYN into the server's TIME_WAIT
    step("send2", lambda: s2.sendall(b"HELLO-2"))
    step("close2", s2.close)
except OSError:
    pass
print(json.dumps(out), flush=True)
'''


def server_steps(ip: str) -> list[dict[str, Any]]:
    """This host's server: accept, read, close first (TIME_WAIT here); accept the reopened connection and read."""
    return [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [ip, PORT]},
        {"op": "listen", "sock": "l", "label": "listen"},
        {"op": "accept", "sock": "l", "as": "c", "timeout_s": ACCEPT_WAIT_S, "label": "accept1"},
        {"op": "recv", "sock": "c", "timeout_s": 10, "label": "recv1"},
        {"op": "close", "sock": "c", "label": "close1"},
        {"op": "accept", "sock": "l", "as": "c2", "timeout_s": 30, "label": "accept2", "on_error": "continue"},
        {"op": "recv", "sock": "c2", "timeout_s": 10, "label": "recv2", "on_error": "continue"},
        {"op": "gate", "name": "end"},
        {"op": "close", "sock": "l", "label": "close-listener"},
    ]


def _bridge(ctx: RunContext, ns: Any, server_ip: str, prefix: int) -> tuple[str, str]:
    """A bridge with this host's server address and a TAP port for the guest, all inside the lab namespace."""
    br, tap = ctx.name("br"), ctx.name("tp")
    for argv in (["ip", "link", "add", br, "type", "bridge"],
                 ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                 ["ip", "link", "set", tap, "master", br],
                 ["ip", "addr", "add", f"{server_ip}/{prefix}", "dev", br],
                 ["ip", "link", "set", tap, "up"],
                 ["ip", "link", "set", br, "up"]):
        ns.run(argv)
    ctx.events.log("bridge", netns=ns.name, bridge=br, tap=tap, server=server_ip)
    return br, tap


def _connections(analysis: dict[str, Any] | None) -> list[dict[str, Any]]:
    return sorted((analysis or {}).get("connections", []), key=lambda c: c.get("first_frame", 0))


def run(ctx: RunContext) -> Outcome:
    from lab.kernel.agent import Agent
    from lab.kernel.hosts.netns import Namespace
    from lab.kernel.recording import Recording
    from lab.run import addrplan, guests
    from lab.run.context import kernel_release, scaled

    spec = str(ctx.options.get("client_kernel") or DEFAULT_KERNEL)
    try:
        kernel = guests.resolve(spec)
    except LabError as exc:  # not installed here: an environment verdict, with the set-up command
        return Outcome.not_set_up(exc.one_line())
    net = ipaddress.ip_network(addrplan.current().pair4)
    server_ip, client_ip = str(net[1]), str(net[2])
    ns = Namespace.create(ctx, "h")
    _, tap = _bridge(ctx, ns, server_ip, net.prefixlen)
    server = Agent.start(ctx, server_steps(server_ip), netns=ns.name, name="server")
    server.wait("listen")
    share = ctx.out_dir / "guest-client"
    share.mkdir(parents=True, exist_ok=True)
    script = share / "client.py"
    script.write_text(CLIENT)
    argv = [sys.executable, str(script.resolve()), server_ip, str(PORT), str(CLIENT_PORT), str(REUSE_PAUSE_S)]
    with Recording(ctx, ports=[PORT], iface=ctx.name("br"), netns=ns.name) as rec:
        ctx.say(f"booting the {spec} guest (client {client_ip}) beside this host's server {server_ip}")
        gr = guests.boot_program(kernel, argv, share, scaled(GUEST_RUN_S),
                                 net=guests.GuestNet(ns.name, tap, f"{client_ip}/{net.prefixlen}"),
                                 on_event=lambda text: ctx.say(text))
        server.release("end")
        records: dict[str, Any] = {str(r.get("label")): r for r in server.finish()}
    client = gr.results[0] if gr.results else {}
    capture = rec.save()
    analysis = rec.analysis()
    return _outcome(spec, gr, client, records, analysis, capture, kernel_release(), client_ip, server_ip)


def _outcome(spec: str, gr: Any, client: dict[str, Any], server: dict[str, Any], analysis: dict[str, Any] | None,
             capture: Path | None, host_kernel: str, client_ip: str, server_ip: str) -> Outcome:
    conns = _connections(analysis)
    findings = (analysis or {}).get("findings", [])
    reuse = [f for f in findings if f.get("kind") in ("reuse-in-time-wait", "reuse-after-time-wait")]
    first = conns[0] if conns else {}
    tw_sides = [w.get("side") for w in first.get("time_wait", [])]
    reopened = bool(client.get("connect2", {}).get("ok")) and bool(server.get("accept2", {}).get("ok"))
    observations: dict[str, Any] = {
        "client_kernel": client.get("uname") or gr.info.get("uname"), "server_kernel": host_kernel,
        "client": f"{client_ip}:{CLIENT_PORT}", "server": f"{server_ip}:{PORT}", "guest": guests_fields(gr),
        "client_calls": client, "server_calls": {k: {"ok": v.get("ok"), "errno": v.get("errno")}
                                                 for k, v in server.items() if k},
        "first_close": first.get("close"), "first_time_wait_sides": tw_sides,
        "connections": len(conns), "reopened_from_time_wait": reopened,
        "findings": [{"kind": f.get("kind"), "frames": f.get("frames"), "detail": f.get("detail")} for f in reuse],
    }
    if gr.error:
        return Outcome.not_set_up(gr.error, observations)
    if not client.get("connect1", {}).get("ok"):
        return Outcome.not_set_up(f"the {spec} guest's client could not connect: {client.get('connect1')}",
                                  observations)
    story = [
        (f"client in a {observations['client_kernel']} guest (user-mode Linux) connects from {client_ip}:"
         f"{CLIENT_PORT} to this host's {host_kernel} server {server_ip}:{PORT} across a private bridge",
         "connected" if client.get("connect1", {}).get("ok") else "failed"),
        ("the server closes first, the guest client closes", f"TIME_WAIT on: {', '.join(map(str, tw_sides)) or '-'}"),
        (f"{REUSE_PAUSE_S:g} s later the guest client sends a new SYN from the same port",
         "this host reopened the connection from TIME_WAIT" if reopened else
         f"not reopened ({client.get('connect2')})"),
        ("the analyzer reads the bridge capture", ", ".join(f"{f['kind']}: {f.get('detail')}" for f in reuse)
         or "no reuse finding"),
    ]
    reproduced = reopened and tw_sides == ["server"] and bool(reuse) and capture is not None
    notes = [f"Two kernels on one connection: the {observations['client_kernel']} guest chose the new SYN's ISN "
             f"and timestamp, this host's {host_kernel} kernel judged it from its TIME_WAIT."]
    return Outcome(reproduced, observations, story=story, notes=notes, capture=capture, analysis=analysis)


def guests_fields(gr: Any) -> dict[str, Any]:
    return {"kernel": gr.kernel.label, "uname": gr.info.get("uname"), "hz": gr.info.get("hz"),
            "cpus": gr.info.get("cpus"), "boot_s": gr.boot_s, "wall_s": gr.wall_s, "error": gr.error}


EXPERIMENT = Experiment(
    id="guest-client",
    claim="a SYN from another kernel's client into this kernel's server TIME_WAIT reopens the connection when its "
          "ISN or timestamp is newer",
    lore="RFC 6191 / RFC 1122 4.2.2.13: TIME_WAIT may accept a new SYN whose sequence number (or timestamp) is "
         "above the old connection's",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=30.0,
    tags=("time-wait", "reuse", "guest"),
)
