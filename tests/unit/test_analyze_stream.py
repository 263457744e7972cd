"""Streamed `twlab analyze`: the JSON written record by record equals the whole Report's to_dict() on every
corpus file; a file cut in the middle leaves nothing on stdout and no spool file; the people's summary
counts every record while it keeps only the first rows.

The long file here is a real capture replayed: the 13 MySQL logins of zeek__mysql__auth.pcap, 500 times,
each copy 5 or 100 s after the one before (so four-tuples come back after TIME_WAIT, and connections
finish mid-file)."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import reap

from lab.analysis import stream as analyze_stream
from lab.core.tracker import analyze
from lab.errors import BadCapture
from lab.pcap.readers import CaptureReader

HEAD_KEYS = ["schema", "twlab", "file", "profile", "time_wait_s", "connections", "findings", "packets",
             "tcp_segments", "skipped", "segments", "census", "warnings"]
CONN_KEYS = ["id", "client", "server", "incarnation", "first_frame", "last_frame", "close", "time_wait", "first_ts",
             "last_ts", "packets", "isn", "mid_capture"]
TW_KEYS = ["side", "start_ts", "end_ts", "start_frame", "restarts", "ended_by", "end_frame", "length_s"]


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.name != "README.md")


def replay(src: Path, dst: Path, copies: int, shifts_s: tuple[int, ...]) -> int:
    """dst: the packets of the (little-endian, microsecond) pcap src, `copies` times, each copy later than the
    one before by the next of shifts_s. Returns the packet count."""
    data = src.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "replay() takes a little-endian microsecond pcap"
    records: list[tuple[int, bytes]] = []
    off = 24
    while off < len(data):
        sec, _usec, incl, _orig = struct.unpack_from("<IIII", data, off)
        records.append((sec, data[off + 4:off + 16 + incl]))  # everything after ts_sec
        off += 16 + incl
    span = records[-1][0] - records[0][0] + 1
    out = [data[:24]]
    shift = 0
    for k in range(copies):
        out.extend(struct.pack("<I", sec + shift) + rest for sec, rest in records)
        shift += span + shifts_s[k % len(shifts_s)]
    dst.write_bytes(b"".join(out))
    return copies * len(records)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    path = tmp_path_factory.mktemp("replay") / "mysql-x500.pcap"
    replay(corpus / "zeek__mysql__auth.pcap", path, 500, (5, 100))
    return path


@pytest.fixture(scope="module")
def long_file_cut(long_file: Path) -> Path:
    cut = long_file.with_name("mysql-x500-cut.pcap")
    data = long_file.read_bytes()
    cut.write_bytes(data[:len(data) * 9 // 10 + 7])   # ends inside a packet record
    return cut


def twlab(*args: str | Path, tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", TERM="dumb")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def streamed(path: Path, **kw: Any) -> dict[str, Any]:
    out = io.BytesIO()
    analyze_stream.write_json(path, out, **kw)
    text = out.getvalue().decode()
    assert text.endswith("}\n") and text.count("\n") == 1
    doc: dict[str, Any] = json.loads(text)
    return doc


def reference(path: Path, detail: bool, **kw: Any) -> tuple[dict[str, Any], Any]:
    reader = CaptureReader(path)
    ref = analyze(reader, **kw).to_dict()
    if not detail:
        for c in ref["connections"]:
            del c["transitions"], c["roles"]
    return ref, reader.stats


def as_multiset(findings: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(f, sort_keys=True) for f in findings)


def assert_same(doc: dict[str, Any], path: Path, detail: bool, **kw: Any) -> None:
    ref, stats = reference(path, detail, **kw)
    assert list(doc) == HEAD_KEYS
    assert doc["file"] == str(path)
    assert (doc["profile"], doc["time_wait_s"], doc["segments"]) == (ref["profile"], ref["time_wait_s"],
                                                                      ref["segments"])
    assert (doc["packets"], doc["tcp_segments"], doc["skipped"]) == (stats.packets, stats.tcp_segments,
                                                                     dict(stats.skipped))
    ours = {c["id"]: c for c in doc["connections"]}
    assert len(ours) == len(doc["connections"])            # each connection once
    assert ours == {c["id"]: c for c in ref["connections"]}
    for c, r in zip(sorted(doc["connections"], key=lambda c: c["id"]), ref["connections"], strict=True):
        assert list(c) == list(r)                           # the contract's key order too
    assert as_multiset(doc["findings"]) == as_multiset(ref["findings"])


# --- the JSON equals the whole Report's --------------------------------------------------------------------

@pytest.mark.parametrize("detail", [False, True], ids=["plain", "detail"])
def test_streamed_json_equals_the_report_on_every_corpus_file(corpus: Path, detail: bool) -> None:
    for path in corpus_files(corpus):
        doc = streamed(path, detail=detail)
        assert doc["connections"], path
        assert_same(doc, path, detail)
        for c in doc["connections"]:
            assert list(c)[:len(CONN_KEYS)] == CONN_KEYS
            assert all(list(w)[:len(TW_KEYS)] == TW_KEYS for w in c["time_wait"])   # keys are only added
            assert ("transitions" in c and "roles" in c) == detail


def test_streamed_json_on_a_long_replayed_capture(long_file: Path) -> None:
    doc = streamed(long_file, time_wait_s=60)
    assert_same(doc, long_file, False, time_wait_s=60)
    kinds = Counter(f["kind"] for f in doc["findings"])
    assert kinds["fin-retransmitted"] == 500 * 13 and kinds["reuse-after-time-wait"] == 499 * 13, kinds
    assert len(doc["connections"]) == 500 * 13


def test_profile_and_time_wait_options_reach_the_stream(corpus: Path) -> None:
    path = corpus / "chrissanders__tcp_teardown.pcapng"
    for kw, length in (({"profile": "windows"}, 240.0), ({"time_wait_s": 5.0}, 5.0)):
        doc = streamed(path, **kw)
        assert_same(doc, path, False, **kw)
        w = doc["connections"][0]["time_wait"][0]
        assert doc["time_wait_s"] == length and w["end_ts"] - w["start_ts"] == pytest.approx(length)


def test_serializers_write_what_json_dumps_writes(corpus: Path) -> None:
    for path in corpus_files(corpus):
        report = analyze(CaptureReader(path))
        for c in report.connections:
            assert analyze_stream.connection_json(c, detail=True) == json.dumps(c.to_dict())
        for f in report.findings:
            assert analyze_stream.finding_json(f) == json.dumps(f.to_dict())


# --- a file damaged in the middle ----------------------------------------------------------------------------

def test_records_stream_out_before_the_damage(long_file_cut: Path) -> None:
    """The premise of the next test: records were handed out (spooled) before the reader hit the cut."""
    got: list[Any] = []
    with pytest.raises(BadCapture, match=r"mysql-x500-cut\.pcap"):
        analyze_stream.run(long_file_cut, lambda conns, findings: got.extend(conns))
    assert len(got) > 1000


def test_cut_in_the_middle_prints_no_json(long_file: Path, long_file_cut: Path, tmp_path: Path) -> None:
    r = twlab("analyze", "--json", "--strict", long_file, long_file_cut, long_file, tmpdir=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twlab: ") and "mysql-x500-cut.pcap" in err[0] and "frame" in err[0]
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and r.stdout.endswith("\n")     # the two intact files, one complete object each
    docs = [json.loads(line) for line in lines]
    assert [d["file"] for d in docs] == [str(long_file)] * 2
    assert docs[0] == docs[1]
    assert list(tmp_path.iterdir()) == []                   # spool files removed


def test_cut_alone_prints_nothing(long_file_cut: Path, tmp_path: Path) -> None:
    """--strict: a capture cut short is an error; without it see test_analyze_incident.py."""
    for args in (["--json", "--strict"], ["--strict"]):
        r = twlab("analyze", *args, long_file_cut, tmpdir=tmp_path)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r
    assert list(tmp_path.iterdir()) == []


def test_sigterm_removes_the_spool_files(long_file: Path, tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    files = [long_file] * 20
    p = subprocess.Popen([sys.executable, "-m", "lab", "analyze", "--json", *map(str, files)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.iterdir()):
            assert p.poll() is None and time.monotonic() < deadline, "no spool file appeared"
            time.sleep(0.01)
        spools = sorted(x.name for x in tmp_path.iterdir())
        assert all(n.startswith("twl") and n.endswith(".json") for n in spools), spools
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        reap(p)
    assert p.returncode == 128 + signal.SIGTERM and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


# --- several files, --detail ---------------------------------------------------------------------------------

def test_cli_json_one_object_per_file(corpus: Path, long_file: Path) -> None:
    files = [corpus / "chrissanders__tcp_teardown.pcapng", long_file, corpus / "arkime__gtp-iphone.pcap"]
    r = twlab("analyze", "--json", *files)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["file"] for d in docs] == [str(f) for f in files]
    for d, f in zip(docs, files, strict=True):
        assert_same(d, f, False)
        assert all("transitions" not in c for c in d["connections"])


def test_cli_detail_has_transitions_and_roles(corpus: Path) -> None:
    f = corpus / "chrissanders__tcp_teardown.pcapng"
    r = twlab("analyze", "--json", "--detail", f)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert_same(doc, f, True)
    c = doc["connections"][0]
    steps = [(t["side"], t["from"], t["to"]) for t in c["transitions"]]
    assert ("server", "ESTABLISHED", "FIN_WAIT_1") in steps and ("server", "FIN_WAIT_2", "TIME_WAIT") in steps
    assert any(side == "server" and role.startswith("FIN M") for _, side, role in c["roles"])


def test_help_says_connections_come_in_the_order_they_end() -> None:
    r = twlab("analyze", "--help")
    assert r.returncode == 0 and "order they end" in " ".join(r.stdout.split()) and "--detail" in r.stdout


# --- the people's summary ------------------------------------------------------------------------------------

def test_summary_counts_every_record_and_keeps_the_first_rows(long_file: Path) -> None:
    s = analyze_stream.summarize(long_file)
    ref, stats = reference(long_file, False)
    conns, findings = ref["connections"], ref["findings"]
    assert (s.connections, s.findings, s.packets, s.segments) == (len(conns), len(findings), stats.packets,
                                                                  ref["segments"])
    assert s.closes == Counter((c["close"]["kind"], c["close"]["initiator"] or "-") for c in conns)
    assert s.time_wait == Counter((w["side"], w["ended_by"]) for c in conns for w in c["time_wait"])
    assert s.finding_kinds == Counter(f["kind"] for f in findings)
    assert s.verdicts == Counter((f["kind"], f["verdict"]) for f in findings
                                 if f["kind"] in ("reuse-in-time-wait", "delayed-duplicate"))
    assert s.first_connections == conns[:200]               # lowest ids, whatever order they ended in
    key = [(f["frames"][0], f["kind"]) for f in s.first_findings]
    assert len(key) == 200 and key == sorted((f["frames"][0], f["kind"]) for f in findings)[:200]


def test_people_see_the_summary(long_file: Path) -> None:
    r = twlab("analyze", long_file)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    doc = streamed(long_file)
    kinds = Counter(c["close"]["kind"] for c in doc["connections"])
    n = len(doc["connections"])
    assert f"{n} connection(s)" in out
    for kind, count in kinds.items():
        row = next(line for line in out.splitlines() if f" {kind} " in line and "│" in line)
        assert row.split("│")[-2].strip() == str(count), row  # the total column
    for kind, count in Counter(f["kind"] for f in doc["findings"]).items():
        assert any(kind in line and f" {count} " in line for line in out.splitlines()), kind
    assert f"first 200 of {n} connections shown ({n - 200} not shown); --json lists all" in out
    assert f"first 200 of {len(doc['findings'])} findings shown" in out


def test_people_see_verdict_counts(corpus: Path) -> None:
    r = twlab("analyze", corpus / "arkime__tcp-reassembly-synthetic.pcap")
    assert r.returncode == 0, r.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in r.stdout.splitlines() if "│" in line]
    assert ["reuse-in-time-wait", "2", "acceptable 1, dangerous 1"] in rows
    assert ["delayed-duplicate", "1", "could be accepted 1"] in rows
    assert "not shown" not in r.stdout                       # 12 connections: all listed


def test_a_capture_without_packets(corpus: Path, tmp_path: Path) -> None:
    empty = tmp_path / "header-only.pcap"
    empty.write_bytes((corpus / "zeek__mysql__auth.pcap").read_bytes()[:24])
    r = twlab("analyze", "--json", empty)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == HEAD_KEYS and doc["connections"] == [] and doc["findings"] == [] and doc["packets"] == 0
    r = twlab("analyze", empty)
    assert r.returncode == 0 and f"{empty}: 0 packets, no TCP connection" in r.stdout
