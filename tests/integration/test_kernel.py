"""lab.kernel.sockdiag against the real kernel: sock_diag states and timers, per-namespace counters, the sampler,
and the kernel-vs-analyzer TIME_WAIT comparison (the pure parts also run without root)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from lab.kernel import sockdiag
from lab.run.context import RunContext


def _pair_on_lo() -> tuple[socket.socket, socket.socket, socket.socket, int]:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    port = lst.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1", port))
    acc, _ = lst.accept()
    return lst, cli, acc, port


def test_sockets_time_wait_on_the_first_closer_with_its_timer() -> None:
    lst, cli, acc, port = _pair_on_lo()
    cport = cli.getsockname()[1]
    try:
        est = sockdiag.sockets(ports=[port], states=["ESTABLISHED"])
        assert {(s.sport, s.dport) for s in est} == {(cport, port), (port, cport)}
        assert all(s.state == "ESTABLISHED" and s.timer is None and s.inode > 0 for s in est)
        cli.close()
        time.sleep(0.05)
        acc.close()
        time.sleep(0.05)
        tw = sockdiag.sockets(ports=[port], states=["TIME_WAIT"])
        assert len(tw) == 1
        s = tw[0]
        assert (s.sport, s.dport, s.family, s.timer, s.inode) == (cport, port, "inet", "timewait", 0)
        assert 55_000 <= s.expires_ms <= 60_000
        listen = sockdiag.sockets(ports=[port], states=["LISTEN"])
        assert [x.state for x in listen] == ["LISTEN"]
    finally:
        lst.close()


def test_sockets_sees_ipv6_too() -> None:
    lst = socket.socket(socket.AF_INET6)
    lst.bind(("::1", 0))
    lst.listen()
    port = lst.getsockname()[1]
    try:
        got = sockdiag.sockets(ports=[port])
        assert [(s.family, s.state, s.src) for s in got] == [("inet6", "LISTEN", "::1")]
    finally:
        lst.close()


def test_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError):
        sockdiag.sockets(states=["TIME-WAIT"])


def test_parse_snmp_pairs_lines_into_nstat_names() -> None:
    text = "Tcp: RtoAlgorithm ActiveOpens\nTcp: 1 42\nTcpExt: TCPTimeWaitOverflow\nTcpExt: 3\n"
    assert sockdiag.parse_snmp(text) == {"TcpRtoAlgorithm": 1, "TcpActiveOpens": 42, "TcpExtTCPTimeWaitOverflow": 3}
    assert sockdiag.parse_snmp6("Tcp6InSegs 5\nIp6InReceives\t7\n") == {"Tcp6InSegs": 5, "Ip6InReceives": 7}


def _sample(state: str, wall: float, exp: int, sport: int = 40000) -> sockdiag.SockSample:
    return sockdiag.SockSample(state, "inet", "192.0.2.1", sport, "192.0.2.2", 7000,
                             "timewait" if state == "TIME_WAIT" else None, exp, 0, 0, "ns", wall)


def test_time_wait_observations_find_start_restart_and_end() -> None:
    samples = [_sample("FIN_WAIT_2", 99.9, 0), _sample("TIME_WAIT", 100.0, 59_990),
               _sample("TIME_WAIT", 100.1, 59_890), _sample("TIME_WAIT", 100.3, 60_000),
               _sample("TIME_WAIT", 130.0, 30_300), _sample("GONE", 160.5, 0)]
    [ob] = sockdiag.time_wait_observations(samples)
    assert ob.first_seen_s == 100.0 and ob.first_expires_ms == 59_990
    assert ob.restarts == ((100.3, 60_000),)
    assert ob.gone_s == 160.5
    assert abs(ob.started_s - 99.99) < 1e-6


def test_compare_time_wait_agrees_and_disagrees() -> None:
    [ob] = sockdiag.time_wait_observations([_sample("TIME_WAIT", 100.02, 59_980), _sample("GONE", 161.0, 0)])
    conn = {"id": 0, "client": "192.0.2.1:40000", "server": "192.0.2.2:7000",
            "time_wait": [{"side": "client", "start_ts": 100.0, "end_ts": 160.0, "start_frame": 9}]}
    [row] = sockdiag.compare_time_wait([ob], [conn])
    assert row["agree"] and row["side"] == "client" and abs(row["start_gap_s"]) < 0.01
    wrong_side = dict(conn, time_wait=[{"side": "server", "start_ts": 100.0, "end_ts": 160.0, "start_frame": 9}])
    [row] = sockdiag.compare_time_wait([ob], [wrong_side])
    assert not row["agree"] and "client side" in row["why"]
    late = dict(conn, time_wait=[{"side": "client", "start_ts": 100.5, "end_ts": 160.5, "start_frame": 9}])
    [row] = sockdiag.compare_time_wait([ob], [late])
    assert not row["agree"]


@pytest.mark.root
def test_netns_sockets_and_counters_are_the_namespaces_own(ctx: RunContext) -> None:
    from lab.kernel.hosts.netns import Namespace

    ns = Namespace.create(ctx, "k")
    host_lst = socket.socket()
    host_lst.bind(("127.0.0.1", 0))
    host_lst.listen()
    hport = host_lst.getsockname()[1]
    try:
        before = sockdiag.nstat(ns.name)
        assert before["TcpActiveOpens"] == 0   # a fresh namespace counts from zero
        with ns.entered():
            lst = socket.socket()
            lst.bind(("127.0.0.1", hport))     # the same port is free in the namespace
            lst.listen()
            cli = socket.create_connection(("127.0.0.1", hport))
            acc, _ = lst.accept()
        cli.close()
        time.sleep(0.05)
        acc.close()
        time.sleep(0.05)
        in_ns = sockdiag.sockets(netns=ns.name, ports=[hport])
        assert sorted(s.state for s in in_ns) == ["LISTEN", "TIME_WAIT"]
        assert all(s.netns == ns.name for s in in_ns)
        on_host = sockdiag.sockets(ports=[hport])
        assert [s.state for s in on_host] == ["LISTEN"]
        # counters read from another thread inside the namespace are the namespace's (thread-self, not self)
        out: dict[str, int] = {}
        t = threading.Thread(target=lambda: out.update(sockdiag.nstat(ns.name)))
        t.start()
        t.join()
        assert out["TcpActiveOpens"] - before["TcpActiveOpens"] == 1
        assert out["TcpPassiveOpens"] == 1
        lst.close()
    finally:
        host_lst.close()


@pytest.mark.root
def test_sampler_logs_state_changes_and_time_wait(ctx: RunContext) -> None:
    from lab.kernel.hosts.netns import Namespace

    ns = Namespace.create(ctx, "k")
    with ns.entered():
        lst = socket.socket()
        lst.bind(("127.0.0.1", 7100))
        lst.listen()
    with sockdiag.Sampler(ctx, netns=ns.name, ports=[7100], interval_s=0.02) as smp:
        with ns.entered():
            cli = socket.create_connection(("127.0.0.1", 7100))
        acc, _ = lst.accept()
        time.sleep(0.1)
        cli.close()
        time.sleep(0.1)
        acc.close()
        time.sleep(0.15)
    lst.close()
    assert smp.error is None and smp.dumps > 5
    cport = next(s.sport for s in smp.samples if s.dport == 7100)
    assert "ESTABLISHED" in smp.states_of(local_port=cport)
    assert smp.states_of(local_port=cport)[-1] == "TIME_WAIT"
    assert "CLOSE_WAIT" in smp.states_of(remote_port=cport)
    sock_events = [e for e in ctx.events.records if e["kind"] == "sock"]
    assert any(e["change"] == "new" for e in sock_events)
    assert any(e["state"] == "TIME_WAIT" for e in sock_events)
    assert any(e["change"] == "gone" for e in sock_events)   # the server side went away after its close
    [tw] = sockdiag.time_wait_observations(smp.samples)
    assert tw.local.endswith(f":{cport}") and 59_000 <= tw.first_expires_ms <= 60_000
