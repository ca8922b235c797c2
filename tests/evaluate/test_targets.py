"""The transport seam: the in-process target and the TCP target give the same answers.

One conformance suite runs against both; the TCP target talks to real asyncio servers on
127.0.0.1 (tests/evaluate/servers.py): a small line protocol written for the test, and the
emulator core driven by a real clock."""

from __future__ import annotations

import asyncio
import time

from scriptgen.emulate import Machine
from scriptgen.evaluate import (
    EvaluateParams,
    InProcessTarget,
    Outcome,
    Script,
    TcpTarget,
    evaluate,
    evaluate_holdout,
    evaluate_model,
    script,
)
from scriptgen.learn import learn
from scriptgen.model import Sender, Transport
from scriptgen.modelfile import port_doc
from scriptgen.params import LearnParams
from tests.evaluate.servers import BANNER, echo, emulating, serving
from tests.learn.sessions import session

FAST = EvaluateParams(quiet=0.15, wait=1.5)
WORDS = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel"]


def recorded():
    """Sessions as the echo server (servers.echo) plays them."""
    out = []
    for i, word in enumerate(WORDS):
        turns = [(b"ECHO " + word + b"\r\n", b"250 " + word + b"\r\n")]
        if i % 2:
            turns.append((b"HUSH\r\n", b""))
        if i % 3 == 0:
            turns.append((b"HELP\r\n", b"500 what?\r\n"))
        turns.append((b"ECHO " + word[::-1] + b"\r\n", b"250 " + word[::-1] + b"\r\n"))
        turns.append((b"QUIT\r\n", b"221 bye\r\n"))
        out.append(session(*turns, banner=BANNER, port=7, closed_by=Sender.SERVER))
    return out


def model_machine(sessions) -> Machine:
    (port,) = learn(sessions, LearnParams(jobs=1)).ports
    return Machine(port_doc(port))


def test_the_tcp_target_against_a_real_server_reproduces_the_recording():
    sessions = recorded()
    with serving(echo) as port:
        report = evaluate(sessions, TcpTarget("127.0.0.1", port, FAST), FAST)
    (p,) = report.ports
    assert p.target == f"tcp 127.0.0.1:{port}" and (p.transport, p.port) == ("tcp", 7)
    assert len(p.sessions) == len(sessions)
    assert p.similarity == 1.0 and p.exact == 1.0 and p.carried == len(sessions)
    assert all(s.closed for s in p.sessions)


def test_in_process_and_tcp_give_identical_answers_on_the_training_sessions():
    sessions = recorded()
    machine = model_machine(sessions)
    scripts = [script(s)[0] for s in sessions]
    in_process = InProcessTarget(machine, FAST).run_all(scripts)
    with serving(echo) as port:
        real = TcpTarget("127.0.0.1", port, FAST).run_all(scripts)
    assert [o.answers for o in in_process] == [o.answers for o in real]
    assert [o.closed for o in in_process] == [o.closed for o in real] == [True] * len(sessions)


CONFORMANCE = [
    # known requests, a dependency (the echoed word), silence, an error line, the close
    Script((b"ECHO zulu\r\n", b"HUSH\r\n", b"QUIT\r\n"), (True, True, False, True)),
    # requests no transition matches (fallbacks), several at once, and no QUIT
    Script((b"FOO\r\n", b"ECHO a\r\nECHO b\r\n", b"\x00\x01binary"), (True, True, True, True)),
    # a request after the server closed is never sent
    Script((b"QUIT\r\n", b"ECHO late\r\n"), (True, True, True)),
    Script((), (True,)),
    # the client speaks before the banner: the banner comes with the first answer
    Script((b"ECHO first\r\n", b"QUIT\r\n"), (False, True, True)),
]


def test_the_emulator_over_tcp_answers_as_in_process():
    machine = model_machine(recorded())
    in_process = InProcessTarget(machine, FAST).run_all(CONFORMANCE)
    with serving(emulating(machine)) as port:
        over_tcp = TcpTarget("127.0.0.1", port, FAST).run_all(CONFORMANCE)
    assert [(o.answers, o.closed) for o in over_tcp] == [(o.answers, o.closed) for o in in_process]
    assert in_process[0].answers[:2] == (BANNER, b"250 zulu\r\n")
    assert in_process[2].closed and len(in_process[2].answers) == 2
    assert in_process[1].fallbacks[0] is not None  # FOO: nothing matched it
    assert in_process[4].answers[:2] == (b"", BANNER + b"250 first\r\n")


