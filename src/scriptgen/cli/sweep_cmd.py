"""`scriptgen sweep`: model size and emulation quality over a grid of thresholds W x w."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from scriptgen.cli.common import captures, holdout, port, report_damage, warn

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sweep",
        help="learn and evaluate over a grid of thresholds (paper Fig. 5 and 6)",
        description=(
            "For every (W, w) cell of the grid: learn on all sessions but every K-th, count the "
            "model's states and transitions, replay the held-out sessions in process, and score "
            "the answers. Writes DIR/results.jsonl (one line per cell; a rerun skips finished "
            "cells of the same inputs) and heatmaps DIR/states.png, DIR/similarity.png, "
            "DIR/carried.png. Use it to choose --macro and --micro for `scriptgen learn`."
        ),
        epilog=(
            "examples:\n"
            "  scriptgen sweep examples/ftp/vsftpd-anon.pcap -o sweep-ftp\n"
            "  scriptgen sweep smb.pcap --port 445 --macro 0:1:0.2 --micro 0:1:0.2 --holdout 4 -j 2 -o sweep-smb\n"
            "\n"
            "Read the maps together: the fewest states for which similarity and carried share stay high."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("captures", nargs="+", metavar="CAPTURE",
                        help="pcap/pcapng files, read as one capture (a directory: every *.pcap and *.pcapng in it)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for results and plots")
    parser.add_argument("--macro", "-W", default="0:1:0.1", metavar="START:STOP:STEP",
                        help="values of W (default: %(default)s, 11 values)")
    parser.add_argument("--micro", "-w", default="0:1:0.1", metavar="START:STOP:STEP",
                        help="values of w (default: %(default)s)")
    parser.add_argument("--holdout", "-k", type=holdout, default=5, metavar="K",
                        help="hold out every K-th session for evaluation (default: %(default)s)")
    parser.add_argument("--port", "-p", type=port, action="append", dest="ports", metavar="P",
                        help="only this server port (repeatable)")
    parser.add_argument("--jobs", "-j", type=int, default=0, metavar="N", help="parallel cells (default: cores)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG heatmaps")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scriptgen.capture import CaptureStats, read_sessions
    from scriptgen.evaluate.sweep import grid, plot, sweep
    from scriptgen.learn.channels import with_channels

    macros, micros = grid(args.macro), grid(args.micro)
    stats = CaptureStats()
    # Every port is read: data channels use ports of their own.
    sessions = [s for s in with_channels(list(read_sessions(captures(args.captures), stats=stats)), args.ports or ())
                if s.messages]
    if not sessions:
        warn("error: no sessions with data in the captures" + (" on the given ports" if args.ports else ""))
        return 3
    os.makedirs(args.output, exist_ok=True)
    results = os.path.join(args.output, "results.jsonl")
    total = len(macros) * len(micros)
    warn(f"{len(sessions)} sessions, {total} cells (W {macros[0]}..{macros[-1]} x w {micros[0]}..{micros[-1]}), "
         f"holding out every {args.holdout}th; results in {results}")
    started = time.monotonic()

    def progress(cell: Any, done: int, all_cells: int) -> None:
        elapsed = time.monotonic() - started
        width = 30
        filled = int(width * done / all_cells)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{all_cells} W={cell.macro:g} w={cell.micro:g}: "
                f"{cell.states} states, similarity {cell.similarity:.3f}, carried {cell.carried:.0%} "
                f"({elapsed:.0f}s)")
        end = "\r" if sys.stderr.isatty() and done < all_cells else "\n"
        print(line.ljust(110), end=end, file=sys.stderr, flush=True)

    cells = list(sweep(sessions, macros, micros, args.holdout, results, jobs=max(0, args.jobs), progress=progress))
    out = sys.stdout
    out.write(f"{'W':>5} {'w':>5} {'states':>7} {'trans':>6} {'similarity':>10} {'exact':>6} {'carried':>7}\n")
    for c in sorted(cells, key=lambda c: (c.macro, c.micro)):
        out.write(f"{c.macro:5.2f} {c.micro:5.2f} {c.states:7d} {c.transitions:6d} {c.similarity:10.3f} "
                  f"{c.exact:6.1%} {c.carried:7.1%}\n")
    if not args.no_plots:
        title = ", ".join(os.path.basename(c) for c in args.captures)[:80]
        for path in plot(cells, args.output, title):
            warn(f"wrote {path}")
    return report_damage(stats.damage)
