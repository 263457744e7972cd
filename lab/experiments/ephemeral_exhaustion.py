"""ephemeral-exhaustion: a client that closes first keeps each local port in TIME_WAIT for 60 s; with a narrow
ephemeral range, connect() to the same server runs out of ports and fails with EADDRNOTAVAIL. What tcp_tw_reuse
and timestamps change (docs/kernel-facts.md §13).

The client's namespace gets net.ipv4.ip_local_port_range = "40000 40009" (10 ports). Each case uses its own
server port (exhaustion is per destination) and its own client settings:
  A. tcp_tw_reuse=0, timestamps on, back to back: 10 connections, then EADDRNOTAVAIL.
  B. tcp_tw_reuse=1, timestamps on, 0.15 s apart: TIME_WAIT ports older than tcp_tw_reuse_delay (1 s) are
     reused, so every connect succeeds.
  C. tcp_tw_reuse=1, timestamps off, 0.15 s apart: no reuse without timestamps: EADDRNOTAVAIL again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lab.experiments import _closecommon as cc
from lab.kernel import sockdiag
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext

RANGE = (40000, 40009)


@dataclass(frozen=True)
class Case:
    key: str
    port: int
    tw_reuse: int
    timestamps: int
    gap_s: float
    attempts: int
    expect_fail_at: int | None     # 1-based attempt that fails with EADDRNOTAVAIL; None: all succeed


CASES = (
    Case("A", 7001, 0, 1, 0.0, 12, 11),
    Case("B", 7002, 1, 1, 0.15, 20, None),
    Case("C", 7003, 1, 0, 0.15, 13, 11),
)


def _run_case(ctx: RunContext, pair: cc.NetnsPair, case: Case) -> dict[str, Any]:
    from lab.kernel.agent import Agent

    pair.client.sysctl("net.ipv4.tcp_tw_reuse", case.tw_reuse)
    pair.client.sysctl("net.ipv4.tcp_timestamps", case.timestamps)
    srv: list[dict[str, Any]] = [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [pair.server.addr4, case.port]},
        {"op": "listen", "sock": "l", "backlog": 64, "label": "listen"},
    ]
    # the server serves every connection that comes (accept, read to EOF, close); the ones the client never makes
    # are not waited for: once the client is done and the server has closed every connection made, it is stopped
    for i in range(case.attempts):
        srv += [{"op": "accept", "sock": "l", "as": "c", "timeout_s": cc.ACCEPT_S, "label": f"accept{i}"},
                {"op": "recv_eof", "sock": "c", "timeout_s": cc.PASSIVE_S, "label": f"eof{i}"},
                {"op": "close", "sock": "c", "label": f"close{i}"}]
    cli: list[dict[str, Any]] = []
    for i in range(case.attempts):
        s = f"s{i}"
        cli += [{"op": "socket", "sock": s},
                {"op": "connect", "sock": s, "addr": [pair.server.addr4, case.port],
                 "label": f"connect{i}", "on_error": "continue"},
                {"op": "close", "sock": s, "label": f"close{i}", "on_error": "continue"}]
        if case.gap_s:
            cli.append({"op": "sleep", "s": case.gap_s})
    server = Agent.start(ctx, srv, netns=pair.server.name, name=f"server-{case.key}")
    listening = server.wait("listen")   # the event that gates the client
    if not listening.get("ok"):
        raise CouldNotRun(f"case {case.key}: the server could not listen on port {case.port}: "
                          f"{listening.get('errno') or listening.get('error')}")
    t0 = time.time()
    client = Agent.start(ctx, cli, netns=pair.client.name, name=f"client-{case.key}")
    recs = client.finish(timeout_s=case.attempts * (case.gap_s + 2) + 10)
    made = sum(1 for r in recs if r["op"] == "connect" and r["ok"])
    if made:
        server.wait(f"close{made - 1}", cc.PASSIVE_S)   # it has served every connection the client made
    server.kill()
    attempts: list[dict[str, Any]] = []
    for r in recs:
        if r["op"] == "connect":
            attempts.append({"n": len(attempts) + 1, "ok": r["ok"], "errno": r["errno"],
                             "port": r["result"]["local"][1] if r["ok"] else None,
                             "t_s": round(r["wall_s"] - t0, 3)})
    odd = next((a for a in attempts if not a["ok"] and a["errno"] != "EADDRNOTAVAIL"), None)
    if odd is not None:   # a refused or timed-out connect says nothing about the port range
        raise CouldNotRun(f"case {case.key}: connect #{odd['n']} to the lab server failed with {odd['errno']}")
    first_fail = next((a for a in attempts if not a["ok"]), None)
    ports = [a["port"] for a in attempts if a["port"] is not None]
    tw = sockdiag.sockets(netns=pair.client.name, ports=[case.port], states=["TIME_WAIT"])
    reused = sorted({p for p in ports if ports.count(p) > 1})
    return {
        "server_port": case.port, "tw_reuse": case.tw_reuse, "timestamps": case.timestamps, "gap_s": case.gap_s,
        "attempts": len(attempts), "succeeded": sum(1 for a in attempts if a["ok"]),
        "first_failure_at": first_fail["n"] if first_fail else None,
        "errno": first_fail["errno"] if first_fail else None,
        "ports_used": sorted(set(ports)), "ports_reused": reused,
        "time_wait_sockets_after": len(tw), "sequence": attempts,
        "as_claimed": (first_fail is None) if case.expect_fail_at is None else bool(
            first_fail and first_fail["n"] == case.expect_fail_at and first_fail["errno"] == "EADDRNOTAVAIL"),
    }


def run(ctx: RunContext) -> Outcome:
    pair = cc.make_pair(ctx, client_sysctls={"net.ipv4.ip_local_port_range": f"{RANGE[0]} {RANGE[1]}"})
    cases: dict[str, dict[str, Any]] = {}
    with cc.recording(ctx, pair, ports=[c.port for c in CASES]) as rec:
        for i, case in enumerate(CASES):
            ctx.say(f"case {case.key}: tcp_tw_reuse={case.tw_reuse}, timestamps={case.timestamps}, "
                    f"gap {case.gap_s} s", i / len(CASES))
            cases[case.key] = _run_case(ctx, pair, case)
    for key, c in cases.items():
        fail = c["first_failure_at"]
        if fail is not None:
            syns = [s for s in rec.segments if s.dport == c["server_port"] and s.flags & 0x02 and not s.flags & 0x10]
            c["syns_on_wire"] = len(syns)
            if syns:
                rec.note(syns[-1].frame, f"case {key}: the last SYN that got out; connect() #{fail} then failed "
                                         f"with {c['errno']} before sending anything ({len(c['ports_used'])} "
                                         "ports, all in TIME_WAIT)")
    capture = rec.save()
    story = []
    for case in CASES:
        c = cases[case.key]
        what = (f"connect() #{c['first_failure_at']} -> {c['errno']} after {c['succeeded']} connections"
                if c["first_failure_at"] else f"all {c['attempts']} connects succeeded, ports reused: "
                                                f"{c['ports_reused']}")
        story.append((f"case {case.key}: range {RANGE[0]}-{RANGE[1]}, tcp_tw_reuse={case.tw_reuse}, "
                      f"tcp_timestamps={case.timestamps}, {case.attempts} connects {case.gap_s} s apart to "
                      f"server port {case.port}, client closes first",
                      f"{what}; {c['time_wait_sockets_after']} client TIME_WAIT sockets afterwards"))
    reproduced = all(c["as_claimed"] for c in cases.values())
    notes = []
    a = cases["A"]
    order = [x["port"] for x in a["sequence"] if x["port"] is not None]
    a["port_order"] = order
    if order and all(p % 2 == 0 for p in order[: len(order) // 2]):
        notes.append("connect() handed out the even ports first, then the odd ones (Linux keeps the other parity "
                     "for bind(0)).")
    try:
        delay = pair.client.read_sysctl("net.ipv4.tcp_tw_reuse_delay")
    except OSError:
        delay = None
    if cases["B"]["as_claimed"]:
        notes.append("tcp_tw_reuse=1 lets connect() take over a TIME_WAIT port once it is older than "
                     f"net.ipv4.tcp_tw_reuse_delay ({delay or '1000'} ms here), and only with timestamps (case C). "
                     "On this kernel the default is tcp_tw_reuse=2: loopback only, so it does not help on a veth.")
    obs: dict[str, Any] = {
        "lore_holds": bool(a["as_claimed"]),
        "errno": a["errno"],
        "failed_at_attempt": a["first_failure_at"],
        "port_range": list(RANGE),
        "tcp_tw_reuse_delay_ms": int(delay) if delay and delay.isdigit() else None,
        "tw_reuse_all_succeeded": cases["B"]["first_failure_at"] is None,
        "no_timestamps_errno": cases["C"]["errno"],
        "cases": cases,
    }
    return cc.outcome(reproduced, obs, story, notes, rec, pair, capture)


EXPERIMENT = Experiment(
    id="ephemeral-exhaustion",
    claim="Client-side TIME_WAIT exhausts a narrow ephemeral port range: connect() fails with EADDRNOTAVAIL; "
          "tcp_tw_reuse (with timestamps) lets it reuse TIME_WAIT ports.",
    lore="A client that closes first holds its port in TIME_WAIT; many short connections to one server run out "
         "of ephemeral ports (tcp_tw_reuse is the usual advice).",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=9.0,
    tags=("time-wait", "ports"),
)
