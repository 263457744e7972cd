"""syn-in-time-wait: a new SYN for a five-tuple the kernel server still holds in TIME_WAIT.

The kernel server (a lab.kernel.agent program in a lab namespace, on 198.51.100.1) closes first, so the server
holds TIME_WAIT. The scripted userspace peer (lab.kernel.peer, behind a TUN device, as 198.51.100.2) then sends a
new SYN from the same port, with its ISN below or above the old connection's sequence space and its
timestamp older or newer than the last one the server saw (docs/kernel-facts.md §10, RFC 6191). Per case: what the
kernel answered (SYN-ACK, or the old connection's ACK), the new ISN relative to the old snd_nxt, the
PAWSTimewait counter and the TIME_WAIT socket before and after (sock_diag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
ISN = 1_000_000
TS0 = 1000
OFFSET = 100_000
TW_ISN_GAP = 65537  # Linux: new ISN = old snd_nxt + 65535 + 2 when a SYN reopens from TIME_WAIT
# --- kernel versions (helper E2): what changed when, named from upstream; verdicts come from the measurement
TW_ISN_SINCE = "since 6.10 (upstream tcp_tw_isn fix, 2024)"      # before: the clock-based ISN (5.10, 6.1 measured)
PAWS_TW_COUNTER = "TcpExtPAWSTimewait"                          # added in 2025 (6.18, 7.2 have it; 6.12 does not)
IsnRule = Literal["old-snd-nxt+65537", "clock-based", "not-measured"]


def isn_rule(gaps: list[int | None]) -> IsnRule:
    """How this kernel chose the ISN of connections reopened from TIME_WAIT, from the measured gaps."""
    measured = [g for g in gaps if g is not None]
    if not measured:
        return "not-measured"
    return "old-snd-nxt+65537" if all(g == TW_ISN_GAP for g in measured) else "clock-based"


def isn_note(rule: IsnRule, gaps: list[int | None]) -> str:
    """The note about the reopened connection's ISN: only what was measured, and since when Linux does it."""
    seen = sorted({g for g in gaps if g is not None})
    if rule == "old-snd-nxt+65537":
        return (f"This kernel gave a connection reopened from TIME_WAIT the ISN old snd_nxt + {TW_ISN_GAP} (measured: "
                f"{seen}), so the new sequence space starts above the old one whatever the clock says: Linux does "
                f"this {TW_ISN_SINCE}.")
    if rule == "clock-based":
        return (f"This kernel gave a connection reopened from TIME_WAIT a clock-based ISN (measured new ISN - old "
                f"snd_nxt: {seen}), not old snd_nxt + {TW_ISN_GAP}: Linux adds {TW_ISN_GAP} only {TW_ISN_SINCE}.")
    return "No SYN was accepted from TIME_WAIT, so the reopened connection's ISN was not measured."
# --- end kernel versions


@dataclass(frozen=True)
class Case:
    id: str
    ts: bool
    seq_delta: int            # new ISN relative to the old rcv_nxt
    ts_delta: int | None      # new TSval relative to the last TSval the server saw
    accept: bool              # RFC 6191 / docs/kernel-facts.md §10: SYN-ACK expected

    def text(self) -> str:
        seq = f"ISN = old rcv_nxt {'+' if self.seq_delta > 0 else '-'} {abs(self.seq_delta)}"
        if not self.ts:
            return f"{seq}, no timestamps"
        return f"{seq}, TSval {'newer' if (self.ts_delta or 0) > 0 else 'older'} ({self.ts_delta:+})"


CASES = (
    Case("no-ts-isn-below", False, -OFFSET, None, False),
    Case("no-ts-isn-above", False, +OFFSET, None, True),
    Case("ts-isn-below-ts-newer", True, -OFFSET, +50, True),
    Case("ts-isn-above-ts-older", True, +OFFSET, -50, False),
    Case("ts-isn-above-ts-newer", True, +OFFSET, +50, True),
)


