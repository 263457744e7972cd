"""time-wait-bucket-overflow: net.ipv4.tcp_max_tw_buckets caps how many TIME_WAIT sockets a namespace keeps. With it
small (5 here, not 0: time-wait-zero covers 0) in the closer's namespace, the first 5 closes leave TIME_WAIT, every
later one is destroyed at once: the kernel counts TcpExtTCPTimeWaitOverflow and logs "TCP: time wait bucket table
overflow" only as a rate-limited debug message (net_dbg_ratelimited: not visible without dynamic debug).

The client closes first, cleanly: shutdown(SHUT_WR), the server reads EOF and closes, the client reads EOF and
closes (so no socket is ever an orphaned FIN_WAIT_2, which would take a bucket too). N connections one after
another; then the census of the client's namespace and the counter.
"""

from __future__ import annotations

from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.experiments import _wave2 as w2
from lab.kernel import sockdiag
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext

PORT = 7030
KNOBS = {
    "max_tw_buckets": w2.Knob(5, "sockets", "net.ipv4.tcp_max_tw_buckets in the closer's (client's) namespace",
                              1, 100),
    "connections": w2.Knob(12, "connections", "connections the client opens and closes first, one after another",
                           2, 200),
}
COUNTERS = ("TcpExtTCPTimeWaitOverflow", "TcpActiveOpens", "TcpOutRsts")


def _agents(ctx: RunContext, pair: cc.NetnsPair, n: int) -> tuple[list[dict[str, Any]], Any]:
    from lab.kernel.agent import Agent

    srv: list[dict[str, Any]] = [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [pair.server.addr4, PORT]},
        {"op": "listen", "sock": "l", "backlog": 64, "label": "listen"},
    ]
    cli: list[dict[str, Any]] = []
    for i in range(n):
        srv += [{"op": "accept", "sock": "l", "as": "c", "timeout_s": cc.ACCEPT_S, "label": f"accept{i}"},
                {"op": "recv_eof", "sock": "c", "timeout_s": cc.PASSIVE_S, "label": f"eof{i}"},
                {"op": "close", "sock": "c", "label": f"sclose{i}"}]
        cli += [{"op": "socket", "sock": "s"},
                {"op": "connect", "sock": "s", "addr": [pair.server.addr4, PORT], "label": f"connect{i}"},
                {"op": "shutdown", "sock": "s", "how": "WR", "label": f"shutdown{i}"},
                {"op": "recv_eof", "sock": "s", "timeout_s": cc.PASSIVE_S, "label": f"ceof{i}"},
                {"op": "close", "sock": "s", "label": f"close{i}"}]
    server = Agent.start(ctx, srv, netns=pair.server.name, name="server")
    cc._ok(server.wait("listen"), server)
    client = Agent.start(ctx, cli, netns=pair.client.name, name="client")
    recs = client.finish(timeout_s=n * 2 + 10)
    failed = next((r for r in recs if not r["ok"] and r["op"] != "done"), None)
    if failed is not None or not recs or recs[-1]["op"] != "done" or not recs[-1]["ok"]:
        raise CouldNotRun(f"the client's connections to the lab server did not all complete: "
                          f"{failed['label'] + ' ' + str(failed['errno']) if failed else 'no done record'}")
    server.wait(f"sclose{n - 1}", cc.PASSIVE_S)
    return recs, server


