"""PI alignment: the parasail fast path against a pure-Python reference, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster  # type: ignore[import-untyped]

from scriptgen.learn import align as al
from scriptgen.learn.align import (
    DEFAULT,
    GAP,
    Scoring,
    align_pair,
    cut,
    distance,
    distance_matrix,
    guide_tree,
    multiple_alignment,
    nearest,
)
from tests.learn import reference_nw

# Few symbols (NUL, 0xFF, a letter in both cases) make ties and repeats likely; the full
# byte range makes mismatches likely. Both reach the NUL handling of the fast path.
_tricky = st.lists(st.sampled_from([0x00, 0x01, 0xFF, 0x61, 0x41]), max_size=60).map(bytes)
messages = st.one_of(st.binary(max_size=60), _tricky)
small_sets = st.lists(messages, max_size=7)
scorings = st.sampled_from([DEFAULT, Scoring(1, -1, 1, 1), Scoring(3, -2, 5, 2)])


def strip(row: list[int]) -> bytes:
    return bytes(x for x in row if x != GAP)


def formula(row_a: list[int], row_b: list[int]) -> float:
    if not row_a:
        return 0.0
    same = sum(1 for x, y in zip(row_a, row_b) if x == y != GAP)
    return 1.0 - same / len(row_a)


@settings(max_examples=150, deadline=None)
@given(messages, messages, scorings)
def test_align_pair_is_an_optimal_alignment(a: bytes, b: bytes, scoring: Scoring) -> None:
    row_a, row_b = align_pair(a, b, scoring)
    assert len(row_a) == len(row_b)
    assert strip(row_a) == a and strip(row_b) == b
    optimum, ref_a, ref_b = reference_nw.align(a, b, scoring)
    assert reference_nw.score_rows(ref_a, ref_b, scoring) == optimum
    # Tie-breaking may differ from the reference: compare scores, not rows.
    assert reference_nw.score_rows(row_a, row_b, scoring) == optimum


@settings(max_examples=100, deadline=None)
@given(messages, messages)
def test_distance_is_the_formula_on_the_rows(a: bytes, b: bytes) -> None:
    d = distance(a, b)
    assert d == formula(*align_pair(a, b))
    assert 0.0 <= d <= 1.0
    assert (d == 0.0) == (a == b)
    assert distance(b, a) == d
    row_a, row_b = align_pair(a, b)
    assert align_pair(b, a) == (row_b, row_a)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (b"GET /index.html", b"GET /index.htm", 1 - 14 / 15),
        (b"\x00\x00\x00\x00", b"\x00\x00\x00\x00", 0.0),
        (b"\x00\xff\x00", b"\x00\xff\x00\xff\xff\xff", 0.5),
        (b"abc", b"ABC", 1.0),  # case matters (parasail's default is case-insensitive)
        (b"", b"", 0.0),
        (b"", b"\x00", 1.0),
        (b"ab", b"", 1.0),
    ],
)
def test_distance_on_unique_alignments(a: bytes, b: bytes, expected: float) -> None:
    _, ref_a, ref_b = reference_nw.align(a, b, DEFAULT)
    assert formula(ref_a, ref_b) == pytest.approx(expected)
    assert distance(a, b) == pytest.approx(expected)


def test_nul_is_a_symbol_of_its_own() -> None:
    assert align_pair(b"\x00\x00AB\x00", b"\x00AB") == (
        [0, 0, 65, 66, 0],
        [GAP, 0, 65, 66, GAP],
    )
    for other in (1, 0x2A, 0xFF):
        assert distance(b"\x00", bytes([other])) == 1.0
        assert distance(bytes([other]), bytes([other])) == 0.0


@settings(max_examples=40, deadline=None)
@given(small_sets)
def test_distance_matrix_equals_pairwise_distance(msgs: list[bytes]) -> None:
    dist = distance_matrix(msgs)
    n = len(msgs)
    assert dist.shape == (n, n) and dist.dtype == np.float64
    assert np.array_equal(dist, dist.T)
    assert not np.diagonal(dist).any()
    for i in range(n):
        for j in range(n):
            assert dist[i, j] == distance(msgs[i], msgs[j])


@settings(max_examples=40, deadline=None)
@given(messages, messages, st.integers(1, 70))
def test_the_cap_bounds_the_aligned_prefix(a: bytes, b: bytes, cap: int) -> None:
    d = distance(a, b, max_align_bytes=cap)
    assert d == distance(a[:cap], b[:cap])
    assert distance_matrix([a, b], max_align_bytes=cap)[0, 1] == d
    row_a, row_b = align_pair(a, b, max_align_bytes=cap)
    assert len(row_a) == len(row_b)
    assert strip(row_a) == a and strip(row_b) == b


def test_long_messages_are_capped() -> None:
    rng = np.random.default_rng(7)
    big = [b"CMD " + rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes() for _ in range(3)]
    dist = distance_matrix(big, max_align_bytes=512)
    assert dist[0, 1] == distance(big[0][:512], big[1][:512])
    rows = multiple_alignment(big, max_align_bytes=512)
    assert [strip(r) for r in rows] == big


@settings(max_examples=60, deadline=None)
@given(small_sets)
def test_multiple_alignment_rows_strip_to_the_inputs(msgs: list[bytes]) -> None:
    rows = multiple_alignment(msgs)
    assert len(rows) == len(msgs)
    assert len({len(r) for r in rows}) <= 1
    assert [strip(r) for r in rows] == msgs
    if rows and rows[0]:
        # Every column holds at least one byte: no column is gaps all the way down.
        assert all(any(r[c] != GAP for r in rows) for c in range(len(rows[0])))
    assert multiple_alignment(msgs) == rows


def test_multiple_alignment_edge_cases() -> None:
    assert multiple_alignment([]) == []
    assert multiple_alignment([b"\x00hello"]) == [list(b"\x00hello")]
    assert multiple_alignment([b""]) == [[]]
    assert multiple_alignment([b"same", b"same"]) == [list(b"same")] * 2


def test_multiple_alignment_lines_up_a_protocol_field() -> None:
    msgs = [b"USER alice\r\n", b"USER bob\r\n", b"USER carol\r\n", b"USER x\r\n"]
    rows = multiple_alignment(msgs)
    for row in rows:
        assert row[:5] == list(b"USER ")
        assert row[-2:] == list(b"\r\n")


def test_multiple_alignment_follows_a_given_tree() -> None:
    msgs = [b"abc", b"abd", b"xbc"]
    tree = np.array([[0.0, 2.0, 0.3, 2.0], [1.0, 3.0, 0.5, 3.0]])
    rows = multiple_alignment(msgs, tree)
    assert [strip(r) for r in rows] == msgs
    with pytest.raises(ValueError):
        multiple_alignment(msgs, tree[:1])


@settings(max_examples=40, deadline=None)
@given(small_sets)
def test_cut_extremes(msgs: list[bytes]) -> None:
    n = len(msgs)
    tree = guide_tree(distance_matrix(msgs))
    assert cut(tree, n, 1.0) == [0] * n
    alone = cut(tree, n, 0.0)
    for i in range(n):
        for j in range(n):
            assert (alone[i] == alone[j]) == (msgs[i] == msgs[j])
    # Labels number the clusters in order of first appearance.
    for labels in (alone, cut(tree, n, 0.5)):
        seen: list[int] = []
        for label in labels:
            if label not in seen:
                assert label == len(seen)
                seen.append(label)


def test_cut_matches_scipy_between_the_extremes() -> None:
    msgs = [b"USER alice", b"USER bob", b"PASS secret", b"PASS hunter2", b"QUIT", b"NOOP"]
    tree = guide_tree(distance_matrix(msgs))
    for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
        ours = cut(tree, len(msgs), threshold)
        theirs = fcluster(tree, threshold, criterion="distance")
        assert len(set(ours)) == len(set(theirs))
        for i in range(len(msgs)):
            for j in range(len(msgs)):
                assert (ours[i] == ours[j]) == (theirs[i] == theirs[j])


def test_cut_at_one_survives_float_error() -> None:
    # Heights that are averages of 1.0 can round above 1.0; they must not split the tree.
    tree = np.array([[0.0, 1.0, 1.0 + 1e-15, 2.0], [2.0, 3.0, 1.0000000000000002, 3.0]])
    assert cut(tree, 3, 1.0) == [0, 0, 0]
    assert cut(tree, 3, 0.999) == [0, 1, 2]


def test_cut_and_tree_edge_cases() -> None:
    for n in (0, 1):
        tree = guide_tree(np.zeros((n, n)))
        assert tree.shape == (0, 4)
        assert cut(tree, n, 0.0) == [0] * n
        assert cut(tree, n, 1.0) == [0] * n
    with pytest.raises(ValueError):
        cut(guide_tree(np.zeros((1, 1))), 1, 1.5)
    with pytest.raises(ValueError):
        cut(guide_tree(np.zeros((1, 1))), 2, 0.5)


@settings(max_examples=30, deadline=None)
@given(messages, st.lists(messages, min_size=1, max_size=6))
def test_nearest_is_the_closest_candidate(message: bytes, candidates: list[bytes]) -> None:
    index, d = nearest(message, candidates)
    distances = [distance(message, c) for c in candidates]
    assert d == min(distances)
    assert index == distances.index(d)


def test_nearest_needs_candidates() -> None:
    with pytest.raises(ValueError):
        nearest(b"x", [])


def test_scoring_is_validated() -> None:
    with pytest.raises(ValueError):
        Scoring(match=0)
    with pytest.raises(ValueError):
        Scoring(mismatch=2)
    with pytest.raises(ValueError):
        Scoring(gap_open=1, gap_extend=2)
    with pytest.raises(ValueError):
        distance(b"a", b"b", max_align_bytes=0)


def test_public_surface() -> None:
    for name in al.__all__:
        assert hasattr(al, name)
    assert GAP == 256 and GAP > 255
