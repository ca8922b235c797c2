"""Learning every capture of ../shared/corpus: it succeeds with defaults, the model loads
back, learning is deterministic, and the thresholds' extremes behave as in the paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from scriptgen.capture import read_sessions
from scriptgen.learn import learn
from scriptgen.learn.channels import find_channels
from scriptgen.model import learnable
from scriptgen.modelfile import dumps, loads
from scriptgen.params import LearnParams

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CAPTURES = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng")) if CORPUS.is_dir() else []


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


@pytest.mark.skipif(not CAPTURES, reason="../shared/corpus is absent")
@pytest.mark.parametrize("capture", CAPTURES, ids=_id)
def test_learn_with_defaults_loads_back_and_is_deterministic(capture):
    sessions = list(read_sessions([str(capture)]))
    params = LearnParams(jobs=1)
    data = dumps(learn(sessions, params, sources=[capture.name]))
    assert dumps(learn(sessions, params, sources=[capture.name])) == data
    model = loads(data, str(capture))
    assert dumps(model) == data
    channels = find_channels(sessions)  # data channels are learned inside their parent's port
    # A port per port with data, but the UDP ports the machine closed; and the TCP ports
    # open and silent (dns_dev_nmap's tcp/53: nmap's SYN scan, nothing said).
    keep = learnable(sessions)
    learned = {(s.transport.value, s.server_port) for i, s in enumerate(sessions) if keep(s) and i not in channels}
    assert {(p.transport, p.port) for p in model.ports} == learned


DEV = [p for p in CAPTURES if p.parts[-3] == "dev"]


@pytest.mark.skipif(not DEV, reason="../shared/corpus/dev is absent")
@pytest.mark.parametrize("capture", DEV, ids=_id)
def test_threshold_extremes_on_real_captures(capture):
    sessions = list(read_sessions([str(capture)]))
    grid = {}
    for macro in (0.0, 0.5, 1.0):
        for micro in (0.0, 0.5, 1.0):
            model = learn(sessions, LearnParams(macro=macro, micro=micro, jobs=1))
            grid[macro, micro] = sum(p.stats["states"] for p in model.ports)
    raw = sum(p.stats["raw_states"] for p in learn(sessions, LearnParams(jobs=1)).ports)
    print(f"\n{_id(capture)}: raw {raw} states; W=0,w=0: {grid[0.0, 0.0]}; W=1,w=1: {grid[1.0, 1.0]}; "
          f"defaults (0.5, 0.5): {grid[0.5, 0.5]}")
    assert grid[0.0, 0.0] == raw
    assert grid[1.0, 1.0] == min(grid.values())
