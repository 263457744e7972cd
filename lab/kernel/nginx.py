"""A real nginx (the Debian package) inside a lab namespace, and curl as a real HTTP client.

    web = Nginx.start(ctx, ns.name, "proxy", http_conf, listen=[(ns.addr4, 8080)])
    web.error_lines("Cannot assign requested address")   # nginx's own error log, in the run folder
    web.stop()                                           # by pid; also on every exit path (ctx.stack)
    got = curl(ctx, client_ns, "http://192.0.2.2:8080/", http10=True)

Each nginx gets its own folder in the run folder (nginx.conf, nginx.pid, error.log, access.log, temp paths), runs
in the foreground (`-g 'daemon off;'`) as a child of the lab inside `ip netns exec`, with its master and worker
pids in the run's ledger, and is stopped by those pids (SIGTERM, then SIGKILL); if the lab process itself is
killed, the kernel sends nginx SIGTERM (PR_SET_PDEATHSIG). The system's nginx service, its
configuration (/etc/nginx) and its logs are never read or touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.kernel import sockdiag
from lab.run.context import CouldNotRun, scaled
from lab.run.resources import die_with_parent, pid_alive, proc_start_ticks

if TYPE_CHECKING:
    from lab.run.context import RunSpace

READY_S = 10.0          # until nginx listens (idle machine; scaled)
STOP_S = 5.0            # SIGTERM's grace before SIGKILL (scaled)
CURL_S = 10.0           # one curl request (scaled)
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
CONF = """\
# written by twlab for run {run_id}: a lab-only nginx inside namespace {netns}
worker_processes 1;
user nobody nogroup;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/access.log;
{temps}
{body}
}}
"""


def binary() -> str | None:
    """The nginx executable (Debian: /usr/sbin/nginx), or None."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def _die_with_lab() -> Callable[[], None]:
    """A preexec_fn: the program gets SIGTERM when the lab process dies, even by SIGKILL (it survives the exec of
    `ip netns exec` and of nginx), so no nginx outlives its run. SIGTERM is nginx's fast shutdown: the master
    stops its workers."""
    return die_with_parent(signal.SIGTERM)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@dataclass
class Nginx:
    ctx: RunSpace
    name: str
    netns: str
    dir: Path
    proc: subprocess.Popen[bytes]
    listen: list[tuple[str, int]]
    workers: list[int] = field(default_factory=list)
    owner_pid: int = field(default_factory=os.getpid)

    @classmethod
    def start(cls, ctx: RunSpace, netns: str, name: str, body: str, listen: Sequence[tuple[str, int]]) -> Nginx:
        """Write the config (`body` goes inside http {}), start nginx in `netns`, wait until it listens on every
        (addr, port) of `listen` (sock_diag in the namespace). CouldNotRun if nginx is missing or does not start."""
        exe = binary()
        if exe is None:
            raise CouldNotRun("nginx is not installed", "bash setup.sh installs the Debian package nginx")
        d = ctx.out_dir / f"nginx-{name}"
        (d / "tmp").mkdir(parents=True, exist_ok=True)   # nginx makes the temp paths below, not their parent
        temps = "\n".join(f"    {t}_temp_path {d}/tmp/{t};" for t in TEMP_PATHS)
        conf = d / "nginx.conf"
        conf.write_text(CONF.format(run_id=ctx.run_id, netns=netns, dir=d, temps=temps, body=body))
        argv = ["ip", "netns", "exec", netns, exe, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"),
                "-g", "daemon off;"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_lab())
        ctx.ledger.add("pid", str(proc.pid), role=f"nginx-{name}")
        web = cls(ctx, name, netns, d, proc, list(listen))
        ctx.stack.callback(web.stop)
        ctx.events.log("nginx", action="start", name=name, pid=proc.pid, netns=netns, conf=str(conf))
        web._wait_listening()
        return web

    def _wait_listening(self) -> None:
        ports = [p for _, p in self.listen]
        deadline = time.monotonic() + scaled(READY_S)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CouldNotRun(f"nginx {self.name} exited with {self.proc.returncode}: {self.error_tail()}",
                                  f"see {self.dir / 'error.log'}")
            up = {(s.src, s.sport) for s in sockdiag.sockets(netns=self.netns, ports=ports, states=["LISTEN"])}
            if all(x in up for x in self.listen) and _children(self.proc.pid):
                self.workers = _children(self.proc.pid)
                for w in self.workers:
                    self.ctx.ledger.add("pid", str(w), role=f"nginx-{self.name}-worker")
                self.ctx.events.log("nginx", action="listening", name=self.name, pid=self.proc.pid,
                                    workers=self.workers, listen=[f"{a}:{p}" for a, p in self.listen])
                return
            time.sleep(0.02)
        raise CouldNotRun(f"nginx {self.name} did not listen on {self.listen} within {scaled(READY_S):g} s: "
                          f"{self.error_tail()}")

    def error_tail(self, n: int = 300) -> str:
        try:
            text = (self.dir / "error.log").read_text(errors="replace")
        except OSError:
            return "no error log"
        return text[-n:].strip().replace("\n", " | ") or "error log empty"

    def error_lines(self, pattern: str | None = None) -> list[str]:
        """nginx's error log lines (those matching the regular expression `pattern`)."""
        return _lines(self.dir / "error.log", pattern)

    def access_lines(self) -> list[str]:
        return _lines(self.dir / "access.log", None)

    def stop(self) -> None:
        """SIGTERM to the master (fast shutdown: workers exit too), then SIGKILL by exact pid to whatever is left."""
        if os.getpid() != self.owner_pid:
            return
        pids = [(self.proc.pid, None), *[(w, proc_start_ticks(w)) for w in self.workers]]
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=scaled(STOP_S))
        for pid, start in pids:
            if pid == self.proc.pid:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(timeout=scaled(STOP_S))
            elif start is not None and pid_alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.ctx.ledger.discard("pid", str(pid))
        self.ctx.events.log("nginx", action="stop", name=self.name, pid=self.proc.pid,
                            returncode=self.proc.returncode)


