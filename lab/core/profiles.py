"""How long TIME_WAIT lasts (2*MSL) on each platform the analyzer can assume."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    time_wait_s: float
    source: str
    # Linux restarts TIME_WAIT on any ACK-bearing segment it receives (tcp_timewait_state_process);
    # RFC 9293 only on a retransmitted FIN.
    restart_on_any_ack: bool = False
    # the shortest retransmission timeout: a FIN resent sooner after its previous transmission was not sent
    # because the ACK failed to come back (it may still have been in flight). Linux: TCP_RTO_MIN, 200 ms
    # (net.ipv4.tcp_rto_min_us); used for the other profiles too (RFC 6298 recommends 1 s, so stacks that
    # follow it only make this more conservative)
    min_rto_s: float = 0.2


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("linux", 60.0,
            "TCP_TIMEWAIT_LEN = 60 s, hard-coded (tcp_fin_timeout does not change it); measured on this kernel "
            "60.6-62.1 s because the timer wheel at HZ=250 rounds a 60 s timer up by up to ~2 s",
            restart_on_any_ack=True),
    Profile("freebsd", 60.0, "2 * net.inet.tcp.msl, default 30000 ms"),
    Profile("macos", 30.0, "2 * net.inet.tcp.msl, default 15000 ms on macOS/XNU"),
    Profile("solaris", 60.0,
            "tcp_time_wait_interval default 60000 ms (Solaris 7 and later); the lore's 240 s was the older default"),
    # Microsoft documents TcpTimedWaitDelay's default as 0xF0 = 240 s (2 * MSL of 120 s); some later server
    # tuning guides quote 120 s. We keep the documented registry default; --time-wait overrides it.
    Profile("windows", 240.0, "TcpTimedWaitDelay default 0xF0 = 240 s (2 * MSL, MSL = 120 s)"),
    Profile("rfc793", 240.0, "RFC 793 / RFC 9293: MSL = 2 minutes, TIME_WAIT = 2 * MSL"),
)}


def linux_timer_slack_s(seconds: float, hz: int) -> float:
    """How late Linux's timer wheel may fire a timer set `seconds` ahead at CONFIG_HZ=hz: the bucket width of
    the wheel level it lands in (kernel/time/timer.c: 64 buckets a level, each level 8 times coarser; level n
    holds what is due in less than 63 << 3n jiffies). A 60 s TIME_WAIT: 2.048 s at HZ=250, 5.12 s at HZ=100."""
    delta = int(seconds * hz)
    level = 0
    while level < 8 and delta >= 63 << (3 * level):
        level += 1
    return (1 << (3 * level)) / hz


def get_profile(name: str, time_wait_s: float | None = None) -> Profile:
    """The named profile, with its TIME_WAIT length replaced by `time_wait_s` when given."""
    try:
        prof = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; one of {', '.join(PROFILES)}") from None
    if time_wait_s is None:
        return prof
    if time_wait_s < 0:
        raise ValueError("time_wait_s must be >= 0")
    return Profile(prof.name, float(time_wait_s), f"{prof.source}; overridden: {time_wait_s:g} s",
                   prof.restart_on_any_ack, prof.min_rto_s)
