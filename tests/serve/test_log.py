"""The event log: sinks isolated from each other, batching, nothing queued is lost at
close, the queue bound, SQLite, the catalogue against docs/events.md, `sessions-log`."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from scriptgen.errors import ServeError
from scriptgen.serve import (
    CATALOGUE,
    COMMON_KEYS,
    SESSION_KEYS,
    EventLog,
    JsonLinesSink,
    LogParams,
    ServeError,
    SqliteSink,
    check_event,
    open_sinks,
    recent_sessions,
)
from tests.serve.cli import main as cli_main
from tests.serve.harness import (
    BANNER,
    ServerThread,
    connect,
    listener,
    read_answer,
    read_events,
    wait_closed,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def event(i: int, eventid: str = "scriptgen.server.error") -> dict:
    return {"eventid": eventid, "timestamp": "2025-01-01T00:00:00.000000Z", "sensor": "t", "message": str(i),
            "error": f"e{i}"}


class Exploding:
    name = "boom"

    def __init__(self) -> None:
        self.calls = 0

    def write(self, batch) -> None:
        self.calls += 1
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        raise OSError("cannot close either")


@pytest.mark.parametrize("failing_first", [True, False])
def test_one_sink_failing_never_stops_the_other(tmp_path, capsys, failing_first):
    good = JsonLinesSink(str(tmp_path / "events.jsonl"))
    bad = Exploding()
    log = EventLog([bad, good] if failing_first else [good, bad], LogParams(flush_interval=0.01))
    for i in range(5):
        log.emit(event(i))
    log.flush()
    for i in range(5, 10):
        log.emit(event(i))
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["message"] for e in lines if e["eventid"] == "scriptgen.server.error"] == [str(i) for i in range(10)]
    (report,) = [e for e in lines if e["eventid"] == "scriptgen.log.error"]  # once per streak
    assert report["sink"] == "boom" and "No space left" in report["error"] and report["failures"] == 1
    assert log.failures["boom"] == bad.calls >= 2
    err = capsys.readouterr().err
    assert "log sink boom failed" in err and "close failed" in err


def test_the_sqlite_sink_failing_does_not_stop_json_lines_in_a_running_server(tmp_path):
    json_sink = JsonLinesSink(str(tmp_path / "events.jsonl"))
    db = SqliteSink(str(tmp_path / "events.sqlite"))
    db._db.close()  # every write now raises sqlite3.ProgrammingError
    with ServerThread([listener("ftp")], tmp_path, sinks=[db, json_sink]) as srv:
        with connect(srv.addr()) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
    events = srv.events()
    ids = [e["eventid"] for e in events]
    assert "scriptgen.log.error" in ids and "scriptgen.session.closed" in ids
    # What SQLite never wrote is given up at close, and said in the output that works.
    assert ids[-2:] == ["scriptgen.server.stop", "scriptgen.log.lost"]
    lost = events[-1]
    assert check_event(lost) == [] and lost["sink"] == "sqlite" and lost["events"] == len(events) - 2
    assert lost["session_ids"] == sorted({e["session"] for e in events if "session" in e})


def test_batches_and_nothing_queued_is_lost_at_close(tmp_path):
    sink = JsonLinesSink(str(tmp_path / "events.jsonl"))
    log = EventLog([sink], LogParams(flush_interval=60.0, flush_events=100))
    for i in range(250):
        log.emit(event(i))
    time.sleep(0.2)
    written = len((tmp_path / "events.jsonl").read_text().splitlines())
    assert written in (100, 200, 250) and written >= 200  # two full batches went at once
    for i in range(250, 1000):
        log.emit(event(i))
    log.close()
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 1000


def test_a_full_queue_drops_and_counts(tmp_path, capsys):
    gate = threading.Event()

    class Slow:
        name = "slow"

        def write(self, batch) -> None:
            gate.wait(5)

        def close(self) -> None:
            return None

    log = EventLog([Slow()], LogParams(flush_interval=0.01, max_queued_events=10))
    log.emit(event(0))
    time.sleep(0.1)  # the writer now holds event 0, blocked
    for i in range(1, 30):
        log.emit(event(i))
    assert log.dropped == 19
    gate.set()
    log.close()
    assert "dropping events" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["thread", "process"])
def test_a_session_record_becomes_its_event_in_the_writer(tmp_path, where):
    from scriptgen.serve import ProcessLog

    log = EventLog(open_sinks(str(tmp_path))) if where == "thread" else ProcessLog(str(tmp_path))
    head = ("hp1", "6bcc157c00000001", "tcp", "203.0.113.7", 53266, "192.0.2.1", 21)
    log.emit(("scriptgen.session.input", 1738324800.25, head, "state 0 -> 1: input",
              {"data": b"USER dave\r\n", "size": 11, "truncated": False, "state": 1, "source": 0, "transition": 0}))
    log.emit(("scriptgen.session.output", 1738324800.5, head, "state 1: answer",
              {"data": b"A" * 50, "size": 70, "truncated": True, "state": 1}))
    log.close()
    first, second = read_events(tmp_path)
    expected = {  # docs/events.md's example, key for key and in its order
        "eventid": "scriptgen.session.input", "timestamp": "2025-01-31T12:00:00.250000Z", "sensor": "hp1",
        "message": "state 0 -> 1: input b'USER dave\\r\\n'", "session": "6bcc157c00000001", "transport": "tcp",
        "src_ip": "203.0.113.7", "src_port": 53266, "dst_ip": "192.0.2.1", "dst_port": 21,
        "data": "VVNFUiBkYXZlDQo=", "size": 11, "truncated": False, "state": 1, "source": 0, "transition": 0}
    assert first == expected and list(first) == list(expected)
    assert second["message"] == f"state 1: answer {b'A' * 48!r}..." and second["data"] == "QUFB" * 16 + "QUE="
    assert check_event(first) == [] and check_event(second) == []
    rows = sqlite3.connect(tmp_path / "events.sqlite").execute("SELECT json FROM events ORDER BY id").fetchall()
    assert [json.loads(r[0]) for r in rows] == [first, second]


def test_a_broken_record_is_reported_in_its_place_and_the_others_are_written(tmp_path, capsys):
    log = EventLog(open_sinks(str(tmp_path)))
    log.emit(event(1))
    log.emit(("scriptgen.session.output", 1738324800.5, ("s",), "state 1: answer", {"data": b"x"}))  # no size
    log.emit(event(2))
    log.close()
    first, broken, last = read_events(tmp_path)
    assert (first["message"], last["message"]) == ("1", "2") and broken["eventid"] == "scriptgen.log.error"
    assert check_event(broken) == [] and "KeyError" in broken["error"]
    assert "a session record cannot be written" in capsys.readouterr().err


def test_sqlite_is_wal_and_holds_sessions_and_events(tmp_path):
    with ServerThread([listener("ftp")], tmp_path) as srv:
        with connect(srv.addr()) as sock:
            read_answer(sock, expect=len(BANNER))
            sock.sendall(b"USER dave\r\nQUIT\r\n")
            assert wait_closed(sock)
        with connect(srv.addr()) as sock:
            read_answer(sock, expect=len(BANNER))
    db = sqlite3.connect(tmp_path / "events.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = db.execute("SELECT json FROM events ORDER BY id").fetchall()
    assert [json.loads(r[0]) for r in rows] == read_events(tmp_path)
    sessions = recent_sessions(str(tmp_path / "events.sqlite"))
    assert len(sessions) == 2
    first = sessions[1]
    assert (first.reason, first.inputs, first.path) == ("server", 2, [0, 1, 5])
    assert first.model == "ftp.json" and first.transport == "tcp" and first.duration is not None


def test_docs_list_exactly_the_catalogue():
    text = DOCS.read_text()

    def keys(section: str) -> set[str]:
        return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))

    common = text.split("## Keys of every event", 1)[1].split("\n## ", 1)[0]
    session = text.split("## Keys of every session event", 1)[1].split("\n## ", 1)[0]
    assert keys(common) == set(COMMON_KEYS)
    assert keys(session) == set(SESSION_KEYS)
    sections = re.split(r"^### `([a-z_.]+)`\s*$", text.split("## The events", 1)[1], flags=re.M)[1:]
    documented = dict(zip(sections[::2], sections[1::2]))
    assert list(documented) == list(CATALOGUE)
    for eventid, body in documented.items():
        spec = CATALOGUE[eventid]
        assert keys(body) == set(spec.keys), eventid
        assert ("Session keys, and:" in body) == spec.session, eventid


def test_sessions_log_command(tmp_path, capsys):
    with ServerThread([listener("ftp")], tmp_path) as srv:
        with connect(srv.addr()) as sock:
            read_answer(sock, expect=len(BANNER))
            sock.sendall(b"USER dave\r\n")
            read_answer(sock)
            sock.sendall(b"\x00\x01garbage\r\n")
            read_answer(sock, silence=0.8)
    assert cli_main(["sessions-log", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["start", "duration", "peer", "port", "inputs", "unmatched", "closed", "path"]
    row = out[1].split()
    assert row[3].startswith("127.0.0.1:") and row[4] == f"tcp/{srv.addr()[1]}"
    assert row[5:] == ["2", "1", "eof", "0>1"]
    assert cli_main(["sessions-log", str(tmp_path / "events.sqlite"), "--json", "--limit", "1"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["path"] == [0, 1] and record["unmatched"] == 1 and record["src_ip"] == "127.0.0.1"
    assert cli_main(["sessions-log", str(tmp_path / "none.sqlite")]) == 3
    assert "no such log database" in capsys.readouterr().err
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ServeError):
        recent_sessions(str(tmp_path / "junk.sqlite"))


# -- the log written by a process of its own (scriptgen serve's default) ------------------


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_process_log_writes_both_sinks_and_flush_waits_for_them(tmp_path):
    from scriptgen.serve import ProcessLog

    log = ProcessLog(str(tmp_path), LogParams(flush_interval=60.0), sensor="s1")
    try:
        for i in range(1000):
            log.emit(event(i))
        log.flush()  # long before the minute of flush_interval: flush must push it through
        assert len(_lines(tmp_path / "events.jsonl")) == 1000
        with sqlite3.connect(tmp_path / "events.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (1000,)
        log.emit(event(1000))
    finally:
        log.close()
    assert [e["message"] for e in _lines(tmp_path / "events.jsonl")] == [str(i) for i in range(1001)]


@pytest.mark.parametrize("how", ["move", "copytruncate"])
def test_a_rotated_json_lines_file_is_followed_and_no_line_is_lost(tmp_path, how):
    """logrotate's two ways, while the writer process runs: the file moved away (a new
    one is begun at the same path) or copied and truncated (appended at its new end)."""
    from scriptgen.serve import ProcessLog

    path = tmp_path / "events.jsonl"
    log = ProcessLog(str(tmp_path), LogParams(flush_interval=60.0), sensor="s1")
    try:
        for i in range(500):
            log.emit(event(i))
        log.flush()
        rotated = tmp_path / "events.jsonl.1"
        if how == "move":
            path.rename(rotated)
        else:
            rotated.write_bytes(path.read_bytes())
            with open(path, "r+b") as f:
                f.truncate(0)
        for i in range(500, 800):
            log.emit(event(i))
        log.flush()
    finally:
        log.close()
    old, new = _lines(rotated), _lines(path)
    assert [e["message"] for e in old + new] == [str(i) for i in range(800)]
    assert path.read_bytes().startswith(b"{")  # appended at the start, no hole of NULs


def test_process_log_loses_nothing_when_its_process_dies(tmp_path, capsys):
    from scriptgen.serve import ProcessLog

    log = ProcessLog(str(tmp_path), LogParams(flush_interval=0.01))
    try:
        for i in range(100):
            log.emit(event(i))
        log.flush()
        log._child.kill()  # noqa: SLF001 - the failure under test
        log._child.wait()  # noqa: SLF001
        head = ("s", "6bcc157c00000001", "tcp", "203.0.113.7", 53266, "192.0.2.1", 21)
        for i in range(100, 300):  # session records too: the server process now makes their events
            log.emit(event(i) if i % 2 else ("scriptgen.session.output", 1738324800.5, head, str(i),
                                             {"data": b"%d" % i, "size": len(b"%d" % i), "truncated": False,
                                              "state": 1}))
        log.flush()
    finally:
        log.close()
    lines = _lines(tmp_path / "events.jsonl")
    assert [e["message"].split()[0] for e in lines] == [str(i) for i in range(300)]
    assert lines[100]["session"] == "6bcc157c00000001" and lines[100]["data"] == "MTAw" and check_event(lines[100]) == []
    assert "writing the log from the server process" in capsys.readouterr().err


@pytest.mark.parametrize("json_lines, sqlite", [(True, False), (False, True)])
def test_process_log_writes_only_the_sinks_asked_for(tmp_path, json_lines, sqlite):
    from scriptgen.serve import ProcessLog

    log = ProcessLog(str(tmp_path), json_lines=json_lines, sqlite=sqlite)  # --no-sqlite, --no-json
    log.emit(event(1))
    log.close()
    assert (tmp_path / "events.jsonl").exists() is json_lines
    assert (tmp_path / "events.sqlite").exists() is sqlite
    if json_lines:
        assert [e["message"] for e in _lines(tmp_path / "events.jsonl")] == ["1"]
    else:
        rows = sqlite3.connect(tmp_path / "events.sqlite").execute("SELECT json FROM events").fetchall()
        assert [json.loads(r[0])["message"] for r in rows] == ["1"]


def test_process_log_refuses_a_log_dir_it_cannot_write(tmp_path):
    from scriptgen.serve import ProcessLog

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ServeError, match="cannot create it"):
        ProcessLog(str(blocker / "logs"))
