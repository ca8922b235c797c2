"""Log amplification: how much the event log grows for the bytes one flooding client makes
`scriptgen serve` read.

    .venv/bin/python bench/bench_log_flood.py                  # 100 MB of random bytes, ~1 minute
    .venv/bin/python bench/bench_log_flood.py --mb 20 --log-session-bytes 4194304

What it does: learns bench_serve.py's FTP-like model, starts `scriptgen serve` on it (log
written by its own process to JSON lines and SQLite, as in production) in a fresh log
directory, sends --mb MB of random bytes on one connection (reading whatever comes back)
until the server closes it or the bytes run out, stops the server (SIGTERM: the log is
written out), and prints the bytes the server read (`bytes_in` of the session's closed
event), the log directory's growth (events.jsonl, and events.sqlite with its -wal), their
ratios, and the session's `events_cut`/`bytes_cut` when the server has them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import write_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flood(port: int, data: bytes) -> int:
    """Send `data` until it is all sent or the server closes; the bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        def drain() -> None:
            try:
                while sock.recv(1 << 16):
                    pass
            except OSError:
                pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        view = memoryview(data)
        try:
            for i in range(0, len(data), 1 << 20):
                sock.sendall(view[i : i + (1 << 20)])
                sent = i + len(view[i : i + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed by the server (max-requests)
        reader.join(60)
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="megabytes of random bytes sent (default: %(default)s)")
    parser.add_argument("--log-session-bytes", type=int, default=None,
                        help="passed to scriptgen serve when given (a build without it takes none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, logs = Path(tmp) / "ftp.json", Path(tmp) / "logs"
        write_model(model)
        port = free_port()
        argv = [sys.executable, "-m", "scriptgen", "serve", str(model), "--port-map", f"21:{port}",
                "--log-dir", str(logs)]
        if args.log_session_bytes is not None:
            argv += ["--log-session-bytes", str(args.log_session_bytes)]
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert server.stdout is not None
        for line in server.stdout:
            if "listening" in line:
                break
        else:
            raise RuntimeError("the server did not start")
        size_before = sum(p.stat().st_size for p in logs.iterdir())
        sent = flood(port, random.Random(100).randbytes(args.mb << 20))
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=300)
        grown = {p.name: p.stat().st_size for p in logs.iterdir()}
        events = [json.loads(line) for line in (logs / "events.jsonl").read_text().splitlines()]
    (closed,) = [e for e in events if e["eventid"] == "scriptgen.session.closed"]
    read = closed["bytes_in"]
    jsonl = grown.get("events.jsonl", 0)
    total = sum(grown.values()) - size_before
    print(f"sent {sent / 1e6:.1f} MB; the server read {read / 1e6:.2f} MB ({closed['reason']}, "
          f"{closed['inputs']} inputs, {closed['unmatched']} unmatched)")
    print(f"log growth: events.jsonl {jsonl / 1e6:.2f} MB ({jsonl / read:.1f}x), the directory "
          f"{total / 1e6:.2f} MB ({total / read:.1f}x): {grown}")
    if "events_cut" in closed:
        print(f"cut: {closed['events_cut']} events, {closed['bytes_cut'] / 1e6:.2f} MB of data not logged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
