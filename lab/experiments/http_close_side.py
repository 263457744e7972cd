"""http-close-side: with HTTP, whoever closes the connection first holds its TIME_WAIT. A real nginx serves a small
page in the server's namespace; curl fetches it from the client's namespace:
  A. HTTP/1.0 (no keep-alive): nginx closes after the response (server-side close): TIME_WAIT on the server, on
     its listening port's four-tuple (server:8080 <-> client:port).
  B. HTTP/1.1 (keep-alive, nginx keeps the connection open for keepalive_timeout): curl closes when it exits
     (client-side close): TIME_WAIT on the client, nothing left on the server.
The page goes through nginx's SSI filter, which drops Content-Length: in HTTP/1.0 the server's close is then the
end of the response (curl reads to EOF), so nginx's FIN comes first however busy the machine is; with a length
curl could close as soon as it has the bytes and race nginx's close. In HTTP/1.1 the body is chunked.
"""

from __future__ import annotations

from typing import Any

from lab.experiments import _closecommon as cc
from lab.experiments import _wave2 as w2
from lab.kernel.nginx import Nginx, curl
from lab.run.context import CouldNotRun, Experiment, Outcome, RunContext

PORT = 8080
BODY = "hello from nginx\\n"
KNOBS = {
    "keepalive_timeout": w2.Knob(75, "s", "nginx keepalive_timeout (how long nginx keeps an idle HTTP/1.1 "
                                 "connection open; must be longer than the run)", 10, 600),
}


def _server_conf(addr: str, keepalive_s: int) -> str:
    return (f"    keepalive_timeout {keepalive_s}s;\n"
            f"    server {{\n        listen {addr}:{PORT};\n"
            f"        location / {{ default_type text/plain; ssi on; ssi_types text/plain; "
            f"return 200 \"{BODY}\"; }}\n    }}")


def _request_lines(access: list[str]) -> list[str]:
    """The request line of each access-log entry (combined format: the first quoted field)."""
    return [ln.split('"')[1] for ln in access if ln.count('"') >= 2]


def _case(ctx: RunContext, pair: cc.NetnsPair, key: str, http10: bool) -> dict[str, Any]:
    got = curl(ctx, pair.client.name, f"http://{pair.server.addr4}:{PORT}/case-{key}", http10=http10)
    if got["status"] != 200 or got["local_port"] is None:
        raise CouldNotRun(f"case {key}: curl got status {got['status']} (exit {got['exit']}: {got['error']})")
    port = got["local_port"]
    states = cc.settle(pair, PORT, port)   # both sides final (TIME_WAIT or gone); B: the server keeps it open
    return {"http": "1.0" if http10 else "1.1", "status": got["status"], "client_port": port,
            "states_after": states, "time_wait": cc.time_wait_now(pair, PORT, port)}


def _settle_b(pair: cc.NetnsPair, port: int) -> dict[str, str | None]:
    """Case B's end: the client's socket is in TIME_WAIT and the server's gone (nginx closed after the FIN)."""
    states: dict[str, str | None] = {}

    def done() -> bool:
        states.update(cc.connection_states(pair, PORT, port))
        return states.get("client") == "TIME_WAIT" and states.get("server") is None

    cc.wait_until(done, cc.SETTLE_S, 0.01)
    return states


def run(ctx: RunContext) -> Outcome:
    keepalive = w2.knob(ctx, KNOBS, "keepalive_timeout")
    pair = cc.make_pair(ctx)
    addr = str(pair.server.addr4)
    with cc.recording(ctx, pair, ports=[PORT]) as rec, cc.watch(ctx, pair, [PORT], interval_s=0.02) as (cs, ss):
        web = Nginx.start(ctx, pair.server.name, "web", _server_conf(addr, keepalive),
                          listen=[(addr, PORT)])
        ctx.say("case A: curl --http1.0 (nginx closes after the response)", 0.2)
        a = _case(ctx, pair, "A", http10=True)
        ctx.say("case B: curl --http1.1 (keep-alive: curl closes when it exits)", 0.6)
        b = _case(ctx, pair, "B", http10=False)
        b["states_after"] = _settle_b(pair, b["client_port"])
        b["time_wait"] = cc.time_wait_now(pair, PORT, b["client_port"])
        census = {"client": w2.census(pair.client.name, [PORT]), "server": w2.census(pair.server.name, [PORT])}
        access = web.access_lines()
        web.stop()
    for key, c in (("A", a), ("B", b)):
        close = cc.find_close(cc.conn_segments(rec, c["client_port"], PORT), PORT)
        c["first_fin_from"] = close.first_side
        c["close_segments"] = close.count()
        who = "nginx (server)" if close.first_side == "server" else "curl (client)"
        if close.first_fin is not None:
            rec.note(close.first_fin.frame, f"case {key}: HTTP/{c['http']}: {who} closes first")
        c["narrator"] = cc.label_close(rec, close, prefix=f"case {key}")
        c["states_seen"] = cc.side_states(cs, ss, c["client_port"])
        c["analyzer"] = cc.analyzer_close(rec, c["client_port"], PORT)
    comparison = cc.compare_with_analyzer(rec, [cs, ss])
    capture = rec.save()
    a_ok = a["first_fin_from"] == "server" and a["time_wait"]["server"] is not None and a["time_wait"]["client"] is None
    b_ok = b["first_fin_from"] == "client" and b["time_wait"]["client"] is not None and b["time_wait"]["server"] is None
    story = [
        ("case A: curl --http1.0 fetches a page from nginx (no keep-alive)",
         f"status {a['status']}; first FIN from the {a['first_fin_from']}; sock_diag: TIME_WAIT on the "
         f"{'server' if a['time_wait']['server'] else 'client' if a['time_wait']['client'] else 'nobody'} "
         f"({PORT} <-> {a['client_port']})"),
        (f"case B: curl --http1.1 (nginx keepalive_timeout {keepalive} s); curl exits",
         f"status {b['status']}; first FIN from the {b['first_fin_from']}; sock_diag: TIME_WAIT on the "
         f"{'client' if b['time_wait']['client'] else 'server' if b['time_wait']['server'] else 'nobody'}"),
    ]
    notes = ["A busy HTTP/1.0 (or `Connection: close`) server collects TIME_WAIT on its own port, one per request; "
             "they never block its listener (the four-tuples differ), but they cost memory, and clients behind one "
             "NAT address reusing a port meet them (see syn-in-time-wait). Keep-alive moves the close to the client.",
             f"nginx's access log: {len(access)} requests ({'; '.join(_request_lines(access))})."]
    obs: dict[str, Any] = {
        "lore_holds": bool(a_ok and b_ok), "server_close_time_wait_on": "server" if a["time_wait"]["server"] else None,
        "client_close_time_wait_on": "client" if b["time_wait"]["client"] else None, "census_end": census,
        "cases": {"A": a, "B": b}, "nginx": {"dir": str(web.dir), "access_log_lines": len(access)},
        "knobs": w2.knob_record(ctx, KNOBS),
    }
    return cc.outcome(bool(a_ok and b_ok), obs, story, notes, rec, pair, capture, comparison)


EXPERIMENT = Experiment(
    id="http-close-side",
    claim="With HTTP, whoever closes first holds TIME_WAIT: nginx closing after an HTTP/1.0 response holds it on "
          "the server's port; with keep-alive the client closes and holds it.",
    lore="HTTP/1.0 servers collect TIME_WAIT (the server closes); keep-alive lets the client close first.",
    run=run,
    topology="netns",
    needs_root=True,
    duration_hint_s=3.0,
    tags=("http", "nginx", "time-wait", "wave2"),
)
