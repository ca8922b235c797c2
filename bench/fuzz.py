"""Fuzz the three inputs an attacker controls: capture files, model files, and the bytes
a client sends to the emulator. A script to run by hand (not in CI).

    .venv/bin/python bench/fuzz.py                       # full size: 10^6 / 10^5 / 10^5
    .venv/bin/python bench/fuzz.py --captures 20000 --models 2000 --streams 2000   # a smoke run
    .venv/bin/python bench/fuzz.py --seconds 1800        # stop taking new work after 30 min
    .venv/bin/python bench/fuzz.py --resume              # go on from out/summary.json
    .venv/bin/python bench/fuzz.py --replay capture:1234 # rebuild one input, run it here

Kinds of input, each generated from (--seed, kind, index) alone, so any input can be
rebuilt (`--replay`) and a run continued (`--resume`):

 1. capture: bytes given to `scriptgen.capture.read_sessions` (a file on tmpfs: the reader
    takes paths, not file objects). Windows of 300 B-100 KB of the pcaps of
    /work/shared/corpus/{dev,public} (what exists), packets made with tests/capture/craft.py
    (conversations, UDP, ICMP unreachables, fragments, LAND packets, five link types, pcap
    and pcapng), and random bytes; then 0-4 mutations: bit flips, interesting bytes,
    truncation, pcap global/record header fields (caplen huge, 0, off by one), pcapng block
    lengths/types/interface ids/options, IP/TCP/UDP header fields, LAND rewrites, splices.
 2. model: bytes given to `scriptgen.modelfile.loads`, then `Machine(port_doc(port))` for
    each port and a short emulator run on its first sample request. Seeds are models
    learned at start from dev captures (all sessions, and the first 3 / 8 of each port,
    which load 10-50x faster), or the *.json of --model-dir. JSON-level mutations
    (numbers huge/negative/float/NaN, keys deleted/duplicated, ids swapped or out of range,
    deep nesting, long strings, random or invalid base64, types changed, lists duplicated,
    versions changed) and byte-level ones (flips, truncation, insertion, UTF-16, BOM).
 3. stream: a client against a learned model's emulator (Emulator(machine, now),
    receive_data / next_event as every driver does, Listen / Channel answered): sample
    requests of the current state and of the model, mutated, pipelined, long (up to past
    max_request_bytes), random bytes; delivered whole, in random chunks or trickled a byte
    at a time, with gaps around match_gap / idle_gap, EOF in the middle or at the end.

What counts: an exception outside scriptgen's own tree (scriptgen.errors.ScriptgenError)
is a CRASH; an input taking over 1 s (timed twice, the faster counts, so that a busy
machine does not make one) is a SLOW; a driver loop that makes no progress is a HANG
(counted with crashes). Each is saved under --out (crashes/KIND-INDEX.{bin,txt}) with its
traceback and the command that replays it. Workers (--workers, default 2) run niced with
a 4 GB address-space cap (a MemoryError is a crash); their peak RSS (getrusage) is
reported. Exit status 1 if any crash, hang or slow input was found.
"""

from __future__ import annotations

import argparse
import base64
import collections
import glob
import json
import math
import multiprocessing
import os
import random
import re
import resource
import signal
import struct
import sys
import time
import traceback
from typing import Any

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, ROOT)

from scriptgen.errors import ScriptgenError  # noqa: E402

KINDS = ("capture", "model", "stream")
CORPUS = "/work/shared/corpus"
SLOW_S = 1.0
HANG_S = 60.0  # an input still running after this is stopped (SIGALRM) and reported
CHUNK = {"capture": 1000, "model": 100, "stream": 200}
SEED_CAPTURES = ["ftp/ftp_dev_tools", "http/http_dev_tools", "dns/dns_dev_tools", "smtp/smtp_dev_tools",
                 "pop3/pop3_dev_tools", "imap/imap_dev_tools", "redis/redis_dev_nmap", "memcached/memcached_dev_nmap",
                 "modbus/modbus_dev_tools", "smb/smb_dev_rpc", "ftp/ftp_dev_messy-concurrent-loss"]


class Hang(BaseException):
    """Raised by the alarm in an input that runs for HANG_S, or by a driver loop that makes
    no progress: a BaseException so that no `except Exception` in the code swallows it."""


class GenError(Exception):
    """Building an input failed: a bug of this script, counted apart from scriptgen's."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang(f"still running after {HANG_S:.0f} s")


# -- the corpus, read once per worker --------------------------------------------------------

W: dict[str, Any] = {}  # worker state


def _split_pcap(data: bytes) -> tuple[bytes, list[bytes], str] | None:
    """(file header, records, format) of a pcap or pcapng file, or None."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = "<" if magic[0] in (0xD4, 0x4D) else ">"
        records, pos = [], 24
        while pos + 16 <= len(data):
            caplen = struct.unpack_from(e + "I", data, pos + 8)[0]
            if pos + 16 + caplen > len(data):
                break
            records.append(data[pos : pos + 16 + caplen])
            pos += 16 + caplen
        return data[:24], records, "pcap"
    if magic == b"\x0a\x0d\x0d\x0a":
        e = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        head, records, pos = b"", [], 0
        while pos + 12 <= len(data):
            btype, blen = struct.unpack_from(e + "II", data, pos)
            if blen < 12 or pos + blen > len(data):
                break
            block = data[pos : pos + blen]
            if btype in (0x0A0D0D0A, 1) and not records:
                head += block
            else:
                records.append(block)
            pos += blen
        return head, records, "pcapng"
    return None


def _load_captures() -> list[tuple[str, bytes, list[bytes], str]]:
    files = sorted(glob.glob(f"{CORPUS}/dev/*/*.pcap")) + sorted(glob.glob(f"{CORPUS}/public/*/*"))
    out = []
    for path in files:
        try:
            with open(path, "rb") as f:
                split = _split_pcap(f.read())
        except OSError:
            continue
        if split and split[1]:
            out.append((os.path.basename(path), *split))
    return out


