"""The injection guard: loopback, or an address configured in this run's own namespace; nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.core.model import Segment
from lab.errors import UnsafeTarget
from lab.kernel.inject import check_target, craft, describe, flags_value, match_frames, variant

RUN = "a1b2c3"
NS = "twla1b2c3k"
ADDRS = ["127.0.0.1", "::1", "198.51.100.1", "192.0.2.2"]


@pytest.mark.parametrize("dst", ["127.0.0.1", "127.3.4.5", "::1"])
def test_loopback_allowed_on_host(dst: str) -> None:
    assert "loopback" in check_target(dst, run_id=RUN)


@pytest.mark.parametrize("dst", ["127.0.0.1", "198.51.100.1", "192.0.2.2"])
def test_addresses_configured_in_own_namespace_allowed(dst: str) -> None:
    assert check_target(dst, run_id=RUN, netns=NS, netns_addrs=ADDRS)


@pytest.mark.parametrize("dst", ["8.8.8.8", "10.0.0.1", "192.168.1.1", "198.51.100.1", "2001:db8::1", "fe80::1",
                                 "0.0.0.0", "::ffff:127.0.0.1", "255.255.255.255"])
def test_everything_else_refused_on_host(dst: str) -> None:
    with pytest.raises(UnsafeTarget) as exc:
        check_target(dst, run_id=RUN)
    assert "refusing" in exc.value.one_line() and "\n" not in exc.value.one_line()


@pytest.mark.parametrize("dst", ["8.8.8.8", "10.1.2.3", "198.51.100.7", "2001:db8::9", "192.0.2.200"])
def test_unconfigured_or_outside_lab_ranges_refused_in_namespace(dst: str) -> None:
    addrs = [*ADDRS, "8.8.8.8", "10.1.2.3"]  # even if configured: not a lab range
    with pytest.raises(UnsafeTarget):
        check_target(dst, run_id=RUN, netns=NS, netns_addrs=addrs)


@pytest.mark.parametrize("netns", ["perfns", "ns-abc123", "twlffffffk", "twl", "twla1b2c", "Twla1b2c3k",
                                   "twla1b2c3kkkkkkkkkk"])
def test_namespaces_not_of_this_run_refused(netns: str) -> None:
    with pytest.raises(UnsafeTarget) as exc:
        check_target("198.51.100.1", run_id=RUN, netns=netns, netns_addrs=ADDRS)
    assert "namespace" in exc.value.message
    with pytest.raises(UnsafeTarget):  # even for loopback: someone else's namespace is not ours to touch
        check_target("127.0.0.1", run_id=RUN, netns=netns, netns_addrs=ADDRS)


def test_garbage_refused_with_one_line() -> None:
    with pytest.raises(UnsafeTarget) as exc:
        check_target("example.com", run_id=RUN)
    assert exc.value.hint and "not an IP address" in exc.value.message


def test_craft_describe_roundtrip_and_variant() -> None:
    raw = craft("198.51.100.2", 40000, "198.51.100.1", 5000, flags="PA", seq=1000001, ack=77, ts=(1000, 5),
                payload=b"OLD-DATA-1")
    d = describe(raw)
    assert (d["seq"], d["ack"], d["flags"], d["tsval"], d["tsecr"], d["payload_text"]) == \
        (1000001, 77, "PA", 1000, 5, "OLD-DATA-1")
    moved = describe(variant(raw, shift=-5, strip_ts=True, ack=99))
    assert (moved["seq"], moved["ack"], moved["tsval"], moved["payload_text"]) == (1000001 - 5, 99, None, "OLD-DATA-1")
    wrapped = describe(variant(raw, seq=0xFFFFFFFF, shift=2))
    assert wrapped["seq"] == 1
    assert flags_value("SA") == 0x12


def test_match_frames_maps_log_records_to_frames() -> None:
    raw = craft("198.51.100.2", 40000, "198.51.100.1", 5000, flags="R", seq=42, ts=None)
    rec = describe(raw)
    segs = [Segment(1, 0.0, "198.51.100.1", 5000, "198.51.100.2", 40000, 7, 42, 0x10),
            Segment(2, 0.1, "198.51.100.2", 40000, "198.51.100.1", 5000, 42, 0, 0x04),
            Segment(3, 0.2, "198.51.100.2", 40000, "198.51.100.1", 5000, 42, 0, 0x04)]
    assert match_frames(segs, [rec, rec]) == {0: 2, 1: 3}
    assert match_frames(segs[:1], [rec]) == {}


def test_peer_expressions() -> None:
    from lab.kernel.peer import PeerScriptError, evaluate

    v = {"peer.isn": 1000, "kernel.nxt": 5, "old.rcv_nxt": 0xFFFFFFFF}
    assert evaluate("peer.isn+1", v) == 1001
    assert evaluate(" kernel.nxt - 10 ", v) == (5 - 10) % (1 << 32)
    assert evaluate("old.rcv_nxt+2", v) == 1
    assert evaluate(7, v) == 7
    for bad in ("peer.isn+", "nope+1", "1 2", "", "peer.isn*2"):
        with pytest.raises(PeerScriptError):
            evaluate(bad, v)


def test_verbatim_replay_maps_to_its_own_frame_not_the_original() -> None:
    from lab.kernel.inject import analyzer_agreement

    raw = craft("198.51.100.2", 40000, "198.51.100.1", 5000, flags="PA", seq=100, ack=7, payload=b"x")
    original = {**describe(raw), "mark": None, "label": "i1:data"}
    replay = {**describe(raw), "mark": "duplicate", "label": "replay"}
    seg = Segment(1, 0.0, "198.51.100.2", 40000, "198.51.100.1", 5000, 100, 7, 0x18, payload_len=1)
    segs = [seg, seg._replace(frame=5)]
    good = analyzer_agreement([{"kind": "delayed-duplicate", "frames": [5]}], segs, [original, replay],
                              "delayed-duplicate", {"duplicate"})
    assert good["ok"] and good["expected_frames"] == [5]
    bad = analyzer_agreement([{"kind": "delayed-duplicate", "frames": [1]}], segs, [original, replay],
                             "delayed-duplicate", {"duplicate"})
    assert not bad["ok"] and bad["missed_frames"] == [5] and bad["extra_findings"][0]["frames"] == [1]
    none = analyzer_agreement([], segs, [original, replay], "time-wait-assassinated", ())
    assert none["ok"] and none["expected_frames"] == []


def test_captured_segment_from_a_file_replays_byte_for_byte(tmp_path: Path) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    from lab.errors import BadCapture
    from lab.kernel.inject import captured_segment

    raw = craft("198.51.100.2", 40000, "198.51.100.1", 5000, flags="PA", seq=9, ack=3, ts=(5, 6), payload=b"old")
    wrpcap(str(tmp_path / "raw.pcap"), [IP(raw), IP(raw)], linktype=101)
    wrpcap(str(tmp_path / "eth.pcap"), [Ether() / IP(raw)])
    assert captured_segment(tmp_path / "raw.pcap", 2) == raw
    assert captured_segment(tmp_path / "eth.pcap", 1) == raw
    with pytest.raises(BadCapture, match="no frame 3"):
        captured_segment(tmp_path / "raw.pcap", 3)


# --- where packets really leave (root: namespaces, raw sockets) ----------------------------------------------


class _LookAlike:
    """Carries a real lab namespace's name but lives in the host's namespace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[list[str]] = []

    def entered(self) -> Any:
        return contextlib.nullcontext()

    def run(self, argv: Any, check: bool = True, **kw: Any) -> Any:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")


