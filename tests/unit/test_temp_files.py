"""Temporary files survive no signal: a SIGINT/SIGTERM (here a KeyboardInterrupt) at the worst moment, right
after the file was created and before its creator returned, still leaves nothing behind (CI once found a
spool file left by a SIGTERM that came inside tempfile.mkstemp)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.pcap import writer


@pytest.fixture
def interrupted_after_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """os.open creates the file, then the signal's exception comes before the fd is handed back."""
    real = os.open

    def open_then_signal(name: str, flags: int, mode: int = 0o777, *a: object, **k: object) -> int:
        fd = real(name, flags, mode)
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "open", open_then_signal)
    return tmp_path


@pytest.mark.parametrize("make", [
    lambda d: writer.spool("conns", ".json"),
    lambda d: writer.atomic_write(d / "out.pcapng"),
], ids=["spool", "atomic_write"])
def test_a_signal_right_after_creation_leaves_no_file(interrupted_after_create: Path,
                                                       make: Callable[[Path], object]) -> None:
    d = interrupted_after_create
    with pytest.raises(KeyboardInterrupt), make(d):   # type: ignore[attr-defined]
        pass
    assert list(d.iterdir()) == []


def test_temp_names_carry_the_pid_for_doctor(tmp_path: Path) -> None:
    name = writer.temp_name(f"twl-spool-{os.getpid()}-x-", ".json", tmp_path)
    assert Path(name).parent == tmp_path and Path(name).name.startswith(f"twl-spool-{os.getpid()}-x-")
    fd = writer.open_new(name, os.O_WRONLY)
    os.close(fd)
    assert os.stat(name).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        writer.open_new(name, os.O_WRONLY)     # never opens a file it did not create
