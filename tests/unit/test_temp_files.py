"""Temporary files survive no signal: a SIGINT/SIGTERM (here a KeyboardInterrupt) at the worst moment, right
after the file was created and before its creator returned, still leaves nothing behind (CI once found a
spool file left by a SIGTERM that came inside tempfile.mkstemp). Every site makes its file with
lab.pcap.writer.temp_file: analyze's spools, atomic_write, the stdin copy and the filtered copy of the CLI, and
analyze -j's per-file document. A process killed with -9 leaves names `twlab doctor --cleanup` finds by pid."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import cli
from lab.analysis import shard
from lab.pcap import writer
from lab.pcap.filters import SegmentFilter
from lab.pcap.readers import iter_frames
from lab.run import resources

REPO = Path(__file__).resolve().parents[2]
CAPTURE = REPO / "tests" / "data" / "encap" / "vxlan.pcap"   # 4 connections, client ports 40001..40004
PORT = 40001
WAIT_S = 60.0


def _port_filter() -> SegmentFilter:
    return SegmentFilter((PORT,), (), None, None)


def _enter(cm: Any) -> None:
    with cm:
        pass


# each site, run to its end with nothing to do inside: (temp dir) -> None
SITES: dict[str, Callable[[Path], None]] = {
    "spool": lambda d: _enter(writer.spool("conns", ".json")),
    "atomic_write": lambda d: _enter(writer.atomic_write(d / "out.pcapng")),
    "temp_file": lambda d: _enter(writer.temp_file("twl-x-", ".tmp")),
    "stdin copy": lambda d: _enter(cli._seekable(Path("-"))),
    "filtered copy": lambda d: _enter(cli._filtered_copy(CAPTURE, _port_filter())),
    "analyze -j document": lambda d: _enter_kept(shard.analyze_one(CAPTURE, "json", shard.Settings())),
}


def _enter_kept(res: shard.FileResult) -> None:
    shard._remove_spool(res)   # as map_files does once the document was copied out


@pytest.fixture
def stdin_capture(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """stdin holds the capture, as in `twlab show - < vxlan.pcap`."""
    data = CAPTURE.read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return data


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def interrupted_after_create(temp_dir: Path, stdin_capture: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    """os.open creates the file, then the signal's exception comes before the fd is handed back."""
    real = os.open

    def open_then_signal(name: str, flags: int, mode: int = 0o777, *a: object, **k: object) -> int:
        fd = real(name, flags, mode)
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_signal)
    return temp_dir


@pytest.mark.parametrize("site", SITES)
def test_a_signal_right_after_creation_leaves_no_file(interrupted_after_create: Path, site: str) -> None:
    d = interrupted_after_create
    with pytest.raises(KeyboardInterrupt):
        SITES[site](d)
    assert list(d.iterdir()) == []


@pytest.mark.parametrize("site", SITES)
def test_each_site_ends_with_no_file(temp_dir: Path, stdin_capture: bytes, site: str) -> None:
    SITES[site](temp_dir)
    assert [p.name for p in temp_dir.iterdir()] == (["out.pcapng"] if site == "atomic_write" else [])


