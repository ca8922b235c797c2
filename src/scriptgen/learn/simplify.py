"""Learn stage, step 2-3: raw tree -> simplified model (DESIGN §3, paper §2.4).

Top-down from the root, breadth first, for each state:
1. PI: the distinct requests leaving it (the `align_sample` heaviest) are aligned all
   pairs; UPGMA builds the guide tree; cutting it at W gives the macroclusters. Requests
   beyond the sample go to the nearest cluster representative if within W, else alone.
2. Each macrocluster is multiply aligned along its guide tree; Region Analysis splits it
   into microclusters (threshold w) and finds each one's regions (fixed / mutating).
3. Each final cluster becomes one transition. Dependency links are searched for its
   random regions; the answers of the states its edges led to are turned into templates
   (the value becomes a slot), and those states merge into one: labels and closes summed,
   outgoing edges unioned (identical requests merged). The merged state is simplified in
   turn.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from scriptgen.learn import align
from scriptgen.learn.builder import RawEdge, RawNode, RawTree, build, label_list
from scriptgen.learn.regions import make_regions, microclusters, region_of, values
from scriptgen.learn.fields import AnswerSample, Tokens, explains, find_framing, generalise, splice, tokenise_pattern
from scriptgen.model import Announce, Count, Label, Link, Part, PortModel, Region, Slot, State, Transition
from scriptgen.params import LearnParams

__all__ = ["simplify", "cluster_requests", "Cluster", "Request"]


@dataclass(frozen=True, slots=True)
class Request:
    """A distinct request leaving a state: what clustering needs of an edge (small, so
    that clustering can run in worker processes)."""

    request: bytes
    weight: int
    index: int  # position among the state's edges
    answer: bytes = b""  # the most frequent answer it got (head and tail, _answer)
    answer_length: int = 0  # that answer's whole length
    follow: tuple[tuple[bytes, bytes], ...] = ()  # text requests that came next, with their answers


@dataclass(eq=False)
class Cluster:
    """Requests that become one transition, with each one's value per mutating region."""

    members: list[Request]
    pattern: list[Region]
    values: list[dict[int, bytes]] = field(default_factory=list)  # per member: region -> value
    links: list[Link] = field(default_factory=list)

    @property
    def weight(self) -> int:
        return sum(m.weight for m in self.members)


Mapper = Callable[..., Iterable[list[Cluster]]]


def simplify(tree: RawTree, params: LearnParams, mapper: Mapper = map,
             progress: Callable[[int], None] | None = None) -> PortModel:
    """Simplify breadth-first, a level of the tree at a time. The clustering of a level's
    states is independent: `mapper` (a process pool's `map`) may run it in parallel; the
    merging that follows is done here, in order, so the result does not depend on it."""
    states: dict[int, State] = {}
    transitions: dict[int, Transition] = {}
    tokens = Tokens()
    level: list[tuple[RawNode, int, tuple[Region, ...]]] = [(tree.root, 0, ())]
    next_state = 1
    links = 0
    requests_seen: list[bytes] = []  # for the framing rule
    while level:
        following: list[tuple[RawNode, int, tuple[Region, ...]]] = []
        edges_of = [sorted(node.edges.values(), key=lambda e: (-e.weight, e.request)) for node, _, _ in level]
        requests = [[Request(e.request, e.weight, i, *_answer(e), _follow(e)) for i, e in enumerate(edges)]
                    for edges in edges_of]
        heavy = [i for i, r in enumerate(requests) if len(r) >= _PARALLEL_MIN]
        found: dict[int, list[Cluster]] = dict(zip(heavy, mapper(cluster_requests, [requests[i] for i in heavy],
                                                                 [params] * len(heavy))))
        for i, ((node, sid, way_in), edges) in enumerate(zip(level, edges_of)):
            labels = label_list(node.labels)
            if labels and params.rules:
                labels = _generalised(labels, node.answers, way_in, tokens, params.rules)
            clusters = found[i] if i in found else cluster_requests(requests[i], params)
            out: list[int] = []
            for cluster in clusters:
                members = [edges[m.index] for m in cluster.members]
                find_links(cluster, members, params)
                links += len(cluster.links)
                tid = len(transitions)
                samples = _samples(members, params)
                transitions[tid] = Transition(
                    id=tid, source=sid, target=next_state, pattern=tuple(cluster.pattern),
                    weight=cluster.weight, links=tuple(cluster.links), samples=tuple((r, a) for r, a, _ in samples),
                    announce=_announce(members), channel=_channel(members, params),
                    before=tuple(b for _, _, b in samples) if any(b for _, _, b in samples) else (),
                )
                out.append(tid)
                following.append((_merge(cluster, members, params), next_state, tuple(cluster.pattern)))
                next_state += 1
            if len(requests_seen) < _FRAMING_SAMPLE:
                requests_seen.extend(e.request for e in edges[: _FRAMING_SAMPLE - len(requests_seen)])
            states[sid] = State(
                id=sid, labels=labels, transitions=tuple(out),
                closes=dict(sorted(node.closes.items())),
                delay=round(statistics.median(node.delays), 6) if node.delays else None,
            )
        level = following
        if progress:
            progress(len(states))  # states simplified so far
    if "tokens" in params.rules:
        _tokenise(states, transitions, tokens)
    framing = find_framing(requests_seen) if "framing" in params.rules and tree.transport == "tcp" else None
    stats = {
        "sessions": tree.sessions, "raw_states": tree.states, "states": len(states),
        "transitions": len(transitions), "links": links,
        "cut_fanout": tree.cut["fanout"], "cut_states": tree.cut["states"],
    }
    return PortModel(tree.transport, tree.port, 0, states, transitions, stats, tokens.specs, framing)


