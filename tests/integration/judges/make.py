"""Re-make the judge fixtures: run each real-kernel scenario, write tests/data/judges/<id>.pcap[ng] + <id>.json.

    sudo .venv/bin/python -m tests.integration.judges.make            # all
    sudo .venv/bin/python -m tests.integration.judges.make 03 08      # ids starting with these
    .venv/bin/python -m tests.integration.judges.make --table         # kernel / twlab then / twlab now, markdown

The truth file records the kernel's account and the expectation derived from it; `twlab_at_make` is what the
analyzer said when the file was made (informational: the tests compare against `expect`, never against it).
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lab.run.context import Experiment, Outcome
from lab.run.runner import open_context

from .scenarios import SCENARIOS, Judged, derived_capture
from .verdict import analyze_file, differences, summary

DATA = Path(__file__).resolve().parents[2] / "data" / "judges"


def run_live(scenario_id: str, out_dir: Path) -> tuple[Judged, Path]:
    """Run one scenario in its own run context (all namespaces removed on return); the capture is written to
    out_dir."""
    exp = Experiment(id=f"judge-{scenario_id}", claim="-", lore="-", run=lambda c: Outcome(True, {}))
    with ExitStack() as stack:
        ctx = open_context(exp, out_dir, stack)
        judged = SCENARIOS[scenario_id](ctx)
    left = sorted(p.name for p in Path("/run/netns").glob(f"twl{ctx.run_id}*"))
    if left:
        raise AssertionError(f"{scenario_id} left namespaces behind: {left}")
    path = judged.write(out_dir / f"{scenario_id}{judged.suffix}")
    return judged, path


def store(judged: Judged, capture: Path) -> dict[str, Any]:
    DATA.mkdir(parents=True, exist_ok=True)
    target = DATA / capture.name
    target.write_bytes(capture.read_bytes())
    truth = judged.truth()
    with tempfile.TemporaryDirectory(prefix="twl-judge-") as tmp:
        report = analyze_file(derived_capture(truth, target, Path(tmp)))
    said = summary(report)
    said["connections_total"] = len(said["connections"])
    said["connections"] = said["connections"][:max(1, len(judged.expect.get("conns", ())))]   # filler aside
    truth |= {"capture": target.name, "twlab_at_make": said,
                              "twlab_differences_at_make": differences(report, judged.expect)}
    (DATA / f"{judged.id}.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def table() -> str:
    """Markdown: per stored fixture, what the kernel did, what twlab said when the fixture was made, and what
    it says now (the stored capture analyzed again; nothing is re-run or rewritten)."""
    rows = ["| fixture | kernel | twlab at make | twlab now |", "|---|---|---|---|"]
    for path in sorted(DATA.glob("*.json")):
        t = json.loads(path.read_text())
        did = "; ".join(f"{key}: {' -> '.join(v) if isinstance(v, list) else v}" for key, v in t["kernel"].items()
                        if v not in (None, []))
        then = "; ".join(t["twlab_differences_at_make"]) or "agrees"
        with tempfile.TemporaryDirectory(prefix="twl-judge-") as tmp:
            now = "; ".join(differences(analyze_file(derived_capture(t, DATA / t["capture"], Path(tmp))),
                                        t["expect"])) or "agrees"
        rows.append(f"| {t['id']} | {did} | {then} | {now} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv == ["--table"]:
        print(table())
        return 0
    wanted = [k for k in SCENARIOS if not argv or any(k.startswith(a) for a in argv)]
    if not wanted:
        print(f"no scenario matches {' '.join(argv)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    for sid in wanted:
        with tempfile.TemporaryDirectory(prefix="twl-judge-") as tmp:
            judged, path = run_live(sid, Path(tmp))
            truth = store(judged, path)
        diffs = truth["twlab_differences_at_make"]
        print(f"{sid}: kernel {truth['kernel']}; twlab {'agrees' if not diffs else 'differs: ' + '; '.join(diffs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
