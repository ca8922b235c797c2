"""TCP reassembly policy (docs/capture.md), one crafted capture per rule."""

from __future__ import annotations

from pathlib import Path

from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.model import Gap, Sender, Transport

from tests.capture.craft import (
    ACK, CLIENT, FIN, PSH, RST, SERVER, SYN, conversation, ethernet, tcp, write_pcap,
)

C, S = Sender.CLIENT, Sender.SERVER


def sessions_of(tmp_path: Path, packets: list[bytes], stats: CaptureStats | None = None):
    path = write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in packets])
    return list(read_sessions([str(path)], stats=stats))


def flow(session):
    return [(m.sender, m.data) for m in session.messages]


def handshake(c=1000, s=5000):
    return [tcp(CLIENT, SERVER, c, 0, SYN), tcp(SERVER, CLIENT, s, c + 1, SYN | ACK),
            tcp(CLIENT, SERVER, c + 1, s + 1, ACK)]


def test_clean_conversation_gives_alternating_messages(tmp_path):
    pkts = conversation(exchanges=[(b"hello", b"HI"), (b"bye", b"BYE")])
    (s,) = sessions_of(tmp_path, pkts)
    assert s.transport is Transport.TCP
    assert (s.client.ip, s.client.port, s.server.ip, s.server.port) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert flow(s) == [(C, b"hello"), (S, b"HI"), (C, b"bye"), (S, b"BYE")]
    assert not s.midstream and s.close == "fin" and s.closed_by is C and s.anomalies == {}


def test_consecutive_segments_of_one_side_form_one_message(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"GET "),
                          tcp(CLIENT, SERVER, 1005, 5001, ACK, b"/ HTTP/1.0\r\n\r\n"),
                          tcp(SERVER, CLIENT, 5001, 1019, ACK, b"200")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"GET / HTTP/1.0\r\n\r\n"), (S, b"200")]


def test_out_of_order_segments_are_ordered(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1004, 5001, ACK, b"def"),
                          tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(SERVER, CLIENT, 5001, 1007, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abcdef"), (S, b"ok")]
    assert s.anomalies == {"out_of_order": 1} and s.gaps == 0


def test_retransmission_is_dropped(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(SERVER, CLIENT, 5001, 1004, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abc"), (S, b"ok")]
    assert s.anomalies == {"retransmitted": 1}


def test_overlap_with_different_bytes_first_copy_wins(tmp_path):
    # The second segment re-sends "cd" as "XY" and adds "ef": the first copy of c,d wins.
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abcd"),
                          tcp(CLIENT, SERVER, 1003, 5001, ACK, b"XYef"),
                          tcp(SERVER, CLIENT, 5001, 1007, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abcdef"), (S, b"ok")]
    assert s.anomalies == {"overlapping": 1}


def test_overlap_among_buffered_out_of_order_segments_first_copy_wins(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1003, 5001, ACK, b"cd"),
                          tcp(CLIENT, SERVER, 1003, 5001, ACK, b"XYZ"),
                          tcp(CLIENT, SERVER, 1001, 5001, ACK, b"ab"),
                          tcp(SERVER, CLIENT, 5001, 1006, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abcdZ"), (S, b"ok")]


def test_missing_handshake_is_accepted_and_flagged_midstream(tmp_path):
    pkts = [tcp(CLIENT, SERVER, 777, 888, PSH | ACK, b"USER x\r\n"),
            tcp(SERVER, CLIENT, 888, 785, PSH | ACK, b"331 ok\r\n")]
    (s,) = sessions_of(tmp_path, pkts)
    assert s.midstream
    assert s.server.port == 80  # the only well-known port
    assert flow(s) == [(C, b"USER x\r\n"), (S, b"331 ok\r\n")]


def test_a_syn_ack_marks_the_session_accepted_a_refusal_does_not(tmp_path):
    # A SYN scan: port 80 open (SYN-ACK, then the scanner's RST), port 81 closed (RST-ACK).
    closed = (SERVER[0], 81)
    pkts = [tcp(CLIENT, SERVER, 1000, 0, SYN), tcp(SERVER, CLIENT, 5000, 1001, SYN | ACK),
            tcp(CLIENT, SERVER, 1001, 0, RST),
            tcp(CLIENT, closed, 2000, 0, SYN), tcp(closed, CLIENT, 0, 2001, RST | ACK)]
    sessions = sessions_of(tmp_path, pkts)
    assert [(s.server_port, s.accepted, s.messages, s.close) for s in sessions] == [
        (80, True, [], "rst"), (81, False, [], "rst")]


def test_midstream_server_side_heuristic_uses_ports_seen_listening(tmp_path):
    # Both ports are high; 8080 got a SYN earlier, so it is the server of the midstream flow
    # even though its first captured packet goes the other way.
    a, b = ("10.0.0.1", 9000), ("10.0.0.2", 8080)
    pkts = conversation(("10.0.0.3", 9999), b, exchanges=[(b"q", b"r")])
    pkts += [tcp(b, a, 50, 60, PSH | ACK, b"banner"), tcp(a, b, 60, 56, PSH | ACK, b"x")]
    sessions = sessions_of(tmp_path, pkts)
    mid = [s for s in sessions if s.midstream]
    assert len(mid) == 1 and mid[0].server.port == 8080
    assert flow(mid[0]) == [(S, b"banner"), (C, b"x")]


def test_rst_mid_stream_ends_the_session(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(SERVER, CLIENT, 5001, 1004, RST | ACK),
                          tcp(CLIENT, SERVER, 1004, 5001, ACK, b"late")]
    stats = CaptureStats()
    (s,) = sessions_of(tmp_path, pkts, stats)
    assert flow(s) == [(C, b"abc")]
    assert s.close == "rst" and s.closed_by is S
    assert stats.tcp_after_close == 1


def test_half_close_keeps_the_answer_sent_after_the_clients_fin(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, PSH | ACK, b"req"),
                          tcp(CLIENT, SERVER, 1004, 5001, FIN | ACK),
                          tcp(SERVER, CLIENT, 5001, 1005, PSH | ACK, b"answer"),
                          tcp(SERVER, CLIENT, 5007, 1005, FIN | ACK),
                          tcp(CLIENT, SERVER, 1005, 5008, ACK)]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"req"), (S, b"answer")]
    assert s.close == "fin" and s.closed_by is C


def test_sequence_numbers_wrap_around(tmp_path):
    isn = 0xFFFFFFFF - 3  # the data crosses 2**32
    pkts = conversation(exchanges=[(b"0123456789", b"ok"), (b"more", b"ok2")], isn_client=isn)
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"0123456789"), (S, b"ok"), (C, b"more"), (S, b"ok2")]
    assert s.anomalies == {}


