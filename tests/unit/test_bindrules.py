"""The pure bind/listen rules (lab.core.bindrules): documented Linux points, BSD points, properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lab.core.bindrules import (
    ADDR_PAIRS,
    OK,
    OPTS,
    TCP_STATES,
    UDP_STATES,
    BindCase,
    SockAddr,
    Verdict,
    all_cases,
    expected_bsd,
    expected_linux,
    first_effective_addr,
    rcv_saddr_equal,
)

INUSE = "bind:EADDRINUSE"


def tcp(a1: str, a2: str, o1: str, o2: str, state: str) -> BindCase:
    return BindCase("tcp", a1, a2, o1, o2, state)  # type: ignore[arg-type]


def udp(a1: str, a2: str, o1: str, o2: str, state: str = "bound") -> BindCase:
    return BindCase("udp", a1, a2, o1, o2, state)  # type: ignore[arg-type]


cases = st.sampled_from(all_cases())


def test_case_space() -> None:
    cs = all_cases()
    assert len(cs) == len(ADDR_PAIRS) * len(OPTS) ** 2 * (len(TCP_STATES) + len(UDP_STATES))
    assert len({c.id for c in cs}) == len(cs)


# --- Linux: points documented in docs/kernel-facts.md §6/§12 and the kernel source ------------------------

def test_linux_restart_needs_reuseaddr_on_both_sockets() -> None:
    for state in ("connected", "time_wait"):
        assert expected_linux(tcp("lo1", "lo1", "none", "reuseaddr", state)).second == INUSE
        assert expected_linux(tcp("lo1", "lo1", "reuseaddr", "none", state)).second == INUSE
        assert expected_linux(tcp("lo1", "lo1", "reuseaddr", "reuseaddr", state)).second == OK


def test_linux_no_second_listener_with_reuseaddr() -> None:
    assert expected_linux(tcp("lo1", "lo1", "reuseaddr", "reuseaddr", "listening")).second == INUSE
    # wildcard vs specific: a listening wildcard socket blocks a specific bind even with SO_REUSEADDR on both
    assert expected_linux(tcp("any4", "lo1", "reuseaddr", "reuseaddr", "listening")).second == INUSE
    # both merely bound: the second binds and listens, then the first cannot listen
    v = expected_linux(tcp("lo1", "lo1", "reuseaddr", "reuseaddr", "bound"))
    assert (v.second, v.first_listen) == (OK, "listen:EADDRINUSE")


def test_linux_reuseport_all_must_set_it() -> None:
    assert expected_linux(tcp("lo1", "lo1", "reuseport", "reuseport", "listening")).second == OK
    assert expected_linux(tcp("lo1", "lo1", "reuseport", "none", "listening")).second == INUSE
    assert expected_linux(tcp("lo1", "lo1", "none", "reuseport", "listening")).second == INUSE
    assert expected_linux(udp("lo1", "lo1", "reuseport", "reuseport")).second == OK
    assert expected_linux(udp("lo1", "lo1", "none", "reuseport")).second == INUSE


def test_linux_udp_duplicate_with_reuseaddr_on_both() -> None:
    assert expected_linux(udp("lo1", "lo1", "reuseaddr", "reuseaddr")).second == OK
    assert expected_bsd(udp("lo1", "lo1", "reuseaddr", "reuseaddr")).second == INUSE


def test_ipv6_dual_stack_and_v6only() -> None:
    assert expected_linux(tcp("any6", "any4", "none", "none", "listening")).second == INUSE
    assert expected_linux(tcp("any6only", "any4", "none", "none", "listening")).second == OK
    assert expected_linux(tcp("any4", "any6", "none", "none", "bound")).second == INUSE
    assert expected_linux(tcp("any4", "any6only", "none", "none", "bound")).second == OK


def test_connected_child_has_the_concrete_address() -> None:
    c = tcp("any4", "lo2", "none", "none", "connected")
    assert first_effective_addr(c) == SockAddr(4, "127.0.0.1", False)
    assert expected_linux(c).second == OK                 # 127.0.0.1 child vs 127.0.0.2: no overlap
    assert expected_linux(tcp("any4", "lo2", "none", "none", "listening")).second == INUSE


def test_address_overlap() -> None:
    v4any, lo1, lo2 = SockAddr(4, "0.0.0.0", False), SockAddr(4, "127.0.0.1", False), SockAddr(4, "127.0.0.2", False)
    dual, only = SockAddr(6, "::", False), SockAddr(6, "::", True)
    mapped, v6lo = SockAddr(6, "::ffff:127.0.0.1", False), SockAddr(6, "::1", False)
    assert rcv_saddr_equal(lo1, v4any) and rcv_saddr_equal(v4any, lo1)
    assert not rcv_saddr_equal(lo1, lo2)
    assert rcv_saddr_equal(v4any, dual) and rcv_saddr_equal(dual, v4any)
    assert not rcv_saddr_equal(v4any, only) and not rcv_saddr_equal(only, v4any)
    assert rcv_saddr_equal(lo1, mapped) and rcv_saddr_equal(mapped, lo1)
    assert v6lo.ipv6only          # binding a specific IPv6 address makes the socket IPv6-only
    assert not rcv_saddr_equal(v4any, v6lo)
    assert rcv_saddr_equal(only, v6lo)


# --- BSD description -----------------------------------------------------------------------------

def test_bsd_only_the_new_socket_matters() -> None:
    assert expected_bsd(tcp("lo1", "lo1", "none", "reuseaddr", "time_wait")).second == OK
    assert expected_bsd(tcp("any4", "lo1", "none", "reuseaddr", "listening")).second == OK
    assert expected_bsd(tcp("lo1", "lo1", "reuseaddr", "reuseaddr", "listening")).second == INUSE


# --- properties over the whole case space --------------------------------------------------------

@given(cases)
def test_no_option_and_overlap_means_eaddrinuse_everywhere(case: BindCase) -> None:
    if case.first_opt == case.second_opt == "none" and \
            rcv_saddr_equal(SockAddr(*_addr(case.second_addr)), first_effective_addr(case)):
        assert expected_linux(case).second == INUSE
        assert expected_bsd(case).second == INUSE


@given(cases)
def test_reuseport_on_both_always_shares(case: BindCase) -> None:
    if case.first_opt == case.second_opt == "reuseport":
        v = expected_linux(case)
        assert v.second == OK and v.first_listen in (None, OK)


@given(cases)
def test_linux_decides_at_bind_for_the_second_socket(case: BindCase) -> None:
    """inet_csk_listen_start() re-runs the same check against an unchanged first socket."""
    assert not expected_linux(case).second.startswith("listen:")


@given(cases)
def test_different_specific_addresses_never_conflict(case: BindCase) -> None:
    if {case.first_addr, case.second_addr} == {"lo1", "lo2"}:
        assert expected_linux(case).same_result(Verdict(OK, OK if case.checks_first_listen else None))


@given(cases)
def test_v6only_never_meets_ipv4(case: BindCase) -> None:
    if "any6only" in (case.first_addr, case.second_addr):
        assert expected_linux(case).second == OK


def test_verdict_text() -> None:
    assert Verdict(INUSE).text() == "EADDRINUSE at bind()"
    assert Verdict(OK, "listen:EADDRINUSE").text() == "ok; then first listen(): EADDRINUSE at listen()"


def _addr(key: str) -> tuple[int, str, bool]:
    from lab.core.bindrules import ADDRS

    return ADDRS[key]
