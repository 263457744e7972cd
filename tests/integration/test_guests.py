"""Experiments inside a user-mode Linux guest (Debian's 6.1 UML kernel, `bash setup.sh kernels 6.1`; setup.sh test
installs it): one boot runs a close experiment with a capture, syn-in-time-wait and bind-matrix; results, captures
and events land in the host's run folder; the guest never outlives its run."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.run import guests

REPO = Path(__file__).resolve().parents[2]
VERSION = "6.1"
SUBSET = ("four-way-close", "syn-in-time-wait", "bind-matrix")

pytestmark = pytest.mark.root


def twlab(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
          ) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, **(env or {}))
    full["PYTHONPATH"] = str(REPO) + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, cwd=cwd, env=full,
                          timeout=timeout)


def kernel_or_skip() -> guests.Kernel:
    try:
        return guests.resolve(VERSION)
    except Exception as exc:  # not installed here: the set-up command says how
        pytest.skip(f"{exc}")


def guest_processes(marker: str) -> list[int]:
    """Host processes whose command line names `marker` (the guest's init path is on UML's command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    kernel = kernel_or_skip()
    work = tmp_path_factory.mktemp("guest")
    out = work / "runs"
    res = twlab("run", *SUBSET, "--kernel", VERSION, "--json", "--out", str(out), cwd=work)
    lines = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    return {"proc": res, "results": {r["experiment"]: r for r in lines}, "out": out, "kernel": kernel}


def test_the_subset_runs_in_the_guest_kernel(guest_run: dict[str, Any]) -> None:
    res, results, kernel = guest_run["proc"], guest_run["results"], guest_run["kernel"]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sorted(results) == sorted(SUBSET)
    for r in results.values():
        assert r["kernel"] == kernel.release and r["kernel"] != os.uname().release
        assert isinstance(r["kernel_hz"], int) and r["kernel_hz"] > 0
        assert r["guest_cpus"] >= 1
        assert r["guest"]["kernel"] == VERSION
        assert r["reproduced"] is True, r.get("error") or r["story"]


def test_captures_events_and_results_land_in_the_host_run_folder(guest_run: dict[str, Any]) -> None:
    folder = guest_run["out"] / "kernel-6.1" / "four-way-close"
    result = json.loads((folder / "result.json").read_text())
    assert result["kernel"] == guest_run["kernel"].release and result["kernel_hz"] > 0  # the host added its facts
    events = [json.loads(ln) for ln in (folder / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "run-start" for e in events)
    capture = Path(guest_run["results"]["four-way-close"]["capture"])
    assert capture.is_file() and capture.parent == folder
    res = twlab("analyze", str(capture), "--json", cwd=guest_run["out"])  # analyzed like any other capture
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    kinds = {c["close"]["kind"] for c in doc["connections"]}
    assert kinds & {"four-way", "three-way"}, kinds


def test_syn_in_time_wait_reports_this_kernels_isn_rule(guest_run: dict[str, Any]) -> None:
    r = guest_run["results"]["syn-in-time-wait"]
    obs = r["observations"]
    gaps = [g for g in obs["new_isn_minus_old_snd_nxt"] if g is not None]
    assert gaps and obs["isn_rule"] == "clock-based"   # 6.1: before the 6.10 tcp_tw_isn fix
    assert any(g != 65537 for g in gaps)
    note = " ".join(r["notes"])
    assert "clock-based ISN" in note and "since 6.10 (upstream tcp_tw_isn fix, 2024)" in note
    assert "the ISN old snd_nxt + 65537 (measured" not in note  # never the +65537 claim beside other values
    assert obs["pawstimewait_counter"] is False and any("PAWSTimewait" in s for s in r["skipped"])


def test_the_guest_is_gone_after_its_run(guest_run: dict[str, Any]) -> None:
    init = guest_run["out"] / "kernel-6.1" / "guest" / "init.sh"
    assert init.is_file()
    assert guest_processes(str(init)) == []
    assert not (guest_run["out"] / "kernel-6.1" / "guest" / "seed").exists()


def test_a_guest_that_misses_its_boot_deadline_is_killed_and_swept(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = kernel_or_skip()
    from lab import experiments
    from lab.run import context
    from lab.run.resources import ledger_dir

    monkeypatch.setattr(guests, "BOOT_DEADLINE_S", 0.05)   # no kernel boots in 50 ms: the deadline path runs
    monkeypatch.setenv(context.TIMEOUT_SCALE_ENV, "1")
    monkeypatch.setattr(context, "_scale", {})
    run = guests.boot(kernel, experiments.get(["bind-matrix"]), tmp_path / "k")
    assert run.error is not None and "did not boot within" in run.error
    assert run.exit_code == 3 and run.results == []
    assert guest_processes(str(tmp_path / "k" / "guest" / "init.sh")) == []
    assert run.run_id and not (ledger_dir() / f"twl{run.run_id}.json").exists()
    missing = guests.missing_results(run, experiments.get(["bind-matrix"]))
    assert missing[0]["status"] == "could-not-run" and "did not boot" in missing[0]["error"]


def test_kernels_lists_installed_and_how_to_get_the_rest(tmp_path: Path) -> None:
    kernel_or_skip()
    res = twlab("kernels", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["version"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert set(rows) == set(guests.SUITES)
    assert rows[VERSION]["installed"] and rows[VERSION]["release"].startswith("6.1.")
    empty = tmp_path / "no-kernels"
    empty.mkdir()
    res = twlab("kernels", "--json", cwd=tmp_path, env={guests.KERNELS_ENV: str(empty)})
    assert all(json.loads(ln)["install"] == f"sudo bash setup.sh kernels {json.loads(ln)['version']}"
               for ln in res.stdout.splitlines())


def test_bad_kernel_values_are_one_line(tmp_path: Path) -> None:
    pure = {"TWLAB_PURE": "1"}   # no line about a stale compiled build while its sources are being edited
    res = twlab("run", "bind-matrix", "--kernel", "9.99", "--json", "--out", str(tmp_path / "r"), cwd=tmp_path,
                env=pure)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.strip().splitlines()) == 1
    assert "unknown kernel '9.99'" in res.stderr
    empty = tmp_path / "no-kernels"
    empty.mkdir()
    res = twlab("run", "bind-matrix", "--kernel", "6.12", "--json", "--out", str(tmp_path / "r"), cwd=tmp_path,
                env={guests.KERNELS_ENV: str(empty), **pure})
    assert res.returncode == 3 and res.stdout == "" and "setup.sh kernels 6.12" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_guest_client_reaches_this_hosts_server_time_wait(tmp_path: Path) -> None:
    kernel = kernel_or_skip()
    res = twlab("guest-client", "--kernel", VERSION, "--json", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    obs = out["observations"]
    assert obs["client_kernel"] == kernel.release and obs["server_kernel"] == os.uname().release
    assert obs["first_time_wait_sides"] == ["server"] and obs["reopened_from_time_wait"] is True
    capture = Path(out["capture"])
    assert capture.is_file()
    doc = json.loads(twlab("analyze", str(capture), "--json", cwd=tmp_path).stdout)   # like any other capture
    assert len(doc["connections"]) == 2
    reuse = [f for f in doc["findings"] if f["kind"] == "reuse-in-time-wait"]
    assert reuse and "acceptable" in str(reuse[0]["detail"])
    addrs = {c["client"].rsplit(":", 1)[0] for c in doc["connections"]} | {c["server"].rsplit(":", 1)[0]
                                                                          for c in doc["connections"]}
    doc_nets = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    assert all(any(ipaddress.ip_address(a) in n for n in doc_nets) for a in addrs), addrs
    assert guest_processes(str(tmp_path / "runs")) == []


def test_a_missing_iptables_filter_table_is_could_not_run_not_a_verdict() -> None:
    failed = {"experiment": "lost-final-ack", "reproduced": False,
              "error": "iptables -w -I INPUT 1 ... failed: TABLE_ADD failed (Operation not supported)", "skipped": []}
    why = guests.missing_prerequisite(failed, {"iptables": "none", "uname": "7.2.7"})
    assert why == "kernel 7.2.7 has no iptables filter table (neither nftables nor legacy)"
    assert guests.missing_prerequisite(failed, {"iptables": "legacy", "uname": "6.1.176"}) is None
    assert guests.missing_prerequisite({**failed, "reproduced": True}, {"iptables": "none"}) is None
    unrelated = {**failed, "error": "could not run: the server never listened"}
    assert guests.missing_prerequisite(unrelated, {"iptables": "none", "uname": "7.2.7"}) is None


def test_the_guest_init_mounts_only_the_run_folder_writable(tmp_path: Path) -> None:
    kernel = guests.Kernel("6.1", Path("/k/linux"), Path("/k/usr/lib/uml/modules"))
    text = guests.init_script(kernel, tmp_path, ["python3", "-m", "lab"], REPO, {})
    rw = [ln for ln in text.splitlines() if ln.startswith("mount -t hostfs")]
    assert len(rw) == 2 and str(tmp_path) in rw[0] and "/k/usr/lib/uml/modules" in rw[1]   # run folder, modules
    assert "modprobe -d /run/twlab/mods" in text and "sysrq-trigger" in text
    net = guests.GuestNet("twlabcdefh", "twlabcdeftp", "203.0.113.2/24")
    assert "ip addr add 203.0.113.2/24 dev eth0" in guests.init_script(kernel, tmp_path, ["true"], REPO, {}, net)


def test_claims_have_one_column_per_kernel_and_say_since_when(tmp_path: Path) -> None:
    from lab.experiments import syn_in_time_wait as sitw

    measured = (("kernel-6.1", "6.1.176", [1055026, 5531702]), ("kernel-6.12", "6.12.113", [65537, 65537]))
    for folder, kernel, gaps in measured:   # what two guests write (RUN/kernel-VER/EXPERIMENT/result.json)
        rule = sitw.isn_rule(list(gaps))
        out = tmp_path / folder / "syn-in-time-wait"
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps({
            "experiment": "syn-in-time-wait", "reproduced": True, "status": "reproduced", "claim": "c", "lore": "l",
            "kernel": kernel, "observations": {"isn_rule": rule, "new_isn_minus_old_snd_nxt": gaps},
            "notes": [sitw.isn_note(rule, list(gaps))]}))
    res = twlab("claims", "--run", str(tmp_path), "--json", cwd=tmp_path, env={"TWLAB_PURE": "1"})
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["kernels"] == ["6.1.176", "6.12.113"]
    row = next(r for r in doc["by_kernel"] if r["claim"] == "syn-in-time-wait")
    assert {k: v["verdict"] for k, v in row["verdicts"].items()} == {"6.1.176": "holds", "6.12.113": "holds"}
    assert row["changes"] == ["syn-in-time-wait isn_rule: clock-based on 6.1.176; old-snd-nxt+65537 since 6.12.113"]
    old, new = row["verdicts"]["6.1.176"]["evidence"], row["verdicts"]["6.12.113"]["evidence"]
    assert "clock-based ISN" in old and "65537 (measured" not in old   # never +65537 beside other values
    assert "old snd_nxt + 65537 (measured: [65537])" in new and "since 6.10" in new
    table = twlab("claims", "--run", str(tmp_path), cwd=tmp_path, env={"TWLAB_PURE": "1", "COLUMNS": "200"})
    assert "6.1.176" in table.stdout and "6.12.113" in table.stdout and "since 6.12.113" in table.stdout
