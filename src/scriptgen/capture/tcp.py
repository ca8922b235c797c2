"""Capture stage, step 3: TCP segments -> sessions, by sequence-number reassembly.

The policy (docs/capture.md has the full text and the reasons):
- A session starts at the SYN. Without SYN or SYN-ACK it is accepted and flagged
  `midstream`; each direction then starts at its first segment carrying data.
- Payload is placed by sequence number relative to the first data byte (32-bit
  wraparound). Out-of-order segments wait (bounded) until the hole fills; retransmitted
  bytes are dropped; on overlap the first copy of a byte wins.
- A hole that never fills is recorded as a `Gap` on the message. A hole is given up on
  when the other side, having acknowledged bytes the capture never saw, sends data or a
  FIN itself (a bare ACK may be captured just before the data it acknowledges), or when
  the session ends.
- A FIN closes its direction; the session ends when both directions are closed (data the
  other side sends after a half-close is kept), at a RST, at a new SYN on the same 4-tuple,
  after an idle timeout, on eviction (flow cap) or at the end of the capture.
- A segment starting more than `tcp_max_window` beyond the next expected byte is a bogus
  sequence number: dropped and counted, never buffered.
- A LAND segment (source address and port equal to the destination's, an attack) is
  counted and never opens a session: it has no client and server to tell apart.
- A segment without payload or SYN never opens a session (trailing ACKs and FINs, RSTs
  answering scans). Recently closed 4-tuples are remembered, so that data retransmitted
  after the close does not start a midstream session; only a SYN reopens them.

Messages: the longest run of bytes in one direction, in the order the bytes became
contiguous. Which side is the server is decided by the SYN, else by `_server_side`.
"""

from __future__ import annotations

import socket

from scriptgen.model import Endpoint, Gap, Message, Sender, Session, Transport
from scriptgen.params import CaptureParams

__all__ = ["TcpReassembler", "endpoints", "guess_server_side"]

_MASK = 0xFFFFFFFF
_HALF = 1 << 31
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


def endpoints(key: bytes) -> tuple[Endpoint, Endpoint]:
    """(source, destination) of a flow key built by the decoder."""
    n = (len(key) - 4) // 2
    family = socket.AF_INET if n == 4 else socket.AF_INET6
    src = socket.inet_ntop(family, key[:n])
    dst = socket.inet_ntop(family, key[n : 2 * n])
    sport = (key[2 * n] << 8) | key[2 * n + 1]
    dport = (key[2 * n + 2] << 8) | key[2 * n + 3]
    return Endpoint(src, sport), Endpoint(dst, dport)


def reverse_key(key: bytes) -> bytes:
    n = (len(key) - 4) // 2
    return key[n : 2 * n] + key[:n] + key[2 * n + 2 :] + key[2 * n : 2 * n + 2]


def guess_server_side(key: bytes, known_servers: set[int], well_known: int) -> int:
    """Which side listens, when no SYN says so: 0 = the key's source, 1 = its destination.

    In order: a port already seen listening (a SYN went to it) and not the other; else the
    only port below `well_known`; else the lower port (ephemeral ports are high).
    """
    src, dst = endpoints(key)
    if (src.port in known_servers) != (dst.port in known_servers):
        return 0 if src.port in known_servers else 1
    if (src.port < well_known) != (dst.port < well_known):
        return 0 if src.port < well_known else 1
    return 0 if src.port < dst.port else 1


