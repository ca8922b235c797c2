"""A small two-connection binary protocol for the data-channel tests, with a real server
and a client that checks every answer and every data connection the way a real client
would. Like FTP's PASV and PORT, the data connections are announced inside the control
conversation, once by the server and once by the client, but nothing else is FTP-like.

Every control message is a frame: a u16 big-endian length of the payload, then the
payload.

    client  GET\\0 <u8 n><name>
    server  OPEN <u16be port> <u8 n><name>     then accepts one connection on that fresh
                                                listener (from the control peer's IP only),
                                                sends content(name) and closes it
    client  PUSH <u16be port> <u8 n><name>     the client listens on that port already
    server  SENT <u8 n><name>                  then connects to (control peer, port) and
                                                sends content(name) and closes it
    client  QUIT
    server  BYE!                               and closes

GET and PUSH may be repeated on one control connection; anything else is answered ERR!.
content(name) is a fixed function of the name that is not an echo of it.
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.learn.loopback import capturing
from tests.learn.tokenproto import read_exactly

MODES = ("get", "push")
DATA_TIMEOUT = 5.0  # the server's wait for a data connection


def frame(payload: bytes) -> bytes:
    return struct.pack(">H", len(payload)) + payload


def content(name: bytes) -> bytes:
    """What a data connection carries for `name`: 36 + 3 * len(name) bytes."""
    return b"DATA" + hashlib.sha256(name).digest() + name[::-1] * 3


def _name(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def _parse_name(body: bytes) -> bytes | None:
    if not body or body[0] != len(body) - 1:
        return None
    return body[1:]


def read_frame(sock: socket.socket) -> bytes | None:
    """The payload of the next control frame, None at EOF (a timeout raises)."""
    header = read_exactly(sock, 2)
    if header is None:
        return None
    return read_exactly(sock, struct.unpack(">H", header)[0])


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- the server ---------------------------------------------------------------------------


class _Handler(socketserver.BaseRequestHandler):
    server: ChannelServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)  # an idle client does not hold a thread for ever
        peer = sock.getpeername()[0]
        try:
            while True:
                payload = read_frame(sock)
                if payload is None:
                    return
                verb, body = payload[:4], payload[4:]
                name = _parse_name(body)
                if verb == b"GET\0" and name is not None:
                    self._get(sock, peer, name)
                elif verb == b"PUSH" and len(body) >= 2 and (name := _parse_name(body[2:])) is not None:
                    (port,) = struct.unpack(">H", body[:2])
                    sock.sendall(frame(b"SENT" + _name(name)))
                    self._push(peer, port, name)
                elif verb == b"QUIT":
                    sock.sendall(frame(b"BYE!"))
                    return
                else:
                    sock.sendall(frame(b"ERR!"))
        except OSError:
            return

    def _get(self, sock: socket.socket, peer: str, name: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            sock.sendall(frame(b"OPEN" + struct.pack(">H", listener.getsockname()[1]) + _name(name)))
            deadline = time.monotonic() + DATA_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                listener.settimeout(remaining)
                try:
                    conn, address = listener.accept()
                except TimeoutError:
                    return
                if address[0] == peer:
                    break
                conn.close()  # not the control peer: keep waiting for it
        self._send(conn, name)

    def _push(self, peer: str, port: int, name: bytes) -> None:
        try:
            conn = socket.create_connection((peer, port), timeout=DATA_TIMEOUT)
        except OSError:
            return  # the client will notice that nothing came
        self._send(conn, name)

    def _send(self, conn: socket.socket, name: bytes) -> None:
        with conn:
            conn.settimeout(DATA_TIMEOUT)
            self.server.record(conn)
            conn.sendall(content(name))


class ChannelServer(socketserver.ThreadingTCPServer):
    """The real server on an ephemeral 127.0.0.1 port, serving until `stop()`.

    `data_connections` lists the (local port, remote port) of every data connection it
    opened or accepted, so a capture can be narrowed to exactly this protocol's traffic.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port: int = self.server_address[1]
        self.data_connections: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def record(self, conn: socket.socket) -> None:
        with self._lock:
            self.data_connections.append((conn.getsockname()[1], conn.getpeername()[1]))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# -- the client ---------------------------------------------------------------------------


def converse(host: str, port: int, names: Sequence[bytes], mode: str | Sequence[str] = "get",
             timeout: float = 3.0) -> list[str]:
    """One control conversation as the client: what was wrong (empty: all right).

    For each name, a GET (`mode` "get") or a PUSH ("push"); `mode` is one mode for all
    names or one per name. Only what is on the wire is relied on, so this works against
    any server at (host, port); every socket has `timeout`, so a broken peer gives
    problems, never a hang. A broken control connection ends the conversation.
    """
    modes = [mode] * len(names) if isinstance(mode, str) else list(mode)
    if len(modes) != len(names) or not set(modes) <= set(MODES):
        raise ValueError(f"mode must be one of {MODES} or one of them per name, not {mode!r}")
    problems: list[str] = []
    try:
        ctrl = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return [f"cannot connect to {host}:{port}: {e}"]
    with ctrl:
        try:
            for name, how in zip(names, modes, strict=True):
                if how == "get":
                    _get(ctrl, name, timeout, problems)
                else:
                    _push(ctrl, name, timeout, problems)
            ctrl.sendall(frame(b"QUIT"))
            answer = _answer(ctrl, "QUIT")
            if answer != b"BYE!":
                problems.append(f"QUIT: expected b'BYE!', got {answer[:24]!r}")
        except _Broken as e:
            problems.append(str(e))
        except OSError as e:
            problems.append(f"control connection: {e!r}")
    return problems