_FRAMING_SAMPLE = 5000  # requests the framing rule is tested on


def _tokenise(states: dict[int, State], transitions: dict[int, Transition], tokens: Tokens) -> None:
    """Cut the tokens' capture values out of the requests' fixed regions, and move the
    region numbers the links and the target states' templates use accordingly."""
    for t in transitions.values():
        pattern, moved = tokenise_pattern(t.pattern, tokens)
        if len(pattern) == len(t.pattern):
            continue
        t.pattern = pattern
        t.links = tuple(Link(moved[k.region], k.where, k.support) for k in t.links)
        target = states[t.target]
        target.labels = tuple(Label(tuple(_moved(p, moved) for p in lb.parts), lb.count) for lb in target.labels)


def _moved(part: Part, moved: dict[int, int]) -> Part:
    if isinstance(part, Slot):
        return Slot(moved[part.region], part.start, part.stop)
    if isinstance(part, Count):
        return Count(moved[part.region], part.encoding, part.delta, part.at)
    return part


# -- clustering ---------------------------------------------------------------------------


# States with fewer distinct requests than this are clustered in the main process: shipping
# them to a worker costs more than aligning them.
_PARALLEL_MIN = 16


# Rounds of sample-and-assign per state: requests that fit no cluster of one round are
# sampled again in the next; after the last, each is a transition of its own.
_ROUNDS = 3


def cluster_requests(edges: list[Request], params: LearnParams) -> list[Cluster]:
    """The final clusters of a state's requests (sorted heaviest first), heaviest first."""
    if len(edges) <= 1:
        return [_literal(e) for e in edges]
    clusters: list[Cluster] = []
    pending = edges
    for round_ in range(_ROUNDS):
        sample, rest = _sample(pending, params.align_sample)
        messages = [e.request[: params.max_align_bytes] for e in sample]
        dist = align.distance_matrix(messages)
        labels = align.cut(align.guide_tree(dist), len(messages), params.macro)
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        members = sorted(groups.values())
        per_group = [_region_analysis([sample[i] for i in group], params) for group in members]
        clusters.extend(c for group in per_group for c in group)
        if not rest:
            break
        pending = _assign_rest(rest, per_group, members, messages, dist.tolist(), params)
        if round_ == _ROUNDS - 1 or len(pending) < 2:
            clusters.extend(_literal(e) for e in pending)
            break
    clusters.sort(key=lambda c: (-c.weight, c.members[0].request))
    return clusters


