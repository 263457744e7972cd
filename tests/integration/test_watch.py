"""twlab watch shows a real TIME_WAIT socket with its remaining timer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time


def _time_wait_on_lo() -> int:
    """A real loopback connection whose client closes first; returns the client's port (in TIME_WAIT)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    cport = cli.getsockname()[1]
    cli.close()
    assert conn.recv(10) == b""
    conn.close()
    srv.close()
    time.sleep(0.1)
    return int(cport)


def test_watch_once_lists_the_time_wait_socket() -> None:
    port = _time_wait_on_lo()
    out = subprocess.run([sys.executable, "-m", "lab", "watch", "--once", "--port", str(port)],
                         capture_output=True, text=True, timeout=60, env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "TIME_WAIT" in out.stdout and str(port) in out.stdout
    assert "timewait" in out.stdout  # the timer kind from sock_diag


def test_watch_once_on_an_unused_port_lists_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "lab", "watch", "--once", "--port", str(port)],
                         capture_output=True, text=True, timeout=60, env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "no sockets" in out.stdout and "timewait" not in out.stdout
