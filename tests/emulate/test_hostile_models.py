"""Model files built to be slow or to crash (issue 35, point 3): every size is bounded by the
loader, matching costs a bounded time whatever the patterns, and what is refused is refused
with the project's own error."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scriptgen.emulate import Close, Emulator, EmulatorParams, Machine, NeedData, Send, Unmatched
from scriptgen.errors import ModelFormatError
from scriptgen.modelfile import loads, port_doc

# A bound far above what a bounded match costs here, far below the seconds of a backtracking one.
SLOW = 2.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _region(lo: int, hi: int, ascii_: bool = False) -> dict[str, Any]:
    return {"ascii": ascii_, "max": hi, "min": lo, "random": False, "samples": []}


def _model(patterns: list[list[dict[str, Any]]], delay: float | None = None) -> bytes:
    """A model of one TCP port: a banner, and from the root one transition per pattern,
    each to a state answering `HIT n`."""
    states: list[dict[str, Any]] = [{"closes": {}, "delay": delay, "id": 0, "transitions": [],
                                     "labels": [{"count": 1, "parts": [{"bytes": _b64(b"220 ready\r\n")}]}]}]
    transitions = []
    for i, pattern in enumerate(patterns):
        states.append({"closes": {}, "delay": None, "id": i + 1, "transitions": [],
                       "labels": [{"count": 1, "parts": [{"bytes": _b64(b"HIT %d\r\n" % i)}]}]})
        transitions.append({"id": i, "links": [], "pattern": pattern, "samples": [], "source": 0,
                            "target": i + 1, "weight": 1})
        states[0]["transitions"].append(i)
    port = {"framing": None, "port": 21, "root": 0, "states": states, "stats": {}, "tokens": [],
            "transitions": transitions, "transport": "tcp"}
    return json.dumps({"format": "scriptgen-model", "generator": "test", "params": {}, "ports": [port],
                       "sources": [], "version": 4}).encode()


def _machine(model: bytes, params: EmulatorParams | None = None) -> Machine:
    return Machine(port_doc(loads(model).ports[0]), params)


def _answer(machine: Machine, request: bytes) -> tuple[bytes, float]:
    """What the emulator sends for `request` after the banner, and the slowest call's time."""
    conn = Emulator(machine, 0.0)
    while not isinstance(conn.next_event(0.0), NeedData):
        pass
    slowest, sent, now = 0.0, b"", 1.0
    started = time.perf_counter()
    conn.receive_data(request, now)
    slowest = time.perf_counter() - started
    for now in (1.0, 60.0):
        while True:
            started = time.perf_counter()
            event = conn.next_event(now)
            slowest = max(slowest, time.perf_counter() - started)
            if isinstance(event, (NeedData, Close)):
                break
            if isinstance(event, Send):
                sent += event.data
    return sent, slowest


def _nul_separated(k: int, hi: int) -> list[dict[str, Any]]:
    pattern: list[dict[str, Any]] = []
    for i in range(k):
        pattern.append(_region(1, hi))
        pattern.append({"fixed": _b64(b"\0" if i < k - 1 else b"Z")})
    return pattern


def test_regions_between_nuls_cost_a_bounded_time_and_still_match():
    """The issue's model: four binary regions between NULs; a 404-byte request of NULs took
    over 15 s (lazy groups backtracking n^4)."""
    machine = _machine(_model([_nul_separated(4, 1000)]))
    _, slowest = _answer(machine, b"A\0" * 202)
    assert slowest < SLOW
    sent, slowest = _answer(machine, b"A\0" * 2000 + b"Z")
    assert slowest < SLOW
    sent, _ = _answer(machine, b"ab\0cd\0ef\0ghZ")
    assert sent == b"HIT 0\r\n"


@pytest.mark.parametrize("size", [1 << 31, 1 << 21, -1])
def test_a_region_size_past_the_cap_is_a_format_error_not_a_crash(size):
    with pytest.raises(ModelFormatError):
        loads(_model([[{"fixed": _b64(b"GET ")}, _region(1, size)]]))


