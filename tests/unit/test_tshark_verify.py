"""lab.analysis.verify against real tshark: the one-pass scan reproduces the corpus README's counts (made with
tshark 4.0.17 by hand), a missing tshark is an EnvironmentProblem with the install hint, and verify()
lists every disagreement between the analyzer and tshark with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from lab.analysis import verify as tshark
from lab.core.narrate import frame_notes
from lab.core.tracker import analyze
from lab.errors import BadCapture, EnvironmentProblem
from lab.pcap.readers import read_segments

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (apt-get install tshark)")

# file: (packets, streams, FIN, RST, FIN retx, reused pkts)  -- the corpus README's table
README = {
    "arkime__gtp-iphone.pcap": (106, 4, 8, 0, 0, 3),
    "arkime__tcp-reassembly-synthetic.pcap": (106, 11, 19, 0, 0, 1),
    "arkime__tcp_handshake_synthetic.pcap": (50, 16, 1, 1, 0, 3),
    "chrissanders__tcp_teardown.pcapng": (4, 1, 2, 0, 0, 0),
    "deepflow__handshake-error.pcap": (10, 1, 4, 0, 3, 0),
    "deepflow__l4-source-port-reuse.pcap": (4, 1, 0, 2, 0, 0),
    "deepflow__server-reset.pcap": (2, 1, 0, 1, 0, 0),
    "deepflow__tcp-n-syn-ack.pcap": (4, 1, 0, 0, 0, 3),
    "zeek__echo-connections.pcap.gz": (82582, 500, 1000, 0, 0, 0),
    "zeek__mysql__auth.pcap": (174, 13, 39, 0, 13, 0),
    "zeek__tcp__fin_retransmission.pcap": (5, 1, 2, 1, 2, 0),
    "zeek__tcp__rst-inject-rae.pcap": (9, 1, 0, 3, 0, 1),
    "zeek__tls__ocsp-revoked.pcap": (50, 4, 8, 0, 0, 0),
}


@pytest.mark.parametrize("name", sorted(README))
def test_scan_matches_the_corpus_readme(corpus: Path, name: str) -> None:
    s = tshark.scan(corpus / name)
    got = (s.packets, s.streams, len(s.fin_frames), len(s.rst_frames), len(s.fin_retransmissions),
           len(s.reused_port_frames))
    assert got == README[name]


def test_scan_names_the_frames(corpus: Path) -> None:
    s = tshark.scan(corpus / "arkime__gtp-iphone.pcap")
    assert s.reused_port_frames == [22, 36, 95]  # the three new SYNs inside the GTP tunnel
    assert all(s.frames[n].flags == 0x002 for n in s.reused_port_frames)
    assert tshark.scan(corpus / "chrissanders__tcp_teardown.pcapng").fin_frames == [1, 3]


def test_missing_tshark_is_an_environment_problem(corpus: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tshark on PATH
    tshark.version.cache_clear()
    with pytest.raises(EnvironmentProblem) as err:
        tshark.scan(corpus / "chrissanders__tcp_teardown.pcapng")
    line = err.value.one_line()
    assert "tshark" in line and "apt-get install -y tshark" in line and "\n" not in line
    assert err.value.exit_code == 3
    with pytest.raises(EnvironmentProblem):
        tshark.comments_pyshark(corpus / "chrissanders__tcp_teardown.pcapng")
    tshark.version.cache_clear()


def test_unreadable_file_is_bad_capture(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pcap"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(BadCapture):
        tshark.scan(bad)
    with pytest.raises(BadCapture):
        tshark.scan(tmp_path / "missing.pcap")


def _verify(corpus: Path, name: str) -> tshark.VerifyResult:
    path = corpus / name
    return tshark.verify(path, analyze(read_segments(path)))


@pytest.mark.parametrize("name", sorted(README))
def test_verify_on_the_corpus(corpus: Path, name: str) -> None:
    res = _verify(corpus, name)
    d = res.to_dict()
    assert d["packets"] == README[name][0]
    checks = {c["check"]: c for c in d["checks"]}
    assert {"fin", "rst", "streams", "reused-ports", "fin-retransmitted"} <= set(checks)
    # tshark's side of each check is the README's count
    _packets, streams, fin, rst, finrx, reused = README[name]
    assert (checks["streams"]["tshark"], checks["fin"]["tshark"], checks["rst"]["tshark"],
            checks["fin-retransmitted"]["tshark"], checks["reused-ports"]["tshark"]) == (streams, fin, rst, finrx,
                                                                                       reused)
    # the reader sees every FIN and RST tshark sees, in the same frames
    assert checks["fin"]["agree"] and checks["rst"]["agree"]
    # every count that differs is backed by at least one listed disagreement, each with a reason
    for c in d["checks"]:
        if not c["agree"]:
            assert any(x["check"] == c["check"] for x in d["disagreements"]), c
    for x in d["disagreements"]:
        assert x["reason"] and x["frames"]
    assert res.ok, [x for x in d["disagreements"] if not x["explained"]]


def test_verify_explains_the_syn_ack_reuse_rule(corpus: Path) -> None:
    """deepflow tcp-n-syn-ack: tshark flags three SYN-ACKs as reused ports; the lab judges reuse on SYNs."""
    res = _verify(corpus, "deepflow__tcp-n-syn-ack.pcap")
    reuse = [x for x in res.disagreements if x.check == "reused-ports"]
    assert sorted(n for x in reuse for n in x.frames) == tshark.scan(
        corpus / "deepflow__tcp-n-syn-ack.pcap").reused_port_frames
    assert all(x.explained and "SYN-ACK" in x.reason for x in reuse)


def test_verify_agrees_on_gtp_reuse(corpus: Path) -> None:
    """The three SYNs that reuse the inner four-tuple inside the GTP tunnel: both tools flag the same frames."""
    res = _verify(corpus, "arkime__gtp-iphone.pcap")
    checks = {c.name: c for c in res.checks}
    assert checks["reused-ports"].agree and checks["reused-ports"].ours == 3
    assert checks["streams"].agree


def test_verify_catches_a_wrong_analysis(corpus: Path) -> None:
    """verify is a check that can fail: drop the analyzer's reuse and FIN-retransmission findings and
    merge two incarnations, and each shows up as an unexplained disagreement."""
    gtp = corpus / "arkime__gtp-iphone.pcap"
    doc = analyze(read_segments(gtp)).to_dict()
    doc["findings"] = [f for f in doc["findings"] if not f["kind"].startswith("reuse-")]
    res = tshark.verify(gtp, doc)
    bad = [x for x in res.disagreements if not x.explained]
    assert not res.ok and sorted(n for x in bad for n in x.frames) == [22, 36, 95]
    assert all("should report reuse" in x.reason for x in bad)

    mysql = corpus / "zeek__mysql__auth.pcap"
    doc = analyze(read_segments(mysql)).to_dict()
    doc["findings"] = [f for f in doc["findings"] if f["kind"] != "fin-retransmitted"]
    res = tshark.verify(mysql, doc)
    assert not res.ok and len([x for x in res.unexplained if x.check == "fin-retransmitted"]) == 13

    doc = analyze(read_segments(gtp)).to_dict()
    first, second = doc["connections"][0], doc["connections"][1]
    first["last_frame"] = second["last_frame"]
    doc["connections"] = [c for c in doc["connections"] if c is not second]
    res = tshark.verify(gtp, doc)
    assert not res.ok and any(x.check == "streams" and not x.explained for x in res.disagreements)


def test_verify_reads_comments_with_tshark_and_pyshark(corpus: Path, tmp_path: Path) -> None:
    from lab.pcap.annotate import capture_t0, write_annotated

    src = corpus / "zeek__tls__ocsp-revoked.pcap"
    out = tmp_path / "annotated.pcapng"
    report = analyze(read_segments(src))
    notes = frame_notes(report, capture_t0(src))
    write_annotated(src, out, notes)
    res = tshark.verify(out, analyze(read_segments(out)))
    checks = {c.name: c for c in res.checks}
    assert checks["comments"].agree and checks["comments-pyshark"].agree
    assert checks["comments"].tshark == len(notes) > 0
    assert res.ok


GALLERY = sorted((Path(__file__).resolve().parents[2] / "captures").glob("*.pcapng"))


@pytest.mark.parametrize("path", GALLERY, ids=[p.name for p in GALLERY])
def test_verify_on_the_lab_gallery(path: Path) -> None:
    """The lab's own annotated captures: tshark and the analyzer agree (or the difference is explained),
    and the comments the lab wrote read back the same through the reader, tshark and pyshark."""
    res = tshark.verify(path, analyze(read_segments(path)))
    assert res.ok, [d.to_dict() for d in res.unexplained]
    names = {c.name: c for c in res.checks}
    if "comments" in names:
        assert names["comments"].agree and names.get("comments-pyshark", names["comments"]).agree


# --- verify at scale (issue 14 item 7): one index of incarnations, classes with counts -----------------------

def test_previous_incarnation_index_equals_a_scan(corpus: Path) -> None:
    for name in ("zeek__echo-connections.pcap.gz", "deepflow__l4-source-port-reuse.pcap",
                 "arkime__tcp-reassembly-synthetic.pcap"):
        conns = analyze(read_segments(corpus / name)).to_dict()["connections"]
        index: dict[frozenset[str], tshark._Tup] = {}
        for c in conns:   # in the order the analyzer finishes them does not matter: the index is sorted
            index.setdefault(frozenset((c["client"], c["server"])), tshark._Tup()).add(tshark._ConnSum.of_dict(c))
        for c in conns:
            key = {c["client"], c["server"]}
            earlier = [p for p in conns if {p["client"], p["server"]} == key and p["first_frame"] < c["first_frame"]]
            want = max(earlier, key=lambda p: p["first_frame"]) if earlier else None
            got = index[frozenset(key)].previous(tshark._ConnSum.of_dict(c))
            assert (got.id if got else None) == (want["id"] if want else None), (name, c["id"])


def test_disagreements_are_summarised_by_class(corpus: Path) -> None:
    res = _verify(corpus, "zeek__echo-connections.pcap.gz")
    doc = res.to_dict()
    classes = doc["classes"]
    assert sum(c["count"] for c in classes) == len(doc["disagreements"])
    assert len(classes) <= len(doc["disagreements"])
    for c in classes:
        assert c["frames"] and all(isinstance(f, int) for f in c["frames"]) and "N" in c["reason"] + "N"
    from io import StringIO

    from rich.console import Console

    from lab.analysis.view import verify_view

    if doc["disagreements"]:
        out = StringIO()
        Console(file=out, width=160).print(verify_view(doc, 0))
        assert "by class" in out.getvalue() and "disagreements\n" not in out.getvalue()


def test_verify_reads_a_capture_cut_short(corpus: Path, tmp_path: Path) -> None:
    raw = (corpus / "zeek__mysql__auth.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[:len(raw) - 10])
    from lab.pcap.readers import CaptureReader

    reader = CaptureReader(cut, lenient=True)
    res = tshark.verify(cut, analyze(reader))
    assert reader.stats.cut and res.packets == reader.stats.packets and res.ok


def test_who_closed_first_crossed_fins_are_explained(corpus: Path) -> None:
    """The mysql capture's closes cross (simultaneous for the lab); tshark, by arrival order, has a first FIN."""
    d = _verify(corpus, "zeek__mysql__auth.pcap").to_dict()
    check = next(c for c in d["checks"] if c["check"] == "close-initiator")
    rows = [x for x in d["disagreements"] if x["check"] == "close-initiator"]
    assert rows and not check["agree"] and all(x["explained"] and "simultaneous" in x["ours"] for x in rows)
    agree = _verify(corpus, "chrissanders__tcp_teardown.pcapng").to_dict()
    assert next(c for c in agree["checks"] if c["check"] == "close-initiator")["agree"]


