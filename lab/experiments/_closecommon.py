"""Shared parts of the close experiments: a client/server pair of lab namespaces, scripted endpoints (lab.kernel.agent)
that connect, exchange a little data and then run a close script, sock_diag samplers on both hosts, the
close segments found and labelled in the capture, and the kernel's TIME_WAIT set beside the analyzer's."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lab.core.model import Flags, Segment
from lab.kernel import sockdiag
from lab.kernel.hosts.netns import NetnsPair
from lab.run.context import CouldNotRun, Outcome, scaled

if TYPE_CHECKING:
    from lab.kernel.agent import Agent
    from lab.kernel.recording import Recording
    from lab.run.context import RunContext

PORT = 7000
MOD = 1 << 32
# Deadlines of blocking agent steps on an idle machine (Agent.start stretches them by the timeout scale). A step
# that waits for the peer starts waiting before the controller has finished its own set-up (starting the other
# program, opening more connections), so these are safety nets far above the idle times, never sleeps.
ACCEPT_S = 30.0      # a server's accept(): the client program still has to start
PASSIVE_S = 30.0     # a passive closer's recv_eof(): the experiment releases the active close later
SETTLE_S = 5.0       # until a closed connection's sockets reach their final states
FINAL_STATES = ("TIME_WAIT",)


def make_pair(ctx: RunContext, client_sysctls: Mapping[str, Any] | None = None,
              server_sysctls: Mapping[str, Any] | None = None) -> NetnsPair:
    pair = NetnsPair.create(ctx, client_sysctls=client_sysctls, server_sysctls=server_sysctls)
    ctx.say(f"lab hosts {pair.client.name} ({pair.client.addr4}) and {pair.server.name} ({pair.server.addr4}) "
            f"joined by veth {pair.client.iface}")
    return pair


def recording(ctx: RunContext, pair: NetnsPair, ports: Sequence[int] = (PORT,)) -> Recording:
    """Capture on the client's veth inside its namespace: every segment of both directions, once."""
    from lab.kernel.recording import Recording

    return Recording(ctx, ports=list(ports), iface=str(pair.client.iface), netns=pair.client.name)


def hosts_observation(pair: NetnsPair) -> dict[str, Any]:
    """Per-host settings for the result: only what the lab set (the rest are kernel defaults)."""
    def own(d: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in d.items() if "accept_dad" not in k}
    return {"client": {"netns": pair.client.name, "addr": pair.client.addr4, "sysctls": own(pair.client.settings)},
            "server": {"netns": pair.server.name, "addr": pair.server.addr4, "sysctls": own(pair.server.settings)}}


@dataclass
class Endpoints:
    """One connection: a server agent and a client agent, each stopped at its close script."""

    client: Agent
    server: Agent
    client_port: int
    port: int
    tag: str
    connected_wall_s: float


