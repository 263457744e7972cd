"""The ledger of the lore's claims: each claim, the experiment that tests it, the verdict on this
kernel (holds / differs / not testable here / not run) and the measured evidence."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Results = dict[str, dict[str, Any]]
Verdict = tuple[str, str]  # (verdict, evidence)

HOLDS, DIFFERS, NOT_TESTABLE, NOT_RUN = "holds", "differs", "not testable here", "not run"


@dataclass(frozen=True)
class Claim:
    id: str
    lore: str
    source: str
    experiments: tuple[str, ...]
    judge: Callable[[Results], Verdict]


def _obs(results: Results, exp: str) -> dict[str, Any]:
    return dict(results.get(exp, {}).get("observations") or {})


def _unavailable(results: Results, exps: tuple[str, ...]) -> Verdict | None:
    """Why the claim cannot be judged from these results, if it cannot."""
    missing = [e for e in exps if e not in results]
    if missing:
        return NOT_RUN, f"run: twlab run {' '.join(missing)}"
    for e in exps:
        r = results[e]
        if r.get("error") or r.get("exit_code") == 3:
            return NOT_TESTABLE, f"{e}: {r.get('error') or 'environment problem'}"
    return None


def _by_lore_holds(exp: str, if_missing: str = "") -> Callable[[Results], Verdict]:
    """Experiments that state the lore's fate themselves set observations['lore_holds']."""

    def judge(results: Results) -> Verdict:
        r = results[exp]
        obs = _obs(results, exp)
        evidence = _evidence(r)
        if "lore_holds" in obs:
            return (HOLDS if obs["lore_holds"] else DIFFERS), evidence
        if not r.get("reproduced"):
            return DIFFERS, evidence or "the documented behaviour was not observed"
        return HOLDS, evidence or if_missing

    return judge


def _evidence(result: dict[str, Any]) -> str:
    """A short summary: the experiment's first notes, else its scalar observations."""
    notes = result.get("notes") or []
    obs = result.get("observations") or {}
    scalars = {k: v for k, v in obs.items() if isinstance(v, (int, float, str, bool)) or v is None}
    parts = [f"{k}={v}" for k, v in list(scalars.items())[:6]]
    text = "; ".join(parts)
    if notes:
        text = (notes[0] + (" | " + text if text else ""))
    return text[:400]


def _time_wait_seconds(results: Results) -> float | None:
    obs = _obs(results, "time-wait-duration")
    for key in ("time_wait_s", "measured_s", "duration_s", "time_wait_measured_s"):
        val = obs.get(key)
        if isinstance(val, (int, float)):
            return float(val)
    return None


def _judge_2msl_range(results: Results) -> Verdict:
    tw = _time_wait_seconds(results)
    if tw is None:
        return _by_lore_holds("time-wait-duration")(results)
    verdict = HOLDS if 60 <= tw <= 240 else DIFFERS
    return verdict, f"TIME_WAIT measured {tw:.1f} s on this kernel (lore: 1-4 min)"


def _judge_linux_60(results: Results) -> Verdict:
    tw = _time_wait_seconds(results)
    if tw is None:
        return _by_lore_holds("time-wait-duration")(results)
    obs = _obs(results, "time-wait-duration")
    fin = obs.get("time_wait_with_fin_timeout_s") or obs.get("fin_timeout_time_wait_s")
    extra = f"; with tcp_fin_timeout lowered: {fin:.1f} s" if isinstance(fin, (int, float)) else ""
    verdict = HOLDS if 59 <= tw <= 63 else DIFFERS
    return verdict, f"measured {tw:.1f} s (TCP_TIMEWAIT_LEN 60 s; timer wheel granularity adds up to ~2 s){extra}"


def _judge_solaris(results: Results) -> Verdict:
    return NOT_TESTABLE, ("this lab runs on Linux; Solaris' tcp_time_wait_interval (240000 ms in old releases, "
                          "60000 ms since Solaris 7) is a profile: twlab analyze --profile solaris")


