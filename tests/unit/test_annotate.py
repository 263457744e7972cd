"""write_annotated against real tshark and pyshark on the corpus: comments readable, frames,
timestamps and bytes unchanged, existing comments kept, and no partial or overwritten output on error."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.analysis import verify as tshark
from lab.errors import BadCapture, LabError
from lab.pcap.annotate import PcapngWriter, write_annotated
from lab.pcap.readers import iter_frames

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (apt-get install tshark)")

SMALL = [
    "arkime__gtp-iphone.pcap",
    "arkime__tcp-reassembly-synthetic.pcap",
    "arkime__tcp_handshake_synthetic.pcap",
    "chrissanders__tcp_teardown.pcapng",
    "deepflow__handshake-error.pcap",
    "deepflow__l4-source-port-reuse.pcap",
    "deepflow__server-reset.pcap",
    "deepflow__tcp-n-syn-ack.pcap",
    "zeek__mysql__auth.pcap",
    "zeek__tcp__fin_retransmission.pcap",
    "zeek__tcp__rst-inject-rae.pcap",
    "zeek__tls__ocsp-revoked.pcap",
]
TRICKY = ["FIN M — server active close: ESTABLISHED -> FIN_WAIT_1", "a, b | c", 'quote " and tab\there',
          "two\nlines", "ünïcödé ✓"]


def _fields(path: Path, *fields: str, display_filter: str | None = None) -> list[str]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    if display_filter:
        cmd += ["-Y", display_filter]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _notes_for(n_packets: int) -> dict[int, list[str]]:
    # first, last and every 7th frame; some get several comments, one frame number is beyond the file
    notes: dict[int, list[str]] = {1: [TRICKY[0]], n_packets: [TRICKY[1], TRICKY[2]], n_packets + 5: ["nowhere"]}
    for n in range(7, n_packets, 7):
        notes[n] = [f"note for frame {n}", TRICKY[n % len(TRICKY)]]
    return notes


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_with_tshark(corpus: Path, tmp_path: Path, name: str) -> None:
    src = corpus / name
    before = _fields(src, "frame.number", "frame.time_epoch", "frame.len", "frame.cap_len", "tcp.stream", "tcp.flags")
    notes = _notes_for(len(before))
    out = tmp_path / "out.pcapng"
    assert write_annotated(src, out, notes) == len(before)

    # same frames, same timestamps (to the ns tshark prints), lengths and TCP dissection
    assert _fields(out, "frame.number", "frame.time_epoch", "frame.len", "frame.cap_len", "tcp.stream",
                   "tcp.flags") == before
    # -Y frame.comment lists exactly the annotated frames that exist
    listed = [int(x) for x in _fields(out, "frame.number", display_filter="frame.comment")]
    assert listed == sorted(n for n in notes if n <= len(before))
    # the texts, in order, several per packet, with commas, '|', quotes, tabs, newlines and UTF-8
    assert tshark.comments(out) == {n: t for n, t in notes.items() if n <= len(before)}
    # the raw bytes of each packet are unchanged
    assert [(f.data, f.ts_ns, f.orig_len) for f in iter_frames(out)] == \
        [(f.data, f.ts_ns, f.orig_len) for f in iter_frames(src)]


def test_gzip_input_and_large_file(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "zeek__echo-connections.pcap.gz"
    out = tmp_path / "echo.pcapng"
    notes = {1: ["first"], 82582: ["last"], 40000: ["middle", "second"]}
    assert write_annotated(src, out, notes) == 82582
    assert tshark.comments(out) == notes
    pick = "frame.number == 1 || frame.number == 40000 || frame.number == 82582"
    a = _fields(src, "frame.time_epoch", "tcp.stream", display_filter=pick)  # tshark reads .gz itself
    b = _fields(out, "frame.time_epoch", "tcp.stream", display_filter=pick)
    assert a == b and len(a) == 3


@pytest.mark.parametrize("name", ["chrissanders__tcp_teardown.pcapng", "zeek__tls__ocsp-revoked.pcap"])
def test_pyshark_reads_the_same_comments(corpus: Path, tmp_path: Path, name: str) -> None:
    src = corpus / name
    n = len(_fields(src, "frame.number"))
    notes = _notes_for(n)
    out = tmp_path / "out.pcapng"
    write_annotated(src, out, notes)
    expected = {k: v for k, v in notes.items() if k <= n}
    assert tshark.comments_pyshark(out) == expected
    assert tshark.comments(out) == expected


def test_existing_comments_are_kept_and_in_place_works(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "chrissanders__tcp_teardown.pcapng"
    first = tmp_path / "first.pcapng"
    write_annotated(src, first, {1: ["old one"], 3: ["old three", "old three b"]})
    second = tmp_path / "second.pcapng"
    write_annotated(first, second, {3: ["new three"], 4: ["new four"]})
    assert tshark.comments(second) == {1: ["old one"], 3: ["old three", "old three b", "new three"],
                                       4: ["new four"]}
    # dst == src: replaced atomically, comments accumulate
    write_annotated(second, second, {2: ["in place"]})
    assert tshark.comments_pyshark(second) == {1: ["old one"], 2: ["in place"],
                                               3: ["old three", "old three b", "new three"], 4: ["new four"]}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_several_interfaces_and_link_types(corpus: Path, tmp_path: Path) -> None:
    """A pcapng whose packets come from two interfaces with different link types (Ethernet, raw IP)."""
    frames = list(iter_frames(corpus / "chrissanders__tcp_teardown.pcapng"))
    mixed = tmp_path / "mixed.pcapng"
    with mixed.open("wb") as fh:
        w = PcapngWriter(fh)
        for f in frames:
            if f.frame % 2:
                w.write(f.ts_ns, f.data, f.orig_len, interface=0, linktype=1)
            else:  # strip the Ethernet header: LINKTYPE_RAW (101)
                w.write(f.ts_ns, f.data[14:], f.orig_len - 14, interface=1, linktype=101)
    out = tmp_path / "out.pcapng"
    assert write_annotated(mixed, out, {2: ["raw ip"], 3: ["ether"]}) == 4
    assert _fields(out, "frame.number", "frame.interface_id", "frame.encap_type", "tcp.flags") == \
        _fields(mixed, "frame.number", "frame.interface_id", "frame.encap_type", "tcp.flags")
    assert {line.split("\t")[1] for line in _fields(out, "frame.number", "frame.interface_id")} == {"0", "1"}
    assert tshark.comments(out) == {2: ["raw ip"], 3: ["ether"]}


# --- atomicity: bad input never leaves a partial file and never overwrites -------------------------

def _bad_inputs(corpus: Path, tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture file at all\n" * 20)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    data = (corpus / "zeek__tls__ocsp-revoked.pcap").read_bytes()
    cut_header = tmp_path / "cut-header.pcap"
    cut_header.write_bytes(data[:12])  # inside the global header
    ng = (corpus / "chrissanders__tcp_teardown.pcapng").read_bytes()
    broken_ng = tmp_path / "broken-block.pcapng"
    # corrupt the total length of the second EPB so it points past the end of the file
    i = ng.find(b"\x06\x00\x00\x00", 28 + 20 + 92)
    broken_ng.write_bytes(ng[:i + 4] + b"\xff\xff\x00\x00" + ng[i + 8:])
    return {"garbage": garbage, "empty": empty, "cut-header": cut_header, "broken-block": broken_ng,
            "missing": tmp_path / "does-not-exist.pcap"}


@pytest.mark.parametrize("kind", ["garbage", "empty", "cut-header", "broken-block", "missing"])
def test_bad_input_leaves_no_output(corpus: Path, tmp_path: Path, kind: str) -> None:
    src = _bad_inputs(corpus, tmp_path)[kind]
    outdir = tmp_path / "out"
    outdir.mkdir()
    dst = outdir / "new.pcapng"
    with pytest.raises(LabError) as err:
        write_annotated(src, dst, {1: ["x"]})
    assert isinstance(err.value, BadCapture)
    assert "\n" not in err.value.one_line()
    assert list(outdir.iterdir()) == []  # neither dst nor a temporary file


@pytest.mark.parametrize("kind", ["garbage", "broken-block"])
def test_bad_input_does_not_touch_existing_output(corpus: Path, tmp_path: Path, kind: str) -> None:
    src = _bad_inputs(corpus, tmp_path)[kind]
    dst = tmp_path / "out" / "existing.pcapng"
    dst.parent.mkdir()
    write_annotated(corpus / "chrissanders__tcp_teardown.pcapng", dst, {1: ["keep me"]})
    before = dst.read_bytes()
    with pytest.raises(BadCapture):
        write_annotated(src, dst, {1: ["x"]})
    assert dst.read_bytes() == before
    assert sorted(p.name for p in dst.parent.iterdir()) == ["existing.pcapng"]


def test_failure_in_place_keeps_source(corpus: Path, tmp_path: Path) -> None:
    src = _bad_inputs(corpus, tmp_path)["broken-block"]
    before = src.read_bytes()
    with pytest.raises(BadCapture):
        write_annotated(src, src, {1: ["x"]})
    assert src.read_bytes() == before


def test_output_to_a_directory_or_missing_folder_is_refused(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "chrissanders__tcp_teardown.pcapng"
    with pytest.raises(LabError):
        write_annotated(src, tmp_path, {})
    with pytest.raises(LabError):
        write_annotated(src, tmp_path / "no" / "such" / "dir.pcapng", {})
    assert list(tmp_path.iterdir()) == []


def test_annotating_twice_does_not_repeat_notes(corpus: Path, tmp_path: Path) -> None:
    src = corpus / "chrissanders__tcp_teardown.pcapng"
    out = tmp_path / "out.pcapng"
    notes = {1: ["FIN M", "again"], 2: ["ACK M+1"]}
    write_annotated(src, out, notes)
    write_annotated(out, out, {**notes, 2: ["ACK M+1", "new"]})
    assert tshark.comments(out) == {1: ["FIN M", "again"], 2: ["ACK M+1", "new"]}
