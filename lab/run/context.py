"""What an experiment is (typed data plus one function) and what it hands back."""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from lab.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:
    from lab.run.resources import Ledger

Topology = Literal["none", "loopback", "netns"]
Status = Literal["reproduced", "not-reproduced", "could-not-run"]


@dataclass(frozen=True)
class Experiment:
    id: str
    claim: str                      # one sentence: what the experiment tests
    lore: str                       # what the folk answer / Stevens says
    run: Callable[[RunContext], Outcome]
    topology: Topology = "loopback"
    needs_root: bool = False        # True: cannot run at all without root
    duration_hint_s: float = 5.0    # for scheduling and progress bars
    tags: tuple[str, ...] = ()


@dataclass
class Outcome:
    reproduced: bool
    observations: dict[str, Any]
    story: list[tuple[str, str]] = field(default_factory=list)   # (what the lab did, what the kernel answered)
    notes: list[str] = field(default_factory=list)               # where this kernel differs from the lore
    skipped: list[str] = field(default_factory=list)             # parts not done here, each with why
    capture: Path | None = None
    analysis: dict[str, Any] | None = None                       # analyzer report of the capture, if any
    could_not_run: str | None = None     # why the case could not be set up (an environment verdict, not a kernel one)

    @property
    def status(self) -> Status:
        """The verdict kind: a kernel verdict (reproduced / not-reproduced) or an environment one."""
        if self.could_not_run is not None:
            return "could-not-run"
        return "reproduced" if self.reproduced else "not-reproduced"

    @classmethod
    def not_set_up(cls, why: str, observations: dict[str, Any] | None = None) -> Outcome:
        """The outcome of an experiment whose case could not be set up here: 'could not run: <why>'."""
        return cls(False, dict(observations or {}), could_not_run=why)


class CouldNotRun(EnvironmentProblem):
    """The lab could not set up an experiment's case (a server that never listened, a step that never came within
    its scaled deadline): an environment verdict, never "not reproduced". Exit code 3."""

    exit_code = 3

    def __init__(self, why: str, hint: str = "") -> None:
        super().__init__(f"could not run: {why}", hint or f"a slow or busy machine: try a larger --timeout-scale "
                                                          f"(now {timeout_scale():g}) or {TIMEOUT_SCALE_ENV}")
        self.why = why


# ---------------------------------------------------------------------------------------------
# one setting for every wait: the timeout scale

TIMEOUT_SCALE_ENV = "TWLAB_TIMEOUT_SCALE"
TIMEOUT_SCALE_CAP = 20.0
STARTUP_PROBE = ("-c", "import json, socket")   # what an agent program does before its first step
STARTUP_REFERENCE_S = 0.05                      # that probe on an idle machine of the kind the lab was built on
STARTUP_PROBES = 3
_scale: dict[str, Any] = {}


def parse_timeout_scale(text: str) -> float:
    """A timeout scale as given by a user: a number from 1 to the cap (UsageError otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"timeout scale {text!r} is not a number", f"give a number from 1 to {TIMEOUT_SCALE_CAP:g}"
                         ) from None
    if not 1.0 <= value <= TIMEOUT_SCALE_CAP:
        raise UsageError(f"timeout scale {text} is out of range", f"give a number from 1 to {TIMEOUT_SCALE_CAP:g}")
    return value


def measure_startup_s() -> float:
    """The median time to start a Python program like the lab's agents (the machine's current slowness)."""
    times = []
    for _ in range(STARTUP_PROBES):
        t0 = time.monotonic()
        subprocess.run([sys.executable, *STARTUP_PROBE], check=False, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def scale_from_startup(startup_s: float) -> float:
    return round(min(TIMEOUT_SCALE_CAP, max(1.0, startup_s / STARTUP_REFERENCE_S)), 2)


def timeout_scale() -> float:
    """The process-wide timeout scale: $TWLAB_TIMEOUT_SCALE (set by `twlab run --timeout-scale` for its children),
    else measured once from the start-up time of a Python program."""
    if "value" not in _scale:
        given = os.environ.get(TIMEOUT_SCALE_ENV)
        if given:
            _scale.update(value=parse_timeout_scale(given), source="given")
        else:
            startup = measure_startup_s()
            _scale.update(value=scale_from_startup(startup), source="measured", startup_s=round(startup, 4))
    return float(_scale["value"])


def timeout_scale_record() -> dict[str, Any]:
    """The scale, where it came from and (when measured) the start-up time it came from: for the run's record."""
    timeout_scale()
    return dict(_scale)


def set_timeout_scale(value: float, source: str = "given") -> None:
    """Fix the scale for this process and the programs it starts (parallel children, agents)."""
    _scale.clear()
    _scale.update(value=value, source=source)
    os.environ[TIMEOUT_SCALE_ENV] = f"{value:g}"


def scaled(seconds: float) -> float:
    """A deadline of `seconds` on an idle machine, stretched by the timeout scale. Every wait uses this."""
    return seconds * timeout_scale()


def new_run_id() -> str:
    """Six hex digits: 'twl' + id + a 6-char role suffix still fits IFNAMSIZ (15)."""
    return secrets.token_hex(3)


def kernel_release() -> str:
    return platform.release()


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class EventLog:
    """JSON lines: each app-level call with its result/errno, each kernel sample.

    `wall_s` is epoch time so that events line up with capture timestamps.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = path.open("a", encoding="utf-8") if path else None
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def log(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"t_s": round(time.monotonic() - self._t0, 6), "wall_s": time.time(), "kind": kind, **fields}
        with self._lock:
            self.records.append(rec)
            if self._fh:
                self._fh.write(json.dumps(rec, default=str) + "\n")
                self._fh.flush()
        return rec

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


class RunSpace(Protocol):
    """The narrow part of a run that kernel adapters use (lab.kernel.*): names, the event log, the ledger of
    what was created, the cleanup stack. RunContext provides it; adapters never see experiments."""

    run_id: str
    out_dir: Path
    events: EventLog
    stack: ExitStack
    ledger: Ledger
    root: bool

    def name(self, role: str) -> str: ...


@dataclass
class RunContext:
    """Everything an experiment function may use. Resources go on `stack` so that the
    runner tears them down in reverse order on success, exception, SIGINT and SIGTERM."""

    experiment: Experiment
    run_id: str
    out_dir: Path
    events: EventLog
    stack: ExitStack
    ledger: Ledger                  # record every namespace/link/pid/file created, by exact name
    root: bool = field(default_factory=is_root)
    kernel: str = field(default_factory=kernel_release)
    progress: Callable[[str, float | None], None] = lambda text, frac: None
    options: dict[str, Any] = field(default_factory=dict)
    timeout_scale: float = field(default_factory=timeout_scale)

    def __post_init__(self) -> None:
        self.events.log("timeout-scale", **timeout_scale_record())

    def deadline(self, seconds: float) -> float:
        """`seconds` stretched by the run's timeout scale (see scaled)."""
        return seconds * self.timeout_scale

    def name(self, role: str) -> str:
        """A lab-owned resource name: 'twl' + run id + role, at most 15 characters."""
        n = f"twl{self.run_id}{role}"
        if len(n) > 15:
            raise ValueError(f"resource name {n!r} longer than IFNAMSIZ-1")
        return n

    def say(self, text: str, frac: float | None = None) -> None:
        self.events.log("progress", text=text)
        self.progress(text, frac)
