"""Emulate stage: the sans-I/O emulator core (DESIGN §5; h11's shape).

Standard library only, and nothing outside this package: the honeypot server, the
exported honeyd script (which embeds this file verbatim) and the replay evaluator all run
this same code. No sockets, no clocks, no globals: time comes in as `now`.

    machine = Machine(port_doc)            # one per model port, compiled once, shared
    conn = Emulator(machine, now)          # one per connection
    conn.receive_data(b"USER x\\r\\n", now)  # b"" = the client closed (UDP: an empty datagram)
    event = conn.next_event(now)           # Send | Input | Unmatched | Close | NeedData
                                           # | Listen | Connect | Channel (data channels)

`port_doc` is one entry of the model file's "ports" list, as JSON (base64 bytes), already
validated by scriptgen.modelfile (docs/model-format.md).

TCP has no message boundaries. A request is complete when the bytes received match a
transition and either the pattern ends in fixed bytes that the input ends with (a
terminator such as "\\r\\n"), or no more bytes arrive within `match_gap` seconds (also for
the very bytes of a request learned in another state); bytes that match nothing are taken
as a request after `idle_gap` seconds (by a server of lines, line by line as they come). A datagram is always one
request. Among matching transitions the one whose fixed bytes explain most of the input
wins (then the heavier, then the older), unless the match went through a mutating region
and another transition saw a sample with the request's first line. When none matches
(docs/emulator.md), strongest evidence first: the same bytes learned in another state
(preferably after the same answer); for a request line never seen, the answer usual
for its command here; the transition of this state whose sample request is
most similar, if at least `similarity_floor`; another state's pattern; the model's most
similar sample (if none reaches `similarity_floor`, down to `last_floor`); else silence,
or closing where the real server closed more often than not. A most-similar transition answers as it
answered its sample, with the sample's pieces it repeated replaced by the request's own.
"""

from __future__ import annotations

import base64
import difflib
import random
import re
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EmulatorParams", "Machine", "Emulator",
    "Send", "Input", "Unmatched", "Close", "NeedData", "Listen", "Connect", "Channel", "Event",
]


@dataclass(frozen=True, slots=True)
class EmulatorParams:
    """The emulator's knobs. They live here, not in scriptgen.params, because this package
    must import nothing outside itself (it is embedded in exported honeyd scripts)."""

    match_gap: float = 0.05
    """Seconds without new bytes after which input that matches a transition is a request."""

    idle_gap: float = 0.5
    """Seconds without new bytes after which input that matches nothing is a request."""

    similarity_floor: float = 0.5
    """Unmatched input takes the transition with the most similar sample request, if at
    least this similar (difflib ratio over the first `compare_bytes` bytes)."""

    last_floor: float = 0.3
    """A request that nothing else answers takes the model's most similar sample request
    if at least this similar (rather than silence): a server answers every command, if
    only to refuse it. Random bytes stay below it."""

    compare_bytes: int = 256
    """Bytes compared when looking for the nearest transition (bounds the cost)."""

    nearest_candidates: int = 64
    """Transitions (the heaviest) of the current state compared when looking for the
    nearest; four times as many of the whole model are compared when none is close."""

    max_request_bytes: int = 1 << 20
    """Input buffered for one request; past this it is taken as a request at once."""

    pace: bool = False
    """Delay each answer by the real server's median response delay for that state."""

    requests_per_call: int = 64
    """Requests taken from the buffer by one call of `receive_data` or `next_event`; the
    rest are taken in the calls after, `next_event` first saying NeedData(now): a megabyte
    of pipelined or length-framed requests (260,000 SMB headers of 4 bytes) costs the
    driver many short turns, not one of tens of seconds."""

    match_budget: int = 1 << 24
    """Bytes of input the patterns may be tried over for one call of `receive_data` or
    `next_event` (each pattern tried counts the bytes it is tried on). Past it the patterns
    left are not tried, and the input goes to the fallbacks as if none had matched: a model
    of a hundred thousand patterns, or a request of a megabyte, costs a bounded time, not
    the product of the two. Learned models stay far below it (docs/emulator.md)."""

    fallback_work: int = 4_000_000
    """What one connection may spend on answering requests nothing matched (the nearest
    search, the alike samples, the echoes), in units of about 0.1 µs of CPU (_ratio_work
    counts a comparison's). Past it such requests get
    nothing (Unmatched "spent") until it refills at `fallback_refill` a second: a flood of
    unknown requests costs at most about 0.4 s of CPU, then 1 % of a core
    (docs/emulator.md, bench/fuzz.py)."""

    fallback_refill: int = 100_000
    """Units of `fallback_work` a connection gets back per second."""

    wildcard_slack: int = 64
    """An ASCII mutating region matches up to max(4 x longest seen, longest + slack) bytes,
    and at least one byte where every value seen had one: names and paths vary more than
    a capture shows. A binary region seen with one length keeps it (a field with a size);
    one seen with several may be as much longer as an ASCII one."""


# -- events (what the driver must do) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send these bytes (the answer on entering `state`)."""

    data: bytes
    state: int


@dataclass(frozen=True, slots=True)
class Input:
    """A request was taken: from `source` by `transition` (None when unmatched) to `state`."""

    data: bytes
    source: int
    transition: int | None
    state: int


@dataclass(frozen=True, slots=True)
class Unmatched:
    """No transition matched `data` in `state`; `fallback` says what was done:
    "elsewhere" (took a matching transition of another state), "nearest" (took the
    transition with the most similar sample request), "silence" or "close"; "spent" when
    the connection's work for such requests is spent (fallback_work)."""

    data: bytes
    state: int
    fallback: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection. `reason`: "server" (the real server closed here), "eof"
    (the client closed), "unmatched" (fallback)."""

    reason: str


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing to do until more bytes arrive, or until `wake_at` (if not None), when
    `next_event` must be called again even without input."""

    wake_at: float | None


@dataclass(frozen=True, slots=True)
class Listen:
    """The next answer (of `state`) announces a data channel's port: open a listener (on
    the address the client connected to) and call `listening(port, host)`, or
    `listening(None)` when none can be opened; the answer waits for it."""

    state: int


@dataclass(frozen=True, slots=True)
class Connect:
    """The client announced a data channel on its own `port`: connect there, on the
    client's address (never another)."""

    port: int


@dataclass(frozen=True, slots=True)
class Channel:
    """The answer to `request` goes on over a data channel of this connection: serve
    `machine` on the next one (`Emulator(machine, now, first=request)`)."""

    machine: Machine
    request: bytes


Event = Send | Input | Unmatched | Close | NeedData | Listen | Connect | Channel


# -- the compiled model --------------------------------------------------------------------


class _Transition:
    __slots__ = ("id", "target", "weight", "regex", "literal", "fixed_bytes", "terminator", "groups", "sample",
                 "requests", "defaults", "announce", "channel", "names", "first_name", "lines", "label_of", "counts", "seen", "before",
                 "tokens")

    def __init__(self, doc: dict[str, Any], params: EmulatorParams) -> None:
        self.id: int = doc["id"]
        self.target: int = doc["target"]
        self.weight: int = doc["weight"]
        announce = doc.get("announce")
        self.announce: tuple[str, str, int] | None = None  # (encoding, "start" | "end", offset)
        if announce:
            side, _, offset = announce["where"].partition(":")
            self.announce = (announce["encoding"], side, int(offset))
        self.channel: Machine | None = Machine(doc["channel"], params) if doc.get("channel") else None
        parts: list[bytes] = []
        fixed: list[bytes] = []
        self.groups: dict[int, int] = {}  # region index -> regex group number
        self.defaults: dict[int, bytes] = {}  # region index -> a value seen (for fallbacks)
        self.tokens: dict[int, int] = {}  # regex group number -> the token its region repeats
        self.fixed_bytes = 0
        self.terminator = b""
        # Each region is one lazy group, atomic with the fixed bytes after it: it ends where
        # those bytes first occur and is never tried again at a later place (a region right
        # before another ends at its shortest). Nested lazy groups that backtrack cost up to
        # n^k for k regions (a model file is input like any other: docs/emulator.md); atomic
        # ones cost at most each region's length times its fixed bytes, once.
        region_open = b""  # the group of the region before, until we know what follows it
        for i, region in enumerate(doc["pattern"]):
            if "fixed" in region:
                value = base64.b64decode(region["fixed"])
                parts.append(b"(?>%s%s)" % (region_open, re.escape(value)) if region_open else re.escape(value))
                region_open = b""
                fixed.append(value)
                self.fixed_bytes += len(value)
                self.terminator = value
                continue
            if region_open:
                parts.append(b"(?>%s)" % region_open)
            self.terminator = b""
            self.groups[i] = len(self.groups) + 1
            samples = [base64.b64decode(s) for s in region["samples"]]
            if samples:
                self.defaults[i] = samples[0]
            lo, hi = region["min"], region["max"]
            if "token" in region:  # a server token the client repeats: its exact length
                region_open = b"(.{%d})" % lo
                self.tokens[self.groups[i]] = int(region["token"])
            elif region["ascii"]:
                lo, hi = min(lo, 1), max(hi * 4, hi + params.wildcard_slack)
                line_free = not any(b"\n" in s or b"\r" in s for s in samples)
                # Lazy: `match` at the front of pipelined input stops at the first terminator.
                region_open = b"([^\r\n]{%d,%d}?)" % (lo, hi) if line_free else b"(.{%d,%d}?)" % (lo, hi)
            else:
                if lo != hi:  # variable-length data (not a field with a size): may be shorter or longer
                    lo, hi = min(lo, 1), max(hi * 4, hi + params.wildcard_slack)
                region_open = b"(.{%d,%d}?)" % (lo, hi)
        parts.append(region_open)  # the last region: to the end of the request (fullmatch)
        self.regex = re.compile(b"".join(parts), re.DOTALL)
        self.literal = b"".join(fixed) if not self.groups else None  # matched by dict lookup
        self.requests = [base64.b64decode(pair[0]) for pair in doc["samples"]]  # seen on this edge
        self.seen = frozenset(self.requests)
        self.label_of: list[int] = []  # per sample: which of the target's labels it got (Machine)
        self.sample = self.requests[0] if self.requests else b""
        head = self.sample[: params.compare_bytes]
        self.names = _names(head) if _TEXT.fullmatch(head) else _wide_names(head)  # what it asks for
        # Per sample, the request before it in its session (format 4; none in older models).
        self.before = [base64.b64decode(b) for b in doc.get("before", ())][: len(self.requests)]
        self.counts = _byte_counts(head)  # for the nearest search's bound
        self.first_name = _first_name(self.sample)
        # The first line of each sample request of text (HTTP's request line), with it.
        self.lines = {_first_line(r): r for r in reversed(self.requests) if _TEXT.fullmatch(r[: params.compare_bytes])}


