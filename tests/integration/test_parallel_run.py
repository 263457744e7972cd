"""Several experiments at once: each in its own process, results as JSON lines, a claims ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_two_experiments_in_parallel(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lab", "run", "bind-matrix", "restart-eaddrinuse", "--json",
                          "-j", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert sorted(r["experiment"] for r in lines) == ["bind-matrix", "restart-eaddrinuse"]
    assert out.returncode == (0 if all(r["reproduced"] for r in lines) else 1)
    assert all(r["reproduced"] for r in lines), [r.get("error") for r in lines]
    assert (tmp_path / "claims.md").is_file() and (tmp_path / "claims.json").is_file()
    for r in lines:
        assert (tmp_path / r["experiment"] / "result.json").is_file()


def test_people_output_into_a_log_file_keeps_tables_on_their_own_lines(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    with log.open("w") as fh:
        res = subprocess.run([sys.executable, "-m", "lab", "run", "reuseport", "ephemeral-port-allocation", "-j", "2",
                              "--out", str(tmp_path / "r")], stdout=fh, stderr=subprocess.STDOUT, text=True,
                             timeout=300)
    text = log.read_text()
    assert res.returncode in (0, 1), text
    titles = ("twlab results", "claims ledger")
    for line in text.splitlines():  # the live table's last frame ends its line before the next title
        assert not (any(t in line for t in titles) and any(c in line for c in "┘╯│")), line
    # the ledger shows the tested claims, and a count of the rest
    assert "twlab results" in text and "more claims not tested by this run" in text
