"""`twlab show` fits: every column (frame, time, both sides' states, the arrow) at 80 columns and narrower,
the natural width when stdout is not a terminal, the terminal's width when it is one (a real pty)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from lab.pcap.readers import read_segments

ROOT = Path(__file__).resolve().parents[2]
LOST_FINAL_ACK = ROOT / "captures" / "lost-final-ack.pcapng"
FRAMES = [s.frame for s in read_segments(LOST_FINAL_ACK)]
ROW = re.compile(r"^\s*(\d+) \d+\.\d{6} ")
ENV = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}


def show(*args: str, env: dict[str, str] = ENV) -> str:
    res = subprocess.run([sys.executable, "-m", "lab", "show", str(LOST_FINAL_ACK), *args], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def rows(out: str) -> dict[int, tuple[str, str]]:
    """frame -> (client state, the server column of its line and the next) of each segment row; the columns
    are where the header puts them."""
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("frame") and "server" in line)
    client_end, server_at = header.index("client") + len("client"), header.index("server")
    found = {}
    for i, line in enumerate(lines):
        m = ROW.match(line)
        if m:
            server = " ".join(x[server_at:].strip() for x in lines[i:i + 2])
            found[int(m.group(1))] = (line[:client_end].split()[-1], server)
    return found


def check_complete(out: str) -> None:
    got = rows(out)
    assert sorted(got) == FRAMES                        # every segment with its frame number
    assert got[9][0] == "FIN_WAIT_2"
    assert re.match(r"CLOSE_WAIT →\s+(\S+\s+)?LAST_ACK", got[9][1])   # a chain may wrap at its arrow, never cut
    assert got[10][0] == "TIME_WAIT" and got[10][1].startswith("LAST_ACK")
    assert got[12][0] == "TIME_WAIT" and got[12][1].startswith("CLOSED")
    assert "LAST_ACK" in out and "TIME_WAIT 60 s (client)" in out
    assert "final-ack-lost" in out and "…" not in out


@pytest.mark.parametrize("width", [60, 72, 80, 100, 132])
def test_fits_the_width_it_is_given(width: int) -> None:
    out = show("--width", str(width))
    assert max(len(line) for line in out.splitlines()) <= width
    check_complete(out)


def test_piped_is_the_natural_width() -> None:
    out = show()       # stdout is a pipe: COLUMNS=80 does not narrow it
    check_complete(out)
    note = next(line for line in out.splitlines() if line.lstrip().startswith("12 "))
    assert note.rstrip().endswith("re-ACK of the retransmitted FIN from TIME_WAIT")   # notes beside their row
    assert max(len(line) for line in out.splitlines()) > 80


def test_a_terminal_gets_its_own_width() -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    env = {k: v for k, v in ENV.items() if k != "COLUMNS"}
    env["TERM"] = "xterm"
    proc = subprocess.Popen([sys.executable, "-m", "lab", "show", str(LOST_FINAL_ACK)], stdout=follower,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:     # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")
    assert max(len(line) for line in out.splitlines()) <= 80
    check_complete(out)
