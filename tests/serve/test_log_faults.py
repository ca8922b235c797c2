"""The event log when the disk fills or the writer dies (issue 35, points 5 and 6): never a
partial line, both outputs hold the same sessions or say what they lost
(`scriptgen.log.lost`), `events_dropped` counts it, and a killed writer process loses and
repeats nothing."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scriptgen.serve import EventLog, LogParams, ProcessLog, check_event, open_sinks
from scriptgen.serve.log import Log
from tests.serve.test_process import ROOT

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
PAYLOAD = bytes(range(256)) * 4  # 1 KiB of answer in each session: a few hundred sessions fill 1 MiB
FAULT_PARAMS = LogParams(flush_interval=0.01, max_backlog_bytes=24 << 10)


def session_records(i: int, payload: bytes = PAYLOAD) -> list[tuple[Any, ...]]:
    """The records of one whole session, as the server queues them."""
    head = ("t", f"{i:016x}", "tcp", "203.0.113.7", 40000 + i % 20000, "192.0.2.1", 21)
    t = 1738324800.0 + i
    return [
        ("scriptgen.session.connect", t, head, "new connection",
         {"state": 0, "model": "ftp.json", "model_port": 21, "model_version": "", "parent": None}),
        ("scriptgen.session.output", t + 0.1, head, "state 0: answer",
         {"data": payload, "size": len(payload), "truncated": False, "state": 0}),
        ("scriptgen.session.closed", t + 0.2, head, "closed",
         {"state": 0, "reason": "eof", "path": [0], "duration": 0.2, "inputs": 0, "unmatched": 0, "bytes_in": 0,
          "bytes_out": len(payload), "backend": None, "events_cut": 0, "bytes_cut": 0}),
    ]


def make_log(where: str, log_dir: Path, params: LogParams = FAULT_PARAMS) -> Log:
    if where == "thread":
        return EventLog(open_sinks(str(log_dir)), params, sensor="t")
    return ProcessLog(str(log_dir), params, sensor="t")


def scenario(log_dir: str, where: str, free: Callable[[Log], None], before: int = 300, after: int = 20) -> int:
    """`before` sessions into a log directory that fills up, `free()`, `after` more; the
    log's events_dropped at the end."""
    log = make_log(where, Path(log_dir))
    try:
        for i in range(before):
            for record in session_records(i):
                log.emit(record, len(PAYLOAD))
            if i % 5 == 4:
                log.flush()
        assert_whole_lines(Path(log_dir) / "events.jsonl")  # full, and yet no partial line
        free(log)
        for i in range(before, before + after):
            for record in session_records(i):
                log.emit(record, len(PAYLOAD))
        log.flush()
    finally:
        log.close()
    return log.dropped


def assert_whole_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n") or not raw, raw[-200:]
    events = [json.loads(line) for line in raw.decode().splitlines()]
    for e in events:
        assert check_event(e) == [], e
    return events


def check_outputs(log_dir: Path, dropped: int, recovered: range) -> list[dict[str, Any]]:
    """Both outputs hold the same events of every session, but for the sessions a
    `scriptgen.log.lost` event says the output lacking them lost; `dropped` is what those
    events count; the sessions in `recovered` are whole in both. The lost events."""
    in_json = assert_whole_lines(log_dir / "events.jsonl")
    with sqlite3.connect(log_dir / "events.sqlite") as db:
        in_sqlite = [json.loads(r[0]) for r in db.execute("SELECT json FROM events ORDER BY id")]
    lost = {(e["sink"], e["timestamp"]): e for e in in_json + in_sqlite if e["eventid"] == "scriptgen.log.lost"}
    lost_from = {"json": set(), "sqlite": set()}
    for e in lost.values():
        lost_from[e["sink"]] |= set(e["session_ids"])
    assert sum(e["events"] for e in lost.values()) == dropped

    def by_session(events: list[dict[str, Any]]) -> dict[str, Counter[str]]:
        held: dict[str, Counter[str]] = {}
        for e in events:
            if "session" in e:
                held.setdefault(e["session"], Counter())[json.dumps(e, sort_keys=True)] += 1
        return held

    json_held, sqlite_held = by_session(in_json), by_session(in_sqlite)
    for session in set(json_held) | set(sqlite_held):
        a, b = json_held.get(session, Counter()), sqlite_held.get(session, Counter())
        assert max(a.values(), default=1) == 1 and max(b.values(), default=1) == 1, session  # never twice
        if a - b:
            assert session in lost_from["sqlite"], session
        if b - a:
            assert session in lost_from["json"], session
    for i in recovered:
        session = f"{i:016x}"
        assert len(json_held[session]) == len(sqlite_held[session]) == 3, session
    return list(lost.values())


@pytest.fixture
def full_dir(tmp_path):
    """A log directory on a 1 MiB tmpfs, a 512 KiB filler file in it (removed to free space)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(logs)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    try:
        (logs / "filler").write_bytes(b"\0" * (512 << 10))
        yield logs
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


@pytest.mark.parametrize("where", ["thread", "process"])
def test_a_full_file_system(full_dir, where, capfd):
    dropped = scenario(str(full_dir), where, lambda log: (full_dir / "filler").unlink())
    assert dropped > 0
    lost = check_outputs(full_dir, dropped, range(300, 320))
    assert {e["sink"] for e in lost} <= {"json", "sqlite"} and lost
    err = capfd.readouterr().err  # the writer process's stderr too
    assert "giving up on batches" in err and "No space left on device" in err


_RLIMIT_SCRIPT = """
import os, resource, signal, sys
from tests.serve.test_log_faults import scenario
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
where, log_dir = sys.argv[1], sys.argv[2]
unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (160 << 10, unlimited[1]))

