"""Differential test: our TCP reassembly against Wireshark's "Follow TCP Stream".

For every capture of the shared corpus (../shared/corpus, next to the repository), each
TCP session we reassemble from its handshake (`midstream == False`) whose client SYN
tshark also saw is compared with tshark's `follow,tcp,raw` output for the same
connection: the list of (sender endpoint, bytes) messages must be identical, where a
message is the run of consecutive bytes one side sent before the other side spoke.

tshark's streams are matched to ours by 4-tuple (client, server) taken from the SYN, and
by order when a 4-tuple is reused. Run with `-s` to see the agreement figures.

Every difference fails the test unless it is listed in KNOWN_DIFFERENCES with its cause,
and then only while the listed condition holds exactly. Skipped when the corpus folder or
the `tshark` binary is absent.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scriptgen.capture.sessions import read_sessions
from scriptgen.model import Endpoint, Sender, Session, Transport

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
TSHARK = shutil.which("tshark")
FOLLOW_BATCH = 50  # streams followed per tshark run
# Wireshark's defaults, stated so a local preferences file cannot change the reference.
TSHARK_PREFS = (
    "-o",
    "tcp.desegment_tcp_streams:TRUE",
    "-o",
    "tcp.analyze_sequence_numbers:TRUE",
)

CAPTURES = (
    sorted(p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng") and p.is_file())
    if CORPUS.is_dir()
    else []
)

# (corpus-relative file, tcp.stream) -> (kind, the check that must hold, why).
#  kind "policy": a deliberate, documented policy of tcp.py; the session counts as agreeing.
#  kind "open":   not settled yet; the test is an expected failure (strict) until decided.
# An entry whose stream now agrees, or differs in another way, fails the test.
KNOWN_DIFFERENCES = {
    ("public/modbus/zeek__modbus__modbus-and-non-modbus-p502.pcap", 4): (
        "policy",
        "after_rst",
        (
            "client SYN, SYN-ACK, client RST; 16 s later the client sends 109 bytes on the "
            "same 4-tuple without a new SYN. tcp.py ends the session at the RST and ignores "
            "segments on a recently closed 4-tuple until a SYN; tshark keeps them in the stream."
        ),
    ),
}

# (client, server) with addresses normalised, so text forms of IPv6 cannot disagree.
Tuple4 = tuple[tuple[str, int], tuple[str, int]]
Messages = list[tuple[tuple[str, int], bytes]]


def _norm(ip: str, port: int | str) -> tuple[str, int]:
    return str(ipaddress.ip_address(ip)), int(port)


def _ep(endpoint: Endpoint) -> tuple[str, int]:
    return _norm(endpoint.ip, endpoint.port)


def _skip_if_unavailable() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus folder absent: {CORPUS}")
    if TSHARK is None:
        pytest.skip("tshark not installed")
    if not CAPTURES:
        pytest.skip(f"no captures under {CORPUS}")


def _tshark(*args: str) -> str:
    assert TSHARK is not None
    proc = subprocess.run(
        [TSHARK, *TSHARK_PREFS, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"tshark {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


# -- tshark's side ----------------------------------------------------------------------


@dataclass
class TsharkStream:
    index: int
    syn: Tuple4 | None = None  # (client, server) of the first SYN without ACK
    payload: int = 0  # sum of tcp.len over the stream's packets
    messages: Messages = field(default_factory=list)


def tshark_streams(path: Path) -> dict[int, TsharkStream]:
    """Stream index -> its client SYN's 4-tuple (if captured) and payload size."""
    out = _tshark(
        "-r",
        str(path),
        "-Y",
        "tcp && !icmp && !icmpv6",  # not the TCP headers quoted in ICMP errors
        "-T",
        "fields",
        "-E",
        "occurrence=l",  # innermost IP header of a tunnel
        "-e",
        "tcp.stream",
        "-e",
        "ip.src",
        "-e",
        "ipv6.src",
        "-e",
        "tcp.srcport",
        "-e",
        "ip.dst",
        "-e",
        "ipv6.dst",
        "-e",
        "tcp.dstport",
        "-e",
        "tcp.flags.syn",
        "-e",
        "tcp.flags.ack",
        "-e",
        "tcp.len",
    )
    streams: dict[int, TsharkStream] = {}
    for line in out.splitlines():
        stream, src4, src6, sport, dst4, dst6, dport, syn, ack, length = line.split("\t")
        if not stream:
            continue
        s = streams.setdefault(int(stream), TsharkStream(int(stream)))
        s.payload += int(length or 0)
        if s.syn is None and syn in ("1", "True") and ack in ("0", "False"):
            s.syn = (_norm(src4 or src6, sport), _norm(dst4 or dst6, dport))
    return streams


