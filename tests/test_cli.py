"""`scriptgen sessions` as a user runs it: table, JSON lines, help, exit codes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from scriptgen.cli.main import main

from tests.capture.craft import (
    ACK, RST, SERVER, SYN, conversation, ethernet, port_unreachable, tcp, udp, write_pcap,
)

ROOT = Path(__file__).resolve().parents[1]


def _capture(tmp_path: Path) -> Path:
    pkts = conversation(("10.0.0.1", 1111), SERVER, exchanges=[(b"GET /\r\n", b"200 OK\r\n")])
    pkts += conversation(("10.0.0.1", 2222), ("10.0.0.2", 21), exchanges=[(b"", b"220 hi\r\n"), (b"QUIT\r\n", b"221\r\n")])
    pkts += [udp(("10.0.0.1", 5353), ("10.0.0.2", 53), b"query"), udp(("10.0.0.2", 53), ("10.0.0.1", 5353), b"answer")]
    return write_pcap(tmp_path / "c.pcap", [ethernet(p) for p in pkts])


def test_table_per_transport_and_port(tmp_path, capsys):
    assert main(["sessions", str(_capture(tmp_path))]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["transport", "port", "sessions", "messages"]
    assert lines[1].split() == ["tcp", "21", "1", "3", "6", "13", "0", "0", "0", "0"]
    assert lines[2].split() == ["tcp", "80", "1", "2", "7", "8", "0", "0", "0", "0"]
    assert lines[3].split() == ["udp", "53", "1", "2", "5", "6", "0", "0", "0", "0"]
    assert "anomalies: none" in out


def test_a_port_scan_is_one_line_not_a_row_a_port(tmp_path, capsys):
    # A machine being probed: a SYN scan of ports 1-3000 (refused but for 80 and 2024), one
    # connection to 2024 that sends nothing, one real conversation on 80, and a UDP scan
    # that finds 7 and 9 closed.
    scanner, target = ("10.0.0.9", 50000), "10.0.0.2"
    pkts = []
    for port in (7, 9):
        probe = udp(scanner, (target, port), b"probe")
        pkts += [probe, port_unreachable(probe)]
    for port in [*range(1, 3001), 5000, 5002]:
        if port != 80:
            pkts += [tcp(scanner, (target, port), 7, 0, SYN), tcp((target, port), scanner, 0, 8, RST | ACK)]
    pkts += conversation(("10.0.0.1", 2222), ("10.0.0.2", 2024), exchanges=[])
    pkts += conversation(("10.0.0.1", 1111), SERVER, exchanges=[(b"GET /\r\n", b"200 OK\r\n")])
    capture = write_pcap(tmp_path / "scan.pcap", [ethernet(p) for p in pkts])
    assert main(["sessions", str(capture)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 2024 accepted a connection: open, a row (the learner serves it silent).
    assert [line.split()[:4] for line in lines[:3]] == [["transport", "port", "sessions", "messages"],
                                                       ["tcp", "80", "1", "2"], ["tcp", "2024", "2", "0"]]
    assert lines[3] == ("tcp: 3000 port(s) where no session carried data or was accepted, 3000 session(s), not "
                        "listed: 1-79, 81-2023, 2025-3000, 5000, 5002")
    assert lines[4] == "udp: 2 port(s) closed (never answered; ICMP port unreachable), 2 session(s), not listed: 7, 9"
    # Asked for by port, a silent port has its row.
    assert main(["sessions", "--port", "2024", str(capture)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["tcp", "2024", "2", "0"]


def test_json_lines_and_port_filter(tmp_path, capsys):
    assert main(["sessions", "--json", "--port", "21", str(_capture(tmp_path))]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    obj = json.loads(line)
    assert obj["transport"] == "tcp" and obj["server_port"] == 21
    assert obj["client"] == "10.0.0.1:2222" and obj["server"] == "10.0.0.2:21"
    assert obj["midstream"] is False
    assert [(m["from"], base64.b64decode(m["data"])) for m in obj["messages"]] == [
        ("server", b"220 hi\r\n"), ("client", b"QUIT\r\n"), ("server", b"221\r\n")]


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--port", "--json", "--udp-timeout", "--max-flows", "exit codes", "CAPTURE"):
        assert option in out


def test_missing_file_is_one_line_and_exit_3(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", str(tmp_path / "none.pcap")],
                       capture_output=True, text=True)
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [f"scriptgen: error: {tmp_path / 'none.pcap'}: at byte 0: No such file or directory"]


def test_not_a_capture_exit_3(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", str(bad)], capture_output=True, text=True)
    assert r.returncode == 3 and "not a pcap or pcapng file" in r.stderr and "Traceback" not in r.stderr


def test_truncated_capture_prints_results_then_error_exit_4(tmp_path):
    whole = _capture(tmp_path).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:-10])
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", str(cut)], capture_output=True, text=True)
    assert r.returncode == 4
    assert "tcp" in r.stdout and " 80 " in r.stdout  # sessions before the damage are reported
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"scriptgen: error: {cut}: at byte ") and "ends inside a record" in line


def test_bad_port_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", "--port", "99999", "x.pcap"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "port out of range" in r.stderr


def test_bundled_example_has_sessions():
    example = ROOT / "examples" / "ftp" / "vsftpd-anon.pcap"
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", str(example), "--port", "2121"],
                       capture_output=True, text=True, check=True)
    row = r.stdout.splitlines()[1].split()
    assert row[:2] == ["tcp", "2121"] and int(row[2]) >= 30


def test_learn_then_show(tmp_path):
    example = ROOT / "examples" / "ftp" / "vsftpd-anon.pcap"
    model = tmp_path / "ftp.json"
    r = subprocess.run([sys.executable, "-m", "scriptgen", "learn", str(example), "-o", str(model), "--port", "2121"],
                       capture_output=True, text=True, check=True)
    row = r.stdout.splitlines()[1].split()
    assert row[0] == "tcp/2121" and int(row[1]) == 41 and int(row[3]) < int(row[2])  # simplified < raw
    assert "learned tcp/2121" in r.stderr
    shown = subprocess.run([sys.executable, "-m", "scriptgen", "show", str(model)], capture_output=True, text=True, check=True)
    assert "S0: 220 (vsFTPd 3.0.3)\\r\\n" in shown.stdout and "--[USER anonymous\\r\\n]" in shown.stdout
    js = subprocess.run([sys.executable, "-m", "scriptgen", "show", str(model), "--json"], capture_output=True, text=True, check=True)
    obj = json.loads(js.stdout)
    assert {"transport", "port", "states", "transitions", "links"} <= set(obj) and obj["port"] == 2121
    dot = tmp_path / "g.dot"
    subprocess.run([sys.executable, "-m", "scriptgen", "show", str(model), "-o", str(dot)], check=True)
    assert dot.read_text().startswith("digraph") and "USER anonymous" in dot.read_text()


def test_learn_help_and_bad_threshold():
    out = subprocess.run([sys.executable, "-m", "scriptgen", "learn", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--macro", "--micro", "--max-fanout", "--max-states", "--jobs", "--port", "-o"):
        assert option in out
    r = subprocess.run([sys.executable, "-m", "scriptgen", "learn", "x.pcap", "-o", "m.json", "--macro", "1.5"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "between 0 and 1" in r.stderr


def test_show_refuses_a_broken_model_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "scriptgen-model", "version": 1}')
    r = subprocess.run([sys.executable, "-m", "scriptgen", "show", str(bad)], capture_output=True, text=True)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr


# -- a directory of captures (recordings of serve/record.py) ----------------------------------


def _record(sessions, directory: Path, rotate_bytes: int) -> None:
    """Write `sessions` again through the recorder, their events interleaved in time order."""
    from scriptgen.model import Sender
    from scriptgen.params import RecordParams
    from scriptgen.serve.record import Recorder

    events = []
    for n, s in enumerate(sessions):
        events.append((s.start, n, -1, None))
        events += [(m.timestamp, n, i, m) for i, m in enumerate(s.messages)]
        if s.close in ("fin", "rst"):
            events.append((s.end, n, len(s.messages), None))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    open_ = {}
    with Recorder(str(directory), RecordParams(rotate_bytes=rotate_bytes)) as recorder:
        for t, n, i, message in events:
            s = sessions[n]
            if i < 0:
                open_[n] = recorder.open(s.transport, (s.client.ip, s.client.port), (s.server.ip, s.server.port), t)
            elif message is not None:
                send = open_[n].client_bytes if message.sender is Sender.CLIENT else open_[n].server_bytes
                send(message.data, t)
            else:
                open_[n].close(s.closed_by or Sender.CLIENT, t, reset=s.close == "rst")


def test_learn_reads_a_directory_as_its_captures_sorted(tmp_path, capsys):
    from scriptgen.capture import read_sessions

    example = ROOT / "examples" / "ftp" / "vsftpd-anon.pcap"
    recordings = tmp_path / "rec"
    _record(list(read_sessions([str(example)])), recordings, rotate_bytes=20_000)
    files = sorted(str(p) for p in recordings.iterdir())
    assert len(files) > 3
    (recordings / "notes.txt").write_text("not a capture: ignored")
    (recordings / "sub.pcap").mkdir()  # a subdirectory: not entered
    listed, from_dir, original = tmp_path / "listed.json", tmp_path / "dir.json", tmp_path / "original.json"
    assert main(["learn", *files, "-o", str(listed), "--jobs", "1"]) == 0
    assert main(["learn", str(recordings), "-o", str(from_dir), "--jobs", "1"]) == 0
    assert from_dir.read_bytes() == listed.read_bytes()
    assert json.loads(from_dir.read_text())["sources"] == files
    # What the recorder wrote of the example's sessions teaches the model the example teaches.
    assert main(["learn", str(example), "-o", str(original), "--jobs", "1"]) == 0
    assert json.loads(from_dir.read_text())["ports"] == json.loads(original.read_text())["ports"]
    capsys.readouterr()
    assert main(["sessions", str(recordings)]) == 0
    from_dir_table = capsys.readouterr().out
    assert main(["sessions", *files]) == 0
    assert capsys.readouterr().out == from_dir_table


def test_a_directory_without_captures_is_one_line_and_links_are_not_followed(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    r = subprocess.run([sys.executable, "-m", "scriptgen", "learn", str(empty), "-o", str(tmp_path / "m.json")],
                       capture_output=True, text=True)
    assert r.returncode == 3
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"scriptgen: error: {empty}") and "without any *.pcap or *.pcapng" in line
    # A link inside the directory to a capture outside it is skipped, and said so.
    (empty / "outside.pcap").symlink_to(_capture(tmp_path))
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", str(empty)], capture_output=True, text=True)
    assert r.returncode == 3
    (line,) = r.stderr.strip().splitlines()
    assert "without any *.pcap" in line and "1 symbolic link(s) skipped" in line
    (empty / "real.pcap").write_bytes(_capture(tmp_path).read_bytes())
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sessions", str(empty)], capture_output=True, text=True)
    assert r.returncode == 0 and "tcp" in r.stdout
    assert r.stderr.strip() == (f"scriptgen: skipped 1 symbolic link(s) inside a capture directory (never followed): "
                                f"{empty / 'outside.pcap'}")


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys):
    example = ROOT / "examples" / "ftp" / "vsftpd-anon.pcap"
    missing = tmp_path / "missing" / "dir" / "m.json"
    assert main(["learn", str(example), "-o", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"scriptgen: error: {missing}: the folder {missing.parent} does not exist (make it first)"
    model = tmp_path / "m.json"
    assert main(["learn", str(example), "-o", str(model), "--jobs", "1"]) == 0
    capsys.readouterr()
    assert main(["export", "honeyd", str(model), "--port", "2121", "-o", str(tmp_path / "no" / "x.py")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "honeyd", str(model), "--port", "2121", "-o", str(tmp_path)]) == 2
    assert "is a folder: name the file to write" in capsys.readouterr().err


def test_nothing_to_learn_is_an_error_naming_the_ports_there_are(tmp_path, capsys):
    example = ROOT / "examples" / "ftp" / "vsftpd-anon.pcap"
    model = tmp_path / "m.json"
    assert main(["learn", str(example), "-o", str(model), "--port", "9999"]) == 3
    assert capsys.readouterr().err.strip().endswith(
        "error: no sessions with data on port(s) 9999 to learn from; the captures have: tcp/2121 (41)")
    assert not model.exists()
    assert main(["learn", str(example), "-o", str(model), "--max-fanout", "3", "--jobs", "1"]) == 0
    assert "warning: tcp/2121: 19 sessions cut at --max-fanout 3" in capsys.readouterr().err