def open_connection(ctx: RunContext, pair: NetnsPair, tag: str, *, port: int = PORT,
                    client_tail: Sequence[dict[str, Any]] = (), server_tail: Sequence[dict[str, Any]] = (),
                    client_opts: Sequence[dict[str, Any]] = (), server_opts: Sequence[dict[str, Any]] = (),
                    exchange: bool = True, server_prompt: bool = False) -> Endpoints:
    """Server listens on server:port and accepts as socket "c"; the client (socket "s") connects; both exchange
    one line; then each runs its tail (steps that usually wait on gates the experiment releases)."""
    from lab.kernel.agent import Agent

    srv_steps: list[dict[str, Any]] = [
        {"op": "socket", "sock": "l"},
        {"op": "setsockopt", "sock": "l", "opt": "SO_REUSEADDR", "value": 1},
        {"op": "bind", "sock": "l", "addr": [pair.server.addr4, port]},
        {"op": "listen", "sock": "l", "label": "listen"},
        {"op": "accept", "sock": "l", "as": "c", "label": "accept", "timeout_s": ACCEPT_S},
        {"op": "close", "sock": "l", "label": "close-listener"},
        *[{**o, "sock": "c"} for o in server_opts],
    ]
    cli_steps: list[dict[str, Any]] = [
        {"op": "socket", "sock": "s"},
        *[{**o, "sock": "s"} for o in client_opts],
        {"op": "connect", "sock": "s", "addr": [pair.server.addr4, port], "label": "connect"},
    ]
    if exchange:
        srv_steps += [{"op": "recv", "sock": "c", "label": "recv-hello"},
                      {"op": "send", "sock": "c", "data": "world\n", "label": "send-world"}]
        cli_steps += [{"op": "send", "sock": "s", "data": "hello\n", "label": "send-hello"},
                      {"op": "recv", "sock": "s", "label": "recv-world"}]
    srv_steps += [{"sock": "c", **st} for st in server_tail]
    cli_steps += [{"sock": "s", **st} for st in client_tail]
    server = Agent.start(ctx, srv_steps, netns=pair.server.name, name=f"server-{tag}", prompt=server_prompt)
    _ok(server.wait("listen"), server)   # the event that gates the client: the server's listen() returned
    client = Agent.start(ctx, cli_steps, netns=pair.client.name, name=f"client-{tag}")
    conn = _ok(client.wait("connect"), client)
    if exchange:
        _ok(client.wait("recv-world"), client)
    return Endpoints(client, server, int(conn["result"]["local"][1]), port, tag, float(conn["wall_s"]))


def _ok(rec: dict[str, Any], agent: Agent) -> dict[str, Any]:
    """A set-up step that failed means the case could not be set up here (an environment verdict)."""
    if not rec.get("ok"):
        raise CouldNotRun(f"{agent.name}: set-up step {rec['label']} failed with "
                          f"{rec.get('errno') or rec.get('error')}")
    return rec


def passive_eof() -> dict[str, Any]:
    """The passive closer's wait for the peer's FIN (a safety-net deadline, see PASSIVE_S)."""
    return {"op": "recv_eof", "label": "eof", "timeout_s": PASSIVE_S}


def gate(name: str) -> dict[str, Any]:
    return {"op": "gate", "name": name, "label": f"gate-{name}"}


@contextlib.contextmanager
def watch(ctx: RunContext, pair: NetnsPair, ports: Sequence[int], interval_s: float = 0.02
          ) -> Iterator[tuple[sockdiag.Sampler, sockdiag.Sampler]]:
    """sock_diag samplers on the client and the server host."""
    with sockdiag.Sampler(ctx, netns=pair.client.name, ports=ports, interval_s=interval_s) as cs, \
            sockdiag.Sampler(ctx, netns=pair.server.name, ports=ports, interval_s=interval_s) as ss:
        yield cs, ss


def side_states(cs: sockdiag.Sampler, ss: sockdiag.Sampler, client_port: int) -> dict[str, list[str]]:
    """The states each side of one connection was seen in (sock_diag, in order), up to now: one dump of each
    host is taken first, so a final state reached since the samplers' last periodic dump is in the list."""
    cs.sample_now()
    ss.sample_now()
    return {"client": cs.states_of(local_port=client_port), "server": ss.states_of(remote_port=client_port)}


@dataclass(frozen=True)
class HeldDump:
    """One sock_diag dump of each host that the lab took itself while a script waited on a gate for it: each side's
    state of one connection (None: no socket) and the wall-clock span (epoch, like capture timestamps) from before
    the first dump began to after the second one returned, so the states held at some instant inside it."""

    states: dict[str, str | None]
    began_s: float
    done_s: float
    matched: bool          # the states were the ones waited for (False: the deadline passed first)
    sockets: dict[str, sockdiag.SockSample | None] = field(default_factory=dict)   # each side's socket (timers)

    def side(self, side: str) -> dict[str, Any]:
        """One side's reading with the span it came in (for observations)."""
        reading = sockdiag.Reading(self.states.get(side), self.began_s, self.done_s, self.sockets.get(side))
        return {**reading.to_dict(), "matched": self.matched}


