"""`twlab show`'s data path (lab.analysis.ladder.choose): the same connection record, findings and segments as
analyzing the whole file, and the walk stops reading once the chosen connection is finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.analysis.ladder import choose
from lab.core.tracker import analyze
from lab.errors import BadCapture, UsageError
from lab.pcap.filters import SegmentFilter
from lab.pcap.readers import CaptureReader, read_segments
from tests.unit.synth import repeated

ROOT = Path(__file__).resolve().parents[2]
GALLERY = sorted((ROOT / "captures").glob("*.pcapng"))
CHURN_PREFIX = ROOT / "benchmarks" / "out" / "churn-1000000-first100k.pcap"   # made by `python -m benchmarks`
FILES = ["zeek__echo-connections.pcap.gz", "deepflow__l4-source-port-reuse.pcap", "zeek__mysql__auth.pcap",
         "chrissanders__tcp_teardown.pcapng", "deepflow__tcp-n-syn-ack.pcap"]


def _segments_of(src: Path, conn: object) -> list[object]:
    ends = {conn.client, conn.server}  # type: ignore[attr-defined]
    return [s for s in read_segments(src) if conn.first_frame <= s.frame <= conn.last_frame  # type: ignore[attr-defined]
            and {str(s.src), str(s.dst)} == ends]


@pytest.mark.parametrize("name", FILES)
def test_each_connection_as_the_whole_report_has_it(corpus: Path, name: str) -> None:
    src = corpus / name
    report = analyze(read_segments(src))
    ids = [c.id for c in report.connections]
    for cid in ids[:3] + ids[len(ids) // 2: len(ids) // 2 + 2] + ids[-2:]:
        want = report.connection(cid)
        got = choose(src, cid)
        assert got.conn == want
        assert got.findings == [f for f in report.findings if f.connection == cid]
        assert got.segments == _segments_of(src, want)
        assert choose(src, stream=cid).conn == want     # ids are given in first-frame order: stream N is id N


@pytest.mark.parametrize("name", FILES)
def test_default_is_the_first_connection_with_a_close(corpus: Path, name: str) -> None:
    src = corpus / name
    report = analyze(read_segments(src))
    want = next((c for c in report.connections if c.close.kind != "incomplete"), report.connections[0])
    assert choose(src).conn == want


def test_stops_reading_once_the_connection_is_finished(corpus: Path, tmp_path: Path) -> None:
    src = tmp_path / "repeated.pcapng"
    repeated(corpus / "zeek__mysql__auth.pcap", src, 300)      # ~5 MB: several batches of the walk
    report = analyze(read_segments(src))
    first, last = report.connections[0], report.connections[-1]
    early = choose(src, first.id)
    assert early.read_all is False and early.conn == first
    late = choose(src, last.id)
    assert late.read_all is True and late.conn == last
    assert late.segments == _segments_of(src, last)


def test_filter_and_missing(corpus: Path) -> None:
    src = corpus / "zeek__echo-connections.pcap.gz"
    first = next(iter(read_segments(src)))
    got = choose(src, filt=SegmentFilter((first.sport,)))
    assert first.sport in (got.segments[0].sport, got.segments[0].dport)
    with pytest.raises(UsageError, match="no connection 999999"):
        choose(src, 999999)
    with pytest.raises(UsageError, match="no stream"):
        choose(src, stream=999999)
    with pytest.raises(UsageError, match="no TCP connection"):
        choose(src, filt=SegmentFilter((1,)))




def test_capture_cut_short_after_the_connection(corpus: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((corpus / "zeek__mysql__auth.pcap").read_bytes()[:16000])   # ends inside frame 165
    last = analyze(read_segments(corpus / "zeek__mysql__auth.pcap")).connections[-1].id
    got = choose(cut, last)                       # its segments up to the cut, and one warning
    assert got.segments and got.segments[-1].frame == 164
    assert len(got.warnings) == 1 and "cut short" in got.warnings[0]
    with pytest.raises(BadCapture):
        choose(cut, last, lenient=False)


def _sample(ids: list[int]) -> list[int]:
    """A few ids from the start, the middle, ~90 % in and the end."""
    n = len(ids)
    return sorted({*ids[:2], *ids[n // 2: n // 2 + 2], *ids[n * 9 // 10: n * 9 // 10 + 2], *ids[-2:]})


def _shown_as_in_full_detail(src: Path) -> None:
    """The connection show draws (detail kept for it alone) has the record, steps, roles, findings and
    segments of a full detail analysis."""
    report = analyze(read_segments(src))              # detail for every connection
    for cid in _sample([c.id for c in report.connections]):
        want = report.connection(cid)
        got = choose(src, cid)
        assert got.conn == want and got.conn.steps == want.steps and got.conn.roles == want.roles
        assert got.findings == [f for f in report.findings if f.connection == cid]
        assert got.segments == _segments_of(src, want)
        assert choose(src, stream=cid).conn == want


@pytest.mark.parametrize("src", GALLERY, ids=lambda p: p.name)
def test_gallery_connection_as_in_full_detail(src: Path) -> None:
    _shown_as_in_full_detail(src)


def test_corpus_connections_as_in_full_detail(corpus: Path) -> None:
    files = sorted(p for p in corpus.iterdir() if ".pcap" in p.name)
    assert files
    for src in files:
        if any(True for _ in read_segments(src)):
            _shown_as_in_full_detail(src)


def test_churn_prefix_connections_as_in_full_detail() -> None:
    if not CHURN_PREFIX.is_file():
        pytest.skip(f"{CHURN_PREFIX} not built (python -m benchmarks)")
    _shown_as_in_full_detail(CHURN_PREFIX)


@pytest.mark.parametrize("name", ["zeek__mysql__auth.pcap", "chrissanders__tcp_teardown.pcapng",
                                  "zeek__echo-connections.pcap.gz"])
def test_reader_skip_to_reads_the_same_frames_from_there_on(corpus: Path, name: str) -> None:
    src = corpus / name
    segs = list(read_segments(src))
    for k in (0, 1, segs[len(segs) // 2].frame, segs[-1].frame, segs[-1].frame + 1):
        assert list(CaptureReader(src, skip_to=k)) == [s for s in segs if s.frame >= k]
