"""Evaluate stage, the driver: sessions + a target -> Report (paper §3.2, DESIGN §6).

    holdout (split.py) -> learn (scriptgen.learn) -> InProcessTarget | TcpTarget (targets.py)
                       -> replay every held-out session -> score_session (score.py) -> Report

Values in, values out: no files, no printing. Sessions that cannot be replayed from their
start (their handshake and first messages were not captured: `midstream`) and sessions the
target cannot play (UDP over TCP, ports the model has no machine for, UDP ports the
machine refused) are counted in `Report.skipped`, never scored.

May import: scriptgen.model, scriptgen.params, scriptgen.learn, scriptgen.modelfile,
scriptgen.emulate, scriptgen.evaluate.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from scriptgen.emulate import EmulatorParams, Machine
from scriptgen.params import EvaluateParams
from scriptgen.evaluate.score import PortReport, SessionScore, score_session, similarity
from scriptgen.evaluate.split import by_port, holdout
from scriptgen.evaluate.targets import InProcessTarget, Script, Target
from scriptgen.learn import learn
from scriptgen.learn.builder import turns
from scriptgen.model import Model, Session, closed_udp_ports
from scriptgen.modelfile import port_doc
from scriptgen.params import LearnParams

__all__ = ["Report", "evaluate", "evaluate_holdout", "evaluate_model", "script"]


@dataclass(frozen=True, slots=True)
class Report:
    """Per (target, transport, port), sorted; `skipped` counts sessions not replayed, by
    reason ("midstream", "transport", "no_model", "closed")."""

    ports: tuple[PortReport, ...]
    skipped: dict[str, int] = field(default_factory=dict)

    def sessions(self) -> Iterable[SessionScore]:
        for p in self.ports:
            yield from p.sessions


Recorded = tuple[Script, bytes, list[tuple[bytes, bytes]]]
"""What a client replaying a session sends, and the recorded banner and turns (`script`)."""


def script(session: Session) -> Recorded:
    """What a client replaying `session` sends, and the recorded banner and turns."""
    banner, steps = turns(session)
    pairs = [(request, answer) for request, answer, _ in steps]
    script = Script(tuple(r for r, _ in pairs), (bool(banner), *(bool(a) for _, a in pairs)), session.start)
    return script, banner, pairs


def _conversations(requests: Sequence[bytes]) -> list[bytes]:
    """For each answer (the banner, then the answer to request i), a digest of the requests
    sent before it: the conversation up to that answer, in constant space."""
    h = hashlib.blake2b(digest_size=16)
    digests = [h.digest()]
    for r in requests:
        h.update(len(r).to_bytes(8, "big"))
        h.update(r)
        digests.append(h.digest())
    return digests


def _varying(recorded: Iterable[Recorded]) -> set[bytes]:
    """The conversations (_conversations) the capture's server answered differently in
    different sessions (the `script`s of one port's sessions)."""
    varying: set[bytes] = set()
    first: dict[bytes, bytes] = {}  # conversation -> a digest of the first answer recorded
    for played, banner, pairs in recorded:
        for conversation, answer in zip(_conversations(played.requests), [banner, *(a for _, a in pairs)]):
            digest = hashlib.blake2b(answer, digest_size=16).digest()
            if first.setdefault(conversation, digest) != digest:
                varying.add(conversation)
    return varying


def _replay(key: tuple[str, int], group: Sequence[Session], target: Target, params: EvaluateParams,
            varying: set[bytes] | None = None) -> PortReport:
    """`varying`: the conversations the server varied on (default: among `group`)."""
    recorded = [script(s) for s in group]
    if varying is None:
        varying = _varying(recorded)
    outcomes = target.run_all([r[0] for r in recorded])
    scores = []
    for s, (played, banner, pairs), outcome in zip(group, recorded, outcomes):
        score = score_session(target=target.name, transport=key[0], port=key[1], client=str(s.client),
                              start=s.start, banner=banner, turns=pairs, outcome=outcome, params=params)
        if score.failure is not None and _conversations(played.requests)[score.failure[0]] in varying:
            score = replace(score, varied=True)
        scores.append(score)
    return PortReport(target.name, key[0], key[1], tuple(scores))


def _skip(skipped: dict[str, int], reason: str, n: int = 1) -> None:
    skipped[reason] = skipped.get(reason, 0) + n


def _replayable(sessions: Iterable[Session], skipped: dict[str, int]) -> dict[tuple[str, int], list[Session]]:
    groups = {}
    for key, group in by_port(sessions).items():
        whole = [s for s in group if not s.midstream]
        if len(whole) < len(group):
            _skip(skipped, "midstream", len(group) - len(whole))
        if whole:
            groups[key] = whole
    return groups


def evaluate(sessions: Iterable[Session], target: Target, params: EvaluateParams | None = None) -> Report:
    """Replay every session (with data, not midstream) against `target` and score it.
    Every session goes to the one target, whatever its port: pick the sessions first."""
    params = params or EvaluateParams()
    skipped: dict[str, int] = {}
    reports = []
    for key, group in _replayable(sessions, skipped).items():
        if key[0] not in target.transports:
            _skip(skipped, "transport", len(group))
            continue
        reports.append(_replay(key, group, target, params))
    return Report(tuple(reports), skipped)


def evaluate_model(model: Model, sessions: Iterable[Session], params: EvaluateParams | None = None,
                   emulator: EmulatorParams | None = None,
                   varying: dict[tuple[str, int], set[bytes]] | None = None,
                   closed: set[int] | None = None) -> Report:
    """Replay every session in process against the model's machine for its port.
    `varying`: per port, the conversations the capture's server varied on (default: found
    among the sessions replayed). `closed`: the UDP ports the machine refused
    (`model.closed_udp_ports`; default: found among the sessions replayed), skipped as
    "closed" when the model has no machine for them: the honeypot refuses them too."""
    params = params or EvaluateParams()
    sessions = list(sessions)
    if closed is None:
        closed = closed_udp_ports(sessions)
    skipped: dict[str, int] = {}
    reports = []
    for key, group in _replayable(sessions, skipped).items():
        port_model = model.port(*key)
        if port_model is None:
            _skip(skipped, "closed" if key[0] == "udp" and key[1] in closed else "no_model", len(group))
            continue
        target = InProcessTarget(Machine(port_doc(port_model), emulator), params)
        reports.append(_replay(key, group, target, params, varying.get(key) if varying is not None else None))
    return Report(tuple(reports), skipped)


def _learned(sessions: Iterable[Session], scripts: dict[int, Recorded]
             ) -> dict[tuple[str, int], tuple[set[bytes], set[bytes]]]:
    """Every request the sessions sent and every answer they got (the banner included),
    per (transport, server port). `scripts`: each session's `script`, by id()."""
    learned: dict[tuple[str, int], tuple[set[bytes], set[bytes]]] = {}
    for s in sessions:
        played, banner, pairs = scripts[id(s)]
        requests, answers = learned.setdefault((s.transport.value, s.server_port), (set(), set()))
        requests.update(played.requests)
        answers.add(banner)
        answers.update(a for _, a in pairs)
    return learned


def _new_answer(score: SessionScore, answers: set[bytes], lengths: list[int], by_length: list[bytes],
                params: EvaluateParams) -> bool | None:
    """Whether the recorded answer where `score` failed is new: no answer learned from
    (`answers`; `by_length`: them sorted by compared length, `lengths`) is
    carried_similarity similar to it. None for a session carried."""
    if score.failure is None:
        return None
    expected = next((a.expected for a in score.answers if a.index == score.failure[0]), b"")
    if expected in answers:
        return False
    # similarity <= shorter / longer compared length: only answers of a near length can be
    # similar enough, and they are a slice of the sorted list (a hair wider: float rounding).
    n, floor = min(len(expected), params.compare_bytes), params.carried_similarity
    lo = bisect.bisect_left(lengths, math.ceil(n * floor - 1e-9))
    hi = bisect.bisect_right(lengths, math.floor(n / floor + 1e-9)) if floor > 0 else len(lengths)
    return not any(similarity(expected, a, params.compare_bytes) >= floor for a in by_length[lo:hi])


def evaluate_holdout(sessions: Iterable[Session], k: int, learn_params: LearnParams | None = None,
                     params: EvaluateParams | None = None, emulator: EmulatorParams | None = None, *,
                     folds: Sequence[int] | None = None) -> tuple[list[Model], Report]:
    """For each fold (default: only k - 1, every k-th session held out), learn a model on
    the other sessions and replay the held-out ones in process. Returns the models (one
    per fold) and one report, the folds' sessions together per port."""
    learn_params = learn_params or LearnParams()
    params = params or EvaluateParams()
    everything = list(sessions)
    scripts = {id(s): script(s) for s in everything}  # worked out once, not once a fold
    # Where the server varied, over the whole capture: one fold holds too few sessions.
    varying = {key: _varying(scripts[id(s)] for s in group) for key, group in _replayable(everything, {}).items()}
    closed = closed_udp_ports(everything)
    models: list[Model] = []
    merged: dict[tuple[str, str, int], list[SessionScore]] = {}
    skipped: dict[str, int] = {}
    for fold in folds if folds is not None else [k - 1]:
        train, test = holdout(everything, k, fold)
        model = learn(train, learn_params)
        models.append(model)
        report = evaluate_model(model, test, params, emulator, varying, closed)
        learned = _learned(train, scripts)
        for p in report.ports:
            known, answers = learned.get((p.transport, p.port), (set(), set()))
            seen = {(str(s.client), s.start): all(r in known for r in scripts[id(s)][0].requests) for s in test
                    if (s.transport.value, s.server_port) == (p.transport, p.port)}
            by_length = sorted(answers, key=lambda a: min(len(a), params.compare_bytes))
            lengths = [min(len(a), params.compare_bytes) for a in by_length]
            merged.setdefault((p.target, p.transport, p.port), []).extend(
                replace(score, seen=seen.get((score.client, score.start)),
                        new_answer=_new_answer(score, answers, lengths, by_length, params)) for score in p.sessions)
        for reason, n in report.skipped.items():
            _skip(skipped, reason, n)
    ports = tuple(
        PortReport(t, transport, port, tuple(sorted(scores, key=lambda s: (s.start, s.client))))
        for (t, transport, port), scores in sorted(merged.items())
    )
    return models, Report(ports, skipped)
