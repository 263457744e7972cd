"""`twlab watch` answers the census live (issue 14 item 8): --state, --group-by port|peer, --json, and the totals
stay on screen at 80x24 however many sockets there are."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

N = 30


def _time_waits(n: int = N) -> int:
    """n loopback connections whose clients close first (n client TIME_WAIT sockets); returns the server port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(n)
    port = int(srv.getsockname()[1])
    for _ in range(n):
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        cli.close()
        assert conn.recv(10) == b""   # the client's FIN arrived: the client is in FIN_WAIT_2 -> TIME_WAIT next
        conn.close()
    srv.close()
    return port


def _watch(*args: str, columns: int = 160, lines: int = 50) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS=str(columns), LINES=str(lines), TERM="dumb")
    return subprocess.run([sys.executable, "-m", "lab", "watch", "--once", *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_watch_json_groups_time_wait_by_service_port_and_peer() -> None:
    port = _time_waits()
    r = _watch("--json", "--port", str(port), "--state", "TIME_WAIT", "--group-by", "port")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["kind"] == "watch" and doc["totals"] == {"TIME_WAIT": N}
    assert doc["groups"] == [{"key": str(port), "states": {"TIME_WAIT": N}, "total": N}]
    peer = json.loads(_watch("--json", "--port", str(port), "--group-by", "peer").stdout)
    assert peer["groups"][0]["key"] == "127.0.0.1" and peer["groups"][0]["states"]["TIME_WAIT"] == N
    none = json.loads(_watch("--json", "--port", str(port), "--state", "CLOSE_WAIT").stdout)
    assert none["totals"] == {} and none["sockets"] == []
    assert _watch("--state", "NOT_A_STATE").returncode == 2


def test_totals_stay_visible_at_80x24() -> None:
    port = _time_waits()
    r = _watch("--port", str(port), columns=80, lines=24)
    assert r.returncode == 0, r.stderr
    shown = r.stdout.splitlines()
    assert len(shown) <= 24, r.stdout
    assert any(f"{N} sockets: TIME_WAIT {N}" in line for line in shown[:3]), r.stdout
    assert "more" in r.stdout   # the rows that do not fit are counted, not silently dropped