def test_out_of_order_across_wraparound(tmp_path):
    isn = 0xFFFFFFFF - 2
    pkts = handshake(c=isn) + [tcp(CLIENT, SERVER, isn + 4, 5001, ACK, b"456"),  # wrapped
                               tcp(CLIENT, SERVER, isn + 1, 5001, ACK, b"123"),
                               tcp(SERVER, CLIENT, 5001, isn + 7, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"123456"), (S, b"ok")]


def test_bogus_sequence_number_is_dropped_and_counted_not_buffered(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001 + 0x40000000, 5001, ACK, b"X" * 1000),
                          tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(SERVER, CLIENT, 5001, 1004, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abc"), (S, b"ok")]
    assert s.anomalies == {"bogus_seq": 1}


def test_lost_segment_is_a_recorded_gap_when_the_peer_acknowledges_it(tmp_path):
    # "def" (1004-1006) was never captured; the server's ACK of 1010 shows it was sent.
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(CLIENT, SERVER, 1007, 5001, ACK, b"ghi"),
                          tcp(SERVER, CLIENT, 5001, 1010, ACK, b"ok")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abcghi"), (S, b"ok")]
    assert s.messages[0].gaps == (Gap(offset=3, length=3),)


def test_a_wholly_lost_request_keeps_its_place_as_an_empty_message_with_a_gap(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"one"),
                          tcp(SERVER, CLIENT, 5001, 1004, ACK, b"ONE"),
                          # the client's "two" is lost; the server answers it
                          tcp(SERVER, CLIENT, 5004, 1007, ACK, b"TWO")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"one"), (S, b"ONE"), (C, b""), (S, b"TWO")]
    assert s.messages[2].gaps == (Gap(0, 3),)


def test_unfilled_hole_at_the_end_is_a_gap(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"abc"),
                          tcp(CLIENT, SERVER, 1010, 5001, ACK, b"xyz")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abcxyz")]
    assert s.messages[0].gaps == (Gap(3, 6),) and s.close == "eof"


