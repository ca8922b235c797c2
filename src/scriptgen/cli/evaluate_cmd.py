"""`scriptgen evaluate`: replay recorded sessions to an emulator (or any server) and score
its answers against the recorded ones (paper §3.2). Parses, calls scriptgen.evaluate, renders."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.cli.common import captures as capture_args, holdout, port, positive, report_damage, seconds, unit_interval, warn, write_table
from scriptgen.model import Model, Session
from scriptgen.params import CaptureParams, LearnParams

if TYPE_CHECKING:  # at run time imported in run(): numpy/scipy/parasail load slowly
    from scriptgen.evaluate import Report, SessionScore

__all__ = ["add_parser", "session_json"]

_LEARN = LearnParams()
_EXIT_USAGE = 2

_DESCRIPTION = """\
The paper's similarity test (ScriptGen §3.2). Each recorded session's client messages are
replayed, in order, to a target playing the server; every answer is compared with the one
the real server gave in the capture:

  similarity  1 - alignment distance (the PI distance of `learn`) over the first
              --compare-bytes bytes, in [0,1]; two empty answers = 1.0
  exact       share of answers reproduced byte for byte
  carried     share of sessions carried to the end: every answer given where the real
              server gave one, each at least --carried-at similar, and the connection
              still open when the client sent its last message

Three ways to run it:

  scriptgen evaluate MODEL CAPTURE...
      replay the captures' sessions to MODEL's emulator, in process (no sockets,
      simulated time). Use captures the model was not learned from.
  scriptgen evaluate --holdout K CAPTURE...
      no MODEL: learn a model on all sessions but every K-th (per server port, in
      capture order), then replay those held-out sessions to it in process.
      --macro/--micro set the learning thresholds; --save-model keeps the model.
  scriptgen evaluate [MODEL] CAPTURE... --target HOST:PORT
      replay over TCP to the server at HOST:PORT (a running honeypot, an exported
      honeyd script, or the real server), many sessions at once. Only that address is
      ever contacted. The sessions of one server port are replayed: the model's port,
      or --port P; with --holdout K only the every-K-th sessions (nothing is learned).

A file is taken as MODEL when it is a scriptgen model (JSON); only the first may be.

The replaying client reads the banner, then sends each request and reads until the
server has been silent --quiet-gap seconds, or closed; before the first byte of an answer
the real server gave it waits up to --wait seconds. Sessions whose start was not captured
(midstream) cannot be replayed and are skipped. docs/evaluate.md has the details."""

_EPILOG = """\
examples:
  scriptgen evaluate ftp.model.json heldout.pcap
  scriptgen evaluate --holdout 5 ftp.pcap
  scriptgen evaluate --holdout 5 --all-folds --macro 0.3 smb.pcap --json > scores.jsonl
  scriptgen evaluate ftp.model.json heldout.pcap --target 127.0.0.1:2121   # a honeypot serving it
  scriptgen evaluate heldout.pcap --port 21 --target 127.0.0.1:21   # the real server

