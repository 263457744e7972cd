"""LiveCapture against the real kernel: each loopback packet once (same bytes as tcpdump), kernel drops
counted, capture inside a lab namespace, pcap/pcapng files that tshark reads, non-root refused clearly."""

from __future__ import annotations

import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import loopback_listener

from lab.kernel.capture import LiveCapture, write_pcapng

sys.path.insert(0, str(Path(__file__).parent))
import _nobody


def _one_connection(srv: socket.socket) -> None:
    """Handshake, one request and reply, the server closes first."""
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    cli.sendall(b"request")
    assert conn.recv(100) == b"request"
    conn.sendall(b"reply")
    assert cli.recv(100) == b"reply"
    conn.close()
    assert cli.recv(100) == b""
    cli.close()


def _read_pcap(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    magic = struct.unpack_from("<I", raw)[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), hex(magic)
    out, off = [], 24
    while off < len(raw):
        _s, _f, incl, _orig = struct.unpack_from("<IIII", raw, off)
        out.append(raw[off + 16: off + 16 + incl])
        off += 16 + incl
    return out


def _tcp_flags(pkt: bytes) -> int:
    ihl = (pkt[14] & 15) * 4
    return pkt[14 + ihl + 13]


@pytest.mark.root
def test_each_loopback_packet_once_same_bytes_as_tcpdump(tmp_path: Path) -> None:
    if not shutil.which("tcpdump"):
        pytest.skip("tcpdump not installed (apt-get install -y tcpdump)")
    srv = loopback_listener()
    port = srv.getsockname()[1]
    ref = tmp_path / "tcpdump.pcap"
    td = subprocess.Popen(["tcpdump", "-i", "lo", "-w", str(ref), "--immediate-mode", "-n", f"tcp port {port}"],
                          stderr=subprocess.PIPE, text=True)
    try:
        assert td.stderr is not None
        line = td.stderr.readline()   # "listening on lo, ..." once its socket is ready
        assert "listening" in line, line
        with LiveCapture("lo", f"tcp port {port}", path=tmp_path / "ours.pcap") as cap:
            _one_connection(srv)
            time.sleep(0.1)
        time.sleep(0.2)
    finally:
        td.terminate()
        td.wait(10)
        srv.close()
    stats = cap.stats
    assert stats is not None and stats.kernel_drops == 0
    ours = [p[1] for p in cap.packets]
    theirs = _read_pcap(ref)
    assert len(ours) == len(set(ours)), "a packet was seen twice"
    assert ours == theirs, f"ours {len(ours)} packets, tcpdump {len(theirs)}"
    flags = [_tcp_flags(p) for p in ours]
    assert sum(1 for f in flags if f & 0x02 and not f & 0x10) == 1      # one SYN
    assert sum(1 for f in flags if f & 0x12 == 0x12) == 1               # one SYN-ACK
    assert sum(1 for f in flags if f & 0x01) == 2                       # two FINs
    # the file we wrote: the same packets, nanosecond timestamps in increasing order
    assert _read_pcap(tmp_path / "ours.pcap") == ours
    ts = [p[0] for p in cap.packets]
    assert ts == sorted(ts) and all(t > 1_600_000_000 * 10**9 for t in ts)


@pytest.mark.root
def test_kernel_drops_are_counted_when_the_buffer_overflows() -> None:
    srv = loopback_listener()
    srv.listen(4096)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def accept_all() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                continue

    t = threading.Thread(target=accept_all, daemon=True)
    t.start()
    # a burst from another process while our buffer holds only a few packets
    burst = ("import socket\nfor _ in range(1500):\n"
             f"    s = socket.create_connection(('127.0.0.1', {port}))\n    s.close()\n")
    with LiveCapture("lo", f"tcp port {port}", buffer_bytes=4096) as cap:
        subprocess.run([sys.executable, "-c", burst], check=True, timeout=120)
        time.sleep(0.2)
    stop.set()
    t.join(2)
    srv.close()
    st = cap.stats
    assert st is not None
    assert st.rcvbuf_bytes < 64 << 10
    assert st.kernel_drops > 0, st
    # PACKET_STATISTICS counts every packet that passed the filter, dropped or not
    assert st.packets + st.kernel_drops == st.kernel_seen, st


@pytest.mark.root
def test_capture_inside_a_lab_namespace() -> None:
    ns = f"twl{secrets.token_hex(3)}cap"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        prog = ("import socket\nl = socket.socket(); l.bind(('127.0.0.1', 7777)); l.listen()\n"
                "c = socket.create_connection(('127.0.0.1', 7777)); a, _ = l.accept()\n"
                "c.sendall(b'x'); a.recv(1); a.close(); c.recv(1); c.close()\n")
        with LiveCapture("lo", "tcp port 7777", netns=ns) as cap, \
                LiveCapture("lo", "tcp port 7777") as host_cap:
            subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", prog], check=True, timeout=30)
            time.sleep(0.1)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert cap.stats is not None and host_cap.stats is not None
    flags = [_tcp_flags(p[1]) for p in cap.packets]
    assert sum(1 for f in flags if f & 0x02 and not f & 0x10) == 1
    assert sum(1 for f in flags if f & 0x01) == 2
    assert host_cap.stats.packets == 0, "the host's lo must not see the namespace's traffic"


def _synthetic_packet(seq: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5000, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    return b"\0" * 12 + b"\x08\x00" + ip + tcp


def test_pcapng_comments_are_listed_by_tshark(tmp_path: Path) -> None:
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed (apt-get install -y tshark)")
    pkts = [(1_700_000_000_123_456_789 + i, _synthetic_packet(100 + i, f), 54)
            for i, f in enumerate((0x02, 0x10, 0x11))]
    out = write_pcapng(tmp_path / "c.pcapng", 1, 65535, pkts,
                       {3: ["case A: FIN M — server active close", "second, with a comma"]})
    res = subprocess.run(["tshark", "-r", str(out), "-Y", "frame.comment", "-T", "fields", "-e", "frame.number",
                          "-e", "frame.comment", "-E", "aggregator=|", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    frame, comments, epoch = lines[0].split("\t")
    assert frame == "3"
    assert comments.split("|") == ["case A: FIN M — server active close", "second, with a comma"]
    assert epoch.startswith("1700000000.123456791")
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


@pytest.mark.root
def test_without_cap_net_raw_capture_is_refused_with_a_hint() -> None:
    code = ("from lab.kernel.capture import LiveCapture\nfrom lab.errors import EnvironmentProblem\n"
            "try:\n    LiveCapture('lo', 'tcp port 5000').start()\n"
            "except EnvironmentProblem as e:\n    print('ENV', e.one_line())\n")
    with _nobody.workdir() as d:
        res = _nobody.run(["-c", code], cwd=d)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ENV packet capture on lo needs CAP_NET_RAW"), res.stdout
    assert "run as root" in res.stdout


def test_recording_finds_the_close_segments_of_a_port(tmp_path: Path) -> None:
    from contextlib import ExitStack

    from lab.core.model import Flags, Segment
    from lab.kernel.recording import Recording, port_filter
    from lab.run.context import EventLog, Experiment, Outcome, RunContext

    exp = Experiment(id="rec-test", claim="-", lore="-", run=lambda c: Outcome(True, {}))
    with ExitStack() as stack:
        ctx = RunContext(experiment=exp, run_id="b0b0b0", out_dir=tmp_path, events=EventLog(None), stack=stack,
                         ledger=None)  # type: ignore[arg-type]
        rec = Recording(ctx, ports=[5000, 6000])
        c, s = ("127.0.0.1", 40000), ("127.0.0.1", 5000)
        A, F, P = int(Flags.ACK), int(Flags.FIN), int(Flags.PSH)
        rec.segments = [
            Segment(1, 0.0, *c, *s, 100, 0, int(Flags.SYN)),
            Segment(2, 0.1, *s, *c, 900, 101, int(Flags.SYN) | A),
            Segment(3, 0.2, *c, *s, 101, 901, A),
            Segment(4, 0.3, *c, *s, 101, 901, P | A, payload_len=5),
            Segment(5, 0.4, *s, *c, 901, 106, F | A),     # server FIN
            Segment(6, 0.5, *c, *s, 106, 902, A),         # client ACKs it
            Segment(7, 0.6, *c, *s, 106, 902, F | A),     # client FIN
            Segment(8, 0.7, *s, *c, 902, 107, A),         # final ACK
            Segment(9, 0.8, "127.0.0.1", 40001, "127.0.0.1", 6000, 1, 0, int(Flags.SYN)),
        ]
        assert [x.frame for x in rec.close_segments(5000)] == [5, 6, 7, 8]
        assert [x.frame for x in rec.find(port=5000, flags=int(Flags.SYN), exact=True)] == [1]
        assert [x.frame for x in rec.find(port=6000)] == [9]
        assert rec.save() is None and rec.summary()["captured"] is False
    assert port_filter([6000, 5000, 5000]) == "tcp and (port 5000 or port 6000)"
