"""Lab hosts: namespaces and the veth pair (names, addresses, sysctls only inside, no default route), teardown on
success, exception, SIGINT, SIGTERM; `twlab doctor --cleanup` after SIGKILL; two runs at once."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import lab_netns_of, reap

from lab.errors import UsageError
from lab.kernel.hosts.loopback import Loopback
from lab.run.context import Experiment, Outcome, RunContext
from lab.run.runner import open_context

if TYPE_CHECKING:
    from lab.kernel.hosts.netns import Namespace

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


def _ctx(stack: ExitStack, tmp: Path) -> RunContext:
    return open_context(Experiment(id="hosts-test", claim="-", lore="-", run=lambda c: Outcome(True, {})), tmp, stack)


def _host(key: str) -> str:
    return Path("/proc/sys", key.replace(".", "/")).read_text().strip()


def _listener(ns: Namespace, addr: str | None, port: int, family: socket.AddressFamily = socket.AF_INET
              ) -> socket.socket:
    """A socket of the namespace `ns` listening on addr:port."""
    with ns.entered():
        lst = socket.socket(family)
        lst.bind((addr, port))
        lst.listen()
    return lst


def test_namespace_sysctls_stay_inside_and_are_recorded(ctx: RunContext) -> None:
    from lab.kernel.hosts.netns import Namespace

    host_before = _host("net.ipv4.tcp_max_tw_buckets")
    ns = Namespace.create(ctx, "k", sysctls={"net.ipv4.tcp_max_tw_buckets": 0,
                                            "net.ipv4.ip_local_port_range": (40000, 40009)})
    assert ns.name == f"twl{ctx.run_id}k" and Path("/run/netns", ns.name).exists()
    assert ns.settings == {"net.ipv4.tcp_max_tw_buckets": "0", "net.ipv4.ip_local_port_range": "40000 40009"}
    assert ns.read_sysctl("net.ipv4.tcp_max_tw_buckets") == "0"
    assert _host("net.ipv4.tcp_max_tw_buckets") == host_before
    assert any(e["kind"] == "sysctl" and e["key"] == "net.ipv4.tcp_max_tw_buckets" for e in ctx.events.records)
    assert {"kind": "netns", "name": ns.name} in ctx.ledger.items
    assert "state UNKNOWN" in ns.run(["ip", "link", "show", "lo"]).stdout   # lo is up
    with pytest.raises(ValueError):
        ns.sysctl("kernel.hostname", "x")


def test_pair_addresses_no_default_route_and_quick_connects(ctx: RunContext) -> None:
    from lab.kernel.hosts.netns import NetnsPair

    pair = NetnsPair.create(ctx)
    names = [pair.client.name, pair.server.name, pair.client.iface or "", pair.server.iface or ""]
    assert all(n.startswith(f"twl{ctx.run_id}") and len(n) <= 15 for n in names)
    from lab.run import addrplan

    plan = addrplan.current()  # a documentation /24 the host does not use (not 192.0.2.0/24 where eth0 is in it)
    assert (pair.client.addr4, pair.server.addr4) == (plan.client4(), plan.server4())
    assert (pair.client.addr6, pair.server.addr6) == (plan.client6(), plan.server6())
    host = addrplan.host_networks()
    assert not any(ipaddress.ip_address(a) in h for a in (pair.client.addr4, pair.server.addr4) for h in host)
    for ns in (pair.client, pair.server):
        assert ns.run(["ip", "route", "show", "default"]).stdout.strip() == ""
        assert ns.run(["ip", "-6", "route", "show", "default"]).stdout.strip() == ""
    for fam, addr in ((socket.AF_INET, pair.server.addr4), (socket.AF_INET6, pair.server.addr6)):
        lst = _listener(pair.server, addr, 7000, fam)
        with pair.client.entered():
            cli = socket.socket(fam)
        t0 = time.monotonic()
        cli.connect((addr, 7000))
        assert time.monotonic() - t0 < 0.5, "connect took a SYN retransmission: the veth was not ready"
        cli.close()
        lst.close()


def test_teardown_on_exception(tmp_path: Path) -> None:
    from lab.kernel.hosts.netns import NetnsPair

    run_id = ""
    with pytest.raises(RuntimeError), ExitStack() as stack:
        c = _ctx(stack, tmp_path)
        run_id = c.run_id
        NetnsPair.create(c)
        assert len(lab_netns_of(run_id)) == 2
        raise RuntimeError("boom")
    assert lab_netns_of(run_id) == []


def test_loopback_refuses_host_settings() -> None:
    lo = Loopback()
    with pytest.raises(UsageError):
        lo.sysctl("net.ipv4.tcp_max_tw_buckets", 0)
    assert lo.name is None and lo.addr4 == "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# real runs, real signals


def _start(out: Path, exp: str = "time-wait-duration") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lab", "run", exp, "--json", "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(out: Path, exp: str = "time-wait-duration", timeout_s: float = 30) -> tuple[list[str], list[int]]:
    """The run's namespaces and agent pids, once it is waiting in the middle of the experiment."""
    ev = out / exp / "events.jsonl"
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if ev.exists():
            recs = [json.loads(x) for x in ev.read_text().splitlines() if x.strip()]
            if any(r["kind"] == "progress" and "still in TIME_WAIT" in r.get("text", "") for r in recs):
                names = [r["name"] for r in recs if r["kind"] == "netns" and r.get("action") == "add"]
                pids = [r["pid"] for r in recs if r["kind"] == "agent-start"]
                return names, pids
        time.sleep(0.2)
    raise AssertionError("the run did not reach its waiting phase")


