"""run(experiment) -> result: owns the run folder, the event log and teardown order."""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from lab.errors import EnvironmentProblem, LabError
from lab.run.context import EventLog, Experiment, Outcome, RunContext, is_root, new_run_id
from lab.run.resources import Ledger


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ExitStack callback (netns, rules, pids) runs."""

    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked helper (e.g. pyroute2's) must not unwind our teardown
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def result_dict(exp: Experiment, ctx: RunContext, outcome: Outcome | None, started: float,
                error: str | None = None) -> dict[str, Any]:
    """The `twlab run --json` contract (docs/design.md); extend, never rename."""
    return {
        "experiment": exp.id,
        "reproduced": bool(outcome and outcome.reproduced and not error),
        "claim": exp.claim,
        "observations": outcome.observations if outcome else {},
        "capture": str(outcome.capture) if outcome and outcome.capture else None,
        "kernel": ctx.kernel,
        "run_id": ctx.run_id,
        "root": ctx.root,
        "lore": exp.lore,
        "story": [list(s) for s in outcome.story] if outcome else [],
        "notes": outcome.notes if outcome else [],
        "skipped": outcome.skipped if outcome else [],
        "folder": str(ctx.out_dir),
        "started_wall_s": started,
        "duration_s": round(time.time() - started, 3),
        "error": error,
    }


def open_context(exp: Experiment, out_dir: Path, stack: ExitStack,
                 progress: Callable[[str, float | None], None] | None = None,
                 options: dict[str, Any] | None = None) -> RunContext:
    """A RunContext with a fresh run id, its event log and resource ledger; both close with `stack`
    (the ledger last: whatever is still recorded then is removed)."""
    run_id = new_run_id()
    events = EventLog(out_dir / "events.jsonl")
    stack.callback(events.close)
    ledger = Ledger(run_id)
    stack.callback(ledger.close)
    return RunContext(experiment=exp, run_id=run_id, out_dir=out_dir, events=events, stack=stack, ledger=ledger,
                      progress=progress or (lambda t, f: None), options=dict(options or {}))


def run_one(exp: Experiment, out_root: Path, progress: Callable[[str, float | None], None] | None = None,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one experiment into out_root/<id>/ and return its result dict.

    LabError (environment, usage) propagates after teardown; the caller maps it to an exit code.
    KeyboardInterrupt propagates after teardown too.
    """
    if exp.needs_root and not is_root():
        raise EnvironmentProblem(f"{exp.id} needs root (network namespaces, raw sockets)",
                                 f"run it as root: sudo twlab run {exp.id}")
    out_dir = out_root / exp.id
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    outcome: Outcome | None = None
    error: str | None = None
    with ExitStack() as stack:
        ctx = open_context(exp, out_dir, stack, progress=progress, options=options)
        events = ctx.events
        events.log("run-start", experiment=exp.id, run_id=ctx.run_id, kernel=ctx.kernel, root=ctx.root)
        try:
            with sigterm_as_interrupt():
                outcome = exp.run(ctx)
        except LabError:
            events.log("run-error", error="lab error")
            raise
        except KeyboardInterrupt:
            events.log("run-interrupted")
            raise
        except Exception as exc:  # a bug in the lab: keep the run folder, report it
            error = f"{type(exc).__name__}: {exc}"
            events.log("run-error", error=error, traceback=traceback.format_exc())
        result = result_dict(exp, ctx, outcome, started, error)
        events.log("run-end", reproduced=result["reproduced"])
    tmp = out_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "result.json")
    return result
