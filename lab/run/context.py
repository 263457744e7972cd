"""What an experiment is (typed data plus one function) and what it hands back."""

from __future__ import annotations

import json
import os
import platform
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from lab.run.resources import Ledger

Topology = Literal["none", "loopback", "netns"]


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

    def name(self, role: str) -> str:
        """A lab-owned resource name: 'twl' + run id + role, at most 15 characters."""
        n = f"twl{self.run_id}{role}"
        if len(n) > 15:
            raise ValueError(f"resource name {n!r} longer than IFNAMSIZ-1")
        return n

    def say(self, text: str, frac: float | None = None) -> None:
        self.events.log("progress", text=text)
        self.progress(text, frac)
