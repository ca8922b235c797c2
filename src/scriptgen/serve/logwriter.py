"""Serve stage: the event log written by a process of its own.

`EventLog` (log.py) writes from a thread of the serving process: its JSON encoding and
SQLite inserts hold the interpreter lock the event loop needs, and the two take turns
(measured: the log cost the server 168 us of CPU per 7-event session on uvloop, of which
70 us of real work). `ProcessLog` keeps only the queue in the serving process: a forwarder
thread marshals each batch (a microsecond an event) and writes it to a pipe; a child
process (`python -m scriptgen.serve.logwriter`) runs an `EventLog` on the same files.

The same interface as EventLog (emit, flush, close, dropped, sensor, params). Nothing is
lost when the child dies: the batch it did not take, and every later one, are written by
an EventLog in this process instead (a warning says so). The child drops privileges to
`user` after opening the files, as the server does after binding.

Inputs: event dicts. Outputs: the files of log.py, in `log_dir`. Standard library only.
"""

from __future__ import annotations

import marshal
import os
import struct
import subprocess
import sys
from typing import Any

from scriptgen.params import LogParams
from scriptgen.serve.log import EventLog, Queue, _warn, open_sinks
from scriptgen.serve.runtime import drop_privileges

__all__ = ["ProcessLog", "main"]

_HEADER = struct.Struct(">I")
_FLUSH = b"F"  # a flush marker: the child answers one byte once everything before it is written
_BATCH = b"B"
_MAX_FRAME = 256 << 20  # a batch the child refuses (a bug, not a log)


class ProcessLog(Queue):
    """The event log, written by a child process (see the module's docstring)."""

    def __init__(self, log_dir: str, params: LogParams | None = None, sensor: str = "", *,
                 json_lines: bool = True, sqlite: bool = True, user: str | None = None) -> None:
        super().__init__(params, sensor, name="scriptgen-log-forwarder")
        self._log_dir, self._json, self._sqlite = log_dir, json_lines, sqlite
        for sink in open_sinks(log_dir, json_lines=json_lines, sqlite=sqlite):  # fail here, not in the child
            sink.close()
        argv = [sys.executable, "-m", "scriptgen.serve.logwriter", log_dir, str(self.params.flush_interval),
                str(self.params.flush_events), "1" if json_lines else "0", "1" if sqlite else "0", user or ""]
        self._child: subprocess.Popen[bytes] | None = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_child_env())
        self._fallback: EventLog | None = None
        self._thread.start()

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

    def _write(self, events: list[dict[str, Any]]) -> None:
        if self._fallback is None:
            data = marshal.dumps((self.sensor, events))
            if self._send(_BATCH + _HEADER.pack(len(data)) + data):
                return
        self._in_process().sensor = self.sensor
        for event in events:
            self._in_process().emit(event)

    def _settle(self) -> None:
        """Wait until the child has written everything sent so far."""
        if self._fallback is None and self._send(_FLUSH):
            child = self._child
            assert child is not None and child.stdout is not None
            try:
                if child.stdout.read(1) == _FLUSH:
                    return
            except OSError:
                pass
            self._lost("stopped answering")
        if self._fallback is not None:
            self._fallback.flush()

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

    def _in_process(self) -> EventLog:
        if self._fallback is None:
            self._fallback = EventLog(open_sinks(self._log_dir, json_lines=self._json, sqlite=self._sqlite),
                                      self.params, self.sensor)
        return self._fallback


def _child_env() -> dict[str, str]:
    """The child imports this package as the server did (an installed package, or src/)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv: list[str]) -> int:
    """The child: read batches from stdin, write them with an EventLog, until stdin closes."""
    log_dir, interval, events, json_lines, sqlite, user = argv
    params = LogParams(flush_interval=float(interval), flush_events=int(events))
    log = EventLog(open_sinks(log_dir, json_lines=json_lines == "1", sqlite=sqlite == "1"), params)
    if user:
        drop_privileges(user, [log_dir] + [os.path.join(log_dir, n) for n in os.listdir(log_dir)])
    source, answer = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            kind = source.read(1)
            if kind == _FLUSH:
                log.flush()
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
            # marshal: plain data (events hold str, int, float, bool, None, lists), never code run
            sensor, batch = marshal.loads(source.read(size))
            log.sensor = sensor
            for event in batch:
                log.emit(event)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
