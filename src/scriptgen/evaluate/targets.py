"""Evaluate stage: targets, the transport seam of replay (DESIGN §6 "evaluate").

A target plays the server. It is given `Script`s (the client messages of recorded
sessions, and after which of them the real server answered) and returns one `Outcome`
each (the answers it gave, and whether it closed the connection). Two implementations,
one interface, so the same replay runs with or without sockets:

- `InProcessTarget` drives the sans-I/O emulator core (scriptgen.emulate) with simulated
  time: no sockets, no clock, deterministic.
- `TcpTarget` connects to one address over TCP (the emulator served by `scriptgen serve`,
  an exported honeyd script, or the real server) and replays sessions concurrently with
  asyncio. It never connects anywhere else.

Both follow the same client behaviour, so an emulator gives the same answers through
either: read the banner, then for each request send it and read until the server has
been quiet for `quiet` seconds or closed. Before the first byte of an answer the client
waits up to `wait` seconds where the real server answered, `quiet` where it stayed silent.
Where the recorded client spoke before the server had said anything (no banner: HTTP, or
an impatient client on a protocol with a banner), the replaying client sends its first
request at once too, and a banner, if any comes, is read as part of the first answer,
as it was in the recording.

May import: the standard library, scriptgen.emulate, scriptgen.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scriptgen.emulate import Close, Emulator, Listen, Machine, NeedData, Send, Unmatched
from scriptgen.errors import TargetError
from scriptgen.params import EvaluateParams

__all__ = ["InProcessTarget", "Outcome", "Script", "Target", "TargetError", "TcpTarget", "parse_address"]


@dataclass(frozen=True, slots=True)
class Script:
    """What a replaying client sends: `requests` in order, and `expect[i]` True where the
    real server answered (index 0: a banner; index i: the answer to request i)."""

    requests: tuple[bytes, ...]
    expect: tuple[bool, ...]
    start: float = 0.0  # when the recorded session began (Unix time): the replay's clock

    def __post_init__(self) -> None:
        if len(self.expect) != len(self.requests) + 1:
            raise ValueError("expect needs one flag for the banner and one per request")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a target did with a script.

    `answers[0]` is the banner (b"" when the script does not wait for one: a server that
    sends one then has it in `answers[1]`), `answers[i]` the answer to request i; fewer than
    len(requests) + 1 when the server closed before the client had sent everything (the
    requests after the close were never sent). `closed`: the server closed the connection
    (at any point, also after the last answer). `fallbacks[i - 1]`, in process only, is the
    emulator's fallback for request i when no transition matched it ("context", "elsewhere", "common",
    "nearest", "silence", "close"), else None. `error` says why a session could not be replayed (connect failed,
    timed out); its answers are then what was received before.
    """

    answers: tuple[bytes, ...]
    closed: bool
    fallbacks: tuple[str | None, ...] = ()
    error: str | None = None

    @property
    def sent(self) -> int:
        """Requests sent before the server closed."""
        return max(0, len(self.answers) - 1)


class Target(Protocol):
    """A server to replay scripts against."""

    @property
    def name(self) -> str:
        """Shown in reports: "in-process" or "tcp HOST:PORT"."""
        ...

    @property
    def transports(self) -> frozenset[str]:
        """The session transports this target can replay ("tcp", "udp")."""
        ...

    def run(self, script: Script) -> Outcome:
        """Replay one session."""
        ...

    def run_all(self, scripts: Sequence[Script]) -> list[Outcome]:
        """Replay sessions (possibly concurrently); outcomes in the order of `scripts`."""
        ...


# -- in process ------------------------------------------------------------------------------

_MAX_STEPS = 1_000_000  # events handled per answer; a guard against an engine that never settles


class InProcessTarget:
    """The emulator core, one `Emulator` per session, in simulated time (starting at 0)."""

    def __init__(self, machine: Machine, params: EvaluateParams | None = None) -> None:
        self.machine = machine
        self.params = params or EvaluateParams()

    @property
    def name(self) -> str:
        return "in-process"

    @property
    def transports(self) -> frozenset[str]:
        return frozenset({"tcp", "udp"})

    def run_all(self, scripts: Sequence[Script]) -> list[Outcome]:
        return [self.run(s) for s in scripts]

    def run(self, script: Script) -> Outcome:
        now = 0.0
        # The emulator's clock reads the recorded session's time: time fields can match.
        conn = Emulator(self.machine, now, wall=script.start)
        answer, closed = b"", False
        if script.expect[0] or not script.requests:
            answer, closed, now, _ = self._collect(conn, now, script.expect[0])
        answers, fallbacks = [answer], []
        for request, expect in zip(script.requests, script.expect[1:]):
            if closed:
                break
            conn.receive_data(request, now)
            answer, closed, now, fallback = self._collect(conn, now, expect)
            answers.append(answer)
            fallbacks.append(fallback)
        return Outcome(tuple(answers), closed, tuple(fallbacks))

    def _collect(self, conn: Emulator, now: float, expect: bool) -> tuple[bytes, bool, float, str | None]:
        """Read like the TCP client: until `quiet` seconds pass without a byte (`wait`
        before the first byte of an expected answer) or the emulator closes."""
        p = self.params
        deadline = now + (p.wait if expect else p.quiet)
        got = bytearray()
        fallback: str | None = None
        for _ in range(_MAX_STEPS):
            event = conn.next_event(now)
            if isinstance(event, Send):
                if len(got) < p.max_answer_bytes:
                    got += event.data[: p.max_answer_bytes - len(got)]
                deadline = now + p.quiet
            elif isinstance(event, Unmatched):
                fallback = fallback or event.fallback
            elif isinstance(event, Listen):
                conn.listening(None)  # no data channel in replay: the answer names the capture's port
            elif isinstance(event, Close):
                return bytes(got), True, now, fallback
            elif isinstance(event, NeedData):
                if event.wake_at is None or event.wake_at > deadline:
                    return bytes(got), False, deadline, fallback
                now = max(now, event.wake_at)
        raise RuntimeError("the emulator did not settle: more than a million events for one request")


