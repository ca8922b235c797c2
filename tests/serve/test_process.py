"""`scriptgen serve` as a process: startup lines, SIGTERM drain, privilege drop, errors."""

from __future__ import annotations

import os
import pwd
import shutil
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.serve.cli import CLI
from tests.serve.harness import BANNER, connect, read_answer, read_events, wait_closed, write_model

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"listening on (tcp|udp) 127\.0\.0\.1:(\d+) \(model (.+) port (\d+)\)")


def serve(args: list[str], lines: int = 1) -> tuple[subprocess.Popen[str], list[re.Match[str]]]:
    """Start `scriptgen serve ARGS`; its startup lines (one per listener), parsed."""
    proc = subprocess.Popen([*CLI, "serve", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    found = []
    while len(found) < lines:
        line = proc.stdout.readline()
        match = LINE.fullmatch(line.strip())
        if match is None:
            proc.kill()
            raise AssertionError(f"unexpected output {line!r}; stderr: {proc.communicate()[1]}")
        found.append(match)
    return proc, found


def test_sigterm_drains_accepted_connections_and_flushes_the_log(tmp_path):
    model = write_model("ftp", tmp_path / "ftp.json")
    logs = tmp_path / "logs"
    proc, (line,) = serve([str(model), "--port-map", "21:0", "--log-dir", str(logs), "--grace", "2",
                           "--sensor", "s1", "--request-timeout", "7", "--max-per-source", "9"])
    assert line.group(1, 3, 4) == ("tcp", str(model), "21")
    addr = ("127.0.0.1", int(line.group(2)))
    talker, idler = connect(addr), connect(addr)
    for sock in (talker, idler):
        assert read_answer(sock, expect=len(BANNER))[0] == BANNER
    talker.sendall(b"USER da")  # half a request when the signal comes
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(addr, timeout=2)
    talker.sendall(b"ve\r\n")
    assert read_answer(talker)[0] == b"331 Password required for dave.\r\n"
    talker.sendall(b"QUIT\r\n")
    assert read_answer(talker) == (b"221 Bye.\r\n", True)
    started = time.monotonic()
    assert wait_closed(idler, timeout=5)  # at the end of the grace period
    assert time.monotonic() - started < 2.5
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM)" in err and re.search(r"models ready in \d+\.\ds", err), err
    assert "reading" not in err  # a small model loads at once: no progress line
    assert "Warning" not in err and "Traceback" not in err, err  # the log writer's start included
    events = read_events(logs)
    closed = {e["src_port"]: e["reason"] for e in events if e["eventid"] == "scriptgen.session.closed"}
    assert closed == {talker.getsockname()[1]: "server", idler.getsockname()[1]: "shutdown"}
    params = events[0]["params"]
    assert (params["request_timeout"], params["max_per_source"], params["grace"]) == (7.0, 9, 2.0)
    stop = events[-1]
    assert stop["eventid"] == "scriptgen.server.stop" and stop["reason"] == "SIGTERM"
    assert (stop["sessions"], stop["forced"]) == (2, 1) and stop["sensor"] == "s1"
    db = sqlite3.connect(logs / "events.sqlite")
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == len(events)
    assert db.execute("SELECT count(*) FROM sessions WHERE end IS NOT NULL").fetchone()[0] == 2
    talker.close()
    idler.close()


def test_sigint_with_nothing_open_stops_at_once(tmp_path):
    model = write_model("udp", tmp_path / "dns.json")
    with model.open("a") as f:  # as big as a model of many captures, to the byte count
        f.write(" " * 1_000_000)
    proc, (line,) = serve([str(model), "--port-map", "53:0", "--log-dir", str(tmp_path / "logs")])
    assert line.group(1) == "udp"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(2)
        u.sendto(b"Q\x01\x01\x01\x01", ("127.0.0.1", int(line.group(2))))
        assert u.recvfrom(100)[0] == b"A\x01\x01\x01\x01"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and time.monotonic() - started < 2
    assert "reading 1 model(s) (1.0 MB) and compiling" in err.splitlines()[0], err
    closed = [e for e in read_events(tmp_path / "logs") if e["eventid"] == "scriptgen.session.closed"]
    assert [e["reason"] for e in closed] == ["shutdown"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_user_drops_privileges_after_binding(tmp_path):
    model = write_model("ftp", tmp_path / "ftp.json")
    base = Path(tempfile.mkdtemp(prefix="scriptgen-user-", dir="/tmp"))
    base.chmod(0o755)
    logs = base / "logs"
    nobody = pwd.getpwnam("nobody")
    proc, (line,) = serve([str(model), "--port-map", "21:0", "--log-dir", str(logs), "--user", "nobody"])
    status = Path(f"/proc/{proc.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert set(uids) == {str(nobody.pw_uid)}
    with connect(("127.0.0.1", int(line.group(2)))) as sock:
        assert read_answer(sock, expect=len(BANNER))[0] == BANNER
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert (logs / "events.jsonl").stat().st_uid == nobody.pw_uid
    assert read_events(logs)[-1]["eventid"] == "scriptgen.server.stop"


def test_errors_are_one_line_and_an_exit_code(tmp_path):
    model = write_model("ftp", tmp_path / "ftp.json")
    r = subprocess.run([*CLI, "serve", str(tmp_path / "none.json")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3 and r.stderr.startswith("scriptgen: error: ")
    r = subprocess.run([*CLI, "serve", str(model), str(model), "--log-dir", str(tmp_path / "l")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 3 and "remap one with --port-map" in r.stderr
    r = subprocess.run([*CLI, "serve", str(model), "--port-map", "21-2121"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "MODEL_PORT:LISTEN_PORT" in r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*CLI, "serve", str(model), "--port-map", f"21:{port}", "--log-dir", str(tmp_path / "l")],
                           cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert r.returncode == 3 and "cannot listen" in r.stderr, r.stderr


def test_help_explains_every_option():
    out = subprocess.run([*CLI, "serve", "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for option in ("--bind", "--port-map", "--log-dir", "--user", "--idle-timeout", "--max-session",
                   "--max-buffered", "--max-connections", "--max-per-source", "--request-timeout", "--grace", "--sensor", "MODEL", "Exit codes"):
        assert option in out
    out = subprocess.run([*CLI, "sessions-log", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for option in ("--limit", "--json", "DB"):
        assert option in out


def test_sigterm_stops_a_server_whose_model_was_built_to_be_slow(tmp_path):
    """The issue's hostile model (four binary regions between NULs) held the loop for
    seconds per request, and SIGTERM waited for it; matching is bounded now."""
    from tests.emulate.test_hostile_models import _model, _nul_separated

    model = tmp_path / "slow.json"
    model.write_bytes(_model([_nul_separated(4, 1000)]))
    proc, (line,) = serve([str(model), "--port-map", "21:0", "--log-dir", str(tmp_path / "logs"), "--grace", "1"])
    addr = ("127.0.0.1", int(line.group(2)))
    socks = [connect(addr) for _ in range(4)]
    for sock in socks:
        sock.sendall(b"A\0" * 2000)  # what took the old matcher minutes
    time.sleep(1.0)  # past the engine's idle gap: each is being matched
    with connect(addr) as late:  # the loop still answers a newcomer
        assert read_answer(late, expect=len(b"220 ready\r\n"))[0] == b"220 ready\r\n"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 5
    for sock in socks:
        sock.close()


def test_sigterm_to_the_whole_process_group_still_writes_the_log_out(tmp_path):
    """systemd (and a shell's ^C) signal every process of the group: the log writer must
    outlive the signal until the server has handed it everything."""
    model = write_model("ftp", tmp_path / "ftp.json")
    logs = tmp_path / "logs"
    proc = subprocess.Popen([*CLI, "serve", str(model), "--port-map", "21:0", "--log-dir", str(logs)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    match = LINE.fullmatch(proc.stdout.readline().strip())
    assert match is not None
    with connect(("127.0.0.1", int(match.group(2)))) as sock:
        assert read_answer(sock, expect=len(BANNER))[0] == BANNER
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "writer process" not in err, err  # it was not killed under the server
    events = read_events(logs)
    assert [e["eventid"] for e in events][-2:] == ["scriptgen.session.closed", "scriptgen.server.stop"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_shipped_systemd_unit_verifies(tmp_path):
    """examples/deploy/scriptgen.service, with this install's scriptgen in ExecStart:
    systemd-analyze prints nothing when every line is understood and the command exists."""
    unit = (ROOT / "examples" / "deploy" / "scriptgen.service").read_text()
    here = Path(sys.executable).parent / "scriptgen"
    assert "/opt/scriptgen/.venv/bin/scriptgen serve" in unit
    (tmp_path / "scriptgen.service").write_text(unit.replace("/opt/scriptgen/.venv/bin/scriptgen", str(here)))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "scriptgen.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
