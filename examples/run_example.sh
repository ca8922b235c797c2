#!/usr/bin/env bash
# The main job on the bundled example, from a fresh machine: set up, learn the FTP capture
# (all sessions but every 5th), serve the model as a honeypot on 127.0.0.1, replay the
# held-out sessions against it over TCP, print the score, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPTURE=examples/ftp/vsftpd-anon.pcap
PORT=${PORT:-12121}
WORK=$(mktemp -d)
SERVER=""
cleanup() {
    if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then kill -TERM "$SERVER"; wait "$SERVER" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x .venv/bin/scriptgen ]; then
    echo "== setting up .venv"
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -e .
fi
SG=.venv/bin/scriptgen

echo "== what the capture holds"
$SG sessions "$CAPTURE" --port 2121

echo "== learn on 4/5 of the sessions, score the held-out 1/5 in process"
$SG evaluate --holdout 5 "$CAPTURE" --port 2121 --save-model "$WORK/ftp.json"

echo "== serve the model on 127.0.0.1:$PORT"
$SG serve "$WORK/ftp.json" --bind 127.0.0.1 --port-map "2121:$PORT" --log-dir "$WORK/logs" &
SERVER=$!
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

echo "== replay the held-out sessions over TCP against the honeypot"
$SG evaluate "$WORK/ftp.json" "$CAPTURE" --holdout 5 --target "127.0.0.1:$PORT"

kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=""
echo "== the honeypot's session log"
$SG sessions-log "$WORK/logs" --limit 5
