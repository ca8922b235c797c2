"""`scriptgen export honeyd`: a model port as a standalone honeyd service script."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any

from scriptgen.cli.common import output_problem, port, warn

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="export a model as a honeyd service script",
        description=(
            "Write a standalone Python 3 script (standard library only) that honeyd runs once per "
            "connection, with stdin/stdout as the connection: the emulator core of `scriptgen serve` "
            "embedded verbatim, and the model embedded as data. Prints the honeyd.conf line."
        ),
        epilog=(
            "examples:\n"
            "  scriptgen export honeyd smb.json --port 139 -o /usr/share/honeyd/scripts/smb139.py\n"
            "  scriptgen export honeyd smb.json --all-ports -o /usr/share/honeyd/scripts/smb/\n"
            "\n"
            "honeyd starts the script without a shell as: python3 SCRIPT $ipsrc $sport $ipdst $dport\n"
            "Its log (one line per event) goes to stderr, which honeyd keeps as the service log."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=["honeyd"], help="what to export (honeyd service script)")
    parser.add_argument("model", metavar="MODEL", help="model file written by `scriptgen learn`")
    parser.add_argument("--port", "-p", type=port, metavar="P", help="the model port to export")
    parser.add_argument("--all-ports", action="store_true",
                        help="one script per model port into the directory -o, plus honeyd.conf.fragment there")
    parser.add_argument("-o", "--output", required=True, metavar="PATH", help="script file (or directory with --all-ports)")
    parser.add_argument("--template", default="default", metavar="NAME",
                        help="honeyd template named in the printed configuration line (default: %(default)s)")
    parser.add_argument("--idle-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="the script exits after this long without input (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from scriptgen.export import honeyd_conf_line, honeyd_script
    from scriptgen.modelfile import load, port_doc

    problem = output_problem(args.output, directory=args.all_ports)
    if problem is not None:
        warn(f"error: {problem}")
        return 2
    model = load(args.model)
    if args.all_ports:
        chosen = model.ports
    else:
        if args.port is None:
            listed = ", ".join(f"{p.transport}/{p.port}" for p in model.ports)
            warn(f"error: say which port to export with --port (this model has: {listed or 'none'}), or --all-ports")
            return 2
        chosen = [p for p in model.ports if p.port == args.port]
        if not chosen:
            warn(f"error: {args.model} has no port {args.port}")
            return 2
    if args.all_ports:
        os.makedirs(args.output, exist_ok=True)
    lines = []
    for p in chosen:
        path = (os.path.join(args.output, f"scriptgen_{p.transport}_{p.port}.py") if args.all_ports
                else args.output)
        with open(path, "w") as f:
            f.write(honeyd_script(port_doc(p), idle_timeout=args.idle_timeout))
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        lines.append(honeyd_conf_line(args.template, p.transport, p.port, os.path.abspath(path)))
        print(f"wrote {path}", file=sys.stderr)
    if args.all_ports:
        with open(os.path.join(args.output, "honeyd.conf.fragment"), "w") as f:
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