def _lines(path: Path, pattern: str | None) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if pattern is None or re.search(pattern, ln)]


# ---------------------------------------------------------------------------------------------
# curl: a real HTTP client


def curl_binary() -> str | None:
    return shutil.which("curl")


def curl(ctx: RunSpace, netns: str, url: str, http10: bool = False, headers: Sequence[str] = ()
         ) -> dict[str, Any]:
    """One request with curl inside `netns` (no proxy from the environment): status, local port, body. The
    destination is checked like an agent's connect() (lab.kernel.agent.check_steps)."""
    from urllib.parse import urlsplit

    from lab.kernel.agent import check_steps

    exe = curl_binary()
    if exe is None:
        raise CouldNotRun("curl is not installed", "bash setup.sh installs the Debian package curl")
    parts = urlsplit(url)
    check_steps(ctx, [{"op": "connect", "addr": [parts.hostname, parts.port or 80]}], netns)
    argv = ["ip", "netns", "exec", netns, exe, "-sS", "--noproxy", "*", "-o", "-",
            "-w", "\n%{http_code} %{local_port}", "--max-time", f"{scaled(CURL_S):g}"]
    argv += ["--http1.0"] if http10 else ["--http1.1"]
    for h in headers:
        argv += ["-H", h]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_die_with_lab())
    ctx.ledger.add("pid", str(proc.pid), role="curl")
    try:
        out, err = proc.communicate(timeout=scaled(CURL_S) + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        ctx.ledger.discard("pid", str(proc.pid))
    text = out.decode(errors="replace")
    body, _, tail = text.rpartition("\n")
    code, _, port = tail.partition(" ")
    rec = {"url": url, "http10": http10, "exit": proc.returncode, "status": int(code) if code.isdigit() else None,
           "local_port": int(port) if port.isdigit() else None, "body": body,
           "error": err.decode(errors="replace").strip() or None}
    ctx.events.log("curl", netns=netns, **rec)
    return rec


# ---------------------------------------------------------------------------------------------
# an upstream application that leaves the close to its client

APP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


@dataclass
class UpstreamApp:
    """A minimal HTTP application server (this module run as a program inside a namespace): it answers every
    request on a connection with a complete response (Content-Length) and closes only after its client has
    closed, as keep-alive servers and app servers that finish work after responding do. Against it, a proxy that
    ends each upstream connection after one response is the side that closes first."""

    ctx: RunSpace
    netns: str
    proc: subprocess.Popen[bytes]
    listen: list[tuple[str, int]]

    @classmethod
    def start(cls, ctx: RunSpace, netns: str, addr: str, ports: Sequence[int]) -> UpstreamApp:
        import sys

        root = str(Path(__file__).resolve().parent.parent.parent)
        env = {**os.environ, "PYTHONPATH": root}
        argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "lab.kernel.nginx", "upstream", addr,
                *map(str, ports)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=_die_with_lab())
        ctx.ledger.add("pid", str(proc.pid), role="upstream-app")
        app = cls(ctx, netns, proc, [(addr, p) for p in ports])
        ctx.stack.callback(app.stop)
        ctx.events.log("upstream-app", action="start", pid=proc.pid, netns=netns, listen=[f"{addr}:{p}" for p in ports])
        deadline = time.monotonic() + scaled(READY_S)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-300:] if proc.stderr else ""
                raise CouldNotRun(f"the upstream application exited with {proc.returncode}: {err.strip()}")
            up = {(s.src, s.sport) for s in sockdiag.sockets(netns=netns, ports=list(ports), states=["LISTEN"])}
            if all(x in up for x in app.listen):
                return app
            time.sleep(0.02)
        raise CouldNotRun(f"the upstream application did not listen within {scaled(READY_S):g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=scaled(STOP_S))
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                self.proc.stderr.close()
        self.ctx.ledger.discard("pid", str(self.proc.pid))


def _serve_connection(conn: Any) -> None:
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return   # the client closed: only now does the application close
                buf += chunk
            _, _, buf = buf.partition(b"\r\n\r\n")
            conn.sendall(APP_RESPONSE)


def upstream_main(addr: str, ports: Sequence[int]) -> int:
    import socket
    import threading

    def accept_loop(ls: socket.socket) -> None:
        while True:
            conn, _ = ls.accept()
            threading.Thread(target=_serve_connection, args=(conn,), daemon=True).start()

    listeners = []
    for p in ports:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, p))
        ls.listen(1024)
        listeners.append(threading.Thread(target=accept_loop, args=(ls,), daemon=True))
    for t in listeners:
        t.start()
    for t in listeners:
        t.join()
    return 0


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 4 and sys.argv[1] == "upstream":
        sys.exit(upstream_main(sys.argv[2], [int(p) for p in sys.argv[3:]]))
    sys.exit(2)
