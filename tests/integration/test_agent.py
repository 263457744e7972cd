"""The agent program makes real kernel socket calls and reports errnos faithfully."""

from __future__ import annotations

import socket

import pytest

from lab.kernel.agent import Agent, AgentError
from lab.run.context import RunContext


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_and_client_exchange_and_close(ctx: RunContext) -> None:
    port = _free_port()
    server = Agent.start(ctx, [
        {"op": "socket", "sock": "l"},
        {"op": "bind", "sock": "l", "addr": ["127.0.0.1", port], "label": "bind"},
        {"op": "listen", "sock": "l"},
        {"op": "accept", "sock": "l", "as": "c", "label": "accept"},
        {"op": "recv", "sock": "c", "label": "recv"},
        {"op": "gate", "name": "close"},
        {"op": "close", "sock": "c"},
    ], name="server")
    server.wait("bind")
    client = Agent.start(ctx, [
        {"op": "socket", "sock": "s"},
        {"op": "connect", "sock": "s", "addr": ["127.0.0.1", port], "label": "connect"},
        {"op": "send", "sock": "s", "data": "hello"},
        {"op": "recv_eof", "sock": "s", "label": "eof"},
        {"op": "close", "sock": "s"},
    ], name="client")
    assert server.wait("recv")["result"]["text"] == "hello"
    server.release("close")
    assert client.wait("eof")["result"]["len"] == 0
    recs = server.finish()
    assert recs[-1]["op"] == "done" and recs[-1]["ok"]
    assert client.finish()[-1]["ok"]
    calls = [r for r in ctx.events.records if r["kind"] == "call"]
    assert any(r["label"] == "connect" for r in calls)


def test_errno_is_reported_by_name(ctx: RunContext) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        a = Agent.start(ctx, [
            {"op": "socket", "sock": "s"},
            {"op": "bind", "sock": "s", "addr": ["127.0.0.1", port], "label": "bind"},
        ], name="second")
        rec = a.wait("bind")
        assert rec["ok"] is False and rec["errno"] == "EADDRINUSE"
        assert a.finish()[-1]["ok"] is False
    finally:
        holder.close()


def test_wait_for_a_step_that_never_comes_raises(ctx: RunContext) -> None:
    a = Agent.start(ctx, [{"op": "gate", "name": "never"}], name="stuck")
    with pytest.raises(AgentError):
        a.wait("done", timeout_s=0.3)
    pid = a.proc.pid
    a.kill()
    assert a.proc.poll() is not None
    assert not any(i["name"] == str(pid) for i in ctx.ledger.items)
