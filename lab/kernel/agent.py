"""A scripted socket program run as its own process (optionally inside a lab namespace).

Real servers are restarted as processes, and TIME_WAIT outlives them; so the lab's kernel-socket
endpoints run as separate programs that execute a list of socket calls and report each call, its
result and its errno as one JSON line. The controller side (`Agent`) starts the program, follows its
records, and releases its gates.

Steps (dicts); every step may carry "label" (default "<index>:<op>") and "on_error": "stop"
(default) or "continue":
  {"op": "socket", "sock": "s", "family": "inet"|"inet6", "type": "stream"|"dgram"}
  {"op": "setsockopt", "sock": "s", "opt": "SO_REUSEADDR", "value": 1}   # level from the name;
        SO_LINGER takes [onoff, seconds]; TCP_* options use IPPROTO_TCP; IPV6_* IPPROTO_IPV6
  {"op": "bind", "sock": "s", "addr": ["127.0.0.1", 5000]}
  {"op": "listen", "sock": "s", "backlog": 16}
  {"op": "accept", "sock": "s", "as": "c", "timeout_s": 5}
  {"op": "connect", "sock": "s", "addr": ["127.0.0.1", 5000], "timeout_s": 5}
  {"op": "send", "sock": "c", "data": "text"}  or  {"hex": "00ff"}
  {"op": "recv", "sock": "c", "n": 65536, "timeout_s": 5}       # result: len, text, hex ("" = EOF)
  {"op": "recv_eof", "sock": "c", "timeout_s": 5}               # read until EOF; result as recv
  {"op": "shutdown", "sock": "c", "how": "WR"|"RD"|"RDWR"}
  {"op": "close", "sock": "c"}
  {"op": "getsockname", "sock": "c"}  /  {"op": "getpeername", "sock": "c"}
  {"op": "sleep", "s": 0.2}
  {"op": "gate", "name": "go"}          # wait until the controller calls release("go")
  {"op": "exit", "code": 0}
Every timeout_s is a deadline on an idle machine: Agent.start stretches it by the run's timeout scale
(lab.run.context.scaled), and the blocking steps that give none get STEP_TIMEOUT_S, scaled.
Each record: {"i", "label", "op", "ok", "errno" (name or null), "errno_num", "error", "result", "wall_s"}.
The last record is {"op": "done", ...}.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.run.context import CouldNotRun, scaled

if TYPE_CHECKING:
    from lab.run.context import RunSpace

HOW = {"WR": socket.SHUT_WR, "RD": socket.SHUT_RD, "RDWR": socket.SHUT_RDWR}
FAMILY = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
TYPE = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}


class AgentError(CouldNotRun):
    """The agent program did not do what the lab asked within its scaled deadline (timeout, crash): the case could
    not be set up here — an environment verdict, not a TCP finding."""


WAITING_OPS = ("accept", "connect", "recv", "recv_eof")   # steps that block until the peer acts
STEP_TIMEOUT_S = 5.0            # such a step's deadline on an idle machine when the script gives none
WAIT_S = 10.0                   # the controller's default wait for a step's record (idle machine)
PROMPT_PRIORITY = 1             # SCHED_FIFO priority of a prompt agent: above every normal task, below the kernel's


def _preexec(uid: int | None, prompt: bool) -> Callable[[], None] | None:
    """What the child does before exec: real-time scheduling (best effort), then the uid; None if nothing."""
    if uid is None and not prompt:
        return None

    def preexec() -> None:
        if prompt:
            with contextlib.suppress(OSError, AttributeError):   # no CAP_SYS_NICE: normal priority
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PROMPT_PRIORITY))
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)

    return preexec


def _policy_of(pid: int) -> str | None:
    """'fifo' / 'other' / ... for the event log (whether a prompt agent really got real-time scheduling)."""
    try:
        policy = os.sched_getscheduler(pid)
    except (OSError, AttributeError):
        return None
    return {os.SCHED_FIFO: "fifo", os.SCHED_OTHER: "other"}.get(policy, str(policy))


def scaled_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps with every blocking step's deadline stretched by the timeout scale (one setting for all waits);
    a blocking step without a deadline gets the default one. Sleeps are not deadlines and stay as they are."""
    out = []
    for st in steps:
        if st.get("op") in WAITING_OPS:
            st = {**st, "timeout_s": round(scaled(float(st.get("timeout_s", STEP_TIMEOUT_S))), 3)}
        out.append(st)
    return out


# ---------------------------------------------------------------------------------------------
# program side


def _level_and_opt(name: str) -> tuple[int, int]:
    if name.startswith("TCP_"):
        level = socket.IPPROTO_TCP
    elif name.startswith("IPV6_"):
        level = socket.IPPROTO_IPV6
    elif name.startswith("IP_"):
        level = socket.IPPROTO_IP
    else:
        level = socket.SOL_SOCKET
    opt = getattr(socket, name, None)
    if opt is None:
        opt = {"SO_REUSEPORT": 15, "TCP_QUICKACK": 12, "IP_FREEBIND": 15}.get(name)
    if opt is None:
        raise ValueError(f"unknown socket option {name}")
    return level, opt