def tshark_follow(path: Path, indices: list[int]) -> dict[int, Messages]:
    """Stream index -> tshark's reassembled messages, for the given streams."""
    result: dict[int, Messages] = {}
    for start in range(0, len(indices), FOLLOW_BATCH):
        args = ["-r", str(path), "-q"]
        for i in indices[start : start + FOLLOW_BATCH]:
            args += ["-z", f"follow,tcp,raw,{i}"]
        result.update(parse_follow(_tshark(*args)))
    return result


def parse_follow(text: str) -> dict[int, Messages]:
    """Parse `-z follow,tcp,raw,N` blocks: chunks of node 1 are indented with a tab;
    consecutive chunks of one node merge into one message."""
    result: dict[int, Messages] = {}
    stream: int | None = None
    nodes: dict[int, tuple[str, int] | None] = {}
    messages: Messages = []
    last_node = -1
    for line in text.splitlines():
        if line.startswith("Filter: tcp.stream eq "):
            stream = int(line.rsplit(" ", 1)[1])
            nodes, messages, last_node = {}, [], -1
            result[stream] = messages
        elif line.startswith(("Node 0: ", "Node 1: ")):
            addr = line[8:]
            ip, _, port = addr.rpartition(":")
            nodes[int(line[5])] = _norm(ip.strip("[]"), port) if ip else None
        elif stream is not None and line.strip() and not line.startswith(("=", "Follow:")):
            node = 1 if line.startswith("\t") else 0
            sender = nodes.get(node)
            assert sender is not None, f"stream {stream}: data from unnamed node {node}"
            data = bytes.fromhex(line.strip())
            if node == last_node:
                messages[-1] = (sender, messages[-1][1] + data)
            else:
                messages.append((sender, data))
                last_node = node
    return result


# -- our side and the comparison --------------------------------------------------------


def our_messages(session: Session) -> Messages:
    who = {Sender.CLIENT: _ep(session.client), Sender.SERVER: _ep(session.server)}
    return [(who[m.sender], m.data) for m in session.messages]


def after_rst(session: Session, ours: Messages, theirs: Messages) -> bool:
    """Ours ended at a RST; tshark's stream is ours followed by more data."""
    if session.close != "rst" or ours == theirs or len(theirs) < len(ours):
        return False
    if not ours:
        return True
    *head, (sender, data) = ours
    their_sender, their_data = theirs[len(head)]
    return head == theirs[: len(head)] and sender == their_sender and their_data.startswith(data)


def gap_tshark_has(session: Session, ours: Messages, theirs: Messages) -> bool:
    """Same messages, except that bytes we recorded as a Gap are present in tshark's."""
    if len(ours) != len(theirs) or not session.gaps:
        return False
    for message, (sender, data), (their_sender, their_data) in zip(session.messages, ours, theirs):
        if sender != their_sender:
            return False
        pieces, at, pos = [], 0, 0
        for gap in message.gaps:
            pieces.append(their_data[pos : pos + gap.offset - at])
            pos += gap.offset - at + gap.length
            at = gap.offset
        pieces.append(their_data[pos:])
        if pos > len(their_data) or b"".join(pieces) != data:
            return False
    return True


CHECKS = {"after_rst": after_rst, "gap_tshark_has": gap_tshark_has}


@dataclass
class FileResult:
    name: str
    compared: int = 0
    identical: int = 0
    policy: int = 0  # differing, by a documented policy listed in KNOWN_DIFFERENCES
    differences: list[str] = field(default_factory=list)  # unexplained: failures
    open: list[str] = field(default_factory=list)  # listed as "open": expected failures
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        extra = f", {self.policy} differ by documented policy" if self.policy else ""
        return (
            f"{self.name}: tshark agreement: {self.identical}/{self.compared} "
            f"handshake sessions identical{extra}"
        )


def describe(ours: Messages, theirs: Messages) -> str:
    """Where two message lists first differ, in a few words."""
    if len(ours) != len(theirs):
        head = f"{len(ours)} messages vs tshark {len(theirs)}"
    else:
        head = f"{len(ours)} messages"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            if a[0] != b[0]:
                return f"{head}; #{i} sender {a[0]} vs tshark {b[0]}"
            k = next((j for j, (x, y) in enumerate(zip(a[1], b[1])) if x != y), None)
            k = min(len(a[1]), len(b[1])) if k is None else k
            return (
                f"{head}; #{i} from {a[0][0]}:{a[0][1]}: {len(a[1])} bytes vs tshark "
                f"{len(b[1])}, first difference at byte {k}: "
                f"{a[1][k : k + 16]!r} vs tshark {b[1][k : k + 16]!r}"
            )
    return f"{head}; first {min(len(ours), len(theirs))} identical"


