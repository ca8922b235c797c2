"""Serve stage: a real server behind the honeypot, for what the model does not know.

A port served with `--backend PORT=HOST:PORT` has a `Backend`: the address of a real server
the operator runs in a sandbox, and the state of its retries. Each TCP session of that port
gets a `Mirror`, a connection of its own to the backend opened at connect, which replays
the client's conversation to the real server one request at a time while the model answers
(docs/backend.md):

- **mirroring**: the engine cuts the client's bytes into requests (its Input events); the
  mirror sends each to the backend once the backend has been quiet for `backend_gap`
  after the one before (its answer, which the client got from the model, is read and
  dropped). The backend lags the client by at most a request and its answer.
- **handover**: at a request the model has no answer for (an Unmatched event, under
  `--handover unsure`), the model's answer is held back; the mirror catches up, sends that
  request, and from then on relays both ways: what the backend sends goes to the client,
  and the client's bytes go straight to the backend, until either side closes. Under
  `--handover always` the relay starts at connect (the backend's banner included).
- **failure**: a backend that cannot be reached within `backend_connect_timeout`, closes
  before the handover, or leaves a caught-up request unanswered for `backend_wait` leaves
  the session to the model (the held answer is sent), and the backend is not tried again
  for a backoff that doubles with each failure (`backend_retry` .. 64x) and resets on
  success. Caps: `max_backend_sessions` open mirrors per backend, `backend_max_bytes`
  relayed per session.

Inputs: client bytes, the engine's request boundaries, the handover decision. Outputs:
bytes to the backend and, once handed over, to the client (through the session).
Asyncio and the standard library only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from scriptgen.params import ServeParams

__all__ = ["Backend", "DatagramMirror", "Mirror", "Relayed"]


class Relayed(Protocol):
    """What the mirror needs of its session."""

    def committed(self) -> None:
        """The backend answers from now on: the engine is left, its held answers dropped."""

    def relayed(self, data: bytes) -> None:
        """Bytes from the backend, for the client (after `committed`)."""

    def mirrored(self, data: bytes) -> None:
        """Bytes from the backend answering a request the model answered (dropped)."""

    def backend_closed(self, reason: str) -> None:
        """The backend closed or failed after `committed`: end the session."""

    def backend_failed(self, error: str, held: list[bytes]) -> None:
        """The backend failed before `committed`: the model goes on (`held`: its answers
        kept back meanwhile, now to be sent)."""


class Backend:
    """A real server behind one listener: its address, its open mirrors and its retries."""

    __slots__ = ("host", "port", "open", "failures", "retry_at", "params")

    def __init__(self, host: str, port: int, params: ServeParams) -> None:
        self.host, self.port = host, port
        self.params = params
        self.open = 0  # mirrors not failed or closed
        self.failures = 0  # in a row
        self.retry_at = 0.0  # loop time before which no mirror is opened

    def describe(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def available(self, now: float) -> bool:
        return now >= self.retry_at and self.open < self.params.max_backend_sessions

    def failed(self, now: float) -> float:
        """Count a failure; the seconds before the next try."""
        self.failures += 1
        delay = self.params.backend_retry * (1 << min(self.failures - 1, 6))
        self.retry_at = now + delay
        return delay


class Mirror(asyncio.Protocol):
    """One session's connection to the backend (see the module docstring). States:
    `connecting`, `mirroring` (the model answers), `catching-up` (handed over: the model's
    answers are held while the requests before are replayed), `awaiting` (the handed-over
    request is sent; the first byte of the backend's answer commits), `relaying`,
    `failed`, `closed`."""

    def __init__(self, backend: Backend, session: Relayed, loop: asyncio.AbstractEventLoop, *, at_connect: bool,
                 banner: bool) -> None:
        self.backend = backend
        self.params = backend.params
        self.session = session
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.state = "connecting"
        self.at_connect = at_connect  # --handover always: committed as soon as connected
        self.unsent = bytearray()  # client bytes not yet sent to the backend
        self.requests: deque[int] = deque()  # lengths of the requests that begin `unsent`
        self.handover_left: int | None = None  # bytes of `unsent` up to the handed-over request's end
        self.held: list[bytes] = []  # the model's answers kept back since the handover
        self.banner = banner  # the server speaks first (the model's root has an answer)
        self.sent_at = self.quiet_at = loop.time()  # the last request sent; the backend's last bytes
        self.waiting = False  # for the answer to the request sent last (or the banner)
        self.answered = False  # some of it came
        self.timer: asyncio.TimerHandle | None = None
        self.bytes_from = 0  # relayed to the client (backend_max_bytes)
        backend.open += 1
        self._task = loop.create_task(self._connect())

    # -- the session's side ------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Whether the model's answers are to be held (handed over, not yet committed)."""
        return self.at_connect and self.state == "connecting" or self.state in ("catching-up", "awaiting")

    def client(self, data: bytes) -> None:
        """Bytes from the client, in order: all of them, from the connect on."""
        if self.state in ("failed", "closed"):
            return
        if self.state == "relaying":
            self._write(data)
            return
        if len(self.unsent) + len(data) > self.params.backend_max_bytes:
            self._fail("the client sent more than --backend-max-bytes ahead of the backend")
            return
        self.unsent += data

    def took(self, n: int) -> None:
        """The engine took a request of `n` bytes (an Input event)."""
        if self.state in ("connecting", "mirroring", "catching-up", "awaiting"):
            self.requests.append(n)
            self._advance()

    def hand_over(self, n: int) -> bool:
        """Hand the session over at the request of `n` bytes the engine just took (instead
        of `took`); False if the backend cannot take it (the model answers)."""
        if self.state not in ("connecting", "mirroring") or self.at_connect:
            return False
        self.requests.append(n)
        self.handover_left = sum(self.requests)
        self.state = "catching-up"
        self._advance()
        return True

    def client_eof(self) -> None:
        """The client closed its side: so does the relay (the backend may still answer)."""
        transport = self.transport
        if self.state == "relaying" and transport is not None and transport.can_write_eof():
            transport.write_eof()

    def hold(self, data: bytes) -> None:
        """The model's answer while handed over and not committed: sent only on a failure."""
        self.held.append(data)

    def close(self) -> None:
        if self.state in ("closed", "failed"):
            self.state = "closed"
            return
        self.backend.open -= 1
        self.state = "closed"
        self._cancel_timer()
        if not self._task.done():
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- the backend's side ------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: self, self.backend.host, self.backend.port),
                                   self.params.backend_connect_timeout)
        except asyncio.TimeoutError:
            self._fail("cannot connect: timed out")
        except OSError as exc:
            self._fail(f"cannot connect: {exc.strerror or exc}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.state not in ("connecting", "catching-up"):  # closed meanwhile
            self.transport.abort()
            return
        self.backend.failures = 0
        self.quiet_at = self.loop.time()
        if self.at_connect:
            self._commit()
            return
        if self.state == "connecting":
            self.state = "mirroring"
        self.sent_at = self.quiet_at
        self.waiting, self.answered = self.banner, False
        self._advance()

    def data_received(self, data: bytes) -> None:
        if self.state == "awaiting":
            self._commit()
        if self.state == "relaying":
            self.bytes_from += len(data)
            if self.bytes_from > self.params.backend_max_bytes:
                self._fail("the backend sent more than --backend-max-bytes")
                return
            self.session.relayed(data)
            return
        # Else an answer to a request the model answered: dropped, once the session saw it.
        self.session.mirrored(data)
        self.quiet_at = self.loop.time()
        self.answered = True
        if self.waiting and self.requests:  # the next request goes once this answer is over
            self._arm(self.params.backend_gap, self._advance)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state == "relaying":
            self.state = "closed"
            self.backend.open -= 1
            self._cancel_timer()
            self.session.backend_closed("backend")
        elif self.state not in ("closed", "failed"):
            self._fail("the backend closed the connection" if exc is None else f"connection lost: {exc}")

    # -- pacing ------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Send the next request once the answer to the one before is over: it began and
        the backend has been quiet for `backend_gap` since, or it never began within
        `backend_wait` (a request the server does not answer)."""
        if self.transport is None or self.state not in ("mirroring", "catching-up"):
            return
        now = self.loop.time()
        if self.waiting:
            over = self.quiet_at + self.params.backend_gap if self.answered else self.sent_at + self.params.backend_wait
            if now < over:
                self._arm(over - now, self._advance)
                return
            self.waiting = False
        if not self.requests:
            return
        n = self.requests.popleft()
        self._write(bytes(self.unsent[:n]))
        del self.unsent[:n]
        self.waiting, self.answered, self.sent_at = True, False, now
        if self.handover_left is not None:
            self.handover_left -= n
            if self.handover_left <= 0:  # the handed-over request is out: its answer commits
                self.state = "awaiting"
                self._arm(self.params.backend_wait, self._unanswered)
                return
        self._arm(self.params.backend_wait, self._advance)

    def _unanswered(self) -> None:
        self.timer = None
        if self.state == "awaiting":
            self._fail(f"no answer within {self.params.backend_wait:g}s")

    def _commit(self) -> None:
        self.state = "relaying"
        self.held = []
        self._cancel_timer()
        self.requests.clear()
        self.session.committed()
        if self.unsent:  # what the client sent after the handed-over request
            data = bytes(self.unsent)
            self.unsent.clear()
            self._write(data)

    def _arm(self, delay: float, then: Callable[[], None]) -> None:
        self._cancel_timer()
        self.timer = self.loop.call_later(delay, then)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.params.max_buffered:
            self._fail("the backend does not read")

    def _fail(self, error: str) -> None:
        was = self.state
        if was in ("failed", "closed"):
            return
        self.state = "failed"
        self.backend.open -= 1
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()
        delay = self.backend.failed(self.loop.time())
        held, self.held = self.held, []
        if was == "relaying":
            self.session.backend_closed("backend-failed")
        else:
            self.session.backend_failed(f"{error}; retried in {delay:g}s", held)


class DatagramMirror(Mirror, asyncio.DatagramProtocol):
    """The same for a UDP session: one datagram per request each way, over a socket of its
    own connected to the backend. Nothing closes it but the session (its idle timeout); an
    ICMP error from the backend before the commit is a failure."""

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self.loop.create_datagram_endpoint(
                lambda: self, remote_addr=(self.backend.host, self.backend.port)),
                self.params.backend_connect_timeout)
        except asyncio.TimeoutError:
            self._fail("cannot connect: timed out")
        except OSError as exc:
            self._fail(f"cannot connect: {exc.strerror or exc}")

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.data_received(data)

    def error_received(self, exc: Exception) -> None:
        if self.state == "relaying":
            self.state = "failed"
            self.backend.open -= 1
            self.session.backend_closed("backend-failed")
        else:
            self._fail(f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")

    def client_eof(self) -> None:
        return  # UDP has no close

    def _commit(self) -> None:
        # The datagrams queued behind the handed-over one go out one by one, as they came.
        lengths = list(self.requests)
        self.requests.clear()
        pending = bytes(self.unsent)
        self.unsent.clear()
        self.state = "relaying"
        self.held = []
        self._cancel_timer()
        self.session.committed()
        pos = 0
        for n in lengths:
            self._write(pending[pos : pos + n])
            pos += n
        if pos < len(pending):
            self._write(pending[pos:])

    def _write(self, data: bytes) -> None:
        transport = cast(asyncio.DatagramTransport | None, self.transport)
        if transport is None or transport.is_closing():
            return
        transport.sendto(data)
        queued = getattr(transport, "get_write_buffer_size", None)  # asyncio's has it, untyped
        if queued is not None and queued() > self.params.max_buffered:
            self._fail("the backend does not read")