def _data_result(data: bytes) -> dict[str, Any]:
    return {"len": len(data), "text": data.decode("utf-8", "backslashreplace"), "hex": data.hex()}


def _connect_allowed(addr: str) -> None:
    """Program side: connect only where the controller checked (TWLAB_AGENT_ALLOW), or to loopback."""
    allowed = json.loads(os.environ.get("TWLAB_AGENT_ALLOW") or "[]")
    if addr not in allowed and not _is_loopback(addr):
        raise ValueError(f"refusing to connect to {addr}: not a target the lab controller checked")


class _Program:
    def __init__(self, gates_in: Any) -> None:
        self.socks: dict[str, socket.socket] = {}
        self.gates_in = gates_in
        self.released: set[str] = set()

    def _wait_gate(self, name: str) -> None:
        while name not in self.released:
            line = self.gates_in.readline()
            if not line:
                raise EOFError("controller went away")
            self.released.add(line.strip())

    def step(self, st: dict[str, Any]) -> Any:
        op = st["op"]
        s = self.socks.get(st.get("sock", ""))
        if op == "socket":
            self.socks[st["sock"]] = socket.socket(FAMILY[st.get("family", "inet")], TYPE[st.get("type", "stream")])
            return None
        if op == "setsockopt":
            level, opt = _level_and_opt(st["opt"])
            value = st["value"]
            assert s is not None
            if st["opt"] == "SO_LINGER":
                s.setsockopt(level, opt, struct.pack("ii", int(value[0]), int(value[1])))
            else:
                s.setsockopt(level, opt, value)
            return None
        if op == "sleep":
            time.sleep(float(st["s"]))
            return None
        if op == "gate":
            self._wait_gate(st["name"])
            return None
        if op == "exit":
            raise SystemExit(int(st.get("code", 0)))
        if s is None:
            raise KeyError(f"no socket named {st.get('sock')!r}")
        if op == "bind":
            s.bind(tuple(st["addr"]))
            return list(s.getsockname()[:2])
        if op == "listen":
            s.listen(int(st.get("backlog", 16)))
            return None
        if op == "accept":
            s.settimeout(float(st.get("timeout_s", STEP_TIMEOUT_S)))
            conn, peer = s.accept()
            conn.settimeout(None)
            self.socks[st.get("as", "c")] = conn
            return {"peer": list(peer[:2]), "local": list(conn.getsockname()[:2])}
        if op == "connect":
            _connect_allowed(str(st["addr"][0]))
            s.settimeout(float(st.get("timeout_s", STEP_TIMEOUT_S)))
            s.connect(tuple(st["addr"]))
            s.settimeout(None)
            return {"local": list(s.getsockname()[:2]), "peer": list(s.getpeername()[:2])}
        if op == "send":
            data = bytes.fromhex(st["hex"]) if "hex" in st else str(st.get("data", "")).encode()
            s.sendall(data)
            return {"len": len(data)}
        if op == "recv":
            s.settimeout(float(st.get("timeout_s", STEP_TIMEOUT_S)))
            return _data_result(s.recv(int(st.get("n", 65536))))
        if op == "recv_eof":
            s.settimeout(float(st.get("timeout_s", STEP_TIMEOUT_S)))
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return _data_result(b"".join(chunks))
        if op == "shutdown":
            s.shutdown(HOW[st.get("how", "WR")])
            return None
        if op == "close":
            s.close()
            del self.socks[st["sock"]]
            return None
        if op == "getsockname":
            return list(s.getsockname()[:2])
        if op == "getpeername":
            return list(s.getpeername()[:2])
        raise ValueError(f"unknown op {op!r}")


