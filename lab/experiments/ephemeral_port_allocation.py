"""ephemeral-port-allocation: which local ports the kernel hands out, set against the lore's "last + 1".

Successive connect() calls to one destination, to two alternating destinations, and successive
bind(port 0) calls; all sockets are kept open until the end (a connect port is unique per
destination, so one port may serve two destinations at once) and closed with RST, so no TIME_WAIT
is left. As root this runs in a lab namespace with a narrowed
ip_local_port_range (a per-namespace sysctl); otherwise on the host's lo, reading the host's
settings only.
"""

from __future__ import annotations

import functools
import itertools
import socket
from collections import Counter
from typing import Any

from lab.kernel.sockopts import IS_LINUX, LINGER_RST, Calls, in_netns, make_netns, netns_read
from lab.run.context import Experiment, Outcome, RunContext

N = 30
NETNS_RANGE = (40000, 40999)
HOST = "127.0.0.1"


def _steps(seq: list[int], lo: int, hi: int) -> list[int]:
    """Differences between successive ports, wrapped into the range (hi inclusive)."""
    span = hi - lo + 1
    out = []
    for a, b in itertools.pairwise(seq):
        d = (b - a) % span
        out.append(d if d <= span // 2 else d - span)
    return out


def _frac(xs: list[bool]) -> float:
    return round(sum(xs) / len(xs), 3) if xs else 0.0


def _measure(calls: Calls, ns: str | None) -> dict[str, Any]:
    keep: list[socket.socket] = []
    try:
        with in_netns(ns):
            listeners = []
            for _ in range(2):
                ls = socket.socket()
                keep.append(ls)
                ls.bind((HOST, 0))
                ls.listen(4 * N)
                listeners.append(ls.getsockname()[1])

            def connect(dport: int, part: str) -> int | None:
                s = socket.socket()
                keep.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                _, err = calls.do("connect", functools.partial(s.connect, (HOST, dport)), part=part,
                                  addr=[HOST, dport])
                if err:
                    return None
                port = int(s.getsockname()[1])
                calls.events.log("call", op="getsockname", ok=True, part=part, result=port)
                return port

            same = [p for p in (connect(listeners[0], "same-destination") for _ in range(N)) if p is not None]
            alt_pairs = [(i % 2, connect(listeners[i % 2], "alternating")) for i in range(N)]
            alternating = [p for _, p in alt_pairs if p is not None]
            per_dest = {str(listeners[d]): [p for dd, p in alt_pairs if dd == d and p is not None] for d in (0, 1)}
            binds = []
            for _ in range(N):
                s = socket.socket()
                keep.append(s)
                _, err = calls.do("bind", functools.partial(s.bind, (HOST, 0)), part="bind0", addr=[HOST, 0])
                if err is None:
                    p = int(s.getsockname()[1])
                    calls.events.log("call", op="getsockname", ok=True, part="bind0", result=p)
                    binds.append(p)
    finally:
        for s in keep:
            s.close()
    return {"destinations": listeners, "connect_same_destination": same, "connect_alternating": alternating,
            "alternating_per_destination": per_dest, "bind_port0": binds}


def run(ctx: RunContext) -> Outcome:
    calls = Calls(ctx.events)
    ns: str | None = None
    skipped: list[str] = []
    if ctx.root and IS_LINUX:
        ns = make_netns(ctx, "e", sysctls={"net.ipv4.ip_local_port_range": f"{NETNS_RANGE[0]} {NETNS_RANGE[1]}"})
        where = f"lab namespace {ns} with ip_local_port_range {NETNS_RANGE[0]}-{NETNS_RANGE[1]}"
    else:
        where = "the host's lo (settings read only)"
        if not ctx.root:
            skipped.append("narrowed port range: needs root for a lab namespace; measured on the host's range")
    rng_text = netns_read(ns, "net.ipv4.ip_local_port_range") if IS_LINUX else None
    reserved = netns_read(ns, "net.ipv4.ip_local_reserved_ports") if IS_LINUX else None
    lo, hi = (int(x) for x in rng_text.split()) if rng_text else (49152, 65535)
    ctx.say(f"connect() and bind(0) in {where}")
    m = _measure(calls, ns)

    same, alt, binds = m["connect_same_destination"], m["connect_alternating"], m["bind_port0"]
    steps_same = _steps(same, lo, hi)
    steps_alt = _steps(alt, lo, hi)
    steps_bind = _steps(binds, lo, hi)
    low_parity = lo % 2
    connects = same + alt
    obs: dict[str, Any] = {
        "where": where,
        "ip_local_port_range": [lo, hi] if rng_text else None,
        "ip_local_reserved_ports": reserved,
        **m,
        "steps_same_destination": steps_same,
        "steps_alternating": steps_alt,
        "steps_bind_port0": steps_bind,
        "plus_one_fraction_same_destination": _frac([d == 1 for d in steps_same]),
        "plus_one_fraction_alternating": _frac([d == 1 for d in steps_alt]),
        "plus_one_fraction_bind_port0": _frac([d == 1 for d in steps_bind]),
        "step_histogram_same_destination": dict(sorted(Counter(steps_same).items())),
        "connect_low_parity_fraction": _frac([p % 2 == low_parity for p in connects]),
        "bind_other_parity_fraction": _frac([p % 2 != low_parity for p in binds]),
        "connect_even_fraction": _frac([p % 2 == 0 for p in connects]),
        "bind_odd_fraction": _frac([p % 2 == 1 for p in binds]),
        "all_in_range": all(lo <= p <= hi for p in connects + binds),
        # one local port in use towards two destinations at once (unique per four-tuple, not per host)
        "ports_shared_between_destinations": sorted(set(same) & set(alt)
                                                    | set.intersection(*map(set, m["alternating_per_destination"]
                                                                            .values()))),
    }
    lore_holds = obs["plus_one_fraction_same_destination"] >= 0.9
    obs["lore_holds"] = lore_holds
    pos_small = [d for d in steps_same if 0 < d <= 16]
    obs["same_destination_small_even_increase_fraction"] = _frac([0 < d <= 16 and d % 2 == 0 for d in steps_same])

    story = [
        (f"{N} connect()s to {HOST}:{m['destinations'][0]} in {where}, all kept open",
         f"local ports {same[:12]}{' ...' if len(same) > 12 else ''}; steps {steps_same[:11]}"),
        (f"{N} connect()s alternating between ports {m['destinations'][0]} and {m['destinations'][1]}",
         f"local ports {alt[:12]}{' ...' if len(alt) > 12 else ''}; per destination: "
         + "; ".join(f"{d}: {v[:6]}" for d, v in m["alternating_per_destination"].items())),
        (f"{N} bind(port 0)s on {HOST}", f"ports {binds[:12]}{' ...' if len(binds) > 12 else ''}"),
        ("parity", f"connect: {obs['connect_even_fraction'] * 100:.0f}% even; bind(0): "
                   f"{obs['bind_odd_fraction'] * 100:.0f}% odd (range starts at {lo})"),
        ("the lore: each new port is the last one + 1",
         f"+1 in {obs['plus_one_fraction_same_destination'] * 100:.0f}% of steps to one destination, "
         f"{obs['plus_one_fraction_alternating'] * 100:.0f}% alternating, "
         f"{obs['plus_one_fraction_bind_port0'] * 100:.0f}% for bind(0): the lore "
         + ("holds" if lore_holds else "does not hold")),
    ]
    notes = []
    if IS_LINUX:
        notes.append(
            f"Verdict on the lore: 'last + 1' {'holds' if lore_holds else 'does NOT hold'} here. Linux "
            "(__inet_hash_connect, RFC 6056 double-hash style) starts at a per-destination hashed offset plus a "
            "perturbation that grows by 2 + a random 0..14 after each connect, trying ports of the range's low "
            f"parity first: to one destination the port rose by {sorted(set(pos_small))[:8]} "
            f"({obs['same_destination_small_even_increase_fraction'] * 100:.0f}% small even increases), while "
            "bind(0) (inet_csk_find_open_port) starts at a random offset and prefers the other parity.")
    if obs["ports_shared_between_destinations"]:
        notes.append(f"ports {obs['ports_shared_between_destinations'][:4]} were in use towards two destinations "
                     "at once: a connect() port only has to be unique per four-tuple")
    reproduced = (not lore_holds and obs["all_in_range"] and len(same) == N and len(binds) == N
                  and (not IS_LINUX or (obs["connect_low_parity_fraction"] >= 0.9
                                        and obs["bind_other_parity_fraction"] >= 0.9)))
    return Outcome(reproduced=reproduced, observations=obs, story=story, notes=notes, skipped=skipped)


EXPERIMENT = Experiment(
    id="ephemeral-port-allocation",
    claim="Linux does not hand out ephemeral ports as 'last + 1': connect() takes ports of the range's low "
          "parity from a per-destination hashed, randomly perturbed offset; bind(0) takes the other parity.",
    lore="The kernel hands out ephemeral ports sequentially: each new connection gets the last port + 1.",
    run=run,
    topology="loopback",
    needs_root=False,
    duration_hint_s=1.0,
    tags=("sockopt",),
)