_Match = tuple[_Transition, "re.Match[bytes] | None"]

_MIN_ECHO = 3  # bytes a repeated piece must have (shorter ones repeat by chance)
_HEADER_BYTES = 64  # where an answer of binary repeats the request's ids at their place (_same_place)
_ID_BYTES = 8  # the longest id (SMB2's session id): two requests differing for longer differ in layout
_PREFIX_WEIGHT = 0.25  # a nearest sample beginning as the request does: up to this much more similar
_PREFIX_BYTES = 32
_LINE_WEIGHT = 1.0  # a nearest sample whose first line is the request's: this much more similar
_SAME_LINE_WEIGHT = 0.3  # and this much more when it is the very same line


def _common_start(a: bytes, b: bytes, text: bool) -> float:
    """The share of the first _PREFIX_BYTES the two messages have in common: as a run from
    the start in text; in bytes, place by place, as a header's fields are (an SMB request
    begins with its length, and a longer file name is no other command)."""
    if not text:
        return sum(x == y for x, y in zip(a[:_PREFIX_BYTES], b[:_PREFIX_BYTES])) / _PREFIX_BYTES
    n = 0
    for x, y in zip(a[:_PREFIX_BYTES], b[:_PREFIX_BYTES]):
        if x != y:
            break
        n += 1
    return n / _PREFIX_BYTES


def _same_line(line: bytes | None, sample: bytes) -> float:
    """How similar the sample's first line is to the request's (`line`; None when the
    request is not several lines): 0 when either has none."""
    end = sample.find(b"\n")
    if line is None or end < 0:
        return 0.0
    return difflib.SequenceMatcher(None, line, sample[:end], autojunk=False).ratio()


_WORDS = re.compile(rb"[A-Za-z0-9]+|[^A-Za-z0-9]")  # a word, or one byte of anything else

# A file, directory, page or key name: a letter in it (not a version or a number).
_NAMES = re.compile(rb"[A-Za-z0-9._-]*[A-Za-z][A-Za-z0-9._-]*")
_PRINTABLE = re.compile(rb"[\x20-\x7e\t]*")  # one line of text
_TEXT = re.compile(rb"[\x20-\x7e\t\r\n]*")  # lines of text
_PUNCTUATION = re.compile(rb"[\t\r\n\x20-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]+")  # of text, no letter or digit
_WIDE = re.compile(rb"(?:[\x20-\x7e]\x00){3,}")  # UTF-16LE text, as Windows protocols write names
_SHOWN_WEIGHT = 0.1  # a nearest sample asking for a name shown as the request's is: this much more similar
_COMMAND_WEIGHT = 0.4  # a nearest sample whose first name (its command) is the request's: this much more similar
_ONCE_WEIGHT = 0.1  # a nearest sample of text of the same command, sent in one session only: this much more similar
_FALLBACK_WORK = 500  # what the fallbacks past the same bytes elsewhere cost besides the searches (Emulator._work)
_MAX_RATIOS = 8  # candidates worked out per nearest search (two ratios each at most), the most promising first
# Pairs of equal elements difflib's alignment may walk for one comparison (the sum over
# values of count in one x count in the other): SMB's zeros against zeros took 24 ms a
# ratio, and a peer sends what it likes. Beyond, runs of a repeated byte count up to _RUN
# (nearest), or only the first _ECHO_WORDS words are aligned (echoes).
_MAX_DIFF_WORK = 1 << 13
_RUN = 4
_RUNS = re.compile(rb"(.)\1{%d,}" % _RUN, re.DOTALL)
_ECHO_WORDS = 64


def _diff_work(ours: list[int], theirs: tuple[bytes, array[int]]) -> int:
    """What aligning two byte strings walks at most (see _MAX_DIFF_WORK), from their counts."""
    return sum(ours[v] * n for v, n in zip(*theirs))


def _ratio_work(walk: int, size: int) -> int:
    """What a difflib ratio costs, in Emulator._work units (about 0.1 µs here), from the
    pairs its alignment may walk (_diff_work) and the bytes of both: within a factor of two
    on SMB, HTTP and the fuzzer's floods, where their product was off by up to eight."""
    return 3 * walk + 4 * size


def _runs_cut(data: bytes) -> bytes:
    return _RUNS.sub(lambda m: m.group(0)[:_RUN], data)


def _byte_counts(data: bytes) -> tuple[bytes, array[int]]:
    """The byte values in `data` and how many times each occurs (`data` is short)."""
    counts = Counter(data)
    return bytes(counts), array("H", counts.values())


def _shared_bytes(ours: list[int], theirs: tuple[bytes, array[int]]) -> int:
    """The bytes two messages have in common, order aside (difflib's quick_ratio is twice
    this over their lengths): `ours` counts each byte value of one, `theirs` is the
    other's `_byte_counts`. Over the values the other has, not all 256: a sixth of the time."""
    return sum([n if n < ours[v] else ours[v] for v, n in zip(*theirs)])


def _first_line(data: bytes) -> bytes:
    end = data.find(b"\n")
    return data if end < 0 else data[: end + 1]


def _names(data: bytes) -> frozenset[bytes]:
    return frozenset(_NAMES.findall(data))


def _wide_names(data: bytes) -> frozenset[bytes]:
    """The names in the runs of UTF-16LE text in bytes (SMB's file and share names)."""
    return frozenset(name for run in _WIDE.findall(data) for name in _NAMES.findall(run[::2]) if len(name) >= 3)


def _first_name(data: bytes) -> bytes:
    """The request's first name: the command."""
    m = _NAMES.search(data[:_PREFIX_BYTES])
    return m.group() if m else b""


def _text_command(data: bytes, limit: int) -> bytes:
    """The command of a request of text: its first name when that is letters only (not a
    tag: IMAP's `A004`) and its first `limit` bytes are text; else b""."""
    first = _first_name(data)
    return first if first.isalpha() and _TEXT.fullmatch(data[:limit]) is not None else b""


def _other_command(sample: bytes, request: bytes, answer: bytes, vocabulary: frozenset[bytes]) -> bool:
    """Whether two requests of text are different commands (`HELP`, `RSET`) and the
    sample's answer is not one about its command's name: then it repeats none of the
    request's words (Exim's command list does not end `RSET RSET`). An answer about the
    name repeats it, and the name is no word of the server's own (`vocabulary`: Redis's
    `-ERR unknown command 'NOSUCHCOMMAND'`, where `HELP` is also in Exim's `250 HELP`)."""
    first, second = _text_command(sample, _PREFIX_BYTES), _text_command(request, _PREFIX_BYTES)
    if not first or not second or first.upper() == second.upper():
        return False
    return first in vocabulary or first not in _alnum_words(answer)


def _shows(names: frozenset[bytes], shown: frozenset[bytes]) -> bool:
    """Whether any of the names is one of the server's answers' (Machine.shown)."""
    return not names.isdisjoint(shown)


def _echoes(sample: bytes, data: bytes, answer: bytes, limit: int, unechoed: set[bytes]
            ) -> list[tuple[bytes, bytes]]:
    """(ours) For a request matched to its nearest transition: the pieces of that
    transition's sample request its answer repeats, each with what stands in their place
    in the request at hand. A transition learned from one request cannot have a link, but
    its answer to an unseen name should repeat the name (EHLO, ECHO, an unknown command).
    Compared word by word, never cutting one: "PING" and "+PONG" share "NG", two
    different words; an unknown command's "arg" is in "args" too. A piece whose words are
    all `unechoed` (Machine.unechoed, for the sample's command) is the server's own."""
    s, d, a = _WORDS.findall(sample[:limit]), _WORDS.findall(data[:limit]), _WORDS.findall(answer[: limit * 4])
    text = _TEXT.fullmatch(sample[:limit]) is not None
    # In a request of several lines of text, a request line names what is asked (HTTP's
    # path, which a redirect or a listing repeats); the lines after it are detail: curl's
    # `Accept: */*` in place of nmap's `Accept: text/html` made nginx's 404 `<*>`. (RESP's
    # first line, "*2", names nothing: its values are on the others.)
    line = _first_line(sample[:limit])
    asked = len(_WORDS.findall(line)) if text and _NAMES.search(line) else len(s)
    # Where the answer has each pair of words, and each word long enough alone: where a
    # run of the sample's words may start (a byte of binary is a word: pairs keep it quick).
    at: dict[bytes | tuple[bytes, bytes], list[int]] = {}
    for j, w in enumerate(a):
        if len(w) >= _MIN_ECHO:
            at.setdefault(w, []).append(j)
        if j + 1 < len(a):
            at.setdefault((w, a[j + 1]), []).append(j)
    # A piece with no letter or digit is syntax, not a value: in text, Redis's "\r\n$"
    # replaced by an inline command's "\r\nQUIT" broke the answer's RESP; in binary, zeros
    # and small numbers are everywhere: NTLMSSP's message type `02 00 00` in samba's
    # answer became `Y5 00 00`, as the sample's SMB process id `e5 02` was the request's `Y5`.
    pieces = []  # (first word, words): the longest run of the sample's words the answer has, from each word
    i = 0
    while i < asked:
        starts = at.get(s[i], []) + (at.get((s[i], s[i + 1]), []) if i + 1 < len(s) else [])
        n = min(max((_common_words(s, i, a, j) for j in starts), default=0), asked - i)
        words = [w for w in s[i : i + n] if w[:1].isalnum()]
        if (n and sum(len(w) for w in s[i : i + n]) >= _MIN_ECHO and words
                and not all(w in unechoed for w in words)):
            pieces.append((i, n))
        i += n or 1
    if not pieces:
        return []
    common = Counter(s) & Counter(d)
    if sum(n * n for n in common.values()) > _MAX_DIFF_WORK:  # at least the walk (see _MAX_DIFF_WORK)
        s, d = s[:_ECHO_WORDS], d[:_ECHO_WORDS]
        pieces = [(i, min(n, _ECHO_WORDS - i)) for i, n in pieces if i < _ECHO_WORDS]
    ops = difflib.SequenceMatcher(None, s, d, autojunk=False).get_opcodes()

    def where(i: int, end: bool) -> int:  # word i of the sample, in data
        for tag, i1, i2, j1, j2 in ops:
            if (i1 < i <= i2) if end else (i1 <= i < i2):
                if tag == "equal" or i2 - i1 == j2 - j1:  # word for word
                    return j1 + i - i1
                return j2 if end else j1
        return len(d) if end else 0

    # In text, words of the sample the request has nothing in place of: a piece holding one
    # is left as learned (difflib took HTTP/1.0's "0" for curl/8.0's, and HTTP/1.1 became
    # "HTTP/1."). Not in binary, where such pieces measured better replaced.
    dropped = {i for tag, i1, i2, _, _ in ops if tag == "delete" for i in range(i1, i2)} if text else set()
    pairs = []
    for i, n in pieces:
        old = b"".join(s[i : i + n])
        # Unchanged where the request still has it (headers reordered) or a word was dropped.
        if old not in data and dropped.isdisjoint(range(i, i + n)):
            new = b"".join(d[where(i, False) : where(i + n, True)])
            if new:
                pairs.append((old, new))
    return pairs


