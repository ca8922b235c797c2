"""What a tool's output may differ in between two runs against the same real server, and
nothing more: the emulator's output is compared with the real server's after these
substitutions only. Each rule was measured by running the test tool set twice against the
real server (the harness does so on every run, and reports any A/B difference these rules
leave, i.e. a rule this list is missing)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    replacement: str


def rule(pattern: str, replacement: str) -> Rule:
    return Rule(re.compile(pattern, re.MULTILINE), replacement)


RULES: list[Rule] = [
    # nmap: the start time, e.g. "Starting Nmap 7.93 ( https://nmap.org ) at 2026-11-22 11:43 UTC".
    rule(r"^(Starting Nmap .*) at \d{4}-\d\d-\d\d \d\d:\d\d \S+$", r"\1 at <time>"),
    # nmap: the measured latency, e.g. "Host is up, received user-set (0.000053s latency).".
    rule(r"\([\d.]+s latency\)", "(<latency>)"),
    # nmap: the scan's duration, e.g. "Nmap done: 1 IP address (1 host up) scanned in 0.39 seconds".
    rule(r"scanned in [\d.]+ seconds", "scanned in <duration> seconds"),
    # nmap's brute scripts: how long the guessing took, e.g. "Performed 12 guesses in 7 seconds,
    # average tps: 1.7" (7 s and 6 s in two runs of ftp-brute).
    rule(r"Performed (\d+) guesses in \d+ seconds, average tps: [\d.]+",
         r"Performed \1 guesses in <duration> seconds, average tps: <rate>"),
    # Dates in HTTP's Date header (curl -i, nmap http-headers) and in the SMTP banner and the
    # mail swaks writes, e.g. "Sun, 22 Nov 2026 18:39:45 GMT", "Sun, 22 Nov 2026 18:40:11 +0000".
    rule(r"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d (?:GMT|[+-]\d{4})",
         "<date>"),
    # swaks: the Message-Id it makes from the time and its pid, e.g. "<20261122184011.022023@vm>".
    rule(r"Message-Id: <\d{14}\.\d+@", "Message-Id: <<time>.<pid>@"),
    # Exim: the id of the queued message, e.g. "250 OK id=1xVCTz-0005jL-1l".
    rule(r"id=\w{6}-\w{6}-\w{2}\b", "id=<message id>"),
    # smb-os-discovery: the server's clock, e.g. "System time: 2026-11-22T18:44:08+00:00".
    rule(r"System time: [\dT:+-]+", "System time: <time>"),
    # smbclient get: the transfer rate, e.g. "(6.3 KiloBytes/sec) (average 6.3 KiloBytes/sec)"
    # (12.7 in the other run).
    rule(r"\([\d.]+ KiloBytes/sec\) \(average [\d.]+ KiloBytes/sec\)",
         "(<rate> KiloBytes/sec) (average <rate> KiloBytes/sec)"),
    # smbclient ls: free space on the disk under the share, e.g. "81379020 blocks available".
    rule(r"\d+ blocks available", "<free> blocks available"),
    # redis-info (nmap): CPU time the server used so far, e.g. "Used CPU (sys): 0.032301".
    rule(r"^(\|\s+Used CPU \((?:sys|user)\)): [\d.]+$", r"\1: <cpu>"),
    # redis-info (nmap): the server's memory, which grows with what earlier clients stored:
    # "Used memory: 978.98K" in the training run, "1.28M" in the test runs after it.
    rule(r"^(\|\s+Used memory): \S+$", r"\1: <memory>"),
    # INFO server: the clock and the uptime, e.g. "uptime_in_seconds:14", "lru_clock:210313".
    rule(r"^(server_time_usec|uptime_in_seconds|lru_clock):\d+$", r"\1:<clock>"),
]


def script_name(result: str) -> str:
    return result.lstrip("|_ ")


def sort_script_results(text: str) -> str:
    """nmap runs the NSE scripts of a port in parallel and prints their results in the
    order they finish (measured: ftp-anon and ftp-syst swap between two runs). A result is
    a block of lines starting with "|", its last line with "|_"; consecutive results are
    put in a fixed order."""
    out: list[str] = []
    results: list[str] = []  # finished results of the current run of "|" lines
    result = ""  # the result being read
    for line in text.splitlines(keepends=True):
        if line.startswith("|"):
            result += line
            if line.startswith("|_"):
                results.append(result)
                result = ""
            continue
        out += sorted(results, key=script_name)
        out.append(result + line)
        results, result = [], ""
    out += sorted(results, key=script_name)
    out.append(result)
    return "".join(out)


def normalise(text: str) -> str:
    for r in RULES:
        text = r.pattern.sub(r.replacement, text)
    return sort_script_results(text)