class Interrupting(io.RawIOBase):
    """A stdin that gives some bytes, then Ctrl-C comes while the copy reads on."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self.reads += 1
        if self.reads > 1:
            raise KeyboardInterrupt
        b[:4] = b"\xd4\xc3\xb2\xa1"
        return 4


def _interrupt(*a: object, **k: object) -> None:
    raise KeyboardInterrupt


def test_a_signal_while_the_stdin_copy_is_written_leaves_no_file(temp_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Interrupting())))
    with pytest.raises(KeyboardInterrupt), cli._seekable(Path("-")):
        pass
    assert list(temp_dir.iterdir()) == []


def test_a_signal_while_the_filtered_copy_is_written_leaves_no_file(temp_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    filt = _port_filter()
    monkeypatch.setattr(filt, "keep", _interrupt)
    with pytest.raises(KeyboardInterrupt), cli._filtered_copy(CAPTURE, filt):
        pass
    assert list(temp_dir.iterdir()) == []


def test_a_signal_while_the_jobs_document_is_written_leaves_no_file(temp_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard.stream, "write_json", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        shard.analyze_one(CAPTURE, "json", shard.Settings())
    assert list(temp_dir.iterdir()) == []


def test_the_stdin_copy_holds_stdin_while_in_use(temp_dir: Path, stdin_capture: bytes) -> None:
    with cli._seekable(Path("-")) as copy:
        assert copy.name.startswith(writer.spool_prefix("input")) and copy.parent == temp_dir
        assert copy.read_bytes() == stdin_capture
    assert not copy.exists()


def test_the_filtered_copy_holds_the_kept_packets_while_in_use(temp_dir: Path) -> None:
    with cli._filtered_copy(CAPTURE, _port_filter()) as copy:
        assert copy.name.startswith(writer.spool_prefix("filtered")) and copy.parent == temp_dir
        kept = list(iter_frames(copy))
    doc = json.loads(subprocess.run([sys.executable, "-m", "lab", "analyze", "--json", "--port", str(PORT),
                                     str(CAPTURE)], capture_output=True, check=True, cwd=REPO).stdout)
    assert len(kept) == sum(c["packets"] for c in doc["connections"]) > 0
    assert not copy.exists()


def test_the_jobs_document_outlives_the_worker_until_copied(temp_dir: Path) -> None:
    res = shard.analyze_one(CAPTURE, "json", shard.Settings())
    assert res.spool is not None and Path(res.spool).name.startswith(writer.spool_prefix("doc"))
    out = io.BytesIO()
    shard.copy_spool(res, out)
    assert json.loads(out.getvalue())["file"] == str(CAPTURE)
    shard._remove_spool(res)
    assert list(temp_dir.iterdir()) == []


def test_temp_file_keeps_only_what_a_clean_block_keeps(tmp_path: Path) -> None:
    with writer.temp_file("twl-x-", ".tmp", tmp_path, keep=True) as (kept, f):
        f.write(b"x")
    assert Path(kept).read_bytes() == b"x"
    with pytest.raises(KeyboardInterrupt), writer.temp_file("twl-y-", ".tmp", tmp_path, keep=True) as (failed, _):
        raise KeyboardInterrupt
    with writer.temp_file("twl-z-", ".tmp", tmp_path) as (gone, f):
        f.write(b"z")
        f.seek(0)
        assert f.read() == b"z"   # a spool is read back
    assert sorted(tmp_path.iterdir()) == [Path(kept)]
    assert not Path(failed).exists() and not Path(gone).exists()


def test_temp_file_is_new_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / "twl-x-0000.tmp"
    taken.write_bytes(b"someone else's")
    monkeypatch.setattr(writer.secrets, "token_hex", lambda n: "0000")
    with pytest.raises(FileExistsError), writer.temp_file("twl-x-", ".tmp", tmp_path):
        pass                                   # never opens a file it did not create ...
    assert taken.read_bytes() == b"someone else's"   # ... nor removes it
    monkeypatch.undo()
    with writer.temp_file("twl-x-", ".tmp", tmp_path) as (name, _):
        assert os.stat(name).st_mode & 0o777 == 0o600


# --- kill -9: the names left behind are the ones doctor --cleanup removes by pid --------------------------------

def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}


# python code that leaves the site's file in place (its `with` entered, never left; cm: not collected)
HOLDERS = {
    "spool": "from lab.pcap.writer import spool\ncm = spool('conns', '.json')\ncm.__enter__()",
    "stdin copy": ("import io, sys\nfrom pathlib import Path\nfrom lab.cli import _seekable\n"
                   "sys.stdin = io.TextIOWrapper(io.BytesIO(b'x'))\ncm = _seekable(Path('-'))\ncm.__enter__()"),
    "filtered copy": ("from pathlib import Path\nfrom lab.cli import _filtered_copy\n"
                      "from lab.pcap.filters import SegmentFilter\n"
                      f"cm = _filtered_copy(Path({str(CAPTURE)!r}), SegmentFilter(({PORT},), (), None, None))\n"
                      "cm.__enter__()"),
    "analyze -j document": ("from pathlib import Path\nfrom lab.analysis import shard\n"
                            f"shard.analyze_one(Path({str(CAPTURE)!r}), 'json', shard.Settings())"),
}


def _stale_in(folder: Path) -> list[Path]:
    """doctor's list of dead processes' temp files (its ledger folder is shared with other runs: not looked at)."""
    return sorted(p for p in resources.stale_temp_files() if p.parent == folder)


def _killed_holder(tmp: Path, code: str) -> None:
    p = subprocess.run([sys.executable, "-c", code + "\nimport os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                       capture_output=True, text=True, env=_env(tmp), timeout=WAIT_S, cwd=REPO)
    assert p.returncode == -signal.SIGKILL, p.stderr


def test_files_of_killed_processes_are_found_by_doctor(temp_dir: Path) -> None:
    for code in HOLDERS.values():
        _killed_holder(temp_dir, code)
    left = sorted(temp_dir.iterdir())
    assert len(left) == len(HOLDERS), left
    live = temp_dir / f"{writer.spool_prefix('input')}0.cap"   # this test's own pid: alive, so kept
    live.write_bytes(b"x")
    assert _stale_in(temp_dir) == left   # what doctor lists and --cleanup removes


@pytest.fixture
def held_stdin(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`twlab show -` whose stdin pipe stays open: the copy of stdin exists and is still being written."""
    d = tmp_path / "tmp"
    d.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "lab", "show", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(d), cwd=REPO)
    try:
        assert p.stdin is not None
        p.stdin.write(CAPTURE.read_bytes()[:100])
        p.stdin.flush()
        deadline = time.monotonic() + WAIT_S
        while not list(d.glob("twl-spool-*-input-*")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)                   # the event: the copy of stdin exists
        assert p.poll() is None and list(d.glob(f"twl-spool-{p.pid}-input-*.cap")), "no stdin copy seen"
        yield p, d
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=WAIT_S)


