"""Serve stage: the event log written by a process of its own.

`EventLog` (log.py) writes from a thread of the serving process: its encoding and SQLite
inserts hold the interpreter lock the event loop needs, and the two take turns.
`ProcessLog` keeps only the queue in the serving process: a forwarder thread marshals each
batch as the loop queued it (session events as records: tuples, raw bytes; about a
microsecond an event) and writes it to a pipe; a child process (`main` below, in a
`python -c` of its own) prepares it (`log.prepare`: records made into events, JSON,
SQLite rows) and hands it to the sinks as it arrives.

The same interface as EventLog (emit, flush, close, dropped, sensor, params). Nothing is
lost when the child dies: each batch is numbered, and the child acknowledges it once every
output has written it or given up on it (`_ACK`: per output, the last batch settled, the
JSON lines file's size then, and the events given up so far). The forwarder keeps every
batch not yet settled; when the child dies (or stops answering: it is killed) the forwarder
writes those itself, and every later batch (a warning says so), without writing twice what
the child wrote but did not acknowledge: SQLite holds the number of the last batch it
committed in the same transaction (table `writers`), and the JSON lines file's lines past
the acknowledged size are matched, one for one, against the batches written again. The
child drops privileges to `user` before it opens any file (logdir.py), and says on its
first byte that the files are open or, in one line, why not.

Inputs: event dicts. Outputs: the files of log.py, in `log_dir`. Standard library only.
"""

from __future__ import annotations

import marshal
import os
import signal
import sqlite3
import struct
import subprocess
import sys
from collections import deque
from typing import IO

from scriptgen.errors import ScriptgenError, ServeError
from scriptgen.params import LogParams
from scriptgen.serve.log import Item, JsonLinesSink, Queue, Sinks, SqliteSink, _warn, open_sinks, prepare
from scriptgen.serve.logdir import check_log_dir
from scriptgen.serve.runtime import drop_privileges, freeze_loaded, lookup_user

__all__ = ["ProcessLog", "main"]

_HEADER = struct.Struct(">I")
# The child's answer to each batch, once every output wrote it or gave up on it (and once
# after READY, and once at the end): per output the last batch settled (the batch's own
# number for an output turned off), the JSON lines file's size, events given up so far,
# and whether batches wait to be retried.
_ACK = struct.Struct(">QQQQ?")
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
        self._writer = os.urandom(8).hex()  # names this run's batches in SQLite's `writers`
        self._seq = 0
        self._unsettled: deque[tuple[int, str, list[Item]]] = deque()  # (seq, sensor, items)
        self._json_done = self._json_offset = self._sqlite_done = self._child_dropped = 0
        self._waiting = False
        self._lost_here = 0  # events the fallback could not even open the sinks for
        # Not `-m scriptgen.serve.logwriter`: the package imports this module first, and runpy
        # would run it a second time as __main__ (and warn on stderr that it did).
        argv = [sys.executable, "-c", _CHILD, log_dir, "1" if json_lines else "0", "1" if sqlite else "0", user or "",
                str(self.params.max_backlog_bytes)]
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
        if answer == _READY and self._read_ack():
            return
        message = child.stdout.read(_MAX_ERROR).decode(errors="replace") if answer == _ERROR else ""
        if child.stdin is not None:
            child.stdin.close()
        code = child.wait()
        raise ServeError(message or f"the event log writer process exited at start (exit code {code})")

    def _closed(self) -> None:
        """Stop the child once it has written everything (or write what it did not)."""
        child = self._child
        if child is not None and child.stdin is not None:
            try:
                child.stdin.close()
            except OSError:
                pass
            if self._read_ack():  # the last: everything settled
                self._unsettled.clear()
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if self._unsettled:
                self._take_over("exited before writing everything")
        if self._fallback is not None:
            self._fallback.close()

    def _sink_dropped(self) -> int:
        return self._child_dropped + self._lost_here + (self._fallback.dropped if self._fallback is not None else 0)

    def _retrying(self) -> bool:
        if self._child is not None:
            return self._waiting
        return self._fallback is not None and self._fallback.waiting()

    # -- the forwarder thread -----------------------------------------------------------------

    def _write(self, events: list[Item]) -> None:
        if self._child is not None:
            self._seq += 1
            self._unsettled.append((self._seq, self.sensor, events))
            data = marshal.dumps((self._writer, self._seq, self.sensor, events))
            if self._send(_BATCH + _HEADER.pack(len(data)) + data) and self._read_ack():
                return
            self._take_over("exited")  # writes this batch too
            return
        fallback = self._in_process()
        if fallback is None:
            self._lost_here += len(events)
            return
        fallback.sensor = self.sensor
        fallback.write(prepare(events) if events else None)

    def _send(self, data: bytes) -> bool:
        child = self._child
        if child is None or child.stdin is None:
            return False
        try:
            child.stdin.write(data)
            child.stdin.flush()
            return True
        except OSError:  # the child is gone
            return False

    def _read_ack(self) -> bool:
        """Take the child's answer: forget the batches every output has settled."""
        child = self._child
        if child is None or child.stdout is None:
            return False
        try:
            data = _read_exactly(child.stdout, _ACK.size)
        except OSError:
            return False
        if len(data) < _ACK.size:
            return False
        self._json_done, self._json_offset, self._sqlite_done, self._child_dropped, self._waiting = _ACK.unpack(data)
        settled = min(self._json_done, self._sqlite_done)
        while self._unsettled and self._unsettled[0][0] <= settled:
            self._unsettled.popleft()
        return True

    def _take_over(self, what: str) -> None:
        """The child is gone: write here what it had not settled, then everything after."""
        child, self._child = self._child, None
        if child is not None:
            if child.poll() is None:  # stopped answering: never two writers of one file
                child.kill()
            code = child.wait()
            _warn(f"event log writer process {what} (exit code {code}): writing the log from the server process")
        unsettled, self._unsettled = self._unsettled, deque()
        fallback = self._in_process()
        if fallback is None:
            self._lost_here += sum(len(items) for _, _, items in unsettled)
            return
        for sink in fallback.sinks:  # not twice what the child wrote and did not acknowledge
            if isinstance(sink, JsonLinesSink):
                sink.resume(self._json_offset)
                fallback.done[sink.name] = self._json_done
            elif isinstance(sink, SqliteSink):
                fallback.done[sink.name] = max(self._sqlite_done, sink.resume(self._writer))
        for seq, sensor, items in unsettled:
            fallback.sensor = sensor
            fallback.write(prepare(items, self._writer, seq))

    def _in_process(self) -> Sinks | None:
        if self._fallback is None:
            try:
                sinks = open_sinks(self._log_dir, json_lines=self._json, sqlite=self._sqlite)
            except (ScriptgenError, OSError, sqlite3.Error) as exc:
                _warn(f"event log: cannot open the log files in the server process either: {exc} (events lost, "
                      f"counted in events_dropped)")
                return None
            self._fallback = Sinks(sinks, self.sensor, self.params.max_backlog_bytes)
        return self._fallback


