"""Capture stage, step 2: a frame -> a TCP segment or a UDP datagram.

Link types: Ethernet (with 802.1Q / 802.1ad / QinQ tags), Linux cooked SLL and SLL2,
raw IP (DLT_RAW 12/14/101, IPv4 228, IPv6 229), BSD loopback NULL (host byte order) and
LOOP (network byte order). IPv4 fragments are reassembled within bounds (params); IPv6
extension headers are skipped and IPv6 fragments reassembled the same way.

The output is a tuple, not an object, because this runs once per packet:
    (protocol, key, seq, ack, flags, payload, length)
`key` is the flow key as bytes: source address, destination address, source port,
destination port (12 bytes for IPv4, 36 for IPv6). `length` is the payload's true length
from the IP header; `payload` can be shorter when the snap length cut the frame.
For UDP, seq/ack/flags are 0. An ICMP or ICMPv6 port unreachable that quotes a UDP
datagram is protocol REFUSED, with the key of the datagram it refuses (the port was
closed), no payload. Everything unusable is counted in `DecodeCounts`.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from scriptgen.params import CaptureParams

__all__ = ["Decoder", "DecodeCounts", "Packet", "REFUSED", "TCP", "UDP", "SUPPORTED_LINKTYPES"]

TCP, UDP = 6, 17
REFUSED = -1  # not an IP protocol number: a UDP datagram refused by ICMP (port unreachable)
_ICMP, _ICMP6 = 1, 58
Packet = tuple[int, bytes, int, int, int, bytes, int]

_ETHERNET, _NULL, _LOOP, _SLL, _SLL2 = 1, 0, 108, 113, 276
_RAW = (12, 14, 101)
_RAW4, _RAW6 = 228, 229
SUPPORTED_LINKTYPES = frozenset({_ETHERNET, _NULL, _LOOP, _SLL, _SLL2, *_RAW, _RAW4, _RAW6})
_VLAN_TYPES = frozenset({0x8100, 0x88A8, 0x9100})
_IPV4, _IPV6 = 0x0800, 0x86DD
_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, OpenBSD/NetBSD, FreeBSD, macOS
_V6_SKIPPED = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_V6_FRAGMENT, _V6_AH = 44, 51

_u16 = struct.Struct("!H").unpack_from
_tcp_head = struct.Struct("!II").unpack_from
_null_le = struct.Struct("<I").unpack_from
_null_be = struct.Struct(">I").unpack_from


@dataclass
class DecodeCounts:
    """What the decoder could not use, by reason. Reported by `scriptgen sessions`."""

    unsupported_linktypes: Counter[int] = field(default_factory=Counter)
    non_ip: int = 0
    other_protocols: int = 0
    malformed: int = 0
    snapped: int = 0  # frames cut short by the snap length (payload recorded with a gap)
    fragments_reassembled: int = 0
    fragments_dropped: int = 0


class _FragmentGroup:
    __slots__ = ("first_seen", "pieces", "total", "held")

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.pieces: dict[int, bytes] = {}
        self.total = -1  # payload length, known once the last fragment arrives
        self.held = 0  # bytes held, duplicates included: bounded by 2 x 64 KiB


class Decoder:
    """Decodes frames into packets; keeps the IP fragment reassembly state."""

    def __init__(self, params: CaptureParams) -> None:
        self.params = params
        self.counts = DecodeCounts()
        self._fragments: dict[tuple[bytes, int], _FragmentGroup] = {}

    def decode(self, ts: float, linktype: int, buf: bytes, off: int, n: int) -> Packet | None:
        end = off + n
        if linktype == _ETHERNET:
            if n < 14:
                self.counts.malformed += 1
                return None
            ethertype = (buf[off + 12] << 8) | buf[off + 13]
            p = off + 14
            while ethertype in _VLAN_TYPES:
                if p + 4 > end:
                    self.counts.malformed += 1
                    return None
                ethertype = (buf[p + 2] << 8) | buf[p + 3]
                p += 4
        elif linktype == _SLL:
            if n < 16:
                self.counts.malformed += 1
                return None
            ethertype, p = (buf[off + 14] << 8) | buf[off + 15], off + 16
        elif linktype == _SLL2:
            if n < 20:
                self.counts.malformed += 1
                return None
            ethertype, p = (buf[off] << 8) | buf[off + 1], off + 20
        elif linktype == _NULL or linktype == _LOOP:
            if n < 4:
                self.counts.malformed += 1
                return None
            if linktype == _LOOP:
                (family,) = _null_be(buf, off)
            else:  # written in the capturing host's byte order, which the file does not say
                (family,) = _null_le(buf, off)
                if family > 0xFFFF:
                    (family,) = _null_be(buf, off)
            ethertype = _IPV4 if family == 2 else _IPV6 if family in _AF_INET6 else -1
            p = off + 4
        elif linktype in _RAW:
            version = buf[off] >> 4 if n else 0
            ethertype = _IPV4 if version == 4 else _IPV6 if version == 6 else -1
            p = off
        elif linktype == _RAW4:
            ethertype, p = _IPV4, off
        elif linktype == _RAW6:
            ethertype, p = _IPV6, off
        else:
            self.counts.unsupported_linktypes[linktype] += 1
            return None
        if ethertype == _IPV4:
            return self._ipv4(ts, buf, p, end)
        if ethertype == _IPV6:
            return self._ipv6(ts, buf, p, end)
        self.counts.non_ip += 1
        return None

    def _ipv4(self, ts: float, buf: bytes, p: int, end: int) -> Packet | None:
        if end - p < 20 or buf[p] >> 4 != 4:
            self.counts.malformed += 1
            return None
        ihl = (buf[p] & 15) * 4
        (total,) = _u16(buf, p + 2)
        if ihl < 20 or total < ihl:
            self.counts.malformed += 1
            return None
        true_end = p + total  # Ethernet pads short frames: the IP length says where data ends
        (frag,) = _u16(buf, p + 6)
        proto = buf[p + 9]
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            if true_end > end:
                self.counts.fragments_dropped += 1
                return None
            ident = (buf[p + 4] << 8) | buf[p + 5]
            datagram = self._defragment(
                ts, buf[p + 12 : p + 20] + bytes([proto]), ident,
                (frag & 0x1FFF) * 8, bool(frag & 0x2000), buf[p + ihl : true_end],
            )
            if datagram is None:
                return None
            return self._transport(proto, buf[p + 12 : p + 20], datagram, 0, len(datagram), len(datagram))
        return self._transport(proto, buf[p + 12 : p + 20], buf, p + ihl, min(true_end, end), true_end - p - ihl)

    def _ipv6(self, ts: float, buf: bytes, p: int, end: int) -> Packet | None:
        if end - p < 40 or buf[p] >> 4 != 6:
            self.counts.malformed += 1
            return None
        (plen,) = _u16(buf, p + 4)
        addresses = buf[p + 8 : p + 40]
        proto = buf[p + 6]
        q = p + 40
        true_end = q + plen if plen else end  # 0 = jumbogram: the frame says
        frag_offset, frag_more, frag_id = 0, False, -1
        while proto in _V6_SKIPPED or proto == _V6_FRAGMENT or proto == _V6_AH:
            if q + 8 > end:
                self.counts.malformed += 1
                return None
            nxt = buf[q]
            if proto == _V6_FRAGMENT:
                (field_,) = _u16(buf, q + 2)
                frag_offset, frag_more = field_ & 0xFFF8, bool(field_ & 1)
                frag_id = struct.unpack_from("!I", buf, q + 4)[0]
                q += 8
            elif proto == _V6_AH:
                q += (buf[q + 1] + 2) * 4
            else:
                q += (buf[q + 1] + 1) * 8
            proto = nxt
        if q > true_end:
            self.counts.malformed += 1
            return None
        if frag_id >= 0 and (frag_offset or frag_more):
            if true_end > end:
                self.counts.fragments_dropped += 1
                return None
            datagram = self._defragment(
                ts, addresses + bytes([proto]), frag_id, frag_offset, frag_more, buf[q:true_end]
            )
            if datagram is None:
                return None
            return self._transport(proto, addresses, datagram, 0, len(datagram), len(datagram))
        return self._transport(proto, addresses, buf, q, min(true_end, end), true_end - q)

    def _transport(
        self, proto: int, addresses: bytes, buf: bytes, q: int, end: int, length: int
    ) -> Packet | None:
        """`end` bounds what was captured; `length` is the transport segment's true size."""
        if proto == TCP:
            if end - q < 20:
                self.counts.malformed += 1
                return None
            doff = (buf[q + 12] >> 4) * 4
            if doff < 20 or doff > length:
                self.counts.malformed += 1
                return None
            seq, ack = _tcp_head(buf, q + 4)
            payload = buf[q + doff : end] if end > q + doff else b""
            size = length - doff
            if len(payload) < size:
                self.counts.snapped += 1
            return TCP, addresses + buf[q : q + 4], seq, ack, buf[q + 13], payload, size
        if proto == UDP:
            if end - q < 8:
                self.counts.malformed += 1
                return None
            (ulen,) = _u16(buf, q + 4)
            size = min(ulen, length) - 8 if ulen >= 8 else length - 8
            payload = buf[q + 8 : min(end, q + 8 + size)]
            if len(payload) < size:
                self.counts.snapped += 1
            return UDP, addresses + buf[q : q + 4], 0, 0, 0, payload, size
        refused = self._refused(proto, buf, q, end)
        if refused is not None:
            return REFUSED, refused, 0, 0, 0, b"", 0
        self.counts.other_protocols += 1
        return None

    @staticmethod
    def _refused(proto: int, buf: bytes, q: int, end: int) -> bytes | None:
        """The flow key of the UDP datagram an ICMP (type 3, code 3) or ICMPv6 (type 1,
        code 4) port unreachable quotes: its addresses and ports, as it was sent."""
        if end - q < 8:
            return None
        if proto == _ICMP and buf[q] == 3 and buf[q + 1] == 3:
            r = q + 8
            if end - r < 20 or buf[r] >> 4 != 4 or buf[r + 9] != UDP or buf[r] & 15 < 5:
                return None
            u = r + (buf[r] & 15) * 4
            return buf[r + 12 : r + 20] + buf[u : u + 4] if end - u >= 4 else None
        if proto == _ICMP6 and buf[q] == 1 and buf[q + 1] == 4:
            r = q + 8
            if end - r < 44 or buf[r] >> 4 != 6 or buf[r + 6] != UDP:  # extension headers: not followed
                return None
            return buf[r + 8 : r + 40] + buf[r + 40 : r + 44]
        return None

    def _defragment(
        self, ts: float, header: bytes, ident: int, offset: int, more: bool, piece: bytes
    ) -> bytes | None:
        """Collect a fragment; return the whole payload once every piece is in.

        Bounded: at most `max_fragment_groups` datagrams in progress, each at most 64 KiB,
        dropped after `fragment_timeout` seconds. Overlaps: the first copy of a byte wins.
        """
        params = self.params
        key = (header, ident)
        group = self._fragments.get(key)
        if group is None:
            self._expire_fragments(ts)
            while len(self._fragments) >= params.max_fragment_groups:
                del self._fragments[next(iter(self._fragments))]
                self.counts.fragments_dropped += 1
            group = self._fragments[key] = _FragmentGroup(ts)
        group.held += len(piece)
        if offset + len(piece) > 65535 or group.held > 2 * 65535:
            del self._fragments[key]
            self.counts.fragments_dropped += 1
            return None
        if not more:
            group.total = offset + len(piece)
        group.pieces.setdefault(offset, piece)
        if group.total < 0:
            return None
        covered = 0
        for start in sorted(group.pieces):
            if start > covered:
                return None  # a hole: wait for the missing piece
            covered = max(covered, start + len(group.pieces[start]))
        if covered < group.total:
            return None
        out = bytearray(group.total)
        for start, chunk in reversed(group.pieces.items()):  # earlier arrivals overwrite later
            out[start : start + len(chunk)] = chunk[: max(0, group.total - start)]
        del self._fragments[key]
        self.counts.fragments_reassembled += 1
        return bytes(out[: group.total])

    def _expire_fragments(self, ts: float) -> None:
        limit = ts - self.params.fragment_timeout
        while self._fragments:
            key = next(iter(self._fragments))
            if self._fragments[key].first_seen >= limit:
                break
            del self._fragments[key]
            self.counts.fragments_dropped += 1
