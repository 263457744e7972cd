"""python -m lab.build in a copy of the repository (its tracked and new files, as a fresh git repo): the build
compiles the group, leaves git clean, the compiled modules are the ones imported, TWLAB_PURE=1 and a stale
stamp load every .py source instead, and a failed build says so in one line and leaves no stale build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import accel, build

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import importlib
import lab, lab.accel as a
for m in a.COMPILED:
    importlib.import_module(m)
print(json.dumps({"active": a.active(), "status": a.status(), "shared_lib": any("__mypyc" in m for m in sys.modules),
                  "files": {m: sys.modules[m].__file__ for m in a.COMPILED}}))
"""


def _copy_repo(dst: Path) -> Path:
    """The repo's tracked and not-ignored new files (as in the working tree) in a fresh git repo."""
    ls = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                        capture_output=True, check=False)
    if ls.returncode != 0:
        pytest.skip("not a git checkout: the build test copies the repository's files")
    listed = ls.stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "."], cwd=dst, check=True)   # a throwaway repo of the copy
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], cwd=dst, check=True)
    return dst


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TWLAB_PURE")}
    env.update(extra)
    return env


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=600, check=False)


def _probe(cwd: Path, **env: str) -> tuple[dict[str, object], str]:
    res = _run(cwd, "-c", PROBE, **env)
    assert res.returncode == 0, res.stderr
    info: dict[str, object] = json.loads(res.stdout)
    return info, res.stderr


def _so_files(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*.so"))


def test_without_a_compiler_the_build_says_so_in_one_line(tmp_path: Path) -> None:
    tree = _copy_repo(tmp_path)
    res = _run(tree, "-m", "lab.build", PATH=str(tmp_path / "no-bin"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twlab: accelerator not built (no C compiler"), res.stderr
    assert lines[0].endswith("; pure Python is used, slower")
    assert _so_files(tree) == [] and not (tree / "lab" / ".accel-stamp").exists()
    info, err = _probe(tree)
    assert info["active"] is False and info["status"] == "not built" and err == ""


@pytest.mark.slow
def test_build_compiles_in_place_keeps_git_clean_and_never_goes_stale(tmp_path: Path) -> None:
    why = build._why_not()
    if why:
        pytest.skip(f"cannot compile here: {why}")
    tree = _copy_repo(tmp_path)
    res = _run(tree, "-m", "lab.build")
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("twlab: accelerator built in"), res.stderr

    # git: nothing modified, nothing untracked; what the build made is ignored and sits only in lab/ and build/
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True, check=True)
    assert status.stdout == ""
    ignored = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=tree, capture_output=True,
                             text=True, check=True).stdout.split("\n")
    made = sorted(line[3:] for line in ignored if line.startswith("!! ") and "__pycache__" not in line)
    ext = accel.EXT_SUFFIX
    want = {"lab/.accel-stamp", f"lab/_accel__mypyc{ext}", "build/"} | {
        m.replace(".", "/") + ext for m in accel.COMPILED}
    assert set(made) == want, made

    # the compiled modules are the ones imported
    info, err = _probe(tree)
    assert info["active"] is True and err == ""
    files = info["files"]
    assert isinstance(files, dict)
    assert all(f.endswith(ext) and f.startswith(str(tree)) for f in files.values()), files

    # ... and give the Python reader's results (compiled Analyzer and walk; the copy's own test helpers)
    corpus = sorted(str(p) for p in (ROOT.parent / "shared" / "corpus").glob("*.pcap*"))
    paths = corpus + sorted(str(p) for p in (tree / "captures").glob("*.pcapng"))
    code = ("import json, sys\nfrom tests.unit import test_fastdecode as t\n"
            "print(json.dumps(t.mismatches(json.loads(sys.argv[1]))))")
    res = _run(tree, "-c", code, json.dumps(paths))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.splitlines()[-1]) == []

    # TWLAB_PURE=1: every module of the group from its .py, the shared library never loaded, no warning
    info, err = _probe(tree, TWLAB_PURE="1")
    assert info["active"] is False and info["status"] == "TWLAB_PURE=1" and err == ""
    assert info["shared_lib"] is False
    assert all(str(f).endswith(".py") for f in files_of(info)), info

    # --if-needed with a fresh build does nothing
    so = tree / "lab" / "core" / f"tracker{ext}"
    before = so.stat().st_mtime_ns
    res = _run(tree, "-m", "lab.build", "--if-needed")
    assert res.returncode == 0 and res.stderr == "" and so.stat().st_mtime_ns == before

    # an edited source: pure modules, one warning line saying what to run
    src = tree / "lab" / "core" / "seqnum.py"
    original = src.read_bytes()
    src.write_bytes(original + b"# edited after the build\n")
    info, err = _probe(tree)
    assert info["active"] is False and info["shared_lib"] is False
    assert all(str(f).endswith(".py") for f in files_of(info)), info
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stale" in lines[0] and "lab/core/seqnum.py" in lines[0], err
    assert "python -m lab.build" in lines[0]

    # the same bytes again (new mtime, same content): the hash says fresh
    src.write_bytes(original)
    info, err = _probe(tree)
    assert info["active"] is True and err == ""

    # a build that fails (a type error mypyc refuses) says so in one line and removes the stale build
    fd = tree / "lab" / "pcap" / "fastdecode.py"
    fd.write_text(fd.read_text() + "\n_BROKEN: int = 'not an int'\n")
    res = _run(tree, "-m", "lab.build", "--if-needed")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twlab: accelerator not built (mypyc failed: "), res.stderr
    assert "lab/pcap/fastdecode.py" in lines[0]
    assert _so_files(tree) == []
    info, err = _probe(tree)
    assert info["active"] is False and info["status"] == "not built" and err == ""


def files_of(info: dict[str, object]) -> list[str]:
    files = info["files"]
    assert isinstance(files, dict)
    return [str(f) for f in files.values()]
