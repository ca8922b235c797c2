"""Export stage: one model port -> a standalone Python 3 honeyd service script.

The script is the emulator core (`scriptgen/emulate/engine.py`, embedded verbatim) plus
a short driver and the model port as data: base64 of its JSON document, decoded and
parsed at start. Capture bytes are attacker input: they only ever appear inside that
base64 string, never as code.

honeyd's contract: one process per connection, started without a shell with the
arguments `$ipsrc $sport $ipdst $dport`; stdin and stdout are the connection (one socket,
a datagram socket for UDP); stderr is the service log. The driver reads and writes the
raw file descriptors (binary, unbuffered), answers as the engine says, logs one line per
event on stderr, and exits at EOF, at Close, or after an idle timeout.

Data channels (FTP's PASV/PORT) are not served: the process has one connection and no
way to listen on honeyd's virtual address. An answer that announces a port names the
port of the capture (the client's connection to it fails, as with a firewall in the
way); ports the client announces are not connected to. Each is logged.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

from scriptgen import __version__

__all__ = ["HONEYD_ARGS", "honeyd_script", "honeyd_conf_line"]

HONEYD_ARGS = "$ipsrc $sport $ipdst $dport"

_DRIVER = r'''

# ---- honeyd driver (scriptgen export) ------------------------------------------------------

import json as _json
import os as _os
import select as _select
import socket as _socket
import sys as _sys
import time as _time

IDLE_TIMEOUT = __IDLE__
MAX_SESSION = __MAX_SESSION__


def _log(peer, text):
    stamp = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime())
    _sys.stderr.write(f"{stamp} scriptgen[{_os.getpid()}] {peer}: {text}\n")
    _sys.stderr.flush()


def _describe(event):
    if isinstance(event, Send):
        return f"output state={event.state} data={event.data[:64]!r}"
    if isinstance(event, Input):
        return f"input state={event.source}->{event.state} transition={event.transition} data={event.data[:64]!r}"
    if isinstance(event, Unmatched):
        return f"unmatched state={event.state} fallback={event.fallback} data={event.data[:64]!r}"
    return repr(event)


def _datagram_socket():
    try:
        sock = _socket.socket(fileno=_os.dup(0))
    except OSError:
        return None
    if sock.type == _socket.SOCK_DGRAM:
        return sock
    _os.close(sock.detach())
    return None


def _write_all(data):
    view = memoryview(data)
    while view:
        written = _os.write(1, view)
        view = view[written:]


def main(argv):
    peer = " ".join(argv[1:5]) if len(argv) >= 5 else "?"
    machine = Machine(_json.loads(__import__("base64").b64decode(MODEL)))
    started = _time.monotonic()
    conn = Emulator(machine, started, wall=_time.time())
    dgram = _datagram_socket() if machine.datagram else None
    _log(peer, f"connect transport={machine.transport} port={machine.port}")
    last_input = started
    while True:
        now = _time.monotonic()
        event = conn.next_event(now)
        if isinstance(event, Send):
            try:
                if dgram is not None:
                    dgram.send(event.data)
                else:
                    _write_all(event.data)
            except OSError as exc:
                _log(peer, f"closed reason=write-failed ({exc.strerror})")
                return 0
            _log(peer, _describe(event))
            continue
        if isinstance(event, Listen):
            _log(peer, f"data channel not served (honeyd): state={event.state} announces the capture's port")
            conn.listening(None)
            continue
        if isinstance(event, (Connect, Channel)):
            _log(peer, f"data channel not served (honeyd): {type(event).__name__.lower()}")
            continue
        if isinstance(event, (Input, Unmatched)):
            _log(peer, _describe(event))
            continue
        if isinstance(event, Close):
            _log(peer, f"closed reason={event.reason} path={conn.path}")
            return 0
        limit = min(last_input + IDLE_TIMEOUT, started + MAX_SESSION)
        wait = limit - now if event.wake_at is None else min(event.wake_at, limit) - now
        if now >= limit:
            _log(peer, f"closed reason=timeout path={conn.path}")
            return 0
        ready, _, _ = _select.select([0], [], [], max(0.0, wait))
        if not ready:
            continue
        try:
            data = dgram.recv(65535) if dgram is not None else _os.read(0, 65536)
        except OSError as exc:
            _log(peer, f"closed reason=read-failed ({exc.strerror})")
            return 0
        last_input = _time.monotonic()
        conn.receive_data(data, last_input)  # from the socket, b"" is an empty datagram


if __name__ == "__main__":
    raise SystemExit(main(_sys.argv))
'''


def honeyd_script(port_doc: dict[str, Any], *, idle_timeout: float = 120.0, max_session: float = 600.0) -> str:
    """The text of the service script for one model port (its JSON document)."""
    engine = resources.files("scriptgen.emulate").joinpath("engine.py").read_text()
    model = base64.b64encode(json.dumps(port_doc, sort_keys=True, separators=(",", ":")).encode()).decode("ascii")
    header = (
        "#!/usr/bin/env python3\n"
        f"# honeyd service script for {port_doc['transport']}/{port_doc['port']}, generated by scriptgen {__version__}.\n"
        f"# honeyd.conf: {honeyd_conf_line('TEMPLATE', port_doc['transport'], port_doc['port'], 'THIS_SCRIPT')}\n"
        "# Standard library only. The emulator core below is scriptgen/emulate/engine.py verbatim;\n"
        "# the model is data (MODEL, base64 JSON), never code.\n"
    )
    driver = _DRIVER.replace("__IDLE__", repr(float(idle_timeout))).replace("__MAX_SESSION__", repr(float(max_session)))
    return header + engine + f"\n\nMODEL = {model!r}\n" + driver


def honeyd_conf_line(template: str, transport: str, port: int, script_path: str) -> str:
    return f'add {template} {transport} port {port} "python3 {script_path} {HONEYD_ARGS}"'
