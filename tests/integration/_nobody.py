"""Run a Python snippet or `python -m lab` as the unprivileged user 'nobody' (tests that check the non-root path).

The venv's interpreter may live under /root (mode 0700), which nobody cannot execute; then a system
interpreter of the same minor version is used with the venv's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _nobody() -> tuple[int, int]:
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def _drop() -> None:
    uid, gid = _nobody()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV"))}
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["HOME"] = "/tmp"
    return env


def interpreter() -> str:
    """A Python that 'nobody' can run and that imports the lab; skips the test when there is none."""
    if os.geteuid() != 0:
        pytest.skip("dropping to 'nobody' needs root")
    want = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (sys.executable, f"/usr/bin/{want}", f"/usr/local/bin/{want}"):
        if not Path(cand).exists():
            continue
        try:
            probe = subprocess.run([cand, "-c", "import lab, scapy, pyroute2, click, rich"], env=_env(),
                                   preexec_fn=_drop, capture_output=True, cwd="/tmp")
        except OSError:  # e.g. below /root (0700)
            continue
        if probe.returncode == 0:
            return cand
    pytest.skip(f"no {want} interpreter that the user 'nobody' may execute")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A folder under /tmp that nobody can write (pytest's tmp_path sits below a 0700 folder); removed after."""
    d = Path(tempfile.mkdtemp(prefix="twltest-nobody-", dir="/tmp"))
    uid, gid = _nobody()
    os.chown(d, uid, gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `<python> args...` as nobody in cwd (a workdir())."""
    py = interpreter()
    return subprocess.run([py, *args], env=_env(), preexec_fn=_drop, capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