def test_verify_says_which_rst_ended_the_connection_when_tshark_would_take_the_first(tmp_path: Path) -> None:
    """An RST its receiver would not accept (sequence number far from what the receiver expects), then one at the
    right sequence number: tshark has no acceptability rule, the lab credits the second; verify says so."""
    from scapy.all import IP, TCP, wrpcap

    c, s = ("198.51.100.2", 40000), ("198.51.100.1", 80)

    def seg(src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int, t: float) -> Any:
        p = IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack)
        p.time = t
        return p

    pkts = [seg(c, s, "S", 1000, 0, 1.0), seg(s, c, "SA", 5000, 1001, 1.001), seg(c, s, "A", 1001, 5001, 1.002),
            seg(s, c, "R", (5001 - 100_000) % 2**32, 0, 1.5),   # below what the client expects: not acceptable
            seg(s, c, "R", 5001, 0, 1.6)]
    path = tmp_path / "two-rsts.pcap"
    wrpcap(str(path), pkts)
    report = analyze(read_segments(path))
    (conn,) = report.connections
    assert conn.close.kind == "rst" and 5 in conn.close.frames and 4 not in conn.close.frames
    res = tshark.verify(path, report)
    check = next(ch for ch in res.checks if ch.name == "closing-rst")
    assert (check.tshark, check.ours, check.agree) == (1, 0, False)
    (dis,) = [d for d in res.disagreements if d.check == "closing-rst"]
    assert dis.frames == (4, 5) and dis.explained and "not acceptable" in dis.reason


