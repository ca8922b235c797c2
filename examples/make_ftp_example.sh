#!/usr/bin/env bash
# Make the bundled example capture: a real vsftpd (anonymous, read-only) on
# 127.0.0.1:2121, driven by real clients (curl, lftp, python3 raw sockets),
# recorded by tcpdump on the loopback interface. Nothing leaves 127.0.0.1.
#
#   bash examples/make_ftp_example.sh [OUT.pcap]
#
# Writes OUT.pcap (default examples/ftp/vsftpd-anon.pcap), OUT.cmds.txt (the
# exact client commands, in order, with their exit codes) and, in the same
# directory, README.md (unless a README.md not written by this script exists).
# Needs root (tcpdump, vsftpd). Re-running overwrites the outputs.
set -euo pipefail

CTRL_PORT=2121
DATA_PORT=$((CTRL_PORT - 1))     # active-mode data connections come from here
PASV_MIN=40100
PASV_MAX=40119
HOST=127.0.0.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/ftp/vsftpd-anon.pcap}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
case $out in *.pcap) stem=${out%.pcap} ;; *) stem=$out ;; esac
cmds_out=$stem.cmds.txt
out_dir=$(dirname "$out")

log() { printf '[make_ftp_example] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (tcpdump and vsftpd need it)"

# --- tools ---------------------------------------------------------------
missing=()
command -v vsftpd >/dev/null 2>&1 || [ -x /usr/sbin/vsftpd ] || missing+=(vsftpd)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v lftp >/dev/null 2>&1 || missing+=(lftp)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; } \
        || log "warning: apt-get install failed; continuing with what is there"
fi
PATH=$PATH:/usr/sbin:/sbin
for t in vsftpd tcpdump curl python3 ss setsid timeout; do
    command -v "$t" >/dev/null 2>&1 || die "$t is required"
done
have_lftp=0
command -v lftp >/dev/null 2>&1 && have_lftp=1
getent passwd ftp >/dev/null || die "user 'ftp' is missing (the vsftpd package creates it)"

if ss -Htln "( sport = :$CTRL_PORT )" | grep -q .; then
    die "port $CTRL_PORT is already in use on this machine"
fi

# --- cleanup -------------------------------------------------------------
tmp=$(mktemp -d /tmp/make_ftp_example.XXXXXX)
vsftpd_pgid=
tcpdump_pid=
cleanup() {
    local rc=$?
    if [ -n "$tcpdump_pid" ] && kill -0 "$tcpdump_pid" 2>/dev/null; then
        kill -INT "$tcpdump_pid" 2>/dev/null || true
        wait "$tcpdump_pid" 2>/dev/null || true
    fi
    if [ -n "$vsftpd_pgid" ]; then
        # vsftpd runs in its own session/process group (setsid): the listener
        # and any per-connection children go together.
        kill -TERM -- "-$vsftpd_pgid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$vsftpd_pgid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$vsftpd_pgid" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the server's files --------------------------------------------------
root=$tmp/ftproot
mkdir -p "$root/pub/tools" "$root/pub/docs" "$tmp/empty"
printf 'Welcome to the scriptgen example FTP server.\r\nAnonymous access only.\r\n' >"$root/welcome.msg"
printf 'This is the public area.\nFiles here are small test fixtures.\n' >"$root/pub/readme.txt"
printf 'You are in /pub. Please be nice.\n' >"$root/pub/.message"
printf 'tool version 1.0\n' >"$root/pub/tools/tool-1.0.txt"
printf 'tool version 1.1\nfixes: none\n' >"$root/pub/tools/tool-1.1.txt"
printf '# Frequently asked questions\n\nQ: Is this real?\nA: Yes, it is a real vsftpd.\n' >"$root/pub/docs/faq.md"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 8)' >"$root/pub/tools/blob.bin"
# Fixed owners, modes and times so directory listings are the same every run.
chown -R root:root "$root"
find "$root" -type d -exec chmod 755 {} +
find "$root" -type f -exec chmod 644 {} +
find "$root" -exec touch -h -d '2024-01-15 12:00:00 UTC' {} +

conf=$tmp/vsftpd.conf
cat >"$conf" <<EOF
listen=YES
listen_ipv6=NO
listen_address=$HOST
listen_port=$CTRL_PORT
background=NO
anonymous_enable=YES
anon_root=$root
no_anon_password=NO
local_enable=NO
write_enable=NO
dirmessage_enable=YES
pasv_enable=YES
pasv_min_port=$PASV_MIN
pasv_max_port=$PASV_MAX
port_enable=YES
connect_from_port_20=YES
ftp_data_port=$DATA_PORT
seccomp_sandbox=NO
secure_chroot_dir=$tmp/empty
xferlog_enable=NO
syslog_enable=NO
run_as_launching_user=NO
EOF
chmod 600 "$conf"

