"""`python -m lab.build [--if-needed]`: compile the hot modules (lab.accel.COMPILED) with mypyc, in place.

The sources are snapshotted into a temporary directory and compiled there as one mypyc group (setuptools
runs with that directory as cwd, so the repo's pyproject.toml is not parsed by an old setuptools); then the
extension files are moved beside their .py files and the stamp (lab/.accel-stamp: hash, size and mtime
of each compiled source as compiled) is written, which `import lab` checks so a stale build never shadows
an edited source. Optional by design: when the compiler, the Python headers or mypyc are missing, or the
build fails, one line says so, the .py sources are used (slower), and the exit status is 1 (setup.sh
ignores it).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from lab import accel

_SETUP = f"""
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="twlab-accel", ext_modules=mypycify(sys.argv[1:], opt_level="3", group_name={accel.GROUP!r},
                                               target_dir="c"),
      script_args=["build_ext", "--inplace", "--build-temp", "obj"])
"""

_CHECK = """
import sys, lab, lab.core.tracker as t, lab.pcap.fastdecode as f
ok = lab.accel.active() and t.__file__.endswith(lab.accel.EXT_SUFFIX) and f.__file__.endswith(lab.accel.EXT_SUFFIX)
sys.exit(0 if ok else 1)
"""


class BuildFailed(Exception):
    pass


def _why_not() -> str | None:
    """What is missing for a build, or None."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}): apt-get install -y gcc"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers in {include}: apt-get install -y python3-dev"
    for mod, pkg in (("mypyc", "mypy"), ("setuptools", "setuptools")):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed: pip install {pkg} (or: pip install -e '.[accel]')"
    return None


def _snapshot(dst: Path) -> dict[str, tuple[str, int, int]]:
    """Copy lab/**/*.py (what mypy needs to type-check the group) into dst/lab; stamp data of the group."""
    root = Path(accel.ROOT)
    for py in (root / "lab").rglob("*.py"):
        target = dst / py.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(py, target)
    stamp: dict[str, tuple[str, int, int]] = {}
    for m in accel.COMPILED:
        path = accel.source_path(m)
        st = os.stat(path)
        data = Path(path).read_bytes()
        (dst / accel.rel(m)).write_bytes(data)   # exactly the bytes hashed below
        stamp[accel.rel(m)] = (hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime_ns)
        if len(data) != st.st_size:   # changed while we read it: the mtime check would not see it
            stamp[accel.rel(m)] = (stamp[accel.rel(m)][0], -1, -1)
    return stamp


def _write_stamp(stamp: dict[str, tuple[str, int, int]]) -> None:
    lines = [accel.STAMP_HEADER, f"abi {accel.EXT_SUFFIX}"]
    lines += [f"{r} {h} {size} {mtime}" for r, (h, size, mtime) in sorted(stamp.items())]
    tmp = f"{accel.STAMP}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, accel.STAMP)


def _remove_build() -> None:
    for p in [accel.STAMP, *accel.compiled_paths()]:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _compile(tmp: Path, verbose: bool) -> None:
    src = tmp / "src"
    work = tmp / "work"
    for m in accel.COMPILED:   # build_ext --inplace writes into these but does not create them
        (work / accel.rel(m)).parent.mkdir(parents=True, exist_ok=True)
    stamp = _snapshot(src)
    paths = [str(src / accel.rel(m)) for m in accel.COMPILED]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MYPY_CACHE_DIR=str(tmp / "mypy-cache"))
    env.pop("PYTHONPATH", None)
    res = subprocess.run([sys.executable, "-c", _SETUP, *paths], cwd=work, env=env,
                         stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        out = res.stdout or ""
        errors = [ln for ln in out.splitlines() if ": error:" in ln or ln.startswith("error")]
        if not verbose:
            log = Path(accel.ROOT) / "build" / "accel-build.log"
            try:
                log.parent.mkdir(exist_ok=True)
                log.write_text(out)
                where = f"; full log: {log.relative_to(accel.ROOT)}"
            except OSError:
                where = ""
        else:
            where = ""
        first = errors[0].replace(str(src) + "/", "") if errors else f"exit status {res.returncode}"
        raise BuildFailed(f"mypyc failed: {first}{where}")
    made = [work / Path(p).relative_to(accel.ROOT) for p in accel.compiled_paths()]
    missing = [str(p.relative_to(work)) for p in made if not p.exists()]
    if missing:
        raise BuildFailed(f"mypyc did not produce {', '.join(missing)}")
    _remove_build()   # no window where new .so files meet an old stamp
    for built, dest in zip(made, accel.compiled_paths(), strict=True):
        part = f"{dest}.tmp{os.getpid()}"
        shutil.copyfile(built, part)
        os.chmod(part, 0o755)
        os.replace(part, dest)
    _write_stamp(stamp)


def build(verbose: bool = False) -> None:
    """Compile the group in place; raises BuildFailed with a one-line reason (nothing left half-built)."""
    why = _why_not()
    if why:
        raise BuildFailed(why)
    lock_dir = Path(accel.ROOT) / "build"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / "accel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two set-ups at once: one builds after the other
        with tempfile.TemporaryDirectory(prefix="twlab-accel-") as tmp:
            try:
                _compile(Path(tmp), verbose)
            except BuildFailed:
                raise
            except (OSError, subprocess.SubprocessError) as exc:
                raise BuildFailed(f"{type(exc).__name__}: {exc}") from None
        env = dict(os.environ)
        env.pop("TWLAB_PURE", None)
        res = subprocess.run([sys.executable, "-c", _CHECK], cwd=accel.ROOT, env=env, capture_output=True,
                             text=True)
        if res.returncode != 0:
            _remove_build()
            tail = (res.stderr.strip().splitlines() or ["the compiled modules did not load"])[-1]
            raise BuildFailed(f"built, but it does not load: {tail}")


def up_to_date() -> bool:
    return accel.check()[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.build", description=__doc__.splitlines()[0])
    ap.add_argument("--if-needed", action="store_true", help="do nothing when the build is up to date")
    ap.add_argument("--clean", action="store_true", help="remove the compiled files and the stamp")
    ap.add_argument("-v", "--verbose", action="store_true", help="show mypyc's and the compiler's output")
    args = ap.parse_args(argv)
    if args.clean:
        _remove_build()
        print("twlab: accelerator removed; pure Python is used")
        return 0
    if args.if_needed and up_to_date():
        return 0
    t0 = time.monotonic()
    try:
        build(args.verbose)
    except BuildFailed as exc:
        if not accel.check()[0]:
            _remove_build()   # a stale build would only warn on every import
        print(f"twlab: accelerator not built ({exc}); pure Python is used, slower", file=sys.stderr)
        return 1
    print(f"twlab: accelerator built in {time.monotonic() - t0:.0f} s ({len(accel.COMPILED)} modules, mypyc)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