def _same_place(sample: bytes, data: bytes, answer: bytes) -> bytes:
    """(ours) An answer of binary given as `sample`'s, to `data`: where the answer held the
    sample's own bytes at the same place in its header (runs of 2 or more), the request's.
    DNS's transaction id, SMB's message, tree and session ids, Modbus's transaction id: a
    client drops an answer that does not repeat its own."""
    n = min(len(sample), len(data), len(answer), _HEADER_BYTES)
    if sample[:n] == data[:n] or _TEXT.fullmatch(sample[:_PREFIX_BYTES]) is not None:
        return answer
    # The header ends where the two requests differ for longer than an id (a byte alike by
    # chance does not end a difference; two do): a payload, or the same fields at other
    # places (DNS names of two lengths). Past it, bytes the answer and the sample share at
    # one offset are chance (zeros, a class), and the request's there are another field's.
    start = different = 0
    for i in range(n):
        if sample[i] != data[i]:
            start, different = (i, 1) if not different else (start, different + 1)
            if different > _ID_BYTES:
                n = start
                break
        elif i + 1 < n and sample[i + 1] == data[i + 1]:
            different = 0
    out = bytearray(answer)
    i = 0
    while i < n:
        j = i
        while j < n and sample[j] == answer[j]:
            j += 1
        if j - i >= 2:
            out[i:j] = data[i:j]
        i = j + 1
    return bytes(out)


def _alnum_words(data: bytes) -> set[bytes]:
    return {w for w in _WORDS.findall(data) if len(w) >= _MIN_ECHO and w[:1].isalnum()}


def _words_of(label: list[_Part]) -> set[bytes]:
    """The words of an answer template's bytes."""
    return _alnum_words(b" ".join(p for p in label if isinstance(p, bytes)))


def _common_words(s: list[bytes], i: int, a: list[bytes], j: int) -> int:
    """How many words s[i:] and a[j:] have in common at their start."""
    n = 0
    while i + n < len(s) and j + n < len(a) and s[i + n] == a[j + n]:
        n += 1
    return n


def _replace_words(text: bytes, old: bytes, new: bytes) -> bytes:
    """`text` with `old` replaced by `new` where it stands as whole words. A word joined to
    another by a hyphen is part of a compound (curl's header "Accept" is not nginx's
    "Accept-Ranges", which became "close-Ranges")."""
    before = rb"(?<![A-Za-z0-9])(?<![A-Za-z0-9]-)" if old[:1].isalnum() else b""
    after = rb"(?![A-Za-z0-9]|-[A-Za-z0-9])" if old[-1:].isalnum() else b""
    return re.sub(before + re.escape(old) + after, lambda _: new, text)


class _State:
    __slots__ = ("id", "label", "labels", "announces", "literal", "patterns", "closes_here", "delay", "nearest",
                 "by_line", "terminators", "line_end", "framed", "longest_literal", "watch", "longest_terminator",
                 "common", "usual", "votes")

    def __init__(self, doc: dict[str, Any], transitions: dict[int, _Transition], params: EmulatorParams) -> None:
        self.id: int = doc["id"]
        # The default answer: the most frequent label (the model lists it first).
        self.labels: list[list[_Part]] = [[_part(p) for p in label["parts"]] for label in doc["labels"][:_MAX_LABELS]]
        self.label: list[_Part] = self.labels[0] if self.labels else []
        self.announces = any(isinstance(p, tuple) and p[0] == "port" for p in self.label)
        outgoing = [transitions[t] for t in doc["transitions"]]
        self.literal: dict[bytes, _Transition] = {}  # requests matched by a dict lookup
        self.patterns: list[_Transition] = []
        for t in outgoing:
            if t.literal is not None:
                self.literal.setdefault(t.literal, t)
            else:
                self.patterns.append(t)
        closes = doc["closes"]
        ended = sum(closes.values())
        onward = sum(t.weight for t in outgoing)
        # Close after answering where the real server closed in most sessions that ended
        # here, and at least as many sessions ended here as went on.
        self.closes_here = closes.get("server", 0) * 2 > ended and ended >= onward and ended > 0
        self.delay: float = doc["delay"] or 0.0
        self.nearest = sorted(outgoing, key=lambda t: (-t.weight, t.id))[: params.nearest_candidates]
        self.common: _Samples = ()  # set by Machine (_common): answer as the most alike of these
        self.usual: dict[bytes, _Usual] = {}  # set by Machine (_common)
        self.by_line = _by_line(self.nearest, params.compare_bytes)
        # What every request leaving this state ends with (e.g. CRLF): where to cut input
        # that matches nothing but holds several requests.
        requests = [r for t in outgoing for r in t.requests]
        text = all(map(_TEXT.fullmatch, requests))
        self.terminators = [_delimiter(requests, text)] if outgoing else []
        # That terminator, when every request is text and it is punctuation and line ends:
        # input that ends with it is complete, and is one of this state's requests.
        end = self.terminators[0] if self.terminators else b""
        self.line_end = end if text and _PUNCTUATION.fullmatch(end) else b""
        # Transitions that end in fixed bytes can be recognised at the front of pipelined input.
        self.framed = [t for t in outgoing if t.terminator][:_MAX_FRAMED]
        self.longest_literal = max((len(k) for k in self.literal), default=0)
        # Byte strings whose arrival may complete a request here (set by Machine).
        self.watch: list[bytes] = []
        self.longest_terminator = 0
        self.votes: dict[frozenset[int], dict[int, float]] = {}  # a cache of _votes


_CONTEXT_BYTES = 256  # of a request before, compared (scriptgen.model.BEFORE_BYTES: all the model keeps)
_CONTEXT_SAMPLES = 256  # binary samples of one size a request is compared with (heaviest first)
_CONTEXT_FLOOR = 0.7  # the least share of equal bytes for a sample to be like a request
_CONTEXT_ALIKE = 8  # samples as alike as the most alike, whose requests before are compared
_NEAR = 0.02  # a sample this much less alike than the most alike is as alike
_MAX_LABELS = 64  # the labels of a state an answer is chosen from (the most frequent)
_MAX_FRAMED = 256  # transitions tried at the front of pipelined input, per state

# An answer template's part: bytes; an int (the request's value of that region); or a
# field computed when the answer is sent: ("slot", region, start, stop), ("token", id), ("clock", encoding, offset, zone),
# ("count", region, encoding, delta), ("length", scope, encoding, adjust), ("port", encoding, captured value).
_Part = bytes | int | tuple[Any, ...]


def _part(doc: dict[str, Any]) -> _Part:
    if "bytes" in doc:
        return base64.b64decode(doc["bytes"])
    if "slot" in doc:
        if "from" in doc or "to" in doc:  # some of the value's bytes
            return ("slot", int(doc["slot"]), int(doc.get("from", 0)), doc.get("to"))
        return int(doc["slot"])
    if "token" in doc:
        return ("token", int(doc["token"]))
    if "clock" in doc:
        return ("clock", doc["clock"], float(doc["offset"]), int(doc["zone"]))
    if "count" in doc:
        return ("count", int(doc["count"]), doc["encoding"], int(doc["delta"]), int(doc["at"]))
    if "port" in doc:
        return ("port", doc["port"], base64.b64decode(doc["value"]))
    return ("length", doc["length"], doc["encoding"], int(doc["adjust"]))


_WIDTHS = {"u8": 1, "u16be": 2, "u16le": 2, "u24be": 3, "u32be": 4, "u32le": 4}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FILETIME_EPOCH = 11644473600  # seconds from 1601-01-01 to 1970-01-01
_CHARSETS = {
    "digits": b"0123456789", "hex": b"0123456789abcdef", "HEX": b"0123456789ABCDEF",
    "alnum": b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "text": bytes(range(33, 127)), "bytes": bytes(range(256)),
}


def encode_int(value: int, encoding: str) -> bytes:
    """`value` as an integer field (wrapped to the field's width; never negative)."""
    if encoding == "dec":
        return str(max(value, 0)).encode()
    width = _WIDTHS[encoding]
    return (value % (1 << (8 * width))).to_bytes(width, "little" if encoding.endswith("le") else "big")


def decode_int(data: bytes | bytearray, encoding: str) -> int | None:
    if encoding == "dec":
        return int(data) if data.isdigit() and len(data) <= 12 else None
    if len(data) != _WIDTHS[encoding]:
        return None
    return int.from_bytes(data, "little" if encoding.endswith("le") else "big")


def _int_at(value: bytes, at: int, encoding: str) -> int | None:
    """The integer at byte `at` of `value` (negative: from the end)."""
    if encoding == "dec":
        return decode_int(value, encoding)
    start = at if at >= 0 else len(value) + at
    return decode_int(value[start : start + _WIDTHS[encoding]], encoding) if start >= 0 else None


def encode_clock(t: float, encoding: str, zone: int = 0) -> bytes:
    """Unix time `t` as a time field (see scriptgen.model.CLOCK_ENCODINGS)."""
    if encoding == "filetime":
        return int((t + _FILETIME_EPOCH) * 10_000_000).to_bytes(8, "little")
    if encoding in ("u32be", "u32le"):
        return encode_int(int(t), encoding)
    tm = time.gmtime(t + zone * 60)
    text = f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} " \
           f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} "
    if encoding == "http-date":
        return (text + "GMT").encode()
    sign = "-" if zone < 0 else "+"
    return (text + f"{sign}{abs(zone) // 60:02d}{abs(zone) % 60:02d}").encode()


def encode_port(port: int, encoding: str, host: str | None = None, captured: bytes = b"") -> bytes:
    """`port` as a port field (scriptgen.model.PORT_ENCODINGS). "ip-pair" writes `host`
    when it is an IPv4 address, else the captured address."""
    if encoding == "u16be":
        return port.to_bytes(2, "big")
    if encoding == "dec":
        return str(port).encode()
    pair = f"{port >> 8},{port & 0xFF}".encode()
    if encoding == "pair":
        return pair
    octets = host.split(".") if host else []
    if len(octets) == 4 and all(o.isdigit() and int(o) < 256 for o in octets):
        return ",".join(octets).encode() + b"," + pair
    return b",".join(captured.split(b",")[:4]) + b"," + pair


