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

When the session is recorded (`--record`), so is each relayed data connection, as the
client saw it (docs/record.md): the learner then links it to the announcement the client
was sent, as in a capture of the real server.

Inputs: relayed bytes. Outputs: the same bytes with announcements rewritten, listeners
and relayed connections. Asyncio and the standard library only.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from scriptgen.errors import ServeError
from scriptgen.model import Sender
from scriptgen.params import ServeParams

__all__ = ["ChannelRecording", "DataRelay", "passive_port"]


class ChannelRecording(Protocol):
    """What a relayed data connection is recorded through (record.py's RecordedSession)."""

    def client_bytes(self, data: bytes, t: float) -> None: ...

    def server_bytes(self, data: bytes, t: float) -> None: ...

    def close(self, by: Sender, t: float, *, reset: bool = False) -> None: ...


# Opens the recording of a data connection: (its connecting end, its accepting end) -> it.
RecordChannel = Callable[[tuple[str, int], tuple[str, int]], "ChannelRecording | None"]

_MAX_HELD = 512  # bytes of a partial line held back for a rewrite; beyond, passed on as is
_IP_PAIR = re.compile(rb"(?<![0-9])(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})(?![0-9])")
_EPSV = re.compile(rb"\(\|\|\|(\d{1,5})\|\)")
_EPRT = re.compile(rb"EPRT ([|!])([12])\1([0-9A-Fa-f.:]+)\1(\d{1,5})\1", re.IGNORECASE)


def _pair(data: re.Match[bytes]) -> tuple[str, int] | None:
    parts = [int(g) for g in data.groups()]
    if any(p > 255 for p in parts):
        return None
    return ".".join(map(str, parts[:4])), parts[4] * 256 + parts[5]


