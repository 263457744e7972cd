"""syn-in-time-wait, delayed-duplicate, time-wait-assassination on the real kernel (root).

Each test runs the experiment once (module-scoped) and asserts the kernel's answers per case: the segment
it sent back, what the application read, the TIME_WAIT socket in sock_diag, the counters; and that the
annotated capture's injected frames are the ones the analyzer flags.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.experiments import get
from lab.run.runner import run_one

pytestmark = pytest.mark.root


def _run(tmp_path_factory: pytest.TempPathFactory, name: str) -> dict[str, Any]:
    out = tmp_path_factory.mktemp(name)
    result = run_one(get([name])[0], out)
    assert result["error"] is None, result["error"]
    assert not [n for n in Path("/run/netns").iterdir() if n.name.startswith(f"twl{result['run_id']}")]
    return result


def _check_capture(result: dict[str, Any], marks_comment: str) -> None:
    obs = result["observations"]
    check = obs["analyzer_check"]
    if check.get("ok") is None:
        pytest.skip(f"capture/analyzer not available: {check.get('why')}")
    cap = result["capture"]
    assert cap and Path(cap).is_file()
    comments = subprocess.run(["tshark", "-r", cap, "-Y", "frame.comment", "-T", "fields", "-e", "frame.number",
                               "-e", "frame.comment"], capture_output=True, text=True, check=True).stdout
    assert marks_comment in comments
    assert any(a["expected_frames"] for k, a in check.items() if k != "ok"), "injected frames found in the capture"
    for kind, agreement in check.items():
        if kind == "ok":
            continue
        assert agreement["not_in_capture"] == [], f"{kind}: logged segments missing from the capture"
        assert agreement["missed_frames"] == [], f"{kind}: analyzer missed injected frames {agreement}"
        assert agreement["extra_findings"] == [], f"{kind}: analyzer flagged other frames {agreement}"
    assert obs["analyzer_matches_injector"] is True


@pytest.fixture(scope="module")
def syn_tw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory, "syn-in-time-wait")


@pytest.fixture(scope="module")
def dup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory, "delayed-duplicate")


@pytest.fixture(scope="module")
def twa(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run(tmp_path_factory, "time-wait-assassination")


# ---- syn-in-time-wait


def test_syn_in_time_wait_answers_follow_rfc6191(syn_tw: dict[str, Any]) -> None:
    cases = {c["case"]: c for c in syn_tw["observations"]["cases"]}
    for c in cases.values():
        assert c["first_incarnation_ok"], c
        assert c["time_wait_before"] is not None, "server held TIME_WAIT before the new SYN"
    for refused in ("no-ts-isn-below", "ts-isn-above-ts-older"):
        c = cases[refused]
        assert c["answer"]["flags"] == "A" and not c["accepted"]
        assert c["answer"]["ack"] == c["old_rcv_nxt"] and c["answer"]["seq"] == c["old_snd_nxt"]
        assert c["time_wait_after_answer"] is not None
    for accepted in ("no-ts-isn-above", "ts-isn-below-ts-newer", "ts-isn-above-ts-newer"):
        c = cases[accepted]
        assert c["answer"]["flags"] == "SA" and c["accepted"]
        assert c["answer"]["ack"] == (c["new_syn"]["seq"] + 1) % (1 << 32)
        assert c["new_isn_minus_old_snd_nxt"] == 65537
        assert c["time_wait_after_answer"] is None
    assert cases["ts-isn-above-ts-older"]["counters"]["PAWSTimewait"] >= 1
    assert cases["no-ts-isn-below"]["counters"]["PAWSTimewait"] == 0
    assert syn_tw["reproduced"]


def test_syn_in_time_wait_capture_flags_exactly_the_new_syns(syn_tw: dict[str, Any]) -> None:
    _check_capture(syn_tw, "peer's new SYN")


# ---- delayed-duplicate


def test_delayed_duplicate_old_bytes_reach_the_application_only_where_predicted(dup: dict[str, Any]) -> None:
    obs = dup["observations"]
    cases = {c["case"]: c for c in obs["cases"]}
    for c in cases.values():
        assert c.get("incarnation1_ok") and c.get("incarnation2_ok"), c
        assert c["app_read_incarnation1"] == "OLD-DATA-1"
        assert c["position_measured"] == c["position"]
    accepted = {"ts-inside-ts-stripped", "nots-inside-no-time-wait"}
    for name, c in cases.items():
        if name in accepted:
            assert c["app_read"] == "NEW-2OLD-DATA-1", "old bytes spliced into the new stream"
            assert c["ack_after_next_data_minus_peer_nxt"] == len("OLD-DATA-1")
        else:
            assert c["app_read"] == "NEW-2", name
            assert c["ack_after_next_data_minus_peer_nxt"] == 0, name
        assert c["kernel_answers_to_replay"], f"{name}: the kernel answered the replay with an ACK"
        assert c["kernel_answers_to_replay"][0]["flags"] == "A"
    assert cases["ts-below-verbatim"]["counters"]["PAWSEstab"] >= 1
    assert cases["ts-inside-old-tsval"]["counters"]["PAWSEstab"] >= 1
    assert cases["nots-inside-old-ack"]["counters"]["TCPChallengeACK"] >= 1
    assert cases["ts-below-verbatim"]["time_wait_after_incarnation1"] is not None
    assert cases["nots-inside-no-time-wait"]["time_wait_after_incarnation1"] is None
    assert "nots-inside-no-time-wait" in obs["old_bytes_reached_application"]
    assert dup["reproduced"]


def test_delayed_duplicate_capture_flags_exactly_the_replays(dup: dict[str, Any]) -> None:
    _check_capture(dup, "replayed into incarnation 2")


# ---- time-wait-assassination


def test_rst_kills_time_wait_only_at_rcv_nxt_and_only_without_rfc1337(twa: dict[str, Any]) -> None:
    obs = twa["observations"]
    for c in obs["rst_cases"]:
        assert c["setup_ok"] and c["time_wait_before"] is not None, c
        assert c["kernel_answered"] is None, "TIME_WAIT never answers an RST"
        killed = c["tcp_rfc1337"] == 0 and c["rst_seq_minus_rcv_nxt"] == 0
        assert c["survived"] is (not killed), c
    limited, unlimited = obs["rate_limit"]
    assert limited["tcp_invalid_ratelimit_ms"] == 500 and unlimited["tcp_invalid_ratelimit_ms"] == 0
    assert 1 <= limited["acks_answered"] <= 3
    assert limited["acks_answered"] + limited["skipped_counter"] == limited["sent"]
    assert unlimited["acks_answered"] == unlimited["sent"] and unlimited["skipped_counter"] == 0
    assert limited["time_wait_after"] is not None, "out-of-window ACKs do not end TIME_WAIT"
    assert twa["reproduced"]


def test_assassination_capture_flags_exactly_the_rsts_at_rcv_nxt(twa: dict[str, Any]) -> None:
    _check_capture(twa, "RST with seq = TIME_WAIT's rcv_nxt")