def _case(ctx: RunContext, ns: Any, peer: Any, case: Case, sport: int) -> dict[str, Any]:
    from lab.kernel import sockdiag
    from lab.kernel.agent import Agent

    server = Agent.start(ctx, server_steps(KERNEL_IP, PORT), netns=ns.name, name=f"server-{case.id}")
    server.wait("listen")
    conn = peer.connection(sport, PORT)
    tsval = TS0 if case.ts else None
    first = conn.run(handshake(ISN, tsval=tsval) + send_data("HELLO-1", ts=case.ts)
                     + close_after_kernel(ts=case.ts))
    server.wait("close1")
    obs: dict[str, Any] = {"case": case.id, "peer_port": sport, "timestamps": case.ts,
                           "first_incarnation_ok": first.ok, "first_incarnation_failures": first.failures()}
    if not first.ok:
        server.release("end")
        server.finish()
        return obs
    v = conn.vars
    old_rcv_nxt, old_snd_nxt = v["peer.nxt"], v["kernel.nxt"]
    old_tsval = v.get("peer.tsval")
    tw_before = time_wait_of(sockdiag.sockets(netns=ns.name, ports=[PORT]), sport)
    before = sockdiag.nstat(netns=ns.name)
    syn: dict[str, Any] = {"flags": "S", "seq": old_rcv_nxt + case.seq_delta, "mss": 1460, "mark": "new-syn"}
    if case.ts:
        syn["ts"] = [(old_tsval or 0) + (case.ts_delta or 0), 0]
    answer = conn.run([{"label": f"{case.id}:new-syn", "send": syn},
                       {"label": "answer", "expect": {"flags": "SA" if case.accept else "A", "timeout_s": 1.5}}],
                      stop_on_fail=False)
    got = answer.by_label("answer").got
    accepted = bool(got and got["flags"] == "SA")
    after = sockdiag.nstat(netns=ns.name)
    tw_after = time_wait_of(sockdiag.sockets(netns=ns.name, ports=[PORT]), sport)
    obs.update({
        "old_rcv_nxt": old_rcv_nxt, "old_snd_nxt": old_snd_nxt, "old_tsval": old_tsval,
        "new_syn": answer.by_label(f"{case.id}:new-syn").got,
        "answer": got, "accepted": accepted, "expected_accept": case.accept, "as_expected": accepted == case.accept,
        "time_wait_before": tw_before, "time_wait_after_answer": tw_after,
        "counters": counter_deltas(before, after, ("PAWSTimewait", "TWRecycled", "TCPTimeWaitOverflow")),
    })
    if accepted and got:
        obs["new_isn_minus_old_snd_nxt"] = signed(got["seq"] - old_snd_nxt)
        # finish the handshake and reset the new connection, so nothing retransmits into later cases
        conn.run([{"label": "ack", "send": {"flags": "A", "ts": TS_NEXT if case.ts else None}},
                  {"label": "rst", "send": {"flags": "R", "ack": 0}}])
    elif got:
        obs["answer_acks_old_rcv_nxt"] = got["ack"] == old_rcv_nxt
        obs["answer_seq_is_old_snd_nxt"] = got["seq"] == old_snd_nxt
    server.release("end")
    server.finish()
    return obs


def _story(case: Case, o: dict[str, Any], paws_counter: bool = True) -> tuple[str, str]:
    did = f"{case.id}: server closed first (TIME_WAIT); peer sent a new SYN from the same port, {case.text()}"
    if not o.get("first_incarnation_ok", False):
        return did, "first incarnation failed: " + "; ".join(o.get("first_incarnation_failures", []))
    a = o.get("answer")
    if a is None:
        return did, "no answer"
    if o["accepted"]:
        ans = (f"SYN-ACK: accepted from TIME_WAIT; new ISN = old snd_nxt + {o.get('new_isn_minus_old_snd_nxt')}")
    else:
        ans = (f"[{a['flags']}] seq {a['seq']} ack {a['ack']}: the old connection's ACK, SYN refused"
               + (f"; PAWSTimewait +{o['counters'].get('PAWSTimewait', 0)}" if case.ts and paws_counter else ""))
    return did, ans + ("" if o["as_expected"] else " — NOT what RFC 6191 predicts")


