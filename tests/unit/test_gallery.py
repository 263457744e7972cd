"""The committed gallery still reads the way its index says: analyzer changes cannot silently
change the verdicts recorded for the reference captures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.gallery import GALLERY, analyzer_summary, build

INDEX = GALLERY / "index.json"
ENTRIES = json.loads(INDEX.read_text()) if INDEX.is_file() else []


def test_gallery_has_an_index_and_files() -> None:
    if not INDEX.is_file():
        pytest.skip("captures/index.json not generated yet (twlab gallery RUN_DIR)")
    with_files = [e for e in ENTRIES if e.get("file")]
    assert with_files, "the gallery index lists no capture"
    for e in with_files:
        assert (GALLERY / e["file"]).is_file(), e["file"]
    assert (GALLERY / "README.md").is_file()


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.get("file")], ids=lambda e: e["experiment"])
def test_reanalysis_matches_index(entry: dict) -> None:
    assert entry["reproduced"], f"{entry['experiment']} was not reproduced when the gallery was made"
    assert analyzer_summary(GALLERY / entry["file"]) == entry["summary"]


def _fake_run(tmp_path: Path, *exps: str) -> Path:
    run = tmp_path / "run"
    for exp in exps:
        (run / exp).mkdir(parents=True)
        cap = run / exp / f"{exp}.pcapng"
        shutil.copyfile(GALLERY / "four-way-close.pcapng", cap)
        (run / exp / "result.json").write_text(json.dumps(
            {"experiment": exp, "claim": f"claim of {exp}", "kernel": "k", "reproduced": True,
             "capture": str(cap)}))
    return run


def test_gallery_merges_a_run_into_the_existing_index(tmp_path: Path) -> None:
    if not (GALLERY / "four-way-close.pcapng").is_file():
        pytest.skip("no gallery capture to copy")
    gal = tmp_path / "gallery"
    build(_fake_run(tmp_path / "a", "x-one", "x-two", "x-three"), gal)
    fresh = build(_fake_run(tmp_path / "b", "x-two"), gal)
    index = json.loads((gal / "index.json").read_text())
    assert [e["experiment"] for e in fresh] == ["x-two"]
    assert [e["experiment"] for e in index] == ["x-one", "x-three", "x-two"]
    assert (gal / "README.md").read_text().count("| [x-") == 3
    assert not list(gal.glob("*.tmp"))


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_gallery_refuses_a_folder_that_is_not_a_run(tmp_path: Path, make: str) -> None:
    target = tmp_path / "not\na run"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    gal = tmp_path / "gallery"
    out = subprocess.run([sys.executable, "-m", "lab", "gallery", str(target), "--into", str(gal)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("twlab: ")
    assert not gal.exists()
