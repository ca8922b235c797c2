"""Every tunable of scriptgen, as documented dataclass fields with their defaults.

The CLI fills these from flags; later stages record them in the model file. No tuned
constant hides inside a function: if a number changes behaviour, it lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CaptureParams", "LearnParams", "ServeParams", "LogParams", "RecordParams", "EvaluateParams"]


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

    closed_flow_memory: int = 4096
    """Recently closed TCP connections remembered (for at most `tcp_idle_timeout`) so that
    data retransmitted after their close is not mistaken for a new midstream session.
    (Bare ACKs and FINs never open a session, so they need no memory.)"""

    max_fragment_groups: int = 1024
    """IP datagrams being reassembled from fragments at once; the oldest is dropped beyond."""

    fragment_timeout: float = 30.0
    """Seconds of capture time after which an incomplete fragmented datagram is dropped."""

    well_known_port_limit: int = 1024
    """Ports below this are taken to be the server's when no SYN says who listens."""


@dataclass(frozen=True, slots=True)
class LearnParams:
    """Learn stage: raw state machine, PI alignment, Region Analysis, dependencies.

    The algorithm is written down in docs/algorithm.md; these fields are recorded in the
    model file and iterated by `scriptgen sweep`.
    """

    macro: float = 0.5
    """W, the macroclustering threshold (paper §3.2): requests closer than this (alignment
    distance, 0..1) fall in one macrocluster. 0: every distinct request alone; 1: one."""

    micro: float = 0.5
    """w, the microclustering threshold (paper §2.4.2, Fig. 4): a value of a mutating
    region whose weighted frequency in its cluster is >= w is split off into its own
    microcluster. 0: every value splits; 1: no effect."""

    max_fanout: int = 1000
    """Distinct requests kept per state of the raw tree; the rest of a session that needs
    more is cut and counted (paper §2.3)."""

    max_states: int = 100_000
    """States of the raw tree per port; sessions needing more are cut and counted."""

    max_samples: int = 8
    """(request, answer) samples kept per transition, for dependency search and `show`."""

    max_delays: int = 64
    """Response delays kept per state for its median."""

    align_sample: int = 200
    """Distinct requests per state aligned all-pairs (the most frequent); the others are
    assigned to the nearest cluster, which keeps learning linear in the capture."""

    max_representatives: int = 64
    """Clusters a request outside the aligned sample is compared with (the heaviest)."""

    max_align_bytes: int = 2048
    """Only the first bytes of a message take part in alignment distances (cost bound);
    longer requests are still matched in full."""

    min_fixed_run: int = 2
    """A fixed region shorter than this between two mutating regions is a coincidence of
    the alignment, not protocol structure: it is absorbed into the mutating region."""

    answer_split: float = 0.25
    """(ours) Requests of one microcluster whose answers differ by more than this alignment
    distance (their own parameter values blanked out) become separate transitions, so that
    a parameter deciding the answer is not made a wildcard. A refinement of
    microclustering: off at w = 1 as microclustering is. 1 turns it off."""

    random_distinct: float = 0.5
    """A mutating region is random when at least this share of its values are distinct."""

    link_min_support: float = 0.9
    """A dependency link is kept when it holds in at least this share of the samples."""

    link_min_length: int = 2
    """Values shorter than this are not searched for in answers (coincidences)."""

    rules: tuple[str, ...] = ("lengths", "counters", "tokens", "clocks", "framing", "channels")
    """(ours) The answer-field and framing rules to look for (docs/algorithm.md, "Answer
    fields"): lengths, counters, tokens (values the server chose per connection, made
    fresh), clocks (the current time), framing (requests that carry their length) and
    channels (data connections announced inside a conversation, "Data channels")."""

    max_answer_samples: int = 32
    """Answers kept per state to find answer fields in."""

    jobs: int = 0
    """Worker processes for learning ports in parallel; 0 = one per core."""


