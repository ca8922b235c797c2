"""`scriptgen sessions`: what the capture stage sees in captures, as a table or JSON lines."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections import Counter
from typing import Any, TextIO

from scriptgen.capture import CaptureStats, read_sessions
from scriptgen.cli.common import captures, port, port_ranges, report_damage, write_table
from scriptgen.model import Session, learnable
from scriptgen.params import CaptureParams

__all__ = ["add_parser", "session_json"]

# Drops a user may want to know about, per session (docs/capture.md explains each).
_DROPPED = ("retransmitted", "data_after_fin", "pending_overflow")
_DEFAULTS = CaptureParams()
_LINKTYPE_NAMES = {
    0: "BSD loopback", 1: "Ethernet", 12: "raw IP", 14: "raw IP", 101: "raw IP",
    108: "OpenBSD loopback", 113: "Linux SLL", 228: "raw IPv4", 229: "raw IPv6", 276: "Linux SLL2",
}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "sessions",
        help="list the TCP/UDP sessions reassembled from captures",
        description=(
            "Read pcap/pcapng captures, reassemble TCP streams and UDP exchanges, and print "
            "a table per (transport, server port): sessions, messages, bytes each way, "
            "sessions without a captured handshake (midstream), holes left by lost "
            "packets (gaps) and dropped segments; then what could not be used. Ports where no "
            "session carried data or was accepted (a port scan's refused connections) are one "
            "line per transport, not a row each, unless asked for with --port. "
            "A message is the longest run of bytes one side sent before the other spoke. "
            "The reassembly policy is in docs/capture.md."
        ),
        epilog=(
            "examples:\n"
            "  scriptgen sessions examples/ftp/vsftpd-anon.pcap\n"
            "  scriptgen sessions day1.pcap day2.pcapng --port 445 --port 139\n"
            "  scriptgen sessions capture.pcap --json | jq -r .client\n"
            "\n"
            "exit codes: 0 ok; 3 a capture cannot be read (missing, not a capture); 4 a "
            "capture is truncated or damaged: what was read before the damage is printed, "
            "then a one-line error with the byte offset."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "captures", nargs="+", metavar="CAPTURE",
        help="pcap or pcapng files, read in order as one capture; a directory is every *.pcap "
        "and *.pcapng in it, sorted by name",
    )
    parser.add_argument(
        "--port", "-p", type=port, action="append", dest="ports", metavar="P",
        help="keep only sessions whose server port is P (repeat for several ports)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="write one JSON object per session per line instead of the table: transport, "
        "server_port, client, server (ip:port), midstream, accepted, messages [{from: client|server, "
        "data: base64, ts, gaps: [[offset, length]]}], plus start, end, close, closed_by, anomalies",
    )
    parser.add_argument(
        "--udp-timeout", type=float, default=_DEFAULTS.udp_idle_timeout, metavar="SECONDS",
        help="a UDP session ends after this much capture time without a datagram "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-flows", type=int, default=_DEFAULTS.max_flows, metavar="N",
        help="concurrent flows held in memory; beyond, the least recently active are emitted "
        "early and counted as evicted (default: %(default)s)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.max_flows < 1:
        print("scriptgen: error: --max-flows must be at least 1", file=sys.stderr)
        return 2
    params = CaptureParams(udp_idle_timeout=args.udp_timeout, max_flows=args.max_flows)
    stats = CaptureStats()
    sessions = read_sessions(captures(args.captures), params, ports=args.ports, stats=stats)
    out = sys.stdout
    if args.json:
        for session in sessions:
            out.write(json.dumps(session_json(session), separators=(",", ":")) + "\n")
        out.flush()
    else:
        _print_table(list(sessions), stats, out, fold_silent=not args.ports)
    return report_damage(stats.damage)


def session_json(session: Session) -> dict[str, Any]:
    """The stable JSON form of a session (docs/cli.md)."""
    return {
        "transport": session.transport.value,
        "server_port": session.server_port,
        "client": str(session.client),
        "server": str(session.server),
        "midstream": session.midstream,
        "accepted": session.accepted,
        "start": session.start,
        "end": session.end,
        "close": session.close,
        "closed_by": session.closed_by.value if session.closed_by else None,
        "anomalies": session.anomalies,
        "messages": [
            {
                "from": m.sender.value,
                "data": base64.b64encode(m.data).decode("ascii"),
                "ts": m.timestamp,
                "gaps": [[g.offset, g.length] for g in m.gaps],
            }
            for m in session.messages
        ],
    }


def _print_table(sessions: list[Session], stats: CaptureStats, out: TextIO, fold_silent: bool = True) -> None:
    """One row per (transport, port); with `fold_silent`, the ports the learner leaves out
    (TCP ports where no session carried a byte or was accepted: a port scan's refused
    connections, thousands of them in a capture of a machine being probed; closed UDP
    ports) are one line per transport after the table."""
    rows: dict[tuple[str, int], Counter[str]] = {}
    learned = learnable(sessions)
    for s in sessions:
        row = rows.setdefault((s.transport.value, s.server_port), Counter())
        row["sessions"] += 1
        row["messages"] += len(s.messages)
        for m in s.messages:
            row["client bytes" if m.sender.value == "client" else "server bytes"] += len(m.data)
        row["midstream"] += s.midstream
        row["learned"] += learned(s)
        row["gaps"] += s.gaps
        row["dropped"] += sum(s.anomalies.get(k, 0) for k in _DROPPED)
        row["bogus seq"] += s.anomalies.get("bogus_seq", 0)
    # Folded: the ports the learner does not learn (model.learnable). A TCP port that
    # accepted a connection is open, and learned; a UDP port is left out only when closed.
    silent = {key: row for key, row in rows.items() if fold_silent and not row["learned"]}
    columns = ["sessions", "messages", "client bytes", "server bytes", "midstream", "gaps", "dropped", "bogus seq"]
    table = [["transport", "port", *columns]]
    for (transport, server_port), row in sorted(rows.items()):
        if (transport, server_port) not in silent:
            table.append([transport, str(server_port), *(str(row[c]) for c in columns)])
    if len(table) > 1:
        write_table(table, out)
    elif silent:
        out.write("(no session carried data)\n")
    else:
        out.write("(no TCP or UDP sessions)\n")
    for transport, what in (("tcp", "where no session carried data or was accepted"),
                            ("udp", "closed (never answered; ICMP port unreachable)")):
        keys = [k for k in silent if k[0] == transport]
        if keys:
            count = sum(silent[k]["sessions"] for k in keys)
            out.write(f"{transport}: {len(keys)} port(s) {what}, {count} session(s), not listed: "
                      f"{port_ranges(sorted(p for _, p in keys))}\n")
    links = ", ".join(
        f"{_LINKTYPE_NAMES.get(lt, f'link type {lt}')} {n}" for lt, n in sorted(stats.linktypes.items())
    )
    out.write(f"\n{stats.packets} packets, {stats.bytes} bytes ({links or 'none'})\n")
    notes = _anomalies(sessions, stats)
    out.write("anomalies: " + (", ".join(notes) if notes else "none") + "\n")


def _anomalies(sessions: list[Session], stats: CaptureStats) -> list[str]:
    totals: Counter[str] = Counter()
    for s in sessions:
        totals.update(s.anomalies)
    notes = [f"{name.replace('_', ' ')} {n}" for name, n in sorted(totals.items())]
    d = stats.decode
    for lt, n in sorted(d.unsupported_linktypes.items()):
        notes.append(f"unsupported link type {lt}: {n} frames")
    for label, n in (
        ("non-IP frames", d.non_ip), ("other IP protocols", d.other_protocols),
        ("malformed frames", d.malformed), ("frames cut by snap length", d.snapped),
        ("IP datagrams reassembled from fragments", d.fragments_reassembled),
        ("IP fragments dropped", d.fragments_dropped),
        ("data segments after close", stats.tcp_after_close), ("TCP flows timed out", stats.tcp_timed_out),
        ("TCP flows evicted", stats.tcp_evicted), ("UDP flows evicted", stats.udp_evicted),
        ("LAND packets (source = destination) ignored", stats.land),
    ):
        if n:
            notes.append(f"{label} {n}")
    for damage in stats.damage:
        notes.append(f"truncated record in {damage.path} at byte {damage.offset}")
    return notes
