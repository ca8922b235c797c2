"""Capture stage, step 0: the capture arguments of a command -> the capture files to read.

A file is read as given. A directory (a recording directory of `scriptgen serve --record`,
docs/record.md) is read as every `*.pcap` and `*.pcapng` file directly in it, sorted by
name, which for recordings is their time order: read in that order as one capture, a
session that a rotation split over two files is whole again. Inside a directory nothing
is followed: an entry that is a symbolic link is skipped (and reported to the caller),
so reading never leaves the directory; subdirectories are not entered.

Inputs: paths. Output: paths, or CaptureOpenError for a directory without a capture.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from scriptgen.errors import CaptureOpenError

__all__ = ["CAPTURE_SUFFIXES", "capture_files"]

CAPTURE_SUFFIXES = (".pcap", ".pcapng")


def capture_files(paths: Iterable[str], skipped: list[str] | None = None) -> list[str]:
    """The files to read for `paths`, in order: files as given, directories expanded.

    Symbolic links found inside a directory are appended to `skipped`, not read.
    """
    files: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)  # a missing or unreadable file is the reader's to report
            continue
        found, links = [], []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if not entry.name.lower().endswith(CAPTURE_SUFFIXES):
                        continue
                    if entry.is_symlink():
                        links.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        found.append(entry.path)
        except OSError as exc:
            raise CaptureOpenError(path, 0, f"cannot list the directory ({exc.strerror})") from None
        if not found:
            note = f" ({len(links)} symbolic link(s) skipped: never followed)" if links else ""
            raise CaptureOpenError(path, 0, f"a directory without any *.pcap or *.pcapng file in it{note}")
        files.extend(sorted(found))
        if skipped is not None:
            skipped.extend(sorted(links))
    return files