_PORT_CHARS = {"dec": b"0123456789", "pair": b"0123456789,", "ip-pair": b"0123456789,"}


def decode_port(request: bytes, encoding: str, side: str, offset: int) -> int | None:
    """The port a request announces, in `encoding`, starting `offset` bytes into it
    (`side` "start") or ending `offset` bytes before its end ("end"); None if none is there."""
    if side == "start":
        start = offset
        if encoding == "u16be":
            end = start + 2
        else:
            end = start
            while end < len(request) and request[end] in _PORT_CHARS[encoding]:
                end += 1
    else:
        end = len(request) - offset
        if encoding == "u16be":
            start = end - 2
        else:
            start = end
            while start > 0 and request[start - 1] in _PORT_CHARS[encoding]:
                start -= 1
    if start < 0 or end > len(request) or start >= end:
        return None
    field = request[start:end]
    if encoding == "u16be":
        port = int.from_bytes(field, "big")
    else:
        numbers = field.split(b",")
        if not all(n.isdigit() and len(n) <= 5 for n in numbers):
            return None
        if encoding == "dec":
            port = int(numbers[0]) if len(numbers) == 1 else -1
        elif len(numbers) < 2 or int(numbers[-2]) > 255 or int(numbers[-1]) > 255:
            return None
        else:
            port = int(numbers[-2]) << 8 | int(numbers[-1])
    return port if 0 < port < 65536 else None


def _delimiter(requests: list[bytes], text: bool) -> bytes:
    """What every request ends with and none holds elsewhere (a CRLF of a line protocol):
    the bytes that can delimit requests. Nothing for protocols whose requests contain their
    final bytes inside too (RESP's CRLFs, SMB's NULs): cutting there would shred requests.
    A request that holds them inside but is other requests sent at once (a client's
    pipeline) does not count against them, nor does a rare one that does not hold them at
    all (netcat sending `USER alice\\r\\n` typed with backslashes). `text`: whether every
    request is text (computed once by the caller, which needs it too)."""
    ends = Counter(r[-1:] for r in requests)
    last, count = ends.most_common(1)[0] if ends else (b"", 0)
    if not last or count < _DELIMITED_SHARE * len(requests):
        return b""
    common = _common_suffix([r for r in requests if r.endswith(last)])

    def delimits(suffix: bytes) -> bool:
        inside = [r for r in requests if r.find(suffix) not in (-1, len(r) - len(suffix))]
        return all(r.endswith(suffix) for r in inside) and (not inside or _pipelines(inside, requests, suffix))

    # In text, of punctuation and line ends, the shortest: the rest of what a state's requests
    # have in common at their end is content (its RCPTs all ended `@corpus.test>\r\n`; a RCPT
    # to another domain, pipelined with a DATA, still ends at its `\r\n`).
    for n in range(1, len(common) + 1 if text else 1):
        if not _PUNCTUATION.fullmatch(common[-n:][:1]):
            break
        if delimits(common[-n:]):
            return common[-n:]
    # Else the longest (binary, or a single sample): only it is sure to be no content.
    for n in range(len(common), 0, -1):
        if delimits(common[-n:]):
            return common[-n:]
    return b""


_DELIMITED_SHARE = 0.9  # of a state's requests that must end with its delimiter


_LEADING_WORD = re.compile(rb"[A-Za-z]{2,}")


def _pipelines(inside: list[bytes], requests: list[bytes], suffix: bytes) -> bool:
    """Whether every request of `inside` (each holding `suffix` before its end) is
    requests sent at once: each piece ended by `suffix` begins with the word a request
    that holds it only at its end begins with (POP3's `USER root\r\nPASS toor\r\n`, not
    RESP's `*1\r\n$4\r\n`, not a mail's header lines)."""
    starts = set()
    for r in requests:
        if r.find(suffix) == len(r) - len(suffix):
            m = _LEADING_WORD.match(r)
            if m:
                starts.add(m.group())
    if not starts:
        return False
    for r in inside:
        for piece in r[: len(r) - len(suffix)].split(suffix):
            m = _LEADING_WORD.match(piece)
            if m is None or m.group() not in starts:
                return False
    return True


def _common_suffix(samples: list[bytes]) -> bytes:
    if not samples or not all(samples):
        return b""
    n = 0
    shortest = min(len(x) for x in samples)
    while n < shortest and len({x[-1 - n] for x in samples}) == 1:
        n += 1
    return samples[0][len(samples[0]) - n :] if n else b""


def _could_make(label: list[_Part], answer: bytes) -> bool:
    """Whether `label` could have made `answer`: its bytes there in order, anything in
    place of its slots and fields (a glob match, linear: no regular expression to backtrack)."""
    fixed = [p for p in label if isinstance(p, bytes)]
    if len(fixed) == len(label):
        return b"".join(fixed) == answer
    pos, last = 0, len(label) - 1
    for k, part in enumerate(label):
        if not isinstance(part, bytes):
            continue
        if k == 0:
            if not answer.startswith(part):
                return False
            pos = len(part)
        elif k == last:
            return answer.endswith(part) and len(answer) - len(part) >= pos
        else:
            pos = answer.find(part, pos)
            if pos < 0:
                return False
            pos += len(part)
    return True


class Machine:
    """One port of a model, compiled for matching. Immutable but for caches (_votes); share
    it between connections."""

    def __init__(self, port_doc: dict[str, Any], params: EmulatorParams | None = None) -> None:
        self.params = params or EmulatorParams()
        self.transport: str = port_doc["transport"]
        self.port: int = port_doc["port"]
        self.root: int = port_doc["root"]
        self.tokens: list[tuple[int, bytes]] = [(k["length"], _CHARSETS[k["charset"]]) for k in port_doc.get("tokens", [])]
        framing = port_doc.get("framing")
        # (offset, encoding, width, adjust): requests carry their length (docs/emulator.md)
        self.framing: tuple[int, str, int, int] | None = None if not framing else (
            framing["offset"], framing["encoding"], _WIDTHS[framing["encoding"]], framing["adjust"])
        transitions = {t["id"]: _Transition(t, self.params) for t in port_doc["transitions"]}
        self.states = {s["id"]: _State(s, transitions, self.params) for s in port_doc["states"]}
        self.transitions = transitions
        # Whether the learner found data channels (an address or port announced): the relay
        # of a session handed to a backend rewrites announcements only then (serve/datarelay.py).
        self.announcing = any(st.announces for st in self.states.values()) or any(
            t.announce for t in transitions.values())
        # For requests the current state does not know: the same request elsewhere.
        self.sources = {t["id"]: t["source"] for t in port_doc["transitions"]}
        heaviest = sorted(transitions.values(), key=lambda t: (-t.weight, t.id))  # sorted once, used thrice
        self.literal: dict[bytes, list[_Transition]] = {}
        for t in heaviest:
            if t.literal is not None:
                self.literal.setdefault(t.literal, []).append(t)
        self.by_line = _by_line(heaviest, self.params.compare_bytes, named=True)
        self.patterns = [t for t in heaviest if t.literal is None]
        self.nearest = heaviest[: self.params.nearest_candidates * 4]
        every = [r for t in transitions.values() for r in t.requests]
        self.terminator = _delimiter(every, all(map(_TEXT.fullmatch, every)))  # of every request
        # A server of lines (every request ends with a line end) reads whatever comes as
        # lines: a TLS hello sent to vsftpd got one `530 Please login` per LF byte in it.
        self.reads_lines = self.terminator in (b"\n", b"\r\n")
        # The names in every answer, its data channels' included (a listing): the names the
        # server has shown exist; a name it never showed is likely one it does not have.
        # A set, looked up per name: not a search of every answer per request.
        answers = [base64.b64decode(part["bytes"]) for state in port_doc["states"] for label in state["labels"]
                   for part in label["parts"] if "bytes" in part]
        self.shown: frozenset[bytes] = frozenset(
            name for answer in answers for name in _NAMES.findall(answer) if len(name) >= 3
        ).union(*map(_wide_names, answers), *(t.channel.shown for t in transitions.values() if t.channel is not None))
        for doc in port_doc["transitions"]:  # which label each sample got, where there is a choice
            labels = self.states[doc["target"]].labels
            if len(labels) > 1:
                transitions[doc["id"]].label_of = [
                    next((i for i, label in enumerate(labels) if _could_make(label, base64.b64decode(pair[1]))), 0)
                    for pair in doc["samples"]]
        # Per command, words an answer held that its request did not: the server's own, never
        # an echo (nginx's `html` in its 404 to nmap's `GET /HNAP1` is no echo of curl's `GET
        # /missing.html`). Per command: Redis's COMMAND DOCS holds `arg`, an unknown command's
        # `'arg'` is an echo.
        # And each command of text, folded to lower case -> as the capture's clients spelled it
        # most often (`respelled`).
        self.unechoed: dict[bytes, set[bytes]] = {}
        spelled: Counter[bytes] = Counter()
        for t in transitions.values():
            for k, request in enumerate(t.requests):
                name = _first_name(request)
                self.unechoed.setdefault(name, set()).update(_words_of(self._answer_to(t, k)) - _alnum_words(request))
                if _text_command(request, self.params.compare_bytes):
                    spelled[name] += t.weight
        self.spellings: dict[bytes, bytes] = {}
        for name, _ in spelled.most_common():
            self.spellings.setdefault(name.lower(), name)
        self.commands = frozenset(self.unechoed)  # every command learned (a key per sample's command)
        self.vocabulary: frozenset[bytes] = frozenset().union(*self.unechoed.values())  # the server's own words
        self.by_command: dict[bytes, list[_Transition]] = {}  # the heaviest transitions of each command, of text
        for t in heaviest:
            if _text_command(t.sample, self.params.compare_bytes):
                same = self.by_command.setdefault(t.first_name, [])
                if len(same) < self.params.nearest_candidates:
                    same.append(t)
        # The binary samples of each size that have a request before them (in_context).
        self.by_size: dict[int, list[tuple[_Transition, int]]] = {}
        for t in heaviest:
            for k, (request, before) in enumerate(zip(t.requests, t.before)):
                if before and _TEXT.fullmatch(request[: self.params.compare_bytes]) is None:
                    kept = self.by_size.setdefault(len(request), [])
                    if len(kept) < _CONTEXT_SAMPLES:
                        kept.append((t, k))
        for state in self.states.values():
            state.common, state.usual = self._common(state)
            watch = {t.terminator for t in state.framed} | {x for x in state.terminators + [self.terminator] if x}
            if self.reads_lines:
                watch.add(b"\n")
            state.watch = sorted(watch)
            state.longest_terminator = max((len(x) for x in watch), default=0)

    def _common(self, state: _State) -> tuple[_Samples, dict[bytes, _Usual]]:
        """What the server says to what it does not know, from the requests of text learned
        in `state` (each sample with the answer it got):
        - the samples (with their transitions) that got the answer most commands got (each
          counted once), for a command the model never saw: vsftpd's `530 Please login with
          USER and PASS.` before login, Redis's `+OK`, nginx's 405 to a random method;
        - per command, of requests of several lines: the samples that got the answer most of
          the command's request lines got, for a request line never seen: nginx's 404 to
          nmap's probes for pages; with the names that tell its lines apart.
        Each only if at least two got it and no other answer was got by as many. A request
        is answered as the most like it (_alike) of the samples whose answer began with the
        same line: nginx answered curl's 404 with `Connection: keep-alive`, nmap's with
        `close`."""
        commands: dict[tuple[Any, ...], set[bytes]] = {}
        lines: dict[bytes, dict[tuple[Any, ...], set[bytes]]] = {}
        samples: dict[tuple[bytes, tuple[Any, ...]], list[tuple[_Transition, bytes]]] = {}
        for t in state.nearest:
            for k, request in enumerate(t.requests):
                name = _first_name(request)
                if not name or _TEXT.fullmatch(request[: self.params.compare_bytes]) is None:
                    continue
                key = tuple(self._answer_to(t, k))
                commands.setdefault(key, set()).add(name)
                _keep(samples.setdefault((b"", key), []), (t, request))
                line = _first_line(request)
                if line != request and _first_name(line) == name:
                    lines.setdefault(name, {}).setdefault(key, set()).add(line)
                    _keep(samples.setdefault((name, key), []), (t, request))
        common = _most(commands)
        usual = {}
        for name, by_answer in lines.items():
            best = _most(by_answer)
            if best is not None:
                heard = [_names(line) - {name} for got in by_answer.values() for line in got]
                telling = frozenset().union(*heard) - frozenset.intersection(*heard)  # not "HTTP"
                usual[name] = (_alike_answers(samples, name, best, by_answer), telling)
        return (_alike_answers(samples, b"", common, commands) if common else ()), usual

    def in_context(self, data: bytes, previous: bytes) -> tuple[_Transition, int] | None:
        """For a binary request: when the samples most like it (of its size, equal bytes at
        equal offsets, within _NEAR of the most alike) got different answers, the one whose
        request before was most like `previous` (if it is more alike than another): the
        transition and the sample's index. nmap asks each share's NetShareGetInfo as a
        WRITE of the share's name, then a READ alike for every share (but for its ids):
        Samba's answer to the READ is that share's."""
        candidates = self.by_size.get(len(data))
        if not candidates or _TEXT.fullmatch(data[: self.params.compare_bytes]) is not None:
            return None
        scored = [(_same_bytes(t.requests[k], data), t, k) for t, k in candidates]
        best = max(score for score, _, _ in scored)
        if best < _CONTEXT_FLOOR:
            return None
        alike = [(t, k) for score, t, k in scored if score >= best - _NEAR][:_CONTEXT_ALIKE]
        if len({tuple(self._answer_to(t, k)) for t, k in alike}) < 2:
            return None  # the request before makes no difference
        matcher: difflib.SequenceMatcher[int] = difflib.SequenceMatcher(None, b"", previous[:_CONTEXT_BYTES],
                                                                         autojunk=False)
        ranked = []
        for t, k in alike:
            matcher.set_seq1(t.before[k][:_CONTEXT_BYTES])
            ranked.append((matcher.ratio(), t, k))
        top = max(r for r, _, _ in ranked)
        if top <= min(r for r, _, _ in ranked):
            return None
        return next((t, k) for r, t, k in ranked if r == top)

    def respelled(self, data: bytes) -> bytes:
        """A request of text whose command the model knows only in other letter case
        (smtplib's `ehlo`, the capture's `EHLO`: commands of line protocols and Redis
        ignore case), with the command as the model spells it; else `data` itself."""
        if not self.spellings:
            return data
        m = _NAMES.search(data, 0, _PREFIX_BYTES)
        if m is None or m.group() in self.commands or not m.group().isalpha():
            return data
        spelling = self.spellings.get(m.group().lower())
        if spelling is None or _TEXT.fullmatch(data[: self.params.compare_bytes]) is None:
            return data
        return data[: m.start()] + spelling + data[m.end() :]

    def _answer_to(self, t: _Transition, k: int) -> list[_Part]:
        """The label sample `k` of `t` got."""
        target = self.states[t.target]
        return target.labels[t.label_of[k]] if t.label_of else target.label

    @property
    def datagram(self) -> bool:
        return self.transport == "udp"


