"""The real servers, each run in the foreground from a configuration written into the
run's work directory (never the system one), set up as the corpus captures describe
(/work/shared/corpus/dev/<protocol>/*.meta.json: host names, users, files).

A setup function writes the files and returns a Server: the command to start it, the
ports to wait for, and seed commands that fill it with data before the capture starts. It
listens on `address`: 127.0.0.1 for the capture and the references, BACKEND (127.0.0.2) when
it runs again behind the honeypot (harness.py's third phase)."""

from __future__ import annotations

import base64
import hashlib
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

HOST = "127.0.0.1"
BACKEND = "127.0.0.2"  # the real server behind `scriptgen serve --backend`


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
            if subprocess.run(["id", name], check=False, capture_output=True).returncode != 0:
                subprocess.run(["useradd", "-M", "-N", "-d", str(home_base / name),
                                "-s", "/bin/sh", name], check=True)
                made.append(name)
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def vsftpd(work: Path, address: str = HOST) -> Server:
    anon_root = work / "ftp-anon"
    write_tree(anon_root, {
        "README": "Welcome to the ftp01 archive.\n",
        "pub/readme.txt": "Release notes live in pub/docs.\n",
        "pub/changes.txt": "1.1: faster uploads\n1.0: first release\n",
        "pub/docs/manual.txt": "See the manual pages.\n",
    })
    for name, _ in USERS:
        home = Path(pwd.getpwnam(name).pw_dir)
        shutil.rmtree(home, ignore_errors=True)  # what a run uploaded is gone for the next server
        write_tree(home, {
            "notes.txt": f"notes of {name}\n",
            "todo.txt": "water the plants\n",
            "projects/plan.txt": "Q3 plan\n",
            # the new set's upload goes here, two levels down: no other tool lists inbox/,
            # whose entry in the home's listing keeps its time when drafts/ gets a file
            "inbox/drafts/outline.txt": "1. intro\n",
        }, owner=name)
    conf = work / "vsftpd.conf"
    conf.write_text("\n".join([
        "listen=YES", "listen_ipv6=NO", f"listen_address={address}", "background=NO",
        "anonymous_enable=YES", f"anon_root={anon_root}", "no_anon_password=NO",
        "local_enable=YES", "write_enable=YES", "dirmessage_enable=NO",
        "pasv_enable=YES", "pasv_min_port=40000", "pasv_max_port=40049",
        "connect_from_port_20=NO", "seccomp_sandbox=NO",
        "secure_chroot_dir=/var/run/vsftpd/empty", "pam_service_name=vsftpd",
        f"vsftpd_log_file={work / 'vsftpd.log'}", "xferlog_enable=YES", "",
    ]))
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    return Server(["vsftpd", str(conf)], [21])


def redis(work: Path, address: str = HOST) -> Server:
    (work / "redis").mkdir()
    cli = ["redis-cli", "-h", address, "-p", "6379"]
    seed = [
        [*cli, "MSET", "app:name", "portal", "app:version", "2.4.1", "app:owner", "ops-team",
         "app:region", "eu-west"],
        [*cli, "HSET", "user:1001", "name", "alice", "role", "admin"],
        [*cli, "HSET", "user:1002", "name", "carol", "role", "viewer"],
        [*cli, "RPUSH", "queue:jobs", "resize", "encode", "notify"],
    ]
    seed += [[*cli, "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all"]
             for name, password in USERS]
    return Server(["redis-server", "--port", "6379", "--bind", address, "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", str(work / "redis")],
                  [6379], seed)


def nginx(work: Path, address: str = HOST) -> Server:
    root = work / "www"
    write_tree(root, {
        "index.html": "<html><head><title>www01 portal</title></head><body>Welcome</body></html>\n",
        "about.html": "<html><head><title>About us</title></head><body>About</body></html>\n",
        "contact.html": "<html><head><title>Contact</title></head><body>Mail us</body></html>\n",
        "files/prices.csv": "item,price\nwidget,4.20\n",
        "files/report.txt": "quarterly report\n",
        "admin/index.html": "<html><head><title>Admin</title></head><body>Panel</body></html>\n",
        "robots.txt": "User-agent: *\nDisallow: /admin/\n",
    })
    # RFC 2307 {SHA} entries: nginx reads them natively, no htpasswd tool needed.
    (work / "htpasswd").write_text("".join(
        f"{name}:{{SHA}}{base64.b64encode(hashlib.sha1(pw.encode()).digest()).decode()}\n"
        for name, pw in USERS))
    temp = work / "nginx-temp"
    temp.mkdir()
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log {work}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {address}:80;
        server_name www01;
        root {root};
        location /files/ {{ autoindex on; }}
        location /admin/ {{
            auth_basic "www01 admin";
            auth_basic_user_file {work}/htpasswd;
        }}
        location = /old-page {{ return 301 /about.html; }}
    }}
}}
""")
    return Server(["nginx", "-e", str(work / "nginx-error.log"), "-c", str(conf)], [80])


def exim(work: Path, address: str = HOST) -> Server:
    """Exim from its own configuration (-C, allowed to root): local users of e2e.test are
    accepted and queued, never delivered; anything else is refused as relaying."""
    spool = work / "exim"
    (spool / "log").mkdir(parents=True)
    shutil.chown(spool, "Debian-exim", "Debian-exim")
    shutil.chown(spool / "log", "Debian-exim", "Debian-exim")
    conf = work / "exim.conf"
    conf.write_text(f"""
