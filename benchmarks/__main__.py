"""python -m benchmarks [NAME...]: run benchmarks/bench_NAME.py (each has main(argv) -> int)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [a for a in argv if not a.startswith("-")] or names
    rest = [a for a in argv if a.startswith("-")]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        print(f"benchmarks: unknown {unknown}; known: {names}", file=sys.stderr)
        return 2
    rc = 0
    for name in wanted:
        print(f"== benchmark {name}", flush=True)
        rc |= importlib.import_module(f"benchmarks.bench_{name}").main(rest)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