def test_the_largest_region_allowed_loads_and_matches():
    machine = _machine(_model([[{"fixed": _b64(b"GET ")}, _region(1 << 20, 1 << 20)]]))
    assert _answer(machine, b"GET " + b"x" * (1 << 20))[0] == b"HIT 0\r\n"


def test_patterns_too_big_to_compile_in_a_bounded_time_are_refused():
    """Each fixed byte of a pattern costs about a microsecond to compile: 7 MB of them took
    14 s to load (bench/fuzz.py, model #95524 of seed 3)."""
    big = [[{"fixed": _b64(b"A" * 300_000)}, _region(1, 4)], [{"fixed": _b64(b"B" * 300_000)}]]
    started = time.perf_counter()
    with pytest.raises(ModelFormatError, match="patterns hold 600032 bytes, over the 524288-byte cap"):
        loads(_model(big))
    assert time.perf_counter() - started < SLOW
    assert _answer(_machine(_model(big[:1])), b"A" * 300_000 + b"xy")[0] == b"HIT 0\r\n"  # under it: served


def test_a_delay_past_the_cap_is_refused():
    with pytest.raises(ModelFormatError):
        loads(_model([[{"fixed": _b64(b"X")}]], delay=1e300))


def test_many_patterns_against_a_long_request_stop_at_the_budget():
    patterns = [[{"fixed": _b64(b"C%05d " % i)}, _region(1, 1 << 20), {"fixed": _b64(b"\r\n")}]
                for i in range(1000)]
    machine = _machine(_model(patterns))
    conn = Emulator(machine, 0.0)
    while not isinstance(conn.next_event(0.0), NeedData):
        pass
    started = time.perf_counter()
    conn.receive_data(b"C" + b"x" * 500_000, 1.0)
    for now in (1.0, 60.0):
        while not isinstance(conn.next_event(now), NeedData):
            pass
    assert time.perf_counter() - started < SLOW * 4
    assert conn.over_budget > 0
    # Below the budget nothing changes: the pattern is found among the 1000.
    assert _answer(machine, b"C00999 name\r\n")[0] == b"HIT 999\r\n"


_BYTES = st.sampled_from([b"\0", b"\r\n", b"A", b"AB", b" ", b"\xff", b"Z"])
_REGION = st.builds(lambda lo, extra, a: _region(lo, lo + extra, a),
                    st.integers(0, 64), st.sampled_from([0, 1, 7, 1000, 1 << 20]), st.booleans())
_FIXED = st.builds(lambda parts: {"fixed": _b64(b"".join(parts))}, st.lists(_BYTES, min_size=1, max_size=3))
_PATTERN = st.lists(st.one_of(_REGION, _FIXED), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PATTERN, min_size=1, max_size=6), st.lists(_BYTES, min_size=1, max_size=300))
def test_any_schema_valid_patterns_answer_any_request_in_bounded_time(patterns, pieces):
    try:
        machine = _machine(_model(patterns))
    except ModelFormatError:
        return  # refused in one line, as the loader should
    _, slowest = _answer(machine, b"".join(pieces))
    assert slowest < SLOW


def test_a_megabyte_of_pipelined_requests_is_taken_in_bounded_turns():
    """Every request is answered, in order, but no call takes more than requests_per_call of
    them: between batches next_event says NeedData(now), the driver's turn."""
    from scriptgen.emulate import Input
    from tests.serve.harness import machine

    m = machine("ftp")
    conn = Emulator(m, 0.0)
    while not isinstance(conn.next_event(0.0), NeedData):
        pass
    conn.receive_data(b"SYST\r\n" * 20_000, 1.0)
    batches, inputs, answers = [0], 0, b""
    while True:
        event = conn.next_event(1.0)
        if isinstance(event, NeedData):
            if event.wake_at is None or event.wake_at > 1.0:
                break
            batches.append(0)
        elif isinstance(event, Input):
            batches[-1] += 1
            inputs += 1
        elif isinstance(event, Send):
            answers += event.data
    assert inputs == 20_000 and answers == b"215 UNIX Type: L8\r\n" * 20_000
    assert max(batches) <= m.params.requests_per_call * 2 and len(batches) >= 20_000 // 128


