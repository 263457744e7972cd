"""CLI basics: exit codes, doctor's lines, list --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
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


# --- paper cuts (issue 15): one line, documented exit code, no traceback, no partial output --------------------

REPO = Path(__file__).resolve().parents[2]
CAPTURE = REPO / "captures" / "four-way-close.pcapng"


def twlab(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "TWLAB_PURE": os.environ.get("TWLAB_PURE", "1"), **(env or {})}
    e["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, cwd=cwd or REPO,
                          env=e, timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess[str], code: int) -> str:
    assert res.returncode == code, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twlab: "), res.stderr
    return lines[0]


def test_ctrl_c_before_the_subcommand_is_130_not_aborted() -> None:
    code = ("import click, sys\n"
            "def boom(self, ctx, args): raise KeyboardInterrupt\n"
            "click.Group.parse_args = boom\n"
            "from lab.cli import main\nmain()\n")
    res = subprocess.run([sys.executable, "-c", code, "list"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Aborted" not in res.stderr
    assert one_line_error(res, 130) == "twlab: interrupted; lab resources were removed"


def test_mistyped_experiment_gets_did_you_mean() -> None:
    res = CliRunner().invoke(cli, ["run", "four-way-clos"])
    assert res.exit_code == 2
    assert "did you mean four-way-close?" in res.output and len(res.output.strip().splitlines()) == 1


def test_experiment_names_complete_in_the_shell() -> None:
    env = {"COMP_WORDS": "twlab run time-wait-", "COMP_CWORD": "2", "_TWLAB_COMPLETE": "bash_complete"}
    res = subprocess.run([sys.executable, "-c", "from lab.cli import main; main()"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **env, "PYTHONPATH": str(REPO)})
    got = {ln.split(",", 1)[1] for ln in res.stdout.splitlines()}
    from lab.experiments import all_experiments

    want = {e.id for e in all_experiments() if e.id.startswith("time-wait-")}
    assert got == want and {"time-wait-duration", "time-wait-zero"} <= got


def test_every_option_has_help_text() -> None:
    missing = []
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help and p.name != "help":
                missing.append(f"{name} {p.opts[0]}")
    assert not missing, missing


# README's table writes the options every capture command shares as FILTERS and PROFILE (defined below it)
SHARED_OPTIONS = {"FILTERS": ("--port", "--host", "--since", "--until"), "PROFILE": ("--profile", "--time-wait")}


def test_readme_table_names_every_command_and_its_options() -> None:
    readme = (REPO / "README.md").read_text()
    table = [ln for ln in readme.splitlines() if ln.startswith("| `twlab ")]
    for group, opts in SHARED_OPTIONS.items():
        assert all(f"`{o}" in readme.split(f"{group}:", 1)[-1][:400] for o in opts), f"README does not define {group}"
    for name, cmd in cli.commands.items():
        if cmd.hidden:
            continue
        rows = " ".join(ln.split("` |", 1)[0] for ln in table if ln.startswith(f"| `twlab {name} ")
                        or ln.startswith(f"| `twlab {name}`"))
        assert rows, f"README's command table has no row for twlab {name}"
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name == "help":
                continue
            shared = [g for g, opts in SHARED_OPTIONS.items() if p.opts[0] in opts]
            if shared and f"[{shared[0]}]" in rows:
                continue
            assert any(o in rows for o in p.opts), f"twlab {name} {p.opts[0]} not in README's table"


@pytest.mark.parametrize("args", [["watch", "--port", "99999", "--once"], ["watch", "--port", "0", "--once"],
                                  ["watch", "--interval", "0", "--once"]])
def test_watch_rejects_bad_values_in_one_line(args: list[str]) -> None:
    one_line_error(twlab(*args), 2)


def test_watch_with_a_mistyped_namespace_lists_the_existing_ones() -> None:
    line = one_line_error(twlab("watch", "--netns", "twl-no-such-ns", "--once"), 2)
    assert "no network namespace 'twl-no-such-ns'" in line and "run the experiment again" not in line


def test_annotate_into_an_impossible_place_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    if not CAPTURE.is_file():
        pytest.skip("no gallery capture")
    line = one_line_error(twlab("annotate", str(CAPTURE), "-o", "/proc/twl-x.pcapng"), 3)
    assert "cannot write /proc/twl-x.pcapng" in line
    weird = tmp_path / "no\nsuch" / "x.pcapng"
    assert "\\n" in one_line_error(twlab("annotate", str(CAPTURE), "-o", str(weird)), 2)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(twlab("annotate", str(CAPTURE), "-o", str(fifo)), 2)
    assert fifo.is_fifo()  # the atomic rename never replaces something that is not a regular file
    assert not list(tmp_path.rglob("*twl-tmp*"))


def test_analyze_detail_without_json_says_so() -> None:
    if not CAPTURE.is_file():
        pytest.skip("no gallery capture")
    res = twlab("analyze", str(CAPTURE), "--detail")
    assert res.returncode == 0 and "--detail" in res.stderr and "--json" in res.stderr


def test_doctor_says_tshark_is_optional() -> None:
    data = json.loads(twlab("doctor", "--json").stdout)
    by = {c["name"]: c for c in data["checks"]}
    assert by["tshark"]["need"] == "optional" and by["root"]["need"] == "essential"
    assert by["tshark"]["ok"] or by["tshark"]["status"] == "missing (optional)"


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "20260101-000000"
    (run / "who-gets-time-wait").mkdir(parents=True)
    (run / "who-gets-time-wait" / "result.json").write_text(json.dumps(
        {"experiment": "who-gets-time-wait", "reproduced": True, "claim": "c", "kernel": "k",
         "observations": {"lore_holds": True}, "notes": []}))
    return run


def test_claims_is_a_lookup_that_writes_nothing_unless_asked(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"TWLAB_RUNS": str(tmp_path / "runs"), "XDG_STATE_HOME": str(tmp_path / "state")}
    res = twlab("claims", "--json", cwd=elsewhere, env=env)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["run"] == str(run) and {c["claim"] for c in doc["claims"] if c["verdict"] == "holds"} == {"first-closer"}
    assert not (run / "claims.md").exists() and not (run / "claims.json").exists()
    assert twlab("claims", "--run", str(run), "--write", cwd=elsewhere, env=env).returncode == 0
    assert json.loads((run / "claims.json").read_text()) == doc  # the file and the lookup: one shape
    os.chmod(run, 0o555)
    try:
        if os.geteuid() != 0:
            one_line_error(twlab("claims", "--run", str(run), "--write", cwd=elsewhere, env=env), 3)
    finally:
        os.chmod(run, 0o755)


def test_claims_without_any_run_is_one_line(tmp_path: Path) -> None:
    env = {"TWLAB_RUNS": str(tmp_path / "none"), "XDG_STATE_HOME": str(tmp_path / "state")}
    one_line_error(twlab("claims", cwd=tmp_path, env=env), 2)


def _in_private_mount_namespace(script: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """`sh -c script` in a private mount namespace (its mounts never reach the host's), twlab from this repo."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(REPO), "TWLAB_PURE": "1"})


@pytest.mark.root
def test_read_only_folders_are_one_line_even_for_root(tmp_path: Path) -> None:
    """A read-only mount (in a private mount namespace: the host's mounts stay as they are) stops root too."""
    import shutil

    if not shutil.which("unshare") or not CAPTURE.is_file():
        pytest.skip("needs unshare(1) and a gallery capture")
    run = _run_folder(tmp_path)
    py = f"{sys.executable} -m lab"
    script = (f"mount --bind -o ro {tmp_path} {tmp_path} && "
              f"{py} claims --run '{run}' --write; echo rc=$?; "
              f"{py} annotate '{CAPTURE}' -o '{tmp_path}/x.pcapng'; echo rc=$?")
    res = _in_private_mount_namespace(script, timeout_s=120)
    assert res.stdout.count("rc=3") == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("twlab: ") and "Read-only file system" in ln for ln in lines), lines
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*twl-tmp*"))
    assert not (run / "claims.md").exists() and not (tmp_path / "x.pcapng").exists()