def program_main() -> int:
    """Entry of `python -m lab.kernel.agent`: first stdin line is the JSON step list, later lines release gates."""
    steps = json.loads(sys.stdin.readline())
    prog = _Program(sys.stdin)
    ok_all = True

    def emit(rec: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()

    for i, st in enumerate(steps):
        rec: dict[str, Any] = {"i": i, "label": st.get("label", f"{i}:{st['op']}"), "op": st["op"],
                               "sock": st.get("sock"), "ok": True, "errno": None, "errno_num": None,
                               "error": None, "result": None}
        try:
            rec["result"] = prog.step(st)
        except SystemExit:
            rec["wall_s"] = time.time()
            emit(rec)
            break
        except (OSError, ValueError, KeyError, EOFError, AssertionError) as exc:
            rec["ok"] = False
            rec["error"] = str(exc) or type(exc).__name__
            if isinstance(exc, socket.timeout):
                rec["errno"], rec["errno_num"] = "ETIMEDOUT", errno_mod.ETIMEDOUT
            elif isinstance(exc, OSError) and exc.errno:
                rec["errno"], rec["errno_num"] = errno_mod.errorcode.get(exc.errno, str(exc.errno)), exc.errno
        rec["wall_s"] = time.time()
        emit(rec)
        if not rec["ok"] and st.get("on_error", "stop") != "continue":
            ok_all = False
            break
    emit({"i": len(steps), "label": "done", "op": "done", "ok": ok_all, "wall_s": time.time()})
    return 0


# ---------------------------------------------------------------------------------------------
# controller side


ALLOW_ENV = "TWLAB_AGENT_ALLOW"  # the destinations the controller checked; the program connects to no other


def check_steps(ctx: RunSpace, steps: list[dict[str, Any]], netns: str | None) -> list[str]:
    """Every address a step connects to, checked like an injection target (lab.kernel.inject.check_target):
    loopback, or from this run's own namespace (verified by kernel identity) an address of the lab reachable
    only inside it. Returns the allowed addresses; UnsafeTarget otherwise."""
    from lab.kernel import nsid
    from lab.kernel.inject import check_target, namespace_addresses, namespace_routes_out

    where = nsid.verified_name(netns, ctx.run_id) if netns is not None else None
    targets = sorted({str(st["addr"][0]) for st in steps if st.get("op") == "connect" and st.get("addr")})
    addrs: set[str] = set()
    routes_out = True
    if where is not None and any(not _is_loopback(t) for t in targets):
        addrs, routes_out = namespace_addresses(where), namespace_routes_out(where)
    for t in targets:
        check_target(t, run_id=ctx.run_id, netns=where, netns_addrs=addrs, routes_out=routes_out)
    return targets


def _is_loopback(addr: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Agent:
    """Controller for one agent program."""

    def __init__(self, ctx: RunSpace, name: str, proc: subprocess.Popen[str], steps: list[dict[str, Any]]) -> None:
        self.ctx = ctx
        self.name = name
        self.proc = proc
        self.steps = steps
        self.records: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._done = False
        self._reader = threading.Thread(target=self._read, name=f"agent-{name}", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, ctx: RunSpace, steps: list[dict[str, Any]], netns: str | None = None, name: str = "agent",
              uid: int | None = None, prompt: bool = False) -> Agent:
        """Start the program. prompt: run it under SCHED_FIFO (best effort) where the experiment's claim needs it
        to act within milliseconds of an event (e.g. close() before a 40 ms delayed ACK) even on a busy machine."""
        allowed = check_steps(ctx, steps, netns)
        argv = [sys.executable, "-m", "lab.kernel.agent"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        env = dict(os.environ)
        env[ALLOW_ENV] = json.dumps(allowed)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        preexec = _preexec(uid, prompt)
        steps = scaled_steps(steps)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, preexec_fn=preexec)
        ctx.ledger.add("pid", str(proc.pid), role=name)
        agent = cls(ctx, name, proc, steps)
        ctx.stack.callback(agent.kill)
        ctx.events.log("agent-start", agent=name, pid=proc.pid, netns=netns, steps=len(steps),
                       policy=_policy_of(proc.pid))
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(steps) + "\n")
        proc.stdin.flush()
        return agent

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                self.ctx.events.log("call", agent=self.name, **{k: v for k, v in rec.items() if k != "wall_s"},
                                    call_wall_s=rec.get("wall_s"))
                with self._cond:
                    self.records.append(rec)
                    self._cond.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us by kill()
            pass
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def _find(self, label: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r["label"] == label), None)

    def wait(self, label: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        """The record of the step with that label; AgentError if it never comes within the scaled `timeout_s`."""
        timeout_s = scaled(timeout_s)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (rec := self._find(label)) is None:
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    break
                self._cond.wait(left)
        if rec is None:
            raise AgentError(f"agent {self.name}: step {label!r} did not happen within {timeout_s:g} s "
                             f"({self._why()})")
        return rec

    def _why(self) -> str:
        last = self.records[-1] if self.records else None
        if last and not last.get("ok", True):
            return f"it stopped at {last['label']} with {last.get('errno') or last.get('error')}"
        err = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                err = self.proc.stderr.read()[-300:].strip().replace("\n", " | ")
        return err or "see events.jsonl in the run folder"

    def release(self, gate: str) -> None:
        self.ctx.events.log("gate", agent=self.name, gate=gate)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(gate + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def finish(self, timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
        """Wait (scaled `timeout_s`) for the program to end; its records (the last one is 'done')."""
        self.wait("done", timeout_s)
        try:
            self.proc.wait(timeout=scaled(timeout_s))
        except subprocess.TimeoutExpired:
            self.kill()
        self._reader.join(timeout=1)
        return list(self.records)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=scaled(5))
        self._reader.join(timeout=2)  # let it see EOF before the pipes close
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    f.close()
        self.ctx.ledger.discard("pid", str(self.proc.pid))

    @property
    def ok(self) -> bool:
        return all(r.get("ok", False) for r in self.records)


if __name__ == "__main__":
    sys.exit(program_main())