output: a table per (target, transport/port): sessions, answers, mean similarity (over
answers), exact share, carried share; then why sessions were not carried (at their first
failing answer: error, closed, silent, different; and how many failed at an answer the
capture's server itself gave differently to the same conversation in another session: a
nonce, a time, maybe no fault of the target) and, in process, how many requests no
transition matched (by the emulator's fallback); with --holdout, how many held-out
sessions sent only requests the learned sessions had sent (the rest asked for something
the capture never showed the learner). --json writes instead one object per session per
line (docs/evaluate.md lists the keys).

exit codes: 0 ok (whatever the scores); 2 usage; 3 a capture or the model cannot be read,
or the target cannot be reached at all; 4 a capture is damaged (partial results printed)."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="replay recorded sessions to the emulator (or a server) and score its answers",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        usage="scriptgen evaluate [-h] [MODEL] CAPTURE... [--holdout K] [--target HOST:PORT] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="[MODEL] CAPTURE",
                        help="an optional model file, then pcap/pcapng files read as one capture "
                        "(a directory: every *.pcap and *.pcapng in it, sorted by name)")
    parser.add_argument("--port", "-p", type=port, action="append", dest="ports", metavar="P",
                        help="replay only sessions whose server port is P (repeat for several)")
    parser.add_argument("--holdout", type=holdout, metavar="K",
                        help="learn on all sessions but every K-th and evaluate on those (K >= 2); "
                        "no MODEL then")
    parser.add_argument("--all-folds", action="store_true",
                        help="with --holdout K: repeat for each of the K folds (K models), so every "
                        "session is held out once")
    parser.add_argument("--macro", "-W", type=unit_interval, metavar="W",
                        help=f"with --holdout: macroclustering threshold (default: {_LEARN.macro})")
    parser.add_argument("--micro", "-w", type=unit_interval, metavar="w",
                        help=f"with --holdout: microclustering threshold (default: {_LEARN.micro})")
    parser.add_argument("--jobs", "-j", type=int, metavar="N",
                        help="with --holdout: learning worker processes (default: one per core)")
    parser.add_argument("--save-model", metavar="PATH",
                        help="with --holdout: write the learned model here (to serve it and replay "
                        "the same held-out sessions over TCP)")
    parser.add_argument("--target", metavar="HOST:PORT",
                        help="replay over TCP to this address instead of in process; IPv6 as [ADDR]:PORT")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per session per line instead of the table")
    parser.add_argument("--quiet-gap", type=_seconds, default=0.3, metavar="SECONDS",
                        help="an answer is complete after this much silence (default: %(default)s)")
    parser.add_argument("--wait", type=_seconds, default=2.0, metavar="SECONDS",
                        help="longest wait for the first byte of an answer the real server gave "
                        "(default: %(default)s)")
    parser.add_argument("--timeout", type=_seconds, default=120.0, metavar="SECONDS",
                        help="--target: longest time for one session (connecting: at most 5s) "
                        "(default: %(default)s)")
    parser.add_argument("--concurrency", type=positive, default=32, metavar="N",
                        help="--target: sessions replayed at once (default: %(default)s)")
    parser.add_argument("--compare-bytes", type=positive, default=2048, metavar="N",
                        help="similarity compares the first N bytes of each answer (default: %(default)s)")
    parser.add_argument("--carried-at", type=unit_interval, default=0.8, metavar="S",
                        help="similarity every answer needs for a session to count as carried "
                        "(default: %(default)s)")
    parser.set_defaults(run=run)


_seconds = seconds(3600)


def _usage(message: str) -> int:
    print(f"scriptgen evaluate: error: {message}", file=sys.stderr)
    return _EXIT_USAGE


