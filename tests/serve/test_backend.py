"""A real server behind the honeypot (docs/backend.md): what the model does not know is handed
over and relayed; a backend that fails leaves the session to the model."""

from __future__ import annotations

import functools
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scriptgen.capture import read_sessions
from scriptgen.emulate import Machine
from scriptgen.learn import learn
from scriptgen.modelfile import port_doc
from scriptgen.params import LearnParams
from scriptgen.serve import Listener, ServeParams
from scriptgen.serve.backend import Backend
from scriptgen.model import Sender
from tests.learn.sessions import session
from tests.serve.harness import BANNER, ServerThread, connect, listener, read_answer, wait_closed, wait_until

ROOT = Path(__file__).resolve().parents[2]


class _Ftpish(socketserver.StreamRequestHandler):
    """The protocol of the test model, and more: SIZE, which the model never saw."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Backend)
        lines: list[bytes] = []
        server.conversations.append(lines)
        self.wfile.write(server.banner)
        for line in self.rfile:
            lines.append(line)
            word, _, arg = line.strip().partition(b" ")
            if word == b"SIZE" and server.silent:
                continue
            if word == b"SIZE" and server.flood:
                self.wfile.write(b"213 " + b"9" * (server.flood) + b"\r\n")
                continue
            answer = {b"USER": b"331 Password required for " + arg + b".\r\n", b"PASS": b"230 Logged in.\r\n",
                      b"SYST": b"215 UNIX Type: L8\r\n", b"SIZE": b"213 4242\r\n",
                      b"QUIT": b"221 Bye.\r\n"}.get(word, b"500 Unknown command.\r\n")
            self.wfile.write(answer)
            if word == b"QUIT":
                return


class _Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, banner: bytes, silent: bool, flood: int) -> None:
        super().__init__(("127.0.0.1", 0), _Ftpish)
        self.banner, self.silent, self.flood = banner, silent, flood
        self.conversations: list[list[bytes]] = []


@contextmanager
def backend(banner: bytes = BANNER, silent: bool = False, flood: int = 0) -> Iterator[_Backend]:
    server = _Backend(banner, silent, flood)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _serving(tmp_path, address: tuple[str, int], **params: object) -> ServerThread:
    serve = ServeParams(**{"backend_wait": 1.0, **params})  # type: ignore[arg-type]
    ln = listener("ftp")
    ln = type(ln)(ln.transport, ln.host, ln.port, ln.machine, ln.model, ln.model_port, Backend(*address, serve))
    return ServerThread([ln], tmp_path, serve)


def _talk(sock: socket.socket, request: bytes, expect: bytes) -> None:
    sock.sendall(request)
    assert read_answer(sock, expect=len(expect), silence=5.0)[0] == expect


def test_a_request_the_model_never_saw_is_answered_by_the_backend_after_the_same_conversation(tmp_path):
    with backend() as real, _serving(tmp_path, real.server_address) as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
            _talk(sock, b"USER bob\r\n", b"331 Password required for bob.\r\n")
            _talk(sock, b"PASS secret\r\n", b"230 Logged in.\r\n")
            _talk(sock, b"SIZE secret.txt\r\n", b"213 4242\r\n")  # the model never saw SIZE
            _talk(sock, b"SYST\r\n", b"215 UNIX Type: L8\r\n")
            _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
            assert wait_closed(sock)
    assert real.conversations == [[b"USER bob\r\n", b"PASS secret\r\n", b"SIZE secret.txt\r\n", b"SYST\r\n",
                                   b"QUIT\r\n"]]
    events = srv.events()
    (handover,) = [e for e in events if e["eventid"] == "scriptgen.session.handover"]
    assert handover["inputs"] == 3 and handover["reason"] == "unmatched"
    closed = [e for e in events if e["eventid"] == "scriptgen.session.closed"][0]
    assert closed["backend"] == "%s:%d" % real.server_address and closed["reason"] == "backend"
    relayed = [e for e in events if e["eventid"] == "scriptgen.session.relayed"]
    assert [e["direction"] for e in relayed][:2] == ["out", "in"]


def test_handover_always_is_a_pure_relay_from_the_banner_on(tmp_path):
    with backend(banner=b"220 the real one\r\n") as real, \
            _serving(tmp_path, real.server_address, handover="always") as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=18, silence=5.0)[0] == b"220 the real one\r\n"
            _talk(sock, b"USER eve\r\n", b"331 Password required for eve.\r\n")
            _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
            assert wait_closed(sock)
    (handover,) = [e for e in srv.events() if e["eventid"] == "scriptgen.session.handover"]
    assert handover["reason"] == "always" and handover["inputs"] == 0


def test_handover_never_connects_to_nothing(tmp_path):
    with backend() as real, _serving(tmp_path, real.server_address, handover="never") as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
            sock.sendall(b"SIZE x\r\n")
            read_answer(sock)
    assert real.conversations == []


def test_an_unreachable_backend_leaves_the_session_to_the_model_and_is_retried_later(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    address = closed.getsockname()
    closed.close()  # nothing listens there
    with _serving(tmp_path, address, backend_retry=30.0) as srv:
        for _ in range(2):
            with connect(srv.addr()) as sock:
                assert read_answer(sock, expect=len(BANNER))[0] == BANNER
                _talk(sock, b"USER bob\r\n", b"331 Password required for bob.\r\n")
                sock.sendall(b"SIZE x\r\n")
                assert read_answer(sock, silence=5.0)[0]  # the model's fallback answer
    failed = [e for e in srv.events() if e["eventid"] == "scriptgen.session.backend"]
    assert len(failed) == 1 and "retried in 30s" in failed[0]["error"]  # the second session did not try


def test_a_backend_silent_at_the_handover_gives_the_session_back_to_the_model(tmp_path):
    with backend(silent=True) as real, _serving(tmp_path, real.server_address, backend_wait=0.5) as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
            _talk(sock, b"USER bob\r\n", b"331 Password required for bob.\r\n")
            sock.sendall(b"SIZE x\r\n")
            assert read_answer(sock, silence=5.0)[0]  # the model's answer, held back, then sent
            _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
    kinds = [e["eventid"] for e in srv.events()]
    assert "scriptgen.session.backend" in kinds and "scriptgen.session.handover" not in kinds


def test_a_backend_flood_after_the_handover_is_cut_and_other_sessions_go_on(tmp_path):
    with backend(flood=4 << 20) as real, \
            _serving(tmp_path, real.server_address, backend_max_bytes=1 << 20) as srv:
        with connect(srv.addr()) as flooded, connect(srv.addr()) as other:
            assert read_answer(flooded, expect=len(BANNER))[0] == BANNER
            assert read_answer(other, expect=len(BANNER))[0] == BANNER
            flooded.sendall(b"SIZE x\r\n")
            got = 0
            flooded.settimeout(5)
            while True:
                chunk = flooded.recv(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
            assert got <= (1 << 20) + (1 << 16)
            _talk(other, b"USER bob\r\n", b"331 Password required for bob.\r\n")
        assert wait_until(lambda: srv.open_sessions() == 0)
    reasons = [e["reason"] for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert "backend-failed" in reasons


class _Ftp(socketserver.StreamRequestHandler):
    """Enough of an FTP server for data channels: PASV, EPSV, PORT, EPRT and RETR."""

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _FtpBackend)
        self.wfile.write(b"220 (vsFTPd 3.0.3)\r\n")
        passive: socket.socket | None = None
        active: tuple[str, int] | None = None
        for line in self.rfile:
            server.heard.append(line)
            word, _, arg = line.strip().partition(b" ")
            word = word.upper()
            if word == b"USER":
                self.wfile.write(b"331 Please specify the password.\r\n")
            elif word == b"PASS":
                self.wfile.write(b"230 Login successful.\r\n")
            elif word in (b"PASV", b"EPSV"):
                passive = socket.create_server(("127.0.0.1", 0))
                port = passive.getsockname()[1]
                server.announced.append(port)
                self.wfile.write(b"227 Entering Passive Mode (127,0,0,1,%d,%d).\r\n" % (port >> 8, port & 255)
                                 if word == b"PASV" else b"229 Entering Extended Passive Mode (|||%d|)\r\n" % port)
            elif word == b"PORT":
                n = [int(x) for x in arg.split(b",")]
                active = (".".join(map(str, n[:4])), n[4] * 256 + n[5])
                self.wfile.write(b"200 PORT command successful.\r\n")
            elif word == b"EPRT":
                d = arg[:1]
                _, _, host, port, _ = arg.split(d)
                active = (host.decode(), int(port))
                self.wfile.write(b"200 EPRT command successful.\r\n")
            elif word == b"RETR":
                self.wfile.write(b"150 Opening BINARY mode data connection.\r\n")
                if passive is not None:
                    passive.settimeout(5)
                    data, _ = passive.accept()
                    passive.close()
                    passive = None
                else:
                    assert active is not None
                    server.connected_to.append(active)
                    data = socket.create_connection(active, timeout=5)
                with data:
                    data.sendall(b"the file " + arg + b"\n" * 3000)
                self.wfile.write(b"226 Transfer complete.\r\n")
            elif word == b"QUIT":
                self.wfile.write(b"221 Goodbye.\r\n")
                return
            else:
                self.wfile.write(b"500 Unknown command.\r\n")


class _FtpBackend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Ftp)
        self.heard: list[bytes] = []
        self.announced: list[int] = []
        self.connected_to: list[tuple[str, int]] = []


@functools.cache
def _vsftpd_machine() -> Machine:
    """The bundled example's model: vsftpd, with its PASV data channels learned."""
    model = learn(read_sessions([str(ROOT / "examples/ftp/vsftpd-anon.pcap")]), LearnParams(jobs=1))
    (port,) = model.ports
    return Machine(port_doc(port))


