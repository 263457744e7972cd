"""The hot loops of `twlab annotate` (lab.pcap.annotate), written for mypyc (lab.accel.COMPILED): notes packed
into the spool's records, a window of records read back as each frame's comment options, and classic pcap
records packed into pcapng EPBs with those options. Native ints, no generators, no per-packet objects but the
bytes written. Uncompiled it gives the same bytes, slower.

A spool record is (frame, order, tie: u64, length: u32, the note as a packed opt_comment); an EPB is laid out as in
lab.pcap.writer.PcapngWriter.write.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from lab.pcap import writer
from lab.pcap.writer import fit_comment

if TYPE_CHECKING:   # a type only: mypyc compiles i64 to a C int64_t; interpreted it is never looked up
    from mypy_extensions import i64

# lab.pcap.writer's, as constants of this module (compiled: a static, not a lookup of another module's name)
_EPB: Final = writer.EPB
_EPB_HEAD: Final = writer.EPB_HEAD
_MAX_OPT: Final = writer.MAX_OPT
_PADS: Final = writer.PADS

_OPT_COMMENT: Final = 1
END_OF_OPTIONS: Final = b"\0\0\0\0"
_RECORD: Final = struct.Struct("<QQQI")   # a spool record's head: frame, order, tie, length of the opt_comment after it
_HEAD: Final = 28
_RECORD_SHORT: Final = struct.Struct("<QQQIHH")   # a record's head and the head of its opt_comment (< _SHORT bytes)
# by z: z zero bytes the last EPB still owes (its data's pad, or its end of options), its trailer, then the next
# EPB's head (lab.pcap.writer.EPB_HEAD); _TRAILERS[z]: the zeros and the trailer of the last EPB of all
_TRAILER_HEADS: Final = [struct.Struct(f"<{z}x8I").pack for z in range(5)]
_TRAILERS: Final = [struct.Struct(f"<{z}xI").pack for z in range(5)]
_SHORT: Final = 1024
_HEADS: Final = [struct.pack("<HH", _OPT_COMMENT, n) for n in range(_SHORT)]   # opt_comment heads of short notes

# why pcap_epbs stopped
NEED_MORE: Final = 0      # the next record is not complete in the buffer (or the buffer is used up)
WINDOW_END: Final = 1     # the next frame's notes are not in `options`: load the next window's
TOO_LONG: Final = 2       # the next record announces more than max_record bytes


def _u32(b: bytes, p: int) -> int:
    return b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)


def _u32be(b: bytes, p: int) -> int:
    return (b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]


def comment_option(raw: bytes) -> bytes:
    """One UTF-8 comment as a packed opt_comment (cut to what an option holds, padded to 4 bytes)."""
    if len(raw) > _MAX_OPT:
        raw = fit_comment(raw)
    n = len(raw)
    head = _HEADS[n] if n < _SHORT else struct.pack("<HH", _OPT_COMMENT, n)
    return head + raw + _PADS[-n % 4]


def add_notes(records: list[tuple[int, int, int, str]], pending: dict[int, bytearray], bits: int) -> int:
    """Each note (lab.core.narrate.note_records: frame, order, tie, text) as a spool record appended to the
    buffer of its frame's window (frame >> bits); returns the bytes added."""
    added = 0
    pack = _RECORD.pack
    pack_short = _RECORD_SHORT.pack
    pads = _PADS
    last = -1
    buf = bytearray()
    for frame, order, tie, text in records:
        w = frame >> bits
        if w != last:   # a batch's notes come by connection: mostly the same window as the one before
            got = pending.get(w)
            if got is None:
                got = bytearray()
                pending[w] = got
            buf = got
            last = w
        try:
            raw = text.encode()
        except UnicodeEncodeError:   # a lone surrogate: as "?", like the writer's
            raw = text.encode("utf-8", "replace")
        n = len(raw)
        if n >= _SHORT:
            opt = comment_option(raw)
            buf += pack(frame, order, tie, len(opt))
            buf += opt
            added += len(opt) + _HEAD
            continue
        pad = -n % 4
        # the record's head and the option's, the note, its pad: one bytes built (compiled: CPyBytes_Build, one
        # allocation, no generic +=) appended once
        buf += b"%b%b%b" % (pack_short(frame, order, tie, 4 + n + pad, _OPT_COMMENT, n), raw, pads[pad])
        added += _HEAD + 4 + n + pad
    return added


