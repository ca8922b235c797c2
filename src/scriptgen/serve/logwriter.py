"""Serve stage: the event log written by a process of its own.

`EventLog` (log.py) writes from a thread of the serving process: its encoding and SQLite
inserts hold the interpreter lock the event loop needs, and the two take turns.
`ProcessLog` keeps only the queue in the serving process: a forwarder thread marshals each
batch as the loop queued it (session events as records: tuples, raw bytes; about a
microsecond an event) and writes it to a pipe; a child process (`main` below, in a
`python -c` of its own) prepares it (`log.prepare`: records made into events, JSON,
SQLite rows) and hands it to the sinks as it arrives.

The same interface as EventLog (emit, flush, close, dropped, sensor, params). Nothing is
lost when the child dies: the batch it did not take, and every later one, are written by
the forwarder thread itself instead (a warning says so). The child drops privileges to
`user` before it opens any file (logdir.py), and says on its first byte that the files are
open or, in one line, why not.

Inputs: event dicts. Outputs: the files of log.py, in `log_dir`. Standard library only.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import struct
import subprocess
import sys

from scriptgen.errors import ScriptgenError, ServeError
from scriptgen.params import LogParams
from scriptgen.serve.log import Item, Queue, Sinks, _warn, open_sinks, prepare
from scriptgen.serve.logdir import check_log_dir
from scriptgen.serve.runtime import drop_privileges, freeze_loaded, lookup_user

__all__ = ["ProcessLog", "main"]

_HEADER = struct.Struct(">I")
_FLUSH = b"F"  # a flush marker: the child answers one byte once everything before it is written
_READY, _ERROR = b"R", b"E"  # the child's first byte: the files are open, or why not (then the reason)
_MAX_ERROR = 4096
_BATCH = b"B"
_MAX_FRAME = 256 << 20  # a batch the child refuses (a bug, not a log)
_CHILD = "import sys; from scriptgen.serve.logwriter import main; sys.exit(main(sys.argv[1:]))"


class ProcessLog(Queue):
    """The event log, written by a child process (see the module's docstring)."""

    def __init__(self, log_dir: str, params: LogParams | None = None, sensor: str = "", *,
                 json_lines: bool = True, sqlite: bool = True, user: str | None = None) -> None:
        super().__init__(params, sensor, name="scriptgen-log-forwarder")
        self._log_dir, self._json, self._sqlite = log_dir, json_lines, sqlite
        if user:  # created for the user if missing, else it must be the user's already
            check_log_dir(log_dir, *lookup_user(user))
        else:
            check_log_dir(log_dir)
        # Not `-m scriptgen.serve.logwriter`: the package imports this module first, and runpy
        # would run it a second time as __main__ (and warn on stderr that it did).
        argv = [sys.executable, "-c", _CHILD, log_dir, "1" if json_lines else "0", "1" if sqlite else "0", user or ""]
        self._child: subprocess.Popen[bytes] | None = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env())
        self._fallback: Sinks | None = None
        self._started()
        self._thread.start()

    def _started(self) -> None:
        """Wait for the child to say it opened the files (as `user`), or why it could not:
        a bad log directory fails the start, not the first write."""
        child = self._child
        assert child is not None and child.stdout is not None
        answer = child.stdout.read(1)
        if answer == _READY:
            return
        message = child.stdout.read(_MAX_ERROR).decode(errors="replace") if answer == _ERROR else ""
        if child.stdin is not None:
            child.stdin.close()
        code = child.wait()
        raise ServeError(message or f"the event log writer process exited at start (exit code {code})")

    def _closed(self) -> None:
        """Stop the child once it has written everything."""
        child = self._child
        if child is not None and child.stdin is not None:
            try:
                child.stdin.close()
            except OSError:
                pass
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._fallback is not None:
            self._fallback.close()

    # -- the forwarder thread -----------------------------------------------------------------

    def _write(self, events: list[Item]) -> None:
        if self._fallback is None:
            data = marshal.dumps((self.sensor, events))
            if self._send(_BATCH + _HEADER.pack(len(data)) + data):
                return
        fallback = self._in_process()
        fallback.sensor = self.sensor
        fallback.write(prepare(events))

    def _settle(self) -> None:
        """Wait until the child has written everything sent so far (the fallback writes
        as it goes)."""
        if self._fallback is None and self._send(_FLUSH):
            child = self._child
            assert child is not None and child.stdout is not None
            try:
                if child.stdout.read(1) == _FLUSH:
                    return
            except OSError:
                pass
            self._lost("stopped answering")

    def _send(self, data: bytes) -> bool:
        child = self._child
        if child is None or child.stdin is None:
            return False
        try:
            child.stdin.write(data)
            child.stdin.flush()
            return True
        except OSError:  # the child is gone: write here from now on
            self._lost("exited")
            return False

    def _lost(self, what: str) -> None:
        child, self._child = self._child, None
        code = child.poll() if child is not None else None
        _warn(f"event log writer process {what} (exit code {code}): writing the log from the server process")
        self._in_process()

    def _in_process(self) -> Sinks:
        if self._fallback is None:
            self._fallback = Sinks(open_sinks(self._log_dir, json_lines=self._json, sqlite=self._sqlite),
                                   self.sensor)
        return self._fallback


def _child_env() -> dict[str, str]:
    """The child imports this package as the server did (an installed package, or src/)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv: list[str]) -> int:
    """The child: read batches from stdin and write each as it arrives, until stdin closes."""
    log_dir, json_lines, sqlite, user = argv
    source, answer = sys.stdin.buffer, sys.stdout.buffer
    try:
        if user:  # before any file is opened: the files are the user's, never root's
            drop_privileges(user)
        sinks = Sinks(open_sinks(log_dir, json_lines=json_lines == "1", sqlite=sqlite == "1"))
    except (ScriptgenError, OSError, sqlite3.Error) as exc:
        reason = str(exc) if isinstance(exc, ScriptgenError) else f"--log-dir {log_dir}: {exc}"
        answer.write(_ERROR + reason.encode()[:_MAX_ERROR])
        answer.flush()
        return 2
    answer.write(_READY)
    answer.flush()
    freeze_loaded()
    try:
        while True:
            kind = source.read(1)
            if kind == _FLUSH:  # everything before it is written: batches are written as they come
                answer.write(_FLUSH)
                answer.flush()
                continue
            if kind != _BATCH:
                break  # end of input (the server closed the log)
            header = source.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            (size,) = _HEADER.unpack(header)
            if size > _MAX_FRAME:
                _warn(f"event log writer: a batch of {size} bytes refused")
                return 1
            # marshal: plain data (dicts, tuples and lists of str, bytes, numbers, None), never code run
            sinks.sensor, events = marshal.loads(source.read(size))
            sinks.write(prepare(events))
    finally:
        sinks.close()
    return 0
