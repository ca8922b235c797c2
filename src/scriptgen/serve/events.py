"""Serve stage: the catalogue of log events (docs/events.md, kept in step by a test).

Every event the server writes is a flat JSON object whose `eventid` is one of the dotted
ids below (Cowrie's convention), with the keys listed for it and nothing else. Keys
shared with Cowrie keep Cowrie's names and meaning, so the same log pipelines read both:
`eventid`, `timestamp` (ISO 8601 UTC, microseconds, `Z`), `session`, `src_ip`,
`src_port`, `dst_ip`, `dst_port`, `sensor`, `message`.

A session event leaves the event loop as a `Record`, a tuple of what happened, and is
made into its event (`expand`) by the log's writer: the timestamp text, the base64 of the
bytes and the message's preview of them are written out there, off the loop (bench_serve).

Inputs: nothing (this is data). Output: `CATALOGUE`, `COMMON_KEYS`, `SESSION_KEYS`,
`Record`, `expand()`, `timestamp()`, `check_event()`. Imports the standard library only.
"""

from __future__ import annotations

import time
from binascii import b2a_base64
from dataclasses import dataclass
from typing import Any

__all__ = ["CATALOGUE", "COMMON_KEYS", "SESSION_KEYS", "EventSpec", "Record", "check_event", "expand", "timestamp"]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One kind of event: what it means and the keys it carries beyond the common ones."""

    description: str
    keys: dict[str, str]
    """key -> meaning, for the keys specific to this event."""
    session: bool = True
    """Whether it carries SESSION_KEYS (every `scriptgen.session.*` event does)."""


COMMON_KEYS: dict[str, str] = {
    "eventid": "the dotted event id",
    "timestamp": "when, ISO 8601 UTC with microseconds: `2025-01-31T12:00:00.123456Z`",
    "sensor": "the honeypot's name: `--sensor`, else the host name",
    "message": "one line of human-readable text (not a stable interface)",
}

SESSION_KEYS: dict[str, str] = {
    "session": "the session id: 16 hex digits, unique within the log",
    "transport": "`tcp` or `udp`",
    "src_ip": "the client's address",
    "src_port": "the client's port",
    "dst_ip": "the address the client reached (for UDP, the listening address)",
    "dst_port": "the port the client reached (after `--port-map`)",
}

_DATA = {
    "data": "the bytes, base64 (at most `--log-data-bytes` of them)",
    "size": "the full length in bytes",
    "truncated": "true when `data` holds only the first bytes",
}

CATALOGUE: dict[str, EventSpec] = {
    "scriptgen.server.start": EventSpec(
        "The server is listening (logged after binding and dropping privileges).",
        {
            "version": "scriptgen's version",
            "pid": "the process id",
            "listeners": "list of {transport, ip, port, model, model_port}",
            "params": "the server limits in force (ServeParams, as an object)",
        },
        session=False,
    ),
    "scriptgen.server.stop": EventSpec(
        "The server stopped listening and every session is closed; the last event of a run.",
        {
            "reason": "`SIGTERM`, `SIGINT`, or `stopped` (stopped by the embedding program)",
            "sessions": "sessions accepted during the run",
            "forced": "sessions still open when the grace period ended (closed with reason `shutdown`)",
            "evicted": "sessions closed to make room for a newcomer over `--max-connections` or "
            "`--max-per-source` (reason `evicted`)",
            "refused": "connections and UDP peers turned away while shutting down",
            "errors": "sessions ended by an internal error",
            "events_dropped": "events the log lost: dropped from its full queue (counted once), or given "
            "up on by an output that could not write them (once for each output; `scriptgen.log.lost`)",
        },
        session=False,
    ),
    "scriptgen.server.reload": EventSpec(
        "The model files were read again (SIGHUP, or `--refine` after it learned a refined model): "
        "new sessions are served by them, open ones keep the model they started with.",
        {
            "reason": "`SIGHUP` or `refine`",
            "models": "model name -> the first 16 hex digits of its file's SHA-256 (the `model_version` "
            "of the connect events from now on)",
            "swapped": "listeners now serving the reloaded models",
            "kept": "what could not be swapped: ports no longer in a model (still served as before) or "
            "new in one (listened on after a restart)",
        },
        session=False,
    ),
    "scriptgen.server.error": EventSpec(
        "An error outside any session (e.g. accept(2) failed: out of file descriptors).",
        {"error": "the exception, as `Type: text`"},
        session=False,
    ),
    "scriptgen.log.error": EventSpec(
        "One log sink failed to write; written to the other sinks. Logged once per streak "
        "of failures; the batch waits in the sink's backlog and is retried with the next write.",
        {
            "sink": "`json` or `sqlite`",
            "error": "the exception, as `Type: text`",
            "failures": "batches this sink has failed to write so far",
        },
        session=False,
    ),
    "scriptgen.log.lost": EventSpec(
        "One log sink gave up on events it could not write (its backlog of failed batches "
        "outgrew `max_backlog_bytes` while the disk stayed full, or it still failed at close). "
        "Written to every sink once that one writes again (at close, to those that can): what "
        "the outputs do not share is named here.",
        {
            "sink": "`json` or `sqlite`: the output the events are missing from",
            "events": "events lost from that output",
            "batches": "batches they came in",
            "sessions": "sessions with at least one of those events",
            "session_ids": "those sessions' ids, sorted (at most the first 1000)",
            "first": "the timestamp of the earliest event lost",
            "last": "the timestamp of the latest event lost",
        },
        session=False,
    ),
    "scriptgen.session.connect": EventSpec(
        "A client connected (TCP), or a datagram came from a new peer (UDP).",
        {
            "state": "the model state the session starts in (the root; null for a data channel, "
            "which starts when its parent says what to serve)",
            "model": "the model file serving this port",
            "model_port": "the port in the model (before `--port-map`)",
            "model_version": "the first 16 hex digits of the SHA-256 of the model file serving it (which "
            "model answered, across reloads: SIGHUP, `--refine`); empty for a model not read from a file",
            "parent": "for a data channel (FTP's PASV/PORT connections, docs/emulator.md): the session "
            "id of the connection that announced it; else null",
        },
    ),
    "scriptgen.session.channel": EventSpec(
        "A data channel of this session is being set up, or could not be.",
        {
            "action": "`listen` (a listener waits for the client on `port`), `connect` (connecting to the "
            "client's `port`), `refused` (over the channel limits, or a connection from another address), "
            "`failed` (`error` says why), `expired` (nobody connected within `--channel-timeout`) or "
            "`relay` (at the handover, the model's data channels go to the backend's passive `port`)",
            "port": "the port listened on or connected to (null when none was had)",
            "error": "what failed (`failed`), else null",
        },
    ),
    "scriptgen.session.input": EventSpec(
        "The emulator took a request (a whole message: see docs/emulator.md).",
        {
            "state": "the state after the request",
            "source": "the state the request was received in",
            "transition": "the transition taken, or null when nothing matched (the state is kept)",
            **_DATA,
        },
    ),
    "scriptgen.session.output": EventSpec(
        "The emulator answered.",
        {"state": "the state whose answer this is", **_DATA},
    ),
    "scriptgen.session.unmatched": EventSpec(
        "No transition of the current state matched a request (Zeek's `weird`: the data "
        "that improves the next model). Followed by the input event for the same bytes.",
        {
            "state": "the state the request was received in",
            "fallback": "`context`, `elsewhere`, `common`, `nearest`, `silence`, `close` or `spent` (docs/emulator.md)",
            **_DATA,
        },
    ),
    "scriptgen.session.handover": EventSpec(
        "The session is handed to the backend (docs/backend.md): from here on the real server "
        "answers and the honeypot relays both ways (`scriptgen.session.relayed`).",
        {
            "state": "the model state the session was in",
            "reason": "`unmatched` (a request the model had no answer for, `--handover unsure`) or "
            "`always` (at connect, `--handover always`)",
            "inputs": "requests the model took before (the last one is the backend's to answer)",
            "backend": "the backend's address",
        },
    ),
    "scriptgen.session.backend": EventSpec(
        "The session's connection to the backend failed before the handover: the model answers "
        "on alone, and the backend is not tried again for a while (`--backend-retry`).",
        {
            "action": "`failed`",
            "backend": "the backend's address",
            "error": "what failed, and when the backend is tried again",
        },
    ),
    "scriptgen.session.relayed": EventSpec(
        "Bytes relayed after the handover: from the client to the backend, or back.",
        {"direction": "`in` (from the client) or `out` (to the client)", **_DATA},
    ),
    "scriptgen.session.refused": EventSpec(
        "A connection (or a new UDP peer) was turned away: the server is shutting down (over "
        "a connection cap, the idlest session is evicted instead). No connect or closed event "
        "follows.",
        {
            "reason": "`shutdown`",
            "suppressed": "refusals not logged since the previous refused event (rate limit)",
        },
    ),
    "scriptgen.session.error": EventSpec(
        "An internal error in this session; it is closed (reason `error`), the others go on.",
        {"state": "the state at the time", "error": "the exception, as `Type: text`"},
    ),
    "scriptgen.session.cut": EventSpec(
        "The session's input, output and unmatched events reached `--log-session-bytes` of log "
        "text (default 4 MiB, estimated as they are queued; `data` shrank before it): later ones "
        "are counted in `scriptgen.session.closed` (`events_cut`, `bytes_cut`), not logged. Logged "
        "once, when the first is cut.",
        {"limit": "the limit in force, in bytes"},
    ),
    "scriptgen.session.closed": EventSpec(
        "The session ended; exactly one per connect event.",
        {
            "state": "the last state",
            "reason": "`server` (the real server closed there), `eof` (the client closed), "
            "`unmatched` (fallback close), `reset` (the connection broke), `idle`, "
            "`request-timeout` (a request begun and not completed within `--request-timeout`), "
            "`evicted` (the idlest session, closed to make room for a newcomer over "
            "`--max-connections` or `--max-per-source`), `max-duration`, `max-buffered`, "
            "`max-requests`, `shutdown`, `error`, `parent` (a data channel whose parent ended "
            "before anything was served on it), `relayed` (a data channel the model had announced, "
            "relayed to the backend's at the handover), `backend` (the backend closed after the handover) "
            "or `backend-failed` (it broke, or went over `--backend-max-bytes`, after the handover)",
            "path": "the states visited, in order, from the root (list of state ids)",
            "duration": "seconds from connect to close",
            "inputs": "requests taken",
            "unmatched": "requests no transition of their state matched",
            "bytes_in": "bytes received from the client",
            "bytes_out": "bytes sent to the client",
            "backend": "the backend the session was handed over to, else null",
            "events_cut": "input, output and unmatched events not logged: the session reached "
            "`--log-session-bytes` (0 if it did not)",
            "bytes_cut": "bytes of messages the log would have kept (at most `--log-data-bytes` each) but did "
            "not, for that limit",
        },
    ),
}


Record = tuple[str, float, tuple[Any, ...], str, dict[str, Any]]
"""A session event as the loop queues it: (eventid, time.time(), the session's head:
(sensor, *SESSION_KEYS values), message, the event's own keys). Bytes (`data`) are raw, at
most `--log-data-bytes` of them; `size` is their full length."""

_PREVIEW = 48  # bytes of `data` the message shows


def expand(record: Record) -> dict[str, Any]:
    """The event a record stands for: common keys, session keys, its own keys, in that order."""
    eventid, t, head, message, own = record
    data = own.get("data")
    if data is not None:
        message = f"{message} {data[:_PREVIEW]!r}{'...' if own['size'] > _PREVIEW else ''}"
    event = {"eventid": eventid, "timestamp": timestamp(t), "sensor": head[0], "message": message,
             "session": head[1], "transport": head[2], "src_ip": head[3], "src_port": head[4], "dst_ip": head[5],
             "dst_port": head[6]}  # SESSION_KEYS
    event.update(own)
    if data is not None:
        event["data"] = b2a_base64(data, newline=False).decode("ascii")  # base64.b64encode, less a call
    return event


_second: tuple[int, str] = (-1, "")  # the last second formatted (a cache: one tuple, swapped whole)


def timestamp(t: float) -> str:
    """`t` (seconds since the epoch) as Cowrie writes it: ISO 8601 UTC, microseconds, Z."""
    global _second
    seconds = int(t)
    cached, prefix = _second
    if cached != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, prefix)
    return f"{prefix}.{int((t - seconds) * 1_000_000):06d}Z"


def check_event(event: dict[str, Any]) -> list[str]:
    """What is wrong with `event` against the catalogue (empty when it conforms)."""
    spec = CATALOGUE.get(str(event.get("eventid")))
    if spec is None:
        return [f"unknown eventid {event.get('eventid')!r}"]
    expected = set(COMMON_KEYS) | set(spec.keys) | (set(SESSION_KEYS) if spec.session else set())
    problems = [f"missing key {k}" for k in sorted(expected - set(event))]
    problems += [f"unexpected key {k}" for k in sorted(set(event) - expected)]
    return problems
