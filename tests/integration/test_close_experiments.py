"""The close experiments on the real kernel: the segments, errnos, states and timings each one claims.

time-wait-duration needs ~62 s; it runs as a background `python -m lab run` started by a module fixture, while
the other experiments run in this process, and is checked by the last test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from lab import experiments
from lab.run.runner import run_one
from tests.unit.test_narrator import story_problems

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def duration_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    out = tmp_path_factory.mktemp("twd")
    proc = subprocess.Popen([sys.executable, "-m", "lab", "run", "time-wait-duration", "--json", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.terminate()   # SIGTERM unwinds the run's teardown
        proc.wait(timeout=30)


@pytest.fixture(autouse=True)
def _start_duration_first(duration_run: tuple[subprocess.Popen[str], Path]) -> None:
    """Every test here needs the background run started, so it overlaps with all of them."""


def _run(name: str, tmp_path: Path) -> dict[str, Any]:
    [exp] = experiments.get([name])
    res = run_one(exp, tmp_path)
    assert res["error"] is None, res["error"]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"twl{res['run_id']}" not in left, "namespaces left behind"
    if res["capture"]:   # its comments tell one story, on the capture's clock, as the records do
        assert story_problems(Path(res["capture"])) == []
    return res


def _comments(path: str) -> list[str]:
    out = subprocess.run(["tshark", "-r", path, "-T", "fields", "-E", "aggregator=|", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def _agree(res: dict[str, Any]) -> None:
    cmp = res["observations"]["kernel_vs_analyzer"]
    assert cmp["kernel_time_wait"], "sock_diag saw no TIME_WAIT"
    if cmp.get("analyzer") is not None or cmp.get("rows"):
        assert cmp["agree"] is True, cmp["rows"]


def test_who_gets_time_wait(tmp_path: Path) -> None:
    res = _run("who-gets-time-wait", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    assert obs["client_first_time_wait_side"] == "client"
    assert obs["server_first_time_wait_side"] == "server"
    for case in obs["cases"].values():
        assert case["time_wait_sides"] == [case["first_closer"]]
        assert 55_000 <= case["time_wait_remaining_ms"] <= 60_000
        if case.get("analyzer"):
            assert case["analyzer"]["time_wait_sides"] == [case["first_closer"]]
            assert case["analyzer"]["close"]["initiator"] == case["first_closer"]
    _agree(res)
    assert res["capture"] and Path(res["capture"]).exists()


def test_four_way_close_four_and_three_segments(tmp_path: Path) -> None:
    res = _run("four-way-close", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    a, b = obs["cases"]["A"], obs["cases"]["B"]
    assert a["segments"] == 4 and not a["three_segment"]
    assert set(a["labels"]) == {"fin_m", "ack_m1", "fin_n", "ack_n1"}
    assert a["close"]["ack_of_first"]["ack"] == (a["close"]["first_fin"]["seq"] + 1) % (1 << 32)
    assert a["close"]["ack_of_second"]["ack"] == (a["close"]["second_fin"]["seq"] + 1) % (1 << 32)
    assert 0 <= a["ack_delay_ms"] <= 250               # at most a delayed-ACK timer
    assert 250 <= a["fin_to_fin_ms"] <= 1000           # the server waited 300 ms
    assert "FIN_WAIT_2" in a["states_seen"]["client"] and "CLOSE_WAIT" in a["states_seen"]["server"]
    assert a["states_seen"]["client"][-1] == "TIME_WAIT"
    assert a["sock_diag_between_ack_and_fin"] == {"client": "FIN_WAIT_2", "server": "CLOSE_WAIT"}
    assert b["segments"] == 3 and b["three_segment"]
    assert b["close"]["ack_of_first"] is None
    assert b["close"]["second_fin"]["ack"] == (b["close"]["first_fin"]["seq"] + 1) % (1 << 32)
    if a.get("analyzer"):
        assert a["analyzer"]["close"]["kind"] == "four-way" and b["analyzer"]["close"]["kind"] == "three-way"
    text = "\n".join(_comments(res["capture"]))
    for label in ("FIN M", "ACK M+1", "FIN N", "ACK N+1"):
        assert label in text
    _agree(res)


def test_states_between_takes_the_held_dump_as_the_evidence() -> None:
    """Case A's evidence is the dump the lab took while the server was held, not the periodic samplers' luck: a
    held dump that did not match, or that is not between the two segments, gives no evidence even when a sample
    would; a matching one inside the window is the answer even when the samplers have nothing there."""
    from lab.experiments import _closecommon as cc
    from lab.kernel.sockdiag import Sampler, SockSample

    t_a, t_b, port = 100.0, 100.3, 40000

    def sample(state: str, sport: int, dport: int, wall_s: float) -> SockSample:
        return SockSample(state, "inet", "203.0.113.1", sport, "203.0.113.2", dport, None, 0, 0, 1, None, wall_s)

    cs, ss = Sampler(cast(Any, None)), Sampler(cast(Any, None))   # never started: only their sample lists are read
    cs.samples = [sample("FIN_WAIT_2", port, cc.PORT, 100.1)]
    ss.samples = [sample("CLOSE_WAIT", cc.PORT, port, 99.9)]
    cs.spans, ss.spans = [(100.1, 100.1)], [(99.9, 99.9), (100.1, 100.1)]   # the server's 2nd dump: no change
    want = {"client": "FIN_WAIT_2", "server": "CLOSE_WAIT"}
    assert cc.states_between(cs, ss, port, t_a, t_b) == want
    unmatched = cc.HeldDump({"client": "FIN_WAIT_1", "server": "CLOSE_WAIT"}, 100.0, 100.2, False)
    assert cc.states_between(cs, ss, port, t_a, t_b, unmatched) is None
    late = cc.HeldDump(dict(want), 100.29, 100.31, True)
    assert cc.states_between(cs, ss, port, t_a, t_b, late) is None
    cs.samples, ss.samples = [], []
    held = cc.HeldDump(dict(want), 100.04, 100.05, True)
    assert cc.states_between(cs, ss, port, t_a, t_b, held) == want


def test_simultaneous_close_both_closing_both_time_wait(tmp_path: Path) -> None:
    pytest.importorskip("netfilterqueue", reason="NFQUEUE holds make the FINs cross: pip install '.[nfqueue]'")
    res = _run("simultaneous-close", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    assert obs["crossed_fins"] is True
    # CLOSING lasts about one held ACK: the 10 ms sampler may miss it, the kernel's own transitions and the
    # sock_diag reading taken while both ACKs are held do not
    for side in ("client", "server"):
        assert obs[f"{side}_states"][-1] == "TIME_WAIT"
        path = (obs["kernel_transitions"] or {}).get(side)
        assert path is None or path[-3:] == ["FIN_WAIT_1", "CLOSING", "CLOSED"], path
        assert obs["states_while_acks_held"][side] == "CLOSING"
    assert obs["time_wait_sides"] == ["client", "server"]
    assert all(len(h["held"]) >= 2 for h in obs["nfqueue"])
    if obs.get("analyzer"):
        assert obs["analyzer"]["close"]["kind"] == "simultaneous"
        assert sorted(obs["analyzer"]["time_wait_sides"]) == ["client", "server"]
    _agree(res)


def test_lost_final_ack_retransmitted_fin_and_timer_restart(tmp_path: Path) -> None:
    res = _run("lost-final-ack", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    assert obs["dropped_acks"] == 1
    assert 150 <= obs["rto_ms"] <= 600
    assert obs["fin_retransmits"] == 1 and obs["reacked_from_time_wait"] is True
    assert obs["time_wait_timer_restarted"] is True
    assert obs["time_wait_restarts"][0]["expires_ms"] >= 59_500
    # the lab's own dump once the drop was counted, not the 10 ms sampler's luck
    last_ack = obs["server_last_ack_after_drop"]
    assert last_ack["seen"] is True, last_ack
    assert last_ack["state"] == "LAST_ACK" and last_ack["timer"] == "retransmit", last_ack
    assert last_ack["drop_counted_before_dump"] is True and last_ack["dump_after_dropped_ack_on_capture"] is True
    assert last_ack["dump_wall_s"] <= last_ack["dump_wall_end_s"]
    assert "LAST_ACK" in obs["server_states"]   # that dump is in the sampler's record too
    assert obs["second_ack"]["ack"] == obs["close"]["ack_of_second"]["ack"]
    kinds = {f["kind"] for f in obs["analyzer_findings"]}
    if kinds:
        assert {"fin-retransmitted", "final-ack-lost"} <= kinds
    _agree(res)


def test_time_wait_zero_retransmitted_fin_meets_rst(tmp_path: Path) -> None:
    res = _run("time-wait-zero", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    a = obs["cases"]["A"]
    assert a["dropped_acks"] == 1
    assert a["counters"]["TcpExtTCPTimeWaitOverflow"] >= 1
    assert a["time_wait"] == {"client": None, "server": None}
    assert 150 <= obs["rto_ms"] <= 600
    assert a["client_rst"] is not None and a["client_rst"]["flags"] == "R"
    assert a["client_rst"]["frame"] > a["retransmitted_fin"]["frame"]
    b = obs["cases"]["B"]
    assert obs["orphan_first_fin_rst"] is True and b["retransmitted_fin"] is None
    assert res["observations"]["hosts"]["client"]["sysctls"]["net.ipv4.tcp_max_tw_buckets"] == "0"


def test_abortive_close_rst_no_time_wait(tmp_path: Path) -> None:
    res = _run("abortive-close", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    assert obs["linger0_peer_errno"] == "ECONNRESET" and obs["unread_data_peer_errno"] == "ECONNRESET"
    for key, c in obs["cases"].items():
        assert c["rst"] is not None and "R" in c["rst"]["flags"], key
        assert c["aborter_fins"] == 0 and c["time_wait_any"] is False
    assert obs["cases"]["A"]["counters"]["TcpExtTCPAbortOnData"] == 1
    assert obs["cases"]["B"]["counters"]["TcpExtTCPAbortOnClose"] == 1


def test_ephemeral_exhaustion(tmp_path: Path) -> None:
    res = _run("ephemeral-exhaustion", tmp_path)
    obs = res["observations"]
    assert res["reproduced"] is True
    a, b, c = (obs["cases"][k] for k in "ABC")
    assert (a["succeeded"], a["first_failure_at"], a["errno"]) == (10, 11, "EADDRNOTAVAIL")
    assert a["ports_used"] == list(range(40000, 40010))
    assert a["syns_on_wire"] == 10                      # the failing connect sent nothing
    assert b["first_failure_at"] is None and b["succeeded"] == b["attempts"] and b["ports_reused"]
    assert (c["first_failure_at"], c["errno"]) == (11, "EADDRNOTAVAIL")


def test_time_wait_duration_background(duration_run: tuple[subprocess.Popen[str], Path]) -> None:
    proc, _out = duration_run
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    res = json.loads(stdout.splitlines()[-1])
    obs = res["observations"]
    assert res["reproduced"] is True
    assert 55 <= obs["time_wait_s"] <= 65
    assert 55 <= obs["time_wait_with_fin_timeout_s"] <= 65      # tcp_fin_timeout=5 does not shorten it
    assert 4.5 <= obs["fin_wait_2_s"] <= 8                       # it limits orphaned FIN_WAIT_2 instead
    assert obs["connections"]["c3"]["late_fin_answered_with_rst"] is True
    _agree(res)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"twl{res['run_id']}" not in left
