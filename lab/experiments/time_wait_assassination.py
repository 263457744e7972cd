"""time-wait-assassination: an RST into the kernel's TIME_WAIT, with tcp_rfc1337 0 and 1; and the rate
limit of the ACKs TIME_WAIT sends to out-of-window segments.

The kernel server (lab.kernel.agent, in a lab namespace) closes first and holds TIME_WAIT; the scripted peer (TUN)
then sends an RST with seq exactly the server's rcv_nxt, or one off, with and without a timestamp. sock_diag
shows whether the TIME_WAIT socket survived (docs/kernel-facts.md §11). Then the peer sends a burst of pure ACKs
outside the window: TIME_WAIT answers them with its own ACK, at most one per net.ipv4.tcp_invalid_ratelimit
(500 ms by default), counting the rest in TcpExtTCPACKSkippedTimeWait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lab.experiments._closecommon import wait_until
from lab.kernel.peer import (
    KERNEL_IP,
    close_after_kernel,
    counter_deltas,
    handshake,
    open_in_namespace,
    send_data,
    server_steps,
    time_wait_of,
)
from lab.run.context import Experiment, Outcome, RunContext

PORT = 5000
ISN = 3_000_000
BURST = 10
BURST_GAP_S = 0.05
ACCOUNT_S = 2.0        # until every ACK of the burst is answered or counted (idle machine; scaled)


@dataclass(frozen=True)
class Case:
    id: str
    rfc1337: int
    seq_off: int          # RST seq relative to the server's rcv_nxt
    ts: bool
    survives: bool        # docs/kernel-facts.md §11


CASES = (
    Case("rfc1337=0 seq=rcv_nxt", 0, 0, False, False),
    Case("rfc1337=0 seq=rcv_nxt +TS", 0, 0, True, False),
    Case("rfc1337=1 seq=rcv_nxt", 1, 0, False, True),
    Case("rfc1337=1 seq=rcv_nxt +TS", 1, 0, True, True),
    Case("rfc1337=0 seq=rcv_nxt+1", 0, +1, False, True),
    Case("rfc1337=0 seq=rcv_nxt-1", 0, -1, False, True),
)


def _tw_connection(ctx: RunContext, ns: Any, peer: Any, sport: int, ts: bool, name: str) -> tuple[Any, Any, bool]:
    """One incarnation on (peer:sport, kernel:PORT) that ends with the server in TIME_WAIT."""
    from lab.kernel.agent import Agent

    server = Agent.start(ctx, server_steps(KERNEL_IP, PORT), netns=ns.name, name=name)
    server.wait("listen")
    conn = peer.connection(sport, PORT)
    rep = conn.run(handshake(ISN, tsval=1000 if ts else None) + send_data("HELLO", ts=ts)
                   + close_after_kernel(ts=ts))
    server.wait("close1")
    return server, conn, rep.ok


def _rst_case(ctx: RunContext, ns: Any, peer: Any, case: Case, sport: int) -> dict[str, Any]:
    from lab.kernel import sockdiag

    ns.sysctl("net.ipv4.tcp_rfc1337", case.rfc1337)
    server, conn, ok = _tw_connection(ctx, ns, peer, sport, case.ts, f"server-rst{sport}")
    obs: dict[str, Any] = {"case": case.id, "peer_port": sport, "tcp_rfc1337": case.rfc1337,
                           "rst_seq_minus_rcv_nxt": case.seq_off, "timestamp": case.ts, "setup_ok": ok}
    if ok:
        before = time_wait_of(sockdiag.sockets(netns=ns.name, ports=[PORT]), sport)
        rst: dict[str, Any] = {"flags": "R", "seq": f"peer.nxt{case.seq_off:+d}", "ack": 0, "window": 0,
                               "mark": "rst-exact" if case.seq_off == 0 else "rst-off"}
        if case.ts:
            rst["ts"] = ["peer.tsval+1", "kernel.tsval"]
        rep = conn.run([{"label": f"rst {case.id}", "send": rst},
                        {"label": "no-answer", "expect_none": {"timeout_s": 0.2}}], stop_on_fail=False)
        after = time_wait_of(sockdiag.sockets(netns=ns.name, ports=[PORT]), sport)
        obs.update({"rst": rep.steps[0].got, "kernel_answered": rep.steps[1].got,
                    "time_wait_before": before, "time_wait_after": after, "survived": after is not None,
                    "expected_survive": case.survives,
                    "as_expected": before is not None and (after is not None) == case.survives})
    server.release("end")
    server.finish()
    return obs


def _ratelimit(ctx: RunContext, ns: Any, peer: Any, ratelimit_ms: int, sport: int) -> dict[str, Any]:
    from lab.kernel import sockdiag

    ns.sysctl("net.ipv4.tcp_rfc1337", 0)
    ns.sysctl("net.ipv4.tcp_invalid_ratelimit", ratelimit_ms)
    server, conn, ok = _tw_connection(ctx, ns, peer, sport, False, f"server-rl{sport}")
    obs: dict[str, Any] = {"tcp_invalid_ratelimit_ms": ratelimit_ms, "peer_port": sport, "setup_ok": ok}
    if ok:
        before = sockdiag.nstat(netns=ns.name)
        t0 = time.monotonic()
        steps: list[dict[str, Any]] = []
        for k in range(BURST):
            steps.append({"label": f"oow-ack {k + 1}", "send": {"flags": "A", "seq": "peer.nxt+1000",
                                                                "ack": "kernel.nxt", "mark": "oow-ack"}})
            steps.append({"sleep": BURST_GAP_S})
        conn.drain()
        n0 = len(conn.received)
        conn.run(steps)
        span_s = time.monotonic() - t0
        # every ACK is either answered or counted as skipped when the kernel takes it in; wait for that event
        # (a busy reader thread brings the answers late) instead of a fixed window
        seen: dict[str, Any] = {}

        def accounted() -> bool:
            conn.drain()
            seen["replies"] = [d for d in conn.received[n0:] if d["flags"] == "A"]
            seen["d"] = counter_deltas(before, sockdiag.nstat(netns=ns.name), ("TCPACKSkippedTimeWait",))
            return len(seen["replies"]) + seen["d"]["TCPACKSkippedTimeWait"] >= BURST

        wait_until(accounted, ACCOUNT_S)
        replies, d = seen["replies"], seen["d"]
        obs.update({"sent": BURST, "span_s": round(span_s, 3), "acks_answered": len(replies),
                    "skipped_counter": d["TCPACKSkippedTimeWait"],
                    "answered_plus_skipped": len(replies) + d["TCPACKSkippedTimeWait"],
                    "time_wait_after": time_wait_of(sockdiag.sockets(netns=ns.name, ports=[PORT]), sport)})
    server.release("end")
    server.finish()
    return obs


def run(ctx: RunContext) -> Outcome:
    from lab.kernel.inject import capture_check, check_outcome
    from lab.kernel.recording import Recording

    ns, peer = open_in_namespace(ctx, "k")
    results: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    with Recording(ctx, ports=[PORT], iface=peer.name, netns=ns.name) as rec:
        for i, case in enumerate(CASES):
            ctx.say(f"RST case {case.id}", i / (len(CASES) + 2))
            results.append(_rst_case(ctx, ns, peer, case, 42000 + i))
        for j, ms in enumerate((500, 0)):
            ctx.say(f"TIME_WAIT ACK rate limit, tcp_invalid_ratelimit={ms} ms", (len(CASES) + j) / (len(CASES) + 2))
            limits.append(_ratelimit(ctx, ns, peer, ms, 42100 + j))
    capture, analysis, check = capture_check(
        ctx, rec, {"time-wait-assassinated": {"rst-exact"}, "delayed-duplicate": (), "reuse-in-time-wait": ()},
        notes={"rst-exact": "peer's RST with seq = TIME_WAIT's rcv_nxt (lab.kernel.peer)",
               "rst-off": "peer's RST one off rcv_nxt: TIME_WAIT ignores it (lab.kernel.peer)",
               "oow-ack": "peer's out-of-window ACK into TIME_WAIT (lab.kernel.peer)"})
    story = []
    for c, o in zip(CASES, results, strict=True):
        if not o.get("setup_ok"):
            story.append((f"{c.id}: set up TIME_WAIT", "set-up failed"))
            continue
        story.append((f"server in TIME_WAIT; peer sent RST, {c.id}",
                      ("TIME_WAIT gone: assassinated" if not o["survived"] else "TIME_WAIT still there")
                      + (f" ({o['time_wait_after']['expires_ms']} ms left)" if o["survived"] and o["time_wait_after"]
                         else "") + ("" if o["as_expected"] else " — unexpected")))
    for lo in limits:
        if lo.get("setup_ok"):
            story.append((f"{BURST} out-of-window ACKs into TIME_WAIT over {lo['span_s']} s, "
                          f"tcp_invalid_ratelimit={lo['tcp_invalid_ratelimit_ms']} ms",
                          f"{lo['acks_answered']} ACKs answered, TCPACKSkippedTimeWait +{lo['skipped_counter']}"))
    limited = next((lo for lo in limits if lo.get("tcp_invalid_ratelimit_ms") == 500), {})
    unlimited = next((lo for lo in limits if lo.get("tcp_invalid_ratelimit_ms") == 0), {})
    max_answers = int(limited.get("span_s", 0) / 0.5) + 2 if limited else 0
    rate_ok = (bool(limited) and bool(unlimited) and 1 <= limited.get("acks_answered", 0) <= max_answers
               and limited.get("answered_plus_skipped") == BURST and unlimited.get("acks_answered") == BURST
               and unlimited.get("skipped_counter") == 0)
    rst_ok = all(o.get("as_expected", False) for o in results)
    notes = ["Only an RST whose seq is exactly TIME_WAIT's rcv_nxt is acted on; with tcp_rfc1337=1 Linux ignores "
             "it and TIME_WAIT keeps its timer (tcp_timewait_state_process).",
             "The sysctl is invisible on the wire: the analyzer flags every RST at rcv_nxt as able to assassinate; "
             "sock_diag tells which ones did."]
    extra_notes, skipped, check_obs = check_outcome(check, "time-wait-assassinated", "peer")
    notes += extra_notes
    observations = {
        "rst_cases": results,
        "survived": {o["case"]: o.get("survived") for o in results},
        "rate_limit": limits,
        **check_obs,
    }
    # a case whose TIME_WAIT could not be set up says nothing about RSTs into it: an environment verdict
    not_set_up = [f"{o.get('case') or 'rate limit ' + str(o.get('tcp_invalid_ratelimit_ms')) + ' ms'}: the "
                  "connection to put into TIME_WAIT failed" for o in results + limits if not o.get("setup_ok")]
    return Outcome(reproduced=rst_ok and rate_ok and check.get("ok") is not False, observations=observations,
                   story=story, notes=notes, skipped=skipped, capture=capture, analysis=analysis,
                   could_not_run=" | ".join(not_set_up) or None)


EXPERIMENT = Experiment(
    id="time-wait-assassination",
    claim="an RST kills TIME_WAIT unless tcp_rfc1337=1",
    lore="RFC 1337: an RST arriving in TIME_WAIT ends it early ('TIME-WAIT assassination'), letting old duplicates "
         "into a new incarnation; the fix is to ignore RSTs in TIME_WAIT",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=5.0,
    tags=("time-wait", "rst", "peer"),
)
