"""A throw-away network namespace per protocol: the real server, tcpdump, the client tools
and `scriptgen serve` all run inside it, so they get the standard ports (nmap's SMB
scripts only run on 445/139) and every packet stays on that namespace's 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToolRun:
    """What one client command printed (stdout and stderr interleaved) and how it ended."""

    output: str
    returncode: int
    timed_out: bool
    seconds: float


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, label: str) -> Namespace:
        ns = cls(f"sg-e2e-{label}-{os.getpid()}")
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        return ns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], *, timeout: float, cwd: Path, stdin: str | None = None,
            env: dict[str, str] | None = None) -> ToolRun:
        """Run a command to completion inside the namespace. `timeout -k` kills a hung tool
        (and whatever it spawned) so one stuck client cannot eat the CI budget."""
        started = time.monotonic()
        wrapped = ["timeout", "-k", "5", str(timeout), *argv]
        done = subprocess.run(self.argv(wrapped), check=False, cwd=cwd, input=stdin or "",
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              text=True, errors="replace", timeout=timeout + 30)
        # 124: timeout's SIGTERM; 137: its follow-up SIGKILL.
        timed_out = done.returncode in (124, 137)
        return ToolRun(done.stdout, done.returncode, timed_out, time.monotonic() - started)

    def start(self, argv: list[str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running process (a server, tcpdump) in its own process group."""
        with open(log, "ab") as out:
            return subprocess.Popen(self.argv(argv), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def listening(self, port: int, host: str | None = None) -> bool:
        """Is a TCP socket listening on `port` (of `host`, if given)? Asked of the kernel
        (ss) rather than by connecting, so the probe never shows up in a capture."""
        where = f"sport = :{port}" + (f" and src {host}" if host else "")
        done = subprocess.run(self.argv(["ss", "-Hltn", where]),
                              capture_output=True, text=True, check=False)
        return bool(done.stdout.strip())

    def wait_listening(self, ports: list[int], proc: subprocess.Popen[bytes] | None,
                       log: Path, timeout: float = 30.0, host: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.listening(p, host) for p in ports):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ports {ports} not listening after {timeout:.0f} s: "
                                   f"{tail(log)}")
            time.sleep(0.1)

    def add_address(self, address: str) -> None:
        """Give lo another of 127.0.0.0/8's addresses (reachable already; smbd binds only
        to an interface's own addresses)."""
        subprocess.run(["ip", "-n", self.name, "addr", "add", f"{address}/8", "dev", "lo"],
                       check=True, capture_output=True)

    def only_user_reaches(self, address: str, user: str) -> None:
        """An nftables rule in this namespace: a connection to `address` (TCP or UDP) is
        refused unless the socket opening it is `user`'s. Only new connections are
        filtered, so the server's answers to that user pass."""
        rules = (f"table inet sg_e2e {{\n chain output {{\n"
                 f"  type filter hook output priority 0; policy accept;\n"
                 f"  ip daddr {address} ct state new meta skuid != {user} reject\n }}\n}}\n")
        done = subprocess.run(self.argv(["nft", "-f", "-"]), input=rules, text=True, check=False,
                              capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"nft -f failed: {done.stderr.strip()}")

    def wait_closed(self, ports: list[int], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while any(self.listening(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Signal a process group started by Namespace.start and wait; SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def kill_all_in(ns: Namespace) -> None:
    """Kill whatever still runs in the namespace (daemons that forked away from their
    process group, e.g. smbd's children or exim's daemon), before it is deleted."""
    done = subprocess.run(["ip", "netns", "pids", ns.name], check=False, capture_output=True,
                          text=True)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
