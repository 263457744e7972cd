"""captures/: the reference gallery, one annotated pcapng per experiment made on a real kernel,
with an index (index.json + README.md) that records what the analyzer read in each file, so that a
test can re-analyze the committed files and notice when an analyzer change alters a verdict."""

from __future__ import annotations

import json
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


def build(run_dir: Path, gallery: Path = GALLERY) -> list[dict[str, Any]]:
    """Copy each experiment's annotated capture from a run folder into the gallery and index it."""
    gallery.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for result_path in sorted(run_dir.glob("*/result.json")):
        result = json.loads(result_path.read_text(encoding="utf-8"))
        cap = result.get("capture")
        entry: dict[str, Any] = {"experiment": result["experiment"], "claim": result["claim"],
                                 "kernel": result["kernel"], "reproduced": result["reproduced"], "file": None}
        if cap and Path(cap).is_file():
            size = Path(cap).stat().st_size
            if size > MAX_BYTES:
                entry["note"] = f"capture is {size // 1024} KiB, above the gallery's {MAX_BYTES // 1024} KiB limit"
            else:
                name = f"{result['experiment']}.pcapng"
                tmp = gallery / f".{name}.tmp"
                shutil.copyfile(cap, tmp)
                tmp.replace(gallery / name)
                entry["file"] = name
                entry["summary"] = analyzer_summary(gallery / name)
                entry["frames"] = frames_to_look_at(entry["summary"])
        else:
            entry["note"] = "no capture (the experiment moves no TCP traffic, or capture was skipped)"
        entries.append(entry)
    _write(gallery / "index.json", json.dumps(entries, indent=2) + "\n")
    _write(gallery / "README.md", render_readme(entries))
    return entries


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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
