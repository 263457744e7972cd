"""proxy-port-exhaustion: a reverse proxy that opens one upstream connection per request and closes it first keeps
one TIME_WAIT per request on its own side, each holding a local port for 60 s: with a narrow ip_local_port_range
it runs out, and nginx logs `connect() to ... failed (99: Cannot assign requested address) while connecting to
upstream` and answers 502. The forecast: the proxy sustains at most range / 60 s new upstream connections per
second to one upstream; any faster load breaks after `range` requests. The documented fix
(proxy_http_version 1.1, an empty Connection header, `keepalive` in the upstream block) reuses connections.

Namespaces: the proxy's (the pair's client namespace; a real nginx, ip_local_port_range narrowed) and the
upstream's (the pair's server namespace), where the load generator also runs (so its own ephemeral ports are not
the proxy's). Cases, each a server block of the one proxy nginx, each to its own upstream port:
  A. nginx's default proxy_http_version 1.0 to an upstream application that answers with Content-Length and leaves
     the close to its client: nginx closes each upstream connection first -> TIME_WAIT on the proxy -> 502s.
  B. the fix, same application: HTTP/1.1 + keepalive: no exhaustion, a handful of upstream connections.
  C. (contrast) default HTTP/1.0 to an upstream nginx, which closes right after its response too: the two closes
     race, TIME_WAIT lands on either side, and the proxy's ports are freed as often as the upstream wins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lab.core.model import Flags
from lab.experiments import _closecommon as cc
from lab.experiments import _wave2 as w2
from lab.kernel import sockdiag
from lab.kernel.nginx import Nginx, UpstreamApp
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext

TIME_WAIT_S = 60.0
RANGE_START = 41000
EADDRNOTAVAIL_LOG = r"connect\(\) to \S+ failed \(99: Cannot assign requested address\) while connecting to upstream"
KNOBS = {
    "range_size": w2.Knob(20, "ports", "ports in the proxy namespace's ip_local_port_range", 4, 200),
    "requests": w2.Knob(60, "requests", "requests the load generator sends per case, one after another", 10, 1000),
}



def knob_rule(values: dict[str, float]) -> str | None:
    """The rule between this experiment's knobs (lab.experiments._wave2.parse_sets looks it up by name)."""
    if values["requests"] <= values["range_size"]:
        return (f"requests ({values['requests']:g}) must exceed range_size ({values['range_size']:g}) for the "
                "range to run out")
    return None


@dataclass(frozen=True)
class Case:
    key: str
    listen: int          # the proxy's server block
    upstream: int        # the upstream's port
    what: str


CASES = (
    Case("A", 8080, 8081, "proxy_http_version 1.0 (default) -> application"),
    Case("B", 8180, 8082, "proxy_http_version 1.1 + keepalive -> application"),
    Case("C", 8280, 8083, "proxy_http_version 1.0 (default) -> upstream nginx"),
)


def _proxy_conf(proxy_addr: str, up_addr: str) -> str:
    a, b, c = CASES
    return f"""    upstream app_keepalive {{ server {up_addr}:{b.upstream}; keepalive 16; }}
    server {{ listen {proxy_addr}:{a.listen}; location / {{ proxy_pass http://{up_addr}:{a.upstream}; }} }}
    server {{ listen {proxy_addr}:{b.listen}; location / {{
        proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://app_keepalive; }} }}
    server {{ listen {proxy_addr}:{c.listen}; location / {{ proxy_pass http://{up_addr}:{c.upstream}; }} }}"""


def _upstream_conf(up_addr: str) -> str:
    return (f"    server {{ listen {up_addr}:{CASES[2].upstream}; location / {{ default_type text/plain; "
            "return 200 \"ok\\n\"; } }")