def test_a_client_that_spoke_first_is_replayed_speaking_first():
    with serving(echo) as port:
        outcome = TcpTarget("127.0.0.1", port, FAST).run(Script((b"QUIT\r\n",), (False, True)))
    assert outcome.answers == (b"", BANNER + b"221 bye\r\n") and outcome.closed


def test_tcp_sessions_run_concurrently():
    scripts = [script(s)[0] for s in recorded()] * 8  # 64 sessions, ~4 quiet gaps each
    with serving(echo) as port:
        started = time.monotonic()
        outcomes = TcpTarget("127.0.0.1", port, EvaluateParams(quiet=0.2, concurrency=32)).run_all(scripts)
        elapsed = time.monotonic() - started
    assert all(o.error is None for o in outcomes)
    assert elapsed < 64 * 4 * 0.2 / 4  # sequential would take ~51s


def test_connection_refused_is_an_outcome_not_an_exception():
    with serving(echo) as port:
        pass  # the port is free again
    outcome = TcpTarget("127.0.0.1", port, FAST).run(Script((b"QUIT\r\n",), (True, True)))
    assert outcome == Outcome((), False, (), "connection refused")


def test_a_server_that_never_finishes_hits_the_session_timeout():
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    params = EvaluateParams(quiet=0.1, wait=0.3, session_timeout=0.5)
    with serving(stall) as port:
        outcome = TcpTarget("127.0.0.1", port, params).run(Script((b"a", b"b", b"c"), (True,) * 4))
    assert outcome.error == "session timed out after 0.5s"


def test_answers_are_bounded():
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * 200_000)
        await writer.drain()
        writer.close()

    with serving(flood) as port:
        outcome = TcpTarget("127.0.0.1", port, EvaluateParams(max_answer_bytes=1000)).run(Script((), (True,)))
    assert outcome.answers == (b"x" * 1000,) and outcome.closed


def test_udp_sessions_are_skipped_by_the_tcp_target_and_replayed_in_process():
    udp = [session((b"ping", b"pong"), port=53, transport=Transport.UDP) for _ in range(3)]
    report = evaluate(udp, TcpTarget("127.0.0.1", 9, FAST), FAST)
    assert report.ports == () and report.skipped == {"transport": 3}
    report = evaluate_model(learn(udp, LearnParams(jobs=1)), udp, FAST)
    (p,) = report.ports
    assert (p.transport, p.port, len(p.sessions)) == ("udp", 53, 3) and p.carried == 3


def test_midstream_sessions_and_unknown_ports_are_skipped():
    import dataclasses

    sessions = recorded()
    model = learn(sessions, LearnParams(jobs=1))
    other = [session((b"GET /\r\n", b"200\r\n"), port=80), dataclasses.replace(sessions[0], midstream=True)]
    report = evaluate_model(model, [*sessions[1:], *other], FAST)
    assert report.skipped == {"midstream": 1, "no_model": 1}
    assert [len(p.sessions) for p in report.ports] == [len(sessions) - 1]


def test_udp_ports_the_machine_refused_are_counted_closed_not_missing_from_the_model():
    import dataclasses

    # A UDP scan: port 53 answered; 161 and 162 sent back ICMP port unreachable.
    dns = [session((b"query", b"answer"), port=53, transport=Transport.UDP) for _ in range(5)]
    refused = [dataclasses.replace(session((b"", b""), port=p, transport=Transport.UDP, closed_by=Sender.SERVER),
                                   close="refused") for p in (161, 162, 162)]
    silent = session((b"probe", b""), port=514, transport=Transport.UDP)  # no answer, no refusal: maybe open
    model = learn(dns, LearnParams(jobs=1))
    report = evaluate_model(model, [*dns, *refused, silent], FAST)
    assert report.skipped == {"closed": 3, "no_model": 1}
    assert [(p.port, p.carried) for p in report.ports] == [(53, 5)]
    _, report = evaluate_holdout([*dns, *refused], 2, LearnParams(jobs=1), FAST, folds=[0, 1])
    assert report.skipped == {"closed": 3}
