"""Capture-stage benchmark: read + TCP/UDP reassembly throughput and peak memory,
compared with tcpflow on the same file in the same run.

    .venv/bin/python bench/bench_capture.py            # ~3-4 minutes on 2 cores
    .venv/bin/python bench/bench_capture.py --check    # exit 1 if an acceptance check fails

What it does:
 1. Generates (once, cached in bench/.cache/, git-ignored) two captures of the same flow
    mix with bench/gen_capture.py: 100k and 1M packets, 5000 concurrent conversations,
    ~2% retransmitted and ~2% reordered segments. The small one is a prefix of the big one.
 2. Runs scriptgen's reader + reassembly (`read_sessions`, sessions counted, not kept) on
    each file in a fresh Python subprocess; measures its wall time (whole process, start-up
    and imports included) and its peak RSS (VmHWM, which the child reads at its end).
 3. Runs `tcpflow -r FILE -o OUTDIR` (its normal mode: every flow written to a file) on the
    1M-packet file, the output directory on the same disk as the capture; measured the same
    way. Informative variants (default -Fk and -FX, both documented in `tcpflow -hh`) are
    timed too but do not enter the ratio.
 4. Prints a table, the ratio ours/tcpflow and the PASS/FAIL lines of the acceptance checks:
      throughput >= 0.6 x tcpflow (packets/s, best run of each on the 1M file)
      peak RSS of the 1M run within 10% of the 100k run (highest of each size's runs)

Each measurement is repeated (--repeat, default 3) and the best time is used: the fastest
run is the least disturbed one (tcpflow's time is mostly file creation in the kernel and
varies a lot from run to run on a VM disk). MB = the capture file's size / 10^6.
The exit code is 0 unless --check is given and a check fails (or cannot be measured).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import gen_capture  # noqa: E402  (bench/ is not a package)

THROUGHPUT_MIN = 0.6
MEMORY_TOLERANCE = 0.10

# Runs in a fresh interpreter: read + reassemble, count the sessions, report in JSON.
_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from scriptgen.capture import CaptureStats, read_sessions
t1 = time.perf_counter()
stats = CaptureStats()
sessions = 0
for _ in read_sessions([sys.argv[1]], stats=stats):
    sessions += 1
t2 = time.perf_counter()
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"sessions": sessions, "packets": stats.packets, "bytes": stats.bytes,
                  "import_s": t1 - t0, "loop_s": t2 - t1, "vmhwm_kb": hwm,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

_PROFILE = r"""
import cProfile, pstats, sys
from scriptgen.capture import read_sessions
prof = cProfile.Profile()
prof.enable()
n = sum(1 for _ in read_sessions([sys.argv[1]]))
prof.disable()
print(f"{n} sessions")
pstats.Stats(prof).sort_stats(sys.argv[2]).print_stats(int(sys.argv[3]))
"""


@dataclass
class Run:
    seconds: float
    maxrss_kb: int
    info: dict = field(default_factory=dict)


@dataclass
class Series:
    label: str
    packets: int
    size: int
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(r.seconds for r in self.runs)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_kb(self) -> int:
        return max(r.maxrss_kb for r in self.runs)


def _vmhwm(pid: int) -> int:
    """Peak RSS (KB) of the process's current image; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(cmd: list[str], *, env: dict[str, str] | None = None,
          cwd: str | None = None) -> tuple[float, int, int, str, str]:
    """Run cmd; return (wall seconds, its peak RSS in KB, exit code, stdout, stderr).

    Peak RSS is VmHWM from /proc, polled every 10 ms while the process runs (it can miss
    growth in the last 10 ms). Not ru_maxrss: on Linux a child's ru_maxrss starts at the
    parent's RSS at fork time (the pre-exec image counts), which here is this benchmark's
    own memory. The scriptgen child reports its exact VmHWM itself.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _vmhwm(proc.pid))
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return (seconds, peak, proc.returncode,
                out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def ensure_capture(cache: Path, packets: int, seed: int, concurrent: int, tag: str) -> Path:
    path = cache / f"capture-{packets}-s{seed}-c{concurrent}-{tag}.pcap"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        t0 = time.perf_counter()
        info = gen_capture.generate(str(tmp), packets, seed=seed, concurrent=concurrent)
        tmp.rename(path)
        print(f"  generated {path.name}: {info['bytes'] / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.1f} s ({info['tcp_flows']} TCP + {info['udp_flows']} UDP "
              f"conversations, {info['retransmitted_segments']} retransmissions, "
              f"{info['reordered_pairs']} reordered pairs)", flush=True)
    else:
        print(f"  cached    {path.name}", flush=True)
    return path


def warm(path: Path) -> None:
    """Read the file once so that every timed run finds it in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def source_fingerprint() -> str:
    """Hash of the code the benchmark runs: src/scriptgen/capture/*.py, model/session.py
    and the CaptureParams class of params.py (other stages' changes do not count)."""
    top = ROOT / "src" / "scriptgen"
    h = hashlib.sha256()
    for f in sorted([*top.glob("capture/*.py"), top / "model" / "session.py"]):
        if f.exists():
            h.update(str(f.relative_to(top)).encode() + b"\0" + f.read_bytes())
    params = (top / "params.py").read_text() if (top / "params.py").exists() else ""
    start = params.find("class CaptureParams")
    if start >= 0:
        end = min((i for i in (params.find("\nclass ", start + 1), params.find("\n@dataclass", start))
                   if i >= 0), default=len(params))
        h.update(params[start:end].encode())
    return h.hexdigest()[:12]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def tcpflow_help(tcpflow: str) -> str:
    try:
        res = subprocess.run([tcpflow, "-hh"], capture_output=True, text=True, timeout=30)
        return res.stdout + res.stderr
    except (OSError, subprocess.SubprocessError):
        return ""


