"""tcpdump on `lo` around a block of test traffic, for the tests that learn from a capture
of a protocol they run themselves (tokenproto, channelproto)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def capturing(pcap: Path, bpf: str, log_path: Path) -> Iterator[None]:
    """Capture loopback packets matching `bpf` into `pcap` while the block runs; skip the
    test without tcpdump or root. --immediate-mode: a short capture must not end before the
    kernel hands its packets over; -B: a 64 MiB buffer, so that other loopback traffic of a
    busy test run does not make the kernel drop ours."""
    if shutil.which("tcpdump") is None or os.geteuid() != 0:
        pytest.skip("needs tcpdump and root to capture on loopback")
    with open(log_path, "w+b") as log:
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-B", "65536", "-U", "-n", "-s", "0",
                                 "-w", str(pcap), bpf], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 10
            while log.seek(0) == 0 and b"listening on" not in log.read():
                assert time.monotonic() < deadline and dump.poll() is None, "tcpdump did not start"
                time.sleep(0.05)
            yield
            time.sleep(0.3)  # the last FIN/ACKs
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
