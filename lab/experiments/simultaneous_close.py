"""simultaneous-close: crossed FINs. Both sides call close() at the same moment; each FIN is still in flight when
the other side's FIN leaves, so each side receives a FIN in FIN_WAIT_1 and passes CLOSING, and both end in
TIME_WAIT (RFC 9293 3.6, case 3).

On a veth the round trip is some tens of microseconds, far shorter than the time between two processes' close()
calls, so the lab makes the FINs cross by events, not timers: an NFQUEUE rule in each namespace holds that side's
FIN until both FINs are held, then lets both go; each side answers the other's FIN from FIN_WAIT_1 with an ACK,
held in turn; while both ACKs are held both sides are in CLOSING (sock_diag says so), then the ACKs go and both
enter TIME_WAIT. rto_min on the lab routes keeps a held FIN from being retransmitted meanwhile. The kernel's own
transitions (inet_sock_set_state) and 10 ms sock_diag samples are kept beside.
"""

from __future__ import annotations

from typing import Any

from lab.errors import EnvironmentProblem
from lab.experiments import _closecommon as cc
from lab.kernel.impair import Hold
from lab.kernel.tracepoints import StateEvent, StateTrace
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext, scaled

RTO_MIN_MS = 5000


def _state_trace(ctx: RunContext, skipped: list[str]) -> StateTrace | None:
    """The kernel's state transitions on the lab port (a private tracefs instance), or None where there is none."""
    try:
        trace = StateTrace(ctx.name("tr"), ports=[cc.PORT], ledger=ctx.ledger).__enter__()
    except (EnvironmentProblem, OSError) as exc:
        skipped.append(f"no inet_sock_set_state tracepoint ({exc}): CLOSING judged from sock_diag samples only")
        return None
    ctx.stack.callback(trace.close)
    return trace


def _kernel_paths(trace: StateTrace | None, client_port: int) -> dict[str, list[str]] | None:
    """Each side's traced state path once both have left CLOSING (its last transition: -> CLOSE)."""
    if trace is None:
        return None
    for local, remote in ((client_port, cc.PORT), (cc.PORT, client_port)):
        def left_closing(e: StateEvent, lp: int = local, rp: int = remote) -> bool:
            return e.sport == lp and e.dport == rp and e.oldstate == "CLOSING"

        trace.wait_for(left_closing, scaled(cc.SETTLE_S))
    return {"client": trace.path_of(client_port, cc.PORT), "server": trace.path_of(cc.PORT, client_port)}


def _all_queued(holds: list[Hold], n: int, what: str) -> None:
    for h in holds:
        if not h.wait_queued(n, scaled(cc.SETTLE_S)):
            raise CouldNotRun(f"{what} of {h.netns} never reached its NFQUEUE hold")


def _cross(ctx: RunContext, holds: list[Hold], pair: cc.NetnsPair, client_port: int) -> dict[str, str | None]:
    """Make the FINs cross by events, not timers: both FINs held, then let go together (each leaves before the other
    arrives); each side answers the other's FIN from FIN_WAIT_1 with an ACK that is held in turn; while both ACKs
    are held, both sides are in CLOSING (read from sock_diag); then the ACKs go."""
    _all_queued(holds, 0, "the FIN")
    for h in holds:
        h.release(0)
    _all_queued(holds, 1, "the ACK of the peer's FIN")
    states = cc.connection_states(pair, cc.PORT, client_port)
    ctx.events.log("both-acks-held", states=states)
    for h in holds:
        h.release(1)
    return states


def _slow_retransmissions(pair: cc.NetnsPair, rto_min_ms: int) -> None:
    """rto_min on each lab host's connected route: a FIN held while a busy controller reacts must not be
    retransmitted (a retransmitted FIN would take the ACK's place in the hold)."""
    for host in (pair.client, pair.server):
        routes = host.run(["ip", "-4", "route", "show", "dev", str(host.iface)]).stdout.splitlines()
        for route in routes:
            host.run(["ip", "-4", "route", "change", *route.split(), "dev", str(host.iface),
                      "rto_min", f"{rto_min_ms}ms"])