def run(ctx: RunContext) -> Outcome:
    from lab.kernel import sockdiag
    from lab.kernel.inject import capture_check, check_outcome
    from lab.kernel.recording import Recording

    ns, peer = open_in_namespace(ctx, "k")
    results: list[dict[str, Any]] = []
    with Recording(ctx, ports=[PORT], iface=peer.name, netns=ns.name) as rec:
        for i, case in enumerate(CASES):
            ctx.say(f"case {case.id}", i / len(CASES))
            results.append(_case(ctx, ns, peer, case, 41000 + i))
    paws_counter = PAWS_TW_COUNTER in sockdiag.nstat(netns=ns.name)
    capture, analysis, check = capture_check(
        ctx, rec, {"reuse-in-time-wait": {"new-syn"}, "delayed-duplicate": (), "time-wait-assassinated": ()},
        notes={"new-syn": "peer's new SYN into the server's TIME_WAIT (lab.kernel.peer)"})
    story = [_story(c, o, paws_counter) for c, o in zip(CASES, results, strict=True)]
    gaps = [o.get("new_isn_minus_old_snd_nxt") for o in results if o.get("accepted")]
    paws = next((o["counters"].get("PAWSTimewait", 0) for o in results if o["case"] == "ts-isn-above-ts-older"
                 and "counters" in o), 0)
    all_expected = all(o.get("as_expected", False) for o in results)
    rule = isn_rule(gaps)
    refused_ok = all(o.get("answer_acks_old_rcv_nxt", True) for o in results)
    notes = [isn_note(rule, gaps)]
    extra_notes, skipped, check_obs = check_outcome(check, "reuse-in-time-wait", "peer")
    notes += extra_notes
    if not paws_counter:
        skipped.append(f"PAWSTimewait counter: absent on this kernel ({PAWS_TW_COUNTER} exists since 2025); the "
                       "older-timestamp SYN's rejection is judged by the kernel's answer alone")
    observations = {
        "cases": results,
        "accepted": {o["case"]: o.get("accepted") for o in results},
        "new_isn_minus_old_snd_nxt": gaps,
        "isn_rule": rule,
        "pawstimewait_counter": paws_counter,
        "pawstimewait_delta_for_older_ts": paws if paws_counter else None,
        **check_obs,
    }
    # the claim is the accept/refuse rule; the ISN of the reopened connection is a per-kernel observation
    reproduced = (all_expected and rule != "not-measured" and refused_ok and (paws >= 1 or not paws_counter)
                  and check.get("ok") is not False)
    # a case without its first incarnation (no TIME_WAIT to send the SYN into): an environment verdict
    not_set_up = [f"case {o['case']}: first incarnation failed: " + "; ".join(o.get("first_incarnation_failures", []))
                  for o in results if not o.get("first_incarnation_ok", False)]
    return Outcome(reproduced=reproduced, observations=observations, story=story, notes=notes, skipped=skipped,
                   capture=capture, analysis=analysis, could_not_run=" | ".join(not_set_up) or None)


EXPERIMENT = Experiment(
    id="syn-in-time-wait",
    claim="a SYN for a five-tuple in TIME_WAIT is accepted only if its ISN (or timestamp) is newer",
    lore="RFC 1122 4.2.2.13 / RFC 6191: TIME_WAIT may accept a new SYN if its sequence number is above the old "
         "connection's (or, with timestamps, its timestamp is newer); otherwise the old connection's ACK answers it",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=4.0,
    tags=("time-wait", "reuse", "peer"),
)
