"""`twlab run` end to end, as a user types it: JSON contract, exit codes, run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def twlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_run_restart_eaddrinuse_json(tmp_path: Path) -> None:
    res = twlab("run", "restart-eaddrinuse", "--json", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["experiment"] == "restart-eaddrinuse"
    assert out["reproduced"] is True
    for key in ("claim", "observations", "capture", "kernel"):
        assert key in out
    assert out["kernel"] == os.uname().release
    cases = out["observations"]["cases"]
    assert sorted(cases) == ["A", "B", "C", "D"]
    assert [cases[k]["errno"] for k in "ABCD"] == ["EADDRINUSE", None, "EADDRINUSE", None]
    folder = tmp_path / "runs" / "restart-eaddrinuse"
    assert json.loads((folder / "result.json").read_text())["reproduced"] is True
    events = [json.loads(ln) for ln in (folder / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "call" and e.get("errno") == "EADDRINUSE" for e in events)
    if out["root"]:
        assert out["capture"] == str(folder / "capture.pcapng") and Path(out["capture"]).is_file()
    else:
        assert out["capture"] is None and out["skipped"]


def test_run_for_people_says_the_verdict(tmp_path: Path) -> None:
    res = twlab("run", "restart-eaddrinuse", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "EADDRINUSE" in res.stdout
    assert "restart-eaddrinuse" in res.stdout


def test_unknown_experiment_is_a_one_line_usage_error(tmp_path: Path) -> None:
    res = twlab("run", "no-such-experiment", "--json", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "unknown experiment 'no-such-experiment'" in lines[0] and "twlab list" in lines[0]
    assert not (tmp_path / "runs").exists()


# --- issue 15: one JSON line per experiment named, claims for every run, duplicates, needs root ----------------

def _lines(res: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(ln) for ln in res.stdout.splitlines()]


def test_a_single_experiment_run_writes_its_claims_and_is_remembered(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    env_state = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_STATE_HOME=str(env_state))
    res = subprocess.run([sys.executable, "-m", "lab", "run", "bind-matrix", "bind-matrix", "--json", "--out",
                          str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert [r["experiment"] for r in _lines(res)] == ["bind-matrix"]          # a repeated name runs once
    assert "bind-matrix given more than once" in res.stderr
    doc = json.loads((out / "claims.json").read_text())
    assert next(c for c in doc["claims"] if c["claim"] == "bind-matrix")["verdict"] in ("holds", "differs")
    assert (out / "claims.md").is_file()
    assert (env_state / "twlab" / "last-run").read_text().strip() == str(out.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    looked = subprocess.run([sys.executable, "-m", "lab", "claims", "--json"], capture_output=True, text=True,
                            cwd=elsewhere, env={k: v for k, v in env.items() if k != "TWLAB_RUNS"}, timeout=60)
    assert json.loads(looked.stdout)["run"] == str(out.resolve())


def test_json_without_root_is_one_line_per_experiment() -> None:
    import _nobody

    with _nobody.workdir() as wd:
        for names, jobs in ((["four-way-close"], "1"), (["four-way-close", "multicast-reuse"], "2")):
            res = _nobody.run(["-m", "lab", "run", *names, "--json", "-j", jobs, "--out", str(wd / "r")], cwd=wd)
            lines = _lines(res)
            assert [r["experiment"] for r in lines] == names or sorted(r["experiment"] for r in lines) == sorted(
                names), res.stdout + res.stderr
            assert res.returncode == 3
            for r in lines:
                assert "needs root" in r["error"] and not r["error"].startswith("twlab:")
                assert r["exit_code"] == 3 and r["reproduced"] is False
            doc = json.loads((wd / "r" / "claims.json").read_text())
            assert next(c for c in doc["claims"] if c["claim"] == "four-way")["verdict"] == "needs root"


def test_the_run_records_lab_subnets_that_the_host_does_not_use(tmp_path: Path) -> None:
    import ipaddress

    import pytest

    from lab.run import addrplan

    if os.geteuid() != 0:
        pytest.skip("namespaces need root")
    res = twlab("run", "four-way-close", "--json", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    pair4 = ipaddress.ip_network(out["lab_subnets"]["pair4"])
    assert not any(pair4.overlaps(h) for h in addrplan.host_networks() if h.version == 4)
    events = (tmp_path / "runs" / "four-way-close" / "events.jsonl").read_text()
    assert '"kind": "addr-plan"' in events
    capture = Path(out["capture"])
    from lab.pcap.readers import read_segments

    pair6 = ipaddress.ip_network(out["lab_subnets"]["pair6"])
    sources = {ipaddress.ip_address(s.src_ip) for s in read_segments(capture)}
    assert sources and all(a in pair4 or a in pair6 for a in sources), sources
