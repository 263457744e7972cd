"""`twlab analyze` in an incident (issue 14), as a user runs it (real processes): pipes, stdin and FIFOs,
captures cut short, filters, --jsonl, --fail-on, the JSON schema, show --stream/--port, and the census
checked against an independent count."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from lab.analysis.census import CensusFold, sparkline
from lab.core import census as cc
from lab.core.report import Close, Connection, TimeWaitWindow

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schema" / "analyze.schema.json"
TEARDOWN = "chrissanders__tcp_teardown.pcapng"
MYSQL = "zeek__mysql__auth.pcap"


def twlab(*args: str | Path, stdin: bytes | None = None,
          shell: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, COLUMNS="160", TERM="dumb")
    cmd: Any = shell if shell is not None else [sys.executable, "-m", "lab", *map(str, args)]
    return subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=300, check=False,
                          shell=shell is not None, executable="/bin/bash" if shell is not None else None)


def doc_of(r: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def without_file(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "file"}


# --- any input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [TEARDOWN, MYSQL, "zeek__echo-connections.pcap.gz"])
def test_stdin_fifo_and_process_substitution_read_like_the_file(corpus: Path, tmp_path: Path, name: str) -> None:
    f = corpus / name
    want = doc_of(twlab("analyze", "--json", f))
    assert want["connections"]
    assert without_file(doc_of(twlab("analyze", "--json", "-", stdin=f.read_bytes()))) == without_file(want)
    assert without_file(doc_of(twlab(shell=f"{sys.executable} -m lab analyze --json <(cat {f})"))) == \
        without_file(want)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["/bin/sh", "-c", f"cat {f} > {fifo}"])
    try:
        got = doc_of(twlab("analyze", "--json", fifo))
    finally:
        writer.wait(30)
    assert without_file(got) == without_file(want)


def _cut_pcapng(corpus: Path, tmp_path: Path) -> tuple[Path, int]:
    """The mysql capture as pcapng, cut in the middle of its 20th packet block; (file, last complete frame)."""
    import io

    from lab.pcap.readers import iter_frames
    from lab.pcap.writer import PcapngWriter

    buf = io.BytesIO()
    w = PcapngWriter(buf)
    for fr in iter_frames(corpus / MYSQL):
        w.write(fr.ts_ns, fr.data, fr.orig_len, linktype=fr.linktype)
    src = buf.getvalue()
    pos, epbs = 0, []
    while pos + 8 <= len(src):   # the offset of each enhanced packet block (type 6)
        btype, total = int.from_bytes(src[pos:pos + 4], "little"), int.from_bytes(src[pos + 4:pos + 8], "little")
        if btype == 6:
            epbs.append(pos)
        pos += total
    assert len(epbs) > 25
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(src[:epbs[19] + 30])
    return cut, 19


def test_truncated_pcapng_is_analyzed_up_to_the_cut_with_one_warning(corpus: Path, tmp_path: Path) -> None:
    cut, last = _cut_pcapng(corpus, tmp_path)
    r = twlab("analyze", "--json", cut)
    d = doc_of(r)
    warn = r.stderr.decode().strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith("twlab: warning: ") and f"frame {last}," in warn[0], warn
    assert d["packets"] == last and d["warnings"] and f"frame {last}," in d["warnings"][0]
    assert d["connections"] and all(c["last_frame"] <= last for c in d["connections"])
    # the people's view: the same warning, exit 0; --strict: exit 2, one line, nothing on stdout
    r = twlab("analyze", cut)
    assert r.returncode == 0 and len(r.stderr.decode().strip().splitlines()) == 1
    r = twlab("analyze", "--json", "--strict", cut)
    assert r.returncode == 2 and r.stdout == b"" and len(r.stderr.decode().strip().splitlines()) == 1


def test_truncated_gzip_and_pipe(corpus: Path, tmp_path: Path) -> None:
    data = gzip.compress((corpus / MYSQL).read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(data[:len(data) // 2])
    r = twlab("analyze", "--json", cut)
    d = doc_of(r)
    assert d["packets"] > 0 and d["warnings"] and "cut short" in d["warnings"][0]
    raw = (corpus / MYSQL).read_bytes()
    d = doc_of(twlab("analyze", "--json", "-", stdin=raw[:len(raw) - 10]))
    assert d["warnings"] and d["packets"] == doc_of(twlab("analyze", "--json", corpus / MYSQL))["packets"] - 1


# --- filters --------------------------------------------------------------------------------------------

def test_port_host_and_time_filters(corpus: Path) -> None:
    f = corpus / "deepflow__l4-source-port-reuse.pcap"
    full = doc_of(twlab("analyze", "--json", f))
    ports = sorted({int(c["client"].rsplit(":", 1)[1]) for c in full["connections"]})
    p = ports[0]
    want = [c for c in full["connections"] if c["client"].endswith(f":{p}") or c["server"].endswith(f":{p}")]
    assert 0 < len(want) < len(full["connections"]) or len(ports) == 1
    got = doc_of(twlab("analyze", "--json", "--port", p, f))
    assert [(c["client"], c["server"], c["first_frame"]) for c in got["connections"]] == \
        [(c["client"], c["server"], c["first_frame"]) for c in want]
    assert got["skipped"].get("filtered-out", 0) == full["tcp_segments"] - sum(c["packets"] for c in want)
    host = want[0]["client"].rsplit(":", 1)[0]
    assert doc_of(twlab("analyze", "--json", "--host", "192.0.2.99", f))["connections"] == []
    assert len(doc_of(twlab("analyze", "--json", "--host", host, f))["connections"]) >= len(want)
    # times: capture-relative seconds and ISO; nothing after --until
    t0 = min(c["first_ts"] for c in full["connections"])
    late = doc_of(twlab("analyze", "--json", "--since", "1e9", f))
    assert late["connections"] == [] and late["skipped"]["filtered-out"] == full["tcp_segments"]
    from datetime import datetime

    iso = datetime.fromtimestamp(t0 - 1, tz=UTC).isoformat()
    assert len(doc_of(twlab("analyze", "--json", "--since", iso, f))["connections"]) == len(full["connections"])
    assert twlab("analyze", "--since", "yesterday", f).returncode == 2
    assert twlab("analyze", "--host", "not-an-ip", f).returncode == 2


def test_show_picks_by_stream_and_port(corpus: Path) -> None:
    f = corpus / "deepflow__l4-source-port-reuse.pcap"
    full = doc_of(twlab("analyze", "--json", f))
    by_first = sorted(full["connections"], key=lambda c: (c["first_frame"], c["id"]))
    last = len(by_first) - 1
    r = twlab("show", "--stream", last, f)
    assert r.returncode == 0, r.stderr
    c = by_first[last]
    assert f"frames {c['first_frame']}" in r.stdout.decode() or str(c["first_frame"]) in r.stdout.decode()
    assert twlab("show", "--stream", last + 1, f).returncode == 2
    port = int(c["client"].rsplit(":", 1)[1])
    r = twlab("show", "--port", port, f)
    assert r.returncode == 0 and str(port) in r.stdout.decode()


# --- --jsonl, --fail-on, schema -----------------------------------------------------------------------

def test_jsonl_lines_match_json(corpus: Path) -> None:
    f = corpus / MYSQL
    d = doc_of(twlab("analyze", "--json", f))
    r = twlab("analyze", "--jsonl", f)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    conns = [{k: v for k, v in x.items() if k != "type"} for x in lines if x["type"] == "connection"]
    finds = [{k: v for k, v in x.items() if k != "type"} for x in lines if x["type"] == "finding"]
    assert conns == d["connections"] and finds == d["findings"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["connections"] == len(conns) and summary["schema"] == 1
    assert summary["census"] == d["census"]
    assert twlab("analyze", "--json", "--jsonl", f).returncode == 2


def test_jsonl_lines_do_not_depend_on_where_batches_fall() -> None:
    """A connection's line, then its findings' lines: the same text drained after every segment as drained
    once at the end (the compiled walk drains per MiB, the pure one per 8,192 segments)."""
    import io

    from lab.analysis.stream import Options, write_jsonl
    from lab.core.tracker import Analyzer
    from lab.pcap.readers import CaptureReader, ReaderStats

    # connections finished mid-capture (reuse), with findings: drained one by one or all at once
    f = Path(__file__).resolve().parents[2] / "captures" / "ephemeral-exhaustion.pcapng"

    def feeder(every: bool) -> Any:
        def feed(analyzer: Analyzer, on_batch: Any) -> ReaderStats:
            reader = CaptureReader(f)
            for seg in reader:
                analyzer.feed(seg)
                if every:
                    on_batch()
            return reader.stats
        return feed

    texts = []
    for every in (True, False):
        out = io.BytesIO()
        write_jsonl(feeder(every), out, Options(), name="f")
        texts.append(out.getvalue().decode())
    assert texts[0] == texts[1]
    kinds = [json.loads(x)["type"] for x in texts[0].splitlines()]
    assert "finding" in kinds and kinds[0] == "connection" and kinds[-1] == "summary"


def test_fail_on_exits_4(corpus: Path) -> None:
    f = corpus / "zeek__tcp__fin_retransmission.pcap"
    kinds = {x["kind"] for x in doc_of(twlab("analyze", "--json", f))["findings"]}
    assert "fin-retransmitted" in kinds
    r = twlab("analyze", "--json", "--fail-on", "fin-retransmitted", f)
    assert r.returncode == 4 and json.loads(r.stdout)["findings"]   # the output is still complete
    assert twlab("analyze", "--fail-on", "fin-retransmitted", f).returncode == 4
    absent = sorted({"time-wait-assassinated", "delayed-duplicate", "final-ack-lost"} - kinds)[0]
    assert twlab("analyze", "--json", "--fail-on", absent, f).returncode == 0
    assert twlab("analyze", "--json", "--fail-on", "fin-retransmitted:nonsense", f).returncode == 0
    assert twlab("analyze", "--fail-on", "no-such-kind", f).returncode == 2


def test_every_json_document_validates_against_the_schema(corpus: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    files = sorted(p for p in corpus.iterdir() if p.name != "README.md")
    r = twlab("analyze", "--json", "--detail", *files)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(docs) == len(files)
    validator = jsonschema.Draft202012Validator(schema)
    for d in docs:
        errors = sorted(validator.iter_errors(d), key=str)
        assert not errors, (d["file"], [e.message for e in errors[:3]])
    from lab.core.report import CLOSE_KINDS, FINDING_KINDS

    conn = schema["$defs"]["connection"]["properties"]
    assert set(conn["close"]["properties"]["kind"]["enum"]) == set(CLOSE_KINDS)   # the schema follows the core
    assert set(schema["$defs"]["finding"]["properties"]["kind"]["enum"]) == set(FINDING_KINDS)
    broken = dict(docs[0], schema="1")
    assert list(validator.iter_errors(broken))   # the schema does reject a wrong document


# --- census ---------------------------------------------------------------------------------------------

def _conn(i: int, start: float, tw: list[tuple[str, float, float]], client: str = "192.0.2.1",
          kind: str = "three-way", initiator: str | None = "client", frames: int = 3) -> Connection:
    windows = tuple(TimeWaitWindow(side, a, b, 1) for side, a, b in tw)
    return Connection(i, f"{client}:{40000 + i}", "198.51.100.1:80", 0, 1, 2,
                      Close(kind, initiator, tuple(range(1, frames + 1))), windows, (), start, start + 0.5, 5)


def test_census_fold_on_hand_made_records() -> None:
    fold = CensusFold()
    fold([_conn(0, 0.0, [("client", 1.0, 61.0)]), _conn(1, 0.5, [("client", 2.0, 62.0)]),
          _conn(2, 1.0, [("server", 3.0, 4.0)]), _conn(3, 70.0, [("client", 70.5, 130.5)]),
          _conn(4, 71.0, [], kind="incomplete", initiator="server", frames=2)._replace(open_at_end=True),
          _conn(5, 72.0, [], kind="incomplete", initiator="server", frames=2)], [])   # not open at the end
    doc = fold.result("linux", 60.0, (40000, 40001), 0.0, 140.0)
    client = doc["time_wait"]["sides"]["client"]
    assert (client["peak"], client["peak_t"], client["windows"]) == (2, 2.0, 3)
    assert doc["time_wait"]["sides"]["server"]["peak"] == 1
    assert doc["open_at_end"]["close_wait"] == 1 and doc["open_at_end"]["fin_wait_2"] == 1
    assert doc["open_at_end"]["by_endpoint"][0]["endpoint"] in ("192.0.2.1", "198.51.100.1:80")
    dest = doc["new_connections"]["destinations"][0]
    assert dest["server"] == "198.51.100.1:80" and dest["connections"] == 6 and dest["clients"] == 1
    # two ports / 60 s; the busiest 60 s hold 3 new connections: 0.05/s = 150 %, out of ports after 2 / 0.05 s
    assert doc["new_connections"]["capacity"]["per_s"] == pytest.approx(2 / 60, abs=1e-3)
    assert (dest["rate_per_s"], dest["window_s"], dest["utilisation"]) == (0.05, 60, 1.5)
    assert dest["runs_out_after_s"] == 40.0 and dest["runs_out_t"] == 40.0 and doc["new_connections"]["fixes"]
    assert sparkline([0, 1, 2, 4]) == " ▃▅█" and sparkline([0, 0]) == "  "   # a bar is ceil(7 v / max)


def _independent_peak(conns: list[dict[str, Any]], side: str) -> int:
    """Windows held at once, by a plain sweep over sorted (time, +1/-1) events on the census's tick."""
    events = []
    for c in conns:
        for w in c["time_wait"]:
            if w["side"] == side:
                a, b = int(w["start_ts"] / cc.RESOLUTION_S), int(w["end_ts"] / cc.RESOLUTION_S)
                if b > a:
                    events += [(a, 1), (b, -1)]
    held = best = 0
    for i, (t, d) in enumerate(sorted(events)):
        held += d
        if i + 1 == len(events) or (events and sorted(events)[i + 1][0] != t):
            best = max(best, held)
    return best


