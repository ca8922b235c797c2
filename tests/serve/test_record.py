"""Recordings (serve/record.py): what the recorder writes, scriptgen's own capture reader
and Wireshark read back as the same sessions (issue 32, deliverable 4)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import struct
import subprocess
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scriptgen.serve.record as record_module
from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.errors import ServeError
from scriptgen.model import Sender, Session, Transport
from scriptgen.params import RecordParams
from scriptgen.serve.record import Recorder, SessionFramer, pcap_header

TSHARK = shutil.which("tshark")


@dataclass
class Expected:
    """What a session fed to the recorder must read back as."""

    transport: Transport
    client: tuple[str, int]
    server: tuple[str, int]
    messages: list[tuple[Sender, bytes]] = field(default_factory=list)
    closed_by: Sender | None = None
    close: str = "eof"

    def add(self, sender: Sender, data: bytes) -> None:
        if self.transport is Transport.TCP:
            if not data:
                return
            if self.messages and self.messages[-1][0] is sender:  # a TCP message is a run of one side's bytes
                self.messages[-1] = (sender, self.messages[-1][1] + data)
                return
        self.messages.append((sender, data))


class Driver:
    """Feeds events to a Recorder and keeps what each session must read back as."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.open_sessions: dict[int, object] = {}
        self.expected: dict[int, Expected] = {}

    def open(self, key: int, transport: Transport, client: tuple[str, int], server: tuple[str, int], t: float,
             **isn: int) -> None:
        self.open_sessions[key] = self.recorder.open(transport, client, server, t, **isn)
        self.expected[key] = Expected(transport, client, server)

    def send(self, key: int, sender: Sender, data: bytes, t: float) -> None:
        session = self.open_sessions[key]
        if sender is Sender.CLIENT:
            session.client_bytes(data, t)  # type: ignore[attr-defined]
        else:
            session.server_bytes(data, t)  # type: ignore[attr-defined]
        self.expected[key].add(sender, data)

    def close(self, key: int, by: Sender, t: float, reset: bool = False) -> None:
        self.open_sessions.pop(key).close(by, t, reset=reset)  # type: ignore[attr-defined]
        expected = self.expected[key]
        if expected.transport is Transport.TCP:
            expected.closed_by, expected.close = by, "rst" if reset else "fin"


def _files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.iterdir())


def _read_back(files: list[str]) -> list[Session]:
    stats = CaptureStats()
    sessions = list(read_sessions(files, stats=stats))
    assert not stats.damage
    assert stats.decode.malformed == 0 and stats.tcp_after_close == 0
    return sessions


def _assert_same(sessions: list[Session], expected: dict[int, Expected]) -> None:
    by_tuple = {((s.client.ip, s.client.port), (s.server.ip, s.server.port), s.transport): s for s in sessions}
    # A UDP session without a datagram leaves nothing on the wire.
    wanted = [e for e in expected.values() if e.transport is Transport.TCP or e.messages]
    assert len(by_tuple) == len(sessions) == len(wanted)
    for want in wanted:
        got = by_tuple[(want.client, want.server, want.transport)]
        assert [(m.sender, m.data) for m in got.messages] == want.messages
        assert all(not m.gaps for m in got.messages)
        assert not got.anomalies, got.anomalies
        assert (got.close, got.closed_by) == (want.close, want.closed_by)
        if want.transport is Transport.TCP:
            assert not got.midstream and got.accepted