def passive_port(data: bytes) -> int | None:
    """The port the last passive-mode announcement in `data` names (227, 229), if any."""
    found = None
    for line in data.splitlines():
        m = _IP_PAIR.search(line) if line.startswith(b"227") else _EPSV.search(line)
        if m is not None:
            pair = _pair(m) if line.startswith(b"227") else ("", int(m.group(1)))
            found = pair[1] if pair is not None else found
    return found


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
        self.channel.recorded(self, data)
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
        self.channel.ended(self)
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True
        self.channel.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.channel.ended(self)
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

    def __init__(self, relay: DataRelay, allowed: str, target: tuple[str, int], passive: bool) -> None:
        self.relay = relay
        self.passive = passive  # the client connects (PASV, EPSV); else it is connected to (PORT, EPRT)
        self.allowed = allowed  # the only address that may connect to the listener
        self.target = target
        self.bytes = 0
        self.sock: socket.socket | None = None
        self.inside = _Half(self)  # accepted on our listener
        self.outside = _Half(self)  # connected to the target
        self.done = False
        self.expiry: asyncio.TimerHandle | None = None
        self.recording: ChannelRecording | None = None  # (`inside` is its client end)
        self.first_end: _Half | None = None  # the end that closed first

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
        self.listen(sock)
        return int(sock.getsockname()[1])

    def listen(self, sock: socket.socket) -> None:
        """Take the one connection `sock` (listening) accepts."""
        self.sock = sock
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._accept)
        self.expiry = loop.call_later(self.relay.params.channel_timeout, self.close)

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
        self.connect_out()

    def take(self, transport: asyncio.Transport, early: bytes) -> None:
        """The client's end is a connection already made (`early`: what it sent so far)."""
        self.inside.early += early
        transport.set_protocol(self.inside)
        self.inside.connection_made(transport)
        self.connect_out()

    def connect_out(self) -> None:
        made = asyncio.wait_for(asyncio.get_running_loop().create_connection(lambda: self.outside, *self.target),
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
            self._record(inside.transport, outside.transport)
            inside.start()
            outside.start()
            if self.expiry is not None:
                self.expiry.cancel()

    def _record(self, inside: asyncio.Transport, outside: asyncio.Transport) -> None:
        """Begin the recording as the client saw the connection: with the client's side of
        it (the honeypot's listener and the client, or the honeypot connecting to the
        client's port), `inside` sending as the connecting end (the client sending for a
        passive channel, the backend's bytes for an active one)."""
        if self.relay.record is None:
            return
        if self.passive:  # the client connected to us
            ends = inside.get_extra_info("peername"), inside.get_extra_info("sockname")
        else:  # active: we connected to the client's port, with the backend's bytes
            ends = outside.get_extra_info("sockname"), outside.get_extra_info("peername")
        if ends[0] and ends[1]:
            self.recording = self.relay.record((str(ends[0][0]), int(ends[0][1])), (str(ends[1][0]), int(ends[1][1])))

    def recorded(self, half: _Half, data: bytes) -> None:
        if self.recording is not None:
            try:
                (self.recording.client_bytes if half is self.inside else self.recording.server_bytes)(data, time.time())
            except ServeError:  # the recorder said so once (server.py); the relay goes on
                self.recording = None

    def ended(self, half: _Half) -> None:
        if self.first_end is None:
            self.first_end = half

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
        if self.recording is not None:
            by = Sender.SERVER if self.first_end is self.outside else Sender.CLIENT
            try:
                self.recording.close(by, time.time())
            except ServeError:
                pass
            self.recording = None
        self._stop_listening()
        for half in (self.inside, self.outside):
            if half.transport is not None:
                half.transport.close()
        self.relay.closed(self)


class DataRelay:
    """The data channels of one handed-over session (see the module docstring)."""

    def __init__(self, params: ServeParams, client: str, reached: str, backend: str, towards_backend: str,
                 log: Callable[[str, int | None, str, str | None], None], record: RecordChannel | None = None) -> None:
        self.params = params
        self.record = record  # the session's recorder of data connections, if it is recorded
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

    def adopt(self, listening: list[socket.socket], made: list[tuple[asyncio.Transport, bytes]],
              port: int) -> None:
        """The model's data channels, announced to the client before the handover, now the
        backend's: its listeners' connections and those already made (with what their
        client sent so far) are relayed to the backend's passive `port` (its answer to the
        same request, mirrored: `passive_port`)."""
        for sock in listening:
            channel = _Channel(self, self.client, (self.backend, port), passive=True)
            self.channels.add(channel)
            channel.listen(sock)
        for transport, early in made:
            channel = _Channel(self, self.client, (self.backend, port), passive=True)
            self.channels.add(channel)
            channel.take(transport, early)
        if listening or made:
            self.log("relay", port, f"data channel: the model's, relayed to the backend's port {port}", None)

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
            port = self._open(self.reached, self.client, (self.backend, found[1]), passive=True)
            if port is not None and "." in self.reached:
                line = line[: m.start()] + _as_pair(self.reached, port) + line[m.end():]
        elif (m := _EPSV.search(line)) is not None:
            port = self._open(self.reached, self.client, (self.backend, int(m.group(1))), passive=True)
            if port is not None:
                line = line[: m.start(1)] + str(port).encode() + line[m.end(1):]
        return line

    def _client_line(self, line: bytes) -> bytes:
        if line[:5].upper() == b"PORT " and (m := _IP_PAIR.search(line)) is not None \
                and (found := _pair(m)) is not None:
            port = self._open(self.towards_backend, self.backend, (self.client, found[1]), passive=False)
            if port is not None and "." in self.towards_backend:
                line = line[: m.start()] + _as_pair(self.towards_backend, port) + line[m.end():]
        elif (m := _EPRT.search(line)) is not None:
            port = self._open(self.towards_backend, self.backend, (self.client, int(m.group(4))), passive=False)
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

    def _open(self, host: str, allowed: str, target: tuple[str, int], passive: bool) -> int | None:
        if len(self.channels) >= self.params.max_session_channels or not 0 < target[1] < 65536:
            self.log("refused", target[1], "relayed data channel refused: over the channel limits", None)
            return None
        channel = _Channel(self, allowed, target, passive)
        try:
            port = channel.open(host)
        except OSError as exc:
            self.log("failed", None, f"relayed data channel: cannot listen ({exc.strerror or exc})", str(exc))
            return None
        self.channels.add(channel)
        self.log("listen", port, f"relayed data channel: listening on {host}:{port} for {target[0]}:{target[1]}", None)
        return port
