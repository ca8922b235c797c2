"""Deterministic generator of a large, messy classic pcap for the capture benchmark.

    python bench/gen_capture.py OUT.pcap 1000000 [--seed 1] [--concurrent 5000]

or, as a module:  `generate(path, packets, seed=1)` -> a dict of what was written.

The capture: Ethernet / IPv4, microsecond classic pcap (little-endian). About 90% of
the conversations are TCP (handshake, 1-3 request/answer rounds of a few KB in MSS-sized
segments with delayed ACKs, FIN/FIN/ACK), 10% UDP (a DNS-like query/answer exchange).
`concurrent` conversations are open at any time: each packet comes from one of them,
picked at random, and a finished one is replaced by a new one at once, so thousands of
flows interleave. About 2% of the packets are retransmitted data segments (a copy of an
earlier segment, one to three packets of the flow later) and about 2% are data segments
that arrive before the segment preceding them (swapped in pairs). ACK numbers never
acknowledge bytes the capture has not shown yet (no loss, hence no gaps).

The output depends only on (packets, seed, concurrent): a 100k-packet capture is the
first 100k packets of the 1M-packet one with the same seed. The capture ends after
exactly `packets` records, cutting the conversations still open. Checksums are zero.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time

__all__ = ["generate"]

MSS = 1460
_SYN, _FIN, _RST, _PSH, _ACK = 0x02, 0x01, 0x04, 0x08, 0x10
_RETRANSMIT_P = 0.045  # per data segment -> ~2% of all packets
_REORDER_P = 0.14  # per pair of back-to-back segments -> ~2% of all packets
_UDP_SHARE = 0.10
_SERVER_PORTS = (80, 80, 80, 8080, 21, 25, 110, 143)

_PCAP_FILE = struct.Struct("<IHHiIII").pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
_rec = struct.Struct("<IIII").pack
# Ethernet (14s: MACs + type) / IPv4 (8s: both addresses) / TCP
_tcp = struct.Struct("!14sBBHHHBBH8sHHIIBBHHH").pack
_udp = struct.Struct("!14sBBHHHBBH8sHHHH").pack

# A flow's packet: (direction 0 = client->server, flags (-1 = UDP), seq, ack, offset, length)
_Pkt = tuple[int, int, int, int, int, int]


class _Flow:
    __slots__ = ("packets", "i", "eth", "addrs", "ports")

    def __init__(self, packets: list[_Pkt], eth: tuple[bytes, bytes],
                 addrs: tuple[bytes, bytes], ports: tuple[tuple[int, int], tuple[int, int]]) -> None:
        self.packets = packets
        self.i = 0
        self.eth = eth  # per direction: dst MAC + src MAC + ethertype
        self.addrs = addrs  # per direction: src IP + dst IP
        self.ports = ports  # per direction: (src port, dst port)


class _Maker:
    """Builds conversations (lists of packets) from one seeded random stream."""

    def __init__(self, rng: random.Random, pattern_len: int) -> None:
        self.rng = rng
        self.pattern_len = pattern_len
        self.next_id = 0
        self.tcp_flows = 0
        self.udp_flows = 0
        self.retransmitted = 0
        self.reordered = 0

    def _offset(self, n: int) -> int:
        return self.rng.randrange(self.pattern_len - n)

    def new(self) -> _Flow:
        rng = self.rng
        fid = self.next_id
        self.next_id += 1
        client_ip = bytes((10, 1 + (fid >> 16) % 200, (fid >> 8) & 0xFF, fid & 0xFF))
        cport = 1024 + (fid * 7919) % 64000
        if rng.random() < _UDP_SHARE:
            self.udp_flows += 1
            server_ip = bytes((192, 0, 2, 53 + rng.randrange(2)))
            sport = 53
            packets = self._udp()
        else:
            self.tcp_flows += 1
            server_ip = bytes((192, 0, 2, 10 + rng.randrange(8)))
            sport = _SERVER_PORTS[rng.randrange(len(_SERVER_PORTS))]
            packets = self._tcp()
        cmac = b"\x02\x00" + client_ip
        smac = b"\x02\x01" + server_ip
        return _Flow(
            packets,
            (smac + cmac + b"\x08\x00", cmac + smac + b"\x08\x00"),
            (client_ip + server_ip, server_ip + client_ip),
            ((cport, sport), (sport, cport)),
        )

    def _udp(self) -> list[_Pkt]:
        rng = self.rng
        out: list[_Pkt] = []
        for _ in range(1 + rng.randrange(3)):
            q = 28 + rng.randrange(40)
            a = 60 + rng.randrange(400)
            out.append((0, -1, 0, 0, self._offset(q), q))
            out.append((1, -1, 0, 0, self._offset(a), a))
        return out

    def _tcp(self) -> list[_Pkt]:
        rng = self.rng
        isn = [rng.getrandbits(32), rng.getrandbits(32)]  # client, server
        nxt = [(isn[0] + 1) & 0xFFFFFFFF, (isn[1] + 1) & 0xFFFFFFFF]
        out: list[_Pkt] = [
            (0, _SYN, isn[0], 0, 0, 0),
            (1, _SYN | _ACK, isn[1], nxt[0], 0, 0),
            (0, _ACK, nxt[0], nxt[1], 0, 0),
        ]
        data: list[int] = []  # indexes of data segments in `out`
        for _ in range(1 + rng.randrange(3)):
            # request: usually one segment, sometimes a few (an upload, a long header)
            req = 80 + rng.randrange(700) if rng.random() < 0.85 else 1500 + rng.randrange(4000)
            self._message(out, data, nxt, 0, req)
            # answer: a few KB
            self._message(out, data, nxt, 1, 300 + rng.randrange(6000))
        close = len(out)
        closer = 0 if rng.random() < 0.7 else 1
        other = 1 - closer
        out.append((closer, _FIN | _ACK, nxt[closer], nxt[other], 0, 0))
        nxt[closer] = (nxt[closer] + 1) & 0xFFFFFFFF
        out.append((other, _FIN | _ACK, nxt[other], nxt[closer], 0, 0))
        nxt[other] = (nxt[other] + 1) & 0xFFFFFFFF
        out.append((closer, _ACK, nxt[closer], nxt[other], 0, 0))
        # retransmissions: a copy of a data segment, 1-3 packets later (before the close)
        copies = []
        for i in data:
            if rng.random() < _RETRANSMIT_P:
                copies.append((min(i + 2 + rng.randrange(3), close), out[i]))
        copies.sort(key=lambda c: c[0])
        for where, pkt in reversed(copies):  # later positions first keeps indexes valid
            out.insert(where, pkt)
        self.retransmitted += len(copies)
        return out

    def _message(self, out: list[_Pkt], data: list[int], nxt: list[int], side: int, size: int) -> None:
        """`side` sends `size` bytes in MSS segments; the peer ACKs every second segment
        (delayed ACK) and the last one. A pair may arrive swapped (reordering)."""
        rng = self.rng
        peer = 1 - side
        segments: list[_Pkt] = []
        while size > 0:
            n = min(size, MSS)
            size -= n
            flags = _ACK | (_PSH if size == 0 else 0)
            segments.append((side, flags, nxt[side], nxt[peer], self._offset(n), n))
            nxt[side] = (nxt[side] + n) & 0xFFFFFFFF
        pos = 0
        for k in range(0, len(segments), 2):
            pair = segments[k : k + 2]
            if len(pair) == 2 and rng.random() < _REORDER_P:
                pair.reverse()
                self.reordered += 1
            for seg in pair:
                data.append(len(out))
                out.append(seg)
            pos += len(pair)
            ack = (segments[pos - 1][2] + segments[pos - 1][5]) & 0xFFFFFFFF
            out.append((peer, _ACK, nxt[peer], ack, 0, 0))


def generate(path: str, packets: int, seed: int = 1, concurrent: int = 5000) -> dict[str, int]:
    """Write a `packets`-record classic pcap to `path`; return counts of what it holds."""
    if packets < 0 or concurrent < 1:
        raise ValueError("packets must be >= 0 and concurrent >= 1")
    rng = random.Random(seed)
    # Payload bytes are slices of one printable pattern (content does not matter here).
    pattern = bytes(rng.choices(range(32, 127), k=1 << 16))
    view = memoryview(pattern)
    maker = _Maker(rng, len(pattern))
    slots = [maker.new() for _ in range(concurrent)]
    rand = rng.random
    sec, usec = 1_700_000_000, 0
    ipid = 0
    written = 0
    buf = bytearray(_PCAP_FILE)
    with open(path, "wb") as f:
        for _ in range(packets):
            usec += 1 + int(rand() * 800)  # ~400 us between packets: ~2.5k packets/s, so that
            # even 100k packets (40 s) outlast the UDP and fragment timeouts: both captures
            # measure the steady state, not a warm-up
            if usec >= 1_000_000:
                sec += 1
                usec -= 1_000_000
            j = int(rand() * concurrent)
            flow = slots[j]
            side, flags, seq, ack, off, n = flow.packets[flow.i]
            flow.i += 1
            if flow.i == len(flow.packets):
                slots[j] = maker.new()
            ipid = (ipid + 1) & 0xFFFF
            sport, dport = flow.ports[side]
            if flags >= 0:
                total = 40 + n
                buf += _rec(sec, usec, 14 + total, 14 + total)
                buf += _tcp(flow.eth[side], 0x45, 0, total, ipid, 0x4000, 64, 6, 0,
                            flow.addrs[side], sport, dport, seq, ack, 0x50, flags, 65535, 0, 0)
            else:
                total = 28 + n
                buf += _rec(sec, usec, 14 + total, 14 + total)
                buf += _udp(flow.eth[side], 0x45, 0, total, ipid, 0, 64, 17, 0,
                            flow.addrs[side], sport, dport, 8 + n, 0)
            if n:
                buf += view[off : off + n]
            if len(buf) >= 1 << 22:
                f.write(buf)
                written += len(buf)
                buf.clear()
        f.write(buf)
        written += len(buf)
    return {
        "packets": packets,
        "bytes": written,
        "tcp_flows": maker.tcp_flows,
        "udp_flows": maker.udp_flows,
        "retransmitted_segments": maker.retransmitted,
        "reordered_pairs": maker.reordered,
        "concurrent": concurrent,
        "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", help="pcap file to write")
    ap.add_argument("packets", type=int, help="number of packets (records) to write")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--concurrent", type=int, default=5000,
                    help="conversations open at once (default 5000)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = generate(args.output, args.packets, seed=args.seed, concurrent=args.concurrent)
    dt = time.perf_counter() - t0
    # Counts are of conversations started (some are cut by the end of the capture) and
    # of retransmissions/reorderings planned in them (some fall after the cut).
    print(f"{args.output}: {info['packets']} packets, {info['bytes'] / 1e6:.1f} MB in {dt:.1f} s; "
          f"{info['tcp_flows']} TCP + {info['udp_flows']} UDP conversations started, "
          f"{info['retransmitted_segments']} retransmissions, {info['reordered_pairs']} reordered pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