def _learn_seeds(out_dir: str) -> list[str]:
    """Learn seed models of dev captures: all sessions, and the first 3 and 8 of each port."""
    from scriptgen.capture import read_sessions
    from scriptgen.learn import learn
    from scriptgen.model import learnable
    from scriptgen.modelfile import save
    from scriptgen.params import LearnParams

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name in SEED_CAPTURES:
        path = f"{CORPUS}/dev/{name}.pcap"
        if not os.path.exists(path):
            continue
        sessions = list(read_sessions([path]))
        keep = learnable(sessions)
        sessions = [s for s in sessions if keep(s)]
        for k in (None, 3, 8):
            chosen = sessions
            if k is not None:
                per: dict[tuple[Any, int], int] = collections.Counter()
                chosen = []
                for s in sessions:
                    key = (s.transport, s.server_port)
                    if per[key] < k:
                        per[key] += 1
                        chosen.append(s)
            model = learn(chosen, LearnParams(jobs=1), sources=[path])
            if not model.ports:
                continue
            target = os.path.join(out_dir, f"{os.path.basename(name)}-{'all' if k is None else k}.json")
            save(model, target)
            written.append(target)
            print(f"  seed {os.path.basename(target)}: {len(chosen)} sessions, "
                  f"{os.path.getsize(target):,} bytes", flush=True)
    return written


def _init(cfg: dict[str, Any]) -> None:
    """Worker set-up: corpus, seed models, machines; a 4 GB address-space cap; the alarm."""
    from scriptgen.emulate import Machine
    from scriptgen.modelfile import loads, port_doc

    try:
        os.nice(cfg.get("nice", 10))
    except OSError:
        pass
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    signal.signal(signal.SIGALRM, _alarm)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    W.update(cfg)
    W["captures"] = _load_captures()
    seeds = []
    machines = []
    for path in cfg["seed_models"]:
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(path)
        seeds.append((name, data))
        if name.endswith("-all.json") or not cfg.get("learned"):
            for p in loads(data).ports:
                doc = port_doc(p)
                machines.append((f"{name}:{p.transport}/{p.port}", Machine(doc), _samples_by_state(doc)))
    # Small seeds load 10-50x faster than whole models: most model inputs start from them.
    W["small_seeds"] = [s for s in seeds if not s[0].endswith("-all.json")] or seeds
    W["seeds"] = seeds
    W["machines"] = machines
    W["tmp"] = os.path.join(cfg["tmpdir"], f"in-{os.getpid()}.pcap")
    W["craft"] = None
    try:
        from tests.capture import craft
        W["craft"] = craft
    except ImportError:
        pass


def _samples_by_state(doc: dict[str, Any]) -> tuple[dict[int, list[bytes]], list[bytes]]:
    by_id = {t["id"]: t for t in doc["transitions"]}
    per: dict[int, list[bytes]] = {}
    every: list[bytes] = []
    for s in doc["states"]:
        got = [base64.b64decode(pair[0]) for t in s["transitions"] for pair in by_id[t]["samples"]]
        per[s["id"]] = got
        every += got
    return per, every or [b"\r\n"]


# -- capture inputs --------------------------------------------------------------------------

_INTERESTING32 = [0, 1, 11, 12, 13, 15, 16, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x3FFFF, 0x40000, 0x40001,
                  0x1000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
_LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 105, 127, 0xFFFF, 0x0FFFFFFF, 0xFFFFFFFF]


class _Sink:
    """A Path stand-in for craft.write_pcap(ng): keeps the bytes."""

    data = b""

    def write_bytes(self, data: bytes) -> None:
        self.data = data


def _addr(rng: random.Random, v6: bool) -> str:
    if v6:
        return rng.choice(["2001:db8::1", "2001:db8::2", "::1", "fe80::1", "::"])
    return rng.choice(["10.0.0.1", "10.0.0.2", "127.0.0.1", "0.0.0.0", "255.255.255.255",
                       "192.168.1.%d" % rng.randrange(256)])


def _crafted(rng: random.Random) -> bytearray:
    craft = W["craft"]
    v6 = rng.random() < 0.3
    client = (_addr(rng, v6), rng.choice([0, 1, 40000, 65535, rng.randrange(65536)]))
    server = (_addr(rng, v6), rng.choice([0, 21, 53, 80, 445, 65535, rng.randrange(65536)]))
    if rng.random() < 0.15:  # LAND: the source is the destination
        server = client
    packets: list[bytes] = []
    for _ in range(rng.randint(1, 4)):
        what = rng.random()
        if what < 0.55:
            exchanges = [(rng.randbytes(rng.choice([0, 1, 5, 100, 1460, 3000])),
                          rng.randbytes(rng.choice([0, 1, 5, 100, 1460, 5000]))) for _ in range(rng.randint(0, 3))]
            isn = rng.choice([0, 1000, 0xFFFFFFF0, rng.randrange(1 << 32)])
            packets += craft.conversation(client, server, exchanges, isn_client=isn,
                                          isn_server=rng.randrange(1 << 32), close=rng.random() < 0.7)
        elif what < 0.8:
            dgram = craft.udp(client, server, rng.randbytes(rng.choice([0, 1, 30, 512, 1400])))
            packets.append(dgram)
            if rng.random() < 0.3:
                packets.append(craft.port_unreachable(dgram))
        elif what < 0.9 and not v6:  # fragments, maybe overlapping or missing
            payload = struct.pack("!HHHH", client[1], server[1], 0, 0) + rng.randbytes(rng.randint(0, 4000))
            ident = rng.randrange(65536)
            step = rng.choice([8, 16, 512, 1480])
            offs = list(range(0, len(payload), step))
            for off in offs:
                end = off + step + (rng.choice([0, 8]) if rng.random() < 0.2 else 0)
                packets.append(craft.ip_packet(client[0], server[0], 17, payload[off:end], ident=ident,
                                               frag_offset=off, more=end < len(payload)))
            rng.shuffle(packets)
        else:  # a lone segment with any flags
            packets.append(craft.tcp(client, server, rng.randrange(1 << 32), rng.randrange(1 << 32),
                                     rng.randrange(256), rng.randbytes(rng.choice([0, 10, 1000]))))
    if packets and rng.random() < 0.3:  # reorder, retransmit, lose
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(packets))
            op = rng.random()
            if op < 0.4:
                packets.insert(rng.randrange(len(packets) + 1), packets[i])
            elif op < 0.7:
                packets.pop(i)
                if not packets:
                    break
            else:
                j = rng.randrange(len(packets))
                packets[i], packets[j] = packets[j], packets[i]
    link = rng.choice(["ethernet", "vlan", "sll", "sll2", "null", "null-be", "raw"])
    linktype = {"ethernet": 1, "vlan": 1, "sll": 113, "sll2": 276, "null": 0, "null-be": 0, "raw": 101}[link]
    if link == "ethernet":
        frames = [craft.ethernet(p) for p in packets]
    elif link == "vlan":
        frames = [craft.ethernet(p, [rng.randrange(4096) for _ in range(rng.randint(1, 3))],
                                 rng.choice([0x8100, 0x88A8, 0x9100])) for p in packets]
    elif link == "sll":
        frames = [craft.sll(p) for p in packets]
    elif link == "sll2":
        frames = [craft.sll2(p) for p in packets]
    elif link.startswith("null"):
        frames = [craft.null_loopback(p, link == "null") for p in packets]
    else:
        frames = packets
    sink = _Sink()
    step = rng.choice([0.0, 0.001, 1.0, 4000.0])
    start = rng.choice([0.0, 1000.0, 4294900000.0])  # the last: seconds near the 32-bit limit
    if start + step * len(frames) >= 4294967295:
        step = 0.001
    if rng.random() < 0.6:
        craft.write_pcap(sink, frames, linktype, big_endian=rng.random() < 0.3, nano=rng.random() < 0.3,
                         start=start, step=step)
    else:
        ifaces = [linktype] + [rng.choice(_LINKTYPES[:10]) for _ in range(rng.randint(0, 2))]
        craft.write_pcapng(sink, ifaces, [(0 if rng.random() < 0.8 else rng.randrange(len(ifaces) + 1), f)
                                          for f in frames],
                           big_endian=rng.random() < 0.3, tsresol=rng.choice([None, 0, 3, 6, 9]),
                           extra_blocks=rng.random() < 0.5, start=start, step=step)
    out = bytearray(sink.data)
    if rng.random() < 0.3:  # if_tsresol values craft cannot write: 10^19+, binary, the top bit
        for e in "<>":
            at = out.find(struct.pack(e + "HH", 9, 1))
            if at >= 0:
                out[at + 4] = rng.choice([19, 63, 64, 127, 0x80, 0x8A, 0xBF, 0xFF])
    return out


