"""`scriptgen serve` swaps models without dropping sessions: SIGHUP reloads the model files,
`--refine N` learns again from the captures and the recordings of handed-over sessions."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from scriptgen.learn import learn
from scriptgen.model import Sender, Transport
from scriptgen.modelfile import save
from scriptgen.params import LearnParams
from scriptgen.serve.record import Recorder
from tests.learn.sessions import session
from tests.serve.cli import CLI
from tests.serve.harness import BANNER, connect, read_answer, read_events, wait_closed
from tests.serve.test_backend import _talk, backend
from tests.serve.test_process import ROOT, serve

USERS = (b"alice", b"bob", b"carol")


def _sessions(banner: bytes) -> list:
    return [session((b"USER " + n + b"\r\n", b"331 Password required for " + n + b".\r\n"),
                    (b"QUIT\r\n", b"221 Bye.\r\n"), banner=banner, closed_by=Sender.SERVER) for n in USERS]


def _stderr_until(proc: subprocess.Popen[str], needle: str, timeout: float = 60.0) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {needle!r} on stderr: {seen}")


def test_sighup_serves_new_sessions_with_the_new_model_and_keeps_open_ones(tmp_path):
    model = tmp_path / "ftp.json"
    save(learn(_sessions(BANNER), LearnParams(jobs=1)), str(model))
    proc, (line,) = serve([str(model), "--port-map", "21:0", "--log-dir", str(tmp_path / "logs")])
    addr = ("127.0.0.1", int(line.group(2)))
    try:
        old = connect(addr)
        assert read_answer(old, expect=len(BANNER))[0] == BANNER
        save(learn(_sessions(b"220 refreshed\r\n"), LearnParams(jobs=1)), str(model))
        proc.send_signal(signal.SIGHUP)
        assert "1 listener(s) now serve" in _stderr_until(proc, "reloaded (SIGHUP)")
        with connect(addr) as new:
            assert read_answer(new, expect=15)[0] == b"220 refreshed\r\n"
        _talk(old, b"USER bob\r\n", b"331 Password required for bob.\r\n")  # on the model it began with
        old.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    events = read_events(tmp_path / "logs")
    (reload,) = [e for e in events if e["eventid"] == "scriptgen.server.reload"]
    versions = [e["model_version"] for e in events if e["eventid"] == "scriptgen.session.connect"]
    assert len(set(versions)) == 2 and versions[1] == reload["models"][str(model)]


def test_a_broken_model_file_on_sighup_keeps_the_models_served(tmp_path):
    model = tmp_path / "ftp.json"
    save(learn(_sessions(BANNER), LearnParams(jobs=1)), str(model))
    proc, (line,) = serve([str(model), "--port-map", "21:0", "--log-dir", str(tmp_path / "logs")])
    try:
        model.write_text("{not json")
        proc.send_signal(signal.SIGHUP)
        _stderr_until(proc, "reload (SIGHUP) failed")
        with connect(("127.0.0.1", int(line.group(2)))) as sock:
            assert read_answer(sock, expect=len(BANNER))[0] == BANNER
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_refine_learns_what_the_backend_answered_and_serves_it(tmp_path):
    capture = tmp_path / "capture"
    with Recorder(str(capture)) as rec:  # the model's capture, as a real one would be
        t = 1_700_000_000.0
        for i, s in enumerate(_sessions(BANNER)):
            r = rec.open(Transport.TCP, ("192.0.2.7", 40000 + i), ("192.0.2.1", 21), t)
            for m in s.messages:
                t += 0.01
                (r.client_bytes if m.sender == Sender.CLIENT else r.server_bytes)(m.data, t)
            r.close(Sender.SERVER, t + 0.01)
    model = tmp_path / "ftp.json"
    learned = subprocess.run([*CLI, "learn", str(capture), "-o", str(model)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert learned.returncode == 0, learned.stderr
    with backend() as real:
        host, port = real.server_address
        proc, (line,) = serve([str(model), "--port-map", "21:0", "--log-dir", str(tmp_path / "logs"),
                               "--backend", f"21={host}:{port}", "--record", str(tmp_path / "rec"),
                               "--refine", "1"])
        addr = ("127.0.0.1", int(line.group(2)))
        try:
            with connect(addr) as sock:
                assert read_answer(sock, expect=len(BANNER))[0] == BANNER
                _talk(sock, b"USER dave\r\n", b"331 Password required for dave.\r\n")
                _talk(sock, b"SIZE report.pdf\r\n", b"213 4242\r\n")  # handed over: the model never saw SIZE
                _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
                assert wait_closed(sock)
            _stderr_until(proc, "reloaded (refine)", timeout=120)
            backend_heard = len(real.conversations)
            with connect(addr) as sock:  # the refined model knows SIZE now
                assert read_answer(sock, expect=len(BANNER))[0] == BANNER
                _talk(sock, b"USER erin\r\n", b"331 Password required for erin.\r\n")
                _talk(sock, b"SIZE report.pdf\r\n", b"213 4242\r\n")
                _talk(sock, b"QUIT\r\n", b"221 Bye.\r\n")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
    events = read_events(tmp_path / "logs")
    handovers = [e["session"] for e in events if e["eventid"] == "scriptgen.session.handover"]
    assert len(handovers) == 1  # the second session was the refined model's alone
    assert (tmp_path / "rec" / "refined-ftp.json").is_file() and backend_heard >= 1