# --- verify streams (issue 14 item 7, issue 18): memory follows the open connections ----------------------------

def _sequential_connections(path: Path, n_conns: int, ports: int = 25) -> None:
    """A pcap of n_conns complete connections one after another (10 ms apart), the client cycling through
    `ports` source ports: each four-tuple is reused every `ports` connections, as in a churn benchmark."""
    import struct

    m = 0xFFFFFFFF
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    cli, srv = bytes([198, 51, 100, 2]), bytes([198, 51, 100, 1])

    def pkt(t: float, src: bytes, dst: bytes, sp: int, dp: int, seq: int, ack: int, flags: int, plen: int = 0) -> None:
        tcp = struct.pack("!HHIIBBHHH", sp, dp, seq & m, ack & m, 5 << 4, flags, 65535, 0, 0) + b"x" * plen
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst) + tcp
        eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip
        sec = int(t)
        out.append(struct.pack("<IIII", sec, round((t - sec) * 1e6), len(eth), len(eth)) + eth)

    for i in range(n_conns):
        t = 1000.0 + i * 0.01
        c, s = (i * 2654435761) & m, (i * 40503 * 65537 + 12345) & m
        fwd = (cli, srv, 40000 + i % ports, 80)
        back = (srv, cli, 80, 40000 + i % ports)
        pkt(t, *fwd, c, 0, 0x02)                           # SYN
        pkt(t + 0.0001, *back, s, c + 1, 0x12)            # SYN-ACK
        pkt(t + 0.0002, *fwd, c + 1, s + 1, 0x10)
        pkt(t + 0.0003, *fwd, c + 1, s + 1, 0x18, 10)     # data
        pkt(t + 0.0004, *back, s + 1, c + 11, 0x10)
        pkt(t + 0.0005, *fwd, c + 11, s + 1, 0x11)        # the client's FIN
        pkt(t + 0.0006, *back, s + 1, c + 12, 0x10)
        pkt(t + 0.0007, *back, s + 1, c + 12, 0x11)       # the server's FIN
        pkt(t + 0.0008, *fwd, c + 12, s + 2, 0x10)
    path.write_bytes(b"".join(out))