# --- start the server ----------------------------------------------------
wait_listen() {  # wait_listen PORT TRIES  (0.1 s per try)
    local i
    for i in $(seq "$2"); do
        ss -Htln "( sport = :$1 )" | grep -q . && return 0
        sleep 0.1
    done
    return 1
}
setsid vsftpd "$conf" >"$tmp/vsftpd.log" 2>&1 &
vsftpd_pid=$!
vsftpd_pgid=$vsftpd_pid
if ! wait_listen $CTRL_PORT 100; then
    cat "$tmp/vsftpd.log" >&2 || true
    die "vsftpd did not start listening on $HOST:$CTRL_PORT"
fi
kill -0 "$vsftpd_pid" 2>/dev/null || die "vsftpd exited: $(cat "$tmp/vsftpd.log")"
[ "$(ps -o pgid= -p "$vsftpd_pid" | tr -d ' ')" = "$vsftpd_pid" ] \
    || die "vsftpd is not its own process group leader"
server_version=$(dpkg-query -W -f '${Version}' vsftpd 2>/dev/null || true)
# vsftpd -v prints its version on file descriptor 0, not 1.
banner_version=$(vsftpd -v 0>&1 2>/dev/null | head -n1 || true)
log "server up: $banner_version (package ${server_version:-unknown})"

# --- start the capture ---------------------------------------------------
pcap_tmp=$tmp/capture.pcap
filter="host $HOST and (tcp port $CTRL_PORT or tcp port $DATA_PORT or tcp portrange $PASV_MIN-$PASV_MAX)"
# -Z root: write the file as root (Debian's tcpdump would otherwise drop to
# user tcpdump, who cannot write into the private temp dir).
tcpdump -i lo -n -s 0 -U -Z root -w "$pcap_tmp" "$filter" 2>"$tmp/tcpdump.log" &
tcpdump_pid=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$tmp/tcpdump.log" 2>/dev/null && break
    kill -0 "$tcpdump_pid" 2>/dev/null || die "tcpdump exited: $(cat "$tmp/tcpdump.log")"
    sleep 0.1
done
grep -q 'listening on' "$tmp/tcpdump.log" || die "tcpdump did not become ready"
sleep 0.5

# --- the clients ---------------------------------------------------------
# ftpraw CMD...: one control connection with python3's socket module; reads
# the banner, then sends each argument as a line (CRLF) and reads the full
# (possibly multi-line) reply. A last argument of "-" closes without QUIT.
mkdir -p "$tmp/bin"
cat >"$tmp/bin/ftpraw" <<PY
#!/usr/bin/env python3
import re, socket, sys
def reply(f):
    first = f.readline()
    if not first:
        return
    m = re.match(rb"(\\d{3})-", first)
    if m:
        end = m.group(1) + b" "
        while True:
            line = f.readline()
            if not line or line.startswith(end):
                break
s = socket.create_connection(("$HOST", $CTRL_PORT), timeout=5)
f = s.makefile("rb")
reply(f)
for cmd in sys.argv[1:]:
    if cmd == "-":
        break
    s.sendall(cmd.encode() + b"\\r\\n")
    reply(f)
s.close()
PY
chmod 755 "$tmp/bin/ftpraw"
PATH=$tmp/bin:$PATH