def _ftp_serving(tmp_path, backend_address: tuple[str, int]) -> ServerThread:
    serve = ServeParams(backend_wait=2.0)
    m = _vsftpd_machine()
    ln = Listener(m.transport, "127.0.0.1", 0, m, "ftp.json", m.port, Backend(*backend_address, serve))
    return ServerThread([ln], tmp_path, serve)


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize("command", [b"PASV", b"EPSV"])
def test_a_passive_data_channel_of_the_backend_is_announced_as_ours_and_relayed(tmp_path, command):
    real = _FtpBackend()
    threading.Thread(target=real.serve_forever, daemon=True).start()
    try:
        with _ftp_serving(tmp_path, real.server_address) as srv, connect(srv.addr("ftp")) as sock:
            assert read_answer(sock, silence=5.0)[0].startswith(b"220")
            _talk(sock, b"USER anonymous\r\n", b"331 Please specify the password.\r\n")
            sock.sendall(b"XSHA1 never-seen\r\n")  # the model has no answer: handed over
            assert read_answer(sock, silence=5.0)[0] == b"500 Unknown command.\r\n"
            sock.sendall(command + b"\r\n")
            answer = read_answer(sock, silence=5.0)[0]
            if command == b"PASV":
                numbers = [int(x) for x in answer[answer.index(b"(") + 1 : answer.index(b")")].split(b",")]
                port = numbers[4] * 256 + numbers[5]
            else:
                port = int(answer.split(b"|||")[1].split(b"|")[0])
            assert port != real.announced[-1]  # the client never learns the backend's port
            with socket.create_connection(("127.0.0.1", port), timeout=5) as data:
                sock.sendall(b"RETR secret.bin\r\n")
                assert _read_all(data) == b"the file secret.bin" + b"\n" * 3000
            assert b"226 Transfer complete." in read_answer(sock, silence=5.0)[0] + read_answer(sock)[0]
    finally:
        real.shutdown()
        real.server_close()


