"""Issue 6: capture real tools against a real server, learn, put the emulator in the
server's place, run the tools again and compare what they print (tests/e2e/harness.py).

The assertions check that the harness worked and hold the identical share of each
protocol's test set at a floor just below today's measurement and above half, so a
regression fails; the overall share (issue 6: at least 80 %) is printed at the end.
docs/e2e.md keeps the latest figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.harness import run_protocol
from tests.e2e.protocols import PROTOCOLS
from tests.e2e.report import ProtocolReport

# Share of test tool runs the emulator answers identically, one run below the measured figure
# (in comments): each run captures anew, and a capture's timing can move one tool's result
# (HTTP measured 5/9 and 4/9 on the same code: whether nmap's GET / met the 404 wildcard).
# Every floor is above half, issue 6's bar for each protocol; its overall bar (80 %) is
# printed by the run (conftest.py): 37 to 39 of 46 in four runs.
FLOORS = {
    "ftp": 7 / 9,  # measured 8/9 (7/9 before lftp's cd into a directory never listed got 550)
    "ftp-seen": 8 / 9,  # issue 8: the data-channel tools with training names (and nmap -sV); measured 9/9
    "redis": 9 / 11,  # measured 10/11 (9/11 before the unknown command was answered)
    "http": 8 / 10,  # measured 10/10 (9/10 before curl's GET of a missing page got curl's 404)
    "smtp": 6 / 7,  # measured 7/7
    "smb": 7 / 9,  # measured 9/9 (6/9 or 7/9 before smb2-capabilities and the missing file were right)
    "dns": 5 / 6,  # measured 6/6 in 23 of 27 runs, 5/6 in 4 (dig MX got the TXT record)
}


# Issue 32: with the real server behind the honeypot (`--backend`, harness.py's last phase),
# the share of the test, unseen and new sets' runs identical with the real server's, just
# below the figure measured (in comments). Protocols without a backend phase are absent.
# SMB stays low for the reason docs/e2e.md gives: an SMB session handed over after the
# model's session setup is unknown to the backend (NT_STATUS_USER_SESSION_DELETED).
BACKEND_FLOORS = {
    "ftp": 17 / 19,  # measured 19/19 since the model's data channels go to the backend (14/19 before)
    "redis": 19 / 20,  # measured 20/20 in four runs
    "http": 19 / 20,  # measured 20/20 in three (19/20 before server.py held a handed-over close)
    "smtp": 12 / 13,  # measured 13/13 in four runs
    "smb": 7 / 16,  # measured 9/16 in three runs, 8/16 in one
    "dns": 7 / 11,  # measured 8/11: a query for a name never asked matches the learned A pattern
}


# Issue 32's second exposure (harness.py's phase 6): learned again with the recordings of
# the backend phase, the model alone; the share of the three sets' runs whose answers need
# no secret identical with the real server's, just below the figure measured (in comments).
SECOND_FLOORS = {
    "ftp": 17 / 19,  # measured 19/19 (9/19 before the data connections were recorded)
    "redis": 19 / 20,  # measured 20/20
    "http": 19 / 20,  # measured 20/20
    "smtp": 12 / 13,  # measured 13/13
    "smb": 7 / 12,  # measured 8/12: a model's session id is unknown to samba (docs/e2e.md)
    "dns": 7 / 11,  # measured 8/11: names never asked still match the learned A pattern
}


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def swapped(request: pytest.FixtureRequest, e2e_root: Path,
            e2e_reports: list[ProtocolReport]) -> ProtocolReport:
    protocol = PROTOCOLS[request.param]
    missing = [b for b in protocol.binaries if shutil.which(b) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (tools/test.sh installs them as root)"
        e2e_reports.append(ProtocolReport(protocol.name, skipped=reason))
        pytest.skip(f"{protocol.name}: {reason}")
    work = e2e_root / protocol.name
    work.mkdir()
    report = run_protocol(protocol, work)
    e2e_reports.append(report)
    return report


def test_real_server_answers_every_tool(swapped: ProtocolReport) -> None:
    # A reference run that timed out means the harness, not the emulator, is broken.
    assert swapped.runs
    assert all(r.real_returncode not in (124, 137) for r in swapped.runs), swapped.runs


def test_capture_holds_sessions_on_every_port(swapped: ProtocolReport) -> None:
    assert swapped.capture_sessions
    assert all(n > 0 for n in swapped.capture_sessions.values()), swapped.capture_sessions


def test_nmap_names_the_same_service_on_every_port(swapped: ProtocolReport) -> None:
    assert swapped.nmap_real, "nmap -sV found no port on the real server"
    for port, name in swapped.nmap_real.items():
        assert name.startswith("open"), (port, name)
        assert swapped.nmap_emulator.get(port) == name, (port, name, swapped.nmap_emulator)
        if not swapped.backend_skipped:
            assert swapped.nmap_backend.get(port) == name, (port, name, swapped.nmap_backend)


def test_identical_share_holds_its_floor(swapped: ProtocolReport) -> None:
    floor = FLOORS[swapped.protocol]
    assert swapped.identical_share >= floor, (
        f"{swapped.protocol}: {swapped.identical}/{len(swapped.runs)} identical, floor {floor}")


def test_only_the_honeypot_reaches_its_backend(swapped: ProtocolReport) -> None:
    if swapped.backend_skipped:
        pytest.skip(f"{swapped.protocol}: no backend phase ({swapped.backend_skipped})")
    assert swapped.backend_firewalled, swapped.backend_firewall
    assert swapped.backend_events.get("scriptgen.session.handover"), swapped.backend_events


def test_backend_share_holds_its_floor(swapped: ProtocolReport) -> None:
    if swapped.backend_skipped:
        pytest.skip(f"{swapped.protocol}: no backend phase ({swapped.backend_skipped})")
    floor = BACKEND_FLOORS[swapped.protocol]
    assert swapped.backend_share >= floor, (
        f"{swapped.protocol}: {swapped.backend_identical}/{len(swapped.asked)} identical "
        f"with the backend, floor {floor}")


def test_second_exposure_holds_its_floor(swapped: ProtocolReport) -> None:
    if swapped.backend_skipped:
        pytest.skip(f"{swapped.protocol}: no backend phase ({swapped.backend_skipped})")
    assert swapped.second_recordings, "the backend phase recorded nothing to learn from"
    floor = SECOND_FLOORS[swapped.protocol]
    share = swapped.second_identical / len(swapped.second_plain)
    assert share >= floor, (f"{swapped.protocol}: {swapped.second_identical}/{len(swapped.second_plain)} "
                            f"identical against the model learned again, floor {floor}")
