"""The conformance suite: one list of client scripts with the answers they must get,
run against every implementation of the emulator — the in-process engine (driven by
tests/emulate/script.py, as replay does) and the server over real sockets (TCP whole
and trickled one byte at a time, UDP). Same script, byte-identical transcript.

A transcript is [banner, answer to request 1, ...] (b"" where the server says nothing)
and whether the server closed after the last answer.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from scriptgen.emulate import Machine
from tests.emulate.script import run
from tests.serve.harness import BANNER, connect, read_answer, wait_closed

__all__ = ["CASES", "Case", "Transcript", "in_process", "over_tcp", "over_udp"]


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # a name of tests/serve/harness.py MODELS
    requests: tuple[bytes, ...]
    answers: tuple[bytes, ...]  # banner (b"" when none), then one per request
    closed: bool  # the server closes after the last answer


@dataclass(frozen=True)
class Transcript:
    answers: tuple[bytes, ...]
    closed: bool


CASES = [
    Case("login, a dependency, close where the server closed", "ftp",
         (b"USER dave\r\n", b"PASS x\r\n", b"QUIT\r\n"),
         (BANNER, b"331 Password required for dave.\r\n", b"230 Logged in.\r\n", b"221 Bye.\r\n"), True),
    Case("a literal transition beats a wildcard", "ftp", (b"SYST\r\n",), (BANNER, b"215 UNIX Type: L8\r\n"), False),
    Case("unmatched input takes the nearest transition", "ftp", (b"SYST foo\r\n",),
         (BANNER, b"215 UNIX Type: L8\r\n"), False),
    Case("a line of garbage is met with silence, the state kept", "ftp", (b"\x00\x01\x02\xff" * 10 + b"\n", b"SYST\r\n"),
         (BANNER, b"", b"215 UNIX Type: L8\r\n"), False),
    Case("pipelined requests get both answers", "ftp", (b"USER a\r\nSYST\r\n",),
         (BANNER, b"331 Password required for a.\r\n215 UNIX Type: L8\r\n"), False),
    Case("a request known elsewhere in the model", "ftp", (b"QUIT\r\n",), (BANNER, b"221 Bye.\r\n"), True),
    # (and the byte the server repeated is a one-byte counter of delta 0: repeated too)
    Case("no terminator: complete after the match gap", "binary", (b"\x01\x02\x07", b"\x01\x02\x19"),
         (b"", b"\x81\x07", b"\x81\x19"), False),
    Case("binary garbage: silence", "binary", (b"\xff\xfe",), (b"", b""), False),
    Case("datagrams", "udp", (b"Q\x02\x02\x02\x02", b"Q\x03\x03\x03\x03", b"zzz"),
         (b"", b"A\x02\x02\x02\x02", b"A\x03\x03\x03\x03", b""), False),
    Case("an empty datagram is a request (nmap -sU's probe), not the end", "udp", (b"", b"Q\x02\x02\x02\x02", b""),
         (b"", b"pong", b"A\x02\x02\x02\x02", b"pong"), False),
]


def in_process(machine: Machine, case: Case, *, trickle: bool = False) -> Transcript:
    t = run(machine, list(case.requests), trickle=trickle and not machine.datagram)
    return Transcript(tuple(t.answers), t.closed is not None)


def over_tcp(addr: tuple[str, int], case: Case, *, trickle: bool = False, silence: float = 0.75) -> Transcript:
    """`silence`: how long an answer may take before it is taken to be b"" (longer than
    the engine's idle gap, after which unmatched input is a request; the banner is
    queued at connect, so a quarter second says there is none)."""
    with connect(addr) as sock:
        answers = []
        closed = False
        for i in range(len(case.requests) + 1):
            if i:
                request = case.requests[i - 1]
                if trickle:
                    for k in range(len(request)):
                        sock.sendall(request[k : k + 1])
                        time.sleep(0.002)
                else:
                    sock.sendall(request)
            answer, closed = read_answer(sock, expect=len(case.answers[i]) if i < len(case.answers) else None,
                                         silence=silence if i else 0.25)
            answers.append(answer)
            if closed:
                break
        if not closed:
            closed = wait_closed(sock, timeout=0.2)
        return Transcript(tuple(answers), closed)


def over_udp(addr: tuple[str, int], case: Case, *, silence: float = 0.5) -> Transcript:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answers = [b""]  # no banner over UDP
        for request in case.requests:
            sock.sendto(request, addr)
            sock.settimeout(silence)
            got = b""
            try:
                while True:
                    data, _ = sock.recvfrom(65536)
                    got += data
                    sock.settimeout(0.05)
            except TimeoutError:
                answers.append(got)
        return Transcript(tuple(answers), False)
