"""Serve stage: recordings, served sessions written as classic pcap files (docs/record.md).

Two layers, after h11's split between the protocol and the I/O:

- `SessionFramer` (sans I/O): the events of one session in (`open`, `client_bytes`,
  `server_bytes`, `close`, each with the time it happened), `Frame`s out: (time,
  Ethernet frame). TCP gets real framing: a SYN, SYN-ACK, ACK handshake announcing the
  MSS, data cut into segments of at most the MSS with sequence and acknowledgement
  numbers that advance with it, PSH on the last segment of each write, an ACK from the
  receiver at least every second segment (RFC 1122 4.2.3.2) and after each write, and
  FIN, FIN, ACK (or one RST) at the close. UDP: one datagram per message. Checksums
  (IPv4 header, TCP, UDP) are computed, so readers that check them find nothing wrong.
  Frames are produced lazily: a long message is never held twice in memory.
- `Recorder`: many sessions into files in a directory, each packet written as it happens
  (concurrent sessions interleave in one file, as on a wire). A new file is begun when
  the next packet would take the current one past `RecordParams.rotate_bytes`, or once
  `rotate_seconds` have passed since its first packet. Files are created new (O_EXCL,
  O_NOFOLLOW, relative to a descriptor of the directory, mode 0640) and only ever hold
  whole records: a record is never split over two files, and a failed write is cut back.

Inputs: times as values (no clock is read here), addresses as (ip, port). Output: files
that `scriptgen learn DIR` and Wireshark read. Imports: scriptgen.errors, scriptgen.model,
scriptgen.params, scriptgen.serve.logdir, the standard library.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator

from scriptgen.errors import ServeError
from scriptgen.model import Sender, Transport
from scriptgen.params import RecordParams
from scriptgen.serve.logdir import check_log_dir, create_file, open_dir

__all__ = ["Frame", "SessionFramer", "Recorder", "RecordedSession", "pcap_header", "pcap_record", "LINKTYPE_ETHERNET"]

Frame = tuple[float, bytes]
"""(time in seconds since the epoch, an Ethernet frame)."""

LINKTYPE_ETHERNET = 1
_SNAPLEN = 262144  # libpcap's maximum: every frame written here fits whole
_MAC_CLIENT = bytes.fromhex("020000000001")  # locally administered addresses: made up
_MAC_SERVER = bytes.fromhex("020000000002")
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = b"\x08\x00", b"\x86\xdd"
_TCP, _UDP = 6, 17
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_WINDOW = 65535
_TTL = 64
_MASK = 0xFFFFFFFF
_ACK_EVERY = 2  # segments a receiver takes before it must acknowledge (RFC 1122 4.2.3.2)
_BATCH = 1 << 16  # bytes of records gathered into one write(2)
_UDP_MAX = {4: 65535 - 20 - 8, 6: 65535 - 8}  # the largest payload an IP length field allows
_TCP_HEAD = struct.Struct("!HHIIBBHHH")
_RECORD_HEAD = struct.Struct("<IIII")


def pcap_header() -> bytes:
    """The 24-byte header of a classic pcap file: little-endian, microseconds, Ethernet."""
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_ETHERNET)


def pcap_record(frame: Frame) -> bytes:
    """One pcap record: its 16-byte header and the frame, whole (captured = original length)."""
    t, data = frame
    sec, usec = divmod(round(t * 1_000_000), 1_000_000)
    return _RECORD_HEAD.pack(sec, usec, len(data), len(data)) + data


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of
    the 16-bit words. 2**16 = 1 modulo 0xFFFF, so that sum is the whole buffer read as one
    big-endian number, modulo 0xFFFF (0 there means 0xFFFF: the data is never all zeros)."""
    if len(data) & 1:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF or 0xFFFF
    return 0xFFFF - total


def _address(ip: str) -> tuple[int, bytes]:
    """(IP version, packed address); an IPv4-mapped IPv6 address (a dual-stack socket's view
    of an IPv4 peer) is recorded as the IPv4 address it is; a zone (`%eth0`) is dropped."""
    parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return parsed.version, parsed.packed


class _Side:
    """One direction of a session: addresses, ports, the next sequence number to send."""

    __slots__ = ("ip", "port", "mac", "nxt", "ident")

    def __init__(self, ip: bytes, port: int, mac: bytes, isn: int, ident: int) -> None:
        self.ip = ip
        self.port = port
        self.mac = mac
        self.nxt = isn & _MASK
        self.ident = ident & 0xFFFF  # IPv4 identification, one more per packet