def _sample(edges: list[Request], size: int) -> tuple[list[Request], list[Request]]:
    """The requests aligned all-pairs: the heaviest half of `size`, then an even spread
    over the others (so that a sorted run of parameters is not sampled from one end)."""
    if len(edges) <= size:
        return edges, []
    top = size // 2
    others = edges[top:]
    step = len(others) / (size - top)
    picked = {int(i * step) for i in range(size - top)}
    sample = edges[:top] + [e for i, e in enumerate(others) if i in picked]
    rest = [e for i, e in enumerate(others) if i not in picked]
    return sample, rest


def _literal(edge: Request) -> Cluster:
    return Cluster([edge], [Region.literal(edge.request)] if edge.request else [], [{}])


def _region_analysis(edges: list[Request], params: LearnParams) -> list[Cluster]:
    """Macrocluster -> multiple alignment -> microclusters -> one Cluster each."""
    if len(edges) == 1:
        return [_literal(edges[0])]
    heads = [e.request[: params.max_align_bytes] for e in edges]
    rows = align.multiple_alignment(heads)
    tails = [e.request[params.max_align_bytes :] for e in edges]
    return _split(edges, rows, tails, params)


def _split(edges: list[Request], rows: list[list[int]], tails: list[bytes], params: LearnParams,
           again: bool = False) -> list[Cluster]:
    """Microclusters, each split by answer and by what came next (_by_answer). (ours) Each
    part of several requests is split the same way `again`: a value too rare in the whole
    cluster may be frequent among the requests of one answer (nmap's GET among its
    made-up methods: one wildcard per answer, the heavier 405 one took GET). Kept only
    where some part still holds several distinct requests: a wildcard for the values never
    seen, as the whole was (unknown users each answered 530 stay one wildcard)."""
    weights = [e.weight for e in edges]
    groups = microclusters(rows, weights, params, [e.answer for e in edges])
    if again and len(groups) > 1 and all(len({edges[i].request for i in g}) == 1 for g in groups):
        groups = [list(range(len(edges)))]
    result = []
    for group in groups:
        cluster = _cluster([edges[i] for i in group], [rows[i] for i in group], [tails[i] for i in group], params)
        parts = _by_answer(cluster, params)
        if len(parts) == 1:
            result.append(cluster)
            continue
        for part in parts:
            members = [group[k] for k in part]
            result.extend(_split([edges[i] for i in members], [rows[i] for i in members],
                                 [tails[i] for i in members], params, True))
    return result


def _generalised(labels: tuple[Label, ...], answers: Sequence[AnswerSample], way_in: tuple[Region, ...],
                 tokens: Tokens, rules: Sequence[str]) -> tuple[Label, ...]:
    """The labels with their fields: the most frequent, and each other one a kept sample
    was (the emulator may answer with any: docs/emulator.md). One the most frequent could
    have made, with its fields (an answer that differed in a date, a session id), is
    counted as it; others that become one template are made one."""
    default = generalise(labels[0].parts, answers, way_in, tokens, rules)
    counts = {default: labels[0].count}
    for label in labels[1:]:
        parts = label.parts
        made = [a for a in answers if parts == ((a.answer,) if a.answer else ())]
        if made:
            parts = default if explains(default, made, tokens) else generalise(parts, made, way_in, tokens, rules)
        counts[parts] = counts.get(parts, 0) + label.count
    return tuple(Label(parts, count) for parts, count in sorted(counts.items(), key=lambda item: -item[1]))


