"""Serve stage: the asyncio honeypot and its event log (DESIGN §6, docs/cli.md,
docs/events.md).

Model ports in (compiled by scriptgen.emulate); sockets served and events logged out:

    listeners = plan_listeners([("ftp.json", model["ports"])], ["127.0.0.1"], {(None, 21): 2121})
    log = ProcessLog("scriptgen-logs")  # or EventLog(sinks): written by a thread of this process
    server = Server(listeners, log, ServeParams())
    bound = await server.start()      # bind (then drop privileges)
    server.announce()
    await server.run()                # until SIGTERM/SIGINT; drains, logs the stop
    log.close()                       # writes what is queued

Imports: scriptgen.emulate, scriptgen.errors, scriptgen (version), the standard library, orjson.
"""

from scriptgen.errors import ServeError
from scriptgen.serve.events import CATALOGUE, COMMON_KEYS, SESSION_KEYS, EventSpec, check_event
from scriptgen.serve.log import EventLog, JsonLinesSink, Sink, SqliteSink, open_sinks
from scriptgen.serve.logwriter import ProcessLog
from scriptgen.params import LogParams, RecordParams, ServeParams
from scriptgen.serve.query import SessionRecord, recent_sessions
from scriptgen.serve.record import RecordedSession, Recorder, SessionFramer
from scriptgen.serve.runtime import drop_privileges, loop_factory, raise_file_limit, run
from scriptgen.serve.server import Bound, Listener, Server, plan_listeners

__all__ = [
    "CATALOGUE",
    "COMMON_KEYS",
    "SESSION_KEYS",
    "Bound",
    "EventLog",
    "EventSpec",
    "JsonLinesSink",
    "Listener",
    "LogParams",
    "ProcessLog",
    "RecordParams",
    "RecordedSession",
    "Recorder",
    "ServeError",
    "ServeParams",
    "Server",
    "SessionFramer",
    "SessionRecord",
    "Sink",
    "SqliteSink",
    "check_event",
    "drop_privileges",
    "loop_factory",
    "open_sinks",
    "plan_listeners",
    "raise_file_limit",
    "recent_sessions",
    "run",
]
