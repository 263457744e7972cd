"""Mutated captures through analyze / show / annotate / verify, each as a user runs it (a subprocess): no
traceback, no hang (every call has a timeout), every error one line starting 'twlab: ', no partial output file
(annotate writes its file whole or not at all, no temp file left) and analyze --json prints whole lines only.

The mutations are deterministic (seeded): bit flips, truncation, a zeroed or duplicated chunk, garbage appended,
and a packet comment made invalid UTF-8 (a 4-bit flip in the gallery's own delayed-duplicate.pcapng, which once
made verify crash inside pyshark)."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "captures"
SEEDS = ("chrissanders__tcp_teardown.pcapng", "zeek__tcp__fin_retransmission.pcap")
GALLERY_SEEDS = ("delayed-duplicate.pcapng", "lost-final-ack.pcapng")
PER_SEED = 3   # mutations per seed file, drawn from mutants() (the suite's time budget: < 60 s)
TIMEOUT_S = 60
OK_CODES = {0, 1, 2}   # done / verify disagrees / bad input


def _flip_bits(data: bytearray, rng: random.Random, n: int) -> None:
    for _ in range(n):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def mutants(seed: Path, rng: random.Random) -> dict[str, bytes]:
    raw = seed.read_bytes()
    if seed.suffix == ".gz":
        raw = gzip.decompress(raw)
    out: dict[str, bytes] = {}
    flipped = bytearray(raw)
    _flip_bits(flipped, rng, 8)
    out["flip8"] = bytes(flipped)
    header = bytearray(raw)
    _flip_bits(header, random.Random(rng.random()), 1) if len(raw) < 40 else header.__setitem__(
        rng.randrange(8, 40), rng.randrange(256))
    out["header"] = bytes(header)
    out["cut"] = raw[: rng.randrange(1, len(raw))]
    a = rng.randrange(len(raw))
    out["zeroed"] = raw[:a] + bytes(min(64, len(raw) - a)) + raw[a + 64:]
    out["dup"] = raw[:a] + raw[a:a + 100] + raw[a:]
    out["tail"] = raw + bytes(rng.randrange(256) for _ in range(37))
    return out


def bad_utf8_comment(capture: Path) -> bytes:
    """The capture with one byte of its first packet comment given a high nibble: not UTF-8 any more."""
    raw = bytearray(capture.read_bytes())
    for word in (b"TIME_WAIT", b"FIN", b"ACK"):
        i = raw.find(word)
        if i >= 0:
            raw[i + 1] ^= 0xF0
            return bytes(raw)
    pytest.skip(f"{capture.name} has no comment text to corrupt")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> list[Path]:
    d = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(20261130)
    files = []
    seeds = [corpus / s for s in SEEDS] + [CAPTURES / s for s in GALLERY_SEEDS]
    for seed in [s for s in seeds if s.is_file()]:
        for kind, data in rng.sample(sorted(mutants(seed, rng).items()), PER_SEED):
            p = d / f"{seed.stem}.{kind}{seed.suffix}"
            p.write_bytes(data)
            files.append(p)
    if (CAPTURES / "delayed-duplicate.pcapng").is_file():
        p = d / "delayed-duplicate.bad-utf8-comment.pcapng"
        p.write_bytes(bad_utf8_comment(CAPTURES / "delayed-duplicate.pcapng"))
        files.append(p)
    return files


def twlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(cwd)}
    try:
        return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"twlab {' '.join(args)} hung for {TIMEOUT_S} s")


def well_behaved(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.returncode in OK_CODES, (res.returncode, res.stderr)
    for line in res.stderr.splitlines():
        assert line.startswith("twlab: "), res.stderr


def test_analyze_json_prints_whole_lines_or_one_error_per_file(fuzzed: list[Path], tmp_path: Path) -> None:
    res = twlab("analyze", "--json", *map(str, fuzzed), cwd=tmp_path)
    well_behaved(res)
    docs = [json.loads(ln) for ln in res.stdout.splitlines()]       # each line whole JSON
    errors = [e for e in res.stderr.splitlines() if not e.startswith(("twlab: warning:", "twlab: note:"))]
    assert len(docs) + len(errors) == len(fuzzed), res.stderr     # each file: its line or its error, never both
    assert all("connections" in d for d in docs)
    assert not list(tmp_path.glob("twl-spool-*"))


def test_show_and_annotate_never_crash_nor_leave_partial_files(fuzzed: list[Path], tmp_path: Path) -> None:
    written = []
    for f in fuzzed:
        well_behaved(twlab("show", str(f), "--width", "120", cwd=tmp_path))
        out = tmp_path / f"{f.name}.annotated.pcapng"
        res = twlab("annotate", str(f), "-o", str(out), cwd=tmp_path)
        well_behaved(res)
        assert out.exists() == (res.returncode == 0), (f.name, res.stderr)
        written += [str(out)] if out.exists() else []
    assert written, "no mutant was readable at all: the fuzz test would test nothing"
    check = twlab("analyze", "--json", *written, cwd=tmp_path)   # every written file is whole and readable
    assert check.returncode == 0 and len(check.stdout.splitlines()) == len(written), check.stderr
    assert not [p for p in tmp_path.iterdir() if "twl-tmp" in p.name or p.name.startswith("twl-")]


def test_verify_never_crashes(fuzzed: list[Path], tmp_path: Path) -> None:
    if not shutil.which("tshark"):
        pytest.skip("verify needs tshark")
    res = twlab("verify", "--json", *map(str, fuzzed), cwd=tmp_path)
    well_behaved(res)
    for ln in res.stdout.splitlines():
        assert "ok" in json.loads(ln)


def test_a_non_utf8_packet_comment_is_one_line_for_verify(fuzzed: list[Path], tmp_path: Path) -> None:
    if not shutil.which("tshark"):
        pytest.skip("verify needs tshark")
    bad = [f for f in fuzzed if "bad-utf8-comment" in f.name]
    if not bad:
        pytest.skip("no gallery capture")
    res = twlab("verify", str(bad[0]), cwd=tmp_path)
    well_behaved(res)