def _by_answer(cluster: Cluster, params: LearnParams) -> list[list[int]]:
    """(ours) Split a microcluster whose requests got different answers: a parameter that
    decides the answer (a path -> 200 or 404, a share name, a password) must not become a
    wildcard answered by whichever answer was most frequent. Answers are compared with each
    request's own parameter values blanked out (an echoed name is not a difference), by
    alignment distance, so that a date or a counter in a binary answer does not split.
    Text answers are compared with every run of digits made one "0" (dates, lengths and
    counters are written in digits there), and then any difference in words splits (at
    most _TEXT_SPLIT): two pages of one server differ only in a few words of their body.
    Returns the groups as positions among the cluster's members."""
    if len(cluster.members) < 2 or params.answer_split >= 1.0 or params.micro >= 1.0:
        return [list(range(len(cluster.members)))]  # w = 1 turns microclustering off, this included
    answers = []
    for member, vals in zip(cluster.members, cluster.values):
        answer = member.answer
        for value in sorted(vals.values(), key=len, reverse=True):
            if len(value) >= params.link_min_length:
                answer = answer.replace(value, b"\x00")
        answers.append(answer)
    text = all(_TEXT.fullmatch(m.answer[:_ANSWER_BYTES]) for m in cluster.members)
    threshold = _split_at(text, params)
    if text:
        answers = [_DIGITS.sub(b"0", a) for a in answers]
    parts: list[tuple[bytes, list[int]]] = []  # (representative answer, member positions)
    lengths = [member.answer_length for member in cluster.members]
    for k, answer in enumerate(_without_nonces(answers, lengths)):
        for representative, positions in parts:
            if align.distance(representative, answer) <= threshold:
                positions.append(k)
                break
        else:
            if len(parts) >= _MAX_ANSWER_GROUPS:
                parts[-1][1].append(k)
            else:
                parts.append((answer, [k]))
    return [group for _, positions in parts for group in _by_future(positions, cluster.members, params)]


def _by_future(positions: list[int], members: list[Request], params: LearnParams) -> list[list[int]]:
    """(ours) Split requests that got the same answer but left the server in different
    states: the same next request was answered differently after them (`USER sgalice`,
    then `PASS Wonderland1` 230; `USER mallory`, then the same `PASS` 530). A request joins
    the group its next requests agree with most. Where some next request was answered
    differently after some of these requests (their value decides the state), a request
    joins a group only on agreement, not for want of disagreement: `USER anonymous`, whose
    next requests no other user sent, stays apart from `USER sgalice`. Where no next
    request tells them apart (random names, each followed by values of its own), they all
    stay together."""
    after: dict[bytes, list[bytes]] = {}  # next request -> its answers after these requests
    for k in positions:
        for request, answer in members[k].follow:
            after.setdefault(request, []).append(answer)
    strict = any(any(not _same_answer(a, seen[0], params) for a in seen[1:]) for seen in after.values())
    groups: list[tuple[dict[bytes, bytes], list[int]]] = []  # (next request -> answer, positions)
    for k in positions:
        follow = dict(members[k].follow)
        best: tuple[dict[bytes, bytes], list[int]] | None = None
        agreed = 0
        for group in groups:
            shared = [r for r in follow if r in group[0]]
            if any(not _same_answer(follow[r], group[0][r], params) for r in shared):
                continue
            if best is None or len(shared) > agreed:
                best, agreed = group, len(shared)
        if best is None or (strict and follow and best[0] and not agreed):
            groups.append((follow, [k]))
        else:
            for r, a in follow.items():
                best[0].setdefault(r, a)
            best[1].append(k)
    return [ks for _, ks in groups]


def _split_at(text: bool, params: LearnParams) -> float:
    """The distance beyond which two answers are different decisions of the server."""
    return min(params.answer_split, _TEXT_SPLIT) if text else params.answer_split


def _same_answer(a: bytes, b: bytes, params: LearnParams) -> bool:
    """As the answer-aware split compares answers (digits masked in text)."""
    text = bool(_TEXT.fullmatch(a) and _TEXT.fullmatch(b))
    if text:
        a, b = _DIGITS.sub(b"0", a), _DIGITS.sub(b"0", b)
    return a == b or align.distance(a, b) <= _split_at(text, params)


def _follow(edge: RawEdge) -> tuple[tuple[bytes, bytes], ...]:
    """The text requests that came next after this one (the first _MAX_FOLLOW), each with
    its most frequent answer's head. Binary requests carry ids that differ per session and
    would never be found in common: they are left out, not counted as disagreeing."""
    follow: dict[bytes, bytes] = {}
    for target in edge.targets:
        for request, child in target.edges.items():
            head = request[:_ANSWER_BYTES]
            if len(follow) < _MAX_FOLLOW and _TEXT.fullmatch(head):
                follow.setdefault(head, _answer(child)[0][:_ANSWER_BYTES])
    return tuple(follow.items())