@pytest.mark.root
def test_a_full_filesystem_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """analyze's spool (TMPDIR) and annotate's output on a 4 KiB tmpfs mounted in a private mount namespace."""
    import shutil

    big = REPO.parent / "shared" / "corpus" / "zeek__echo-connections.pcap.gz"
    if not big.is_file():
        big = Path("/work/shared/corpus/zeek__echo-connections.pcap.gz")
    if not shutil.which("unshare") or not big.is_file() or not CAPTURE.is_file():
        pytest.skip("needs unshare(1), the corpus and a gallery capture")
    full = tmp_path / "full"
    full.mkdir()
    py = f"{sys.executable} -m lab"
    script = (f"mount -t tmpfs -o size=4k twltest '{full}' && "
              f"TMPDIR='{full}' {py} analyze '{big}' --json > '{tmp_path}/out.json'; echo rc=$?; "
              f"{py} annotate '{big}' -o '{full}/x.pcapng'; echo rc=$?; ls -A '{full}'")
    res = _in_private_mount_namespace(script, timeout_s=300)
    assert res.stdout.split() == ["rc=3", "rc=3"], res.stdout + res.stderr   # and the tmpfs is left empty
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("twlab: ") and "No space left" in ln for ln in lines), lines
    assert (tmp_path / "out.json").read_text() == ""                          # no partial JSON


def test_the_manual_page_is_current_and_renders() -> None:
    from lab.cli import manual_page

    page = manual_page()
    for name, cmd in cli.commands.items():
        assert cmd.hidden or f".SS {name}".replace("-", "\\-") in page, name
    assert (REPO / "docs" / "twlab.1").read_text() == page, "regenerate: .venv/bin/twlab man > docs/twlab.1"
    import shutil

    if shutil.which("man"):
        out = subprocess.run(["man", "-l", str(REPO / "docs" / "twlab.1")], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"})
        assert out.returncode == 0 and "EXIT STATUS" in out.stdout and "warning" not in out.stderr, out.stderr
