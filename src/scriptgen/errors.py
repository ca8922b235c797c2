"""The one exception tree of scriptgen.

    ScriptgenError                 anything the CLI turns into a one-line message
    └── CaptureError               a capture file cannot be read (carries path and byte offset)
        ├── CaptureOpenError       missing, unreadable, or empty file
        ├── CaptureFormatError     not a pcap/pcapng file, or a malformed header
        └── CaptureTruncatedError  the file ends or breaks inside a record
    └── ModelError                 a model file cannot be used (carries path and JSON location)
        ├── ModelVersionError      written by a newer scriptgen, or an unknown format
        └── ModelFormatError       malformed, inconsistent or over a size cap
    ├── TargetError                an evaluation target cannot be used (address, reachability)
    └── ServeError                 the server cannot start (listeners, user, log directory),
                                   or a session log cannot be read

The library raises these; the CLI maps them to exit codes (docs/cli.md). A truncated
capture is not raised by the session reader: the sessions read before the damage are
returned and the error is kept in `CaptureStats.damage` (nothing already read is lost).
"""

from __future__ import annotations

__all__ = [
    "ScriptgenError",
    "CaptureError",
    "CaptureOpenError",
    "CaptureFormatError",
    "CaptureTruncatedError",
    "ModelError",
    "ModelVersionError",
    "ModelFormatError",
    "ServeError",
    "TargetError",
]


class ScriptgenError(Exception):
    """Base of every error scriptgen raises on purpose."""


class CaptureError(ScriptgenError):
    """A capture cannot be read; names the file and the byte offset of the problem."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: at byte {offset}: {reason}")


class CaptureOpenError(CaptureError):
    """The file is missing, unreadable or empty."""


class CaptureFormatError(CaptureError):
    """The file is not a pcap or pcapng capture, or its header is malformed."""


class CaptureTruncatedError(CaptureError):
    """The capture ends or is damaged inside a record; what came before is usable."""


class ModelError(ScriptgenError):
    """A model file cannot be used; names the file and where in it the problem is."""

    def __init__(self, path: str, where: str, reason: str) -> None:
        self.path = path
        self.where = where
        self.reason = reason
        super().__init__(f"{path}: {where}: {reason}" if where else f"{path}: {reason}")


class ModelVersionError(ModelError):
    """The file is not a scriptgen model, or needs a newer scriptgen."""


class ModelFormatError(ModelError):
    """The file is malformed, inconsistent, or exceeds a size cap."""


class ServeError(ScriptgenError):
    """The server cannot start as asked, or a session log cannot be read."""


class TargetError(ScriptgenError):
    """A target cannot be used: a malformed address, nothing reachable there, or sessions
    it cannot replay (UDP over the TCP target)."""