@dataclass(frozen=True, slots=True)
class ServeParams:
    """Limits of the asyncio server (`scriptgen serve --help`). Connections of UDP are the
    (peer address, listener) pairs seen within `udp_idle_timeout`."""

    idle_timeout: float = 120.0
    """Seconds without a byte from the client after which a TCP connection is closed
    (reason `idle`)."""

    udp_idle_timeout: float = 30.0
    """Seconds without a datagram after which a UDP peer's session ends (reason `idle`)."""

    max_session: float = 600.0
    """Seconds after which any session is closed, busy or not (reason `max-duration`)."""

    max_buffered: int = 1 << 20
    """Bytes of answers queued for a client that does not read; beyond, the connection is
    aborted (reason `max-buffered`). Input is bounded by the engine's `max_request_bytes`,
    and reading pauses while the client is not reading, so a connection holds at most
    about these two amounts."""

    max_requests: int = 10_000
    """Requests taken on one connection; beyond, it is closed (reason `max-requests`):
    a flood of pipelined requests would otherwise fill the log without end."""

    feed_bytes: int = 8192
    """Bytes handed to the engine at once. A bigger read is fed in pieces, one per turn of
    the event loop, with reading from that client paused meanwhile, so that one client's
    flood delays the others by one piece's work at most. The engine's work per call grows
    with the bytes it holds (each call re-matches its whole buffer): small pieces bound a
    flood of pipelined requests, large ones make a flood of unmatched bytes cheaper."""

    request_timeout: float = 30.0
    """Seconds a TCP client gets to complete a request, from its first byte to the
    engine taking it (a whole message: docs/emulator.md); beyond, the connection is closed
    (reason `request-timeout`). The idle timer is reset by every byte, so without this a
    client sending a byte every few seconds (Slowloris) would hold its connection for
    `max_session`. A UDP datagram is a whole request."""

    max_connections: int = 1000
    """Open sessions, TCP and UDP, over all listeners. A new one over the cap is admitted
    after closing the idlest open session (the longest without a byte from its client;
    reason `evicted`), so that held connections cannot lock newcomers out."""

    max_per_source: int = 64
    """Open sessions, TCP and UDP, from one client address. A new one over the cap is
    admitted after closing the idlest session of that address (reason `evicted`): one
    address cannot take the whole of `max_connections`."""

    refused_log_rate: int = 10
    """Refusals (connections arriving while the server shuts down) logged per second;
    further ones are counted in the next refused event's `suppressed` key and in
    `scriptgen.server.stop`."""

    grace: float = 5.0
    """Seconds the open sessions get to finish after SIGTERM/SIGINT, once listening has
    stopped; the ones still open are then closed (reason `shutdown`)."""

    backlog: int = 1024
    """listen(2) backlog of each TCP listener."""

    max_channels: int = 256
    """Data channels (docs/emulator.md) being set up at once over all sessions: listeners
    waiting for their connection and connections out being made. Beyond, an answer
    announces the capture's port and nothing listens there; logged."""

    max_session_channels: int = 4
    """The same, per session: an FTP client needs one at a time."""

    channel_timeout: float = 30.0
    """Seconds a data channel's listener waits for its one connection, and a connection
    out (to a port the client announced) may take."""

    handover: str = "unsure"
    """When a session of a port with a backend (`--backend`, docs/backend.md) is handed to
    it: `unsure` (at the first request the model has no answer for: an unmatched event),
    `always` (at connect: a pure relay) or `never` (no backend connection is made)."""

    max_backend_sessions: int = 64
    """Sessions of one backend connected to it at once (each mirrors its client from the
    connect on); beyond, new sessions are the model's alone."""

    backend_connect_timeout: float = 3.0
    """Seconds a connection to the backend may take; past it the model goes on alone."""

    backend_gap: float = 0.05
    """Seconds of silence after which the backend's answer to a mirrored request is over
    (and the next request is sent to it)."""

    backend_wait: float = 5.0
    """Seconds the backend may take to begin an answer: a mirrored request unanswered
    that long counts as answered with nothing; the handed-over request unanswered that
    long gives the session back to the model."""

    backend_retry: float = 1.0
    """Seconds the backend is left alone after a failure; doubled with each failure in a
    row, up to 64 times, and reset by a connection that succeeds."""

    backend_max_bytes: int = 16 << 20
    """Bytes one session may relay each way through the backend (and hold for it before
    the handover); past it the session is closed (reason `backend-failed`) or, before the
    handover, left to the model."""


