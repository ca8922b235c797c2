"""Serve-stage benchmark: sessions/s, latency and memory per idle connection of
`scriptgen serve`, against a bare asyncio server and a honeyd-style process per connection,
all in one run on 127.0.0.1.

    .venv/bin/python bench/bench_serve.py                 # ~2.5 minutes on 2 cores
    .venv/bin/python bench/bench_serve.py --servers serve,bare-protocol --idle 0 --rounds 5 --check
    .venv/bin/python bench/bench_serve.py --instructions 300 --servers serve,bare-protocol
                                                          # instructions per session (valgrind)

What it does:
 1. Learns a small FTP-like model (banner, USER <name> echoed back, PASS, QUIT where the
    server closes) and writes it to a temporary directory.
 2. Starts each server in its own process (so client and server do not share a core):
      serve          scriptgen.serve with that model, default limits (connection cap raised
                     to the idle count), on the loop `scriptgen serve` picks (uvloop when
                     installed), logging to JSON lines and SQLite by a process of its own
                     (ProcessLog), as in production
      serve-thread   the same with the log written by a thread of the server (EventLog):
                     what the writer process buys (not run by default)
      serve-nolog    the same with no log sink (events made and queued, never written):
                     what the log costs (not run by default)
      bare-protocol  asyncio Protocol: a canned banner, then one canned reply per read, on
                     asyncio's own loop
      bare-uvloop    the same on uvloop (not run by default)
      bare-streams   asyncio.start_server (reader/writer, a task per connection), same replies
      fork           honeyd's model: a blocking accept loop that fork+execs a Python script
                     per connection with the socket as stdin/stdout (the script exported by
                     scriptgen.export when available, else a minimal engine driver);
                     at most --fork-children alive at once (honeyd has no cap; 1000 Python
                     processes would need ~10 GB)
 3. Drives each with 1, 100 and 1000 concurrent clients (an asyncio Protocol client in
    this process, on uvloop when installed: a Python client on asyncio's own loop took
    more CPU per session than the bare server and was what limited it) for --duration
    seconds: a session is connect, read the banner, send
    "USER bench", read the answer, send "QUIT", read the answer, close (8 events in
    serve's log). Phases are interleaved: --rounds rounds, each running every server once
    at each level, in an order that rotates, so that a slow spell of the (shared, virtual)
    machine falls on all servers alike. Prints each phase, then medians: sessions/s,
    p50/p99 session latency, sessions that failed or did not finish in time, and the
    server's CPU time per session (its own, its reaped children's and its live children's:
    serve's log writer process included). The client shares the machine, so CPU per
    session is the figure that does not depend on the client.
 4. Opens --idle connections to each asyncio server, waits until the server holds them
    all, and divides the server's RSS growth by their number (RLIMIT_NOFILE is raised to
    the hard limit in every process).
 5. Prints the ratios serve / bare (sessions/s: the median of the rounds' ratios, each
    comparing phases run next to each other, and their range; target >= 0.8) and bytes per
    idle connection (target <= 8 KiB); --check exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BANNER = b"220 ready\r\n"
CANNED = b"200 OK\r\n"
REQUESTS = (b"USER bench\r\n", b"QUIT\r\n")
TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the model ---------------------------------------------------------------------------------


def write_model(path: Path) -> None:
    from scriptgen.learn import learn
    from scriptgen.model import Endpoint, Message, Sender, Session, Transport
    from scriptgen.modelfile import save
    from scriptgen.params import LearnParams

    sessions = []
    for i, name in enumerate([b"alice", b"bob", b"carol", b"dave", b"erin"]):
        t = 1000.0
        messages = [Message(Sender.SERVER, BANNER, t)]
        for request, answer in ((b"USER " + name + b"\r\n", b"331 Password required for " + name + b".\r\n"),
                                (b"PASS secret\r\n", b"230 Logged in.\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n")):
            messages += [Message(Sender.CLIENT, request, t + 0.01), Message(Sender.SERVER, answer, t + 0.012)]
            t += 0.02
        sessions.append(Session(i + 1, Transport.TCP, Endpoint("10.0.0.1", 40000 + i), Endpoint("10.0.0.2", 21),
                                1000.0, t, False, messages, "fin", Sender.SERVER))
    save(learn(sessions, LearnParams(jobs=1)), str(path))


# -- the servers (each runs in its own process: bench_serve.py --server KIND) -------------------


def run_server(kind: str, model: str, workdir: str, fork_children: int, max_connections: int) -> None:
    raise_nofile()
    if kind == "fork":
        fork_server(model, workdir, fork_children)
        return
    servers = {"serve": serve_server, "serve-nolog": serve_server, "serve-thread": serve_server,
               "bare-protocol": bare_protocol,
               "bare-streams": bare_streams, "bare-uvloop": bare_protocol}
    # serve runs on the loop `scriptgen serve` picks (uvloop when installed); the bare
    # servers on asyncio's own loop, except bare-uvloop, the same server on uvloop.
    from scriptgen.serve.runtime import loop_factory
    factory, _ = loop_factory()
    if kind in ("bare-protocol", "bare-streams"):
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(servers[kind](model, workdir, max_connections, kind))


def announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


async def serve_server(model: str, workdir: str, max_connections: int, kind: str = "serve") -> None:
    from scriptgen.modelfile import load, port_doc
    from scriptgen.serve import EventLog, ProcessLog, ServeParams, Server, open_sinks, plan_listeners
    from scriptgen.serve.runtime import freeze_loaded

    docs = [port_doc(p) for p in load(model).ports]
    listeners = plan_listeners([(model, docs)], ["127.0.0.1"], {(None, 21): 0})
    # As `scriptgen serve` logs: JSON lines and SQLite, written by a process of their own.
    logs = os.path.join(workdir, "logs")
    log = (EventLog([]) if kind == "serve-nolog" else EventLog(open_sinks(logs)) if kind == "serve-thread"
           else ProcessLog(logs))
    # Every client is 127.0.0.1: the per-address cap is the whole cap.
    server = Server(listeners, log, ServeParams(max_connections=max_connections, max_per_source=max_connections,
                                                backlog=4096), sensor="bench")
    (bound,) = await server.start()
    server.announce()
    freeze_loaded()  # as `scriptgen serve` does
    announce(bound.port)
    try:
        await server.run()
    finally:
        log.close()


class _Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(BANNER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(CANNED)  # type: ignore[attr-defined]


async def bare_protocol(model: str, workdir: str, max_connections: int, kind: str = "") -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Canned, "127.0.0.1", 0, backlog=4096)
    announce(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def bare_streams(model: str, workdir: str, max_connections: int, kind: str = "") -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BANNER)
        try:
            while await reader.read(65536):
                writer.write(CANNED)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    announce(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


_FALLBACK_SCRIPT = r'''
import json, os, select, sys, time
sys.path.insert(0, SRC)
from scriptgen.emulate import Close, Emulator, Machine, NeedData, Send
machine = Machine(json.load(open(MODEL)))
conn = Emulator(machine, time.monotonic())
while True:
    event = conn.next_event(time.monotonic())
    if isinstance(event, Send):
        os.write(1, event.data)
    elif isinstance(event, Close):
        break
    elif isinstance(event, NeedData):
        wait = None if event.wake_at is None else max(0.0, event.wake_at - time.monotonic())
        if select.select([0], [], [], wait)[0]:
            conn.receive_data(os.read(0, 65536), time.monotonic())
'''


def fork_script(model: str, workdir: str) -> tuple[str, str]:
    """The per-connection script, and what it is."""
    from scriptgen.modelfile import load, port_doc

    (port,) = load(model).ports
    path = os.path.join(workdir, "service.py")
    try:
        from scriptgen.export import honeyd_script
    except ImportError:
        doc_path = os.path.join(workdir, "port.json")
        with open(doc_path, "w") as f:
            json.dump(port_doc(port), f)
        text = f"SRC = {str(ROOT / 'src')!r}\nMODEL = {doc_path!r}\n" + _FALLBACK_SCRIPT
        what = "minimal engine driver"
    else:
        text = honeyd_script(port_doc(port))
        what = "scriptgen export honeyd script"
    with open(path, "w") as f:
        f.write(text)
    return path, what


def fork_server(model: str, workdir: str, max_children: int) -> None:
    script, what = fork_script(model, workdir)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    print(f"FORK {what}", flush=True)
    announce(listener.getsockname()[1])
    children: set[subprocess.Popen[bytes]] = set()
    while True:
        while len(children) >= max_children:
            pid, _ = os.wait()  # reaped: its CPU time counts in this process's children's times
            children = {c for c in children if c.pid != pid}
        conn, (ip, port) = listener.accept()
        child = subprocess.Popen([sys.executable, script, ip, str(port), "127.0.0.1", "21"], stdin=conn,
                                 stdout=conn, stderr=subprocess.DEVNULL, close_fds=True)
        conn.close()
        children.add(child)
        for c in list(children):
            if c.poll() is not None:
                children.discard(c)


# -- the client ---------------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    """One session: read an answer (a line), send the next request; close after the last."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.step = 0
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.buffer.endswith(b"\n"):
            return
        self.buffer = b""
        assert self.transport is not None
        if self.step < len(REQUESTS):
            self.transport.write(REQUESTS[self.step])
            self.step += 1
            return
        self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed after {self.step} answers"))