def _window(rng: random.Random) -> bytearray:
    _, head, records, _fmt = rng.choice(W["captures"])
    target = int(math.exp(rng.uniform(math.log(300), math.log(8000 if rng.random() < 0.85 else 100_000))))
    k = 0 if rng.random() < 0.3 else rng.randrange(len(records))
    out = bytearray(head)
    while k < len(records) and len(out) < target:
        out += records[k]
        k += 1
    return out


def _record_offsets(b: bytearray) -> tuple[str, list[int]]:
    """Where the records are, read leniently from the (maybe mutated) bytes."""
    offs: list[int] = []
    if b[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = "<" if b[0] in (0xD4, 0x4D) else ">"
        pos = 24
        while pos + 16 <= len(b) and len(offs) < 2000:
            offs.append(pos)
            pos += 16 + struct.unpack_from(e + "I", b, pos + 8)[0]
        return "pcap" + e, offs
    if b[:4] == b"\x0a\x0d\x0d\x0a":
        e = "<" if b[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos = 0
        while pos + 12 <= len(b) and len(offs) < 2000:
            offs.append(pos)
            blen = struct.unpack_from(e + "I", b, pos + 4)[0]
            if blen < 12:
                break
            pos += blen
        return "pcapng" + e, offs
    return "", offs


def _put32(b: bytearray, at: int, value: int, e: str) -> None:
    if 0 <= at and at + 4 <= len(b):
        struct.pack_into(e + "I", b, at, value & 0xFFFFFFFF)


def _mutate_capture(rng: random.Random, b: bytearray, tags: list[str]) -> bytearray:
    op = rng.random()
    fmt, offs = _record_offsets(b)
    e = fmt[-1:] or "<"
    if op < 0.18 and b:
        tags.append("bitflip")
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op < 0.28 and b:
        tags.append("bytes")
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)])
    elif op < 0.40:
        tags.append("truncate")
        if offs and rng.random() < 0.6:
            cut = rng.choice(offs) + rng.choice([0, 1, 4, 8, 11, 12, 15, 16, 17, 20, 30])
        else:
            cut = rng.randrange(len(b) + 1)
        del b[cut:]
    elif op < 0.50 and fmt.startswith("pcap") and not fmt.startswith("pcapng"):
        tags.append("pcap-header")
        field = rng.choice(["magic", "version", "zone", "snaplen", "linktype"])
        if field == "magic":
            b[0:4] = rng.choice([b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d",
                                 b"\x0a\x0d\x0d\x0a", rng.randbytes(4)])
        elif field == "linktype":
            _put32(b, 20, rng.choice(_LINKTYPES + [rng.randrange(1 << 32)]), e)
        else:
            _put32(b, {"version": 4, "zone": 8, "snaplen": 16}[field], rng.choice(_INTERESTING32), e)
    elif op < 0.65 and fmt.startswith("pcap") and not fmt.startswith("pcapng") and offs:
        tags.append("pcap-record")
        at = rng.choice(offs)
        field = rng.random()
        if field < 0.6:  # caplen
            cur = struct.unpack_from(e + "I", b, at + 8)[0]
            _put32(b, at + 8, rng.choice(_INTERESTING32 + [cur + 1, cur - 1, cur + 16, 262144, 262145]), e)
        elif field < 0.8:
            _put32(b, at + 12, rng.choice(_INTERESTING32), e)
        else:
            _put32(b, at + rng.choice([0, 4]), rng.choice(_INTERESTING32 + [rng.randrange(1 << 32)]), e)
    elif op < 0.78 and fmt.startswith("pcapng") and offs:
        tags.append("pcapng-block")
        at = rng.choice(offs)
        field = rng.random()
        if field < 0.45:  # block length, leading or trailing
            cur = struct.unpack_from(e + "I", b, at + 4)[0]
            value = rng.choice(_INTERESTING32 + [cur + 4, cur - 4, cur + 1, (1 << 24) + 4, 0x40040])
            _put32(b, at + (4 if rng.random() < 0.8 else cur - 4), value, e)
        elif field < 0.6:
            _put32(b, at, rng.choice([0x0A0D0D0A, 1, 2, 3, 5, 6, 0x0BAD, 0x80000001, rng.randrange(1 << 32)]), e)
        elif field < 0.8:  # EPB interface id, caplen, timestamp
            _put32(b, at + rng.choice([8, 12, 16, 20, 24]), rng.choice(_INTERESTING32), e)
        else:  # options area of an IDB/SHB: garbage option codes and lengths
            for _ in range(rng.randint(1, 4)):
                i = at + 16 + rng.randrange(16)
                if i + 2 <= len(b):
                    b[i : i + 2] = struct.pack(e + "H", rng.choice([0, 1, 9, 14, 0xFFFF, rng.randrange(65536)]))
    elif op < 0.88 and offs:
        tags.append("ip-field")
        at = rng.choice(offs) + (16 if fmt.startswith("pcap") and not fmt.startswith("pcapng") else 28)
        ip = at + rng.choice([14, 14, 16, 18, 4, 0])  # Ethernet, VLAN, SLL, null, raw
        if ip + 40 <= len(b):
            if rng.random() < 0.25:  # LAND: destination := source
                tags[-1] = "land"
                if b[ip] >> 4 == 6:
                    b[ip + 24 : ip + 40] = b[ip + 8 : ip + 24]
                    b[ip + 42 : ip + 44] = b[ip + 40 : ip + 42]
                else:
                    b[ip + 16 : ip + 20] = b[ip + 12 : ip + 16]
                    hl = (b[ip] & 15) * 4
                    if ip + hl + 4 <= len(b):
                        b[ip + hl + 2 : ip + hl + 4] = b[ip + hl : ip + hl + 2]
            else:
                where = rng.choice([0, 2, 3, 6, 7, 9, 20, 22, 24, 32, 33, 12 + 20, 4 + 20, 6 + 20])
                b[ip + where] = rng.choice([0, 0xFF, 0x40, 0x45, 0x4F, 0x60, 0x11, 0x06, 0x01, 0x3A,
                                            rng.randrange(256)])
    elif op < 0.95 and len(b) > 8:
        tags.append("splice")
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        piece = bytes(b[i:j])[:20000]
        where = rng.random()
        if where < 0.4:
            b[j:j] = piece
        elif where < 0.7:
            del b[i:j]
        else:
            other = _window(rng)
            b[i:i] = other[rng.randrange(len(other)) :][:5000]
    else:
        tags.append("insert")
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.choice([1, 4, 16, 100]))
    return b