HOST_GATEWAY_LIKE = "192.0.2.1"  # a lab address that is the real default gateway on some hosts


def _no_inject(ctx: Any) -> None:
    assert not [r for r in ctx.events.records if r["kind"] == "inject"]


@pytest.mark.root
def test_injector_named_after_a_lab_namespace_but_sending_from_the_host_is_refused(ctx: Any) -> None:
    from lab.kernel.hosts.netns import Namespace
    from lab.kernel.inject import Injector

    ns = Namespace.create(ctx, "k")
    subprocess.run(["ip", "-n", ns.name, "addr", "add", "192.0.2.1/24", "dev", "lo"], check=True)
    sent: list[bytes] = []
    bare = Injector(ctx, sent.append, netns=ns.name)          # a bare writer: no proof of where it sends
    with pytest.raises(UnsafeTarget):
        bare.rst("192.0.2.9", 1, HOST_GATEWAY_LIKE, 2, seq=1)
    fake = Injector.raw(ctx, _LookAlike(ns.name))             # the socket is opened in the host namespace
    with pytest.raises(UnsafeTarget, match="host namespace"):
        fake.rst("192.0.2.9", 1, HOST_GATEWAY_LIKE, 2, seq=1)
    real = Injector.raw(ctx, ns)                              # inside the namespace the address is the lab's
    assert real.allowed(HOST_GATEWAY_LIKE).endswith(f"configured in {ns.name}")
    assert not sent
    _no_inject(ctx)


