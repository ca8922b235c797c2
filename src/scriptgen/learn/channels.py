"""Learn stage, step 0: data channels (issue 8; docs/algorithm.md, "Data channels").

A connection is a data channel of another (its parent) when its server port appeared in
a message of the parent shortly before it opened, between the same two hosts: in an
answer when the server announced where to connect (FTP's PASV and EPSV), or in a request
when the client announced where the server should connect (FTP's PORT and EPRT). Any
protocol that hands out ports so is found the same way: the port is looked for written
as `a,b,c,d,p1,p2`, `p1,p2`, decimal, or two bytes big endian (model.PORT_ENCODINGS).

What a channel carries answers one of the parent's requests: the last one the parent's
client sent before the channel's first byte (FTP's LIST or RETR, sent on the control
connection). The learner links each channel to that request (builder.py), and learns
the channels of each transition as a model of their own, whose sessions start with it.

Guards against chance: the port must be at least MIN_PORT, the channel must open within
WINDOW seconds of the announcement, while the parent is open, and binary encodings are
looked for only in messages that are not text.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from scriptgen.model import Endpoint, Message, Sender, Session, Transport

__all__ = ["Mark", "ChildLink", "find_channels", "find_port", "data_session", "with_channels", "MIN_PORT", "WINDOW"]

MIN_PORT = 1024  # lower ports are services, and small numbers turn up in text by chance
WINDOW = 30.0  # seconds from an announcement to the connection it announced
MAX_PARENTS = 16  # the most recent sessions between the same two hosts searched for a parent
MAX_SEARCHED = 1 << 16  # bytes of one message searched for a port


@dataclass(frozen=True, slots=True)
class Mark:
    """Message `message` of a session announces a port in its bytes [start:end]."""

    message: int
    start: int
    end: int
    encoding: str


@dataclass(frozen=True, slots=True)
class ChildLink:
    """Session `child` is a data channel of session `parent`, announced by `mark`;
    `connect` when the parent's client announced it (the server connected to it). What it
    carried answers the parent's message `trigger` (a client message), or None when the
    parent's client had sent nothing yet."""

    child: int
    parent: int
    mark: Mark
    connect: bool
    trigger: int | None


def find_channels(sessions: Sequence[Session]) -> dict[int, ChildLink]:
    """The data channels among `sessions` (by position), with their parents. A channel is
    never a parent itself."""
    order = sorted(range(len(sessions)), key=lambda i: (sessions[i].start, i))
    recent: dict[frozenset[str], deque[int]] = {}
    links: dict[int, ChildLink] = {}
    for i in order:
        s = sessions[i]
        if s.transport is not Transport.TCP:
            continue
        hosts = frozenset((s.client.ip, s.server.ip))
        candidates = recent.get(hosts)
        if candidates and s.server.port >= MIN_PORT:
            link = _parent_of(i, s, candidates, sessions)
            if link is not None:
                links[i] = link
                continue
        recent.setdefault(hosts, deque(maxlen=MAX_PARENTS)).append(i)
    return links


def with_channels(sessions: Sequence[Session], ports: Collection[int]) -> list[Session]:
    """The sessions on server `ports` (every port when empty) that are not data channels,
    with the data channels of those (whatever port a channel used)."""
    links = find_channels(sessions)
    wanted = frozenset(ports)
    return [s for i, s in enumerate(sessions)
            if not wanted or (sessions[links[i].parent] if i in links else s).server_port in wanted]


def _parent_of(child: int, s: Session, candidates: deque[int], sessions: Sequence[Session]) -> ChildLink | None:
    """The latest announcement of `s`'s port by a concurrent session between its hosts."""
    best: tuple[float, ChildLink] | None = None
    for p in candidates:
        parent = sessions[p]
        if parent.end < s.start or parent.server.port == s.server.port:
            continue
        # Who could have announced it: the parent's server, when the channel's client is the
        # parent's client; the parent's client, when the channel connects back to it.
        for sender, connect in ((Sender.SERVER, False), (Sender.CLIENT, True)):
            announcer = parent.server if sender is Sender.SERVER else parent.client
            other = parent.client if sender is Sender.SERVER else parent.server
            if s.server.ip != announcer.ip or s.client.ip != other.ip:
                continue
            found = _announcement(parent, sender, s.server.port, announcer.ip, s.start)
            if found is not None and (best is None or found[0] > best[0]):
                best = found[0], ChildLink(child, p, found[1], connect, _trigger(parent, s))
    return best[1] if best else None


def _announcement(parent: Session, sender: Sender, port: int, ip: str, before: float) -> tuple[float, Mark] | None:
    messages = parent.messages
    for index in range(len(messages) - 1, -1, -1):
        m = messages[index]
        if m.sender is not sender or m.timestamp > before:
            continue
        if m.timestamp < before - WINDOW:
            break
        found = find_port(m.data[:MAX_SEARCHED], port, ip)
        if found is not None:
            return m.timestamp, Mark(index, *found)
    return None


def _trigger(parent: Session, child: Session) -> int | None:
    """The parent's last client message before the child's first byte (or its end)."""
    until = child.messages[0].timestamp if child.messages else child.end
    found = None
    for index, m in enumerate(parent.messages):
        if m.timestamp > until:
            break
        if m.sender is Sender.CLIENT:
            found = index
    return found


def find_port(data: bytes, port: int, ip: str) -> tuple[int, int, str] | None:
    """(start, end, encoding) of the last place `data` writes `port`, the most specific
    encoding first. `ip` is the announcing host's address (for "ip-pair")."""
    hi, lo = port >> 8, port & 0xFF
    needles: list[tuple[str, bytes]] = []
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip):
        needles.append(("ip-pair", f"{ip.replace('.', ',')},{hi},{lo}".encode()))
    needles += [("pair", f"{hi},{lo}".encode()), ("dec", str(port).encode())]
    for encoding, needle in needles:
        at = len(data)
        while (at := data.rfind(needle, 0, at)) >= 0:
            end = at + len(needle)
            if not data[at - 1 : at].isdigit() and not data[end : end + 1].isdigit():
                return at, end, encoding
    if not _text(data):
        at = data.rfind(port.to_bytes(2, "big"))
        if at >= 0:
            return at, at + 2, "u16be"
    return None


def _text(data: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in data)


def data_session(child: Session, link: ChildLink, parent: Session) -> Session:
    """The channel as the emulator will serve it: the emulator's side is the server
    (the channel's client when the emulator connected out), and the session starts with
    the parent's request it answers."""
    flip = link.connect  # the real server connected: it is the channel's client
    messages: list[Message] = []
    if link.trigger is not None:
        trigger = parent.messages[link.trigger]
        messages.append(Message(Sender.CLIENT, trigger.data, trigger.timestamp))
    for m in child.messages:
        sender = m.sender if not flip else Sender.SERVER if m.sender is Sender.CLIENT else Sender.CLIENT
        messages.append(Message(sender, m.data, m.timestamp, m.gaps))
    closed_by = child.closed_by
    if flip and closed_by is not None:
        closed_by = Sender.SERVER if closed_by is Sender.CLIENT else Sender.CLIENT
    client, server = (child.server, child.client) if flip else (child.client, child.server)
    server = Endpoint(server.ip, 0)  # one model for every channel: its port is chosen when served
    return Session(child.index, child.transport, client, server, child.start, child.end, child.midstream, messages,
                   child.close, closed_by, dict(child.anomalies), child.accepted)
