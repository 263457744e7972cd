"""restart-eaddrinuse against the real kernel: errnos, TIME_WAIT from sock_diag, the close segments in
the capture, comments readable by tshark; and the same socket cases as an unprivileged user."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.experiments.restart_eaddrinuse import EXPERIMENT
from lab.run.runner import run_one

sys.path.insert(0, str(Path(__file__).parent))
import _nobody

EXPECTED = {  # documented Linux behaviour (docs/kernel-facts.md §6): errno of the restart, side holding TIME_WAIT
    "A": ("EADDRINUSE", "server"),
    "B": (None, "server"),
    "C": ("EADDRINUSE", "server"),
    "D": (None, "client"),
}


def _check_socket_cases(cases: dict[str, Any]) -> None:
    assert set(cases) == set(EXPECTED)
    for key, (errno_name, side) in EXPECTED.items():
        c = cases[key]
        assert c["errno"] == errno_name, (key, c)
        assert c["failed_call"] == ("bind" if errno_name else None), (key, c)
        assert c["time_wait_side"] == side, (key, c)
        assert c["time_wait_sockets"] >= 1, (key, c)
        # measured right after the close: close to the kernel's 60 s TCP_TIMEWAIT_LEN, never above it
        assert 50.0 < c["time_wait_remaining_s"] <= 60.0, (key, c)
        assert c["as_documented"] is True, (key, c)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_one(EXPERIMENT, tmp_path_factory.mktemp("restart"))


@pytest.mark.root
def test_the_four_cases_as_documented_for_linux(result: dict[str, Any]) -> None:
    assert result["error"] is None
    assert result["reproduced"] is True
    obs = result["observations"]
    _check_socket_cases(obs["cases"])
    assert obs["errno_no_reuseaddr"] == "EADDRINUSE" and obs["errno_reuseaddr_new_only"] == "EADDRINUSE"
    assert obs["lore_holds"] is False   # the folk answer (new server only) does not hold on Linux
    assert any("both" in n or "old server must have set it" in n for n in result["notes"])
    assert result["skipped"] == []
    assert obs["capture"]["captured"] is True and obs["capture"]["kernel_drops"] == 0


def _tshark(path: str, *args: str) -> list[list[str]]:
    res = subprocess.run(["tshark", "-r", path, *args], capture_output=True, text=True, check=True)
    return [ln.split("\t") for ln in res.stdout.splitlines() if ln]


@pytest.mark.root
def test_close_segments_are_in_the_capture(result: dict[str, Any]) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed (apt-get install -y tshark)")
    cap = result["capture"]
    assert cap and Path(cap).is_file()
    rows = _tshark(cap, "-Y", "tcp.flags.fin == 1", "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport")
    for key, (_errno, side) in EXPECTED.items():
        port = result["observations"]["cases"][key]["port"]
        fins = [(int(s), int(d)) for s, d in rows if port in (int(s), int(d))]
        assert len(fins) == 2, (key, fins)                    # one FIN each way
        first_from_server = fins[0][0] == port
        assert first_from_server == (side == "server"), (key, fins)  # the first FIN is the TIME_WAIT side's


@pytest.mark.root
def test_comments_are_readable_by_tshark(result: dict[str, Any]) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed (apt-get install -y tshark)")
    rows = _tshark(result["capture"], "-Y", "frame.comment", "-T", "fields", "-e", "tcp.flags.fin",
                   "-e", "frame.comment", "-E", "aggregator=|")
    text = "\n".join(r[1] for r in rows)
    for key in EXPECTED:
        assert f"case {key} (" in text, key
    fin_notes = [r[1] for r in rows if r[0] in ("1", "True")]
    assert sum("active close" in n for n in fin_notes) == 4
    for side in ("server", "client"):   # the narrator's words on the final ACK of each side's active close
        assert re.search(rf"ACK N\+1 — {side}: \w+ -> TIME_WAIT", text), side


@pytest.mark.root
def test_analyzer_time_wait_side_agrees_with_sock_diag(result: dict[str, Any]) -> None:
    pytest.importorskip("lab.core.tracker", reason="the analyzer (lab.core.tracker) has not landed")
    for key, c in result["observations"]["cases"].items():
        assert c.get("analyzer_time_wait_side") == c["time_wait_side"], (key, c)
        assert c["analyzer_agrees_with_sock_diag"] is True


@pytest.mark.root
def test_unprivileged_run_measures_the_socket_cases_and_skips_capture() -> None:
    with _nobody.workdir() as d:
        res = _nobody.run(["-m", "lab", "run", "restart-eaddrinuse", "--json", "--out", str(d / "runs")], cwd=d)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert not (d / "runs" / "restart-eaddrinuse" / "capture.pcapng").exists()
    assert out["root"] is False
    assert out["reproduced"] is True
    _check_socket_cases(out["observations"]["cases"])
    assert out["capture"] is None
    assert out["observations"]["capture"]["captured"] is False
    assert len(out["skipped"]) == 1 and out["skipped"][0].startswith("not root: capture skipped")
    assert "CAP_NET_RAW" in out["skipped"][0]
