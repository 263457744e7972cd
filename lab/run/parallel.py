"""Run several experiments at once, each in its own `twlab run` process (own namespaces, own
resource ledger), longest first, so that a whole run takes little more than the longest one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.run.context import Experiment
from lab.run.resources import die_with_parent
from lab.run.result import RunResult
from lab.run.runner import SignalGate


@dataclass
class Job:
    exp: Experiment
    proc: subprocess.Popen[str] | None = None
    started_s: float = 0.0
    ended_s: float = 0.0
    result: dict[str, Any] | None = None
    stderr: str = ""
    exit_code: int | None = None
    progress: str = "waiting"
    events_pos: int = field(default=0, repr=False)
    out_file: Any = field(default=None, repr=False)
    err_file: Any = field(default=None, repr=False)

    @property
    def state(self) -> str:
        if self.proc is None:
            return "waiting"
        return "running" if self.exit_code is None else "done"


def _child_argv(exp_id: str, out_root: Path) -> list[str]:
    return [sys.executable, "-m", "lab", "run", exp_id, "--json", "--out", str(out_root)]


def _poll_progress(job: Job, out_root: Path) -> None:
    """The child's latest progress line, read from its event log (no extra protocol needed)."""
    path = out_root / job.exp.id / "events.jsonl"
    try:
        with path.open(encoding="utf-8") as fh:
            fh.seek(job.events_pos)
            for line in fh:
                if not line.endswith("\n"):
                    break
                job.events_pos += len(line.encode())
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if rec.get("kind") == "progress":
                        job.progress = str(rec.get("text", ""))
    except OSError:
        pass


def _child_result(job: Job, out: str, out_root: Path) -> dict[str, Any]:
    """The child's own JSON line (RunResult), else a record of why there is none; exit_code as the child's."""
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                res = RunResult.from_dict(json.loads(line))
                res.exit_code = _exit_code(job.exit_code)
                return res.to_dict()
    return _failed_result(job, out_root)


def _read_back(job: Job) -> tuple[str, str]:
    texts = []
    for fh in (job.out_file, job.err_file):
        fh.seek(0)
        texts.append(fh.read())
        fh.close()
    return texts[0], texts[1]


def _failed_result(job: Job, out_root: Path) -> dict[str, Any]:
    """The record of a child that printed no result line (it died, or could not run the experiment)."""
    lines = [ln for ln in job.stderr.strip().splitlines() if ln.strip()]
    code = job.exit_code
    if lines:
        reason = lines[-1].removeprefix("twlab: ")
    elif code is not None and code < 0:
        reason = f"killed by signal {-code}"
    else:
        reason = f"exit {code}"
    return RunResult.not_run(job.exp, out_root / job.exp.id, reason, _exit_code(code),
                             duration_s=job.ended_s - job.started_s).to_dict()


def _exit_code(code: int | None) -> int:
    """A child's status as an exit code: killed by signal N -> 128 + N."""
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def _stop_children(running: list[Job]) -> None:
    """SIGTERM to every child still running; wait for their teardown (bounded), then SIGKILL."""
    for job in running:
        if job.proc and job.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                job.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + CHILD_TEARDOWN_S
    for job in running:
        if job.proc:
            try:
                job.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()


CHILD_TEARDOWN_S = 30.0


def run_parallel(exps: list[Experiment], out_root: Path, jobs: int = 4,
                 on_update: Callable[[list[Job]], None] | None = None,
                 on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Results in the order of `exps`. Ctrl-C/SIGTERM: every child gets SIGTERM and unwinds its own
    resources; we wait for them before re-raising."""
    out_root.mkdir(parents=True, exist_ok=True)
    all_jobs = [Job(e) for e in exps]
    queue = sorted(all_jobs, key=lambda j: -j.exp.duration_hint_s)
    running: list[Job] = []
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    preexec = die_with_parent()   # SIGTERM: an orphaned child unwinds its namespaces (the live display has a thread)
    with SignalGate() as gate:
        try:
            while queue or running:
                while queue and len(running) < max(1, jobs):
                    job = queue.pop(0)
                    # output goes to files: a pipe would block a child whose JSON line exceeds the pipe buffer
                    (out_root / job.exp.id).mkdir(parents=True, exist_ok=True)
                    job.out_file = (out_root / job.exp.id / "stdout.jsonl").open("w+", encoding="utf-8")
                    job.err_file = (out_root / job.exp.id / "stderr.txt").open("w+", encoding="utf-8")
                    job.proc = subprocess.Popen(_child_argv(job.exp.id, out_root), stdout=job.out_file,
                                                stderr=job.err_file, stdin=subprocess.DEVNULL, text=True, env=env,
                                                preexec_fn=preexec)
                    job.started_s = time.monotonic()
                    job.progress = "starting"
                    running.append(job)
                for job in list(running):
                    assert job.proc is not None
                    _poll_progress(job, out_root)
                    if job.proc.poll() is None:
                        continue
                    out, err = _read_back(job)
                    job.exit_code = job.proc.returncode
                    job.ended_s = time.monotonic()
                    job.stderr = err
                    job.result = _child_result(job, out, out_root)
                    job.progress = "reproduced" if job.result.get("reproduced") else (
                        job.result.get("error") or "not reproduced")
                    running.remove(job)
                    if on_result:
                        on_result(job.result)
                if on_update:
                    on_update(all_jobs)
                time.sleep(0.1)
        except KeyboardInterrupt:
            gate.defer()
            _stop_children(running)
            raise
        gate.raise_if_received()
    return [j.result for j in all_jobs if j.result is not None]