def free(log):
    resource.setrlimit(resource.RLIMIT_FSIZE, unlimited)
    if where == "process":  # the writer process has a limit of its own
        resource.prlimit(log._child.pid, resource.RLIMIT_FSIZE, unlimited)

print(scenario(log_dir, where, free))
"""


@pytest.mark.parametrize("where", ["thread", "process"])
def test_a_file_size_limit(tmp_path, where):
    logs = tmp_path / "logs"
    done = subprocess.run([sys.executable, "-c", _RLIMIT_SCRIPT, where, str(logs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    dropped = int(done.stdout)
    assert dropped > 0 and "File too large" in done.stderr
    check_outputs(logs, dropped, range(300, 320))
    assert os.path.getsize(logs / "events.jsonl") > 160 << 10  # written again once the limit was lifted


def test_a_batch_that_fails_part_way_is_cut_back_to_the_last_whole_line(tmp_path):
    from scriptgen.serve import JsonLinesSink
    from scriptgen.serve.log import prepare

    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"half":')  # a crash's half line: cut when the file is opened
    sink = JsonLinesSink(str(path))
    assert path.read_bytes() == b""
    sink.write(prepare(session_records(0)))
    whole = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(whole) + 100, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            sink.write(prepare(session_records(1)))  # a short write, then EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_bytes() == whole
    sink.write(prepare(session_records(2)))
    sink.close()
    assert [e["session"] for e in assert_whole_lines(path)] == [f"{i:016x}" for i in (0, 0, 0, 2, 2, 2)]


# -- the writer process killed -----------------------------------------------------------


def test_the_writer_killed_while_sessions_end_loses_and_repeats_nothing(tmp_path, capfd):
    log = ProcessLog(str(tmp_path), LogParams(flush_interval=0.005, flush_events=30), sensor="t")
    first = log._child  # noqa: SLF001 - the failure under test
    assert first is not None
    written = threading.Event()

    def kill_when_under_way() -> None:
        # Once some sessions are in the files, the child dies with batches in flight.
        while not written.is_set():
            if (tmp_path / "events.jsonl").stat().st_size > 200_000:
                break
            written.wait(0.001)
        first.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_when_under_way)
    killer.start()
    try:
        for i in range(2000):
            for record in session_records(i, PAYLOAD[:100]):
                log.emit(record, 100)
        log.flush()
        written.set()
        killer.join()
    finally:
        log.close()
    assert first.returncode == -signal.SIGKILL
    assert "writing the log from the server process" in capfd.readouterr().err
    assert log.dropped == 0
    in_json = assert_whole_lines(tmp_path / "events.jsonl")
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        in_sqlite = [json.loads(r[0]) for r in db.execute("SELECT json FROM events ORDER BY id")]
        rows = db.execute("SELECT COUNT(*), COUNT(end) FROM sessions").fetchone()
    expected = Counter((f"{i:016x}", kind) for i in range(2000) for kind in ("connect", "output", "closed"))
    for events in (in_json, in_sqlite):
        assert Counter((e["session"], e["eventid"].rsplit(".", 1)[1]) for e in events) == expected
    assert rows == (2000, 2000)


@pytest.mark.parametrize("how", ["json and sqlite", "json only", "neither"])
def test_a_batch_the_killed_writer_wrote_but_did_not_acknowledge_is_not_written_twice(tmp_path, how):
    """The child dies between writing a batch and saying so: the worst moment, made on purpose."""
    from scriptgen.serve.log import JsonLinesSink, SqliteSink, Sinks, prepare

    log = ProcessLog(str(tmp_path), LogParams(flush_interval=60.0), sensor="t")
    try:
        for record in session_records(0):
            log.emit(record)
        log.flush()  # batch 1: written and acknowledged
        child = log._child  # noqa: SLF001
        assert child is not None
        child.kill()
        child.wait()
        # What the child did with batch 2 before it died: wrote it to both, to JSON lines only, or to neither.
        items = session_records(1)
        log._seq += 1  # noqa: SLF001 - the batch as the forwarder would have sent it
        log._unsettled.append((log._seq, "t", items))  # noqa: SLF001
        sinks = {"json and sqlite": [JsonLinesSink(str(tmp_path / "events.jsonl")),
                                     SqliteSink(str(tmp_path / "events.sqlite"))],
                 "json only": [JsonLinesSink(str(tmp_path / "events.jsonl"))], "neither": []}[how]
        by_child = Sinks(sinks)
        by_child.write(prepare(items, log._writer, log._seq))  # noqa: SLF001
        by_child.close()
        for record in session_records(2):
            log.emit(record)
        log.flush()  # batch 3: the forwarder finds the child gone, writes 2 and 3 itself
    finally:
        log.close()
    in_json = assert_whole_lines(tmp_path / "events.jsonl")
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        in_sqlite = [json.loads(r[0]) for r in db.execute("SELECT json FROM events ORDER BY id")]
    for events in (in_json, in_sqlite):
        assert [e["session"][-1] for e in events] == list("000111222")
