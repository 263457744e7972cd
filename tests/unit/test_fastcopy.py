"""The copy pass of annotate (lab.pcap.fastcopy, compiled when the accelerator is built): a classic pcap packed
straight into EPBs gives the same bytes as the frame-by-frame writer (lab.pcap.writer.PcapngWriter) for both
byte orders, micro- and nanosecond files, every padding, captured < original lengths and notes across window
ends; a capture cut short or with an absurd length fails with the reader's own error."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lab.errors import BadCapture
from lab.pcap import annotate, fastcopy
from lab.pcap.readers import iter_frames
from lab.pcap.writer import MAX_OPT, PcapngWriter

_MAGIC = {False: 0xA1B2C3D4, True: 0xA1B23C4D}   # microsecond, nanosecond


def _pcap(path: Path, big: bool, ns: bool, records: list[tuple[int, int, bytes, int]], linktype: int = 1) -> Path:
    """(sec, frac, data, orig_len) records as a classic pcap in the given byte order and resolution."""
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", _MAGIC[ns], 2, 4, 0, 0, 65535, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(e + "IIII", sec, frac, len(data), orig) + data)
    path.write_bytes(b"".join(out))
    return path


def _records(n: int) -> list[tuple[int, int, bytes, int]]:
    # every length mod 4 (padding 0..3), empty packets, and captured lengths below the original
    return [(1_700_000_000 + i, (i * 7919) % 1_000_000, bytes(range(i % 11)) * (i % 5), (i % 11) * (i % 5) + i % 3)
            for i in range(n)]


def _by_frames(src: Path, dst: Path, notes: dict[int, list[str]]) -> None:
    """The reference: PcapngWriter.write per frame, as write_annotated does for any format."""
    with dst.open("wb") as out:
        w = PcapngWriter(out)
        for fr in iter_frames(src):
            w.write(fr.ts_ns, fr.data, fr.orig_len, notes.get(fr.frame, ()), interface=fr.interface,
                    linktype=fr.linktype)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("ns", [False, True])
def test_pcap_records_as_epbs_equal_the_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: bool,
                                                ns: bool) -> None:
    monkeypatch.setattr(annotate, "_WINDOW_BITS", 3)   # notes of 8 frames at a time: many window ends
    monkeypatch.setattr(annotate, "_READ", 100)       # records cut by the read size again and again
    src = _pcap(tmp_path / "in.pcap", big, ns, _records(60))
    notes = {1: ["first"], 7: ["a", "two\nlines"], 8: ["ünïcödé ✓"], 9: ["x" * 5], 60: ["last"],
             33: ["é" * (MAX_OPT // 2 + 10)]}   # longer than an option holds: cut at a character boundary
    want, got = tmp_path / "want.pcapng", tmp_path / "got.pcapng"
    _by_frames(src, want, notes)
    assert annotate.write_annotated(src, got, notes) == 60
    assert got.read_bytes() == want.read_bytes()


def test_the_hot_loop_is_used_for_a_classic_pcap(tmp_path: Path) -> None:
    src = _pcap(tmp_path / "in.pcap", False, True, _records(5))
    with (tmp_path / "out.pcapng").open("wb") as out:
        assert annotate._copy_pcap(src, PcapngWriter(out), out, lambda w: {2: fastcopy.comment_option(b"n")}) \
            == (5, 1)


@pytest.mark.parametrize("cut", [3, 17, 40])   # inside a record head, inside a body, a body's last byte
def test_a_capture_cut_short_fails_as_the_reader_does(tmp_path: Path, cut: int) -> None:
    whole = _pcap(tmp_path / "whole.pcap", False, False, [(1, 2, b"abcdefgh" * 4, 32)] * 3).read_bytes()
    src = tmp_path / "cut.pcap"
    src.write_bytes(whole[:24 + 48 + cut])
    with pytest.raises(BadCapture) as reader:
        list(iter_frames(src))
    out = tmp_path / "out.pcapng"
    with pytest.raises(BadCapture) as copy:
        annotate.write_annotated(src, out, {1: ["note"]})
    assert str(copy.value) == str(reader.value) and "frame 2" in str(copy.value)
    assert not out.exists()


def test_an_absurd_length_fails_as_the_reader_does(tmp_path: Path) -> None:
    src = tmp_path / "absurd.pcap"
    src.write_bytes(_pcap(tmp_path / "ok.pcap", True, False, [(1, 2, b"ab", 2)]).read_bytes()
                    + struct.pack(">IIII", 1, 2, 0x7FFFFFFF, 10) + b"xx")
    with pytest.raises(BadCapture) as reader:
        list(iter_frames(src))
    with pytest.raises(BadCapture) as copy:
        annotate.write_annotated(src, tmp_path / "out.pcapng", {})
    assert str(copy.value) == str(reader.value) and "absurd" in str(copy.value)


def test_spool_records_read_back_as_their_options(tmp_path: Path) -> None:
    pending: dict[int, bytearray] = {}
    records = [(3, 5, 0, "b"), (3, 1, 0, "a"), (9, 0, 0, "c"), (3, 5, 1, "bb")]
    fastcopy.add_notes(records, pending, 3)
    assert sorted(pending) == [0, 1]
    opts = fastcopy.window_options([bytes(pending[0])])
    assert opts == {3: b"".join(fastcopy.comment_option(t.encode()) for t in ("a", "b", "bb"))}
    assert fastcopy.window_notes([bytes(pending[1])]) == {9: [b"c"]}


def test_window_table_is_the_window_options_by_frame_offset() -> None:
    """The copy's table of a window (fastcopy.window_table) holds what window_options gives, by frame - base,
    a frame's several notes in (order, tie) order and notes of equal (order, tie) in the order written."""
    pending: dict[int, bytearray] = {}
    records = [(10, 5, 0, "b"), (9, 0, 0, "c"), (10, 1, 0, "a"), (10, 5, 0, "b2"), (15, 2, 0, "x" * 2000),
               (10, 1, 1, "a2")]
    fastcopy.add_notes(records, pending, 3)
    chunks = [bytes(pending[1])[:0], bytes(pending[1])]
    table = fastcopy.window_table(chunks, 8, 8)
    assert table == fastcopy.by_offset(fastcopy.window_options(chunks), 8, 8)
    assert fastcopy.option_texts(table[2] or b"") == [b"a", b"a2", b"b", b"b2"]
    assert table[0] is None and table[1] == fastcopy.comment_option(b"c") and table[7] is not None
