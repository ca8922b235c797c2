"""Serve stage: the event log. Events (dicts, or session records: events.py) in; JSON
lines and SQLite out.

The server's event loop only appends each item to a queue (`EventLog.emit`, a lock and a
list append). One writer thread takes the queue every `flush_interval` seconds, or as soon
as `flush_events` are waiting, and prepares the batch once (`prepare`: records made into
events, each event's JSON text and the SQLite rows it makes, plain tuples of strings and
numbers) for every sink: JSON lines (one object per line, flushed after each batch) and
SQLite (WAL mode, one transaction per batch). Sinks are isolated (`Sinks`): one that
raises is reported (`scriptgen.log.error` on the others, a line on stderr) and never stops
the others. A batch a sink failed to write leaves nothing behind (the JSON lines file is
cut back to its last whole line, the SQLite transaction rolled back) and waits in that
sink's backlog, retried in order at the next write; a backlog over `max_backlog_bytes`
gives up its oldest batches, counted (`dropped`) and reported once the sink writes again
(`scriptgen.log.lost`, in every output). `close()` writes everything still queued.

Inputs: events and records. Outputs: files in the log directory (`events.jsonl`,
`events.sqlite`; the schema is in docs/events.md). Imports the standard library and orjson.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from scriptgen.serve.events import Record, expand, timestamp
from scriptgen.serve.logdir import check_log_dir, check_no_link, open_log_file
from scriptgen.params import LogParams

__all__ = ["JSON_NAME", "MAX_LOST_SESSIONS", "SCHEMA", "SQLITE_NAME", "Batch", "EventLog", "Item", "JsonLinesSink",
           "Log", "Queue", "Sink", "Sinks", "SqliteSink", "open_sinks", "prepare"]

JSON_NAME = "events.jsonl"
SQLITE_NAME = "events.sqlite"


class Batch(NamedTuple):
    """A batch of events as the sinks write it: made once by `prepare`, shared by the sinks."""

    events: list[tuple[str, str, str | None, str]]
    """(eventid, timestamp, session, JSON text) of every event, in order."""
    opened: list[tuple[Any, ...]]
    """A `sessions` row (its columns up to `parent`) for each session.connect."""
    closed: list[tuple[Any, ...]]
    """(end, duration, inputs, unmatched, bytes_in, bytes_out, reason, path, backend, session)
    for each session.closed."""
    size: int = 0
    """Characters of JSON text in `events` (what the batch costs a backlog)."""
    writer: str = ""
    """The writer that numbered the batch (a ProcessLog), else empty."""
    seq: int = 0
    """Its number from that writer (1, 2, ...), else 0: what a sink that already wrote it skips."""


Item = dict[str, Any] | Record
"""What the log queues: an event, or a session event's record (made into its event here)."""


def prepare(items: Sequence[Item], writer: str = "", seq: int = 0) -> Batch:
    """Each event serialised once, and the rows of the `sessions` table it makes."""
    batch = Batch([], [], [], 0, writer, seq)
    for item in items:
        try:
            e = item if isinstance(item, dict) else expand(item)
        except Exception as exc:  # a bug in a record's making: say so in its place, write the rest
            error = f"{type(exc).__name__}: {exc}"
            _warn(f"a session record cannot be written: {error}")
            e = {"eventid": "scriptgen.log.error", "timestamp": timestamp(time.time()), "sensor": "",
                 "message": f"unwritable session record {item!r:.300}", "sink": "all", "error": error,
                 "failures": 1}
        eventid = e["eventid"]
        batch.events.append((eventid, e["timestamp"], e.get("session"), _serialise(e)))
        if eventid == "scriptgen.session.connect":
            batch.opened.append((e["session"], e["transport"], e["src_ip"], e["src_port"], e["dst_ip"],
                                 e["dst_port"], e["model"], e["model_port"], e["sensor"], e["timestamp"],
                                 e.get("parent")))
        elif eventid == "scriptgen.session.closed":
            batch.closed.append((e["timestamp"], e["duration"], e["inputs"], e["unmatched"], e["bytes_in"],
                                 e["bytes_out"], e["reason"], _encode(e["path"]), e.get("backend"), e["session"]))
    return batch._replace(size=sum(len(text) for _, _, _, text in batch.events))


