"""What the learn stage produces: a state machine per (transport, port).

    Model ── PortModel (one listening port) ── State ──(Transition: Pattern of Regions)──> State

A state is labelled with the answers the server gave on entering it (templates with
counts: the most frequent is the default). A transition matches a client request by its
pattern; a `Slot` in an answer template is filled with the value the request carried in
one of the pattern's mutating regions (a dependency link, paper §2.4.3). The other
fields of a template (ours, docs/algorithm.md "Answer fields") are computed when the
answer is sent: a `Token` the server chose for this connection, the current time
(`Clock`), a request value plus a constant (`Count`) and a length (`Length`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Region", "Slot", "Token", "Clock", "Count", "Length", "Port", "Part", "Label", "Link", "Announce",
           "Transition", "State", "TokenSpec", "Framing", "PortModel", "Model", "INT_ENCODINGS", "CLOCK_ENCODINGS",
           "PORT_ENCODINGS", "BEFORE_BYTES"]

INT_ENCODINGS = ("u8", "u16be", "u16le", "u24be", "u32be", "u32le", "dec")
"""How an integer field is written: unsigned, big or little endian, or ASCII decimal."""

CLOCK_ENCODINGS = ("u32be", "u32le", "filetime", "http-date", "rfc5322")
"""How a time field is written: Unix seconds (u32), Windows FILETIME (u64 little endian,
100 ns since 1601), `Sun, 06 Nov 1994 08:49:37 GMT`, `Sun, 6 Nov 1994 08:49:37 +0000`."""

PORT_ENCODINGS = ("ip-pair", "pair", "dec", "u16be")
"""How a message announces a TCP port: `127,0,0,1,156,64` (an IPv4 address and the port's
two bytes, in decimal), `156,64`, `40000`, or two bytes big endian."""

BEFORE_BYTES = 256
"""How much of the request before a sample the model keeps (Transition.before); the
emulator compares as much (its own copy: it imports nothing)."""


@dataclass(frozen=True, slots=True)
class Region:
    """A run of aligned columns: fixed (the same bytes in every request) or mutating.

    For a mutating region `value` is None; `min_len`/`max_len` bound the lengths seen,
    `ascii` says whether every value seen was printable ASCII, `samples` keeps a few
    values (sorted) and `random` marks a region whose values were (nearly) all distinct.
    """

    value: bytes | None
    min_len: int
    max_len: int
    ascii: bool = True
    random: bool = False
    samples: tuple[bytes, ...] = ()
    token: int | None = None  # a server token the client repeats: any value of its length

    @property
    def fixed(self) -> bool:
        return self.value is not None

    @staticmethod
    def literal(value: bytes) -> Region:
        return Region(value, len(value), len(value), _is_ascii(value))


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """In an answer template: the value the request carried in mutating region `region`
    (its bytes [start:stop], as a Python slice: negative counts from the end, stop None
    is the end; a region may hold several fields of the request)."""

    region: int
    start: int = 0
    stop: int | None = None

    def of(self, value: bytes) -> bytes:
        return value[self.start : self.stop]


@dataclass(frozen=True, slots=True, order=True)
class Token:
    """A value the server chose per connection (a session id, a nonce): made fresh, with
    the length and byte class of `PortModel.tokens[token]`, the first time a connection
    needs it, and repeated wherever the model uses the same token after that."""

    token: int


@dataclass(frozen=True, slots=True)
class Clock:
    """The current time in `encoding` (CLOCK_ENCODINGS), `offset` seconds ahead of the
    capture's clock as the real server was; `zone` minutes east of UTC (rfc5322)."""

    encoding: str
    offset: float = 0.0
    zone: int = 0


@dataclass(frozen=True, slots=True)
class Count:
    """The integer the request carried in mutating region `region` (at byte `at` of its
    value; negative: from its end), plus `delta`, both written in `encoding`
    (INT_ENCODINGS): a sequence number answered with the next."""

    region: int
    encoding: str
    delta: int
    at: int = 0


