"""Learn stage, step 3: Region Analysis of one cluster of requests (paper §2.4.2).

Input: the rows of a multiple alignment (ints 0-255, GAP for gaps) and their weights.
Output: regions (fixed / mutating column runs), microclusters, and the value each row
carries in each region. Pure functions over lists: no alignment is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from scriptgen.learn.align import GAP
from scriptgen.model import Region
from scriptgen.params import LearnParams

__all__ = ["Span", "spans", "values", "microclusters", "make_regions"]

Row = Sequence[int]
Span = tuple[int, int, bool]  # (first column, end column, fixed)


def spans(rows: Sequence[Row], min_fixed_run: int) -> list[Span]:
    """Column runs of one kind. A column is fixed when every row has the same byte there
    (no gap). A fixed run shorter than `min_fixed_run` between two mutating runs is an
    accident of alignment, not structure, and joins them. A mutating run whose rows all
    carry the same bytes (gaps placed differently) is fixed."""
    if not rows or not rows[0]:
        return []
    width = len(rows[0])
    kinds = []
    for c in range(width):
        first = rows[0][c]
        kinds.append(first != GAP and all(r[c] == first for r in rows))
    runs: list[list[int]] = []  # [start, end, fixed]
    for c, fixed in enumerate(kinds):
        if runs and runs[-1][2] == fixed:
            runs[-1][1] = c + 1
        else:
            runs.append([c, c + 1, fixed])
    for i in range(1, len(runs) - 1):
        if runs[i][2] and runs[i][1] - runs[i][0] < min_fixed_run and not runs[i - 1][2] and not runs[i + 1][2]:
            runs[i][2] = False
    # Join the absorbed runs with their neighbours first: a run of one letter absorbed was
    # the same in every row, and taken alone it would be fixed again.
    runs = _join(runs)
    for run in runs:
        if not run[2] and len({_strip(r, run[0], run[1]) for r in rows}) == 1:
            run[2] = True
    return [(a, b, bool(f)) for a, b, f in _join(runs)]


def _join(runs: list[list[int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for run in runs:
        if merged and merged[-1][2] == run[2]:
            merged[-1][1] = run[1]
        else:
            merged.append(list(run))
    return merged


def values(row: Row, span: Span) -> bytes:
    return _strip(row, span[0], span[1])


def _strip(row: Row, start: int, end: int) -> bytes:
    return bytes(b for b in row[start:end] if b != GAP)


def microclusters(rows: Sequence[Row], weights: Sequence[int], params: LearnParams,
                  answers: Sequence[bytes] = ()) -> list[list[int]]:
    """Split a macrocluster (row indices) by frequent values (paper Fig. 4).

    For each group, the first mutating region (left to right) whose most frequent value
    has a weighted share >= w splits the group in two: the rows with that value (where the
    region becomes fixed) and the rest. Repeat until nothing splits. w=0 splits every
    value apart; w=1 never splits (a value with share 1 makes the region fixed).
    (ours) A region whose values the answers repeat (`answers`, one per row) does not
    split: a name the server echoes is a parameter, whichever value most clients sent.
    """
    done: list[list[int]] = []
    todo: list[list[int]] = [list(range(len(rows)))]
    while todo:
        group = todo.pop()
        part = _split(group, rows, weights, params, answers)
        if part is None:
            done.append(group)
        else:
            todo.extend(part)
    return sorted(done)


def _split(group: list[int], rows: Sequence[Row], weights: Sequence[int],
           params: LearnParams, answers: Sequence[bytes]) -> list[list[int]] | None:
    if len(group) < 2:
        return None
    sub = [_compact([rows[i] for i in group])]
    for start, end, fixed in spans(sub[0], params.min_fixed_run):
        if fixed:
            continue
        share: dict[bytes, int] = {}
        for i, row in zip(group, sub[0]):
            v = _strip(row, start, end)
            share[v] = share.get(v, 0) + weights[i]
        if len(share) < 2 or _echoed(group, sub[0], (start, end), weights, answers, params):
            continue
        best = min(share, key=lambda v: (-share[v], v))
        if share[best] >= params.micro * sum(share.values()):
            inside = [i for i, row in zip(group, sub[0]) if _strip(row, start, end) == best]
            taken = set(inside)
            outside = [i for i in group if i not in taken]
            return [inside, outside]
    return None


def _echoed(group: list[int], rows: Sequence[Row], span: tuple[int, int], weights: Sequence[int],
            answers: Sequence[bytes], params: LearnParams) -> bool:
    """Do the answers repeat the rows' values there (weighted share >= link_min_support)?"""
    if not answers:
        return False
    echoed = total = 0
    for i, row in zip(group, rows):
        value = _strip(row, *span)
        total += weights[i]
        if len(value) >= params.link_min_length and value in answers[i]:
            echoed += weights[i]
    return echoed >= params.link_min_support * total


def _compact(rows: list[Row]) -> list[list[int]]:
    """Drop the columns that are gaps in every row (left over from a larger alignment)."""
    keep = [c for c in range(len(rows[0])) if any(r[c] != GAP for r in rows)]
    return [[r[c] for c in keep] for r in rows]


def make_regions(rows: Sequence[Row], params: LearnParams) -> tuple[list[list[int]], list[Span], list[Region]]:
    """Regions of a final cluster: (compacted rows, spans, Region objects)."""
    compact = _compact(list(rows)) if rows and rows[0] else [list(r) for r in rows]
    found = spans(compact, params.min_fixed_run)
    regions = []
    for span in found:
        vals = [values(r, span) for r in compact]
        if span[2]:
            regions.append(Region.literal(vals[0]))
            continue
        distinct = sorted(set(vals))
        regions.append(region_of(vals, distinct, params))
    return compact, found, regions


def region_of(vals: Sequence[bytes], distinct: Sequence[bytes], params: LearnParams) -> Region:
    """A mutating region summarising the values a cluster's requests carry there."""
    lengths = [len(v) for v in vals]
    return Region(
        value=None,
        min_len=min(lengths),
        max_len=max(lengths),
        ascii=all(Region.literal(v).ascii for v in distinct),
        random=len(vals) >= 2 and len(distinct) >= params.random_distinct * len(vals),
        samples=tuple(distinct[:4]),
    )
