"""Socket-option experiments on the real kernel. Expectations come from the documented Linux rules
(lab.core.bindrules.expected_linux and the rules named in each test), never from a measured table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lab import experiments
from lab.core.bindrules import BindCase, expected_bsd, expected_linux
from lab.experiments.bind_matrix import load_matrix
from lab.run.runner import run_one

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel rules")

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run(name: str, tmp_path: Path, **options: Any) -> dict[str, Any]:
    res = run_one(experiments.get([name])[0], tmp_path, options=options)
    assert res["error"] is None, res["error"]
    return res


def _case(row: dict[str, Any]) -> BindCase:
    return BindCase(row["proto"], row["first_addr"], row["second_addr"], row["first_opt"], row["second_opt"],
                    row["first_state"])


def _calls(folder: str) -> list[dict[str, Any]]:
    lines = (Path(folder) / "events.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "call"]


# --- bind-matrix --------------------------------------------------------------------------------

def test_bind_matrix_follows_the_linux_rules(tmp_path: Path) -> None:
    res = run("bind-matrix", tmp_path)
    rows = load_matrix(res)
    assert len(res["observations"]["matrix"]) == len(rows)
    assert len(json.dumps(res)) < 60_000   # one --json line; stays below a pipe's buffer
    measured = [r for r in rows if r["measured"] is not None]
    assert len(measured) >= 0.9 * len(rows)   # 127.0.0.2 and ::1 exist on Linux lo
    wrong = [(r["case"], r["measured"]) for r in measured if r["measured"] != expected_linux(_case(r)).text()]
    assert wrong == []
    assert res["reproduced"] is True
    # the first socket really was in the state the case names (/proc/net/tcp)
    seen = {r["first_state"]: r["first_state_seen"] for r in measured if r["proto"] == "tcp"}
    assert "TIME_WAIT" in seen["time_wait"] and "ESTABLISHED" in seen["connected"] and seen["listening"] == "LISTEN"
    # every failed call was logged with its errno; one EADDRINUSE per refused (last) attempt at least
    calls = _calls(res["folder"])
    refused = sum(1 for r in measured if "EADDRINUSE" in r["measured"])
    assert sum(1 for c in calls if c["errno"] == "EADDRINUSE") >= refused > 0
    # the notes name the Linux/BSD differences that were measured; the lore's fate follows from the rules
    assert any("needs it on both" in n for n in res["notes"])
    rules_differ = any(expected_bsd(_case(r)).text() != expected_linux(_case(r)).text() for r in measured)
    assert res["observations"]["lore_holds"] is (not rules_differ)


@pytest.mark.root
def test_bind_matrix_runs_unprivileged() -> None:
    """`python -m lab run bind-matrix --json` as nobody: exit 0 and reproduced."""
    out = Path(tempfile.mkdtemp(prefix="twl-h6-"))
    try:
        out.chmod(0o777)
        env = {"HOME": "/tmp", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}

        def as_nobody() -> None:
            os.setgid(NOBODY)
            os.setuid(NOBODY)

        def usable(exe: str) -> bool:
            try:
                return subprocess.run([exe, "-c", "import click, rich"], env=env, preexec_fn=as_nobody,
                                      capture_output=True, timeout=60).returncode == 0
            except OSError:
                return False

        exe = sys.executable
        if not usable(exe):   # the venv's interpreter may live under a directory nobody cannot enter (/root)
            site = next(iter(Path(sys.prefix).glob("lib/python3*/site-packages")), None)
            exe = shutil.which("python3", path="/usr/bin:/bin") or exe
            env["PYTHONPATH"] = f"{REPO}{os.pathsep}{site}" if site else str(REPO)
            if not usable(exe):
                pytest.skip("no Python interpreter with click and rich that the user nobody can run")
        r = subprocess.run([exe, "-m", "lab", "run", "bind-matrix", "--json", "--out", str(out / "runs")],
                           env=env, cwd=out, preexec_fn=as_nobody, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["root"] is False
        assert res["reproduced"] is True
        assert res["observations"]["mismatches"] == []
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --- reuseport ----------------------------------------------------------------------------------

def test_reuseport(tmp_path: Path) -> None:
    res = run("reuseport", tmp_path)
    obs = res["observations"]
    split = obs["tcp_spread"]["per_listener"]
    assert sum(split) == obs["tcp_spread"]["connections"] and min(split) > 0
    us = obs["udp_spread"]["per_socket"]
    assert sum(us) == obs["udp_spread"]["datagrams"] and min(us) > 0
    # the UDP hash is per four-tuple: both datagrams of a source reach the same socket
    assert obs["udp_spread"]["sources_always_same_socket"] == obs["udp_spread"]["sources"]
    for proto, state in (("tcp", "listening"), ("udp", "bound")):
        r = obs["all_must_set"][proto]
        third = expected_linux(BindCase(proto, "lo1", "lo1", "reuseport", "none", state)).second  # type: ignore[arg-type]
        second = expected_linux(BindCase(proto, "lo1", "lo1", "none", "reuseport", state)).second  # type: ignore[arg-type]
        assert r["two_with_then_third_without"] == ["ok", "ok", third] and third == "bind:EADDRINUSE"
        assert r["first_without_second_with"] == ["ok", second] and second == "bind:EADDRINUSE"
    # UDP unicast with SO_REUSEADDR only: both bind (udp_lib_lport_inuse), one socket gets all
    assert obs["udp_reuseaddr_unicast"]["binds"] == ["ok", "ok"]
    assert sorted(obs["udp_reuseaddr_unicast"]["per_socket"]) == [0, 20]
    if os.geteuid() == 0:   # same-user rule: another uid's SO_REUSEPORT bind is refused
        for proto in ("tcp", "udp"):
            assert obs["same_user"][proto]["other_user"] == {"uid": NOBODY, "errno": "EADDRINUSE"}
        assert res["capture"] and Path(res["capture"]).stat().st_size > 0
        assert obs["tcp_spread"]["syns_captured"] == 200
    assert res["reproduced"] is True


# --- multicast ----------------------------------------------------------------------------------

@pytest.mark.root
def test_multicast_reuse(tmp_path: Path) -> None:
    res = run("multicast-reuse", tmp_path)
    cases = res["observations"]["cases"]
    for opt in ("reuseaddr", "reuseport"):
        assert cases[opt]["binds"] == ["ok", "ok"]
        assert cases[opt]["received"] == [20, 20] and cases[opt]["every_socket_got_every_datagram"]
    assert cases["none"]["binds"] == ["ok", "bind:EADDRINUSE"]
    assert res["observations"]["capture"]["packets"] == 40     # one frame per datagram sent
    ns = res["observations"]["netns"]
    assert not Path("/run/netns", ns).exists()                   # torn down with the run
    assert res["reproduced"] is True


# --- ephemeral ports ----------------------------------------------------------------------------

def test_ephemeral_port_allocation(tmp_path: Path) -> None:
    res = run("ephemeral-port-allocation", tmp_path)
    obs = res["observations"]
    lo, hi = obs["ip_local_port_range"]
    ports = obs["connect_same_destination"] + obs["connect_alternating"] + obs["bind_port0"]
    assert len(ports) == 90 and all(lo <= p <= hi for p in ports)
    # all sockets stay open: ports are unique per destination (a four-tuple), not globally
    for seq in (obs["connect_same_destination"], obs["bind_port0"], *obs["alternating_per_destination"].values()):
        assert len(set(seq)) == len(seq)
    # __inet_hash_connect: ports of the range's low parity first; inet_csk_find_open_port: the other parity
    assert Counter(p % 2 == lo % 2 for p in obs["connect_same_destination"])[True] >= 27
    assert Counter(p % 2 != lo % 2 for p in obs["bind_port0"])[True] >= 27
    # per destination the perturbation grows by 2 + 2*random(0..7): small even steps, never +1
    steps = obs["steps_same_destination"]
    assert sum(1 for d in steps if d in range(2, 17, 2)) >= 0.9 * len(steps)
    assert obs["lore_holds"] is False and obs["plus_one_fraction_same_destination"] < 0.1
    if os.geteuid() == 0:
        assert obs["ip_local_port_range"] == [40000, 40999]      # the lab namespace's narrowed range
        assert not Path("/run/netns", obs["where"].split()[2]).exists()
    assert res["reproduced"] is True


# --- reuseaddr-uses -----------------------------------------------------------------------------

def test_reuseaddr_uses(tmp_path: Path) -> None:
    res = run("reuseaddr-uses", tmp_path)
    obs = res["observations"]
    for r in obs["a_restart"]:
        exp = expected_linux(BindCase("tcp", "lo1", "lo1", r["old_option"], r["new_option"], r["first_state"]))
        assert r["measured"] == exp.second, r
        assert (r["new_client_port"] is not None) == (exp.second == "ok")   # a restarted server serves
    # (a) the Linux-specific point: the old server's flag matters
    a = {(r["first_state"], r["old_option"], r["new_option"]): r["measured"] for r in obs["a_restart"]}
    assert a[("time_wait", "none", "reuseaddr")] == "bind:EADDRINUSE"
    assert a[("time_wait", "reuseaddr", "reuseaddr")] == "ok"
    key = {"0.0.0.0": "any4", "127.0.0.2": "lo2", "127.0.0.3": "lo3"}
    for r in obs["b_instances"]:
        exp = expected_linux(BindCase("tcp", key[r["instance1"]], key[r["instance2"]], r["option"], r["option"],
                                      "listening"))  # type: ignore[arg-type]
        assert r["instance2_result"] == exp.second
        if exp.second == "ok":   # each instance answered for its own address
            assert all(v == f"served by instance{1 if ip == r['instance1'] else 2} on {ip}"
                       for ip, v in r["answers"].items())
    c = obs["c_one_process"]
    assert all(v["bind"] == "ok" and v["accepted_by"] == ip for ip, v in c["tcp"].items())
    assert c["udp"]["received_by"]["127.0.0.3"] == ["0.0.0.0"]          # only the wildcard matches .3
    assert c["udp"]["received_by"]["127.0.0.2"] == ["127.0.0.2"]        # the most specific socket wins
    d = obs["d_duplicates"]
    for name in ("tcp_first_listening", "tcp_both_bound_then_listen", "udp_unicast"):
        assert d[name]["measured"] == d[name]["expected_linux"]
    assert d["udp_multicast"]["binds"] == ["ok", "ok"]
    if os.geteuid() == 0:
        assert d["udp_multicast"]["received"] == [20, 20]
        assert res["capture"] and obs["capture"]["captured"]
    a_differs = any(r["stevens"] != r["expected_linux"] for r in obs["a_restart"])
    assert obs["stevens_holds"]["a"] is (not a_differs)
    assert obs["lore_holds"] is all(obs["stevens_holds"].values()) and (obs["lore_holds"] is False or not a_differs)
    calls = _calls(res["folder"])
    assert any(c.get("agent") and c.get("errno") == "EADDRINUSE" for c in calls)   # (b) refusal in a process
    assert res["reproduced"] is True
