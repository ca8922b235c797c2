"""Learn stage, step 4: answer fields and request framing (issue 7; docs/algorithm.md,
"Answer fields"). Protocol-agnostic: every rule is a relation that must hold in every
sample of a state, found by trying the encodings in model.INT_ENCODINGS/CLOCK_ENCODINGS.

Inputs: a state's answer template (the most frequent label), its answer samples (each
with the session it came from, its capture time and the values of the request that led
there), the incoming transition's pattern, the port's tokens found so far. Output: the
template with fields in place of the bytes they explain:

- Clock:  bytes that decode to the capture time of each sample (a constant offset);
- Count:  an integer equal to a request region's integer plus a constant;
- Length: an integer equal to the answer's length, the rest's, or the next part's, plus
          a constant, where those lengths vary;
- Token:  bytes different in every session (a session id, a challenge): made fresh per
          connection; bytes equal to a token seen earlier are that token again.

Framing: an integer at a fixed offset of every request equal to its length minus a
constant (a length-prefixed protocol) delimits requests without waiting for a gap.
"""

from __future__ import annotations

import email.utils
import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scriptgen.model import (
    Clock, Count, Framing, Length, Part, Port, Region, Slot, Token, TokenSpec,
)

__all__ = ["AnswerSample", "Tokens", "decode_int", "decode_clock", "explains", "generalise", "find_framing",
           "tokenise_pattern", "charset", "request_values", "splice"]


@dataclass(frozen=True, slots=True)
class AnswerSample:
    """One answer a state got in the capture."""

    session: int  # which session (its position in the capture)
    time: float  # capture time of the answer's first byte
    answer: bytes
    values: dict[int, bytes] = field(default_factory=dict)  # request region -> value
    ports: tuple[tuple[int, int, str], ...] = ()  # (start, end, encoding) of ports it announced (channels.py)


MIN_TOKEN_SAMPLES = 3  # sessions needed to call bytes "different in every session"
MIN_TOKEN_LENGTH = 4  # shorter distinct values are too likely to be counters or chance
MIN_SEARCHED_BITS = 32  # token values looked for inside other messages carry at least this much chance
MAX_TOKEN_VALUES = 64  # values of a token kept to recognise it again
CLOCK_SLACK = 2.0  # seconds a clock field may wander from the capture's clock between samples
CLOCK_RANGE = 86400.0 * 366  # a server clock further off than this is not tracking time
MAX_ADJUST = 64  # |constant| allowed in length and counter relations
_WIDTH = {"u8": 1, "u16be": 2, "u16le": 2, "u24be": 3, "u32be": 4, "u32le": 4}
_FILETIME_EPOCH = 11644473600  # seconds from 1601-01-01 to 1970-01-01


@dataclass
class Tokens:
    """The port's tokens, found state by state (parents first)."""

    specs: list[TokenSpec] = field(default_factory=list)
    owner: dict[bytes, int] = field(default_factory=dict)  # a value seen -> its token
    _searched: re.Pattern[bytes] | None = None

    def add(self, values: Sequence[bytes]) -> int:
        tid = len(self.specs)
        kept = sorted(set(values))[:MAX_TOKEN_VALUES]
        self.specs.append(TokenSpec(len(values[0]), charset(values), tuple(kept[:4])))
        for v in kept:
            self.owner.setdefault(v, tid)
        self._searched = None
        return tid

    def searched(self) -> re.Pattern[bytes] | None:
        """One regex finding every token value unlikely to occur by chance: of at least
        MIN_SEARCHED_BITS (4 random bytes, 8 hex digits), longest first."""
        if self._searched is None:
            bits = {i: math.log2(len(_CHARSET_BYTES[k.charset])) * k.length for i, k in enumerate(self.specs)}
            long = sorted((v for v, i in self.owner.items() if bits[i] >= MIN_SEARCHED_BITS), key=lambda v: (-len(v), v))
            if not long:
                return None
            self._searched = re.compile(b"|".join(re.escape(v) for v in long))
        return self._searched

    def known(self, values: Sequence[bytes]) -> int | None:
        """The token `values` are values of: some (two, or all of one) are known values of
        it, none of another (values are kept for a sample of sessions only)."""
        ids = [self.owner.get(v) for v in values]
        known = {i for i in ids if i is not None}
        if len(known) == 1 and len(ids) - ids.count(None) >= min(2, len(ids)):
            return known.pop()
        return None


