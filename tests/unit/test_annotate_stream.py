"""Streaming annotate (lab.pcap.annotate.narrated / annotate_file): the same comments on the same frames as
narrating the whole report at once (lab.core.narrate.frame_notes), with the notes spooled in many extents
and windows of frames and read back in frame order; nothing written when the capture is bad."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.core.narrate import frame_notes, note_records
from lab.core.report import Report
from lab.core.tracker import analyze
from lab.errors import BadCapture
from lab.pcap import annotate, fastcopy
from lab.pcap.annotate import annotate_file, capture_t0, write_annotated
from lab.pcap.filters import SegmentFilter
from lab.pcap.readers import iter_frames, read_segments

FILES = ["zeek__echo-connections.pcap.gz", "deepflow__l4-source-port-reuse.pcap", "zeek__tcp__fin_retransmission.pcap",
         "chrissanders__tcp_teardown.pcapng", "zeek__tcp__rst-inject-rae.pcap"]


def _comments(path: Path) -> dict[int, tuple[str, ...]]:
    return {fr.frame: tuple(fr.comments) for fr in iter_frames(path) if fr.comments}


def _whole_report_notes(src: Path) -> dict[int, list[str]]:
    return frame_notes(analyze(read_segments(src)), capture_t0(src))


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize(("spool_bytes", "window_bits"), [(7, 2), (1 << 30, 16)])   # many small extents, or none
def test_same_comments_as_the_whole_report(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           name: str, spool_bytes: int, window_bits: int) -> None:
    monkeypatch.setattr(annotate, "_SPOOL_BYTES", spool_bytes)
    monkeypatch.setattr(annotate, "_WINDOW_BITS", window_bits)
    src = corpus / name
    whole = tmp_path / "whole.pcapng"
    streamed = tmp_path / "streamed.pcapng"
    expected = _whole_report_notes(src)
    assert expected, "the narrator has something to say about every corpus file"
    packets = write_annotated(src, whole, expected)
    done = annotate_file(src, streamed)
    assert done.packets == packets
    assert done.annotated == len(expected)
    # the same notes in the same order as narrating the whole report, however the batches fell
    assert _comments(streamed) == _comments(whole)
    assert streamed.read_bytes() == whole.read_bytes()
    report = analyze(read_segments(src))
    assert (done.connections, done.findings) == (len(report.connections), len(report.findings))


@pytest.mark.parametrize("name", FILES)
def test_notes_do_not_depend_on_how_the_records_are_batched(corpus: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Connections and findings drained in any order and any batches: each frame's notes come back in the
    order frame_notes gives for the whole report."""
    monkeypatch.setattr(annotate, "_SPOOL_BYTES", 64)
    monkeypatch.setattr(annotate, "_WINDOW_BITS", 3)
    src = corpus / name
    report = analyze(read_segments(src))
    t0 = capture_t0(src)
    whole = frame_notes(report, t0)
    conns, finds = report.connections[::-1], report.findings[::-1]   # the latest first, one of each per batch
    with (tmp_path / "spool").open("w+b") as f:
        spool = annotate._NoteSpool(f)
        for i in range(max(len(conns), len(finds))):
            spool.add(note_records(Report(conns[i:i + 1], finds[i:i + 1], report.profile, report.time_wait_s), t0))
        got = {frame: [t.decode("utf-8") for t in texts] for w in range((max(whole) >> 3) + 1)
               for frame, texts in spool.window(w).items()}
    assert got == whole


def test_many_extents_keep_each_frames_note_order_and_odd_text(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(annotate, "_SPOOL_BYTES", 80)   # batches 1 and 2 go to the file
    monkeypatch.setattr(annotate, "_WINDOW_BITS", 2)    # frames 0-3, 4-7, 8-11 ...
    texts = ["plain", "two\nlines", "back\\slash n\\n", "tab\there", "ünïcödé ✓", "a\\\nb"]
    # (frame, order, tie, text); frame 5's notes come in two batches and are put in (order, tie) order
    batches = [[(5, 2, 0, texts[0]), (5, 7, 1, texts[1]), (1, 0, 0, texts[2])],
               [(3, 0, 0, texts[3]), (5, 7, 0, texts[4])],
               [(1, 1, 0, texts[5]), (9, 0, 0, "z")]]
    with (tmp_path / "spool").open("w+b") as f:
        spool = annotate._NoteSpool(f)
        for b in batches:
            spool.add(b)
        assert len(spool.extents[1]) == 2, "frame 5's notes in two extents"
        assert spool.extents[0] and 0 in spool.pending, "frame 1's notes in the file and still buffered"
        merged = [(frame, t.decode("utf-8")) for w in range(4) for frame, ts in sorted(spool.window(w).items())
                  for t in ts]
        asked = {frame: fastcopy.option_texts(opts) for w in range(3) for frame, opts in spool.options(w).items()}
    assert merged == [(1, texts[2]), (1, texts[5]), (3, texts[3]), (5, texts[0]), (5, texts[4]), (5, texts[1]),
                      (9, "z")]
    assert {f: [t.decode("utf-8") for t in ts] for f, ts in asked.items()} == {
        1: [texts[2], texts[5]], 3: [texts[3]], 5: [texts[0], texts[4], texts[1]], 9: ["z"]}


def test_filter_annotates_only_its_connections(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "zeek__echo-connections.pcap.gz"
    out = tmp_path / "out.pcapng"
    port = next(iter(read_segments(src))).dport
    done = annotate_file(src, out, filt=SegmentFilter((port,)))
    assert done.packets == sum(1 for _ in iter_frames(src))
    commented = _comments(out)
    assert commented and done.annotated == len(commented)
    segs = {s.frame: s for s in read_segments(src)}
    assert all(port in (segs[f].sport, segs[f].dport) for f in commented)


def test_bad_capture_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.pcap"
    src.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 10)
    out = tmp_path / "out.pcapng"
    with pytest.raises(BadCapture):
        annotate_file(src, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
