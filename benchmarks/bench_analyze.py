"""Analyzer throughput and memory against tshark, on a ~1 M-packet capture of real loopback churn.

Generation (cached in benchmarks/out/, --regen to redo it): in a lab namespace made for this run
(twl<id>churn, deleted at the end), benchmarks/churn.py opens connections on lo with a narrowed
ip_local_port_range (that namespace only) so four-tuples come back during TIME_WAIT; clients and servers
alternately close first and some connections end with an SO_LINGER {1,0} RST. tcpdump -i lo inside the
namespace writes the first --packets packets.

Measurement, one tool at a time in a fresh process pinned to one core (taskset -c 0), best of --repeat:
    twlab analyze FILE --json           (python -m lab analyze; the streamed JSON of every connection and
                                          finding; output to a file on the first run, checked: it parses and
                                          lists every connection; /dev/null afterwards)
    twlab analyze FILE --json --detail  (the same with every connection's transitions and segment roles)
    reader only                         (lab.pcap.readers.CaptureReader over the file; never compiled)
    reader + analyzer, no output        (lab.pcap.feed.feed_file into a streaming Analyzer, records dropped)
    tshark -q -z conv,tcp -r FILE
    tshark -T fields -e frame.number -e tcp.stream -e tcp.flags -r FILE
wall time, CPU time (wait4), packets/s, and peak RSS (GNU time's %M), on the whole file and
on its first 100 k packets (memory must follow open connections, not file size). Whether the compiled
accelerator (lab.accel, `python -m lab.build`) was active is recorded with the figures.

    sudo .venv/bin/python -m benchmarks analyze [--packets=1000000] [--regen] [--repeat=2]
(options in --name=value form: python -m benchmarks takes bare words for benchmark names)

Writes benchmarks/out/analyze.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.run.context import is_root, new_run_id
from lab.run.resources import Ledger

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
PORT = 5000
PORT_RANGE = "40000 40999"  # 1000 ports for ~100 k connections: every four-tuple comes back ~100 times
GEN_LIMIT_S = 170.0

READER_ONLY = ("import sys\nfrom lab.pcap.readers import CaptureReader\nr = CaptureReader(sys.argv[1])\n"
               "n = sum(1 for _ in r)\nprint(n, r.stats.packets)\n")
# the analysis as `twlab analyze` runs it (streaming, no detail), finished records dropped: the JSON's cost is
# the difference to the CLI row
ANALYZER_ONLY = ("import sys\nfrom lab.pcap.feed import feed_file\nfrom lab.core.tracker import Analyzer\n"
                 "a = Analyzer(detail=False, keep=False)\nfeed_file(sys.argv[1], a, a.drain)\na.finish()\n"
                 "a.drain()\n")
ACCEL_PROBE = ("import importlib.util, sys\nif importlib.util.find_spec('lab.accel') is None:\n"
               "    print('unknown: no lab.accel'); sys.exit()\nimport lab.accel as a\n"
               "print(('active: ' if a.active() else 'inactive: ') + a.status())\n")
OURS = "twlab analyze --json"
OURS_DETAIL = "twlab analyze --json --detail"
OURS_PURE = "twlab analyze --json, pure Python (TWLAB_PURE=1)"
CONV = "tshark -q -z conv,tcp"
GNU_TIME = "/usr/bin/time"


def _ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


# --- generation ---------------------------------------------------------------------------------------

def generate(path: Path, packets: int, clients: int, servers: int) -> dict[str, Any]:
    """Capture `packets` packets of real loopback churn into `path` (atomically); returns what happened."""
    run_id = new_run_id()
    ns = f"twl{run_id}churn"
    ledger = Ledger(run_id)
    tmp = path.with_name(f".{path.name}.twl{run_id}.tmp")
    ledger.add("file", str(tmp))
    td: subprocess.Popen[str] | None = None
    gen: subprocess.Popen[str] | None = None
    t0 = time.monotonic()
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        ledger.add("netns", ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(_ns(ns, "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={PORT_RANGE}"), check=True)
        tw_reuse = subprocess.run(_ns(ns, "sysctl", "-n", "net.ipv4.tcp_tw_reuse"), capture_output=True,
                                  text=True, check=True).stdout.strip()
        td = subprocess.Popen(_ns(ns, "tcpdump", "-i", "lo", "-w", str(tmp), "-B", "65536", "-n", "-Z", "root",
                                  "-c", str(packets), f"tcp port {PORT}"),
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
        ledger.add("pid", str(td.pid))
        assert td.stderr is not None
        ready = td.stderr.readline()
        if "listening" not in ready:
            raise RuntimeError(f"tcpdump did not start: {ready.strip()}")
        conns = packets // 8  # ~9.6 packets per connection: enough for tcpdump's -c to end the capture
        gen = subprocess.Popen(_ns(ns, sys.executable, str(HERE / "churn.py"), "--port", str(PORT), "--conns",
                                   str(conns), "--clients", str(clients), "--servers", str(servers),
                                   "--seconds", str(GEN_LIMIT_S)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        ledger.add("pid", str(gen.pid))
        stopped_gen = False
        while True:
            if td.poll() is not None and not stopped_gen:  # -c reached: let the clients finish and report
                gen.send_signal(signal.SIGTERM)
                stopped_gen = True
            if gen.poll() is not None:
                break
            if time.monotonic() - t0 > GEN_LIMIT_S + 20:
                raise RuntimeError("churn generator did not finish in time")
            time.sleep(0.1)
        g_out, g_err = gen.communicate()
        if gen.returncode != 0 or not g_out.strip():
            raise RuntimeError(f"churn generator failed: {g_err.strip()[-300:]}")
        churn = json.loads(g_out.strip().splitlines()[-1])
        if td.poll() is None:  # the churn ended first: flush tcpdump (TPACKET_V3 hands blocks over per 1 s)
            time.sleep(1.5)
            td.send_signal(signal.SIGINT)
        _, td_err = td.communicate(timeout=60)
        m = re.search(r"(\d+) packets dropped by kernel", td_err)
        captured = re.search(r"(\d+) packets captured", td_err)
        os.replace(tmp, path)
        ledger.discard("file", str(tmp))
        return {"file": str(path), "packets_asked": packets,
                "packets_captured": int(captured.group(1)) if captured else None,
                "tcpdump_kernel_drops": int(m.group(1)) if m else None, "port_range": PORT_RANGE,
                "tcp_tw_reuse": tw_reuse, "churn": churn, "generation_s": round(time.monotonic() - t0, 1),
                "kernel": os.uname().release}
    finally:
        for p in (gen, td):  # their own process groups (start_new_session): the churn's forked workers too
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        ledger.close()  # deletes the namespace and the temporary file


def pcap_prefix(src: Path, dst: Path, count: int) -> int:
    """The first `count` records of a pcap file (tcpdump's output) into dst, atomically."""
    with open(src, "rb") as f:
        head = f.read(24)
        order = "<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        rec = struct.Struct(order + "IIII")
        tmp = dst.with_suffix(".tmp")
        n = 0
        with open(tmp, "wb") as out:
            out.write(head)
            while n < count:
                hdr = f.read(16)
                if len(hdr) < 16:
                    break
                out.write(hdr + f.read(rec.unpack(hdr)[2]))
                n += 1
        tmp.replace(dst)
    return n


# --- measurement --------------------------------------------------------------------------------------

def run_measured(cmd: list[str], stdout: Path | None = None) -> dict[str, Any]:
    """One run in a fresh process on core 0: wall and CPU seconds, peak RSS.

    Peak RSS comes from GNU time (%M), which forks the tool from its own small process: wait4's ru_maxrss of
    a child we spawn directly starts at *this* process's peak (subprocess uses vfork, and Linux carries the
    old mm's high-water mark over exec), which made every tool look at least as big as the benchmark."""
    with tempfile.TemporaryFile() as err, open(stdout or os.devnull, "wb") as out, \
            tempfile.NamedTemporaryFile("r", prefix=f"twl{new_run_id()}rss-") as rss:
        t0 = time.perf_counter()
        p = subprocess.Popen(["taskset", "-c", "0", GNU_TIME, "-f", "%M", "-o", rss.name, *cmd], stdout=out,
                             stderr=err, cwd=REPO)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-400:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {tail}")
        peak_kib = int(rss.read().split()[-1])
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mib": peak_kib / 1024}


def accelerator() -> str:
    """'active: ...', 'inactive: <why>' or 'unknown: ...': lab.accel as a fresh `twlab` process sees it."""
    r = subprocess.run([sys.executable, "-c", ACCEL_PROBE], capture_output=True, text=True, cwd=REPO, check=False)
    return r.stdout.strip() or f"unknown: {r.stderr.strip()[-200:]}"


def check_output(path: Path, packets: int) -> dict[str, Any]:
    """The CLI's output is one complete `analyze --json` object (not just fast because it wrote nothing)."""
    text = path.read_text()
    if text.count("\n") != 1:
        raise RuntimeError(f"{path}: {text.count(chr(10))} lines, expected one JSON object")
    doc = json.loads(text)
    ids = {c["id"] for c in doc["connections"]}
    if doc["packets"] != packets or len(ids) != len(doc["connections"]) or ids != set(range(len(ids))):
        raise RuntimeError(f"{path}: packets {doc['packets']} (expected {packets}) or connection ids not 0..n-1")
    return {"bytes": len(text), "connections": len(ids), "findings": len(doc["findings"])}


def markdown_table(rows: list[dict[str, Any]], accel: str, big: int, small: int) -> str:
    """The figures as a README table: per tool, full file and prefix side by side."""
    out = [f"| tool (one core) | {big // 1000} k packets: pkts/s | CPU s | peak RSS | first {small // 1000} k: "
           "pkts/s | peak RSS |", "|---|---:|---:|---:|---:|---:|"]
    tools = list(dict.fromkeys(r["tool"] for r in rows))
    for tool in tools:
        full = next(r for r in rows if r["tool"] == tool and r["file"] == "full")
        pre = next(r for r in rows if r["tool"] == tool and r["file"] == "prefix")
        name = f"`{tool}`" if tool.startswith(("twlab", "tshark")) else tool
        out.append(f"| {name} | {full['pkts_per_s']:,} | {full['cpu_s']:.2f} | {full['peak_rss_mib']:,.0f} MiB | "
                   f"{pre['pkts_per_s']:,} | {pre['peak_rss_mib']:,.0f} MiB |")
    out.append(f"\naccelerator (lab.accel): {accel}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks analyze")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--prefix", type=int, default=100_000, help="packets in the small file for the memory check")
    ap.add_argument("--regen", action="store_true", help="capture a new churn file even if one is cached")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool and file; the best wall time counts")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--file", type=Path, default=None, help="measure this capture instead of the churn file")
    ap.add_argument("--out", type=Path, default=OUT / "analyze.json")
    args = ap.parse_args(argv)
    for tool in ("tshark", "taskset", GNU_TIME) + (() if args.file else ("tcpdump", "ip")):
        if not shutil.which(tool):
            print(f"bench analyze: {tool} not found: apt-get install -y tshark tcpdump iproute2 util-linux time",
                  file=sys.stderr)
            return 3
    OUT.mkdir(parents=True, exist_ok=True)
    gen_meta: dict[str, Any] = {}
    if args.file:
        big = args.file
    else:
        big = OUT / f"churn-{args.packets}.pcap"
        meta_path = big.with_suffix(".json")
        if args.regen or not big.exists() or not meta_path.exists():
            if not is_root():
                print("bench analyze: generating the churn capture needs root (a lab namespace and tcpdump): "
                      "sudo .venv/bin/python -m benchmarks analyze", file=sys.stderr)
                return 3
            print(f"generating {big.name}: real loopback churn in a lab namespace ...", flush=True)
            gen_meta = generate(big, args.packets, args.clients, args.servers)
            meta_path.write_text(json.dumps(gen_meta, indent=2) + "\n")
        else:
            gen_meta = json.loads(meta_path.read_text())
            print(f"using cached {big} (--regen to capture a new one)", flush=True)
        ch = gen_meta.get("churn", {})
        print(f"  {gen_meta.get('packets_captured')} packets, {ch.get('connections')} connections "
              f"(C {ch.get('mode_C')}, S {ch.get('mode_S')}, RST {ch.get('mode_R', 0) + ch.get('mode_r_abort', 0)}),"
              f" {ch.get('retries')} EADDRNOTAVAIL retries, tcpdump drops {gen_meta.get('tcpdump_kernel_drops')},"
              f" generated in {gen_meta.get('generation_s')} s", flush=True)
    small = OUT / f"{big.stem}-first{args.prefix}.pcap"
    if args.regen or not small.exists() or small.stat().st_mtime < big.stat().st_mtime:
        pcap_prefix(big, small, args.prefix)

    from lab.pcap.readers import CaptureReader

    counts = {}
    for f in (big, small):
        reader = CaptureReader(f)
        sum(1 for _ in reader)
        counts[f] = reader.stats.packets
    accel = accelerator()
    print(f"accelerator: {accel}", flush=True)
    twlab = [sys.executable, "-m", "lab", "analyze", "{file}", "--json"]
    tools = [(OURS, twlab),
             (OURS_PURE, ["env", "TWLAB_PURE=1", *twlab]),   # the README's "pure Python is Nx slower"
             (OURS_DETAIL, [*twlab, "--detail"]),
             ("reader only (CaptureReader, Python)", [sys.executable, "-c", READER_ONLY, "{file}"]),
             ("reader + analyzer, no output", [sys.executable, "-c", ANALYZER_ONLY, "{file}"]),
             (CONV, ["tshark", "-q", "-z", "conv,tcp", "-r", "{file}"]),
             ("tshark -T fields (3 fields)", ["tshark", "-T", "fields", "-e", "frame.number", "-e", "tcp.stream",
                                              "-e", "tcp.flags", "-r", "{file}"])]
    rows: list[dict[str, Any]] = []
    outputs: dict[str, dict[str, Any]] = {}
    for f, label in ((big, "full"), (small, "prefix")):
        best: dict[str, dict[str, Any]] = {}
        for rep in range(args.repeat):
            for name, cmd in tools:
                argv = [str(f) if c == "{file}" else c for c in cmd]
                if rep == 0 and name == OURS:
                    fd, spool = tempfile.mkstemp(prefix=f"twl{new_run_id()}bench-", suffix=".json")
                    os.close(fd)
                    try:
                        m = run_measured(argv, stdout=Path(spool))
                        outputs[label] = check_output(Path(spool), counts[f])
                    finally:
                        os.unlink(spool)
                else:
                    m = run_measured(argv)
                b = best.setdefault(name, m)
                if m["wall_s"] < b["wall_s"]:
                    b.update(wall_s=m["wall_s"], cpu_s=m["cpu_s"])
                b["peak_rss_mib"] = max(b["peak_rss_mib"], m["peak_rss_mib"])
                b["cpu_s"] = min(b["cpu_s"], m["cpu_s"])
        for name, _ in tools:
            m = best[name]
            rows.append({"tool": name, "file": label, "packets": counts[f], "wall_s": round(m["wall_s"], 3),
                         "cpu_s": round(m["cpu_s"], 3), "pkts_per_s": round(counts[f] / m["wall_s"]),
                         "pkts_per_cpu_s": round(counts[f] / m["cpu_s"]) if m["cpu_s"] else None,
                         "peak_rss_mib": round(m["peak_rss_mib"], 1)})

    print(f"\n{'tool':<38} {'file':<7} {'packets':>9} {'wall s':>8} {'cpu s':>8} {'pkts/s':>10} "
          f"{'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['tool']:<38} {r['file']:<7} {r['packets']:>9} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
              f"{r['pkts_per_s']:>10} {r['peak_rss_mib']:>13.1f}")
    for label, o in outputs.items():
        print(f"{OURS} output ({label}): {o['bytes'] / 2**20:.1f} MiB, {o['connections']} connections, "
              f"{o['findings']} findings: parses, ids 0..n-1 each once")

    def row(tool: str, label: str) -> dict[str, Any]:
        return next(r for r in rows if r["tool"] == tool and r["file"] == label)

    ours, conv = row(OURS, "full"), row(CONV, "full")
    ours_small = row(OURS, "prefix")
    speedup = ours["pkts_per_s"] / conv["pkts_per_s"]
    mem_ratio = ours["peak_rss_mib"] / conv["peak_rss_mib"]
    growth = ours["peak_rss_mib"] / ours_small["peak_rss_mib"]
    # CPU seconds, not wall: on a busy machine the wall clock measures the neighbours
    pure_slowdown = row(OURS_PURE, "full")["cpu_s"] / ours["cpu_s"]
    result = {
        "benchmark": "analyze", "kernel": os.uname().release, "file": str(big), "generation": gen_meta,
        "ours": OURS, "accelerator": accel, "output": outputs, "rows": rows, "repeat": args.repeat, "core": 0,
        "throughput_vs_tshark_conv": round(speedup, 2), "memory_vs_tshark_conv": round(mem_ratio, 3),
        "ours_rss_full_vs_prefix": round(growth, 2), "pure_python_slowdown": round(pure_slowdown, 2),
        "targets": {"throughput >= 2x tshark -z conv,tcp": speedup >= 2.0,
                    "peak RSS <= 1/4 of tshark -z conv,tcp": mem_ratio <= 0.25},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(f"\n{OURS}: {speedup:.2f}x the throughput of tshark -z conv,tcp (target >= 2x), "
          f"{mem_ratio:.2f} of its peak RSS (target <= 0.25); RSS {counts[big] // 1000}k vs "
          f"{counts[small] // 1000}k packets: {growth:.2f}x; pure Python (TWLAB_PURE=1): {pure_slowdown:.1f}x the "
          "CPU time")
    print(markdown_table(rows, accel, counts[big], counts[small]))
    print(f"written {args.out}")
    return 0 if all(result["targets"].values()) else 1
