"""`scriptgen sessions-log`: the recent sessions of a honeypot's log database."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scriptgen.cli.common import positive
from scriptgen.serve import SessionRecord, recent_sessions

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sessions-log",
        help="list the recent sessions a `scriptgen serve` logged",
        description=(
            "Read the SQLite log of `scriptgen serve` (LOG_DIR/events.sqlite, or LOG_DIR) and "
            "print its most recent sessions, newest first: start, duration, peer, port, "
            "requests, unmatched requests, why it closed, and its path through the states. "
            "Safe while the server runs."
        ),
        epilog=(
            "examples:\n"
            "  scriptgen sessions-log scriptgen-logs\n"
            "  scriptgen sessions-log /var/log/scriptgen/events.sqlite --limit 100 --json | jq .path\n"
            "\n"
            "Per-event detail: sqlite3 events.sqlite \"select json from events where session = 'ID'\"\n"
            "(docs/events.md). Exit codes: 0 ok; 3 the database is missing or not a scriptgen log."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("db", metavar="DB", help="events.sqlite, or the log directory holding it")
    parser.add_argument("--limit", "-n", type=positive, default=20, metavar="N",
                        help="sessions to list (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per session per line: session, transport, src_ip, src_port, "
                        "dst_ip, dst_port, model, model_port, sensor, start, end, duration, inputs, "
                        "unmatched, bytes_in, bytes_out, reason, path (end and what follows are null while open), parent "
                        "(the session whose data channel this is), backend (the backend it was handed over to)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    records = recent_sessions(args.db, args.limit)
    out = sys.stdout
    if args.json:
        for r in records:
            out.write(json.dumps(r.as_json(), separators=(",", ":")) + "\n")
        return 0
    table = [["start", "duration", "peer", "port", "inputs", "unmatched", "closed", "path"]]
    table += [_row(r) for r in records]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [c.rjust(w) if i in (1, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
    if not records:
        out.write("(no sessions logged yet)\n")
    return 0


def _row(r: SessionRecord) -> list[str]:
    peer = f"[{r.src_ip}]:{r.src_port}" if ":" in r.src_ip else f"{r.src_ip}:{r.src_port}"
    open_ = r.end is None
    return [
        r.start.replace("T", " ").rstrip("Z")[:23],
        "open" if open_ or r.duration is None else f"{r.duration:.2f}s",
        peer,
        f"{r.transport}/{r.dst_port}",
        "-" if r.inputs is None else str(r.inputs),
        "-" if r.unmatched is None else str(r.unmatched),
        "-" if r.reason is None else r.reason,
        (f"data channel of {r.parent}: " if r.parent else "") + _path(r.path)
        + (f" -> backend {r.backend}" if r.backend else ""),
    ]


def _path(path: list[int] | None, head: int = 12, tail: int = 3) -> str:
    if not path:
        return "-"
    if len(path) > head + tail + 1:
        return ">".join(map(str, path[:head])) + f">...({len(path) - head - tail} more)>" + ">".join(map(str, path[-tail:]))
    return ">".join(map(str, path))
