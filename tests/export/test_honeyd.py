"""The exported honeyd script, run exactly as honeyd runs it: a fresh process per
connection, started without a shell with `$ipsrc $sport $ipdst $dport`, stdin and stdout
on one end of a socketpair (a datagram socketpair for UDP), stderr as its log. Its answers
must be byte-identical to the in-process engine's (the conformance cases)."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scriptgen.export import honeyd_script
from scriptgen.learn import learn
from scriptgen.model import Transport
from scriptgen.modelfile import port_doc
from scriptgen.params import LearnParams

from tests.emulate.script import run
from tests.emulate.test_engine import BANNER, ftp_sessions, machine
from tests.learn.sessions import session


HOSTILE = [b'"""; import os; os.system("id")', b"'''\\\x00\xff\xfe\"\\n\r\n", b"\x00" * 8, bytes(range(256))]


def _hostile_sessions():
    return [session((b"GET " + h + b"\r\n", b"200 " + h + b" OK\r\n"), banner=b'220 """\\\x00\xff ready\r\n', port=8080)
            for h in HOSTILE]


def _script(tmp_path: Path, sessions, **kw) -> tuple[Path, object]:
    (port,) = learn(sessions, LearnParams(jobs=1, **kw)).ports
    doc = port_doc(port)
    path = tmp_path / "service.py"
    path.write_text(honeyd_script(doc))
    return path, machine(sessions, **kw)


def _run_tcp(script: Path, requests: list[bytes]) -> tuple[list[bytes], str]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, str(script), "10.1.2.3", "40001", "10.9.9.9", "21"],
                            stdin=theirs, stdout=theirs, stderr=subprocess.PIPE)
    theirs.close()
    ours.settimeout(5)
    answers = [_read_quiet(ours)]
    for request in requests:
        ours.sendall(request)
        answers.append(_read_quiet(ours))
    ours.shutdown(socket.SHUT_WR)
    _read_quiet(ours, until_eof=True)
    ours.close()
    log = proc.communicate(timeout=10)[1].decode()
    assert proc.returncode == 0, log
    return answers, log


def _read_quiet(sock: socket.socket, quiet: float = 0.4, until_eof: bool = False) -> bytes:
    got = b""
    sock.settimeout(quiet if not until_eof else 5)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return got
        if not chunk:
            return got
        got += chunk


CASES = [
    [b"USER dave\r\n", b"PASS secret\r\n", b"QUIT\r\n"],
    [b"SYST\r\n", b"QUIT\r\n"],
    [b"SYST foo\r\n", b"\x00\x01garbage\xff\r\n", b"QUIT\r\n"],
]


@pytest.mark.parametrize("requests", CASES, ids=["user", "syst", "fallbacks"])
def test_tcp_script_answers_like_the_engine(tmp_path, requests):
    script, m = _script(tmp_path, ftp_sessions())
    answers, log = _run_tcp(script, requests)
    expected = run(m, requests)
    assert answers[: len(expected.answers)] == expected.answers
    assert "10.1.2.3 40001 10.9.9.9 21: connect" in log and "closed reason=" in log


def test_udp_script_answers_datagram_by_datagram(tmp_path):
    sessions = [session((b"Q" + bytes([i]) * 4, b"A" + bytes([i]) * 4), port=53, transport=Transport.UDP)
                for i in range(4)]
    sessions.append(session((b"", b"pong"), port=53, transport=Transport.UDP))  # nmap -sU's empty probe
    script, m = _script(tmp_path, sessions, macro=0.0, micro=0.0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    proc = subprocess.Popen([sys.executable, str(script), "10.1.2.3", "5353", "10.9.9.9", "53"],
                            stdin=theirs, stdout=theirs, stderr=subprocess.PIPE)
    theirs.close()
    ours.settimeout(5)
    got = []
    requests = [b"Q\x02\x02\x02\x02", b"", b"Q\x00\x00\x00\x00", b"Q\x03\x03\x03\x03"]
    for request in requests:
        ours.send(request)
        got.append(ours.recv(65535))
    proc.kill()
    proc.communicate(timeout=10)
    expected = [run(m, [request]).answers[1] for request in requests]
    assert got == expected == [b"A\x02\x02\x02\x02", b"pong", b"A\x00\x00\x00\x00", b"A\x03\x03\x03\x03"]


def test_hostile_capture_bytes_stay_data(tmp_path):
    script, m = _script(tmp_path, _hostile_sessions(), macro=0.0, micro=0.0)
    source = script.read_text()
    ast.parse(source)  # imports cleanly: the script is valid Python
    for h in HOSTILE:
        assert h not in source.encode("latin-1", "replace")
    # Importing it runs nothing but definitions (it is a module with a __main__ guard).
    probe = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(script)!r}, run_name='probe')"],
                           capture_output=True, timeout=20)
    assert probe.returncode == 0 and probe.stdout == b"", probe.stderr
    requests = [b"GET " + h + b"\r\n" for h in HOSTILE]
    for request in requests:
        answers, _ = _run_tcp(script, [request])
        assert answers == run(m, [request]).answers
        assert answers[1] == b"200 " + request[4:-2] + b" OK\r\n"


def test_cli_export_prints_the_honeyd_conf_line(tmp_path):
    from scriptgen.modelfile import save

    model = learn(ftp_sessions(), LearnParams(jobs=1))
    path = tmp_path / "m.json"
    save(model, str(path))
    out = tmp_path / "svc.py"
    r = subprocess.run([sys.executable, "-m", "scriptgen", "export", "honeyd", str(path), "--port", "21", "-o", str(out),
                        "--template", "windows"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == f'add windows tcp port 21 "python3 {out} $ipsrc $sport $ipdst $dport"'
    r = subprocess.run([sys.executable, "-m", "scriptgen", "export", "honeyd", str(path), "--all-ports", "-o",
                        str(tmp_path / "all")], capture_output=True, text=True, check=True)
    assert (tmp_path / "all" / "scriptgen_tcp_21.py").exists()
    assert (tmp_path / "all" / "honeyd.conf.fragment").read_text().startswith("add default tcp port 21")
    started = time.monotonic()
    answers, _ = _run_tcp(out, [b"SYST\r\n"])
    assert answers[:2] == [BANNER, b"215 UNIX Type: L8\r\n"] and time.monotonic() - started < 10
