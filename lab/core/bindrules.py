"""The bind/listen conflict rules for two sockets on one port, as pure functions.

`expected_linux(case)` follows the kernel's own code (net/ipv4/inet_connection_sock.c
`inet_csk_get_port` -> `inet_csk_bind_conflict` -> `inet_bind_conflict` + `inet_rcv_saddr_equal`
for TCP; net/ipv4/udp.c `udp_lib_lport_inuse` for UDP). `expected_bsd(case)` is the classic
BSD description (Stevens UNP 7.5; FreeBSD `in_pcbbind_setup`). The lab measures every case and
sets the kernel's answer beside both; neither function knows what was measured.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from itertools import product
from typing import Literal

Proto = Literal["tcp", "udp"]
Opt = Literal["none", "reuseaddr", "reuseport"]
State = Literal["bound", "listening", "connected", "time_wait"]
AddrKey = Literal["any4", "lo1", "lo2", "lo3", "any6", "any6only"]

OPTS: tuple[Opt, ...] = ("none", "reuseaddr", "reuseport")
TCP_STATES: tuple[State, ...] = ("bound", "listening", "connected", "time_wait")
UDP_STATES: tuple[State, ...] = ("bound", "connected")

# what each address key binds to: (family, address, IPV6_V6ONLY)
ADDRS: dict[str, tuple[int, str, bool]] = {
    "any4": (4, "0.0.0.0", False),
    "lo1": (4, "127.0.0.1", False),
    "lo2": (4, "127.0.0.2", False),
    "lo3": (4, "127.0.0.3", False),   # not in the matrix; used by reuseaddr-uses
    "any6": (6, "::", False),
    "any6only": (6, "::", True),
}
ADDR_LABEL = {"any4": "0.0.0.0", "lo1": "127.0.0.1", "lo2": "127.0.0.2", "lo3": "127.0.0.3", "any6": "[::] dual-stack",
              "any6only": "[::] V6ONLY"}

# (first socket's address, second socket's address)
ADDR_PAIRS: tuple[tuple[AddrKey, AddrKey], ...] = (
    ("any4", "any4"), ("any4", "lo1"), ("lo1", "any4"), ("lo1", "lo1"), ("lo1", "lo2"),
    ("any6", "any4"), ("any6only", "any4"), ("any4", "any6"), ("any4", "any6only"),
)

OK = "ok"


@dataclass(frozen=True)
class BindCase:
    proto: Proto
    first_addr: AddrKey
    second_addr: AddrKey
    first_opt: Opt
    second_opt: Opt
    first_state: State

    @property
    def id(self) -> str:
        return (f"{self.proto}/{self.first_state}/{self.first_addr}+{self.first_opt}"
                f"/{self.second_addr}+{self.second_opt}")

    @property
    def needs_ipv6(self) -> bool:
        return ADDRS[self.first_addr][0] == 6 or ADDRS[self.second_addr][0] == 6

    @property
    def needs_lo2(self) -> bool:
        return bool({"lo2", "lo3"} & {self.first_addr, self.second_addr})

    @property
    def checks_first_listen(self) -> bool:
        """TCP, first socket only bound: after the second listened, can the first still listen?"""
        return self.proto == "tcp" and self.first_state == "bound"


@dataclass(frozen=True)
class Verdict:
    """`second`: "ok", "bind:ERRNO" or "listen:ERRNO" (the call that failed).
    `first_listen`: for a first socket left bound, the result of its listen() after the second
    socket's calls succeeded ("ok" / "listen:ERRNO"); None when not asked."""

    second: str
    first_listen: str | None = None
    rule: str = ""

    def same_result(self, other: Verdict) -> bool:
        return self.second == other.second and self.first_listen == other.first_listen

    def text(self) -> str:
        s = _step_text(self.second)
        if self.first_listen is not None:
            s += "; then first listen(): " + _step_text(self.first_listen)
        return s


def _step_text(result: str) -> str:
    if result == OK:
        return "ok"
    call, _, err = result.partition(":")
    return f"{err} at {call}()"


def all_cases() -> list[BindCase]:
    cases = []
    for proto, states in (("tcp", TCP_STATES), ("udp", UDP_STATES)):
        for state, (a1, a2), o1, o2 in product(states, ADDR_PAIRS, OPTS, OPTS):
            cases.append(BindCase(proto, a1, a2, o1, o2, state))  # type: ignore[arg-type]
    return cases


# ---------------------------------------------------------------------------------------------
# addresses as the kernel sees them


