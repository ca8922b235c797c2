"""`scriptgen serve`: model files -> a honeypot listening on their ports (docs/cli.md, docs/events.md)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import sys
import time
from typing import Any

from scriptgen.cli.common import positive, seconds, warn
from scriptgen.emulate import EmulatorParams
from scriptgen.serve import (
    EventLog,
    LogParams,
    ProcessLog,
    ServeError,
    ServeParams,
    Server,
    plan_listeners,
)
from scriptgen.params import RecordParams
from scriptgen.errors import ScriptgenError
from scriptgen.model import Model
from scriptgen.serve import Listener
from scriptgen.serve.log import Log
from scriptgen.serve.record import Recorder
from scriptgen.serve.runtime import drop_privileges, freeze_loaded, raise_file_limit
from scriptgen.serve.runtime import run as run_loop

__all__ = ["add_parser", "port_mapping", "run"]

_DEFAULTS = ServeParams()
_LOG_DEFAULTS = LogParams()
_RECORD_DEFAULTS = RecordParams()


def port_mapping(text: str) -> tuple[str | None, int, int]:
    """`[tcp/|udp/]MODEL_PORT:LISTEN_PORT` -> (transport or None, model port, listen port)."""
    transport: str | None = None
    spec = text
    if "/" in spec:
        transport, spec = spec.split("/", 1)
        if transport not in ("tcp", "udp"):
            raise argparse.ArgumentTypeError(f"transport must be tcp or udp: {text!r}")
    model_port, sep, listen_port = spec.partition(":")
    try:
        mp, lp = int(model_port), int(listen_port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [tcp/|udp/]MODEL_PORT:LISTEN_PORT, e.g. 445:10445: {text!r}") from None
    if not sep or not 0 <= mp <= 65535 or not 0 <= lp <= 65535:
        raise argparse.ArgumentTypeError(f"expected [tcp/|udp/]MODEL_PORT:LISTEN_PORT, e.g. 445:10445: {text!r}")
    return transport, mp, lp


def backend_address(text: str) -> tuple[str | None, int, str, int]:
    """`[tcp/|udp/]MODEL_PORT=HOST:PORT` -> (transport or None, model port, host, port)."""
    usage = f"expected [tcp/|udp/]MODEL_PORT=HOST:PORT, e.g. 445=10.9.0.2:445 or 21=[fd00::2]:21: {text!r}"
    spec, transport = text, None
    if "/" in spec.split("=", 1)[0]:
        transport, spec = spec.split("/", 1)
        if transport not in ("tcp", "udp"):
            raise argparse.ArgumentTypeError(usage)
    model_port, sep, address = spec.partition("=")
    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        mp, bp = int(model_port), int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    if not sep or not colon or not host or not 0 <= mp <= 65535 or not 0 < bp <= 65535:
        raise argparse.ArgumentTypeError(usage)
    return transport, mp, host, bp


_seconds = seconds()


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run models as a honeypot (TCP and UDP, many ports, one process)",
        description=(
            "Listen on every port of every model file and answer clients as the learned "
            "state machine says (docs/emulator.md). Every session is logged — connect, each "
            "request and answer, unmatched requests, the path through the states, close — "
            "to LOG_DIR/events.jsonl (one JSON object per line) and LOG_DIR/events.sqlite "
            "(docs/events.md). SIGTERM or SIGINT stops listening, lets open sessions finish "
            "for --grace seconds, and writes the log out."
        ),
        epilog=(
            "examples:\n"
            "  scriptgen serve ftp.json --port-map 21:2121\n"
            "  sudo scriptgen serve smb.json ftp.json --bind 0.0.0.0 --user nobody --log-dir /var/log/scriptgen\n"
            "  scriptgen sessions-log scriptgen-logs/events.sqlite\n"
            "\n"
            "Prints one line per listener: listening on tcp 127.0.0.1:2121 (model ftp.json port 21).\n"
            "Exit codes: 0 stopped by a signal; 2 usage; 3 a model cannot be read, a port cannot be\n"
            "bound, or the log directory cannot be written (docs/cli.md)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model files written by `scriptgen learn`")
    parser.add_argument("--bind", action="append", dest="hosts", metavar="ADDR",
                        help="address to listen on; repeat for several (default: 127.0.0.1; "
                        "0.0.0.0 or :: for every interface)")
    parser.add_argument("--port-map", action="append", type=port_mapping, default=[], metavar="[T/]P:L",
                        help="listen on port L for the model's port P (both transports, or only T = tcp "
                        "or udp); L = 0 picks a free port. Repeat for several: once one is given, every "
                        "port of the models needs one (P:P keeps a port its own).")
    parser.add_argument("--log-dir", default="scriptgen-logs", metavar="DIR",
                        help="where events.jsonl and events.sqlite are appended (default: %(default)s)")
    parser.add_argument("--no-json", action="store_true", help="do not write events.jsonl")
    parser.add_argument("--no-sqlite", action="store_true", help="do not write events.sqlite")
    parser.add_argument("--sensor", metavar="NAME", help="the `sensor` of every event (default: the host name)")
    parser.add_argument("--user", metavar="NAME",
                        help="after binding (low ports need root), become this user (name or uid) "
                        "and hand it the log files")
    parser.add_argument("--idle-timeout", type=_seconds, default=_DEFAULTS.idle_timeout, metavar="S",
                        help="close a TCP connection after S seconds without a byte from the client "
                        "(default: %(default)s)")
    parser.add_argument("--udp-idle-timeout", type=_seconds, default=_DEFAULTS.udp_idle_timeout, metavar="S",
                        help="end a UDP peer's session after S seconds without a datagram (default: %(default)s)")
    parser.add_argument("--max-session", type=_seconds, default=_DEFAULTS.max_session, metavar="S",
                        help="close any session after S seconds (default: %(default)s)")
    parser.add_argument("--max-buffered", type=positive, default=_DEFAULTS.max_buffered, metavar="BYTES",
                        help="cut off a client that leaves more than this many answer bytes unread "
                        "(default: %(default)s)")
    parser.add_argument("--max-requests", type=positive, default=_DEFAULTS.max_requests, metavar="N",
                        help="close a session after N requests (default: %(default)s)")
    parser.add_argument("--request-timeout", type=_seconds, default=_DEFAULTS.request_timeout, metavar="S",
                        help="close a TCP connection when a request is still incomplete S seconds after its "
                        "first byte: every byte resets --idle-timeout, so a client trickling a byte every few "
                        "seconds (Slowloris) would otherwise keep its connection for --max-session "
                        "(default: %(default)s)")
    parser.add_argument("--max-connections", type=positive, default=_DEFAULTS.max_connections, metavar="N",
                        help="open sessions (TCP and UDP) at once; a newcomer beyond takes the place of the "
                        "idlest session (the longest without a byte from its client), which is closed and "
                        "logged as evicted: held connections cannot lock newcomers out (default: %(default)s)")
    parser.add_argument("--max-per-source", type=positive, default=_DEFAULTS.max_per_source, metavar="N",
                        help="open sessions (TCP and UDP) from one client address; a newcomer beyond takes "
                        "the place of that address's idlest session, so one address cannot hold every "
                        "--max-connections slot (default: %(default)s)")
    parser.add_argument("--max-channels", type=positive, default=_DEFAULTS.max_channels, metavar="N",
                        help="data channels (FTP's PASV/PORT connections, learned from the capture) being set "
                        "up at once over all sessions; beyond, the answer names the capture's port "
                        f"(default: %(default)s; {_DEFAULTS.max_session_channels} per session)")
    parser.add_argument("--channel-timeout", type=_seconds, default=_DEFAULTS.channel_timeout, metavar="S",
                        help="seconds a data channel's listener waits for the client, and a connection to a "
                        "port the client announced may take (default: %(default)s)")
    parser.add_argument("--grace", type=_seconds, default=_DEFAULTS.grace, metavar="S",
                        help="on SIGTERM/SIGINT, seconds open sessions get to finish (default: %(default)s)")
    parser.add_argument("--log-data-bytes", type=positive, default=_LOG_DEFAULTS.data_bytes, metavar="N",
                        help="bytes of each message kept in the log; `size` gives the full length "
                        "(default: %(default)s)")
    parser.add_argument("--backend", action="append", type=backend_address, default=[], metavar="[T/]P=HOST:PORT",
                        help="a real server behind the model's port P, TCP or UDP (run it in a sandbox: a VM, a "
                        "container, a network namespace): each session of P mirrors its requests to it, and "
                        "at a request the model has no answer for the session is handed over and relayed "
                        "(docs/backend.md). The only address the honeypot ever connects to. Repeat for several.")
    parser.add_argument("--handover", choices=("unsure", "always", "never"), default=_DEFAULTS.handover,
                        help="when a session is handed to its port's backend: at the first request the model "
                        "has no answer for (unsure), at connect: a pure relay (always), or not at all (never) "
                        "(default: %(default)s)")
    parser.add_argument("--max-backend-sessions", type=positive, default=_DEFAULTS.max_backend_sessions,
                        metavar="N", help="sessions connected to one backend at once; beyond, the model answers "
                        "alone (default: %(default)s)")
    parser.add_argument("--backend-max-bytes", type=positive, default=_DEFAULTS.backend_max_bytes, metavar="BYTES",
                        help="bytes one session may relay each way through the backend (default: %(default)s)")
    parser.add_argument("--log-session-bytes", type=positive, default=_LOG_DEFAULTS.max_session_log_bytes,
                        metavar="N", help="log text one session's messages may take; past it they are counted, "
                        "not logged (default: %(default)s)")
    parser.add_argument("--record", metavar="DIR",
                        help="write every session handed to a backend (every session with --record-all) to "
                        "DIR as classic pcap files: the client's bytes and the answers it got, with TCP/UDP "
                        "framing and the client's address; `scriptgen learn CAPTURE... DIR` learns from them "
                        "(docs/record.md)")
    parser.add_argument("--record-all", action="store_true", help="with --record: every session, not only "
                        "those handed over")
    parser.add_argument("--record-rotate-bytes", type=positive, default=_RECORD_DEFAULTS.rotate_bytes,
                        metavar="BYTES", help="begin a new recording file before one passes this size "
                        "(default: %(default)s)")
    parser.add_argument("--record-rotate-seconds", type=_seconds, default=_RECORD_DEFAULTS.rotate_seconds,
                        metavar="S", help="begin a new recording file every S seconds (default: %(default)s)")
    parser.add_argument("--refine", type=positive, metavar="N",
                        help="with --record: after every N sessions handed to a backend, learn each model "
                        "with a backend again from its captures (the model's sources) and the recordings, in "
                        "a process of its own, and serve the refined model (DIR/refined-NAME) to new sessions; "
                        "open sessions keep theirs. SIGHUP reloads the model files the same way at any time.")
    parser.add_argument("--pace", action="store_true",
                        help="delay each answer by the real server's median response delay")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    params = ServeParams(
        idle_timeout=args.idle_timeout, udp_idle_timeout=args.udp_idle_timeout, max_session=args.max_session,
        max_buffered=args.max_buffered, max_requests=args.max_requests, request_timeout=args.request_timeout,
        max_connections=args.max_connections, max_per_source=args.max_per_source, grace=args.grace,
        max_channels=args.max_channels, channel_timeout=args.channel_timeout, handover=args.handover,
        max_backend_sessions=args.max_backend_sessions, backend_max_bytes=args.backend_max_bytes,
    )
    backends = {(transport, model_port): (host, port) for transport, model_port, host, port in args.backend}
    port_map: dict[tuple[str | None, int], int] = {}
    for transport, model_port, listen_port in args.port_map:
        port_map[(transport, model_port)] = listen_port
    # A model of many captures takes seconds to check and compile (2 s for 4 MB): say so first.
    started = time.monotonic()
    size = sum(os.path.getsize(path) for path in args.models if os.path.isfile(path))
    if size >= 1_000_000:
        warn(f"reading {len(args.models)} model(s) ({size / 1e6:.1f} MB) and compiling their state machines")
    models = _Models([[name, name] for name in args.models], args.hosts or ["127.0.0.1"], port_map,
                     EmulatorParams(pace=args.pace), backends, params)
    listeners = models.plan()
    ready_in = time.monotonic() - started
    limit = raise_file_limit(params.max_connections + 64)
    if limit < params.max_connections + 64:
        warn(f"only {limit} file descriptors allowed (ulimit -n): fewer than --max-connections "
             f"{params.max_connections} connections can be served")
    if os.geteuid() == 0 and not args.user:
        warn("running as root: consider --user NAME to drop privileges once the ports are bound")
    log_params = LogParams(data_bytes=args.log_data_bytes, max_session_log_bytes=args.log_session_bytes)
    log: Log
    try:
        if args.no_json and args.no_sqlite:
            log = EventLog([], log_params)
        else:  # written by a process of its own: the event loop keeps its core (docs/events.md)
            log = ProcessLog(args.log_dir, log_params, json_lines=not args.no_json, sqlite=not args.no_sqlite,
                             user=args.user)
    except OSError as exc:
        raise ServeError(f"--log-dir {args.log_dir}: {exc.strerror or exc}") from None
    try:
        run_loop(_serve(listeners, models, log, params, args, ready_in))
    finally:
        log.close()
    return 0


class _Models:
    """The model files being served, by the name they were given (a path on the command
    line; `--refine` serves a refined file under the same name), and how to plan them."""

    def __init__(self, files: list[list[str]], hosts: list[str], port_map: dict[tuple[str | None, int], int],
                 emulator: EmulatorParams, backends: dict[tuple[str | None, int], tuple[str, int]],
                 params: ServeParams) -> None:
        self.files = files  # [name, the file read for it], in command-line order
        self.hosts, self.port_map, self.emulator, self.backends, self.params = (
            hosts, port_map, emulator, backends, params)
        self.versions: dict[str, str] = {}
        self.loaded: dict[str, Model] = {}  # name -> the model served (its sources, params and ports)

    def plan(self) -> list[Listener]:
        """Read every model file and plan its listeners (ModelError, ServeError)."""
        from scriptgen.modelfile import loads, port_doc, read

        docs, versions, loaded = [], {}, {}
        for name, path in self.files:
            data = read(path)
            model = loads(data, path)
            if not model.ports:
                raise ServeError(f"{path}: the model has no ports (learned from no sessions with data)")
            docs.append((name, [port_doc(p) for p in model.ports]))
            versions[name] = hashlib.sha256(data).hexdigest()[:16]
            loaded[name] = model
        listeners = plan_listeners(docs, self.hosts, self.port_map, self.emulator, self.backends, self.params)
        for ln in listeners:
            ln.version = versions[ln.model]
        self.versions, self.loaded = versions, loaded
        return listeners


async def _reload(server: Server, models: _Models, reason: str) -> None:
    """Read the model files again and serve new sessions with them; logged either way."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        listeners = await loop.run_in_executor(None, models.plan)
    except ScriptgenError as exc:
        server.report_error(f"reload ({reason}) failed, the models served are unchanged: {exc}")
        warn(f"reload ({reason}) failed: {exc}")
        return
    swapped, kept = server.swap(listeners, reason)
    warn(f"reloaded ({reason}) in {time.monotonic() - started:.1f}s: {swapped} listener(s) now serve "
         + ", ".join(f"{n} {v}" for n, v in models.versions.items()) + "".join(f"; {k}" for k in kept))


