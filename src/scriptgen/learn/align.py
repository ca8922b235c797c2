"""Learn stage, PI step (DESIGN.md §3.1): alignment of the requests of one state.

Protocol Informatics as ScriptGen uses it: pairwise Needleman-Wunsch global alignment,
distance = 1 - (identical aligned bytes / alignment length), a UPGMA (average linkage)
guide tree, flat clusters cut from it (macroclustering, §3.2), and a progressive multiple
alignment along the tree that Region Analysis (`learn.regions`) reads column by column.

Inputs: messages as `bytes` (the distinct requests leaving one state).
Outputs: gapped rows (`list[int]`, bytes 0-255 and `GAP` for a gap), a symmetric
`numpy` distance matrix, a `scipy` linkage matrix, flat cluster labels.
May import: numpy, scipy, parasail (the compiled SIMD aligner); nothing else of scriptgen.

Scoring (`Scoring`): match +2, mismatch -1, affine gaps with open 3 and extend 1 (a gap
of k bytes costs 3 + (k - 1)). Affine rather than linear because protocol messages differ
by variable-length fields (names, paths, counters): one contiguous gap per field keeps
the field in one mutating region, where linear gaps scatter it over the message. A
mismatch is cheaper than a gap pair (-1 > -2 * 3), so two equal-length parameters are
aligned column against column instead of being gapped around each other.

Cost bound: only the first `max_align_bytes` bytes of a message are aligned (DP cells
and the traceback table grow with the product of the lengths). The distance is computed
on those prefixes alone; in `align_pair` the tails beyond the cap are appended column by
column without alignment, the shorter tail padded with gaps, so every row still strips
to its whole message.

parasail quirks handled here:
- The substitution matrix is built from a NUL-terminated alphabet string, so NUL cannot
  be in it: the alphabet is bytes 1..255, and NUL falls into the matrix's last slot (the
  one parasail keeps for characters outside the alphabet), which is rescored to act as
  NUL's own symbol. The sequences themselves are passed with their lengths: NUL is safe.
- `matrix_create` and the CIGAR's =/X decision are case-insensitive unless told
  otherwise ('a' would match 'A'): both are asked to be case-sensitive.
- The traceback strings are C strings (cut at the first NUL), so rows are read from the
  CIGAR. parasail refuses empty sequences: they are handled before calling it.
- The `nw_stats_*` functions leave an alignment's leading gaps out of `length` (their
  `matches` agree with the traceback's; `length` falls short by the leading gap run), so
  the distance matrix reads the traceback's CIGAR too: it always equals `distance()`
  computed from `align_pair`, at ~1.25x the cost of the stats kernel.
- Kernels break ties between equally good alignments by argument order and by kind
  (diag / scan / striped); the AVX2, SSE4.1 and SSE2 builds of one kernel agree (checked
  on 2000 tie-heavy pairs), so alignments do not depend on the machine's SIMD level.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import parasail  # type: ignore[import-untyped]
from scipy.cluster.hierarchy import linkage  # type: ignore[import-untyped]
from scipy.spatial.distance import squareform  # type: ignore[import-untyped]

__all__ = [
    "DEFAULT",
    "GAP",
    "MAX_ALIGN_BYTES",
    "Scoring",
    "align_pair",
    "cut",
    "distance",
    "distance_matrix",
    "guide_tree",
    "multiple_alignment",
    "nearest",
]

GAP = 256
"""The gap symbol in aligned rows: outside the 256 byte values."""

MAX_ALIGN_BYTES = 2048
"""Default cap on the aligned prefix of a message (LearnParams.max_align_bytes)."""

# parasail's diagonal kernels win on short sequences, the scan kernels on long ones
# (measured with AVX2: crossover near 250 bytes, scan ~3x faster at 2 KiB; see
# bench/bench_align.py --length). The choice depends only on the two lengths, so
# align_pair and distance_matrix always pick the same kernel for a pair: the kernels break
# ties between equally good alignments differently.
_SCAN_FROM = 256
# 16-bit kernels saturate near 2**15; pairs whose score bound exceeds this use 32 bits.
_INT16_SAFE = 30_000

Matrix = npt.NDArray[np.float64]
_Rows = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Scoring:
    """Needleman-Wunsch scores; a gap of k bytes costs gap_open + (k - 1) * gap_extend.

    gap_open == gap_extend gives linear gaps.
    """

    match: int = 2
    mismatch: int = -1
    gap_open: int = 3
    gap_extend: int = 1

    def __post_init__(self) -> None:
        if not self.match > 0 or not self.mismatch < self.match:
            raise ValueError(f"need match > 0 and mismatch < match: {self}")
        if not self.gap_open >= self.gap_extend >= 1:
            raise ValueError(f"need gap_open >= gap_extend >= 1: {self}")


DEFAULT = Scoring()


@functools.lru_cache(maxsize=8)
def _matrix(scoring: Scoring) -> Any:
    """A parasail substitution matrix over all 256 byte values (see the NUL quirk above)."""
    alphabet = bytes(range(1, 256))
    matrix = parasail.matrix_create(alphabet, scoring.match, scoring.mismatch, True)
    nul = matrix.size - 1
    mapper = matrix.mapper
    if matrix.size != 256 or mapper[0] != nul or any(mapper[c] != c - 1 for c in alphabet):
        raise RuntimeError("parasail maps the byte alphabet unexpectedly")
    for other in range(nul):
        matrix.set_value(nul, other, scoring.mismatch)
        matrix.set_value(other, nul, scoring.mismatch)
    matrix.set_value(nul, nul, scoring.match)
    return matrix


@functools.cache
def _op_tables() -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], int]:
    """Per CIGAR op code (low 4 bits): consumes a byte of the query / of the reference;
    and the code of '=' (identical bytes)."""
    letters = [parasail.Cigar.decode_op(code) for code in range(16)]
    in_a = np.array([op in (b"M", b"=", b"X", b"I") for op in letters])
    in_b = np.array([op in (b"M", b"=", b"X", b"D") for op in letters])
    return in_a, in_b, letters.index(b"=")


class _Aligner:
    """parasail set up for one Scoring: the matrix and the kernels, resolved once."""

    def __init__(self, scoring: Scoring) -> None:
        self.scoring = scoring
        self.matrix = _matrix(scoring)
        self.open, self.extend = scoring.gap_open, scoring.gap_extend
        self.kernels: dict[tuple[str, int], Callable[..., Any]] = {
            (kind, bits): getattr(parasail, f"nw_trace_{kind}_{bits}")
            for kind in ("diag", "scan")
            for bits in (16, 32)
        }
        self.same = _op_tables()[2]

    def runs(self, a: bytes, b: bytes) -> list[int]:
        """The encoded CIGAR runs (length << 4 | op) of aligning non-empty a (query) and b."""
        short, long_ = (len(a), len(b)) if len(a) <= len(b) else (len(b), len(a))
        scoring = self.scoring
        bound = (
            max(scoring.match, -scoring.mismatch) * short
            + 2 * self.open
            + self.extend * (short + long_)
        )
        kernel = self.kernels[
            "scan" if short >= _SCAN_FROM else "diag", 16 if bound < _INT16_SAFE else 32
        ]
        result = kernel(a, b, self.open, self.extend, self.matrix)
        if result.saturated:
            result = self.kernels["scan", 32](a, b, self.open, self.extend, self.matrix)
        # Read the C struct (parasail_cigar_t: seq, len) straight into a list: the numpy
        # view parasail offers costs more than the runs are worth, and its memory dies
        # with the result.
        cigar = result.get_cigar(case_sensitive=True).pointer[0]
        runs: list[int] = cigar.seq[: cigar.len]
        return runs

    def distance(self, a: bytes, b: bytes) -> float:
        """`distance` of two capped, non-empty, canonically ordered messages."""
        same_op, total, same = self.same, 0, 0
        for run in self.runs(a, b):
            total += run >> 4
            if run & 0xF == same_op:
                same += run >> 4
        return 1.0 - same / total


@functools.lru_cache(maxsize=8)
def _aligner(scoring: Scoring) -> _Aligner:
    return _Aligner(scoring)


def _order(message: bytes) -> tuple[int, bytes]:
    """The canonical order of a pair: parasail breaks ties between equally good alignments
    by argument order, so each pair is always aligned with the smaller message first; this
    makes alignments and distances exactly symmetric."""
    return len(message), message


def _align_core(a: bytes, b: bytes, scoring: Scoring) -> tuple[_Rows, _Rows]:
    """Global alignment of two whole sequences as two int16 rows."""
    if not a or not b:
        width = len(a) + len(b)
        row_a = np.full(width, GAP, dtype=np.int16)
        row_b = np.full(width, GAP, dtype=np.int16)
        row_a[: len(a)] = np.frombuffer(a, dtype=np.uint8)
        row_b[len(a) :] = np.frombuffer(b, dtype=np.uint8)
        return row_a, row_b
    swap = _order(b) < _order(a)
    if swap:
        a, b = b, a
    cigar = np.array(_aligner(scoring).runs(a, b), dtype=np.uint32)
    in_a, in_b, _ = _op_tables()
    ops = np.repeat(cigar & 0xF, cigar >> 4)
    takes_a, takes_b = in_a[ops], in_b[ops]
    if int(takes_a.sum()) != len(a) or int(takes_b.sum()) != len(b):
        raise RuntimeError("parasail returned a CIGAR that does not cover both sequences")
    row_a = np.full(len(ops), GAP, dtype=np.int16)
    row_b = np.full(len(ops), GAP, dtype=np.int16)
    row_a[takes_a] = np.frombuffer(a, dtype=np.uint8)
    row_b[takes_b] = np.frombuffer(b, dtype=np.uint8)
    return (row_b, row_a) if swap else (row_a, row_b)


def _align_capped(a: bytes, b: bytes, scoring: Scoring, cap: int) -> tuple[_Rows, _Rows]:
    _check_cap(cap)
    row_a, row_b = _align_core(a[:cap], b[:cap], scoring)
    tail_a, tail_b = a[cap:], b[cap:]
    if not tail_a and not tail_b:
        return row_a, row_b
    width = max(len(tail_a), len(tail_b))
    pad_a = np.full(width, GAP, dtype=np.int16)
    pad_b = np.full(width, GAP, dtype=np.int16)
    pad_a[: len(tail_a)] = np.frombuffer(tail_a, dtype=np.uint8)
    pad_b[: len(tail_b)] = np.frombuffer(tail_b, dtype=np.uint8)
    return np.concatenate([row_a, pad_a]), np.concatenate([row_b, pad_b])


def _check_cap(cap: int) -> None:
    if cap < 1:
        raise ValueError(f"max_align_bytes must be >= 1, not {cap}")


def align_pair(
    a: bytes,
    b: bytes,
    scoring: Scoring = DEFAULT,
    max_align_bytes: int = MAX_ALIGN_BYTES,
) -> tuple[list[int], list[int]]:
    """Global (Needleman-Wunsch) alignment of two messages as two gapped rows.

    Both rows have the same length; each holds its message's bytes in order, with GAP
    where the other message has a byte facing nothing. Only the first `max_align_bytes`
    bytes are aligned; the rest follow column by column (see the module docstring).

    >>> align_pair(b"USER bob", b"USER alice")[0][:5] == list(b"USER ")
    True
    """
    row_a, row_b = _align_capped(a, b, scoring, max_align_bytes)
    return row_a.tolist(), row_b.tolist()


def _distance_of_rows(row_a: _Rows, row_b: _Rows) -> float:
    if len(row_a) == 0:
        return 0.0
    same = int(np.count_nonzero((row_a == row_b) & (row_a != GAP)))
    return 1.0 - same / len(row_a)


def distance(
    a: bytes,
    b: bytes,
    scoring: Scoring = DEFAULT,
    max_align_bytes: int = MAX_ALIGN_BYTES,
) -> float:
    """1 - identical aligned bytes / alignment length, over the first `max_align_bytes`.

    0.0 for identical (and for two empty) messages, 1.0 when nothing lines up.
    """
    _check_cap(max_align_bytes)
    row_a, row_b = _align_core(a[:max_align_bytes], b[:max_align_bytes], scoring)
    return _distance_of_rows(row_a, row_b)


def _fast_distance(a: bytes, b: bytes, aligner: _Aligner) -> float:
    """`distance` of two already capped messages, from the CIGAR's run lengths alone."""
    if a == b:
        return 0.0
    if not a or not b:
        return 1.0
    if _order(b) < _order(a):
        a, b = b, a
    return aligner.distance(a, b)


