"""Evaluate stage: scoring a replay against the recording (paper §3.2, DESIGN §6).

Inputs: the recorded answers of a session (banner first) and a target's `Outcome`.
Outputs: an `AnswerScore` per answer, a `SessionScore` per session, and their sums per
(target, transport, port) in a `PortReport`.

- similarity(expected, got) in [0, 1]: 1 - the PI alignment distance (scriptgen.learn.align:
  identical aligned bytes / alignment length) over the first `compare_bytes` bytes; 1.0
  when both are empty, 0.0 when exactly one is.
- exact: the whole answer is byte for byte the recorded one.
- carried: every answer was given where the real server gave one, each is at least
  `carried_similarity` similar, and the connection stayed open until the client had sent
  its last message. The first answer that breaks this is the session's `failure`.

The banner counts as an answer only when the real server or the target sent one (a
protocol where the client speaks first would otherwise score a free 1.0 per session).
An answer to a request that was never sent (the target had closed) is scored as silence.

May import: scriptgen.learn.align, scriptgen.evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

from scriptgen.params import EvaluateParams
from scriptgen.evaluate.targets import Outcome
from scriptgen.learn.align import distance

__all__ = ["FAILURES", "AnswerScore", "PortReport", "SessionScore", "score_session", "similarity"]

FAILURES = ("error", "closed", "silent", "different")
"""Why a session was not carried, at its first failing answer: the replay failed (`error`),
the target had closed before this request (`closed`), it gave nothing where the real server
answered (`silent`), or its answer is under the similarity threshold (`different`)."""


def similarity(expected: bytes, got: bytes, compare_bytes: int = 2048) -> float:
    """1 - alignment distance of the first `compare_bytes` bytes; both empty = 1.0.

    >>> similarity(b"220 ready\\r\\n", b"220 ready\\r\\n"), similarity(b"", b""), similarity(b"x", b"")
    (1.0, 1.0, 0.0)
    """
    if expected == got:
        return 1.0
    if not expected or not got:
        return 0.0
    return 1.0 - distance(expected[:compare_bytes], got[:compare_bytes], max_align_bytes=compare_bytes)


@dataclass(frozen=True, slots=True)
class AnswerScore:
    """One answer: `index` 0 is the banner, i the answer to request i (1-based)."""

    index: int
    request: bytes  # b"" for the banner
    expected: bytes
    got: bytes
    sent: bool  # the request reached the target (False: it had closed before)
    similarity: float
    exact: bool
    fallback: str | None = None  # in process: the emulator's fallback when nothing matched


@dataclass(frozen=True, slots=True)
class SessionScore:
    """One replayed session. `client` and `start` identify it in the capture."""

    target: str
    transport: str
    port: int
    client: str
    start: float
    requests: int
    answers: tuple[AnswerScore, ...]
    closed: bool
    carried: bool
    failure: tuple[int, str] | None  # (answer index, one of FAILURES)
    error: str | None = None
    seen: bool | None = None
    """With a holdout: whether the sessions learned from sent every request of this one,
    byte for byte (None: not known)."""
    varied: bool = False
    """Not carried, and at the failing answer the capture's server itself answered the same
    conversation (the same requests, in order, up to there) differently in another session:
    a nonce, a challenge, a time: the failure may be no fault of the target."""
    new_answer: bool | None = None
    """With a holdout, for a session not carried: whether the real server's answer where it
    failed was new to the learner (no answer the learned sessions got is
    `carried_similarity` similar to it). Such a failure asked for what the capture never
    showed; the others are where the model chose wrong (None: not known)."""

    @property
    def similarity(self) -> float:
        """Mean similarity of the answers (1.0 for a session without any)."""
        return sum(a.similarity for a in self.answers) / len(self.answers) if self.answers else 1.0

    @property
    def exact(self) -> float:
        """Share of answers reproduced byte for byte."""
        return sum(a.exact for a in self.answers) / len(self.answers) if self.answers else 1.0


@dataclass(frozen=True, slots=True)
class PortReport:
    """The sessions of one (transport, port) replayed against one target."""

    target: str
    transport: str
    port: int
    sessions: tuple[SessionScore, ...]

    @property
    def answers(self) -> int:
        return sum(len(s.answers) for s in self.sessions)

    @property
    def similarity(self) -> float:
        """Mean over all answers of all sessions (a long session weighs more)."""
        n = self.answers
        return sum(a.similarity for s in self.sessions for a in s.answers) / n if n else 1.0

    @property
    def exact(self) -> float:
        """Share of all answers reproduced byte for byte."""
        n = self.answers
        return sum(a.exact for s in self.sessions for a in s.answers) / n if n else 1.0

    @property
    def carried(self) -> int:
        """Sessions carried to the end."""
        return sum(s.carried for s in self.sessions)

    @property
    def carried_share(self) -> float:
        return self.carried / len(self.sessions) if self.sessions else 1.0

    def seen(self) -> tuple[int, int] | None:
        """With a holdout: (sessions whose every request the learned sessions sent, how
        many of those were carried); None when not known. The others asked for something
        the capture never showed the learner."""
        known = [s for s in self.sessions if s.seen is not None]
        if not known:
            return None
        seen = [s for s in known if s.seen]
        return len(seen), sum(s.carried for s in seen)

    def varied(self) -> int:
        """Sessions not carried where the capture's server itself varied (SessionScore.varied)."""
        return sum(s.varied for s in self.sessions)

    def new_answers(self) -> int | None:
        """With a holdout: sessions not carried that failed at an answer new to the learner
        (SessionScore.new_answer); None when not known."""
        known = [s for s in self.sessions if s.new_answer is not None]
        return sum(bool(s.new_answer) for s in known) if known else None

    def failures(self) -> dict[str, int]:
        """Sessions not carried, by the reason at their first failing answer."""
        counts = dict.fromkeys(FAILURES, 0)
        for s in self.sessions:
            if s.failure is not None:
                counts[s.failure[1]] += 1
        return counts

    def fallbacks(self) -> dict[str, int]:
        """In process: requests no transition matched, by the emulator's fallback."""
        counts: dict[str, int] = {}
        for s in self.sessions:
            for a in s.answers:
                if a.fallback:
                    counts[a.fallback] = counts.get(a.fallback, 0) + 1
        return dict(sorted(counts.items()))


