"""Shared parts of the wave-2 failure-case experiments (issue 17): documented knobs (`twlab run NAME --set k=v`)
and a sock_diag census (how many sockets of each state a namespace holds for some ports, at one moment)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab.errors import UsageError
from lab.kernel import sockdiag

if TYPE_CHECKING:
    from lab.run.context import Experiment, RunContext

SET_ENV = "TWLAB_SET"   # {experiment: {knob: value}} for this process and the runs it starts (parallel children)


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


def knobs_of(exp: Experiment) -> dict[str, Knob]:
    """The knobs an experiment documents: its module's KNOBS (none for most experiments)."""
    module = sys.modules.get(getattr(exp.run, "__module__", ""))
    found = getattr(module, "KNOBS", None)
    return dict(found) if isinstance(found, Mapping) else {}


def parse_sets(exps: Iterable[Experiment], pairs: Sequence[str]) -> dict[str, dict[str, float]]:
    """`--set key=value` pairs checked against the knobs of the experiments named: {experiment: {knob: value}}
    for every experiment that has the knob. UsageError (one line, naming the valid keys or range) otherwise."""
    exps = list(exps)
    out: dict[str, dict[str, float]] = {}
    valid = sorted({k for e in exps for k in knobs_of(e)})
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--set {pair!r}: not key=value", f"valid keys: {', '.join(valid) or 'none'}")
        hits = [e for e in exps if key in knobs_of(e)]
        if not hits:
            where = ", ".join(e.id for e in exps) if len(exps) <= 3 else f"the {len(exps)} experiments named"
            raise UsageError(f"--set {key}: not a knob of {where}",
                             f"valid keys: {', '.join(valid)}" if valid else "these experiments have no knobs "
                             "('twlab list --json' shows each experiment's knobs)")
        for e in hits:
            out.setdefault(e.id, {})[key] = knobs_of(e)[key].parse(key, text.strip())
    for e in exps:   # rules between knobs (module knob_rule: values -> the problem, or None)
        rule = getattr(sys.modules.get(getattr(e.run, "__module__", "")), "knob_rule", None)
        if e.id in out and callable(rule):
            values = {k: out[e.id].get(k, v.default) for k, v in knobs_of(e).items()}
            problem = rule(values)
            if problem:
                raise UsageError(f"--set for {e.id}: {problem}", "'twlab list --json' shows its knobs")
    return out


def export_sets(sets: Mapping[str, Mapping[str, float]]) -> None:
    """Hand the parsed values to this process's runs and the processes it starts."""
    os.environ[SET_ENV] = json.dumps(sets)


def _given(ctx: RunContext) -> dict[str, Any]:
    if "set" in ctx.options:
        return dict(ctx.options.get("set") or {})
    try:
        every = json.loads(os.environ.get(SET_ENV) or "{}")
    except ValueError:
        return {}
    mine = every.get(ctx.experiment.id) if isinstance(every, dict) else None
    return dict(mine) if isinstance(mine, dict) else {}


def knob(ctx: RunContext, knobs: Mapping[str, Knob], name: str) -> Any:
    """The value of one knob for this run: given with `twlab run --set` (or `ctx.options["set"]`), else its
    default."""
    given = _given(ctx).get(name)
    k = knobs[name]
    value = k.default if given is None else given
    return int(value) if k.integer else float(value)


def is_given(ctx: RunContext, name: str) -> bool:
    """Whether the user set this knob (`twlab run --set`), rather than its default applying."""
    return name in _given(ctx)


def knob_record(ctx: RunContext, knobs: Mapping[str, Knob]) -> dict[str, Any]:
    """Every knob's value in this run, for the observations (what was set and what was the default)."""
    given = _given(ctx)
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
