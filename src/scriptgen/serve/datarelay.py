"""Serve stage: the data channels of a session handed to its backend (docs/backend.md).

After the handover the backend answers, and its answers may announce where to open a data
connection: FTP's `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` and `229 Entering
Extended Passive Mode (|||port|)` name the backend's own address and port; the client's
`PORT h1,...,p2` and `EPRT |1|addr|port|` name the client's, for the backend to connect to.
Neither side may learn the other: `DataRelay` rewrites every such announcement to an address
and port of the honeypot's own, listens there for the one connection it announces, and
relays it to the real endpoint:

- backend -> client (PASV, EPSV): a listener on the address the client reached; only the
  client's address may connect; the honeypot then connects to the backend's port.
- client -> backend (PORT, EPRT): a listener on the honeypot's address towards the
  backend; only the backend may connect; the honeypot then connects to the client's port,
  on the client's own address only (no bounce to a third host).

Only ports whose model learned announcements (`Machine.announcing`: the learner found them
in the capture) are rewritten; there the relayed bytes pass line by line (a partial line is
held until it ends, at most `_MAX_HELD` bytes). Each channel is bounded like the model's own
(`max_session_channels`, `channel_timeout`, `backend_max_bytes`).

Inputs: relayed bytes. Outputs: the same bytes with announcements rewritten, listeners
and relayed connections. Asyncio and the standard library only.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any, cast

from scriptgen.params import ServeParams

__all__ = ["DataRelay"]

_MAX_HELD = 512  # bytes of a partial line held back for a rewrite; beyond, passed on as is
_IP_PAIR = re.compile(rb"(?<![0-9])(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})(?![0-9])")
_EPSV = re.compile(rb"\(\|\|\|(\d{1,5})\|\)")
_EPRT = re.compile(rb"EPRT ([|!])([12])\1([0-9A-Fa-f.:]+)\1(\d{1,5})\1", re.IGNORECASE)


def _pair(data: re.Match[bytes]) -> tuple[str, int] | None:
    parts = [int(g) for g in data.groups()]
    if any(p > 255 for p in parts):
        return None
    return ".".join(map(str, parts[:4])), parts[4] * 256 + parts[5]


def _as_pair(host: str, port: int) -> bytes:
    return ("%s,%d,%d" % (host.replace(".", ","), port >> 8, port & 0xFF)).encode()


class _Half(asyncio.Protocol):
    """One end of a relayed data connection; the other end is `peer`."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.early = bytearray()  # read before the other end was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.channel.made(self)

    def data_received(self, data: bytes) -> None:
        self.channel.bytes += len(data)
        if self.channel.bytes > self.channel.relay.params.backend_max_bytes:
            self.channel.close()
            return
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early += data
            if len(self.early) > self.channel.relay.params.max_buffered:
                self.channel.close()
            elif self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True
        self.channel.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        peer = self.peer
        if exc is None and peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()  # what it still holds goes out first; its loss ends the channel
        else:
            self.channel.close()

    def pause_writing(self) -> None:  # the receiving end is slow: stop reading the sending one
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def start(self) -> None:
        """Both ends are connected: pass on what came early, and read on."""
        if self.early and self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(bytes(self.early))
            self.early.clear()
        if self.transport is not None:
            self.transport.resume_reading()