def test_new_syn_after_close_starts_a_new_session(tmp_path):
    first = conversation(exchanges=[(b"first", b"1")], isn_client=100)
    second = conversation(exchanges=[(b"second", b"2")], isn_client=90000)
    sessions = sessions_of(tmp_path, first + [tcp(SERVER, CLIENT, 5003, 107, ACK)] + second)
    assert [flow(s) for s in sessions] == [[(C, b"first"), (S, b"1")], [(C, b"second"), (S, b"2")]]
    assert [s.midstream for s in sessions] == [False, False]


def test_new_syn_on_an_open_4_tuple_ends_the_old_session(tmp_path):
    first = conversation(exchanges=[(b"first", b"1")], isn_client=100, close=False)
    second = conversation(exchanges=[(b"second", b"2")], isn_client=90000)
    sessions = sessions_of(tmp_path, first + second)
    assert [s.close for s in sessions] == ["reused", "fin"]
    assert flow(sessions[1]) == [(C, b"second"), (S, b"2")]


def test_syn_ack_without_syn_still_fixes_the_sides(tmp_path):
    pkts = handshake()[1:] + [tcp(CLIENT, SERVER, 1001, 5001, ACK, b"x"),
                              tcp(SERVER, CLIENT, 5001, 1002, ACK, b"y")]
    (s,) = sessions_of(tmp_path, pkts)
    assert not s.midstream and s.server.port == 80
    assert flow(s) == [(C, b"x"), (S, b"y")]


def test_server_banner_first(tmp_path):
    pkts = conversation(exchanges=[(b"", b"220 ready\r\n"), (b"QUIT\r\n", b"221 bye\r\n")])
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(S, b"220 ready\r\n"), (C, b"QUIT\r\n"), (S, b"221 bye\r\n")]


def test_port_scan_syn_rst_gives_an_empty_session(tmp_path):
    pkts = [tcp(CLIENT, SERVER, 1000, 0, SYN), tcp(SERVER, CLIENT, 0, 1001, RST | ACK)]
    (s,) = sessions_of(tmp_path, pkts)
    assert s.messages == [] and s.close == "rst" and s.closed_by is S


def test_flow_cap_evicts_and_counts(tmp_path):
    from scriptgen.params import CaptureParams

    pkts = []
    for i in range(30):
        pkts += handshake()[:1] + [tcp(("10.0.0.1", 20000 + i), SERVER, 1, 0, SYN)]
    path = write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in pkts])
    stats = CaptureStats()
    sessions = list(read_sessions([str(path)], CaptureParams(max_flows=10), stats=stats))
    assert len(sessions) == 31
    assert stats.tcp_evicted >= 20
    assert sum(s.close == "evicted" for s in sessions) == stats.tcp_evicted


def test_pending_buffer_is_bounded(tmp_path):
    from scriptgen.params import CaptureParams

    pkts = handshake() + [tcp(CLIENT, SERVER, 1001 + 1 + i * 100, 5001, ACK, b"z" * 100) for i in range(50)]
    path = write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in pkts])
    (s,) = read_sessions([str(path)], CaptureParams(tcp_max_pending_bytes=1000))
    assert s.anomalies["pending_overflow"] == 40
    assert s.anomalies["out_of_order"] == 10


def test_ack_captured_just_before_the_data_it_acknowledges_loses_nothing(tmp_path):
    # Capture points can reorder: the server's bare ACK of "hello" comes first.
    pkts = handshake() + [tcp(SERVER, CLIENT, 5001, 1006, ACK),
                          tcp(CLIENT, SERVER, 1001, 5001, PSH | ACK, b"hello"),
                          tcp(SERVER, CLIENT, 5001, 1006, PSH | ACK, b"world")]
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"hello"), (S, b"world")] and s.gaps == 0


def test_lost_last_segment_known_only_from_an_ack_is_a_gap_at_the_end(tmp_path):
    pkts = handshake() + [tcp(CLIENT, SERVER, 1001, 5001, PSH | ACK, b"abc"),
                          tcp(SERVER, CLIENT, 5001, 1007, ACK)]  # "def" never captured
    (s,) = sessions_of(tmp_path, pkts)
    assert flow(s) == [(C, b"abc")] and s.messages[0].gaps == (Gap(3, 3),)
