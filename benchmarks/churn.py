"""Loopback connection churn with real kernel sockets, for capture/analyzer benchmarks (stdlib only).

Run inside a lab network namespace (its lo, its own narrowed ip_local_port_range), e.g.
    ip netns exec twl<id>bench python benchmarks/churn.py --port 5000 --conns 150000

One listening socket served by --servers forked workers; --clients forked clients, each opening connections
one after another. A client's n-th connection follows MODES[n % len(MODES)]:
    C  client closes first (client-side TIME_WAIT)      S  server closes first (server-side TIME_WAIT)
    R  client aborts with SO_LINGER {1,0} (RST)         r  server aborts with SO_LINGER {1,0} (RST)
A narrow port range makes four-tuples come back while the previous incarnation is still in TIME_WAIT
(tcp_tw_reuse's loopback default on the client side, the SYN-in-TIME_WAIT path on the server side).
Prints one JSON line: connections, per-mode counts, EADDRNOTAVAIL retries, errors, seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import struct
import sys
import time

MODES = "CSCSCSCSRr"
LINGER0 = struct.pack("ii", 1, 0)
REQUEST = b"GET /%s %d\n"
RESPONSE = b"x" * 64
STOP = [False]  # set by SIGTERM: clients finish their current connection, report, and exit


def _stop(_sig: int, _frame: object) -> None:
    STOP[0] = True


def serve(srv: socket.socket) -> None:
    while True:
        try:
            c, _ = srv.accept()
        except OSError:
            continue
        try:
            req = c.recv(256)
            mode = req[5:6] if req.startswith(b"GET /") else b"C"
            c.sendall(RESPONSE)
            if mode == b"S":
                c.close()
            elif mode == b"r":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                c.close()
            else:  # wait for the client's FIN (C) or RST (R), then close
                with contextlib.suppress(OSError):
                    while c.recv(4096):
                        pass
                c.close()
        except OSError:
            c.close()


def client(port: int, first: int, step: int, count: int, deadline: float) -> dict[str, int]:
    done = {m: 0 for m in MODES}
    retries = errors = 0
    k = first
    n = 0
    while n < count and not STOP[0] and time.monotonic() < deadline:
        mode = MODES[n % len(MODES)]  # every client runs the whole mix
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except OSError as exc:
            s.close()
            if exc.errno == errno.EADDRNOTAVAIL:  # every port of the narrow range is busy: wait for one
                retries += 1
                time.sleep(0.002)
                continue
            errors += 1
            k += step
            n += 1
            continue
        try:
            s.sendall(REQUEST % (mode.encode(), k))
            got = 0
            while got < len(RESPONSE):
                b = s.recv(4096)
                if not b:
                    break
                got += len(b)
            if mode == "S" or mode == "r":  # the server closes (or aborts) first: read to EOF
                with contextlib.suppress(OSError):
                    while s.recv(4096):
                        pass
            elif mode == "R":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            s.close()
            done[mode] += 1
        except OSError:
            s.close()
            errors += 1
        k += step
        n += 1
    return {"connections": sum(done.values()), "retries": retries, "errors": errors,
            **{f"mode_{m}": v for m, v in done.items() if m in "CSR"}, "mode_r_abort": done["r"]}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="churn")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=100_000, help="connections in all")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=150.0, help="stop after this long in any case")
    args = ap.parse_args(argv)

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(4096)
    workers = []
    for _ in range(args.servers):
        pid = os.fork()
        if pid == 0:
            serve(srv)
            os._exit(0)
        workers.append(pid)
    srv.close()

    start = time.monotonic()
    deadline = start + args.seconds
    r, w = os.pipe()
    kids = []
    per = -(-args.conns // args.clients)
    for i in range(args.clients):
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.signal(signal.SIGTERM, _stop)
            res = client(args.port, i, args.clients, per, deadline)
            os.write(w, (json.dumps(res) + "\n").encode())
            os._exit(0)
        kids.append(pid)
    os.close(w)

    def forward(_sig: int, _frame: object) -> None:
        for k in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    chunks = []
    while True:
        b = os.read(r, 65536)  # PEP 475: retried after the SIGTERM handler runs
        if not b:
            break
        chunks.append(b)
    for pid in kids:
        os.waitpid(pid, 0)
    elapsed = time.monotonic() - start
    for pid in workers:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    total: dict[str, float] = {}
    for line in b"".join(chunks).decode().splitlines():
        for key, val in json.loads(line).items():
            total[key] = total.get(key, 0) + val
    total["seconds"] = round(elapsed, 3)
    print(json.dumps(total), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
