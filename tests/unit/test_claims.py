"""The claims ledger judges from measured observations, and says when it cannot."""

from __future__ import annotations

from pathlib import Path

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
    assert _verdict(entries, "first-closer") == claims.NOT_TESTABLE


def test_markdown_and_json_are_written(tmp_path: Path) -> None:
    results = [_result("who-gets-time-wait", lore_holds=True)]
    claims.write_markdown(claims.judge_all(results), tmp_path / "claims.md", results)
    text = (tmp_path / "claims.md").read_text()
    assert "| **holds** |" in text and "not run" in text
    assert (tmp_path / "claims.json").is_file()