def test_a_data_channel_the_model_announced_before_the_handover_goes_to_the_backend(tmp_path):
    """curl's way: EPSV answered by the model, its port connected to at once, and the file
    asked after the handover. The backend, mirrored, announced a port of its own: what the
    client connected to is relayed there, and the backend's file reaches the client."""
    real = _FtpBackend()
    threading.Thread(target=real.serve_forever, daemon=True).start()
    try:
        with _ftp_serving(tmp_path, real.server_address) as srv, connect(srv.addr("ftp")) as sock:
            assert read_answer(sock, silence=5.0)[0].startswith(b"220")
            _talk(sock, b"USER anonymous\r\n", b"331 Please specify the password.\r\n")
            for request, status in ((b"PASS ftp@example.com\r\n", b"230"), (b"PWD\r\n", b"257"),
                                    (b"CWD pub\r\n", b"250")):
                sock.sendall(request)
                assert read_answer(sock, silence=5.0)[0].startswith(status)
            sock.sendall(b"EPSV\r\n")
            answer = read_answer(sock, silence=5.0)[0]
            assert answer.startswith(b"229"), answer  # the model's
            port = int(answer.split(b"|||")[1].split(b"|")[0])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as data:
                sock.sendall(b"XSHA1 never-seen\r\n")  # handed over
                assert read_answer(sock, silence=5.0)[0] == b"500 Unknown command.\r\n"
                sock.sendall(b"RETR secret.bin\r\n")
                assert _read_all(data) == b"the file secret.bin" + b"\n" * 3000
            assert b"226 Transfer complete." in read_answer(sock, silence=5.0)[0] + read_answer(sock)[0]
        events = srv.events()
    finally:
        real.shutdown()
        real.server_close()
    assert real.heard[3:6] == [b"CWD pub\r\n", b"EPSV\r\n", b"XSHA1 never-seen\r\n"]  # mirrored, handed over
    assert [e["action"] for e in events if e["eventid"] == "scriptgen.session.channel"][-1:] == ["relay"]
    assert "relayed" in [e["reason"] for e in events if e["eventid"] == "scriptgen.session.closed"]


