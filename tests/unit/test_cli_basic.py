"""CLI basics: exit codes, doctor's lines, list --json."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from lab.cli import cli
from lab.doctor import checks


def test_list_json_lists_every_experiment_once() -> None:
    res = CliRunner().invoke(cli, ["list", "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in res.output.splitlines()]
    ids = [r["experiment"] for r in rows]
    assert "restart-eaddrinuse" in ids
    assert len(ids) == len(set(ids))
    for r in rows:
        assert r["claim"] and isinstance(r["needs_root"], bool)
    restart = next(r for r in rows if r["experiment"] == "restart-eaddrinuse")
    assert restart["needs_root"] is False and restart["topology"] == "loopback"


def test_list_for_people_shows_claims() -> None:
    res = CliRunner().invoke(cli, ["list"])
    assert res.exit_code == 0
    assert "restart-eaddrinuse" in res.output


def test_unknown_experiment_exit_2_one_line() -> None:
    res = CliRunner().invoke(cli, ["run", "nope-nope"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("twlab: unknown experiment 'nope-nope': run 'twlab list'")


def test_run_without_names_is_a_usage_error() -> None:
    res = CliRunner().invoke(cli, ["run"])
    assert res.exit_code == 2


def test_doctor_prints_each_check_with_status_and_fix() -> None:
    expected = checks()
    res = CliRunner().invoke(cli, ["doctor"], env={"COLUMNS": "200"})
    for c in expected:
        assert c.name in res.output, c.name
    assert ("OK" in res.output) or ("missing" in res.output)
    essential = {"root", "CAP_NET_ADMIN", "CAP_NET_RAW", "ip", "netns"}
    ok = all(c.ok for c in expected if c.name in essential)
    assert res.exit_code == (0 if ok else 3)
    if os.geteuid() != 0:
        assert "run as root" in res.output


def test_doctor_json_has_one_entry_per_check() -> None:
    res = CliRunner().invoke(cli, ["doctor", "--json"])
    data = json.loads(res.output)
    names = [c["name"] for c in data["checks"]]
    for want in ("root", "CAP_NET_RAW", "tshark", "tcpdump", "iptables", "ip", "netns", "leftovers"):
        assert want in names
    for c in data["checks"]:
        assert isinstance(c["ok"], bool)
        assert c["ok"] or c["fix"], f"{c['name']} is missing but says no fix"
