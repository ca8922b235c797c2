"""The swap, for one protocol, inside its own network namespace:

1. start the real server; capture (tcpdump on lo) while the training tool set runs;
2. run the test and unseen tool sets twice against the real server, uncaptured:
   references A and B;
3. stop the server, `scriptgen learn` the capture, `scriptgen serve` the model on the same
   ports, run both sets against the emulator;
4. compare each emulator run with A after normalise.py (B shows what A varies in by itself);
5. (issue 32) start the real server again on 127.0.0.2, seed it, let only user `nobody` reach
   that address (nftables), `scriptgen serve --user nobody --backend P=127.0.0.2:P --record`
   the model on 127.0.0.1 for each of its ports, run the sets again and compare with A;
6. (issue 32, the second exposure) learn the capture plus what step 5 recorded, and run the
   sets against that model alone, then with the backend (counting the sessions still
   handed over; the runs whose answers hang on a secret, Tool.secret, apart).

The three sets asked are test, unseen and new (protocols.py).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
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
from tests.e2e.servers import BACKEND, HOST, SETUPS

SCRIPTGEN = [sys.executable, "-m", "scriptgen"]
BACKEND_USER = "nobody"  # the honeypot's user: the only one that may reach BACKEND


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


def learn(pcap: Path, ports: list[int], model: Path, work: Path, extra: list[Path] | None = None) -> dict[str, int]:
    """Learn the model (from `pcap` and the `extra` captures); return the sessions it was
    learned from, per port."""
    argv = [*SCRIPTGEN, "learn", str(pcap), *map(str, extra or []), "-o", str(model)]
    for p in ports:
        argv += ["-p", str(p)]
    done = subprocess.run(argv, check=False, cwd=work, capture_output=True, text=True, timeout=300)
    (work / "learn.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise HarnessError(f"scriptgen learn failed ({done.returncode}): {done.stderr[-600:]}")
    doc = json.loads(model.read_text())
    return {f"{p['port']}/{p['transport']}": p["stats"]["sessions"] for p in doc["ports"]}


def start_server(ns: Namespace, argv: list[str], ports: list[int], work: Path,
                 name: str, host: str | None = None) -> subprocess.Popen[bytes]:
    log = work / f"{name}.log"
    proc = ns.start(argv, cwd=work, log=log)
    try:
        ns.wait_listening(ports, proc, log, host=host)
    except RuntimeError as e:
        stop(proc)
        raise HarnessError(f"{name}: {e}") from e
    return proc


def nmap_names(tools: list[Tool], out: Path) -> dict[str, str]:
    for i, tool in enumerate(tools):
        if "-sV" in tool.argv:
            return version_names(out / f"{i:02d}" / "nmap-sV.xml")
    return {}


def seed(ns: Namespace, argv_list: list[list[str]], work: Path) -> None:
    for argv in argv_list:
        seeded = ns.run(argv, timeout=30, cwd=work, env=tool_env(work / "seed-home"))
        if seeded.returncode != 0:
            raise HarnessError(f"seeding the server failed: {argv}: {seeded.output}")


def reachable(ns: Namespace, port: int, work: Path, user: str | None = None) -> str:
    """Connect to BACKEND's `port` (bash's /dev/tcp: no interpreter the user may not read)
    as root, or as `user`: "connected", or why not."""
    argv = ["bash", "-c", f"exec 3<>/dev/tcp/{BACKEND}/{port}"]
    if user:
        gid = pwd.getpwnam(user).pw_gid
        argv = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *argv]
    done = ns.run(argv, timeout=10, cwd=work)
    return "connected" if done.returncode == 0 else done.output.strip() or f"exit {done.returncode}"


def event_counts(log_dir: Path) -> dict[str, int]:
    """How many of each event `scriptgen serve` logged (its JSON lines)."""
    counts: dict[str, int] = {}
    for path in sorted(log_dir.glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                eventid = json.loads(line).get("eventid", "?")
            except json.JSONDecodeError:
                continue
            counts[eventid] = counts.get(eventid, 0) + 1
    return counts


def behind_backend(ns: Namespace, protocol: Protocol, model: Path, pcap: Path, work: Path, asked: list[Tool],
                   report: ProtocolReport) -> tuple[list[ToolRun], tuple[list[ToolRun], list[ToolRun]]]:
    """Phase 5: the real server again, on BACKEND, behind the honeypot. A client cannot use
    it directly: only BACKEND_USER's sockets reach BACKEND (checked both ways first). Then
    phase 6 (second_exposure) while it runs."""
    bwork = work / "backend"
    bwork.mkdir()
    ns.add_address(BACKEND)
    server = SETUPS[protocol.name](bwork, BACKEND)
    real = start_server(ns, server.argv, server.ports, bwork, "backend-server", host=BACKEND)
    try:
        seed(ns, server.seed, bwork)
        try:
            ns.only_user_reaches(BACKEND, BACKEND_USER)
        except RuntimeError as e:
            raise HarnessError(str(e)) from e
        probe = server.ports[0]
        report.backend_firewall = {"root": reachable(ns, probe, bwork),
                                   BACKEND_USER: reachable(ns, probe, bwork, BACKEND_USER)}
        recordings = bwork / "recordings"
        recordings.mkdir()
        os.chown(recordings, pwd.getpwnam(BACKEND_USER).pw_uid, -1)  # written as the honeypot's user
        serve = start_server(ns, [*serve_argv(model, bwork / "serve-logs", backed=True), "--record", str(recordings)],
                             server.ports, bwork, "scriptgen-serve", host=HOST)
        try:
            backed = run_tools(ns, asked, work / "with-backend")
        finally:
            stop(serve)
            report.backend_events = event_counts(bwork / "serve-logs")
        second = second_exposure(ns, server.ports, work, pcap, recordings, asked, report)
        return backed, second
    finally:
        stop(real)


def serve_argv(model: Path, log_dir: Path, backed: bool) -> list[str]:
    """`scriptgen serve` of `model` on HOST as the honeypot's user, with (`backed`) the real
    server on BACKEND behind each of its ports."""
    argv = [*SCRIPTGEN, "serve", str(model), "--bind", HOST, "--user", BACKEND_USER, "--log-dir", str(log_dir)]
    if backed:
        doc = json.loads(model.read_text())
        for transport, port in sorted({(p["transport"], p["port"]) for p in doc["ports"]}):
            argv += ["--backend", f"{transport}/{port}={BACKEND}:{port}"]
    return argv


def second_exposure(ns: Namespace, ports: list[int], work: Path, pcap: Path, recordings: Path,
                    asked: list[Tool], report: ProtocolReport) -> tuple[list[ToolRun], list[ToolRun]]:
    """Phase 6: learn the capture plus the recordings of phase 5; run the sets against that
    model alone, then with the backend behind it, the runs whose answers hang on a secret
    (Tool.secret) in a serve of their own so that their handovers are counted apart."""
    swork = work / "second"
    swork.mkdir()
    model = swork / "model.json"
    recorded = sorted(recordings.glob("*.pcap*"))
    report.second_recordings = len(recorded)
    learn(pcap, ports, model, swork, extra=[recordings] if recorded else [])
    serve = start_server(ns, serve_argv(model, swork / "alone-logs", backed=False), ports, swork, "alone",
                         host=HOST)
    try:
        alone = run_tools(ns, asked, swork / "alone")
    finally:
        stop(serve)
    backed: list[ToolRun | None] = [None] * len(asked)
    for secret in (False, True):
        which = [i for i, tool in enumerate(asked) if tool.secret == secret]
        if not which:
            continue
        logs = swork / f"backed-logs-{'secret' if secret else 'plain'}"
        serve = start_server(ns, serve_argv(model, logs, backed=True), ports, swork, f"backed-{secret}", host=HOST)
        try:
            runs = run_tools(ns, [asked[i] for i in which], swork / f"backed-{'secret' if secret else 'plain'}")
        finally:
            stop(serve)
        counts = event_counts(logs)
        report.second_handovers["secret" if secret else "plain"] = (
            counts.get("scriptgen.session.handover", 0), counts.get("scriptgen.session.connect", 0))
        for i, run in zip(which, runs):
            backed[i] = run
    return alone, [run for run in backed if run is not None]


def run_protocol(protocol: Protocol, work: Path) -> ProtocolReport:
    started = time.monotonic()
    report = ProtocolReport(protocol.name, counted=protocol.counted)
    ns = Namespace.create(protocol.name)
    try:
        server = SETUPS[protocol.name](work, HOST)
        real = start_server(ns, server.argv, server.ports, work, "real-server")
        seed(ns, server.seed, work)
        pcap = work / "train.pcap"
        with capture(ns, pcap, work):
            run_tools(ns, protocol.training, work / "train")
        asked = protocol.test + protocol.unseen + protocol.new
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

        backed: list[ToolRun | None] = [None] * len(asked)
        alone: list[ToolRun | None] = [None] * len(asked)
        second: list[ToolRun | None] = [None] * len(asked)
        report.backend_skipped = protocol.no_backend or (
            "" if shutil.which("nft") else "nft not installed (tools/test.sh installs nftables)")
        if not report.backend_skipped:
            started_backend = time.monotonic()
            first, (alone_runs, second_runs) = behind_backend(ns, protocol, model, pcap, work, asked, report)
            backed, alone, second = list(first), list(alone_runs), list(second_runs)
            report.backend_seconds = round(time.monotonic() - started_backend, 1)
    finally:
        kill_all_in(ns)
        ns.delete()
    sets = ([report.runs] * len(protocol.test) + [report.unseen] * len(protocol.unseen)
            + [report.new] * len(protocol.new))
    for runs, tool, a, b, e, k, x, y in zip(sets, asked, real_a, real_b, emulated, backed, alone, second):
        runs.append(compare(tool.label, " ".join(tool.argv), a, b, e, k, x, y, secret=tool.secret))
    report.nmap_real = nmap_names(protocol.test, work / "real-a")
    report.nmap_emulator = nmap_names(protocol.test, work / "emulator")
    if not report.backend_skipped:
        report.nmap_backend = nmap_names(protocol.test, work / "with-backend")
    report.seconds = round(time.monotonic() - started, 1)
    return report