def held_dump(samplers: tuple[sockdiag.Sampler, sockdiag.Sampler], client_port: int) -> HeldDump:
    """Dump both hosts now (recorded by the samplers like their own dumps) and read one connection's states."""
    cs, ss = samplers
    began = time.time()
    client = [s for s in cs.sample_now() if s.sport == client_port]
    server = [s for s in ss.sample_now() if s.dport == client_port]
    socks = {"client": client[0] if client else None, "server": server[0] if server else None}
    return HeldDump({k: v.state if v else None for k, v in socks.items()}, began, time.time(), False, socks)


def dump_until(samplers: tuple[sockdiag.Sampler, sockdiag.Sampler], client_port: int,
               done: Callable[[HeldDump], bool], timeout_s: float = SETTLE_S) -> tuple[HeldDump, bool]:
    """Dump both hosts (held_dump) every 5 ms until done(dump) or the scaled deadline: the last dump, and
    whether done() held for it."""
    last: list[HeldDump] = []

    def check() -> bool:
        last[:] = [held_dump(samplers, client_port)]
        return done(last[0])

    held = wait_until(check, timeout_s, 0.005)
    return last[0], held


def await_states(samplers: tuple[sockdiag.Sampler, sockdiag.Sampler], client_port: int, want: Mapping[str, str],
                 timeout_s: float = SETTLE_S) -> HeldDump:
    """Dump both hosts until the connection shows every side in the state `want` names: the event a script's gate
    waits on, so a state that lasts as long as the script is held is seen whatever the machine's load (a periodic
    sampler can miss a short window). The matching dump, or the last one (matched False) when the scaled deadline
    passed first."""
    dump, matched = dump_until(samplers, client_port,
                               lambda d: all(d.states.get(side) == state for side, state in want.items()), timeout_s)
    return dataclasses.replace(dump, matched=matched)


def states_between(cs: sockdiag.Sampler, ss: sockdiag.Sampler, client_port: int, t_a: float, t_b: float,
                   held: HeldDump | None = None) -> dict[str, str] | None:
    """Each side's state as sock_diag reported it in a dump taken between capture times t_a and t_b; None when
    either side has no dump whose whole span (first request sent .. last reply read) lies inside the window, or
    no socket then: a dump that began before t_a or ended after t_b may have reported outside it.

    held: the dump the lab took while the closing script waited for it (await_states); when given it is the
    evidence (None if it did not match or did not end before t_b on the capture's clock), because the periodic
    samplers' dumps are timed by the scheduler: on a loaded machine none may fall in the window. Its start may
    precede t_a: the states waited for are the ones that exist only after the segment at t_a (the caller's gate
    holds the segment at t_b until the dump is done)."""
    if held is not None:
        states = {k: v for k, v in held.states.items() if v is not None}
        inside = t_a < held.done_s < t_b
        return states if held.matched and inside and len(states) == len(held.states) else None
    out: dict[str, str] = {}
    for side, smp, ports in (("client", cs, {"local_port": client_port}), ("server", ss, {"remote_port": client_port})):
        reading = smp.reading_within(t_a, t_b, **ports)
        if reading is None or reading.state is None:
            return None
        out[side] = reading.state
    return out


def time_wait_now(pair: NetnsPair, port: int, client_port: int) -> dict[str, Any]:
    """Which side holds TIME_WAIT for this connection right now, and its remaining timer."""
    out: dict[str, Any] = {"client": None, "server": None}
    for side, ns in (("client", pair.client.name), ("server", pair.server.name)):
        for s in sockdiag.sockets(netns=ns, ports=[port]):
            if client_port in (s.sport, s.dport) and s.state == "TIME_WAIT":
                out[side] = {"expires_ms": s.expires_ms, "local": s.local, "remote": s.remote}
    return out


