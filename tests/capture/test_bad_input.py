"""Hostile and broken captures: a clear error naming file and offset, nothing read is lost,
memory stays bounded, and nothing but CaptureError escapes."""

from __future__ import annotations

import random
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.errors import CaptureError, CaptureFormatError, CaptureOpenError

from tests.capture.craft import ACK, CLIENT, SERVER, conversation, ethernet, tcp, write_pcap, write_pcapng

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def test_missing_file(tmp_path):
    with pytest.raises(CaptureOpenError, match=r"nope\.pcap: at byte 0: No such file"):
        list(read_sessions([str(tmp_path / "nope.pcap")]))


def test_empty_file(tmp_path):
    (tmp_path / "e.pcap").write_bytes(b"")
    with pytest.raises(CaptureOpenError, match="empty file"):
        list(read_sessions([str(tmp_path / "e.pcap")]))


def test_not_a_capture(tmp_path):
    (tmp_path / "x.pcap").write_text("<html>not a capture</html>")
    with pytest.raises(CaptureFormatError, match=r"x\.pcap: at byte 0: not a pcap or pcapng file"):
        list(read_sessions([str(tmp_path / "x.pcap")]))


def test_truncated_header(tmp_path):
    (tmp_path / "h.pcap").write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00")
    with pytest.raises(CaptureFormatError, match="header is truncated"):
        list(read_sessions([str(tmp_path / "h.pcap")]))


def _two_sessions(tmp_path: Path) -> Path:
    first = conversation(("10.0.0.1", 1111), SERVER, exchanges=[(b"one", b"1")])
    second = conversation(("10.0.0.1", 2222), SERVER, exchanges=[(b"two", b"2")])
    return write_pcap(tmp_path / "t.pcap", [ethernet(p) for p in first + second])


def test_truncated_tail_keeps_what_came_before_and_reports_the_offset(tmp_path):
    whole = _two_sessions(tmp_path).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:-30])  # inside the last record
    stats = CaptureStats()
    sessions = list(read_sessions([str(cut)], stats=stats))
    assert [m.data for m in sessions[0].messages] == [b"one", b"1"]
    assert [m.data for m in sessions[1].messages] == [b"two", b"2"]
    (damage,) = stats.damage
    last_record = len(whole) - (16 + len(ethernet(tcp(CLIENT, SERVER, 0, 0, ACK))))
    assert damage.path == str(cut) and damage.offset == last_record
    assert f"at byte {last_record}" in str(damage)


def test_absurd_record_length_is_damage_not_allocation(tmp_path):
    whole = bytearray(_two_sessions(tmp_path).read_bytes())
    struct.pack_into("<I", whole, 24 + 8, 0xFFFFFFF0)  # first record claims ~4 GiB
    path = tmp_path / "huge.pcap"
    path.write_bytes(bytes(whole))
    stats = CaptureStats()
    assert list(read_sessions([str(path)], stats=stats)) == []
    assert stats.damage[0].offset == 24 and "claims" in stats.damage[0].reason


def test_pcapng_bad_block_length_is_damage(tmp_path):
    path = write_pcapng(tmp_path / "t.pcapng", [1], [(0, ethernet(p)) for p in conversation()])
    data = bytearray(path.read_bytes())
    data += struct.pack("<II", 6, 7) + b"\0" * 20  # length 7: not a multiple of 4
    path.write_bytes(bytes(data))
    stats = CaptureStats()
    (s,) = read_sessions([str(path)], stats=stats)
    assert len(s.messages) == 2 and "block length 7" in stats.damage[0].reason


def _read_all(path: Path) -> None:
    try:
        for _ in read_sessions([str(path)]):
            pass
    except CaptureError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.sampled_from([b"", b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a"]))
def test_random_bytes_raise_only_capture_errors(tmp_path, data, magic):
    path = tmp_path / "r.pcap"
    path.write_bytes(magic + data)
    _read_all(path)


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng"))[:12]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_mutated_real_captures_raise_only_capture_errors(tmp_path, seed, flips):
    files = _corpus_files()
    if not files:
        pytest.skip("../shared/corpus is absent")
    rng = random.Random(seed)
    data = bytearray(rng.choice(files).read_bytes()[:200_000])
    for _ in range(flips):
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
    if rng.random() < 0.3:
        del data[rng.randrange(len(data)) :]
    path = tmp_path / "m.pcap"
    path.write_bytes(bytes(data))
    _read_all(path)


def test_memory_stays_bounded_under_hostile_sequence_numbers(tmp_path):
    """Thousands of segments with scattered sequence numbers on one flow, and thousands of
    half-open flows: what is buffered stays within the configured bounds."""
    from scriptgen.params import CaptureParams

    rng = random.Random(7)
    pkts = conversation(exchanges=[], close=False)
    pkts += [tcp(CLIENT, SERVER, rng.randrange(2**32), 5001, ACK, b"x" * 1400) for _ in range(12000)]
    pkts += [tcp(("10.1.%d.%d" % (i // 250, i % 250), 3000 + i), SERVER, rng.randrange(2**32), 1, ACK, b"y" * 100)
             for i in range(3000)]
    path = write_pcap(tmp_path / "hostile.pcap", [ethernet(p) for p in pkts])
    params = CaptureParams(tcp_max_pending_bytes=64 * 1024, max_flows=500)
    tracemalloc.start()
    stats = CaptureStats()
    count = 0
    for session in read_sessions([str(path)], params, stats=stats):
        count += 1
        del session
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count >= 3000
    # 12000 x 1400 bytes = 16.8 MB of hostile payload were offered on one flow alone; what
    # remains is the reader's 1 MiB chunk window (x3 while it slides) and the bounded flows.
    assert peak < 5_000_000, peak
    assert stats.tcp_evicted > 0


@pytest.mark.parametrize("ipv6", [False, True])
def test_land_packets_are_counted_not_sessions(tmp_path, ipv6):
    """LAND packets (source address and port equal to the destination's: SYN, data, RST
    over TCP and a datagram over UDP, IPv4 and IPv6) between the segments of a real
    conversation: `sessions` and `learn` succeed, the conversation is whole, the LAND
    packets are counted and no session is made of them."""
    import subprocess
    import sys

    from tests.capture.craft import RST, SYN, udp

    victim = ("fd00::2", 80) if ipv6 else SERVER
    client = ("fd00::1", CLIENT[1]) if ipv6 else CLIENT
    pkts = conversation(client, victim)
    land = [tcp(victim, victim, 77, 0, SYN), tcp(victim, victim, 78, 0, ACK, b"land"),
            tcp(victim, victim, 82, 0, RST), udp((victim[0], 53), (victim[0], 53), b"land")]
    pkts = pkts[:2] + land[:2] + pkts[2:4] + land[2:] + pkts[4:]
    path = write_pcap(tmp_path / "land.pcap", [ethernet(p) for p in pkts])

    stats = CaptureStats()
    sessions = list(read_sessions([str(path)], stats=stats))
    assert [(s.client.port, s.server.port, s.close) for s in sessions] == [(client[1], 80, "fin")]
    assert [m.data for m in sessions[0].messages] == [b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhi"]
    assert stats.land == 4

    cli = [sys.executable, "-m", "scriptgen"]
    shown = subprocess.run(cli + ["sessions", str(path)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "LAND packets (source = destination) ignored 4" in shown.stdout + shown.stderr
    learned = subprocess.run(cli + ["learn", str(path), "-o", str(tmp_path / "m.json")],
                             capture_output=True, text=True, timeout=120)
    assert learned.returncode == 0, learned.stderr
