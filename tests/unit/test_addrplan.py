"""The lab's subnets avoid the host's own networks (a host whose eth0 is 192.0.2.2/24 gets 203.0.113.0/24)."""

from __future__ import annotations

import ipaddress

import pytest

from lab.errors import EnvironmentProblem
from lab.run import addrplan


def nets(*specs: str) -> list[addrplan.Net]:
    return [ipaddress.ip_network(s, strict=False) for s in specs]


def test_free_host_keeps_the_first_candidates() -> None:
    plan = addrplan.choose(nets("10.0.0.0/24", "fd00::/64"))
    assert (plan.pair4, plan.pair6) == ("192.0.2.0/24", "2001:db8::/64")
    assert (plan.client4(), plan.server4()) == ("192.0.2.1", "192.0.2.2")


def test_host_in_192_0_2_gets_another_documentation_range() -> None:
    plan = addrplan.choose(nets("192.0.2.0/24", "192.0.2.1/32", "2001:db8::/48"))
    assert plan.pair4 == "203.0.113.0/24" and plan.client4() == "203.0.113.1"
    assert plan.pair6 == "2001:db8:7::/64"
    assert "192.0.2.0/24" in plan.to_dict()["avoided"]  # type: ignore[operator]


def test_a_route_through_a_candidate_counts_as_used() -> None:
    assert addrplan.choose(nets("192.0.2.128/25")).pair4 == "203.0.113.0/24"


def test_no_free_range_is_one_line() -> None:
    with pytest.raises(EnvironmentProblem) as exc:
        addrplan.choose(nets("192.0.0.0/8", "203.0.0.0/8"))
    assert "\n" not in exc.value.one_line()


def test_this_hosts_plan_overlaps_nothing_of_the_host() -> None:
    host = addrplan.host_networks()
    plan = addrplan.choose(host)
    for a in (plan.client4(), plan.server4(), plan.client6(), plan.server6()):
        assert not any(ipaddress.ip_address(a) in h for h in host)