@dataclass(frozen=True)
class SockAddr:
    """A socket's local address as the conflict check sees it (rcv_saddr)."""

    family: int
    ip: str
    v6only: bool

    @property
    def v6type(self) -> str:
        """ipv6_addr_type() class: 'any', 'mapped', 'unicast'. An AF_INET socket counts as mapped
        (inet6_rcv_saddr() returns NULL for it and the kernel then uses IPV6_ADDR_MAPPED)."""
        if self.family == 4:
            return "mapped"
        a = ipaddress.IPv6Address(self.ip)
        if a == ipaddress.IPv6Address("::"):
            return "any"
        return "mapped" if a.ipv4_mapped is not None else "unicast"

    @property
    def v4(self) -> str:
        """sk_rcv_saddr: the IPv4 view. inet6_bind() stores 0 for ::, the embedded address for
        ::ffff:a.b.c.d, and LOOPBACK4_IPV6 (127.0.0.6) for any other IPv6 address."""
        if self.family == 4:
            return self.ip
        a = ipaddress.IPv6Address(self.ip)
        if a == ipaddress.IPv6Address("::"):
            return "0.0.0.0"
        return str(a.ipv4_mapped) if a.ipv4_mapped is not None else "127.0.0.6"

    @property
    def ipv6only(self) -> bool:
        # inet6_bind() sets sk_ipv6only when a socket binds a specific non-mapped IPv6 address
        return self.family == 6 and (self.v6only or self.v6type == "unicast")


def _ipv4_rcv_saddr_equal(a1: str, a2: str, sk2_ipv6only: bool) -> bool:
    # net/ipv4/inet_connection_sock.c ipv4_rcv_saddr_equal(), match_wildcard on both sides
    if sk2_ipv6only:
        return False
    return a1 == a2 or a1 == "0.0.0.0" or a2 == "0.0.0.0"


def rcv_saddr_equal(sk: SockAddr, sk2: SockAddr) -> bool:
    """inet_rcv_saddr_equal(sk, sk2, match_wildcard=true): do the two addresses overlap?"""
    if sk.family == 4:
        return _ipv4_rcv_saddr_equal(sk.v4, sk2.v4, sk2.ipv6only)
    # ipv6_rcv_saddr_equal()
    t1, t2 = sk.v6type, sk2.v6type
    if t1 == "mapped" and t2 == "mapped":
        return _ipv4_rcv_saddr_equal(sk.v4, sk2.v4, sk2.ipv6only)
    if t1 == "any" and t2 == "any":
        return True
    if t2 == "any" and not (sk2.ipv6only and t1 == "mapped"):
        return True
    if t1 == "any" and not (sk.ipv6only and t2 == "mapped"):
        return True
    return sk2.family == 6 and ipaddress.IPv6Address(sk.ip) == ipaddress.IPv6Address(sk2.ip)


def first_effective_addr(case: BindCase) -> SockAddr:
    """The first socket's local address in its state. A connected socket (the accepted child of
    a wildcard listener, or a connected UDP socket) and its TIME_WAIT remnant carry the concrete
    local address of the connection, not the wildcard: the lab connects to 127.0.0.1 (from IPv4,
    so a dual-stack [::] child is ::ffff:127.0.0.1) and, for a V6ONLY socket, to ::1."""
    fam, ip, v6only = ADDRS[case.first_addr]
    if case.first_state in ("connected", "time_wait"):
        if case.first_addr == "any4":
            ip = "127.0.0.1"
        elif case.first_addr == "any6":
            ip = "::ffff:127.0.0.1"
        elif case.first_addr == "any6only":
            ip = "::1"
    return SockAddr(fam, ip, v6only)


def second_addr(case: BindCase) -> SockAddr:
    fam, ip, v6only = ADDRS[case.second_addr]
    return SockAddr(fam, ip, v6only)


# ---------------------------------------------------------------------------------------------
# Linux


_KSTATE = {"bound": "CLOSE", "listening": "LISTEN", "connected": "ESTABLISHED", "time_wait": "TIME_WAIT"}


def _linux_tcp_conflict(new_reuse: bool, new_reuseport: bool, old_reuse: bool, old_reuseport: bool,
                        old_state: str) -> tuple[bool, str]:
    """inet_bind_conflict(sk, sk2, uid, relax=true, reuseport_cb_ok=true, reuseport_ok=true),
    same user. Returns (conflict, why) before the address check."""
    if new_reuse and old_reuse and old_state != "LISTEN":
        # both SO_REUSEADDR and the old one does not listen: relaxed, no conflict
        return False, "both set SO_REUSEADDR and the old socket is not listening"
    if new_reuseport and old_reuseport:
        # both SO_REUSEPORT, same effective uid (or sk2 in TIME_WAIT): no conflict
        return False, "both set SO_REUSEPORT (same user)"
    if new_reuse and old_reuse:
        return True, "SO_REUSEADDR never shares a port with a listening socket"
    if new_reuse or old_reuse:
        return True, "SO_REUSEADDR on one socket only (Linux needs it on both)"
    if new_reuseport or old_reuseport:
        return True, "SO_REUSEPORT on one socket only (all must set it)"
    return True, "port in use, no option"