class Sink(Protocol):
    """Where events go. `write` may raise: the log isolates sinks from each other."""

    name: str

    def write(self, batch: Batch) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line, appended, each batch with os.write (no buffer in between).

    Never a partial line: a batch that fails part way (disk full, file-size limit: a short
    write, then ENOSPC or EFBIG) is cut back to where it began, and a line left half
    written by a crash (the writer killed during a write) is cut off when the file is
    opened. Rotation needs no signal: a file truncated in place (logrotate's
    `copytruncate`) is appended at its new end, and a file moved away (logrotate's default)
    is noticed before the next batch, which goes to a new file at `path` (one stat a
    batch)."""

    name = "json"

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_log_file(path)
        self._cut_at: int | None = None  # where a failed batch began, if cutting it back failed
        self._resumed: Counter[str] = Counter()
        self.offset = _cut_partial_line(self._fd)
        """The file's size after the last write (where a writer taking over may look)."""

    def resume(self, offset: int) -> None:
        """Another writer (a killed log process) wrote the file after `offset`: the batches
        it was handed are written again from here, less the lines it had already written
        (the lines past `offset`, matched one for one)."""
        self._resumed = Counter(_read_from(self._fd, offset).decode("utf-8", "replace").splitlines())

    def write(self, batch: Batch) -> None:
        lines = [line for _, _, _, line in batch.events]
        if self._resumed:
            lines = self._unwritten(lines)
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        self._follow_rotation()
        fd = self._fd
        if self._cut_at is not None:  # the last failed batch is still there: cut it first
            os.ftruncate(fd, self._cut_at)
            self._cut_at = None
        start = os.fstat(fd).st_size  # not a remembered offset: the file may have been rotated
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except BaseException:
            try:
                os.ftruncate(fd, start)
            except OSError:
                self._cut_at = start
            raise
        self.offset = start + len(data)

    def _follow_rotation(self) -> None:
        """Open `path` anew when the file there is no longer the one written (moved away)."""
        try:
            there = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        here = os.fstat(self._fd)
        if there is not None and (there.st_ino, there.st_dev) == (here.st_ino, here.st_dev):
            return
        fd = open_log_file(self.path)  # checked as at the start (ServeError: the batch is retried)
        os.close(self._fd)
        self._fd, self._cut_at = fd, None

    def _unwritten(self, lines: list[str]) -> list[str]:
        kept = []
        for line in lines:
            if self._resumed[line] > 0:
                self._resumed[line] -= 1
            else:  # the other writer stopped before this line: none after it can be there
                self._resumed.clear()
                kept.append(line)
        return kept

    def close(self) -> None:
        os.close(self._fd)


def _cut_partial_line(fd: int) -> int:
    """Cut the file back to its last newline (a crash's half line), and return its size."""
    size = end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        _warn(f"the JSON lines log ended in a partial line ({size - end} bytes): cut off")
        os.ftruncate(fd, end)
    return end


def _read_from(fd: int, offset: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, max(0, size - offset), offset) if offset < size else b""


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    eventid TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    session TEXT,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events (session);
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    src_ip TEXT NOT NULL,
    src_port INTEGER NOT NULL,
    dst_ip TEXT NOT NULL,
    dst_port INTEGER NOT NULL,
    model TEXT NOT NULL,
    model_port INTEGER NOT NULL,
    sensor TEXT NOT NULL,
    start TEXT NOT NULL,
    end TEXT,
    duration REAL,
    inputs INTEGER,
    unmatched INTEGER,
    bytes_in INTEGER,
    bytes_out INTEGER,
    reason TEXT,
    path TEXT,
    parent TEXT,
    backend TEXT
);
CREATE INDEX IF NOT EXISTS sessions_start ON sessions (start);
CREATE TABLE IF NOT EXISTS writers (
    writer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""


class SqliteSink:
    """Every event in table `events` (its JSON text), plus one row per session in table
    `sessions`, inserted at connect and completed at close (docs/events.md)."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        # Opened here, so that a bad path fails at start; used by the writer thread only.
        os.close(open_log_file(path))  # created, or checked, without following a link
        for companion in ("-wal", "-shm", "-journal"):
            check_no_link(path + companion)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        for column in ("parent", "backend"):  # a database written before data channels, backends
            if column not in columns:
                self._db.execute(f"ALTER TABLE sessions ADD COLUMN {column} TEXT")

    def resume(self, writer: str) -> int:
        """The last batch of `writer` this database holds (0: none): a batch is written,
        its number with it, in one transaction, so a writer taking over skips exactly those."""
        row = self._db.execute("SELECT seq FROM writers WHERE writer = ?", (writer,)).fetchone()
        return int(row[0]) if row else 0

    def write(self, batch: Batch) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO events (eventid, timestamp, session, json) VALUES (?, ?, ?, ?)", batch.events)
            if batch.opened:
                db.executemany(
                    "INSERT OR REPLACE INTO sessions (session, transport, src_ip, src_port, dst_ip, dst_port, "
                    "model, model_port, sensor, start, parent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch.opened)
            if batch.closed:
                db.executemany(
                    "UPDATE sessions SET end = ?, duration = ?, inputs = ?, unmatched = ?, bytes_in = ?, "
                    "bytes_out = ?, reason = ?, path = ?, backend = ? WHERE session = ?", batch.closed)
            if batch.writer:
                db.execute("INSERT OR REPLACE INTO writers (writer, seq) VALUES (?, ?)", (batch.writer, batch.seq))
            db.execute("COMMIT")  # may fail too (disk full): rolled back below
        except BaseException:
            if db.in_transaction:  # SQLite rolls back some failures itself (SQLITE_FULL)
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


class Log(Protocol):
    """What the server needs of an event log: EventLog (a thread) or ProcessLog (a process)."""

    params: LogParams
    sensor: str

    @property
    def dropped(self) -> int: ...

    def emit(self, event: Item, size: int = 0) -> None: ...

    def flush(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...


class Queue:
    """The queue between the event loop and a writer thread: `emit` appends (a lock and a
    list append), the thread takes the queue every `flush_interval` seconds or as soon as
    `flush_events` are waiting and hands it to `_write`. EventLog and ProcessLog build on it."""

    def __init__(self, params: LogParams | None = None, sensor: str = "", name: str = "scriptgen-log") -> None:
        self.params = params or LogParams()
        self.sensor = sensor
        self.queue_dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[Item] = []
        self._markers: list[threading.Event] = []  # flush() callers waiting for a write
        self._pending_bytes = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def emit(self, event: Item, size: int = 0) -> None:
        """Queue one event (or record); `size` is its payload size (bounds the queue's memory)."""
        with self._lock:
            if (len(self._pending) >= self.params.max_queued_events
                    or self._pending_bytes + size > self.params.max_queued_bytes):
                self.queue_dropped += 1
                if self.queue_dropped == 1:
                    _warn("event log queue full: dropping events (counted in scriptgen.server.stop)")
                return
            self._pending.append(event)
            self._pending_bytes += size
            if len(self._pending) == self.params.flush_events:  # once a batch, not once an event
                self._wake.set()

    @property
    def dropped(self) -> int:
        """Events lost: dropped from a full queue (from every output), or given up on by an
        output after retries (once for each output that lost them)."""
        return self.queue_dropped + self._sink_dropped()

    def flush(self, timeout: float = 10.0) -> None:
        """Write what is queued now (blocking the caller until written or `timeout`)."""
        done = threading.Event()
        with self._lock:
            self._markers.append(done)
        self._wake.set()
        done.wait(timeout)

    def close(self) -> None:
        """Write everything queued, then `_closed()`. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._closed()

    def _write(self, events: list[Item]) -> None:
        """Write `events` (possibly none: then only what is waiting to be retried)."""
        raise NotImplementedError

    def _retrying(self) -> bool:
        """Whether a write is due with no new events: batches wait to be retried."""
        return False

    def _sink_dropped(self) -> int:
        return 0

    def _settle(self) -> None:
        """Before flush() callers are released: make sure what `_write` took is written."""

    def _closed(self) -> None:
        """After the last write."""

    def _run(self) -> None:
        while True:
            if not self._closing:
                self._wake.wait(self.params.flush_interval)
            self._wake.clear()
            with self._lock:
                events, self._pending = self._pending, []
                markers, self._markers = self._markers, []
                self._pending_bytes = 0
                closing = self._closing
            if events or self._retrying():
                self._write(events)
            if markers:
                self._settle()
            for marker in markers:
                marker.set()
            if closing:
                with self._lock:
                    if not self._pending:
                        return


MAX_LOST_SESSIONS = 1000
"""Session ids a `scriptgen.log.lost` event lists (`sessions` counts them all)."""


class _Lost:
    """What one sink gave up on since its last `scriptgen.log.lost` event."""

    def __init__(self) -> None:
        self.events = self.batches = 0
        self.sessions: set[str] = set()
        self.first = self.last = ""

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.events += len(batch.events)
        for _, stamp, session, _ in batch.events:
            if session is not None:
                self.sessions.add(session)
            if not self.first or stamp < self.first:
                self.first = stamp
            if stamp > self.last:
                self.last = stamp

    def event(self, sink: str, sensor: str) -> dict[str, Any]:
        return {"eventid": "scriptgen.log.lost", "timestamp": timestamp(time.time()), "sensor": sensor,
                "message": f"log sink {sink} gave up on {self.events} events of {len(self.sessions)} sessions "
                           f"({self.first} to {self.last}) it could not write",
                "sink": sink, "events": self.events, "batches": self.batches, "sessions": len(self.sessions),
                "session_ids": sorted(self.sessions)[:MAX_LOST_SESSIONS], "first": self.first, "last": self.last}


class Sinks:
    """Every sink written with each batch, isolated from each other. A sink that raises is
    counted, reported once per streak of failures (`scriptgen.log.error` on the others, a
    line on stderr), and keeps the batch in its backlog, retried in order with the next
    write. A backlog over `max_backlog_bytes` gives up its oldest batches: counted in
    `dropped`, said on stderr, and, once the sink writes again (or at close), reported in
    every sink as `scriptgen.log.lost`."""

    def __init__(self, sinks: Sequence[Sink], sensor: str = "", max_backlog_bytes: int | None = None) -> None:
        self.sinks = list(sinks)
        self.sensor = sensor
        self.max_backlog_bytes = LogParams().max_backlog_bytes if max_backlog_bytes is None else max_backlog_bytes
        self.failures: dict[str, int] = {s.name: 0 for s in self.sinks}
        self.dropped = 0
        self.done: dict[str, int] = {s.name: 0 for s in self.sinks}
        """The number (`Batch.seq`) of the last batch each sink wrote or gave up on."""
        self._backlog: dict[str, deque[Batch]] = {s.name: deque() for s in self.sinks}
        self._backlog_size: dict[str, int] = {s.name: 0 for s in self.sinks}
        self._lost: dict[str, _Lost] = {}
        self._failing: set[str] = set()

    def waiting(self) -> bool:
        """Whether some sink has batches waiting to be retried."""
        return any(self._backlog.values())

    def write(self, batch: Batch | None) -> None:
        """Write `batch` (None: only retry the backlogs) to every sink."""
        for sink in self.sinks:
            self._push(sink, batch)
        self._report_lost(recovered_only=True)

    def close(self) -> None:
        """Retry the backlogs a last time; give up on what is left, and say so."""
        self.write(None)
        for sink in self.sinks:
            queue = self._backlog[sink.name]
            while queue:
                self._give_up(sink.name, queue.popleft())
            self._backlog_size[sink.name] = 0
        self._report_lost(recovered_only=False)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one sink failing to close must not keep the others open
                _warn(f"log sink {sink.name}: close failed: {type(exc).__name__}: {exc}")

    def _push(self, sink: Sink, batch: Batch | None) -> None:
        name = sink.name
        queue = self._backlog[name]
        if batch is not None:
            if batch.seq and batch.seq <= self.done[name]:
                return  # written already (by a log process this one took over from)
            if not batch.events and not queue:
                self.done[name] = max(self.done[name], batch.seq)
                return
            queue.append(batch)
            self._backlog_size[name] += batch.size
        while queue:
            head = queue[0]
            if not self._write_to(sink, head):
                break
            queue.popleft()
            self._backlog_size[name] -= head.size
            self.done[name] = max(self.done[name], head.seq)
        while queue and self._backlog_size[name] > self.max_backlog_bytes:
            oldest = queue.popleft()
            self._backlog_size[name] -= oldest.size
            self._give_up(name, oldest)

    def _give_up(self, name: str, batch: Batch) -> None:
        self.done[name] = max(self.done[name], batch.seq)
        if not batch.events:
            return
        lost = self._lost.get(name)
        if lost is None:
            lost = self._lost[name] = _Lost()
            _warn(f"log sink {name}: giving up on batches it could not write (counted in events_dropped; "
                  f"scriptgen.log.lost says which once it writes again)")
        lost.add(batch)
        self.dropped += len(batch.events)

    def _report_lost(self, recovered_only: bool) -> None:
        for name in list(self._lost):
            if recovered_only and self._backlog[name]:
                continue  # still failing: said once it writes again
            lost = self._lost.pop(name)
            _warn(f"log sink {name}: {lost.events} events of {len(lost.sessions)} sessions lost "
                  f"({lost.first} to {lost.last})")
            report = prepare([lost.event(name, self.sensor)])
            for sink in self.sinks:
                self._push(sink, report)

    def _write_to(self, sink: Sink, batch: Batch) -> bool:
        try:
            sink.write(batch)
        except Exception as exc:  # isolation: a failing sink is reported, the others go on
            self.failures[sink.name] += 1
            if sink.name in self._failing:
                return False
            self._failing.add(sink.name)
            error = f"{type(exc).__name__}: {exc}"
            _warn(f"log sink {sink.name} failed: {error} (retried with every batch)")
            report = prepare([{
                "eventid": "scriptgen.log.error", "timestamp": timestamp(time.time()), "sensor": self.sensor,
                "message": f"log sink {sink.name} failed: {error}", "sink": sink.name, "error": error,
                "failures": self.failures[sink.name],
            }])
            for other in self.sinks:
                if other is not sink and not self._backlog[other.name]:
                    try:
                        other.write(report)
                    except Exception as exc2:  # both failing: stderr is all that is left
                        _warn(f"log sink {other.name} failed too: {type(exc2).__name__}: {exc2}")
            return False
        if sink.name in self._failing:
            self._failing.discard(sink.name)
            _warn(f"log sink {sink.name} writes again")
        return True


class EventLog(Queue):
    """The event log written by a thread of this process: each batch prepared once and
    handed to every sink."""

    def __init__(self, sinks: Sequence[Sink], params: LogParams | None = None, sensor: str = "") -> None:
        super().__init__(params, sensor)
        self._sinks = Sinks(sinks, sensor, self.params.max_backlog_bytes)
        self.failures = self._sinks.failures
        self._thread.start()

    def _write(self, events: list[Item]) -> None:
        self._sinks.sensor = self.sensor
        self._sinks.write(prepare(events) if events else None)

    def _retrying(self) -> bool:
        return self._sinks.waiting()

    def _sink_dropped(self) -> int:
        return self._sinks.dropped

    def _closed(self) -> None:
        self._sinks.close()


def _encode(value: Any) -> str:
    """Compact JSON (orjson: a third of the C encoder's time, and this runs for every event)."""
    return orjson.dumps(value).decode()


def _serialise(event: dict[str, Any]) -> str:
    try:
        return _encode(event)
    except (TypeError, ValueError) as exc:  # a bug in an event's making (or a lone surrogate in a
        # str, which orjson refuses): keep its id and say so
        _warn(f"event {event.get('eventid')!r} cannot be written as JSON: {exc}")
        return json.dumps({k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                           for k, v in event.items()}, separators=(",", ":"))


def _warn(message: str) -> None:
    print(f"scriptgen: {message}", file=sys.stderr, flush=True)


def open_sinks(log_dir: str, *, json_lines: bool = True, sqlite: bool = True) -> list[Sink]:
    """The default sinks in `log_dir` (created if missing; logdir.py says what is refused)."""
    check_log_dir(log_dir)
    sinks: list[Sink] = []
    if json_lines:
        sinks.append(JsonLinesSink(os.path.join(log_dir, JSON_NAME)))
    if sqlite:
        sinks.append(SqliteSink(os.path.join(log_dir, SQLITE_NAME)))
    return sinks