@dataclass
class Result:
    server: str
    clients: int
    sessions: int = 0
    failed: int = 0
    unfinished: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.sessions / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_per_session(self) -> float:
        return self.cpu / self.sessions * 1e6 if self.sessions else float("nan")

    @property
    def client_cpu_per_session(self) -> float:
        return self.client_cpu / self.sessions * 1e6 if self.sessions else float("nan")


async def drive(port: int, clients: int, duration: float, result: Result) -> None:
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    counted_until = stop_at + 2.0  # sessions still running then are unfinished

    rng = random.Random(clients)

    async def worker(k: int) -> None:
        while loop.time() < stop_at:
            # A fresh source address of 127/8 per session: ports left in TIME_WAIT by earlier
            # sessions (and runs) never slow down connect(2)'s search for a free port.
            local = f"127.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            started = time.perf_counter()
            done: asyncio.Future[None] = loop.create_future()
            transport = None
            try:
                async with asyncio.timeout(max(0.1, counted_until - loop.time())):
                    transport, _ = await loop.create_connection(lambda done=done: _Client(done), "127.0.0.1", port,
                                                                local_addr=(local, 0))
                    await done
            except TimeoutError:
                result.unfinished += 1
                if transport is not None:
                    transport.abort()
                return
            except OSError:
                result.failed += 1
                if transport is not None:
                    transport.abort()
                await asyncio.sleep(0.01)
                continue
            result.latencies.append(time.perf_counter() - started)
            result.sessions += 1

    started = loop.time()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    result.elapsed = min(loop.time(), counted_until) - started


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid`, its reaped children and its live children (serve's log writer
    process runs for the whole bench: it is never reaped while measured)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # a child that ended meanwhile: its time is in its parent's cutime
        return 0.0
    total = sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            total += cpu_seconds(int(child))
    return total


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcess:
    def __init__(self, kind: str, model: Path, workdir: Path, args: argparse.Namespace,
                 wrap: tuple[str, ...] = ()) -> None:
        self.kind = kind
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, __file__, "--server", kind, "--model", str(model), "--workdir", str(workdir),
             "--fork-children", str(args.fork_children), "--max-connections", str(args.idle + 2000)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        self.note = ""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{kind} server did not start")
            if line.startswith("FORK "):
                self.note = line[5:].strip()
            if line.startswith("PORT "):
                self.port = int(line.split()[1])
                return

    def stop(self, wait: float = 15) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_client(main: Coroutine[Any, Any, None]) -> None:
    # The client drives every server on uvloop when installed (the loop `scriptgen serve`
    # picks): the lighter the load generator, the more of the 2 cores is left to the server.
    from scriptgen.serve.runtime import run

    run(main)


def load_phase(server: ServerProcess, clients: int, duration: float) -> Result:
    result = Result(server.kind, clients)
    before, client_before = cpu_seconds(server.proc.pid), time.process_time()
    run_client(drive(server.port, clients, duration, result))
    result.client_cpu = time.process_time() - client_before
    time.sleep(0.3)  # the fork server reaps its last children; the log writer catches up
    result.cpu = cpu_seconds(server.proc.pid) - before
    return result


def instructions(kind: str, model: Path, workdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """User-space instructions per session of the server process and of its children (the
    log writer), counted by callgrind: repeatable, whatever else the machine does. Two runs,
    of N and 2N sessions one after another from one client; the difference over N sessions
    leaves out start-up and shutdown."""
    counts = []
    for run, sessions in enumerate((args.instructions, 2 * args.instructions)):
        out = workdir / f"callgrind-{run}"
        out.mkdir(parents=True)
        wrap = ("valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}/cg.%p",
                f"--log-file={out}/valgrind.%p.log")
        server = ServerProcess(kind, model, workdir / f"run-{run}", args, wrap)
        try:
            run_client(drive_count(server.port, sessions, args.instructions_clients))
        finally:
            server.stop(wait=300)
        own = children = 0
        for path in out.glob("cg.*"):
            total = next(int(line.split()[1]) for line in path.read_text().splitlines()
                         if line.startswith(("summary:", "totals:")))
            if path.name == f"cg.{server.proc.pid}":
                own += total
            else:
                children += total
        counts.append((own, children))
    (own1, child1), (own2, child2) = counts
    return (own2 - own1) / args.instructions, (child2 - child1) / args.instructions


async def drive_count(port: int, sessions: int, clients: int = 1) -> None:
    """`sessions` sessions, `clients` at a time."""
    loop = asyncio.get_running_loop()

    async def worker(count: int) -> None:
        for _ in range(count):
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(lambda done=done: _Client(done), "127.0.0.1", port)
            await done

    await asyncio.gather(*(worker(sessions // clients + (k < sessions % clients)) for k in range(clients)))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def idle_phase(server: ServerProcess, count: int) -> float:
    """Bytes of server RSS per idle connection."""
    time.sleep(0.5)
    base_fds = open_fds(server.proc.pid)
    before = rss(server.proc.pid)
    socks = []
    try:
        for i in range(count):
            s = socket.socket()
            s.bind((f"127.0.1.{1 + i % 250}", 0))
            s.connect(("127.0.0.1", server.port))
            socks.append(s)
            if i % 500 == 499:
                time.sleep(0.02)  # let the server accept (backlog)
        deadline = time.monotonic() + 30
        while open_fds(server.proc.pid) < base_fds + count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # events of the connects written out, the loop quiet
        return (rss(server.proc.pid) - before) / count
    finally:
        for s in socks:
            s.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--levels", default="1,100,1000", help="concurrent clients per phase (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="phases per server and level, interleaved; medians are reported (default: %(default)s)")
    parser.add_argument("--servers", default="serve,bare-protocol,bare-streams,fork",
                        help="servers to measure (default: %(default)s)")
    parser.add_argument("--fork-levels", default="1,100",
                        help="levels run against the fork server (default: %(default)s; 1000 clients "
                        "queue behind --fork-children processes for the whole phase)")
    parser.add_argument("--fork-children", type=int, default=200,
                        help="processes the fork server runs at once (default: %(default)s)")
    parser.add_argument("--idle", type=int, default=10_000,
                        help="idle connections for the memory measurement, 0 to skip (default: %(default)s)")
    parser.add_argument("--instructions", type=int, default=0, metavar="N",
                        help="instead of timing, count the instructions per session of each asyncio server and "
                        "its children under valgrind's callgrind (runs of N and 2N sessions; 300 takes about "
                        "2 minutes a server): figures that repeat to the thousandth on a shared machine")
    parser.add_argument("--instructions-clients", type=int, default=1, metavar="C",
                        help="with --instructions: concurrent clients (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--max-connections", type=int, default=20_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        run_server(args.server, args.model, args.workdir, args.fork_children, args.max_connections)
        return 0

    if args.instructions:
        return count_instructions(args)
    hard = raise_nofile()
    if args.idle and hard < args.idle + 1000:
        print(f"RLIMIT_NOFILE hard limit {hard}: --idle lowered to {hard - 1000}")
        args.idle = max(0, hard - 1000)
    levels = [int(x) for x in args.levels.split(",")]
    fork_levels = {int(x) for x in args.fork_levels.split(",") if x.strip()}  # "": none
    servers = args.servers.split(",")
    from scriptgen.serve.runtime import loop_factory

    _, loop_name = loop_factory()
    print(f"bench_serve: {os.cpu_count()} cores, Python {sys.version.split()[0]}, event loop {loop_name}, "
          f"{args.duration:g}s per phase")
    results: dict[tuple[str, int], list[Result]] = {}
    idle: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = Path(tmp) / "ftp.json"
        write_model(model)
        print(f"{'server':<14} {'clients':>7} {'round':>5} {'sessions/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'failed':>6} {'unfinished':>10} {'cpu us/session':>14} {'client cpu':>10}")
        running: dict[str, ServerProcess] = {}
        try:
            for kind in servers:
                running[kind] = ServerProcess(kind, model, Path(tmp) / kind, args)
            # Phases interleaved: each round runs every server once at each level, in an order
            # that rotates, so that a slow spell of the machine falls on all of them alike.
            for clients in levels:
                kinds = [k for k in servers if k != "fork" or clients in fork_levels]
                for round_ in range(args.rounds):
                    shift = round_ % len(kinds)
                    for kind in kinds[shift:] + kinds[:shift]:
                        r = load_phase(running[kind], clients, args.duration)
                        results.setdefault((kind, clients), []).append(r)
                        print(f"{kind:<14} {clients:>7} {round_ + 1:>5} {r.rate:>10.0f} {r.pct(0.5):>8.2f} "
                              f"{r.pct(0.99):>8.2f} {r.failed:>6} {r.unfinished:>10} {r.cpu_per_session:>14.0f} "
                              f"{r.client_cpu_per_session:>10.0f}", flush=True)
                        time.sleep(0.5)
            if "fork" in running and running["fork"].note:
                print(f"  (fork: {running['fork'].note}, at most {args.fork_children} processes)")
            for kind, server in running.items():
                if args.idle and kind != "fork":
                    idle[kind] = idle_phase(server, args.idle)
        finally:
            for server in running.values():
                server.stop()
    ok = True
    print(f"\nmedians over {args.rounds} rounds (cpu: the server process and its children, the log writer's "
          "included)")
    print(f"{'server':<14} {'clients':>7} {'sessions/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/session':>14}")
    for (kind, clients), runs in results.items():
        print(f"{kind:<14} {clients:>7} {median([r.rate for r in runs]):>10.0f} "
              f"{median([r.pct(0.5) for r in runs]):>8.2f} {median([r.pct(0.99) for r in runs]):>8.2f} "
              f"{median([r.cpu_per_session for r in runs]):>14.0f}")
    print()
    for clients in levels:
        serve = results.get(("serve", clients))
        if serve is None:
            continue
        for base in ("bare-protocol", "bare-streams", "fork"):
            other = results.get((base, clients))
            if other is None or not all(r.rate for r in other):
                continue
            # Each round's ratio compares phases run next to each other; the median of those.
            ratios = [a.rate / b.rate for a, b in zip(serve, other)]
            ratio = median(ratios)
            cpu = median([a.cpu_per_session / b.cpu_per_session for a, b in zip(serve, other)])
            target = "  (target >= 0.8)" if base.startswith("bare") else ""
            spread = f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else ""
            print(f"{clients:>5} clients: serve / {base:<13} sessions/s {ratio:#7.3g}{spread}, "
                  f"server CPU per session {cpu:#6.3g}x{target}")
            if base == "bare-protocol" and ratio < 0.8:
                ok = False
    if idle:
        print()
        for kind, per in idle.items():
            target = "  (target <= 8 KiB)" if kind == "serve" else ""
            print(f"memory per idle connection ({args.idle} connections): {kind:<13} {per / 1024:5.2f} KiB{target}")
        if idle.get("serve", 0) > 8 * 1024:
            ok = False
    if args.check and not ok:
        print("FAIL: a target was missed")
        return 1
    return 0


def count_instructions(args: argparse.Namespace) -> int:
    servers = [k for k in args.servers.split(",") if k != "fork"]
    print(f"bench_serve --instructions: callgrind, {args.instructions_clients} client(s), {args.instructions} sessions "
          f"(runs of {args.instructions} and {2 * args.instructions}), Python {sys.version.split()[0]}")
    print(f"{'server':<14} {'server process':>14} {'its children':>12} {'total':>10}  instructions per session")
    totals = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = Path(tmp) / "ftp.json"
        write_model(model)
        for kind in servers:
            own, children = instructions(kind, model, Path(tmp) / kind, args)
            totals[kind] = own + children
            print(f"{kind:<14} {own / 1000:>13.0f}k {children / 1000:>11.0f}k {totals[kind] / 1000:>9.0f}k", flush=True)
    if "serve" in totals:
        for base in ("bare-protocol", "bare-streams"):
            if totals.get(base):
                print(f"serve / {base}: {totals['serve'] / totals[base]:.2f}x the instructions per session")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