class _Refiner:
    """`--refine N`: after every N sessions handed to a backend, learn each model with a
    backend again from its captures and the recordings, in a process of its own, and serve
    the refined model (saved in the recording directory) to new sessions."""

    def __init__(self, every: int, record_dir: str, server: Server, models: _Models) -> None:
        self.every, self.record_dir, self.server, self.models = every, record_dir, server, models
        self.count = 0
        self.task: asyncio.Task[None] | None = None

    def handed(self) -> None:
        self.count += 1
        if self.count >= self.every and self.task is None:
            self.count = 0
            self.task = asyncio.ensure_future(self._refine())
            self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            self.server.report_error(f"refine failed: {task.exception()!r}")

    async def _refine(self) -> None:
        behind = {ln.model for ln in self.server.listeners if ln.backend is not None}
        recordings = os.path.abspath(self.record_dir) + os.sep
        refined = False
        for name in sorted(behind):
            model = self.models.loaded[name]
            sources = [s for s in model.sources
                       if os.path.isfile(s) and not os.path.abspath(s).startswith(recordings)]
            out = os.path.join(self.record_dir, "refined-" + os.path.basename(name))
            argv = [sys.executable, "-m", "scriptgen", "learn", *sources, self.record_dir, "-o", out]
            for key in ("macro", "micro"):
                if key in model.params:
                    argv += [f"--{key}", str(model.params[key])]
            for p in model.ports:
                argv += ["--port", str(p.port)]
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                self.server.report_error(f"refine of {name} failed: {last[0]}")
                continue
            for entry in self.models.files:
                if entry[0] == name:
                    entry[1] = out
            refined = True
        if refined:
            await _reload(self.server, self.models, "refine")


