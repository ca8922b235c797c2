"""Shared pieces of the serve tests: models learned from hand-made sessions, a server run
in a background thread (its own event loop, real sockets on 127.0.0.1), and clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from scriptgen.emulate import EmulatorParams, Machine
from scriptgen.learn import learn
from scriptgen.model import Model, Sender, Transport
from scriptgen.modelfile import port_doc, save
from scriptgen.params import LearnParams
from scriptgen.serve import EventLog, Listener, LogParams, ServeParams, Server, Sink, open_sinks
from tests.learn.sessions import session

BANNER = b"220 ready\r\n"


def _learn(sessions: list[Any], **kw: Any) -> Model:
    return learn(sessions, LearnParams(jobs=1, **kw))


@functools.cache
def ftp_model() -> Model:
    """The FTP-like model of tests/emulate/test_engine.py."""
    users = [session((b"USER " + n + b"\r\n", b"331 Password required for " + n + b".\r\n"),
                     (b"PASS secret\r\n", b"230 Logged in.\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n"),
                     banner=BANNER, closed_by=Sender.SERVER) for n in (b"alice", b"bob", b"carol")]
    users.append(session((b"SYST\r\n", b"215 UNIX Type: L8\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n"),
                         banner=BANNER, closed_by=Sender.SERVER))
    return _learn(users)


@functools.cache
def binary_model() -> Model:
    """Requests without a terminator: complete after the engine's match gap."""
    sessions = [session((b"\x01\x02" + bytes([i]), b"\x81" + bytes([i])), port=9000) for i in range(0, 250, 25)]
    return _learn(sessions, macro=1.0, micro=1.0)


@functools.cache
def udp_model() -> Model:
    sessions = [session((b"Q" + bytes([i]) * 4, b"A" + bytes([i]) * 4), port=53, transport=Transport.UDP)
                for i in range(4)]
    # nmap -sU probes most ports with an empty datagram
    sessions.append(session((b"", b"pong"), port=53, transport=Transport.UDP))
    return _learn(sessions, macro=0.0, micro=0.0)


MODELS = {"ftp": ftp_model, "binary": binary_model, "udp": udp_model}


def machine(name: str, params: EmulatorParams | None = None) -> Machine:
    (port,) = MODELS[name]().ports
    return Machine(port_doc(port), params)


def write_model(name: str, path: Path) -> Path:
    save(MODELS[name](), str(path))
    return path


def listener(name: str, params: EmulatorParams | None = None, port: int = 0) -> Listener:
    m = machine(name, params)
    return Listener(m.transport, "127.0.0.1", port, m, f"{name}.json", m.port)


class ServerThread:
    """A Server on its own event loop in a background thread.

        with ServerThread([listener("ftp")], tmp_path) as srv:
            sock = socket.create_connection(srv.addr("ftp"))
        events = srv.events()          # after the with: shut down, log written
    """

    def __init__(self, listeners: list[Listener], log_dir: Path, params: ServeParams | None = None,
                 sinks: list[Sink] | None = None, log_params: LogParams | None = None) -> None:
        self.log_dir = log_dir
        self.log = EventLog(sinks if sinks is not None else open_sinks(str(log_dir)), log_params, sensor="test")
        self.server = Server(listeners, self.log, params or ServeParams(), sensor="test")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stopped = False
        self.shutting: concurrent.futures.Future[None] | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.server.announce()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the server's loop; its result."""
        async def go() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def begin_shutdown(self) -> None:
        """Start the server's shutdown (grace period included) without waiting for it: `stop`
        (the end of the with) then waits for it to end."""
        if self.shutting is None:
            self.shutting = asyncio.run_coroutine_threadsafe(self.server.shutdown("stopped"), self.loop)

    def stop(self, timeout: float = 30.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.begin_shutdown()
        assert self.shutting is not None
        self.shutting.result(timeout)
        self.log.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        self.loop.close()

    def addr(self, model: str = "ftp") -> tuple[str, int]:
        for b in self.server.bound:
            if b.listener.model == f"{model}.json":
                return b.host, b.port
        raise KeyError(model)

    def open_sessions(self) -> int:
        return int(self.call(lambda: len(self.server.sessions)))

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.log_dir)


def read_events(log_dir: Path) -> list[dict[str, Any]]:
    path = log_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- clients -----------------------------------------------------------------------------------


def connect(addr: tuple[str, int], timeout: float = 5.0, source: str | None = None) -> socket.socket:
    """A TCP connection to `addr`; from the address `source` if given (any 127.0.0.0/8
    address is the loopback on Linux: clients of several addresses, on one machine)."""
    sock = socket.create_connection(addr, timeout=timeout, source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket, *, expect: int | None = None, quiet: float = 0.15,
                silence: float = 1.0) -> tuple[bytes, bool]:
    """What the server sends next: bytes until `quiet` seconds pass without more (once
    something came; `silence` seconds if nothing does), or until `expect` bytes came and
    then 0.03 s more without any. Returns (bytes, whether the server closed)."""
    got = b""
    deadline = time.monotonic() + silence
    while True:
        if expect is not None and len(got) >= expect > 0:
            wait = 0.03
        elif got:
            wait = quiet
        else:
            wait = deadline - time.monotonic()
            if wait <= 0:
                return got, False
        sock.settimeout(wait)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return got, False
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk


def read_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """`n` bytes (fewer if the server closes first)."""
    sock.settimeout(timeout)
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def wait_closed(sock: socket.socket, timeout: float = 3.0) -> bool:
    """Whether the server closes `sock` within `timeout` (data before the close is dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def wait_until(predicate: Any, timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