def distance_matrix(
    messages: Sequence[bytes],
    scoring: Scoring = DEFAULT,
    max_align_bytes: int = MAX_ALIGN_BYTES,
) -> Matrix:
    """All-pairs `distance` as a symmetric float64 matrix with a zero diagonal.

    Messages whose aligned prefixes are equal are aligned once.
    """
    _check_cap(max_align_bytes)
    heads = [m[:max_align_bytes] for m in messages]
    # Sorted in the canonical pair order, so that the hot loop never has to swap a pair.
    unique = sorted(set(heads), key=_order)
    position = {head: k for k, head in enumerate(unique)}
    size = len(unique)
    table = np.zeros((size, size), dtype=np.float64)
    aligner = _aligner(scoring)
    for i, a in enumerate(unique):
        row = table[i]
        if not a:  # only the first (shortest) can be empty
            row[i + 1 :] = 1.0
            continue
        for j in range(i + 1, size):
            row[j] = aligner.distance(a, unique[j])
    table = np.maximum(table, table.T)  # mirror the upper triangle (all entries >= 0)
    picked = np.asarray([position[h] for h in heads], dtype=np.intp)
    result: Matrix = table[np.ix_(picked, picked)]
    return result


def guide_tree(dist: Matrix) -> npt.NDArray[np.float64]:
    """UPGMA (average linkage) tree of a distance matrix, as a scipy linkage matrix.

    Row k merges nodes Z[k, 0] and Z[k, 1] (ids < n are messages, n + k is row k's
    cluster) at height Z[k, 2]. Fewer than two messages give an empty (0, 4) matrix.
    """
    n = dist.shape[0]
    if dist.shape != (n, n):
        raise ValueError(f"distance matrix must be square, not {dist.shape}")
    if n < 2:
        return np.zeros((0, 4), dtype=np.float64)
    tree: npt.NDArray[np.float64] = linkage(squareform(dist, checks=True), method="average")
    return tree


