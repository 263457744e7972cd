"""time-wait-zero: what "TIME_WAIT = 0" costs. With net.ipv4.tcp_max_tw_buckets=0 on the client's host the kernel
keeps no TIME_WAIT socket (it counts TcpExtTCPTimeWaitOverflow instead). When the final ACK is lost, the server's
retransmitted FIN then finds no socket and is answered with RST: the server's close ends in an error, not in an
orderly release.

Case A (the lore's scenario): the client half-closes with shutdown(SHUT_WR), reads EOF and then closes, so its
socket is not an orphan; iptables in the server's namespace drops exactly the final ACK; after the RTO the
server retransmits its FIN and the client answers RST (docs/kernel-facts.md §7).
Case B (not in the textbook): the client close()s (orphan) and the server closes 0.5 s later. With no
TIME_WAIT buckets the orphaned FIN_WAIT_2 socket cannot be kept either, so the server's very first FIN is
answered with RST (docs/kernel-facts.md §4).
"""

from __future__ import annotations

from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.kernel import sockdiag
from lab.kernel.impair import drop_one
from lab.run.context import Experiment, Outcome, RunContext

COUNTERS = ("TcpExtTCPTimeWaitOverflow", "TcpOutRsts", "TcpExtTCPAbortOnClose", "TcpEstabResets")


def _case_a(ctx: RunContext, pair: cc.NetnsPair, cs: sockdiag.Sampler, ss: sockdiag.Sampler) -> dict[str, Any]:
    before = sockdiag.nstat(pair.client.name)
    ep = cc.open_connection(ctx, pair, "A",
                            client_tail=[cc.gate("close"), {"op": "shutdown", "how": "WR", "label": "shutdown"},
                                         cc.passive_eof(),
                                         {"op": "close", "label": "close"}],
                            server_tail=[cc.passive_eof(), cc.gate("close"),
                                         {"op": "close", "label": "close"}])
    ep.client.release("close")
    ep.server.wait("eof")
    rule = drop_one(ctx, pair.server, chain="INPUT", src=pair.client.addr4, sport=ep.client_port,
                    dst=pair.server.addr4, dport=cc.PORT, role="dropa")
    ep.server.release("close")
    cc.finish(ep.client, ep.server)
    # the server's socket goes when the client's RST answers its retransmitted FIN: the event that ends the case
    cc.wait_until(lambda: not [s for s in ss.sample_now() if s.dport == ep.client_port], cc.SETTLE_S, 0.02)
    dropped = rule.packets()
    rule.remove()
    after = sockdiag.nstat(pair.client.name)
    return {"client_port": ep.client_port, "dropped_acks": dropped,
            "counters": sockdiag.deltas(before, after, COUNTERS),
            "time_wait": cc.time_wait_now(pair, ep.port, ep.client_port),
            "states_seen": cc.side_states(cs, ss, ep.client_port)}


def _case_b(ctx: RunContext, pair: cc.NetnsPair, cs: sockdiag.Sampler, ss: sockdiag.Sampler) -> dict[str, Any]:
    before = sockdiag.nstat(pair.client.name)
    ep = cc.open_connection(ctx, pair, "B",
                            client_tail=[cc.gate("close"), {"op": "close", "label": "close"}],
                            server_tail=[cc.passive_eof(),
                                         {"op": "sleep", "s": 0.5}, {"op": "close", "label": "close"}])
    ep.client.release("close")
    cc.finish(ep.client, ep.server)
    cc.wait_until(lambda: not [s for s in ss.sample_now() if s.dport == ep.client_port], cc.SETTLE_S, 0.02)
    after = sockdiag.nstat(pair.client.name)
    return {"client_port": ep.client_port, "counters": sockdiag.deltas(before, after, COUNTERS),
            "time_wait": cc.time_wait_now(pair, ep.port, ep.client_port),
            "states_seen": cc.side_states(cs, ss, ep.client_port)}