def score_session(
    *,
    target: str,
    transport: str,
    port: int,
    client: str,
    start: float,
    banner: bytes,
    turns: list[tuple[bytes, bytes]],
    outcome: Outcome,
    params: EvaluateParams,
) -> SessionScore:
    """Score `outcome` against the recording: `banner` and (request, answer) `turns`."""
    answers: list[AnswerScore] = []
    failure: tuple[int, str] | None = None
    recorded = [(b"", banner), *turns]
    for index, (request, expected) in enumerate(recorded):
        sent = index < len(outcome.answers)
        got = outcome.answers[index] if sent else b""
        if index == 0 and not expected and not got:
            continue  # the client speaks first: no banner on either side
        fallback = outcome.fallbacks[index - 1] if 0 < index <= len(outcome.fallbacks) else None
        sim = similarity(expected, got, params.compare_bytes)
        answers.append(AnswerScore(index, request, expected, got, sent, sim, got == expected, fallback))
        if failure is None:
            if not sent:
                failure = (index, "error" if outcome.error else "closed")
            elif expected and not got:
                failure = (index, "silent")
            elif sim < params.carried_similarity:
                failure = (index, "different")
    if failure is None and outcome.error:
        failure = (len(recorded) - 1, "error")
    return SessionScore(target, transport, port, client, start, len(turns), tuple(answers), outcome.closed,
                        failure is None, failure, outcome.error)
