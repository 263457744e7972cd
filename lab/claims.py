"""The ledger of the lore's claims: each claim, the experiment that tests it, the verdict on this
kernel (holds / differs / needs root / not testable here / not run) and the measured evidence.

Judging reads typed observations (`Observed`: only keys the experiments write); the ledger is a list of typed
`Entry` records, rendered as a table, as claims.md and as JSON (claims.json and `twlab claims --json` have the
same shape: {"run", "kernels", "claims": [...], "not_run"}). Looking the ledger up never writes; `twlab run`
writes claims.md/claims.json into its run folder, `twlab claims --write` rewrites them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lab.errors import EnvironmentProblem, OutputError

Results = dict[str, dict[str, Any]]
VerdictKind = Literal["holds", "differs", "needs root", "not testable here", "not run"]
Verdict = tuple[VerdictKind, str]  # (verdict, evidence)

HOLDS: VerdictKind = "holds"
DIFFERS: VerdictKind = "differs"
NEEDS_ROOT: VerdictKind = "needs root"
NOT_TESTABLE: VerdictKind = "not testable here"
NOT_RUN: VerdictKind = "not run"
EVIDENCE_CHARS = 400        # evidence is cut at a word boundary below this, with "…"
TABLE_EVIDENCE_CHARS = 240  # the terminal table is shorter; claims.md has the full evidence


@dataclass(frozen=True)
class Claim:
    id: str
    lore: str
    source: str
    experiments: tuple[str, ...]
    judge: Callable[[Results], Verdict]


@dataclass(frozen=True)
class Observed:
    """What the claims read of one experiment's result, typed; keys nothing writes are not read."""

    reproduced: bool
    lore_holds: bool | None
    time_wait_s: float | None
    time_wait_with_fin_timeout_s: float | None
    fin_wait_2_s: float | None

    @classmethod
    def of(cls, result: dict[str, Any]) -> Observed:
        obs = result.get("observations") or {}

        def num(key: str) -> float | None:
            v = obs.get(key)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        lore = obs.get("lore_holds")
        return cls(reproduced=bool(result.get("reproduced")), lore_holds=lore if isinstance(lore, bool) else None,
                   time_wait_s=num("time_wait_s"), time_wait_with_fin_timeout_s=num("time_wait_with_fin_timeout_s"),
                   fin_wait_2_s=num("fin_wait_2_s"))


def _needs_root(result: dict[str, Any]) -> bool:
    return result.get("root") is not True and "needs root" in str(result.get("error") or "")


def _unavailable(results: Results, exps: tuple[str, ...]) -> Verdict | None:
    """Why the claim cannot be judged from these results, if it cannot."""
    missing = [e for e in exps if e not in results]
    if missing:
        return NOT_RUN, f"run: twlab run {' '.join(missing)}"
    for e in exps:
        r = results[e]
        if _needs_root(r):
            return NEEDS_ROOT, f"{e} needs root: sudo twlab run {e}"
        if r.get("error") or r.get("exit_code") == 3:
            return NOT_TESTABLE, f"{e}: {r.get('error') or 'environment problem'}"
    return None


def _by_lore_holds(exp: str, if_missing: str = "") -> Callable[[Results], Verdict]:
    """Experiments that state the lore's fate themselves set observations['lore_holds']."""

    def judge(results: Results) -> Verdict:
        r = results[exp]
        seen = Observed.of(r)
        evidence = _evidence(r)
        if seen.lore_holds is not None:
            return (HOLDS if seen.lore_holds else DIFFERS), evidence
        if not seen.reproduced:
            return DIFFERS, evidence or "the documented behaviour was not observed"
        return HOLDS, evidence or if_missing

    return judge


def shorten(text: str, limit: int = EVIDENCE_CHARS) -> str:
    """At most `limit` characters, cut after a whole word (never mid-word), with "…" when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ;,|") + "…"


def _scalar_text(value: Any) -> str | None:
    """A scalar observation for people: None (nothing measured) is left out, never shown as Python's None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    return None


