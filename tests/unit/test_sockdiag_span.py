"""A sock_diag sample says when it was taken as a span (first request sent .. last reply read), and every claim about
capture times uses the whole span: a dump that straddles a window's edge is no evidence of a state inside it."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any, cast

from lab.experiments import _closecommon as cc
from lab.kernel import sockdiag
from lab.kernel.sockdiag import Dump, Sampler, SockSample

PORT, CPORT = cc.PORT, 40000


def _sock(state: str, wall: tuple[float, float], client: bool = True, exp: int = 0) -> SockSample:
    sport, dport = (CPORT, PORT) if client else (PORT, CPORT)
    return SockSample(state, "inet", "203.0.113.1", sport, "203.0.113.2", dport,
                      "timewait" if state == "TIME_WAIT" else None, exp, 0, 1, None, *wall)


def _sampler(dumps: list[tuple[float, float, list[str]]], client: bool = True) -> Sampler:
    """A sampler that never ran, fed through its own recording path with these dumps (state None: no socket)."""
    smp = Sampler(cast(Any, SimpleNamespace(events=SimpleNamespace(log=lambda *a, **k: None))))
    for began, done, states in dumps:
        smp._record(Dump(began, done, tuple(_sock(st, (began, done), client) for st in states)))
    return smp


def test_a_dump_straddling_either_edge_is_not_between() -> None:
    t_a, t_b = 100.0, 100.3
    # began before t_a, ended after it: the report may have come before the ACK
    smp = _sampler([(99.99, 100.01, ["FIN_WAIT_2"])])
    assert smp.reading_within(t_a, t_b, local_port=CPORT) is None
    # began inside, ended after t_b: its start stamp is inside (the old rule took it), the report may be after
    smp = _sampler([(99.0, 99.001, ["FIN_WAIT_1"]), (100.29, 100.31, ["FIN_WAIT_2"])])
    assert smp.reading_within(t_a, t_b, local_port=CPORT) is None
    old_rule = [s.wall_s for s in smp.samples if t_a < s.wall_s < t_b]
    assert old_rule, "the start stamp alone lies inside the window"
    # wholly inside: the state it reported, with that dump's span
    smp = _sampler([(100.1, 100.102, ["FIN_WAIT_2"])])
    r = smp.reading_within(t_a, t_b, local_port=CPORT)
    assert r is not None and (r.state, r.began_s, r.done_s) == ("FIN_WAIT_2", 100.1, 100.102)


def test_states_between_needs_a_whole_dump_inside_on_each_side() -> None:
    t_a, t_b = 100.0, 100.3
    server = _sampler([(99.9, 99.901, ["CLOSE_WAIT"]), (100.1, 100.101, ["CLOSE_WAIT"])], client=False)
    straddling = _sampler([(99.99, 100.01, ["FIN_WAIT_2"]), (100.29, 100.31, ["FIN_WAIT_2"])])
    assert cc.states_between(straddling, server, CPORT, t_a, t_b) is None
    inside = _sampler([(99.99, 100.01, ["FIN_WAIT_1"]), (100.2, 100.201, ["FIN_WAIT_2"])])
    assert cc.states_between(inside, server, CPORT, t_a, t_b) == {"client": "FIN_WAIT_2", "server": "CLOSE_WAIT"}


def test_change_only_storage_still_answers_for_every_dump() -> None:
    """Unchanged dumps store no sample; the state at such a dump is the last change before it, and a socket gone
    by then is no state at all."""
    smp = _sampler([(10.0, 10.001, ["ESTABLISHED"]), (10.1, 10.101, ["ESTABLISHED"]), (10.2, 10.201, ["FIN_WAIT_2"]),
                    (10.3, 10.301, ["FIN_WAIT_2"]), (10.4, 10.401, [])])
    assert [s.state for s in smp.samples] == ["ESTABLISHED", "FIN_WAIT_2", "GONE"]
    assert len(smp.spans) == 5 and smp.dumps == 5
    r = smp.reading_within(10.05, 10.15, local_port=CPORT)
    assert r is not None and r.state == "ESTABLISHED" and r.began_s == 10.1    # from the sample at 10.0
    r = smp.reading_within(10.25, 10.35, local_port=CPORT)
    assert r is not None and r.state == "FIN_WAIT_2"
    r = smp.reading_within(10.35, 10.45, local_port=CPORT)
    assert r is not None and r.state is None and r.sample is None
    # a change is known to have happened after the previous dump began
    change = next(c for c in smp.changes if c["state"] == "FIN_WAIT_2")
    assert change["changed_after_wall_s"] == 10.1
    assert (change["sample_wall_s"], change["sample_wall_end_s"]) == (10.2, 10.201)
    gone = smp.samples[-1]
    assert (gone.wall_s, gone.wall_end_s) == (10.4, 10.401)


def test_time_wait_observation_carries_its_spans() -> None:
    samples = [_sock("TIME_WAIT", (100.0, 100.02), exp=59_700), _sock("TIME_WAIT", (100.3, 100.33), exp=60_000),
               _sock("GONE", (160.5, 160.51))]
    [ob] = sockdiag.time_wait_observations(samples)
    assert (ob.first_seen_s, ob.first_seen_end_s, ob.gone_end_s) == (100.0, 100.02, 160.51)
    assert ob.restarts == ((100.3, 60_000),) and ob.restarts_end_s == (100.33,)
    assert abs(ob.started_latest_s - ob.started_s - 0.02) < 1e-9
    assert [round(x, 6) for x in ob.timer_end_range_s()] == [160.3, 160.33]   # from the last restart's span
    d = ob.to_dict()
    assert d["lifetime_s"] == 60.5 and d["lifetime_range_s"] == [60.48, 60.51]


def test_compare_time_wait_judges_the_start_over_the_span_and_reports_it() -> None:
    """The first TIME_WAIT reading's dump began before the analyzer's start and ended after it: by its start stamp
    the kernel 'saw' TIME_WAIT before it began (the old verdict: disagree); somewhere inside its span it agrees."""
    conn = {"id": 0, "client": f"203.0.113.1:{CPORT}", "server": f"203.0.113.2:{PORT}",
            "time_wait": [{"side": "client", "start_ts": 100.0, "end_ts": 160.0, "start_frame": 9}]}
    straddling = [_sock("TIME_WAIT", (99.9, 100.05), exp=59_980), _sock("GONE", (161.0, 161.001))]
    [ob] = sockdiag.time_wait_observations(straddling)
    [row] = sockdiag.compare_time_wait([ob], [conn])
    assert row["agree"] is True and row["kernel_dump_span_ms"] == 150.0
    assert row["start_gap_s"] < 0 < row["start_gap_max_s"]
    # a span that lies wholly before the window cannot be the kernel seeing its TIME_WAIT
    early = [_sock("TIME_WAIT", (99.5, 99.6), exp=59_990)]
    [row] = sockdiag.compare_time_wait(sockdiag.time_wait_observations(early), [conn])
    assert row["agree"] is False and row["why"] == "start differs"


def test_a_real_dump_is_stamped_with_its_span() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    port = lst.getsockname()[1]
    try:
        [s] = sockdiag.sockets(ports=[port])
    finally:
        lst.close()
    assert s.state == "LISTEN" and 0 < s.wall_s <= s.wall_end_s
    assert s.to_dict()["wall_end_s"] == s.wall_end_s