class SessionFramer:
    """The packets of one session, built from its events; no I/O, no clock.

    Each method returns an iterator of `Frame`s; the session's state (sequence numbers) has
    already moved on when it returns, so the frames can be written as they are produced.
    Events after `close` raise ValueError, as do `client_bytes`/`server_bytes` before
    `open` for TCP and a UDP message longer than an IP packet can carry.
    """

    def __init__(self, transport: Transport, client: tuple[str, int], server: tuple[str, int],
                 params: RecordParams | None = None, *, client_isn: int | None = None,
                 server_isn: int | None = None) -> None:
        params = params or RecordParams()
        version, client_ip = _address(client[0])
        server_version, server_ip = _address(server[0])
        if version != server_version:
            raise ValueError(f"client {client[0]} and server {server[0]} are not of one IP version")
        self.transport = transport
        self.version = version
        # Deterministic initial sequence numbers and IP ids (the same events, the same file);
        # tests pass their own to cross the 2**32 wraparound.
        seed = f"{client[0]} {client[1]} {server[0]} {server[1]}".encode()
        c_isn = zlib.crc32(seed + b" client") if client_isn is None else client_isn
        s_isn = zlib.crc32(seed + b" server") if server_isn is None else server_isn
        self._sides = (_Side(client_ip, client[1], _MAC_CLIENT, c_isn, c_isn >> 16),
                       _Side(server_ip, server[1], _MAC_SERVER, s_isn, s_isn >> 16))
        self._ethertype = _ETHERTYPE_IPV4 if version == 4 else _ETHERTYPE_IPV6
        self.mss = params.mtu - (40 if version == 4 else 60)
        self.opened = False
        self.closed = False

    # -- events --------------------------------------------------------------------

    def open(self, t: float) -> Iterator[Frame]:
        """The connection is made: for TCP, the three-way handshake; for UDP, nothing."""
        if self.opened or self.closed:
            raise ValueError("session already opened")
        self.opened = True
        if self.transport is Transport.UDP:
            return iter(())
        client, server = self._sides
        mss = struct.pack("!BBH", 2, 4, self.mss)  # the MSS option (RFC 9293 3.7.1)
        frames = [
            (t, self._tcp(client, server, _SYN, b"", options=mss, ack=0)),
            (t, self._tcp(server, client, _SYN | _ACK, b"", options=mss, ack=(client.nxt + 1) & _MASK)),
        ]
        client.nxt = (client.nxt + 1) & _MASK
        server.nxt = (server.nxt + 1) & _MASK
        frames.append((t, self._tcp(client, server, _ACK, b"")))
        return iter(frames)

    def client_bytes(self, data: bytes, t: float) -> Iterator[Frame]:
        """The client sent `data` (which reached the server)."""
        return self._send(0, data, t)

    def server_bytes(self, data: bytes, t: float) -> Iterator[Frame]:
        """The client was sent `data`."""
        return self._send(1, data, t)

    def close(self, by: Sender, t: float, *, reset: bool = False) -> Iterator[Frame]:
        """`by` closed the session: FIN from it, FIN from the other, the last ACK; or, with
        `reset`, one RST from it. UDP: nothing (a datagram exchange has no close)."""
        if self.closed:
            raise ValueError("session already closed")
        self.closed = True
        if self.transport is Transport.UDP or not self.opened:
            return iter(())
        closer, other = self._sides if by is Sender.CLIENT else self._sides[::-1]
        if reset:
            return iter([(t, self._tcp(closer, other, _RST | _ACK, b""))])
        frames = [(t, self._tcp(closer, other, _FIN | _ACK, b""))]
        closer.nxt = (closer.nxt + 1) & _MASK
        frames.append((t, self._tcp(other, closer, _FIN | _ACK, b"")))
        other.nxt = (other.nxt + 1) & _MASK
        frames.append((t, self._tcp(closer, other, _ACK, b"")))
        return iter(frames)

    # -- framing -------------------------------------------------------------------

    def _send(self, side: int, data: bytes, t: float) -> Iterator[Frame]:
        if self.closed:
            raise ValueError("session already closed")
        if self.transport is Transport.UDP:
            if len(data) > _UDP_MAX[self.version]:
                raise ValueError(f"a UDP message of {len(data)} bytes does not fit in an IPv{self.version} packet")
            self.opened = True
            sender, receiver = self._sides[side], self._sides[1 - side]
            return iter([(t, self._udp(sender, receiver, data))])
        if not self.opened:
            raise ValueError("TCP data before open()")
        if not data:
            return iter(())
        sender, receiver = self._sides[side], self._sides[1 - side]
        start = sender.nxt
        sender.nxt = (start + len(data)) & _MASK
        # The IP ids the segments and the receiver's acknowledgements will take, reserved now.
        segments = -(-len(data) // self.mss)
        acks = -(-segments // _ACK_EVERY)
        sender_ident, receiver_ident = sender.ident, receiver.ident
        sender.ident = (sender.ident + segments) & 0xFFFF
        receiver.ident = (receiver.ident + acks) & 0xFFFF
        # Frozen, since frames are made later; bytes (what a socket gives) are not copied.
        frozen = data if isinstance(data, bytes) else bytes(data)
        return self._segments(sender, receiver, frozen, t, start, receiver.nxt, sender_ident, receiver_ident)

    def _segments(self, sender: _Side, receiver: _Side, data: bytes, t: float, seq: int, receiver_seq: int,
                  sender_ident: int, receiver_ident: int) -> Iterator[Frame]:
        """Generated lazily, from values fixed when the event was taken (the sides' state may
        have moved on by the time a frame is asked for): `seq` of the first byte, and the
        receiver's next sequence number, which every segment acknowledges."""
        view = memoryview(data)
        mss = self.mss
        unacked = 0
        for offset in range(0, len(data), mss):
            piece = bytes(view[offset : offset + mss])
            last = offset + mss >= len(data)
            yield t, self._tcp_raw(sender, receiver, seq, receiver_seq, _ACK | (_PSH if last else 0), piece,
                                   sender_ident)
            sender_ident = (sender_ident + 1) & 0xFFFF
            seq = (seq + len(piece)) & _MASK
            unacked += 1
            if unacked == _ACK_EVERY or last:
                yield t, self._tcp_raw(receiver, sender, receiver_seq, seq, _ACK, b"", receiver_ident)
                receiver_ident = (receiver_ident + 1) & 0xFFFF
                unacked = 0

    def _tcp(self, sender: _Side, receiver: _Side, flags: int, payload: bytes, *,
             options: bytes = b"", ack: int | None = None) -> bytes:
        """A control segment from `sender`'s current state (takes one IP id)."""
        ident = sender.ident
        sender.ident = (ident + 1) & 0xFFFF
        return self._tcp_raw(sender, receiver, sender.nxt, receiver.nxt if ack is None else ack, flags,
                             payload, ident, options)

    def _tcp_raw(self, sender: _Side, receiver: _Side, seq: int, ack: int, flags: int, payload: bytes,
                 ident: int, options: bytes = b"") -> bytes:
        head = (5 + len(options) // 4) << 4
        segment = bytearray(_TCP_HEAD.pack(sender.port, receiver.port, seq, ack, head, flags, _WINDOW, 0, 0))
        segment += options
        segment += payload
        struct.pack_into("!H", segment, 16, _checksum(self._pseudo(sender, receiver, _TCP, len(segment)) + segment))
        return self._ip(sender, receiver, _TCP, segment, ident)

    def _udp(self, sender: _Side, receiver: _Side, payload: bytes) -> bytes:
        datagram = bytearray(struct.pack("!HHHH", sender.port, receiver.port, 8 + len(payload), 0))
        datagram += payload
        checksum = _checksum(self._pseudo(sender, receiver, _UDP, len(datagram)) + datagram)
        struct.pack_into("!H", datagram, 6, checksum or 0xFFFF)  # 0 means "none" in UDP (RFC 768)
        ident = sender.ident
        sender.ident = (ident + 1) & 0xFFFF
        return self._ip(sender, receiver, _UDP, datagram, ident)

    def _pseudo(self, sender: _Side, receiver: _Side, proto: int, length: int) -> bytes:
        """The pseudo-header the TCP and UDP checksums cover (RFC 9293 3.1, RFC 8200 8.1)."""
        if self.version == 4:
            return sender.ip + receiver.ip + struct.pack("!BBH", 0, proto, length)
        return sender.ip + receiver.ip + struct.pack("!I3xB", length, proto)

    def _ip(self, sender: _Side, receiver: _Side, proto: int, payload: bytes | bytearray, ident: int) -> bytes:
        link = receiver.mac + sender.mac + self._ethertype
        if self.version == 4:
            header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000,  # DF
                                           _TTL, proto, 0, sender.ip, receiver.ip))
            struct.pack_into("!H", header, 10, _checksum(bytes(header)))
        else:
            header = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, _TTL, sender.ip, receiver.ip))
        return link + bytes(header) + bytes(payload)