@pytest.mark.parametrize("active", [False, True])
def test_a_recorded_session_keeps_its_relayed_data_connections_and_a_model_learns_them(tmp_path, active):
    """What the backend sent on a data connection is in the recording, on the address and
    port the client was given: learned again, the model sends that file on its own."""
    from scriptgen.capture import capture_files
    from scriptgen.serve.record import Recorder

    real = _FtpBackend()
    threading.Thread(target=real.serve_forever, daemon=True).start()
    mine = socket.create_server(("127.0.0.1", 0))
    try:
        with _ftp_serving(tmp_path, real.server_address) as srv:
            srv.server.recorder = Recorder(str(tmp_path / "rec"))
            with connect(srv.addr("ftp")) as sock:
                assert read_answer(sock, silence=5.0)[0].startswith(b"220")
                _talk(sock, b"USER anonymous\r\n", b"331 Please specify the password.\r\n")
                sock.sendall(b"XSHA1 never-seen\r\n")  # handed over
                assert read_answer(sock, silence=5.0)[0] == b"500 Unknown command.\r\n"
                if active:
                    port = mine.getsockname()[1]
                    _talk(sock, b"PORT 127,0,0,1,%d,%d\r\n" % (port >> 8, port & 255), b"200 PORT command successful.\r\n")
                    sock.sendall(b"RETR kept.bin\r\n")
                    mine.settimeout(5)
                    data = mine.accept()[0]
                else:
                    sock.sendall(b"PASV\r\n")
                    answer = read_answer(sock, silence=5.0)[0]
                    n = [int(x) for x in answer[answer.index(b"(") + 1 : answer.index(b")")].split(b",")]
                    data = socket.create_connection(("127.0.0.1", n[4] * 256 + n[5]), timeout=5)
                    sock.sendall(b"RETR kept.bin\r\n")
                with data:
                    assert _read_all(data) == b"the file kept.bin" + b"\n" * 3000
                assert b"226 Transfer complete." in read_answer(sock, silence=5.0)[0] + read_answer(sock)[0]
                _talk(sock, b"QUIT\r\n", b"221 Goodbye.\r\n")
            srv.stop()
            srv.server.recorder.close()
    finally:
        mine.close()
        real.shutdown()
        real.server_close()
    files = capture_files([str(tmp_path / "rec")])
    sessions = list(read_sessions(files))
    # The data connection, whole (the backend's bytes sent by the end that connected, when active).
    sent = [b"".join(m.data for m in s.messages if m.sender == (Sender.CLIENT if active else Sender.SERVER))
            for s in sessions]
    assert b"the file kept.bin" + b"\n" * 3000 in sent
    model = learn(read_sessions(files), LearnParams(jobs=1))
    (port,) = model.ports
    channels = [t.channel for t in port.transitions.values() if t.channel is not None]
    assert any(b"the file kept.bin" in label_bytes(c) for c in channels), "the data channel was not learned"


def label_bytes(port) -> bytes:
    return b"".join(p for s in port.states.values() for label in s.labels for p in label.parts
                    if isinstance(p, bytes))


