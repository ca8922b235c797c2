"""Capture stage, the driver: capture files -> sessions (the only code that opens captures).

    read_records (reader.py) -> Decoder.decode (decode.py) -> TcpReassembler (tcp.py)
                                                           -> UdpSessions (udp.py)

Sessions are yielded as they end (FIN/RST/timeout), then the open ones at the end of the
input, so memory holds only the flows in progress. Several files are read as one capture,
in the order given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from scriptgen.capture.decode import REFUSED, TCP, DecodeCounts, Decoder
from scriptgen.capture.reader import read_records
from scriptgen.capture.tcp import TcpReassembler
from scriptgen.capture.udp import UdpSessions
from scriptgen.errors import CaptureTruncatedError
from scriptgen.model import Session
from scriptgen.params import CaptureParams

__all__ = ["CaptureStats", "read_sessions"]


@dataclass
class CaptureStats:
    """Everything the capture stage read, dropped or could not use."""

    packets: int = 0
    bytes: int = 0
    linktypes: dict[int, int] = field(default_factory=dict)
    decode: DecodeCounts = field(default_factory=DecodeCounts)
    tcp_after_close: int = 0  # data segments on a closed 4-tuple without a new SYN
    tcp_timed_out: int = 0
    tcp_evicted: int = 0
    udp_evicted: int = 0
    land: int = 0  # TCP segments and UDP datagrams whose source is their destination (LAND)
    damage: list[CaptureTruncatedError] = field(default_factory=list)


def read_sessions(
    paths: Iterable[str],
    params: CaptureParams | None = None,
    *,
    ports: Iterable[int] | None = None,
    stats: CaptureStats | None = None,
) -> Iterator[Session]:
    """Yield the TCP and UDP sessions of the captures at `paths`.

    `ports` keeps only sessions whose server port is listed (packets on other ports are
    skipped before reassembly). Pass a `CaptureStats` to receive the counts; damage to a
    file (a truncated tail) is recorded in `stats.damage`, not raised, and reading goes on
    with the next file. A file that is not a capture at all raises CaptureError.
    """
    params = params or CaptureParams()
    stats = stats if stats is not None else CaptureStats()
    wanted = frozenset(ports) if ports else None
    decoder = Decoder(params)
    stats.decode = decoder.counts
    tcp = TcpReassembler(params)
    udp = UdpSessions(params)
    decode = decoder.decode
    segment = tcp.segment
    datagram = udp.datagram
    refused = udp.refused
    tcp_done, udp_done = tcp.finished, udp.finished
    linktypes = stats.linktypes
    try:
        for path in paths:
            packets = size = 0
            for ts, linktype, buf, off, n in read_records(path, params, stats.damage):
                packets += 1
                size += n
                linktypes[linktype] = linktypes.get(linktype, 0) + 1
                packet = decode(ts, linktype, buf, off, n)
                if packet is None:
                    continue
                proto, key, seq, ack, flags, payload, length = packet
                if wanted is not None and (
                    (key[-4] << 8 | key[-3]) not in wanted and (key[-2] << 8 | key[-1]) not in wanted
                ):
                    continue
                if proto == TCP:
                    segment(ts, key, seq, ack, flags, payload, length)
                    if tcp_done:
                        yield from _drain(tcp_done, wanted)
                else:
                    if proto == REFUSED:
                        refused(ts, key)
                    else:
                        datagram(ts, key, payload, length)
                    if udp_done:
                        yield from _drain(udp_done, wanted)
            stats.packets += packets
            stats.bytes += size
        tcp.flush()
        udp.flush()
        yield from _drain(sorted(tcp_done + udp_done, key=lambda s: s.start), wanted)
    finally:
        stats.tcp_after_close = tcp.after_close
        stats.tcp_timed_out = tcp.timed_out
        stats.tcp_evicted = tcp.evicted
        stats.udp_evicted = udp.evicted
        stats.land = tcp.land + udp.land


def _drain(done: list[Session], wanted: frozenset[int] | None) -> Iterator[Session]:
    batch = done[:]
    done.clear()
    for session in batch:
        if wanted is None or session.server_port in wanted:
            yield session
