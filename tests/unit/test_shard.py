"""analyze -j N (lab.analysis.shard, lab.core.merge): one capture split by four-tuple into N analyzers and
merged gives the records one analyzer gives (ids renumbered in first-segment order, finding ids and texts
rewritten); several files in N processes give the same output, in the order named."""

from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab.analysis import shard, stream
from lab.core.merge import Part, add_counts, merge_parts, renumber_finding
from lab.core.report import Finding
from tests.unit.synth import repeated

FILES = ["zeek__echo-connections.pcap.gz", "zeek__mysql__auth.pcap", "arkime__tcp-reassembly-synthetic.pcap",
         "arkime__tcp_handshake_synthetic.pcap", "deepflow__l4-source-port-reuse.pcap", "arkime__gtp-iphone.pcap"]
REPO = Path(__file__).resolve().parents[2]


def _doc(path: Path, jobs: int, **kw: Any) -> dict[str, Any]:
    buf = io.BytesIO()
    if jobs == 1:
        stream.write_json(path, buf, opts=shard.Settings(**kw).options())
    else:
        shard.write_sharded(path, buf, "json", jobs, shard.Settings(**kw))
    doc = json.loads(buf.getvalue())
    doc["connections"].sort(key=lambda c: c["id"])       # one analyzer lists them as they end; shards by id
    doc["findings"].sort(key=lambda f: json.dumps(f, sort_keys=True))
    return doc


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("jobs", [2, 3])
def test_sharded_is_the_single_analysis(corpus: Path, name: str, jobs: int) -> None:
    src = corpus / name
    assert _doc(src, jobs) == _doc(src, 1)


def test_sharded_reuse_across_shards_and_detail(corpus: Path, tmp_path: Path) -> None:
    # 4 connections (0.5 s) again and again, 5 s apart: the four-tuples come back inside TIME_WAIT, so findings
    # name earlier ids (previous_connection, "connection N" in their text); timestamps stay in order
    src = repeated(corpus / "zeek__tls__ocsp-revoked.pcap", tmp_path / "again.pcapng", 40, 5.0)
    single = _doc(src, 1, detail=True)
    assert any(f.get("previous_connection") for f in single["findings"])
    assert _doc(src, 3, detail=True) == single
    for filt in [((443,), (), None, None), ((), (), "100", None), ((), (), "50", "150")]:
        assert _doc(src, 2, filter_args=filt) == _doc(src, 1, filter_args=filt), filt


@pytest.mark.xfail(strict=True, reason="timestamps that go backwards (each copy of this 169 s capture starts 10 s "
                   "after the previous one): one analyzer's sweep at a later timestamp finishes connection 295 "
                   "(idle 60 s by that clock) before the SYN that ends its TIME_WAIT in the next copy, the shards "
                   "sweep at other moments; records depend on the sweep schedule when time is not monotonic "
                   "(tracker)")
def test_sharded_with_time_going_backwards_is_the_single_analysis(corpus: Path, tmp_path: Path) -> None:
    src = repeated(corpus / "zeek__mysql__auth.pcap", tmp_path / "again.pcapng", 40, 10.0)
    since = ((), (), "100", None)
    assert _doc(src, 2, filter_args=since) == _doc(src, 1, filter_args=since)


def test_merge_renumbers_in_first_segment_order() -> None:
    from lab.core.report import Close, Connection

    def conn(cid: int, first: int) -> Connection:
        return Connection(cid, "192.0.2.1:1", "192.0.2.2:2", 0, first, first + 3, Close("clean", "client", ()))

    p0 = Part([conn(0, 5), conn(1, 9)], [Finding("reuse-in-time-wait", 1, (9,), "new SYN into connection 0's",
                                                 {"previous_connection": 0, "verdict": "x"})], 4)
    p1 = Part([conn(0, 1), conn(1, 7)], [Finding("capture-duplicate", 0, (2,), "in connection 0")], 6)
    m = merge_parts([p0, p1])
    assert [(c.id, c.first_frame) for c in m.connections] == [(0, 1), (1, 5), (2, 7), (3, 9)]
    assert m.segments == 10
    assert m.findings[0] == Finding("capture-duplicate", 0, (2,), "in connection 0")
    assert m.findings[1] == Finding("reuse-in-time-wait", 3, (9,), "new SYN into connection 1's",
                                    {"previous_connection": 1, "verdict": "x"})
    assert renumber_finding(Finding("rst", None, (1,), "no connection"), {}) == Finding("rst", None, (1,),
                                                                                        "no connection")
    assert add_counts([{"a": 1}, {"a": 2, "b": 1}]) == {"a": 3, "b": 1}