class _Flow:
    """One TCP connection being reassembled. Directions: 0 = the side of `key`'s source."""

    __slots__ = (
        "index", "key", "server_side", "midstream", "start", "last",
        "base", "nxt", "pending", "pending_bytes", "fin", "done", "acked",
        "messages", "cur_side", "cur_data", "cur_ts", "cur_gaps",
        "closed_by", "anomalies", "accepted",
    )

    def __init__(self, index: int, key: bytes, ts: float) -> None:
        self.index = index
        self.key = key
        self.server_side = -1  # -1 = not known yet (decided at the end by heuristic)
        self.midstream = True
        self.start = ts
        self.last = ts
        self.base: list[int | None] = [None, None]  # sequence number of relative byte 0
        self.nxt = [0, 0]  # next expected relative byte
        self.pending: list[list[tuple[int, bytes, int]]] = [[], []]  # (rel, data, length)
        self.pending_bytes = [0, 0]
        self.fin: list[int | None] = [None, None]  # relative position of the FIN
        self.done = [False, False]
        self.acked = [0, 0]  # highest relative byte the peer acknowledged
        self.messages: list[tuple[int, bytes, float, tuple[Gap, ...]]] = []
        self.cur_side = -1
        self.cur_data = bytearray()
        self.cur_ts = 0.0
        self.cur_gaps: list[Gap] = []
        self.closed_by = -1
        self.anomalies: dict[str, int] = {}
        self.accepted = False  # the server's SYN-ACK was seen: the port was open

    def count(self, what: str) -> None:
        self.anomalies[what] = self.anomalies.get(what, 0) + 1


