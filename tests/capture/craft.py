"""Hand-built packets and capture files for the capture-stage tests.

Frames are built byte by byte here (no packet library), so each test states exactly what
is on the wire: `tcp(...)` makes an IPv4 or IPv6 TCP segment, `link(...)` wraps it for a
link type, `write_pcap` / `write_pcapng` write the file.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from pathlib import Path

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 80)


def _addr(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def ip_packet(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 1,
              frag_offset: int = 0, more: bool = False) -> bytes:
    """An IPv4 or IPv6 packet (IPv4 fragments via frag_offset/more)."""
    if ":" in src:
        return struct.pack("!IHBB", 6 << 28, len(payload), proto, 64) + _addr(src) + _addr(dst) + payload
    flags = (0x2000 if more else 0) | (frag_offset // 8)
    return struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags, 64, proto, 0, _addr(src), _addr(dst)
    ) + payload


def tcp(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int = 0, flags: int = ACK,
        data: bytes = b"") -> bytes:
    """An IP packet carrying one TCP segment."""
    segment = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                          5 << 4, flags, 65535, 0, 0) + data
    return ip_packet(src[0], dst[0], 6, segment)


def udp(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bytes:
    return ip_packet(src[0], dst[0], 17, struct.pack("!HHHH", src[1], dst[1], 8 + len(data), 0) + data)


def port_unreachable(datagram: bytes) -> bytes:
    """The ICMP (IPv4) or ICMPv6 port unreachable the receiver of `datagram` (an IP packet
    made by `udp`) sends back, quoting its IP header and the first 8 bytes after it."""
    if datagram[0] >> 4 == 6:
        src, dst = socket.inet_ntop(socket.AF_INET6, datagram[8:24]), socket.inet_ntop(socket.AF_INET6, datagram[24:40])
        return ip_packet(dst, src, 58, bytes([1, 4, 0, 0, 0, 0, 0, 0]) + datagram[:48])
    src, dst = socket.inet_ntoa(datagram[12:16]), socket.inet_ntoa(datagram[16:20])
    return ip_packet(dst, src, 1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + datagram[:28])


def ethernet(packet: bytes, vlans: Iterable[int] = (), tag: int = 0x8100) -> bytes:
    ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    head = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    for vid in vlans:
        head += struct.pack("!HH", tag, vid)
        tag = 0x8100
    return head + struct.pack("!H", ethertype) + packet


def sll2(packet: bytes) -> bytes:
    ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", ethertype, 0, 1, 772, 0, 6, b"\0" * 8) + packet


def sll(packet: bytes) -> bytes:
    ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 0, 772, 6, b"\0" * 8, ethertype) + packet


def null_loopback(packet: bytes, little_endian: bool = True) -> bytes:
    family = 30 if packet[0] >> 4 == 6 else 2
    return struct.pack("<I" if little_endian else ">I", family) + packet


def write_pcap(path: Path, frames: Iterable[bytes], linktype: int = 1, *, big_endian: bool = False,
               nano: bool = False, start: float = 1000.0, step: float = 0.001) -> Path:
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    units = 1_000_000_000 if nano else 1_000_000
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
    for i, frame in enumerate(frames):
        ticks = round((start + i * step) * units)
        out += struct.pack(e + "IIII", ticks // units, ticks % units, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))
    return path


def pcapng_block(btype: int, body: bytes, e: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(e + "II", btype, len(body) + 12) + body + struct.pack(e + "I", len(body) + 12)


def write_pcapng(path: Path, interfaces: list[int], packets: Iterable[tuple[int, bytes]], *,
                 big_endian: bool = False, tsresol: int | None = None, extra_blocks: bool = True,
                 start: float = 1000.0, step: float = 0.001) -> Path:
    """`packets` are (interface index, frame). Unknown blocks are sprinkled in when
    `extra_blocks` (the reader must skip them)."""
    e = ">" if big_endian else "<"
    out = bytearray(pcapng_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e))
    units = 1_000_000
    for linktype in interfaces:
        options = b""
        if tsresol is not None:
            options = struct.pack(e + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack(e + "HH", 0, 0)
            units = 10**tsresol
        out += pcapng_block(1, struct.pack(e + "HHI", linktype, 0, 262144) + options, e)
    if extra_blocks:
        out += pcapng_block(0x0BAD, b"custom block the reader must skip", e)
    for i, (iface, frame) in enumerate(packets):
        ticks = round((start + i * step) * units)
        out += pcapng_block(6, struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                           len(frame), len(frame)) + frame, e)
        if extra_blocks and i == 0:
            out += pcapng_block(5, b"\0" * 8, e)  # an interface statistics block
    path.write_bytes(bytes(out))
    return path


def conversation(client: tuple[str, int] = CLIENT, server: tuple[str, int] = SERVER,
                 exchanges: Iterable[tuple[bytes, bytes]] = ((b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhi"),),
                 isn_client: int = 1000, isn_server: int = 5000, close: bool = True) -> list[bytes]:
    """IP packets of a whole, clean TCP conversation: handshake, request/answer pairs, FINs."""
    c, s = isn_client, isn_server
    pkts = [tcp(client, server, c, 0, SYN), tcp(server, client, s, c + 1, SYN | ACK),
            tcp(client, server, c + 1, s + 1, ACK)]
    c += 1
    s += 1
    for request, answer in exchanges:
        if request:
            pkts.append(tcp(client, server, c, s, PSH | ACK, request))
            c += len(request)
        if answer:
            pkts.append(tcp(server, client, s, c, PSH | ACK, answer))
            s += len(answer)
    if close:
        pkts += [tcp(client, server, c, s, FIN | ACK), tcp(server, client, s, c + 1, FIN | ACK),
                 tcp(client, server, c + 1, s + 1, ACK)]
    return pkts