def _twlab(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, check=False)


def test_cli_jobs_files_in_order_and_bad_file(corpus: Path) -> None:
    files = [corpus / n for n in FILES[1:4]]
    one = _twlab("analyze", "--json", *files)
    par = _twlab("analyze", "--json", "-j", "2", *files)
    assert one.returncode == par.returncode == 0, par.stderr
    assert par.stdout == one.stdout
    bad = _twlab("analyze", "--json", "-j", "2", files[0], "/nonexistent.pcap", files[1])
    assert bad.returncode == 2 and "nonexistent" in bad.stderr
    assert [json.loads(x)["file"] for x in bad.stdout.splitlines()] == [str(files[0]), str(files[1])]


def test_cli_jobs_refuses_a_pipe(corpus: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "lab", "analyze", "-j", "2", "-"], input=b"", capture_output=True,
                       cwd=REPO, check=False)
    assert r.returncode == 2
    assert len(r.stderr.decode().strip().splitlines()) == 1 and b"-j" in r.stderr


def _tgkill(pid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "tgkill"):
        pytest.skip("this libc has no tgkill()")
    if libc.tgkill(pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


def _pending(pid: int) -> int:
    """The signals pending for process `pid` (its ShdPnd mask)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))


def test_cli_jobs_ctrl_c_taken_by_a_pool_thread_interrupts_at_once(corpus: Path, tmp_path: Path) -> None:
    """The kernel may hand a process's SIGINT to any of its threads, e.g. the pool's manager thread; Python
    runs the handler in the main thread only when that wakes: it must not sleep until a worker's file is done
    (before: it waited for the result without a timeout). The workers are stopped, so their files are never
    done: the parent must still take the interrupt and SIGTERM them."""
    big = repeated(corpus / "zeek__echo-connections.pcap.gz", tmp_path / "big.pcapng", 6, 10.0)
    spools = tmp_path / "tmp"
    spools.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "lab", "analyze", "-j", "2", "--json", big, big, big, big],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, start_new_session=True,
                         env={**os.environ, "TMPDIR": str(spools)})
    deadline = time.monotonic() + 60
    while not list(spools.glob("twl-spool-*-conns-*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)                          # the event: a worker has started writing its document
    workers = [int(w) for w in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    threads = [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid]
    assert p.poll() is None and workers and threads, "the analysis ended before it could be interrupted"
    for w in workers:
        os.kill(w, signal.SIGSTOP)
    try:
        _tgkill(p.pid, threads[0], signal.SIGINT)
        deadline = time.monotonic() + 30
        while not all(_pending(w) & (1 << (signal.SIGTERM - 1)) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.02)                      # the event: the parent has told every worker to stop
        told = all(_pending(w) & (1 << (signal.SIGTERM - 1)) for w in workers)
    finally:
        for w in workers:
            os.kill(w, signal.SIGCONT)
    err = p.communicate(timeout=60)[1]
    assert told, "the parent did not take the Ctrl-C while its workers' files were not done"
    assert p.returncode == 130, err
    assert list(spools.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_jobs_interrupted_stops_the_workers_and_removes_their_spools(corpus: Path, tmp_path: Path,
                                                                         sig: signal.Signals) -> None:
    big = repeated(corpus / "zeek__echo-connections.pcap.gz", tmp_path / "big.pcapng", 6, 10.0)
    spools = tmp_path / "tmp"
    spools.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "lab", "analyze", "-j", "2", "--json", big, big, big, big],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         start_new_session=True, env={**os.environ, "TMPDIR": str(spools)})
    deadline = time.monotonic() + 60
    while not list(spools.glob("twl-spool-*-conns-*")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)                          # the event: a worker has started writing its document
    assert p.poll() is None, "the analysis ended before it could be interrupted"
    if sig == signal.SIGINT:
        os.killpg(p.pid, sig)                     # Ctrl-C: the terminal signals the whole group
    else:
        p.send_signal(sig)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 128 + sig, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert list(spools.iterdir()) == []