_Samples = tuple[tuple["_Transition", bytes], ...]  # requests learned, each with its transition
_Usual = tuple[_Samples, frozenset[bytes]]  # State.usual: answer as the most alike of these; the telling names
_KEPT_ALIKE = 8  # samples kept per common or usual answer


def _keep(kept: list[tuple[_Transition, bytes]], sample: tuple[_Transition, bytes]) -> None:
    if len(kept) < _KEPT_ALIKE:
        kept.append(sample)


def _alike_answers(samples: dict[tuple[bytes, tuple[Any, ...]], list[tuple[_Transition, bytes]]], name: bytes,
                   answer: tuple[Any, ...], answers: Iterable[tuple[Any, ...]]) -> _Samples:
    """The samples of `name` that got `answer`, then those that got another answer
    beginning with the same line (a status line)."""
    line = _first_line(answer[0]) if answer and isinstance(answer[0], bytes) else None
    same = [other for other in answers if other != answer and line is not None
            and other and isinstance(other[0], bytes) and _first_line(other[0]) == line]
    return tuple(sample for key in (answer, *same) for sample in samples[(name, key)])[: 2 * _KEPT_ALIKE]


def _alike(samples: _Samples, data: bytes, limit: int) -> tuple[tuple[_Transition, bytes], int]:
    """The sample (with its transition) most like `data`, byte for byte, and the work
    it took (Emulator._work)."""
    if len(samples) == 1:
        return samples[0], 0
    head = data[:limit]
    matcher: difflib.SequenceMatcher[int] = difflib.SequenceMatcher(None, b"", head, autojunk=False)
    counts = [0] * 256
    for value, n in Counter(head).items():
        counts[value] = n
    best, best_ratio, work = samples[0], -1.0, 0
    for t, sample in samples:
        theirs = sample[:limit]
        matcher.set_seq1(theirs)
        work += _ratio_work(_diff_work(counts, _byte_counts(theirs)), len(head) + len(theirs))
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best, best_ratio = (t, sample), ratio
    return best, work


def _most(got: dict[tuple[Any, ...], set[bytes]]) -> tuple[Any, ...] | None:
    """The answer got by the most (requests, lines), if by at least two and by more than
    any other answer."""
    counts = sorted((len(v) for v in got.values()), reverse=True)
    if not counts or counts[0] < 2 or counts[1:2] == counts[:1]:
        return None
    return max(got, key=lambda key: len(got[key]))


def _label_for(t: _Transition, request: bytes) -> int:
    """Which of its target's labels `t` answers `request` with (the request, or the sample
    it is answered as): of those its samples that were this very request got, else of
    those the samples with its first line got (HTTP's `GET /favicon.ico` and `GET /HNAP1`
    through one wildcard), the most frequent (the server's answer to one request varies: a
    time, a counter; each of nmap's SMB2 NEGOTIATEs, one per dialect, got answers that
    differ in their time and not in the dialect's capabilities); the most frequent of all
    when none was."""
    got = {i for r, i in zip(t.requests, t.label_of) if r == request}
    if not got:
        line = _first_line(request)
        got = {i for r, i in zip(t.requests, t.label_of) if _first_line(r) == line}
    return min(got, default=0)


_LINE_SAMPLES = 16  # samples of one request line an answer is chosen among (a bound on the work)


def _by_line(transitions: list[_Transition], limit: int, named: bool = False) -> dict[bytes, _Samples]:
    """A sample's first line (of a request of text: HTTP's request line) -> up to
    _LINE_SAMPLES samples with it and their transitions, the heaviest transitions' first;
    a request with that line is answered as the one most like it (_alike): the rest of a
    request says how it is answered (wget's `GET /robots.txt` with `Connection:
    Keep-Alive` is kept open, nmap's with `Connection: close` is not). `named`: only lines
    with a name (a request line, not RESP's `*2\r\n`)."""
    by_line: dict[bytes, list[tuple[_Transition, bytes]]] = {}
    for t in transitions:
        for r in t.requests:
            line = _first_line(r)
            if not _TEXT.fullmatch(r[:limit]) or named and not _NAMES.search(line):
                continue
            same = by_line.setdefault(line, [])
            if len(same) < _LINE_SAMPLES and all(r != sample for _, sample in same):
                same.append((t, r))
    return {line: tuple(same) for line, same in by_line.items()}


def _before_of(t: _Transition, sample: bytes) -> bytes:
    """The request before the first of `t`'s samples that is `sample` (b"": none known)."""
    k = t.requests.index(sample) if sample in t.requests else -1
    return t.before[k] if 0 <= k < len(t.before) else b""


def _same_bytes(a: bytes, b: bytes) -> float:
    """The share of equal bytes at equal offsets of two byte strings of one length."""
    if not a:
        return 1.0
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return x.to_bytes(len(a), "big").count(0) / len(a)


_MAX_VOTERS = 8  # matching patterns a request is decided among (the most specific)
_MAX_VOTES_KEPT = 256  # sets of matching patterns whose votes a state keeps


def _votes(state: _State, candidates: list[_Transition]) -> dict[int, float]:
    """Of the capture's requests that every one of `candidates` matches, how many went to
    each (a sample stands for weight / samples requests). dnsmasq answered nmap's
    `_kpasswd._tcp` with NXDOMAIN, as most `_*._tcp` names it was asked: the pattern of
    the few it knew (`_ldap._tcp`, `_kerberos._tcp`) is more specific but matches those too."""
    key = frozenset(t.id for t in candidates)
    votes = state.votes.get(key)
    if votes is None:
        votes = {}
        for t in candidates:
            for r in t.requests:
                if all(u is t or u.regex.fullmatch(r) for u in candidates):
                    votes[t.id] = votes.get(t.id, 0.0) + t.weight / len(t.requests)
        if len(state.votes) < _MAX_VOTES_KEPT:
            state.votes[key] = votes
    return votes


# -- one connection --------------------------------------------------------------------------


