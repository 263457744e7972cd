"""The wave-2 failure cases (issue 17) on the real kernel, with the real nginx and curl where they apply: each test
asserts the kernel's (and nginx's) evidence - errnos, sock_diag states and censuses, counters, conntrack entries,
nginx's error-log line - not only `reproduced`. Plus `run --set` and `list --json`'s knobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import experiments
from lab.kernel.nginx import binary as nginx_binary
from lab.run.runner import run_one
from tests.unit.test_narrator import story_problems

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
needs_nginx = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (bash setup.sh installs it)")


def _run(name: str, tmp_path: Path) -> dict[str, Any]:
    [exp] = experiments.get([name])
    res = run_one(exp, tmp_path)
    assert res["error"] is None, res["error"]
    assert res["status"] == "reproduced", res["story"]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"twl{res['run_id']}" not in left, "namespaces left behind"
    if res["capture"]:
        assert story_problems(Path(res["capture"])) == []
    return res


def _events(res: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(res["capture"] or "").parent / "events.jsonl" if res["capture"] else None
    assert path is not None and path.exists()
    return [json.loads(line) for line in path.read_text().splitlines()]


def _comments(path: str) -> list[str]:
    out = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _no_lab_pids_alive(res: dict[str, Any]) -> None:
    """Every nginx and upstream program the run started is gone (stopped by pid)."""
    pids = [e["pid"] for e in _events(res) if e["kind"] in ("nginx", "upstream-app") and e.get("action") == "start"]
    assert pids
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "nginx" not in Path(f"/proc/{pid}/cmdline").read_text(), pid


def test_close_wait_pileup(tmp_path: Path) -> None:
    res = _run("close-wait-pileup", tmp_path)
    o = res["observations"]
    assert o["close_wait_peak"] == 5 and o["fin_wait_2_peak"] == 5
    assert o["server_after_reap"] == {"CLOSE_WAIT": 5}          # nothing times CLOSE_WAIT out
    assert 0.8 * 3 <= o["reaped_after_s"] < 3 + 5                # tcp_fin_timeout=3 in the peer's namespace
    assert o["hosts"]["client"]["sysctls"]["net.ipv4.tcp_fin_timeout"] == "3"
    rows = o["census"]
    assert rows[0]["client"] == {"FIN_WAIT_2": 5} and rows[0]["server"] == {"CLOSE_WAIT": 5}
    assert [r for r in rows if r["client"] == {} and r["server"] == {"CLOSE_WAIT": 5}], "the census shows the reap"
    assert o["late_fins"] == 5 and o["rsts_to_late_fins"] == 5 and o["counters_client"]["TcpOutRsts"] >= 5
    assert any("never calls close()" in c for c in _comments(res["capture"]))


def test_bind_before_connect(tmp_path: Path) -> None:
    res = _run("bind-before-connect", tmp_path)
    a, b, c = (res["observations"]["cases"][k] for k in "ABC")
    assert a["connected"] == 30 and a["kernel_established"] == 30 and a["local_ports"] == 10
    assert a["max_destinations_per_port"] == 3                  # connect() shares a port across destinations
    assert b["connected"] == 10 and b["first_bind_failure"] == {"n": 11, "errno": "EADDRINUSE"}
    assert b["max_destinations_per_port"] == 1
    assert c["connected"] == 30 and c["local_ports"] == 10 and c["errnos"] == []


def test_time_wait_bucket_overflow(tmp_path: Path) -> None:
    res = _run("time-wait-bucket-overflow", tmp_path)
    o = res["observations"]
    assert o["time_wait_count"] == 5 and o["census_client"] == {"TIME_WAIT": 5}
    assert o["time_wait_ports"] == sorted(o["client_ports"][:5])   # the first five closes kept theirs
    assert o["counters_client"]["TcpExtTCPTimeWaitOverflow"] == 12 - 5
    assert o["rsts"] == 0


def test_tcp_tw_recycle_is_gone(tmp_path: Path) -> None:
    res = _run("tcp-tw-recycle", tmp_path)
    assert res["observations"]["sysctl_present"] is False
    assert not Path("/proc/sys/net/ipv4/tcp_tw_recycle").exists()
    assert res["capture"] is None and res["observations"]["explain_only"] is True


@needs_nginx
def test_http_close_side(tmp_path: Path) -> None:
    res = _run("http-close-side", tmp_path)
    a, b = res["observations"]["cases"]["A"], res["observations"]["cases"]["B"]
    assert a["first_fin_from"] == "server" and a["time_wait"]["client"] is None
    assert a["time_wait"]["server"]["local"].endswith(":8080")   # on the server's own port
    assert b["first_fin_from"] == "client" and b["time_wait"]["server"] is None
    assert b["time_wait"]["client"]["remote"].endswith(":8080")
    access = Path(res["observations"]["nginx"]["dir"], "access.log").read_text()
    assert '"GET /case-A HTTP/1.0" 200' in access and '"GET /case-B HTTP/1.1" 200' in access
    _no_lab_pids_alive(res)


@needs_nginx
def test_proxy_port_exhaustion(tmp_path: Path) -> None:
    res = _run("proxy-port-exhaustion", tmp_path)
    o = res["observations"]
    a, b = o["cases"]["A"], o["cases"]["B"]
    assert a["statuses"] == {"200": 20, "502": 40} and a["first_failure_at"] == 21
    assert a["proxy_census"] == {"TIME_WAIT": 20}
    log = Path(o["nginx"]["proxy_dir"], "error.log").read_text()
    lines = [ln for ln in log.splitlines()
             if "failed (99: Cannot assign requested address) while connecting to upstream" in ln and ":8081/" in ln]
    assert len(lines) == a["nginx_eaddrnotavail_lines"] == 40
    assert b["statuses"] == {"200": 60} and b["nginx_eaddrnotavail_lines"] == 0
    assert b["proxy_census"].get("TIME_WAIT", 0) == 0 and b["proxy_census"].get("ESTABLISHED", 0) >= 1
    assert o["forecast_sustainable_rate_per_s"] == round(20 / 60, 3) and o["load_rate_per_s"] > 1
    _no_lab_pids_alive(res)


def test_challenge_ack(tmp_path: Path) -> None:
    res = _run("challenge-ack", tmp_path)
    o = res["observations"]
    assert o["challenge_ack"]["flags"] == "." and o["client_rst"]["seq"] == o["challenge_ack"]["ack"]
    assert o["server_counters"]["TcpExtTCPChallengeACK"] >= 1 and o["client_out_rsts"] >= 1
    assert o["analyzer_stale_peer_ack"] >= 1                       # the analyzer names it
    # connect() cannot return before the retransmitted SYN (a clean first connect may include ARP: not compared)
    assert o["syn_retransmit_after_ms"] is not None and o["stale_connect_ms"] >= o["syn_retransmit_after_ms"] - 1
    b = o["cases"]["B"]                                             # the server held it in LAST_ACK
    assert b["held"] == "LAST_ACK" and b["drops"]["final_ack_dropped"] == 1 and b["drops"]["first_fin_passed"] == 1
    assert b["mechanism"] and b["client_rst"]["seq"] == b["challenge_ack"]["ack"]
    assert b["server_counters"]["TcpExtTCPChallengeACK"] >= 1 and b["analyzer_stale_peer_ack"] >= 1
    retx = [o["syn_retransmit_after_ms"], b["syn_retransmit_after_ms"]]
    assert o["lore_holds"] == all(r >= 900 for r in retx)


def test_conntrack_time_wait(tmp_path: Path) -> None:
    res = _run("conntrack-time-wait", tmp_path)
    o = res["observations"]
    port = o["a_conntrack_entry"]["client_port"]
    window = o["conntrack_time_wait_s"]     # 4 s, stretched by the run's timeout scale unless --set
    entry = o["a_conntrack_entry"]
    assert window >= 4 and entry["state"] == "TIME_WAIT" and entry["timeout_s"] <= window
    assert o["outside_ports"]["A"] == port and o["outside_ports"]["B"] != port and o["outside_ports"]["C"] == port
    assert o["a_client_time_wait_left_s"] > 60 - window - 10       # the endpoint's 60 s outlives conntrack's window
    assert o["hosts"]["m"]["sysctls"]["net.netfilter.nf_conntrack_tcp_timeout_time_wait"] == str(window)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TWLAB_PURE": "1"}
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("arg, says", [("bogus=1", "valid keys: connections, fin_timeout"),
                                       ("fin_timeout=abc", "not an integer"),
                                       ("fin_timeout=99", "out of range"),
                                       ("fin_timeout", "not key=value")])
def test_set_rejects_bad_keys_and_values(arg: str, says: str, tmp_path: Path) -> None:
    res = _cli("run", "close-wait-pileup", "--set", arg, "--out", str(tmp_path / "r"))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("twlab: ") and says in lines[0], res.stderr
    assert not (tmp_path / "r").exists()


def test_set_checks_the_rule_between_knobs(tmp_path: Path) -> None:
    res = _cli("run", "proxy-port-exhaustion", "--set", "requests=20", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "must exceed range_size" in res.stderr
    assert not (tmp_path / "r").exists()


def test_set_changes_the_run_and_list_shows_knobs(tmp_path: Path) -> None:
    res = _cli("run", "close-wait-pileup", "--set", "fin_timeout=2", "--set", "connections=2", "--json",
               "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    o = json.loads(res.stdout.splitlines()[-1])["observations"]
    assert o["knobs"]["fin_timeout"] == {"value": 2, "unit": "s", "given": True}
    assert o["close_wait_peak"] == 2 and o["reaped_after_s"] < 3
    listed = {json.loads(ln)["experiment"]: json.loads(ln) for ln in _cli("list", "--json").stdout.splitlines()}
    assert listed["close-wait-pileup"]["knobs"]["fin_timeout"]["default"] == 3
    assert listed["time-wait-zero"]["knobs"] == {}