def count_files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))


def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench_capture.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--small", type=int, default=100_000, help="packets in the small capture (100000)")
    ap.add_argument("--large", type=int, default=1_000_000, help="packets in the large capture (1000000)")
    ap.add_argument("--concurrent", type=int, default=5000, help="conversations open at once (5000)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (3)")
    ap.add_argument("--cache-dir", type=Path, default=HERE / ".cache",
                    help="where captures and tcpflow output go (bench/.cache)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter that runs scriptgen (default: this one); src/ is put on PYTHONPATH")
    ap.add_argument("--tcpflow", default=shutil.which("tcpflow") or "tcpflow", help="tcpflow binary")
    ap.add_argument("--tcpflow-variants", default="-Fk,-FX",
                    help="comma-separated extra tcpflow option sets, timed for information only "
                         "(default '-Fk,-FX'; '' for none)")
    ap.add_argument("--no-tcpflow", action="store_true", help="skip tcpflow (throughput check not measured)")
    ap.add_argument("--profile", metavar="SORT", nargs="?", const="tottime",
                    help="also run cProfile on the large capture and print the top functions "
                         "(sort key, default tottime)")
    ap.add_argument("--profile-lines", type=int, default=30, help="functions shown by --profile (30)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--check", action="store_true", help="exit 1 if an acceptance check fails")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.small < 1 or args.large < 1:
        ap.error("--repeat, --small and --large must be >= 1")

    cache: Path = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(Path(gen_capture.__file__).read_bytes()).hexdigest()[:10]
    print(f"machine: {machine()}")
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + ("  (WARNING: other work is running; timings will be noisy)" if load[0] > 0.7 else ""))
    fingerprint = source_fingerprint()
    print(f"scriptgen source: {fingerprint} (capture/*.py, model/session.py, CaptureParams)")

    print("captures:")
    small = ensure_capture(cache, args.small, args.seed, args.concurrent, tag)
    large = ensure_capture(cache, args.large, args.seed, args.concurrent, tag)
    for stale in cache.glob("capture-*.pcap"):  # made by an older version of gen_capture.py
        if not stale.name.endswith(f"-{tag}.pcap"):
            stale.unlink()

    tcpflow = None if args.no_tcpflow else shutil.which(args.tcpflow)
    variants: list[list[str]] = []
    tcpflow_version = ""
    if not args.no_tcpflow and tcpflow is None:
        print("tcpflow: not found (Debian: DEBIAN_FRONTEND=noninteractive apt-get install -y tcpflow)")
    if tcpflow:
        tcpflow_version = subprocess.run([tcpflow, "-V"], capture_output=True, text=True).stdout.strip()
        documented = tcpflow_help(tcpflow)
        for spec in filter(None, (s.strip() for s in args.tcpflow_variants.split(","))):
            opts = shlex.split(spec)
            if all(o.split("=")[0] in documented for o in opts):
                variants.append(opts)
            else:
                print(f"tcpflow: option set {spec!r} not documented by `tcpflow -hh`, skipped")
        print(f"tcpflow: {tcpflow} ({tcpflow_version})")

    out_root = cache / "tcpflow-out"
    shutil.rmtree(out_root, ignore_errors=True)
    out_root.mkdir()

    ours = {p: Series(f"scriptgen {n // 1000}k", n, p.stat().st_size)
            for p, n in ((small, args.small), (large, args.large))}
    theirs: dict[str, Series] = {}
    tcpflow_sets = [[]] + variants if tcpflow else []
    for opts in tcpflow_sets:
        label = "tcpflow " + (" ".join(opts) if opts else "(reference)")
        theirs[label] = Series(label, args.large, large.stat().st_size)
    env = child_env()
    sessions_seen: dict[Path, int] = {}

    warm(small)
    warm(large)
    print(f"runs ({args.repeat} of each, interleaved):", flush=True)
    for r in range(args.repeat):
        for path, series in ours.items():
            seconds, rss, code, out, err = timed([args.python, "-c", _CHILD, str(path)], env=env)
            if code != 0:
                print(f"scriptgen run failed (exit {code}):\n{err}", file=sys.stderr)
                return 1 if args.check else 0
            info = json.loads(out.strip().splitlines()[-1])
            if info["packets"] != series.packets:
                print(f"warning: scriptgen read {info['packets']} packets, expected {series.packets}")
            sessions_seen[path] = info["sessions"]
            rss = info["vmhwm_kb"]
            series.runs.append(Run(seconds, rss, info))
            print(f"  [{r + 1}] {series.label:<22} {seconds:7.2f} s  {rss / 1024:7.1f} MB RSS  "
                  f"{info['sessions']} sessions (loop {info['loop_s']:.2f} s)", flush=True)
        for opts, (label, series) in zip(tcpflow_sets, theirs.items()):
            outdir = Path(tempfile.mkdtemp(prefix="run-", dir=out_root))
            cmd = [tcpflow, *opts, "-r", str(large), "-o", str(outdir)]
            seconds, rss, code, out, err = timed(cmd, cwd=str(outdir))
            if code != 0:
                print(f"  {label} failed (exit {code}): {err.strip()[:500]}")
                continue
            files = count_files(outdir)
            series.runs.append(Run(seconds, rss, {"files": files, "command": cmd}))
            print(f"  [{r + 1}] {label:<22} {seconds:7.2f} s  {rss / 1024:7.1f} MB RSS  "
                  f"{files} files written", flush=True)
            os.sync()  # let the writeback finish outside the timed runs
        # Output directories are kept until the end: deleting 100k files between runs
        # makes the next runs slower (ext4 journal, discard).

    # -- report -----------------------------------------------------------------
    headers = ["run", "packets", "MB", "best s", "median s", "packets/s", "MB/s", "peak RSS MB"]
    rows = []
    for s in [*ours.values(), *theirs.values()]:
        if not s.runs:
            continue
        rows.append([s.label, f"{s.packets:,}", f"{s.size / 1e6:.1f}", f"{s.best:.2f}",
                     f"{s.median:.2f}", f"{s.packets / s.best:,.0f}",
                     f"{s.size / 1e6 / s.best:.1f}", f"{s.peak_kb / 1024:.1f}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    print(fmt_row(headers, widths))
    print(fmt_row(["-" * w for w in widths], widths))
    for row in rows:
        print(fmt_row(row, widths))
    print()

    big, little = ours[large], ours[small]
    results: dict = {
        "machine": machine(), "tcpflow": tcpflow_version, "source": fingerprint,
        "series": {s.label: {"packets": s.packets, "bytes": s.size,
                             "seconds": [r.seconds for r in s.runs],
                             "peak_rss_kb": [r.maxrss_kb for r in s.runs]}
                   for s in [*ours.values(), *theirs.values()]},
        "sessions": {p.name: n for p, n in sessions_seen.items()},
    }
    failed = False
    ref = theirs.get("tcpflow (reference)")
    if ref and ref.runs:
        ratio = ref.best / big.best  # same file: packets/s ratio == MB/s ratio == time ratio
        ratio_median = ref.median / big.median
        cmd = " ".join(shlex.quote(c) for c in ref.runs[0].info["command"])
        print(f"tcpflow reference command: {cmd}")
        print(f"throughput ours/tcpflow: {ratio:.2f}x (best runs), {ratio_median:.2f}x (medians); "
              f"tcpflow runs: {', '.join(f'{r.seconds:.1f}' for r in ref.runs)} s")
        ok = ratio >= THROUGHPUT_MIN
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'}: throughput {ratio:.2f}x tcpflow (>= {THROUGHPUT_MIN}x required)")
        results["throughput_ratio"] = ratio
    else:
        failed = True
        print("NOT MEASURED: throughput vs tcpflow (tcpflow unavailable or failed)")
    mem_ratio = big.peak_kb / little.peak_kb
    ok = abs(mem_ratio - 1) <= MEMORY_TOLERANCE
    failed |= not ok
    print(f"peak RSS: {little.peak_kb / 1024:.1f} MB ({little.packets:,} packets), "
          f"{big.peak_kb / 1024:.1f} MB ({big.packets:,} packets): ratio {mem_ratio:.2f}")
    print(f"{'PASS' if ok else 'FAIL'}: peak memory {100 * (mem_ratio - 1):+.0f}% from "
          f"{little.packets // 1000}k to {big.packets // 1000}k packets (within "
          f"{100 * MEMORY_TOLERANCE:.0f}% required)")
    results["memory_ratio"] = mem_ratio
    results["pass"] = not failed

    shutil.rmtree(out_root, ignore_errors=True)
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(the benchmark itself keeps ~1 core busy)")
    if source_fingerprint() != fingerprint:
        print("WARNING: the capture code changed during the run; the figures mix two versions")

    if args.profile:
        print(f"\ncProfile of scriptgen on {large.name} (sorted by {args.profile}):", flush=True)
        subprocess.run([args.python, "-c", _PROFILE, str(large), args.profile,
                        str(args.profile_lines)], env=env, check=False)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