# run in a fresh process (other tests' threads and garbage must not count): verify_file(argv[1]) while another
# thread samples how many GC-tracked objects are alive; prints the most beyond those alive before, and the result
_PEAK_TRACKED = """
import gc, json, sys, threading, time
from lab.analysis import verify
gc.collect()
base = peak = len(gc.get_objects())
done = threading.Event()
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, len(gc.get_objects()))
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
try:
    res = verify.verify_file(sys.argv[1])
finally:
    done.set()
    sampler.join()
print(json.dumps({"extra": peak - base, "result": res.to_dict()}))
"""


def _peak_tracked(path: Path) -> tuple[int, dict[str, Any]]:
    """verify_file(path)'s result and the most GC-tracked objects alive while it ran beyond those alive before
    (any design: whatever verify keeps, connections, segments, frames, rows, shows up)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_TRACKED, str(path)], capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out)
    return got["extra"], got["result"]


def test_verify_memory_follows_the_open_connections_not_the_file(tmp_path: Path) -> None:
    """4x the connections (on the same 25 four-tuples) must not need more than 1.3x the objects: verify
    compares each connection once the analyzer finished it and drops its frames. Keeping every frame, every
    connection of the report or tshark's whole table (the design before) grows with the file (4.0x)."""
    grown = []
    for n in (1500, 6000):
        path = tmp_path / f"seq-{n}.pcap"
        _sequential_connections(path, n)
        extra, res = _peak_tracked(path)
        checks = {c["check"]: c for c in res["checks"]}
        assert res["ok"] and not res["disagreements"]
        assert checks["streams"]["ours"] == checks["streams"]["tshark"] == n
        assert checks["reused-ports"]["agree"] and checks["reused-ports"]["ours"] == n - 25
        grown.append(extra)
    assert grown[1] < 1.3 * grown[0], grown


@pytest.mark.parametrize("name", ["arkime__tcp-reassembly-synthetic.pcap", "zeek__mysql__auth.pcap",
                                  "zeek__tcp__rst-inject-rae.pcap", "deepflow__tcp-n-syn-ack.pcap"])
def test_verify_file_streams_to_the_same_result_as_a_whole_report(corpus: Path, name: str) -> None:
    """`twlab verify`'s streaming path (the analyzer's connections as they finish) and verify() of a finished
    report give the same checks and rows."""
    path = corpus / name
    whole = tshark.verify(path, analyze(read_segments(path), detail=False)).to_dict()
    assert tshark.verify_file(path).to_dict() == whole
    assert whole["disagreements"]   # files with rows of several kinds
