"""Serve stage: the event log. Events (dicts, or session records: events.py) in; JSON
lines and SQLite out.

The server's event loop only appends each item to a queue (`EventLog.emit`, a lock and a
list append). One writer thread takes the queue every `flush_interval` seconds, or as soon
as `flush_events` are waiting, and prepares the batch once (`prepare`: records made into
events, each event's JSON text and the SQLite rows it makes, plain tuples of strings and
numbers) for every sink: JSON lines (one object per line, flushed after each batch) and
SQLite (WAL mode, one transaction per batch). Sinks are isolated (`Sinks`): one that
raises is reported (`scriptgen.log.error` on the others, a line on stderr) and retried
with the next batch, and never stops the others. `close()` writes everything still queued.

Inputs: events and records. Outputs: files in the log directory (`events.jsonl`,
`events.sqlite`; the schema is in docs/events.md). Imports the standard library and orjson.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from scriptgen.serve.events import Record, expand, timestamp
from scriptgen.serve.logdir import check_log_dir, check_no_link, open_log_file
from scriptgen.params import LogParams

__all__ = ["JSON_NAME", "SCHEMA", "SQLITE_NAME", "Batch", "EventLog", "Item", "JsonLinesSink", "Log", "Queue",
           "Sink", "Sinks", "SqliteSink", "open_sinks", "prepare"]

JSON_NAME = "events.jsonl"
SQLITE_NAME = "events.sqlite"


class Batch(NamedTuple):
    """A batch of events as the sinks write it: made once by `prepare`, shared by the sinks."""

    events: list[tuple[str, str, str | None, str]]
    """(eventid, timestamp, session, JSON text) of every event, in order."""
    opened: list[tuple[Any, ...]]
    """A `sessions` row (its columns up to `parent`) for each session.connect."""
    closed: list[tuple[Any, ...]]
    """(end, duration, inputs, unmatched, bytes_in, bytes_out, reason, path, session) for
    each session.closed."""


Item = dict[str, Any] | Record
"""What the log queues: an event, or a session event's record (made into its event here)."""


def prepare(items: Sequence[Item]) -> Batch:
    """Each event serialised once, and the rows of the `sessions` table it makes."""
    batch = Batch([], [], [])
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
                                 e["bytes_out"], e["reason"], _encode(e["path"]), e["session"]))
    return batch


class Sink(Protocol):
    """Where events go. `write` may raise: the log isolates sinks from each other."""

    name: str

    def write(self, batch: Batch) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line, appended; flushed after every batch."""

    name = "json"

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = os.fdopen(open_log_file(path), "a", encoding="utf-8")

    def write(self, batch: Batch) -> None:
        if batch.events:
            self._file.write("\n".join([line for _, _, _, line in batch.events]) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


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
    parent TEXT
);
CREATE INDEX IF NOT EXISTS sessions_start ON sessions (start);
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
        if "parent" not in columns:  # a database written before data channels
            self._db.execute("ALTER TABLE sessions ADD COLUMN parent TEXT")

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
                    "bytes_out = ?, reason = ?, path = ? WHERE session = ?", batch.closed)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class Log(Protocol):
    """What the server needs of an event log: EventLog (a thread) or ProcessLog (a process)."""

    params: LogParams
    sensor: str
    dropped: int

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
        self.dropped = 0
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
                self.dropped += 1
                if self.dropped == 1:
                    _warn("event log queue full: dropping events (counted in scriptgen.server.stop)")
                return
            self._pending.append(event)
            self._pending_bytes += size
            if len(self._pending) == self.params.flush_events:  # once a batch, not once an event
                self._wake.set()

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
        raise NotImplementedError

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
            if events:
                self._write(events)
            if markers:
                self._settle()
            for marker in markers:
                marker.set()
            if closing:
                with self._lock:
                    if not self._pending:
                        return


class Sinks:
    """Every sink written with each batch, isolated from each other: one that raises is
    counted, reported once per streak of failures (`scriptgen.log.error` on the others, a
    line on stderr) and retried with the next batch."""

    def __init__(self, sinks: Sequence[Sink], sensor: str = "") -> None:
        self.sinks = list(sinks)
        self.sensor = sensor
        self.failures: dict[str, int] = {s.name: 0 for s in self.sinks}
        self._failing: set[str] = set()

    def write(self, batch: Batch) -> None:
        for sink in self.sinks:
            self._write_to(sink, batch)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # one sink failing to close must not keep the others open
                _warn(f"log sink {sink.name}: close failed: {type(exc).__name__}: {exc}")

    def _write_to(self, sink: Sink, batch: Batch) -> None:
        try:
            sink.write(batch)
        except Exception as exc:  # isolation: a failing sink is reported, the others go on
            self.failures[sink.name] += 1
            if sink.name in self._failing:
                return
            self._failing.add(sink.name)
            error = f"{type(exc).__name__}: {exc}"
            _warn(f"log sink {sink.name} failed: {error} (retried with every batch)")
            report = prepare([{
                "eventid": "scriptgen.log.error", "timestamp": timestamp(time.time()), "sensor": self.sensor,
                "message": f"log sink {sink.name} failed: {error}", "sink": sink.name, "error": error,
                "failures": self.failures[sink.name],
            }])
            for other in self.sinks:
                if other is not sink:
                    try:
                        other.write(report)
                    except Exception as exc2:  # both failing: stderr is all that is left
                        _warn(f"log sink {other.name} failed too: {type(exc2).__name__}: {exc2}")
            return
        if sink.name in self._failing:
            self._failing.discard(sink.name)
            _warn(f"log sink {sink.name} writes again")


class EventLog(Queue):
    """The event log written by a thread of this process: each batch prepared once and
    handed to every sink."""

    def __init__(self, sinks: Sequence[Sink], params: LogParams | None = None, sensor: str = "") -> None:
        super().__init__(params, sensor)
        self._sinks = Sinks(sinks, sensor)
        self.failures = self._sinks.failures
        self._thread.start()

    def _write(self, events: list[Item]) -> None:
        self._sinks.sensor = self.sensor
        self._sinks.write(prepare(events))

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

