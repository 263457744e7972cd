"""lab.core.census.Fold, the census's per-connection fold (compiled with the accelerator): endpoint keys and
the bound on tracked keys (beyond MAX_KEYS, everything is counted under OTHER)."""

from __future__ import annotations

import pytest

from lab.core import census as cc
from lab.core.report import Close, Connection, Side, TimeWaitWindow

SERVER = "198.51.100.1:80"


def _conn(i: int, client: str, start: float = 1.0, side: Side = "client") -> Connection:
    windows = (TimeWaitWindow(side, start, start + 60.0, 1),)
    return Connection(i, client, SERVER, 0, 1, 2, Close("four-way", "client", (1, 2, 3)), windows, (),
                      start, start + 0.5, 5)


@pytest.mark.parametrize(("endpoint", "host"), [
    ("192.0.2.7:40000", "192.0.2.7"), ("[2001:db8::1]:40000", "2001:db8::1"), ("noport", "noport"), ("", ""),
])
def test_host_of_cuts_the_port_after_the_last_colon(endpoint: str, host: str) -> None:
    assert cc.host_of(endpoint) == host
    assert cc.client_key("client", endpoint) == host and cc.client_key("server", endpoint) == endpoint


def test_fold_keys_clients_by_address_and_servers_by_endpoint() -> None:
    fold = cc.Fold()
    fold.add_all([_conn(0, "192.0.2.1:40000", 1.0), _conn(1, "192.0.2.1:40001", 2.0),
                  _conn(2, "[2001:db8::2]:40000", 3.0, side="server")])
    assert fold.side_windows == {"client": 2, "server": 1}
    assert fold.by_local.windows == {"192.0.2.1": 2, SERVER: 1}
    assert fold.by_peer.windows == {SERVER: 2, "2001:db8::2": 1}
    assert fold.side_steps["client"] == {1000: 1, 2000: 1, 61000: -1, 62000: -1}
    assert fold.per_pair == {("192.0.2.1", SERVER): {1: 1, 2: 1}, ("2001:db8::2", SERVER): {3: 1}}
    assert fold.per_dest == {SERVER: 3} and fold.clients == {SERVER: {"192.0.2.1", "2001:db8::2"}}
    assert (fold.first_ts, fold.last_ts) == (1.0, 3.5)


def test_fold_counts_keys_beyond_the_bound_under_other() -> None:
    extra = 5
    conns = [_conn(i, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:40000") for i in range(cc.MAX_KEYS + extra)]
    fold = cc.Fold()
    fold.add_all(conns)
    assert len(fold.by_local.steps) == cc.MAX_KEYS + 1 and fold.by_local.windows[cc.OTHER] == extra
    assert fold.by_peer.windows == {SERVER: cc.MAX_KEYS + extra}       # one server: never over the bound
    assert len(fold.per_pair) == cc.MAX_KEYS + 1 and fold.per_pair[cc.OTHER, SERVER] == {1: extra}
    assert len(fold.clients[SERVER]) == cc.MAX_KEYS and fold.per_dest[SERVER] == cc.MAX_KEYS + extra
    assert sum(fold.by_local.windows.values()) == fold.side_windows["client"] == cc.MAX_KEYS + extra
