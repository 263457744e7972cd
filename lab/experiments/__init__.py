"""Registry: every module in this package that defines EXPERIMENT is an experiment."""

from __future__ import annotations

import importlib
import pkgutil

from lab.errors import UsageError
from lab.run.context import Experiment

_ORDER = [
    "restart-eaddrinuse", "who-gets-time-wait", "four-way-close", "simultaneous-close",
    "time-wait-duration", "lost-final-ack", "time-wait-zero", "abortive-close", "syn-in-time-wait",
    "delayed-duplicate", "time-wait-assassination", "ephemeral-exhaustion", "ephemeral-port-allocation",
    "reuseaddr-uses", "reuseport", "multicast-reuse", "bind-matrix",
    # wave 2: the cases people bring from incidents
    "close-wait-pileup", "bind-before-connect", "time-wait-bucket-overflow", "tcp-tw-recycle", "http-close-side",
    "proxy-port-exhaustion", "challenge-ack", "conntrack-time-wait",
]


UNAVAILABLE: dict[str, str] = {}  # module -> why it could not be loaded on this OS


def all_experiments() -> list[Experiment]:
    found: dict[str, Experiment] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_") or mod.name == "base":
            continue
        try:
            module = importlib.import_module(f"{__name__}.{mod.name}")
        except (ImportError, OSError) as exc:  # e.g. a Linux-only dependency on macOS/FreeBSD
            UNAVAILABLE[mod.name] = f"{type(exc).__name__}: {exc}"
            continue
        exp = getattr(module, "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            found[exp.id] = exp
    rank = {eid: i for i, eid in enumerate(_ORDER)}
    return sorted(found.values(), key=lambda e: (rank.get(e.id, len(rank)), e.id))


def get(names: list[str]) -> list[Experiment]:
    known = {e.id: e for e in all_experiments()}
    if names == ["all"] or not names:
        return list(known.values())
    out = []
    for n in names:
        if n not in known:
            why = UNAVAILABLE.get(n.replace("-", "_"))
            if why:
                raise UsageError(f"experiment {n!r} cannot be loaded here ({why})", "run it on Linux")
            raise UsageError(f"unknown experiment {n!r}", f"run 'twlab list' to see the {len(known)} known ids")
        out.append(known[n])
    return out
