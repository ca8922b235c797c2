"""Evaluate stage: the knobs of replay and scoring, with their defaults.

They sit here rather than in scriptgen.params because they tune a measurement, not the
model: nothing of them is recorded in a model file. Values only; no imports of scriptgen.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvaluateParams"]


@dataclass(frozen=True, slots=True)
class EvaluateParams:
    """How a replaying client paces itself, and how answers are scored."""

    quiet: float = 0.3
    """Seconds of silence from the server after which an answer is taken as complete."""

    wait: float = 2.0
    """Seconds the client waits for the first byte of an answer the real server gave
    (a non-empty recorded answer); where the real server stayed silent it waits `quiet`."""

    connect_timeout: float = 5.0
    """TCP target: seconds allowed to open the connection."""

    session_timeout: float = 120.0
    """TCP target: seconds allowed for one whole session; past it the session ends as an
    error (nothing after that is scored as received)."""

    concurrency: int = 32
    """TCP target: sessions replayed at once."""

    max_answer_bytes: int = 1 << 20
    """Bytes kept of one answer; more are read and dropped (bounded memory)."""

    compare_bytes: int = 2048
    """Similarity compares the first this many bytes of each answer (alignment cost grows
    with the product of the lengths); exactness compares whole answers."""

    carried_similarity: float = 0.8
    """A session is carried to the end when every answer is at least this similar to the
    recorded one (and given where the real server gave one, and the connection stayed open
    until the last client message)."""

    def __post_init__(self) -> None:
        if self.quiet <= 0 or self.wait <= 0 or self.connect_timeout <= 0 or self.session_timeout <= 0:
            raise ValueError(f"times must be positive: {self}")
        if self.concurrency < 1 or self.max_answer_bytes < 1 or self.compare_bytes < 1:
            raise ValueError(f"counts must be at least 1: {self}")
        if not 0.0 <= self.carried_similarity <= 1.0:
            raise ValueError(f"carried_similarity must be in [0, 1]: {self}")
