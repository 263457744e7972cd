"""bind-matrix: the kernel's bind/listen conflict table, measured pair by pair.

For each case a first socket is put on a fresh port in a state (bound, listening, connected with
its listener closed, TIME_WAIT after the server closed first), then a second socket binds (and, for
TCP, listens) on the same port. The answers are compared with the Linux rules read from the kernel
source (lab.core.bindrules.expected_linux) and with the BSD description (expected_bsd). Runs
unprivileged, on any OS with Python.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lab.core.bindrules import (
    ADDR_LABEL,
    BindCase,
    Verdict,
    all_cases,
    describe,
    expected_bsd,
    expected_linux,
)
from lab.kernel.sockopts import IS_LINUX, Calls, SetupFailed, detect_caps, measure_case
from lab.run.context import Experiment, Outcome, RunContext


def expected_here(case: BindCase) -> Verdict:
    """The documented rules for this OS family: Linux's on Linux, the BSD description elsewhere."""
    return expected_linux(case) if IS_LINUX else expected_bsd(case)


def run(ctx: RunContext) -> Outcome:
    caps = detect_caps()
    calls = Calls(ctx.events)
    cases = all_cases()
    if isinstance(ctx.options.get("cases"), list):           # tests may ask for a subset
        wanted = set(ctx.options["cases"])
        cases = [c for c in cases if c.id in wanted]
    rows: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        if i % 40 == 0:
            ctx.say(f"case {i + 1}/{len(cases)}: {describe(case)}", i / max(len(cases), 1))
        lin, bsd = expected_linux(case), expected_bsd(case)
        row: dict[str, Any] = {
            "case": case.id, "proto": case.proto, "first_state": case.first_state,
            "first_addr": case.first_addr, "first_opt": case.first_opt,
            "second_addr": case.second_addr, "second_opt": case.second_opt,
            "expected_linux": lin.text(), "linux_rule": lin.rule,
            "expected_bsd": bsd.text(), "bsd_rule": bsd.rule,
        }
        why = caps.untestable(case)
        if why:
            row.update(measured=None, untestable=why)
            rows.append(row)
            continue
        try:
            m, tries = measure_case(calls, case, caps.ipv6, expect=expected_here)
        except SetupFailed as exc:
            row.update(measured=None, untestable="the first socket could not be set up", detail=str(exc))
            rows.append(row)
            continue
        v = m.verdict()
        row.update(measured=v.text(), second=v.second, first_listen=v.first_listen, port=m.port,
                   first_state_seen=m.first_state_seen, tries=tries,
                   matches_linux=v.same_result(lin), matches_bsd=v.same_result(bsd))
        rows.append(row)

    measured = [r for r in rows if r["measured"] is not None]
    key = "matches_linux" if IS_LINUX else "matches_bsd"
    mismatches = [r for r in measured if not r[key]]
    unstable = [r for r in measured if len(set(r["tries"])) > 1]
    state_problems = [r for r in measured if r["first_state"] == "time_wait" and r["first_state_seen"] is not None
                      and "TIME_WAIT" not in r["first_state_seen"]]

    story: list[tuple[str, str]] = [(
        f"{len(cases)} socket pairs: TCP and UDP; 0.0.0.0, 127.0.0.1, 127.0.0.2, [::] with and without V6ONLY; "
        "no option / SO_REUSEADDR / SO_REUSEPORT on each; first socket bound, listening, connected or in "
        "TIME_WAIT; each on its own fresh port",
        f"measured {len(measured)}, not testable here {len(rows) - len(measured)}; "
        f"{sum(r['matches_linux'] for r in measured)} match the Linux rules, "
        f"{sum(r['matches_bsd'] for r in measured)} the BSD description"),
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in measured:
        groups[(r["proto"], r["first_state"])].append(r)
    for (proto, state), rs in groups.items():
        outcomes = Counter(r["measured"] for r in rs)
        story.append((f"{proto.upper()}, first socket {state}: {len(rs)} pairs",
                      "; ".join(f"{n}x {o}" for o, n in outcomes.most_common()) +
                      f" — {sum(r['matches_linux'] for r in rs)}/{len(rs)} as Linux documents"))
    # a few rows people ask about
    for cid in ("tcp/listening/any4+reuseaddr/lo1+reuseaddr", "tcp/bound/lo1+reuseaddr/lo1+reuseaddr",
                "tcp/time_wait/lo1+none/lo1+reuseaddr", "tcp/time_wait/lo1+reuseaddr/lo1+reuseaddr",
                "udp/bound/lo1+reuseaddr/lo1+reuseaddr", "tcp/listening/lo1+reuseport/lo1+reuseport",
                "tcp/listening/any6+none/any4+none", "tcp/listening/any6only+none/any4+none"):
        by_id = {x["case"]: x for x in measured}
        if cid in by_id:
            r = by_id[cid]
            story.append((describe(_case_of(r)), f"{r['measured']} (BSD description: {r['expected_bsd']})"))
    for r in mismatches[:10]:
        story.append((f"MISMATCH {describe(_case_of(r))}",
                      f"{r['measured']}; expected {r['expected_linux'] if IS_LINUX else r['expected_bsd']}"))

    notes = _differences_from_bsd(measured)
    if unstable:
        notes.append(f"{len(unstable)} case(s) gave different answers on a retry with a fresh port "
                     f"(another program on the port?): {', '.join(r['case'] for r in unstable[:5])}")
    if state_problems:
        notes.append(f"{len(state_problems)} TIME_WAIT case(s) did not show TIME_WAIT in /proc/net/tcp in time")
    why_counts = Counter(r["untestable"] for r in rows if r.get("untestable"))
    skipped = [f"{why}: {n} case(s)" for why, n in why_counts.items()]
    obs: dict[str, Any] = {
        "platform": sys.platform,
        "compared_with": "linux" if IS_LINUX else "bsd",
        "cases": len(rows),
        "measured": len(measured),
        "untestable": len(rows) - len(measured),
        "matches_linux": sum(r["matches_linux"] for r in measured),
        "matches_bsd": sum(r["matches_bsd"] for r in measured),
        "mismatches": [r["case"] for r in mismatches],
        "unstable": [r["case"] for r in unstable],
        "ipv6": caps.ipv6, "lo2": caps.lo2, "so_reuseport": caps.reuseport,
        "differences_from_bsd": sum(not r["matches_bsd"] for r in measured),
        # the lore (the BSD description) holds only if every measured pair answered as BSD says
        "lore_holds": bool(measured) and all(r["matches_bsd"] for r in measured),
        # one compact row per case (the `--json` line must stay small enough for a pipe); every detail
        # (rules, ports, states seen, retries) is in matrix.json in the run folder
        "matrix_columns": ["case", "measured", "matches_linux", "expected_bsd"],
        "matrix": [[r["case"], _code(r), r.get("matches_linux"), _code(r, "bsd")] for r in rows],
        "matrix_file": str(_write_json(ctx.out_dir / "matrix.json", rows)),
    }
    reproduced = bool(measured) and not mismatches
    return Outcome(reproduced=reproduced, observations=obs, story=story, notes=notes, skipped=skipped)


def _code(r: dict[str, Any], which: str = "measured") -> str | None:
    """'ok', 'bind:EADDRINUSE', or with the first socket's later listen(): 'ok|listen:EADDRINUSE'."""
    if which == "bsd":
        v = expected_bsd(_case_of(r))
        second, first = v.second, v.first_listen
    elif r["measured"] is None:
        return None
    else:
        second, first = r["second"], r["first_listen"]
    return second + (f"|{first}" if first is not None else "")


def _write_json(path: Path, data: Any) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_matrix(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The full rows of a bind-matrix result (from matrix.json in its run folder)."""
    return list(json.loads(Path(result["observations"]["matrix_file"]).read_text()))


def _case_of(r: dict[str, Any]) -> BindCase:
    return BindCase(r["proto"], r["first_addr"], r["second_addr"], r["first_opt"], r["second_opt"],
                    r["first_state"])


def _differences_from_bsd(measured: list[dict[str, Any]]) -> list[str]:
    """Group the cases where the kernel's answer differs from the BSD description by the rule each side applies."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in measured:
        if not r["matches_bsd"]:
            groups[(r["linux_rule"] if r["matches_linux"] else "measured: " + r["measured"], r["bsd_rule"])].append(r)
    notes = []
    for (lrule, brule), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ex = rs[0]
        notes.append(f"differs from BSD in {len(rs)} case(s): here '{lrule}', BSD '{brule}' — e.g. "
                     f"{describe(_case_of(ex))}: {ex['measured']} (BSD: {ex['expected_bsd']})")
    return notes


def matrix_table(result: dict[str, Any], only_differences: bool = False) -> Any:
    """A rich table of the measured matrix (for `twlab bind-matrix`)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"bind matrix on {result.get('kernel')}", show_lines=False)
    for col in ("proto", "first socket", "state", "second socket", "measured", "Linux rule", "BSD"):
        t.add_column(col)
    for r in load_matrix(result):
        if only_differences and r.get("matches_bsd", True):
            continue
        if r["measured"] is None:
            meas = Text(f"n/a ({r['untestable']})", style="dim")
        else:
            meas = Text(r["measured"], style="green" if r["measured"].startswith("ok") else "red")
        bsd = Text(r["expected_bsd"], style="dim" if r.get("matches_bsd", True) else "magenta")
        t.add_row(r["proto"], f"{ADDR_LABEL[r['first_addr']]} {r['first_opt']}", r["first_state"],
                  f"{ADDR_LABEL[r['second_addr']]} {r['second_opt']}", meas, r["linux_rule"], bsd)
    return t


EXPERIMENT = Experiment(
    id="bind-matrix",
    claim="The kernel's bind/listen conflict rules for two sockets on one port (TCP/UDP, wildcard/specific/IPv6, "
          "SO_REUSEADDR/SO_REUSEPORT, first socket bound/listening/connected/TIME_WAIT) are the documented ones.",
    lore="BSD/Stevens: SO_REUSEADDR on the new socket lets it share a port with connections and with a "
         "wildcard/specific binding; SO_REUSEPORT on every socket allows exact duplicates.",
    run=run,
    topology="none",
    needs_root=False,
    duration_hint_s=4.0,
    tags=("sockopt",),
)