def run(ctx: RunContext) -> Outcome:
    cap = w2.knob(ctx, KNOBS, "max_tw_buckets")
    n = w2.knob(ctx, KNOBS, "connections")
    pair = cc.make_pair(ctx, client_sysctls={"net.ipv4.tcp_max_tw_buckets": cap})
    with cc.recording(ctx, pair, ports=[PORT]) as rec, cc.watch(ctx, pair, [PORT], interval_s=0.02) as (cs, _ss):
        before = sockdiag.nstat(pair.client.name)
        ctx.say(f"{n} connections, the client closes each first; tcp_max_tw_buckets={cap}", 0.2)
        recs, server = _agents(ctx, pair, n)
        server.kill()
        ports = [int(r["result"]["local"][1]) for r in recs if r["op"] == "connect"]
        # the event that ends the case: every connection's client socket is in a final state (TIME_WAIT or gone)
        for p in ports:
            cc.settle(pair, PORT, p)
        after = sockdiag.nstat(pair.client.name)
        census = w2.census(pair.client.name, [PORT])
        tw_ports = sorted(s.sport for s in sockdiag.sockets(netns=pair.client.name, ports=[PORT],
                                                              states=["TIME_WAIT"]))
    counters = sockdiag.deltas(before, after, COUNTERS)
    first_dropped = next((p for p in ports if p not in tw_ports), None)
    for p in ports:
        segs = cc.conn_segments(rec, p, PORT)
        close = cc.find_close(segs, PORT)
        if close.ack_of_second is None:
            continue
        if p in tw_ports:
            if p == ports[0]:
                rec.note(close.ack_of_second.frame, f"the client's final ACK: TIME_WAIT kept (bucket 1 of {cap})")
        elif p == first_dropped:
            rec.note(close.ack_of_second.frame, f"the client's final ACK: tcp_max_tw_buckets={cap} reached, no "
                                                "TIME_WAIT socket: destroyed at once (TcpExtTCPTimeWaitOverflow +1)")
    rsts = [s for s in rec.segments if s.flags & Flags.RST]
    capture = rec.save()
    tw_seen = {s.sport for s in cs.samples if s.state == "TIME_WAIT"}
    expected_overflow = max(0, n - cap)
    reproduced = bool(len(tw_ports) == min(cap, n) and counters["TcpExtTCPTimeWaitOverflow"] == expected_overflow
                      and set(tw_ports) == set(ports[:cap]) and not rsts)
    story = [
        (f"tcp_max_tw_buckets={cap} in the client's namespace; {n} connections one after another, each closed first "
         "by the client (shutdown, EOF, close)",
         f"sock_diag: {len(tw_ports)} TIME_WAIT sockets (the first {cap} connections' ports: "
         f"{set(tw_ports) == set(ports[:cap])}); census {census}"),
        ("the counters of the client's namespace",
         f"TcpExtTCPTimeWaitOverflow +{counters['TcpExtTCPTimeWaitOverflow']} (expected {expected_overflow}); "
         f"{len(rsts)} RSTs on the wire (every close completed before the socket was dropped)"),
    ]
    notes = ["The cap counts every timewait mini-socket of the namespace, also orphaned FIN_WAIT_2 ones; above it "
             "the socket is simply destroyed after the last ACK, so a later retransmitted FIN or old duplicate meets "
             "no TIME_WAIT (see time-wait-zero). The kernel's 'time wait bucket table overflow' message is a "
             "rate-limited debug message (net_dbg_ratelimited), not in dmesg by default; the counter is the evidence.",
             f"{len(tw_seen)} client ports were ever seen in TIME_WAIT by the 20 ms sampler."]
    obs: dict[str, Any] = {
        "lore_holds": reproduced, "max_tw_buckets": cap, "connections": n, "client_ports": ports,
        "time_wait_ports": tw_ports, "time_wait_count": len(tw_ports), "census_client": census,
        "time_wait_overflow": counters["TcpExtTCPTimeWaitOverflow"], "counters_client": counters,
        "rsts": len(rsts), "knobs": w2.knob_record(ctx, KNOBS),
    }
    return cc.outcome(reproduced, obs, story, notes, rec, pair, capture)


EXPERIMENT = Experiment(
    id="time-wait-bucket-overflow",
    claim="With tcp_max_tw_buckets=N only N sockets are kept in TIME_WAIT; further closes skip it "
          "(TcpExtTCPTimeWaitOverflow counts them).",
    lore="'TCP: time wait bucket table overflow': above tcp_max_tw_buckets TIME_WAIT sockets are destroyed at once.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("time-wait", "sysctl", "wave2"),
)
