"""Drive an Emulator through a client's messages, as every driver does: a short loop
around receive_data / next_event with time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from scriptgen.emulate import Close, Emulator, Input, Machine, NeedData, Send, Unmatched


@dataclass
class Transcript:
    answers: list[bytes] = field(default_factory=list)  # [banner, answer to request 1, ...]
    closed: str | None = None
    unmatched: list[str] = field(default_factory=list)
    path: list[int] = field(default_factory=list)


def run(machine: Machine, requests: list[bytes], *, trickle: bool = False, eof: bool = False,
        gap: float = 10.0) -> Transcript:
    """Send each request (one byte per receive_data call when `trickle`), collect what comes
    back before the next request. Requests are `gap` seconds apart."""
    now = 0.0
    conn = Emulator(machine, now)
    out = Transcript()

    def drain() -> bytes:
        nonlocal now
        got = b""
        while True:
            event = conn.next_event(now)
            if isinstance(event, Send):
                got += event.data
            elif isinstance(event, Unmatched):
                out.unmatched.append(event.fallback)
            elif isinstance(event, Input):
                pass
            elif isinstance(event, Close):
                out.closed = event.reason
                return got
            elif isinstance(event, NeedData):
                if event.wake_at is None or event.wake_at > now + gap:
                    return got
                now = event.wake_at
    out.answers.append(drain())
    for request in requests:
        if out.closed:
            break
        now += gap
        chunks = [request[i : i + 1] for i in range(len(request))] if trickle else [request]
        for chunk in chunks:
            conn.receive_data(chunk, now)
            now += 0.001
        out.answers.append(drain())
    if eof and not out.closed:
        conn.receive_data(b"", now)
        drain()
    out.path = list(conn.path)
    return out