# ---------------------------------------------------------------------------------------------
# the capture


def conn_segments(rec: Recording, client_port: int, port: int = PORT) -> list[Segment]:
    return [s for s in rec.segments if {s.sport, s.dport} == {client_port, port}]


@dataclass
class CloseSegments:
    """The close of one connection as captured: each role's segment (None if absent)."""

    first_fin: Segment | None = None
    ack_of_first: Segment | None = None       # a pure ACK of the first FIN (None when it rode on the 2nd FIN)
    second_fin: Segment | None = None
    ack_of_second: Segment | None = None
    first_side: str | None = None
    crossed: bool = False                     # the second FIN did not acknowledge the first (simultaneous close)
    rsts: list[Segment] = field(default_factory=list)
    fin_retransmits: list[Segment] = field(default_factory=list)
    acks_after: list[Segment] = field(default_factory=list)   # ACKs of a retransmitted FIN

    @property
    def three_segment(self) -> bool:
        return bool(self.second_fin and self.ack_of_first is None and not self.crossed)

    def count(self) -> int:
        return sum(1 for s in (self.first_fin, self.ack_of_first, self.second_fin, self.ack_of_second) if s)


def find_close(segs: Sequence[Segment], port: int = PORT) -> CloseSegments:
    cs = CloseSegments()
    fin_end: dict[str, int] = {}
    fin_seq: dict[str, int] = {}
    for s in segs:
        side = "server" if s.sport == port else "client"
        if s.flags & Flags.RST:
            cs.rsts.append(s)
            continue
        if s.flags & Flags.FIN:
            if side in fin_seq:
                if s.seq == fin_seq[side]:
                    cs.fin_retransmits.append(s)
                continue
            fin_seq[side] = s.seq
            fin_end[side] = (s.seq + s.seg_len) % MOD
            if cs.first_fin is None:
                cs.first_fin, cs.first_side = s, side
            else:
                cs.second_fin = s
                first_end = fin_end[cs.first_side or "client"]
                cs.crossed = not (s.flags & Flags.ACK and s.ack == first_end)
                if cs.crossed and cs.ack_of_first is not None:
                    cs.crossed = False
            continue
        if not s.flags & Flags.ACK or s.payload_len:
            continue
        peer = "client" if side == "server" else "server"
        if peer in fin_end and s.ack == fin_end[peer]:
            if cs.fin_retransmits and cs.fin_retransmits[-1].sport != s.sport:
                cs.acks_after.append(s)
            elif peer == cs.first_side and cs.ack_of_first is None and cs.second_fin is None:
                cs.ack_of_first = s
            elif cs.second_fin is not None and peer != cs.first_side and cs.ack_of_second is None:
                cs.ack_of_second = s
            elif cs.crossed and peer == cs.first_side and cs.ack_of_first is None:
                cs.ack_of_first = s
    return cs


def seg_dict(s: Segment | None, t0: float | None = None) -> dict[str, Any] | None:
    if s is None:
        return None
    d: dict[str, Any] = {"frame": s.frame, "flags": Flags.text(s.flags), "from": f"{s.src_ip}:{s.sport}",
                         "seq": s.seq, "ack": s.ack, "ts_s": s.ts_s}
    if t0 is not None:
        d["t_ms"] = round((s.ts_s - t0) * 1000, 3)
    return d


