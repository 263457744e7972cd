"""Analyzer throughput and memory against tshark, argus, tcptrace and tcpdump, on ~1 M packets of real loopback
churn, on a capture whose four-tuples never repeat, and (opt-in) on 10 M packets.

Captures (cached in benchmarks/out/, --regen to redo them):
    churn     in a lab namespace made for this run (twl<id>churn, deleted at the end), benchmarks/churn.py
              opens connections on lo with a narrowed ip_local_port_range (that namespace only) so four-tuples
              come back during TIME_WAIT; clients and servers alternately close first and some connections end
              with an SO_LINGER {1,0} RST. tcpdump -i lo inside the namespace writes the first --packets packets.
    prefix    its first --prefix packets (memory must follow open connections, not file size)
    distinct  --distinct four-tuples that never repeat (benchmarks/synth.py: handshake + RST each, 4 packets)
    10M       --scale: the churn file 10 times over (benchmarks/synth.repeated), opt-in: it takes a while

Measurement, one tool at a time in a fresh process pinned to one core (taskset -c 0), best of --repeat
(distinct and 10M: once): wall time, CPU time (wait4: the tool and its children, e.g. both ends of
argus | ra), and peak RSS (GNU time's %M: the largest process). Rows:
    twlab analyze FILE --json           (output to a file on the first run, checked: it parses and lists every
                                          connection; /dev/null afterwards); also pure Python and --detail
    reader only / reader + analyzer     (CaptureReader; lab.pcap.feed.feed_file into a streaming Analyzer)
    argus -r FILE -w - | ra -n -r -     (Debian argus-server, argus-client: flow records)
    tcptrace -n -l FILE                 (per-connection long output)
    tcpdump -r FILE -nn                 (decode and print every packet)
    tshark -q -z conv,tcp; tshark -T fields (3 fields)
    twlab annotate FILE -o OUT          (churn: a pcapng with the narrator's comments)
    twlab show FILE [--connection ID]   (churn: the default connection, and one 90 % into the file)
    twlab verify FILE                   (churn, --verify: the tshark cross-check, and tshark's own pass)
and on two cores (taskset -c 0,1): `twlab analyze --json F F` (one after the other) against `-j 2 F F`, and
one file in two shards (`-j 2 F`).

    sudo .venv/bin/python -m benchmarks analyze [--packets=1000000] [--distinct=1000000] [--scale] [--verify]
                                                [--regen] [--repeat=2]
(options in --name=value form: python -m benchmarks takes bare words for benchmark names)

Writes benchmarks/out/analyze.json and prints the README's tables.
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

def run_measured(cmd: list[str], stdout: Path | None = None, cpus: str = "0") -> dict[str, Any]:
    """One run in a fresh process on core(s) `cpus`: wall and CPU seconds, peak RSS.

    Peak RSS comes from GNU time (%M), which forks the tool from its own small process: wait4's ru_maxrss of
    a child we spawn directly starts at *this* process's peak (subprocess uses vfork, and Linux carries the
    old mm's high-water mark over exec), which made every tool look at least as big as the benchmark."""
    with tempfile.TemporaryFile() as err, open(stdout or os.devnull, "wb") as out, \
            tempfile.NamedTemporaryFile("r", prefix=f"twl{new_run_id()}rss-") as rss:
        t0 = time.perf_counter()
        p = subprocess.Popen(["taskset", "-c", cpus, GNU_TIME, "-f", "%M", "-o", rss.name, *cmd], stdout=out,
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


# --- the tools ----------------------------------------------------------------------------------------------

ARGUS = "argus -r F -w - | ra -n -r -"
TCPTRACE = "tcptrace -n -l"
TCPDUMP = "tcpdump -r F -nn"
FIELDS = "tshark -T fields (3 fields)"
ANNOTATE = "twlab annotate (-o pcapng)"
SHOW_FIRST = "twlab show (default connection)"
SHOW_LATE = "twlab show --connection (90 % into the file)"
VERIFY = "twlab verify"
TSHARK_PASS = "tshark -r F (its own pass)"
TWLAB = [sys.executable, "-m", "lab"]
DEBIAN = {"argus": "argus-server", "ra": "argus-client", "tcptrace": "tcptrace", "tcpdump": "tcpdump",
          "tshark": "tshark"}


def base_tools() -> list[tuple[str, list[str]]]:
    twlab = [*TWLAB, "analyze", "{file}", "--json"]
    return [(OURS, twlab),
            (OURS_PURE, ["env", "TWLAB_PURE=1", *twlab]),   # the README's "pure Python is Nx slower"
            (OURS_DETAIL, [*twlab, "--detail"]),
            ("reader only (CaptureReader, Python)", [sys.executable, "-c", READER_ONLY, "{file}"]),
            ("reader + analyzer, no output", [sys.executable, "-c", ANALYZER_ONLY, "{file}"]),
            (CONV, ["tshark", "-q", "-z", "conv,tcp", "-r", "{file}"]),
            (FIELDS, ["tshark", "-T", "fields", "-e", "frame.number", "-e", "tcp.stream", "-e", "tcp.flags",
                      "-r", "{file}"])]


def flow_tools(tcptrace: bool = True) -> list[tuple[str, list[str]]]:
    """The other flow tools (Debian packages argus-server, argus-client, tcptrace, tcpdump)."""
    tools = [(ARGUS, ["sh", "-c", 'argus -r "$1" -w - | ra -n -r -', "sh", "{file}"]),
             (TCPDUMP, ["tcpdump", "-r", "{file}", "-nn"])]
    if tcptrace:
        tools.append((TCPTRACE, ["tcptrace", "-n", "-l", "{file}"]))
    return tools


def command_tools(late_id: int, verify: bool) -> list[tuple[str, list[str]]]:
    tools = [(ANNOTATE, [*TWLAB, "annotate", "{file}", "-o", "{out}"]),
             (SHOW_FIRST, [*TWLAB, "show", "{file}", "--width", "120"]),
             (SHOW_LATE, [*TWLAB, "show", "{file}", "--width", "120", "--connection", str(late_id)])]
    if verify:
        tools += [(VERIFY, [*TWLAB, "verify", "{file}"]), (TSHARK_PASS, ["tshark", "-r", "{file}"])]
    return tools


def install_flow_tools() -> None:
    """bench mode only: the Debian packages of the comparison tools, when missing (root)."""
    missing = sorted({DEBIAN[t] for t in DEBIAN if shutil.which(t) is None})
    if not missing:
        return
    if not is_root():
        raise SystemExit(f"bench analyze: missing {' '.join(missing)}: apt-get install -y {' '.join(missing)}")
    print(f"installing {' '.join(missing)} (Debian packages, for the comparison rows)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def measure(tools: list[tuple[str, list[str]]], f: Path, label: str, packets: int, repeat: int,
            rows: list[dict[str, Any]], outputs: dict[str, dict[str, Any]], cpus: str = "0") -> None:
    """Each tool `repeat` times on `f` (round-robin: load changes hit every tool alike); the best wall and
    CPU time and the largest peak RSS go into `rows`."""
    best: dict[str, dict[str, Any]] = {}
    for rep in range(repeat):
        for name, cmd in tools:
            out_file = Path(tempfile.gettempdir()) / f"twl{new_run_id()}bench-out.pcapng"
            argv = [str(f) if c == "{file}" else str(out_file) if c == "{out}" else c for c in cmd]
            try:
                if rep == 0 and name == OURS:
                    fd, spool = tempfile.mkstemp(prefix=f"twl{new_run_id()}bench-", suffix=".json")
                    os.close(fd)
                    try:
                        m = run_measured(argv, stdout=Path(spool), cpus=cpus)
                        outputs[label] = check_output(Path(spool), packets)
                    finally:
                        os.unlink(spool)
                else:
                    m = run_measured(argv, cpus=cpus)
            finally:
                out_file.unlink(missing_ok=True)
            print(f"  {label:<9} {name:<46} cpu {m['cpu_s']:8.2f} s  wall {m['wall_s']:8.2f} s  "
                  f"rss {m['peak_rss_mib']:8.1f} MiB", flush=True)
            b = best.setdefault(name, dict(m))
            b["wall_s"] = min(b["wall_s"], m["wall_s"])
            b["cpu_s"] = min(b["cpu_s"], m["cpu_s"])
            b["peak_rss_mib"] = max(b["peak_rss_mib"], m["peak_rss_mib"])
    for name, _ in tools:
        m = best[name]
        rows.append({"tool": name, "file": label, "packets": packets, "cores": cpus,
                     "wall_s": round(m["wall_s"], 3), "cpu_s": round(m["cpu_s"], 3),
                     "pkts_per_s": round(packets / m["wall_s"]),
                     "pkts_per_cpu_s": round(packets / m["cpu_s"]) if m["cpu_s"] else None,
                     "peak_rss_mib": round(m["peak_rss_mib"], 1)})


def markdown_table(rows: list[dict[str, Any]], label: str, title: str) -> str:
    """One file's rows as a README table, with each tool's CPU time against `twlab analyze --json`'s."""
    mine = [r for r in rows if r["file"] == label]
    ours = next((r for r in mine if r["tool"] == OURS), None)
    out = [f"{title}\n", "| tool | CPU s | wall s | packets per CPU s | peak RSS | CPU vs `twlab analyze --json` |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in mine:
        name = f"`{r['tool']}`" if r["tool"].startswith(("twlab", "tshark", "argus", "tcp")) else r["tool"]
        if r["cores"] != "0":
            name += " (2 cores)"
        ratio = f"{r['cpu_s'] / ours['cpu_s']:.2f}x" if ours and ours["cpu_s"] else "-"
        out.append(f"| {name} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['pkts_per_cpu_s'] or 0:,} | "
                   f"{r['peak_rss_mib']:,.0f} MiB | {ratio} |")
    return "\n".join(out)


def _packets(f: Path) -> int:
    from lab.pcap.readers import CaptureReader

    reader = CaptureReader(f)
    sum(1 for _ in reader)
    return reader.stats.packets


def churn_file(args: argparse.Namespace) -> tuple[Path, dict[str, Any]] | None:
    big = OUT / f"churn-{args.packets}.pcap"
    meta_path = big.with_suffix(".json")
    if args.regen or not big.exists() or not meta_path.exists():
        if not is_root():
            print("bench analyze: generating the churn capture needs root (a lab namespace and tcpdump): "
                  "sudo .venv/bin/python -m benchmarks analyze", file=sys.stderr)
            return None
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
    return big, gen_meta


def main(argv: list[str]) -> int:
    from benchmarks import synth

    ap = argparse.ArgumentParser(prog="benchmarks analyze")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--prefix", type=int, default=100_000, help="packets in the small file for the memory check")
    ap.add_argument("--distinct", type=int, default=1_000_000, help="four-tuples of the distinct capture (0: skip)")
    ap.add_argument("--scale", action="store_true", help="also the 10x file (10 M packets): takes a while")
    ap.add_argument("--verify", action="store_true", help="also twlab verify (the tshark cross-check)")
    ap.add_argument("--only", default="", help="comma-separated parts to measure: full,prefix,distinct,x10,cores "
                                               "(default: all; x10 with --scale)")
    ap.add_argument("--regen", action="store_true", help="capture a new churn file even if one is cached")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool and file; the best time counts")
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
    install_flow_tools()
    OUT.mkdir(parents=True, exist_ok=True)
    gen_meta: dict[str, Any] = {}
    if args.file:
        big = args.file
    else:
        got = churn_file(args)
        if got is None:
            return 3
        big, gen_meta = got
    small = OUT / f"{big.stem}-first{args.prefix}.pcap"
    if args.regen or not small.exists() or small.stat().st_mtime < big.stat().st_mtime:
        pcap_prefix(big, small, args.prefix)
    files: list[tuple[Path, str]] = [(big, "full"), (small, "prefix")]
    if args.distinct:
        dist = OUT / f"distinct-{args.distinct}.pcap"
        if args.regen or not dist.exists():
            print(f"writing {dist.name}: {args.distinct} four-tuples that never repeat ...", flush=True)
            synth.distinct(dist, args.distinct)
        files.append((dist, "distinct"))
    if args.scale:
        ten = OUT / f"{big.stem}-x10.pcap"
        if args.regen or not ten.exists() or ten.stat().st_mtime < big.stat().st_mtime:
            print(f"writing {ten.name}: the churn file 10 times over ...", flush=True)
            synth.repeated(big, ten, 10)
        files.append((ten, "x10"))
    counts = {label: _packets(f) for f, label in files}
    accel = accelerator()
    print(f"accelerator: {accel}", flush=True)

    rows: list[dict[str, Any]] = []
    outputs: dict[str, dict[str, Any]] = {}
    parts = set(args.only.split(",")) if args.only else {"full", "prefix", "distinct", "x10", "cores"}
    if "full" in parts:
        measure(base_tools() + flow_tools(), big, "full", counts["full"], args.repeat, rows, outputs)
        late = outputs["full"]["connections"] * 9 // 10    # ids follow first frames: ~90 % into the file
        measure(command_tools(late, args.verify), big, "full", counts["full"], args.repeat, rows, outputs)
    if "prefix" in parts:
        measure(base_tools(), small, "prefix", counts["prefix"], args.repeat, rows, outputs)
    if args.distinct and "distinct" in parts:
        measure([base_tools()[0], base_tools()[5], *flow_tools()], files[2][0], "distinct", counts["distinct"], 1,
                rows, outputs)
    if args.scale and "x10" in parts:
        measure([base_tools()[0], base_tools()[5], *flow_tools(tcptrace=False)], files[-1][0], "x10",
                counts["x10"], 1, rows, outputs)
    cores = measure_cores(big, counts["full"], args.repeat, rows, outputs) if "cores" in parts else {}
    if args.only and args.out.exists():   # a partial run updates the last full run's rows of these parts
        previous = json.loads(args.out.read_text()).get("rows", [])
        rows = [r for r in previous if r["file"] not in {r2["file"] for r2 in rows}] + rows
        cores = cores or json.loads(args.out.read_text()).get("cores", {})

    result = summarize_rows(rows, cores, accel, gen_meta, args, big)
    tmp_out = args.out.with_suffix(".json.tmp")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    for label, o in outputs.items():
        print(f"{OURS} output ({label}): {o['bytes'] / 2**20:.1f} MiB, {o['connections']} connections, "
              f"{o['findings']} findings: parses, ids 0..n-1 each once")
    print()
    for label, title in TITLES.items():
        mine = [r for r in rows if r["file"] == label]
        if mine:
            print(markdown_table(rows, label, title.format(n=mine[0]["packets"])) + "\n")
    print(f"accelerator (lab.accel): {accel}")
    for k, v in result["targets"].items():
        print(f"target {'met' if v else 'NOT met'}: {k}")
    print(f"written {args.out}")
    return 0 if all(result["targets"].values()) else 1


TITLES = {"full": "churn, {n:,} packets (one core)", "prefix": "its first {n:,} packets",
          "distinct": "{n:,} packets, four-tuples never repeat (one core, one run)",
          "x10": "churn x10, {n:,} packets (one core, one run)", "cores": "two files / two shards (two cores)"}


def measure_cores(big: Path, packets: int, repeat: int, rows: list[dict[str, Any]],
                  outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`analyze --json F F` one after the other against `-j 2 F F` (and one file in two shards), on two cores."""
    twice = OUT / f"{big.stem}-copy{big.suffix}"
    if not twice.exists() or twice.stat().st_mtime < big.stat().st_mtime:
        shutil.copyfile(big, twice)
    seq = ("twlab analyze --json F G (one after the other)", [*TWLAB, "analyze", "--json", str(big), str(twice)])
    par = ("twlab analyze -j 2 --json F G", [*TWLAB, "analyze", "-j", "2", "--json", str(big), str(twice)])
    one = ("twlab analyze --json F", [*TWLAB, "analyze", "--json", str(big)])
    shards = ("twlab analyze -j 2 --json F (two shards)", [*TWLAB, "analyze", "-j", "2", "--json", str(big)])
    # rounds of one run each, so that each round's parallel run is compared with its own sequential one (a
    # neighbour holding a core slows one round, not the comparison)
    rounds: list[dict[str, Any]] = []
    for _ in range(repeat):
        got: list[dict[str, Any]] = []
        measure([seq, par, one, shards], big, "cores", packets, 1, got, outputs, cpus="0,1")
        rounds.append({r["tool"]: r for r in got})
        rows[:] = [r for r in rows if r["file"] != "cores"] + _best_of(rounds)
    paired = sorted(r[par[0]]["wall_s"] / r[seq[0]]["wall_s"] for r in rounds)
    shard_ratio = sorted(r[shards[0]]["wall_s"] / r[one[0]]["wall_s"] for r in rounds)
    return {"two_files_parallel_vs_sequential_wall": round(paired[0], 3),
            "two_files_parallel_vs_sequential_wall_per_round": [round(x, 3) for x in paired],
            "shards_vs_one_wall": round(shard_ratio[0], 3)}


def _best_of(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tool: the best wall and CPU time and the largest peak RSS over the rounds."""
    out = []
    for tool, first in rounds[0].items():
        r = dict(first)
        for other in rounds[1:]:
            o = other[tool]
            r["wall_s"], r["cpu_s"] = min(r["wall_s"], o["wall_s"]), min(r["cpu_s"], o["cpu_s"])
            r["peak_rss_mib"] = max(r["peak_rss_mib"], o["peak_rss_mib"])
        r["pkts_per_s"] = round(r["packets"] / r["wall_s"])
        r["pkts_per_cpu_s"] = round(r["packets"] / r["cpu_s"]) if r["cpu_s"] else None
        out.append(r)
    return out


def summarize_rows(rows: list[dict[str, Any]], cores: dict[str, Any], accel: str, gen_meta: dict[str, Any],
                   args: argparse.Namespace, big: Path) -> dict[str, Any]:
    def row(tool: str, label: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["tool"] == tool and r["file"] == label), None)

    def cpu(tool: str, label: str = "full") -> float:
        r = row(tool, label)
        return r["cpu_s"] if r else float("nan")

    ours, conv, ours_small = row(OURS, "full"), row(CONV, "full"), row(OURS, "prefix")
    assert ours and conv and ours_small
    speedup = ours["pkts_per_s"] / conv["pkts_per_s"]
    mem_ratio = ours["peak_rss_mib"] / conv["peak_rss_mib"]
    growth = ours["peak_rss_mib"] / ours_small["peak_rss_mib"]
    # CPU seconds, not wall: on a busy machine the wall clock measures the neighbours
    ratios = {"pure_python_slowdown": cpu(OURS_PURE) / cpu(OURS), "argus_vs_ours_cpu": cpu(ARGUS) / cpu(OURS),
              "annotate_vs_analyze_cpu": cpu(ANNOTATE) / cpu(OURS),
              "show_late_vs_analyze_cpu": cpu(SHOW_LATE) / cpu(OURS),
              "show_first_vs_analyze_cpu": cpu(SHOW_FIRST) / cpu(OURS)}
    targets = {"throughput >= 2x tshark -z conv,tcp": speedup >= 2.0,
               "peak RSS <= 1/4 of tshark -z conv,tcp": mem_ratio <= 0.25,
               "analyze CPU <= argus | ra": ratios["argus_vs_ours_cpu"] >= 1.0,
               "annotate CPU <= 2x analyze": ratios["annotate_vs_analyze_cpu"] <= 2.0,
               "show (90 % into the file) CPU <= 1.5x analyze": ratios["show_late_vs_analyze_cpu"] <= 1.5,
               "analyze -j 2 on two files <= 0.6x one after the other (wall)":
                   float(cores.get("two_files_parallel_vs_sequential_wall", 1.0)) <= 0.6}
    d_ours, d_conv = row(OURS, "distinct"), row(CONV, "distinct")
    distinct: dict[str, Any] = {}
    if d_ours and d_conv:
        distinct = {"rss_vs_tshark_conv": round(d_ours["peak_rss_mib"] / d_conv["peak_rss_mib"], 3),
                    "ours_rss_kib_per_four_tuple": round(d_ours["peak_rss_mib"] * 1024 / args.distinct, 2)}
        targets["distinct four-tuples: peak RSS <= 1/4 of tshark conv"] = distinct["rss_vs_tshark_conv"] <= 0.25
    if row(VERIFY, "full") and row(TSHARK_PASS, "full"):
        ratios["verify_vs_tshark_pass_cpu"] = cpu(VERIFY) / cpu(TSHARK_PASS)
        targets["verify CPU <= 1.5x tshark's own pass"] = ratios["verify_vs_tshark_pass_cpu"] <= 1.5
    x10 = row(OURS, "x10")
    scaling = {"cpu_x10_vs_x1": round(x10["cpu_s"] / ours["cpu_s"], 2),
               "rss_x10_vs_x1": round(x10["peak_rss_mib"] / ours["peak_rss_mib"], 2)} if x10 else {}
    return {"benchmark": "analyze", "kernel": os.uname().release, "file": str(big), "generation": gen_meta,
            "ours": OURS, "accelerator": accel, "rows": rows, "repeat": args.repeat,
            "throughput_vs_tshark_conv": round(speedup, 2), "memory_vs_tshark_conv": round(mem_ratio, 3),
            "ours_rss_full_vs_prefix": round(growth, 2), **{k: round(v, 3) for k, v in ratios.items()},
            "cores": cores, "distinct": distinct, "scaling": scaling, "targets": targets}