def test_an_active_data_channel_of_the_client_is_announced_to_the_backend_as_ours(tmp_path):
    real = _FtpBackend()
    threading.Thread(target=real.serve_forever, daemon=True).start()
    mine = socket.create_server(("127.0.0.1", 0))
    my_port = mine.getsockname()[1]
    try:
        with _ftp_serving(tmp_path, real.server_address) as srv, connect(srv.addr("ftp")) as sock:
            assert read_answer(sock, silence=5.0)[0].startswith(b"220")
            _talk(sock, b"USER anonymous\r\n", b"331 Please specify the password.\r\n")
            sock.sendall(b"XSHA1 never-seen\r\n")
            assert read_answer(sock, silence=5.0)[0] == b"500 Unknown command.\r\n"
            _talk(sock, b"PORT 127,0,0,1,%d,%d\r\n" % (my_port >> 8, my_port & 255), b"200 PORT command successful.\r\n")
            sock.sendall(b"RETR pushed.bin\r\n")
            mine.settimeout(5)
            data, _ = mine.accept()
            with data:
                assert _read_all(data) == b"the file pushed.bin" + b"\n" * 3000
        assert real.connected_to and real.connected_to[-1][1] != my_port  # the backend never learns the client's
    finally:
        mine.close()
        real.shutdown()
        real.server_close()


def test_a_handed_over_session_is_recorded_as_the_client_saw_it_and_learned_from(tmp_path):
    from scriptgen.capture import capture_files
    from scriptgen.model import Sender
    from scriptgen.serve.record import Recorder

    said = [(b"USER bob\r\n", b"331 Password required for bob.\r\n"), (b"PASS secret\r\n", b"230 Logged in.\r\n"),
            (b"SIZE secret.txt\r\n", b"213 4242\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n")]
    with backend() as real, _serving(tmp_path / "logs", real.server_address) as srv:
        srv.server.recorder = Recorder(str(tmp_path / "rec"))
        with connect(srv.addr()) as handed, connect(srv.addr()) as modelled:
            assert read_answer(handed, expect=len(BANNER))[0] == BANNER
            assert read_answer(modelled, expect=len(BANNER))[0] == BANNER
            for request, answer in said:
                _talk(handed, request, answer)
            assert wait_closed(handed)
            _talk(modelled, b"SYST\r\n", b"215 UNIX Type: L8\r\n")  # never handed over: not recorded
        srv.stop()
        srv.server.recorder.close()
    files = capture_files([str(tmp_path / "rec")])
    (session,) = list(read_sessions(files))
    assert session.messages[0].sender == Sender.SERVER and session.messages[0].data == BANNER
    assert [(m.data) for m in session.messages[1:]] == [b for pair in said for b in pair]
    assert session.closed_by == Sender.SERVER
    model = learn(read_sessions(files), LearnParams(jobs=1))
    assert any(base64_has(t, b"SIZE") for p in model.ports for t in p.transitions.values())


def base64_has(transition, needle: bytes) -> bool:
    return any(needle in request for request, _ in transition.samples)


