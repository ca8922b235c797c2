"""`scriptgen evaluate` as a user runs it: the three forms, --json keys, --help, errors."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from scriptgen.cli import evaluate_cmd
from scriptgen.cli import main as cli_main
from tests.capture.craft import conversation, ethernet, write_pcap
from tests.evaluate.servers import echo, serving

SERVER = ("10.0.0.2", 7)
WORDS = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel", b"india", b"juliett"]
JSON_KEYS = {"target", "transport", "port", "client", "start", "requests", "similarity", "exact", "carried",
             "closed", "failure", "error", "seen", "varied", "new_answer", "answers"}
ANSWER_KEYS = {"index", "request", "request_len", "expected", "expected_len", "got", "got_len", "sent",
               "similarity", "exact", "fallback"}


def main(argv: list[str]) -> int:
    """cli.main.main with `evaluate` registered (a no-op once cli/main.py adds it)."""
    build = cli_main.build_parser

    def with_evaluate() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "evaluate" not in sub.choices:
            evaluate_cmd.add_parser(sub)
        return parser

    cli_main.build_parser = with_evaluate
    try:
        return cli_main.main(argv)
    finally:
        cli_main.build_parser = build


def _capture(tmp_path: Path, n: int = 10) -> Path:
    """Sessions as tests/evaluate/servers.echo plays them, on port 7."""
    pkts = []
    for i in range(n):
        word = WORDS[i % len(WORDS)] + b"%d" % i
        pkts += conversation(("10.0.0.1", 40000 + i), SERVER, exchanges=[
            (b"", b"200 echo ready\r\n"), (b"ECHO " + word + b"\r\n", b"250 " + word + b"\r\n"),
            (b"QUIT\r\n", b"221 bye\r\n")])
    return write_pcap(tmp_path / "echo.pcap", [ethernet(p) for p in pkts])


def _model(tmp_path: Path, capture: Path) -> Path:
    out = tmp_path / "echo.model.json"
    assert main(["learn", str(capture), "-o", str(out), "--jobs", "1"]) == 0
    return out


def test_holdout_prints_a_table_per_port(tmp_path, capsys):
    assert main(["evaluate", "--holdout", "5", "--jobs", "1", str(_capture(tmp_path))]) == 0
    out, err = capsys.readouterr()
    header, row, notes, seen = out.splitlines()
    assert header.split() == ["target", "port", "sessions", "answers", "similarity", "exact", "carried"]
    assert row.split() == ["in-process", "tcp/7", "2", "6", "1.000", "1.000", "1.000", "(2/2)"]
    assert notes == "tcp/7: not carried: none; unmatched requests: none"
    # Each held-out session echoes a word no learned session sent: carried by the link.
    assert seen == ("tcp/7: 0/2 held out sessions sent only requests the learned sessions had sent (0 carried); "
                    "the others sent a request it never saw")
    assert "learning without every 5th session" in err


def test_holdout_json_says_which_sessions_sent_only_what_the_learner_saw(tmp_path, capsys):
    pkts = []
    for i in range(10):  # every session sends the same two requests but the 10th (held out)
        word = b"zulu" if i == 9 else b"alpha"
        pkts += conversation(("10.0.0.1", 40000 + i), SERVER, exchanges=[
            (b"", b"200 echo ready\r\n"), (b"ECHO " + word + b"\r\n", b"250 " + word + b"\r\n"),
            (b"QUIT\r\n", b"221 bye\r\n")])
    capture = write_pcap(tmp_path / "same.pcap", [ethernet(p) for p in pkts])
    assert main(["evaluate", "--holdout", "5", "--jobs", "1", "--json", str(capture)]) == 0
    held = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(h["client"], h["seen"]) for h in held] == [("10.0.0.1:40004", True), ("10.0.0.1:40009", False)]


def test_failures_where_the_capture_server_itself_varied_are_told_apart(tmp_path, capsys):
    # Every session asks the same CHALLENGE; the server answers a fresh nonce each time (a
    # token the emulator makes fresh too). A failure there is no emulator's fault, and
    # the report says so; a failure at an answer the server always gave alike is not.
    rng = random.Random(7)
    pkts = []
    for i in range(10):
        nonce = "".join(rng.choice("0123456789abcdef") for _ in range(16)).encode()
        pkts += conversation(("10.0.0.1", 40000 + i), SERVER, exchanges=[
            (b"", b"200 ready\r\n"), (b"CHALLENGE\r\n", b"334 " + nonce + b"\r\n"), (b"QUIT\r\n", b"221 bye\r\n")])
    capture = write_pcap(tmp_path / "nonce.pcap", [ethernet(p) for p in pkts])
    assert main(["evaluate", "--holdout", "5", "--jobs", "1", "--json", str(capture)]) == 0
    held = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(h["failure"], h["varied"]) for h in held] == [({"index": 1, "reason": "different"}, True)] * 2
    assert main(["evaluate", "--holdout", "5", "--jobs", "1", str(capture)]) == 0
    assert ("tcp/7: not carried: different 2 (2 at an answer the capture's server gave differently to the "
            "same conversation in another session: a nonce, a time)") in capsys.readouterr().out

    other = write_pcap(tmp_path / "other.pcap", [ethernet(p) for i in range(3) for p in conversation(
        ("10.0.0.1", 41000 + i), SERVER, exchanges=[(b"", b"554 go away\r\n"), (b"QUIT\r\n", b"221 bye\r\n")])])
    assert main(["evaluate", str(_model(tmp_path, capture)), str(other), "--json"]) == 0
    held = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(h["failure"], h["varied"]) for h in held] == [({"index": 0, "reason": "different"}, False)] * 3


def test_failures_at_an_answer_new_to_the_learner_are_told_apart(tmp_path, capsys):
    # The server answers HELLO one way mostly, another way now and then (learned once), and
    # once in a way no learned session saw. Both held-out sessions fail; only the second
    # asked for what the capture never showed the learner.
    answers = {1: b"200 bravo ok\r\n", 4: b"200 bravo ok\r\n", 9: b"500 the system is on fire, call the operator\r\n"}
    pkts = []
    for i in range(10):
        pkts += conversation(("10.0.0.1", 40000 + i), SERVER, exchanges=[
            (b"", b"220 ready\r\n"), (b"HELLO\r\n", answers.get(i, b"200 alpha\r\n"))])
    capture = write_pcap(tmp_path / "moods.pcap", [ethernet(p) for p in pkts])
    assert main(["evaluate", "--holdout", "5", "--jobs", "1", "--json", str(capture)]) == 0
    held = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(h["client"], h["carried"], h["new_answer"]) for h in held] == [
        ("10.0.0.1:40004", False, False), ("10.0.0.1:40009", False, True)]
    assert main(["evaluate", "--holdout", "5", "--jobs", "1", str(capture)]) == 0
    assert ("tcp/7: 1 of the 2 not carried failed at an answer new to the learner (none it learned from is "
            "0.8 similar)") in capsys.readouterr().out
    # Without a holdout nothing was learned from the capture: not known.
    assert main(["evaluate", str(_model(tmp_path, capture)), str(capture), "--json"]) == 0
    assert {json.loads(line)["new_answer"] for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")} == {None}


def test_model_then_captures_json_one_object_per_session(tmp_path, capsys):
    capture = _capture(tmp_path, 4)
    model = _model(tmp_path, capture)
    capsys.readouterr()
    assert main(["evaluate", str(model), str(capture), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines:
        obj = json.loads(line)
        assert set(obj) == JSON_KEYS
        assert obj["target"] == "in-process" and obj["transport"] == "tcp" and obj["port"] == 7
        assert obj["carried"] is True and obj["failure"] is None and obj["requests"] == 2
        assert [a["index"] for a in obj["answers"]] == [0, 1, 2]
        assert all(set(a) == ANSWER_KEYS for a in obj["answers"])


def test_target_replays_over_tcp(tmp_path, capsys):
    capture = _capture(tmp_path, 6)
    with serving(echo) as port:
        code = main(["evaluate", str(capture), "--target", f"127.0.0.1:{port}", "--quiet-gap", "0.1"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[1].split() == ["tcp", f"127.0.0.1:{port}", "tcp/7", "6", "18", "1.000", "1.000", "1.000",
                                           "(6/6)"]


def test_target_that_refuses_is_one_line_and_exit_3(tmp_path, capsys):
    with serving(echo) as port:
        pass
    assert main(["evaluate", str(_capture(tmp_path, 2)), "--target", f"127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"scriptgen: error: cannot replay to 127.0.0.1:{port}: connection refused"]


@pytest.mark.parametrize("target, message", [
    ("localhost", "not HOST:PORT: 'localhost'"),
    (":21", "not HOST:PORT: ':21'"),
    ("127.0.0.1:ftp", "not a port number: 'ftp'"),
    ("127.0.0.1:0", "port out of range 1-65535: 0"),
    ("127.0.0.1:70000", "port out of range 1-65535: 70000"),
    ("::1:21", "an IPv6 address needs brackets"),
    ("[nope]:21", "not an IPv6 address in brackets"),
])
def test_a_bad_target_is_a_usage_error(tmp_path, capsys, target, message):
    assert main(["evaluate", str(_capture(tmp_path, 1)), "--target", target]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("scriptgen evaluate: error: --target: ") and message in line


def test_forms_that_make_no_sense_are_usage_errors(tmp_path, capsys):
    capture = _capture(tmp_path, 4)
    model = _model(tmp_path, capture)
    cases = [
        (["--holdout", "5", str(model), str(capture)], "--holdout learns its model from the captures"),
        ([str(capture)], "give a MODEL file before the captures"),
        ([str(model)], "no CAPTURE given"),
        ([str(capture), str(model)], "only the first file may be the model"),
        ([str(model), str(capture), "--macro", "0.3"], "--macro only apply with --holdout K"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["evaluate", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_holdout_below_two_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--holdout", "1", str(_capture(tmp_path, 1))])
    assert exc.value.code == 2
    assert "must be at least 2" in capsys.readouterr().err


def test_help_teaches_the_three_forms(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    for text in ("scriptgen evaluate MODEL CAPTURE...", "scriptgen evaluate --holdout K CAPTURE...",
                 "--target HOST:PORT", "similarity", "exact", "carried", "--json", "--quiet-gap", "--wait",
                 "--all-folds", "--save-model", "--concurrency", "exit codes", "midstream"):
        assert text in out, text


def test_target_needs_one_port(tmp_path, capsys):
    pkts = conversation(("10.0.0.1", 1), SERVER, exchanges=[(b"", b"200 echo ready\r\n")])
    pkts += conversation(("10.0.0.1", 2), ("10.0.0.2", 80), exchanges=[(b"GET /\r\n", b"200\r\n")])
    capture = write_pcap(tmp_path / "two.pcap", [ethernet(p) for p in pkts])
    assert main(["evaluate", str(capture), "--target", "127.0.0.1:9"]) == 2
    assert "several TCP ports (7, 80): choose the one the target serves with --port P" in capsys.readouterr().err
    with serving(echo) as port:
        assert main(["evaluate", str(capture), "--port", "7", "--target", f"127.0.0.1:{port}"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2:4] == ["tcp/7", "1"]


def test_model_holdout_and_target_replay_the_held_out_sessions(tmp_path, capsys):
    capture = _capture(tmp_path, 10)
    model = _model(tmp_path, capture)
    capsys.readouterr()
    with serving(echo) as port:
        assert main(["evaluate", str(model), str(capture), "--holdout", "5", "--target", f"127.0.0.1:{port}",
                     "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["carried"] for line in lines)
