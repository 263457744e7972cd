"""lost-final-ack: the final ACK of a close is lost; the passive closer retransmits its FIN after the RTO and the
active closer, still in TIME_WAIT, answers it again and restarts its 60 s timer.

The client closes first. Once its FIN has reached the server, an iptables rule in the server's namespace
(scoped to this connection, comment twl<run id>drop) drops exactly the next pure ACK from the client: the final
ACK. The capture on the client's veth still shows that ACK leaving (packet taps run before netfilter INPUT on the
other side); the rule's counter proves the drop; the server's retransmitted FIN and the second ACK follow.
sock_diag shows the server in LAST_ACK with its retransmission timer, and the client's TIME_WAIT timer jumping
back up when the FIN is answered.

The server's LAST_ACK is the lab's own evidence, not the periodic sampler's luck: once the rule's counter shows
the final ACK dropped, nothing but the answer to the retransmitted FIN (at least the 200 ms minimum RTO later) can
take the server out of LAST_ACK, and the lab dumps its sockets then. A dump that came too late says "not seen".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lab.experiments import _closecommon as cc
from lab.kernel import sockdiag
from lab.kernel.impair import drop_one
from lab.run.context import Experiment, Outcome, RunContext

if TYPE_CHECKING:
    from lab.kernel.impair import Rule

TIME_WAIT_S = 60.0   # Linux's TCP_TIMEWAIT_LEN: the timer a TIME_WAIT socket (re)starts
LAST_ACK = "LAST_ACK"


def _findings(rec: Any, client_port: int) -> list[dict[str, Any]]:
    if rec.report is None:
        return []
    conn = cc.analyzer_close(rec, client_port)
    cid = conn["id"] if conn else None
    return [{"kind": f.get("kind"), "frames": f.get("frames"), "detail": f.get("detail")}
            for f in rec.report.to_dict().get("findings", []) if f.get("connection") == cid]


def _restarted_by_end(samples: list[sockdiag.SockSample], client_port: int, first_ack: Any, second_ack: Any
                      ) -> bool | None:
    """Whether a TIME_WAIT timer reading taken after the second ACK ends TIME_WAIT_S after that ACK (restarted)
    rather than after the first one, wherever inside its dump's span the reading came; None without such a
    reading (a dump that began before the second ACK may have read the timer before it)."""
    if first_ack is None or second_ack is None:
        return None
    late = [s for s in samples if s.state == "TIME_WAIT" and s.sport == client_port and s.wall_s > second_ack.ts_s]
    if not late:
        return None
    ends = (late[-1].wall_s + late[-1].expires_ms / 1000.0, late[-1].wall_end_s + late[-1].expires_ms / 1000.0)
    return all(abs(end - (second_ack.ts_s + TIME_WAIT_S)) < abs(end - (first_ack.ts_s + TIME_WAIT_S)) for end in ends)


def _last_ack_after_drop(samplers: tuple[sockdiag.Sampler, sockdiag.Sampler], client_port: int, rule: Rule
                         ) -> tuple[cc.HeldDump | None, bool]:
    """The lab's own dump of the server once the rule's counter shows the final ACK dropped (the event): from then
    until its retransmitted FIN is answered the server can only be in LAST_ACK. Dumps until it shows LAST_ACK or
    the socket is gone (the RTO ran out before a dump came: matched False). (dump, whether the drop was counted
    before it; None: the counter never moved within the deadline)."""
    if not cc.wait_until(lambda: rule.packets() >= 1, cc.SETTLE_S, 0.005):
        return None, False
    dump, _ = cc.dump_until(samplers, client_port, lambda d: d.states["server"] in (LAST_ACK, None))
    return dataclasses.replace(dump, matched=dump.states["server"] == LAST_ACK), True


def _last_ack_evidence(held: cc.HeldDump | None, counted: bool, dropped_ack: Any) -> dict[str, Any]:
    """The observation: the server's socket in the lab's dump after the drop, with that dump's span; "seen" only
    when it showed LAST_ACK, the counter had moved before it began and (with a capture) it began after the dropped
    ACK on the capture's clock."""
    if held is None:
        return {"seen": False, "why": "the rule's counter showed no dropped ACK before the deadline"}
    ev = {**held.side("server"), "drop_counted_before_dump": counted}
    after_ack = None if dropped_ack is None else held.began_s > dropped_ack.ts_s
    ev["dump_after_dropped_ack_on_capture"] = after_ack
    ev["seen"] = bool(held.matched and counted and after_ack is not False)
    if not ev["seen"]:
        ev["why"] = ("the lab's dump came after the server had left LAST_ACK (its socket was gone)"
                     if held.matched is False else "the dump did not begin after the dropped ACK on the capture")
    return ev