def compare_file(path: Path) -> FileResult:
    result = FileResult(str(path.relative_to(CORPUS)))
    streams = tshark_streams(path)
    by_tuple: dict[Tuple4, list[TsharkStream]] = defaultdict(list)
    for s in sorted(streams.values(), key=lambda s: s.index):
        if s.syn is not None:
            by_tuple[s.syn].append(s)

    ours_by_tuple: dict[Tuple4, list[Session]] = defaultdict(list)
    for session in read_sessions([str(path)]):
        if session.transport is Transport.TCP and not session.midstream:
            ours_by_tuple[(_ep(session.client), _ep(session.server))].append(session)

    pairs: list[tuple[Session, TsharkStream]] = []
    for key, sessions in ours_by_tuple.items():
        sessions.sort(key=lambda s: (s.start, s.index))
        candidates = by_tuple.get(key, [])
        if len(candidates) != len(sessions):
            result.notes.append(
                f"{key[0][0]}:{key[0][1]} -> {key[1][0]}:{key[1][1]}: {len(sessions)} "
                f"handshake sessions vs tshark {len(candidates)} streams with a client SYN"
            )
        pairs += zip(sessions, candidates)

    followed = tshark_follow(path, sorted(s.index for _, s in pairs if s.payload))
    matched = {id(s) for _, s in pairs}
    for s in streams.values():
        if s.syn is not None and s.payload and id(s) not in matched:
            result.notes.append(f"tcp.stream {s.index}: tshark saw the client SYN, we did not")

    for session, stream in pairs:
        theirs = followed.get(stream.index, [])
        ours = our_messages(session)
        result.compared += 1
        known = KNOWN_DIFFERENCES.get((result.name, stream.index))
        if ours == theirs and known is None:
            result.identical += 1
            continue
        assert stream.syn is not None
        text = (
            f"tcp.stream {stream.index} ({stream.syn[0][0]}:{stream.syn[0][1]} -> "
            f"{stream.syn[1][0]}:{stream.syn[1][1]}), our session {session.index} "
            f"close={session.close} anomalies={session.anomalies} gaps={session.gaps}: "
        )
        if ours == theirs:
            result.identical += 1
            result.differences.append(text + "now identical: remove its KNOWN_DIFFERENCES entry")
        elif known is None:
            result.differences.append(text + describe(ours, theirs))
        elif not CHECKS[known[1]](session, ours, theirs):
            result.differences.append(
                text + f"not the listed difference ({known[1]}): {describe(ours, theirs)}"
            )
        elif known[0] == "policy":
            result.policy += 1
            result.notes.append(text + f"policy ({known[1]}): {known[2]}")
        else:
            result.open.append(text + f"open ({known[1]}): {known[2]}")
    return result


_RESULTS: dict[Path, FileResult] = {}


def result_for(path: Path) -> FileResult:
    if path not in _RESULTS:
        _RESULTS[path] = compare_file(path)
    return _RESULTS[path]


# -- the tests --------------------------------------------------------------------------


@pytest.mark.parametrize("capture", CAPTURES, ids=[str(p.relative_to(CORPUS)) for p in CAPTURES])
def test_tcp_reassembly_matches_tshark(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _skip_if_unavailable()
    result = result_for(capture)
    with capsys.disabled():
        print(f"\n{result.summary()}")
        for line in result.notes + result.open + result.differences:
            print(f"    {line}")
    assert not result.differences, "\n".join([result.summary(), *result.differences])
    if result.open:
        pytest.xfail("; ".join(result.open))


def test_tshark_agreement_over_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    _skip_if_unavailable()
    results = [result_for(p) for p in CAPTURES]
    compared = sum(r.compared for r in results)
    identical = sum(r.identical for r in results)
    policy = sum(r.policy for r in results)
    open_ = [d for r in results for d in r.open]
    unexplained = [f"{r.name}: {d}" for r in results for d in r.differences]
    share = identical / compared if compared else 1.0
    with capsys.disabled():
        print(
            f"\ncorpus ({len(results)} captures): tshark agreement: {identical}/{compared} "
            f"handshake sessions identical ({share:.1%}); {policy} differ by documented "
            f"policy, {len(open_)} open, {len(unexplained)} unexplained"
        )
    assert compared > 0
    assert not unexplained, "\n".join(unexplained)
    assert identical + policy + len(open_) == compared
    if open_:
        pytest.xfail("; ".join(open_))
