"""The analyzer in an incident (issue 14): stdin versus file throughput, live analysis at the churn limit, and
`twlab verify` against tshark's own pass.

    .venv/bin/python -m benchmarks incident [--file F] [--repeat 3] [--rates 1000,2000,5000,10000,20000]

- stdin vs file: `twlab analyze --json F` against `cat F | twlab analyze --json -` (the same walk over a
  pipe), interleaved rounds, the best wall and CPU seconds of each (CPU includes cat's, ~1 %); target: the
  same within 10 %.
- live: in a lab namespace (twl<id>bench, deleted at the end) `twlab analyze -i lo --netns NS` runs while
  benchmarks/bench_capture.py's generator opens connections at rising rates; the kernel's own count
  (TcpOutSegs + TcpRetransSegs of the namespace; on lo each segment sent is received once) against the
  packets twlab analyzed; target: 0 % loss at every rate the generator reaches.
- verify: `twlab verify F` against `tshark -T fields` with the fields verify reads (both on cores 0,1: verify
  runs tshark beside its own reading), interleaved rounds, the best wall of each, CPU and peak RSS; verify's
  peak RSS twice: of the whole run (GNU time: the larger of twlab and the tshark it runs) and of twlab's own
  process; on the file and on its first 100 k packets (editcap), to show twlab's own memory is flat.

The churn file is benchmarks/bench_analyze.py's (cached in benchmarks/out/, made there when missing).
Writes benchmarks/out/incident.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_analyze import OUT as ANALYZE_OUT
from benchmarks.bench_analyze import generate, run_measured
from benchmarks.bench_capture import GENERATOR, _kernel_segs, _ns, churn_namespace
from lab.run.context import is_root, new_run_id
from lab.run.resources import Ledger

OUT = Path(__file__).resolve().parent / "out" / "incident.json"
REPO = Path(__file__).resolve().parent.parent
TWLAB = [sys.executable, "-m", "lab"]
RATES = (1000, 2000, 5000, 10000, 20000)


def churn(packets: int) -> Path:
    path = ANALYZE_OUT / f"churn-{packets}.pcap"
    if not path.exists():
        if not is_root():
            raise SystemExit("bench incident: generating the churn capture needs root; or pass --file")
        print(f"generating {path.name} ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = generate(path, packets, 4, 4)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def stdin_vs_file(f: Path, repeat: int) -> dict[str, Any]:
    tw = " ".join(TWLAB)
    ways = {"file": [*TWLAB, "analyze", "--json", str(f)],
            "stdin": ["sh", "-c", f"cat '{f}' | {tw} analyze --json -"]}
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):                     # interleaved: load changes hit both alike
        for name, cmd in ways.items():
            m = run_measured(cmd, cpus="0,1")
            b = best.setdefault(name, m)
            best[name] = {k: min(b[k], m[k]) for k in m}
    ratio_wall = best["stdin"]["wall_s"] / best["file"]["wall_s"]
    ratio_cpu = best["stdin"]["cpu_s"] / best["file"]["cpu_s"]
    return {"file": best["file"], "stdin": best["stdin"], "stdin_over_file_wall": round(ratio_wall, 3),
            "stdin_over_file_cpu": round(ratio_cpu, 3), "target_met": ratio_wall <= 1.10}


# twlab with its own process's peak RSS written to argv[1] at exit (GNU time's %M is the largest of the tree:
# tshark's, for verify)
_SELF_RSS = ("import atexit, resource, runpy, sys\n"
             "out = sys.argv.pop(1)\n"
             "atexit.register(lambda: open(out, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
             "sys.argv[0] = 'twlab'\n"
             "runpy.run_module('lab', run_name='__main__', alter_sys=True)\n")
PREFIX = 100_000   # packets of the file's prefix verify is also measured on


def _verify_measured(f: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", prefix=f"twl{os.getpid()}verify-rss-") as own:
        m = run_measured([sys.executable, "-c", _SELF_RSS, own.name, "verify", "--json", str(f)], cpus="0,1")
        m["own_peak_rss_mib"] = int(own.read() or 0) / 1024
    return m


def _prefix(f: Path, packets: int) -> Path:
    """The first `packets` packets of f (cached beside the benchmark's files)."""
    out = ANALYZE_OUT / f"{f.stem}-first{packets // 1000}k.pcap"
    if not out.exists() or out.stat().st_mtime < f.stat().st_mtime:
        tmp = out.with_suffix(".tmp")
        subprocess.run(["editcap", "-F", "pcap", "-r", str(f), str(tmp), f"1-{packets}"], check=True,
                       capture_output=True)
        tmp.replace(out)
    return out


def verify_vs_tshark_on(f: Path, repeat: int) -> dict[str, Any]:
    from lab.analysis.verify import _FIELDS

    fields = [x for _, field in _FIELDS for x in ("-e", field)]
    tshark_cmd = ["tshark", "-n", "-r", str(f), "-T", "fields", "-E", "occurrence=a", *fields]
    theirs: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    for _ in range(repeat):   # interleaved: the machine's other load falls on both alike
        theirs.append(run_measured(tshark_cmd, cpus="0,1"))
        ours.append(_verify_measured(f))
    t = min(theirs, key=lambda m: m["wall_s"])
    o = min(ours, key=lambda m: m["wall_s"])
    o["own_peak_rss_mib"] = max(m["own_peak_rss_mib"] for m in ours)
    return {"file": str(f), "tshark": t, "verify": o, "wall_ratio": round(o["wall_s"] / t["wall_s"], 3),
            "cpu_ratio": round(o["cpu_s"] / t["cpu_s"], 3), "target_met": o["wall_s"] <= 1.5 * t["wall_s"],
            "loadavg_1min": os.getloadavg()[0]}


def verify_vs_tshark(f: Path, repeat: int) -> dict[str, Any]:
    out = verify_vs_tshark_on(f, repeat)
    if shutil.which("editcap"):
        small = verify_vs_tshark_on(_prefix(f, PREFIX), repeat)
        out["prefix"] = small
        out["own_rss_growth"] = round(out["verify"]["own_peak_rss_mib"] / small["verify"]["own_peak_rss_mib"], 3)
    return out


def _live_step(ns: str, rate: int, duration_s: float, port: int, nproc: int) -> dict[str, Any]:
    env = dict(os.environ, TERM="dumb")
    tw = subprocess.Popen([*TWLAB, "analyze", "-i", "lo", "--netns", ns, "-f", f"tcp port {port}", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert tw.stderr is not None
    ready = tw.stderr.readline()
    if "capturing on" not in ready:
        tw.kill()
        raise RuntimeError(f"twlab analyze -i did not start: {ready.strip()}")
    before = _kernel_segs(ns)
    gen = subprocess.run(_ns(ns, sys.executable, "-c", GENERATOR, str(rate), str(duration_s), str(port), str(nproc)),
                         capture_output=True, text=True, timeout=duration_s * 20 + 60)
    if gen.returncode != 0:
        tw.kill()
        raise RuntimeError(f"generator failed: {gen.stderr.strip()[-300:]}")
    conns, elapsed = gen.stdout.split()
    time.sleep(0.3)   # delayed ACKs of the last connections
    after = _kernel_segs(ns)
    tw.send_signal(signal.SIGINT)   # Ctrl-C: twlab drains what the kernel queued and prints its summary
    out, err = tw.communicate(timeout=300)
    doc = json.loads(out)
    m = re.search(r"captured (\d+) packets, kernel drops (\d+)", err)
    kernel = after - before
    ours = int(doc["packets"])
    return {"rate_target": rate, "connections": int(conns), "rate_achieved": round(int(conns) / float(elapsed)),
            "kernel_segments": kernel, "analyzed_packets": ours, "analyzed_connections": len(doc["connections"]),
            "lost_pct": round(100.0 * (kernel - ours) / kernel, 3) if kernel else 0.0,
            "kernel_drops": int(m.group(2)) if m else None}


def live(rates: list[int], duration_s: float, nproc: int) -> dict[str, Any]:
    run_id = new_run_id()
    ns = f"twl{run_id}bench"
    ledger = Ledger(run_id)
    rows: list[dict[str, Any]] = []
    try:
        churn_namespace(ns, ledger)
        for i, rate in enumerate(rates):
            row = _live_step(ns, rate, duration_s, 21000 + i, nproc)
            rows.append(row)
            print(f"  live {row['rate_target']:>6}/s target, {row['rate_achieved']:>6}/s achieved: kernel "
                  f"{row['kernel_segments']} segments, analyzed {row['analyzed_packets']} "
                  f"({row['lost_pct']} % lost, kernel drops {row['kernel_drops']})", flush=True)
            if row["rate_achieved"] < 0.8 * rate:   # the generator is at the machine's limit
                break
    finally:
        ledger.close()
    return {"rows": rows, "max_rate_achieved": max((r["rate_achieved"] for r in rows), default=0),
            "target_met": all(r["lost_pct"] <= 0 for r in rows)}


def markdown(res: dict[str, Any]) -> str:
    out = ["| measure | twlab | reference | ratio |", "|---|---|---|---|"]
    sv = res.get("stdin_vs_file")
    if sv:
        out.append(f"| analyze --json, stdin vs file (wall s) | {sv['stdin']['wall_s']:.2f} | "
                   f"{sv['file']['wall_s']:.2f} | {sv['stdin_over_file_wall']:.2f}x |")
    ve = res.get("verify")
    if ve:
        out.append(f"| verify vs tshark -T fields (wall s) | {ve['verify']['wall_s']:.2f} | "
                   f"{ve['tshark']['wall_s']:.2f} | {ve['wall_ratio']:.2f}x |")
        out.append(f"| verify vs tshark (peak RSS MiB, whole run incl. its tshark) | "
                   f"{ve['verify']['peak_rss_mib']:.0f} | {ve['tshark']['peak_rss_mib']:.0f} | "
                   f"{ve['verify']['peak_rss_mib'] / ve['tshark']['peak_rss_mib']:.2f}x |")
        small = ve.get("prefix")
        if small:
            out.append(f"| verify's own process, peak RSS MiB: whole file vs first {PREFIX // 1000} k packets | "
                       f"{ve['verify']['own_peak_rss_mib']:.0f} | {small['verify']['own_peak_rss_mib']:.0f} | "
                       f"{ve['own_rss_growth']:.2f}x |")
            out.append(f"| verify vs tshark on the first {PREFIX // 1000} k packets (wall s) | "
                       f"{small['verify']['wall_s']:.2f} | {small['tshark']['wall_s']:.2f} | "
                       f"{small['wall_ratio']:.2f}x |")
    lv = res.get("live")
    if lv and lv["rows"]:
        top = max(lv["rows"], key=lambda r: r["rate_achieved"])
        out.append(f"| analyze -i lo at {top['rate_achieved']:,} conn/s: packets analyzed vs kernel | "
                   f"{top['analyzed_packets']:,} | {top['kernel_segments']:,} | {top['lost_pct']} % lost |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks incident")
    ap.add_argument("--file", type=Path, default=None, help="capture for stdin-vs-file and verify")
    ap.add_argument("--packets", type=int, default=1_000_000, help="churn file size when no --file")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of churn per live rate")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: stdin,verify,live")
    ap.add_argument("--only", default="", help="comma list of the parts to run (the others are skipped)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip |= {"stdin", "verify", "live"} - set(args.only.split(","))
    for tool in ("tshark", "taskset") + (() if "live" in skip else ("nstat", "ip")):
        if not shutil.which(tool):
            print(f"bench incident: {tool} not found: apt-get install -y tshark util-linux iproute2",
                  file=sys.stderr)
            return 3
    f = args.file or churn(args.packets)
    res: dict[str, Any] = {"benchmark": "incident", "file": str(f), "kernel": os.uname().release}
    if "stdin" not in skip:
        res["stdin_vs_file"] = stdin_vs_file(f, args.repeat)
        print(f"  stdin/file wall {res['stdin_vs_file']['stdin_over_file_wall']}x, "
              f"cpu {res['stdin_vs_file']['stdin_over_file_cpu']}x", flush=True)
    if "verify" not in skip:
        res["verify"] = verify_vs_tshark(f, args.repeat)
        print(f"  verify/tshark wall {res['verify']['wall_ratio']}x, cpu {res['verify']['cpu_ratio']}x", flush=True)
    if "live" not in skip:
        if not is_root():
            print("bench incident: the live part needs root (--skip live)", file=sys.stderr)
            return 3
        res["live"] = live([int(r) for r in args.rates.split(",")], args.duration, args.procs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(args.out)
    print(markdown(res))
    print(f"written {args.out}")
    return 0