def _evidence(result: dict[str, Any]) -> str:
    """A short summary: the experiment's first note, then its measured scalar observations."""
    notes = [n for n in (result.get("notes") or []) if isinstance(n, str) and n.strip()]
    obs = result.get("observations") or {}
    parts = []
    for k, v in obs.items():
        text = _scalar_text(v)
        if text is not None and k != "lore_holds":
            parts.append(f"{k}={text}")
        if len(parts) == 6:
            break
    text = "; ".join(parts)
    if notes:
        text = notes[0] + (" | " + text if text else "")
    return shorten(text)


def _judge_2msl_range(results: Results) -> Verdict:
    tw = Observed.of(results["time-wait-duration"]).time_wait_s
    if tw is None:
        return _by_lore_holds("time-wait-duration")(results)
    verdict = HOLDS if 60 <= tw <= 240 else DIFFERS
    return verdict, f"TIME_WAIT measured {tw:.1f} s on this kernel (lore: 1-4 min)"


def _judge_linux_60(results: Results) -> Verdict:
    seen = Observed.of(results["time-wait-duration"])
    tw = seen.time_wait_s
    if tw is None:
        return _by_lore_holds("time-wait-duration")(results)
    fin = seen.time_wait_with_fin_timeout_s
    extra = f"; with tcp_fin_timeout lowered: {fin:.1f} s" if fin is not None else ""
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
    # wave 2 (issue 17): the failure cases people bring, some with real server software (nginx, curl)
    Claim("close-wait", "CLOSE_WAIT piling up means the application never calls close(); the peer's orphaned "
          "FIN_WAIT_2 ends after tcp_fin_timeout.", "FAQ; ip-sysctl.rst tcp_fin_timeout",
          ("close-wait-pileup",), _by_lore_holds("close-wait-pileup")),
    Claim("bind-before-connect", "bind(0) before connect() exhausts ephemeral ports sooner (EADDRINUSE); "
          "IP_BIND_ADDRESS_NO_PORT restores sharing.", "ip(7) IP_BIND_ADDRESS_NO_PORT",
          ("bind-before-connect",), _by_lore_holds("bind-before-connect")),
    Claim("tw-bucket-overflow", "Above tcp_max_tw_buckets TIME_WAIT sockets are destroyed at once "
          "('time wait bucket table overflow').", "ip-sysctl.rst tcp_max_tw_buckets",
          ("time-wait-bucket-overflow",), _by_lore_holds("time-wait-bucket-overflow")),
    Claim("tw-recycle", "tcp_tw_recycle (old tuning guides: 'set it to 1 to get rid of TIME_WAIT') is gone since "
          "Linux 4.12: it broke clients behind NAT.", "Linux 4.12 release notes",
          ("tcp-tw-recycle",), _by_lore_holds("tcp-tw-recycle")),
    Claim("http-close-side", "An HTTP/1.0 server collects TIME_WAIT (it closes first); keep-alive lets the client "
          "close and hold it.", "RFC 9112 9.6; FAQ", ("http-close-side",), _by_lore_holds("http-close-side")),
    Claim("proxy-exhaustion", "nginx 'connect() failed (99: Cannot assign requested address) while connecting to "
          "upstream': TIME_WAIT exhausts the proxy's ports; upstream keepalive fixes it.", "nginx docs; FAQ",
          ("proxy-port-exhaustion",), _by_lore_holds("proxy-port-exhaustion")),
    Claim("challenge-ack", "A SYN meeting a connection the peer still holds gets a challenge ACK, an RST, and "
          "connects after the ~1 s SYN retransmission.", "RFC 5961 4",
          ("challenge-ack",), _by_lore_holds("challenge-ack")),
    Claim("conntrack-time-wait", "A NAT's conntrack keeps its own TIME_WAIT (120 s) beside the endpoints' 60 s, "
          "holding the outside port.", "nf_conntrack-sysctl.rst", ("conntrack-time-wait",),
          _by_lore_holds("conntrack-time-wait")),
)


