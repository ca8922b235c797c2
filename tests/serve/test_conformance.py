"""The conformance suite (conformance.py) against the in-process engine and the server."""

from __future__ import annotations

import pytest

from tests.serve.conformance import CASES, Case, in_process, over_tcp, over_udp
from tests.serve.harness import ServerThread, listener, machine

IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread([listener("ftp"), listener("binary"), listener("udp")],
                      tmp_path_factory.mktemp("log")) as srv:
        yield srv


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "trickled"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_in_process(case: Case, trickle: bool):
    t = in_process(machine(case.model), case, trickle=trickle)
    assert (t.answers, t.closed) == (case.answers, case.closed)


@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "trickled"])
@pytest.mark.parametrize("case", [c for c in CASES if c.model != "udp"], ids=[c.name for c in CASES if c.model != "udp"])
def test_over_tcp(server, case: Case, trickle: bool):
    t = over_tcp(server.addr(case.model), case, trickle=trickle)
    assert (t.answers, t.closed) == (case.answers, case.closed)
    # The same script in process gives the same bytes.
    assert t == in_process(machine(case.model), case, trickle=trickle)


@pytest.mark.parametrize("case", [c for c in CASES if c.model == "udp"], ids=[c.name for c in CASES if c.model == "udp"])
def test_over_udp(server, case: Case):
    t = over_udp(server.addr(case.model), case)
    assert (t.answers, t.closed) == (case.answers, case.closed)
    assert t == in_process(machine(case.model), case)
