"""`twlab analyze | show | annotate | verify` as a user runs them (a real process): exit codes,
one-line errors, the `analyze --json` contract on every corpus file, the ladder, and no output on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.analysis import verify as tshark
from lab.core import report

CLOSE_KINDS = set(report.CLOSE_KINDS)        # the Literal types' members: one list of kinds
FINDING_KINDS = set(report.FINDING_KINDS)
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def twlab(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="160", TERM="dumb")
    return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.name != "README.md")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    garbage = d / "garbage.pcap"
    garbage.write_bytes(os.urandom(4096))
    truncated = d / "truncated.pcap"
    truncated.write_bytes((corpus / "zeek__tls__ocsp-revoked.pcap").read_bytes()[:20])
    cut = d / "cut-mid-packet.pcap"
    cut.write_bytes((corpus / "zeek__tls__ocsp-revoked.pcap").read_bytes()[:10000])
    empty = d / "empty.pcapng"
    empty.write_bytes(b"")
    return {"garbage": garbage, "truncated": truncated, "cut": cut, "empty": empty, "missing": d / "missing.pcap"}


# --- analyze -----------------------------------------------------------------------------------------

def test_analyze_json_contract_on_every_corpus_file(corpus: Path) -> None:
    files = corpus_files(corpus)
    r = twlab("analyze", "--json", *files)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["file"] for d in docs] == [str(f) for f in files]  # one object per file, in order
    for d in docs:
        assert {"file", "packets", "skipped", "connections", "findings"} <= set(d)
        assert isinstance(d["packets"], int) and d["packets"] > 0 and isinstance(d["skipped"], dict)
        assert d["connections"], d["file"]
        ids = [c["id"] for c in d["connections"]]
        assert len(set(ids)) == len(ids)
        for c in d["connections"]:
            assert {"id", "client", "server", "incarnation", "first_frame", "last_frame", "close",
                    "time_wait"} <= set(c)
            assert ":" in c["client"] and ":" in c["server"]
            assert c["incarnation"] >= 0 and 1 <= c["first_frame"] <= c["last_frame"] <= d["packets"]
            assert c["close"]["kind"] in CLOSE_KINDS
            assert c["close"]["initiator"] in {"client", "server", "both", None}
            assert all(c["first_frame"] <= n <= c["last_frame"] for n in c["close"]["frames"])
            for w in c["time_wait"]:
                assert {"side", "start_ts", "end_ts", "start_frame"} <= set(w)
                assert w["side"] in {"client", "server"} and w["end_ts"] > w["start_ts"]
        for f in d["findings"]:
            assert {"kind", "connection", "frames", "detail"} <= set(f)
            assert f["kind"] in FINDING_KINDS and f["frames"]
            assert f["connection"] is None or f["connection"] in ids


def test_analyze_teardown_and_profiles(corpus: Path) -> None:
    f = corpus / "chrissanders__tcp_teardown.pcapng"
    lin = json.loads(twlab("analyze", "--json", f).stdout)
    c = lin["connections"][0]
    assert (c["close"]["kind"], c["close"]["initiator"]) == ("four-way", "server")
    assert [w["side"] for w in c["time_wait"]] == ["server"]
    w = c["time_wait"][0]
    assert w["end_ts"] - w["start_ts"] == pytest.approx(60.0)
    tw5 = json.loads(twlab("analyze", "--json", "--time-wait", "5", f).stdout)["connections"][0]["time_wait"][0]
    assert tw5["end_ts"] - tw5["start_ts"] == pytest.approx(5.0)
    win = json.loads(twlab("analyze", "--json", "--profile", "windows", f).stdout)["connections"][0]["time_wait"][0]
    assert win["end_ts"] - win["start_ts"] == pytest.approx(240.0)


def test_analyze_tables_for_people(corpus: Path) -> None:
    r = twlab("analyze", corpus / "zeek__mysql__auth.pcap")
    assert r.returncode == 0, r.stderr
    assert "connection" in r.stdout and "fin-retransmitted" in r.stdout and "TIME_WAIT" in r.stdout


@pytest.mark.parametrize("kind", ["garbage", "truncated", "cut", "empty", "missing"])
@pytest.mark.parametrize("cmd", [["analyze"], ["analyze", "--json"], ["show"], ["verify"]])
def test_bad_file_is_one_line_exit_2(bad_files: dict[str, Path], kind: str, cmd: list[str]) -> None:
    if cmd == ["verify"] and shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    strict = ["--strict"] if kind == "cut" else []   # without it a capture cut short is a warning (below)
    r = twlab(*cmd, *strict, bad_files[kind])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twlab: ") and "Traceback" not in r.stderr, r.stderr
    assert bad_files[kind].name in lines[0]
    assert r.stdout == ""


def test_bad_file_among_good_ones(corpus: Path, bad_files: dict[str, Path]) -> None:
    good = corpus / "chrissanders__tcp_teardown.pcapng"
    r = twlab("analyze", "--json", good, bad_files["garbage"], good)
    assert r.returncode == 2
    assert len(r.stdout.splitlines()) == 2 and len(r.stderr.strip().splitlines()) == 1


def test_bad_option_values_exit_2(corpus: Path) -> None:
    f = corpus / "chrissanders__tcp_teardown.pcapng"
    assert twlab("analyze", "--profile", "plan9", f).returncode == 2
    assert twlab("analyze", "--time-wait", "-1", f).returncode == 2


# --- show --------------------------------------------------------------------------------------------

def test_show_draws_the_teardown_ladder(corpus: Path) -> None:
    r = twlab("show", corpus / "chrissanders__tcp_teardown.pcapng")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for text in ("FIN M", "ACK M+1", "FIN N", "ACK N+1", "TIME_WAIT", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT",
                 "LAST_ACK", "60 s", "client 172.16.16.128:3363  ⇄  server 67.228.110.120:80"):
        assert text in out, (text, out)
    # the server closes first: its FIN travels right to left
    fin_line = next(line for line in out.splitlines() if "FIN M" in line)
    assert "<" in fin_line and ">" not in fin_line


def test_show_connection_option(corpus: Path) -> None:
    f = corpus / "arkime__gtp-iphone.pcap"
    r = twlab("show", f, "--connection", "2")
    assert r.returncode == 0, r.stderr
    assert "connection 2" in r.stdout and "SYN" in r.stdout
    # IPv6 endpoints in brackets survive rich (no markup eaten)
    assert "client [fd00:183:1:1:1886:9040:8605:32b8]:5060  ⇄  server [fd01::183]:5060" in r.stdout
    assert "ended by the new SYN in frame 95" in r.stdout  # the client's TIME_WAIT ends at the next incarnation
    r = twlab("show", f, "--connection", "99")
    assert r.returncode == 2 and "no connection 99" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- annotate ----------------------------------------------------------------------------------------

@needs_tshark
def test_annotate_writes_comments_tshark_lists(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "teardown.pcapng"
    r = twlab("annotate", corpus / "chrissanders__tcp_teardown.pcapng", "-o", out)
    assert r.returncode == 0, r.stderr
    comments = tshark.comments(out)
    assert sorted(comments) == [1, 2, 3, 4]
    joined = " ".join(" ".join(v) for v in comments.values())
    assert "FIN" in joined and "TIME_WAIT" in joined


@needs_tshark
def test_annotate_findings_on_mysql(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "mysql.pcapng"
    assert twlab("annotate", corpus / "zeek__mysql__auth.pcap", "-o", out).returncode == 0
    texts = [t for v in tshark.comments(out).values() for t in v]
    assert sum("fin-retransmitted" in t for t in texts) >= 13


@pytest.mark.parametrize("kind", ["garbage", "truncated", "cut", "empty", "missing"])
def test_annotate_bad_input_writes_nothing(bad_files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out.pcapng"
    r = twlab("annotate", bad_files[kind], "-o", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"existing output")
    r = twlab("annotate", bad_files[kind], "-o", out)
    assert r.returncode == 2 and out.read_bytes() == b"existing output"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pcapng"]


# --- verify ------------------------------------------------------------------------------------------

@needs_tshark
def test_verify_json_on_the_corpus(corpus: Path) -> None:
    files = corpus_files(corpus)
    r = twlab("verify", "--json", *files)
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(docs) == len(files)
    for d in docs:
        assert {"file", "tshark_version", "packets", "ok", "checks", "disagreements"} <= set(d)
        assert d["tshark_version"][0].isdigit()
    assert r.returncode == (0 if all(d["ok"] for d in docs) else 1)


@needs_tshark
def test_verify_for_people(corpus: Path) -> None:
    r = twlab("verify", corpus / "deepflow__tcp-n-syn-ack.pcap")
    assert "reused-ports" in r.stdout and "SYN-ACK" in r.stdout


def test_verify_without_tshark_exit_3(corpus: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "lab", "verify", str(corpus / "chrissanders__tcp_teardown.pcapng")],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "apt-get install -y tshark" in r.stderr


def test_the_analyze_table_styles_every_close_kind() -> None:
    from lab.analysis.view import _KIND_STYLE
    from lab.core.report import CLOSE_KINDS

    assert set(_KIND_STYLE) == set(CLOSE_KINDS)
