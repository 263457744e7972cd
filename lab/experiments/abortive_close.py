"""abortive-close: a close that sends RST instead of FIN, and leaves no TIME_WAIT on either side.

Case A: the client sets SO_LINGER {l_onoff=1, l_linger=0} and closes: RST, no FIN; the server's next recv()
fails with ECONNRESET.
Case B: the server closes while the client's data is still unread in its receive queue: the kernel sends RST
instead of FIN (RFC 2525 2.17); the client's recv() fails with ECONNRESET.
sock_diag on both hosts shows no TIME_WAIT; the namespace counters show which abort path ran.
"""

from __future__ import annotations

from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.kernel import sockdiag
from lab.run.context import Experiment, Outcome, RunContext

COUNTERS = ("TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose", "TcpOutRsts", "TcpEstabResets")


def _case_a(ctx: RunContext, pair: cc.NetnsPair) -> dict[str, Any]:
    before = sockdiag.nstat(pair.client.name)
    ep = cc.open_connection(ctx, pair, "A",
                            client_tail=[cc.gate("close"),
                                         {"op": "setsockopt", "opt": "SO_LINGER", "value": [1, 0], "label": "linger"},
                                         {"op": "close", "label": "close"}],
                            server_tail=[{"op": "recv", "label": "recv-after", "timeout_s": cc.PASSIVE_S,
                                          "on_error": "continue"},
                                         {"op": "close", "label": "close"}])
    ep.client.release("close")
    peer = ep.server.wait("recv-after", cc.PASSIVE_S)
    cc.finish(ep.client, ep.server)
    after = sockdiag.nstat(pair.client.name)   # the RST was counted when close() sent it
    return {"client_port": ep.client_port, "aborter": "client", "how": "SO_LINGER {1,0} then close()",
            "peer_errno": peer.get("errno"), "peer_result": peer.get("result"),
            "counters": sockdiag.deltas(before, after, COUNTERS),
            "time_wait": cc.time_wait_now(pair, ep.port, ep.client_port)}


def _case_b(ctx: RunContext, pair: cc.NetnsPair) -> dict[str, Any]:
    before = sockdiag.nstat(pair.server.name)
    ep = cc.open_connection(ctx, pair, "B",
                            client_tail=[{"op": "send", "data": "data the server never reads\n", "label": "send-more"},
                                         {"op": "recv", "label": "recv-after", "timeout_s": cc.PASSIVE_S,
                                          "on_error": "continue"},
                                         {"op": "close", "label": "close"}],
                            server_tail=[cc.gate("close"), {"op": "close", "label": "close"}])
    ep.client.wait("send-more")
    # the event that makes this case: the bytes sit in the server's receive queue, unread
    cc.wait_queues(pair.server.name, ep.port, ep.client_port, lambda recv_q, send_q: recv_q > 0,
                   "the client's last bytes reaching the server's receive queue")
    ep.server.release("close")
    peer = ep.client.wait("recv-after", cc.PASSIVE_S)
    cc.finish(ep.client, ep.server)
    after = sockdiag.nstat(pair.server.name)   # counted when close() sent the RST
    return {"client_port": ep.client_port, "aborter": "server", "how": "close() with unread data",
            "peer_errno": peer.get("errno"), "peer_result": peer.get("result"),
            "counters": sockdiag.deltas(before, after, COUNTERS),
            "time_wait": cc.time_wait_now(pair, ep.port, ep.client_port)}


def run(ctx: RunContext) -> Outcome:
    pair = cc.make_pair(ctx)
    with cc.recording(ctx, pair) as rec, cc.watch(ctx, pair, [cc.PORT], interval_s=0.02) as (cs, ss):
        ctx.say("case A: SO_LINGER {1,0}", 0.1)
        a = _case_a(ctx, pair)
        ctx.say("case B: close with unread data", 0.5)
        b = _case_b(ctx, pair)
    cases = {"A": a, "B": b}
    story = []
    ok = True
    for key, c in cases.items():
        segs = cc.conn_segments(rec, c["client_port"])
        aborter_port = c["client_port"] if c["aborter"] == "client" else cc.PORT
        rsts = [s for s in segs if s.flags & Flags.RST and s.sport == aborter_port]
        fins = [s for s in segs if s.flags & Flags.FIN and s.sport == aborter_port]
        c["rst"] = cc.seg_dict(rsts[0] if rsts else None)
        c["aborter_fins"] = len(fins)
        if rsts:
            rec.note(rsts[0].frame, f"case {key}: RST from the {c['aborter']} — {c['how']}: abortive close, no FIN, "
                                    "no TIME_WAIT on either side")
        tw_any = bool(c["time_wait"]["client"] or c["time_wait"]["server"])
        c["time_wait_any"] = tw_any
        c["analyzer"] = cc.analyzer_close(rec, c["client_port"])
        seen = bool(rsts) or not rec.captured
        c["as_claimed"] = bool(seen and not fins and not tw_any and c["peer_errno"] == "ECONNRESET")
        ok &= c["as_claimed"]
        story.append((f"case {key}: the {c['aborter']} does {c['how']}",
                      f"{'RST' if rsts else 'no RST'} on the wire, {len(fins)} FIN from it; the peer's recv() -> "
                      f"{c['peer_errno'] or 'no error'}; sock_diag: {'TIME_WAIT present' if tw_any else 'no TIME_WAIT'}"
                      f"; counters " + ", ".join(f"{k} +{v}" for k, v in c["counters"].items() if v)))
    comparison = cc.compare_with_analyzer(rec, [cs, ss])
    capture = rec.save()
    obs: dict[str, Any] = {
        "lore_holds": ok,
        "linger0_peer_errno": a["peer_errno"],
        "unread_data_peer_errno": b["peer_errno"],
        "time_wait_after_linger0": a["time_wait_any"],
        "time_wait_after_unread_close": b["time_wait_any"],
        "cases": cases,
    }
    notes = ["Linux counts the two paths apart: SO_LINGER {1,0} as TcpExtTCPAbortOnData, close() with unread "
             "data as TcpExtTCPAbortOnClose."] if a["counters"].get("TcpExtTCPAbortOnData") and \
        b["counters"].get("TcpExtTCPAbortOnClose") else []
    return cc.outcome(ok, obs, story, notes, rec, pair, capture, comparison)


EXPERIMENT = Experiment(
    id="abortive-close",
    claim="SO_LINGER {1,0}, or close() with unread data, sends RST instead of FIN and leaves no TIME_WAIT.",
    lore="Stevens UNP 7.5: SO_LINGER with a zero timeout aborts the connection (RST) and avoids TIME_WAIT.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("close", "rst"),
)
