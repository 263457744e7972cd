"""The injector and the scripted TUN peer against the real kernel (root: namespaces, TUN, raw sockets)."""

from __future__ import annotations

import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from lab.errors import UnsafeTarget
from lab.run.context import EventLog, Experiment, Outcome, RunContext, new_run_id
from lab.run.resources import Ledger

pytestmark = pytest.mark.root


def _ss(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "ss", "-tanH"], capture_output=True, text=True).stdout


def test_peer_handshake_with_chosen_isn_data_and_kernel_active_close(ctx: RunContext) -> None:
    from lab.kernel import sockdiag
    from lab.kernel.agent import Agent
    from lab.kernel.peer import KERNEL_IP, close_after_kernel, handshake, open_in_namespace, send_data, server_steps

    ns, peer = open_in_namespace(ctx, "k")
    server = Agent.start(ctx, server_steps(KERNEL_IP, 5000), netns=ns.name, name="server")
    server.wait("listen")
    conn = peer.connection(40001, 5000)
    rep = conn.run(handshake(1_000_000, tsval=1000) + send_data("hello", ts=True) + close_after_kernel(ts=True))
    assert rep.ok, rep.failures()
    synack = rep.by_label("syn-ack").got
    assert synack is not None and synack["ack"] == 1_000_001 and synack["tsecr"] == 1000
    assert server.wait("recv1")["result"]["text"] == "hello"
    assert rep.by_label("final-ack").got["ack"] == 1_000_000 + 1 + 5 + 1
    tw = [s for s in sockdiag.sockets(netns=ns.name, ports=[5000]) if s.state == "TIME_WAIT"]
    assert [(s.sport, s.dport) for s in tw] == [(5000, 40001)]
    server.release("end")
    assert server.finish()[-1]["ok"]
    sent = [r for r in ctx.events.records if r["kind"] == "inject"]
    assert [r["flags"] for r in sent] == ["S", "A", "PA", "FA"]
    assert sent[0]["seq"] == 1_000_000 and sent[0]["tsval"] == 1000


def test_peer_reports_what_the_kernel_answered_when_it_differs(ctx: RunContext) -> None:
    from lab.kernel.peer import open_in_namespace

    _ns, peer = open_in_namespace(ctx, "k")
    conn = peer.connection(40002, 5999)  # nobody listens: the kernel answers RST
    rep = conn.run([{"send": {"flags": "S", "seq": 5, "mss": 1460}},
                    {"label": "want-synack", "expect": {"flags": "SA", "timeout_s": 1}},
                    {"label": "after", "send": {"flags": "A"}}])
    assert not rep.ok
    step = rep.by_label("want-synack")
    assert step.got is not None and step.got["flags"] == "RA" and step.got["ack"] == 6
    assert "flags RA (wanted SA)" in step.why
    assert rep.by_label("after").why.startswith("not run")


def test_tun_device_is_ledgered_and_gone_after_teardown(tmp_path: Path) -> None:
    from lab.kernel.peer import open_in_namespace

    exp = Experiment(id="inject-test", claim="-", lore="-", run=lambda c: Outcome(True, {}))
    run_id = new_run_id()
    with ExitStack() as stack:
        ledger = Ledger(run_id)
        stack.callback(ledger.close)
        events = EventLog(tmp_path / "events.jsonl")
        stack.callback(events.close)
        c = RunContext(experiment=exp, run_id=run_id, out_dir=tmp_path, events=events, stack=stack, ledger=ledger)
        ns, peer = open_in_namespace(c, "k")
        assert peer.name == f"twl{run_id}t"
        assert any(i["kind"] == "link" and i["name"] == peer.name for i in ledger.items)
        out = subprocess.run(["ip", "-n", ns.name, "-br", "addr", "show", peer.name], capture_output=True,
                             text=True).stdout
        assert "198.51.100.1/24" in out
    assert not Path("/run/netns", f"twl{run_id}k").exists()


def test_raw_injector_on_namespace_loopback_puts_bytes_into_a_live_connection(ctx: RunContext) -> None:
    """docs/kernel-facts.md §8: a crafted segment with the right seq/ack reaches the server application."""
    from lab.kernel.agent import Agent
    from lab.kernel.hosts.netns import Namespace
    from lab.kernel.inject import Injector
    from lab.kernel.recording import Recording

    ns = Namespace.create(ctx, "k")
    port = 5001
    server = Agent.start(ctx, [
        {"op": "socket", "sock": "l"}, {"op": "bind", "sock": "l", "addr": ["127.0.0.1", port]},
        {"op": "listen", "sock": "l", "label": "listen"},
        {"op": "accept", "sock": "l", "as": "c", "label": "accept"},
        {"op": "recv", "sock": "c", "label": "recv1"},
        {"op": "recv", "sock": "c", "label": "recv2", "timeout_s": 3},
        {"op": "gate", "name": "end"}], netns=ns.name, name="server")
    server.wait("listen")
    client = Agent.start(ctx, [
        {"op": "socket", "sock": "s"}, {"op": "connect", "sock": "s", "addr": ["127.0.0.1", port], "label": "conn"},
        {"op": "send", "sock": "s", "data": "first", "label": "sent"},
        {"op": "gate", "name": "end"}], netns=ns.name, name="client")
    with Recording(ctx, ports=[port], iface="lo", netns=ns.name, filename="learn.pcapng") as rec:
        client.wait("sent")
        assert server.wait("recv1")["result"]["text"] == "first"
        time.sleep(0.1)
    data = [s for s in rec.segments if s.dport == port and s.payload_len]
    assert data, "capture saw the client's data"
    last = data[-1]
    inj = Injector.raw(ctx, ns)
    rec_ = inj.segment(last.src_ip, last.sport, last.dst_ip, port, flags="PA",
                       seq=last.seq + last.payload_len, ack=last.ack,
                       ts=(last.tsval + 1, last.tsecr) if last.tsval is not None else None, payload=b"INJECTED")
    assert server.wait("recv2")["result"]["text"] == "INJECTED"
    assert rec_["by"] == "injector" and rec_["via"] == "raw" and rec_["payload_text"] == "INJECTED"
    assert any(r["kind"] == "inject" and r["seq"] == rec_["seq"] for r in ctx.events.records)
    server.release("end")
    client.release("end")


def test_injector_refuses_targets_outside_the_lab_and_sends_nothing(ctx: RunContext) -> None:
    from lab.kernel.hosts.netns import Namespace
    from lab.kernel.inject import Injector

    inj = Injector.raw(ctx, None)
    for dst in ("192.0.2.1", "8.8.8.8", "198.51.100.1"):
        with pytest.raises(UnsafeTarget):
            inj.rst("127.0.0.1", 1, dst, 2, seq=1)
    ns = Namespace.create(ctx, "k")
    inj_ns = Injector.raw(ctx, ns)
    with pytest.raises(UnsafeTarget, match="not configured"):
        inj_ns.rst("198.51.100.2", 1, "198.51.100.1", 2, seq=1)  # no such address in that namespace yet
    foreign = Injector(ctx, lambda raw: None, netns="perfns")
    with pytest.raises(UnsafeTarget, match="not this run's"):
        foreign.rst("127.0.0.1", 1, "127.0.0.1", 2, seq=1)
    assert not [r for r in ctx.events.records if r["kind"] == "inject"]
