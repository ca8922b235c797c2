"""A slow, obviously correct Needleman-Wunsch aligner to check the parasail fast path.

Gotoh's O(n*m) dynamic programme with affine gaps, the scoring of `scriptgen.learn.align`
(a gap of k bytes costs gap_open + (k - 1) * gap_extend), plus a scorer for any given
pair of gapped rows. Pure Python, for the short messages of the property tests.
"""

from __future__ import annotations

from scriptgen.learn.align import GAP, Scoring

__all__ = ["align", "score_rows"]

_NEG = -(10**9)
_H, _E, _F = 0, 1, 2  # last column: substitution, gap in a (b consumed), gap in b (a consumed)


def align(a: bytes, b: bytes, scoring: Scoring) -> tuple[int, list[int], list[int]]:
    """The optimal global score and one optimal alignment as two gapped rows."""
    n, m = len(a), len(b)
    op, ext = scoring.gap_open, scoring.gap_extend
    h = [[_NEG] * (m + 1) for _ in range(n + 1)]
    e = [[_NEG] * (m + 1) for _ in range(n + 1)]
    f = [[_NEG] * (m + 1) for _ in range(n + 1)]
    h[0][0] = 0
    for i in range(1, n + 1):
        f[i][0] = h[i][0] = -(op + (i - 1) * ext)
    for j in range(1, m + 1):
        e[0][j] = h[0][j] = -(op + (j - 1) * ext)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            e[i][j] = max(h[i][j - 1] - op, e[i][j - 1] - ext)
            f[i][j] = max(h[i - 1][j] - op, f[i - 1][j] - ext)
            sub = scoring.match if a[i - 1] == b[j - 1] else scoring.mismatch
            h[i][j] = max(h[i - 1][j - 1] + sub, e[i][j], f[i][j])
    row_a: list[int] = []
    row_b: list[int] = []
    i, j, state = n, m, _H
    while i > 0 or j > 0:
        if state == _H:
            if i > 0 and j > 0:
                sub = scoring.match if a[i - 1] == b[j - 1] else scoring.mismatch
                if h[i][j] == h[i - 1][j - 1] + sub:
                    row_a.append(a[i - 1])
                    row_b.append(b[j - 1])
                    i, j = i - 1, j - 1
                    continue
            state = _E if j > 0 and h[i][j] == e[i][j] else _F
        elif state == _E:
            row_a.append(GAP)
            row_b.append(b[j - 1])
            opened = i > 0 and j > 1 and e[i][j] == h[i][j - 1] - op
            state = _H if opened or j == 1 else _E
            j -= 1
        else:
            row_a.append(a[i - 1])
            row_b.append(GAP)
            opened = j > 0 and i > 1 and f[i][j] == h[i - 1][j] - op
            state = _H if opened or i == 1 else _F
            i -= 1
    row_a.reverse()
    row_b.reverse()
    return h[n][m], row_a, row_b


def score_rows(row_a: list[int], row_b: list[int], scoring: Scoring) -> int:
    """The score of a given pairwise alignment under the affine scoring."""
    assert len(row_a) == len(row_b)
    score = 0
    for row in (row_a, row_b):
        in_gap = False
        for x in row:
            if x == GAP:
                score -= scoring.gap_extend if in_gap else scoring.gap_open
            in_gap = x == GAP
    for x, y in zip(row_a, row_b):
        assert not (x == GAP and y == GAP), "a column of two gaps"
        if x != GAP and y != GAP:
            score += scoring.match if x == y else scoring.mismatch
    return score