def make_capture(rng: random.Random) -> tuple[bytes, list[str]]:
    base = rng.random()
    tags: list[str] = []
    if base < 0.70 and W["captures"]:
        tags.append("corpus")
        b = _window(rng)
    elif base < 0.90 and W["craft"] is not None:
        tags.append("crafted")
        b = _crafted(rng)
    elif base < 0.96:
        tags.append("random-after-header")
        b = bytearray(rng.choice([struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, rng.choice(_LINKTYPES)),
                                  bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000")]))
        b += rng.randbytes(rng.choice([0, 4, 16, 100, 1000, 8000]))
    else:
        tags.append("random")
        b = bytearray(rng.randbytes(rng.choice([0, 1, 3, 4, 24, 100, 4096])))
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3, 4]) if tags[0] != "random" else 0):
        b = _mutate_capture(rng, b, tags)
        if len(b) > 200_000:
            del b[200_000:]
    return bytes(b), tags


def run_capture(data: bytes, rng: random.Random) -> dict[str, int]:
    from scriptgen.capture import CaptureStats, read_sessions

    with open(W["tmp"], "wb") as f:
        f.write(data)
    stats = CaptureStats()
    ports = [rng.choice([21, 53, 80, 445, 0])] if rng.random() < 0.1 else None
    n = size = 0
    for s in read_sessions([W["tmp"]], ports=ports, stats=stats):
        n += 1
        size += sum(len(m.data) for m in s.messages)
    return {"sessions": n, "damaged": int(bool(stats.damage)), "land": int(stats.land > 0)}


# -- model inputs ----------------------------------------------------------------------------

_NEST = "\u0000NEST\u0000"
_RAW = "\u0000RAW\u0000"


