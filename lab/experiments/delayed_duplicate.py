"""delayed-duplicate: a data segment of incarnation 1 replayed into incarnation 2 of the same five-tuple.

Topology: a lab namespace with a TUN device; the kernel server (lab.kernel.agent program) on 198.51.100.1, the
scripted peer (lab.kernel.peer) as 198.51.100.2 playing the client, so both incarnations' ISNs and timestamps are
chosen. Incarnation 1: the peer sends b"OLD-DATA-1", the server reads it and closes first. Incarnation 2
reuses the five-tuple with an ISN chosen so that the old segment's sequence numbers land below the new
receive window, inside it (5 bytes ahead of rcv_nxt, so the old bytes are spliced in after the peer's next
5 new bytes), or beyond it. The injector (lab.kernel.inject) then replays the old segment as it was sent, or with
its timestamp option stripped, or with the new incarnation's ACK. net.ipv4.tcp_timestamps is switched per
case in the namespace; cases without timestamps and with the old segment inside the window need the server
to keep no TIME_WAIT (tcp_max_tw_buckets=0), since TIME_WAIT refuses a SYN below the old sequence space.
Per case: did the kernel take it (the ACK after the peer's next data, and what the application read), and
the counter deltas (PAWSEstab, TCPChallengeACK, ...). docs/kernel-facts.md §8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.kernel.peer import (
    KERNEL_IP,
    TS_NEXT,
    close_after_kernel,
    counter_deltas,
    handshake,
    open_in_namespace,
    send_data,
    server_steps,
    signed,
    time_wait_of,
)
from lab.run.context import Experiment, Outcome, RunContext

PORT = 5000
ISN1 = 2_000_000
OLD = "OLD-DATA-1"
NEW = "NEW-2"                       # the peer's first data in incarnation 2; its length sets the gap
TW_BUCKETS_DEFAULT = 131072
ISN2 = {                            # incarnation 2's ISN, relative to incarnation 1's
    "below": 100_000 + len(OLD) + 2,    # above the old sequence space: the old segment is far below rcv_nxt
    "inside": -len(NEW),                # the old segment sits right after the peer's next len(NEW) bytes
    "beyond": -10_000_000,              # the old segment lies 10 M beyond the new window
}
COUNTERS = ("PAWSEstab", "TCPChallengeACK", "TCPACKSkippedChallenge", "TCPACKSkippedPAWS", "TCPACKSkippedSeq",
            "TCPOFOQueue", "DelayedACKLost", "TCPDSACKOldSent", "PAWSTimewait")


@dataclass(frozen=True)
class Case:
    id: str
    timestamps: int       # net.ipv4.tcp_timestamps in the namespace; the peer offers TS iff 1
    time_wait: bool       # False: tcp_max_tw_buckets=0, the server keeps no TIME_WAIT
    position: str         # below | inside | beyond (key of ISN2)
    ack: str              # "old": as captured; "new": the new incarnation's snd_nxt
    strip_ts: bool        # remove the TS option from the replay
    accept: bool          # expected (docs/kernel-facts.md §8)
    why: str              # the kernel rule that decides


CASES = (
    Case("ts-below-verbatim", 1, True, "below", "old", False, False, "PAWS (old TSval)"),
    Case("ts-inside-old-tsval", 1, True, "inside", "new", False, False, "PAWS (old TSval)"),
    Case("ts-inside-ts-stripped", 1, True, "inside", "new", True, True,
         "no TS option: Linux does not apply PAWS to it"),
    Case("ts-beyond-ts-stripped", 1, True, "beyond", "new", True, False, "window check"),
    Case("nots-below-verbatim", 0, True, "below", "old", False, False, "window check (old duplicate)"),
    Case("nots-inside-no-time-wait", 0, False, "inside", "new", False, True, "nothing: seq and ack both fit"),
    Case("nots-inside-old-ack", 0, False, "inside", "old", False, False, "ACK check (RFC 5961 challenge ACK)"),
    Case("nots-beyond-no-time-wait", 0, False, "beyond", "new", False, False, "window check"),
)


def _case(ctx: RunContext, ns: Any, peer: Any, case: Case, sport: int) -> dict[str, Any]:
    from lab.kernel import sockdiag
    from lab.kernel.agent import Agent

    ts = case.timestamps == 1
    ns.sysctl("net.ipv4.tcp_timestamps", case.timestamps)
    ns.sysctl("net.ipv4.tcp_max_tw_buckets", TW_BUCKETS_DEFAULT if case.time_wait else 0)
    server = Agent.start(ctx, server_steps(KERNEL_IP, PORT, second=True), netns=ns.name, name=f"server-{sport}")
    server.wait("listen")
    conn = peer.connection(sport, PORT)
    obs: dict[str, Any] = {"case": case.id, "peer_port": sport, "tcp_timestamps": case.timestamps,
                           "server_time_wait": case.time_wait, "position": case.position, "ack": case.ack,
                           "ts_stripped": case.strip_ts, "expected_accept": case.accept, "rule": case.why}
    try:
        one = conn.run(handshake(ISN1, tsval=1000 if ts else None, tag="i1:") + send_data(OLD, ts=ts, tag="i1:")
                       + close_after_kernel(ts=ts, tag="i1:"))
        obs["incarnation1_ok"] = one.ok
        if not one.ok:
            obs["failures"] = one.failures()
            return obs
        old = conn.sent["i1:data"]
        obs["app_read_incarnation1"] = server.wait("recv1")["result"]["text"]
        server.wait("close1")   # the peer already saw the kernel's FIN and sent the final ACK: TIME_WAIT is there
        obs["time_wait_after_incarnation1"] = time_wait_of(sockdiag.sockets(netns=ns.name, ports=[PORT]), sport)
        isn2 = (ISN1 + ISN2[case.position]) % (1 << 32)
        two = conn.run(handshake(isn2, tsval=(conn.vars["peer.tsval"] + 1000) if ts else None, tag="i2:",
                                 mark="new-syn"))
        obs["incarnation2_ok"] = two.ok
        if not two.ok:
            obs["failures"] = two.failures()
            return obs
        server.wait("accept2")
        rcv_nxt2, snd_nxt2 = conn.vars["peer.nxt"], conn.vars["kernel.nxt"]
        window = conn.vars["kernel.window"]
        before = sockdiag.nstat(netns=ns.name)
        change: dict[str, Any] = {}
        if case.ack == "new":
            change["ack"] = snd_nxt2
        if case.strip_ts:
            change["strip_ts"] = True
        rec = peer.injector().replay(old, label=f"replay {case.id}", mark="duplicate", delay_s=0.05, **change)
        offset = signed(rec["seq"] - rcv_nxt2)
        answers = conn.run([{"label": "answer", "collect": {"timeout_s": 0.3}}]).steps[0].collected
        after_inject = sockdiag.nstat(netns=ns.name)
        fill = conn.run([{"label": "i2:data", "send": {"flags": "PA", "data": NEW, "ts": TS_NEXT if ts else None}},
                         {"label": "i2:data-ack", "expect": {"flags": "A", "ack_min": "peer.nxt", "skip_other": True,
                                                               "timeout_s": 2}}], stop_on_fail=False)
        server.release("recv2")
        app = server.wait("recv2", timeout_s=5)
        fill_ack = fill.by_label("i2:data-ack").got
        answers += fill.by_label("i2:data-ack").collected  # late answers to the replay
        acked_beyond = signed(fill_ack["ack"] - conn.vars["peer.nxt"]) if fill_ack else None
        app_text = app["result"]["text"] if app.get("ok") else ""
        accepted = OLD in app_text
        obs.update({
            "replayed_after_s": round(rec["sent_wall_s"] - conn.sent_records["i1:data"]["sent_wall_s"], 3),
            "incarnation2_isn_minus_incarnation1": ISN2[case.position],
            "new_rcv_nxt": rcv_nxt2, "kernel_window": window,
            "replayed": {k: rec.get(k) for k in ("seq", "ack", "flags", "tsval", "tsecr", "len", "payload_text")},
            "replay_seq_minus_rcv_nxt": offset,
            "position_measured": "below" if offset < 0 else ("inside" if offset < window else "beyond"),
            "kernel_answers_to_replay": [{k: a.get(k) for k in ("flags", "seq", "ack", "tsval", "len")}
                                         for a in answers],
            "ack_after_next_data_minus_peer_nxt": acked_beyond,
            "app_read": app_text, "app_read_errno": app.get("errno"),
            "accepted": accepted, "as_expected": accepted == case.accept,
            "counters": counter_deltas(before, after_inject, COUNTERS),
        })
        # end incarnation 2 with an RST at exactly the kernel's rcv_nxt
        conn.run([{"label": "i2:rst", "send": {"flags": "R", "seq": "kernel.ack", "ack": 0, "window": 0}}])
        return obs
    finally:
        server.release("recv2")
        server.release("end")
        server.finish()
        ns.sysctl("net.ipv4.tcp_max_tw_buckets", TW_BUCKETS_DEFAULT)


def _story(case: Case, o: dict[str, Any]) -> tuple[str, str]:
    ts = "timestamps on" if case.timestamps else "timestamps off"
    tw = "" if case.time_wait else ", server kept no TIME_WAIT (tcp_max_tw_buckets=0)"
    variant = {"old": "its old ACK", "new": "the new incarnation's ACK"}[case.ack] + (
        ", TS option stripped" if case.strip_ts else "")
    did = (f"{case.id}: {ts}{tw}; replayed incarnation 1's {OLD!r} segment into incarnation 2, "
           f"{o.get('replay_seq_minus_rcv_nxt', '?')} bytes from rcv_nxt ({case.position}), with {variant}")
    if "accepted" not in o:
        return did, "set-up failed: " + "; ".join(o.get("failures", []))
    c = {k: v for k, v in o["counters"].items() if v}
    if o["accepted"]:
        ans = f"ACCEPTED: the application read {o['app_read']!r} — old bytes in the new stream"
    else:
        ans = f"dropped ({case.why}); the application read {o['app_read']!r}"
    return did, ans + (f"; counters {c}" if c else "") + ("" if o["as_expected"] else " — NOT as expected")


def run(ctx: RunContext) -> Outcome:
    from lab.kernel.inject import capture_check, check_outcome
    from lab.kernel.recording import Recording

    ns, peer = open_in_namespace(ctx, "k")
    results: list[dict[str, Any]] = []
    with Recording(ctx, ports=[PORT], iface=peer.name, netns=ns.name) as rec:
        for i, case in enumerate(CASES):
            ctx.say(f"case {case.id}", i / len(CASES))
            results.append(_case(ctx, ns, peer, case, 43000 + i))
    capture, analysis, check = capture_check(
        ctx, rec, {"delayed-duplicate": {"duplicate"}, "reuse-in-time-wait": {"new-syn"}, "time-wait-assassinated": ()},
        notes={"duplicate": "incarnation 1's data segment replayed into incarnation 2 (lab.kernel.inject)"})
    story = [_story(c, o) for c, o in zip(CASES, results, strict=True)]
    corrupted = [o["case"] for o in results if o.get("accepted")]
    all_expected = all(o.get("as_expected", False) for o in results)
    positions_ok = all(o.get("position_measured") == o["position"] for o in results)
    notes = [
        "With timestamps negotiated, Linux still accepts a segment that carries no timestamp option at all "
        "(RFC 7323 says it SHOULD be dropped), so PAWS protects only against duplicates that carry their old TSval.",
        "A verbatim old segment also fails Linux's ACK check (RFC 5961: an ACK below snd_una - "
        "min(max_window, bytes_acked) gets a challenge ACK); the corruption needs an old segment whose ACK happens "
        "to fit the new incarnation too, as the lore assumes.",
    ]
    extra_notes, skipped, check_obs = check_outcome(check, "delayed-duplicate", "injector")
    notes += extra_notes
    observations = {
        "cases": results,
        "accepted": {o["case"]: o.get("accepted") for o in results},
        "app_read": {o["case"]: o.get("app_read") for o in results},
        "old_bytes_reached_application": corrupted,
        **check_obs,
    }
    reproduced = (all_expected and positions_ok and "nots-inside-no-time-wait" in corrupted
                  and check.get("ok") is not False)
    # a case whose two incarnations could not be set up says nothing about duplicates: an environment verdict
    not_set_up = [f"case {o['case']}: " + "; ".join(o.get("failures", [])) for o in results if "accepted" not in o]
    return Outcome(reproduced=reproduced, observations=observations, story=story, notes=notes, skipped=skipped,
                   capture=capture, analysis=analysis, could_not_run=" | ".join(not_set_up) or None)


EXPERIMENT = Experiment(
    id="delayed-duplicate",
    claim="an old segment replayed into a new incarnation of the five-tuple: accepted inside the window without "
          "timestamps (corrupting the stream), rejected by PAWS or outside the window",
    lore="TIME_WAIT lasts 2*MSL so that delayed duplicates of an old connection die before a new incarnation of the "
         "same five-tuple can accept them as its own data (RFC 793, Stevens UNP 2.7)",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=6.0,
    tags=("delayed-duplicate", "paws", "inject", "peer"),
)
