"""The two-connection protocol of channelproto against its own real server: the client's
checks pass, a broken peer gives problems in bounded time, and a capture of it holds the
control sessions and the data sessions they announce."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from scriptgen.capture import read_sessions
from scriptgen.model import Sender
from tests.learn import channelproto
from tests.learn.channelproto import ChannelServer, content, converse, frame, read_frame

NAMES = [b"a", b"report.txt", b"", b"x" * 255, bytes(range(1, 40)), b"Zebra-7"]


@pytest.fixture
def server():
    server = ChannelServer()
    yield server
    server.stop()


# -- the client against the real server ---------------------------------------------------


def test_content_is_not_an_echo_and_varies_in_length():
    assert content(b"abc") == content(b"abc") != content(b"abd")
    assert b"abc" not in content(b"abc") and len(content(b"abcd")) == len(content(b"abc")) + 3


@pytest.mark.parametrize("mode", ["get", "push"])
def test_client_passes_against_the_real_server(server, mode):
    assert converse("127.0.0.1", server.port, NAMES, mode) == []
    assert len(server.data_connections) == len(NAMES)


def test_get_and_push_mix_and_repeat_on_one_connection(server):
    names = [b"one", b"one", b"two", b"two", b"three"]
    assert converse("127.0.0.1", server.port, names, ["get", "push", "push", "get", "get"]) == []


def test_concurrent_conversations(server):
    results: list[list[str]] = []

    def run(i: int) -> None:
        names = [f"client{i}-{k}".encode() for k in range(4)]
        results.append(converse("127.0.0.1", server.port, names, ["get", "push"] * 2))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [[]] * 8
    assert len(server.data_connections) == 32


def test_server_answers_err_to_nonsense(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        for request in (b"HELO", b"GET\0\x05ab", b"PUSH\x00", b""):
            sock.sendall(frame(request))
            assert read_frame(sock) == b"ERR!"
        sock.sendall(frame(b"QUIT"))
        assert read_frame(sock) == b"BYE!"
        assert read_frame(sock) is None


def test_bad_mode_is_refused():
    with pytest.raises(ValueError):
        converse("127.0.0.1", 1, [b"a"], "put")
    with pytest.raises(ValueError):
        converse("127.0.0.1", 1, [b"a", b"b"], ["get"])


# -- broken peers give problems, not hangs ------------------------------------------------


@contextmanager
def _stub(handler: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection server on 127.0.0.1 running `handler`; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                handler(conn)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(10)


def _dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound for a moment, never listened on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed(port: int, names: list[bytes], mode: str, timeout: float) -> tuple[list[str], float]:
    start = time.monotonic()
    problems = converse("127.0.0.1", port, names, mode, timeout=timeout)
    return problems, time.monotonic() - start


def test_open_announcing_a_dead_port_is_a_problem():
    def handler(conn: socket.socket) -> None:
        while (payload := read_frame(conn)) is not None:
            if payload[:4] == b"GET\0":
                conn.sendall(frame(b"OPEN" + struct.pack(">H", _dead_port()) + payload[4:]))
            else:
                conn.sendall(frame(b"BYE!"))
                return

    with _stub(handler) as port:
        problems, took = _timed(port, [b"file"], "get", 1.0)
    assert len(problems) == 1 and "data connection" in problems[0], problems
    assert took < 3


def test_sent_without_a_data_connection_is_a_problem():
    def handler(conn: socket.socket) -> None:
        while (payload := read_frame(conn)) is not None:
            if payload[:4] == b"PUSH":
                conn.sendall(frame(b"SENT" + payload[6:]))  # but never connects
            else:
                conn.sendall(frame(b"BYE!"))
                return

    with _stub(handler) as port:
        problems, took = _timed(port, [b"file"], "push", 0.5)
    assert len(problems) == 1 and "no data connection" in problems[0], problems
    assert took < 3


def test_wrong_data_and_wrong_echo_are_problems():
    def handler(conn: socket.socket) -> None:
        with socket.create_server(("127.0.0.1", 0)) as data:
            data.settimeout(5)
            read_frame(conn)
            conn.sendall(frame(b"OPEN" + struct.pack(">H", data.getsockname()[1]) + b"\x05other"))
            accepted, _ = data.accept()
            with accepted:
                accepted.sendall(content(b"other"))
        read_frame(conn)
        conn.sendall(frame(b"BYE!"))

    with _stub(handler) as port:
        problems, took = _timed(port, [b"file"], "get", 1.0)
    assert len(problems) == 2, problems
    assert "echo" in problems[0] and "not content" in problems[1]
    assert took < 3


def test_silent_or_closing_server_is_a_problem():
    with _stub(lambda conn: time.sleep(1)) as port:
        problems, took = _timed(port, [b"file"], "get", 0.5)
    assert problems and "no answer" in problems[0], problems
    assert took < 2

    with _stub(read_frame) as port:  # reads the request, then closes
        problems, took = _timed(port, [b"file"], "push", 0.5)
    assert problems and "closed" in problems[0], problems
    assert took < 2

    problems, took = _timed(_dead_port(), [b"file"], "get", 0.5)
    assert problems and "cannot connect" in problems[0] and took < 2


# -- a capture ----------------------------------------------------------------------------


def test_capture_holds_control_and_data_sessions(tmp_path):
    names = [b"alpha", b"beta", b"gamma.bin", b"d", b"epsilon-epsilon"]
    pcap = channelproto.capture(tmp_path, 6, names)
    sessions = list(read_sessions([str(pcap)]))
    control_port, control = Counter(s.server_port for s in sessions).most_common(1)[0]
    assert control == 6
    data = [s for s in sessions if s.server_port != control_port]
    assert len(data) == 6 * 3 and len({s.server_port for s in data}) == len(data)
    assert all(s.close == "fin" and not s.midstream for s in sessions)
    contents = {content(name) for name in names}
    senders = set()
    for session in data:
        (message,) = session.messages  # one side speaks, once
        assert message.data in contents
        senders.add(message.sender)
    # GET: the server's listener sends; PUSH: the server connects to the client and sends
    assert senders == {Sender.SERVER, Sender.CLIENT}
    for session in sessions:
        if session.server_port == control_port:
            first = session.messages[0]
            assert first.sender is Sender.CLIENT and first.data[2:6] in (b"GET\0", b"PUSH")
            assert session.messages[-1].data == frame(b"BYE!")
