"""Serve stage: the asyncio honeypot server (DESIGN §6). Model ports in; sockets and
log events out.

Each listener serves one port of one model (`Listener`: a compiled `Machine` and where to
listen). Each TCP connection, and each UDP peer, is a session: one `Emulator` driven by
a short loop (`_Session.pump`): feed what the socket read to `receive_data`, then take
`next_event` until it says NeedData — write Send data, log Input/Unmatched, close on
Close — and arm one timer at the earliest of the engine's `wake_at`, the idle deadline,
the deadline of a request begun (`request_timeout`: the idle timer alone is reset by
every byte of a trickle) and the session's end. Asyncio protocols rather than streams:
no task, reader and writer per connection (half the memory per idle connection, see
bench/bench_serve.py), and the transport's flow control is the `drain`: while a client
does not read its answers, reading from it pauses, and past `max_buffered` queued bytes
it is cut off.

Data channels (FTP's PASV/PORT, docs/emulator.md): when the engine says `Listen`, the
session binds a listener of its own on the address the client reached and tells the
engine its port; on `Connect`, it connects to the client's own address at the port the
client announced. Either way the connection, once made, waits for the engine's
`Channel` (what to serve on it) and is then a session of its own, logged with its
parent's session id. Both are bounded (`max_channels`, `max_session_channels`,
`channel_timeout`).

The open sessions are kept in order of their client's last byte, over all and per client
address: over `max_connections` or `max_per_source`, a newcomer is admitted in place of
the idlest (closed as `evicted`, O(1)), so connections held open cannot lock others out;
only while shutting down is a newcomer refused.

A failure in one session is caught in that session: it is logged
(`scriptgen.session.error`), that session is closed, the others go on. `shutdown()`
stops listening, gives open sessions `grace` seconds, closes the rest, and logs
`scriptgen.server.stop`; the caller then closes the log, which writes everything queued.

Imports: scriptgen.emulate (the engine), and this package.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from scriptgen import __version__
from scriptgen.emulate import (
    Channel,
    Close,
    Connect,
    Emulator,
    EmulatorParams,
    Input,
    Listen,
    Machine,
    NeedData,
    Send,
    Unmatched,
)
from scriptgen.errors import ServeError
from scriptgen.model import Sender, Transport
from scriptgen.serve.backend import Backend, DatagramMirror, Mirror
from scriptgen.serve.datarelay import DataRelay, passive_port
from scriptgen.serve.events import timestamp
from scriptgen.serve.log import Log
from scriptgen.serve.record import RecordedSession, Recorder
from scriptgen.params import ServeParams

__all__ = ["Bound", "Listener", "Server", "plan_listeners"]


@dataclass(slots=True, eq=False)
class Listener:
    """Where to listen, and the model port served there. `machine` and `version` change
    when the model is reloaded (`Server.swap`): new sessions take the new machine, open
    ones keep theirs."""

    transport: str
    """`tcp` or `udp` (the model port's)."""
    host: str
    port: int
    """The port to listen on (0: any free port); the model's, unless remapped."""
    machine: Machine = field(repr=False)
    model: str
    """The model file's name, for the log."""
    model_port: int
    backend: Backend | None = None
    """The real server behind this port (`--backend`), or None."""
    version: str = ""
    """Which model file's content serves it (the first 16 hex digits of its SHA-256), for the log."""


@dataclass(frozen=True, slots=True)
class Bound:
    """A listener, once bound: the address it really listens on."""

    listener: Listener
    host: str
    port: int

    def describe(self) -> str:
        ln = self.listener
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{ln.transport} {host}:{self.port} (model {ln.model} port {ln.model_port})"


def plan_listeners(models: Sequence[tuple[str, Sequence[dict[str, Any]]]], hosts: Sequence[str],
                   port_map: Mapping[tuple[str | None, int], int] | None = None,
                   emulator: EmulatorParams | None = None,
                   backends: Mapping[tuple[str | None, int], tuple[str, int]] | None = None,
                   params: ServeParams | None = None) -> list[Listener]:
    """One listener per (model port, host). `models`: (name, port documents of the model
    file). `port_map`: (transport or None for both, model port) -> port to listen on.
    `backends`: (transport or None, model port) -> the real server behind it.
    Raises ServeError when two listeners would share a port, a mapping names a port no
    model has, or, once there is a mapping, a model port has none (P:P keeps its own:
    with some ports moved, one left in place is more often a forgotten one)."""
    port_map = dict(port_map or {})
    backends = dict(backends or {})
    behind: dict[tuple[str | None, int], Backend] = {}
    used_backends: set[tuple[str | None, int]] = set()
    used: set[tuple[str | None, int]] = set()
    listeners: list[Listener] = []
    unmapped: list[str] = []
    taken: dict[tuple[str, str, int], str] = {}
    for name, docs in models:
        for doc in docs:
            transport, port = doc["transport"], doc["port"]
            key: tuple[str | None, int] = (transport, port) if (transport, port) in port_map else (None, port)
            listen = port_map.get(key, port)
            if key in port_map:
                used.add(key)
            elif port_map:
                unmapped.append(f"{transport}/{port} ({name})")
            machine = Machine(doc, emulator)
            bkey: tuple[str | None, int] = (transport, port) if (transport, port) in backends else (None, port)
            backend = None
            if bkey in backends:
                used_backends.add(bkey)
                if bkey not in behind:
                    behind[bkey] = Backend(*backends[bkey], params or ServeParams())
                backend = behind[bkey]
            for host in hosts:
                if listen != 0:
                    other = taken.get((transport, host, listen))
                    if other is not None:
                        raise ServeError(f"{transport} {host}:{listen} is wanted by {other} and by {name} "
                                         f"port {port}: remap one with --port-map")
                    taken[(transport, host, listen)] = f"{name} port {port}"
                listeners.append(Listener(transport, host, listen, machine, name, port, backend))
    unused = sorted(set(port_map) - used, key=lambda k: (k[1], k[0] or ""))
    if unused:
        what = ", ".join(f"{t}/{p}" if t else str(p) for t, p in unused)
        raise ServeError(f"--port-map names ports no model serves: {what}")
    if unmapped:
        raise ServeError(f"--port-map maps other ports but not {', '.join(unmapped)}: map each "
                         "(--port-map P:P keeps a port its own)")
    unused = sorted(set(backends) - used_backends, key=lambda k: (k[1], k[0] or ""))
    if unused:
        what = ", ".join(f"{t}/{p}" if t else str(p) for t, p in unused)
        raise ServeError(f"--backend names ports no model serves: {what}")
    return listeners


class Server:
    """Every listener of one process, the open sessions, and their limits."""

    def __init__(self, listeners: list[Listener], log: Log, params: ServeParams | None = None,
                 sensor: str | None = None) -> None:
        self.listeners = listeners
        self.log = log
        self.params = params or ServeParams()
        self.sensor = sensor or socket.gethostname()
        self.log.sensor = self.sensor
        self.bound: list[Bound] = []
        # The open sessions, the idlest first: a session moves to the end whenever its
        # client sends a byte, so the one to evict for a newcomer is the first (O(1)).
        self.sessions: OrderedDict[_Session, None] = OrderedDict()
        self._by_source: dict[str, OrderedDict[_Session, None]] = {}  # the same, per client address
        # Statistics for scriptgen.server.stop.
        self.accepted = 0
        self.refused = 0
        self.evicted = 0
        self.handed_over = 0  # sessions handed to a backend that have ended
        self.on_handover: Callable[[], None] | None = None  # called as each ends (serve --refine)
        self.recorder: Recorder | None = None  # --record: set by the driver after dropping privileges
        self.record_all = False  # --record-all: every session, not only those handed over
        self.record_errors = 0
        self.errors = 0
        self.forced = 0
        self._accepting = False
        self._tcp: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._none_open = asyncio.Event()  # set while no TCP session is open
        self._tcp_open = 0
        self._stop: asyncio.Future[str] | None = None
        self._prefix = secrets.token_hex(4)  # session ids: this run's prefix + a counter
        self._count = 0
        self._refused_window = 0.0
        self._refused_logged = 0
        self._suppressed = 0
        self.channels_pending = 0  # data channel listeners and connections out being set up

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (sessions ask here: asyncio.get_running_loop() makes a
        getpid system call each time, to notice a fork)."""
        assert self._loop is not None, "the server is not started"
        return self._loop

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> list[Bound]:
        """Bind every listener (all or none: a failure closes those already bound)."""
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self._stop = loop.create_future()
        self._none_open.set()
        try:
            for ln in self.listeners:
                if ln.transport == "tcp":
                    srv = await loop.create_server(lambda ln=ln: _TcpSession(self, ln), ln.host, ln.port,  # type: ignore[misc]
                                                   backlog=self.params.backlog, reuse_address=True)
                    self._tcp.append(srv)
                    socks = srv.sockets
                else:
                    transport, _ = await loop.create_datagram_endpoint(lambda ln=ln: _UdpEndpoint(self, ln),  # type: ignore[misc]
                                                                       local_addr=(ln.host, ln.port))
                    self._udp.append(transport)
                    socks = (transport.get_extra_info("socket"),)
                for sock in socks:
                    host, port = sock.getsockname()[:2]
                    self.bound.append(Bound(ln, host, port))
        except BaseException:
            self._close_listeners()
            raise
        self._accepting = True
        return self.bound

    def announce(self) -> None:
        """Log scriptgen.server.start (call once listening, and privileges dropped)."""
        listeners = [{"transport": b.listener.transport, "ip": b.host, "port": b.port,
                      "model": b.listener.model, "model_port": b.listener.model_port} for b in self.bound]
        self.log.emit({
            "eventid": "scriptgen.server.start", "timestamp": timestamp(time.time()), "sensor": self.sensor,
            "message": "listening on " + ", ".join(b.describe() for b in self.bound),
            "version": __version__, "pid": os.getpid(), "listeners": listeners, "params": asdict(self.params),
        })

    async def run(self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> str:
        """Serve until one of `signals` (or `stop()`), then `shutdown()`; the reason."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop, sig.name)
        try:
            reason = await self.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        await self.shutdown(reason)
        return reason

    def stop(self, reason: str = "stopped") -> None:
        """Ask `wait()` to return (safe from a signal handler run by the loop)."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(reason)

    async def wait(self) -> str:
        """Until `stop()`; returns its reason."""
        assert self._stop is not None, "start() first"
        return await self._stop

    async def shutdown(self, reason: str = "stopped") -> None:
        """Stop listening, let open sessions finish for `grace` seconds, close the rest,
        log scriptgen.server.stop. The caller closes the log afterwards."""
        self.stop(reason)
        self._accepting = False
        for srv in self._tcp:
            srv.close()
        if self._tcp_open:
            # Until every TCP session has ended, or the grace period is over; then what is
            # still open is closed below. UDP sessions have no end of their own (only an
            # idle timeout): they answer during the grace period and are closed with the rest.
            waiter = asyncio.ensure_future(self._none_open.wait())
            await asyncio.wait([waiter], timeout=self.params.grace)
            waiter.cancel()
        for session in list(self.sessions):
            self.forced += 1
            session.close("shutdown")
        self._close_listeners()
        self.log.emit({
            "eventid": "scriptgen.server.stop", "timestamp": timestamp(time.time()), "sensor": self.sensor,
            "message": f"stopped ({reason}): {self.accepted} sessions, {self.forced} closed at shutdown",
            "reason": reason, "sessions": self.accepted, "forced": self.forced, "evicted": self.evicted,
            "refused": self.refused, "errors": self.errors, "events_dropped": self.log.dropped,
        })

    def report_error(self, error: str) -> None:
        """An error outside any session's own work: logged as scriptgen.server.error."""
        self.log.emit({"eventid": "scriptgen.server.error", "timestamp": timestamp(time.time()),
                       "sensor": self.sensor, "message": f"server error: {error}", "error": error})

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Errors asyncio meets outside any session (accept(2) failing...): logged."""
        exc = context.get("exception")
        error = f"{type(exc).__name__}: {exc}" if exc is not None else str(context.get("message"))
        self.log.emit({"eventid": "scriptgen.server.error", "timestamp": timestamp(time.time()),
                       "sensor": self.sensor, "message": f"server error: {error}", "error": error})
        loop.default_exception_handler(context)

    def _close_listeners(self) -> None:
        for srv in self._tcp:
            srv.close()
        for transport in self._udp:
            transport.close()
        self._tcp.clear()
        self._udp.clear()

    # -- sessions ----------------------------------------------------------------------------

    def admit(self, session: _Session) -> bool:
        """Register a new session, making room if a cap is reached (the idlest session of
        its address over `max_per_source`, the idlest of all over `max_connections`, is
        closed as `evicted`); while shutting down, log its refusal and say no."""
        if self._accepting:
            params = self.params
            kin = self._by_source.get(session.src_ip)
            while kin and len(kin) >= params.max_per_source and self._evict(kin, session):
                pass
            while len(self.sessions) >= params.max_connections and self._evict(self.sessions, session):
                pass
            kin = self._by_source.get(session.src_ip)  # (dropped by the evictions if they emptied it)
            if kin is None:
                kin = self._by_source[session.src_ip] = OrderedDict()
            self.sessions[session] = None
            kin[session] = None
            session.kin = kin
            if session.transport_name == "tcp":
                self._tcp_open += 1
                self._none_open.clear()
            self.accepted += 1
            return True
        self.refused += 1
        assert self._loop is not None
        now = self._loop.time()
        if now - self._refused_window >= 1.0:
            self._refused_window, self._refused_logged = now, 0
        if self._refused_logged >= self.params.refused_log_rate:
            self._suppressed += 1
            return False
        self._refused_logged += 1
        session.emit("scriptgen.session.refused", f"refused {session.peer()}: shutdown",
                     {"reason": "shutdown", "suppressed": self._suppressed})
        self._suppressed = 0
        return False

    def _evict(self, order: OrderedDict[_Session, None], newcomer: _Session) -> bool:
        """Close the idlest session of `order` to make room; False if there is none. A data
        channel never ends its own control connection: it passes over its parent (and, if
        that is the only one, is admitted one over the cap)."""
        for victim in order:
            if victim is not newcomer.parent:
                break
        else:
            return False
        self.evicted += 1
        victim.close("evicted")
        return True

    def release(self, session: _Session) -> None:
        if session in self.sessions:
            del self.sessions[session]
            kin = session.kin
            del kin[session]
            if not kin:
                del self._by_source[session.src_ip]
            if session.transport_name == "tcp":
                self._tcp_open -= 1
                if not self._tcp_open:
                    self._none_open.set()

    def swap(self, listeners: Sequence[Listener], reason: str) -> tuple[int, list[str]]:
        """Serve new sessions with the machines of `listeners` (a reloaded model's, planned
        as the running ones were); open sessions keep theirs; logged. Returns (listeners
        swapped, what could not be: ports the new models lack or add, which a restart would
        bind)."""
        new = {(ln.model, ln.transport, ln.model_port, ln.host): ln for ln in listeners}
        swapped, kept = 0, []
        for ln in self.listeners:
            other = new.pop((ln.model, ln.transport, ln.model_port, ln.host), None)
            if other is None:
                kept.append(f"{ln.model} {ln.transport}/{ln.model_port}: no longer in the model, still served")
                continue
            ln.machine, ln.version = other.machine, other.version
            swapped += 1
        kept += [f"{ln.model} {ln.transport}/{ln.model_port}: new in the model, not listened on until a restart"
                 for ln in new.values()]
        versions = {ln.model: ln.version for ln in listeners}
        self.log.emit({"eventid": "scriptgen.server.reload", "timestamp": timestamp(time.time()),
                       "sensor": self.sensor, "message": f"reloaded ({reason}): {swapped} listener(s)",
                       "reason": reason, "models": versions, "swapped": swapped, "kept": kept})
        return swapped, kept

    def new_id(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:08x}"


_NOWHERE: OrderedDict[_Session, None] = OrderedDict()  # the `kin` of a session not (yet) admitted: always empty


class _Session:
    """One emulated conversation; the transport-specific subclasses send and close."""

    __slots__ = (
        "bytes_cut",
        "bytes_in",
        "bytes_out",
        "backend_passive",
        "conn",
        "data_relay",
        "handing",
        "handed",
        "held_close",
        "mirror",
        "data",
        "done",
        "dst_ip",
        "dst_port",
        "events_cut",
        "head",
        "held",
        "id",
        "inputs",
        "kin",
        "last_data",
        "listener",
        "log_spent",
        "parent",
        "recorded",
        "request_at",
        "server",
        "src_ip",
        "src_port",
        "started",
        "started_wall",
        "timer",
        "timer_at",
        "transcript",
        "unmatched",
    )

    transport_name = ""

    def __init__(self, server: Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.id = ""
        self.src_ip, self.src_port, self.dst_ip, self.dst_port = "", 0, "", 0
        # What every event of the session carries (events.Record), set once named.
        self.head: tuple[Any, ...] = (server.sensor, "", self.transport_name, "", 0, "", 0)
        self.conn: Emulator | None = None
        self.started = self.last_data = 0.0
        self.started_wall = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.inputs = self.unmatched = self.bytes_in = self.bytes_out = 0
        # Bytes handed to the engine and not yet taken as a request, and when the request
        # they begin started (request_timeout). Each Input event says how many it took.
        self.held = 0
        self.request_at = 0.0
        self.kin: OrderedDict[_Session, None] = _NOWHERE  # the open sessions of its address, once admitted
        self.log_spent = self.events_cut = self.bytes_cut = 0  # this session's log budget (emit_data)
        self.done = False
        self.parent: _Session | None = None  # the session whose data channel this is
        self.data: _Channels | None = None  # this session's data channels, once it has one
        self.mirror: Mirror | None = None  # its connection to the backend (backend.py), if any
        self.handing = False  # the next request taken is handed over (an unmatched event came)
        self.handed = False  # the backend answers: the engine is left
        self.held_close: str | None = None  # the engine closed while its answers were held back
        self.data_relay: DataRelay | None = None  # its data channels then (datarelay.py)
        # The backend's last passive port, in its answers to mirrored requests (announcing models)
        self.backend_passive: int | None = None
        # Its recording (record.py): what the client sent and got, written as it happens once
        # recorded; before (a session that may be handed over), kept: (from the client?, time, bytes).
        self.recorded: RecordedSession | None = None
        self.transcript: list[tuple[bool, float, bytes]] | None = None

    # -- the driver loop ---------------------------------------------------------------------

    def admitted(self, src: Any, dst: Any) -> bool:
        """Name the session and its endpoints, and start its clocks if the server admits
        it (False: refused, and done)."""
        self.id = self.server.new_id()
        self.src_ip, self.src_port = str(src[0]), int(src[1])
        self.dst_ip, self.dst_port = str(dst[0]), int(dst[1])
        # One tuple for all its events: marshal sends it once a batch.
        self.head = (self.server.sensor, self.id, self.transport_name, self.src_ip, self.src_port, self.dst_ip,
                     self.dst_port)
        if not self.server.admit(self):
            self.done = True
            return False
        self.started = self.last_data = self.server.loop.time()
        self.started_wall = time.time()
        return True

    def begin(self, src: Any, dst: Any) -> bool:
        """Start the session (log connect, queue the banner); False if refused."""
        if not self.admitted(src, dst):
            return False
        try:
            self.conn = Emulator(self.listener.machine, self.started, wall=self.started_wall)
            ln = self.listener
            handover = self.server.params.handover
            if ln.backend is not None and handover != "never" and ln.backend.available(self.started):
                machine = ln.machine
                kind = Mirror if self.transport_name == "tcp" else DatagramMirror
                self.mirror = kind(ln.backend, self, self.server.loop, at_connect=handover == "always",
                                   banner=self.transport_name == "tcp" and bool(machine.states[machine.root].label))
            if self.server.recorder is not None:
                if self.server.record_all:
                    self._record_from_now()
                elif self.mirror is not None:
                    self.transcript = []
            self.emit("scriptgen.session.connect",
                      f"new connection: {self.peer()} -> {self.dst_ip}:{self.dst_port} [session {self.id}]",
                      {"state": self.conn.state, "model": ln.model, "model_port": ln.model_port,
                       "model_version": ln.version, "parent": None})
            self.pump()
        except Exception as exc:  # per-session isolation (STYLE habit 7)
            self.fail(exc)
        return True

    def heard(self, now: float) -> None:
        """The client sent something: this session is now the least idle (the last of the
        server's order and of its address's), and its idle deadline moves."""
        self.last_data = now
        self.server.sessions.move_to_end(self)
        self.kin.move_to_end(self)

    def feed(self, data: bytes) -> None:
        """Bytes from the client (b"": it closed)."""
        if self.done or self.conn is None:
            return
        try:
            server = self.server
            now = server.loop.time()
            if data and (self.recorded is not None or self.transcript is not None):
                self._record(True, data)
            mirror = self.mirror
            if mirror is not None:
                if self.handed:
                    self.heard(now)
                    self.bytes_in += len(data)
                    relay = self.data_relay
                    if data or self.transport_name == "udp":  # an empty datagram is a request
                        self.emit_data("scriptgen.session.relayed", data, "to the backend", {"direction": "in"})
                        mirror.client(relay.from_client(data) if relay is not None else data)
                    else:
                        if relay is not None:
                            mirror.client(relay.flush(relay.held_in))
                        mirror.client_eof()
                    return
                mirror.client(data)
            if data:
                self.last_data = now  # self.heard(now), inlined: once per read
                server.sessions.move_to_end(self)
                self.kin.move_to_end(self)
                self.bytes_in += len(data)
                if self.transport_name == "tcp":  # a datagram is a whole request: taken at once
                    if not self.held:
                        self.request_at = now
                    self.held += len(data)
            elif self.transport_name == "udp":  # an empty datagram is a request
                self.heard(now)
            self.conn.receive_data(data, now)
            self.pump()
        except Exception as exc:  # per-session isolation (STYLE habit 7)
            self.fail(exc)

    def pump(self) -> None:
        """Carry out the engine's events until it needs data (or time)."""
        conn = self.conn
        assert conn is not None
        loop = self.server.loop
        now = loop.time()
        while not self.done and not self.handed:
            event = conn.next_event(now)
            if isinstance(event, NeedData):
                self._arm(loop, now, event.wake_at)
                return
            if isinstance(event, Send):
                if self.mirror is not None and self.mirror.holding:
                    self.mirror.hold(event.data)
                    continue
                self.answer(event.data, event.state)
            elif isinstance(event, Input):
                self.inputs += 1
                held = self.held - len(event.data)
                if held > 0:  # what came after the request taken starts the next one
                    self.held, self.request_at = held, now
                else:
                    self.held = 0
                self.emit_data("scriptgen.session.input", event.data, f"state {event.source} -> {event.state}: input",
                               {"state": event.state, "source": event.source, "transition": event.transition})
                if self.mirror is not None:
                    if not (self.handing and self.mirror.hand_over(len(event.data))):
                        self.mirror.took(len(event.data))
                    self.handing = False
                if self.inputs > self.server.params.max_requests:
                    self.close("max-requests")
            elif isinstance(event, Unmatched):
                self.unmatched += 1
                self.handing = self.mirror is not None and self.server.params.handover == "unsure"
                self.emit_data("scriptgen.session.unmatched", event.data,
                               f"state {event.state}: unmatched input ({event.fallback})",
                               {"state": event.state, "fallback": event.fallback})
            elif isinstance(event, Close):
                if self.mirror is not None and self.mirror.holding:  # the backend's to close, or not
                    self.held_close = event.reason
                    return
                self.close(event.reason)
            elif isinstance(event, Listen):
                conn.listening(*self.channels().listen())
            elif isinstance(event, Connect):
                self.channels().connect(event.port)
            elif isinstance(event, Channel):
                self.channels().serve(event.machine, event.request)

    def answer(self, data: bytes, state: int | None) -> None:
        """Send the model's answer of `state`, logged."""
        self.bytes_out += len(data)
        self.emit_data("scriptgen.session.output", data, f"state {state}: answer", {"state": state})
        self.send(data)

    # -- the backend's side (backend.Relayed) -------------------------------------------------

    def committed(self) -> None:
        """The backend answers from now on; the engine is left where it was."""
        mirror = self.mirror
        assert mirror is not None
        self.handed = True
        self.held = 0  # no request is being completed by the engine any more
        self.held_close = None
        how = "always" if mirror.at_connect else "unmatched"
        if self.transcript is not None:
            self._record_from_now()
        if self.listener.machine.announcing:
            towards = mirror.transport.get_extra_info("sockname") if mirror.transport is not None else None
            self.data_relay = DataRelay(self.server.params, self.src_ip, self.dst_ip, mirror.backend.host,
                                        str(towards[0]) if towards else self.dst_ip, self.channels().log,
                                        record=self._record_channel)
            if self.data is not None and self.backend_passive is not None:
                # The model announced a data port and the backend, asked the same, its own:
                # what the client connects (or connected) to the model's goes to the backend's.
                relay, port = self.data_relay, self.backend_passive
                self.data.hand_over(lambda listening, made: relay.adopt(listening, made, port))
        self.emit("scriptgen.session.handover",
                  f"handed over to the backend {mirror.backend.describe()} after {self.inputs} inputs ({how})",
                  {"state": self.conn.state if self.conn else None, "reason": how, "inputs": self.inputs,
                   "backend": mirror.backend.describe()})

    def mirrored(self, data: bytes) -> None:
        if self.listener.machine.announcing:
            self.backend_passive = passive_port(data) or self.backend_passive

    def relayed(self, data: bytes) -> None:
        if self.data_relay is not None:
            data = self.data_relay.from_backend(data)
            if not data:
                return
        self.bytes_out += len(data)
        self.emit_data("scriptgen.session.relayed", data, "from the backend", {"direction": "out"})
        self.send(data)

    def backend_closed(self, reason: str) -> None:
        relay = self.data_relay
        if relay is not None and relay.held_out:
            self.send(relay.flush(relay.held_out))
        self.close(reason)

    def backend_failed(self, error: str, held: list[bytes]) -> None:
        """The model goes on alone, first with the answers it held back."""
        mirror = self.mirror
        assert mirror is not None
        self.mirror = None
        self.emit("scriptgen.session.backend", f"backend {mirror.backend.describe()} failed: {error}",
                  {"action": "failed", "backend": mirror.backend.describe(), "error": error})
        for data in held:
            self.answer(data, self.conn.state if self.conn else None)
        if self.held_close is not None:
            self.close(self.held_close)

    # -- recording (record.py) ----------------------------------------------------------------

    def _record_from_now(self) -> None:
        """Begin the recording, with what was kept of the session so far."""
        recorder = self.server.recorder
        assert recorder is not None
        transcript, self.transcript = self.transcript or [], None
        try:
            self.recorded = recorder.open(Transport.TCP if self.transport_name == "tcp" else Transport.UDP,
                                          # the model's port (before --port-map): what `learn` joins it to
                                          (self.src_ip, self.src_port), (self.dst_ip, self.listener.model_port),
                                          self.started_wall)
            for from_client, t, data in transcript:
                (self.recorded.client_bytes if from_client else self.recorded.server_bytes)(data, t)
        except ServeError as exc:
            self._record_failed(exc)

    def _record(self, from_client: bool, data: bytes) -> None:
        """Bytes the client sent (or got): to the recording, or kept for one."""
        t = time.time()
        if self.recorded is not None:
            try:
                (self.recorded.client_bytes if from_client else self.recorded.server_bytes)(data, t)
            except ServeError as exc:
                self._record_failed(exc)
        elif self.transcript is not None:
            self.transcript.append((from_client, t, data))
            if self.bytes_in + self.bytes_out > self.server.params.backend_max_bytes:
                self.transcript = None  # too long to keep for a handover: not recorded

    def _record_channel(self, connecting: tuple[str, int], accepting: tuple[str, int]) -> RecordedSession | None:
        """The recording of one of this recorded session's relayed data connections."""
        recorder = self.server.recorder
        if self.recorded is None or recorder is None:
            return None
        try:
            return recorder.open(Transport.TCP, connecting, accepting, time.time())
        except ServeError as exc:
            self._record_failed(exc)
            return None

    def _record_failed(self, exc: ServeError) -> None:
        self.recorded = self.transcript = None
        self.server.record_errors += 1
        if self.server.record_errors == 1:
            self.server.report_error(f"recording stopped for session {self.id}: {exc} (once per run)")

    def channels(self) -> _Channels:
        if self.data is None:
            self.data = _Channels(self)
        return self.data

    def _arm(self, loop: asyncio.AbstractEventLoop, now: float, wake_at: float | None) -> None:
        params = self.server.params
        idle = params.udp_idle_timeout if self.transport_name == "udp" else params.idle_timeout
        at = min(self.last_data + idle, self.started + params.max_session)
        if self.transport_name == "tcp":
            # The deadline of the request begun; with none, now + request_timeout all the
            # same: a request begun later ends later than that, so a timer armed so never
            # has to be moved earlier for it (no new timer per request).
            request = (self.request_at if self.held else now) + params.request_timeout
            if request < at:
                at = request
        if wake_at is not None and wake_at < at:
            at = wake_at
        # One timer per session, moved only when it must fire earlier: a later deadline
        # (new bytes pushed the idle deadline back) is found when the timer fires early.
        if self.timer is not None:
            if self.timer_at <= at:
                return
            self.timer.cancel()
        self.timer_at = at
        self.timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.done:
            return
        try:
            params = self.server.params
            now = self.server.loop.time()
            idle = params.udp_idle_timeout if self.transport_name == "udp" else params.idle_timeout
            if now >= self.started + params.max_session:
                self.close("max-duration")
            elif now >= self.last_data + idle:
                self.close("idle")
            elif self.held and now >= self.request_at + params.request_timeout:
                self.close("request-timeout")
            elif self.conn is not None and not self.handed:
                self.pump()
            else:
                self._arm(self.server.loop, now, None)
        except Exception as exc:  # per-session isolation (STYLE habit 7)
            self.fail(exc)

    def fail(self, exc: Exception) -> None:
        """An internal error: log it, close this session only."""
        self.server.errors += 1
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        print(f"scriptgen: session {self.id}: internal error:", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        try:
            self.emit("scriptgen.session.error", f"internal error: {error}",
                      {"state": self.conn.state if self.conn else None, "error": error})
        finally:
            self.close("error")

    def close(self, reason: str) -> None:
        """End the session: close the transport, log `closed` (once)."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.data is not None:
            self.data.close()
        if self.mirror is not None:
            self.mirror.close()
        if self.data_relay is not None:
            self.data_relay.close()
        if self.recorded is not None:
            by = Sender.CLIENT if reason == "eof" else Sender.SERVER
            try:
                self.recorded.close(by, time.time(), reset=reason in ("reset", "max-buffered", "error"))
            except ServeError as exc:
                self._record_failed(exc)
            self.recorded = None
        if self.handed:  # ended, and recorded: what --refine counts
            self.server.handed_over += 1
            if self.server.on_handover is not None:
                self.server.on_handover()
        self.server.release(self)
        try:
            self.shut(reason)
        finally:
            conn = self.conn
            duration = round(self.server.loop.time() - self.started, 6)
            self.emit("scriptgen.session.closed",
                      f"closed ({reason}) after {duration:.3f}s, {self.inputs} inputs, {self.unmatched} unmatched",
                      {"state": conn.state if conn else None, "reason": reason,
                       "path": list(conn.path) if conn else [], "duration": duration, "inputs": self.inputs,
                       "unmatched": self.unmatched, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                       "backend": self.mirror.backend.describe() if self.handed and self.mirror else None,
                       "events_cut": self.events_cut, "bytes_cut": self.bytes_cut})

    # -- logging -----------------------------------------------------------------------------

    def peer(self) -> str:
        return f"[{self.src_ip}]:{self.src_port}" if ":" in self.src_ip else f"{self.src_ip}:{self.src_port}"

    def emit(self, eventid: str, message: str, own: dict[str, Any], payload: int = 0) -> None:
        """Queue this session's event as a record (events.py): the log's writer makes the
        event of it, off the loop. `own`: the event's own keys (a dict, not keyword
        arguments: matching those to parameters costs more than the rest of this)."""
        self.server.log.emit((eventid, time.time(), self.head, message, own), payload)

    def emit_data(self, eventid: str, data: bytes, message: str, own: dict[str, Any]) -> None:
        """An event with bytes: at most `data_bytes` of them kept (the message shows the first),
        and the session's events with bytes at most `max_session_log_bytes` of log text in
        all (estimated here, off the writer: `_EVENT_BYTES` and base64's 4/3). Past it the
        bytes kept shrink, then the events are counted, not logged (`scriptgen.session.cut`
        once, then `events_cut` and `bytes_cut` in `closed`): a flood costs the log a
        bounded amount, and never fills the queue the other sessions' events wait in."""
        params = self.server.log.params
        room = params.max_session_log_bytes - self.log_spent - _EVENT_BYTES - len(message)
        if room < 0:
            self.events_cut += 1
            self.bytes_cut += min(len(data), params.data_bytes)
            if self.events_cut == 1:
                self.emit("scriptgen.session.cut", f"log limit reached: {self.log_spent} bytes of this session's "
                          f"events logged; later input, output and unmatched events are counted in closed",
                          {"limit": params.max_session_log_bytes})
            return
        cap = min(params.data_bytes, max(0, room - _PREVIEW_BYTES) // 4 * 3)
        kept = data[:cap] if len(data) > cap else data
        if len(data) > cap and cap < params.data_bytes:
            self.bytes_cut += min(len(data), params.data_bytes) - cap
        self.log_spent += _EVENT_BYTES + len(message) + (_PREVIEW_BYTES + 4 * ((len(kept) + 2) // 3) if kept else 0)
        self.emit(eventid, message, {"data": kept, "size": len(data), "truncated": len(data) > cap, **own}, len(kept))

    # -- transport-specific ------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def shut(self, reason: str) -> None:
        raise NotImplementedError


class _TcpSession(_Session, asyncio.Protocol):
    __slots__ = ("backlog", "eof_pending", "feeding", "read_paused", "transport", "write_paused")

    transport_name = "tcp"

    def __init__(self, server: Server, listener: Listener) -> None:
        super().__init__(server, listener)
        self.transport: asyncio.Transport | None = None
        self.backlog: bytearray | None = None  # read but not yet fed (a big read, in pieces)
        self.feeding = self.eof_pending = self.write_paused = self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        src = transport.get_extra_info("peername") or ("", 0)
        dst = transport.get_extra_info("sockname") or ("", 0)
        if not self.begin(src, dst):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        if not self.backlog and len(data) <= self.server.params.feed_bytes:
            self.feed(data)
            return
        # A big read is fed in pieces, one per turn of the loop, reading paused meanwhile:
        # one client's flood delays the others by one piece's work at most.
        if self.backlog is None:
            self.backlog = bytearray()
        self.backlog += data
        self._reading()
        if not self.feeding:
            self.feeding = True
            self.server.loop.call_soon(self._feed_piece)

    def _feed_piece(self) -> None:
        self.feeding = False
        backlog = self.backlog
        if backlog is None or self.done:
            self.backlog = None
            return
        n = self.server.params.feed_bytes
        piece = bytes(backlog[:n])
        del backlog[:n]
        self.feed(piece)
        if backlog and not self.done:
            self.feeding = True
            self.server.loop.call_soon(self._feed_piece)
            return
        self.backlog = None
        if self.eof_pending:
            self.feed(b"")
        elif not self.done:
            self._reading()

    def eof_received(self) -> bool:
        if self.backlog:
            self.eof_pending = True  # after the backlog
        else:
            self.feed(b"")
        return True  # keep the write side open: answers to the last request still go out

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.close("reset" if exc is not None else "eof")
        self.transport = None
        self.backlog = None

    def pause_writing(self) -> None:
        # The client is not reading: stop reading its requests until it does (the drain).
        self.write_paused = True
        self._reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._reading()

    def _reading(self) -> None:
        """Read from the client unless its answers are piling up or a backlog is pending."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self.write_paused or bool(self.backlog)
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.recorded is not None or self.transcript is not None:
            self._record(False, data)
        transport.write(data)
        if transport.get_write_buffer_size() > self.server.params.max_buffered:
            self.close("max-buffered")

    def shut(self, reason: str) -> None:
        transport = self.transport
        self.backlog = None
        if transport is None:
            return
        if reason in ("max-buffered", "error", "reset"):
            transport.abort()
        else:
            transport.close()  # sends what is queued, then FIN


class _UdpSession(_Session):
    __slots__ = ("addr", "endpoint")

    transport_name = "udp"

    def __init__(self, endpoint: _UdpEndpoint, addr: Any) -> None:
        super().__init__(endpoint.server, endpoint.listener)
        self.endpoint = endpoint
        self.addr = addr

    def send(self, data: bytes) -> None:
        transport = self.endpoint.transport
        if transport is None or transport.is_closing():
            return
        queued = getattr(transport, "get_write_buffer_size", None)  # asyncio's has it, untyped
        if queued is not None and queued() > self.server.params.max_buffered:
            raise OSError("UDP send buffer full: answer dropped")
        if self.recorded is not None:
            self._record(False, data)
        transport.sendto(data, self.addr)

    def shut(self, reason: str) -> None:
        if self.endpoint.sessions.get(self.addr) is self:
            del self.endpoint.sessions[self.addr]


class _UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP listener: its sessions by peer address."""

    def __init__(self, server: Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.sessions: dict[Any, _UdpSession] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = (listener.host, listener.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport is not a DatagramTransport subclass in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        session = self.sessions.get(addr)
        if session is None:
            session = _UdpSession(self, addr)
            if not session.begin(addr, self.local):
                return
            if session.done:  # closed at once (e.g. an error while starting)
                return
            self.sessions[addr] = session
        session.feed(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) for datagrams already sent: a peer went away. They
        # name no session reliably; the peer's session ends by its idle timeout.
        return

    def connection_lost(self, exc: Exception | None) -> None:
        for session in list(self.sessions.values()):
            session.close("shutdown")
        self.transport = None


class _Channels:
    """One session's data channels: listeners and connections out being set up, data
    connections made and waiting for what to serve, and what to serve waiting for a data
    connection (the two meet in either order: a client may connect before or after it
    sends the request the channel answers)."""

    def __init__(self, owner: _Session) -> None:
        self.owner = owner
        self.pending = 0  # listeners and connections out being set up
        self.listening: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}  # fd -> (socket, expiry)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.waiting: deque[_DataSession] = deque()
        self.queued: deque[tuple[Machine, bytes]] = deque(maxlen=_MAX_QUEUED)
        self.adopt: Adopt | None = None  # who takes them over after a handover (hand_over)

    def _admit(self, action: str, port: int | None) -> bool:
        owner, server = self.owner, self.owner.server
        params = server.params
        if owner.transport_name == "tcp" and server.channels_pending < params.max_channels \
                and self.pending < params.max_session_channels:
            self.pending += 1
            server.channels_pending += 1
            return True
        self.log("refused", port, f"data channel refused ({action}): over the channel limits")
        return False

    def _settled(self) -> None:
        self.pending -= 1
        self.owner.server.channels_pending -= 1

    def log(self, action: str, port: int | None, message: str, error: str | None = None) -> None:
        self.owner.emit("scriptgen.session.channel", message, {"action": action, "port": port, "error": error})

    def listen(self) -> tuple[int | None, str | None]:
        """Bind a listener for one data connection on the address the client reached:
        (port, address), or (None, None) when none could be had."""
        owner = self.owner
        if not self._admit("listen", None):
            return None, None
        sock = socket.socket(socket.AF_INET6 if ":" in owner.dst_ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((owner.dst_ip, 0))
            sock.listen(1)
            port = int(sock.getsockname()[1])
            loop = asyncio.get_running_loop()
            fd = sock.fileno()
            loop.add_reader(fd, self._accept, fd)
        except OSError as exc:
            sock.close()
            self._settled()
            self.log("failed", None, f"data channel: cannot listen ({exc.strerror or exc})", error=str(exc))
            return None, None
        expiry = loop.call_later(owner.server.params.channel_timeout, self._expire, fd)
        self.listening[fd] = (sock, expiry)
        self.log("listen", port, f"data channel: listening on {owner.dst_ip}:{port}")
        return port, owner.dst_ip

    def _accept(self, fd: int) -> None:
        sock, expiry = self.listening[fd]
        try:
            conn, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_listening(fd)
            self.log("failed", None, f"data channel: accept failed ({exc.strerror or exc})", error=str(exc))
            return
        if addr[0] != self.owner.src_ip:  # only the client that was told the port
            conn.close()
            self.log("refused", int(addr[1]), f"data channel: refused a connection from {addr[0]}")
            return
        self._stop_listening(fd)
        task = asyncio.ensure_future(
            asyncio.get_running_loop().connect_accepted_socket(lambda: _DataSession(self), conn))
        self._keep(task)

    def _expire(self, fd: int) -> None:
        if fd in self.listening:
            port = int(self.listening[fd][0].getsockname()[1])
            self._stop_listening(fd)
            self.log("expired", port, "data channel: nobody connected in time")

    def _stop_listening(self, fd: int) -> None:
        self._unlisten(fd).close()

    def _unlisten(self, fd: int) -> socket.socket:
        """The listener `fd`, no longer this session's to watch (still open)."""
        sock, expiry = self.listening.pop(fd)
        expiry.cancel()
        asyncio.get_running_loop().remove_reader(fd)
        self._settled()
        return sock

    def connect(self, port: int) -> None:
        """Connect to the port the client announced, on its own address."""
        if not self._admit("connect", port):
            return
        owner = self.owner
        self.log("connect", port, f"data channel: connecting to {owner.src_ip}:{port}")
        loop = asyncio.get_running_loop()
        made = loop.create_connection(lambda: _DataSession(self), owner.src_ip, port)
        task = asyncio.ensure_future(asyncio.wait_for(made, owner.server.params.channel_timeout))
        task.add_done_callback(lambda t, port=port: self._connected(t, port))  # type: ignore[misc]
        self._keep(task)

    def _connected(self, task: asyncio.Task[Any], port: int) -> None:
        self._settled()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            error = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            self.log("failed", port, f"data channel: cannot connect to port {port} ({error})", error=error)

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self.tasks.discard)

    def serve(self, machine: Machine, request: bytes) -> None:
        """Serve `machine` on the next data connection (made, or still to come)."""
        self.queued.append((machine, request))
        self.match()

    def arrived(self, session: _DataSession) -> None:
        self.waiting.append(session)
        if self.adopt is not None:
            self.adopt(*self._release())
        self.match()

    def hand_over(self, adopt: Adopt) -> None:
        """Give the listeners and the connections that wait for what to serve, now and from
        now on (an accept may be under way), to `adopt` (the owner was handed over): the
        sockets, open, and the connections' transports with what their client sent so far;
        the connections' sessions end ("relayed")."""
        self.adopt = adopt
        adopt(*self._release())

    def _release(self) -> tuple[list[socket.socket], list[tuple[asyncio.Transport, bytes]]]:
        listening = [self._unlisten(fd) for fd in list(self.listening)]
        made = []
        while self.waiting:
            session = self.waiting.popleft()
            early = bytes(session.early)
            transport = session.detach()
            if transport is not None:
                made.append((transport, early))
        self.queued.clear()
        return listening, made

    def match(self) -> None:
        while self.waiting and self.queued:
            session = self.waiting.popleft()
            if not session.done:
                session.start(*self.queued.popleft())

    def close(self) -> None:
        """The owner ended: no more listeners or connections; connections that got nothing
        to serve end with it (those serving go on)."""
        for fd in list(self.listening):
            self._stop_listening(fd)
        for task in list(self.tasks):
            task.cancel()
        self.queued.clear()
        while self.waiting:
            self.waiting.popleft().close("parent")


_MAX_QUEUED = 4  # answers waiting for a data connection, per session
# Takes over a handed-over session's data channels: listening sockets, and connections made
# (with what their client sent so far).
Adopt = Callable[[list[socket.socket], list[tuple[asyncio.Transport, bytes]]], None]
# A session event's JSON line less its message and data, with IPv6 addresses at both ends
# and a 30-character sensor name (415 bytes measured), and the most its message's preview of
# 48 bytes can add (245 measured, for bytes that repr() and JSON both escape): emit_data's
# estimate of an event's size, which errs on the high side.
_EVENT_BYTES = 450
_PREVIEW_BYTES = 256


class _DataSession(_TcpSession):
    """A data channel's connection (accepted or made): a session of its own whose engine
    starts when its parent says what to serve (`_Channels.serve`)."""

    __slots__ = ("early", "early_eof", "owner")

    def __init__(self, channels: _Channels) -> None:
        parent = channels.owner
        super().__init__(parent.server, parent.listener)
        self.parent = parent
        self.owner = channels
        self.early = bytearray()  # bytes from the client before there is anything to serve
        self.early_eof = False

    def begin(self, src: Any, dst: Any) -> bool:
        parent = self.owner.owner
        if not self.admitted(src, dst):
            return False
        ln = self.listener
        self.emit("scriptgen.session.connect",
                  f"data channel of session {parent.id}: {self.peer()} <-> {self.dst_ip}:{self.dst_port} "
                  f"[session {self.id}]", {"state": None, "model": ln.model, "model_port": ln.model_port,
                                           "model_version": ln.version, "parent": parent.id})
        if parent.done:
            self.close("parent")
            return True
        self._arm(self.server.loop, self.started, None)
        self.owner.arrived(self)
        return True

    def detach(self) -> asyncio.Transport | None:
        """End this session ("relayed") but keep its connection open: its transport."""
        transport = self.transport
        if self.done or transport is None or transport.is_closing():
            return None
        self.transport = None  # shut() leaves it open
        self.close("relayed")
        return transport

    def start(self, machine: Machine, request: bytes) -> None:
        try:
            now = self.server.loop.time()
            self.conn = Emulator(machine, now, wall=time.time(), first=request)
            early, self.early = bytes(self.early), bytearray()
            # The request the parent took is handed over as the first request: its Input
            # event takes it back off; what the client sent meanwhile is a request begun now.
            self.held, self.request_at = len(request) + len(early), now
            if early:
                self.conn.receive_data(early, now)
            if self.early_eof:
                self.conn.receive_data(b"", now)
            self.pump()
        except Exception as exc:  # per-session isolation (STYLE habit 7)
            self.fail(exc)

    def feed(self, data: bytes) -> None:
        if self.conn is not None or self.done:
            super().feed(data)
            return
        if not data:
            self.early_eof = True
            return
        self.heard(self.server.loop.time())
        self.bytes_in += len(data)
        self.early += data
        if len(self.early) > self.server.params.max_buffered:
            self.close("max-buffered")
