"""Session plumbing of the e2e suite: a work directory the servers' users can read, the
local accounts, and the report, printed at the end of the run (CI runs pytest without
-s) and written as JSON to $SCRIPTGEN_E2E_REPORT (default: e2e-report.json in the repo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.report import ProtocolReport, render, write_json
from tests.e2e.servers import unix_users

REPORTS = pytest.StashKey[list[ProtocolReport]]()
REPO = Path(__file__).resolve().parents[2]


def report_path() -> Path:
    return Path(os.environ.get("SCRIPTGEN_E2E_REPORT", REPO / "e2e-report.json"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORTS] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    reports = config.stash.get(REPORTS, [])
    if not reports:
        return
    terminalreporter.section("scriptgen e2e: real server vs emulator")
    terminalreporter.write_line(render(reports))
    write_json(reports, report_path())
    terminalreporter.write_line(f"report written to {report_path()}")


@pytest.fixture(scope="session")
def e2e_reports(request: pytest.FixtureRequest) -> list[ProtocolReport]:
    return request.config.stash[REPORTS]


@pytest.fixture(scope="session")
def e2e_root() -> Iterator[Path]:
    """Root can create network namespaces and start the servers; nobody else can."""
    if os.geteuid() != 0:
        pytest.skip("the e2e suite needs root (network namespaces, servers on ports < 1024)")
    probe = f"sg-e2e-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], check=False)
    # Readable by the servers' unprivileged users (vsftpd's local users cd into homes here).
    root = Path(tempfile.mkdtemp(prefix="scriptgen-e2e-"))
    root.chmod(0o755)
    with unix_users(root / "home"):
        yield root
    if os.environ.get("SCRIPTGEN_E2E_KEEP"):
        print(f"e2e work directory kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
