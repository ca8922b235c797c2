"""Every tunable of scriptgen, as documented dataclass fields with their defaults.

The CLI fills these from flags; later stages record them in the model file. No tuned
constant hides inside a function: if a number changes behaviour, it lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CaptureParams"]


@dataclass(frozen=True, slots=True)
class CaptureParams:
    """Capture stage: reading, IP defragmentation, TCP reassembly, UDP sessions.

    The policies these bound are written down in docs/capture.md.
    """

    max_record_bytes: int = 256 * 1024
    """A pcap/pcapng record claiming more captured bytes than this is damage, not data
    (libpcap's own maximum snap length is 256 KiB)."""

    tcp_max_window: int = 1 << 20
    """A segment starting more than this many bytes beyond the next expected byte of its
    direction is a bogus sequence number: dropped and counted, never buffered."""

    tcp_max_pending_bytes: int = 1 << 20
    """Out-of-order bytes buffered per direction while waiting for a hole to fill;
    segments beyond this are dropped and counted."""

    max_flows: int = 100_000
    """Concurrent TCP flows (and, separately, UDP flows) held at once. When exceeded, the
    least recently active tenth is evicted: emitted as sessions closed by `evicted`."""

    tcp_idle_timeout: float = 3600.0
    """Seconds of capture time without a packet after which an open TCP flow is emitted
    (closed by `timeout`). A later packet on the same 4-tuple starts a midstream session."""

    udp_idle_timeout: float = 10.0
    """Seconds of capture time without a datagram after which a UDP session ends."""

    closed_flow_memory: int = 65_536
    """Recently closed TCP 4-tuples remembered so that their trailing ACKs and
    retransmitted FINs are not mistaken for new midstream sessions."""

    max_fragment_groups: int = 1024
    """IP datagrams being reassembled from fragments at once; the oldest is dropped beyond."""

    fragment_timeout: float = 30.0
    """Seconds of capture time after which an incomplete fragmented datagram is dropped."""

    well_known_port_limit: int = 1024
    """Ports below this are taken to be the server's when no SYN says who listens."""
