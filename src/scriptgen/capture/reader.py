"""Capture stage, step 1: a capture file -> records (timestamp, link type, frame bytes).

Reads classic pcap (either byte order, micro- or nanosecond timestamps) and pcapng
(SHB/IDB/EPB/SPB and the obsolete Packet Block; several sections and interfaces with
different link types; unknown blocks skipped). The file is read in chunks: memory does
not grow with the capture's size. Frames are not copied: each record is yielded as the
chunk buffer plus an offset and a length, and only the decoder slices out what it keeps.

Damage inside the file (a record running past the end, an absurd length) stops reading:
it is stored in `stats.damage` with the byte offset, and what was read before stays valid.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from scriptgen.errors import CaptureFormatError, CaptureOpenError, CaptureTruncatedError
from scriptgen.params import CaptureParams

__all__ = ["Record", "read_records", "CaptureDamage"]

# (timestamp in seconds, link type, buffer, offset of the frame in the buffer, captured length)
Record = tuple[float, int, bytes, int, int]

_CHUNK = 1 << 20
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BOM = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14


class CaptureDamage(Exception):
    """Internal: raised by the chunk buffer when the file ends inside a record."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class _Chunks:
    """A sliding window over a file: `need(n)` makes n bytes available at `pos`."""

    __slots__ = ("file", "buf", "pos", "base")

    def __init__(self, file: BinaryIO, first: bytes) -> None:
        self.file = file
        self.buf = first
        self.pos = 0
        self.base = 0  # file offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def need(self, n: int) -> bool:
        """True if n bytes are available at pos; False at a clean end of file (nothing
        left); raises CaptureDamage if the file ends after some but not all of them."""
        if len(self.buf) - self.pos >= n:
            return True
        self.base += self.pos
        self.buf = self.buf[self.pos :] + self.file.read(max(_CHUNK, n))
        self.pos = 0
        if len(self.buf) >= n:
            return True
        if not self.buf:
            return False
        raise CaptureDamage(self.base, f"file ends inside a record ({len(self.buf)} of {n} bytes)")