class _Channel:
    """One announced data connection: a listener for it, then the two ends."""

    def __init__(self, relay: DataRelay, allowed: str, target: tuple[str, int]) -> None:
        self.relay = relay
        self.allowed = allowed  # the only address that may connect to the listener
        self.target = target
        self.bytes = 0
        self.sock: socket.socket | None = None
        self.inside = _Half(self)  # accepted on our listener
        self.outside = _Half(self)  # connected to the target
        self.done = False
        self.expiry: asyncio.TimerHandle | None = None

    def open(self, host: str) -> int:
        """Listen on `host` for the one connection; the port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((host, 0))
            sock.listen(1)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._accept)
        self.expiry = loop.call_later(self.relay.params.channel_timeout, self.close)
        return int(sock.getsockname()[1])

    def _accept(self) -> None:
        assert self.sock is not None
        try:
            conn, addr = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.relay.log("failed", None, f"relayed data channel: accept failed ({exc.strerror or exc})", str(exc))
            self.close()
            return
        if str(addr[0]) != self.allowed:
            conn.close()
            self.relay.log("refused", int(addr[1]), f"relayed data channel: refused a connection from {addr[0]}",
                           None)
            return
        self._stop_listening()
        loop = asyncio.get_running_loop()
        self.relay.keep(asyncio.ensure_future(loop.connect_accepted_socket(lambda: self.inside, conn)))
        made = asyncio.wait_for(loop.create_connection(lambda: self.outside, *self.target),
                                self.relay.params.channel_timeout)
        task = asyncio.ensure_future(made)
        task.add_done_callback(self._connected)
        self.relay.keep(task)

    def made(self, half: _Half) -> None:
        if half.transport is not None:
            half.transport.pause_reading()
        inside, outside = self.inside, self.outside
        if self.done:
            if half.transport is not None:
                half.transport.abort()
        elif inside.transport is not None and outside.transport is not None:  # both ends: relay
            inside.peer, outside.peer = outside, inside
            inside.start()
            outside.start()
            if self.expiry is not None:
                self.expiry.cancel()

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            error = "cancelled" if task.cancelled() else (str(task.exception()) or "timed out")
            self.relay.log("failed", self.target[1], f"relayed data channel: cannot connect ({error})", error)
            self.close()

    def _stop_listening(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        if self.expiry is not None:
            self.expiry.cancel()
        self._stop_listening()
        for half in (self.inside, self.outside):
            if half.transport is not None:
                half.transport.close()
        self.relay.closed(self)


class DataRelay:
    """The data channels of one handed-over session (see the module docstring)."""

    def __init__(self, params: ServeParams, client: str, reached: str, backend: str, towards_backend: str,
                 log: Callable[[str, int | None, str, str | None], None]) -> None:
        self.params = params
        self.client, self.reached = client, reached  # the client's address; the one it reached
        self.backend, self.towards_backend = backend, towards_backend  # the backend's; ours towards it
        self.log = log  # the session's channel event (action, port, message, error)
        self.channels: set[_Channel] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.held_out = bytearray()  # from the backend: a partial line
        self.held_in = bytearray()  # from the client: a partial line

    def keep(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def closed(self, channel: _Channel) -> None:
        self.channels.discard(channel)

    def close(self) -> None:
        for channel in list(self.channels):
            channel.close()
        for task in list(self.tasks):
            task.cancel()

    # -- rewriting ---------------------------------------------------------------------------

    def from_backend(self, data: bytes) -> bytes:
        """Backend bytes for the client, with the backend's announcements made ours."""
        return self._rewrite(self.held_out, data, self._backend_line)

    def from_client(self, data: bytes) -> bytes:
        """Client bytes for the backend, with the client's announcements made ours."""
        return self._rewrite(self.held_in, data, self._client_line)

    def _rewrite(self, held: bytearray, data: bytes, line_of: Callable[[bytes], bytes]) -> bytes:
        return b"".join(map(line_of, self._lines(held, data).splitlines(keepends=True)))

    def _backend_line(self, line: bytes) -> bytes:
        m = _IP_PAIR.search(line)
        # The backend's address, or any address of a 227 (a server behind NAT names its outside one).
        if m is not None and (found := _pair(m)) is not None and (found[0] == self.backend or line.startswith(b"227")):
            port = self._open(self.reached, self.client, (self.backend, found[1]))
            if port is not None and "." in self.reached:
                line = line[: m.start()] + _as_pair(self.reached, port) + line[m.end():]
        elif (m := _EPSV.search(line)) is not None:
            port = self._open(self.reached, self.client, (self.backend, int(m.group(1))))
            if port is not None:
                line = line[: m.start(1)] + str(port).encode() + line[m.end(1):]
        return line

    def _client_line(self, line: bytes) -> bytes:
        if line[:5].upper() == b"PORT " and (m := _IP_PAIR.search(line)) is not None \
                and (found := _pair(m)) is not None:
            port = self._open(self.towards_backend, self.backend, (self.client, found[1]))
            if port is not None and "." in self.towards_backend:
                line = line[: m.start()] + _as_pair(self.towards_backend, port) + line[m.end():]
        elif (m := _EPRT.search(line)) is not None:
            port = self._open(self.towards_backend, self.backend, (self.client, int(m.group(4))))
            if port is not None:
                family = b"2" if ":" in self.towards_backend else b"1"
                d = m.group(1)
                line = (line[: m.start()] + b"EPRT " + d + family + d + self.towards_backend.encode() + d
                        + str(port).encode() + d + line[m.end():])
        return line

    def flush(self, held: bytearray) -> bytes:
        """What is held back, at the end of a direction (no rewrite: not a whole line)."""
        out = bytes(held)
        held.clear()
        return out

    @staticmethod
    def _lines(held: bytearray, data: bytes) -> bytes:
        """The whole lines of held + data (the rest held), or all of it past _MAX_HELD."""
        held += data
        end = held.rfind(b"\n") + 1
        if not end and len(held) <= _MAX_HELD:
            return b""
        if not end:
            end = len(held)
        out = bytes(held[:end])
        del held[:end]
        return out

    def _open(self, host: str, allowed: str, target: tuple[str, int]) -> int | None:
        if len(self.channels) >= self.params.max_session_channels or not 0 < target[1] < 65536:
            self.log("refused", target[1], "relayed data channel refused: over the channel limits", None)
            return None
        channel = _Channel(self, allowed, target)
        try:
            port = channel.open(host)
        except OSError as exc:
            self.log("failed", None, f"relayed data channel: cannot listen ({exc.strerror or exc})", str(exc))
            return None
        self.channels.add(channel)
        self.log("listen", port, f"relayed data channel: listening on {host}:{port} for {target[0]}:{target[1]}", None)
        return port