# -- over TCP --------------------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT) -> (host, port). Raises TargetError with the reason.

    >>> parse_address("127.0.0.1:2121"), parse_address("[::1]:21")
    (('127.0.0.1', 2121), ('::1', 21))
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise TargetError(f"not HOST:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TargetError(f"not an IPv6 address in brackets: {text!r}") from None
    elif ":" in host:
        raise TargetError(f"an IPv6 address needs brackets, [ADDR]:PORT: {text!r}")
    if not host or any(c.isspace() for c in host):
        raise TargetError(f"not HOST:PORT: {text!r}")
    if not port_text.isdigit():
        raise TargetError(f"not a port number: {port_text!r} in {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise TargetError(f"port out of range 1-65535: {port} in {text!r}")
    return host, port


class TcpTarget:
    """A server at one TCP address; each script is one connection to it."""

    def __init__(self, host: str, port: int, params: EvaluateParams | None = None) -> None:
        self.host = host
        self.port = port
        self.params = params or EvaluateParams()

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp {host}:{self.port}"

    @property
    def transports(self) -> frozenset[str]:
        return frozenset({"tcp"})

    def run(self, script: Script) -> Outcome:
        return self.run_all([script])[0]

    def run_all(self, scripts: Sequence[Script]) -> list[Outcome]:
        """Runs its own event loop (asyncio.run); from a coroutine, await `arun_all`."""
        return asyncio.run(self.arun_all(scripts))

    async def arun_all(self, scripts: Sequence[Script]) -> list[Outcome]:
        gate = asyncio.Semaphore(self.params.concurrency)

        async def one(script: Script) -> Outcome:
            async with gate:
                return await self.arun(script)

        return list(await asyncio.gather(*(one(s) for s in scripts)))

    async def arun(self, script: Script) -> Outcome:
        """One session; never raises for network trouble: it ends up in `Outcome.error`."""
        answers: list[bytes] = []
        fallbacks: list[str | None] = []
        state = {"closed": False}
        try:
            await asyncio.wait_for(self._session(script, answers, fallbacks, state), self.params.session_timeout)
        except TimeoutError:
            return Outcome(tuple(answers), state["closed"], tuple(fallbacks),
                           f"session timed out after {self.params.session_timeout:g}s")
        except OSError as exc:
            return Outcome(tuple(answers), state["closed"], tuple(fallbacks), _describe(exc))
        return Outcome(tuple(answers), state["closed"], tuple(fallbacks))

    async def _session(self, script: Script, answers: list[bytes], fallbacks: list[str | None],
                       state: dict[str, bool]) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                    self.params.connect_timeout)
        except TimeoutError:
            raise ConnectionError(f"connect timed out after {self.params.connect_timeout:g}s") from None
        try:
            answer, closed = b"", False
            if script.expect[0] or not script.requests:
                answer, closed = await self._collect(reader, script.expect[0])
            answers.append(answer)
            for request, expect in zip(script.requests, script.expect[1:]):
                if closed:
                    break
                try:
                    writer.write(request)
                    await writer.drain()
                except (ConnectionResetError, BrokenPipeError):
                    closed = True  # the server had gone; this request was never received
                    break
                answer, closed = await self._collect(reader, expect)
                answers.append(answer)
                fallbacks.append(None)
            state["closed"] = closed
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.params.quiet)

    async def _collect(self, reader: asyncio.StreamReader, expect: bool) -> tuple[bytes, bool]:
        p = self.params
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (p.wait if expect else p.quiet)
        got = bytearray()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return bytes(got), False
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except TimeoutError:
                return bytes(got), False
            except ConnectionResetError:
                return bytes(got), True
            if not chunk:
                return bytes(got), True
            if len(got) < p.max_answer_bytes:
                got += chunk[: p.max_answer_bytes - len(got)]
            deadline = loop.time() + p.quiet


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__