class Emulator:
    """The emulator for one connection (or one UDP peer)."""

    def __init__(self, machine: Machine, now: float, *, wall: float | None = None, seed: int | None = None,
                 first: bytes | None = None) -> None:
        """`now`: the driver's clock (any monotonic seconds); `wall`: the Unix time at `now`
        (for clock fields; default `now`); `seed`: for the tokens made fresh (default: the
        operating system's randomness); `first`: a request taken at once, after the banner
        (a data channel's: the request of the parent connection it answers)."""
        self.machine = machine
        self.params = machine.params
        self._epoch = (wall if wall is not None else now) - now
        self._rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self._tokens: dict[int, bytes] = {}
        self.state = machine.root
        self.path: list[int] = [machine.root]  # states visited, for the session log
        self._buffer = bytearray()
        self._budget = self.params.match_budget  # of this call (_tried)
        self._more = self._yielded = False  # requests left over by requests_per_call (next_event)
        self.over_budget = 0  # calls that ran out of it
        self._work, self._work_at = float(self.params.fallback_work), now  # left for fallbacks (fallback_work), when
        self._last_data = now
        self._events: deque[Event] = deque()
        self._ready_at = now  # pacing: answers are not released before this
        self._eof = False
        self._closed = False
        self._version = 0  # bumped whenever the buffer changes
        # (buffer version, its match in this state, whether it is a request the model knows)
        self._cached: tuple[int, _Match | None, bool] = (-1, None, False)
        # an answer waiting for `listening`: (state, values, now, label)
        self._parked: tuple[_State, dict[int, bytes], float, list[_Part]] | None = None
        # (sample, request, the sample's request before, the request before) of a request
        # answered as a sample was, for its answer's echoes
        self._echo: tuple[bytes, bytes, bytes, bytes] | None = None
        self._placed: tuple[bytes, bytes] | None = None  # a label's sample, and the request it answers
        self._previous = b""  # the request before
        if not machine.datagram:
            self._answer(machine.states[machine.root], {}, now)
        if first is not None:
            if self._parked is None:
                self._take(first, now)
            else:
                self._buffer += first  # taken when the banner is out

    @property
    def closed(self) -> bool:
        return self._closed

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the client; b"" means the client closed. For UDP, one datagram, an
        empty one too (nmap -sU's probe of most ports): UDP has no close."""
        self._budget = self.params.match_budget
        if self._closed or self._eof:
            return
        if self.machine.datagram:
            self._take(bytes(data), now)
            return
        if not data:
            self._eof = True
            return
        self._buffer += data
        self._last_data = now
        self._version += 1
        if self._parked is not None:
            return  # taken once the parked answer is out (next_event)
        if len(self._buffer) >= self.params.max_request_bytes:
            self._take_front(now, len(self._buffer), None)
            return
        if self.machine.framing is not None and self._take_framed(now):
            return
        # Matching is only worth trying when the new bytes bring a terminator: without one
        # nothing can complete (a flood of garbage costs a substring search, not regexes).
        state = self.machine.states[self.state]
        tail = bytes(self._buffer[-(len(data) + state.longest_terminator) :])
        if not any(term in tail for term in state.watch):
            return
        self._take_pipelined(now)

    def _take_pipelined(self, now: float) -> None:
        """Take every request that is complete at the front of the buffer (clients may send
        several at once), at most `requests_per_call`; what remains waits for more bytes,
        for the gap, or for the next call (`_more`). One snapshot, walked by offset:
        pipelined input is not copied once per request."""
        whole = bytes(self._buffer)
        pos = 0
        taken = 0
        while pos < len(whole) and not self._closed and self._parked is None:
            if taken >= self.params.requests_per_call:
                self._more = True
                break
            taken += 1
            t = self._match(whole, pos)
            if t is not None and t[0].terminator and whole.endswith(t[0].terminator):
                self._take(whole[pos:], now, t)
                pos = len(whole)
                break
            front = self._front(whole, pos)
            if front is not None:
                end, match = front
                self._take(whole[pos:end], now, match)
                pos = end
                continue
            ends = self.machine.states[self.state].line_end
            if self.machine.terminator and whole.endswith(self.machine.terminator) or (
                    self.machine.reads_lines and whole.find(b"\n", pos) >= 0) or (ends and whole.endswith(ends)):
                # Every request in the capture (or in this state) ended so (a CRLF, say):
                # this one is complete even though it matches nothing. Cut off what came
                # before. (A server of lines takes every whole line of what came: a TLS
                # hello's.)
                end = self._cut(whole, pos)
                self._take(whole[pos:end], now, None)
                pos = end
                continue
            break
        if pos:
            del self._buffer[:pos]
            self._version += 1

    def next_event(self, now: float) -> Event:
        """The next thing to do. NeedData means: wait for bytes or for `wake_at`."""
        self._budget = self.params.match_budget
        while True:
            if self._events:
                head = self._events[0]
                if isinstance(head, Send) and now < self._ready_at:
                    return NeedData(self._ready_at)
                return self._events.popleft()
            if self._closed:
                return Close("closed")
            if self._parked is not None:
                return NeedData(None)  # until `listening`
            if self._more:  # requests left in the buffer by the last call's cap
                if not self._yielded:
                    self._yielded = True
                    return NeedData(now)  # the driver's turn first: come back at once
                self._more = self._yielded = False
                if self.machine.framing is None or not self._take_framed(now):
                    self._take_pipelined(now)
                continue
            if self._buffer:
                if self._cached[0] != self._version:  # match once per change of the buffer
                    data = bytes(self._buffer)
                    found = self._match(data, 0)
                    # The very bytes of a request learned in another state are as complete as
                    # a match here: a pipelined `GET` after `PING` need not wait `idle_gap`.
                    self._cached = (self._version, found, found is not None or data in self.machine.literal)
                _, match, known = self._cached
                if known and self.machine.framing is not None:
                    end = self._frame_end(self._buffer, 0)  # reads the header only: no copy
                    if end is not None and end > len(self._buffer):
                        match, known = None, False  # its length field says more is coming: wait longer
                deadline = self._last_data + (self.params.match_gap if known else self.params.idle_gap)
                if now < deadline and not self._eof:
                    return NeedData(deadline)
                if match is not None:
                    self._take_front(now, len(self._buffer), match)
                    continue
                # The bytes stopped: a request that matches at the front, else cut at the
                # first terminator this state knows, else all of it; a server of lines
                # waits for the end of a line (or the close) as it did.
                whole = bytes(self._buffer)
                front = self._front(whole, 0)
                if front is not None:
                    self._take_front(now, front[0], front[1])
                elif self.machine.reads_lines and b"\n" not in whole and not self._eof:
                    return NeedData(None)
                else:
                    self._take_front(now, self._cut(whole, 0), None)
                continue
            if self._eof:
                self._closed = True
                return Close("eof")
            return NeedData(None)

    def listening(self, port: int | None, host: str | None = None) -> None:
        """Answer a `Listen`: the data channel's listener is at `port` on `host` (None: no
        listener; the answer then announces the port the capture had)."""
        if self._parked is None:
            return
        state, values, now, label = self._parked
        self._parked = None
        self._send_answer(state, values, now, port, host, label)

    # -- internals -------------------------------------------------------------------------

    def _take_front(self, now: float, end: int, match: _Match | None) -> None:
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        self._version += 1
        self._take(data, now, match)

    def _frame_end(self, data: bytes | bytearray, pos: int) -> int | None:
        """Where the request at data[pos:] ends by its length field (maybe past the end of
        `data`: not all here yet); None when its header does not hold a plausible length."""
        assert self.machine.framing is not None
        offset, encoding, width, adjust = self.machine.framing
        if len(data) - pos < offset + width:
            return pos + offset + width  # the header itself is not all here
        n = (decode_int(data[pos + offset : pos + offset + width], encoding) or 0) + adjust
        if n < offset + width or n > self.params.max_request_bytes:
            return None
        return pos + n

    def _take_framed(self, now: float) -> bool:
        """Take every whole request the length field delimits. False when the front of the
        input is not framed (the usual delimiting applies)."""
        whole = bytes(self._buffer)
        pos = 0
        framed = True
        taken = 0
        while pos < len(whole) and not self._closed and self._parked is None:
            if taken >= self.params.requests_per_call:
                self._more = True
                break
            taken += 1
            end = self._frame_end(whole, pos)
            if end is None:
                framed = False
                break
            if end > len(whole):
                break
            self._take(whole[pos:end], now)
            pos = end
        if pos:
            del self._buffer[:pos]
            self._version += 1
        return framed

    def _front(self, data: bytes, pos: int) -> tuple[int, _Match] | None:
        """The shortest request at data[pos:] (but not all of it) that matches a transition
        ending in fixed bytes: a request followed by the next one. Returns its end."""
        best: tuple[int, _Match] | None = None
        best_key: tuple[int, int, int, int] | None = None
        for t in self.machine.states[self.state].framed:
            m: re.Match[bytes] | None = None
            if t.literal is not None:
                if pos + len(t.literal) >= len(data) or not data.startswith(t.literal, pos):
                    continue
                end = pos + len(t.literal)
            else:
                if not self._tried(len(data) - pos):
                    break
                m = t.regex.match(data, pos)
                if m is None or m.end() >= len(data) or m.end() == pos:
                    continue
                end = m.end()
            key = (end, -t.fixed_bytes, -t.weight, t.id)
            if best_key is None or key < best_key:
                best, best_key = (end, (t, m)), key
        return best

    def _cut(self, data: bytes, pos: int) -> int:
        """Where the first request of unmatched input at data[pos:] ends: after the first
        terminator the current state knows (e.g. CRLF), if one occurs before the end;
        else at the end."""
        terms = sorted({t for t in self.machine.states[self.state].terminators + [self.machine.terminator] if t}
                       | ({b"\n"} if self.machine.reads_lines else set()), key=len)
        best = len(data)
        for term in terms:  # each search stops where the best cut so far is: no rescans
            at = data.find(term, pos, best)
            if at >= 0 and at + len(term) < best:
                best = at + len(term)
        return best

    def _tried(self, n: int) -> bool:
        """Whether a pattern may be tried over `n` more bytes in this call (match_budget)."""
        if self._budget < 0:
            return False
        self._budget -= n + 1
        if self._budget < 0:
            self.over_budget += 1
            return False
        return True

    def _match(self, data: bytes, pos: int) -> _Match | None:
        """The transition of the current state matching all of data[pos:]: a literal; else
        of the patterns that match, one that saw this very request; else the one the
        capture's requests that all of them match went to most (_votes); else the most
        specific (the most fixed bytes), then the heaviest."""
        state = self.machine.states[self.state]
        request = data[pos:] if pos else data
        literal = state.literal.get(request) if len(request) <= state.longest_literal else None
        if literal is not None:
            return literal, None
        found: list[_Match] = []
        for t in state.patterns:
            if not self._tried(len(request)):
                break
            m = t.regex.fullmatch(data, pos)
            if m is not None:
                found.append((t, m))
        if len(found) < 2:
            return found[0] if found else None
        found.sort(key=lambda f: (request in f[0].seen, f[0].fixed_bytes, f[0].weight, -f[0].id), reverse=True)
        if request in found[0][0].seen:
            return found[0]
        voters = found[:_MAX_VOTERS]
        votes = _votes(state, [t for t, _ in voters])
        return max(voters, key=lambda f: votes.get(f[0].id, 0.0))  # the first of equals: the most specific

    def _take(self, data: bytes, now: float,
              match: _Match | None = None) -> None:
        state = self.machine.states[self.state]
        sent = data  # as logged; matched as the model spells its command, if it does otherwise
        if match is None:
            match = self._match(data, 0)
            if match is None:
                data = self.machine.respelled(data)
                match = self._match(data, 0) if data is not sent else None
        previous, self._previous = self._previous, data
        t: _Transition | None = None
        sample = b""
        how = "nearest"  # how a request nothing here matched is answered (the Unmatched event)
        chosen: int | None = None  # the sample whose answer is given, when context chose it
        context = self.machine.in_context(data, previous) if previous and (
            match is None or data not in match[0].seen) else None
        if context is not None:
            # Its answer depends on the request before (Machine.in_context): the sample that
            # came after one most like it answers, as a match if it is one.
            t, chosen = context
            sample, how = t.requests[chosen], "context"
            m = t.regex.fullmatch(data)
            if m is not None or match is not None:
                match = (t, m)
        elif match is not None and match[1] is not None and state.by_line:
            # A mutating region's match is weak evidence: a transition of this state that saw
            # a request with this very first line, where the matched one did not, answers.
            # nmap's `GET /favicon.ico` with its headers in another order matched the
            # wildcard of its `GET /HNAP1` (404), not the `GET /favicon.ico` it had seen.
            line = _first_line(data)
            same = state.by_line.get(line)
            t = None
            if same is None or line in match[0].lines:
                # Nor does a wildcard whose samples got different answers (`GET /favicon.ico`,
                # `HEAD /`) know a request line never heard of: the usual answer does.
                varied = len(set(match[0].label_of)) > 1
                usual = self._usual(state, data) if varied and line not in match[0].lines else None
                if usual is not None:
                    (t, sample), how = usual, "common"
            else:
                t, sample = self._alike(same, data)
            if t is not None:
                m = t.regex.fullmatch(data)
                match = (t, m) if m is not None else None
        # Fallbacks, strongest evidence first: the same bytes learned in another state; the
        # same request line (of a request of several lines) learned in another state; for a
        # request line never seen, the answer usual for its command; for a line whose
        # command only other states saw, a sample of it there; a similar request of this
        # state (or, if it ends as all of them do, the most similar); for a command the
        # model never saw, the answer most of this state's commands got; another state's
        # pattern; the model's most similar of the same command, then of all.
        spent = False
        if match is None and t is None:
            # What is left of the connection's work for fallbacks, refilled since (fallback_work).
            refill = max(0.0, now - self._work_at) * self.params.fallback_refill
            self._work, self._work_at = min(float(self.params.fallback_work), self._work + refill), now
            spent = self._work <= 0
        if match is None and t is None and not spent:
            match = self._elsewhere(state, data, patterns=False)
            if match is None:
                self._work -= _FALLBACK_WORK
            line = _first_line(data)
            if match is None and line != data and line not in state.by_line:
                same = self.machine.by_line.get(line)
                if same is not None:
                    (t, sample), how = self._alike(same, data), "elsewhere"
            usual = self._usual(state, data) if match is None and t is None else None
            if usual is not None:
                (t, sample), how = usual, "common"
            if match is None and t is None:
                t = self._command_elsewhere(state, data)
                if t is not None:
                    how = "elsewhere"
                else:
                    t = self._nearest(state.nearest, data)
                end = state.line_end
                if t is None and end.strip(b"\r\n") and data.endswith(end):
                    # It ends as every request here does, and that is more than a line end
                    # (a mail's `.\r\n`): one of them, however unlike them its bytes are.
                    t = self._nearest(state.nearest, data, 0.0)
                if t is None and state.common:
                    # Bytes that are not text are, to a server of lines, a command it does not know.
                    name = _first_name(data)
                    text = _TEXT.fullmatch(data[: self.params.compare_bytes]) is not None
                    if name not in self.machine.commands and (bool(name) if text else self.machine.reads_lines):
                        (t, sample), how = self._alike(state.common, data), "common"
                if t is None:
                    match = self._elsewhere(state, data, patterns=True)
                    if match is None:
                        t = self._same_command(state, data) or self._nearest(self.machine.nearest, data,
                                                                             self.params.last_floor)
            if match is not None:
                self._events.append(Unmatched(sent, state.id, "elsewhere"))
        if match is None:
            if t is None:
                fallback = "spent" if spent else "close" if state.closes_here else "silence"
                self._events.append(Unmatched(sent, state.id, fallback))
                self._events.append(Input(sent, state.id, None, state.id))
                if fallback == "close":
                    self._closed_after_events("unmatched")
                return
            self._events.append(Unmatched(sent, state.id, how))
            # Answered as its sample request was, then that sample's pieces the answer
            # repeats replaced by the request's own (_echoes).
            sample = sample or t.sample
            m = t.regex.fullmatch(sample)
            values = {region: m.group(group) for region, group in t.groups.items()} if m else dict(t.defaults)
            self._echo = (sample, data, _before_of(t, sample), previous)
        else:
            t, m = match
            if m is None and how == "context":  # a match here, answered as a sample elsewhere
                m = t.regex.fullmatch(sample)
                self._echo = (sample, data, _before_of(t, sample), previous)
            elif m is not None:
                # The token values the client repeats are the connection's from now on, ours
                # or not: a real server answers a request with the id it carries, never
                # another (a replayed session, a tool with ids of its own).
                for group, token in t.tokens.items():
                    self._tokens[token] = m.group(group)
            values = {region: m.group(group) for region, group in t.groups.items()} if m else {}
        # What the server says to what it does not know leaves it where it was (vsftpd
        # still wants a login after its `530`); any other answer goes where its sample went.
        self.state = state.id if how == "common" and match is None and self.machine.reads_lines else t.target
        self.path.append(self.state)
        self._events.append(Input(sent, state.id, t.id, self.state))
        if t.announce is not None:
            port = decode_port(data, *t.announce)
            if port is not None:
                self._events.append(Connect(port))
        if t.channel is not None:
            self._events.append(Channel(t.channel, data))
        target = self.machine.states[t.target]
        if t.label_of:
            label = t.label_of[chosen] if chosen is not None else _label_for(t, sample or data)
            if self._echo is None and data not in t.seen and label in t.label_of:
                # A request never seen, answered with the label a sample got: with the ids of
                # the request at hand where that sample's were (_same_place).
                self._placed = (t.requests[t.label_of.index(label)], data)
            self._answer(target, values, now, target.labels[label])
        else:
            self._answer(target, values, now)

    def _answer(self, state: _State, values: dict[int, bytes], now: float, label: list[_Part] | None = None) -> None:
        label = state.label if label is None else label
        if state.announces:
            self._events.append(Listen(state.id))
            self._parked = (state, values, now, label)
            return
        self._send_answer(state, values, now, None, None, label)

    def _send_answer(self, state: _State, values: dict[int, bytes], now: float, port: int | None,
                     host: str | None, label: list[_Part]) -> None:
        answer = self._render(label, values, now, port, host)
        if self._placed is not None:
            answer, self._placed = _same_place(*self._placed, answer), None
        if self._echo is not None and self._work > 0:
            # The pieces of the request it repeats, then, in text, those of the request before
            # (Redis's GET after a SET repeats the SET's value: `$4\r\nfive` for `SET k six` is
            # `$3\r\nsix`; in binary it lost: smb_dev_nmap 78 to 77 carried).
            sample, data, before, previous = self._echo
            answer = _same_place(sample, data, answer)
            if _TEXT.fullmatch(before[: self.params.compare_bytes]) is None:
                before = b""
            for old_request, new_request in ((sample, data), (before, previous)):
                if old_request and new_request and not _other_command(old_request, new_request, answer,
                                                                       self.machine.vocabulary):
                    unechoed = self.machine.unechoed.get(_first_name(old_request), set())
                    limit = self.params.compare_bytes
                    self._work -= (min(len(old_request), limit) + min(len(new_request), limit)) * min(
                        len(answer), 4 * limit) // 4
                    for old, new in _echoes(old_request, new_request, answer, self.params.compare_bytes, unechoed):
                        answer = _replace_words(answer, old, new)
        self._echo = None
        if self.params.pace:
            self._ready_at = max(self._ready_at, now + state.delay)
        if answer:
            self._events.append(Send(answer, state.id))
        if state.closes_here:
            self._closed_after_events("server")

    def _render(self, label: list[_Part], values: dict[int, bytes], now: float, port: int | None = None,
                host: str | None = None) -> bytes:
        """The answer: bytes as learned, slots filled from the request, fields computed."""
        pieces: list[bytes] = []
        lengths: list[int] = []  # positions of length fields, filled in last
        for part in label:
            if isinstance(part, bytes):
                pieces.append(part)
            elif isinstance(part, int):
                pieces.append(values.get(part, b""))
            elif part[0] == "slot":
                pieces.append(values.get(part[1], b"")[part[2] : part[3]])
            elif part[0] == "token":
                pieces.append(self._token(part[1]))
            elif part[0] == "clock":
                pieces.append(encode_clock(now + self._epoch + part[2], part[1], part[3]))
            elif part[0] == "count":
                _, region, encoding, delta, at = part
                pieces.append(encode_int((_int_at(values.get(region, b""), at, encoding) or 0) + delta, encoding))
            elif part[0] == "port":
                pieces.append(part[2] if port is None else encode_port(port, part[1], host, part[2]))
            else:
                lengths.append(len(pieces))
                pieces.append(encode_int(0, part[2]))
        for _ in range(3):  # ASCII lengths change width as they change value: settle
            changed = False
            for i in lengths:
                _, scope, encoding, adjust = label[i]  # type: ignore[misc]
                assert isinstance(encoding, str) and isinstance(adjust, int)
                if scope == "all":
                    n = sum(len(p) for p in pieces)
                elif scope == "rest":
                    n = sum(len(p) for p in pieces[i + 1 :])
                else:
                    n = len(pieces[i + 1]) if i + 1 < len(pieces) else 0
                value = encode_int(n + adjust, encoding)
                if value != pieces[i]:
                    pieces[i], changed = value, True
            if not changed:
                break
        return b"".join(pieces)

    def _token(self, token: int) -> bytes:
        """This connection's value of a token: made once, then repeated."""
        value = self._tokens.get(token)
        if value is None:
            length, chars = self.machine.tokens[token]
            value = bytes(self._rng.choice(chars) for _ in range(length))
            self._tokens[token] = value
        return value

    def _closed_after_events(self, reason: str) -> None:
        self._events.append(Close(reason))
        self._closed = True

    def _usual(self, state: _State, data: bytes) -> tuple[_Transition, bytes] | None:
        """For a request of several lines of text whose request line the model never saw:
        the answer usual for its command here (State.usual: nginx's 404 to nmap's
        `GET /evox/about`), unless the line names what a learned line of its command named
        (curl's `GET /about.html?ref=scan` is nearest to its `GET /about.html`, a 200); or,
        for a command the model never saw, the answer most commands got (State.common: a
        random method's 405)."""
        line = _first_line(data)
        if line == data or line in self.machine.by_line or not _TEXT.fullmatch(data[: self.params.compare_bytes]):
            return None
        name = _first_name(line)
        if not name:
            return None  # RESP's "*2\r\n"
        if name not in self.machine.commands:
            return self._alike(state.common, data) if state.common else None
        usual = state.usual.get(name)
        if usual is None or not usual[1].isdisjoint(_names(line)):
            return None
        return self._alike(usual[0], data)

    def _alike(self, samples: _Samples, data: bytes) -> tuple[_Transition, bytes]:
        best, work = _alike(samples, data, self.params.compare_bytes)
        self._work -= work
        return best

    def _same_command(self, state: _State, data: bytes) -> _Transition | None:
        """For a request of text that nothing answers above the floor: the most similar
        sample of its command, of this state, else of the model, down to `last_floor`. The
        command says what is asked; its arguments, what the rest of the bytes are like
        (smtplib's `ehlo ws01.corpus.test` was more like a `MAIL FROM:<bob@corpus.test>`
        than any EHLO, byte for byte)."""
        first = _text_command(data, self.params.compare_bytes)
        if not first:
            return None
        for candidates in (state.nearest, self.machine.nearest):
            same = [t for t in candidates if t.first_name == first]
            t = self._nearest(same, data, self.params.last_floor) if same else None
            if t is not None:
                return t
        return None

    def _command_elsewhere(self, state: _State, data: bytes) -> _Transition | None:
        """For a line of text whose command the model learned only in other states: the most
        similar sample of that command. The command says what kind of answer comes, more
        than what else is like its bytes here (curl's `EPRT |1|127.0.0.1|54203|`, in a state
        that had only seen RETRs, got a RETR's 150)."""
        first = _text_command(data, self.params.compare_bytes)
        same = self.machine.by_command.get(first) if first else None
        if not same or any(t.first_name == first for t in state.nearest):
            return None
        if not _PRINTABLE.fullmatch(data[: self.params.compare_bytes].rstrip(b"\r\n")):
            return None  # more than one line
        return self._nearest(same, data, self.params.last_floor)

    def _elsewhere(self, state: _State, data: bytes, patterns: bool) -> _Match | None:
        """A transition of another state that matches: the model learned this request in
        another context. Preferred: one leaving a state that gave the same answer as the
        current state (the server was in the same situation), then the most specific.
        `patterns`: a mutating pattern may match (else only the same bytes)."""
        machine = self.machine
        found: list[tuple[_Transition, re.Match[bytes] | None]] = [(t, None) for t in machine.literal.get(data, [])]
        if not found and patterns:
            for t in machine.patterns:
                if not self._tried(len(data)):
                    break
                self._work -= 4  # a pattern tried (Emulator._work)
                m = t.regex.fullmatch(data)
                if m is not None:
                    found.append((t, m))
        if not found:
            return None

        def rank(item: tuple[_Transition, re.Match[bytes] | None]) -> tuple[bool, int, int, int]:
            t = item[0]
            same = machine.states[machine.sources[t.id]].label == state.label
            return (same, t.fixed_bytes, t.weight, -t.id)

        return max(found, key=rank)

    def _nearest(self, candidates: list[_Transition], data: bytes, last_floor: float | None = None
                 ) -> _Transition | None:
        """The candidate (this state's, or the model's heaviest) whose sample request is most
        similar to `data`, if at least `similarity_floor`; else, when `last_floor` is given (the
        last resort), the most similar at least that (one pass for both). Among those, one that
        begins as the request does is preferred (_PREFIX_WEIGHT): the start of a message says
        what it is (a command, a method, an opcode), and nmap's `HEAD /` with its headers in
        another order was more similar, byte for byte, to its `GET /nmaplowercheck...`. The
        first line counts twice (_LINE_WEIGHT): in a text protocol it names the command and its
        object, what follows is detail (curl's `GET /files/` is wget's `GET /files/` with other
        headers, not curl's `GET /files/prices.csv`). A sample of the same command (the first
        name: FTP's verb, Redis's first argument) counts more again (_COMMAND_WEIGHT): Redis's
        `GET app:name` is a GET of another key, not the `DEL app:name` it shares more bytes
        with. For a request of one line of text (a command and what it asks for), a sample of
        the same command counts more (_SHOWN_WEIGHT) when what it asks for and what the request
        asks for are both names the server has shown in an answer, or both names it never
        showed: lftp's `cd old-files` is nearer to its `cd archive` (550: not there) than to its
        `cd projects` (250: in the listing). Not for HTTP's or binary requests, where it
        measured worse. For a request of text, a sample of the same command that only one
        session sent counts a little more (_ONCE_WEIGHT): what the learner never saw is more
        like what clients tried once (a wrong password, a missing page) than what they came back
        to (the right password, the home page): `PASS toor` is refused, nmap's `GET /HNAP1` gets
        a 404. Nor is such a one-line request of text taken for a sample of another command that
        the server answered by closing: an unknown command is not a goodbye (HTTP's closes
        follow the request's version and headers, not its method)."""
        head = data[: self.params.compare_bytes]
        end = head.find(b"\n")
        line = head[:end] if 0 <= end < len(head) - 1 else None  # a request of one line is its line
        matcher: difflib.SequenceMatcher[int] = difflib.SequenceMatcher(None, b"", b"", autojunk=False)
        matcher.set_seq1(head)
        counts = [0] * 256  # of each byte value in the request
        for value, n in Counter(head).items():
            counts[value] = n
        floor = self.params.similarity_floor
        low = floor if last_floor is None else min(floor, last_floor)
        text = _TEXT.fullmatch(head) is not None
        one_line = line is None and _PRINTABLE.fullmatch(head.rstrip(b"\r\n")) is not None
        # What the request asks for: the names of a line of text; the UTF-16 names in bytes.
        names = _names(head) if one_line else _wide_names(head) if not text else frozenset()
        shown, first = self.machine.shown, _first_name(head)
        # A line of bytes a server of lines reads is no goodbye either (a flood's short lines
        # came 0.3 like `QUIT\r\n`).
        no_goodbye = (one_line and bool(names)) or (self.machine.reads_lines and not text)
        # First what each candidate could score at most (cheap), then the ratios, the most
        # promising first, until no other could beat the best: the same choice as working
        # out every ratio (ties to the earlier candidate), for a few of them. At most
        # _MAX_RATIOS candidates are worked out: a request alike to hundreds of samples
        # (SMB's, zeros and one layout) costs a millisecond a ratio, and peers choose it.
        line_bonus = _LINE_WEIGHT + _SAME_LINE_WEIGHT if line is not None else 0.0  # the most of the line's part
        promising = []
        work = 100 + 16 * len(candidates)  # what the search costs (Emulator._work)
        for i, t in enumerate(candidates):
            if no_goodbye and first != t.first_name and self.machine.states[t.target].closes_here:
                continue  # another command is no goodbye: FTP's CDUP is not the QUIT it resembles
            sample = t.sample[: self.params.compare_bytes]
            # Upper bounds of the ratio: difflib's real_quick_ratio (from the lengths), then
            # its quick_ratio (from the byte counts each keeps).
            size = len(head) + len(sample)
            if size and 2.0 * min(len(head), len(sample)) / size < low:
                continue
            work += len(t.counts[0])
            bound = 2.0 * _shared_bytes(counts, t.counts) / size if size else 1.0
            if bound < low:
                continue
            extra = _PREFIX_WEIGHT * _common_start(head, sample, text)
            same_command = first == t.first_name
            if same_command and first:
                extra += _COMMAND_WEIGHT
                if text and t.weight == 1:
                    extra += _ONCE_WEIGHT
            if same_command and names:
                ours, theirs = names - t.names, t.names - names  # what each asks for that the other does not
                if ours and theirs and _shows(ours, shown) == _shows(theirs, shown):
                    extra += _SHOWN_WEIGHT
            promising.append((bound + extra + line_bonus, -i, bound, extra, t, sample))
        promising.sort(key=lambda c: (c[0], c[1]), reverse=True)  # the most promising, then the earliest
        # Keys are (score + extra, tie): `tie` is minus the candidate's index (the earlier wins).
        best, best_key = None, (-1.0, 0)  # at least `floor`
        last, last_key = None, (-1.0, 0)  # at least `low` (so last_key >= best_key)
        for n, (most, tie, bound, extra, t, sample) in enumerate(promising):
            if (most, tie) <= best_key or n == _MAX_RATIOS:
                break  # none left could beat the best (nor the last resort, as good or better)
            same_line = _same_line(line, sample)
            extra += _LINE_WEIGHT * same_line + (_SAME_LINE_WEIGHT if same_line == 1.0 and text else 0.0)
            most = bound + extra
            if not ((bound >= floor and (most, tie) > best_key) or (most, tie) > last_key):
                continue
            if not text and len(t.sample) == len(data):
                # Bytes of one length are one layout: compared place by place, a field
                # against itself. difflib's alignment finds matches among random ids too:
                # dig's MX query came nearer its TXT query, one type byte apart, when the
                # random id of one shared a byte with the other's.
                score = _same_bytes(head, sample)
                work += len(head)
            elif (walk := _diff_work(counts, t.counts)) > _MAX_DIFF_WORK:
                head_cut, sample_cut = _runs_cut(head), _runs_cut(sample)
                score = difflib.SequenceMatcher(None, head_cut, sample_cut, autojunk=False).ratio()
                work += _ratio_work(_MAX_DIFF_WORK, len(head_cut) + len(sample_cut))
            else:
                matcher.set_seq2(sample)
                score = matcher.ratio()
                work += _ratio_work(walk, size)
            key = (score + extra, tie)
            if score >= floor and key > best_key:
                best, best_key = t, key
            # The last resort takes a binary request only to a sample that begins as it does
            # (a message type, a magic number): with nothing else alike, 0.3 is chance.
            if score >= low and key > last_key and (text or score >= floor or head[:1] == sample[:1]):
                last, last_key = t, key
        self._work -= work
        return best if best is not None else last