def _check_tree(tree: npt.NDArray[np.float64], n: int) -> None:
    if tree.shape != (max(n - 1, 0), 4):
        raise ValueError(f"a tree of {n} messages has {max(n - 1, 0)} rows, not {tree.shape}")


def cut(tree: npt.NDArray[np.float64], n: int, threshold: float) -> list[int]:
    """Flat clusters: the subtrees whose merges all happen at height <= threshold.

    Labels are 0, 1, ... in order of first appearance among the n messages. threshold 0
    keeps only identical (distance 0) messages together; threshold 1 (or more: heights
    are averages of distances <= 1, so float error must not split them) gives one cluster.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], not {threshold}")
    _check_tree(tree, n)
    if threshold >= 1.0:
        return [0] * n
    parent = list(range(2 * n - 1)) if n else []

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for k, (left, right, height, _count) in enumerate(tree.tolist()):
        if height <= threshold:
            parent[root(int(left))] = n + k
            parent[root(int(right))] = n + k
    labels: dict[int, int] = {}
    return [labels.setdefault(root(i), len(labels)) for i in range(n)]


def _consensus(rows: _Rows) -> bytes:
    """Per column the most frequent non-gap byte, ties to the lowest byte value."""
    width = rows.shape[1]
    slots = (np.arange(width, dtype=np.int64) * (GAP + 1) + rows).ravel()
    counts = np.bincount(slots, minlength=width * (GAP + 1)).reshape(width, GAP + 1)
    consensus: bytes = counts[:, :GAP].argmax(axis=1).astype(np.uint8).tobytes()
    return consensus


def _expand(rows: _Rows, aligned: _Rows) -> _Rows:
    """Insert into every row the gap columns that `aligned` (its consensus) gained."""
    grown = np.full((rows.shape[0], len(aligned)), GAP, dtype=np.int16)
    grown[:, aligned != GAP] = rows
    return grown


def multiple_alignment(
    messages: Sequence[bytes],
    tree: npt.NDArray[np.float64] | None = None,
    scoring: Scoring = DEFAULT,
    max_align_bytes: int = MAX_ALIGN_BYTES,
) -> list[list[int]]:
    """Progressive multiple alignment along the guide tree (default: UPGMA of distances).

    At each merge, the two groups' consensus sequences are aligned with `align_pair` and
    the gap columns this introduces are inserted into every row of the group that got
    them ("once a gap, always a gap"). Rows come back in input order, all of one length;
    each row without its gaps is its message.
    """
    n = len(messages)
    if n == 0:
        return []
    if tree is None:
        tree = guide_tree(distance_matrix(messages, scoring, max_align_bytes))
    _check_tree(tree, n)
    groups: dict[int, tuple[list[int], _Rows]] = {
        i: ([i], np.frombuffer(m, dtype=np.uint8).astype(np.int16).reshape(1, -1))
        for i, m in enumerate(messages)
    }
    for k, (left, right, _height, _count) in enumerate(tree.tolist()):
        members_a, rows_a = groups.pop(int(left))
        members_b, rows_b = groups.pop(int(right))
        cons_a, cons_b = _align_capped(
            _consensus(rows_a), _consensus(rows_b), scoring, max_align_bytes
        )
        merged = np.vstack([_expand(rows_a, cons_a), _expand(rows_b, cons_b)])
        groups[n + k] = (members_a + members_b, merged)
    ((members, rows),) = groups.values()
    ordered = rows[np.argsort(np.asarray(members, dtype=np.intp))]
    return ordered.tolist()  # type: ignore[no-any-return]


def nearest(
    message: bytes,
    candidates: Sequence[bytes],
    scoring: Scoring = DEFAULT,
    max_align_bytes: int = MAX_ALIGN_BYTES,
) -> tuple[int, float]:
    """Index and `distance` of the candidate closest to `message` (lowest index on ties).

    Used to assign requests beyond the aligned sample to the clusters found on it.
    """
    if not candidates:
        raise ValueError("nearest() needs at least one candidate")
    _check_cap(max_align_bytes)
    head = message[:max_align_bytes]
    aligner = _aligner(scoring)
    best, best_distance = 0, 2.0
    for i, candidate in enumerate(candidates):
        d = _fast_distance(head, candidate[:max_align_bytes], aligner)
        if d < best_distance:
            best, best_distance = i, d
    return best, best_distance
