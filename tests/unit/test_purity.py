"""lab.core must stay pure: no scapy, rich, sockets, subprocess, clocks or interpreter toggles such as the
cyclic GC (its callers decide that) (design principle 2)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lab.core

FORBIDDEN = {"scapy", "rich", "pyshark", "pyroute2", "socket", "subprocess", "time", "datetime", "select",
             "threading", "os", "io", "random", "click", "multiprocessing", "asyncio", "gc"}

PROBE = (
    "import sys\n"
    "before = set(sys.modules)\n"
    "import pkgutil, importlib, lab.core\n"
    "for m in pkgutil.walk_packages(lab.core.__path__, 'lab.core.'):\n"
    "    importlib.import_module(m.name)\n"
    "{extra}"
    "new = set(sys.modules) - before\n"
    "print(','.join(sorted(m for m in new if m.split('.')[0] in {forbidden!r})))\n"
)


def _probe(extra: str = "") -> str:
    code = PROBE.format(extra=extra, forbidden=sorted(FORBIDDEN))
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_core_loads_no_io_module_at_runtime() -> None:
    assert _probe() == "", "lab.core pulled in I/O modules"


def test_runtime_probe_detects_a_forbidden_import() -> None:
    assert "scapy" in _probe("import scapy.packet\n")


def test_core_source_imports_nothing_that_does_io() -> None:
    """Catches modules the interpreter preloads (time, os), which the runtime probe cannot see."""
    bad = []
    for path in Path(lab.core.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert bad == []
