"""The e2e report: per protocol and tool run, whether the tool printed the same against the
emulator as against the real server (after normalise.py), the share of identical runs of
the test set (issue 6's figure; the unseen set is reported apart, see protocols.py), and
what `nmap -sV` names on each port for both. Rendered as text for the terminal summary
and as JSON."""

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


@dataclass
class ProtocolReport:
    protocol: str
    runs: list[RunReport] = field(default_factory=list)  # the test set
    unseen: list[RunReport] = field(default_factory=list)
    counted: bool = True
    nmap_real: dict[str, str] = field(default_factory=dict)
    nmap_emulator: dict[str, str] = field(default_factory=dict)
    capture_sessions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""

    @property
    def identical(self) -> int:
        return sum(r.status == IDENTICAL for r in self.runs)

    @property
    def identical_share(self) -> float:
        return self.identical / len(self.runs) if self.runs else 0.0


def unified_diff(before: str, after: str, names: tuple[str, str]) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True), *names))


def compare(label: str, command: str, real_a: ToolRun, real_b: ToolRun,
            emulated: ToolRun) -> RunReport:
    """A tool error is a timeout or a failing exit the real server did not cause (a nonzero
    exit the real server also gets, e.g. a refused login, is the tool's normal answer)."""
    a, b, e = normalise(real_a.output), normalise(real_b.output), normalise(emulated.output)
    if emulated.timed_out or (emulated.returncode != 0
                              and emulated.returncode != real_a.returncode):
        status = TOOL_ERROR
    elif a == e and real_a.returncode == emulated.returncode:
        status = IDENTICAL
    else:
        status = DIFFERENT
    diff = "" if status == IDENTICAL else unified_diff(a, e, ("real server", "emulator"))
    if status != IDENTICAL and real_a.returncode != emulated.returncode:
        diff = f"exit status: real {real_a.returncode}, emulator {emulated.returncode}\n" + diff
    return RunReport(label, command, status, diff, real_a.returncode, emulated.returncode,
                     round(emulated.seconds, 2),
                     unified_diff(a, b, ("real server, run A", "real server, run B")))


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


def render(reports: list[ProtocolReport]) -> str:
    lines = []
    for rep in reports:
        if rep.skipped:
            lines.append(f"{rep.protocol}: skipped ({rep.skipped})")
            continue
        lines.append(f"{rep.protocol}: {rep.identical}/{len(rep.runs)} identical "
                     f"({rep.identical_share:.0%}) in {rep.seconds:.0f} s; "
                     f"sessions captured {rep.capture_sessions}")
        for port in sorted(set(rep.nmap_real) | set(rep.nmap_emulator)):
            lines.append(f"  nmap -sV {port}: real '{rep.nmap_real.get(port, '-')}', "
                         f"emulator '{rep.nmap_emulator.get(port, '-')}'")
        for heading, runs in (("", rep.runs), ("unseen (not counted): ", rep.unseen)):
            if heading and runs:
                same = sum(r.status == IDENTICAL for r in runs)
                lines.append(f"  {heading}{same}/{len(runs)} identical")
            for run in runs:
                lines.append(f"  {run.status:10} {run.label}")
                if run.unexplained_variation:
                    lines.append("    (real server varies by itself in lines normalise.py "
                                 "does not cover)")
    totals = overall(reports)
    if totals["runs"]:
        lines.append(f"overall ({', '.join(totals['protocols'])}): {totals['identical']}/"
                     f"{totals['runs']} identical ({totals['identical_share']:.0%})")
    return "\n".join(lines)


def overall(reports: list[ProtocolReport]) -> dict:
    """Issue 6's figure: the test sets of the counted protocols."""
    counted = [r for r in reports if r.counted and not r.skipped]
    runs = sum(len(r.runs) for r in counted)
    identical = sum(r.identical for r in counted)
    return {"protocols": [r.protocol for r in counted], "runs": runs, "identical": identical,
            "identical_share": round(identical / runs, 3) if runs else None}


def write_json(reports: list[ProtocolReport], path: Path) -> None:
    doc = {
        "overall": overall(reports),
        "protocols": [{**asdict(r), "identical_share": round(r.identical_share, 3)}
                      for r in reports],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