async def _serve(listeners: Any, models: _Models, log: Log, params: ServeParams, args: argparse.Namespace,
                 ready_in: float) -> None:
    server = Server(listeners, log, params, args.sensor)
    try:
        bound = await server.start()
    except OSError as exc:
        raise ServeError(f"cannot listen: {exc.strerror or exc}") from None
    if args.user:
        drop_privileges(args.user)
    if args.record:  # made as the user the server now is
        server.recorder = Recorder(args.record, RecordParams(rotate_bytes=args.record_rotate_bytes,
                                                             rotate_seconds=args.record_rotate_seconds))
        server.record_all = args.record_all
    elif args.record_all or args.refine:
        raise ServeError("--record-all and --refine need --record DIR")
    if args.refine:
        server.on_handover = _Refiner(args.refine, args.record, server, models).handed
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(server, models, "SIGHUP")))
    for b in bound:
        print(f"listening on {b.describe()}", flush=True)
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]  # asyncio or uvloop
    warn(f"serving {len(bound)} listener(s) on {loop_name} (models ready in {ready_in:.1f}s); logging to "
         f"{args.log_dir}; SIGTERM or ^C to stop")
    server.announce()
    freeze_loaded()
    try:
        reason = await server.run()
    finally:
        if server.recorder is not None:
            server.recorder.close()
    warn(f"stopped ({reason}): {server.accepted} sessions, {server.forced} closed at shutdown, "
         f"{server.evicted} evicted, {server.refused} refused")
    sys.stdout.flush()
