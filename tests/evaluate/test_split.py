"""The held-out split: every k-th session per port, in a stable order; folds partition."""

from __future__ import annotations

import dataclasses
import random

import pytest

from scriptgen.evaluate import by_port, holdout
from scriptgen.model import Endpoint, Session, Transport
from tests.learn.sessions import session


def _sessions() -> list[Session]:
    out = []
    for i in range(12):
        s = session((b"Q%d\r\n" % i, b"A\r\n"), port=21 if i % 3 else 80)
        out.append(dataclasses.replace(s, start=1000.0 + i, client=Endpoint("10.0.0.1", 50000 - i)))
    empty = dataclasses.replace(session(), messages=[], start=999.0)  # a port scan: nothing to replay
    return [*out, empty]


def _ids(sessions: list[Session]) -> list[int]:
    return [s.index for s in sessions]


def test_every_kth_session_of_each_port_is_held_out():
    sessions = _sessions()
    train, test = holdout(sessions, 3)
    ports = by_port(sessions)
    assert list(ports) == [("tcp", 21), ("tcp", 80)]
    expected = [s for group in ports.values() for i, s in enumerate(group) if i % 3 == 2]
    assert _ids(test) == _ids(expected)
    assert len(train) + len(test) == 12  # the empty session is on neither side
    assert not set(_ids(train)) & set(_ids(test))


def test_the_split_does_not_depend_on_input_order():
    sessions = _sessions()
    shuffled = sessions[:]
    random.Random(7).shuffle(shuffled)
    assert [_ids(x) for x in holdout(sessions, 4)] == [_ids(x) for x in holdout(shuffled, 4)]
    assert [_ids(x) for x in holdout(sessions, 4)] == [_ids(x) for x in holdout(sessions, 4)]


def test_the_order_is_by_start_time():
    sessions = _sessions()
    for group in by_port(sessions).values():
        assert [s.start for s in group] == sorted(s.start for s in group)


def test_folds_hold_out_every_session_once():
    sessions = _sessions()
    held = [s.index for fold in range(5) for s in holdout(sessions, 5, fold)[1]]
    assert sorted(held) == sorted(s.index for s in sessions if s.messages)


def test_udp_and_tcp_on_one_port_are_different_groups():
    a = session((b"q", b"a"), port=53)
    b = session((b"q", b"a"), port=53, transport=Transport.UDP)
    assert list(by_port([a, b])) == [("tcp", 53), ("udp", 53)]


@pytest.mark.parametrize("k, fold", [(1, None), (0, None), (3, 3), (3, -1)])
def test_bad_k_or_fold_is_refused(k, fold):
    with pytest.raises(ValueError):
        holdout(_sessions(), k, fold)
