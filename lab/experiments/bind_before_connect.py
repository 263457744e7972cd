"""bind-before-connect: bind(0) before connect() makes the kernel pick the local port at bind() time, when it does
not know the destination yet: the port is reserved for every destination, so a narrow ip_local_port_range runs out
after one connection per port (bind fails EADDRINUSE). A plain connect() picks the port knowing the four-tuple
and shares each port across destinations (range x destinations connections). IP_BIND_ADDRESS_NO_PORT (Linux 4.2,
socket option 24) defers the port choice of a bind(addr, 0) to connect(): sharing is back.

Three cases, each with its own slice of ports in the client's namespace (so the sockets of one case, kept open to
the end, do not take ports from the next), against D listeners on the server (D destinations):
  A. socket(); connect()                                  -> range x D connections
  B. socket(); bind((client, 0)); connect()               -> range connections, then bind() EADDRINUSE
  C. socket(); IP_BIND_ADDRESS_NO_PORT=1; bind((client, 0)); connect() -> range x D again
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.experiments import _wave2 as w2
from lab.kernel import sockdiag
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext

BASE_PORT = 7020       # the server's listeners: 7020, 7021, ...
RANGE_START = 40000    # case slices: 40000.., 40100.., 40200..
KNOBS = {
    "range_size": w2.Knob(10, "ports", "ports in the client's ip_local_port_range per case", 2, 50),
    "destinations": w2.Knob(3, "listeners", "server ports the client connects to, round robin", 2, 8),
}


@dataclass(frozen=True)
class Case:
    key: str
    bind: bool
    no_port: bool
    what: str


CASES = (
    Case("A", False, False, "connect() only"),
    Case("B", True, False, "bind((client, 0)) then connect()"),
    Case("C", True, True, "IP_BIND_ADDRESS_NO_PORT=1, bind((client, 0)), connect()"),
)


def _server(ctx: RunContext, pair: cc.NetnsPair, dests: list[int]) -> Any:
    from lab.kernel.agent import Agent

    steps: list[dict[str, Any]] = []
    for p in dests:
        steps += [{"op": "socket", "sock": f"l{p}"},
                  {"op": "setsockopt", "sock": f"l{p}", "opt": "SO_REUSEADDR", "value": 1},
                  {"op": "bind", "sock": f"l{p}", "addr": [pair.server.addr4, p]},
                  {"op": "listen", "sock": f"l{p}", "backlog": 128, "label": f"listen{p}"}]
    steps.append(cc.gate("end"))   # handshakes complete in the backlog; nobody needs to accept
    server = Agent.start(ctx, steps, netns=pair.server.name, name="server")
    for p in dests:
        cc._ok(server.wait(f"listen{p}"), server)
    return server


def _client_steps(pair: cc.NetnsPair, case: Case, dests: list[int], per_dest: int) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    n = 0
    for _ in range(per_dest):
        for p in dests:
            s = f"s{n}"
            steps.append({"op": "socket", "sock": s})
            if case.no_port:
                steps.append({"op": "setsockopt", "sock": s, "opt": "IP_BIND_ADDRESS_NO_PORT", "value": 1,
                              "label": f"nop{n}"})
            if case.bind:
                steps.append({"op": "bind", "sock": s, "addr": [pair.client.addr4, 0], "label": f"bind{n}",
                              "on_error": "continue"})
            steps.append({"op": "connect", "sock": s, "addr": [pair.server.addr4, p], "label": f"connect{n}",
                          "on_error": "continue", "dest": p})
            n += 1
    return [*steps, cc.gate("end")]


def _run_case(ctx: RunContext, pair: cc.NetnsPair, case: Case, i: int, dests: list[int], size: int
              ) -> dict[str, Any]:
    from lab.kernel.agent import Agent

    lo = RANGE_START + 100 * i
    pair.client.sysctl("net.ipv4.ip_local_port_range", f"{lo} {lo + size - 1}")
    steps = _client_steps(pair, case, dests, size)
    client = Agent.start(ctx, steps, netns=pair.client.name, name=f"client-{case.key}")
    last = len(dests) * size - 1
    client.wait(f"connect{last}", 30)
    recs = [r for r in client.records if r["op"] in ("bind", "connect", "setsockopt")]
    bad = next((r for r in recs if r["op"] == "setsockopt" and not r["ok"]), None)
    if bad is not None:
        raise CouldNotRun(f"case {case.key}: setsockopt IP_BIND_ADDRESS_NO_PORT failed: {bad['errno']}")
    connects = [r for r in recs if r["op"] == "connect"]
    odd = next((r for r in connects if not r["ok"] and r["errno"] not in ("EADDRNOTAVAIL", "EADDRINUSE")), None)
    if odd is not None:
        raise CouldNotRun(f"case {case.key}: {odd['label']} to the lab server failed with {odd['errno']}")
    binds = [r for r in recs if r["op"] == "bind"]
    first_bind_fail = next((r for r in binds if not r["ok"]), None)
    first_conn_fail = next((r for r in connects if not r["ok"]), None)
    dests_of: dict[int, set[int]] = defaultdict(set)
    for s in sockdiag.sockets(netns=pair.client.name, ports=dests, states=["ESTABLISHED"]):
        if lo <= s.sport < lo + size:   # this case's slice only (the earlier cases' sockets are still open)
            dests_of[s.sport].add(s.dport)
    return {
        "range": [lo, lo + size - 1], "attempts": len(connects), "connected": sum(1 for r in connects if r["ok"]),
        "first_bind_failure": ({"n": binds.index(first_bind_fail) + 1, "errno": first_bind_fail["errno"]}
                               if first_bind_fail else None),
        "first_connect_failure": ({"n": connects.index(first_conn_fail) + 1, "errno": first_conn_fail["errno"]}
                                  if first_conn_fail else None),
        "errnos": sorted({r["errno"] for r in recs if r["errno"]}),
        "kernel_established": sum(len(v) for v in dests_of.values()),
        "local_ports": len(dests_of),
        "max_destinations_per_port": max((len(v) for v in dests_of.values()), default=0),
        "ports_to_destinations": {str(k): sorted(v) for k, v in sorted(dests_of.items())},
        "agent": client,
    }


def _note_capture(rec: Any, cases: dict[str, dict[str, Any]], dests: list[int]) -> None:
    syns = [s for s in rec.segments if s.flags & Flags.SYN and not s.flags & Flags.ACK]
    for key, c in cases.items():
        lo, hi = c["range"]
        mine = [s for s in syns if lo <= s.sport <= hi]
        seen: dict[int, int] = {}
        for s in mine:
            if s.sport in seen and seen[s.sport] != s.dport:
                rec.note(s.frame, f"case {key}: local port {s.sport} again, to another destination (:{s.dport}; "
                                  f"before :{seen[s.sport]}): {c['what']} shares ports across destinations")
                break
            seen.setdefault(s.sport, s.dport)
        fail = c["first_bind_failure"] or c["first_connect_failure"]
        if fail and mine:
            rec.note(mine[-1].frame, f"case {key}: the last SYN of {c['what']}; attempt #{fail['n']} then failed "
                                     f"with {fail['errno']} ({c['local_ports']} ports of {hi - lo + 1} in use, "
                                     f"{len(dests)} destinations)")


def run(ctx: RunContext) -> Outcome:
    size = w2.knob(ctx, KNOBS, "range_size")
    dests = [BASE_PORT + i for i in range(w2.knob(ctx, KNOBS, "destinations"))]
    pair = cc.make_pair(ctx)
    cases: dict[str, dict[str, Any]] = {}
    agents = []
    with cc.recording(ctx, pair, ports=dests) as rec:
        server = _server(ctx, pair, dests)
        for i, case in enumerate(CASES):
            ctx.say(f"case {case.key}: {case.what}", i / len(CASES))
            cases[case.key] = {**_run_case(ctx, pair, case, i, dests, size), "what": case.what}
            agents.append(cases[case.key].pop("agent"))
        for a in agents:
            a.kill()
        server.kill()
    _note_capture(rec, cases, dests)
    capture = rec.save()
    a, b, c = cases["A"], cases["B"], cases["C"]
    full = size * len(dests)
    a_ok = a["connected"] == full and a["local_ports"] == size and a["max_destinations_per_port"] == len(dests)
    b_ok = (b["connected"] == size and b["first_bind_failure"] is not None
            and b["first_bind_failure"]["n"] == size + 1 and b["first_bind_failure"]["errno"] == "EADDRINUSE"
            and b["max_destinations_per_port"] == 1)
    c_ok = c["connected"] == full and c["local_ports"] == size
    story = [(f"case {k}: range of {size} ports, {full} attempts round robin over {len(dests)} server ports, "
              f"{x['what']}",
              f"{x['connected']} connected ({x['kernel_established']} ESTABLISHED in sock_diag) on {x['local_ports']} "
              f"local ports, up to {x['max_destinations_per_port']} destinations per port"
              + (f"; attempt #{x['first_bind_failure']['n']}: bind() {x['first_bind_failure']['errno']}"
                 if x["first_bind_failure"] else ""))
             for k, x in cases.items()]
    notes = ["bind(0) reserves the port before the destination is known, so the kernel must keep it unique for "
             "every destination; connect() alone checks only the four-tuple (__inet_hash_connect). Proxies and load "
             "generators that bind a source address should set IP_BIND_ADDRESS_NO_PORT (nginx does for "
             "proxy_bind) or use IP_LOCAL_PORT_RANGE per socket (Linux 6.3)."]
    obs: dict[str, Any] = {
        "lore_holds": bool(a_ok and b_ok and c_ok), "range_size": size, "destinations": dests,
        "connect_only": a["connected"], "bind_first": b["connected"],
        "bind_first_errno": b["first_bind_failure"]["errno"] if b["first_bind_failure"] else None,
        "bind_no_port": c["connected"], "cases": cases, "knobs": w2.knob_record(ctx, KNOBS),
    }
    return cc.outcome(bool(a_ok and b_ok and c_ok), obs, story, notes, rec, pair, capture)


EXPERIMENT = Experiment(
    id="bind-before-connect",
    claim="bind(0) before connect() reserves a port for all destinations and runs out (EADDRINUSE) where connect() "
          "alone shares ports across destinations; IP_BIND_ADDRESS_NO_PORT restores the sharing.",
    lore="Don't bind() before connect() unless you must: it exhausts ephemeral ports sooner (use "
         "IP_BIND_ADDRESS_NO_PORT).",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=4.0,
    tags=("ports", "bind", "wave2"),
)
