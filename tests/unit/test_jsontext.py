"""lab.core.jsontext writes exactly json.dumps(record.to_dict()), for any record: the fast path of
`analyze --json` cannot drift from the records' own JSON shape. Checked on the module as imported (the
compiled one when the accelerator is built) and on its .py source loaded on its own (TWLAB_PURE=1)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lab.core.jsontext as loaded
from lab import accel
from lab.core.report import Close, Connection, Finding, TimeWaitWindow
from lab.core.tcpstate import Input, TcpState


def _pure_copy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_jsontext_pure", accel.source_path("lab.core.jsontext"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_jsontext_pure"] = mod
    spec.loader.exec_module(mod)
    return mod


PURE = _pure_copy()
MODULES = [pytest.param(loaded, id="as-imported"), pytest.param(PURE, id="pure")]

# timestamps as captures give them (seconds + microseconds, nanoseconds) and any float at all
stamps = st.one_of(
    st.builds(lambda s, u: s + u * 1e-6, st.integers(0, 2**33), st.integers(0, 999_999)),
    st.builds(lambda s, u: s + u / 1e6, st.integers(16000, 2**32 + 5), st.sampled_from([0, 1, 10, 500_000, 999_999])),
    st.builds(lambda s, n: s + n * 1e-9, st.integers(1_500_000_000, 1_900_000_000), st.integers(0, 10**9 - 1)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 16384.0, 16383.999999, 4294967295.999999, 4294967296.0, 60.0, 1e16, 1e-5]),
)
ints = st.one_of(st.integers(0, 2**32), st.integers(-(2**70), 2**70))
texts = st.text(max_size=12)                      # any code point: quotes, controls, non-ASCII, surrogates
json_scalars = st.one_of(st.none(), st.booleans(), ints, stamps, texts)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner, inner), st.dictionaries(texts, inner, max_size=3)), max_leaves=8)
frames = st.one_of(st.tuples(), st.lists(ints, max_size=4).map(tuple))
side = st.sampled_from(["client", "server"])

windows = st.builds(TimeWaitWindow, side, stamps, stamps, ints, frames,
                    st.sampled_from(["timeout", "rst", "syn", "capture-end"]), st.none() | ints, stamps, stamps)
closes = st.builds(Close, st.sampled_from(["four-way", "rst", "incomplete"]),
                   st.sampled_from([None, "client", "server", "both"]), frames)
steps = st.tuples(ints, st.sampled_from([0, 1]), st.sampled_from(list(TcpState)), st.sampled_from(list(TcpState)),
                  st.booleans(), st.sampled_from(list(Input)))
roles = st.tuples(ints, st.sampled_from([0, 1]), texts)
connections = st.builds(
    Connection, ints, texts, texts, ints, ints, ints, closes, st.lists(windows, max_size=3).map(tuple),
    st.lists(steps, max_size=4).map(tuple), stamps, stamps, ints, st.none() | ints, st.none() | ints,
    st.booleans(), st.lists(roles, max_size=3).map(tuple), st.booleans())
extras = st.one_of(
    st.dictionaries(texts, json_values, max_size=4),
    st.dictionaries(st.sampled_from(["verdict", "kind", "detail", "elapsed_s"]), json_values, max_size=3))
findings = st.builds(Finding, st.sampled_from(["reuse-in-time-wait", "fin-retransmitted"]), st.none() | ints,
                     frames, texts, extras)


def _dumps(d: dict[str, Any]) -> str:
    return json.dumps(d)


@pytest.mark.parametrize("mod", MODULES)
@settings(max_examples=300, deadline=None)
@given(c=connections)
def test_connection_text_is_json_dumps_of_to_dict(mod: ModuleType, c: Connection) -> None:
    full = c.to_dict()
    assert mod.connection_json(c, True) == _dumps(full)
    del full["transitions"], full["roles"]
    assert mod.connection_json(c) == _dumps(full)
    assert mod.connections_json([c, c], False) == f"{_dumps(full)}, {_dumps(full)}"


@pytest.mark.parametrize("mod", MODULES)
@settings(max_examples=300, deadline=None)
@given(f=findings)
def test_finding_text_is_json_dumps_of_to_dict(mod: ModuleType, f: Finding) -> None:
    assert mod.finding_json(f) == _dumps(f.to_dict())
    assert mod.findings_json([f, f]) == f"{_dumps(f.to_dict())}, {_dumps(f.to_dict())}"


@pytest.mark.parametrize("mod", MODULES)
@settings(max_examples=1000, deadline=None)
@given(x=stamps)
def test_floats_are_written_as_json_writes_them(mod: ModuleType, x: float) -> None:
    assert mod._float(x) == json.dumps(x)
    fast = mod._timestamp(x) if mod._TS_LOW <= x < mod._TS_HIGH else ""   # the compiled module's shortcut
    assert fast in ("", repr(x))


@pytest.mark.parametrize("mod", MODULES)
def test_the_timestamp_shortcut_takes_capture_timestamps(mod: ModuleType) -> None:
    for x in (1796033802.050775, 1796033802 + 50 * 1e-6, 1796033802.0, 16384.000001, 4294967295.999999):
        assert mod._timestamp(x) == repr(x)
    assert mod._timestamp(1796033802 + 123456789 * 1e-9) == ""   # nanoseconds: repr() writes it


@pytest.mark.parametrize("mod", MODULES)
def test_edge_values(mod: ModuleType) -> None:
    """Values json writes its own way: nan, inf, -0.0, non-ASCII and control characters, big ints."""
    w = TimeWaitWindow("server", math.nan, math.inf, 2**70, (1, -2), "rst", None, -math.inf, -0.0)
    c = Connection(-1, "caf\u00e9:\x00", '"\\', 0, 1, 2, Close("rst", "both", (3,)), (w, w), first_ts=1e-7,
                   last_ts=1.5e300, client_isn=0, roles=((5, 1, "ACK \u2014 \ud800"),))
    assert mod.connection_json(c, True) == json.dumps(c.to_dict())
    f = Finding("delayed-duplicate", None, (), "", {"nested": {"a": [1.0, None, True, "\n"]}, "t": (0.1, 2)})
    assert mod.finding_json(f) == json.dumps(f.to_dict())


def test_the_compiled_module_is_the_one_imported_when_built() -> None:
    """The premise of the "as-imported" cases: with the accelerator active, jsontext is compiled."""
    import lab.accel

    if not lab.accel.active():
        pytest.skip(f"accelerator not active: {lab.accel.check()[1]}")
    assert loaded.__file__ is not None and loaded.__file__.endswith(lab.accel.EXT_SUFFIX)
    assert loaded._COMPILED and not PURE._COMPILED   # the timestamp shortcut is on only where it pays
