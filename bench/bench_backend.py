"""A handed-over session's relay (`scriptgen serve --backend`) against a bare asyncio TCP
relay to the same backend, in the same run (issue 32: >= 0.8x).

Three processes besides this one: a backend (an asyncio server answering each line with
`OK <line>`), and in turn each relay under test listening on 127.0.0.1:
  direct       no relay: the client talks to the backend (the floor of latency)
  bare-relay   an asyncio Protocol pair, nothing else
  serve        scriptgen serve MODEL --backend P=backend --handover always (every session
               handed over at connect: the relay is what is measured), logging as usual
  serve-nolog  the same with --no-json --no-sqlite
For each: round trips per second and median round-trip time of one connection in
ping-pong, and total round trips per second of --conns connections at once; then the
ratios to bare-relay.

    .venv/bin/python bench/bench_backend.py [--messages 5000] [--conns 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

_BACKEND = """
import asyncio, sys
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        *lines, self.buf = self.buf.split(b"\\n")
        self.t.write(b"".join(b"OK " + l + b"\\n" for l in lines))
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""

_RELAY = """
import asyncio, sys
class Half(asyncio.Protocol):
    def __init__(self, peer=None): self.peer = peer; self.t = None; self.early = b""
    def connection_made(self, t): self.t = t
    def data_received(self, d):
        if self.peer.t is None: self.early += d
        else: self.peer.t.write(d)
    def connection_lost(self, e):
        if self.peer and self.peer.t: self.peer.t.close()
class Front(Half):
    def connection_made(self, t):
        self.t = t
        self.peer = Half(self)
        asyncio.ensure_future(asyncio.get_running_loop().create_connection(lambda: self.peer, "127.0.0.1", int(sys.argv[2]))).add_done_callback(self.up)
    def up(self, f):
        if self.early: self.peer.t.write(self.early); self.early = b""
async def main():
    s = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{argv[:3]} did not start")
        if ready in line:
            return proc


async def ping_pong(port: int, messages: int) -> tuple[float, float]:
    """(round trips/s, median round trip in ms) of one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    started = time.perf_counter()
    for i in range(messages):
        t = time.perf_counter()
        writer.write(b"%d\n" % i)
        await reader.readline()
        times.append(time.perf_counter() - t)
    rate = messages / (time.perf_counter() - started)
    writer.close()
    return rate, statistics.median(times) * 1000


async def many(port: int, conns: int, messages: int) -> float:
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(messages):
            writer.write(b"%d\n" % i)
            await reader.readline()
        writer.close()
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return conns * messages / (time.perf_counter() - started)


def model_file(directory: str) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from scriptgen.learn import learn
    from scriptgen.model import Sender
    from scriptgen.modelfile import save
    from scriptgen.params import LearnParams
    sys.path.insert(0, str(ROOT))
    from tests.learn.sessions import session
    sessions = [session((b"%d\n" % i, b"OK %d\n" % i), port=7000, closed_by=Sender.CLIENT) for i in range(4)]
    path = os.path.join(directory, "m.json")
    save(learn(sessions, LearnParams(jobs=1)), path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000, help="round trips per connection (default 5000)")
    ap.add_argument("--conns", type=int, default=16, help="connections at once for the throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each relay; the median is shown")
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (a busy 2-core machine moves these by 30 %)")
    with tempfile.TemporaryDirectory() as tmp:
        model = model_file(tmp)
        bport = free_port()
        backend = start([PY, "-c", _BACKEND, str(bport)], "ready")
        results: dict[str, list[tuple[float, float, float]]] = {}
        try:
            for name in ("direct", "bare-relay", "serve", "serve-nolog"):
                for _ in range(args.rounds):
                    port, proc = bport, None
                    if name == "bare-relay":
                        port = free_port()
                        proc = start([PY, "-c", _RELAY, str(port), str(bport)], "ready")
                    elif name.startswith("serve"):
                        port = free_port()
                        argv = [PY, "-m", "scriptgen", "serve", model, "--port-map", f"7000:{port}",
                                "--backend", f"7000=127.0.0.1:{bport}", "--handover", "always",
                                "--log-dir", os.path.join(tmp, "logs")]
                        if name == "serve-nolog":
                            argv += ["--no-json", "--no-sqlite"]
                        proc = start(argv, "listening on")
                    try:
                        rate, rtt = asyncio.run(ping_pong(port, args.messages))
                        total = asyncio.run(many(port, args.conns, args.messages // 4))
                    finally:
                        if proc is not None:
                            proc.terminate()
                            proc.wait(30)
                    results.setdefault(name, []).append((rate, rtt, total))
        finally:
            backend.terminate()
            backend.wait(10)
    median = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in results.items()}
    bare = median["bare-relay"]
    print(f"{'relay':12} {'1 conn rt/s':>12} {'median rtt ms':>14} {args.conns:>3} conns rt/s   vs bare-relay")
    for name, (rate, rtt, total) in median.items():
        print(f"{name:12} {rate:12.0f} {rtt:14.3f} {total:16.0f}   {rate / bare[0]:.2f}x / {total / bare[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
