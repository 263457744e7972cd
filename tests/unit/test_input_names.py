"""What the user reads names the input they gave, never the temporary copy the lab reads instead: a capture
from stdin or a pipe is copied to twl-spool-<pid>-input-* for the commands that read it twice (show, annotate,
verify), and a filtered one to twl-spool-<pid>-filtered-*; their warnings, errors, titles and verify's "file"
said the copy's /tmp path before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CAPTURE = REPO / "captures" / "four-way-close.pcapng"


def twlab_stdin(data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "lab", *args], input=data, capture_output=True, cwd=REPO,
                          timeout=120)


def cut(data: bytes) -> bytes:
    return data[:len(data) * 2 // 3]      # the last record cut short: a warning naming the input


def assert_names_the_input(res: subprocess.CompletedProcess[bytes]) -> str:
    text = res.stdout.decode() + res.stderr.decode()
    assert "twl-spool" not in text and "/tmp/" not in text, text
    return text


def test_a_cut_capture_on_stdin_is_warned_about_as_stdin() -> None:
    res = twlab_stdin(cut(CAPTURE.read_bytes()), "show", "-")
    assert res.returncode == 0, res.stderr
    assert "twlab: warning: -: " in assert_names_the_input(res), res.stderr


def test_annotate_refuses_a_cut_capture_on_stdin_naming_stdin(tmp_path: Path) -> None:
    res = twlab_stdin(cut(CAPTURE.read_bytes()), "annotate", "-", "-o", str(tmp_path / "out.pcapng"))
    assert res.returncode == 2, res.stderr      # the copy needs every packet
    assert assert_names_the_input(res).startswith("twlab: -: "), res.stderr
    assert not (tmp_path / "out.pcapng").exists()


def test_show_titles_the_ladder_with_the_input_given() -> None:
    res = twlab_stdin(CAPTURE.read_bytes(), "show", "-")
    assert res.returncode == 0, res.stderr
    assert assert_names_the_input(res).splitlines()[0].startswith("-  connection "), res.stdout


def test_garbage_on_stdin_is_one_line_naming_stdin(tmp_path: Path) -> None:
    res = twlab_stdin(b"garbage\n" * 10, "annotate", "-", "-o", str(tmp_path / "out.pcapng"))
    assert res.returncode == 2
    assert assert_names_the_input(res).startswith("twlab: -: not a pcap or pcapng file"), res.stderr
    assert not (tmp_path / "out.pcapng").exists()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="verify needs tshark")
@pytest.mark.parametrize("extra", [(), ("--port", "5000")])
def test_verify_reports_the_input_given(extra: tuple[str, ...]) -> None:
    res = twlab_stdin(CAPTURE.read_bytes(), "verify", "--json", *extra, "-")
    assert res.returncode in (0, 1), res.stderr
    assert_names_the_input(res)
    assert json.loads(res.stdout)["file"] == "-"