def _load(ctx: RunContext, pair: cc.NetnsPair, case: Case, n: int) -> list[dict[str, Any]]:
    """n HTTP/1.0 requests to the proxy, one after another (the load generator's own connections are closed by
    nginx, so they leave nothing in the load generator's namespace)."""
    from lab.kernel.agent import Agent

    steps: list[dict[str, Any]] = []
    for i in range(n):
        steps += [{"op": "socket", "sock": "s"},
                  {"op": "connect", "sock": "s", "addr": [pair.client.addr4, case.listen], "label": f"connect{i}"},
                  {"op": "send", "sock": "s", "data": f"GET /{case.key}/{i} HTTP/1.0\r\n\r\n"},
                  {"op": "recv_eof", "sock": "s", "label": f"resp{i}"},
                  {"op": "close", "sock": "s"}]
    agent = Agent.start(ctx, steps, netns=pair.server.name, name=f"load-{case.key}")
    recs = agent.finish(timeout_s=n * 0.5 + 10)
    out = []
    for i in range(n):
        r = next((x for x in recs if x["label"] == f"resp{i}"), None)
        if r is None or not r["ok"]:
            raise CouldNotRun(f"case {case.key}: request {i} to the proxy got no response "
                              f"({r['errno'] if r else 'the load generator stopped'})")
        status_line = r["result"]["text"].split("\r\n", 1)[0].split()
        out.append({"n": i + 1, "status": int(status_line[1]) if len(status_line) > 1 else None,
                    "wall_s": r["wall_s"]})
    return out


def _case_result(case: Case, responses: list[dict[str, Any]], t0: float, pair: cc.NetnsPair, proxy: Nginx
                 ) -> dict[str, Any]:
    codes: dict[str, int] = {}
    for r in responses:
        codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
    first_bad = next((r for r in responses if r["status"] != 200), None)
    errors = [ln for ln in proxy.error_lines(EADDRNOTAVAIL_LOG) if f":{case.upstream}/" in ln]
    elapsed = responses[-1]["wall_s"] - t0
    return {
        "what": case.what, "upstream_port": case.upstream, "requests": len(responses), "statuses": codes,
        "first_failure_at": first_bad["n"] if first_bad else None,
        "failed_after_s": round(first_bad["wall_s"] - t0, 3) if first_bad else None,
        "rate_per_s": round(len(responses) / elapsed, 1) if elapsed > 0 else None,
        "nginx_eaddrnotavail_lines": len(errors), "nginx_error_example": errors[0] if errors else None,
        "proxy_census": w2.census(pair.client.name, [case.upstream]),
        "upstream_census": w2.census(pair.server.name, [case.upstream]),
    }


def _note_capture(rec: Any, cases: dict[str, dict[str, Any]], size: int) -> None:
    a = cases["A"]
    up = a["upstream_port"]
    syns = [s for s in rec.segments if s.dport == up and s.flags & Flags.SYN and not s.flags & Flags.ACK]
    fins = [s for s in rec.segments if s.dport == up and s.flags & Flags.FIN]
    if fins:
        rec.note(fins[0].frame, "case A: nginx (the proxy) closes the upstream connection first, once the response "
                                "is complete: this port stays in TIME_WAIT on the proxy for 60 s")
    if syns and a["first_failure_at"]:
        rec.note(syns[-1].frame, f"case A: the last upstream SYN ({len({s.sport for s in syns})} of {size} ports); "
                                 f"request #{a['first_failure_at']}: nginx's connect() failed with 99 (EADDRNOTAVAIL) "
                                 "before sending anything: 502")
    b_syns = [s for s in rec.segments if s.dport == cases["B"]["upstream_port"] and s.flags & Flags.SYN
              and not s.flags & Flags.ACK]
    if b_syns:
        rec.note(b_syns[0].frame, f"case B: upstream keepalive: {len(b_syns)} upstream connection(s) for "
                                  f"{cases['B']['requests']} requests")