@pytest.mark.root
def test_census_on_churn_against_an_independent_count(tmp_path: Path) -> None:
    if not shutil.which("tcpdump"):
        pytest.skip("tcpdump not installed")
    from benchmarks.bench_analyze import generate

    path = tmp_path / "churn.pcap"
    meta = generate(path, 40_000, 2, 2)
    lo, hi = (int(x) for x in meta["port_range"].split())
    d = doc_of(twlab("analyze", "--json", "--port-range", f"{lo}-{hi}", path))
    census = d["census"]
    conns = d["connections"]
    for side in ("client", "server"):
        want = _independent_peak(conns, side)
        assert census["time_wait"]["sides"][side]["peak"] == want, side
    assert census["time_wait"]["sides"]["client"]["peak"] > 100    # churn: the client side holds many
    # new connections per second to the server, counted here from the records
    starts = sorted(c["first_ts"] for c in conns if not c["mid_capture"])
    dest = census["new_connections"]["destinations"][0]
    assert dest["connections"] == len(starts)
    window = dest["window_s"]
    best = max(sum(1 for s in starts if int(a) <= int(s) < int(a) + window) for a in starts)
    assert dest["rate_per_s"] == pytest.approx(best / window)
    cap = census["new_connections"]["capacity"]
    assert cap["ports"] == hi - lo + 1 and cap["per_s"] == pytest.approx((hi - lo + 1) / 60, abs=1e-3)
    assert dest["utilisation"] == pytest.approx(dest["rate_per_s"] / cap["per_s"], rel=1e-3)
    assert dest["utilisation"] > 1 and census["new_connections"]["fixes"]   # the churn outruns 1000 ports / 60 s
    people = twlab("analyze", "--port-range", f"{lo}-{hi}", path).stdout.decode()
    assert "census" in people and "runs out" in people


