"""`twlab analyze` on live traffic (issue 14): tcpdump piped into `analyze -`, and `analyze -i lo` with the lab's
own capture, each reporting the loopback connections this test makes (on a port of its own), Ctrl-C ending
cleanly with the summary. Gated on events (tcpdump's "listening on", twlab's "capturing on"), not sleeps."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import loopback_listener, reap

pytestmark = pytest.mark.root
CONNECTIONS = 7


def _connections(srv: socket.socket, n: int = CONNECTIONS) -> None:
    """n connections: handshake, request, reply, the client closes first."""
    port = srv.getsockname()[1]
    for _ in range(n):
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        cli.sendall(b"ping")
        assert conn.recv(10) == b"ping"
        conn.sendall(b"pong")
        assert cli.recv(10) == b"pong"
        cli.close()
        assert conn.recv(10) == b""
        conn.close()


def _wait_for(stream: IO[bytes], text: str, proc: subprocess.Popen[bytes]) -> str:
    seen = []
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} never appeared (exit {proc.poll()}): {''.join(seen)}")


def _count(line: str, what: str) -> int:
    """('tcpdump: 12 packets captured, 13 packets received by filter, ...', 'captured') -> 12."""
    m = re.search(rf"(\d+) packets? {what}", line)
    assert m is not None, line
    return int(m.group(1))


def _until_tcpdump_wrote_all(td: subprocess.Popen[bytes]) -> None:
    """Ask tcpdump for its counts (SIGUSR1) until it has written every packet its filter accepted."""
    assert td.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)   # between polls only: the condition is tcpdump's own count
        td.send_signal(signal.SIGUSR1)
        line = _wait_for(td.stderr, "packets captured", td)   # all three counts on one line
        captured, received = _count(line, "captured"), _count(line, "received by filter")
        if captured * 2 == received > 0:   # on lo the filter sees each packet twice; libpcap keeps one
            return
    raise AssertionError(f"tcpdump wrote {captured} of {received} packets")


def _twlab(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, COLUMNS="160", TERM="dumb")
    return subprocess.Popen([sys.executable, "-m", "lab", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def _ours(conns: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return [c for c in conns if c["server"] == f"127.0.0.1:{port}"]


def test_tcpdump_pipe_into_analyze_jsonl() -> None:
    if not shutil.which("tcpdump"):
        pytest.skip("tcpdump not installed")
    srv = loopback_listener()
    port = srv.getsockname()[1]
    td = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-n", "-w", "-", f"tcp port {port}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert td.stdout is not None and td.stderr is not None
    tw = _twlab("analyze", "-", "--jsonl", stdin=td.stdout)
    td.stdout.close()   # twlab holds the read end now
    try:
        _wait_for(td.stderr, "listening on", td)
        _connections(srv)
        _until_tcpdump_wrote_all(td)
        td.send_signal(signal.SIGTERM)    # tcpdump closes the pipe: the capture ends
        td.wait(30)
        out, err = tw.communicate(timeout=120)
    finally:
        reap(td, tw)
        srv.close()
    assert tw.returncode == 0, err
    lines = [json.loads(x) for x in out.decode().splitlines()]
    conns = [x for x in lines if x["type"] == "connection"]
    assert len(_ours(conns, port)) == CONNECTIONS == len(conns), (out[-600:], err)
    assert all(c["close"]["kind"] in ("three-way", "four-way") and c["close"]["initiator"] == "client"
               for c in conns)
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["file"] == "-" and summary["connections"] == CONNECTIONS
    assert summary["census"]["time_wait"]["sides"]["client"]["peak"] == CONNECTIONS   # none ran out in the run


def test_analyze_interface_for_a_duration_writes_json_and_pcapng(tmp_path: Path) -> None:
    srv = loopback_listener()
    port = srv.getsockname()[1]
    keep = tmp_path / "live.pcapng"
    tw = _twlab("analyze", "-i", "lo", "-f", f"tcp port {port}", "--duration", "5", "--json", "-w", str(keep))
    assert tw.stderr is not None
    try:
        _wait_for(tw.stderr, "capturing on lo", tw)
        _connections(srv)
        out, err = tw.communicate(timeout=120)
    finally:
        reap(tw)
        srv.close()
    assert tw.returncode == 0, err
    doc = json.loads(out)
    assert doc["file"] == "live:lo" and doc["schema"] == 1
    assert len(_ours(doc["connections"], port)) == CONNECTIONS == len(doc["connections"])
    assert "kernel drops 0" in err.decode()
    # the kept capture says the same
    again = subprocess.run([sys.executable, "-m", "lab", "analyze", "--json", str(keep)], capture_output=True,
                           check=True, timeout=120)
    kept = json.loads(again.stdout)
    assert [(c["client"], c["close"]) for c in kept["connections"]] == \
        [(c["client"], c["close"]) for c in doc["connections"]]
    assert kept["packets"] == doc["packets"] > CONNECTIONS * 8


def test_ctrl_c_ends_a_live_analysis_with_its_summary() -> None:
    srv = loopback_listener()
    port = srv.getsockname()[1]
    tw = _twlab("analyze", "-i", "lo", "-f", f"tcp port {port}")
    assert tw.stderr is not None
    try:
        _wait_for(tw.stderr, "capturing on lo", tw)
        _connections(srv, 3)
        tw.send_signal(signal.SIGINT)
        out, err = tw.communicate(timeout=120)
    finally:
        reap(tw)
        srv.close()
    assert tw.returncode == 0, err
    text = out.decode()
    assert "live:lo" in text and "3 connection(s)" in text and "interrupted" in err.decode()
