"""The analyzer's verdict on a judge capture, and its differences from the kernel-derived expectation.

An expectation (the "expect" object of a truth file):
  {"connections": 2,                                # connections in the report
   "conns": [{"kind": "rst" | ["rst", "refused"],   # per connection in order of first frame; any key optional
              "initiator": "client",
              "time_wait": ["server"],              # sides holding TIME_WAIT
              "close_frame": 7,                     # this frame (e.g. the RST that closed) is a closing segment
              "not_close_frame": 5,                 # this frame did not close it
              "no_state": ["LISTEN"],               # no transition of either side from or to these states
              "no_transition_at": 4,                # no state change at this frame (e.g. a stale segment)
              "closed_at": {"server": 9},           # that side's last transition is to CLOSED at this frame
              "no_role": "retransmission",          # no segment role containing this text
              "mid_capture": False}],
   "findings_absent": ["fin-retransmitted"], "findings_present": ["..."]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lab.core.report import Connection, Report
from lab.core.tracker import analyze
from lab.pcap.readers import read_segments


def analyze_file(path: Path) -> Report:
    return analyze(read_segments(path))


def summary(report: Report) -> dict[str, Any]:
    """What the judges compare, in plain JSON (for the truth file's 'twlab_at_make' note and for diffs)."""
    return {"connections": [_conn_summary(c) for c in _ordered(report.connections)],
            "findings": sorted(f.kind for f in report.findings)}


def _ordered(conns: Iterable[Connection]) -> list[Connection]:
    return sorted(conns, key=lambda c: (c.first_frame, c.id))


def _conn_summary(c: Connection) -> dict[str, Any]:
    return {"kind": c.close.kind, "initiator": c.close.initiator, "close_frames": list(c.close.frames),
            "time_wait": sorted(w.side for w in c.time_wait), "first_frame": c.first_frame,
            "incarnation": c.incarnation, "mid_capture": c.mid_capture}


def differences(report: Report, expect: Mapping[str, Any]) -> list[str]:
    """Every way the report differs from the expectation (empty: the analyzer agrees with the kernel)."""
    out: list[str] = []
    conns = _ordered(report.connections)
    if "connections" in expect and len(conns) != expect["connections"]:
        out.append(f"{len(conns)} connections (kernel: {expect['connections']})")
    for i, want in enumerate(expect.get("conns", ())):
        if i >= len(conns):
            out.append(f"connection #{i + 1} missing")
            continue
        out += [f"connection #{i + 1}: {d}" for d in _conn_differences(conns[i], want)]
    kinds = {f.kind for f in report.findings}
    out += [f"finding {k} reported (the kernel shows it is wrong)" for k in expect.get("findings_absent", ())
            if k in kinds]
    out += [f"finding {k} missing" for k in expect.get("findings_present", ()) if k not in kinds]
    return out


def _conn_differences(c: Connection, want: Mapping[str, Any]) -> list[str]:
    out = []
    if "kind" in want:
        allowed = want["kind"] if isinstance(want["kind"], list) else [want["kind"]]
        if c.close.kind not in allowed:
            out.append(f"close kind {c.close.kind} (kernel: {' or '.join(allowed)})")
    if "mid_capture" in want and c.mid_capture != want["mid_capture"]:
        out.append(f"mid_capture {c.mid_capture} (the capture has its handshake: {not want['mid_capture']})")
    if "initiator" in want and c.close.initiator != want["initiator"]:
        out.append(f"initiator {c.close.initiator} (kernel: {want['initiator']})")
    if "time_wait" in want:
        got = sorted(w.side for w in c.time_wait)
        if got != sorted(want["time_wait"]):
            out.append(f"TIME_WAIT on {got or 'no side'} (kernel: {sorted(want['time_wait']) or 'no side'})")
    if "close_frame" in want and want["close_frame"] not in c.close.frames:
        out.append(f"frame {want['close_frame']} not among the closing segments {list(c.close.frames)}")
    if "not_close_frame" in want and want["not_close_frame"] in c.close.frames:
        out.append(f"frame {want['not_close_frame']} counted as closing it")
    if "no_transition_at" in want:
        out += [f"{t.side} {t.from_state.value} -> {t.to_state.value} at frame {t.frame}"
                for t in c.transitions if t.frame == want["no_transition_at"]]
    for side, frame in dict(want.get("closed_at", {})).items():
        last = [t for t in c.transitions if t.side == side][-1:]
        if not last or last[0].to_state.value != "CLOSED" or last[0].frame != frame:
            ends = f"{last[0].to_state.value} at frame {last[0].frame}" if last else "no transition"
            out.append(f"{side} ends {ends} (kernel: CLOSED at frame {frame})")
    if "no_role" in want:
        out += [f"frame {f} role {r!r}" for f, _i, r in c.roles if want["no_role"] in r]
    banned = set(want.get("no_state", ()))
    for t in c.transitions:
        if t.from_state.value in banned or t.to_state.value in banned:
            out.append(f"{t.side} {t.from_state.value} -> {t.to_state.value} at frame {t.frame}")
    return out