def _without_nonces(answers: list[bytes], lengths: list[int]) -> list[bytes]:
    """Answers with their nonce columns blanked: among answers of one length, a column
    that takes a different value in most of them (a session id, a challenge) is no
    decision of the server's and must not split requests apart. One length means the
    whole answers' (the compared heads of long answers all have the same length, and
    text shifted by a different status line is no nonce)."""
    by_length: dict[tuple[int, int], list[int]] = {}
    for k, answer in enumerate(answers):
        by_length.setdefault((len(answer), lengths[k]), []).append(k)
    out = list(answers)
    for group in by_length.values():
        if len(group) < 3:
            continue
        columns = zip(*(answers[k] for k in group))
        nonce = [len(set(column)) * 2 > len(group) for column in columns]
        if any(nonce):
            for k in group:
                out[k] = bytes(0 if n else c for c, n in zip(answers[k], nonce))
    return out


_MAX_ANSWER_GROUPS = 32  # answers told apart per microcluster (bounds the comparisons)
_ANSWER_BYTES = 256  # of an answer's head and of its tail compared
_DIGITS = re.compile(rb"[0-9]+")
_TEXT = re.compile(rb"[\t\n\r\x20-\x7e]*")
_MAX_FOLLOW = 16  # next requests kept per request for _by_future
_TEXT_SPLIT = 0.02  # share of a text answer (digits masked) that may differ in one group


def _answer(edge: RawEdge) -> tuple[bytes, int]:
    """The edge's most frequent answer (its first and last bytes) and its length."""
    counts: Counter[bytes] = Counter()
    for target in edge.targets:
        for parts, count in target.labels.items():
            counts[b"".join(p for p in parts if isinstance(p, bytes))] += count
    if not counts:
        return b"", 0
    answer = min(counts, key=lambda a: (-counts[a], a))
    if len(answer) > 2 * _ANSWER_BYTES:  # head and tail: a page's body ends it
        return answer[:_ANSWER_BYTES] + answer[-_ANSWER_BYTES:], len(answer)
    return answer, len(answer)


def _cluster(edges: list[Request], rows: list[list[int]], tails: list[bytes], params: LearnParams) -> Cluster:
    if len(edges) == 1:
        return _literal(edges[0])
    compact, found, regions = make_regions(rows, params)
    per_edge: list[dict[int, bytes]] = [{} for _ in edges]
    for r, span in enumerate(found):
        if not span[2]:
            for i, row in enumerate(compact):
                per_edge[i][r] = values(row, span)
    if any(tails):  # beyond max_align_bytes: one more region, fixed if the tails agree
        distinct = sorted(set(tails))
        if len(distinct) == 1:
            regions.append(Region.literal(distinct[0]))
        else:
            regions.append(region_of(tails, distinct, params))
            for i, tail in enumerate(tails):
                per_edge[i][len(regions) - 1] = tail
    regions, per_edge = _join_adjacent(regions, per_edge, params)
    return Cluster(edges, regions, per_edge)


def _join_adjacent(regions: list[Region], per_edge: list[dict[int, bytes]],
                   params: LearnParams) -> tuple[list[Region], list[dict[int, bytes]]]:
    """Adjacent fixed regions become one (after a tail was appended)."""
    out: list[Region] = []
    index: list[int] = []
    for r in regions:
        if out and r.fixed and out[-1].fixed:
            out[-1] = Region.literal((out[-1].value or b"") + (r.value or b""))
        else:
            out.append(r)
        index.append(len(out) - 1)
    remapped = [{index[k]: v for k, v in vals.items()} for vals in per_edge]
    return out, remapped