class _Broken(Exception):
    """The control connection cannot go on (EOF or timeout)."""


def _answer(ctrl: socket.socket, what: str) -> bytes:
    try:
        payload = read_frame(ctrl)
    except TimeoutError:
        raise _Broken(f"{what}: no answer within {ctrl.gettimeout()} s") from None
    if payload is None:
        raise _Broken(f"{what}: the server closed the control connection")
    return payload


def _get(ctrl: socket.socket, name: bytes, timeout: float, problems: list[str]) -> None:
    what = f"GET {name!r}"
    ctrl.sendall(frame(b"GET\0" + _name(name)))
    answer = _answer(ctrl, what)
    if answer[:4] != b"OPEN" or len(answer) < 6:
        problems.append(f"{what}: expected OPEN, got {answer[:24]!r}")
        return
    if answer[6:] != _name(name):
        problems.append(f"{what}: OPEN does not echo the name: {answer[6:]!r}")
    (port,) = struct.unpack(">H", answer[4:6])
    if port == 0:
        problems.append(f"{what}: OPEN announces port 0")
        return
    host = ctrl.getpeername()[0]
    try:
        with socket.create_connection((host, port), timeout=timeout) as data:
            received = _read_all(data)
    except OSError as e:
        problems.append(f"{what}: data connection to {host}:{port}: {e!r}")
        return
    _check_content(what, name, received, problems)


def _push(ctrl: socket.socket, name: bytes, timeout: float, problems: list[str]) -> None:
    what = f"PUSH {name!r}"
    # listen where the server can reach us: the address it sees on the control connection
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((ctrl.getsockname()[0], 0))
        listener.listen(1)
        listener.settimeout(timeout)
        port = listener.getsockname()[1]
        ctrl.sendall(frame(b"PUSH" + struct.pack(">H", port) + _name(name)))
        answer = _answer(ctrl, what)
        if answer[:4] != b"SENT":
            problems.append(f"{what}: expected SENT, got {answer[:24]!r}")
            return
        if answer[4:] != _name(name):
            problems.append(f"{what}: SENT does not echo the name: {answer[4:]!r}")
        try:
            conn, address = listener.accept()
        except OSError as e:
            problems.append(f"{what}: no data connection to port {port}: {e!r}")
            return
    with conn:
        if address[0] != ctrl.getpeername()[0]:
            problems.append(f"{what}: data connection from {address[0]}, not the server")
        try:
            conn.settimeout(timeout)
            received = _read_all(conn)
        except OSError as e:
            problems.append(f"{what}: data connection from {address}: {e!r}")
            return
    _check_content(what, name, received, problems)


def _check_content(what: str, name: bytes, received: bytes, problems: list[str]) -> None:
    if received != content(name):
        problems.append(f"{what}: data is not content(name): {len(received)} bytes, {received[:24]!r}")


# -- a capture ----------------------------------------------------------------------------


def capture(tmp: Path, sessions: int, names: Sequence[bytes], *, per_session: int = 3,
            modes: Sequence[str] = MODES, seed: int = 7) -> Path:
    """Capture `sessions` control conversations against a fresh ChannelServer on `lo`.

    Each conversation takes `per_session` of `names` and a mode from `modes` for each, drawn
    from random.Random(`seed`). The capture is narrowed afterwards to the control port and
    the data connections the server made, so other traffic on loopback does not get in.
    Skips the test without tcpdump or root.
    """
    server = ChannelServer()
    raw = tmp / "channelproto-raw.pcap"
    pcap = tmp / "channelproto.pcap"
    try:
        with capturing(raw, "tcp and host 127.0.0.1", tmp / "tcpdump.log"):
            rng = random.Random(seed)
            for _ in range(sessions):
                chosen = rng.sample(list(names), min(per_session, len(names)))
                how = [rng.choice(list(modes)) for _ in chosen]
                problems = converse("127.0.0.1", server.port, chosen, how)
                assert problems == [], problems
                time.sleep(0.02)  # the capture spans a moment, as a real one would
    finally:
        server.stop()
    wanted = " or ".join([f"tcp port {server.port}"]
                         + [f"(tcp port {a} and tcp port {b})" for a, b in server.data_connections])
    subprocess.run(["tcpdump", "-n", "-r", str(raw), "-w", str(pcap), f"ip and ({wanted})"],
                   check=True, capture_output=True, timeout=30)
    raw.unlink()
    return pcap
