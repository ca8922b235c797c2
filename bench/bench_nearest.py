"""Unmatched-request benchmark: the emulator's cost for requests no transition matches.

    .venv/bin/python bench/bench_nearest.py               # ~1 minute
    .venv/bin/python bench/bench_nearest.py --sessions 4000 --requests 300
    .venv/bin/python bench/bench_nearest.py --capture ../shared/corpus/dev/smb/smb_dev_nmap.pcap --port 445

Attackers send what the capture never showed; each such request is compared with up to
`nearest_candidates` samples of its state and four times as many of the model
(docs/emulator.md, "When nothing matches"), and random bytes are compared with all of them
before they meet silence. What it does:
 1. Learns a model of N synthetic FTP-like sessions (bench_learn.py's, seeded).
 2. Answers R requests of each kind, one fresh connection each, right after the banner:
    random bytes (1000), an unknown command of text, and a learned command with an unseen
    argument. Times the emulator per request (CPU time, best of --repeat rounds).
 3. Reference, same process, same candidates: the search as difflib alone makes it
    (`real_quick_ratio`, `quick_ratio`, `ratio` on a SequenceMatcher given each sample),
    without the emulator's bonuses; its cost per request is printed next to ours, and
    the ratio reference / ours.
 4. With --capture and --port: the model of that port of a real capture instead, and its
    own learned requests with one to four bytes changed (SMB's are long, mostly zeros and
    one layout: the costliest to compare). The slowest request is printed too: the event
    loop waits for it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_learn import make_sessions  # noqa: E402

from scriptgen.emulate import Emulator, Machine, NeedData  # noqa: E402
from scriptgen.learn import learn  # noqa: E402
from scriptgen.modelfile import port_doc  # noqa: E402
from scriptgen.params import LearnParams  # noqa: E402


def requests(kind: str, count: int, rng: random.Random, machine: Machine | None = None) -> list[bytes]:
    if kind == "changed bytes":
        assert machine is not None
        samples = [r for t in machine.transitions.values() for r in t.requests if r]
        out = []
        for _ in range(count):
            data = bytearray(rng.choice(samples))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data))
        return out
    if kind == "random bytes":
        return [rng.randbytes(1000) for _ in range(count)]
    if kind == "unknown command":
        return [b"XQZV%d %s\r\n" % (i, rng.randbytes(6).hex().encode()) for i in range(count)]
    return [b"USER %s\r\n" % rng.randbytes(5).hex().encode() for _ in range(count)]


def ours(machine: Machine, batch: list[bytes], slowest: list[float] | None = None) -> float:
    """CPU seconds to answer each request on a fresh connection (banner sent first);
    `slowest` gets the most one request took."""
    start = time.process_time()
    most = 0.0
    for data in batch:
        began = time.process_time()
        conn = Emulator(machine, 0.0)
        conn.next_event(0.0)
        conn.receive_data(data, 0.0)
        now = 0.0
        for _ in range(8):
            event = conn.next_event(now)
            if isinstance(event, NeedData):
                if event.wake_at is None:
                    break
                now = event.wake_at
        most = max(most, time.process_time() - began)
    if slowest is not None:
        slowest.append(most)
    return time.process_time() - start


def reference(machine: Machine, batch: list[bytes]) -> float:
    """The same candidates searched with difflib alone, at `similarity_floor`."""
    root = machine.states[machine.root]
    floor, limit = machine.params.similarity_floor, machine.params.compare_bytes
    start = time.process_time()
    for data in batch:
        head = data[:limit]
        for candidates in (root.nearest, machine.nearest):
            matcher = difflib.SequenceMatcher(None, head, b"", autojunk=False)
            best = 0.0
            for t in candidates:
                matcher.set_seq2(t.sample[:limit])
                if matcher.real_quick_ratio() >= floor and matcher.quick_ratio() >= floor:
                    best = max(best, matcher.ratio())
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000, help="synthetic sessions learned (default 2000)")
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the fastest is kept (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--capture", metavar="PCAP", help="learn this capture's --port instead (real requests)")
    parser.add_argument("--port", type=int, help="with --capture: the server port to learn")
    args = parser.parse_args(argv)
    if args.capture:
        if args.port is None:
            parser.error("--capture needs --port")
        if not os.path.exists(args.capture):
            print(f"skipped: {args.capture} is not here")
            return 0
        from scriptgen.capture import read_sessions

        sessions = [s for s in read_sessions([args.capture]) if s.server_port == args.port]
        kinds: tuple[str, ...] = ("changed bytes", "random bytes")
    else:
        sessions = make_sessions(args.sessions, args.seed)
        kinds = ("random bytes", "unknown command", "unseen argument")
    (port,) = learn(sessions, LearnParams(jobs=1)).ports
    machine = Machine(port_doc(port))
    root = machine.states[machine.root]
    print(f"model: {len(machine.transitions)} transitions; candidates: {len(root.nearest)} of the root state, "
          f"{len(machine.nearest)} of the model")
    print(f"{'request':<18}{'ours ms':>10}{'difflib ms':>12}{'ratio':>8}{'ours slowest ms':>17}")
    rng = random.Random(args.seed)
    for kind in kinds:
        batch = requests(kind, args.requests, rng, machine)
        slowest: list[float] = []
        a = min(ours(machine, batch, slowest) for _ in range(args.repeat)) / len(batch) * 1e3
        b = min(reference(machine, batch) for _ in range(args.repeat)) / len(batch) * 1e3
        print(f"{kind:<18}{a:>10.3f}{b:>12.3f}{b / a:>8.1f}{min(slowest) * 1e3:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