def _assign_rest(rest: list[Request], per_group: list[list[Cluster]], members: list[list[int]],
                 messages: list[bytes], dist: Sequence[Sequence[float]], params: LearnParams) -> list[Request]:
    """Requests beyond the aligned sample go to the nearest macrocluster's representative
    (its medoid) if within W, into the first of its transitions whose pattern fits them
    (mutating regions of any length). Returns those that fit nowhere."""
    reps = [min(group, key=lambda i: (sum(dist[i][j] for j in group), i)) for group in members]
    heaviest = sorted(range(len(members)), key=lambda g: (-len(members[g]), g))[: params.max_representatives]
    candidates = [messages[reps[g]] for g in heaviest]
    fits = {id(c): _relaxed(c.pattern) for group in per_group for c in group}
    unplaced: list[Request] = []
    grown: list[Cluster] = []
    for edge in rest:
        index, distance = align.nearest(edge.request[: params.max_align_bytes], candidates)
        placed = False
        if distance <= params.macro:
            for cluster in per_group[heaviest[index]]:
                fit = fits[id(cluster)]
                match = fit.fullmatch(edge.request) if fit is not None else None
                if match is not None:
                    _absorb(cluster, edge, match)
                    grown.append(cluster)
                    placed = True
                    break
        if not placed:
            unplaced.append(edge)
    for cluster in {id(c): c for c in grown}.values():
        _resummarise(cluster, params)
    return unplaced


_MAX_RELAXED_GROUPS = 8


def _relaxed(pattern: list[Region]) -> re.Pattern[bytes] | None:
    """Fixed regions literal, mutating regions as lazy groups of any length."""
    mutating = sum(1 for r in pattern if not r.fixed)
    if mutating == 0 or mutating > _MAX_RELAXED_GROUPS:
        return None
    text = b"".join(re.escape(r.value) if r.value is not None else b"(.*?)" for r in pattern)
    return re.compile(text, re.DOTALL)


def _absorb(cluster: Cluster, edge: Request, match: re.Match[bytes]) -> None:
    """Add a request that fits the cluster's pattern; its regions are summarised again
    once all requests are placed (`_resummarise`), not per request."""
    vals: dict[int, bytes] = {}
    group = 0
    for r, region in enumerate(cluster.pattern):
        if region.fixed:
            continue
        group += 1
        vals[r] = match.group(group)
    cluster.members.append(edge)
    cluster.values.append(vals)


def _resummarise(cluster: Cluster, params: LearnParams) -> None:
    for r, region in enumerate(cluster.pattern):
        if not region.fixed:
            seen = [x[r] for x in cluster.values if r in x]
            cluster.pattern[r] = region_of(seen, sorted(set(seen)), params)


# -- dependencies and merging -------------------------------------------------------------


def find_links(cluster: Cluster, edges: list[RawEdge], params: LearnParams) -> None:
    """Random regions whose value the answer repeats at a position stated the same way
    in >= link_min_support of the (request, answer) pairs (paper §2.4.3). (ours) Or any
    mutating region with two values or more that the answers repeat so: a name most
    clients share is echoed as surely as a random one."""
    if len(edges) < 2:
        return
    for r, region in enumerate(cluster.pattern):
        if region.fixed or not (region.random or len(region.samples) >= 2):
            continue
        support: Counter[str] = Counter()
        total = 0
        for edge, vals in zip(edges, cluster.values):
            value = vals.get(r, b"")
            for target in edge.targets:
                for parts, count in target.labels.items():
                    total += count
                    answer = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else None
                    if answer is None or len(value) < params.link_min_length:
                        continue
                    for where in _descriptors(answer, value):
                        support[where] += count
        if not total or not support:
            continue
        order = {"start": 0, "end": 1, "after": 2}
        where = min(support, key=lambda w: (-support[w], order[w.split(":")[0]], w))
        share = support[where] / total
        if share >= params.link_min_support:
            cluster.links.append(Link(r, where, round(share, 4)))


def _descriptors(answer: bytes, value: bytes) -> set[str]:
    """Every way to state where `value` occurs in `answer` (its first few occurrences:
    "33" is found inside "331 ..." before it is found after "for ")."""
    found: set[str] = set()
    k = answer.find(value)
    for _ in range(_MAX_OCCURRENCES):
        if k < 0:
            break
        found.add(f"start:{k}")
        found.add(f"end:{len(answer) - k - len(value)}")
        if k > 0:
            found.add("after:" + answer[max(0, k - 8) : k].hex())
        k = answer.find(value, k + 1)
    return found


