"""who-gets-time-wait: the side that calls close() first ends in TIME_WAIT, whichever side it is.

Two lab hosts (client and server namespaces on a veth). Case A: the client closes first, the server closes when
it reads EOF. Case B: the server closes first. sock_diag on both hosts says who holds TIME_WAIT; the capture's
analyzer says the same from the segments alone.
"""

from __future__ import annotations

from typing import Any

from lab.experiments import _closecommon as cc
from lab.run.context import Experiment, Outcome, RunContext


def _one(ctx: RunContext, pair: cc.NetnsPair, first: str, samplers: tuple[Any, Any]) -> dict[str, Any]:
    closer_tail: list[dict[str, Any]] = [cc.gate("close"), {"op": "close", "label": "close"}]
    passive_tail: list[dict[str, Any]] = [cc.passive_eof(), {"op": "close", "label": "close"}]
    ep = cc.open_connection(ctx, pair, f"{first}-first",
                            client_tail=closer_tail if first == "client" else passive_tail,
                            server_tail=closer_tail if first == "server" else passive_tail)
    active = ep.client if first == "client" else ep.server
    passive = ep.server if first == "client" else ep.client
    active.release("close")
    closed = active.wait("close")
    passive.wait("close")
    cc.finish(ep.client, ep.server)
    cc.settle(pair, ep.port, ep.client_port)   # the last ACK has arrived: both sides in TIME_WAIT or gone
    tw = cc.time_wait_now(pair, ep.port, ep.client_port)
    sides = [s for s in ("client", "server") if tw[s]]
    states = cc.side_states(samplers[0], samplers[1], ep.client_port)
    return {"first_closer": first, "client_port": ep.client_port, "close_wall_s": closed["wall_s"],
            "time_wait_sides": sides, "time_wait_side": sides[0] if len(sides) == 1 else (sides or None),
            "time_wait_remaining_ms": tw[sides[0]]["expires_ms"] if sides else None,
            "states_seen": states, "as_claimed": sides == [first]}


def run(ctx: RunContext) -> Outcome:
    pair = cc.make_pair(ctx)
    cases: dict[str, dict[str, Any]] = {}
    with cc.recording(ctx, pair) as rec, \
            cc.watch(ctx, pair, [cc.PORT]) as samplers:
        for first in ("client", "server"):
            ctx.say(f"the {first} closes first", 0.2 if first == "client" else 0.6)
            cases[first] = _one(ctx, pair, first, samplers)
    story: list[tuple[str, str]] = []
    for first, c in cases.items():
        other = "server" if first == "client" else "client"
        segs = cc.conn_segments(rec, c["client_port"])
        close = cc.find_close(segs)
        c["close_segments"] = close.count()
        cc.label_close(rec, close, prefix=f"{first} closes first")
        c["analyzer"] = cc.analyzer_close(rec, c["client_port"])
        if c["analyzer"] is not None:
            c["analyzer_time_wait_side"] = (c["analyzer"]["time_wait_sides"] or [None])[0]
        kernel_said = (f"sock_diag: TIME_WAIT on the {c['time_wait_side']} only "
                       f"({c['time_wait_remaining_ms'] / 1000:.1f} s left); the {other} socket is gone"
                       if c["as_claimed"] else f"sock_diag: TIME_WAIT on {c['time_wait_sides'] or 'no side'}")
        story.append((f"{first} calls close() first; the {other} reads EOF and closes "
                      f"(client port {c['client_port']})", kernel_said))
    comparison = cc.compare_with_analyzer(rec, samplers)
    capture = rec.save()
    reproduced = all(c["as_claimed"] for c in cases.values())
    notes: list[str] = []
    if comparison.get("agree") is False:
        notes.append("the analyzer's TIME_WAIT windows differ from sock_diag: see observations.kernel_vs_analyzer")
    obs: dict[str, Any] = {
        "lore_holds": reproduced,
        "client_first_time_wait_side": cases["client"]["time_wait_side"],
        "server_first_time_wait_side": cases["server"]["time_wait_side"],
        "time_wait_remaining_ms": cases["client"]["time_wait_remaining_ms"],
        "cases": cases,
    }
    return cc.outcome(reproduced, obs, story, notes, rec, pair, capture, comparison)


EXPERIMENT = Experiment(
    id="who-gets-time-wait",
    claim="The side that calls close() first enters TIME_WAIT; the other side's socket goes away.",
    lore="TIME_WAIT is on the side that does the active close (Stevens UNP 2.7), not necessarily the client.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("close", "time-wait"),
)
