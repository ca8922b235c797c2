"""A small binary protocol for the answer-field tests (issue 7), with a real server and a
client that checks every answer the way a real client would.

Every message is a frame: a u32 big-endian length of the payload, then the payload,
which starts with a fixed 32-byte header (protocol name, version, flags: as in SMB, most
of a binary message is structure, not parameters).

    client  HELO <u8 n><name>
    server  WELC <token: 8 random bytes> <u8 n><name> <u32 Unix time>
    client  PING <token> <u32 seq> <u8 n><name>          (a new name each time)
    server  PONG <token> <u32 seq + 1> <u8 n><name> <u32 Unix time>
    client  QUIT <token>
    server  BYE!                                          and closes

The token is chosen by the server per connection and must be echoed; `seq` is the
client's counter, which the server answers with the next value.
"""

from __future__ import annotations

import random
import socket
import socketserver
import string
import struct
import threading
import time
from collections.abc import Callable
from typing import cast

Exchange = Callable[[bytes], bytes]


HEADER = b"TKP/1.0\0" + bytes(range(8)) + b"\xff" * 8 + b"flags=0\0"


def frame(payload: bytes) -> bytes:
    payload = HEADER + payload
    return struct.pack(">I", len(payload)) + payload


def _name(value: bytes) -> bytes:
    return bytes([len(value)]) + value


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        token = cast("Server", self.server).tokens.randbytes(8)
        while True:
            payload = _read_frame(sock)
            if payload is None:
                return
            payload = payload[len(HEADER) :]
            verb, body = payload[:4], payload[4:]
            now = struct.pack(">I", int(time.time()))
            if verb == b"HELO":
                sock.sendall(frame(b"WELC" + token + body + now))
            elif verb == b"PING" and body[:8] == token:
                (seq,) = struct.unpack(">I", body[8:12])
                sock.sendall(frame(b"PONG" + token + struct.pack(">I", (seq + 1) & 0xFFFFFFFF) + body[12:] + now))
            elif verb == b"QUIT":
                sock.sendall(frame(b"BYE!"))
                return
            else:
                sock.sendall(frame(b"ERR!"))


def _read_frame(sock: socket.socket) -> bytes | None:
    header = read_exactly(sock, 4)
    if header is None:
        return None
    return read_exactly(sock, struct.unpack(">I", header)[0])


def read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tokens = random.Random(seed)  # one connection at a time: no lock needed
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def socket_exchange(sock: socket.socket) -> Exchange:
    def exchange(request: bytes) -> bytes:
        sock.sendall(request)
        header = read_exactly(sock, 4)
        if header is None:
            return b""
        return header + (read_exactly(sock, struct.unpack(">I", header)[0]) or b"")
    return exchange


def random_name(rng: random.Random, lengths: range) -> bytes:
    return "".join(rng.choice(string.ascii_letters) for _ in range(rng.choice(lengths))).encode()


def converse(exchange: Exchange, rng: random.Random, lengths: range, pings: int = 3) -> list[str]:
    """One session as the client: what was wrong with the server's answers (empty: all right)."""
    problems: list[str] = []
    name = random_name(rng, lengths)
    welcome = _payload(exchange(frame(b"HELO" + _name(name))), problems, "WELC")
    token = welcome[4:12]
    if welcome[12:-4] != _name(name):
        problems.append(f"welcome does not echo the name {name!r}: {welcome!r}")
    _check_time(welcome, problems)
    seq = rng.randrange(1, 1 << 31)
    for _ in range(pings):
        name = random_name(rng, lengths)
        pong = _payload(exchange(frame(b"PING" + token + struct.pack(">I", seq) + _name(name))), problems, "PONG")
        if pong[4:12] != token:
            problems.append("pong carries another token than the welcome")
        if pong[12:16] != struct.pack(">I", seq + 1):
            problems.append(f"pong's counter is not {seq + 1}: {pong[12:16].hex()}")
        if pong[16:-4] != _name(name):
            problems.append(f"pong does not echo the name {name!r}")
        _check_time(pong, problems)
        seq += rng.randrange(1, 5)
    _payload(exchange(frame(b"QUIT" + token)), problems, "BYE!")
    return problems


def _payload(answer: bytes, problems: list[str], verb: bytes | str) -> bytes:
    verb = verb.encode() if isinstance(verb, str) else verb
    if len(answer) < 4 or struct.unpack(">I", answer[:4])[0] != len(answer) - 4:
        problems.append(f"{verb!r}: the length field does not match the frame: {answer[:24]!r}")
    if answer[4 : 4 + len(HEADER)] != HEADER:
        problems.append(f"{verb!r}: no header")
    payload = answer[4 + len(HEADER) :]
    if payload[:4] != verb:
        problems.append(f"expected {verb!r}, got {payload[:12]!r}")
    return payload.ljust(16, b"\0")  # room for the fixed fields of a short answer, no more


def _check_time(payload: bytes, problems: list[str]) -> None:
    (stamp,) = struct.unpack(">I", payload[-4:])
    if abs(stamp - time.time()) > 60:
        problems.append(f"time field {stamp} is not now")