def _read_exactly(source: IO[bytes], size: int) -> bytes:
    data = source.read(size)
    while data and len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _child_env() -> dict[str, str]:
    """The child imports this package as the server did (an installed package, or src/)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv: list[str]) -> int:
    """The child: read batches from stdin and write each as it arrives, until stdin closes."""
    log_dir, json_lines, sqlite, user, backlog = argv
    # A signal to the server's whole process group (systemd's stop, ^C, a hangup) must not end
    # the writer before the server has handed it the last events: it ends when stdin closes.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    source, answer = sys.stdin.buffer, sys.stdout.buffer
    try:
        if user:  # before any file is opened: the files are the user's, never root's
            drop_privileges(user)
        sinks = Sinks(open_sinks(log_dir, json_lines=json_lines == "1", sqlite=sqlite == "1"),
                      max_backlog_bytes=int(backlog))
    except (ScriptgenError, OSError, sqlite3.Error) as exc:
        reason = str(exc) if isinstance(exc, ScriptgenError) else f"--log-dir {log_dir}: {exc}"
        answer.write(_ERROR + reason.encode()[:_MAX_ERROR])
        answer.flush()
        return 2
    answer.write(_READY + _ack(sinks, 0))
    answer.flush()
    freeze_loaded()
    seq = 0
    try:
        while True:
            kind = source.read(1)
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
            writer, seq, sinks.sensor, events = marshal.loads(source.read(size))
            sinks.write(prepare(events, writer, seq))
            answer.write(_ack(sinks, seq))  # after the write: what is acknowledged is settled
            answer.flush()
    finally:
        sinks.close()  # the backlogs retried a last time; what is left given up on, and said
    answer.write(_ack(sinks, seq, final=True))
    answer.flush()
    return 0


def _ack(sinks: Sinks, seq: int, final: bool = False) -> bytes:
    json_sink = next((s for s in sinks.sinks if isinstance(s, JsonLinesSink)), None)
    done = {name: seq if final else n for name, n in sinks.done.items()}
    return _ACK.pack(done.get("json", seq), json_sink.offset if json_sink is not None else 0,
                     done.get("sqlite", seq), sinks.dropped, sinks.waiting())