def _is_model(path: str) -> bool:
    """A scriptgen model is JSON (starts with '{'); pcap and pcapng never do."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return path.endswith(".json")  # a missing model: let the model loader say so
    return head.lstrip().startswith(b"{")


def run(args: argparse.Namespace) -> int:
    # Imported here: learning and alignment load numpy/scipy/parasail, which --help should not wait for.
    from scriptgen.evaluate import (
        EvaluateParams,
        TargetError,
        TcpTarget,
        by_port,
        evaluate,
        evaluate_holdout,
        evaluate_model,
        holdout,
        parse_address,
    )
    from scriptgen.modelfile import load, save

    inputs: list[str] = args.inputs
    model_path = inputs[0] if _is_model(inputs[0]) else None
    captures = inputs[1:] if model_path else inputs
    for path in captures:
        if _is_model(path):
            return _usage(f"{path} is a model file: only the first file may be the model")
    if not captures:
        return _usage("no CAPTURE given: the sessions to replay come from captures")
    learning = [flag for flag, value in (("--macro", args.macro), ("--micro", args.micro), ("--jobs", args.jobs),
                                         ("--save-model", args.save_model), ("--all-folds", args.all_folds or None))
                if value is not None]
    if args.holdout is None and learning:
        return _usage(f"{', '.join(learning)} only apply with --holdout K")
    if args.holdout is not None and model_path and args.target is None:
        return _usage(f"--holdout learns its model from the captures: drop {model_path}, "
                      "or drop --holdout to evaluate that model")
    if args.target is not None and [f for f in learning if f != "--all-folds"]:
        return _usage("with --target nothing is learned: --macro, --micro, --jobs and --save-model do not apply")
    if args.holdout is None and args.target is None and model_path is None:
        return _usage("give a MODEL file before the captures, --holdout K to learn one from them, "
                      "or --target HOST:PORT to replay to a server")
    if args.save_model and args.all_folds:
        return _usage("--save-model keeps one model: it does not combine with --all-folds")
    address = None
    if args.target is not None:
        try:
            address = parse_address(args.target)
        except TargetError as exc:
            return _usage(f"--target: {exc}")

    params = EvaluateParams(quiet=args.quiet_gap, wait=args.wait, session_timeout=args.timeout,
                            concurrency=args.concurrency, compare_bytes=args.compare_bytes,
                            carried_similarity=args.carried_at)
    model: Model | None = load(model_path) if model_path else None
    stats = CaptureStats()
    started = time.monotonic()
    from scriptgen.learn.channels import with_channels

    # Every port is read: a data channel (scriptgen.learn.channels) uses a port of its own.
    sessions = with_channels(list(read_sessions(capture_args(captures), CaptureParams(), stats=stats)),
                              args.ports or ())
    folds = list(range(args.holdout)) if args.holdout and args.all_folds else None

    if address is not None:
        picked = _pick_port(sessions, model, args.ports)
        if isinstance(picked, str):
            return _usage(picked)
        sessions = [s for s in sessions if (s.transport.value, s.server_port) == ("tcp", picked)]
        if args.holdout:
            chosen = [s for fold in (folds or [args.holdout - 1]) for s in holdout(sessions, args.holdout, fold)[1]]
            sessions = chosen
        target = TcpTarget(address[0], address[1], params)
        report: Report = evaluate(sessions, target, params)
        scored = list(report.sessions())
        if scored and all(s.error for s in scored):
            raise TargetError(f"cannot replay to {args.target}: {scored[0].error}")
    elif args.holdout:
        learn_params = LearnParams(macro=_LEARN.macro if args.macro is None else args.macro,
                                   micro=_LEARN.micro if args.micro is None else args.micro,
                                   jobs=max(0, args.jobs or 0))
        how = "each of the folds" if folds else f"every {_ordinal(args.holdout)} session"
        warn(f"read {len(sessions)} sessions in {time.monotonic() - started:.1f}s; learning without "
             f"{how} (W={learn_params.macro}, w={learn_params.micro}) and replaying those...")
        few = [f"{t}/{p} ({len(g)})" for (t, p), g in by_port(sessions).items() if len(g) < args.holdout]
        if few and not folds:
            shown = ", ".join(few[:5]) + (f" and {len(few) - 5} more" if len(few) > 5 else "")
            warn(f"{len(few)} port(s) have fewer than {args.holdout} sessions, so none held out: {shown}")
        models, report = evaluate_holdout(sessions, args.holdout, learn_params, params, folds=folds)
        if args.save_model:
            save(models[0], args.save_model)
            warn(f"wrote {args.save_model}")
    else:
        assert model is not None
        report = evaluate_model(model, sessions, params)

    out = sys.stdout
    if args.json:
        for s in report.sessions():
            out.write(json.dumps(session_json(s, params.compare_bytes), separators=(",", ":")) + "\n")
        out.flush()
    else:
        _print_table(report, out, params.carried_similarity)
    notes = _skipped(report.skipped, bool(address))
    if notes:
        warn("skipped: " + ", ".join(notes))
    return report_damage(stats.damage)


def _pick_port(sessions: list[Session], model: Model | None, ports: list[int] | None) -> int | str:
    """The one TCP server port to replay to a target, or the reason there is none."""
    seen = sorted({s.server_port for s in sessions if s.messages and s.transport.value == "tcp"})
    if model is not None and not ports:
        seen = [p for p in seen if model.port("tcp", p) is not None]
    if len(seen) == 1:
        return seen[0]
    if not seen:
        udp = any(s.messages and s.transport.value == "udp" for s in sessions)
        if udp:
            return "the selected sessions are UDP: --target replays TCP only; drop --target to replay in process"
        return "no TCP session with data to replay" + (" on the model's ports" if model is not None else "")
    listed = ", ".join(str(p) for p in seen)
    return f"the sessions are on several TCP ports ({listed}): choose the one the target serves with --port P"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _skipped(skipped: dict[str, int], tcp: bool) -> list[str]:
    names = {
        "midstream": "midstream sessions (start not captured)",
        "transport": "UDP sessions (the TCP target replays TCP only)" if tcp else "sessions of another transport",
        "no_model": "sessions on ports the model has no machine for",
        "closed": "sessions on UDP ports the machine refused (ICMP port unreachable): closed, as served",
    }
    return [f"{n} {names.get(reason, reason)}" for reason, n in sorted(skipped.items())]


def _b64(data: bytes, limit: int) -> str:
    return base64.b64encode(data[:limit]).decode("ascii")


def session_json(s: SessionScore, limit: int = 2048) -> dict[str, Any]:
    """The stable JSON form of a SessionScore (docs/evaluate.md). Bytes are base64 of at
    most the first `limit` bytes; the *_len keys give the whole lengths."""
    return {
        "target": s.target,
        "transport": s.transport,
        "port": s.port,
        "client": s.client,
        "start": s.start,
        "requests": s.requests,
        "similarity": round(s.similarity, 4),
        "exact": round(s.exact, 4),
        "carried": s.carried,
        "closed": s.closed,
        "failure": {"index": s.failure[0], "reason": s.failure[1]} if s.failure else None,
        "error": s.error,
        "seen": s.seen,
        "varied": s.varied,
        "new_answer": s.new_answer,
        "answers": [
            {
                "index": a.index,
                "request": _b64(a.request, limit),
                "request_len": len(a.request),
                "expected": _b64(a.expected, limit),
                "expected_len": len(a.expected),
                "got": _b64(a.got, limit),
                "got_len": len(a.got),
                "sent": a.sent,
                "similarity": round(a.similarity, 4),
                "exact": a.exact,
                "fallback": a.fallback,
            }
            for a in s.answers
        ],
    }


def _print_table(report: Report, out: TextIO, carried_at: float) -> None:
    rows = [["target", "port", "sessions", "answers", "similarity", "exact", "carried"]]
    for p in report.ports:
        rows.append([p.target, f"{p.transport}/{p.port}", str(len(p.sessions)), str(p.answers),
                     f"{p.similarity:.3f}", f"{p.exact:.3f}",
                     f"{p.carried_share:.3f} ({p.carried}/{len(p.sessions)})"])
    write_table(rows, out, left=2)
    if not report.ports:
        out.write("(no session replayed)\n")
    for p in report.ports:
        failures = ", ".join(f"{reason} {n}" for reason, n in p.failures().items() if n) or "none"
        line = f"{p.transport}/{p.port}: not carried: {failures}"
        if p.varied():  # maybe no fault of the target: the capture's own server answered otherwise
            line += (f" ({p.varied()} at an answer the capture's server gave differently to the same "
                     f"conversation in another session: a nonce, a time)")
        fallbacks = p.fallbacks()
        if p.target == "in-process":
            unmatched = ", ".join(f"{kind} {n}" for kind, n in fallbacks.items()) or "none"
            line += f"; unmatched requests: {unmatched}"
        seen = p.seen()
        if seen is not None:  # how much of the held out the capture let the learner see
            line += (f"\n{p.transport}/{p.port}: {seen[0]}/{len(p.sessions)} held out sessions sent only requests "
                     f"the learned sessions had sent ({seen[1]} carried); the others sent a request it never saw")
        new = p.new_answers()
        if new is not None:  # failures the capture could not have taught: what is left is the model's choice
            missed = len(p.sessions) - p.carried
            line += (f"\n{p.transport}/{p.port}: {new} of the {missed} not carried failed at an answer new to the "
                     f"learner (none it learned from is {carried_at:g} similar)")
        out.write(line + "\n")
    out.flush()