def _scenario(recorder: Recorder) -> Driver:
    """TCP and UDP, IPv4 and IPv6, long messages, both closers, FIN and RST, one ISN about
    to wrap around 2**32."""
    d = Driver(recorder)
    big = bytes(random.Random(1).randbytes(200_000))
    d.open(1, Transport.TCP, ("10.0.0.1", 40000), ("10.0.0.2", 21), 100.0, client_isn=0xFFFFF000,
           server_isn=0xFFFFFFFE)
    d.send(1, Sender.SERVER, b"220 ready\r\n", 100.01)
    d.send(1, Sender.CLIENT, b"RETR big\r\n", 100.02)
    d.send(1, Sender.SERVER, b"150 here\r\n", 100.03)
    d.send(1, Sender.SERVER, big, 100.04)  # one message with the line before it: 137 segments
    d.open(2, Transport.TCP, ("2001:db8::1", 50000), ("2001:db8::2", 8080), 100.05)
    d.send(2, Sender.CLIENT, big[:5000], 100.06)
    d.send(1, Sender.CLIENT, b"QUIT\r\n", 100.07)
    d.open(3, Transport.UDP, ("10.0.0.1", 40001), ("10.0.0.2", 4444), 100.08)
    d.send(3, Sender.CLIENT, b"ping", 100.09)
    d.send(3, Sender.CLIENT, b"ping again", 100.10)  # two datagrams stay two messages
    d.send(3, Sender.SERVER, big[:8000], 100.11)  # longer than the MTU: still one datagram
    d.send(3, Sender.SERVER, b"", 100.12)  # an empty datagram is a message too
    d.open(4, Transport.UDP, ("2001:db8::1", 50001), ("2001:db8::2", 4444), 100.13)
    d.send(4, Sender.CLIENT, b"q", 100.14)
    d.send(4, Sender.SERVER, big[:60000], 100.15)
    d.send(2, Sender.SERVER, b"HTTP/1.1 200 OK\r\n\r\n" + big[:70000], 100.16)
    d.close(1, Sender.CLIENT, 100.17)
    d.close(2, Sender.SERVER, 100.18, reset=True)
    d.open(5, Transport.TCP, ("10.0.0.3", 40002), ("10.0.0.2", 21), 100.19)
    d.send(5, Sender.SERVER, b"220 ready\r\n", 100.20)
    d.close(5, Sender.SERVER, 100.21)
    d.open(6, Transport.TCP, ("10.0.0.4", 40003), ("10.0.0.2", 21), 100.22)  # opened, never a byte
    d.close(6, Sender.CLIENT, 100.23, reset=True)
    d.open(7, Transport.TCP, ("::ffff:10.0.0.5", 40004), ("::ffff:10.0.0.2", 21), 100.24)  # dual stack
    d.send(7, Sender.CLIENT, b"x", 100.25)  # left open: reads as cut off by the end of the capture
    d.expected[7].client, d.expected[7].server = ("10.0.0.5", 40004), ("10.0.0.2", 21)
    return d


def test_sessions_read_back_as_written(tmp_path):
    with Recorder(str(tmp_path / "rec")) as recorder:
        d = _scenario(recorder)
    files = _files(tmp_path / "rec")
    assert len(files) == 1
    _assert_same(_read_back(files), d.expected)


def test_many_interleaved_sessions_share_one_file(tmp_path):
    rng = random.Random(7)
    with Recorder(str(tmp_path / "rec")) as recorder:
        d = Driver(recorder)
        t = 1000.0
        live: list[int] = []
        for key in range(300):
            transport = Transport.UDP if key % 5 == 0 else Transport.TCP
            v6 = key % 3 == 0
            client = (f"2001:db8::{key + 1:x}" if v6 else f"10.1.{key // 250}.{key % 250 + 1}", 1024 + key)
            server = ("2001:db8::ffff" if v6 else "10.0.0.2", 21 if transport is Transport.TCP else 69)
            d.open(key, transport, client, server, t)
            live.append(key)
            while live and rng.random() < 0.8:  # a few events of the open sessions between two opens
                t += 0.001
                other = rng.choice(live)
                if rng.random() < 0.1:
                    live.remove(other)
                    d.close(other, rng.choice([Sender.CLIENT, Sender.SERVER]), t, reset=rng.random() < 0.3)
                else:
                    size = rng.choice([0, 1, 50, 1460, 1461, 4000])
                    d.send(other, rng.choice([Sender.CLIENT, Sender.SERVER]), rng.randbytes(size), t)
        for key in live:
            t += 0.001
            d.close(key, Sender.CLIENT, t)
    files = _files(tmp_path / "rec")
    assert len(files) == 1
    _assert_same(_read_back(files), d.expected)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.tuples(st.booleans(), st.binary(max_size=3000)), max_size=12),
    isn=st.integers(0, 2**32 - 1),
    v6=st.booleans(),
    closer=st.sampled_from([Sender.CLIENT, Sender.SERVER]),
    reset=st.booleans(),
)
def test_any_tcp_conversation_reads_back(tmp_path_factory, events, isn, v6, closer, reset):
    directory = tmp_path_factory.mktemp("rec") / "rec"
    with Recorder(str(directory), RecordParams(mtu=600)) as recorder:
        d = Driver(recorder)
        client, server = (("2001:db8::1", 1234), ("2001:db8::2", 80)) if v6 else (("10.0.0.1", 1234), ("10.0.0.2", 80))
        d.open(0, Transport.TCP, client, server, 1.0, client_isn=isn, server_isn=isn ^ 0xFFFFFFFF)
        for i, (from_client, data) in enumerate(events):
            d.send(0, Sender.CLIENT if from_client else Sender.SERVER, data, 1.0 + i)
        d.close(0, closer, 100.0, reset=reset)
    _assert_same(_read_back(_files(directory)), d.expected)


# -- the bytes on the wire ---------------------------------------------------------------