@dataclass(frozen=True, slots=True)
class LogParams:
    """The event log (docs/events.md): JSON lines and SQLite, written by one thread."""

    flush_interval: float = 0.2
    """Seconds between two writes of the queued events to the sinks."""

    flush_events: int = 500
    """Queued events that trigger a write before `flush_interval` has passed."""

    max_queued_events: int = 100_000
    """Events waiting for the writer; beyond (a sink far slower than the attack), new
    events are dropped and counted (`events_dropped` in `scriptgen.server.stop`)."""

    max_queued_bytes: int = 64 << 20
    """Payload bytes (logged `data`) waiting for the writer; beyond, as above."""

    data_bytes: int = 64 * 1024
    """Bytes of one message kept in an event's `data`; `size` always gives the full
    length, `truncated` says whether `data` was cut."""

    max_session_log_bytes: int = 4 << 20
    """Log text (JSON, estimated) one session's input, output and unmatched events may take
    in each output; past it `data` shrinks, then those events are counted, not logged
    (`scriptgen.session.cut`; `events_cut` and `bytes_cut` in `scriptgen.session.closed`)."""

    max_backlog_bytes: int = 32 << 20
    """JSON text of the batches one output failed to write (disk full) kept to be retried
    with the next write; beyond, the oldest are given up on, counted (`events_dropped`)
    and reported (`scriptgen.log.lost`, written to every output once that one writes again)."""


@dataclass(frozen=True, slots=True)
class RecordParams:
    """Recordings of served sessions as pcap files (docs/record.md, serve/record.py)."""

    rotate_bytes: int = 64 << 20
    """A recording file is closed, and the next one begun, before a packet would take it
    past this size. A single packet bigger than this still gets a file of its own."""

    rotate_seconds: float = 3600.0
    """A recording file is closed, and the next one begun, at the first packet this many
    seconds (of the times the recorder is given) after the file's first packet."""

    mtu: int = 1500
    """Largest IP packet written: TCP data is cut into segments of at most this minus the
    IP and TCP headers (1460 bytes over IPv4, 1440 over IPv6), the MSS announced in the
    handshake. UDP datagrams are written whole (one per message), whatever their size."""

    def __post_init__(self) -> None:
        if self.rotate_bytes < 1 or not self.rotate_seconds > 0:
            raise ValueError(f"rotate_bytes and rotate_seconds must be positive: {self}")
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"mtu must be between 576 and 65535: {self}")


@dataclass(frozen=True, slots=True)
class EvaluateParams:
    """How a replaying client paces itself, and how answers are scored."""

    quiet: float = 0.3
    """Seconds of silence from the server after which an answer is taken as complete."""

    wait: float = 2.0
    """Seconds the client waits for the first byte of an answer the real server gave
    (a non-empty recorded answer); where the real server stayed silent it waits `quiet`."""

    connect_timeout: float = 5.0
    """TCP target: seconds allowed to open the connection."""

    session_timeout: float = 120.0
    """TCP target: seconds allowed for one whole session; past it the session ends as an
    error (nothing after that is scored as received)."""

    concurrency: int = 32
    """TCP target: sessions replayed at once."""

    max_answer_bytes: int = 1 << 20
    """Bytes kept of one answer; more are read and dropped (bounded memory)."""

    compare_bytes: int = 2048
    """Similarity compares the first this many bytes of each answer (alignment cost grows
    with the product of the lengths); exactness compares whole answers."""

    carried_similarity: float = 0.8
    """A session is carried to the end when every answer is at least this similar to the
    recorded one (and given where the real server gave one, and the connection stayed open
    until the last client message)."""

    def __post_init__(self) -> None:
        if self.quiet <= 0 or self.wait <= 0 or self.connect_timeout <= 0 or self.session_timeout <= 0:
            raise ValueError(f"times must be positive: {self}")
        if self.concurrency < 1 or self.max_answer_bytes < 1 or self.compare_bytes < 1:
            raise ValueError(f"counts must be at least 1: {self}")
        if not 0.0 <= self.carried_similarity <= 1.0:
            raise ValueError(f"carried_similarity must be in [0, 1]: {self}")
