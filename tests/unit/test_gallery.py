"""The committed gallery still reads the way its index says: analyzer changes cannot silently
change the verdicts recorded for the reference captures."""

from __future__ import annotations

import json

import pytest

from lab.gallery import GALLERY, analyzer_summary

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