primary_hostname = mail01.e2e.test
qualify_domain = e2e.test
domainlist local_domains = e2e.test : mail01.e2e.test
daemon_smtp_ports = 25
local_interfaces = {address}
spool_directory = {spool}
log_file_path = {spool}/log/%slog
pid_file_path = {spool}/exim.pid
exim_user = Debian-exim
exim_group = Debian-exim
queue_only = true
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl
acl_check_rcpt:
  deny    message = relay not permitted
          domains = !+local_domains
  require verify = recipient
  accept

acl_check_data:
  accept

begin routers
local_user:
  driver = accept
  domains = +local_domains
  check_local_user
  transport = discard

begin transports
discard:
  driver = appendfile
  file = /dev/null
""")
    return Server(["exim4", "-C", str(conf), "-bdf"], [25])


def samba(work: Path, address: str = HOST) -> Server:
    """smbd alone (no nmbd, no winbind) for ports 445 and 139, with its own state
    directories and a tdbsam user database holding the two accounts."""
    dirs = {name: work / "samba" / name
            for name in ("private", "lock", "state", "cache", "run", "ncalrpc", "log")}
    for path in dirs.values():
        path.mkdir(parents=True)
    share = work / "shares"
    write_tree(share / "public", {"readme.txt": "Public files of filesrv01.\n",
                                  "hours.txt": "Mon-Fri 9-17\n", "forms/leave.txt": "Form A\n"})
    write_tree(share / "docs", {"handbook.txt": "Staff handbook\n", "plan.txt": "Q3 plan\n"})
    os.utime(share, (FILE_TIME, FILE_TIME))  # smbclient's ls shows it as ".."
    conf = work / "smb.conf"
    conf.write_text(f"""
[global]
   netbios name = FILESRV01
   workgroup = E2E
   server string = filesrv01 file server
   server role = standalone server
   interfaces = {'lo' if address == HOST else address}
   bind interfaces only = yes
   smb ports = 445 139
   private dir = {dirs['private']}
   lock directory = {dirs['lock']}
   state directory = {dirs['state']}
   cache directory = {dirs['cache']}
   pid directory = {dirs['run']}
   ncalrpc dir = {dirs['ncalrpc']}
   log file = {dirs['log']}/log.%m
   passdb backend = tdbsam:{dirs['private']}/passdb.tdb
   map to guest = bad user
   # As the corpus server: SMB1 on, so smb-os-discovery and smb-security-mode have answers.
   server min protocol = NT1
   load printers = no
   printing = bsd
   printcap name = /dev/null
   disable spoolss = yes

[public]
   path = {share / 'public'}
   guest ok = yes
   read only = yes

[docs]
   path = {share / 'docs'}
   valid users = {' '.join(name for name, _ in USERS)}
   read only = yes
""")
    for name, password in USERS:
        subprocess.run(["smbpasswd", "-c", str(conf), "-a", "-s", name],
                       input=f"{password}\n{password}\n", text=True, check=True,
                       capture_output=True)
    return Server(["smbd", "--foreground", "--no-process-group", "--debug-stdout",
                   f"--configfile={conf}"], [445, 139])


def dnsmasq(work: Path, address: str = HOST) -> Server:
    """dnsmasq answering for corpus.test from a hosts file and records of its own, with no
    upstream (a name outside it is refused, not forwarded), over UDP and TCP on port 53."""
    hosts = work / "dns-hosts"
    hosts.write_text("10.20.0.10 www.corpus.test\n10.20.0.11 mail01.corpus.test\n"
                     "10.20.0.12 files.corpus.test\n10.20.0.13 intranet.corpus.test\n")
    return Server(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
                   "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}", f"--listen-address={address}",
                   "--bind-interfaces", "--port=53", "--local=/corpus.test/", "--domain=corpus.test",
                   "--mx-host=corpus.test,mail01.corpus.test,10", "--txt-record=corpus.test,v=spf1 mx -all",
                   "--srv-host=_ldap._tcp.corpus.test,intranet.corpus.test,389"], [53])


SETUPS: dict[str, Callable[[Path, str], Server]] = {
    "ftp": vsftpd,
    "ftp-seen": vsftpd,  # issue 8: the data-channel tools with training names
    "redis": redis,
    "http": nginx,
    "smtp": exim,
    "smb": samba,
    "dns": dnsmasq,
}
