"""Learn-stage scaling benchmark: time and memory of `learn()` against capture size.

    .venv/bin/python bench/bench_learn.py                     # sizes 1000,2000,4000,8000
    .venv/bin/python bench/bench_learn.py --check             # exit 1 if time grows too fast
    .venv/bin/python bench/bench_learn.py --sizes 8000 --profile

What it does:
 1. Makes N synthetic sessions (seeded) of an FTP-like text protocol whose states see many
    distinct requests: a banner; `USER <name>` -> `331 Password required for <name>`;
    `PASS <random>` -> `230 ...` (sometimes `530`, then QUIT); 1-3 commands drawn from
    about ten verbs with random paths and numbers, a few binary (telnet IAC, TLS-like)
    requests among them; `QUIT` -> `221 Goodbye.`. User names come from a fixed pool
    smaller than `max_fanout`, so the raw tree's root is not cut; every other argument is
    drawn fresh, so once states merge, states below the root see thousands of distinct
    requests at the larger sizes (column `busiest`).
 2. For each size, learns in a fresh subprocess (so the peak RSS, ru_maxrss of the child,
    belongs to that size alone), timing `learn(sessions, LearnParams(jobs=1))` only (not
    the generation). --repeat runs several processes per size and keeps the fastest. The
    busiest state's distinct request count is recorded by wrapping the per-state
    clustering function of learn/simplify.py (one len() per state).
 3. Prints a table and fits k in time ~ sessions^k by least squares on log-log. Target:
    k <= 1.2 (learning is meant to be linear in the capture). Same fit for peak RSS,
    informational only.

Exit status: 0, unless --check is given and the time exponent fails its target.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import time

TARGET = 1.2
DEFAULT_SIZES = "1000,2000,4000,8000"

BANNER = b"220 ProFTPD 1.3.5 Server (Debian) [10.0.0.2]\r\n"
WORDS = ["pub", "incoming", "home", "data", "backup", "www", "logs", "tmp", "etc", "var",
         "images", "docs", "src", "release", "archive", "music", "video", "upload", "old", "new"]
EXTS = [".txt", ".tar.gz", ".zip", ".jpg", ".iso", ".log", ".conf", ".html", ""]
NAME_POOL = 500  # < LearnParams.max_fanout: the root keeps every USER request


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_") for _ in range(rng.randint(lo, hi)))


def _path(rng: random.Random) -> str:
    parts = [rng.choice(WORDS) for _ in range(rng.randint(0, 3))]
    parts.append(_word(rng, 3, 12) + rng.choice(EXTS))
    return ("/" if rng.random() < 0.6 else "") + "/".join(parts)


def _command(rng: random.Random) -> tuple[bytes, bytes]:
    """One (request, answer) after login."""
    roll = rng.random()
    if roll < 0.05:  # telnet interrupt + abort, with junk
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
        return b"\xff\xf4\xff\xf2" + junk + b"ABOR\r\n", b"226 Abort successful\r\n"
    if roll < 0.08:  # a TLS-ish record sent to the FTP port
        body = bytes(rng.randrange(256) for _ in range(rng.randint(20, 80)))
        return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body, b"500 Invalid command: try being more creative\r\n"
    verb = rng.choice(["CWD", "RETR", "STOR", "SIZE", "MKD", "DELE", "PORT", "REST", "TYPE", "LIST", "MDTM"])
    if verb == "CWD":
        p = _path(rng)
        return f"CWD {p}\r\n".encode(), b"250 CWD command successful\r\n"
    if verb == "RETR":
        p, n = _path(rng), rng.randint(0, 10**9)
        return f"RETR {p}\r\n".encode(), f"150 Opening BINARY mode data connection for {p} ({n} bytes)\r\n".encode()
    if verb == "STOR":
        p = _path(rng)
        return f"STOR {p}\r\n".encode(), f"150 Opening BINARY mode data connection for {p}\r\n".encode()
    if verb == "SIZE":
        p = _path(rng)
        return f"SIZE {p}\r\n".encode(), f"213 {rng.randint(0, 10**8)}\r\n".encode()
    if verb == "MKD":
        p = _path(rng)
        return f"MKD {p}\r\n".encode(), f'257 "{p}" - Directory successfully created\r\n'.encode()
    if verb == "DELE":
        p = _path(rng)
        return f"DELE {p}\r\n".encode(), b"250 DELE command successful\r\n"
    if verb == "PORT":
        h = ",".join(str(rng.randint(1, 254)) for _ in range(4))
        return f"PORT {h},{rng.randint(0, 255)},{rng.randint(0, 255)}\r\n".encode(), b"200 PORT command successful\r\n"
    if verb == "REST":
        n = rng.randint(0, 10**7)
        return f"REST {n}\r\n".encode(), f"350 Restarting at {n}. Send STORE or RETRIEVE to initiate transfer\r\n".encode()
    if verb == "TYPE":
        t = rng.choice("AIE")
        return f"TYPE {t}\r\n".encode(), f"200 Type set to {t}\r\n".encode()
    if verb == "LIST":
        arg = rng.choice(["", " -la", " " + _path(rng)])
        return f"LIST{arg}\r\n".encode(), b"150 Opening ASCII mode data connection for file list\r\n"
    p = _path(rng)
    return f"MDTM {p}\r\n".encode(), f"213 2023{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}120000\r\n".encode()


def make_sessions(count: int, seed: int) -> list:
    from scriptgen.model import Endpoint, Message, Sender, Session, Transport

    rng = random.Random(seed)
    names = [_word(rng, 3, 10) for _ in range(NAME_POOL)]
    sessions = []
    t = 1_600_000_000.0
    for index in range(count):
        t += rng.random()
        start = ts = t
        messages = [Message(Sender.SERVER, BANNER, ts)]
        name = rng.choice(names)
        turns = [(f"USER {name}\r\n".encode(), f"331 Password required for {name}\r\n".encode())]
        password = _word(rng, 6, 14)
        if rng.random() < 0.1:
            turns.append((f"PASS {password}\r\n".encode(), b"530 Login incorrect.\r\n"))
        else:
            turns.append((f"PASS {password}\r\n".encode(), f"230 User {name} logged in\r\n".encode()))
            turns.extend(_command(rng) for _ in range(rng.randint(1, 3)))
        turns.append((b"QUIT\r\n", b"221 Goodbye.\r\n"))
        for request, answer in turns:
            ts += 0.05 + rng.random() * 0.5
            messages.append(Message(Sender.CLIENT, request, ts))
            ts += 0.001 + rng.random() * 0.01
            messages.append(Message(Sender.SERVER, answer, ts))
        closed_by = Sender.SERVER if rng.random() < 0.7 else Sender.CLIENT
        client = Endpoint(f"10.0.{index // 250 % 250}.{index % 250 + 1}", 30000 + index % 30000)
        sessions.append(Session(index, Transport.TCP, client, Endpoint("10.0.0.2", 21), start, ts,
                                False, messages, "fin", closed_by))
    return sessions


# -- child: one size ----------------------------------------------------------------------


def _rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _count_busiest(module):  # type: ignore[no-untyped-def]
    """Wrap the per-state clustering function of learn/simplify.py to record the largest
    number of distinct requests one state hands it. The function's name and first argument
    have changed over time (cluster_edges(node) / cluster_requests(list)): both are handled;
    if neither exists the count stays None."""
    busiest: list[int | None] = [None]
    for name in ("cluster_requests", "cluster_edges"):
        original = getattr(module, name, None)
        if original is None:
            continue

        def counting(first, *rest, _original=original, **kw):  # type: ignore[no-untyped-def]
            n = len(first.edges) if hasattr(first, "edges") else len(first)
            busiest[0] = max(busiest[0] or 0, n)
            return _original(first, *rest, **kw)

        setattr(module, name, counting)
        break
    return busiest


def child(size: int, seed: int, profile: int) -> None:
    from scriptgen.learn import learn, simplify
    from scriptgen.params import LearnParams

    sessions = make_sessions(size, seed)
    busiest = _count_busiest(simplify)
    gen_rss = _rss_mb()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        model = learn(sessions, LearnParams(jobs=1), sources=[])
        profiler.disable()
        seconds = time.perf_counter() - start
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative")
        print(f"--- cProfile, {size} sessions, {seconds:.1f} s under the profiler; "
              f"top {profile} cumulative entries in scriptgen ---", file=sys.stderr)
        stats.print_stats(r"scriptgen", profile)
    else:
        start = time.perf_counter()
        model = learn(sessions, LearnParams(jobs=1), sources=[])
        seconds = time.perf_counter() - start
    port = model.ports[0].stats
    print(json.dumps({"sessions": size, "busiest": busiest[0], "seconds": seconds,
                      "rss": _rss_mb(), "gen_rss": gen_rss, **port}))


# -- parent -------------------------------------------------------------------------------


def fit(xs: list[float], ys: list[float]) -> float:
    """Slope of log(y) on log(x), least squares."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / den if den else float("nan")


