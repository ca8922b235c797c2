"""Hand-made sessions for the learn-stage tests."""

from __future__ import annotations

from scriptgen.model import Endpoint, Message, Sender, Session, Transport

_count = 0


def session(*turns: tuple[bytes, bytes], banner: bytes = b"", port: int = 21,
            closed_by: Sender | None = Sender.CLIENT, transport: Transport = Transport.TCP) -> Session:
    """A session: optional banner, then (request, answer) turns."""
    global _count
    _count += 1
    messages = []
    t = 1000.0
    if banner:
        messages.append(Message(Sender.SERVER, banner, t))
    for request, answer in turns:
        t += 0.01
        messages.append(Message(Sender.CLIENT, request, t))
        if answer:
            t += 0.002
            messages.append(Message(Sender.SERVER, answer, t))
    return Session(_count, transport, Endpoint("10.0.0.1", 40000 + _count), Endpoint("10.0.0.2", port),
                   1000.0, t, False, messages, "fin", closed_by)
