"""The e2e report: per protocol and tool run, whether the tool printed the same against the
emulator, and against the honeypot with the real server behind it (`--backend`, issue 32),
as against the real server (after normalise.py); the share of identical runs of the test
set (issue 6's figure; the unseen and new sets are reported apart, see protocols.py) and,
with the backend, of all three sets; what `nmap -sV` names on each port. Rendered as text
for the terminal summary and as JSON."""

from __future__ import annotations

import difflib
import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.e2e.netns import ToolRun
from tests.e2e.normalise import normalise

IDENTICAL = "identical"
DIFFERENT = "different"
TOOL_ERROR = "tool error"


@dataclass
class RunReport:
    label: str
    command: str
    status: str
    diff: str
    real_returncode: int
    emulator_returncode: int
    emulator_seconds: float
    # Lines in which two runs against the real server differ after normalising: a rule
    # missing from normalise.py (or a tool whose output is not deterministic).
    unexplained_variation: str
    # The same tool against the honeypot with the real server behind it ("": not run).
    backend_status: str = ""
    backend_diff: str = ""
    backend_returncode: int | None = None
    backend_seconds: float = 0.0
    # The second exposure (harness.py's phase 6): the model learned again with the backend's
    # recordings, alone and with the backend behind it ("": not run).
    second_status: str = ""
    second_diff: str = ""
    second_backend_status: str = ""
    secret: bool = False  # its answers hang on a secret no capture holds (Tool.secret)


@dataclass
class ProtocolReport:
    protocol: str
    runs: list[RunReport] = field(default_factory=list)  # the test set
    unseen: list[RunReport] = field(default_factory=list)
    new: list[RunReport] = field(default_factory=list)
    counted: bool = True
    nmap_real: dict[str, str] = field(default_factory=dict)
    nmap_emulator: dict[str, str] = field(default_factory=dict)
    capture_sessions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""
    backend_skipped: str = ""  # why the backend phase did not run
    # What a connection to the backend's address got, as root (a client) and as the
    # honeypot's user: "connected" or why not.
    backend_firewall: dict[str, str] = field(default_factory=dict)
    backend_events: dict[str, int] = field(default_factory=dict)  # scriptgen serve's log
    backend_seconds: float = 0.0
    nmap_backend: dict[str, str] = field(default_factory=dict)
    second_recordings: int = 0  # files phase 5 recorded, learned from in phase 6
    # "plain" / "secret" runs: (sessions handed over, sessions) with the relearned model
    second_handovers: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def identical(self) -> int:
        return sum(r.status == IDENTICAL for r in self.runs)

    @property
    def identical_share(self) -> float:
        return self.identical / len(self.runs) if self.runs else 0.0

    @property
    def backend_firewalled(self) -> bool:
        """Only the honeypot's user reached the backend."""
        users = [u for u in self.backend_firewall if u != "root"]
        return (bool(users) and self.backend_firewall.get("root", "connected") != "connected"
                and all(self.backend_firewall[u] == "connected" for u in users))

    @property
    def asked(self) -> list[RunReport]:
        return self.runs + self.unseen + self.new

    @property
    def backend_identical(self) -> int:
        """Of all three sets, the runs identical with the real server behind the honeypot."""
        return sum(r.backend_status == IDENTICAL for r in self.asked)

    @property
    def backend_share(self) -> float:
        return self.backend_identical / len(self.asked) if self.asked else 0.0

    @property
    def second_plain(self) -> list[RunReport]:
        """The runs of the second exposure whose answers need no secret."""
        return [r for r in self.asked if r.second_status and not r.secret]

    @property
    def second_identical(self) -> int:
        return sum(r.second_status == IDENTICAL for r in self.second_plain)


def unified_diff(before: str, after: str, names: tuple[str, str]) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True), *names))


