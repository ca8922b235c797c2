"""Run the `scriptgen` command with the serve and sessions-log subcommands, whether or not
cli/main.py registers them yet: main()'s flag parsing and exit codes, plus these two."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["CLI", "main"]

_SCRIPT = """
import sys
from tests.serve.cli import main
raise SystemExit(main(sys.argv[1:]))
"""

CLI = [sys.executable, "-c", _SCRIPT]
"""argv prefix running the command in a subprocess (cwd: the repository root)."""


def main(argv: Sequence[str]) -> int:
    from scriptgen.cli import log_cmd, serve_cmd
    from scriptgen.cli import main as cli

    build = cli.build_parser

    def build_with_serve() -> argparse.ArgumentParser:
        parser = build()
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if "serve" not in commands.choices:
            serve_cmd.add_parser(commands)
        if "sessions-log" not in commands.choices:
            log_cmd.add_parser(commands)
        return parser

    cli.build_parser = build_with_serve
    try:
        return cli.main(list(argv))
    finally:
        cli.build_parser = build
