"""A Ctrl-C that Python swallows (it came while a weakref callback ran: "Exception ignored ... Traceback")
prints no traceback and still interrupts the work a moment later, not only at the gate's end (CI saw the
traceback when `twlab run` got Ctrl-C at an agent's start; the user's Ctrl-C then did nothing until the
experiment had finished)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, os, signal, sys, time, weakref
    from lab.errors import Interrupted
    from lab.run.runner import SignalGate

    class Obj:
        pass

    hook = sys.unraisablehook
    try:
        with SignalGate() as gate:
            objs = [Obj() for _ in range(3)]
            refs = [weakref.ref(o, lambda r: os.kill(os.getpid(), signal.SIGINT)) for o in objs[:1]]
            del objs
            gc.collect()          # the callback runs; the handler's raise inside it is swallowed
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:   # the work goes on: the interrupt must come inside it
                sum(range(1000))
            print("work finished", flush=True)
            gate.raise_if_received()
    except Interrupted as exc:
        print("interrupted", exc.signum)
    print("hook restored", sys.unraisablehook is hook, signal.getsignal(signal.SIGALRM) is signal.SIG_DFL)
""")


def test_a_swallowed_interrupt_prints_no_traceback_and_interrupts_the_work() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["interrupted 2", "hook restored True True"], r.stdout
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