def test_the_sessions_table_and_sessions_log_name_the_backend(tmp_path):
    import json
    import subprocess

    from tests.serve.cli import CLI

    with backend() as real, _serving(tmp_path, real.server_address) as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
            _talk(sock, b"SIZE x\r\n", b"213 4242\r\n")
            _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
        with connect(srv.addr()) as sock:  # all the model knows: not handed over
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
            _talk(sock, b"SYST\r\n", b"215 UNIX Type: L8\r\n")
            _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
    done = subprocess.run([*CLI, "sessions-log", str(tmp_path), "--json"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(str(r["backend"]) for r in rows) == sorted(["%s:%d" % real.server_address, "None"])
    table = subprocess.run([*CLI, "sessions-log", str(tmp_path)], capture_output=True, text=True, timeout=60,
                           cwd=ROOT).stdout
    assert "-> backend %s:%d" % real.server_address in table


def test_a_request_the_model_would_close_on_is_the_backends_to_answer(tmp_path):
    """The model's QUIT at the root closes (learned elsewhere); handed over, the backend
    answers it and closes, and nothing the model held back is sent."""
    with backend() as real, _serving(tmp_path, real.server_address) as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
            _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
            assert wait_closed(sock)
    assert real.conversations == [[b"QUIT\r\n"]]


class _Udp(socketserver.BaseRequestHandler):
    """A UDP server of the udp test model's protocol: `Q` + 4 bytes -> `A` + them; `X...`
    (never in the model) -> `Y` + the rest."""

    def handle(self) -> None:
        data, sock = self.request
        assert isinstance(self.server, _UdpBackend)
        self.server.heard.append(data)
        if data[:1] == b"Q":
            sock.sendto(b"A" + data[1:], self.client_address)
        elif data[:1] == b"X":
            sock.sendto(b"Y" + data[1:], self.client_address)


class _UdpBackend(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Udp)
        self.heard: list[bytes] = []


def test_a_udp_request_the_model_never_saw_is_answered_by_the_backend(tmp_path):
    real = _UdpBackend()
    threading.Thread(target=real.serve_forever, daemon=True).start()
    serve = ServeParams(backend_wait=1.0)
    ln = listener("udp")
    ln = Listener(ln.transport, ln.host, ln.port, ln.machine, ln.model, ln.model_port, Backend(*real.server_address,
                                                                                              serve))
    try:
        with ServerThread([ln], tmp_path, serve) as srv:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5)
            sock.connect(srv.addr("udp"))
            sock.send(b"Q\x01\x01\x01\x01")
            assert sock.recv(100) == b"A\x01\x01\x01\x01"  # the model's
            sock.send(b"Xhello")
            assert sock.recv(100) == b"Yhello"  # the backend's: handed over
            sock.send(b"Q\x02\x02\x02\x02")
            assert sock.recv(100) == b"A\x02\x02\x02\x02"  # relayed
            sock.close()
        assert real.heard == [b"Q\x01\x01\x01\x01", b"Xhello", b"Q\x02\x02\x02\x02"]
        kinds = [e["eventid"] for e in srv.events()]
        assert "scriptgen.session.handover" in kinds
    finally:
        real.shutdown()
        real.server_close()


class _Http(socketserver.StreamRequestHandler):
    """One request, one answer, then the close: as HTTP/1.0."""

    def handle(self) -> None:
        line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        self.wfile.write(b"HTTP/1.0 405 Not Allowed\r\n\r\nreal: " + line.split(b" ")[0])


def test_a_request_whose_model_answer_ends_the_session_is_still_handed_over(tmp_path):
    # The model answers an unmatched request with its nearest page and closes after it, as
    # the real server did: the close waits for the backend, whose answer the client gets.
    pages = [b"/index.html", b"/about.html", b"/news.html"]
    model = learn([session((b"GET " + p + b" HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\npage " + p), port=80,
                           closed_by=Sender.SERVER) for p in pages], LearnParams(jobs=1))
    machine = Machine(port_doc(model.ports[0]))
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Http)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        serve = ServeParams(backend_wait=1.0)
        ln = Listener(machine.transport, "127.0.0.1", 0, machine, "http.json", machine.port,
                      Backend(*server.server_address, serve))
        with ServerThread([ln], tmp_path, serve) as srv:
            with connect(srv.addr("http")) as sock:
                sock.sendall(b"POST /upload HTTP/1.0\r\n\r\n")
                answer, closed = read_answer(sock, silence=5.0)
                assert answer == b"HTTP/1.0 405 Not Allowed\r\n\r\nreal: POST" and closed
            with connect(srv.addr("http")) as sock:  # a request the model knows: its answer, then its close
                sock.sendall(b"GET /about.html HTTP/1.0\r\n\r\n")
                assert read_answer(sock, silence=5.0) == (b"HTTP/1.0 200 OK\r\n\r\npage /about.html", True)
    finally:
        server.shutdown()
        server.server_close()
    reasons = [e["reason"] for e in srv.events() if e["eventid"] == "scriptgen.session.closed"]
    assert reasons == ["backend", "server"]
    # A backend that never answers: the model's held answer goes out, then its close.
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        serve = ServeParams(backend_wait=0.5)
        ln = Listener(machine.transport, "127.0.0.1", 0, machine, "http.json", machine.port,
                      Backend(*silent.getsockname()[:2], serve))
        with ServerThread([ln], tmp_path / "silent", serve) as srv:
            with connect(srv.addr("http")) as sock:
                sock.sendall(b"POST /upload HTTP/1.0\r\n\r\n")
                answer, closed = read_answer(sock, silence=5.0)
                assert answer.startswith(b"HTTP/1.0 200 OK\r\n\r\npage /") and closed