_MAX_OCCURRENCES = 8


def _locate(answer: bytes, value: bytes, where: str) -> int:
    kind, _, arg = where.partition(":")
    if kind == "start":
        pos = int(arg)
    elif kind == "end":
        pos = len(answer) - int(arg) - len(value)
    else:
        anchor = bytes.fromhex(arg)
        i = answer.find(anchor)
        pos = i + len(anchor) if i >= 0 else -1
    return pos if pos >= 0 and answer[pos : pos + len(value)] == value else -1


def _template(parts: tuple[Part, ...], vals: dict[int, bytes], links: list[Link]) -> tuple[Part, ...]:
    """An answer with the linked values cut out as slots."""
    if len(parts) != 1 or not isinstance(parts[0], bytes) or not links:
        return parts
    answer = parts[0]
    cuts = []
    for link in links:
        value = vals.get(link.region, b"")
        pos = _locate(answer, value, link.where) if value else -1
        if pos >= 0:
            cuts.append((pos, pos + len(value), link.region))
    return tuple(splice(answer, [(start, end, Slot(region)) for start, end, region in sorted(cuts)]))


def _merge(cluster: Cluster, edges: list[RawEdge], params: LearnParams) -> RawNode:
    """The states the cluster's edges led to, merged one level deep (children stay lazy)."""
    merged = RawNode()
    for edge, vals in zip(edges, cluster.values):
        for target in edge.targets:
            for parts, count in target.labels.items():
                merged.labels[_template(parts, vals, cluster.links)] += count
            room = params.max_answer_samples - len(merged.answers)
            if room > 0:
                merged.answers.extend(dataclasses.replace(a, values=vals) for a in target.answers[:room])
            merged.closes.update(target.closes)
            room = params.max_delays - len(merged.delays)
            if room > 0:
                merged.delays.extend(target.delays[:room])
            for request, child in target.edges.items():
                into = merged.edges.get(request)
                if into is None:
                    merged.edges[request] = RawEdge(request, list(child.targets), child.weight, list(child.samples),
                                                    Counter(child.announce), list(child.channels))
                else:
                    into.targets.extend(child.targets)
                    into.weight += child.weight
                    into.samples.extend(child.samples[: max(0, params.max_samples - len(into.samples))])
                    into.announce.update(child.announce)
                    into.channels.extend(child.channels)
    return merged


def _announce(edges: list[RawEdge]) -> Announce | None:
    """Where the requests announce a port of the client's (channels.py), if at least half
    of them did, at one place: the (encoding, where) most of them agree on."""
    votes: Counter[tuple[str, str]] = Counter()
    for edge in edges:
        votes.update(edge.announce)
    if not votes:
        return None
    (encoding, where), count = min(votes.items(), key=lambda v: (-v[1], v[0]))
    return Announce(encoding, where) if count * 2 >= sum(e.weight for e in edges) else None


def _channel(edges: list[RawEdge], params: LearnParams) -> PortModel | None:
    """The data channels that answered these requests, learned as a model of their own
    (each session starts with the request it answered)."""
    sessions = [s for e in edges for s in e.channels]
    if not sessions:
        return None
    tree = next(build(sessions, params), None)
    if tree is None:
        return None
    channel = simplify(tree, params)
    channel.port = 0  # a port chosen when it is served
    return channel


def _samples(edges: list[RawEdge], params: LearnParams) -> list[tuple[bytes, bytes, bytes]]:
    """Up to max_samples (request, answer, request before), one per edge first (heaviest
    edges first), then more."""
    out: list[tuple[bytes, bytes, bytes]] = []
    depth = 0
    while len(out) < params.max_samples:
        added = False
        for edge in edges:
            if depth < len(edge.samples):
                out.append(edge.samples[depth])
                added = True
                if len(out) >= params.max_samples:
                    break
        if not added:
            break
        depth += 1
    return out