# --- progress ---------------------------------------------------------------------------------------------

def test_progress_bar_only_on_a_terminal_and_only_after_the_delay(corpus: Path) -> None:
    from lab.analysis.view import ReadProgress

    f = corpus / MYSQL
    quiet = ReadProgress(f, enabled=False)
    quiet.DELAY_S = 0.0
    quiet(100)
    assert quiet._bar is None                      # stderr not a terminal: never a bar
    early = ReadProgress(f, enabled=True)
    early(100)
    assert early._bar is None                      # a read shorter than ~2 s shows nothing
    late = ReadProgress(f, enabled=True)
    late.DELAY_S = 0.0
    with late:
        late(f.stat().st_size // 2)
        assert late._bar is not None and late.total == f.stat().st_size
        assert late._bar.tasks[0].completed == f.stat().st_size // 2
    # the CLI in a pipe: stderr carries no progress output at all
    r = twlab("analyze", "--json", f)
    assert r.returncode == 0 and b"\x1b[" not in r.stderr and b"\r" not in r.stderr and b"MB" not in r.stderr


def test_progress_reports_bytes_packets_and_open_connections(corpus: Path) -> None:
    """The feed tells the bar how far it is in bytes, packets and connections open (issue 14 item 6)."""
    from lab.analysis.view import ReadProgress
    from lab.core.tracker import Analyzer
    from lab.pcap.feed import feed_file

    f = corpus / "zeek__echo-connections.pcap.gz"
    calls: list[tuple[int, int, int]] = []
    stats = feed_file(f, Analyzer(keep=False), lambda: None, progress=lambda *a: calls.append(a))
    assert len(calls) >= 2, calls                              # a multi-MiB read reports as it goes
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and calls[-1][0] > 0
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and 0 < calls[-1][1] <= stats.packets
    assert any(c[2] > 0 for c in calls)                        # connections were open mid-read
    bar = ReadProgress(f, enabled=True)
    bar.DELAY_S = 0.0
    with bar:
        bar(*calls[-1])
        assert bar._bar.tasks[0].fields["counts"] == f"{calls[-1][1]:,} packets, {calls[-1][2]:,} connections open"
