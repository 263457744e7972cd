"""Verdicts that do not depend on the load: the most load-sensitive experiments reproduce with two CPU hogs beside
them; every wait is stretched by one timeout scale (given or measured); a case that cannot be set up says
"could not run" (exit 3), never "not reproduced"."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from lab.errors import LabError, UsageError
from lab.run import context
from lab.run.context import (
    TIMEOUT_SCALE_CAP,
    TIMEOUT_SCALE_ENV,
    CouldNotRun,
    Experiment,
    Outcome,
    RunContext,
    parse_timeout_scale,
    scale_from_startup,
)

ROOT = Path(__file__).resolve().parents[2]
LOAD_SENSITIVE = ("abortive-close", "ephemeral-exhaustion", "reuseaddr-uses", "who-gets-time-wait")
HOGS = 2


@contextlib.contextmanager
def cpu_hogs(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """n busy processes (`yes > /dev/null`), killed by their own pids afterwards."""
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield hogs
    finally:
        for h in hogs:
            h.kill()
            h.wait(timeout=10)


@pytest.fixture
def fresh_scale(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process-wide scale forgotten before and after (tests set and measure it)."""
    monkeypatch.setattr(context, "_scale", {})
    yield


# ---------------------------------------------------------------------------------------------
# the one setting


def test_scale_from_startup_is_at_least_one_and_capped() -> None:
    assert scale_from_startup(0.001) == 1.0
    assert scale_from_startup(context.STARTUP_REFERENCE_S * 4) == 4.0
    assert scale_from_startup(1000.0) == TIMEOUT_SCALE_CAP


@pytest.mark.parametrize("text", ["abc", "0.5", "0", "-2", "21", "nan"])
def test_bad_timeout_scale_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_timeout_scale(text)


def test_env_scale_stretches_every_wait(fresh_scale: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.kernel.agent import STEP_TIMEOUT_S, scaled_steps

    monkeypatch.setenv(TIMEOUT_SCALE_ENV, "3")
    assert context.timeout_scale() == 3.0
    assert context.timeout_scale_record()["source"] == "given"
    assert context.scaled(2.0) == 6.0
    steps = scaled_steps([{"op": "accept", "sock": "l", "timeout_s": 2}, {"op": "recv", "sock": "c"},
                          {"op": "sleep", "s": 0.5}, {"op": "listen", "sock": "l"}])
    assert steps[0]["timeout_s"] == 6.0
    assert steps[1]["timeout_s"] == STEP_TIMEOUT_S * 3      # a blocking step without a deadline gets the default
    assert steps[2] == {"op": "sleep", "s": 0.5}             # a sleep is not a deadline
    assert "timeout_s" not in steps[3]


def test_measured_scale_is_recorded(fresh_scale: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_SCALE_ENV, raising=False)
    value = context.timeout_scale()
    rec = context.timeout_scale_record()
    assert rec["source"] == "measured" and rec["startup_s"] > 0
    assert 1.0 <= value <= TIMEOUT_SCALE_CAP
    assert value == scale_from_startup(rec["startup_s"])


def test_cli_rejects_a_bad_timeout_scale() -> None:
    r = subprocess.run([sys.executable, "-m", "lab", "run", "bind-matrix", "--timeout-scale", "0.1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "--timeout-scale" in r.stderr


# ---------------------------------------------------------------------------------------------
# could not run: an environment verdict


def test_outcome_status_kinds() -> None:
    assert Outcome(True, {}).status == "reproduced"
    assert Outcome(False, {}).status == "not-reproduced"
    cnr = Outcome.not_set_up("no TUN device")
    assert cnr.status == "could-not-run" and not cnr.reproduced and cnr.could_not_run == "no TUN device"


def test_an_outcome_not_set_up_is_recorded_as_could_not_run(tmp_path: Path) -> None:
    from lab.run.runner import run_one

    exp = Experiment(id="load-test-not-set-up", claim="-", lore="-", topology="none",
                     run=lambda c: Outcome.not_set_up("the server never listened"))
    res = run_one(exp, tmp_path)
    assert res["status"] == "could-not-run" and res["reproduced"] is False and res["exit_code"] == 3
    assert res["error"] == "could not run: the server never listened"


def test_a_step_that_never_comes_is_could_not_run(fresh_scale: None, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """An agent step missing its (scaled) deadline ends the run as 'could not run', exit code 3."""
    from lab.kernel.agent import Agent, AgentError
    from lab.run.runner import run_one

    monkeypatch.setenv(TIMEOUT_SCALE_ENV, "1")

    def never(ctx: RunContext) -> Outcome:
        agent = Agent.start(ctx, [{"op": "gate", "name": "never"}], name="stuck")
        agent.wait("listen", timeout_s=0.3)
        return Outcome(True, {})

    exp = Experiment(id="load-test-stuck", claim="-", lore="-", run=never, topology="none")
    with pytest.raises(LabError) as info:
        run_one(exp, tmp_path)
    assert isinstance(info.value, (AgentError, CouldNotRun))
    assert info.value.exit_code == 3
    assert info.value.one_line().startswith("could not run: agent stuck: step 'listen' did not happen within 0.3 s")


def test_timeout_scale_is_in_the_event_log(fresh_scale: None, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    from lab.run.runner import open_context

    monkeypatch.setenv(TIMEOUT_SCALE_ENV, "2.5")
    exp = Experiment(id="load-test-scale", claim="-", lore="-", run=lambda c: Outcome(True, {}), topology="none")
    with ExitStack() as stack:
        ctx = open_context(exp, tmp_path, stack)
        assert ctx.timeout_scale == 2.5 and ctx.deadline(4) == 10.0
    recs = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {"kind": "timeout-scale", "value": 2.5, "source": "given"}.items() <= next(
        r for r in recs if r["kind"] == "timeout-scale").items()


# ---------------------------------------------------------------------------------------------
# the real thing: load-sensitive experiments with two CPU hogs beside them


@pytest.mark.root
@pytest.mark.slow
def test_load_sensitive_experiments_reproduce_beside_two_cpu_hogs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TIMEOUT_SCALE_ENV}   # measured, as a user would run it
    with cpu_hogs(HOGS):
        r = subprocess.run([sys.executable, "-m", "lab", "run", *LOAD_SENSITIVE, "--json", "--out", str(tmp_path)],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    results = {x["experiment"]: x for x in (json.loads(line) for line in r.stdout.splitlines() if line.strip())}
    assert set(results) == set(LOAD_SENSITIVE), r.stderr[-2000:]
    why = {k: v.get("error") or v.get("story", [])[:3] for k, v in results.items() if not v["reproduced"]}
    assert not why, why
    assert r.returncode == 0, r.stderr[-2000:]
    for eid in LOAD_SENSITIVE:   # each run recorded the scale its waits used
        events = (tmp_path / eid / "events.jsonl").read_text()
        assert '"kind": "timeout-scale"' in events
