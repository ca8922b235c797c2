"""`scriptgen learn`: captures -> model file."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.cli.common import (
    captures, output_problem, port, port_ranges, positive, report_damage, unit_interval, warn, write_table,
)
from scriptgen.model import PortModel, closed_udp_ports, learnable

if TYPE_CHECKING:
    from scriptgen.learn.builder import RawTree
from scriptgen.params import CaptureParams, LearnParams

__all__ = ["add_parser"]

_DEFAULTS = LearnParams()


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "learn",
        help="learn a model (one state machine per server port) from captures",
        description=(
            "Reassemble the sessions of the captures, build the tree of requests and answers "
            "per server port, simplify it with PI alignment and Region Analysis (thresholds W "
            "and w), find dependency links (values the server echoes) and answer fields (lengths, "
            "counters, tokens the server chose per connection, the time), and write the model "
            "file. docs/algorithm.md describes the algorithm."
        ),
        epilog=(
            "examples:\n"
            "  scriptgen learn examples/ftp/vsftpd-anon.pcap -o ftp.model.json\n"
            "  scriptgen learn honeypot-*.pcap --port 139 --port 445 --macro 0.3 --micro 0.6 -o smb.json\n"
            "  scriptgen learn ftp.pcap recordings/ -o ftp.json   # a directory: every capture in it\n"
            "\n"
            "Small W keeps requests apart (detailed model); large W groups them and lets w decide:\n"
            "a region value at least w of a cluster's requests share stays its own transition.\n"
            "Try `scriptgen sweep` to choose them. `--no-rule clocks` (say) keeps the capture's\n"
            "bytes where the current time would go; `scriptgen show` lists the fields found.\n"
            "Exit codes: docs/cli.md."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("captures", nargs="+", metavar="CAPTURE",
                        help="pcap/pcapng files, read as one capture; a directory is every *.pcap and "
                        "*.pcapng in it, sorted by name")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write (JSON)")
    parser.add_argument("--port", "-p", type=port, action="append", dest="ports", metavar="P",
                        help="learn only this server port (repeat for several; default: every port)")
    parser.add_argument("--macro", "-W", type=unit_interval, default=_DEFAULTS.macro, metavar="W",
                        help="macroclustering threshold in [0,1]: alignment distance under which requests "
                        "share a cluster (default: %(default)s)")
    parser.add_argument("--micro", "-w", type=unit_interval, default=_DEFAULTS.micro, metavar="w",
                        help="microclustering threshold in [0,1]: share of a cluster from which a region "
                        "value gets its own transition (default: %(default)s)")
    parser.add_argument("--max-fanout", type=positive, default=_DEFAULTS.max_fanout, metavar="N",
                        help="distinct requests kept per state; sessions needing more are cut and "
                        "counted (default: %(default)s)")
    parser.add_argument("--max-states", type=positive, default=_DEFAULTS.max_states, metavar="N",
                        help="states of the raw tree per port (default: %(default)s)")
    parser.add_argument("--min-sessions", type=positive, default=1, metavar="N",
                        help="skip ports with fewer sessions carrying data (default: %(default)s)")
    parser.add_argument("--no-rule", action="append", default=[], choices=_DEFAULTS.rules, metavar="RULE",
                        help="do not look for this kind of answer field or framing (repeat for several): "
                        + ", ".join(_DEFAULTS.rules) + " (default: all are looked for)")
    parser.add_argument("--jobs", "-j", type=int, default=0, metavar="N",
                        help="worker processes (default: one per core)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: numpy/scipy/parasail take most of a second to load, and other
    # commands (and --help) should not wait for them.
    from scriptgen.learn import learn
    from scriptgen.learn.channels import find_channels
    from scriptgen.modelfile import save

    problem = output_problem(args.output)
    if problem is not None:  # before minutes of learning, not after
        warn(f"error: {problem}")
        return 2
    params = LearnParams(macro=args.macro, micro=args.micro, max_fanout=args.max_fanout,
                         max_states=args.max_states, jobs=max(0, args.jobs),
                         rules=tuple(r for r in _DEFAULTS.rules if r not in args.no_rule))
    files = captures(args.captures)
    stats = CaptureStats()
    started = time.monotonic()
    sessions = []
    # Every port is read: a data channel (learn/channels.py) uses a port of its own.
    for session in read_sessions(files, CaptureParams(), stats=stats):
        sessions.append(session)
        if len(sessions) % 10_000 == 0:
            warn(f"read {len(sessions)} sessions...")
    # A data channel goes with its parent: counted and kept (or not) with the parent's port.
    links = find_channels(sessions) if "channels" in params.rules else {}
    owners = [sessions[links[i].parent] if i in links else s for i, s in enumerate(sessions)]
    closed = closed_udp_ports(sessions)
    if closed:
        warn(f"skipped {len(closed)} closed UDP port(s) (never answered, refused by ICMP port unreachable): "
             f"{port_ranges(sorted(closed))}")
    learned = learnable(sessions)
    every: dict[tuple[str, int], int] = {}  # sessions with data per port, asked for or not
    for i, s in enumerate(sessions):
        if i not in links and learned(s):
            key = (s.transport.value, s.server_port)
            every[key] = every.get(key, 0) + 1
    counts = {k: n for k, n in every.items() if not args.ports or k[1] in args.ports}
    keep = {k for k, n in counts.items() if n >= args.min_sessions}
    if not keep:
        there = ", ".join(f"{t}/{p} ({n})" for (t, p), n in sorted(every.items(), key=lambda kv: -kv[1])[:12])
        asked = f" on port(s) {port_ranges(sorted(args.ports))}" if args.ports else ""
        least = f" with at least {args.min_sessions} sessions" if args.min_sessions > 1 else ""
        warn(f"error: no sessions with data{asked}{least} to learn from; "
             + (f"the captures have: {there}" if there else "the captures hold none"))
        return 3
    sessions = [s for s, owner in zip(sessions, owners) if (owner.transport.value, owner.server_port) in keep]
    warn(f"read {len(sessions)} sessions on {len(keep)} port(s) in {time.monotonic() - started:.1f}s; learning...")

    tty = sys.stderr.isatty()

    def progress(port_model: PortModel) -> None:
        st = port_model.stats
        if tty:
            print("\r" + " " * 79 + "\r", end="", file=sys.stderr)
        warn(f"learned {port_model.transport}/{port_model.port}: {st['raw_states']} raw -> {st['states']} states")

    def level_progress(tree: RawTree, done: int) -> None:
        if tty:  # a bar of simplified states against the raw tree's (merging ends it early)
            width = 30
            filled = min(width, width * done // max(1, tree.states))
            print(f"\rlearning {tree.transport}/{tree.port} [{'#' * filled}{'.' * (width - filled)}] "
                  f"{done} states", end="", file=sys.stderr, flush=True)

    model = learn(sessions, params, sources=files, progress=progress, level_progress=level_progress)
    save(model, args.output)
    out = sys.stdout
    rows = [["port", "sessions", "raw states", "states", "transitions", "links", "cut"]]
    for p in model.ports:
        st = p.stats
        cut = st["cut_fanout"] + st["cut_states"]
        rows.append([f"{p.transport}/{p.port}", str(st["sessions"]), str(st["raw_states"]), str(st["states"]),
                     str(st["transitions"]), str(st["links"]), str(cut)])
    write_table(rows, out)
    out.write(f"wrote {args.output} (W={params.macro}, w={params.micro}) in {time.monotonic() - started:.1f}s\n")
    for p in model.ports:
        st = p.stats
        if st["cut_fanout"] or st["cut_states"]:
            warn(f"warning: {p.transport}/{p.port}: {st['cut_fanout']} sessions cut at --max-fanout "
                 f"{params.max_fanout} and {st['cut_states']} at --max-states {params.max_states}: "
                 "what they said after the cut is not in the model (raise the limit to keep it)")
    return report_damage(stats.damage)