def label_close(rec: Recording, cs: CloseSegments, prefix: str = "") -> dict[str, str]:
    """Mark this case's close in the capture and return what the narrator says about each close segment.

    The experiment adds only its own facts to the comments: which case this close is, and the absolute M and N
    (the FINs' sequence numbers). Roles and state changes (FIN M / ACK M+1 / FIN N / ACK N+1, both sides'
    states, TIME_WAIT) are the narrator's, rendered from the analyzer's records (lab.core.narrate); the returned
    labels ({"fin_m": ..., "ack_m1": ..., "fin_n": ..., "ack_n1": ...}) are those same sentences."""
    if cs.first_fin is None:
        return {}
    p = f"{prefix}: " if prefix else ""
    rec.note(cs.first_fin.frame, f"{p}M = {cs.first_fin.seq + cs.first_fin.payload_len} (this FIN's sequence number)")
    if cs.second_fin is not None:
        rec.note(cs.second_fin.frame, f"{p}N = {cs.second_fin.seq + cs.second_fin.payload_len} "
                                      "(this FIN's sequence number)")
    return narrated_close(rec, cs)


def narrated_close(rec: Recording, cs: CloseSegments) -> dict[str, str]:
    """The narrator's sentence for each of the close's segments that the capture holds (key -> text)."""
    if cs.first_fin is None:
        return {}
    from lab.core.narrate import connection_notes

    conn = rec.connection(cs.first_fin.sport, cs.first_fin.dport, cs.first_fin.frame)
    said = connection_notes(conn, rec.t0, rec.end_ts) if conn is not None else {}
    labels: dict[str, str] = {}
    for key, seg in (("fin_m", cs.first_fin), ("ack_m1", cs.ack_of_first), ("fin_n", cs.second_fin),
                     ("ack_n1", cs.ack_of_second)):
        if seg is not None and said.get(seg.frame):
            labels[key] = said[seg.frame][0]
    return labels


def compare_with_analyzer(rec: Recording, samplers: Sequence[sockdiag.Sampler]) -> dict[str, Any]:
    """The kernel's TIME_WAIT sockets (sock_diag) beside the analyzer's TIME_WAIT windows."""
    samples: list[sockdiag.SockSample] = []
    for s in samplers:
        samples += s.samples
    tws = sockdiag.time_wait_observations(samples)
    out: dict[str, Any] = {"kernel_time_wait": [t.to_dict() for t in tws]}
    if rec.report is None:
        out["analyzer"] = None
        out["why"] = rec.skipped_reason or rec.analysis_error or "no analysis"
        out["agree"] = None
        return out
    rows = sockdiag.compare_time_wait(tws, rec.connections())
    out["rows"] = rows
    out["agree"] = all(r.get("agree") for r in rows) if rows else None
    return out


def analyzer_close(rec: Recording, client_port: int, port: int = PORT) -> dict[str, Any] | None:
    """The analyzer's reading of the (first) connection between the ports; "states" is the narrator's sentence
    of both sides' states ("client: ESTABLISHED -> FIN_WAIT_1 -> ...; server: ...")."""
    from lab.core.narrate import SIDES, side_chain

    for c in rec.connections():
        ends = {str(c.get("client", "")).rsplit(":", 1)[-1], str(c.get("server", "")).rsplit(":", 1)[-1]}
        if ends == {str(client_port), str(port)}:
            conn = rec.connection(client_port, port, int(c["first_frame"]))
            return {"id": c.get("id"), "close": c.get("close"),
                    "time_wait_sides": [w.get("side") for w in c.get("time_wait", [])],
                    "states": "; ".join(side_chain(conn, side) for side in SIDES) if conn is not None else None}
    return None


def wait_until(pred: Any, timeout_s: float, step_s: float = 0.01) -> bool:
    """Poll `pred` until it holds or the scaled `timeout_s` passed; whether it held."""
    end = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step_s)
    return bool(pred())


def finish(*agents: Agent, timeout_s: float = 10.0) -> None:
    for a in agents:
        a.finish(timeout_s)


def wait_sampled(samplers: tuple[sockdiag.Sampler, sockdiag.Sampler], client_port: int, state: str,
                 timeout_s: float = SETTLE_S) -> None:
    """Wait until both hosts' samplers have recorded the connection in `state` (so a later state sequence starts
    there); CouldNotRun if they never do within the scaled deadline."""
    cs, ss = samplers

    def seen() -> bool:
        return state in cs.states_of(local_port=client_port) and state in ss.states_of(remote_port=client_port)

    if not wait_until(seen, timeout_s):
        raise CouldNotRun(f"the sock_diag samplers did not see the connection from port {client_port} in {state} "
                          f"within {scaled(timeout_s):g} s")


