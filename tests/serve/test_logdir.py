"""The log directory: nothing planted in it is followed, chowned or written (issue 35, point 1)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from scriptgen.errors import ServeError
from scriptgen.serve.log import open_sinks
from scriptgen.serve.logdir import check_log_dir, open_log_file
from scriptgen.serve.logwriter import ProcessLog
from tests.serve.cli import CLI
from tests.serve.harness import write_model
from tests.serve.test_process import ROOT

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def _victim(base: Path) -> tuple[Path, bytes]:
    victim = base / "victim"
    victim.write_bytes(b"root's secret\n")
    victim.chmod(0o600)
    return victim, victim.read_bytes()


@pytest.mark.parametrize("name", ["events.jsonl", "events.sqlite", "events.sqlite-wal"])
def test_a_link_planted_for_a_log_file_is_refused_and_its_target_untouched(tmp_path, name):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    victim, before = _victim(tmp_path)
    (logs / name).symlink_to(victim)
    with pytest.raises(ServeError, match="link") as refused:
        open_sinks(str(logs))
    assert "\n" not in str(refused.value)
    assert victim.read_bytes() == before


def test_a_hard_link_to_another_file_is_refused(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    victim, before = _victim(tmp_path)
    os.link(victim, logs / "events.jsonl")
    with pytest.raises(ServeError, match="hard links"):
        open_log_file(str(logs / "events.jsonl"))
    assert victim.read_bytes() == before


def test_a_log_dir_that_is_a_link_or_writable_by_others_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ServeError, match="symbolic link"):
        check_log_dir(str(tmp_path / "link"))
    real.chmod(0o777)
    with pytest.raises(ServeError, match="writable by other users"):
        check_log_dir(str(real))
    assert list(real.iterdir()) == []


def test_a_missing_log_dir_is_created_for_its_writer_only(tmp_path):
    check_log_dir(str(tmp_path / "a" / "logs"))
    info = (tmp_path / "a" / "logs").stat()
    assert stat.S_IMODE(info.st_mode) & 0o027 == 0
    sinks = open_sinks(str(tmp_path / "a" / "logs"))
    for sink in sinks:
        sink.close()
    assert stat.S_IMODE((tmp_path / "a" / "logs" / "events.jsonl").stat().st_mode) & 0o037 == 0


def _nobody_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="scriptgen-logdir-", dir="/tmp"))
    base.chmod(0o755)
    return base


@ROOT_ONLY
def test_serve_as_a_user_refuses_a_log_dir_of_roots_files_and_chowns_nothing(tmp_path):
    base = _nobody_base()
    logs = base / "logs"
    logs.mkdir(mode=0o755)
    victim, before = _victim(logs)
    model = write_model("ftp", tmp_path / "ftp.json")
    err, _ = _refused([str(model), "--port-map", "21:0", "--log-dir", str(logs), "--user", "nobody"])
    assert "owned by uid 0" in err
    assert logs.stat().st_uid == 0 and victim.stat().st_uid == 0
    assert victim.read_bytes() == before
    assert sorted(p.name for p in logs.iterdir()) == ["victim"]


@ROOT_ONLY
def test_serve_as_a_user_never_follows_a_link_the_user_planted(tmp_path):
    nobody = pwd.getpwnam("nobody")
    base = _nobody_base()
    logs = base / "logs"
    logs.mkdir(mode=0o750)
    os.chown(logs, nobody.pw_uid, nobody.pw_gid)
    victim, before = _victim(base)
    (logs / "events.jsonl").symlink_to(victim)  # as if planted by anything running as nobody
    model = write_model("ftp", tmp_path / "ftp.json")
    err, _ = _refused([str(model), "--port-map", "21:0", "--log-dir", str(logs), "--user", "nobody"])
    assert "symbolic link" in err
    assert victim.stat().st_uid == 0 and victim.read_bytes() == before


@ROOT_ONLY
def test_a_process_log_for_a_user_creates_the_dir_as_theirs():
    nobody = pwd.getpwnam("nobody")
    logs = _nobody_base() / "logs"
    log = ProcessLog(str(logs), user="nobody")
    log.close()
    assert logs.stat().st_uid == nobody.pw_uid
    for name in ("events.jsonl", "events.sqlite"):
        assert (logs / name).stat().st_uid == nobody.pw_uid


def _refused(args: list[str]) -> tuple[str, int]:
    """Run `scriptgen serve ARGS`, which must refuse at start in one line: (stderr, exit code)."""
    done = subprocess.run([*CLI, "serve", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "listening on" not in done.stdout, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr, done.returncode
