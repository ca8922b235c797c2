"""The real servers, each run in the foreground from a configuration written into the
run's work directory (never the system one), set up as the corpus captures describe
(/work/shared/corpus/dev/<protocol>/*.meta.json: host names, users, files).

A setup function writes the files and returns a Server: the command to start it, the
ports to wait for, and seed commands that fill it with data before the capture starts."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Two accounts on every server: the training tool set logs in as the first, the test tool
# set as the second, so the emulator is asked about a user it never saw.
TRAIN_USER = ("sgalice", "Wonderland1")
TEST_USER = ("sgcarol", "Carousel7")
USERS = (TRAIN_USER, TEST_USER)

# Every served file gets this modification time, so listings and Last-Modified headers do
# not depend on when the test ran (2024-06-03 12:00 UTC).
FILE_TIME = 1717416000


@dataclass(frozen=True)
class Server:
    argv: list[str]
    ports: list[int]
    seed: list[list[str]] = field(default_factory=list)


def write_tree(root: Path, files: dict[str, str], owner: str | None = None) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (FILE_TIME, FILE_TIME))
        if owner:
            shutil.chown(path, owner)


@contextmanager
def unix_users(home_base: Path) -> Iterator[None]:
    """The local accounts FTP and SMB log in with; removed again afterwards."""
    home_base.mkdir(parents=True, exist_ok=True)
    made = []
    try:
        for name, password in USERS:
            if subprocess.run(["id", name], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "-M", "-N", "-d", str(home_base / name),
                                "-s", "/bin/sh", name], check=True)
                made.append(name)
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def vsftpd(work: Path) -> Server:
    anon_root = work / "ftp-anon"
    write_tree(anon_root, {
        "README": "Welcome to the ftp01 archive.\n",
        "pub/readme.txt": "Release notes live in pub/docs.\n",
        "pub/changes.txt": "1.1: faster uploads\n1.0: first release\n",
        "pub/docs/manual.txt": "See the manual pages.\n",
    })
    for name, _ in USERS:
        write_tree(Path(pwd.getpwnam(name).pw_dir), {
            "notes.txt": f"notes of {name}\n",
            "todo.txt": "water the plants\n",
            "projects/plan.txt": "Q3 plan\n",
        }, owner=name)
    conf = work / "vsftpd.conf"
    conf.write_text("\n".join([
        "listen=YES", "listen_ipv6=NO", "listen_address=127.0.0.1", "background=NO",
        "anonymous_enable=YES", f"anon_root={anon_root}", "no_anon_password=NO",
        "local_enable=YES", "write_enable=NO", "dirmessage_enable=NO",
        "pasv_enable=YES", "pasv_min_port=40000", "pasv_max_port=40049",
        "connect_from_port_20=NO", "seccomp_sandbox=NO",
        "secure_chroot_dir=/var/run/vsftpd/empty", "pam_service_name=vsftpd",
        f"vsftpd_log_file={work / 'vsftpd.log'}", "xferlog_enable=YES", "",
    ]))
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    return Server(["vsftpd", str(conf)], [21])


def redis(work: Path) -> Server:
    (work / "redis").mkdir()
    cli = ["redis-cli", "-h", "127.0.0.1", "-p", "6379"]
    seed = [
        [*cli, "MSET", "app:name", "portal", "app:version", "2.4.1", "app:owner", "ops-team",
         "app:region", "eu-west"],
        [*cli, "HSET", "user:1001", "name", "alice", "role", "admin"],
        [*cli, "HSET", "user:1002", "name", "carol", "role", "viewer"],
        [*cli, "RPUSH", "queue:jobs", "resize", "encode", "notify"],
    ]
    seed += [[*cli, "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all"]
             for name, password in USERS]
    return Server(["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", str(work / "redis")],
                  [6379], seed)


SETUPS: dict[str, Callable[[Path], Server]] = {
    "ftp": vsftpd,
    "redis": redis,
}