def fresh_dump(sampler: sockdiag.Sampler, timeout_s: float = SETTLE_S) -> None:
    """Wait until the sampler's own thread has taken a whole dump that began after this call."""
    start = sampler.dumps
    if not wait_until(lambda: sampler.dumps >= start + 2, timeout_s):
        raise CouldNotRun(f"the sock_diag sampler took no dump within {scaled(timeout_s):g} s")


def connection_states(pair: NetnsPair, port: int, client_port: int) -> dict[str, str | None]:
    """Each side's socket state for one connection right now (None: no socket)."""
    out: dict[str, str | None] = {"client": None, "server": None}
    for side, ns in (("client", pair.client.name), ("server", pair.server.name)):
        for s in sockdiag.sockets(netns=ns, ports=[port]):
            if client_port in (s.sport, s.dport) and s.sport != s.dport:
                out[side] = s.state
    return out


def settle(pair: NetnsPair, port: int, client_port: int, timeout_s: float = SETTLE_S) -> dict[str, str | None]:
    """Wait until both sides of a closed connection are in a final state (TIME_WAIT or gone): the event after which
    "who holds TIME_WAIT" can be judged. Raises CouldNotRun if they never get there within the scaled deadline."""
    states: dict[str, str | None] = {}

    def final() -> bool:
        states.update(connection_states(pair, port, client_port))
        return all(v is None or v in FINAL_STATES for v in states.values())

    if not wait_until(final, timeout_s, 0.005):
        raise CouldNotRun(f"the connection from port {client_port} did not finish closing within "
                          f"{scaled(timeout_s):g} s (states {states})")
    return states


def socket_queues(ns_name: str, port: int, client_port: int) -> tuple[int, int] | None:
    """(Recv-Q, Send-Q) of the one socket of a connection in a namespace (ss), or None if there is none."""
    res = subprocess.run(["ip", "netns", "exec", ns_name, "ss", "-Htna", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, timeout=scaled(10))
    for line in res.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 5 and any(c.endswith(f":{client_port}") for c in cols[3:5]):
            return int(cols[1]), int(cols[2])
    return None


def wait_queues(ns_name: str, port: int, client_port: int, pred: Any, what: str, timeout_s: float = SETTLE_S
                ) -> tuple[int, int]:
    """Wait until the socket's (Recv-Q, Send-Q) satisfies `pred` (e.g. data arrived unread; all sent data acked)."""
    got: list[tuple[int, int] | None] = [None]

    def ready() -> bool:
        got[0] = socket_queues(ns_name, port, client_port)
        return got[0] is not None and bool(pred(*got[0]))

    if not wait_until(ready, timeout_s, 0.005):
        raise CouldNotRun(f"{what} did not happen within {scaled(timeout_s):g} s (queues {got[0]})")
    assert got[0] is not None
    return got[0]


def outcome(reproduced: bool, obs: dict[str, Any], story: list[tuple[str, str]], notes: list[str],
            rec: Recording, pair: NetnsPair, capture: Any, comparison: dict[str, Any] | None = None) -> Outcome:
    """The common tail of a close experiment: the hosts' settings, the capture summary and (when made) the
    kernel-vs-analyzer comparison go into the observations; a skipped capture into `skipped`."""
    obs = {**obs, "hosts": hosts_observation(pair), "capture": rec.summary()}
    if comparison is not None:
        obs["kernel_vs_analyzer"] = comparison
    return Outcome(reproduced, obs, story, notes, [rec.skipped_reason] if rec.skipped_reason else [], capture,
                   rec.analysis())