U=ftp://$HOST:$CTRL_PORT
commands=(
    # directory listings (passive mode, curl's default anonymous login)
    "curl -sS -o /dev/null $U/"
    "curl -sS -o /dev/null $U/pub/"
    "curl -sS -o /dev/null $U/pub/tools/"
    "curl -sS -o /dev/null $U/pub/docs/"
    "curl -sS -o /dev/null --list-only $U/pub/"
    "curl -sS -o /dev/null --list-only $U/pub/tools/"
    "curl -sS -o /dev/null --disable-epsv $U/pub/"
    # downloads
    "curl -sS -o /dev/null $U/welcome.msg"
    "curl -sS -o /dev/null $U/pub/readme.txt"
    "curl -sS -o /dev/null $U/pub/tools/tool-1.0.txt"
    "curl -sS -o /dev/null $U/pub/tools/tool-1.1.txt"
    "curl -sS -o /dev/null $U/pub/docs/faq.md"
    "curl -sS -o /dev/null $U/pub/tools/blob.bin"
    "curl -sS -o /dev/null --disable-epsv $U/pub/readme.txt"
    "curl -sS -o /dev/null -r 0-9 $U/pub/tools/blob.bin"
    # active mode (vsftpd connects back from port $DATA_PORT)
    "curl -sS -o /dev/null --ftp-port $HOST $U/pub/"
    "curl -sS -o /dev/null --ftp-port $HOST $U/pub/readme.txt"
    "curl -sS -o /dev/null --ftp-port $HOST --disable-eprt $U/pub/tools/tool-1.0.txt"
    # explicit anonymous logins with varying e-mail passwords
    "curl -sS -o /dev/null -u anonymous:someone@example.org $U/pub/"
    "curl -sS -o /dev/null -u anonymous:alice@example.org $U/pub/readme.txt"
    "curl -sS -o /dev/null -u ftp:bob@example.net $U/"
    "curl -sS -o /dev/null -u anonymous:carol@example.com $U/pub/tools/tool-1.1.txt"
    "curl -sS -o /dev/null -u anonymous:guest $U/pub/docs/"
    # refused logins and missing files
    "curl -sS -o /dev/null -u admin:admin $U/"
    "curl -sS -o /dev/null -u root:toor $U/pub/"
    "curl -sS -o /dev/null $U/pub/missing.txt"
    "curl -sS -o /dev/null $U/etc/passwd"
    "curl -sS -o /dev/null $U/nosuchdir/"
    # raw sessions (python3 socket)
    "ftpraw 'USER anonymous' 'PASS raw@example.org' SYST FEAT PWD QUIT"
    "ftpraw 'USER anonymous' 'PASS x@example.org' 'CWD pub' PWD 'TYPE I' 'SIZE readme.txt' 'MDTM readme.txt' 'CDUP' QUIT"
    "ftpraw 'USER anonymous' 'PASS y@example.org' 'XYZZY foo' NOOP HELP STAT QUIT"
    "ftpraw SYST 'USER anonymous' 'PASS z@example.org' 'STOR upload.txt' 'MKD newdir' 'DELE pub/readme.txt' QUIT"
    "ftpraw 'USER anonymous' 'PASS v@example.org' 'RETR pub/readme.txt' PASV 'RETR pub/missing.txt' QUIT"
    "ftpraw 'USER admin' 'PASS admin' QUIT"
    "ftpraw 'GET / HTTP/1.0' QUIT"
    "ftpraw 'USER anonymous' 'PASS w@example.org' 'CWD /pub/tools' 'SIZE tool-1.0.txt' 'OPTS UTF8 ON' -"
    "ftpraw -"
)
if [ $have_lftp -eq 1 ]; then
    commands+=(
        "lftp -e 'set xfer:clobber on; ls; cd pub; get readme.txt -o /dev/null; bye' $U"
        "lftp -e 'cd pub/tools; ls; cat tool-1.0.txt; bye' $U"
        "lftp -e 'set ftp:passive-mode off; cd pub; ls; bye' $U"
        "lftp -u anonymous,lftp@example.org -e 'set xfer:clobber on; cls -l pub; get pub/docs/faq.md -o /dev/null; bye' $U"
    )
else
    log "warning: lftp is not available; skipping the lftp sessions"
fi

mkdir -p "$out_dir"
{
    printf '# Client commands run by examples/make_ftp_example.sh, in order, one control\n'
    printf '# connection each, against vsftpd on %s:%s. "# exit=N" is the exit code.\n' "$HOST" "$CTRL_PORT"
    printf '# Standard output is discarded. ftpraw CMD...: python3 socket client (the\n'
    printf '# script writes it); reads the banner, sends each argument as a CRLF line and\n'
    printf '# reads the whole reply; a last "-" closes without QUIT.\n'
} >"$tmp/cmds.txt"
cd "$tmp"
n=0
for c in "${commands[@]}"; do
    n=$((n + 1))
    rc=0
    eval "timeout 20 $c" >/dev/null 2>"$tmp/client.err" || rc=$?
    printf '%s  # exit=%d\n' "$c" "$rc" >>"$tmp/cmds.txt"
    [ "$rc" -ne 124 ] || log "warning: timed out: $c"
    [ "$rc" -eq 0 ] || log "exit $rc: $c: $(tr '\n' ' ' <"$tmp/client.err" | head -c 200)"
    sleep 0.2    # keeps sessions apart in time
done
log "ran $n client sessions"

# --- stop the capture ----------------------------------------------------
sleep 1
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" || true
tcpdump_pid=
cat "$tmp/tcpdump.log" >&2

cp "$pcap_tmp" "$out"
cp "$tmp/cmds.txt" "$cmds_out"
readme=$out_dir/README.md
if [ ! -e "$readme" ] || grep -q 'make_ftp_example.sh' "$readme"; then
    cat >"$readme" <<EOF
# FTP example capture

\`$(basename "$out")\`: a real vsftpd ${banner_version#vsftpd: version } (Debian package ${server_version:-unknown}; anonymous, read-only, passive ports $PASV_MIN-$PASV_MAX, active data from port $DATA_PORT) on $HOST:$CTRL_PORT, captured with tcpdump on \`lo\` while real clients (curl, lftp, python3 raw sockets) ran the $n sessions listed in \`$(basename "$cmds_out")\`.
Regenerate (as root; overwrites these files): \`bash examples/make_ftp_example.sh\`.
EOF
fi
log "wrote $out ($(stat -c %s "$out") bytes), $cmds_out"
