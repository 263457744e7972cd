"""captures/: the reference gallery, one annotated pcapng per experiment made on a real kernel,
with an index (index.json + README.md) that records what the analyzer read in each file, so that a
test can re-analyze the committed files and notice when an analyzer change alters a verdict."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

GALLERY = Path(__file__).resolve().parent.parent / "captures"
MAX_BYTES = 512 * 1024  # keep the repository small: bigger captures are left out with a note


def analyzer_summary(path: Path) -> dict[str, Any]:
    """What the verdicts rest on: close kind, initiator and TIME_WAIT sides per connection, and findings."""
    from lab.core.tracker import analyze
    from lab.pcap.readers import read_segments

    report = analyze(read_segments(path)).to_dict()
    return {
        "connections": [
            {"id": c["id"], "client": c["client"], "server": c["server"], "incarnation": c["incarnation"],
             "close": c["close"]["kind"], "initiator": c["close"]["initiator"],
             "close_frames": c["close"]["frames"],
             "time_wait_sides": sorted(w["side"] for w in c["time_wait"])}
            for c in report["connections"]
        ],
        "findings": sorted([f["kind"], f["frames"]] for f in report["findings"]),
    }


def frames_to_look_at(summary: dict[str, Any], limit: int = 12) -> list[int]:
    frames: list[int] = []
    for c in summary["connections"]:
        frames += c["close_frames"]
    for _, fr in summary["findings"]:
        frames += fr
    return sorted(set(frames))[:limit]


def _run_results(run_dir: Path) -> list[dict[str, Any]]:
    """The run's result.json files; UsageError (one line, exit 2) when `run_dir` is not a run folder."""
    from lab.claims import load_results
    from lab.errors import UsageError

    name = str(run_dir).encode("unicode_escape").decode("ascii")
    if not run_dir.is_dir():
        raise UsageError(f"{name}: not a folder", "pass the folder a 'twlab run' wrote (runs/<timestamp>)")
    results = [r for r in load_results(run_dir) if {"experiment", "claim", "kernel", "reproduced"} <= r.keys()]
    if not results:
        raise UsageError(f"{name}: no experiment results (*/result.json) in this folder",
                         "pass the folder a 'twlab run' wrote (runs/<timestamp>)")
    return results


def read_index(gallery: Path) -> list[dict[str, Any]]:
    """The gallery's current entries (none if there is no readable index yet)."""
    try:
        data = json.loads((gallery / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict) and "experiment" in e] if isinstance(data, list) else []


def _entry(result: dict[str, Any], gallery: Path) -> dict[str, Any]:
    cap = result.get("capture")
    entry: dict[str, Any] = {"experiment": result["experiment"], "claim": result["claim"],
                             "kernel": result["kernel"], "reproduced": result["reproduced"], "file": None}
    if cap and Path(cap).is_file():
        size = Path(cap).stat().st_size
        if size > MAX_BYTES:
            entry["note"] = f"capture is {size // 1024} KiB, above the gallery's {MAX_BYTES // 1024} KiB limit"
        else:
            name = f"{result['experiment']}.pcapng"
            _copy(Path(cap), gallery / name)
            entry["file"] = name
            entry["summary"] = analyzer_summary(gallery / name)
            entry["frames"] = frames_to_look_at(entry["summary"])
    else:
        entry["note"] = "no capture (the experiment moves no TCP traffic, or capture was skipped)"
    return entry


def build(run_dir: Path, gallery: Path = GALLERY) -> list[dict[str, Any]]:
    """Copy each experiment's annotated capture from a run folder into the gallery and merge it into the index:
    the run's experiments replace their entries, the others stay. Returns the entries of this run."""
    results = _run_results(run_dir)
    gallery.mkdir(parents=True, exist_ok=True)
    fresh = [_entry(r, gallery) for r in results]
    merged = {e["experiment"]: e for e in read_index(gallery)}
    merged.update({e["experiment"]: e for e in fresh})
    entries = [merged[k] for k in sorted(merged)]
    _write(gallery / "index.json", json.dumps(entries, indent=2) + "\n")
    _write(gallery / "README.md", render_readme(entries))
    return fresh


def render_readme(entries: list[dict[str, Any]]) -> str:
    lines = [
        "# twlab capture gallery",
        "",
        "One annotated pcapng per experiment, made by `twlab run all` on a real Linux kernel and copied here",
        "by `twlab gallery RUN_DIR`. Open a file in Wireshark: every segment of interest carries a packet",
        "comment (Statistics > Capture File Properties lists them; the display filter `frame.comment` shows",
        "only those). `index.json` records what the analyzer read in each file; tests/unit/test_gallery.py",
        "re-analyzes the files and fails when an analyzer change alters it. Generated file: do not edit.",
        "",
        "| file | experiment | claim | kernel | reproduced | frames to look at |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        file_cell = f"[{e['file']}]({e['file']})" if e.get("file") else f"- ({e.get('note', '')})"
        frames = ", ".join(str(f) for f in e.get("frames", [])) or "-"
        lines.append(f"| {file_cell} | {e['experiment']} | {e['claim']} | {e['kernel']} | "
                     f"{'yes' if e['reproduced'] else 'no'} | {frames} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f"twl-{os.getpid()}-{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f"twl-{os.getpid()}-{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