def test_requests_of_repeated_bytes_cost_a_bounded_alignment():
    """difflib's alignment walks every pair of equal bytes: SMB-like zeros against zeros
    took 20-80 ms a comparison, up to 8 a request, 35 s for a fuzzed stream of 1000
    requests. Past _MAX_DIFF_WORK the runs are cut before aligning."""
    import random

    from scriptgen.learn import learn
    from scriptgen.params import LearnParams
    from tests.learn.sessions import session

    rng = random.Random(7)

    def smbish(i: int) -> bytes:
        body = bytearray(200)
        for _ in range(12):
            body[rng.randrange(200)] = rng.randrange(1, 256)
        return b"\x00\x00\x00\xc8\xfeSMB" + bytes([i]) + bytes(body)

    sessions = [session((smbish(i), b"\x00\x00\x00\x04ok%02d" % i), port=445) for i in range(40)]
    (port,) = learn(sessions, LearnParams(jobs=1, macro=1.0, micro=1.0)).ports
    machine = Machine(port_doc(port))
    started = time.process_time()
    for i in range(240):
        request = b"\x00\x00\x00\xc8\xfeSMB\xee" + bytes(170) + bytes([i]) * 3 + bytes(47)  # not their length
        _answer(machine, request)
    assert time.process_time() - started < 5.0  # 1.4 s here; uncut, 6.7 s


def test_a_flood_of_unknown_requests_gets_answers_until_its_work_is_spent_then_refills():
    """A client sending only requests nothing matches makes every one a nearest search:
    past `fallback_work` they get nothing (Unmatched "spent"), and the work comes back
    with (virtual) time at `fallback_refill` a second."""
    requests = [b"COMMAND%03d some argument\r\n" % i for i in range(100)]
    doc = json.loads(_model([[{"fixed": _b64(r)}] for r in requests]))
    for i, (t, r) in enumerate(zip(doc["ports"][0]["transitions"], requests)):
        t["samples"] = [[_b64(r), _b64(b"HIT %d\r\n" % i)]]
        doc["ports"][0]["states"][t["target"]]["closes"] = {}
    params = EmulatorParams(fallback_work=400_000, fallback_refill=1_000)
    conn = Emulator(_machine(json.dumps(doc).encode(), params), 0.0)

    def ask(request: bytes, now: float) -> tuple[bytes, str]:
        conn.receive_data(request, now)
        sent, how = b"", ""
        for at in (now, now + 1.0):  # a request of no known end is one after idle_gap
            while not isinstance(event := conn.next_event(at), (NeedData, Close)):
                if isinstance(event, Send):
                    sent += event.data
                elif isinstance(event, Unmatched):
                    how = event.fallback
        return sent, how

    while not isinstance(conn.next_event(0.0), NeedData):
        pass  # the banner
    answered = []
    for i in range(200):
        sent, how = ask(b"COMMAND%03d other argument\r\n" % (i % 100), 10.0)
        answered.append(sent.startswith(b"HIT"))
        if how == "spent":
            break
    assert how == "spent" and not sent, "a flood never runs out of work"
    assert 5 <= answered.index(False) == len(answered) - 1, answered  # answered until then, not after
    assert ask(b"COMMAND001 other argument\r\n", 12.0) == (b"", "spent")  # 1,000 a second: not enough yet
    sent, how = ask(b"COMMAND001 other argument\r\n", 1000.0)  # refilled
    assert sent == b"HIT 1\r\n" and how == "nearest"
