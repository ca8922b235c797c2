"""Capture stage, step 3 (UDP): datagrams -> sessions.

A session is the exchange on one 4-tuple; it ends after `udp_idle_timeout` seconds of
capture time without a datagram, or when the server's machine refuses a datagram of the
client's (ICMP port unreachable: close "refused", the port was closed). Each datagram is
one message (UDP keeps boundaries, and an emulator answers datagram by datagram), so two
requests in a row stay two messages.
A LAND datagram (source address and port equal to the destination's) is counted, never a
session. Which side is the server: a port already seen as a UDP server port, else the only port
below `well_known_port_limit`, else the destination of the first datagram.
"""

from __future__ import annotations

from scriptgen.capture.tcp import endpoints, reverse_key
from scriptgen.model import Gap, Message, Sender, Session, Transport
from scriptgen.params import CaptureParams

__all__ = ["UdpSessions"]


class _UdpFlow:
    __slots__ = ("index", "key", "server_side", "start", "last", "messages")

    def __init__(self, index: int, key: bytes, server_side: int, ts: float) -> None:
        self.index = index
        self.key = key
        self.server_side = server_side
        self.start = ts
        self.last = ts
        self.messages: list[Message] = []


class UdpSessions:
    """Feed datagrams with `datagram()`; finished sessions accumulate in `finished`."""

    def __init__(self, params: CaptureParams) -> None:
        self.params = params
        self.finished: list[Session] = []
        self._flows: dict[bytes, tuple[_UdpFlow, int]] = {}
        self._active: dict[int, _UdpFlow] = {}
        self._servers: set[int] = set()
        self._next_index = 0
        self.evicted = 0
        self.land = 0  # datagrams whose source is their destination (a LAND attack), ignored

    def datagram(self, ts: float, key: bytes, payload: bytes, length: int) -> None:
        entry = self._flows.get(key)
        if entry is not None and ts - entry[0].last > self.params.udp_idle_timeout:
            self._finish(entry[0], "timeout")
            entry = None
        if entry is None:
            if key == reverse_key(key):  # LAND: no client and server to tell apart
                self.land += 1
                return
            flow, side = self._open(ts, key), 0
        else:
            flow, side = entry
            # Keep _active ordered by last activity, so that idle sessions are at its front.
            del self._active[flow.index]
            self._active[flow.index] = flow
        flow.last = ts
        sender = Sender.SERVER if side == flow.server_side else Sender.CLIENT
        gaps = (Gap(len(payload), length - len(payload)),) if len(payload) < length else ()
        flow.messages.append(Message(sender, payload, ts, gaps))
        self._expire(ts)

    def refused(self, ts: float, key: bytes) -> None:
        """An ICMP port unreachable for the datagram of flow `key`: if the client sent it to
        the server, the session ends there (an ICMP for a datagram not captured, or one the
        server sent, changes nothing)."""
        entry = self._flows.get(key)
        if entry is None:
            return
        flow, side = entry
        if side != flow.server_side and ts >= flow.last:
            self._finish(flow, "refused", Sender.SERVER)

    def _open(self, ts: float, key: bytes) -> _UdpFlow:
        src, dst = endpoints(key)
        limit = self.params.well_known_port_limit
        if (src.port in self._servers) != (dst.port in self._servers):
            server_side = 0 if src.port in self._servers else 1
        elif (src.port < limit) != (dst.port < limit):
            server_side = 0 if src.port < limit else 1
        else:
            server_side = 1  # the first datagram goes to the server
        self._servers.add(src.port if server_side == 0 else dst.port)
        flow = _UdpFlow(self._next_index, key, server_side, ts)
        self._next_index += 1
        self._flows[key] = (flow, 0)
        self._flows[reverse_key(key)] = (flow, 1)
        self._active[flow.index] = flow
        return flow

    def _finish(self, flow: _UdpFlow, close: str, closed_by: Sender | None = None) -> None:
        del self._flows[flow.key]
        del self._flows[reverse_key(flow.key)]
        del self._active[flow.index]
        src, dst = endpoints(flow.key)
        client, server = (dst, src) if flow.server_side == 0 else (src, dst)
        self.finished.append(Session(
            index=flow.index, transport=Transport.UDP, client=client, server=server,
            start=flow.start, end=flow.last, midstream=False, messages=flow.messages, close=close,
            closed_by=closed_by,
        ))

    def _expire(self, now: float) -> None:
        """End the sessions idle for longer than the timeout (the front of _active), and
        above the flow cap the least recently active tenth."""
        limit = now - self.params.udp_idle_timeout
        while self._active:
            oldest = next(iter(self._active.values()))
            if oldest.last >= limit:
                break
            self._finish(oldest, "timeout")
        excess = len(self._active) - self.params.max_flows
        if excess > 0:
            for flow in list(self._active.values())[: max(excess, self.params.max_flows // 10)]:
                self.evicted += 1
                self._finish(flow, "evicted")

    def flush(self) -> None:
        for flow in list(self._active.values()):
            self._finish(flow, "eof")
