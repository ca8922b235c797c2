"""PI alignment benchmark: `distance_matrix` against parasail's raw kernels, same run.

    .venv/bin/python bench/bench_align.py            # ~2.5 minutes on 2 cores
    .venv/bin/python bench/bench_align.py --check    # exit 1 if the ratio is below target

What it does:
 1. Makes N protocol-like messages (default 500 of ~200 bytes, seeded): one of a few
    command prefixes (text and binary), random parameter bytes, a fixed trailer.
 2. Times `scriptgen.learn.align.distance_matrix` on them: all N*(N-1)/2 pairs, each a
    global alignment with traceback whose CIGAR gives matches and length.
 3. Times parasail's raw functions on the same pairs in a tight loop with a prebuilt
    256-symbol matrix and the same scoring: the stats kernels (which only report
    matches/length, read here) and the traceback kernels align.py calls ("nw_trace":
    diag below 256 bytes, scan above; the bare call, no CIGAR). align.py uses traceback
    rather than stats because parasail's stats leave leading gaps out of `length`.
 4. Prints time and alignment rate (cells/s, cells = sum of len(a)*len(b) over the pairs)
    for each, and the ratios ours/raw. Target: >= 0.8 x the raw kernel align.py uses.

Times are CPU seconds of this process (time.process_time): on a shared 2-core machine
wall time mostly measures the neighbours. Each measurement is repeated (--repeat), the
rounds interleaved, and the best time kept: the fastest run is the least disturbed one.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import parasail  # type: ignore[import-untyped]

from scriptgen.learn.align import DEFAULT, distance_matrix

TARGET = 0.8
PREFIXES = [
    b"GET /",
    b"POST /cgi-bin/",
    b"USER ",
    b"\x00\x00\x00\x85\xffSMBr\x00\x00\x00\x00\x18\x53\xc8",
    b"\x05\x00\x0b\x03\x10\x00\x00\x00",
]
TRAILERS = [b" HTTP/1.1\r\nHost: example\r\n\r\n", b"\r\n", b"\x00\x00", b""]
TRACE = "nw_trace"  # the traceback kernels, chosen per pair as align.py chooses them
RAW = ["nw_stats_striped_16", "nw_stats_scan_16", "nw_stats_diag_16", TRACE]
SCAN_FROM = 256  # align.py's _SCAN_FROM: scan kernel when the shorter message is this long


def make_messages(count: int, length: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    messages: list[bytes] = []
    for _ in range(count):
        prefix, trailer = rng.choice(PREFIXES), rng.choice(TRAILERS)
        size = max(1, length + rng.randint(-length // 5, length // 5) - len(prefix) - len(trailer))
        if prefix[0] == 0:
            param = bytes(rng.randrange(256) for _ in range(size))
        else:
            param = bytes(rng.randrange(0x21, 0x7F) for _ in range(size))
        messages.append(prefix + param + trailer)
    return messages


def byte_matrix() -> Any:
    """The same 256-symbol matrix align.py builds (NUL takes parasail's spare slot)."""
    matrix = parasail.matrix_create(bytes(range(1, 256)), DEFAULT.match, DEFAULT.mismatch, True)
    for other in range(255):
        matrix.set_value(255, other, DEFAULT.mismatch)
        matrix.set_value(other, 255, DEFAULT.mismatch)
    matrix.set_value(255, 255, DEFAULT.match)
    return matrix


def raw_loop(name: str, messages: list[bytes], matrix: Any) -> Callable[[], None]:
    op, ext = DEFAULT.gap_open, DEFAULT.gap_extend
    if name == TRACE:
        diag, scan = parasail.nw_trace_diag_16, parasail.nw_trace_scan_16

        def trace() -> None:
            for i, a in enumerate(messages):
                for b in messages[i + 1 :]:
                    kernel = scan if min(len(a), len(b)) >= SCAN_FROM else diag
                    kernel(a, b, op, ext, matrix)

        return trace
    kernel = getattr(parasail, name)

    def stats() -> None:
        for i, a in enumerate(messages):
            for b in messages[i + 1 :]:
                result = kernel(a, b, op, ext, matrix)
                result.matches, result.length  # noqa: B018  (what a distance needs)

    return stats


def best_times(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best CPU time of each run, the runs interleaved round by round so that a change in
    the machine's load hits all of them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="messages (default 500)")
    parser.add_argument("--length", type=int, default=200, help="mean length (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (default 2), best kept")
    parser.add_argument(
        "--raw", nargs="*", default=RAW, metavar="NAME", help=f"parasail kernels (default {RAW})"
    )
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {TARGET} x")
    args = parser.parse_args(argv)

    messages = make_messages(args.messages, args.length, args.seed)
    if len(set(messages)) != len(messages):
        sys.exit("duplicate messages would flatter distance_matrix (it aligns them once)")
    pairs = len(messages) * (len(messages) - 1) // 2
    lengths = [len(m) for m in messages]
    cells = (sum(lengths) ** 2 - sum(n * n for n in lengths)) // 2
    print(
        f"{len(messages)} messages, {min(lengths)}-{max(lengths)} bytes "
        f"(mean {sum(lengths) / len(messages):.0f}), {pairs} pairs, {cells / 1e9:.2f} G cells; "
        f"parasail {parasail.__version__}, avx2={parasail.can_use_avx2()}"
    )

    matrix = byte_matrix()
    runs: dict[str, Callable[[], object]] = {"ours": lambda: distance_matrix(messages)}
    runs.update((name, raw_loop(name, messages, matrix)) for name in args.raw)
    times = best_times(runs, args.repeat)
    ours = times.pop("ours")
    raw = times

    print(f"{'':28s} {'CPU s':>8s} {'Mcells/s':>9s} {'ours/raw':>9s}")
    print(f"{'distance_matrix (ours)':28s} {ours:8.2f} {cells / ours / 1e6:9.1f}")
    for name, seconds in raw.items():
        print(
            f"{'parasail.' + name:28s} {seconds:8.2f} {cells / seconds / 1e6:9.1f} "
            f"{seconds / ours:8.2f}x"
        )
    stats = {name: t for name, t in raw.items() if name != TRACE}
    if stats:
        fastest = min(stats, key=stats.__getitem__)
        print(f"ours / fastest raw stats kernel ({fastest}) = {stats[fastest] / ours:.2f}x")
    if TRACE in raw:
        ratio = raw[TRACE] / ours
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(
            f"{verdict}: ours / raw traceback kernels (what align.py calls) = {ratio:.2f}x "
            f"(target >= {TARGET}x)"
        )
        if args.check and ratio < TARGET:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