def run(ctx: RunContext) -> Outcome:
    pair = cc.make_pair(ctx)
    _slow_retransmissions(pair, RTO_MIN_MS)
    skipped: list[str] = []
    notes: list[str] = []
    tail: list[dict[str, Any]] = [cc.gate("close"), {"op": "close", "label": "close"}]
    holds: list[Hold] = []
    trace = _state_trace(ctx, skipped)
    with cc.recording(ctx, pair) as rec, cc.watch(ctx, pair, [cc.PORT], interval_s=0.01) as (cs, ss):
        ep = cc.open_connection(ctx, pair, "both", client_tail=tail, server_tail=tail)
        # the holds must catch the FINs, not a delayed ACK of the exchange: wait until each side's data is acked
        for ns, what in ((pair.client.name, "the server's ACK of the client's data"),
                         (pair.server.name, "the client's ACK of the server's data")):
            cc.wait_queues(ns, cc.PORT, ep.client_port, lambda recv_q, send_q: send_q == 0, what)
        try:
            holds = [
                Hold(ctx, pair.client, chain="OUTPUT", sport=ep.client_port, dport=cc.PORT,
                     holds_ms=[None, None], role="hc").__enter__(),
                Hold(ctx, pair.server, chain="OUTPUT", sport=cc.PORT, dport=ep.client_port,
                     holds_ms=[None, None], role="hs").__enter__(),
            ]
        except EnvironmentProblem as exc:
            skipped.append(f"NFQUEUE hold not available ({exc.one_line()}): both closes released together "
                           "without holding the FINs; they may not cross")
        ctx.say("both sides close at once", 0.3)
        ep.client.release("close")
        ep.server.release("close")
        c_close, s_close = ep.client.wait("close"), ep.server.wait("close")
        held_states = _cross(ctx, holds, pair, ep.client_port) if holds else None
        cc.finish(ep.client, ep.server)
        cc.settle(pair, ep.port, ep.client_port)   # the held segments went out; both sides are in final states
        for h in holds:
            h.close()
        tw = cc.time_wait_now(pair, ep.port, ep.client_port)
        states = cc.side_states(cs, ss, ep.client_port)
        kernel_paths = _kernel_paths(trace, ep.client_port)
    close = cc.find_close(cc.conn_segments(rec, ep.client_port))
    labels = cc.label_close(rec, close, prefix="simultaneous close")
    t0 = close.first_fin.ts_s if close.first_fin else None
    # CLOSING lasts about one ACK hold: a 10 ms sampler on a busy machine can miss it; the kernel's own
    # transitions (inet_sock_set_state) cannot
    sampled_closing = all("CLOSING" in states[s] for s in ("client", "server"))
    traced_closing = kernel_paths is not None and all("CLOSING" in p for p in kernel_paths.values())
    held_closing = held_states is not None and all(v == "CLOSING" for v in held_states.values())
    both_closing = sampled_closing or traced_closing or held_closing
    both_tw = tw["client"] is not None and tw["server"] is not None
    comparison = cc.compare_with_analyzer(rec, [cs, ss])
    analyzer = cc.analyzer_close(rec, ep.client_port)
    capture = rec.save()
    reproduced = both_closing and both_tw and (close.crossed or not rec.captured)
    story = [
        (f"client ({pair.client.addr4}:{ep.client_port}) and server ({pair.server.addr4}:{cc.PORT}) released to "
         f"close() together (calls {abs(c_close['wall_s'] - s_close['wall_s']) * 1000:.2f} ms apart); "
         "NFQUEUE held both FINs until both were queued, then each side's ACK of the other's FIN until both were "
         "queued",
         "FINs crossed on the wire" if close.crossed else "the FINs did not cross"),
        ("sock_diag while both ACKs of the FINs were held",
         ", ".join(f"{side} {st}" for side, st in held_states.items()) if held_states else "no holds"),
        ("sock_diag every 10 ms on both hosts",
         "; ".join(f"{side}: {' -> '.join(st)}" for side, st in states.items())),
        ("sock_diag after the close",
         ", ".join(f"{side} TIME_WAIT ({v['expires_ms'] / 1000:.1f} s left)" if v else f"{side}: no TIME_WAIT"
                   for side, v in tw.items())),
    ]
    if analyzer:
        story.append(("the analyzer reads the capture",
                      f"close kind {analyzer['close'].get('kind')}, initiator {analyzer['close'].get('initiator')}, "
                      f"TIME_WAIT on {', '.join(analyzer['time_wait_sides']) or 'no side'}"
                      + (f"; {analyzer['states']}" if analyzer.get("states") else "")))
    if comparison.get("agree") is False:
        notes.append("the analyzer's TIME_WAIT windows differ from sock_diag: see observations.kernel_vs_analyzer")
    if not both_closing and both_tw:
        notes.append("both sides ended in TIME_WAIT, but the sampler did not catch CLOSING on both sides")
    obs: dict[str, Any] = {
        "lore_holds": bool(both_closing and both_tw),
        "crossed_fins": close.crossed,
        "both_closing": both_closing,
        "time_wait_sides": [s for s in ("client", "server") if tw[s]],
        "client_states": states["client"],
        "kernel_transitions": kernel_paths,       # the tracepoint's state path of each side (None: no tracefs)
        "states_while_acks_held": held_states,    # sock_diag while both ACKs of the FINs were held
        "closing_seen_by": [k for k, v in (("sock_diag samples", sampled_closing), ("tracepoint", traced_closing),
                                           ("sock_diag while the ACKs were held", held_closing)) if v],
        "server_states": states["server"],
        "time_wait": tw,
        "close_calls_apart_ms": round(abs(c_close["wall_s"] - s_close["wall_s"]) * 1000, 3),
        "close": {k: cc.seg_dict(getattr(close, k), t0)
                  for k in ("first_fin", "second_fin", "ack_of_first", "ack_of_second")},
        "labels": labels,
        "fin_retransmits": len(close.fin_retransmits),
        "nfqueue": [{"netns": h.netns, "held": h.log} for h in holds],
        "analyzer": analyzer,
        "hosts": cc.hosts_observation(pair),
        "capture": rec.summary(),
        "kernel_vs_analyzer": comparison,
    }
    if rec.skipped_reason:
        skipped.append(rec.skipped_reason)
    # without the holds the FINs cross only by luck: FINs that did not cross are no kernel verdict then
    could_not = (None if reproduced or holds or close.crossed else
                 "the FINs did not cross and NFQUEUE (which makes them cross) is not available here")
    return Outcome(reproduced, obs, story, notes, skipped, capture, rec.analysis(), could_not_run=could_not)


EXPERIMENT = Experiment(
    id="simultaneous-close",
    claim="Crossed FINs: both sides pass CLOSING and both enter TIME_WAIT.",
    lore="RFC 9293 3.6 case 3 (simultaneous close); Stevens TCP/IP Illustrated 1, 18.9.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("close", "time-wait", "nfqueue"),
)
