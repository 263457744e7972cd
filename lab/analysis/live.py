"""`twlab analyze -i IFACE`: analyze packets as a live capture hands them over.

lab.analysis does not import lab.kernel (layering): the CLI opens the capture (lab.kernel.capture's
lossless raw AF_PACKET + BPF path) and passes it here as a LiveSource, anything with a link type, take()
(the packets since the last call) and stop(). live_feeder() turns it into a lab.analysis.stream Feeder, so
live input gets exactly the JSON, --jsonl, census and summary that files get. Ctrl-C (or --duration) ends
the capture cleanly: the packets already queued are still analyzed and the summary is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from lab.core.tracker import Analyzer
from lab.pcap.filters import FILTERED, SegmentFilter
from lab.pcap.frag import Reassembler
from lab.pcap.readers import ReaderStats, decode_frame
from lab.pcap.writer import PcapngWriter

Packet = tuple[int, bytes, int]      # (ts_ns, data, orig_len)

_IDLE_S = 0.05                       # how long to wait when the capture has nothing new


class LiveSource(Protocol):
    linktype: int

    def take(self) -> list[Packet]: ...

    def stop(self) -> Any: ...


class LiveRun:
    """The feeder for one live capture; `interrupted` says whether Ctrl-C ended it."""

    def __init__(self, src: LiveSource, duration_s: float | None, filt: SegmentFilter | None = None,
                 out: BinaryIO | None = None, clock: Callable[[], float] = time.monotonic,
                 on_start: Callable[[], None] | None = None) -> None:
        self.src = src
        self.duration_s = duration_s
        self.filt = filt if filt is not None and filt.active else None
        self.writer = PcapngWriter(out, app="twlab analyze -i (raw AF_PACKET)") if out is not None else None
        self.clock = clock
        self.on_start = on_start   # told once the analysis loop runs (Ctrl-C from then on ends it cleanly)
        self.interrupted = False
        self.stats = ReaderStats()
        self._filtered = 0
        self._frags = Reassembler({})   # fragments held across take()s (their packets count as not-tcp)

    def __call__(self, analyzer: Analyzer, on_batch: Callable[[], None]) -> ReaderStats:
        deadline = float("inf") if self.duration_s is None else self.clock() + self.duration_s
        try:
            if self.on_start is not None:
                self.on_start()
            while self.clock() < deadline:
                pkts = self.src.take()
                if pkts:
                    self._feed(analyzer, pkts)
                    on_batch()
                else:
                    time.sleep(_IDLE_S)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self.src.stop()
        self._feed(analyzer, self.src.take())   # what the kernel had queued when the capture stopped
        if self._filtered:
            self.stats.skipped[FILTERED] = self._filtered
        return self.stats

    def _feed(self, analyzer: Analyzer, pkts: list[Packet]) -> None:
        st = self.stats
        lt = self.src.linktype
        filt = self.filt
        write = self.writer.write if self.writer is not None else None
        for ts_ns, data, orig_len in pkts:
            st.packets += 1
            if st.first_ts is None:
                st.first_ts = ts_ns / 1e9
            if write is not None:
                write(ts_ns, data, orig_len, linktype=lt)
            seg = decode_frame(lt, data, st.packets, ts_ns, self._frags)
            st.reassembled = self._frags.reassembled
            if seg is None:
                st.skipped["not-tcp"] = st.skipped.get("not-tcp", 0) + 1
                continue
            st.tcp_segments += 1
            if filt is not None and not filt.keep(seg.src_ip, seg.sport, seg.dst_ip, seg.dport, seg.ts_s):
                self._filtered += 1
                continue
            analyzer.feed(seg)