def run(ctx: RunContext) -> Outcome:
    size = w2.knob(ctx, KNOBS, "range_size")
    n = w2.knob(ctx, KNOBS, "requests")
    pair = cc.make_pair(ctx, client_sysctls={"net.ipv4.ip_local_port_range": f"{RANGE_START} "
                                                                              f"{RANGE_START + size - 1}"})
    proxy_addr, up_addr = str(pair.client.addr4), str(pair.server.addr4)
    cases: dict[str, dict[str, Any]] = {}
    with cc.recording(ctx, pair, ports=[c.upstream for c in CASES]) as rec:
        UpstreamApp.start(ctx, pair.server.name, up_addr, [CASES[0].upstream, CASES[1].upstream])
        Nginx.start(ctx, pair.server.name, "upstream", _upstream_conf(up_addr), [(up_addr, CASES[2].upstream)])
        proxy = Nginx.start(ctx, pair.client.name, "proxy", _proxy_conf(proxy_addr, up_addr),
                            [(proxy_addr, c.listen) for c in CASES])
        for i, case in enumerate(CASES):
            ctx.say(f"case {case.key}: {n} requests, {case.what}", i / len(CASES))
            t0 = time.time()
            responses = _load(ctx, pair, case, n)
            cases[case.key] = _case_result(case, responses, t0, pair, proxy)
        counters = sockdiag.nstat(pair.client.name)
        proxy.stop()
    _note_capture(rec, cases, size)
    capture = rec.save()
    a, b, c = cases["A"], cases["B"], cases["C"]
    a_ok = bool(a["first_failure_at"] == size + 1 and a["nginx_eaddrnotavail_lines"] >= 1
                and a["proxy_census"].get("TIME_WAIT", 0) == size)
    b_ok = b["statuses"] == {"200": n} and b["nginx_eaddrnotavail_lines"] == 0 \
        and b["proxy_census"].get("TIME_WAIT", 0) == 0
    forecast = round(size / TIME_WAIT_S, 3)
    story = [
        (f"case A: ip_local_port_range {RANGE_START}-{RANGE_START + size - 1} ({size} ports) in the proxy's namespace; "
         f"{n} requests one after another through nginx (default HTTP/1.0 upstream) to an application that leaves "
         "the close to nginx",
         f"statuses {a['statuses']}; first 502 at request #{a['first_failure_at']} after {a['failed_after_s']} s "
         f"({a['rate_per_s']} requests/s, forecast sustainable rate {forecast}/s = {size} ports / 60 s); nginx's "
         f"error log: {a['nginx_eaddrnotavail_lines']} x '(99: Cannot assign requested address)'; proxy census "
         f"{a['proxy_census']}"),
        ("case B: the same with proxy_http_version 1.1, Connection \"\", keepalive 16 (the documented fix)",
         f"statuses {b['statuses']}; {b['nginx_eaddrnotavail_lines']} connect errors; proxy census "
         f"{b['proxy_census']}"),
        ("case C: default HTTP/1.0 to an upstream nginx (which also closes right after its response)",
         f"statuses {c['statuses']}; proxy census {c['proxy_census']}, upstream census {c['upstream_census']}"),
    ]
    notes = [f"The forecast holds: {size} ports / 60 s = {forecast} new upstream connections per second; the load "
             f"ran at ~{a['rate_per_s']}/s, so the proxy broke after {size} requests, not after a time.",
             f"Which side gets the TIME_WAIT is decided by who closes first. Against an upstream nginx (case C) "
             "both close as soon as the response is complete and the closes race: "
             f"{c['proxy_census'].get('TIME_WAIT', 0)} TIME_WAIT on the proxy, "
             f"{c['upstream_census'].get('TIME_WAIT', 0)} on the upstream after {n} requests, and no 502 "
             f"({c['statuses']}): a port whose connection the upstream closed first is free again on the proxy at "
             "once (the upstream accepts a new SYN into its TIME_WAIT), but every race the proxy wins takes one of "
             "its ports for 60 s, so it runs out too, later. An upstream that leaves the close to its client (case "
             "A) makes the proxy close first every time: it breaks after exactly range requests."]
    obs: dict[str, Any] = {
        "lore_holds": bool(a_ok and b_ok), "range_size": size, "requests_per_case": n,
        "forecast_sustainable_rate_per_s": forecast, "broke_at_request": a["first_failure_at"],
        "broke_after_s": a["failed_after_s"], "load_rate_per_s": a["rate_per_s"],
        "nginx_eaddrnotavail_lines": a["nginx_eaddrnotavail_lines"],
        "proxy_time_wait": a["proxy_census"].get("TIME_WAIT", 0), "fix_502s": b["statuses"].get("502", 0),
        "cases": cases, "nginx": {"proxy_dir": str(proxy.dir)},
        "proxy_counters": {k: counters.get(k) for k in ("TcpActiveOpens", "TcpExtTCPTimeWaitOverflow")},
        "knobs": w2.knob_record(ctx, KNOBS),
    }
    return cc.outcome(bool(a_ok and b_ok), obs, story, notes, rec, pair, capture)


EXPERIMENT = Experiment(
    id="proxy-port-exhaustion",
    claim="A reverse proxy that closes each upstream connection first (nginx's default HTTP/1.0 upstream) fills its "
          "ephemeral range with TIME_WAIT and fails with EADDRNOTAVAIL; upstream keepalive (HTTP/1.1) avoids it.",
    lore="nginx 'connect() failed (99: Cannot assign requested address) while connecting to upstream': ephemeral "
         "ports exhausted by TIME_WAIT; use proxy_http_version 1.1 with keepalive.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=8.0,
    tags=("http", "nginx", "ports", "time-wait", "wave2"),
)