@dataclass(frozen=True, slots=True)
class Length:
    """A length in `encoding` (INT_ENCODINGS): of the whole answer (`scope` "all"), of
    what follows this field ("rest") or of the part right after it ("next"), plus `adjust`."""

    encoding: str
    scope: str
    adjust: int


@dataclass(frozen=True, slots=True)
class Port:
    """A port the server announces for a second connection (a data channel, as FTP's
    `227 Entering Passive Mode (127,0,0,1,156,64)`): the emulator listens on a port of its
    own and writes it (and, for "ip-pair", its address) in `encoding` (PORT_ENCODINGS).
    `value` is the field as captured: what is written when no listener can be opened."""

    encoding: str
    value: bytes


Part = bytes | Slot | Token | Clock | Count | Length | Port


@dataclass(frozen=True, slots=True)
class Label:
    """An answer template (bytes and slots, in order) and how often it was seen."""

    parts: tuple[Part, ...]
    count: int

    def render(self, values: dict[int, bytes] | None = None) -> bytes:
        """The answer, slots filled from `values` (region index -> bytes)."""
        values = values or {}
        return b"".join(p if isinstance(p, bytes) else p.of(values.get(p.region, b"")) if isinstance(p, Slot) else b""
                        for p in self.parts)


@dataclass(frozen=True, slots=True)
class Link:
    """A dependency: the answer repeats request region `region`, located by `where`
    ("start:K" bytes from the start, "end:K" bytes before the end, or "after:HEX" right
    after those anchor bytes), true in `support` (a share) of the samples."""

    region: int
    where: str
    support: float


@dataclass(frozen=True, slots=True)
class Announce:
    """A request that announces a port of the client's for a data channel (as FTP's
    `PORT 127,0,0,1,156,64`): the emulator connects there, on the client's own address.
    The field is in `encoding` (PORT_ENCODINGS), located by `where`: "start:K" (it starts
    K bytes into the request) or "end:K" (it ends K bytes before the request's end)."""

    encoding: str
    where: str


@dataclass(slots=True)
class Transition:
    id: int
    source: int
    target: int
    pattern: tuple[Region, ...]
    weight: int
    links: tuple[Link, ...] = ()
    samples: tuple[tuple[bytes, bytes], ...] = ()  # (request, answer) seen on this edge
    announce: Announce | None = None
    # What the server sent on a data channel after this request (a listing, a file): the
    # model of those connections, each starting with this request as its first.
    channel: PortModel | None = None
    # Per sample (or none): the first BEFORE_BYTES of the request the client sent before it
    # in its session (b"": it was the first), for an answer that depends on the request
    # before (docs/emulator.md, "The request before").
    before: tuple[bytes, ...] = ()


@dataclass(slots=True)
class State:
    id: int
    labels: tuple[Label, ...]  # most frequent first
    transitions: tuple[int, ...]  # outgoing transition ids, in matching order
    closes: dict[str, int] = field(default_factory=dict)  # who closed after this state
    delay: float | None = None  # median seconds from request to answer

    @property
    def default(self) -> Label | None:
        return self.labels[0] if self.labels else None


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """What a fresh token looks like: its length and byte class ("digits", "hex", "HEX",
    "alnum", "text" or "bytes"), and a few values of the capture (for show)."""

    length: int
    charset: str
    samples: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Framing:
    """Requests carry their own length: an integer in `encoding` at `offset` equals the
    request's length minus `adjust`. Delimits requests without waiting for a gap."""

    offset: int
    encoding: str
    adjust: int


@dataclass(slots=True)
class PortModel:
    transport: str
    port: int
    root: int
    states: dict[int, State]
    transitions: dict[int, Transition]
    stats: dict[str, int] = field(default_factory=dict)
    tokens: list[TokenSpec] = field(default_factory=list)
    framing: Framing | None = None


@dataclass(slots=True)
class Model:
    ports: list[PortModel]
    params: dict[str, object] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def port(self, transport: str, port: int) -> PortModel | None:
        for p in self.ports:
            if p.transport == transport and p.port == port:
                return p
        return None


def _is_ascii(value: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in value)