def charset(values: Iterable[bytes]) -> str:
    """The narrowest byte class holding every value."""
    joined = b"".join(values)
    for name, chars in _CHARSETS:
        if all(c in chars for c in joined):
            return name
    return "bytes"


_CHARSET_BYTES = {
    "digits": string.digits.encode(), "hex": b"0123456789abcdef", "HEX": b"0123456789ABCDEF",
    "alnum": (string.ascii_letters + string.digits).encode(), "text": bytes(range(33, 127)), "bytes": bytes(range(256)),
}
_CHARSETS = [(name, frozenset(chars)) for name, chars in _CHARSET_BYTES.items() if name != "bytes"]


# -- integers and clocks --------------------------------------------------------------------


def decode_int(data: bytes, encoding: str) -> int | None:
    if encoding == "dec":
        return int(data) if data.isdigit() and len(data) <= 12 else None
    if len(data) != _WIDTH[encoding]:
        return None
    return int.from_bytes(data, "little" if encoding.endswith("le") else "big")


_HTTP_DATE = re.compile(rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                        rb"\d{4} \d\d:\d\d:\d\d GMT")
_RFC5322_DATE = re.compile(rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                           rb"\d{4} \d\d:\d\d:\d\d [+-]\d{4}")


def decode_clock(data: bytes, encoding: str) -> tuple[float, int] | None:
    """(Unix time, zone minutes east) of a time field, or None."""
    if encoding in ("u32be", "u32le"):
        value = decode_int(data, encoding)
        return (float(value), 0) if value is not None else None
    if encoding == "filetime":
        if len(data) != 8:
            return None
        return int.from_bytes(data, "little") / 1e7 - _FILETIME_EPOCH, 0
    pattern = _HTTP_DATE if encoding == "http-date" else _RFC5322_DATE
    if not pattern.fullmatch(data):
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(data.decode("ascii"))
    except (ValueError, TypeError):
        return None
    offset = parsed.utcoffset()
    return parsed.timestamp(), int(offset.total_seconds() // 60) if offset else 0


# -- answers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fit:
    """A sample laid over the template: where each part starts in its answer."""

    sample: AnswerSample
    starts: list[int]


def generalise(template: tuple[Part, ...], samples: Sequence[AnswerSample], pattern: Sequence[Region],
               tokens: Tokens, rules: Sequence[str]) -> tuple[Part, ...]:
    """The template with the fields the samples show (see the module's docstring). Two
    passes: the first on the samples as long as the template, the second, for lengths, on
    every sample the generalised template explains (echoes found in the first pass let
    samples of other lengths in)."""
    if not template or not rules:
        return template
    template = _with_ports(template, samples, tokens)
    parts = _pass(template, samples, pattern, tokens, rules)
    if "lengths" in rules:
        parts = _pass(parts, samples, pattern, tokens, ("lengths",))
    return parts


def _pass(template: tuple[Part, ...], samples: Sequence[AnswerSample], pattern: Sequence[Region],
          tokens: Tokens, rules: Sequence[str]) -> tuple[Part, ...]:
    fits = _fits(template, samples, tokens)
    if not fits:
        return template
    requests = _RequestInts(pattern, fits)
    parts: list[Part] = []
    for index, part in enumerate(template):
        if not isinstance(part, bytes):
            parts.append(part)
            continue
        at = 0
        for start, end, made in _fields_in(index, part, fits, template, pattern, requests, tokens, rules):
            if start > at:
                parts.extend(_known_tokens(part[at:start], tokens) if "tokens" in rules else [part[at:start]])
            parts.append(made)
            at = end
        if at < len(part):
            parts.extend(_known_tokens(part[at:], tokens) if "tokens" in rules else [part[at:]])
    return tuple(_joined(parts))


def _with_ports(template: tuple[Part, ...], samples: Sequence[AnswerSample], tokens: Tokens) -> tuple[Part, ...]:
    """The template with Port fields where its samples announced a data channel's port
    (channels.py marked them): at the column most samples laid over it agree on, else
    where a marked sample's bytes before the port equal the template's."""
    marked = [s for s in samples if s.ports]
    if not marked:
        return template
    votes: Counter[tuple[int, int, int, str]] = Counter()  # (part, column, length, encoding)
    for f in _fits(template, marked, tokens):
        for start, end, encoding in f.sample.ports:
            for index, part in enumerate(template):
                if isinstance(part, bytes) and f.starts[index] <= start and end <= f.starts[index] + len(part):
                    votes[(index, start - f.starts[index], end - start, encoding)] += 1
    if not votes and isinstance(template[0], bytes):
        head = template[0]
        for s in marked:
            for start, _, encoding in s.ports:
                found = _port_size(head, start, encoding)
                if found is not None and s.answer[:start] == head[:start]:
                    votes[(0, start, found, encoding)] += 1
    cuts: dict[int, list[tuple[int, int, Part]]] = {}
    for (index, column, length, encoding), _ in sorted(votes.items(), key=lambda v: (-v[1], v[0])):
        part = template[index]
        assert isinstance(part, bytes)
        value = part[column : column + length]
        if _port_size(part, column, encoding) != length:
            continue
        taken = cuts.setdefault(index, [])
        if all(column >= e or column + length <= s for s, e, _ in taken):
            taken.append((column, column + length, Port(encoding, value)))
    out: list[Part] = []
    for index, part in enumerate(template):
        if index in cuts and isinstance(part, bytes):
            out.extend(splice(part, sorted(cuts[index], key=lambda c: c[0])))
        else:
            out.append(part)
    return tuple(out)


_PORT_FIELD = {"ip-pair": re.compile(rb"\d{1,3}(?:,\d{1,3}){5}"), "pair": re.compile(rb"\d{1,3},\d{1,3}"),
               "dec": re.compile(rb"\d{1,5}")}


def _port_size(data: bytes, at: int, encoding: str) -> int | None:
    """How many bytes of `data` from `at` a port field in `encoding` takes, if one is there."""
    if encoding == "u16be":
        return 2 if len(data) >= at + 2 else None
    m = _PORT_FIELD[encoding].match(data, at)
    return m.end() - at if m else None


def explains(template: tuple[Part, ...], samples: Sequence[AnswerSample], tokens: Tokens) -> bool:
    """Whether the template could have made one of the samples: its bytes as they are
    there, its fields of a size that fits between them."""
    return any(_starts(template, s, tokens, exact=True) is not None for s in samples)


def _fits(template: tuple[Part, ...], samples: Sequence[AnswerSample], tokens: Tokens) -> list[_Fit]:
    """Samples the template explains (byte parts may differ in content, not in length;
    echoes must hold), one per session."""
    fits: list[_Fit] = []
    seen: set[int] = set()
    for s in samples:
        if s.session in seen:
            continue
        starts = _starts(template, s, tokens)
        if starts is not None:
            fits.append(_Fit(s, starts))
            seen.add(s.session)
    return fits


def _starts(template: tuple[Part, ...], s: AnswerSample, tokens: Tokens, exact: bool = False) -> list[int] | None:
    """Where each part of the template starts in `s.answer`, if the parts' sizes lay it out
    whole (and, `exact`, its byte parts are the answer's bytes there); else None."""
    starts, at = [], 0
    for part in template:
        starts.append(at)
        size = _size(part, s, at, tokens)
        if size is None or exact and isinstance(part, bytes) and s.answer[at : at + size] != part:
            return None
        at += size
    return starts if at == len(s.answer) else None


def _size(part: Part, s: AnswerSample, at: int, tokens: Tokens) -> int | None:
    """How many bytes of `s.answer` from `at` the part stands for, if it can."""
    if isinstance(part, bytes):
        return len(part)
    if isinstance(part, Slot):
        value = s.values.get(part.region)
        if value is None:
            return None
        value = part.of(value)
        return len(value) if s.answer[at : at + len(value)] == value else None
    if isinstance(part, Token):
        return tokens.specs[part.token].length
    if isinstance(part, Port):
        return _port_size(s.answer, at, part.encoding)
    if isinstance(part, Clock):
        if part.encoding in _CLOCK_WIDTH:
            return _CLOCK_WIDTH[part.encoding]
        m = (_HTTP_DATE if part.encoding == "http-date" else _RFC5322_DATE).match(s.answer, at)
        return m.end() - at if m else None
    encoding = part.encoding  # Count, Length
    if encoding != "dec":
        return _WIDTH[encoding]
    end = at
    while end < len(s.answer) and s.answer[end : end + 1].isdigit():
        end += 1
    return end - at if end > at else None


_CLOCK_WIDTH = {"filetime": 8, "u32le": 4, "u32be": 4}


MAX_COLUMNS = 4096  # bytes of one answer part searched for fields (a bound on the cost)
MAX_SERIES = 256  # request integers a counter is looked for among (a bound on the cost)
_INT_ORDER = ("u32be", "u32le", "u24be", "u16be", "u16le", "u8", "dec")


class _RequestInts:
    """Integers the request carried, per (region, offset, encoding): what counters relate to."""

    def __init__(self, pattern: Sequence[Region], fits: list[_Fit]) -> None:
        self.series: list[tuple[int, int, str, list[int]]] = []
        if len(fits) < 2:  # a series needs two values (one sample: a label the capture gave once)
            return
        for region, values in request_values(pattern, fits):
            lengths = {len(v) for v in values}
            for encoding in _INT_ORDER:
                if encoding == "dec":
                    offsets = [0]
                else:
                    width = _WIDTH[encoding]
                    shortest = min(lengths)
                    if shortest < width:
                        continue
                    offsets = list(range(shortest - width + 1)) if len(lengths) == 1 and shortest <= 32 else [0, -width]
                for at in offsets:
                    ints = [_int_at(v, at, encoding) for v in values]
                    if all(i is not None for i in ints) and len(set(ints)) >= 2:
                        self.series.append((region, at, encoding, ints))  # type: ignore[arg-type]
                        if len(self.series) >= MAX_SERIES:
                            return


def request_values(pattern: Sequence[Region], fits: list[_Fit]) -> Iterable[tuple[int, list[bytes]]]:
    """(region, its value in each sample) for the mutating regions every sample has."""
    for region, r in enumerate(pattern):
        if r.fixed:
            continue
        values = [f.sample.values.get(region) for f in fits]
        if all(v is not None for v in values):
            yield region, [v for v in values if v is not None]


def _int_at(value: bytes, at: int, encoding: str) -> int | None:
    if encoding == "dec":
        return decode_int(value, encoding)
    start = at if at >= 0 else len(value) + at
    return decode_int(value[start : start + _WIDTH[encoding]], encoding) if start >= 0 else None


def _fields_in(index: int, part: bytes, fits: list[_Fit], template: tuple[Part, ...], pattern: Sequence[Region],
               requests: _RequestInts, tokens: Tokens, rules: Sequence[str]) -> list[tuple[int, int, Part]]:
    """The fields of byte part `index`: (start, end, field), in order, not overlapping."""
    width = min(len(part), MAX_COLUMNS)
    differ = [False] * width
    for f in fits:
        chunk = f.sample.answer[f.starts[index] : f.starts[index] + width]
        for i, (a, b) in enumerate(zip(chunk, part)):
            if a != b:
                differ[i] = True
    found: list[tuple[int, int, Part]] = []
    taken = [False] * width

    def take(start: int, end: int, made: Part) -> None:
        found.append((start, end, made))
        for i in range(start, end):
            taken[i] = True

    def free(start: int, end: int) -> bool:
        return 0 <= start and end <= width and not any(taken[start:end])

    if "clocks" in rules:  # anywhere: a capture made within a second has the same time throughout
        for start, end, made in _clocks(index, part[:width], fits):
            if free(start, end):
                take(start, end, made)
    if not any(differ):
        return sorted(found, key=lambda x: x[0])
    p = 0
    while p < width:
        if taken[p] or not any(differ[p : p + 8]):
            p += 1
            continue
        field_here = _field_at(index, part, p, width, fits, template, pattern, requests, tokens, rules, differ, free)
        if field_here is None:
            p += 1
            continue
        take(*field_here)
        p = field_here[1]
    if "tokens" in rules and len({f.sample.session for f in fits}) >= MIN_TOKEN_SAMPLES:
        for start, end in _runs(differ, taken):
            values = _values(index, fits, start, end)
            if end - start >= MIN_TOKEN_LENGTH and len(set(values)) == len(values):
                take(start, end, Token(tokens.add(values)))
    return sorted(found, key=lambda x: x[0])


def _field_at(index: int, part: bytes, p: int, width: int, fits: list[_Fit], template: tuple[Part, ...],
              pattern: Sequence[Region], requests: _RequestInts, tokens: Tokens, rules: Sequence[str],
              differ: list[bool], free: Callable[[int, int], bool]) -> tuple[int, int, Part] | None:
    """The field starting at column p that covers a column where the samples differ and
    explains the most columns (a token, a counter or length, an echo of part of a request)."""
    candidates: list[tuple[int, float, Part]] = []  # (columns, preference, field)
    if "tokens" in rules:
        for length in sorted({k.length for k in tokens.specs}, reverse=True):
            if free(p, p + length) and any(differ[p : p + length]):
                tid = tokens.known(_values(index, fits, p, p + length))
                if tid is not None and tokens.specs[tid].length == length:
                    return p, p + length, Token(tid)  # the client repeats it, but it is the server's
    if "counters" in rules and differ[p]:  # starting where the samples differ: no fixed bytes swallowed
        echo = _echo(index, p, width, fits, pattern, free)
        if echo:
            candidates.append((echo[1] - p, 1.5, echo[2]))  # before an equal counter of delta 0: may run to the end
    for encoding in _INT_ORDER:
        end = _digits_end(part, p, width) if encoding == "dec" else p + _WIDTH[encoding]
        if end is None or not free(p, end) or not any(differ[p:end]):
            continue
        ours = [decode_int(v, encoding) for v in _values(index, fits, p, end)]
        if any(o is None for o in ours) or len(set(ours)) < 2:
            continue
        made = _int_field(ours, encoding, index, end, fits, template, requests, rules)
        if isinstance(made, Count) and not made.delta and not differ[p]:
            continue  # an echo starting in fixed bytes: the echo from the next column is the better field
        if made is not None:
            candidates.append((end - p, 2 if isinstance(made, Count) and made.delta else 1, made))
    if not candidates:
        return None
    columns, _, made = max(candidates, key=lambda c: (c[0], c[1]))
    return p, p + columns, made


def _int_field(ours: list[int | None], encoding: str, index: int, end: int, fits: list[_Fit],
               template: tuple[Part, ...], requests: _RequestInts, rules: Sequence[str]) -> Part | None:
    """A counter (a request integer plus a constant) or a length (plus a constant)."""
    if "counters" in rules:
        for region, at, their_encoding, theirs in requests.series:
            if their_encoding != encoding:
                continue
            deltas = {o - t for o, t in zip(ours, theirs)}  # type: ignore[operator]
            if len(deltas) == 1 and abs(next(iter(deltas))) <= MAX_ADJUST:
                return Count(region, encoding, deltas.pop(), at)
    if "lengths" in rules:
        for scope in ("rest", "all", "next"):
            lengths = [_scope_length(f, index, end, template, scope) for f in fits]
            if any(n is None for n in lengths) or len(set(lengths)) < 2:
                continue
            adjusts = {o - n for o, n in zip(ours, lengths)}  # type: ignore[operator]
            if len(adjusts) == 1 and abs(next(iter(adjusts))) <= MAX_ADJUST:
                return Length(encoding, scope, adjusts.pop())
    return None


def _echo(index: int, p: int, width: int, fits: list[_Fit], pattern: Sequence[Region],
          free: Callable[[int, int], bool]) -> tuple[int, int, Part] | None:
    """Bytes from column p that repeat bytes of a request region in every sample, at one
    offset from the region's start or end: a field inside a region the alignment could not
    tell from its neighbours (a name after a sequence number)."""
    first = fits[0]
    head = first.sample.answer[first.starts[index] + p : first.starts[index] + p + MIN_ECHO]
    if len(head) < MIN_ECHO:
        return None
    for region, values in request_values(pattern, fits):
        offset = values[0].find(head)
        if offset < 0:
            continue
        length = 0  # how far the answer goes on repeating, in every sample
        while p + length < width and free(p, p + length + 1) and all(
                offset + length < len(v) and v[offset + length] == f.sample.answer[f.starts[index] + p + length]
                for v, f in zip(values, fits)):
            length += 1
        if length < MIN_ECHO:
            continue
        to_end = all(offset + length == len(v) for v in values)
        return p, p + length, Slot(region, offset, None if to_end else offset + length)
    return None


MIN_ECHO = 3  # bytes an echo of part of a request region must have (shorter: chance)


def _digits_end(part: bytes, p: int, width: int) -> int | None:
    """The end of the run of ASCII digits starting at p (a whole number, not its tail)."""
    if p > 0 and part[p - 1 : p].isdigit():
        return None
    end = p
    while end < width and part[end : end + 1].isdigit():
        end += 1
    return end if end > p else None


def _runs(differ: list[bool], taken: list[bool]) -> list[tuple[int, int]]:
    """Runs of differing columns no field took (gaps of up to two equal columns bridged:
    random bytes agree by chance)."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(differ):
        if not differ[i] or taken[i]:
            i += 1
            continue
        j = i + 1
        while j < len(differ) and not taken[j] and (differ[j] or any(differ[j : j + 3])):
            j += 1
        while j > i and not differ[j - 1]:
            j -= 1
        runs.append((i, j))
        i = j
    return runs


def _values(index: int, fits: list[_Fit], start: int, end: int) -> list[bytes]:
    return [f.sample.answer[f.starts[index] + start : f.starts[index] + end] for f in fits]


def _clocks(index: int, part: bytes, fits: list[_Fit]) -> Iterable[tuple[int, int, Part]]:
    for encoding, regex in (("http-date", _HTTP_DATE), ("rfc5322", _RFC5322_DATE)):
        for m in regex.finditer(part):
            found = _clock_relation(_values(index, fits, m.start(), m.end()), fits, encoding)
            if found:
                yield m.start(), m.end(), found
    if Region.literal(part).ascii:
        return  # text: its times are written as text (above)
    first = fits[0].sample
    base = fits[0].starts[index]
    for encoding, width, s in _binary_clock_windows(first.answer[base : base + len(part)], first.time):
        found = _clock_relation(_values(index, fits, s, s + width), fits, encoding)
        if found:
            yield s, s + width, found


def _binary_clock_windows(data: bytes, t: float) -> list[tuple[str, int, int]]:
    """(encoding, width, start) of the windows of `data` that decode to within CLOCK_RANGE
    of time `t`: every window of every binary encoding at once, vectorised (the first
    sample rules most windows out before the others are looked at)."""
    found: list[tuple[str, int, int]] = []
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.float64)
    for encoding, width in (("filetime", 8), ("u32le", 4), ("u32be", 4)):
        if len(raw) < width:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(raw, width)
        weights = 256.0 ** np.arange(width)  # little endian
        values = windows @ (weights[::-1] if encoding == "u32be" else weights)
        if encoding == "filetime":
            values = values / 1e7 - _FILETIME_EPOCH
        for s in np.flatnonzero(np.abs(values - t) <= CLOCK_RANGE):
            found.append((encoding, width, int(s)))
    return found


def _clock_relation(values: list[bytes], fits: list[_Fit], encoding: str) -> Clock | None:
    """A clock field when every value is its sample's capture time plus one offset: any
    offset up to CLOCK_RANGE when the values differ (they moved with time), only
    CLOCK_SLACK when they do not (a constant near the capture's time could be chance)."""
    offsets, zones = [], set()
    for value, f in zip(values, fits):
        decoded = decode_clock(value, encoding)
        if decoded is None or abs(decoded[0] - f.sample.time) > CLOCK_RANGE:
            return None
        offsets.append(decoded[0] - f.sample.time)
        zones.add(decoded[1])
    middle = statistics.median(offsets)
    moved = len(set(values)) > 1
    if max(offsets) - min(offsets) > 2 * CLOCK_SLACK or len(zones) != 1:
        return None
    if not moved and abs(middle) > CLOCK_SLACK:
        return None
    if not moved:
        middle = 0.0
    elif encoding != "filetime":
        middle = float(round(middle + 0.5))  # whole seconds, written truncated: 0.5 s early on average
    return Clock(encoding, round(middle, 3), zones.pop())


def _scope_length(f: _Fit, index: int, field_end: int, template: tuple[Part, ...], scope: str) -> int | None:
    answer = f.sample.answer
    end_at = f.starts[index] + field_end
    if scope == "all":
        return len(answer)
    if scope == "rest":
        return len(answer) - end_at
    # "next": the part right after the field, when the field ends its byte part
    part = template[index]
    if not isinstance(part, bytes) or field_end != len(part) or index + 1 >= len(template):
        return None
    following = f.starts[index + 2] if index + 2 < len(template) else len(answer)
    return following - end_at


def _known_tokens(data: bytes, tokens: Tokens) -> list[Part]:
    """`data` with any earlier token's value (as the capture had it) replaced by that token."""
    return splice(data, [(start, end, Token(tid)) for start, end, tid in _token_hits(data, tokens)])


def splice(data: bytes, cuts: Sequence[tuple[int, int, Part]]) -> list[Part]:
    """`data` with the (start, end) spans of `cuts` (sorted) replaced by their parts; a cut
    that overlaps an earlier one is skipped."""
    out: list[Part] = []
    at = 0
    for start, end, part in cuts:
        if start < at:
            continue
        if start > at:
            out.append(data[at:start])
        out.append(part)
        at = end
    if at < len(data):
        out.append(data[at:])
    return out


def _token_hits(data: bytes, tokens: Tokens) -> list[tuple[int, int, int]]:
    """Where values of earlier tokens occur in `data` (long values only: a short one
    turns up by chance)."""
    searched = tokens.searched()
    if searched is None or len(data) < MIN_TOKEN_LENGTH:
        return []
    return [(m.start(), m.end(), tokens.owner[m.group()]) for m in searched.finditer(data)]


def _joined(parts: list[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if isinstance(p, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + p
        elif not (isinstance(p, bytes) and not p):
            out.append(p)
    return out


# -- requests -----------------------------------------------------------------------------


def tokenise_pattern(pattern: Sequence[Region], tokens: Tokens) -> tuple[tuple[Region, ...], dict[int, int]]:
    """The pattern with tokens' capture values cut out of its fixed regions (a client
    repeats the token it was given, which differs on every connection), and where each
    old region is now."""
    out: list[Region] = []
    moved: dict[int, int] = {}
    for i, region in enumerate(pattern):
        moved[i] = len(out)
        if region.value is None or not tokens.owner:
            out.append(region)
            continue
        at = 0
        for start, end, tid in _token_hits(region.value, tokens):
            if start < at:
                continue
            if start > at:
                out.append(Region.literal(region.value[at:start]))
            n = end - start
            out.append(Region(None, n, n, ascii=tokens.specs[tid].charset != "bytes", random=True, token=tid))
            at = end
        if at < len(region.value):
            out.append(Region.literal(region.value[at:]))
    return tuple(out), moved


def find_framing(requests: Sequence[bytes]) -> Framing | None:
    """A length field every request carries at one offset (see the module's docstring):
    it must hold for every request, and the requests must have at least three lengths."""
    if len({len(r) for r in requests}) < 3:
        return None
    shortest = min(len(r) for r in requests)
    for offset in range(0, min(8, shortest)):
        for encoding in ("u32be", "u24be", "u16be", "u32le", "u16le"):
            width = _WIDTH[encoding]
            if offset + width > shortest:
                continue
            adjusts = set()
            for r in requests:
                value = decode_int(r[offset : offset + width], encoding)
                adjusts.add(len(r) - (value or 0))
                if len(adjusts) > 1:
                    break
            if len(adjusts) == 1 and 0 <= next(iter(adjusts)) <= MAX_ADJUST:
                return Framing(offset, encoding, adjusts.pop())
    return None