def judge(real_a: ToolRun, other: ToolRun, name: str) -> tuple[str, str]:
    """A tool error is a timeout or a failing exit the real server did not cause (a nonzero
    exit the real server also gets, e.g. a refused login, is the tool's normal answer).
    Returns the status and, unless identical, the diff from A."""
    a, o = normalise(real_a.output), normalise(other.output)
    if other.timed_out or (other.returncode != 0 and other.returncode != real_a.returncode):
        status = TOOL_ERROR
    elif a == o and real_a.returncode == other.returncode:
        status = IDENTICAL
    else:
        status = DIFFERENT
    diff = "" if status == IDENTICAL else unified_diff(a, o, ("real server", name))
    if status != IDENTICAL and real_a.returncode != other.returncode:
        diff = f"exit status: real {real_a.returncode}, {name} {other.returncode}\n" + diff
    return status, diff


def compare(label: str, command: str, real_a: ToolRun, real_b: ToolRun, emulated: ToolRun,
            backed: ToolRun | None = None, alone: ToolRun | None = None, second: ToolRun | None = None,
            secret: bool = False) -> RunReport:
    """One tool: the emulator's run and (if any) the runs with the backend, and against the
    model learned again, alone and with the backend, judged against A."""
    status, diff = judge(real_a, emulated, "emulator")
    a, b = normalise(real_a.output), normalise(real_b.output)
    run = RunReport(label, command, status, diff, real_a.returncode, emulated.returncode,
                    round(emulated.seconds, 2),
                    unified_diff(a, b, ("real server, run A", "real server, run B")))
    if backed is not None:
        run.backend_status, run.backend_diff = judge(real_a, backed, "with backend")
        run.backend_returncode = backed.returncode
        run.backend_seconds = round(backed.seconds, 2)
    if alone is not None:
        run.second_status, run.second_diff = judge(real_a, alone, "relearned model")
    if second is not None:
        run.second_backend_status = judge(real_a, second, "relearned with backend")[0]
    run.secret = secret
    return run