def run_size(size: int, seed: int, profile: int, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", str(size), "--seed", str(seed)]
    if profile:
        cmd += ["--profile-top", str(profile)]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"size {size}: over {timeout:.0f} s, stopped", file=sys.stderr)
        return None
    if done.stderr:
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        print(f"size {size}: child failed with status {done.returncode}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Scaling of scriptgen's learn stage: time and peak RSS of learn() per number "
                    "of sessions, each size in a fresh process; fits time ~ sessions^k "
                    f"(target k <= {TARGET}).")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"comma-separated session counts (default {DEFAULT_SIZES})")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if the time exponent is above {TARGET}")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, learn the largest size once more under cProfile and print "
                             "the top cumulative entries in scriptgen code")
    parser.add_argument("--top", type=int, default=15, help="profile entries to print (default 15)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds allowed per size before it is abandoned (default 1800)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh processes per size; the fastest is kept (default 1)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-top", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        child(args.child, args.seed, args.profile_top)
        return 0

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    header = (f"{'sessions':>8} {'busiest':>8} {'learn s':>8} {'peak MB':>8} {'gen MB':>7} "
              f"{'states':>7} {'trans':>7} {'links':>6} {'cut':>5}")
    print(header)
    print("-" * len(header))
    rows = []
    for size in sizes:
        runs = [run_size(size, args.seed, 0, args.timeout) for _ in range(max(1, args.repeat))]
        done = [r for r in runs if r is not None]
        if not done:
            continue
        row = min(done, key=lambda r: r["seconds"])  # least disturbed on a shared machine
        rows.append(row)
        cut = row.get("cut_fanout", 0) + row.get("cut_states", 0)
        busiest = row["busiest"] if row["busiest"] is not None else "-"
        print(f"{row['sessions']:>8} {busiest:>8} {row['seconds']:>8.2f} {row['rss']:>8.1f} "
              f"{row['gen_rss']:>7.1f} {row.get('states', '-'):>7} {row.get('transitions', '-'):>7} "
              f"{row.get('links', '-'):>6} {cut:>5}")
    print("busiest: distinct requests leaving the busiest (merged) state; gen MB: peak RSS "
          "before learn() (sessions generated); cut: sessions cut by max_fanout/max_states")

    failed = False
    if len(rows) >= 2:
        xs = [r["sessions"] for r in rows]
        k_time = fit(xs, [r["seconds"] for r in rows])
        k_mem = fit(xs, [r["rss"] for r in rows])
        k_mem_learn = fit(xs, [max(r["rss"] - r["gen_rss"], 0.1) for r in rows])
        failed = not k_time <= TARGET
        print(f"time exponent   k = {k_time:.3f}  (target <= {TARGET})  {'FAIL' if failed else 'PASS'}")
        print(f"memory exponent k = {k_mem:.3f} peak RSS, {k_mem_learn:.3f} peak minus pre-learn RSS "
              "(informational)")
    else:
        print("fewer than two sizes measured: no exponent")
        failed = len(rows) < len(sizes)
    slow = [r["sessions"] for r in rows if r["seconds"] > 60]
    if slow:
        print(f"over 60 s: sizes {slow}")
    if len(rows) < len(sizes):
        failed = True

    if args.profile and sizes:
        run_size(sizes[-1], args.seed, args.top, args.timeout)
    elif failed or slow:
        print("hint: --profile learns the largest size under cProfile")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