@pytest.mark.root
def test_namespace_with_this_runs_name_but_not_in_its_ledger_is_refused(ctx: Any) -> None:
    from lab.kernel import impair
    from lab.kernel.inject import Injector

    name = ctx.name("zz")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        class Named:
            def __init__(self) -> None:
                self.name = name

            def entered(self) -> Any:
                from lab.kernel.sockdiag import in_netns
                return in_netns(name)

        inj = Injector.raw(ctx, Named())
        with pytest.raises(UnsafeTarget, match="not one this run created"):
            inj.rst("127.0.0.1", 1, "127.0.0.1", 2, seq=1)
        look = _LookAlike(name)
        with pytest.raises(UnsafeTarget, match="ledger did not create"):
            impair.drop_one(ctx, look, dport=5000)
        assert not look.calls
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    _no_inject(ctx)


@pytest.mark.root
def test_impair_runs_iptables_itself_never_through_the_callers_object(ctx: Any) -> None:
    from lab.kernel import impair
    from lab.kernel.hosts.netns import Namespace

    ns = Namespace.create(ctx, "k")
    look = _LookAlike(ns.name)
    rule = impair.drop_one(ctx, look, dport=5000)
    assert not look.calls
    listing = subprocess.run(["ip", "netns", "exec", ns.name, "iptables", "-S", "INPUT"], capture_output=True,
                             text=True, check=True).stdout
    assert rule.comment in listing
    rule.remove()


@pytest.mark.root
def test_agent_refuses_targets_outside_the_lab_before_starting(ctx: Any) -> None:
    from lab.kernel.agent import Agent
    from lab.kernel.hosts.netns import NetnsPair

    steps: list[dict[str, Any]] = [{"op": "socket", "sock": "s"},
                                   {"op": "connect", "sock": "s", "addr": [HOST_GATEWAY_LIKE, 80]}]
    with pytest.raises(UnsafeTarget):
        Agent.start(ctx, steps)                                  # from the host: only loopback
    with pytest.raises(UnsafeTarget, match="not this run's"):
        Agent.start(ctx, steps, netns="perfns")
    assert not [i for i in ctx.ledger.items if i["kind"] == "pid"]
    pair = NetnsPair.create(ctx)
    ok = Agent.start(ctx, [{"op": "socket", "sock": "s"},
                           {"op": "connect", "sock": "s", "addr": [pair.server.addr4, 9], "timeout_s": 1,
                            "label": "c"}], netns=pair.client.name)
    assert ok.wait("c")["errno"] == "ECONNREFUSED"           # allowed: reachable only inside the pair


def test_agent_program_connects_only_where_the_controller_checked() -> None:
    steps = [{"op": "socket", "sock": "s"}, {"op": "connect", "sock": "s", "addr": ["8.8.8.8", 53], "label": "c"}]
    env = {k: v for k, v in os.environ.items() if k != "TWLAB_AGENT_ALLOW"}
    out = subprocess.run([sys.executable, "-m", "lab.kernel.agent"], input=json.dumps(steps) + "\n",
                         capture_output=True, text=True, timeout=20, env=env)
    rec = json.loads(out.stdout.splitlines()[1])
    assert not rec["ok"] and "refusing to connect to 8.8.8.8" in rec["error"]


@pytest.mark.root
def test_only_raw_and_tun_can_send_from_a_namespace(ctx: Any, tmp_path: Path) -> None:
    from lab.kernel.inject import Injector

    with pytest.raises(TypeError):
        Injector(ctx, lambda raw: None, origin=lambda: (0, 0))  # type: ignore[call-arg]  # no way to claim one
    with open(tmp_path / "not-a-tun", "wb") as fh:
        fake_tun = Injector.tun(ctx, fh.fileno())
        with pytest.raises(UnsafeTarget, match="cannot tell which network namespace"):
            fake_tun.rst("127.0.0.1", 1, "127.0.0.1", 2, seq=1)
    _no_inject(ctx)