def run(ctx: RunContext) -> Outcome:
    pair = cc.make_pair(ctx, client_sysctls={"net.ipv4.tcp_max_tw_buckets": 0})
    with cc.recording(ctx, pair) as rec, cc.watch(ctx, pair, [cc.PORT], interval_s=0.01) as (cs, ss):
        ctx.say("case A: shutdown(SHUT_WR), final ACK dropped", 0.1)
        a = _case_a(ctx, pair, cs, ss)
        ctx.say("case B: orphaned close, the server's FIN comes 0.5 s later", 0.6)
        b = _case_b(ctx, pair, cs, ss)
    for key, c in (("A", a), ("B", b)):
        close = cc.find_close(cc.conn_segments(rec, c["client_port"]))
        cc.label_close(rec, close, prefix=f"case {key}")
        t0 = close.second_fin.ts_s if close.second_fin else None
        c["close"] = {k: cc.seg_dict(getattr(close, k), t0) for k in ("first_fin", "second_fin", "ack_of_second")}
        c["retransmitted_fin"] = cc.seg_dict(close.fin_retransmits[0] if close.fin_retransmits else None, t0)
        rsts = [r for r in close.rsts if r.sport == c["client_port"]]
        c["client_rst"] = cc.seg_dict(rsts[0] if rsts else None, t0)
        c["rst_has_ack_flag"] = bool(rsts and rsts[0].flags & Flags.ACK)
        if rsts and close.fin_retransmits:
            c["rst_after_retransmitted_fin_ms"] = round((rsts[0].ts_s - close.fin_retransmits[0].ts_s) * 1000, 3)
        if rsts and close.second_fin:
            c["rst_ms_after_server_fin"] = round((rsts[0].ts_s - close.second_fin.ts_s) * 1000, 3)
        if rsts:
            rec.note(rsts[0].frame, f"case {key}: RST from the client — no TIME_WAIT socket (tcp_max_tw_buckets=0) "
                                    "is left to answer the server's FIN")
        c["analyzer"] = cc.analyzer_close(rec, c["client_port"])
    comparison = cc.compare_with_analyzer(rec, [cs, ss])
    capture = rec.save()
    a_ok = bool(a["dropped_acks"] == 1 and a["retransmitted_fin"] and a["client_rst"]
                and a["time_wait"]["client"] is None and a["counters"]["TcpExtTCPTimeWaitOverflow"] >= 1)
    b_rst_first = bool(b["client_rst"] and not b["retransmitted_fin"])
    story = [
        ("net.ipv4.tcp_max_tw_buckets=0 in the client's namespace; case A: the client shutdown(SHUT_WR)s, reads "
         "EOF, closes; iptables in the server's namespace drops the client's final ACK",
         f"final ACK dropped ({a['dropped_acks']}); sock_diag: no TIME_WAIT on the client; "
         f"TcpExtTCPTimeWaitOverflow +{a['counters']['TcpExtTCPTimeWaitOverflow']}"),
        ("the server retransmits its FIN after the RTO",
         (f"the client answers RST ({a['rst_after_retransmitted_fin_ms']:.3f} ms later): the server's connection "
          "ends in a reset") if a.get("rst_after_retransmitted_fin_ms") is not None else "no RST seen"),
        ("case B: the client close()s (orphan); the server reads EOF and closes 0.5 s later",
         (f"the client answers the server's first FIN with RST ({b.get('rst_ms_after_server_fin', 0):.3f} ms); "
          f"TcpExtTCPTimeWaitOverflow +{b['counters']['TcpExtTCPTimeWaitOverflow']}") if b_rst_first
         else "the server's FIN was not answered by RST"),
    ]
    notes = []
    if b_rst_first:
        notes.append("Not in the textbook: with tcp_max_tw_buckets=0 an orphaned FIN_WAIT_2 socket cannot be kept "
                     "as a timewait mini-socket either, so even the peer's first FIN meets RST when it comes late "
                     "(case B). The kernel logs nothing in dmesg; only TcpExtTCPTimeWaitOverflow counts it.")
    if a["client_rst"] and not a["rst_has_ack_flag"]:
        notes.append("The RST carries no ACK flag: it is sent for a segment that matches no socket, with seq = "
                     "the FIN's ack (RFC 9293 3.10.7.1).")
    obs: dict[str, Any] = {
        "lore_holds": a_ok,
        "rst_to_retransmitted_fin": bool(a["client_rst"] and a["retransmitted_fin"]),
        "time_wait_overflow": a["counters"]["TcpExtTCPTimeWaitOverflow"],
        "rto_ms": a["retransmitted_fin"]["t_ms"] if a["retransmitted_fin"] else None,
        "orphan_first_fin_rst": b_rst_first,
        "cases": {"A": a, "B": b},
    }
    return cc.outcome(a_ok, obs, story, notes, rec, pair, capture, comparison)


EXPERIMENT = Experiment(
    id="time-wait-zero",
    claim="Without TIME_WAIT (tcp_max_tw_buckets=0) a retransmitted FIN after a lost final ACK is answered with RST.",
    lore="FAQ 'what if TIME_WAIT were 0': the peer's retransmitted FIN would get an RST, an error instead of a "
         "clean close.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("close", "time-wait", "iptables"),
)
