"""What the capture stage produces: sessions of messages."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Sender", "Transport", "Endpoint", "Gap", "Message", "Session", "closed_udp_ports", "learnable", "silent_open_ports"]


class Sender(enum.Enum):
    """Who sent a message."""

    CLIENT = "client"
    SERVER = "server"


class Transport(enum.Enum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An IP address (text form) and a port."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Gap:
    """`length` bytes of the stream were never captured; they belong before byte `offset`
    of the message's data. The data does not contain them: they are not glued over."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Message:
    """The longest run of bytes one side sent before the other side spoke (TCP), or one
    datagram (UDP). `timestamp` is the capture time of its first byte."""

    sender: Sender
    data: bytes
    timestamp: float
    gaps: tuple[Gap, ...] = ()


@dataclass(slots=True)
class Session:
    """One connection (TCP) or one 4-tuple exchange (UDP), messages in the order sent.

    `close` says how it ended: "fin" (both sides closed), "rst", "timeout" (idle),
    "reused" (a new SYN on the same 4-tuple), "evicted" (flow cap), "refused" (UDP: the
    server's machine answered a datagram with ICMP port unreachable), or "eof" (the capture
    ended first). `closed_by` is who sent the first FIN, the RST or the ICMP, if anyone did.
    `midstream` is True when neither the SYN nor the SYN-ACK was captured. `accepted` is
    True when the server's SYN-ACK was (TCP: the port was open, whether or not anyone then
    spoke).
    `anomalies` counts what the reassembler dropped in this session (see docs/capture.md).
    """

    index: int
    transport: Transport
    client: Endpoint
    server: Endpoint
    start: float
    end: float
    midstream: bool
    messages: list[Message] = field(default_factory=list)
    close: str = "eof"
    closed_by: Sender | None = None
    anomalies: dict[str, int] = field(default_factory=dict)
    accepted: bool = False

    @property
    def server_port(self) -> int:
        return self.server.port

    @property
    def gaps(self) -> int:
        """Number of holes in the captured byte streams of this session."""
        return sum(len(m.gaps) for m in self.messages)


def closed_udp_ports(sessions: Iterable[Session]) -> set[int]:
    """The UDP ports that never sent a datagram and refused one (ICMP port unreachable):
    closed on the real machine, as a UDP scan finds most of them. Not a service to learn
    or serve: a port that takes datagrams and says nothing is nmap's `open|filtered`, where
    the real machine's was `closed`."""
    refused: set[int] = set()
    answered: set[int] = set()
    for s in sessions:
        if s.transport is Transport.UDP:
            if any(m.sender is Sender.SERVER for m in s.messages):
                answered.add(s.server_port)
            elif s.close == "refused":
                refused.add(s.server_port)
    return refused - answered


def silent_open_ports(sessions: Iterable[Session]) -> set[int]:
    """The TCP ports that accepted a connection (SYN-ACK) where no session carried a byte:
    open on the real machine, as a SYN scan finds them, with nobody speaking to them in the
    capture. Served as they were (open, silent), not left closed."""
    accepted: set[int] = set()
    talking: set[int] = set()
    for s in sessions:
        if s.transport is Transport.TCP:
            if s.messages:
                talking.add(s.server_port)
            elif s.accepted:
                accepted.add(s.server_port)
    return accepted - talking


def learnable(sessions: Iterable[Session]) -> Callable[[Session], bool]:
    """Which of `sessions` the learner learns from: those that carried data, but on the UDP
    ports the machine had closed (`closed_udp_ports`); and on a TCP port where nobody spoke,
    the connections it accepted (`silent_open_ports`)."""
    sessions = list(sessions)
    closed, silent = closed_udp_ports(sessions), silent_open_ports(sessions)

    def keep(s: Session) -> bool:
        if s.transport is Transport.UDP:
            return bool(s.messages) and s.server_port not in closed
        return bool(s.messages) or (s.accepted and s.server_port in silent)

    return keep