@dataclass(frozen=True)
class Entry:
    """One row of the ledger. (A `kernel` dimension can be added here: per-kernel verdicts are rows too.)"""

    claim: Claim
    verdict: VerdictKind
    evidence: str

    @property
    def tested(self) -> bool:
        """An experiment of this run judged it (or tried to): not 'not run', and not a claim without one."""
        return self.verdict != NOT_RUN and bool(self.claim.experiments)

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim.id, "lore": self.claim.lore, "source": self.claim.source,
                "experiments": list(self.claim.experiments), "verdict": self.verdict, "evidence": self.evidence}


def judge_all(results: list[dict[str, Any]]) -> list[Entry]:
    by_id = {r["experiment"]: r for r in results}
    out = []
    for c in CLAIMS:
        unavailable = _unavailable(by_id, c.experiments) if c.experiments else None
        verdict, evidence = unavailable or c.judge(by_id)
        out.append(Entry(c, verdict, shorten(evidence)))
    return out


def ledger_dicts(entries: list[Entry]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in entries]


def kernels_of(results: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r.get("kernel")) for r in results if r.get("kernel")})


def ledger_document(entries: list[Entry], run_dir: Path | None, results: list[dict[str, Any]]) -> dict[str, Any]:
    """claims.json and `twlab claims --json`: one shape."""
    result = {"run": str(run_dir) if run_dir is not None else None, "kernels": kernels_of(results),
            "claims": ledger_dicts(entries), "not_run": sum(1 for e in entries if e.verdict == NOT_RUN)}
    if len(kernels_of(results)) > 1:  # one column per kernel (helper E2)
        result["by_kernel"] = [row.to_dict() for row in judge_kernels(results)]
    return result


def render_markdown(entries: list[Entry], results: list[dict[str, Any]]) -> str:
    lines = ["# twlab claims ledger", "", f"Kernel: {', '.join(kernels_of(results)) or 'unknown'}", "",
             "| claim | source | experiment | verdict | evidence |", "|---|---|---|---|---|"]
    for e in entries:
        cell = e.evidence.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {e.claim.lore} | {e.claim.source} | {', '.join(e.claim.experiments) or '-'} "
                     f"| **{e.verdict}** | {cell} |")
    result = "\n".join(lines) + "\n"
    if len(kernels_of(results)) > 1:  # one column per kernel (helper E2)
        result = (f"# twlab claims ledger\n\nKernels: {', '.join(kernels_of(results))}\n"
                  + render_kernel_markdown(judge_kernels(results)))
    return result


def write_ledger(entries: list[Entry], run_dir: Path, results: list[dict[str, Any]]) -> list[Path]:
    """claims.md and claims.json in `run_dir`, each atomically (temp files named twl*.tmp, never left behind);
    an unwritable folder is one line (OutputError)."""
    md = run_dir / "claims.md"
    js = run_dir / "claims.json"
    write_text_atomic(md, render_markdown(entries, results))
    write_text_atomic(js, json.dumps(ledger_document(entries, run_dir, results), indent=2) + "\n")
    return [md, js]


def write_markdown(entries: list[Entry], path: Path, results: list[dict[str, Any]]) -> None:
    """claims.md at `path` and claims.json beside it (kept for callers of the old name)."""
    write_ledger(entries, path.parent, results)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"twl-{os.getpid()}-{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise OutputError(f"cannot write {_printable(path)}: {exc.strerror or exc}",
                          "choose a folder you can write to") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _printable(path: Path) -> str:
    return str(path).encode("unicode_escape", "backslashreplace").decode("ascii")