class RecordedSession:
    """One session being recorded: its events go through its framer to the recorder's file."""

    __slots__ = ("_framer", "_recorder")

    def __init__(self, framer: SessionFramer, recorder: Recorder) -> None:
        self._framer = framer
        self._recorder = recorder

    def client_bytes(self, data: bytes, t: float) -> None:
        self._recorder.write(self._framer.client_bytes(data, t))

    def server_bytes(self, data: bytes, t: float) -> None:
        self._recorder.write(self._framer.server_bytes(data, t))

    def close(self, by: Sender, t: float, *, reset: bool = False) -> None:
        self._recorder.write(self._framer.close(by, t, reset=reset))


class Recorder:
    """Sessions written as pcap files in `directory`, rotated by size and time.

    The directory is checked as the log directory is (logdir.py: created 0750 if missing,
    else a real directory of this user's, writable by nobody else) and held open by
    descriptor; files are named `PREFIX-YYYYmmddTHHMMSSZ-NNNNNN.pcap` (the UTC time of the
    file's first packet, then a sequence number), so that sorted by name they are in time
    order. Packet times are made non-decreasing (a clock stepping back does not reorder
    the file). Memory: a few integers per open session and one write batch.
    """

    def __init__(self, directory: str, params: RecordParams | None = None, *, prefix: str = "scriptgen") -> None:
        self.params = params or RecordParams()
        self.directory = directory
        self.prefix = prefix
        check_log_dir(directory, option="--record")
        self._dir_fd = open_dir(directory, option="--record")
        self._fd = -1
        self._size = 0  # bytes in the current file
        self._file_start = 0.0
        self._last_t = float("-inf")
        self._sequence = 0
        self.path: str | None = None
        """The file being written, if any."""
        self.files = 0
        """Files begun so far."""
        self.packets = 0
        """Packets written so far."""

    def open(self, transport: Transport, client: tuple[str, int], server: tuple[str, int], t: float, *,
             client_isn: int | None = None, server_isn: int | None = None) -> RecordedSession:
        """Begin recording a session (the ISNs are SessionFramer's)."""
        framer = SessionFramer(transport, client, server, self.params, client_isn=client_isn,
                               server_isn=server_isn)
        self.write(framer.open(t))
        return RecordedSession(framer, self)

    def write(self, frames: Iterable[Frame]) -> None:
        """Append the frames, each as one whole record, beginning new files as needed.
        ServeError if a file cannot be made or written (what was cut is cut back first)."""
        params = self.params
        batch = bytearray()
        for t, frame in frames:
            t = max(t, self._last_t)
            self._last_t = t
            record = pcap_record((t, frame))
            if self._fd < 0 or (self._size + len(batch) > 24 and (
                    self._size + len(batch) + len(record) > params.rotate_bytes
                    or t - self._file_start >= params.rotate_seconds)):
                self._flush(batch)
                batch.clear()
                self._rotate(t)
            batch += record
            self.packets += 1
            if len(batch) >= _BATCH:
                self._flush(batch)
                batch.clear()
        self._flush(batch)

    def close(self) -> None:
        """Close the current file and the directory (sessions still open read as cut off)."""
        self._close_file()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rotate(self, t: float) -> None:
        self._close_file()
        if self._dir_fd < 0:
            raise ServeError(f"--record {self.directory}: the recorder is closed")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(max(t, 0.0)))
        for _ in range(10_000):  # names left by an earlier run in the same second are skipped
            name = f"{self.prefix}-{stamp}-{self._sequence:06d}.pcap"
            self._sequence += 1
            try:
                fd = create_file(self._dir_fd, name)
            except FileExistsError:
                continue
            except OSError as exc:
                raise ServeError(f"--record {self.directory}: cannot create {name} ({exc.strerror})") from None
            break
        else:
            raise ServeError(f"--record {self.directory}: no free file name for {self.prefix}-{stamp}")
        self._fd, self._size, self._file_start = fd, 0, t
        self.path = os.path.join(self.directory, name)
        self.files += 1
        self._flush(bytearray(pcap_header()))

    def _flush(self, batch: bytearray) -> None:
        if not batch:
            return
        view = memoryview(batch)
        written = 0
        try:
            while written < len(batch):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            # Cut the file back to its last whole record and give it up; the next packet
            # begins a new file. (A full disk: the next one will likely fail too, and say so.)
            path, note = self.path, ""
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as cut:  # the file keeps a cut record at its end: readers report it as damage
                note = f"; could not cut it back to its last whole record ({cut.strerror})"
            self._close_file()
            raise ServeError(f"--record {path}: write failed ({exc.strerror}){note}") from None
        finally:
            view.release()
        self._size += written

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.path = None