def test_sigterm_during_the_stdin_copy_removes_it(held_stdin: tuple[subprocess.Popen[bytes], Path]) -> None:
    p, d = held_stdin
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=WAIT_S)
    assert p.returncode == 143, err
    assert list(d.iterdir()) == []


def test_sigkill_during_the_stdin_copy_leaves_what_doctor_finds(held_stdin: tuple[subprocess.Popen[bytes], Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    p, d = held_stdin
    p.kill()
    p.communicate(timeout=WAIT_S)
    left = list(d.iterdir())
    assert len(left) == 1
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    assert _stale_in(d) == left


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_kill_9_of_analyze_jobs_ends_its_workers_and_their_spools(tmp_path: Path, corpus: Path) -> None:
    """The parent cannot stop its workers when killed with -9; they must not wait forever on the pool's queue,
    holding their spools under a live pid (which doctor --cleanup then leaves alone)."""
    d = tmp_path / "tmp"
    d.mkdir()
    big = corpus / "zeek__echo-connections.pcap.gz"   # a 300 kB document: the parent blocks on the unread stdout
    p = subprocess.Popen([sys.executable, "-m", "lab", "analyze", "-j", "2", "--json", *[str(big)] * 4],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(d), cwd=REPO,
                         start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + WAIT_S
        while not list(d.glob("twl-spool-*-doc-*")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)                   # the event: a worker has finished a document
        workers = {int(f.name.split("-")[2]) for f in d.glob("twl-spool-*")}
        assert p.poll() is None and workers, "no worker document seen"
        p.kill()
        p.wait(timeout=WAIT_S)                 # not communicate: the workers hold its stdout open
        while any(map(_running, workers)) and time.monotonic() < deadline + WAIT_S:
            time.sleep(0.01)                   # the event: the workers are gone
        assert not any(map(_running, workers)), "workers outlived their parent"
        assert list(d.iterdir()) == []
    finally:
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.wait(timeout=WAIT_S)
        for pipe in (p.stdout, p.stderr):
            assert pipe is not None
            pipe.close()
