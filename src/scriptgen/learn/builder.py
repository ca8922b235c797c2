"""Learn stage, step 1: sessions -> the raw state machine (DESIGN §2, paper §2.3).

A tree per (transport, server port). The root is labelled with the server's banner (an
empty answer when the client speaks first). Each client request is an edge, labelled
with the exact request bytes and a weight (the sessions that took it); the state it
leads to is labelled with the answer that followed, with counts. Edges keep a bounded set
of (request, answer) samples; states keep who closed the connection after them and the
server's response delays. Limits on fan-out and on states cut sessions short: what they
cut is counted, never lost silently.

A turn is (request, answer): one client message and the server bytes that follow it until
the client speaks again (several UDP datagrams of one answer are joined).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from scriptgen.learn.channels import ChildLink, Mark, data_session
from scriptgen.learn.fields import AnswerSample
from scriptgen.model import BEFORE_BYTES, Label, Part, Sender, Session, learnable
from scriptgen.params import LearnParams

_BANNERS = 8  # the most frequent banners of a port that a raced one is compared with
_BANNER_ALIKE = 0.9  # the share of its bytes a raced banner has as one of them (_raced_banner)

__all__ = ["RawEdge", "RawNode", "RawTree", "build", "turns", "answer_times", "label_list"]


@dataclass(eq=False)
class RawEdge:
    """Requests identical byte for byte. `targets` holds one state in the raw tree; after
    states merge (simplify) it holds every state the merged edges led to, merged lazily
    one level at a time so that deep trees need no recursion."""

    request: bytes
    targets: list[RawNode]
    weight: int = 0
    samples: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # (request, answer, the request before)
    announce: Counter[tuple[str, str]] = field(default_factory=Counter)  # (encoding, where) of ports it announced
    channels: list[Session] = field(default_factory=list)  # the data channels that answered it (channels.py)


@dataclass(eq=False)
class RawNode:
    labels: Counter[tuple[Part, ...]] = field(default_factory=Counter)
    edges: dict[bytes, RawEdge] = field(default_factory=dict)
    closes: Counter[str] = field(default_factory=Counter)
    delays: list[float] = field(default_factory=list)
    answers: list[AnswerSample] = field(default_factory=list)  # for answer fields (fields.py)

    def size(self) -> int:
        """States in this subtree, this one included (iterative: trees can be deep)."""
        count, stack = 0, [self]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(t for e in node.edges.values() for t in e.targets)
        return count


@dataclass(eq=False)
class RawTree:
    transport: str
    port: int
    root: RawNode
    sessions: int = 0
    states: int = 1
    cut: Counter[str] = field(default_factory=Counter)


def turns(session: Session) -> tuple[bytes, list[tuple[bytes, bytes, float]]]:
    """(banner, [(request, answer, delay)]) of a session. The banner is what the server
    said before the client's first message; delay is seconds from request to answer."""
    banner = bytearray()
    result: list[tuple[bytes, bytearray, float]] = []
    request_ts = 0.0
    for message in session.messages:
        if message.sender is Sender.CLIENT:
            result.append((message.data, bytearray(), -1.0))
            request_ts = message.timestamp
        elif not result:
            banner += message.data
        else:
            request, answer, delay = result[-1]
            if delay < 0:
                delay = max(0.0, message.timestamp - request_ts)
            answer += message.data
            result[-1] = (request, answer, delay)
    return bytes(banner), [(r, bytes(a), max(d, 0.0)) for r, a, d in result]


def _places(session: Session) -> list[tuple[int, bool, int]]:
    """For each message of `session`: (its turn as `turns` cuts them, -1 for the banner;
    whether it is that turn's request; where in the turn's request or answer it starts)."""
    places: list[tuple[int, bool, int]] = []
    turn, offset = -1, 0
    for message in session.messages:
        if message.sender is Sender.CLIENT:
            turn += 1
            places.append((turn, True, 0))
            offset = 0
        else:
            places.append((turn, False, offset))
            offset += len(message.data)
    return places


def answer_times(session: Session) -> tuple[float, list[float]]:
    """The capture time of the banner and of each turn's answer (as `turns` cuts them):
    when its first byte was seen, or the request's time when there was no answer."""
    banner_time = session.messages[0].timestamp if session.messages else 0.0
    times: list[float] = []
    answered = True
    for message in session.messages:
        if message.sender is Sender.CLIENT:
            times.append(message.timestamp)
            answered = False
        elif times and not answered:
            times[-1] = message.timestamp
            answered = True
    return banner_time, times


def build(sessions: Iterable[Session], params: LearnParams, links: Mapping[int, ChildLink] | None = None) -> Iterator[RawTree]:
    """One raw tree per (transport, server port), sorted by transport and port.

    Learned from (`model.learnable`): the sessions that carried data, but not on a UDP port
    the real machine had closed; and on a TCP port where nobody spoke, the connections it
    accepted (a tree of the root alone: served open and silent). Port scans' refused
    connections are skipped. A
    client that spoke before the banner arrived finds the banner at the front of the first
    answer: where that is one of the port's banners, or like one (_raced_banner), it is
    taken as the banner (the server sent it on connect; the answer is what follows).
    `links` (channels.find_channels, by position in `sessions`) names the data channels:
    they join their parent's tree on the edge of the request they answer, and where it
    announced their port is marked."""
    sessions = list(sessions)
    links = links or {}
    marks: dict[int, list[Mark]] = {}
    channels: dict[int, list[tuple[int, Session]]] = {}
    for link in links.values():
        marks.setdefault(link.parent, []).append(link.mark)
        if link.trigger is not None:
            parent = sessions[link.parent]
            channels.setdefault(link.parent, []).append(
                (link.trigger, data_session(sessions[link.child], link, parent)))
    keep = learnable(sessions)
    kept = [(i, s) for i, s in enumerate(sessions) if i not in links and keep(s)]
    banners: dict[tuple[str, int], Counter[bytes]] = {}
    for _, session in kept:
        banner, _ = turns(session)
        if banner:
            banners.setdefault((session.transport.value, session.server_port), Counter())[banner] += 1
    # Each port's banners, most frequent first (a few: a banner with a date is one per session).
    usual = {key: sorted(c, key=lambda b: (-c[b], b))[:_BANNERS] for key, c in banners.items()}
    trees: dict[tuple[str, int], RawTree] = {}
    for i, session in kept:
        key = (session.transport.value, session.server_port)
        tree = trees.get(key)
        if tree is None:
            tree = trees[key] = RawTree(key[0], key[1], RawNode())
        _add(tree, session, params, usual.get(key, ()), marks.get(i, []), channels.get(i, []))
    for key in sorted(trees):
        yield trees[key]


