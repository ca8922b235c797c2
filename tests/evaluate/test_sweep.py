"""`scriptgen sweep`: the grid's extremes behave as in the paper, results resume, plots exist."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scriptgen.errors import ScriptgenError
from scriptgen.evaluate.sweep import grid, sweep
from scriptgen.learn import learn
from scriptgen.params import LearnParams

from tests.learn.sessions import session

BANNER = b"220 ready\r\n"


def _sessions():
    out = []
    for i, name in enumerate([b"alice", b"bob", b"carol", b"dave", b"eve", b"frank", b"grace", b"heidi", b"ivan", b"judy"]):
        out.append(session((b"USER " + name + b"\r\n", b"331 Password required for " + name + b".\r\n"),
                           (b"PASS p%d\r\n" % i, b"230 Logged in.\r\n"), (b"QUIT\r\n", b"221 Bye.\r\n"), banner=BANNER))
        out.append(session((b"SYST\r\n", b"215 UNIX\r\n"), (b"HELP\r\n", b"214 Help OK.\r\n"), banner=BANNER))
    return out


def test_grid_parsing():
    assert grid("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(grid("0:1:0.1")) == 11 and grid("0.3") == [0.3]
    for bad in ("0:2:0.5", "1:0:0.1", "a:b", "0:1:0"):
        with pytest.raises(ScriptgenError):
            grid(bad)


def test_sweep_extremes_and_resume(tmp_path):
    sessions = _sessions()
    results = str(tmp_path / "r.jsonl")
    calls = []
    cells = list(sweep(sessions, [0.0, 0.5, 1.0], [0.0, 0.5, 1.0], 5, results, jobs=1,
                       progress=lambda c, d, t: calls.append(d)))
    assert len(cells) == 9 and calls == list(range(1, 10))
    by = {(c.macro, c.micro): c for c in cells}
    raw = sum(p.stats["raw_states"] for p in learn([s for i, s in enumerate(sessions) if i % 5 != 4],
                                                     LearnParams(jobs=1)).ports)
    assert by[0.0, 0.0].states == by[0.0, 0.0].raw_states == raw
    assert by[1.0, 1.0].states == min(c.states for c in cells) < raw
    assert all(0.0 <= c.similarity <= 1.0 and c.sessions == 4 for c in cells)
    # A rerun computes nothing: every cell is read back.
    again = []
    cells2 = list(sweep(sessions, [0.0, 0.5, 1.0], [0.0, 0.5, 1.0], 5, results, jobs=1,
                        progress=lambda c, d, t: again.append(d)))
    assert again == [] and sorted(cells2, key=lambda c: (c.macro, c.micro)) == sorted(cells, key=lambda c: (c.macro, c.micro))
    assert len(open(results).read().splitlines()) == 9
    # Different inputs (another holdout) do not reuse those cells.
    fresh = []
    list(sweep(sessions, [0.0], [0.0], 4, results, jobs=1, progress=lambda c, d, t: fresh.append(d)))
    assert fresh == [1]


def test_cli_sweep_writes_results_and_plots(tmp_path):
    from tests.capture.craft import ethernet, write_pcap
    from tests.capture.craft import conversation

    pkts = []
    for i in range(12):
        pkts += conversation(("10.0.0.1", 30000 + i), ("10.0.0.2", 21),
                             exchanges=[(b"", BANNER), (b"USER u%d\r\n" % i, b"331 ok u%d\r\n" % i), (b"QUIT\r\n", b"221\r\n")],
                             isn_client=1000 * i)
    capture = write_pcap(tmp_path / "c.pcap", [ethernet(p) for p in pkts])
    out = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "scriptgen", "sweep", str(capture), "--macro", "0:1:0.5", "--micro", "0:1:0.5",
                        "--holdout", "4", "-j", "2", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and {"macro", "micro", "states", "similarity", "carried"} <= set(lines[0])
    for name in ("states", "similarity", "carried"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert "9/9" in r.stderr