CLAIMS: tuple[Claim, ...] = (
    Claim("first-closer", "The side that calls close() first goes through TIME_WAIT.", "Stevens UNP 2.7; FAQ",
          ("who-gets-time-wait",), _by_lore_holds("who-gets-time-wait")),
    Claim("four-way", "A close is FIN M, ACK M+1, FIN N, ACK N+1.", "Stevens UNP fig. 2.3",
          ("four-way-close",), _by_lore_holds("four-way-close")),
    Claim("simultaneous", "In a simultaneous close both sides pass CLOSING and both enter TIME_WAIT.",
          "RFC 9293 3.6 case 3", ("simultaneous-close",), _by_lore_holds("simultaneous-close")),
    Claim("2msl-range", "TIME_WAIT lasts 2*MSL, between 1 and 4 minutes.", "FAQ; Stevens UNP 2.7",
          ("time-wait-duration",), _judge_2msl_range),
    Claim("linux-60", "Linux keeps TIME_WAIT 60 s, hard-coded (tcp_fin_timeout does not change it).",
          "FAQ; include/net/tcp.h TCP_TIMEWAIT_LEN", ("time-wait-duration",), _judge_linux_60),
    Claim("solaris-240", "Solaris' tcp_time_wait_interval is 240 s.", "FAQ", (), _judge_solaris),
    Claim("lost-final-ack", "TIME_WAIT lets a lost final ACK be re-sent when the peer retransmits its FIN.",
          "Stevens UNP 2.7 reason 1", ("lost-final-ack",), _by_lore_holds("lost-final-ack")),
    Claim("time-wait-zero", "Without TIME_WAIT the retransmitted FIN is answered with RST.",
          "FAQ: 'what if TIME_WAIT were 0'", ("time-wait-zero",), _by_lore_holds("time-wait-zero")),
    Claim("delayed-duplicates", "TIME_WAIT keeps delayed duplicates of an old connection out of a new "
          "incarnation of the same five-tuple.", "Stevens UNP 2.7 reason 2",
          ("delayed-duplicate",), _by_lore_holds("delayed-duplicate")),
    Claim("syn-in-time-wait", "A SYN for a five-tuple in TIME_WAIT is accepted only when its ISN or "
          "timestamp is newer.", "RFC 6191; Stevens TCPv2 18.6", ("syn-in-time-wait",),
          _by_lore_holds("syn-in-time-wait")),
    Claim("assassination", "An RST kills TIME_WAIT (TIME_WAIT assassination) unless RFC 1337 protection is on.",
          "RFC 1337", ("time-wait-assassination",), _by_lore_holds("time-wait-assassination")),
    Claim("abortive", "SO_LINGER {1,0} (or close with unread data) sends RST and skips TIME_WAIT.",
          "Stevens UNP 7.5", ("abortive-close",), _by_lore_holds("abortive-close")),
    Claim("restart", "A restarted server fails with EADDRINUSE while its old connections are in TIME_WAIT; "
          "setting SO_REUSEADDR (in the new server) fixes it.", "FAQ; Stevens UNP 7.5",
          ("restart-eaddrinuse",), _by_lore_holds("restart-eaddrinuse")),
    Claim("reuseaddr-uses", "SO_REUSEADDR has four uses (restart with live connections; several instances "
          "on different local IPs; one process, several IPs; fully duplicate binds for UDP multicast).",
          "Stevens UNP 7.5", ("reuseaddr-uses",), _by_lore_holds("reuseaddr-uses")),
    Claim("reuseport", "SO_REUSEPORT allows fully duplicate binds, if every socket sets it.",
          "Stevens UNP 7.5", ("reuseport",), _by_lore_holds("reuseport")),
    Claim("multicast", "For multicast, SO_REUSEADDR and SO_REUSEPORT are equivalent: every socket gets "
          "every datagram.", "Stevens UNP 7.5", ("multicast-reuse",), _by_lore_holds("multicast-reuse")),
    Claim("bind-matrix", "BSD bind semantics: SO_REUSEADDR allows a specific bind beside a wildcard bind "
          "on the same port.", "Stevens UNP 7.5", ("bind-matrix",), _by_lore_holds("bind-matrix")),
    Claim("last-plus-one", "Ephemeral ports are handed out as last + 1.", "FAQ",
          ("ephemeral-port-allocation",), _by_lore_holds("ephemeral-port-allocation")),
    Claim("exhaustion", "Client-side TIME_WAIT exhausts a narrow ephemeral range (EADDRNOTAVAIL); "
          "tcp_tw_reuse lets connect() reuse TIME_WAIT ports.", "FAQ; ip-sysctl.rst",
          ("ephemeral-exhaustion",), _by_lore_holds("ephemeral-exhaustion")),
)


@dataclass(frozen=True)
class Entry:
    claim: Claim
    verdict: str
    evidence: str


def judge_all(results: list[dict[str, Any]]) -> list[Entry]:
    by_id = {r["experiment"]: r for r in results}
    out = []
    for c in CLAIMS:
        unavailable = _unavailable(by_id, c.experiments) if c.experiments else None
        verdict, evidence = unavailable or c.judge(by_id)
        out.append(Entry(c, verdict, evidence))
    return out


def ledger_dicts(entries: list[Entry]) -> list[dict[str, Any]]:
    return [{"claim": e.claim.id, "lore": e.claim.lore, "source": e.claim.source,
             "experiments": list(e.claim.experiments), "verdict": e.verdict, "evidence": e.evidence}
            for e in entries]


def write_markdown(entries: list[Entry], path: Path, results: list[dict[str, Any]]) -> None:
    kernels = sorted({str(r.get("kernel")) for r in results if r.get("kernel")})
    lines = ["# twlab claims ledger", "", f"Kernel: {', '.join(kernels) or 'unknown'}", "",
             "| claim | source | experiment | verdict | evidence |", "|---|---|---|---|---|"]
    for e in entries:
        cell = e.evidence.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {e.claim.lore} | {e.claim.source} | {', '.join(e.claim.experiments) or '-'} "
                     f"| **{e.verdict}** | {cell} |")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    jtmp = path.with_name("claims.json.tmp")
    jtmp.write_text(json.dumps(ledger_dicts(entries), indent=2) + "\n", encoding="utf-8")
    jtmp.replace(path.with_name("claims.json"))


def load_results(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(run_dir.glob("*/result.json")):
        try:
            out.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def latest_run(runs: Path = Path("runs")) -> Path | None:
    dirs = [d for d in runs.glob("*") if d.is_dir() and any(d.glob("*/result.json"))]
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def ledger_table(entries: list[Entry]) -> Any:
    from rich.table import Table

    style = {HOLDS: "green", DIFFERS: "magenta", NOT_TESTABLE: "yellow", NOT_RUN: "dim"}
    t = Table(title="claims ledger: the lore on this kernel", show_lines=True, expand=True)
    t.add_column("claim", ratio=3)
    t.add_column("experiment", ratio=1)
    t.add_column("verdict", no_wrap=True)
    t.add_column("evidence", ratio=3)
    for e in entries:
        t.add_row(e.claim.lore, ", ".join(e.claim.experiments) or "-",
                  f"[{style.get(e.verdict, 'white')}]{e.verdict}[/]",
                  e.evidence if len(e.evidence) <= 240 else e.evidence[:239] + "…")  # full text in claims.md
    return t
