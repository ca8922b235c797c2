"""The measures on hand-made cases: identical, silent, closed early, different."""

from __future__ import annotations

import pytest

from scriptgen.evaluate import EvaluateParams, Outcome, score_session, similarity
from scriptgen.learn.align import distance

P = EvaluateParams()
BANNER = b"220 ready\r\n"
TURNS = [(b"USER bob\r\n", b"331 Password required for bob.\r\n"), (b"PASS x\r\n", b"230 Logged in.\r\n"),
         (b"QUIT\r\n", b"221 Bye.\r\n")]


def score(outcome: Outcome, banner: bytes = BANNER, turns=TURNS, params: EvaluateParams = P):
    return score_session(target="t", transport="tcp", port=21, client="10.0.0.1:1", start=0.0,
                         banner=banner, turns=list(turns), outcome=outcome, params=params)


def test_similarity_bounds_and_alignment():
    assert similarity(b"", b"") == 1.0
    assert similarity(b"abc", b"abc") == 1.0
    assert similarity(b"abc", b"") == similarity(b"", b"abc") == 0.0
    assert similarity(b"331 Password required for bob.\r\n", b"331 Password required for dave.\r\n") == pytest.approx(
        1 - distance(b"331 Password required for bob.\r\n", b"331 Password required for dave.\r\n"))
    assert 0.8 < similarity(b"331 Password required for bob.\r\n", b"331 Password required for dave.\r\n") < 1.0
    assert similarity(b"\x00" * 10, b"\xff" * 10) == 0.0


def test_similarity_compares_only_the_first_bytes():
    a, b = b"x" * 100 + b"A" * 100, b"x" * 100 + b"B" * 100
    assert similarity(a, b, compare_bytes=100) == 1.0
    assert similarity(a, b, compare_bytes=200) == pytest.approx(0.5)


def test_identical_answers_score_one_exact_and_carried():
    s = score(Outcome((BANNER, *(a for _, a in TURNS)), closed=True))
    assert s.similarity == 1.0 and s.exact == 1.0
    assert s.carried and s.failure is None
    assert [a.index for a in s.answers] == [0, 1, 2, 3]
    assert all(a.sent and a.exact for a in s.answers)


def test_an_emulator_that_goes_silent_is_not_carried():
    s = score(Outcome((BANNER, TURNS[0][1], b"", b""), closed=False))
    assert not s.carried and s.failure == (2, "silent")
    assert [a.similarity for a in s.answers] == [1.0, 1.0, 0.0, 0.0]
    assert s.similarity == 0.5 and s.exact == 0.5


def test_closing_before_the_last_request_is_not_carried():
    s = score(Outcome((BANNER, TURNS[0][1]), closed=True))
    assert not s.carried and s.failure == (2, "closed")
    assert [a.sent for a in s.answers] == [True, True, False, False]
    assert s.answers[-1].got == b"" and s.answers[-1].similarity == 0.0


def test_a_different_answer_under_the_threshold_is_not_carried():
    outcome = Outcome((BANNER, b"500 what?\r\n", TURNS[1][1], TURNS[2][1]), closed=True)
    s = score(outcome)
    assert s.failure == (1, "different") and not s.carried
    assert score(outcome, params=EvaluateParams(carried_similarity=0.0)).carried


def test_a_close_answer_is_carried_but_not_exact():
    outcome = Outcome((BANNER, b"331 Password required for bobby.\r\n", TURNS[1][1], TURNS[2][1]), closed=True)
    s = score(outcome)
    assert s.carried and s.exact == 0.75 and 0.9 < s.similarity < 1.0


def test_silence_where_the_real_server_was_silent_is_right():
    turns = [(b"NOOP\r\n", b""), (b"QUIT\r\n", b"221 Bye.\r\n")]
    s = score(Outcome((BANNER, b"", b"221 Bye.\r\n"), closed=True), turns=turns)
    assert s.carried and s.exact == 1.0
    chatty = score(Outcome((BANNER, b"200 ok\r\n", b"221 Bye.\r\n"), closed=True), turns=turns)
    assert not chatty.carried and chatty.failure == (1, "different")


def test_no_banner_on_either_side_is_not_an_answer():
    turns = [(b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n")]
    s = score(Outcome((b"", b"HTTP/1.0 200 OK\r\n\r\n"), closed=True), banner=b"", turns=turns)
    assert [a.index for a in s.answers] == [1]
    # A banner the real server never sent is scored (and is wrong).
    s = score(Outcome((b"hello\r\n", b"HTTP/1.0 200 OK\r\n\r\n"), closed=True), banner=b"", turns=turns)
    assert [a.index for a in s.answers] == [0, 1] and s.failure == (0, "different")


def test_an_error_is_the_failure_even_after_good_answers():
    s = score(Outcome((BANNER,), closed=False, error="connection refused"))
    assert s.failure == (1, "error") and not s.carried and s.error == "connection refused"
    s = score(Outcome((), closed=False, error="connection refused"))
    assert s.failure == (0, "error") and s.similarity == 0.0
