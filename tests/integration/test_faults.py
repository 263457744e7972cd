"""Fault paths as root: SIGINT, SIGTERM and SIGKILL at several points of a netns experiment and of a parallel
run; afterwards `twlab doctor` shows nothing of the run (its namespaces are named twl + run id). Signals are sent
when the run's event log shows the point reached (events, not sleeps). Also: temp files of writers killed with -9
are found and removed by `twlab doctor --cleanup`; SIGTERM during analyze leaves no spool file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXP = "four-way-close"          # a quick netns experiment (two namespaces, a veth, agents, a capture)
WAIT_S = 60.0

pytestmark = pytest.mark.root


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["TMPDIR"] = str(tmp_path)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


def start(tmp_path: Path, *args: str, group: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path), cwd=tmp_path, start_new_session=group)


def events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except ValueError:
            break  # a line being written
    return out


def wait_for(path: Path, want: Callable[[dict[str, Any]], bool], proc: subprocess.Popen[str]) -> list[dict]:
    """Poll the event log until an event matches (the process must still be running)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        evs = events(path)
        if any(want(e) for e in evs):
            return evs
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the point was reached: {proc.communicate()}")
        time.sleep(0.005)
    pytest.fail("the point was never reached")


def run_id_of(evs: list[dict[str, Any]]) -> str:
    return next(e["run_id"] for e in evs if e["kind"] == "run-start")


def netns_added(e: dict[str, Any]) -> bool:
    return e["kind"] == "netns" and e.get("action") == "add"


def nothing_left(tmp_path: Path, run_id: str) -> None:
    assert not list(Path("/run/netns").glob(f"twl{run_id}*")), "namespaces left behind"
    doc = subprocess.run([sys.executable, "-m", "lab", "doctor", "--json"], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=60)
    left = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "leftovers")
    assert run_id not in left["detail"], left


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_the_experiment_then_again_during_teardown(tmp_path: Path, sig: int, code: int) -> None:
    proc = start(tmp_path, "run", EXP, "--json", "--out", str(tmp_path / "r"))
    log = tmp_path / "r" / EXP / "events.jsonl"
    evs = wait_for(log, netns_added, proc)
    proc.send_signal(sig)
    wait_for(log, lambda e: e["kind"] == "run-teardown", proc)
    proc.send_signal(sig)                      # a second signal must not cut the teardown short
    rc, out, err = finish(proc)
    assert rc == code, err
    line = json.loads(out.strip())             # --json: one line even when interrupted
    assert line["experiment"] == EXP and not line["reproduced"] and "interrupted" in line["error"]
    kinds = [e["kind"] for e in events(log)]
    assert "run-interrupted" in kinds and kinds.count("run-teardown") == 1
    nothing_left(tmp_path, run_id_of(evs))


def test_sigterm_at_the_first_moment_of_teardown(tmp_path: Path) -> None:
    proc = start(tmp_path, "run", EXP, "--out", str(tmp_path / "r"))
    log = tmp_path / "r" / EXP / "events.jsonl"
    evs = wait_for(log, lambda e: e["kind"] == "run-teardown", proc)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc in (143, 0) and (rc == 143 or proc.returncode == 0)
    if rc == 0:  # the run had already finished its teardown when the signal came: nothing to interrupt
        assert "interrupted" not in err
    nothing_left(tmp_path, run_id_of(evs))


@pytest.mark.parametrize(("exp", "point"), [(EXP, "agent-start"), ("delayed-duplicate", "inject")])
def test_ctrl_c_to_the_whole_process_group(tmp_path: Path, exp: str, point: str) -> None:
    """The agents die of the same Ctrl-C; the error that follows must not hide the interrupt (exit 3 before)."""
    proc = start(tmp_path, "run", exp, "--out", str(tmp_path / "r"), group=True)
    log = tmp_path / "r" / exp / "events.jsonl"
    evs = wait_for(log, lambda e: e["kind"] == point, proc)
    os.killpg(proc.pid, signal.SIGINT)         # as a terminal's Ctrl-C: the agents get it too
    rc, _, err = finish(proc)
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "twlab: interrupted; lab resources were removed"
    nothing_left(tmp_path, run_id_of(evs))


