from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from lab.run.context import Experiment, Outcome, RunContext
from lab.run.runner import open_context

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
if not CORPUS.is_dir():  # CI: shared/ sits beside the clone
    CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces, raw sockets and iptables (CI runs as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"reference corpus not found at {CORPUS}")
    return CORPUS


def loopback_listener() -> socket.socket:
    """A listening socket on 127.0.0.1 with a port of its own: a capture filter on that port sees only this test."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    return srv


def reap(*procs: subprocess.Popen[Any]) -> None:
    """A test's `finally`: kill each process still running and wait for it, so none outlives its test."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def lab_netns_of(run_id: str) -> list[str]:
    netns = Path("/run/netns")
    return [p.name for p in netns.glob(f"twl{run_id}*")] if netns.is_dir() else []


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunContext]:
    """A RunContext as the runner makes it (run id, event log, ledger); afterwards no namespace of it is left."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    exp = Experiment(id=f"{name}-test", claim="-", lore="-", run=lambda c: Outcome(True, {}))
    with ExitStack() as stack:
        c = open_context(exp, tmp_path, stack)
        yield c
    assert not lab_netns_of(c.run_id), "namespace left behind"


# Property tests draw the same examples on every run (CI must not turn red on a draw no one changed);
# TWLAB_HYPOTHESIS=explore draws new ones, for a person hunting for failures.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("TWLAB_HYPOTHESIS", "ci"))
