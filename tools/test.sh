#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine: system tools the tests drive (tshark
# for the differential reassembly test, tcpdump; the real servers and client tools of the
# e2e suite in tests/e2e), a virtualenv, the package, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v tshark >/dev/null || need_apt+=(tshark)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
# e2e's backend phase: a firewall rule in the test's namespace (only the honeypot's user
# reaches the real server behind it).
command -v nft >/dev/null || need_apt+=(nftables)
# e2e: a command each package provides, and the package.
for pair in vsftpd:vsftpd lftp:lftp curl:curl redis-server:redis-server redis-cli:redis-tools \
            nginx:nginx exim4:exim4-daemon-light swaks:swaks smbd:samba smbclient:smbclient \
            rpcclient:smbclient nmap:nmap dnsmasq:dnsmasq-base dig:bind9-dnsutils; do
    command -v "${pair%%:*}" >/dev/null || [[ " ${need_apt[*]} " == *" ${pair#*:} "* ]] \
        || need_apt+=("${pair#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
            || echo "warning: installing ${need_apt[*]} failed: the tests that need them will skip" >&2
    else
        echo "warning: ${need_apt[*]} missing and not root: the tests that need them will skip" >&2
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