def load_results(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted([*run_dir.glob("*/result.json"), *run_dir.glob(KERNEL_FOLDERS)]):
        try:
            res = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(res, dict) and "experiment" in res:
            out.append(res)
    return out


# --- finding the run to judge ---------------------------------------------------------------------------

RUNS_ENV = "TWLAB_RUNS"


def last_run_file() -> Path:
    """Where `twlab run` records its folder: $XDG_STATE_HOME/twlab/last-run (default ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "twlab" / "last-run"


def record_last_run(run_dir: Path) -> None:
    """Best effort: a lookup later (`twlab claims` from any directory) finds this run."""
    try:
        f = last_run_file()
        f.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(f, str(run_dir.resolve()) + "\n")
    except (OSError, EnvironmentProblem):
        pass


def _is_run(d: Path) -> bool:
    return d.is_dir() and (any(d.glob("*/result.json")) or any(d.glob(KERNEL_FOLDERS)))


def latest_run(runs: Path = Path("runs")) -> Path | None:
    try:
        dirs = [d for d in runs.glob("*") if _is_run(d)]
    except OSError:
        return None
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def find_run() -> tuple[Path | None, str]:
    """The run to judge when none is given, and where it was looked for: $TWLAB_RUNS (a run folder or a folder
    of runs), the last run recorded by `twlab run`, ./runs."""
    looked = []
    env = os.environ.get(RUNS_ENV)
    if env:
        p = Path(env)
        looked.append(f"${RUNS_ENV}={env}")
        return (p if _is_run(p) else latest_run(p)), ", ".join(looked)
    try:
        recorded = Path(last_run_file().read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        recorded = None
    looked.append(str(last_run_file()))
    if recorded is not None and _is_run(recorded):
        return recorded, ", ".join(looked)
    looked.append("./runs")
    return latest_run(), ", ".join(looked)


def ledger_table(entries: list[Entry], only_tested: bool = True) -> Any:
    """The ledger for people: the claims this run tested, and a count of the others (claims.md lists all)."""
    from rich.table import Table

    style = {HOLDS: "green", DIFFERS: "magenta", NEEDS_ROOT: "yellow", NOT_TESTABLE: "yellow", NOT_RUN: "dim"}
    shown = [e for e in entries if e.tested] if only_tested else entries
    not_run = sum(1 for e in entries if e not in shown and e.verdict == NOT_RUN)
    untestable = sum(1 for e in entries if e not in shown and e.verdict != NOT_RUN)
    parts = ([f"{not_run} more claims not tested by this run ('twlab run all' tests them)"] if not_run else []) + (
        [f"{untestable} no experiment can test here (in claims.md)"] if untestable else [])
    caption = "; ".join(parts) or None
    t = Table(title="claims ledger: the lore on this kernel", caption=caption, show_lines=True, expand=True)
    t.add_column("claim", ratio=3)
    t.add_column("experiment", ratio=1, overflow="fold")   # an id is folded at 80 columns, never cut to "…"
    t.add_column("verdict", no_wrap=True)
    t.add_column("evidence", ratio=3)
    for e in shown:
        t.add_row(e.claim.lore, ", ".join(e.claim.experiments) or "-",
                  f"[{style.get(e.verdict, 'white')}]{e.verdict}[/]", shorten(e.evidence, TABLE_EVIDENCE_CHARS))
    return t


# --- per kernel (helper E2): one column per kernel when a run covers several (`twlab run --kernel VER ...`
# writes RUN/kernel-VER/EXPERIMENT/result.json; a host run into the same folder adds this kernel's column)

KERNEL_FOLDERS = "kernel-*/*/result.json"
BEHAVIOUR_WORD = re.compile(r"[A-Za-z0-9_.+:=-]{1,40}")   # 'clock-based', 'old-snd-nxt+65537': not paths, not prose


def _behaviour_value(value: Any) -> bool:
    """Observations that name a behaviour (yes/no, one word); not the run's names (twl...), paths or sentences."""
    if isinstance(value, bool):
        return True
    return isinstance(value, str) and bool(BEHAVIOUR_WORD.fullmatch(value)) and not value.startswith("twl")


def _version_key(kernel: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", kernel.split("-", 1)[0])[:3])


def results_by_kernel(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The results grouped by the kernel they were measured on (`uname -r`), oldest kernel first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(str(r.get("kernel") or "unknown"), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: _version_key(kv[0])))


@dataclass(frozen=True)
class KernelRow:
    """One claim across kernels: its verdict and evidence on each, and the measured values that changed."""

    claim: Claim
    cells: dict[str, Entry]
    changes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim.id, "lore": self.claim.lore, "source": self.claim.source,
                "experiments": list(self.claim.experiments),
                "verdicts": {k: {"verdict": e.verdict, "evidence": e.evidence} for k, e in self.cells.items()},
                "changes": list(self.changes)}


def _runs_of_values(seq: list[tuple[str, Any]]) -> list[tuple[Any, list[str]]]:
    """Consecutive kernels with the same value: [(value, [kernels])...] in kernel order."""
    runs: list[tuple[Any, list[str]]] = []
    for kernel, value in seq:
        if runs and runs[-1][0] == value:
            runs[-1][1].append(kernel)
        else:
            runs.append((value, [kernel]))
    return runs


def measured_changes(claim: Claim, groups: dict[str, list[dict[str, Any]]]) -> tuple[str, ...]:
    """Text and yes/no observations of the claim's experiments that differ across kernels, each value with the
    kernels it was measured on: 'since when' as the measurements show it (e.g. isn_rule: clock-based on 5.10.46,
    6.1.176; old-snd-nxt+65537 since 6.12.113)."""
    out = []
    for exp in claim.experiments:
        seen = [(k, (r.get("observations") or {})) for k, rs in groups.items()
                for r in rs if r.get("experiment") == exp and r.get("status", "reproduced") != "could-not-run"]
        keys = sorted({key for _, o in seen for key, v in o.items() if key != "kernel" and _behaviour_value(v)})
        for key in keys:
            runs = _runs_of_values([(k, o[key]) for k, o in seen if key in o])
            if len({repr(v) for v, _ in runs}) < 2:
                continue
            parts = [f"{v} on {', '.join(ks)}" for v, ks in runs[:-1]]
            last_value, last_kernels = runs[-1]
            parts.append(f"{last_value} since {last_kernels[0]}")
            out.append(f"{exp} {key}: " + "; ".join(parts))
    return tuple(out)


def judge_kernels(results: list[dict[str, Any]]) -> list[KernelRow]:
    """Every claim judged on each kernel separately (judge_all per kernel), with what changed across them."""
    groups = results_by_kernel(results)
    per_kernel = {k: {e.claim.id: e for e in judge_all(rs)} for k, rs in groups.items()}
    return [KernelRow(c, {k: per_kernel[k][c.id] for k in groups}, measured_changes(c, groups)) for c in CLAIMS]


def render_kernel_markdown(rows: list[KernelRow]) -> str:
    kernels = list(rows[0].cells) if rows else []
    lines = ["", "## By kernel", "", "| claim | " + " | ".join(kernels) + " | measured changes |",
             "|---|" + "---|" * len(kernels) + "---|"]
    for row in rows:
        if not any(e.tested for e in row.cells.values()):
            continue
        changes = "; ".join(row.changes).replace("|", "\\|") or "-"
        lines.append(f"| {row.claim.lore} | " + " | ".join(f"**{e.verdict}**" for e in row.cells.values())
                     + f" | {changes} |")
    lines += ["", "Evidence per kernel:", ""]
    for row in rows:
        tested = {k: e for k, e in row.cells.items() if e.tested}
        if tested:
            lines.append(f"- {row.claim.id}: " + " ".join(f"**{k}**: {e.evidence.replace(chr(10), ' ')}"
                                                          for k, e in tested.items()))
    return "\n".join(lines) + "\n"


def kernel_table(rows: list[KernelRow]) -> Any:
    """The lore's claims, one column per kernel, for people."""
    from rich.table import Table

    style = {HOLDS: "green", DIFFERS: "magenta", NEEDS_ROOT: "yellow", NOT_TESTABLE: "yellow", NOT_RUN: "dim"}
    kernels = list(rows[0].cells) if rows else []
    t = Table(title="claims ledger by kernel", show_lines=True, expand=True)
    t.add_column("the lore's claim", ratio=3)
    for k in kernels:
        t.add_column(k, no_wrap=True)
    t.add_column("measured changes (since when)", ratio=3)
    for row in rows:
        if any(e.tested for e in row.cells.values()):
            t.add_row(row.claim.lore, *(f"[{style.get(e.verdict, 'white')}]{e.verdict}[/]" for e in row.cells.values()),
                      "; ".join(row.changes) or "-")
    return t
# --- end per kernel
