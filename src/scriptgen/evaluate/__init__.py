"""Evaluate stage: how close an emulator's answers are to the real server's (paper §3.2).

    split.holdout -> targets (InProcessTarget | TcpTarget) -> score -> run.Report

Replay each recorded session's client messages to a target — the emulator core in process,
or any server over TCP (the honeypot, or the real server) — and compare every answer with
the recorded one: alignment similarity in [0, 1], exact share, and the share of sessions
carried to the end. docs/evaluate.md describes the measures and the client's pacing.
"""

from scriptgen.params import EvaluateParams
from scriptgen.evaluate.run import Report, evaluate, evaluate_holdout, evaluate_model, script
from scriptgen.evaluate.score import (
    FAILURES,
    AnswerScore,
    PortReport,
    SessionScore,
    score_session,
    similarity,
)
from scriptgen.evaluate.split import by_port, holdout
from scriptgen.evaluate.targets import (
    InProcessTarget,
    Outcome,
    Script,
    Target,
    TargetError,
    TcpTarget,
    parse_address,
)

__all__ = [
    "FAILURES",
    "AnswerScore",
    "EvaluateParams",
    "InProcessTarget",
    "Outcome",
    "PortReport",
    "Report",
    "Script",
    "SessionScore",
    "Target",
    "TargetError",
    "TcpTarget",
    "by_port",
    "evaluate",
    "evaluate_holdout",
    "evaluate_model",
    "holdout",
    "parse_address",
    "score_session",
    "script",
    "similarity",
]