def expected_linux(case: BindCase) -> Verdict:
    """What Linux answers, from inet_csk_get_port()/inet_csk_listen_start() (TCP) and
    udp_lib_lport_inuse() (UDP); the first socket is the only other owner of the port."""
    a1, a2 = first_effective_addr(case), second_addr(case)
    overlap = rcv_saddr_equal(a2, a1)
    r1, p1 = case.first_opt == "reuseaddr", case.first_opt == "reuseport"
    r2, p2 = case.second_opt == "reuseaddr", case.second_opt == "reuseport"
    if case.proto == "udp":
        # udp_lib_lport_inuse(): conflict when the addresses overlap, not both have SO_REUSEADDR,
        # and not both have SO_REUSEPORT (same uid)
        if not overlap:
            return Verdict(OK, None, "addresses do not overlap")
        if r1 and r2:
            return Verdict(OK, None, "UDP: both set SO_REUSEADDR (duplicate binding allowed)")
        if p1 and p2:
            return Verdict(OK, None, "both set SO_REUSEPORT (same user)")
        why = ("SO_REUSEADDR on one socket only (Linux needs it on both)" if r1 or r2 else
               "SO_REUSEPORT on one socket only (all must set it)" if p1 or p2 else "port in use, no option")
        return Verdict("bind:EADDRINUSE", None, why)

    old_state = _KSTATE[case.first_state]
    if not overlap:
        second, why = OK, "addresses do not overlap"
    else:
        # bind(): sk_state CLOSE
        conflict, why = _linux_tcp_conflict(r2, p2, r1, p1, old_state)
        if conflict:
            return Verdict("bind:EADDRINUSE", None, why)
        # listen(): inet_csk_listen_start() sets LISTEN and calls get_port() again; the check
        # looks at sk2's state, which has not changed, so a bind that passed passes again
        second = OK
    first_listen = None
    if case.checks_first_listen and second == OK:
        # the first socket listens while the second is LISTEN now
        if not overlap:
            first_listen = OK
        else:
            conflict, why3 = _linux_tcp_conflict(r1, p1, r2, p2, "LISTEN")
            first_listen = "listen:EADDRINUSE" if conflict else OK
            if conflict:
                why = f"{why}; then {why3}"
    return Verdict(second, first_listen, why)


# ---------------------------------------------------------------------------------------------
# BSD description


def _bsd_overlap(a1: SockAddr, a2: SockAddr) -> str:
    """'none', 'exact' (same address, both wildcard included) or 'wildcard' (one wildcard, one
    specific). A dual-stack [::] covers 0.0.0.0; a V6ONLY socket never meets an IPv4 one."""
    def v4view(a: SockAddr) -> str | None:
        if a.family == 4:
            return a.ip
        if a.ipv6only:
            return None
        return a.v4

    def v6view(a: SockAddr) -> str | None:
        if a.family == 6 and (a.ipv6only or a.v6type != "mapped"):
            return a.ip if a.v6type != "any" else "::"
        return None

    for view, any_ in ((v4view, "0.0.0.0"), (v6view, "::")):
        x, y = view(a1), view(a2)
        if x is None or y is None:
            continue
        if x == y:
            return "exact"
        if x == any_ or y == any_:
            return "wildcard"
    return "none"


def expected_bsd(case: BindCase) -> Verdict:
    """The classic BSD description (Stevens UNP 7.5, FreeBSD in_pcbbind_setup): only the NEW
    socket's options matter (except SO_REUSEPORT, which every socket must set), listen() never
    fails for the address, and any socket with a foreign address (connected, TIME_WAIT) is
    ignored by a binder that sets SO_REUSEADDR or SO_REUSEPORT."""
    a1, a2 = first_effective_addr(case), second_addr(case)
    kind = _bsd_overlap(a1, a2)
    r2 = case.second_opt == "reuseaddr"
    p1, p2 = case.first_opt == "reuseport", case.second_opt == "reuseport"
    fl = OK if case.checks_first_listen else None
    if kind == "none":
        return Verdict(OK, fl, "addresses do not overlap")
    if p1 and p2:
        return Verdict(OK, fl, "every socket sets SO_REUSEPORT: duplicate binding allowed")
    if case.first_state in ("connected", "time_wait") and (r2 or p2):
        return Verdict(OK, fl, "new socket sets SO_REUSEADDR: connections on the port do not block it")
    if kind == "wildcard" and (r2 or p2):
        return Verdict(OK, fl, "new socket sets SO_REUSEADDR: wildcard and specific may share the port")
    if kind == "exact":
        return Verdict("bind:EADDRINUSE", None, "exact duplicate without SO_REUSEPORT on all sockets")
    return Verdict("bind:EADDRINUSE", None, "port in use and the new socket sets no option")


def describe(case: BindCase) -> str:
    """One line for people."""
    o = {"none": "no option", "reuseaddr": "SO_REUSEADDR", "reuseport": "SO_REUSEPORT"}
    st = {"bound": "bound", "listening": "listening", "connected": "connected (listener closed)",
          "time_wait": "in TIME_WAIT"}[case.first_state]
    return (f"{case.proto.upper()}: first {ADDR_LABEL[case.first_addr]} {o[case.first_opt]}, {st}; "
            f"second {ADDR_LABEL[case.second_addr]} {o[case.second_opt]}")
