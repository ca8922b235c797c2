"""Evaluate stage: the held-out split (learn on some sessions, evaluate on the others).

Per (transport, server port), the sessions that carry data are put in a stable order
(capture start time, then client and server endpoints, then the reader's index) and
numbered from 0; session i is held out when i % k == fold. The default fold, k - 1,
holds out every k-th session (the 5th, 10th, ... for k = 5); folds 0..k-1 together hold
out every session exactly once (k-fold cross-validation). Sessions without any message
(port scans) go to neither side: there is nothing to learn from or to replay. A data
channel (scriptgen.learn.channels) is not a session of its port: it goes where its
parent goes.

Values in, values out: the same sessions and k always give the same split.
May import: scriptgen.model, scriptgen.learn.channels.
"""

from __future__ import annotations

from collections.abc import Iterable

from scriptgen.learn.channels import find_channels
from scriptgen.model import Session

__all__ = ["by_port", "holdout"]


def by_port(sessions: Iterable[Session]) -> dict[tuple[str, int], list[Session]]:
    """Sessions with messages, grouped by (transport, server port) in the stable order,
    keys sorted; data channels left out."""
    sessions = list(sessions)
    channels = find_channels(sessions)
    groups: dict[tuple[str, int], list[Session]] = {}
    for i, s in enumerate(sessions):
        if s.messages and i not in channels:
            groups.setdefault((s.transport.value, s.server_port), []).append(s)
    return {key: sorted(groups[key], key=lambda s: (s.start, s.client, s.server, s.index)) for key in sorted(groups)}


def holdout(sessions: Iterable[Session], k: int, fold: int | None = None) -> tuple[list[Session], list[Session]]:
    """(learn, held out): per port, session i of the stable order is held out when
    i % k == fold (default k - 1: every k-th session)."""
    if k < 2:
        raise ValueError(f"k must be at least 2 (one session in k is held out): {k}")
    fold = k - 1 if fold is None else fold
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}: {fold}")
    sessions = list(sessions)
    train: list[Session] = []
    test: list[Session] = []
    held: set[int] = set()  # id() of the held-out sessions
    for group in by_port(sessions).values():
        for i, s in enumerate(group):
            (test if i % k == fold else train).append(s)
            if i % k == fold:
                held.add(id(s))
    for child, link in sorted(find_channels(sessions).items()):
        (test if id(sessions[link.parent]) in held else train).append(sessions[child])
    return train, test
