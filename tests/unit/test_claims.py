"""The claims ledger judges from measured observations, and says when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import claims


def _result(exp: str, reproduced: bool = True, **obs: object) -> dict:
    return {"experiment": exp, "reproduced": reproduced, "observations": dict(obs), "notes": [], "kernel": "k"}


def _verdict(entries: list[claims.Entry], cid: str) -> str:
    return next(e.verdict for e in entries if e.claim.id == cid)


def test_lore_holds_and_measured_duration_decide() -> None:
    entries = claims.judge_all([
        _result("restart-eaddrinuse", lore_holds=False),
        _result("who-gets-time-wait", lore_holds=True),
        _result("time-wait-duration", time_wait_s=60.7),
    ])
    assert _verdict(entries, "restart") == claims.DIFFERS
    assert _verdict(entries, "first-closer") == claims.HOLDS
    assert _verdict(entries, "linux-60") == claims.HOLDS
    assert _verdict(entries, "2msl-range") == claims.HOLDS
    assert _verdict(entries, "multicast") == claims.NOT_RUN
    assert _verdict(entries, "solaris-240") == claims.NOT_TESTABLE


def test_a_short_time_wait_differs_and_an_environment_problem_is_not_testable() -> None:
    env = _result("who-gets-time-wait", reproduced=False)
    env["exit_code"] = 3
    env["error"] = "needs root"
    entries = claims.judge_all([_result("time-wait-duration", time_wait_s=30.0), env])
    assert _verdict(entries, "linux-60") == claims.DIFFERS
    assert _verdict(entries, "first-closer") == claims.NEEDS_ROOT  # testable as root: say so, not "not testable"
    env["error"] = "tshark missing"
    assert _verdict(claims.judge_all([env]), "first-closer") == claims.NOT_TESTABLE


def test_markdown_and_json_are_written(tmp_path: Path) -> None:
    results = [_result("who-gets-time-wait", lore_holds=True)]
    claims.write_markdown(claims.judge_all(results), tmp_path / "claims.md", results)
    text = (tmp_path / "claims.md").read_text()
    assert "| **holds** |" in text and "not run" in text
    assert (tmp_path / "claims.json").is_file()


def test_json_file_and_lookup_have_one_shape(tmp_path: Path) -> None:
    results = [_result("who-gets-time-wait", lore_holds=True)]
    entries = claims.judge_all(results)
    claims.write_ledger(entries, tmp_path, results)
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert doc == claims.ledger_document(entries, tmp_path, results)
    assert set(doc) == {"run", "kernels", "claims", "not_run"} and doc["not_run"] == len(entries) - 2
    assert not list(tmp_path.glob("*.tmp"))


def test_evidence_never_cut_mid_word_and_never_shows_none() -> None:
    note = " ".join(["retransmission"] * 60)
    r = _result("four-way-close", lore_holds=True, fin_s=None, rtt_s=0.5, ok=True)
    r["notes"] = [note]
    ev = claims.judge_all([r])
    text = next(e.evidence for e in ev if e.claim.id == "four-way")
    assert len(text) <= claims.EVIDENCE_CHARS and text.endswith("…")
    assert text[:-1].split(" ")[-1] == "retransmission"
    r["notes"] = []
    text = next(e.evidence for e in claims.judge_all([r]) if e.claim.id == "four-way")
    assert "None" not in text and "rtt_s=0.5" in text and "ok=yes" in text


def test_claims_read_only_keys_experiments_write() -> None:
    r = _result("time-wait-duration", measured_s=30.0, duration_s=30.0, time_wait_measured_s=30.0,
                fin_timeout_time_wait_s=5.0)
    entries = claims.judge_all([r])
    assert _verdict(entries, "linux-60") == claims.HOLDS  # no time_wait_s: reproduced decides (old: 30 s, differs)
    assert not next(e.evidence for e in entries if e.claim.id == "linux-60").startswith("measured 30.0 s")


def test_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    results = [_result("who-gets-time-wait", lore_holds=True)]
    with pytest.raises(claims.OutputError) as exc:
        claims.write_ledger(claims.judge_all(results), Path("/proc/twl-no-such\ndir"), results)
    assert "\n" not in exc.value.one_line() and "cannot write" in exc.value.one_line()


def test_the_run_is_found_from_env_or_the_last_run_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "runs" / "20260101-000000"
    (run / "x").mkdir(parents=True)
    (run / "x" / "result.json").write_text(json.dumps(_result("x")))
    monkeypatch.chdir(tmp_path / "runs")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TWLAB_RUNS", raising=False)
    assert claims.find_run()[0] is None
    claims.record_last_run(run)
    assert claims.find_run()[0] == run.resolve()
    monkeypatch.setenv("TWLAB_RUNS", str(tmp_path / "runs"))
    assert claims.find_run()[0] == tmp_path / "runs" / "20260101-000000"
