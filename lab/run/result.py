"""The `twlab run --json` record of one experiment: built here and only here, whether the experiment ran,
failed in the lab, could not run (no root, a missing tool), was interrupted, or its process died."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lab.run.context import kernel_release, timeout_scale_record

if TYPE_CHECKING:
    from pathlib import Path

    from lab.run.context import Experiment, Outcome, RunContext

EXIT_OK, EXIT_NOT_REPRODUCED, EXIT_USAGE, EXIT_ENVIRONMENT = 0, 1, 2, 3
Status = Literal["reproduced", "not-reproduced", "could-not-run"]


@dataclass
class RunResult:
    """Contract (docs, design "Contracts"): extend, never rename. `error` is one line or None."""

    experiment: str
    reproduced: bool
    claim: str
    observations: dict[str, Any]
    capture: str | None
    kernel: str
    run_id: str | None
    root: bool | None
    lore: str
    story: list[list[str]]
    notes: list[str]
    skipped: list[str]
    folder: str
    started_wall_s: float | None
    duration_s: float
    error: str | None
    exit_code: int | None = None
    status: Status | None = None      # reproduced / not-reproduced / could-not-run (an environment verdict)
    lab_subnets: dict[str, Any] | None = None
    timeout_scale: dict[str, Any] | None = None   # the scale every deadline was stretched by, and its source
    extra: dict[str, Any] = field(default_factory=dict)   # forward compatibility: keys a newer child wrote

    @classmethod
    def of_run(cls, exp: Experiment, ctx: RunContext, outcome: Outcome | None, started: float,
               error: str | None = None, lab_subnets: dict[str, Any] | None = None) -> RunResult:
        """An experiment that ran (outcome), or failed inside the lab (error, outcome None)."""
        why_not = getattr(outcome, "could_not_run", None)
        if why_not and not error:
            error = f"could not run: {why_not}"
        reproduced = bool(outcome and outcome.reproduced and not error)
        if why_not:
            status: Status = "could-not-run"
        else:
            status = "reproduced" if reproduced else "not-reproduced"
        code = EXIT_OK if reproduced else (EXIT_ENVIRONMENT if why_not else EXIT_NOT_REPRODUCED)
        return cls(
            experiment=exp.id, reproduced=reproduced, claim=exp.claim,
            observations=dict(outcome.observations) if outcome else {},
            capture=str(outcome.capture) if outcome and outcome.capture else None,
            kernel=ctx.kernel, run_id=ctx.run_id, root=ctx.root, lore=exp.lore,
            story=[list(s) for s in outcome.story] if outcome else [],
            notes=list(outcome.notes) if outcome else [], skipped=list(outcome.skipped) if outcome else [],
            folder=str(ctx.out_dir), started_wall_s=started, duration_s=round(time.time() - started, 3),
            error=one_line(error) if error else None, exit_code=code, status=status, lab_subnets=lab_subnets,
            timeout_scale=timeout_scale_record())

    @classmethod
    def not_run(cls, exp: Experiment, folder: Path, error: str, exit_code: int, duration_s: float = 0.0,
                started: float | None = None, kernel: str | None = None,
                extra: dict[str, Any] | None = None) -> RunResult:
        """An experiment that could not run or did not finish: no root, a lab error, an interrupt, a dead child,
        a guest kernel that did not report (`kernel`: whose; `extra`: fields a caller adds, e.g. the guest's)."""
        return cls(experiment=exp.id, reproduced=False, claim=exp.claim, observations={}, capture=None,
                   kernel=kernel or kernel_release(), run_id=None, root=None, lore=exp.lore, story=[], notes=[],
                   skipped=[], folder=str(folder), started_wall_s=started, duration_s=round(duration_s, 3),
                   error=one_line(error), exit_code=exit_code, status="could-not-run", extra=dict(extra or {}))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = {"experiment", "reproduced", "claim"} - d.keys()
        if missing:
            raise ValueError(f"not a run result (no {', '.join(sorted(missing))})")
        base: dict[str, Any] = {"observations": {}, "capture": None, "kernel": "", "run_id": None, "root": None,
                                "lore": "", "story": [], "notes": [], "skipped": [], "folder": "",
                                "started_wall_s": None, "duration_s": 0.0, "error": None}
        base.update({k: v for k, v in d.items() if k in known})
        return cls(**base, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        return {**extra, **out}


def one_line(text: str) -> str:
    """An error as one line: newlines (also in file names) escaped."""
    return text.strip().replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