def window_options(chunks: list[bytes]) -> dict[int, bytes]:
    """Spool records (chunks in the order they were written) as {frame: its opt_comments} (without the end of
    options), a frame's notes sorted by (order, tie)."""
    out: dict[int, bytes] = {}
    several: set[int] = set()     # frames with more than one note (few): put in order by a second scan
    for data in chunks:
        pos = 0
        size = len(data)
        while pos < size:
            n = _u32(data, pos + 24)
            opt = data[pos + _HEAD:pos + _HEAD + n]
            frame = _u64(data, pos)
            if out.setdefault(frame, opt) is not opt:
                several.add(frame)
            pos += _HEAD + n
    if several:
        first = min(several)
        flags = [False] * (max(several) - first + 1)
        for frame in several:
            flags[frame - first] = True
        for i, opts in _in_order(chunks, first, flags).items():
            out[first + i] = opts
    return out


def window_table(chunks: list[bytes], base: int, size: int) -> list[bytes | None]:
    """window_options as a list indexed by frame - base (by_offset's), built without the dict: the window's
    frames are base .. base + size - 1."""
    table: list[bytes | None] = [None] * size
    several: list[bool] = []      # by frame - base: more than one note (made at the first such frame)
    for data in chunks:
        pos = 0
        end = len(data)
        while pos < end:
            n = _u32(data, pos + 24)
            i = _u64(data, pos) - base
            if table[i] is None:
                table[i] = data[pos + _HEAD:pos + _HEAD + n]
            else:
                if not several:
                    several = [False] * size
                several[i] = True
            pos += _HEAD + n
    if several:
        for i, opts in _in_order(chunks, base, several).items():
            table[i] = opts
    return table


def _in_order(chunks: list[bytes], base: int, several: list[bool]) -> dict[int, bytes]:
    """The opt_comments of the frames flagged in `several` (by frame - base), each frame's sorted by (order,
    tie), by frame - base. A flag read by native index: no boxed frame looked up in a set per record."""
    # (order, tie, n, opt), n: the record's place in the window; sorted as tuples (no key function called
    # per note), n keeps notes of equal (order, tie) in the order written and is never passed
    notes: dict[int, list[tuple[int, int, int, bytes]]] = {}
    seq = 0
    size = len(several)
    for data in chunks:
        pos = 0
        end = len(data)
        while pos < end:
            n = _u32(data, pos + 24)
            i = _u64(data, pos) - base
            if 0 <= i < size and several[i]:
                got = notes.get(i)
                if got is None:
                    got = []
                    notes[i] = got
                got.append((_u64(data, pos + 8), _u64(data, pos + 16), seq, data[pos + _HEAD:pos + _HEAD + n]))
            seq += 1
            pos += _HEAD + n
    out: dict[int, bytes] = {}
    for i, these in notes.items():
        these.sort()
        out[i] = b"".join([opt for _o, _t, _n, opt in these])
    return out


def _u64(b: bytes, p: int) -> int:
    return _u32(b, p) | (_u32(b, p + 4) << 32)


def window_notes(chunks: list[bytes]) -> dict[int, list[bytes]]:
    """Spool records as {frame: [UTF-8 text, ...]}, a frame's notes sorted by (order, tie) (the comments as the
    EPB carries them: a note longer than an option holds is cut)."""
    return {frame: option_texts(opts) for frame, opts in window_options(chunks).items()}


def option_texts(opts: bytes) -> list[bytes]:
    """The comments of packed opt_comments (window_options' values)."""
    texts: list[bytes] = []
    pos = 0
    while pos < len(opts):
        n = opts[pos + 2] | (opts[pos + 3] << 8)
        texts.append(opts[pos + 4:pos + 4 + n])
        pos += 4 + n + (-n % 4)
    return texts