def _nodes(doc: Any) -> list[tuple[Any, Any, Any]]:
    """(container, key, value) of every value under doc."""
    out: list[tuple[Any, Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            out.append((node, k, v))
            if isinstance(v, (dict, list)):
                stack.append(v)
    return out


def _json_mutation(rng: random.Random, doc: Any, tags: list[str], raws: list[str]) -> None:
    nodes = _nodes(doc)
    if not nodes:
        return
    op = rng.random()
    if op < 0.25:
        nums = [n for n in nodes if isinstance(n[2], (int, float)) and not isinstance(n[2], bool)] or nodes
        c, k, v = rng.choice(nums)
        tags.append("number")
        c[k] = rng.choice([10**30, -(10**30), 2**63, 2**64, 2**31, -1, -(2**31), 0, 1, 1.5, -0.5, 1e308, -1e308,
                           float("nan"), float("inf"), True, None, "1", v + 1 if isinstance(v, (int, float)) else 1,
                           v * 1000 if isinstance(v, (int, float)) else 0])
    elif op < 0.37:
        tags.append("delete")
        c, k, _ = rng.choice(nodes)
        del c[k]
    elif op < 0.45:
        tags.append("duplicate-key")
        dicts = [n for n in nodes if isinstance(n[0], dict)]
        if dicts:
            c, k, v = rng.choice(dicts)
            other = rng.choice(nodes)[2]
            # `"k": other, "k": v`: the key is replaced by a marker expanded after dumping
            raws.append(json.dumps(k) + ": " + json.dumps(other, allow_nan=True) + ", " + json.dumps(k))
            marker = _RAW + str(len(raws) - 1)
            new = {(marker if key == k else key): val for key, val in c.items()}
            c.clear()
            c.update(new)
    elif op < 0.55:
        tags.append("ids")
        refs = [n for n in nodes if n[1] in ("id", "source", "target", "root", "slot", "token", "count", "region",
                                               "length", "where", "from", "to", "offset", "at")
                or (isinstance(n[0], list) and isinstance(n[2], int) and not isinstance(n[2], bool))]
        if len(refs) >= 2 and rng.random() < 0.5:
            (c1, k1, v1), (c2, k2, v2) = rng.sample(refs, 2)
            c1[k1], c2[k2] = v2, v1
        elif refs:
            c, k, v = rng.choice(refs)
            c[k] = rng.choice([-1, 0, 1, 2, 10**6, 2**31, 2**63, v + 1 if isinstance(v, int) else 0])
    elif op < 0.62:
        tags.append("nest")
        c, k, _ = rng.choice(nodes)
        c[k] = _NEST + str(rng.choice([50, 500, 1000, 5000, 100_000, 1_000_000]))
    elif op < 0.72:
        strings = [n for n in nodes if isinstance(n[2], str)] or nodes
        c, k, v = rng.choice(strings)
        what = rng.random()
        if what < 0.3:
            tags.append("long-string")
            c[k] = rng.choice(["A", "\u00e9", "\\", "=", "\u0000"]) * rng.choice([1000, 65536, 300_000])
        elif what < 0.7:
            tags.append("random-base64")
            c[k] = base64.b64encode(rng.randbytes(rng.choice([0, 1, 7, 100, 4096, 70000]))).decode()
        else:
            tags.append("bad-base64")
            c[k] = rng.choice(["@@@", "QQ", "QQ=", "Q===", "====", " QUFB", "QUFB\n", "\u00e9\u00e9\u00e9\u00e9", ""])
    elif op < 0.80:
        tags.append("type")
        c, k, v = rng.choice(nodes)
        c[k] = rng.choice([{}, [], "", None, True, False, 0, [v], {"x": v}, [[]], "x"])
    elif op < 0.90:
        tags.append("grow-list")
        lists = [n for n in nodes if isinstance(n[2], list) and n[2]]
        if lists:
            c, k, v = rng.choice(lists)
            times = rng.choice([2, 3, 10, 100])
            if times * len(json.dumps(v)) < 300_000:  # keep inputs small: loading is linear
                c[k] = v * times if rng.random() < 0.7 else v[::-1]
    else:
        tags.append("top")
        field = rng.choice(["version", "format", "ports", "params", "sources", "channel"])
        if field == "version":
            doc["version"] = rng.choice([0, 1, 2, 3, 4, 5, -1, 4.0, "4", None, 2**64])
        elif field == "format":
            doc["format"] = rng.choice(["", "scriptgen-model ", None, 1])
        elif field == "ports":
            if isinstance(doc.get("ports"), list) and doc["ports"]:
                doc["ports"] = doc["ports"] + [rng.choice(doc["ports"])]
        elif field == "channel":  # a transition whose channel is a port, nested deeper each time
            ts = [n[2] for n in nodes if isinstance(n[2], dict) and "samples" in n[2] and "target" in n[2]]
            ports = [n[2] for n in nodes if isinstance(n[2], dict) and "states" in n[2]]
            if ts and ports:
                t = rng.choice(ts)
                inner = json.loads(json.dumps(rng.choice(ports)))
                for _ in range(rng.choice([1, 2, 20])):
                    inner = {**inner, "transitions": [dict(x, channel=inner) for x in inner.get("transitions", [])][:1]
                             + inner.get("transitions", [])[1:]}
                t["channel"] = inner
        else:
            doc[field] = rng.choice([None, [], {}, "x", [1, 2], {"rules": "x"}])


def _byte_mutation(rng: random.Random, b: bytearray, tags: list[str]) -> bytearray:
    op = rng.random()
    if op < 0.3 and b:
        tags.append("b-flip")
        for _ in range(rng.choice([1, 2, 8])):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op < 0.5:
        tags.append("b-truncate")
        del b[rng.randrange(len(b) + 1) :]
    elif op < 0.65:
        tags.append("b-insert")
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.choice([rng.randbytes(rng.randint(1, 20)), b"\xff\xfe", b"\\u0000", b"\"", b"{", b"]",
                               b"1e99999", b"-", b"NaN", b"\xed\xa0\x80"])
    elif op < 0.8 and len(b) > 2:
        tags.append("b-range")
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        if rng.random() < 0.5:
            del b[i:j]
        else:
            b[j:j] = b[i:j][:100_000]
    elif op < 0.9:
        tags.append("b-encoding")
        try:
            text = b.decode()
            b = bytearray(rng.choice([b"\xef\xbb\xbf" + b, text.encode("utf-16"), text.encode("utf-32"),
                                      text.encode("utf-16-le")]))
        except UnicodeError:
            pass
    else:
        tags.append("b-bytes")
        for _ in range(rng.randint(1, 6)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
    return b


def make_model(rng: random.Random) -> tuple[bytes, list[str]]:
    pool = W["small_seeds"] if rng.random() < 0.9 else W["seeds"]
    # smaller seeds more often: loading costs ~1-3 ms per KB (JSON Schema validation)
    name, data = rng.choices(pool, weights=[1 / len(d) for _, d in pool])[0]
    tags = [name]
    if rng.random() < 0.8:
        doc = json.loads(data)
        raws: list[str] = []
        for _ in range(rng.choice([1, 1, 1, 2, 3, 5])):
            try:
                _json_mutation(rng, doc, tags, raws)
            except (TypeError, AttributeError, KeyError, IndexError, ValueError):
                tags.append("-")  # the document no longer has the shape this mutation wants
        text = json.dumps(doc, allow_nan=True, sort_keys=False)
        if _NEST in text or _RAW in text:
            text = _expand(text, raws)
        data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.25 or tags == [name]:
        b = bytearray(data)
        for _ in range(rng.choice([1, 1, 2])):
            b = _byte_mutation(rng, b, tags)
        data = bytes(b)
    return data, tags


def _expand(text: str, raws: list[str]) -> str:
    """Markers -> deep nesting ([[[...1...]]]) and duplicated keys."""
    def nest(m: re.Match[str]) -> str:
        depth = int(m.group(1))
        return "[" * depth + "1" + "]" * depth
    text = re.sub(r'"\\u0000NEST\\u0000(\d+)"', nest, text)
    return re.sub(r'"\\u0000RAW\\u0000(\d+)"', lambda m: raws[int(m.group(1))], text)


def run_model(data: bytes, rng: random.Random) -> dict[str, int]:
    from scriptgen.emulate import Emulator, Machine
    from scriptgen.modelfile import loads, port_doc

    model = loads(data)
    machines = 0
    for p in model.ports:
        machine = Machine(port_doc(p))
        machines += 1
        samples = [r for t in machine.transitions.values() for r in t.requests]
        conn = Emulator(machine, 0.0, seed=1)
        now = _drain(conn, 0.0, rng)
        if samples:
            conn.receive_data(rng.choice(samples), now + 1)
            _drain(conn, now + 1, rng)
    return {"loaded": 1, "machines": machines}


# -- stream inputs ---------------------------------------------------------------------------


_MAX_REQUESTS = 10_000  # ServeParams.max_requests: what one connection may take before the server closes it


def _drain(conn: Any, now: float, rng: random.Random, depth: int = 0, counts: dict[str, int] | None = None) -> float:
    """Take events until NeedData with nothing due; answer Listen, follow Channel."""
    from scriptgen.emulate import Channel, Close, Emulator, Listen, NeedData

    stuck = 0
    for _ in range(200_000):
        event = conn.next_event(now)
        name = type(event).__name__
        if counts is not None:
            counts[name] = counts.get(name, 0) + 1
            if name == "Input" and counts[name] > _MAX_REQUESTS:
                return now  # the server closes the connection here (--max-requests)
        if isinstance(event, NeedData):
            if event.wake_at is None or event.wake_at > now + 5.0:
                return now
            if event.wake_at <= now:
                stuck += 1  # NeedData(now): the driver's turn between batches of requests
                if stuck > 1000:
                    raise Hang(f"NeedData({event.wake_at}) at now={now}: no progress")
            now = max(now, event.wake_at)
            continue
        stuck = 0
        if isinstance(event, Close):
            return now
        elif isinstance(event, Listen):
            conn.listening(rng.choice([None, 0, 1, 20, 40001, 65535]), rng.choice([None, "10.0.0.2", "::1"]))
        elif isinstance(event, Channel) and depth < 3:
            sub = Emulator(event.machine, now, seed=2, first=event.request)
            _drain(sub, now, rng, depth + 1, counts)
    raise Hang("200000 events without waiting for data")


def _mutate_request(rng: random.Random, r: bytes, every: list[bytes]) -> tuple[bytes, str]:
    op = rng.random()
    b = bytearray(r)
    if op < 0.3:
        return r, "sample"
    if op < 0.45 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), "changed"
    if op < 0.52:
        return r[: rng.randrange(len(r) + 1)], "cut"
    if op < 0.6:
        return r + rng.choice(every), "pipelined"
    if op < 0.68:
        return r + rng.randbytes(rng.randint(1, 100)), "junk-after"
    if op < 0.71:  # one long request: the sample stretched, no terminator inside
        n = rng.choice([4096, 65536, 300_000, (1 << 20) + 10])
        filler = rng.choice([b"A", b"\x00", b" ", r[:1] or b"A"])
        return r[: len(r) // 2] + filler * n + r[len(r) // 2 :], "long"
    if op < 0.74:  # many requests at once (bounded: each costs an answer)
        return b"".join(rng.choice(every) for _ in range(rng.choice([10, 100, 500]))), "flood"
    if op < 0.82:
        return rng.randbytes(rng.choice([1, 10, 100, 1000, 10000])), "random"
    if op < 0.86:
        return rng.choice([b"", b"\r\n", b"\n", b"\x00", b"\r\n" * 1000, b" " * 5000 + b"\r\n"]), "edge"
    if op < 0.92:
        digits = bytes(rng.choice(b"0123456789") for _ in range(rng.choice([10, 40, 400])))
        return bytes(b).replace(b"1", digits, 1) if b"1" in b else bytes(b) + digits, "big-number"
    if op < 0.96:
        return bytes(b).swapcase(), "case"
    other = rng.choice(every)
    return r[: len(r) // 2] + other[len(other) // 2 :], "splice"


def make_stream(rng: random.Random) -> dict[str, Any]:
    """A plan: the machine, and steps (request mutation chosen as the state goes)."""
    mi = rng.randrange(len(W["machines"]))
    return {"machine": mi, "steps": rng.randint(1, 8), "seed": rng.randrange(1 << 30)}


def run_stream(plan: dict[str, Any], rng: random.Random, log: list[Any] | None = None) -> dict[str, int]:
    from scriptgen.emulate import Emulator

    name, machine, (per_state, every) = W["machines"][plan["machine"]]
    now = rng.choice([0.0, 1e9])
    conn = Emulator(machine, now, seed=plan["seed"], wall=rng.choice([None, 0.0, 4e9]))
    counts: dict[str, int] = {}
    now = _drain(conn, now, rng, counts=counts)
    kinds = collections.Counter()
    for _ in range(plan["steps"]):
        if conn.closed or counts.get("Input", 0) > _MAX_REQUESTS:
            break  # the server has closed the connection
        here = per_state.get(conn.state) or every
        request, how = _mutate_request(rng, rng.choice(here if rng.random() < 0.7 else every), every)
        kinds[how] += 1
        now += rng.choice([0.0, 0.001, 0.04, 0.06, 0.4, 0.6, 10.0])
        delivery = rng.random()
        if delivery < 0.15 and len(request) <= 3000:
            chunks = [request[i : i + 1] for i in range(len(request))]
        elif delivery < 0.35 and request:
            cuts = sorted(rng.randrange(len(request)) for _ in range(rng.randint(1, 6)))
            chunks = [request[a:b] for a, b in zip([0] + cuts, cuts + [len(request)]) if b > a]
        else:
            chunks = [request]
        if log is not None:
            log.append({"state": conn.state, "how": how, "chunks": [base64.b64encode(c).decode() for c in chunks]})
        for chunk in chunks:
            if counts.get("Input", 0) > _MAX_REQUESTS:
                break
            conn.receive_data(chunk, now)
            now += rng.choice([0.0, 0.0, 0.001, 0.06])
            if rng.random() < 0.1:
                now = _drain(conn, now, rng, counts=counts)
        if rng.random() < 0.05:
            conn.receive_data(b"", now)  # EOF in the middle; later bytes must be ignored
        now = _drain(conn, now, rng, counts=counts)
    if rng.random() < 0.5 and not conn.closed and counts.get("Input", 0) <= _MAX_REQUESTS:
        conn.receive_data(b"", now)
        _drain(conn, now, rng, counts=counts)
    out = {f"ev-{k}": v for k, v in counts.items()}
    out.update({f"req-{k}": v for k, v in kinds.items()})
    return out


# -- running ---------------------------------------------------------------------------------


def _rng(kind: str, index: int) -> random.Random:
    return random.Random(f"{W['seed']}-{kind}-{index}")


def build(kind: str, index: int) -> tuple[Any, list[str], random.Random]:
    rng = _rng(kind, index)
    if kind == "capture":
        data, tags = make_capture(rng)
    elif kind == "model":
        data, tags = make_model(rng)
    else:
        data = make_stream(rng)
        tags = [W["machines"][data["machine"]][0]]
    return data, tags, rng


_STARTED = [0.0]  # when the input running now started (an exception returns no time)


def execute(kind: str, index: int) -> tuple[dict[str, int], float, Any, list[str]]:
    """Run one input (built afresh, so a re-run is the same run). Raises what it raises."""
    try:
        data, tags, rng = build(kind, index)
    except Exception as exc:  # noqa: BLE001 - a bug of this script, not of scriptgen
        raise GenError(f"{kind} #{index}: {type(exc).__name__}: {exc}") from exc
    re.purge()  # each timing compiles its patterns afresh: a cached compile hid a 14 s model
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    started = _STARTED[0] = time.perf_counter()
    try:
        if kind == "capture":
            info = run_capture(data, rng)
        elif kind == "model":
            info = run_model(data, rng)
        else:
            info = run_stream(data, rng)
    finally:
        elapsed = time.perf_counter() - started
        signal.setitimer(signal.ITIMER_REAL, 0)
    return info, elapsed, data, tags


def _save(kind: str, index: int, what: str, text: str) -> str:
    base = os.path.join(W["out"], what, f"{kind}-{index}")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    data, tags, rng = build(kind, index)
    if kind == "stream":
        log: list[Any] = []
        try:
            run_stream(data, rng, log)
        except BaseException:  # noqa: BLE001 - we only want the log
            pass
        blob = json.dumps({"machine": W["machines"][data["machine"]][0], "plan": data, "steps": log},
                          indent=1).encode()
    else:
        blob = data
    with open(base + (".pcap" if kind == "capture" else ".json"), "wb") as f:
        f.write(blob)
    with open(base + ".txt", "w") as f:
        f.write(f"{kind} #{index} (seed {W['seed']}), {len(blob)} bytes, tags {tags}\n"
                f"replay: .venv/bin/python bench/fuzz.py --seed {W['seed']} --out {W['out']} "
                f"--replay {kind}:{index}\n\n{text}")
    return base


def _signature(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in tb if "scriptgen" in f.filename and "bench" not in f.filename] or tb[-1:]
    top = inside[-1] if inside else None
    where = f"{os.path.basename(top.filename)}:{top.lineno} {top.name}" if top else "?"
    return f"{type(exc).__name__} at {where}"


def run_chunk(kind: str, start: int, end: int) -> dict[str, Any]:
    res: dict[str, Any] = {"kind": kind, "start": start, "end": end, "n": 0, "counts": collections.Counter(),
                           "crashes": [], "slow": [], "slowest": (0.0, -1, ""), "time": 0.0}
    for index in range(start, end):
        try:
            info, elapsed, data, tags = execute(kind, index)
            res["counts"].update(info)
            res["counts"]["ok"] += 1
            outcome = None
        except ScriptgenError as exc:
            elapsed = time.perf_counter() - _STARTED[0]
            res["counts"][f"refused:{type(exc).__name__}"] += 1
            outcome = None
        except GenError as exc:
            res["counts"]["generator-error"] += 1
            if res["counts"]["generator-error"] <= 3:
                print(f"  generator error (fuzz.py's own): {exc}", file=sys.stderr, flush=True)
            res["n"] += 1
            continue
        except Hang as exc:
            elapsed = HANG_S
            text = "".join(traceback.format_exception(exc))
            base = _save(kind, index, "crashes", text)
            res["crashes"].append((index, f"HANG {exc} at {_signature(exc)}", base))
            outcome = "hang"
        except (Exception, RecursionError, MemoryError) as exc:  # noqa: BLE001 - this is what we look for
            elapsed = 0.0
            text = "".join(traceback.format_exception(exc))
            sig = _signature(exc)
            base = _save(kind, index, "crashes", text) if sum(1 for c in res["crashes"] if c[1] == sig) < 5 else ""
            res["crashes"].append((index, sig, base))
            outcome = "crash"
        res["n"] += 1
        if outcome is None and elapsed > SLOW_S:
            again = _time_again(kind, index)
            elapsed = min(elapsed, again)
            if elapsed > SLOW_S:
                base = _save(kind, index, "slow", f"{elapsed:.3f} s (best of two runs)\n")
                res["slow"].append((index, elapsed, base))
        res["time"] += elapsed
        if elapsed > res["slowest"][0]:
            res["slowest"] = (elapsed, index, "")
    res["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["counts"] = dict(res["counts"])
    return res


def _time_again(kind: str, index: int) -> float:
    try:
        return execute(kind, index)[1]
    except ScriptgenError:
        return time.perf_counter() - _STARTED[0]
    except BaseException:  # noqa: BLE001
        return HANG_S


def replay(cfg: dict[str, Any], spec: str) -> int:
    kind, index_text = spec.split(":")
    _init(cfg)
    index = int(index_text)
    data, tags, _ = build(kind, index)
    print(f"{kind} #{index}: tags {tags}")
    try:
        info, elapsed, _, _ = execute(kind, index)
        print(f"ok in {elapsed:.3f} s: {info}")
        return 0
    except ScriptgenError as exc:
        elapsed = time.perf_counter() - _STARTED[0]
        print(f"refused in {elapsed:.3f} s ({type(exc).__name__}): {str(exc)[:300]}")
        return 0
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--captures", type=int, default=1_000_000, help="capture inputs (default 10^6)")
    ap.add_argument("--models", type=int, default=100_000, help="model-file inputs (default 10^5)")
    ap.add_argument("--streams", type=int, default=100_000, help="emulator streams (default 10^5)")
    ap.add_argument("--seconds", type=float, default=0, help="stop taking new work after this long (0: no limit)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10, help="niceness added in the workers")
    ap.add_argument("--out", default="fuzz-out", help="output directory (crashes/, slow/, seeds/, summary.json)")
    ap.add_argument("--model-dir", help="seed models (*.json) instead of learning them at start")
    ap.add_argument("--resume", action="store_true", help="start each kind where --out's summary.json stopped")
    ap.add_argument("--replay", metavar="KIND:INDEX", help="rebuild and run one input in this process")
    ap.add_argument("--progress", type=float, default=15.0, help="seconds between progress lines")
    args = ap.parse_args()
    started = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)

    if args.model_dir:
        seed_models = sorted(glob.glob(os.path.join(args.model_dir, "*.json")))
    else:
        seed_models = sorted(glob.glob(os.path.join(args.out, "seeds", "*.json")))
        if not seed_models:
            print("learning seed models from dev captures...", flush=True)
            seed_models = _learn_seeds(os.path.join(args.out, "seeds"))
    if not seed_models and (args.models or args.streams):
        print("no seed models (no dev captures, no --model-dir): skipping models and streams")
        args.models = args.streams = 0
    tmpdir = "/dev/shm" if os.path.isdir("/dev/shm") else args.out
    tmpdir = os.path.join(tmpdir, f"scriptgen-fuzz-{os.getpid()}")
    os.makedirs(tmpdir, exist_ok=True)
    cfg = {"seed": args.seed, "out": args.out, "seed_models": seed_models, "tmpdir": tmpdir, "nice": args.nice,
           "learned": not args.model_dir}
    if args.replay:
        try:
            return replay(cfg, args.replay)
        finally:
            _cleanup(tmpdir)

    totals = {"capture": args.captures, "model": args.models, "stream": args.streams}
    first = {k: 0 for k in KINDS}
    summary_path = os.path.join(args.out, "summary.json")
    previous: dict[str, Any] = {}
    if args.resume and os.path.exists(summary_path):
        with open(summary_path) as f:
            previous = json.load(f)
        if previous.get("seed") != args.seed:
            print(f"--resume: summary.json is of seed {previous.get('seed')}, not {args.seed}")
            return 2
        first = {k: previous["kinds"][k]["next"] for k in KINDS}
    n_caps = len(_load_captures())
    print(f"fuzz: seed {args.seed}, {args.workers} workers, out {args.out}; {n_caps} corpus captures, "
          f"{len(seed_models)} seed models; inputs: " + ", ".join(f"{k} [{first[k]}, {totals[k]})" for k in KINDS),
          flush=True)

    ctx = multiprocessing.get_context("spawn")
    stats: dict[str, dict[str, Any]] = {}
    for k in KINDS:
        old = previous.get("kinds", {}).get(k, {})
        stats[k] = {"run": old.get("run", 0), "next": first[k], "counts": collections.Counter(old.get("counts", {})),
                    "crashes": old.get("crashes", []), "slow": old.get("slow", []),
                    "slowest": old.get("slowest", [0.0, -1]), "time": old.get("time", 0.0),
                    "seconds": old.get("seconds", 0.0)}
    peak_rss = previous.get("peak_rss_kb", 0)
    stopped = False
    with ctx.Pool(args.workers, initializer=_init, initargs=(cfg,)) as pool:
        for kind in KINDS:
            st = stats[kind]
            todo = [(kind, a, min(a + CHUNK[kind], totals[kind]))
                    for a in range(first[kind], totals[kind], CHUNK[kind])]
            if not todo:
                continue
            kind_start = time.monotonic()
            # --seconds is shared: capture 40 %, model 35 %, stream 25 % of what is left
            share = {"capture": 0.4, "model": 0.35 / 0.6, "stream": 1.0}[kind]
            kind_deadline = kind_start + share * (args.seconds - (kind_start - started))
            done: set[int] = set()
            pending: collections.deque[Any] = collections.deque()
            nxt = 0
            last = time.monotonic()
            while nxt < len(todo) or pending:
                over = args.seconds and time.monotonic() > kind_deadline
                while not over and nxt < len(todo) and len(pending) < 3 * args.workers:
                    pending.append(pool.apply_async(run_chunk, todo[nxt]))
                    nxt += 1
                if over and nxt < len(todo):
                    stopped = True
                    todo = todo[:nxt]
                res = pending.popleft().get()
                done.add(res["start"])
                st["run"] += res["n"]
                st["counts"].update(res["counts"])
                st["crashes"] += [list(c) for c in res["crashes"]]
                st["slow"] += [list(s) for s in res["slow"]]
                st["time"] += res["time"]
                if res["slowest"][0] > st["slowest"][0]:
                    st["slowest"] = [res["slowest"][0], res["slowest"][1]]
                peak_rss = max(peak_rss, res["maxrss_kb"])
                for c in res["crashes"]:
                    print(f"  CRASH {kind} #{c[0]}: {c[1]} -> {c[2]}", flush=True)
                for s in res["slow"]:
                    print(f"  SLOW {kind} #{s[0]}: {s[1]:.2f} s -> {s[2]}", flush=True)
                # the next index from which every input has run (pending ones are not)
                while st["next"] < totals[kind] and st["next"] in done:
                    st["next"] = min(st["next"] + CHUNK[kind], totals[kind])
                now = time.monotonic()
                if now - last >= args.progress or not pending:
                    last = now
                    before = previous.get("kinds", {}).get(kind, {}).get("run", 0)
                    rate = (st["run"] - before) / max(now - kind_start, 1e-9)
                    left = totals[kind] - st["next"]
                    print(f"[{now - started:7.0f}s] {kind}: {st['run']:,}/{totals[kind]:,} ({rate:,.0f}/s, "
                          f"eta {left / max(rate, 1e-9) / 60:.1f} min) crashes {len(st['crashes'])} slow "
                          f"{len(st['slow'])} slowest {st['slowest'][0] * 1000:.0f} ms (#{st['slowest'][1]}) "
                          f"worker peak RSS {peak_rss / 1024:.0f} MB", flush=True)
                    _write_summary(summary_path, args, stats, peak_rss, started)
            st["seconds"] += time.monotonic() - kind_start
    _write_summary(summary_path, args, stats, peak_rss, started)
    _cleanup(tmpdir)

    print("\nsummary" + (" (stopped by --seconds: --resume continues)" if stopped else ""))
    bad = 0
    for kind in KINDS:
        st = stats[kind]
        counts = st["counts"]
        refused = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("refused:")}
        other = {k: v for k, v in sorted(counts.items()) if not k.startswith("refused:") and k != "ok"}
        print(f"  {kind}: {st['run']:,} run (indices [0, {st['next']:,}) complete of {totals[kind]:,}) in "
              f"{st['seconds']:.0f} s; ok {counts.get('ok', 0):,}; refused {sum(refused.values()):,} {refused}")
        print(f"    {other}")
        print(f"    crashes {len(st['crashes'])}, slow {len(st['slow'])}; slowest {st['slowest'][0] * 1000:.1f} ms "
              f"(#{st['slowest'][1]}), mean {st['time'] / max(st['run'], 1) * 1000:.2f} ms")
        for sig, n in collections.Counter(c[1] for c in st["crashes"]).most_common():
            print(f"    CRASH x{n}: {sig}")
        bad += len(st["crashes"]) + len(st["slow"])
    print(f"  worker peak RSS {peak_rss / 1024:.1f} MB; wall {time.monotonic() - started:.0f} s; "
          f"summary {summary_path}")
    return 1 if bad else 0


def _write_summary(path: str, args: Any, stats: dict[str, Any], peak_rss: int, started: float) -> None:
    doc = {"seed": args.seed, "peak_rss_kb": peak_rss, "kinds": {
        k: {**v, "counts": dict(v["counts"])} for k, v in stats.items()}}
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)


def _cleanup(tmpdir: str) -> None:
    for name in glob.glob(os.path.join(tmpdir, "*")):
        os.unlink(name)
    try:
        os.rmdir(tmpdir)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
