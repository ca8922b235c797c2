"""The swap, for one protocol, inside its own network namespace:

1. start the real server; capture (tcpdump on lo) while the training tool set runs;
2. run the test and unseen tool sets twice against the real server, uncaptured:
   references A and B;
3. stop the server, `scriptgen learn` the capture, `scriptgen serve` the model on the same
   ports, run both sets against the emulator;
4. compare each emulator run with A after normalise.py (B shows what A varies in by itself).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.netns import Namespace, ToolRun, kill_all_in, stop, tail
from tests.e2e.protocols import Protocol, Tool
from tests.e2e.report import ProtocolReport, compare, version_names
from tests.e2e.servers import SETUPS

SCRIPTGEN = [sys.executable, "-m", "scriptgen"]


class HarnessError(RuntimeError):
    """A step of the harness itself failed (server, capture, learn or serve), as opposed to
    a tool answering differently."""


def tool_env(home: Path) -> dict[str, str]:
    """A fixed locale and time zone, and a private HOME so no client reads the machine's
    bookmarks, history or rc files."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(home), "LANG": "C", "LC_ALL": "C", "TZ": "UTC"}


def run_tools(ns: Namespace, tools: list[Tool], out: Path) -> list[ToolRun]:
    """Run each tool in its own directory (files it writes, e.g. nmap's XML, stay apart)."""
    runs = []
    for i, tool in enumerate(tools):
        cwd = out / f"{i:02d}"
        cwd.mkdir(parents=True)
        for name, text in tool.files.items():
            (cwd / name).write_text(text)
        run = ns.run(tool.argv, timeout=tool.timeout, cwd=cwd, stdin=tool.stdin,
                     env=tool_env(out / "home"))
        (cwd / "output.txt").write_text(f"$ {' '.join(tool.argv)}\n[rc={run.returncode}]\n"
                                        + run.output)
        runs.append(run)
    return runs


@contextmanager
def capture(ns: Namespace, pcap: Path, work: Path) -> Iterator[None]:
    """tcpdump on the namespace's lo: all of its TCP, UDP and ICMP (only this protocol's
    tools and server run there), so that data connections on ports of their own (FTP's PASV
    and PORT) are in the capture too, and UDP's refusals. Without --immediate-mode the kernel hands packets over in blocks and
    tcpdump, stopped, dropped the last tools' sessions (measured: 10 of 16 Redis sessions
    captured); -U writes each packet as it comes; SIGINT and a wait make sure the file is
    complete before learning reads it."""
    log = work / "tcpdump.log"
    proc = ns.start(["tcpdump", "-i", "lo", "--immediate-mode", "-B", "65536", "-U", "-n", "-s", "0",
                     "-Z", "root", "-w", str(pcap), "tcp or udp or icmp"], cwd=work, log=log)
    deadline = time.monotonic() + 15
    while "listening on" not in tail(log):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise HarnessError(f"tcpdump did not start: {tail(log)}")
        time.sleep(0.05)
    try:
        yield
    finally:
        time.sleep(1.0)  # the last FIN/ACKs of the final tool
        stop(proc, signal.SIGINT)


def learn(pcap: Path, ports: list[int], model: Path, work: Path) -> dict[str, int]:
    """Learn the model; return the sessions it was learned from, per port."""
    argv = [*SCRIPTGEN, "learn", str(pcap), "-o", str(model)]
    for p in ports:
        argv += ["-p", str(p)]
    done = subprocess.run(argv, check=False, cwd=work, capture_output=True, text=True, timeout=300)
    (work / "learn.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise HarnessError(f"scriptgen learn failed ({done.returncode}): {done.stderr[-600:]}")
    doc = json.loads(model.read_text())
    return {f"{p['port']}/{p['transport']}": p["stats"]["sessions"] for p in doc["ports"]}


def start_server(ns: Namespace, argv: list[str], ports: list[int], work: Path,
                 name: str) -> subprocess.Popen[bytes]:
    log = work / f"{name}.log"
    proc = ns.start(argv, cwd=work, log=log)
    try:
        ns.wait_listening(ports, proc, log)
    except RuntimeError as e:
        stop(proc)
        raise HarnessError(f"{name}: {e}") from e
    return proc


def nmap_names(tools: list[Tool], out: Path) -> dict[str, str]:
    for i, tool in enumerate(tools):
        if "-sV" in tool.argv:
            return version_names(out / f"{i:02d}" / "nmap-sV.xml")
    return {}


def run_protocol(protocol: Protocol, work: Path) -> ProtocolReport:
    started = time.monotonic()
    report = ProtocolReport(protocol.name, counted=protocol.counted)
    ns = Namespace.create(protocol.name)
    try:
        server = SETUPS[protocol.name](work)
        real = start_server(ns, server.argv, server.ports, work, "real-server")
        for argv in server.seed:
            seeded = ns.run(argv, timeout=30, cwd=work, env=tool_env(work / "seed-home"))
            if seeded.returncode != 0:
                raise HarnessError(f"seeding the server failed: {argv}: {seeded.output}")
        pcap = work / "train.pcap"
        with capture(ns, pcap, work):
            run_tools(ns, protocol.training, work / "train")
        asked = protocol.test + protocol.unseen
        real_a = run_tools(ns, asked, work / "real-a")
        real_b = run_tools(ns, asked, work / "real-b")
        stop(real)
        kill_all_in(ns)  # daemons' forked children
        ns.wait_closed(server.ports)

        model = work / "model.json"
        report.capture_sessions = learn(pcap, server.ports, model, work)
        serve = start_server(ns, [*SCRIPTGEN, "serve", str(model), "--bind", "127.0.0.1",
                                  "--log-dir", str(work / "serve-logs")],
                             server.ports, work, "scriptgen-serve")
        emulated = run_tools(ns, asked, work / "emulator")
        stop(serve)
    finally:
        kill_all_in(ns)
        ns.delete()
    for i, (tool, a, b, e) in enumerate(zip(asked, real_a, real_b, emulated)):
        runs = report.runs if i < len(protocol.test) else report.unseen
        runs.append(compare(tool.label, " ".join(tool.argv), a, b, e))
    report.nmap_real = nmap_names(protocol.test, work / "real-a")
    report.nmap_emulator = nmap_names(protocol.test, work / "emulator")
    report.seconds = round(time.monotonic() - started, 1)
    return report
