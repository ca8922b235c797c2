"""What the learn stage produces: a state machine per (transport, port).

    Model ── PortModel (one listening port) ── State ──(Transition: Pattern of Regions)──> State

A state is labelled with the answers the server gave on entering it (templates with
counts: the most frequent is the default). A transition matches a client request by its
pattern; a `Slot` in an answer template is filled with the value the request carried in
one of the pattern's mutating regions (a dependency link, paper §2.4.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Region", "Slot", "Part", "Label", "Link", "Transition", "State", "PortModel", "Model"]


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

    @property
    def fixed(self) -> bool:
        return self.value is not None

    @staticmethod
    def literal(value: bytes) -> Region:
        return Region(value, len(value), len(value), _is_ascii(value))


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """In an answer template: the value the request carried in mutating region `region`."""

    region: int


Part = bytes | Slot


@dataclass(frozen=True, slots=True)
class Label:
    """An answer template (bytes and slots, in order) and how often it was seen."""

    parts: tuple[Part, ...]
    count: int

    def render(self, values: dict[int, bytes] | None = None) -> bytes:
        """The answer, slots filled from `values` (region index -> bytes)."""
        values = values or {}
        return b"".join(p if isinstance(p, bytes) else values.get(p.region, b"") for p in self.parts)


@dataclass(frozen=True, slots=True)
class Link:
    """A dependency: the answer repeats request region `region`, located by `where`
    ("start:K" bytes from the start, "end:K" bytes before the end, or "after:HEX" right
    after those anchor bytes), true in `support` (a share) of the samples."""

    region: int
    where: str
    support: float


@dataclass(slots=True)
class Transition:
    id: int
    source: int
    target: int
    pattern: tuple[Region, ...]
    weight: int
    links: tuple[Link, ...] = ()
    samples: tuple[tuple[bytes, bytes], ...] = ()  # (request, answer) seen on this edge


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


@dataclass(slots=True)
class PortModel:
    transport: str
    port: int
    root: int
    states: dict[int, State]
    transitions: dict[int, Transition]
    stats: dict[str, int] = field(default_factory=dict)


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