def read_records(path: str, params: CaptureParams, damage: list[CaptureTruncatedError]) -> Iterator[Record]:
    """Yield every frame of the capture at `path`.

    Raises CaptureOpenError / CaptureFormatError before the first record if the file
    cannot be read as a capture. Damage later in the file ends the iteration and is
    appended to `damage` (the records before it have been yielded).
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise CaptureOpenError(path, 0, exc.strerror or str(exc)) from None
    try:
        if os.path.isdir(path):
            raise CaptureOpenError(path, 0, "is a directory")
        head = file.read(_CHUNK)
        if not head:
            raise CaptureOpenError(path, 0, "empty file")
        chunks = _Chunks(file, head)
        try:
            if head[:4] in _PCAP_MAGICS:
                yield from _pcap(path, chunks, params)
            elif head[:4] == _PCAPNG_SHB:
                yield from _pcapng(path, chunks, params)
            else:
                raise CaptureFormatError(
                    path, 0, f"not a pcap or pcapng file (starts with {head[:4].hex()})"
                )
        except CaptureDamage as exc:
            damage.append(CaptureTruncatedError(path, exc.offset, exc.reason))
    except OSError as exc:
        raise CaptureOpenError(path, 0, exc.strerror or str(exc)) from None
    finally:
        file.close()


def _pcap(path: str, chunks: _Chunks, params: CaptureParams) -> Iterator[Record]:
    endian, units = _PCAP_MAGICS[chunks.buf[:4]]
    try:
        complete = chunks.need(24)
    except CaptureDamage:
        complete = False
    if not complete:
        raise CaptureFormatError(path, 0, "pcap header is truncated")
    (linktype,) = struct.unpack_from(endian + "I", chunks.buf, 20)
    linktype &= 0x0FFFFFFF  # the top bits carry FCS information, not the link type
    chunks.pos = 24
    header = struct.Struct(endian + "IIII").unpack_from
    limit = params.max_record_bytes
    while chunks.need(16):
        sec, frac, caplen, _origlen = header(chunks.buf, chunks.pos)
        if caplen > limit:
            raise CaptureDamage(chunks.offset, f"record claims {caplen} captured bytes")
        if not chunks.need(16 + caplen):
            raise CaptureDamage(chunks.offset, "file ends inside a record")
        pos = chunks.pos
        yield sec + frac / units, linktype, chunks.buf, pos + 16, caplen
        chunks.pos = pos + 16 + caplen


class _Interface:
    __slots__ = ("linktype", "snaplen", "units", "offset")

    def __init__(self, linktype: int, snaplen: int, units: int, offset: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.units = units  # timestamp ticks per second
        self.offset = offset  # seconds added to every timestamp


def _pcapng(path: str, chunks: _Chunks, params: CaptureParams) -> Iterator[Record]:
    endian = "<"
    interfaces: list[_Interface] = []
    limit = params.max_record_bytes + 64
    last_ts = 0.0
    first = True
    while chunks.need(12):
        start = chunks.offset
        buf, pos = chunks.buf, chunks.pos
        if buf[pos : pos + 4] == _PCAPNG_SHB:
            # A section header fixes the byte order of everything up to the next one.
            if buf[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif buf[pos + 8 : pos + 12] == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                if first:
                    raise CaptureFormatError(path, start, "pcapng section header has no byte-order magic")
                raise CaptureDamage(start, "pcapng section header has no byte-order magic")
            interfaces = []
        btype, blen = struct.unpack_from(endian + "II", buf, pos)
        if blen < 12 or blen % 4 or blen > max(limit, 1 << 24):
            if first:
                raise CaptureFormatError(path, start, f"pcapng block length {blen} is invalid")
            raise CaptureDamage(start, f"pcapng block length {blen} is invalid")
        if not chunks.need(blen):
            raise CaptureDamage(start, "file ends inside a block")
        buf, pos = chunks.buf, chunks.pos
        first = False
        body, end = pos + 8, pos + blen - 4
        if btype == _EPB or btype == _PB:
            if btype == _EPB:
                if end - body < 20:
                    raise CaptureDamage(start, "enhanced packet block is too short")
                iface_id, hi, lo, caplen, _orig = struct.unpack_from(endian + "IIIII", buf, body)
            else:
                if end - body < 20:
                    raise CaptureDamage(start, "packet block is too short")
                iface_id, _drops, hi, lo, caplen, _orig = struct.unpack_from(endian + "HHIIII", buf, body)
            data = body + 20
            if iface_id >= len(interfaces):
                raise CaptureDamage(start, f"packet names interface {iface_id}, which was never described")
            if data + caplen > end:
                raise CaptureDamage(start, f"packet claims {caplen} bytes, more than its block holds")
            iface = interfaces[iface_id]
            last_ts = ((hi << 32) | lo) / iface.units + iface.offset
            yield last_ts, iface.linktype, buf, data, caplen
        elif btype == _SPB:
            if not interfaces:
                raise CaptureDamage(start, "simple packet block before any interface description")
            (orig,) = struct.unpack_from(endian + "I", buf, body)
            caplen = min(orig, end - body - 4)
            if interfaces[0].snaplen:
                caplen = min(caplen, interfaces[0].snaplen)
            # A simple packet block has no timestamp: it inherits the last one seen.
            yield last_ts, interfaces[0].linktype, buf, body + 4, caplen
        elif btype == _IDB:
            if end - body < 8:
                raise CaptureDamage(start, "interface description block is too short")
            linktype, _reserved, snaplen = struct.unpack_from(endian + "HHI", buf, body)
            units, offset = _interface_options(buf, body + 8, end, endian)
            interfaces.append(_Interface(linktype, snaplen, units, offset))
        chunks.pos = pos + blen


def _interface_options(buf: bytes, pos: int, end: int, endian: str) -> tuple[int, int]:
    """if_tsresol and if_tsoffset from an IDB's options (defaults: microseconds, 0)."""
    units, offset = 1_000_000, 0
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        value = pos + 4
        if code == 0 or value + length > end:
            break
        if code == _OPT_TSRESOL and length >= 1:
            res = buf[value]
            exponent = min(res & 0x7F, 63)
            units = (2 if res & 0x80 else 10) ** exponent
        elif code == _OPT_TSOFFSET and length >= 8:
            (offset,) = struct.unpack_from(endian + "q", buf, value)
        pos = value + ((length + 3) & ~3)
    return max(units, 1), offset