def version_names(xml_path: Path) -> dict[str, str]:
    """What `nmap -sV -oX` names on each port: service, product, version, extra info."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return {}
    names = {}
    for port in root.iter("port"):
        key = f"{port.get('portid')}/{port.get('protocol')}"
        state = port.find("state")
        service = port.find("service")
        parts = [state.get("state", "") if state is not None else ""]
        if service is not None:
            parts += [service.get(a, "") for a in ("name", "product", "version", "extrainfo")]
        names[key] = " ".join(p for p in parts if p)
    return names


def share(runs: list[RunReport], key: str = "status") -> str:
    return f"{sum(getattr(r, key) == IDENTICAL for r in runs)}/{len(runs)}"


def render(reports: list[ProtocolReport]) -> str:
    lines = []
    for rep in reports:
        if rep.skipped:
            lines.append(f"{rep.protocol}: skipped ({rep.skipped})")
            continue
        lines.append(f"{rep.protocol}: {rep.identical}/{len(rep.runs)} identical "
                     f"({rep.identical_share:.0%}) in {rep.seconds:.0f} s; "
                     f"sessions captured {rep.capture_sessions}")
        if rep.backend_skipped:
            lines.append(f"  with backend: not run ({rep.backend_skipped})")
        else:
            sets = ", ".join(f"{name} {share(runs, 'backend_status')}"
                             for name, runs in (("test", rep.runs), ("unseen", rep.unseen),
                                                ("new", rep.new)) if runs)
            lines.append(f"  with backend: {rep.backend_identical}/{len(rep.asked)} identical "
                         f"({rep.backend_share:.0%}; {sets}) in {rep.backend_seconds:.0f} s; "
                         + ("firewall holds; " if rep.backend_firewalled
                            else f"firewall FAILED {rep.backend_firewall}; ") +
                         f"handovers {rep.backend_events.get('scriptgen.session.handover', 0)} "
                         f"of {rep.backend_events.get('scriptgen.session.connect', 0)} sessions; "
                         f"backend failures {rep.backend_events.get('scriptgen.session.backend', 0)}")
        if rep.second_handovers:
            plain, secret = rep.second_handovers.get("plain", (0, 0)), rep.second_handovers.get("secret", (0, 0))
            lines.append(f"  second exposure ({rep.second_recordings} recordings learned): alone "
                         f"{rep.second_identical}/{len(rep.second_plain)} runs needing no secret identical; "
                         f"with backend {share(rep.asked, 'second_backend_status')} identical, handovers "
                         f"{plain[0]} of {plain[1]} sessions" + (f" (secret runs: {secret[0]} of {secret[1]})"
                                                                  if secret[1] else ""))
        for port in sorted(set(rep.nmap_real) | set(rep.nmap_emulator)):
            lines.append(f"  nmap -sV {port}: real '{rep.nmap_real.get(port, '-')}', "
                         f"emulator '{rep.nmap_emulator.get(port, '-')}'"
                         + ("" if rep.backend_skipped
                            else f", with backend '{rep.nmap_backend.get(port, '-')}'"))
        lines.append(f"  {'emulator':10} {'backend':10} {'relearned':10} {'+backend':10} tool")
        for heading, runs in (("", rep.runs), ("unseen (not counted)", rep.unseen),
                              ("new (not counted)", rep.new)):
            if heading and runs:
                lines.append(f"  {heading}: emulator {share(runs)} identical")
            for run in runs:
                lines.append(f"  {run.status:10} {run.backend_status or '-':10} {run.second_status or '-':10} "
                             f"{run.second_backend_status or '-':10} {run.label}" + (" (secret)" if run.secret else ""))
                if run.unexplained_variation:
                    lines.append("    (real server varies by itself in lines normalise.py "
                                 "does not cover)")
    totals = overall(reports)
    if totals["runs"]:
        lines.append(f"overall ({', '.join(totals['protocols'])}): {totals['identical']}/"
                     f"{totals['runs']} identical ({totals['identical_share']:.0%})")
    if totals["backend_runs"]:
        lines.append(f"with backend ({', '.join(totals['backend_protocols'])}; test, unseen "
                     f"and new sets): {totals['backend_identical']}/{totals['backend_runs']} "
                     f"identical ({totals['backend_share']:.0%})")
    if totals["second_runs"]:
        lines.append(f"second exposure: alone {totals['second_identical']}/{totals['second_runs']} "
                     f"runs needing no secret identical ({totals['second_share']:.0%}); with backend "
                     f"{totals['second_handed']}/{totals['second_sessions']} sessions handed over "
                     f"({totals['second_handed_share']:.0%}; secret runs apart)")
    return "\n".join(lines)


def overall(reports: list[ProtocolReport]) -> dict:
    """Issue 6's figure: the test sets of the counted protocols; and issue 32's: all three
    sets of the counted protocols that ran with a backend."""
    counted = [r for r in reports if r.counted and not r.skipped]
    runs = sum(len(r.runs) for r in counted)
    identical = sum(r.identical for r in counted)
    backed = [r for r in counted if not r.backend_skipped]
    backend_runs = sum(len(r.asked) for r in backed)
    backend_identical = sum(r.backend_identical for r in backed)
    return {"protocols": [r.protocol for r in counted], "runs": runs, "identical": identical,
            "identical_share": round(identical / runs, 3) if runs else None,
            "backend_protocols": [r.protocol for r in backed], "backend_runs": backend_runs,
            "backend_identical": backend_identical,
            "backend_share": round(backend_identical / backend_runs, 3) if backend_runs else None,
            **_second_totals(backed)}


def _second_totals(reports: list[ProtocolReport]) -> dict:
    """Issue 32's second exposure: the runs needing no secret identical against the
    relearned model alone; the sessions (of those runs) still handed over with the backend."""
    runs = sum(len(r.second_plain) for r in reports)
    identical = sum(r.second_identical for r in reports)
    handed = sum(r.second_handovers.get("plain", (0, 0))[0] for r in reports)
    sessions = sum(r.second_handovers.get("plain", (0, 0))[1] for r in reports)
    return {"second_runs": runs, "second_identical": identical,
            "second_share": round(identical / runs, 3) if runs else None,
            "second_handed": handed, "second_sessions": sessions,
            "second_handed_share": round(handed / sessions, 3) if sessions else None}


def write_json(reports: list[ProtocolReport], path: Path) -> None:
    doc = {
        "overall": overall(reports),
        "protocols": [{**asdict(r), "identical_share": round(r.identical_share, 3),
                       "backend_share": round(r.backend_share, 3)} for r in reports],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