def test_sigkill_leaves_a_ledger_that_doctor_cleans(tmp_path: Path) -> None:
    proc = start(tmp_path, "run", EXP, "--out", str(tmp_path / "r"))
    log = tmp_path / "r" / EXP / "events.jsonl"
    evs = wait_for(log, lambda e: e["kind"] == "link" and e.get("action") == "ready", proc)
    proc.kill()
    proc.communicate(timeout=WAIT_S)
    run_id = run_id_of(evs)
    assert list(Path("/run/netns").glob(f"twl{run_id}*")), "SIGKILL cannot clean up: the namespaces are still there"
    doc = subprocess.run([sys.executable, "-m", "lab", "doctor", "--cleanup", "--json"], capture_output=True,
                         text=True, env=_env(tmp_path), timeout=60)
    assert any(run_id in r for r in json.loads(doc.stdout)["removed"])
    nothing_left(tmp_path, run_id)


def _children(out: Path, exps: list[str], proc: subprocess.Popen[str]) -> list[str]:
    ids = []
    for e in exps:
        ids.append(run_id_of(wait_for(out / e / "events.jsonl", netns_added, proc)))
    return ids


def _gone(ids: list[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and any(list(Path("/run/netns").glob(f"twl{i}*")) for i in ids):
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_parallel_children_stop_with_their_parent(tmp_path: Path, sig: int) -> None:
    exps = [EXP, "who-gets-time-wait"]
    out = tmp_path / "r"
    proc = start(tmp_path, "run", *exps, "-j", "2", "--json", "--out", str(out))
    ids = _children(out, exps, proc)
    proc.send_signal(sig)
    rc, stdout, _ = finish(proc)
    if sig == signal.SIGTERM:
        assert rc == 143
        assert sorted(json.loads(ln)["experiment"] for ln in stdout.splitlines()) == sorted(exps)
    else:
        _gone(ids)  # orphans get SIGTERM from the kernel (PR_SET_PDEATHSIG) and remove their namespaces
    for e in exps:  # no child ran on to write a result after its parent died
        res = out / e / "result.json"
        assert not res.exists() or json.loads(res.read_text())["error"], e
    for i in ids:
        nothing_left(tmp_path, i)


# --- temp files of writers killed with -9 ------------------------------------------------------------------

def _killed_writer(tmp_path: Path, code: str) -> int:
    """Run `code` in a python that then kills itself with SIGKILL; its pid."""
    p = subprocess.run([sys.executable, "-c", code + "\nimport os, signal; print(os.getpid(), flush=True); "
                        "os.kill(os.getpid(), signal.SIGKILL)"], capture_output=True, text=True, env=_env(tmp_path),
                       timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return int(p.stdout.split()[0])


def test_doctor_cleanup_removes_temp_files_of_killed_writers(tmp_path: Path) -> None:
    out = tmp_path / "out dir" / "x.pcapng"
    out.parent.mkdir()
    _killed_writer(tmp_path, (
        "from pathlib import Path\nfrom lab.run.resources import output_record\nimport os\n"
        f"out = Path({str(out)!r})\n"
        "cm = output_record(out); cm.__enter__()\n"
        "(out.parent / f'.{out.name}.{os.getpid()}.abc.twl-tmp').write_bytes(b'x')"))
    _killed_writer(tmp_path, (
        "from lab.pcap.writer import spool\n"
        "cm = spool('conns', '.json'); f = cm.__enter__(); f.write(b'x'); f.flush()"))
    keep = tmp_path / f"twl-spool-{os.getpid()}-live-x.json"   # a live process's spool stays
    keep.write_text("x")
    left = list(out.parent.glob(".x.pcapng.*.twl-tmp")) + list(tmp_path.glob("twl-spool-*"))
    assert len(left) == 3
    doc = subprocess.run([sys.executable, "-m", "lab", "doctor", "--cleanup", "--json"], capture_output=True,
                         text=True, env=_env(tmp_path), timeout=60)
    removed = json.loads(doc.stdout)["removed"]
    assert sum(("twl-tmp" in r or "twl-spool" in r) for r in removed) == 2, removed
    assert [p for p in left if p.exists()] == [keep]


def test_sigterm_during_analyze_leaves_no_spool_and_no_partial_output(tmp_path: Path, corpus: Path) -> None:
    big = corpus / "zeek__echo-connections.pcap.gz"
    if not big.is_file():
        pytest.skip("corpus file missing")
    proc = start(tmp_path, "analyze", str(big), str(big), str(big), "--json")
    deadline = time.monotonic() + WAIT_S
    while not list(tmp_path.glob("twl-spool-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    if proc.poll() is not None:
        pytest.skip("analyze finished before its spool file was seen")
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    assert rc == 143, err
    assert not list(tmp_path.glob("twl-spool-*"))
    for ln in out.splitlines():  # whatever was printed is whole JSON lines (files finished before the signal)
        json.loads(ln)
