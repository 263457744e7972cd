"""The optional compiled accelerator (mypyc, built by `python -m lab.build`) and its guard against staleness.

A compiled module sits beside its .py (lab/core/tracker.cpython-*.so next to tracker.py) and Python's
import prefers it, so a build from an older source would silently win over an edited .py. `import lab`
calls install(): unless the build stamp (lab/.accel-stamp, written by lab.build) matches every compiled
source, or when TWLAB_PURE=1, a meta-path finder makes those modules load from their .py sources.
Cheap: a few stat() calls; sources are hashed only when their size or mtime differ from the stamp.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from types import ModuleType

# one mypyc group: these modules are compiled together (lab.build) or not at all
COMPILED = ("lab.core.model", "lab.core.seqnum", "lab.core.tcpstate", "lab.core.profiles", "lab.core.report",
            "lab.core.tracker", "lab.core.narrate", "lab.core.jsontext", "lab.core.census", "lab.pcap.fastdecode",
            "lab.pcap.fastcopy")
GROUP = "lab._accel"                     # mypyc's shared library: lab/_accel__mypyc<EXT_SUFFIX>
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the directory holding lab/
STAMP = os.path.join(ROOT, "lab", ".accel-stamp")
STAMP_HEADER = "twlab-accel 1"
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
BUILD_HINT = ".venv/bin/python -m lab.build (or: bash setup.sh)"

_state: dict[str, object] = {"active": False, "reason": "not checked", "finder": None}


def source_path(module: str) -> str:
    return os.path.join(ROOT, *module.split(".")) + ".py"


def rel(module: str) -> str:
    return module.replace(".", "/") + ".py"


def compiled_paths() -> list[str]:
    """Every file a build puts into the tree: the shared library and one shim per module."""
    out = [os.path.join(ROOT, *GROUP.split(".")) + "__mypyc" + EXT_SUFFIX]
    out += [os.path.join(ROOT, *m.split(".")) + EXT_SUFFIX for m in COMPILED]
    return out


def read_stamp() -> dict[str, tuple[str, int, int]]:
    """{relative source path: (sha256, size, mtime_ns)} of the last build, {} if none or not for this Python."""
    try:
        with open(STAMP, encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    if len(lines) < 2 or lines[0] != STAMP_HEADER or lines[1] != f"abi {EXT_SUFFIX}":
        return {}
    out: dict[str, tuple[str, int, int]] = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            out[parts[0]] = (parts[1], int(parts[2]), int(parts[3]))
    return out


def sha256_file(path: str) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def stale_sources(stamp: dict[str, tuple[str, int, int]]) -> list[str]:
    """The compiled sources whose content differs from the stamp (all of them when there is no stamp)."""
    out = []
    for m in COMPILED:
        r = rel(m)
        want = stamp.get(r)
        if want is None:
            out.append(r)
            continue
        try:
            st = os.stat(source_path(m))
        except OSError:
            out.append(r)
            continue
        if st.st_size != want[1] or (st.st_mtime_ns != want[2] and sha256_file(source_path(m)) != want[0]):
            out.append(r)
    return out


def check() -> tuple[bool, str]:
    """(whether the compiled modules may be used, why not / what is used)."""
    present = [os.path.exists(p) for p in compiled_paths()]
    if not any(present):
        return False, "not built"
    if not all(present):
        return False, "incomplete build"
    stamp = read_stamp()
    if not stamp:
        return False, "no build stamp for this Python"
    stale = stale_sources(stamp)
    if stale:
        return False, f"stale: {', '.join(stale)} changed since the build"
    return True, "compiled (mypyc)"


class _SourceFinder:
    """Loads the compiled group's modules from their .py sources (the .so files beside them are ignored)."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        import importlib.util

        src = source_path(fullname)
        return importlib.util.spec_from_file_location(fullname, src,
                                                      loader=importlib.machinery.SourceFileLoader(fullname, src))


def install() -> None:
    """Called by `import lab`, before any compiled module is imported: decides compiled or pure."""
    if _state["reason"] != "not checked":
        return
    if os.environ.get("TWLAB_PURE", "") not in ("", "0"):
        ok, reason = False, "TWLAB_PURE=1"
    else:
        ok, reason = check()
        building = getattr(sys, "orig_argv", [])[1:3] == ["-m", "lab.build"]
        if not ok and reason != "not built" and not building:
            print(f"twlab: compiled accelerator {reason}; using pure Python (slower): run {BUILD_HINT}",
                  file=sys.stderr)
    _state["active"] = ok
    _state["reason"] = reason
    if not ok:
        finder = _SourceFinder()
        _state["finder"] = finder
        sys.meta_path.insert(0, finder)


def active() -> bool:
    """True when the compiled modules are in use (built, fresh, not TWLAB_PURE=1)."""
    install()
    return bool(_state["active"])


def status() -> str:
    """One line for `twlab doctor`."""
    install()
    return str(_state["reason"])


def doctor_check() -> tuple[bool, str, str]:
    """(ok, detail, fix) for `twlab doctor`."""
    if active():
        return True, "compiled (mypyc): twlab analyze runs native code", ""
    reason = status()
    fix = "unset TWLAB_PURE" if reason == "TWLAB_PURE=1" else f"{BUILD_HINT}; needs gcc and python3-dev"
    return False, f"pure Python, slower ({reason})", fix
