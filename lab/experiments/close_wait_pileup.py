"""close-wait-pileup: an application that never calls close(). The peer closes; this side's kernel ACKs the FIN
and the socket sits in CLOSE_WAIT for as long as the application holds it: nothing in TCP times it out. The
peer's orphaned socket waits in FIN_WAIT_2 only until net.ipv4.tcp_fin_timeout (set small in the peer's
namespace to keep the run short) reaps it. When the application finally closes, its FIN meets no socket and is
answered with RST.

The server (the application) accepts N connections and does nothing with them; the client connects N times,
then closes every socket. A census (sock_diag in both namespaces) is taken while the FIN_WAIT_2 sockets age.
"""

from __future__ import annotations

import time
from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.experiments import _wave2 as w2
from lab.kernel import sockdiag
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext, scaled

PORT = 7010
CENSUS_EVERY_S = 0.25
KNOBS = {
    "connections": w2.Knob(5, "connections", "connections the application accepts and never closes", 1, 50),
    "fin_timeout": w2.Knob(3, "s", "net.ipv4.tcp_fin_timeout in the peer's (client's) namespace", 1, 20),
}


def _agents(ctx: RunContext, pair: cc.NetnsPair, n: int) -> tuple[Any, Any]:
    from lab.kernel.agent import Agent

    srv: list[dict[str, Any]] = [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [pair.server.addr4, PORT]},
        {"op": "listen", "sock": "l", "backlog": 64, "label": "listen"},
    ]
    srv += [{"op": "accept", "sock": "l", "as": f"c{i}", "timeout_s": cc.ACCEPT_S, "label": f"accept{i}"}
            for i in range(n)]
    # the application's bug: it never closes; only at the end (gate) does the lab make it close, late
    srv += [cc.gate("close")]
    srv += [{"op": "close", "sock": f"c{i}", "label": f"close{i}", "on_error": "continue"} for i in range(n)]
    cli: list[dict[str, Any]] = []
    for i in range(n):
        cli += [{"op": "socket", "sock": f"s{i}"},
                {"op": "connect", "sock": f"s{i}", "addr": [pair.server.addr4, PORT], "label": f"connect{i}"}]
    cli += [cc.gate("close")]
    cli += [{"op": "close", "sock": f"s{i}", "label": f"close{i}"} for i in range(n)]
    server = Agent.start(ctx, srv, netns=pair.server.name, name="server-app")
    cc._ok(server.wait("listen"), server)
    client = Agent.start(ctx, cli, netns=pair.client.name, name="client")
    for i in range(n):
        cc._ok(client.wait(f"connect{i}"), client)
        cc._ok(server.wait(f"accept{i}", cc.ACCEPT_S), server)
    return client, server


def _ports_of(client: Any, n: int) -> list[int]:
    return [int(client.wait(f"connect{i}")["result"]["local"][1]) for i in range(n)]


def _watch_reap(ctx: RunContext, pair: cc.NetnsPair, n: int, fin_timeout: int, t0: float
                ) -> tuple[list[dict[str, Any]], float | None]:
    """Census every CENSUS_EVERY_S until the client holds no FIN_WAIT_2 socket any more (the reap), then one
    more; the rows and the reap's time after the close."""
    hosts = {"client": pair.client.name, "server": pair.server.name}
    rows: list[dict[str, Any]] = []
    reaped_at = None
    end = time.monotonic() + scaled(fin_timeout + 10)
    while time.monotonic() < end:
        row = w2.census_row(t0, hosts, [PORT])
        rows.append(row)
        if row["client"].get("FIN_WAIT_2", 0) == 0 and len(rows) > 1 and reaped_at is None \
                and any(r["client"].get("FIN_WAIT_2") == n for r in rows):
            reaped_at = row["t_s"]
            break
        time.sleep(CENSUS_EVERY_S)
    if reaped_at is None:
        raise CouldNotRun(f"the client's {n} FIN_WAIT_2 sockets were not all seen, or not reaped, within "
                          f"{scaled(fin_timeout + 10):g} s (last census {rows[-1] if rows else None})")
    return rows, reaped_at