class TcpReassembler:
    """Feed segments with `segment()`; finished sessions accumulate in `finished`.

    The caller drains `finished` as it goes (it is a plain list), and calls `flush()` at
    the end of the capture.
    """

    def __init__(self, params: CaptureParams) -> None:
        self.params = params
        self.finished: list[Session] = []
        self._flows: dict[bytes, tuple[_Flow, int]] = {}  # both directions' keys
        self._active: dict[int, _Flow] = {}  # by index, in creation order
        self._closed: dict[bytes, float] = {}  # recently closed flows (their key) -> close time
        self._known_servers: set[int] = set()
        self._next_index = 0
        self._last_sweep = 0.0
        self.after_close = 0  # data segments on a closed 4-tuple, ignored
        self.land = 0  # segments whose source is their destination (a LAND attack), ignored
        self.evicted = 0
        self.timed_out = 0

    # -- the per-packet path -------------------------------------------------------

    def segment(self, ts: float, key: bytes, seq: int, ack: int, flags: int,
                payload: bytes, length: int) -> None:
        entry = self._flows.get(key)
        if entry is None:
            if key == reverse_key(key):
                # A LAND packet (source address and port = destination's): no client and
                # server to tell apart, so no session; counted.
                self.land += 1
                return
            if not length and not flags & _SYN:
                # A bare ACK, FIN or RST opens nothing: the tail of a closed connection, or
                # of one whose data was never captured (a RST answering a scan).
                return
            tomb = key if key in self._closed else reverse_key(key)
            if tomb in self._closed:
                if not flags & _SYN or flags & _ACK:
                    self.after_close += 1  # data on a closed 4-tuple, without a new SYN
                    return
                del self._closed[tomb]
            flow, side = self._open(ts, key, flags, seq, ack), 0
        else:
            flow, side = entry
            if flags & _SYN and not flags & _ACK and flow.base[side] is not None \
                    and (seq + 1) & _MASK != flow.base[side]:
                # A new connection on the same 4-tuple: the old one is over.
                self._finish(flow, "reused", tombstone=False)
                flow, side = self._open(ts, key, flags, seq, ack), 0
        flow.last = ts
        if flags & _SYN:
            if flags & _ACK:
                flow.accepted = True
            if flow.base[side] is None:
                flow.base[side] = (seq + 1) & _MASK
            if flags & _ACK and flow.base[1 - side] is None and flow.nxt[1 - side] == 0:
                flow.base[1 - side] = ack
            seq = (seq + 1) & _MASK
        elif flags & _ACK and flow.base[1 - side] is not None:
            self._acked(flow, 1 - side, ack, ts, now=bool(length or flags & _FIN))
        if length:
            if flow.base[side] is None:
                flow.base[side] = seq
            self._data(flow, side, seq, payload, length, ts)
        if flags & _FIN:
            if flow.base[side] is None:
                flow.base[side] = seq
            if flow.fin[side] is None:
                flow.fin[side] = flow.nxt[side] + _signed(seq + length - _next_seq(flow, side))
                if flow.closed_by < 0:
                    flow.closed_by = side
            self._check_done(flow, side)
        if flags & _RST:
            if flow.closed_by < 0:
                flow.closed_by = side
            self._finish(flow, "rst", tombstone=True)
        elif flow.done[0] and flow.done[1]:
            self._finish(flow, "fin", tombstone=True)
        if ts - self._last_sweep > 60.0 or len(self._active) > self.params.max_flows:
            self._sweep(ts)

    def _open(self, ts: float, key: bytes, flags: int, seq: int, ack: int) -> _Flow:
        flow = _Flow(self._next_index, key, ts)
        self._next_index += 1
        if flags & _SYN:
            flow.midstream = False
            flow.server_side = 0 if flags & _ACK else 1  # a SYN-ACK comes from the server
            src, dst = endpoints(key)
            self._known_servers.add(src.port if flags & _ACK else dst.port)
        self._flows[key] = (flow, 0)
        self._flows[reverse_key(key)] = (flow, 1)
        self._active[flow.index] = flow
        return flow

    def _data(self, flow: _Flow, side: int, seq: int, payload: bytes, length: int, ts: float) -> None:
        diff = _signed(seq - _next_seq(flow, side))
        fin = flow.fin[side]
        if diff == 0:
            if fin is not None and flow.nxt[side] >= fin:
                flow.count("data_after_fin")
                return
            self._deliver(flow, side, payload, length, ts)
        elif diff < 0:
            if diff + length <= 0:
                flow.count("retransmitted")
                return
            flow.count("overlapping")  # the bytes already delivered win
            self._deliver(flow, side, payload[-diff:], length + diff, ts)
        elif diff > self.params.tcp_max_window:
            flow.count("bogus_seq")
        elif fin is not None and flow.nxt[side] + diff >= fin:
            flow.count("data_after_fin")
        elif flow.pending_bytes[side] + length > self.params.tcp_max_pending_bytes:
            flow.count("pending_overflow")
        else:
            flow.count("out_of_order")
            flow.pending[side].append((flow.nxt[side] + diff, payload, length))
            flow.pending_bytes[side] += length
            return
        if flow.pending[side]:
            self._drain(flow, side, ts)

    def _deliver(self, flow: _Flow, side: int, payload: bytes, length: int, ts: float) -> None:
        """Append in-order bytes to the current message (a new one if the side changed)."""
        if flow.cur_side != side:
            self._end_message(flow)
            flow.cur_side, flow.cur_ts = side, ts
        flow.cur_data += payload
        if len(payload) < length:  # cut by the snap length: the rest is a hole
            flow.cur_gaps.append(Gap(len(flow.cur_data), length - len(payload)))
        flow.nxt[side] += length
        fin = flow.fin[side]
        if fin is not None and flow.nxt[side] >= fin:
            flow.done[side] = True

    def _drain(self, flow: _Flow, side: int, ts: float) -> None:
        """Deliver the buffered segments that the stream has now reached."""
        pending = flow.pending[side]
        pending.sort(key=lambda item: item[0])  # stable: among equals the first copy wins
        keep = 0
        for i, (rel, data, length) in enumerate(pending):
            nxt = flow.nxt[side]
            if rel > nxt:
                keep = i
                break
            if rel + length > nxt:
                skip = nxt - rel
                self._deliver(flow, side, data[skip:], length - skip, ts)
        else:
            keep = len(pending)
        del pending[:keep]
        flow.pending_bytes[side] = sum(item[2] for item in pending)

    def _acked(self, flow: _Flow, side: int, ack: int, ts: float, now: bool) -> None:
        """The peer acknowledged up to `ack`: bytes of `side` it got that the capture
        never saw are lost to us. When the peer now speaks (`now`), its bytes come after
        those: record the hole as a gap and move on. A bare ACK only notes it, because a
        capture can hold an ACK a moment before the data it acknowledges."""
        diff = _signed(ack - _next_seq(flow, side))
        if diff <= 0 or diff > self.params.tcp_max_window:
            return
        target = flow.nxt[side] + diff
        fin = flow.fin[side]
        if fin is not None:
            target = min(target, fin)  # the FIN itself takes one sequence number
        if now:
            self._skip_to(flow, side, target, ts)
        else:
            flow.acked[side] = max(flow.acked[side], target)

    def _skip_to(self, flow: _Flow, side: int, target: int, ts: float) -> None:
        while flow.nxt[side] < target:
            starts = [rel for rel, _, _ in flow.pending[side] if rel < target]
            hole_end = min(min(starts, default=target), target)
            if hole_end > flow.nxt[side]:
                if flow.cur_side != side:
                    self._end_message(flow)
                    flow.cur_side, flow.cur_ts = side, ts
                flow.cur_gaps.append(Gap(len(flow.cur_data), hole_end - flow.nxt[side]))
                flow.count("lost_bytes_gaps")
                flow.nxt[side] = hole_end
            if flow.pending[side]:
                self._drain(flow, side, ts)
        self._check_done(flow, side)

    def _check_done(self, flow: _Flow, side: int) -> None:
        fin = flow.fin[side]
        if fin is not None and flow.nxt[side] >= fin:
            flow.done[side] = True

    def _end_message(self, flow: _Flow) -> None:
        if flow.cur_side >= 0 and (flow.cur_data or flow.cur_gaps):
            flow.messages.append((flow.cur_side, bytes(flow.cur_data), flow.cur_ts, tuple(flow.cur_gaps)))
        flow.cur_data = bytearray()
        flow.cur_gaps = []
        flow.cur_side = -1

    # -- ending sessions -----------------------------------------------------------

    def _finish(self, flow: _Flow, close: str, tombstone: bool) -> None:
        for side in (0, 1):
            last = max([flow.acked[side]] + [rel + length for rel, _, length in flow.pending[side]])
            if last > flow.nxt[side]:
                self._skip_to(flow, side, last, flow.last)
        self._end_message(flow)
        del self._flows[flow.key]
        reverse = reverse_key(flow.key)
        del self._flows[reverse]
        del self._active[flow.index]
        if tombstone:
            self._closed[flow.key] = flow.last
            while len(self._closed) > self.params.closed_flow_memory:
                del self._closed[next(iter(self._closed))]
        self.finished.append(self._session(flow, close))

    def _session(self, flow: _Flow, close: str) -> Session:
        server_side = flow.server_side
        if server_side < 0:
            server_side = guess_server_side(flow.key, self._known_servers, self.params.well_known_port_limit)
        src, dst = endpoints(flow.key)
        client, server = (dst, src) if server_side == 0 else (src, dst)
        senders = (Sender.SERVER, Sender.CLIENT) if server_side == 0 else (Sender.CLIENT, Sender.SERVER)
        return Session(
            index=flow.index,
            transport=Transport.TCP,
            client=client,
            server=server,
            start=flow.start,
            end=flow.last,
            midstream=flow.midstream,
            messages=[Message(senders[s], data, t, gaps) for s, data, t, gaps in flow.messages],
            close=close,
            closed_by=senders[flow.closed_by] if flow.closed_by >= 0 else None,
            anomalies=dict(sorted(flow.anomalies.items())),
            accepted=flow.accepted,
        )

    def _sweep(self, now: float) -> None:
        """Emit idle flows; evict the least recently active tenth above the flow cap."""
        self._last_sweep = now
        limit = now - self.params.tcp_idle_timeout
        for flow in [f for f in self._active.values() if f.last < limit]:
            self.timed_out += 1
            self._finish(flow, "timeout", tombstone=False)
        while self._closed:
            key = next(iter(self._closed))
            if self._closed[key] >= limit:
                break
            del self._closed[key]
        excess = len(self._active) - self.params.max_flows
        if excess > 0:
            victims = sorted(self._active.values(), key=lambda f: (f.last, f.index))
            for flow in victims[: max(excess, self.params.max_flows // 10)]:
                self.evicted += 1
                self._finish(flow, "evicted", tombstone=False)

    def flush(self) -> None:
        """The capture ended: emit every open flow, in the order they started."""
        for flow in list(self._active.values()):
            self._finish(flow, "eof", tombstone=False)


def _next_seq(flow: _Flow, side: int) -> int:
    return (flow.base[side] + flow.nxt[side]) & _MASK  # type: ignore[operator]


def _signed(value: int) -> int:
    """A 32-bit sequence difference as a signed number (RFC 1982 serial arithmetic)."""
    return ((value + _HALF) & _MASK) - _HALF