def _raced_banner(answer: bytes, banners: Sequence[bytes]) -> int:
    """How many bytes at the front of a first answer are the port's banner (0: none), for a
    client that spoke before the banner arrived: one of the port's banners, or bytes like
    one of them: as long, with as many lines, the same byte at nearly every place but where
    both have a digit (Exim's banner holds the date and time it was sent)."""
    for banner in banners:
        n = len(banner)
        head = answer[:n]
        if head == banner:
            return n
        if len(head) < n or head.count(b"\n") != banner.count(b"\n") or head[-1] != banner[-1]:
            continue
        alike = sum(a == b or (48 <= a <= 57 and 48 <= b <= 57) for a, b in zip(head, banner))
        if alike >= _BANNER_ALIKE * n:
            return n
    return 0


def _add(tree: RawTree, session: Session, params: LearnParams, banners: Sequence[bytes] = (),
         marks: list[Mark] | tuple[Mark, ...] = (), channels: list[tuple[int, Session]] | tuple[()] = ()) -> None:
    banner, steps = turns(session)
    banner_time, times = answer_times(session)
    split = 0  # bytes of the first answer that were the banner
    if not banner and banners and steps and session.transport.value == "tcp":
        request, answer, delay = steps[0]
        split = _raced_banner(answer, banners)
        if split:
            banner, steps = answer[:split], [(request, answer[split:], delay), *steps[1:]]
    # Where marks and channels go: per turn (-1: the banner), the ports its answer
    # announces, what its request announces, the channels that answered its request.
    answer_ports: dict[int, list[tuple[int, int, str]]] = {}
    request_ports: dict[int, list[tuple[str, str]]] = {}
    answered: dict[int, list[Session]] = {}
    if marks or channels:
        place = _places(session)
        for mark in marks:
            turn, is_request, offset = place[mark.message]
            start, end = mark.start + offset, mark.end + offset
            if is_request:
                size = len(steps[turn][0])
                request_ports.setdefault(turn, []).extend(
                    [(mark.encoding, f"start:{start}"), (mark.encoding, f"end:{size - end}")])
            elif turn == 0 and split:
                if start >= split:
                    answer_ports.setdefault(0, []).append((start - split, end - split, mark.encoding))
                elif end <= split:
                    answer_ports.setdefault(-1, []).append((start, end, mark.encoding))
            else:
                answer_ports.setdefault(turn, []).append((start, end, mark.encoding))
        for trigger, channel in channels:
            answered.setdefault(place[trigger][0], []).append(channel)
    number = tree.sessions
    tree.sessions += 1
    node = tree.root
    node.labels[(banner,) if banner else ()] += 1
    if len(node.answers) < params.max_answer_samples:
        node.answers.append(AnswerSample(number, banner_time, banner, ports=tuple(answer_ports.get(-1, ()))))
    before = b""  # the session's request before this one
    for turn, ((request, answer, delay), at) in enumerate(zip(steps, times)):
        edge = node.edges.get(request)
        if edge is None:
            if len(node.edges) >= params.max_fanout or tree.states >= params.max_states:
                tree.cut["fanout" if len(node.edges) >= params.max_fanout else "states"] += 1
                tree.cut["channels"] += sum(len(v) for k, v in answered.items() if k >= turn)
                return
            edge = node.edges[request] = RawEdge(request, [RawNode()])
            tree.states += 1
        edge.weight += 1
        if len(edge.samples) < params.max_samples:
            edge.samples.append((request, answer, before))
        before = request[:BEFORE_BYTES]
        edge.announce.update(request_ports.get(turn, ()))
        edge.channels.extend(answered.get(turn, ()))
        node = edge.targets[0]
        node.labels[(answer,) if answer else ()] += 1
        if len(node.answers) < params.max_answer_samples:
            node.answers.append(AnswerSample(number, at, answer, ports=tuple(answer_ports.get(turn, ()))))
        if len(node.delays) < params.max_delays:
            node.delays.append(delay)
    node.closes[session.closed_by.value if session.closed_by else "none"] += 1


def label_list(labels: Counter[tuple[Part, ...]]) -> tuple[Label, ...]:
    """Labels most frequent first; ties by their bytes, so output is deterministic."""
    return tuple(
        Label(parts, count)
        for parts, count in sorted(labels.items(), key=lambda item: (-item[1], _sort_key(item[0])))
    )


def _sort_key(parts: tuple[Part, ...]) -> tuple[tuple[int, bytes], ...]:
    return tuple((0, p) if isinstance(p, bytes) else (1, repr(p).encode()) for p in parts)