def by_offset(options: dict[int, bytes], base: int, size: int) -> list[bytes | None]:
    """A window's options (window_options) as a list indexed by frame - base: pcap_epbs looks a frame up by a
    native index, no boxed key."""
    table: list[bytes | None] = [None] * size
    for frame, opts in options.items():
        table[frame - base] = opts
    return table


def trailer(owed: int) -> bytes:
    """What the last EPB pcap_epbs packed still owes (its `owed`, not 0): zeros and its trailer."""
    return _TRAILERS[owed >> 32](owed & 0xFFFFFFFF)


def pcap_epbs(buf: bytes, pos: int, frame: int, big: bool, mul: int, idx: int, max_record: int,
              options: list[bytes | None], base: int, stop: int, out: bytearray,
              owed: int) -> tuple[int, int, int, int, int]:
    """The complete classic-pcap records of `buf` from `pos` as EPBs (interface `idx`, `mul`: ns per unit of
    the record's fraction) appended to `out`, with options[frame] as their options; frames numbered on from
    `frame` (the last one packed); options[frame - base] (by_offset, window_table) are frame's notes, None for
    none. Stops before frame `stop` (the first one past the window of `options`), a record not complete in buf,
    or a record longer than max_record: (why, pos, frame, frames annotated, owed). options[frame] are the
    frame's opt_comments (window_options): the end of options is added here.

    An EPB's end (the zeros of its data's pad, or of its end of options, then its trailer: its total length) is
    packed with the next EPB's head, one struct call per packet: the last EPB's is left to the caller as `owed`
    (the total | the zeros << 32), to give to the next call (0: nothing owed) or to write at the end (trailer)."""
    unit: i64 = mul
    head = _EPB_HEAD.pack
    trailer_and_head = _TRAILER_HEADS
    pads = _PADS
    blen = len(buf)
    annotated = 0
    while True:
        if frame + 1 >= stop:
            return WINDOW_END, pos, frame, annotated, owed
        if pos + 16 > blen:
            return NEED_MORE, pos, frame, annotated, owed
        if big:
            incl = _u32be(buf, pos + 8)
        else:   # _u32, written out: the hot path of the copy
            incl = buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (buf[pos + 11] << 24)
        if incl > max_record:
            return TOO_LONG, pos, frame, annotated, owed
        start = pos + 16
        end = start + incl
        if end > blen:
            return NEED_MORE, pos, frame, annotated, owed
        frame += 1
        # seconds and fraction as i64: a tagged int's product takes the boxed slow path once a factor is past 2**30
        # (here always: 1e9 itself); < 2**32 s * 1e9 + 2**32 * 1000 fits an i64
        sec: i64
        frac: i64
        if big:
            orig = _u32be(buf, pos + 12)
            sec = _u32be(buf, pos)
            frac = _u32be(buf, pos + 4)
        else:
            orig = buf[pos + 12] | (buf[pos + 13] << 8) | (buf[pos + 14] << 16) | (buf[pos + 15] << 24)
            sec = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)
            frac = buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (buf[pos + 7] << 24)
        ts_ns: i64 = sec * 1_000_000_000 + frac * unit
        pad = -incl % 4
        opts = options[frame - base]
        total = 32 + incl + pad
        if opts is not None:
            total += len(opts) + 4
            annotated += 1
        if owed:
            epb = trailer_and_head[owed >> 32](owed & 0xFFFFFFFF, _EPB, total, idx, (ts_ns >> 32) & 0xFFFFFFFF,
                                               ts_ns & 0xFFFFFFFF, incl, orig if orig > incl else incl)
        else:
            epb = head(_EPB, total, idx, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF, incl,
                       orig if orig > incl else incl)
        # the EPB's parts as one bytes (compiled: CPyBytes_Build, all of them exact bytes), appended once
        if opts is None:
            out += b"%b%b" % (epb, buf[start:end])
            owed = total | (pad << 32)
        else:
            out += b"%b%b%b%b" % (epb, buf[start:end], pads[pad], opts)
            owed = total | (len(END_OF_OPTIONS) << 32)   # the end of options: zeros, packed with the trailer
        pos = end
