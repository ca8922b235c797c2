"""Small pieces shared by the subcommands."""

from __future__ import annotations

import os

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from scriptgen.capture import capture_files
from scriptgen.errors import CaptureTruncatedError

__all__ = ["port", "unit_interval", "seconds", "positive", "holdout", "warn", "port_ranges", "write_table", "report_damage",
           "captures"]


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {value}")
    return value


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {value}")
    return value


def seconds(upper: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of seconds, more than 0 (and at most `upper`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if upper is not None and not 0 < value <= upper:
            raise argparse.ArgumentTypeError(f"must be between 0 and {upper:g} seconds: {value}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0: {value}")
        return value

    return parse


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def output_problem(path: str, directory: bool = False) -> str | None:
    """Why `path` (a file to write, or with `directory` a folder to fill, made if missing)
    cannot be written, checked before the work: None when it can."""
    target = path if directory and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(target):
        return f"{path}: the folder {target} does not exist (make it first)"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{path}: the folder {target} is not writable"
    if not directory and os.path.isdir(path):
        return f"{path} is a folder: name the file to write"
    return None


def warn(message: str) -> None:
    print(f"scriptgen: {message}", file=sys.stderr, flush=True)


def holdout(text: str) -> int:
    value = positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (one session in K is held out): {value}")
    return value


def port_ranges(ports: list[int], most: int = 8) -> str:
    """Sorted ports as ranges (`1-1023, 2049`), the first `most` of them."""
    spans: list[list[int]] = []
    for p in ports:
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans[:most])
    return text + (f", and {len(spans) - most} more range(s)" if len(spans) > most else "")


def write_table(rows: Sequence[Sequence[str]], out: TextIO, left: int = 1) -> None:
    """Aligned columns: the first `left` to the left (names), the rest to the right (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                  + "\n")


def report_damage(damage: Sequence[CaptureTruncatedError]) -> int:
    """One line per damaged capture on stderr; the exit code (4 if any, docs/cli.md)."""
    for error in damage:
        print(f"scriptgen: error: {error}", file=sys.stderr)
    return 4 if damage else 0


def captures(paths: Sequence[str]) -> list[str]:
    """The CAPTURE arguments of every command, as files: a directory is every *.pcap and
    *.pcapng in it, sorted (scriptgen.capture.capture_files); links in it are skipped, said
    on stderr. CaptureOpenError (exit 3) for a directory without any capture."""
    skipped: list[str] = []
    files = capture_files(paths, skipped)
    if skipped:
        warn(f"skipped {len(skipped)} symbolic link(s) inside a capture directory (never followed): "
             + ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    return files