def _doctor_leftovers() -> str:
    r = subprocess.run([sys.executable, "-m", "lab", "doctor", "--json"], cwd=ROOT, capture_output=True, text=True)
    checks = json.loads(r.stdout)["checks"]
    return next(c["detail"] for c in checks if c["name"] == "leftovers")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_removes_everything(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _start(tmp_path)
    try:
        names, pids = _wait_running(tmp_path)
        assert len(names) == 2 and all(Path("/run/netns", n).exists() for n in names)
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        reap(proc)
    assert proc.returncode != 0
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in left], left
    assert not [p for p in pids if _alive(p)]
    detail = _doctor_leftovers()
    assert not [n for n in names if n in detail], detail


def test_doctor_cleanup_after_sigkill(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    try:
        names, pids = _wait_running(tmp_path)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(Path("/run/netns", n).exists() for n in names), "SIGKILL leaves the namespaces (nothing ran)"
    detail = _doctor_leftovers()
    assert all(n in detail for n in names), detail
    r = subprocess.run([sys.executable, "-m", "lab", "doctor", "--cleanup", "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    removed = json.loads(r.stdout)["removed"]
    assert all(f"netns {n}" in removed for n in names), removed
    assert not [n for n in names if Path("/run/netns", n).exists()]
    time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]


def test_two_runs_at_once_do_not_collide(tmp_path: Path) -> None:
    a, b = _start(tmp_path / "a", "who-gets-time-wait"), _start(tmp_path / "b", "who-gets-time-wait")
    outs = [p.communicate(timeout=120) for p in (a, b)]
    for p, (out, err) in zip((a, b), outs, strict=True):
        assert p.returncode == 0, err
        res = json.loads(out.splitlines()[-1])
        assert res["reproduced"] is True
    ids = {json.loads(o.splitlines()[-1])["run_id"] for o, _ in outs}
    assert len(ids) == 2
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [i for i in ids if f"twl{i}" in left]


# ---------------------------------------------------------------------------------------------
# impairments


def test_impairments_refuse_a_namespace_that_is_not_this_runs(ctx: RunContext) -> None:
    from lab.errors import UnsafeTarget
    from lab.kernel.impair import drop_one

    with pytest.raises(UnsafeTarget):
        drop_one(ctx, Loopback(), dport=7000)           # the host's own firewall
    from lab.kernel.hosts.netns import Namespace

    ns = Namespace.create(ctx, "k")
    with pytest.raises(UnsafeTarget):
        drop_one(ctx, ns)                               # no port: not scoped to the run's traffic


def test_drop_one_drops_exactly_one_and_is_removed(ctx: RunContext) -> None:
    from lab.kernel.hosts.netns import NetnsPair
    from lab.kernel.impair import drop_one

    pair = NetnsPair.create(ctx)
    lst = _listener(pair.server, pair.server.addr4, 7000)
    rule = drop_one(ctx, pair.server, chain="INPUT", dport=7000, tcp_flags=("SYN", "SYN"))
    assert f"twl{ctx.run_id}drop" in pair.server.run(["iptables", "-S", "INPUT"]).stdout
    with pair.client.entered():
        cli = socket.socket()
    t0 = time.monotonic()
    cli.connect((pair.server.addr4, 7000))   # the first SYN is dropped, the retransmission (1 s) gets through
    took = time.monotonic() - t0
    assert 0.8 <= took <= 3.5
    assert rule.packets() == 1
    rule.remove()
    assert "twl" not in pair.server.run(["iptables", "-S", "INPUT"]).stdout
    cli.close()
    lst.close()


def test_nfqueue_hold_delays_the_chosen_packets(ctx: RunContext) -> None:
    pytest.importorskip("netfilterqueue")
    from lab.kernel.hosts.netns import NetnsPair
    from lab.kernel.impair import Hold

    pair = NetnsPair.create(ctx)
    lst = _listener(pair.server, pair.server.addr4, 7000)
    with Hold(ctx, pair.client, chain="OUTPUT", dport=7000, holds_ms=[300.0]) as hold:
        with pair.client.entered():
            cli = socket.socket()
        t0 = time.monotonic()
        cli.connect((pair.server.addr4, 7000))   # the SYN is held 300 ms
        took = time.monotonic() - t0
    assert 0.28 <= took <= 0.9
    assert hold.log[0]["hold_ms"] == 300.0
    held_s = hold.log[0]["released_wall_s"] - hold.log[0]["queued_wall_s"]
    assert 0.28 <= held_s <= 0.9
    assert "NFQUEUE" not in pair.client.run(["iptables", "-S", "OUTPUT"]).stdout
    cli.close()
    lst.close()


def test_nfqueue_hold_until_released_is_an_event(ctx: RunContext) -> None:
    """A hold of None keeps the packet until release(n): the SYN is not through before, and is after."""
    pytest.importorskip("netfilterqueue")
    import threading

    from lab.kernel.hosts.netns import NetnsPair
    from lab.kernel.impair import Hold

    pair = NetnsPair.create(ctx)
    lst = _listener(pair.server, pair.server.addr4, 7000)
    # retransmitted SYNs are held too: only release(0) can let the connection through
    with Hold(ctx, pair.client, chain="OUTPUT", dport=7000, holds_ms=[None] * 8) as hold:
        with pair.client.entered():
            cli = socket.socket()
        done = threading.Event()
        connector = threading.Thread(target=lambda: (cli.connect((pair.server.addr4, 7000)), done.set()))
        connector.start()
        assert hold.wait_queued(0, 10)                 # the SYN is in the queue ...
        assert not done.wait(0.5)                      # ... and stays there (no timer lets it go)
        hold.release(0)
        assert done.wait(10)                           # released: the handshake completes
        connector.join(5)
    assert hold.log[0]["hold_ms"] is None and "released_wall_s" in hold.log[0]
    cli.close()
    lst.close()
