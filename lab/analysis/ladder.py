"""The textbook ladder diagram of one connection, in rich.

    client 10.0.0.1:3363                                     server 10.0.0.2:80
    ESTABLISHED          <──────── FIN M ────────────        FIN_WAIT_1
    CLOSE_WAIT           ───────── ACK M+1 ────────>         FIN_WAIT_2
    ...
                                                             ▇▇▇▇ TIME_WAIT 60 s, until +60.46 s

M and N are the two FINs' sequence numbers (M: the first FIN on the wire); other segments show
seq/ack relative to each side's ISN (or to its first sequence number seen when the SYN is missing).
States are the analyzer's transitions; a '*' marks a state the capture point could not see directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lab.core.model import Flags, Segment

_M32 = 0xFFFFFFFF
_ARROW_W = 38


@dataclass(frozen=True, slots=True)
class Step:
    """One state change of one side, as the analyzer inferred it."""

    frame: int
    side: str            # "client" | "server"
    from_state: str
    to_state: str
    inferred: bool = False


def state_name(state: Any) -> str:
    if state is None:
        return ""
    if isinstance(state, str):
        return state
    value = getattr(state, "value", None)
    if isinstance(value, str):
        return value
    return str(getattr(state, "name", state))


def _endpoint(s: Segment) -> str:
    return f"[{s.src_ip}]:{s.sport}" if ":" in s.src_ip else f"{s.src_ip}:{s.sport}"


class _Labeller:
    """Names seq/ack values: FIN M / ACK M+1 / FIN N / ACK N+1, else relative numbers."""

    def __init__(self, segs: Sequence[Segment], client: str) -> None:
        self.client = client
        self.isn: dict[str, int] = {}
        self.isn_from_syn: dict[str, bool] = {}
        self.fin_seq: dict[str, int] = {}    # side -> sequence number the FIN occupies
        self.fin_name: dict[str, str] = {}
        for s in segs:
            side = self.side(s)
            if s.flags & Flags.SYN and side not in self.isn_from_syn:
                self.isn[side] = s.seq
                self.isn_from_syn[side] = True
            elif side not in self.isn:
                self.isn[side] = (s.seq - 1) & _M32  # as Wireshark does without a SYN: first byte is 1
            if s.flags & Flags.FIN and side not in self.fin_seq:
                self.fin_seq[side] = (s.seq + s.payload_len) & _M32
                self.fin_name[side] = "M" if not self.fin_name else "N"

    def side(self, s: Segment) -> str:
        return "client" if _endpoint(s) == self.client else "server"

    @staticmethod
    def other(side: str) -> str:
        return "server" if side == "client" else "client"

    def rel(self, side: str, value: int) -> int:
        isn = self.isn.get(side)
        return value if isn is None else (value - isn) & _M32  # raw when that side never sent

    def label(self, s: Segment) -> str:
        side = self.side(s)
        peer = self.other(side)
        parts: list[str] = []
        f = s.flags
        if f & Flags.SYN:
            parts.append(("SYN-ACK" if f & Flags.ACK else "SYN") + f" {self.rel(side, s.seq)}")
        if f & Flags.RST:
            parts.append(f"RST seq {self.rel(side, s.seq)}")
        if f & Flags.FIN:
            name = self.fin_name.get(side, "?") if (s.seq + s.payload_len) & _M32 == self.fin_seq.get(side) else "?"
            parts.append(f"FIN {name}" if name != "?" else f"FIN seq {self.rel(side, s.seq + s.payload_len)}")
        if s.payload_len:
            start = self.rel(side, s.seq)
            parts.append(f"data {start}:{(start + s.payload_len) & _M32} ({s.payload_len} B)")
        if f & Flags.ACK:
            pfin = self.fin_seq.get(peer)
            if pfin is not None and s.ack == (pfin + 1) & _M32:
                parts.append(f"ACK {self.fin_name[peer]}+1")
            else:
                parts.append(f"ack {self.rel(peer, s.ack)}")
        if not parts:
            parts.append(Flags.text(f))
        return ", ".join(parts)


def _arrow(label: str, to_right: bool, style: str) -> Text:
    body = f" {label} "
    fill = max(_ARROW_W - len(body) - 1, 4)
    left = fill // 2
    right = fill - left
    line = "─" * left + body + "─" * right
    return Text(line + ">" if to_right else "<" + line, style=style)


def _style(s: Segment) -> str:
    if s.flags & Flags.RST:
        return "bold red"
    if s.flags & Flags.FIN:
        return "bold yellow"
    if s.flags & Flags.SYN:
        return "bold cyan"
    return ""


def _notes_by_frame(conn: Mapping[str, Any], findings: Sequence[Mapping[str, Any]]) -> dict[int, list[str]]:
    """Short notes for the right-hand column: findings on this connection, and the analyzer's roles that
    say more than the arrow does (retransmissions, duplicates)."""
    out: dict[int, list[str]] = {}
    for f in findings:
        if f.get("connection") == conn["id"]:
            for n in f["frames"]:
                out.setdefault(n, []).append(f["kind"])
    for frame, _side, role in conn.get("roles", ()):
        low = role.lower()
        if any(w in low for w in ("retrans", "duplicate", "lost", "challenge")) and frame not in out:
            out.setdefault(frame, []).append(role)
    return out


def ladder(conn: Mapping[str, Any], segs: Sequence[Segment], steps: Sequence[Step],
           max_rows: int = 60, title: str = "", findings: Sequence[Mapping[str, Any]] = (),
           time_wait_s: float | None = None) -> Group:
    """Render one connection (its `analyze --json` dict), its segments in capture order and its transitions.

    `findings`: the report's findings (those of this connection are shown beside their frames);
    `time_wait_s`: the profile's TIME_WAIT length, shown on the bar."""
    if not segs:
        return Group(Text("no segments for this connection", style="dim"))
    lab = _Labeller(segs, conn["client"])
    t0 = segs[0].ts_s
    state: dict[str, str] = {}
    for st in sorted(steps, key=lambda x: x.frame):  # each side's state before its first transition
        state.setdefault(st.side, state_name(st.from_state))
    by_frame: dict[int, list[Step]] = {}
    for st in steps:
        by_frame.setdefault(st.frame, []).append(st)
    windows = list(conn.get("time_wait", []))
    tw_sides = {w["side"] for w in windows}
    notes = _notes_by_frame(conn, findings)

    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=False)
    t.add_column("frame", justify="right", style="dim", no_wrap=True)
    t.add_column("time", justify="right", style="dim", no_wrap=True, min_width=10)
    t.add_column("client", justify="right", min_width=20, no_wrap=True)
    t.add_column("", justify="center", min_width=_ARROW_W, no_wrap=True)
    t.add_column("server", justify="left", min_width=20, no_wrap=True)
    t.add_column("", style="magenta", min_width=18)

    if state:
        t.add_row("", "", Text(state.get("client", ""), style="dim"), "", Text(state.get("server", ""), style="dim"),
                  "")
    shown = list(enumerate(segs))
    if len(segs) > max_rows:
        head = max_rows // 4
        shown = [*shown[:head], (-1, segs[head]), *shown[len(segs) - (max_rows - head):]]
    hidden = len(segs) - max_rows if len(segs) > max_rows else 0
    cursor = 0
    for idx, s in shown:
        if idx == -1:
            t.add_row("", "", "", Text(f"… {hidden} segments …", style="dim"), "", "")
            continue
        # states advance over hidden rows too
        path: dict[str, list[str]] = {}
        while cursor <= idx:
            for st in by_frame.get(segs[cursor].frame, ()):
                state[st.side] = state_name(st.to_state)
                if cursor == idx:
                    path.setdefault(st.side, []).append(state[st.side] + ("*" if st.inferred else ""))
            cursor += 1
        cells = []
        for side in ("client", "server"):
            if side in path:  # changed at this segment: show every state it passed through
                txt = " → ".join(path[side])
                sty = "bold magenta" if state[side] == "TIME_WAIT" and side in tw_sides else "bold"
            else:
                txt = state.get(side, "")
                sty = "magenta" if txt == "TIME_WAIT" and side in tw_sides else "dim"
            cells.append(Text(txt, style=sty))
        to_right = lab.side(s) == "client"
        t.add_row(str(s.frame), f"+{s.ts_s - t0:.6f}", cells[0], _arrow(lab.label(s), to_right, _style(s)), cells[1],
                  Text(", ".join(notes.get(s.frame, []))))

    for w in windows:
        length = w.get("length_s", time_wait_s)
        bar = Text("▇" * 4 + (f" TIME_WAIT {length:g} s" if length is not None else " TIME_WAIT"),
                   style="bold magenta")
        how = f"frame {w['start_frame']} +{w['start_ts'] - t0:.3f} s → "
        ended = w.get("ended_by", "timeout")
        if ended == "rst":
            how += f"+{w['end_ts'] - t0:.3f} s, killed by the RST in frame {w.get('end_frame')}"
        elif ended == "syn":
            how += f"+{w['end_ts'] - t0:.3f} s, ended by the new SYN in frame {w.get('end_frame')}"
        else:
            how += f"+{w['end_ts'] - t0:.3f} s"
        if w.get("restarts"):
            how += ", restarted by frame " + ", ".join(str(n) for n in w["restarts"])
        until = Text(how, style="magenta")
        if w["side"] == "client":
            t.add_row("", "", bar, until, "", "")
        else:
            t.add_row("", "", "", until, bar, "")

    close = conn.get("close", {})
    head_txt = Text.assemble(
        (title + "  " if title else "", "bold"),
        (f"connection {conn['id']}", "bold"), f" (incarnation {conn.get('incarnation', 0)}): ",
        f"close {close.get('kind', '?')}", f", initiator {close.get('initiator') or '-'}",
        "\n", ("client ", "bold"), conn["client"], "  ⇄  ", ("server ", "bold"), conn["server"],
    )
    legend = [f"{n}: {side}'s FIN (relative seq {lab.rel(side, v)})" for side, v in lab.fin_seq.items()
              for n in [lab.fin_name[side]]]
    foot = Text("; ".join(legend) + ("; * state inferred, not visible at the capture point"
                                     if any(st.inferred for st in steps) else ""), style="dim")
    if not windows:
        foot.append("\nno TIME_WAIT window on either side", style="dim")
    return Group(head_txt, t, foot)
