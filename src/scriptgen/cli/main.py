"""`scriptgen` command line. Each subcommand parses flags, calls the library, renders.

Exit codes (docs/cli.md):
    0  success
    1  internal error (a bug: please report it)
    2  usage error (bad flags)
    3  an input cannot be read at all (missing file, not a capture)
    4  an input is damaged (truncated): the results read before the damage were printed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scriptgen import __version__
from scriptgen.cli import evaluate_cmd, export_cmd, learn_cmd, log_cmd, serve_cmd, sessions_cmd, show_cmd, sweep_cmd
from scriptgen.errors import ScriptgenError

__all__ = ["main", "EXIT_OK", "EXIT_USAGE", "EXIT_INPUT", "EXIT_DAMAGED"]

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_DAMAGED = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scriptgen",
        description=(
            "Learn, from packet captures of a real server, an emulator of its network "
            "protocol, and run it as a honeypot (ScriptGen, ACSAC 2005)."
        ),
        epilog="Exit codes: 0 ok, 1 internal error, 2 usage, 3 unreadable input, "
        "4 damaged input (partial results printed). See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"scriptgen {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sessions_cmd.add_parser(commands)
    learn_cmd.add_parser(commands)
    evaluate_cmd.add_parser(commands)
    show_cmd.add_parser(commands)
    serve_cmd.add_parser(commands)
    log_cmd.add_parser(commands)
    export_cmd.add_parser(commands)
    sweep_cmd.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
        return code
    except ScriptgenError as exc:
        print(f"scriptgen: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        # `scriptgen sessions --json | head`: the reader left; that is not an error.
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
