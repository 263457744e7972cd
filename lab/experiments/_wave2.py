"""Shared parts of the wave-2 failure-case experiments (issue 17): documented knobs (`twlab run NAME --set k=v`)
and a sock_diag census (how many sockets of each state a namespace holds for some ports, at one moment)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab.errors import UsageError
from lab.kernel import sockdiag

if TYPE_CHECKING:
    from lab.run.context import RunContext


@dataclass(frozen=True)
class Knob:
    """One documented parameter of an experiment: its default, unit, allowed range and what it changes."""

    default: float
    unit: str
    help: str
    lo: float
    hi: float
    integer: bool = True

    def parse(self, name: str, text: str) -> float:
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            kind = "an integer" if self.integer else "a number"
            raise UsageError(f"--set {name}={text}: not {kind}", f"give {kind} from {self.lo:g} to {self.hi:g}"
                             ) from None
        if not self.lo <= value <= self.hi:
            raise UsageError(f"--set {name}={text}: out of range", f"give a value from {self.lo:g} to {self.hi:g} "
                             f"({self.unit})")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "unit": self.unit, "help": self.help, "min": self.lo, "max": self.hi,
                "type": "int" if self.integer else "float"}


def knob(ctx: RunContext, knobs: Mapping[str, Knob], name: str) -> Any:
    """The value of one knob for this run: `ctx.options["set"][name]` when given, else its default."""
    given = (ctx.options.get("set") or {}).get(name)
    k = knobs[name]
    value = k.default if given is None else given
    return int(value) if k.integer else float(value)


def knob_record(ctx: RunContext, knobs: Mapping[str, Knob]) -> dict[str, Any]:
    """Every knob's value in this run, for the observations (what was set and what was the default)."""
    given = ctx.options.get("set") or {}
    return {name: {"value": knob(ctx, knobs, name), "unit": k.unit, "given": name in given}
            for name, k in knobs.items()}


def census(netns: str, ports: Sequence[int]) -> dict[str, int]:
    """How many TCP sockets of each state the namespace holds with a local or remote port in `ports` (listeners
    left out)."""
    got = sockdiag.sockets(netns=netns, ports=ports)
    return dict(sorted(Counter(s.state for s in got if s.state != "LISTEN").items()))


def census_row(t0: float, hosts: Mapping[str, str], ports: Sequence[int]) -> dict[str, Any]:
    """One row of a census over time: seconds since t0 and each host's census."""
    row: dict[str, Any] = {"t_s": round(time.time() - t0, 3)}
    for role, ns in hosts.items():
        row[role] = census(ns, ports)
    return row
