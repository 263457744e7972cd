"""run(experiment) -> result: owns the run folder, the event log, teardown order and signals during a run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from lab.errors import EnvironmentProblem, Interrupted, LabError
from lab.run import addrplan
from lab.run.context import EventLog, Experiment, Outcome, RunContext, is_root, new_run_id
from lab.run.resources import Ledger
from lab.run.result import RunResult


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


class SignalGate:
    """SIGINT and SIGTERM while the lab holds resources: the first one interrupts the work (raises Interrupted,
    so every ExitStack callback runs); from teardown on (`defer`) signals are only recorded, so cleanup always
    finishes; afterwards a recorded signal is raised again and the CLI exits 128 + signal (130, 143). A signal
    that Python swallowed (it came inside a weakref callback or a __del__) is raised again a moment later,
    where Python can raise it; never exit 0 after an interrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    RETRY_S = 0.001     # a swallowed interrupt is raised again this soon after (SIGALRM), outside the hook

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferring = False
        self._owner = os.getpid()
        self._old: dict[int, Any] = {}
        self._old_hook = sys.unraisablehook
        self._in_hook = False

    def _handler(self, signum: int, frame: object) -> None:
        if os.getpid() != self._owner:  # a forked helper (e.g. pyroute2's) must not unwind our teardown
            os._exit(128 + signum)
        first = self.received is None
        if first:
            self.received = signum
        if first and not self.deferring:
            raise Interrupted(signum)

    def __enter__(self) -> SignalGate:
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: signals are handled elsewhere
            self._old.clear()
            return self
        self._old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._raise_swallowed)
        self._old_hook = sys.unraisablehook
        sys.unraisablehook = self._swallowed
        return self

    def _swallowed(self, unraisable: Any) -> None:
        """Our Interrupted raised where Python cannot raise (a weakref callback, a __del__) would print
        "Exception ignored ... Traceback" to the user: it is not printed, and a timer raises it again once
        this hook has returned (raising from inside the hook would be swallowed the same way)."""
        self._in_hook = True
        try:
            exc = unraisable.exc_value
            if not (isinstance(exc, Interrupted) and exc.signum == self.received):
                self._old_hook(unraisable)
            elif not self.deferring:
                signal.setitimer(signal.ITIMER_REAL, self.RETRY_S)
        finally:
            self._in_hook = False

    def _raise_swallowed(self, signum: int, frame: object) -> None:
        if self.received is None or self.deferring:
            return
        if self._in_hook:        # still inside someone's unraisable hook: try again a moment later
            signal.setitimer(signal.ITIMER_REAL, self.RETRY_S)
            return
        raise Interrupted(self.received)

    def __exit__(self, *exc: object) -> None:
        if self._old:   # installed (main thread): the retry timer, the handlers and the hook go back
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, old in self._old.items():
                signal.signal(sig, old)
            sys.unraisablehook = self._old_hook
        self._old.clear()

    def defer(self) -> None:
        """From now on (teardown) signals are recorded, not raised."""
        self.deferring = True

    def raise_if_received(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)


@contextmanager
def sigterm_as_interrupt() -> Iterator[SignalGate]:
    """SIGINT/SIGTERM unwind like Ctrl-C (Interrupted, a KeyboardInterrupt) around a block whose cleanup is in
    `finally` clauses (e.g. analyze's spool files); a swallowed signal is raised at the end."""
    with SignalGate() as gate:
        yield gate
        gate.raise_if_received()


def record_subnets(exp: Experiment, ctx: RunContext) -> dict[str, Any] | None:
    """The documentation subnets the run's namespaces use, chosen against the host's own (lab.run.addrplan)."""
    if exp.topology != "netns" or not ctx.root:
        return None
    plan = addrplan.current().to_dict()
    ctx.events.log("addr-plan", **plan)
    return plan


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


def _run_in(exp: Experiment, ctx: RunContext, gate: SignalGate, started: float) -> RunResult:
    """The experiment itself; teardown (the caller's ExitStack) starts deferred whatever happens here."""
    outcome: Outcome | None = None
    error: str | None = None
    subnets: dict[str, Any] | None = None
    events = ctx.events
    events.log("run-start", experiment=exp.id, run_id=ctx.run_id, kernel=ctx.kernel, root=ctx.root)
    try:
        subnets = record_subnets(exp, ctx)
        outcome = exp.run(ctx)
    except LabError as exc:
        events.log("run-error", error=exc.one_line())
        raise
    except KeyboardInterrupt as exc:
        events.log("run-interrupted", signal=getattr(exc, "signum", int(signal.SIGINT)))
        raise
    except Exception as exc:  # a bug in the lab: keep the run folder, report it
        error = f"{type(exc).__name__}: {exc}"
        events.log("run-error", error=error, traceback=traceback.format_exc())
    finally:
        gate.defer()
        events.log("run-teardown")  # from here on signals wait until every resource is removed
    result = RunResult.of_run(exp, ctx, outcome, started, error, lab_subnets=subnets)
    events.log("run-end", reproduced=result.reproduced)
    return result


def run_one(exp: Experiment, out_root: Path, progress: Callable[[str, float | None], None] | None = None,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one experiment into out_root/<id>/ and return its result dict (lab.run.result.RunResult).

    LabError (environment, usage) propagates after teardown; the caller maps it to an exit code.
    SIGINT/SIGTERM: teardown finishes (signals are held off meanwhile), then Interrupted propagates.
    """
    if exp.needs_root and not is_root():
        raise EnvironmentProblem(f"{exp.id} needs root (network namespaces, raw sockets)",
                                 f"run it as root: sudo twlab run {exp.id}")
    out_dir = out_root / exp.id
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with SignalGate() as gate:
        try:
            with ExitStack() as stack:
                ctx = open_context(exp, out_dir, stack, progress=progress, options=options)
                result = _run_in(exp, ctx, gate, started)
        except Exception as exc:
            # an error that followed a signal (e.g. an agent killed by the same Ctrl-C) is the interrupt
            if gate.received is not None:
                raise Interrupted(gate.received) from exc
            raise
        finally:
            gate.defer()
        gate.raise_if_received()
        write_result(out_dir, result)
    return result.to_dict()


def write_result(out_dir: Path, result: RunResult) -> None:
    """result.json, atomically; the temp file is named for doctor (twl*.tmp) and never left behind."""
    tmp = out_dir / "twl-result.json.tmp"
    try:
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(out_dir / "result.json")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
