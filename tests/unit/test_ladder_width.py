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

from lab.core.narrate import LadderRow, ladder_rows
from lab.pcap.annotate import capture_t0
from lab.pcap.readers import read_segments

ROOT = Path(__file__).resolve().parents[2]
LOST_FINAL_ACK = ROOT / "captures" / "lost-final-ack.pcapng"
ROW = re.compile(r"^\s*(\d+) \d+\.\d{6} ")
ENV = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}


def narrator_rows() -> list[LadderRow]:
    """What the ladder must show: the narrator's rows of the capture's one connection."""
    from lab.core.tracker import analyze

    segs = list(read_segments(LOST_FINAL_ACK))
    (conn,) = analyze(iter(segs)).connections
    return ladder_rows(conn, segs, capture_t0(LOST_FINAL_ACK))


def show(*args: str, env: dict[str, str] = ENV) -> str:
    res = subprocess.run([sys.executable, "-m", "lab", "show", str(LOST_FINAL_ACK), *args], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def cells(out: str) -> dict[int, tuple[str, str]]:
    """frame -> (the client column's text, the server column's text) over the row's lines; the columns are
    where the header puts them."""
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("frame") and "server" in line)
    client_end, server_at = header.index("client") + len("client"), header.index("server")
    starts = [i for i, line in enumerate(lines) if ROW.match(line)]
    found = {}
    for n, i in enumerate(starts):
        block = lines[i:starts[n + 1] if n + 1 < len(starts) else i + 2]
        client = " ".join(ROW.sub("", x[:client_end]) if j == 0 else x[:client_end] for j, x in enumerate(block))
        found[int(ROW.match(lines[i]).group(1))] = (client, " ".join(x[server_at:] for x in block))  # type: ignore[union-attr]
    return found


def shows(chain: list[str], text: str) -> bool:
    """Every state of the chain, in order, whole (a chain may wrap at its arrows)."""
    return re.search(r"(?<![A-Z_])" + r".*?".join(re.escape(s) for s in chain), " ".join(text.split())) is not None


def check_complete(out: str) -> None:
    got = cells(out)
    rows = narrator_rows()
    assert sorted(got) == [r.frame for r in rows]        # every segment with its frame number
    for r in rows:
        for side, text in zip(("client", "server"), got[r.frame], strict=True):
            assert shows(list(r.passed(side)) or [r.state(side)], text), (r.frame, side, text)
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
    last = narrator_rows()[-1]
    line = next(x for x in out.splitlines() if x.lstrip().startswith(f"{last.frame} "))
    assert line.rstrip().endswith(", ".join(last.notes))   # notes beside their row
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


def test_analyze_tables_keep_endpoints_whole_at_80_columns() -> None:
    """`analyze` for people at 80 columns: every connection's endpoints whole, nothing cut to '…'."""
    import json

    cap = ROOT / "captures" / "ephemeral-exhaustion.pcapng"
    run = [sys.executable, "-m", "lab", "analyze", str(cap)]
    doc = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, cwd=ROOT, check=True,
                                    timeout=60).stdout)
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, env=ENV, check=True, timeout=60).stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines() if re.match(r"^\s*\d+ \S+:\d+ ", line)}
    assert len(rows) == len(doc["connections"])
    for c in doc["connections"]:
        assert rows[str(c["id"])] == [c["client"], c["server"]]
