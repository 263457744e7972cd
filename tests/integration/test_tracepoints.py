"""lab.kernel.tracepoints against a real loopback close in a lab namespace: the kernel's own transitions."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lab.run.context import RunContext

PORT = 47311


@pytest.mark.root
def test_state_trace_reports_the_kernels_close_path_and_leaves_no_instance(ctx: RunContext) -> None:
    from lab.kernel import sockdiag
    from lab.kernel.hosts.netns import Namespace
    from lab.kernel.tracepoints import StateTrace, parse_line

    ns = Namespace.create(ctx, "k")
    name = ctx.name("tr")
    with StateTrace(name, ports=[PORT]) as tr:
        with ns.entered():
            lst = socket.socket()
            cli = socket.socket()
        lst.bind(("127.0.0.1", PORT))
        lst.listen()
        cli.connect(("127.0.0.1", PORT))
        srv, _ = lst.accept()
        cport = cli.getsockname()[1]
        cli.close()
        assert tr.wait_for(lambda e: e.sport == PORT and e.newstate == "CLOSE_WAIT") is not None
        srv.close()
        assert tr.wait_for(lambda e: e.sport == cport and e.oldstate == "FIN_WAIT_2") is not None
        assert tr.wait_for(lambda e: e.sport == PORT and e.oldstate == "LAST_ACK") is not None
        lst.close()
        assert name not in Path("/proc/self/mounts").read_text()   # tracefs is mounted privately, if at all
    # CLOSED -> SYN_SENT is reported before the port is bound (sport 0), so the client's path starts at SYN_SENT
    assert tr.path_of(cport, PORT) == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSED"]
    assert tr.path_of(PORT, cport) == ["LISTEN", "SYN_RECEIVED", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    assert {e.family for e in tr.events} == {"inet"}
    # the kernel emits no TIME_WAIT event (the mini-socket replaces the socket): sock_diag has it
    tw = sockdiag.sockets(netns=ns.name, ports=[PORT], states=["TIME_WAIT"])
    assert [(s.sport, s.dport) for s in tw] == [(cport, PORT)]
    mounts = Path("/proc/self/mounts").read_text()
    assert name not in mounts
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        assert not (root / "instances" / name).exists()
    assert parse_line("garbage") is None


_HOLDER = """
import sys, time
from lab.run.resources import Ledger
from lab.kernel.tracepoints import StateTrace
ledger = Ledger(sys.argv[1])
trace = StateTrace("twl" + sys.argv[1] + "tr", ports=[1], ledger=ledger).__enter__()
print(trace._instance, flush=True)
time.sleep(600)
"""


@pytest.mark.root
def test_doctor_cleanup_removes_the_instance_of_a_run_killed_by_sigkill(tmp_path: Path) -> None:
    """kill -9 runs no cleanup: the ledger names the instance (and the private mount's helper), and cleanup()
    removes exactly those."""
    import secrets
    import signal
    import subprocess
    import sys

    from lab.run import resources

    run_id = secrets.token_hex(3)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, run_id], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    instance = holder.stdout.readline().strip()
    assert instance.endswith(f"/instances/twl{run_id}tr") and Path(instance).is_dir()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    item = {"kind": resources.TRACEFS_INSTANCE, "name": f"twl{run_id}tr"}
    assert resources._exists(item)               # left behind in the kernel, as the ledger says
    removed = resources.cleanup()
    assert f"{resources.TRACEFS_INSTANCE} twl{run_id}tr" in removed
    assert not resources._exists(item)
    assert f"twl{run_id}" not in Path("/proc/mounts").read_text()


def test_state_trace_rejects_a_name_outside_the_lab_prefix() -> None:
    from lab.kernel.tracepoints import StateTrace

    with pytest.raises(ValueError):
        StateTrace("global", ports=[1])


def test_parse_line_reads_the_kernels_print_format() -> None:
    """Lines as 6.18 printed them (trace_pipe, default options), IPv4 and IPv6."""
    from lab.kernel.tracepoints import parse_line, port_filter

    v4 = ("          python3-16144   [000] b..1.   538.351841: inet_sock_set_state: family=AF_INET "
          "protocol=IPPROTO_TCP sport=47124 dport=55780 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 "
          "daddrv6=::ffff:127.0.0.1 oldstate=TCP_FIN_WAIT1 newstate=TCP_FIN_WAIT2")
    e = parse_line(v4)
    assert e is not None
    assert (e.ts, e.sport, e.dport, e.saddr, e.family) == (538.351841, 47124, 55780, "127.0.0.1", "inet")
    assert (e.oldstate, e.newstate) == ("FIN_WAIT_1", "FIN_WAIT_2")
    # an IPv6 socket's IPv4 fields hold junk (127.0.0.6 here): the v6 ones count
    v6 = ("         python3-19838   [000] ..s2.  2721.580959: inet_sock_set_state: family=AF_INET6 "
          "protocol=IPPROTO_TCP sport=47129 dport=36594 saddr=127.0.0.6 daddr=127.0.0.6 saddrv6=::1 daddrv6=::1 "
          "oldstate=TCP_LISTEN newstate=TCP_SYN_RECV")
    e = parse_line(v6)
    assert e is not None and (e.family, e.saddr, e.daddr, e.sport) == ("inet6", "::1", "::1", 47129)
    assert (e.oldstate, e.newstate) == ("LISTEN", "SYN_RECEIVED")
    sctp = v4.replace("IPPROTO_TCP", "IPPROTO_SCTP")
    assert parse_line(sctp) is None
    assert port_filter([5, 6]) == "protocol == 6 && (sport == 5 || dport == 5 || sport == 6 || dport == 6)"
