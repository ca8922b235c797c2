"""Serve stage: reading the session log back. A log database (events.sqlite, written by
log.SqliteSink) in; the most recent sessions out, newest first, as `SessionRecord`s.

The database is opened read-only, so a running server can keep writing it (WAL mode).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scriptgen.errors import ServeError
from scriptgen.serve.log import SQLITE_NAME

__all__ = ["SessionRecord", "recent_sessions"]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One row of the `sessions` table (docs/events.md). `end` is None while open."""

    session: str
    transport: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    model: str
    model_port: int
    sensor: str
    start: str
    end: str | None
    duration: float | None
    inputs: int | None
    unmatched: int | None
    bytes_in: int | None
    bytes_out: int | None
    reason: str | None
    path: list[int] | None
    parent: str | None = None  # the session that announced this data channel
    backend: str | None = None  # the backend the session was handed over to

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = ("session, transport, src_ip, src_port, dst_ip, dst_port, model, model_port, sensor, start, end, "
            "duration, inputs, unmatched, bytes_in, bytes_out, reason, path")


def recent_sessions(path: str, limit: int = 20) -> list[SessionRecord]:
    """The `limit` most recent sessions of the log database at `path` (or in the log
    directory `path`), newest first."""
    if os.path.isdir(path):
        path = os.path.join(path, SQLITE_NAME)
    if not os.path.isfile(path):
        raise ServeError(f"{path}: no such log database")
    try:
        db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            # A database written before data channels (backends) has no parent (backend) column.
            have = {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
            extra = ", ".join(c if c in have else "NULL" for c in ("parent", "backend"))
            rows = db.execute(f"SELECT {_COLUMNS}, {extra} FROM sessions ORDER BY start DESC, rowid DESC LIMIT ?",
                              (limit,)).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ServeError(f"{path}: not a scriptgen log database ({exc})") from None
    records = []
    for row in rows:
        values = list(row)
        values[-3] = json.loads(values[-3]) if values[-3] is not None else None
        records.append(SessionRecord(*values))
    return records