def run(ctx: RunContext) -> Outcome:
    pair = cc.make_pair(ctx)
    with cc.recording(ctx, pair) as rec, cc.watch(ctx, pair, [cc.PORT], interval_s=0.01) as (cs, ss):
        ep = cc.open_connection(ctx, pair, "laf",
                                client_tail=[cc.gate("close"), {"op": "close", "label": "close"}],
                                server_tail=[cc.passive_eof(), cc.gate("close"),
                                             {"op": "close", "label": "close"}])
        ctx.say("the client closes; its FIN reaches the server", 0.2)
        ep.client.release("close")
        ep.server.wait("eof")
        rule = drop_one(ctx, pair.server, chain="INPUT", src=pair.client.addr4, sport=ep.client_port,
                        dst=pair.server.addr4, dport=cc.PORT)
        ctx.say("the server closes; the client's final ACK will be dropped", 0.4)
        ep.server.release("close")
        held, counted = _last_ack_after_drop((cs, ss), ep.client_port, rule)
        s_close = ep.server.wait("close")
        cc.finish(ep.client, ep.server)
        # the server's socket goes when the client's TIME_WAIT answers its retransmitted FIN
        cc.wait_until(lambda: not [s for s in ss.sample_now() if s.dport == ep.client_port], cc.SETTLE_S, 0.02)
        cc.fresh_dump(cs)   # the sampler's record has the client's TIME_WAIT timer as it is after that answer
        dropped = rule.packets()
        rule.remove()
        tw = cc.time_wait_now(pair, ep.port, ep.client_port)
        states = cc.side_states(cs, ss, ep.client_port)
    close = cc.find_close(cc.conn_segments(rec, ep.client_port))
    labels = cc.label_close(rec, close, prefix="lost final ACK")
    if close.ack_of_second is not None:
        rec.note(close.ack_of_second.frame, f"this final ACK was dropped on arrival by iptables in the server's "
                                            f"namespace (rule counter {dropped})")
    t0 = close.second_fin.ts_s if close.second_fin else None
    retx = close.fin_retransmits[0] if close.fin_retransmits else None
    rto_ms = round((retx.ts_s - close.second_fin.ts_s) * 1000, 3) if retx and close.second_fin else None
    tws = [t for t in sockdiag.time_wait_observations(cs.samples)
           if t.local.endswith(f":{ep.client_port}")]
    restarts = list(tws[0].restarts) if tws else []
    restarts_end = list(tws[0].restarts_end_s) if tws else []
    last_ack = _last_ack_evidence(held, counted, close.ack_of_second)
    server_timers = [(s.state, s.timer, s.expires_ms) for s in ss.samples if s.dport == ep.client_port
                     and s.state == LAST_ACK]
    findings = _findings(rec, ep.client_port)
    comparison = cc.compare_with_analyzer(rec, [cs, ss])
    capture = rec.save()
    # the sampler sees the jump only if it read the timer in the ~200 ms before the retransmission; one reading
    # after it says the same from where the timer ends (60 s after the second ACK, not after the first)
    restart_by_end = _restarted_by_end(cs.samples, ep.client_port, close.ack_of_second,
                                       close.acks_after[0] if close.acks_after else None)
    restart_ok = bool(restarts) or bool(restart_by_end)
    reproduced = bool(dropped == 1 and retx is not None and close.acks_after and tw["client"] and restart_ok)
    story = [
        (f"client {pair.client.addr4}:{ep.client_port} closes; server reads EOF; iptables in {pair.server.name} "
         f"drops the next pure ACK from the client; the server closes",
         f"rule counter {dropped} (one final ACK dropped)"),
        ("waiting for the server's retransmission",
         f"FIN retransmitted after {rto_ms:.1f} ms (RTO)" if rto_ms is not None else "no FIN retransmission seen"),
        ("the client's TIME_WAIT answers it",
         ("ACK N+1 sent again from TIME_WAIT" if close.acks_after else "no second ACK seen")
         + (f"; sock_diag: its timer jumped back up to {restarts[0][1] / 1000:.2f} s" if restarts else
            "; sock_diag: no timer restart seen")),
        ("the lab dumps the server's sockets once the drop is counted",
         (f"sock_diag: server LAST_ACK, {last_ack['timer']} timer {last_ack['expires_ms']} ms (dump span "
          f"{(last_ack['dump_wall_end_s'] - last_ack['dump_wall_s']) * 1000:.1f} ms)") if last_ack["seen"] else
         f"server LAST_ACK not seen: {last_ack['why']}"),
        ("sock_diag states", "; ".join(f"{side}: {' -> '.join(st)}" for side, st in states.items())),
    ]
    notes: list[str] = []
    if rto_ms is not None:
        notes.append(f"The retransmission came after {rto_ms:.0f} ms: Linux's minimum RTO (tcp_rto_min, 200 ms) "
                     "on a path with a tiny RTT; the textbook speaks of the peer 'timing out' without a figure.")
    if not last_ack["seen"]:
        notes.append(f"The server's LAST_ACK after the drop is not reported: {last_ack['why']}.")
    if comparison.get("agree") is False:
        notes.append("the analyzer's TIME_WAIT windows differ from sock_diag: see observations.kernel_vs_analyzer")
    obs: dict[str, Any] = {
        "lore_holds": reproduced,
        "dropped_acks": dropped,
        "rto_ms": rto_ms,
        "fin_retransmits": len(close.fin_retransmits),
        "reacked_from_time_wait": bool(close.acks_after),
        "time_wait_timer_restarted": restart_ok,
        "time_wait_restart_seen_as": [k for k, v in (("timer jump", bool(restarts)),
                                                     ("timer end 60 s after the second ACK", restart_by_end)) if v],
        "time_wait_restarts": [{"wall_s": w, "expires_ms": e, "wall_end_s": end}
                               for (w, e), end in zip(restarts, restarts_end, strict=False)],
        "time_wait_remaining_ms": tw["client"]["expires_ms"] if tw["client"] else None,
        "server_last_ack_timer": server_timers[:5],
        "server_last_ack_after_drop": last_ack,
        "client_states": states["client"],
        "server_states": states["server"],
        "server_close_wall_s": s_close["wall_s"],
        "close": {k: cc.seg_dict(getattr(close, k), t0) for k in ("first_fin", "second_fin", "ack_of_second")},
        "retransmitted_fin": cc.seg_dict(retx, t0),
        "second_ack": cc.seg_dict(close.acks_after[0] if close.acks_after else None, t0),
        "labels": labels,
        "analyzer_findings": findings,
    }
    return cc.outcome(reproduced, obs, story, notes, rec, pair, capture, comparison)


EXPERIMENT = Experiment(
    id="lost-final-ack",
    claim="When the final ACK is lost, the peer retransmits its FIN after the RTO and TIME_WAIT answers it again, "
          "restarting its timer.",
    lore="Stevens UNP 2.7, reason 1 for TIME_WAIT: to implement the full-duplex close reliably.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("close", "time-wait", "iptables"),
)