def _rfc1071(data: bytes) -> int:
    """The Internet checksum written the long way, to check the fast one."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _records(path: str) -> list[bytes]:
    """The frames of a pcap file; asserts that it is whole records, end to end."""
    data = Path(path).read_bytes()
    assert data[:24] == pcap_header()
    frames, pos = [], 24
    while pos < len(data):
        _sec, _usec, caplen, origlen = struct.unpack_from("<IIII", data, pos)
        assert caplen == origlen and pos + 16 + caplen <= len(data)
        frames.append(data[pos + 16 : pos + 16 + caplen])
        pos += 16 + caplen
    assert pos == len(data)
    return frames


def test_checksums_lengths_and_segment_sizes(tmp_path):
    with Recorder(str(tmp_path / "rec")) as recorder:
        _scenario(recorder)
    (path,) = _files(tmp_path / "rec")
    seen = {"tcp4": 0, "tcp6": 0, "udp4": 0, "udp6": 0}
    for frame in _records(path):
        ethertype = frame[12:14]
        ip = frame[14:]
        if ethertype == b"\x08\x00":
            header = ip[:20]
            assert _rfc1071(header) == 0  # a header with its checksum sums to 0
            assert struct.unpack_from("!H", header, 2)[0] == len(ip)
            proto, payload = ip[9], ip[20:]
            pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, len(payload))
            family = "4"
        else:
            assert ethertype == b"\x86\xdd" and struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40
            proto, payload = ip[6], ip[40:]
            pseudo = ip[8:40] + struct.pack("!I3xB", len(payload), proto)
            family = "6"
        assert _rfc1071(pseudo + payload) == 0
        if proto == 6:
            data_length = len(payload) - (payload[12] >> 4) * 4
            assert data_length <= (1460 if family == "4" else 1440)
            seen["tcp" + family] += 1
        else:
            assert proto == 17 and struct.unpack_from("!H", payload, 4)[0] == len(payload)
            assert struct.unpack_from("!H", payload, 6)[0] != 0  # a checksum, never "none"
            seen["udp" + family] += 1
    assert all(seen.values()), seen


def test_a_long_message_is_written_without_holding_it_twice(tmp_path):
    message = os.urandom(20 << 20)
    with Recorder(str(tmp_path / "rec")) as recorder:
        session = recorder.open(Transport.TCP, ("10.0.0.1", 1), ("10.0.0.2", 2), 0.0)
        tracemalloc.start()
        session.server_bytes(message, 1.0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        session.close(Sender.CLIENT, 2.0)
    assert peak < 1 << 20, f"{peak} bytes held to write a 20 MiB message"
    (got,) = _read_back(_files(tmp_path / "rec"))
    assert got.messages[0].data == message


def test_framer_refuses_what_cannot_be_on_a_wire():
    framer = SessionFramer(Transport.TCP, ("10.0.0.1", 1), ("10.0.0.2", 2))
    with pytest.raises(ValueError, match="before open"):
        list(framer.client_bytes(b"x", 0.0))
    with pytest.raises(ValueError, match="one IP version"):
        SessionFramer(Transport.TCP, ("10.0.0.1", 1), ("::2", 2))
    udp = SessionFramer(Transport.UDP, ("10.0.0.1", 1), ("10.0.0.2", 2))
    with pytest.raises(ValueError, match="does not fit"):
        udp.server_bytes(bytes(65508), 0.0)
    list(udp.close(Sender.CLIENT, 1.0))
    with pytest.raises(ValueError, match="closed"):
        udp.client_bytes(b"x", 2.0)


# -- files: rotation, names, safety ----------------------------------------------------------


def test_rotation_by_size_keeps_records_whole_and_sessions_whole_across_files(tmp_path):
    params = RecordParams(rotate_bytes=20_000)
    with Recorder(str(tmp_path / "rec"), params) as recorder:
        d = _scenario(recorder)
    files = _files(tmp_path / "rec")
    assert len(files) > 10
    for path in files:
        frames = _records(path)
        size = os.path.getsize(path)
        # Under the cap, unless one record alone is bigger (the 60000-byte datagram).
        assert size <= params.rotate_bytes or len(frames) == 1, (path, size)
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o137 == 0  # 0640 at most
    # Read in name order as one capture, the sessions a rotation split are whole again.
    _assert_same(_read_back(files), d.expected)


def test_rotation_by_time_and_names_in_time_order(tmp_path):
    params = RecordParams(rotate_seconds=10.0)
    t0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    with Recorder(str(tmp_path / "rec"), params) as recorder:
        d = Driver(recorder)
        d.open(0, Transport.TCP, ("10.0.0.1", 1000), ("10.0.0.2", 25), t0)
        for i in range(1, 36):  # a packet a second for 35 seconds: files begun at 0, 10, 20, 30
            d.send(0, Sender.CLIENT if i % 2 else Sender.SERVER, b"line %d\r\n" % i, t0 + i)
        d.close(0, Sender.CLIENT, t0 + 35.5)
    names = [os.path.basename(p) for p in _files(tmp_path / "rec")]
    assert names == [
        "scriptgen-20231114T221320Z-000000.pcap",
        "scriptgen-20231114T221330Z-000001.pcap",
        "scriptgen-20231114T221340Z-000002.pcap",
        "scriptgen-20231114T221350Z-000003.pcap",
    ]
    _assert_same(_read_back(_files(tmp_path / "rec")), d.expected)


def test_a_name_taken_by_a_planted_link_is_skipped_not_followed(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir(mode=0o750)
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret")
    (rec / "scriptgen-19700101T000000Z-000000.pcap").symlink_to(victim)
    (rec / "scriptgen-19700101T000000Z-000001.pcap").write_bytes(b"an earlier run's file")
    with Recorder(str(rec)) as recorder:
        recorder.open(Transport.UDP, ("10.0.0.1", 1), ("10.0.0.2", 2), 0.0).client_bytes(b"x", 0.0)
        assert recorder.path is not None and recorder.path.endswith("-000002.pcap")
    assert victim.read_bytes() == b"secret"
    assert (rec / "scriptgen-19700101T000000Z-000001.pcap").read_bytes() == b"an earlier run's file"


def test_the_directory_is_checked_like_the_log_directory(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ServeError, match="--record .*symbolic link"):
        Recorder(str(tmp_path / "link"))
    real.chmod(0o777)
    with pytest.raises(ServeError, match="--record .*writable by other users"):
        Recorder(str(real))
    Recorder(str(tmp_path / "new")).close()
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) & 0o027 == 0


def test_a_failed_write_is_cut_back_to_whole_records(tmp_path, monkeypatch):
    recorder = Recorder(str(tmp_path / "rec"))
    session = recorder.open(Transport.TCP, ("10.0.0.1", 1), ("10.0.0.2", 2), 0.0)
    first = recorder.path
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 100:
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(record_module.os, "write", half_then_full)
    with pytest.raises(ServeError, match="No space left"):
        session.server_bytes(b"x" * 5000, 1.0)
    monkeypatch.undo()
    assert first is not None and len(_records(first)) == 3  # the handshake, nothing cut
    session.server_bytes(b"later", 2.0)  # goes on in a new file
    assert recorder.path not in (None, first)
    recorder.close()


# -- Wireshark's view ------------------------------------------------------------------------

needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (tools/test.sh installs it)")


def _tshark(*args: str) -> str:
    assert TSHARK is not None
    run = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr.lower().replace('running as user "root"', ""), run.stderr
    return run.stdout


@needs_tshark
def test_tshark_finds_no_bad_checksum_malformed_packet_or_warning(tmp_path):
    with Recorder(str(tmp_path / "rec"), RecordParams(rotate_bytes=200_000)) as recorder:
        _scenario(recorder)
    for path in _files(tmp_path / "rec"):
        bad = _tshark(
            "-r", path, "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
            "-o", "udp.check_checksum:TRUE",
            "-Y", "ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0 "
                  "|| _ws.malformed || (_ws.expert.severity >= 0x600000 && !tcp.flags.reset)",
        )
        assert bad == "", bad
        good = _tshark("-r", path, "-o", "tcp.check_checksum:TRUE", "-Y", "tcp.checksum.status == 1")
        assert good  # the checksums were checked, and found right


@needs_tshark
def test_tshark_reassembles_the_same_bytes(tmp_path):
    with Recorder(str(tmp_path / "rec")) as recorder:
        d = _scenario(recorder)
    (path,) = _files(tmp_path / "rec")
    tcp = [e for e in d.expected.values() if e.transport is Transport.TCP]
    for stream, want in enumerate(tcp):  # tshark numbers streams in the order of their SYN
        out = _tshark("-r", path, "-q", "-z", f"follow,tcp,raw,{stream}")
        got: list[tuple[Sender, bytes]] = []
        for line in out.split("=" * 67)[1].splitlines()[5:]:
            if not line.strip():
                continue
            sender = Sender.SERVER if line.startswith("\t") else Sender.CLIENT
            chunk = bytes.fromhex(line.strip())
            if got and got[-1][0] is sender:
                got[-1] = (sender, got[-1][1] + chunk)
            else:
                got.append((sender, chunk))
        assert got == want.messages, stream
