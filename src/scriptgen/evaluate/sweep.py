"""Evaluate stage: the threshold sweep of the paper's §3.2 (Fig. 5 and 6).

For every (W, w) cell of a grid: learn on the training sessions, count states and
transitions, replay the held-out sessions in process (`evaluate_holdout`), and record the
mean similarity, the exact share and the carried share. Cells are independent: they run in
a process pool, and each finished cell is one JSON line, so a rerun skips what is done.
`plot` draws the heatmaps (matplotlib, imported only there).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

from scriptgen import __version__
from scriptgen.errors import ScriptgenError
from scriptgen.evaluate.run import evaluate_holdout
from scriptgen.model import Session
from scriptgen.params import LearnParams

__all__ = ["Cell", "grid", "fingerprint", "sweep", "load_cells", "plot"]


@dataclass(frozen=True, slots=True)
class Cell:
    """One (W, w) point: model size and emulation quality."""

    macro: float
    micro: float
    raw_states: int
    states: int
    transitions: int
    links: int
    sessions: int  # held-out sessions replayed
    answers: int
    similarity: float  # mean over answers
    exact: float  # share of answers reproduced byte for byte
    carried: float  # share of sessions carried to the end
    seconds: float
    inputs: str  # fingerprint of the sessions and holdout, to resume only matching runs


def grid(spec: str) -> list[float]:
    """"START:STOP:STEP" (inclusive), or a single value, -> sorted values in [0, 1]."""
    try:
        parts = [float(x) for x in spec.split(":")]
    except ValueError:
        raise ScriptgenError(f"grid {spec!r}: expected START:STOP:STEP, e.g. 0:1:0.1") from None
    if len(parts) == 1:
        values = parts
    elif len(parts) == 3 and parts[2] > 0 and parts[0] <= parts[1]:
        start, stop, step = parts
        count = int(round((stop - start) / step)) + 1
        values = [round(min(stop, start + i * step), 6) for i in range(count)]
    else:
        raise ScriptgenError(f"grid {spec!r}: expected START:STOP:STEP with STEP > 0 and START <= STOP")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ScriptgenError(f"grid {spec!r}: thresholds lie in [0, 1]")
    return sorted(set(values))


def fingerprint(sessions: Sequence[Session], k: int) -> str:
    # The release and the learning defaults too: cells computed by another version of the
    # algorithm are not results of this one.
    h = hashlib.sha256(f"holdout={k}|{__version__}|{LearnParams()!r}".encode())
    for s in sessions:
        h.update(f"{s.transport.value}|{s.client}|{s.server}|{s.start}|".encode())
        for m in s.messages:
            h.update(m.sender.value.encode() + len(m.data).to_bytes(8, "big") + m.data)
    return h.hexdigest()[:16]


_SESSIONS: list[Session] = []


def _init(sessions: list[Session]) -> None:
    global _SESSIONS
    _SESSIONS = sessions


def _cell(macro: float, micro: float, k: int, inputs: str) -> Cell:
    started = time.monotonic()
    models, report = evaluate_holdout(_SESSIONS, k, LearnParams(macro=macro, micro=micro, jobs=1))
    ports = models[0].ports
    scores = list(report.sessions())
    answers = [a for s in scores for a in s.answers]
    return Cell(
        macro=macro, micro=micro,
        raw_states=sum(p.stats["raw_states"] for p in ports),
        states=sum(p.stats["states"] for p in ports),
        transitions=sum(p.stats["transitions"] for p in ports),
        links=sum(p.stats["links"] for p in ports),
        sessions=len(scores), answers=len(answers),
        similarity=round(sum(a.similarity for a in answers) / len(answers), 6) if answers else 1.0,
        exact=round(sum(a.exact for a in answers) / len(answers), 6) if answers else 1.0,
        carried=round(sum(s.carried for s in scores) / len(scores), 6) if scores else 1.0,
        seconds=round(time.monotonic() - started, 3),
        inputs=inputs,
    )


def load_cells(path: str, inputs: str | None = None) -> dict[tuple[float, float], Cell]:
    """Finished cells of an earlier run (of the same inputs, when given). Lines that do
    not parse (a run killed mid-write) are ignored: they are simply computed again."""
    cells: dict[tuple[float, float], Cell] = {}
    if not os.path.exists(path):
        return cells
    with open(path) as f:
        for line in f:
            try:
                cell = Cell(**json.loads(line))
            except (ValueError, TypeError):
                continue
            if inputs is None or cell.inputs == inputs:
                cells[cell.macro, cell.micro] = cell
    return cells


def sweep(sessions: list[Session], macros: Sequence[float], micros: Sequence[float], k: int, results: str,
          jobs: int = 0, progress: Callable[[Cell, int, int], None] | None = None) -> Iterator[Cell]:
    """Run every cell not already in `results` (JSON lines, appended as cells finish) and
    yield every cell of the grid, done before or now."""
    inputs = fingerprint(sessions, k)
    done = load_cells(results, inputs)
    todo = [(w, m) for w in macros for m in micros if (w, m) not in done]
    total = len(macros) * len(micros)
    count = total - len(todo)
    yield from (done[w, m] for w in macros for m in micros if (w, m) in done)
    jobs = jobs or os.cpu_count() or 1
    with open(results, "a") as out:
        if jobs <= 1 or len(todo) <= 1:
            _init(sessions)
            finished: Iterator[Cell] = (_cell(w, m, k, inputs) for w, m in todo)
            yield from _record(finished, out, progress, count, total)
        else:
            with ProcessPoolExecutor(max_workers=jobs, initializer=_init, initargs=(sessions,)) as pool:
                futures = pool.map(_cell, [w for w, _ in todo], [m for _, m in todo], [k] * len(todo),
                                   [inputs] * len(todo))
                yield from _record(futures, out, progress, count, total)


def _record(cells: Iterator[Cell], out: object, progress: Callable[[Cell, int, int], None] | None,
            count: int, total: int) -> Iterator[Cell]:
    for cell in cells:
        out.write(json.dumps(asdict(cell), sort_keys=True) + "\n")  # type: ignore[attr-defined]
        out.flush()  # type: ignore[attr-defined]
        count += 1
        if progress:
            progress(cell, count, total)
        yield cell


def plot(cells: Sequence[Cell], directory: str, title: str) -> list[str]:
    """Heatmaps over (W, w): states (Fig. 5), similarity (Fig. 6), carried share. Returns
    the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    macros = sorted({c.macro for c in cells})
    micros = sorted({c.micro for c in cells})
    by = {(c.macro, c.micro): c for c in cells}
    written = []
    figures: list[tuple[str, str, str, Callable[[Cell], float]]] = [
        ("states", "Number of states (paper Fig. 5)", "viridis", lambda c: float(c.states)),
        ("similarity", "Mean answer similarity (paper Fig. 6)", "magma", lambda c: c.similarity),
        ("carried", "Share of held-out sessions carried to the end", "magma", lambda c: c.carried),
    ]
    for name, label, cmap, value in figures:
        grid_values = [[value(by[w, m]) if (w, m) in by else float("nan") for w in macros] for m in micros]
        fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=110)
        image = ax.imshow(grid_values, origin="lower", cmap=cmap, aspect="auto",
                          extent=(_edge(macros, 0), _edge(macros, 1), _edge(micros, 0), _edge(micros, 1)))
        ax.set_xticks(_ticks(macros))
        ax.set_yticks(_ticks(micros))
        bar = fig.colorbar(image, ax=ax)
        bar.set_label(name)
        ax.set_xlabel("macroclustering threshold W")
        ax.set_ylabel("microclustering threshold w")
        ax.set_title(f"{label}\n{title}", fontsize=10)
        path = os.path.join(directory, f"{name}.png")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _edge(values: Sequence[float], upper: int) -> float:
    step = (values[-1] - values[0]) / (len(values) - 1) if len(values) > 1 else 0.1
    return values[-1] + step / 2 if upper else values[0] - step / 2


def _ticks(values: Sequence[float]) -> list[float]:
    step = max(1, (len(values) + 10) // 11)  # at most 11 labels
    return list(values[::step])
