"""Recording: what every experiment wraps around its traffic.

    with Recording(ctx, ports=[P]) as rec:
        ...traffic...
    rec.report            # the analyzer's Report of what was captured (None if capture was skipped)
    rec.skipped_reason    # e.g. "not root: capture skipped ..." (None when captured)
    rec.segments          # decoded TCP segments (frame numbers = tshark frame.number)
    rec.note(frame, text) # the experiment's own per-packet facts (what it did, sock_diag readings); never states:
                          # every sentence about TCP states comes from the narrator (lab.core.narrate)
    rec.narration()       # the narrator's comments on the capture's clock (t0 = the first frame)
    rec.save()            # ctx.out_dir/capture.pcapng, atomically: narrator notes + experiment notes

Without CAP_NET_RAW nothing is captured and the experiment still runs its socket cases.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lab.core.model import Flags, Segment
from lab.errors import EnvironmentProblem
from lab.kernel.capture import CaptureStats, LiveCapture, write_pcapng

if TYPE_CHECKING:
    from lab.core.report import Connection
    from lab.run.context import RunSpace


def port_filter(ports: Iterable[int]) -> str:
    ports = sorted(set(ports))
    if not ports:
        return "tcp"
    return "tcp and (" + " or ".join(f"port {p}" for p in ports) + ")"


class Recording:
    def __init__(self, ctx: RunSpace, ports: Sequence[int], iface: str = "lo", netns: str | None = None,
                 filename: str = "capture.pcapng", settle_s: float = 0.05) -> None:
        self.ctx = ctx
        self.ports = list(ports)
        self.iface = iface
        self.netns = netns
        self.filename = filename
        self.settle_s = settle_s        # lets the last ACKs (sent from softirq) reach the socket
        self.capture: LiveCapture | None = None
        self.stats: CaptureStats | None = None
        self.skipped_reason: str | None = None
        self.segments: list[Segment] = []
        self.report: Any = None         # lab.core.report.Report
        self.analysis_error: str | None = None   # why there is no report although packets were captured
        self.notes: dict[int, list[str]] = {}
        self.path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Recording:
        cap = LiveCapture(self.iface, port_filter(self.ports), netns=self.netns)
        try:
            cap.start()
        except EnvironmentProblem as exc:
            self.skipped_reason = ("not root: capture skipped (" + exc.message + ")"
                                   if not self.ctx.root else f"capture skipped: {exc.one_line()}")
            self.ctx.events.log("capture-skipped", reason=self.skipped_reason)
            return self
        self.capture = cap
        self.ctx.stack.callback(self._abort)  # an exception inside the block still closes the socket
        self.ctx.events.log("capture-start", iface=self.iface, netns=self.netns, filter=cap.bpf,
                            rcvbuf_bytes=cap.rcvbuf_bytes)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.capture is None:
            return
        if et is None:
            time.sleep(self.settle_s)
        self.stats = self.capture.stop()
        self.ctx.events.log("capture-stop", **self.stats.to_dict())
        if et is None:
            self._decode_and_analyze()

    def _abort(self) -> None:
        if self.capture is not None and self.capture.stats is None:
            self.capture.stop()

    def _decode_and_analyze(self) -> None:
        assert self.capture is not None
        from lab.core.tracker import analyze
        from lab.pcap.readers import decode_frame as decode

        lt = self.capture.linktype
        for frame, (ts_ns, data, _orig) in enumerate(self.capture.packets, start=1):
            seg = decode(lt, data, frame, ts_ns)
            if seg is not None:
                self.segments.append(seg)
        try:
            self.report = analyze(self.segments)
        except Exception as exc:  # an analyzer bug must not lose the capture or the socket cases
            self.analysis_error = f"analyzer failed: {type(exc).__name__}: {exc}"
            self.ctx.events.log("analysis-error", error=self.analysis_error, traceback=traceback.format_exc())

    # -- for experiments ---------------------------------------------------------------------

    @property
    def captured(self) -> bool:
        return self.capture is not None and self.stats is not None

    def note(self, frame: int, text: str) -> None:
        self.notes.setdefault(frame, []).append(text)

    def find(self, *, port: int | None = None, flags: int | None = None, src_port: int | None = None,
             exact: bool = False) -> list[Segment]:
        """Segments touching `port` (either side), sent from `src_port`, with all of `flags` set
        (exactly `flags` when exact=True), in capture order."""
        out = []
        for s in self.segments:
            if port is not None and port not in (s.sport, s.dport):
                continue
            if src_port is not None and s.sport != src_port:
                continue
            if flags is not None and ((s.flags & 0x3F) != flags if exact else (s.flags & flags) != flags):
                continue
            out.append(s)
        return out

    def close_segments(self, port: int) -> list[Segment]:
        """The FINs and RSTs on connections to/from `port`, and the ACK of each FIN."""
        out: list[Segment] = []
        fins = []
        for s in self.find(port=port):
            if s.flags & (Flags.FIN | Flags.RST):
                out.append(s)
                if s.flags & Flags.FIN:
                    fins.append(s)
                continue
            for f in fins:  # a pure ACK of a FIN seen earlier
                if (s.sport, s.dport) == (f.dport, f.sport) and s.ack == (f.seq + f.seg_len) & 0xFFFFFFFF \
                        and s.flags & Flags.ACK and s.payload_len == 0 and s not in out:
                    out.append(s)
        return sorted(out, key=lambda s: s.frame)

    def connections(self) -> list[dict[str, Any]]:
        """The analyzer's connections (docs/design.md's `analyze --json` shape)."""
        if self.report is None:
            return []
        return list(self.report.to_dict().get("connections", []))

    def analysis(self) -> dict[str, Any] | None:
        """For Outcome.analysis: the analyzer's report plus the capture's own statistics."""
        if self.report is None and self.stats is None:
            return None
        out: dict[str, Any] = dict(self.report.to_dict()) if self.report is not None else {}
        if self.analysis_error:
            out["analysis_error"] = self.analysis_error
        if self.stats is not None:
            out["capture_stats"] = {k: v for k, v in self.stats.to_dict().items() if k != "path"}
        return out

    @property
    def t0(self) -> float:
        """The capture's first frame's timestamp: the zero of Wireshark's Time column (0.0 without packets)."""
        return self.capture.packets[0][0] / 1e9 if self.capture is not None and self.capture.packets else 0.0

    @property
    def end_ts(self) -> float | None:
        """The capture's last frame's timestamp (None without packets)."""
        return self.capture.packets[-1][0] / 1e9 if self.capture is not None and self.capture.packets else None

    def connection(self, port_a: int, port_b: int, frame: int | None = None) -> Connection | None:
        """The analyzer's connection between these two ports that holds `frame` (default: the last one);
        None without a report or such a connection."""
        found = None
        if self.report is not None:
            for c in self.report.connections:
                ports = {c.client.rsplit(":", 1)[-1], c.server.rsplit(":", 1)[-1]}
                if ports == {str(port_a), str(port_b)} and (frame is None or c.first_frame <= frame <= c.last_frame):
                    found = c
        return found

    def narration(self) -> dict[int, list[str]]:
        """The narrator's per-frame comments (lab.core.narrate) on this capture's clock."""
        if self.report is None:
            return {}
        from lab.core.narrate import frame_notes

        return frame_notes(self.report, self.t0, self.end_ts)

    def all_notes(self) -> dict[int, list[str]]:
        """The narrator's comments, then the experiment's own facts (rec.note), per frame."""
        merged: dict[int, list[str]] = {}
        for frame, texts in self.narration().items():
            merged.setdefault(int(frame), []).extend(texts)
        for frame, texts in self.notes.items():
            merged.setdefault(frame, []).extend(texts)
        return merged

    def save(self) -> Path | None:
        """Write ctx.out_dir/<filename> (pcapng, per-packet comments) atomically; None if nothing was captured."""
        if self.capture is None or self.stats is None:
            return None
        path = self.ctx.out_dir / self.filename
        notes = self.all_notes()
        write_pcapng(path, self.capture.linktype, self.capture.snaplen, self.capture.packets, notes)
        self.path = path
        self.ctx.events.log("capture-saved", path=str(path), packets=self.stats.packets,
                            notes=sum(len(v) for v in notes.values()))
        return path

    def summary(self) -> dict[str, Any]:
        """Capture facts for Outcome.observations."""
        if self.stats is None:
            return {"captured": False, "skipped_reason": self.skipped_reason}
        return {"captured": True, "packets": self.stats.packets, "tcp_segments": len(self.segments),
                "kernel_drops": self.stats.kernel_drops}

