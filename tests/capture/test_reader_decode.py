"""Capture formats and link types: every supported encapsulation gives the same session."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.model import Sender, Transport

from tests.capture.craft import (
    ACK, CLIENT, PSH, SERVER, conversation, ethernet, ip_packet, null_loopback, pcapng_block,
    port_unreachable, sll, sll2, tcp, udp, write_pcap, write_pcapng,
)

EXPECTED = [(Sender.CLIENT, b"GET / HTTP/1.0\r\n\r\n"), (Sender.SERVER, b"HTTP/1.0 200 OK\r\n\r\nhi")]


def only_session(path: Path, stats: CaptureStats | None = None):
    sessions = list(read_sessions([str(path)], stats=stats))
    assert len(sessions) == 1, sessions
    return sessions[0]


def flow(session):
    return [(m.sender, m.data) for m in session.messages]


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, big_endian, nano):
    path = write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in conversation()],
                      big_endian=big_endian, nano=nano, start=1700000000.25, step=0.5)
    s = only_session(path)
    assert flow(s) == EXPECTED
    assert s.start == pytest.approx(1700000000.25, abs=1e-6)
    assert s.messages[0].timestamp == pytest.approx(1700000000.25 + 3 * 0.5, abs=1e-6)


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (1, ethernet),
        (1, lambda p: ethernet(p, vlans=[10])),
        (1, lambda p: ethernet(p, vlans=[10, 20], tag=0x88A8)),  # QinQ
        (113, sll),
        (276, sll2),
        (0, null_loopback),
        (0, lambda p: null_loopback(p, little_endian=False)),
        (101, lambda p: p),
        (228, lambda p: p),
    ],
    ids=["ethernet", "vlan", "qinq", "sll", "sll2", "null-le", "null-be", "raw", "ipv4"],
)
def test_link_types(tmp_path, linktype, wrap):
    path = write_pcap(tmp_path / "t.pcap", [wrap(p) for p in conversation()], linktype=linktype)
    assert flow(only_session(path)) == EXPECTED


def test_ethernet_padding_is_not_payload(tmp_path):
    # Short frames are padded to 60 bytes on the wire; the IP length says where data ends.
    frames = [ethernet(p) + b"\0" * max(0, 60 - len(ethernet(p))) for p in conversation(exchanges=[(b"a", b"b")])]
    path = write_pcap(tmp_path / "t.pcap", frames)
    assert flow(only_session(path)) == [(Sender.CLIENT, b"a"), (Sender.SERVER, b"b")]


@pytest.mark.parametrize("linktype", [1, 229, 276])
def test_ipv6_with_extension_headers(tmp_path, linktype):
    c, s = ("2001:db8::1", 40000), ("2001:db8::2", 445)
    packets = []
    for p in conversation(c, s):
        # Insert a hop-by-hop and a destination-options header before TCP.
        head, rest = p[:40], p[40:]
        ext = bytes([60, 0]) + b"\x01\x04\0\0\0\0" + bytes([6, 0]) + b"\x01\x04\0\0\0\0"
        head = head[:4] + struct.pack("!H", len(rest) + len(ext)) + bytes([0]) + head[7:]
        packets.append(head + ext + rest)
    wrap = {1: ethernet, 229: lambda p: p, 276: sll2}[linktype]
    session = only_session(write_pcap(tmp_path / "t.pcap", [wrap(p) for p in packets], linktype=linktype))
    assert flow(session) == EXPECTED
    assert str(session.server) == "[2001:db8::2]:445"


def test_ipv4_fragments_reassembled_in_any_order_with_overlap(tmp_path):
    request = b"A" * 40 + b"B" * 40 + b"C" * 20
    segment = tcp(CLIENT, SERVER, 1001, 5001, PSH | ACK, request)[20:]  # TCP header + data
    src, dst = CLIENT[0], SERVER[0]
    frags = [
        ip_packet(src, dst, 6, segment[48:96], ident=7, frag_offset=48, more=True),
        ip_packet(src, dst, 6, segment[96:], ident=7, frag_offset=96),
        ip_packet(src, dst, 6, b"Z" * 56, ident=7, frag_offset=40, more=True),  # overlap, loses
        ip_packet(src, dst, 6, segment[:48], ident=7, more=True),
    ]
    pkts = conversation(exchanges=[])[:3] + frags + [tcp(SERVER, CLIENT, 5001, 1101, PSH | ACK, b"ok")]
    stats = CaptureStats()
    s = only_session(write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in pkts]), stats)
    # Fragment at 40 arrived before the one at 0 but after the one at 48: bytes 48.. keep the
    # first copy; 40..47 come from the Z fragment, which arrived before the fragment at 0.
    data = s.messages[0].data
    assert data == request[:20] + b"Z" * 8 + request[28:]
    assert stats.decode.fragments_reassembled == 1


def test_ipv4_fragments_clean(tmp_path):
    request = bytes(range(256)) * 2
    segment = tcp(CLIENT, SERVER, 1001, 5001, PSH | ACK, request)[20:]
    src, dst = CLIENT[0], SERVER[0]
    frags = [ip_packet(src, dst, 6, segment[i : i + 128], ident=9, frag_offset=i, more=i + 128 < len(segment))
             for i in range(0, len(segment), 128)]
    pkts = conversation(exchanges=[])[:3] + frags[::-1] + [tcp(SERVER, CLIENT, 5001, 1001 + len(request), ACK, b"ok")]
    s = only_session(write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in pkts]))
    assert flow(s) == [(Sender.CLIENT, request), (Sender.SERVER, b"ok")]


def test_incomplete_fragments_are_bounded_and_counted(tmp_path):
    from scriptgen.params import CaptureParams

    frags = [ip_packet("10.9.9.9", "10.0.0.2", 6, b"x" * 64, ident=i, more=True) for i in range(100)]
    path = write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in frags])
    stats = CaptureStats()
    assert list(read_sessions([str(path)], CaptureParams(max_fragment_groups=10), stats=stats)) == []
    assert stats.decode.fragments_dropped == 90


def test_pcapng_two_interfaces_with_different_link_types(tmp_path):
    a = conversation(("10.0.0.1", 1111), ("10.0.0.2", 21), exchanges=[(b"USER a\r\n", b"331\r\n")])
    b = conversation(("10.0.0.3", 2222), ("10.0.0.4", 80), exchanges=[(b"GET /\r\n", b"200\r\n")])
    packets = []
    for pa, pb in zip(a, b):
        packets += [(0, ethernet(pa)), (1, sll2(pb))]
    path = write_pcapng(tmp_path / "t.pcapng", [1, 276], packets)
    stats = CaptureStats()
    sessions = sorted(read_sessions([str(path)], stats=stats), key=lambda s: s.server_port)
    assert [s.server_port for s in sessions] == [21, 80]
    assert flow(sessions[0]) == [(Sender.CLIENT, b"USER a\r\n"), (Sender.SERVER, b"331\r\n")]
    assert flow(sessions[1]) == [(Sender.CLIENT, b"GET /\r\n"), (Sender.SERVER, b"200\r\n")]
    assert stats.linktypes == {1: len(a), 276: len(b)}


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_byte_order_and_timestamp_resolution(tmp_path, big_endian):
    packets = [(0, ethernet(p)) for p in conversation()]
    path = write_pcapng(tmp_path / "t.pcapng", [1], packets, big_endian=big_endian, tsresol=9,
                        start=1700000000.5)
    s = only_session(path)
    assert flow(s) == EXPECTED
    assert s.start == pytest.approx(1700000000.5, abs=1e-6)


def test_pcapng_simple_packet_blocks(tmp_path):
    out = bytearray(pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    out += pcapng_block(1, struct.pack("<HHI", 1, 0, 0))
    for p in conversation():
        frame = ethernet(p)
        out += pcapng_block(3, struct.pack("<I", len(frame)) + frame)
    path = tmp_path / "spb.pcapng"
    path.write_bytes(bytes(out))
    assert flow(only_session(path)) == EXPECTED


def test_unsupported_link_type_is_counted_not_fatal(tmp_path):
    frames = [(0, ethernet(p)) for p in conversation()] + [(1, b"\x01\x02\x03\x04")] * 3
    path = write_pcapng(tmp_path / "t.pcapng", [1, 147], frames)
    stats = CaptureStats()
    assert flow(only_session(path, stats)) == EXPECTED
    assert stats.decode.unsupported_linktypes == {147: 3}


def test_udp_datagrams_alternate_into_messages_and_time_out(tmp_path):
    c, s = ("10.0.0.1", 53000), ("10.0.0.2", 53)
    pkts = [udp(c, s, b"q1"), udp(s, c, b"a1"), udp(c, s, b"q2"), udp(s, c, b"a2")]
    frames = [ethernet(p) for p in pkts]
    path = write_pcap(tmp_path / "t.pcap", frames + [ethernet(udp(c, s, b"q3"))], step=4.0)
    sessions = list(read_sessions([str(path)]))
    assert all(x.transport is Transport.UDP for x in sessions)
    # 4 s apart: the first four datagrams are one session; the fifth comes 4 s after the
    # fourth, within the 10 s idle timeout, so it joins it.
    assert [[m.data for m in x.messages] for x in sessions] == [[b"q1", b"a1", b"q2", b"a2", b"q3"]]
    path = write_pcap(tmp_path / "t2.pcap", frames + [ethernet(udp(c, s, b"q3"))], step=11.0)
    sessions = list(read_sessions([str(path)]))
    assert [[m.data for m in x.messages] for x in sessions] == [[b"q1"], [b"a1"], [b"q2"], [b"a2"], [b"q3"]]
    assert {x.server_port for x in sessions} == {53}
    assert [x.messages[0].sender for x in sessions] == [Sender.CLIENT, Sender.SERVER] * 2 + [Sender.CLIENT]


def test_udp_server_is_the_first_datagrams_destination_between_high_ports(tmp_path):
    c, s = ("10.0.0.1", 50000), ("10.0.0.2", 40000)
    path = write_pcap(tmp_path / "t.pcap", [ethernet(udp(c, s, b"q")), ethernet(udp(s, c, b"a"))])
    (session,) = read_sessions([str(path)])
    assert session.server_port == 40000
    assert [(m.sender, m.data) for m in session.messages] == [(Sender.CLIENT, b"q"), (Sender.SERVER, b"a")]


@pytest.mark.parametrize("client, server", [(("10.0.0.1", 50000), ("10.0.0.2", 161)),
                                            (("2001:db8::1", 50000), ("2001:db8::2", 161))])
def test_a_datagram_refused_by_icmp_ends_its_session_as_refused(tmp_path, client, server):
    # A UDP scan: a probe, the closed port's ICMP port unreachable, a retry refused again;
    # then an ICMP for a datagram never captured, and one too short to quote a port.
    probe = udp(client, server, b"probe")
    stray = udp(client, (server[0], 9999), b"x")
    v6 = ":" in client[0]
    short = ip_packet(server[0], client[0], 58 if v6 else 1, bytes([1, 4] if v6 else [3, 3]) + bytes(6))
    frames = [probe, port_unreachable(probe), probe, port_unreachable(probe), port_unreachable(stray), short]
    stats = CaptureStats()
    sessions = list(read_sessions([str(write_pcap(tmp_path / "t.pcap", [ethernet(f) for f in frames]))], stats=stats))
    assert [(x.server_port, flow(x), x.close, x.closed_by) for x in sessions] == [
        (161, [(Sender.CLIENT, b"probe")], "refused", Sender.SERVER)] * 2
    assert stats.decode.other_protocols == 1  # the short one: counted, not a refusal


def test_snap_length_cut_payload_is_recorded_as_a_gap(tmp_path):
    pkts = conversation(exchanges=[(b"0123456789", b"ok")])
    frames = [ethernet(p) for p in pkts]
    frames[3] = frames[3][:-4]  # the request loses its last 4 bytes to the snap length
    stats = CaptureStats()
    s = only_session(write_pcap(tmp_path / "t.pcap", frames), stats)
    assert s.messages[0].data == b"012345"
    assert [(g.offset, g.length) for g in s.messages[0].gaps] == [(6, 4)]
    assert s.messages[1].data == b"ok" and stats.decode.snapped == 1