def run(ctx: RunContext) -> Outcome:
    n = w2.knob(ctx, KNOBS, "connections")
    fin_timeout = w2.knob(ctx, KNOBS, "fin_timeout")
    pair = cc.make_pair(ctx, client_sysctls={"net.ipv4.tcp_fin_timeout": fin_timeout})
    with cc.recording(ctx, pair, ports=[PORT]) as rec, cc.watch(ctx, pair, [PORT], interval_s=0.05):
        ctx.say(f"{n} connections; the server application never calls close()", 0.1)
        client, server = _agents(ctx, pair, n)
        ports = _ports_of(client, n)
        t0 = time.time()
        client.release("close")
        cc._ok(client.wait(f"close{n - 1}"), client)
        # the census starts once the server's kernel has ACKed every FIN (all n in FIN_WAIT_2), not while some
        # ACKs are still on their way (FIN_WAIT_1): an event, not a sleep
        if not cc.wait_until(lambda: w2.census(pair.client.name, [PORT]).get("FIN_WAIT_2", 0) == n, cc.SETTLE_S,
                             0.005):
            raise CouldNotRun(f"the client's {n} sockets did not all reach FIN_WAIT_2 within {scaled(cc.SETTLE_S):g} s")
        ctx.say(f"the client closed; waiting for tcp_fin_timeout={fin_timeout} s to reap its FIN_WAIT_2", 0.3)
        rows, reaped_at = _watch_reap(ctx, pair, n, fin_timeout, t0)
        after_reap = w2.census(pair.server.name, [PORT])
        before = sockdiag.nstat(pair.client.name)
        ctx.say("the application finally closes its CLOSE_WAIT sockets", 0.8)
        late_close_t = time.time()
        server.release("close")
        cc.finish(server, client)
        gone = cc.wait_until(lambda: not w2.census(pair.server.name, [PORT]), cc.SETTLE_S, 0.02)
        after = sockdiag.nstat(pair.client.name)
        rows.append(w2.census_row(t0, {"client": pair.client.name, "server": pair.server.name}, [PORT]))
    rsts = [s for s in rec.segments if s.flags & Flags.RST and s.sport in ports]
    late_fins = [s for s in rec.segments if s.flags & Flags.FIN and s.sport == PORT and s.ts_s >= late_close_t - 0.5]
    first = [s for s in rec.segments if s.sport == ports[0] and s.flags & Flags.FIN]
    if first:
        rec.note(first[0].frame, f"the client closes; the server's application never calls close(): its socket "
                                 f"stays in CLOSE_WAIT, the client's orphan in FIN_WAIT_2 for tcp_fin_timeout = "
                                 f"{fin_timeout} s")
    late0 = [s for s in late_fins if s.dport == ports[0]]
    if late0:
        rec.note(late0[0].frame, f"the application closes {late_close_t - t0:.1f} s after the peer's FIN; the "
                                 f"client's FIN_WAIT_2 was reaped after {reaped_at:.1f} s, so this FIN meets no "
                                 "socket")
    rst0 = [s for s in rsts if s.sport == ports[0]]
    if rst0:
        rec.note(rst0[0].frame, "RST: no socket in the client's namespace for this four-tuple any more")
    capture = rec.save()
    peak = max(rows, key=lambda r: r["server"].get("CLOSE_WAIT", 0))
    fw2_peak = max(r["client"].get("FIN_WAIT_2", 0) for r in rows)
    counters = sockdiag.deltas(before, after, ("TcpOutRsts",))
    pileup = peak["server"].get("CLOSE_WAIT", 0) == n and after_reap.get("CLOSE_WAIT", 0) == n
    reap_ok = reaped_at is not None and 0.8 * fin_timeout <= reaped_at <= scaled(fin_timeout + 5)
    reproduced = bool(pileup and fw2_peak == n and reap_ok)
    story = [
        (f"the server application accepts {n} connections and never calls close(); the client closes all of them "
         f"(tcp_fin_timeout={fin_timeout} s in the client's namespace)",
         f"census: server {peak['server']}, client FIN_WAIT_2 peak {fw2_peak}"),
        ("the lab waits for the kernel to reap the client's orphaned FIN_WAIT_2 sockets",
         f"reaped {reaped_at:.2f} s after the close; the server still holds {after_reap} — nothing times out "
         "CLOSE_WAIT"),
        ("the application finally closes its sockets",
         f"{len(late_fins)} FINs from the server, {len(rsts)} RSTs from the client (TcpOutRsts "
         f"+{counters['TcpOutRsts']}); server sockets gone: {gone}"),
    ]
    notes = ["CLOSE_WAIT has no timer: only the application's close() ends it (a leak of file descriptors shows as "
             "CLOSE_WAIT sockets piling up). The peer's orphaned FIN_WAIT_2 is bounded by tcp_fin_timeout "
             f"(default 60 s, {fin_timeout} s here); a FIN_WAIT_2 socket whose application still holds it (after "
             "shutdown(SHUT_WR)) would wait forever too."]
    obs: dict[str, Any] = {
        "lore_holds": reproduced, "connections": n, "fin_timeout_s": fin_timeout, "client_ports": ports,
        "close_wait_peak": peak["server"].get("CLOSE_WAIT", 0), "fin_wait_2_peak": fw2_peak,
        "reaped_after_s": reaped_at, "server_after_reap": after_reap, "census": rows,
        "late_fins": len(late_fins), "rsts_to_late_fins": len(rsts), "counters_client": counters,
        "knobs": w2.knob_record(ctx, KNOBS),
    }
    return cc.outcome(reproduced, obs, story, notes, rec, pair, capture)


EXPERIMENT = Experiment(
    id="close-wait-pileup",
    claim="An application that never calls close() leaves its sockets in CLOSE_WAIT indefinitely, while the "
          "peer's orphaned FIN_WAIT_2 is reaped after tcp_fin_timeout.",
    lore="CLOSE_WAIT piling up means the application does not close its sockets; FIN_WAIT_2 ends after "
         "tcp_fin_timeout (Linux).",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=6.0,
    tags=("close", "close-wait", "wave2"),
)
