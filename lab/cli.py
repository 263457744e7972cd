"""twlab: doctor | list | run | analyze | show | annotate | verify | claims | watch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from lab.errors import LabError


class LabGroup(click.Group):
    """Turns LabError into one line on stderr and its exit code; Ctrl-C into 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LabError as exc:
            click.echo(f"twlab: {exc.one_line()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("twlab: interrupted; lab resources were removed", err=True)
            sys.exit(130)


@click.group(cls=LabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twlab")
def cli() -> None:
    """A packet-level lab for TCP connection teardown and TIME_WAIT."""


@cli.command()
@click.option("--cleanup", is_flag=True, help="Remove resources left by crashed lab runs (by exact name/pid).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def doctor(cleanup: bool, as_json: bool) -> None:
    """Check privileges, tools and namespaces; list leftovers of crashed runs."""
    from lab import doctor as doc
    from lab.run import resources

    removed = resources.cleanup() if cleanup else []
    checks = doc.checks()
    if as_json:
        click.echo(json.dumps({"checks": [c.__dict__ for c in checks], "removed": removed}))
    else:
        from rich.table import Table

        from lab.ui import console

        t = Table(title="twlab doctor")
        t.add_column("check")
        t.add_column("status")
        t.add_column("detail")
        t.add_column("fix")
        for c in checks:
            t.add_row(c.name, "[green]OK[/]" if c.ok else "[red]missing[/]", c.detail, c.fix)
        con = console()
        con.print(t)
        for r in removed:
            con.print(f"removed {r}")
    essential = {"root", "CAP_NET_ADMIN", "CAP_NET_RAW", "ip", "netns"}
    sys.exit(0 if all(c.ok for c in checks if c.name in essential) else 3)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """The experiments, with the claim each one tests."""
    from lab.experiments import all_experiments

    exps = all_experiments()
    if as_json:
        for e in exps:
            click.echo(json.dumps({"experiment": e.id, "claim": e.claim, "lore": e.lore, "topology": e.topology,
                                   "needs_root": e.needs_root, "duration_hint_s": e.duration_hint_s}))
        return
    from rich.table import Table

    from lab.ui import console

    t = Table(title="twlab experiments")
    t.add_column("id", style="bold")
    t.add_column("claim")
    t.add_column("where")
    t.add_column("~s", justify="right")
    for e in exps:
        t.add_row(e.id, e.claim, e.topology + (" (root)" if e.needs_root else ""), f"{e.duration_hint_s:.0f}")
    console().print(t)


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per experiment per line.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default runs/<timestamp>).")
@click.option("--jobs", "-j", type=click.IntRange(1, 32), default=6, show_default=True,
              help="Experiments run at once (each in its own process and namespaces).")
@click.option("--timeout-scale", "timeout_scale", type=click.FloatRange(1.0, 20.0), default=None, metavar="X",
              help="Stretch every wait of the lab by X (1-20; also $TWLAB_TIMEOUT_SCALE). Default: measured from "
                   "how slowly a Python program starts now.")
@click.option("--kernel", "kernels", multiple=True, metavar="VER",
              help="Run inside a user-mode Linux guest of this kernel (5.10, 6.1, 6.12, 7.2 or a linux.uml path); "
                   "repeatable. 'twlab kernels' lists them.")
def run(names: tuple[str, ...], as_json: bool, out: Path | None, jobs: int, kernels: tuple[str, ...],
        timeout_scale: float | None = None) -> None:
    """Run experiments (or 'all') and say whether each claim holds on this kernel."""
    from lab import experiments
    from lab.run import runner

    if timeout_scale is not None:   # for this process and, through the environment, every program it starts
        from lab.run.context import set_timeout_scale

        set_timeout_scale(timeout_scale)

    exps = experiments.get(list(names))
    out_root = out or runner.default_out_dir()
    if kernels:
        _run_in_guests(exps, kernels, out_root, jobs, as_json)
    if len(exps) > 1 and jobs > 1:
        results = _run_parallel(exps, out_root, jobs, as_json)
    else:
        results = [_run_serial(exp, out_root, as_json) for exp in exps]
    if len(exps) > 1:
        from lab import claims

        ledger = claims.judge_all(results)
        claims.write_markdown(ledger, out_root / "claims.md", results)
        if not as_json:
            from lab.ui import console, summary_table

            con = console()
            con.print(summary_table(results))
            con.print(claims.ledger_table(ledger))
            con.print(f"run folder: {out_root}   claims ledger: {out_root / 'claims.md'}")
    codes = [r.get("exit_code") for r in results]
    if 3 in codes or any(r.get("status") == "could-not-run" for r in results):
        sys.exit(3)
    sys.exit(0 if all(r["reproduced"] for r in results) else 1)


def _run_serial(exp: Any, out_root: Path, as_json: bool) -> dict[str, Any]:
    from lab.run import runner

    if as_json:
        res = runner.run_one(exp, out_root)
        click.echo(json.dumps(res, default=str))
        return res
    from lab.ui import console, result_panel

    con = console()
    with con.status(f"[bold]{exp.id}[/]: {exp.claim}") as status:

        def progress(text: str, frac: float | None, status: Any = status, eid: str = exp.id) -> None:
            status.update(f"[bold]{eid}[/]: {text}")

        res = runner.run_one(exp, out_root, progress=progress)
    con.print(result_panel(res))
    return res


def _run_parallel(exps: list[Any], out_root: Path, jobs: int, as_json: bool) -> list[dict[str, Any]]:
    from lab.run.parallel import run_parallel

    if as_json:
        return run_parallel(exps, out_root, jobs,
                            on_result=lambda r: click.echo(json.dumps(r, default=str)))
    from rich.live import Live

    from lab.ui import console, jobs_table, result_panel

    con = console()
    with Live(console=con, refresh_per_second=4, transient=False) as live:
        results = run_parallel(exps, out_root, jobs, on_update=lambda js: live.update(jobs_table(js)),
                               on_result=lambda r: live.console.print(result_panel(r)))
    return results


# --- other kernels: user-mode Linux guests (helper E2) ---------------------------------------------------


def _run_in_guests(exps: list[Any], specs: tuple[str, ...], out_root: Path, jobs: int, as_json: bool) -> None:
    """Each kernel boots once and runs all `exps` into out_root/kernel-<VER>/ (up to `jobs` guests at once, at most
    one per host CPU); exits like `twlab run`."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from lab import claims
    from lab.errors import UsageError
    from lab.run import guests
    from lab.run.runner import sigterm_as_interrupt

    kernels = [guests.resolve(s) for s in dict.fromkeys(specs)]  # every spec checked before the first boot
    if len({guests.folder_name(k) for k in kernels}) < len(kernels):
        raise UsageError("two --kernel values share a folder name", "give each kernel once")
    con = None
    if not as_json:
        from lab.ui import console

        con = console()

    def say(text: str) -> None:
        if con is not None:
            con.print(f"[dim]{text}[/]")

    def report(gr: Any) -> list[dict[str, Any]]:
        got = gr.results + guests.missing_results(gr, exps)
        if got:
            claims.write_markdown(claims.judge_all(got), gr.out_dir / "claims.md", got)
        for res in got:
            if as_json:
                click.echo(json.dumps(res, default=str))
        if con is not None:
            from lab.ui import result_panel, summary_table

            for res in got:
                con.print(result_panel(res))
            con.print(summary_table(got))
            con.print(f"kernel {guests.kernel_seen(gr)} (HZ {gr.info.get('hz')}, {gr.info.get('cpus')} CPU): "
                      f"boot {gr.boot_s} s, run {gr.wall_s} s, folder {gr.out_dir}")
        if gr.error:
            click.echo(f"twlab: {gr.error}", err=True)
        return got

    results: list[dict[str, Any]] = []
    codes: list[int] = []
    stop = threading.Event()
    width = max(1, min(jobs, len(kernels), os.cpu_count() or 1))
    with sigterm_as_interrupt(), ThreadPoolExecutor(max_workers=width) as pool:
        futures = [pool.submit(guests.boot, k, exps, out_root / guests.folder_name(k), guests.GUEST_JOBS, say, stop)
                   for k in kernels]
        try:
            for fut in as_completed(futures):
                gr = fut.result()
                codes.append(gr.exit_code)
                results += report(gr)
        except BaseException:
            stop.set()   # every guest still running is stopped and swept by its own thread before we unwind
            raise
    sys.exit(3 if 3 in codes else 0 if all(r.get("reproduced") for r in results) else 1)


@cli.command("kernels")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per known kernel.")
def kernels_cmd(as_json: bool) -> None:
    """User-mode Linux kernels for 'twlab run --kernel VER': installed ones, and how to get the rest."""
    from lab.run import guests

    rows = guests.listing()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    from rich.table import Table

    from lab.ui import console

    t = Table(title=f"user-mode Linux kernels ({guests.kernels_dir()})")
    for col in ("version", "Debian suite", "installed", "uname -r", "HZ", "package / how to get it"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["version"], r["suite"], "[green]yes[/]" if r["installed"] else "no", r["release"] or "",
                  str(r["hz"] or ""), r["package"] if r["installed"] else r["install"])
    con = console()
    con.print(t)
    con.print("run: twlab run NAME... --kernel VER [--kernel VER...]  (or --kernel /path/to/linux.uml)")


@cli.command("guest-client")
@click.option("--kernel", "kernel", default="6.1", show_default=True, metavar="VER",
              help="The client's kernel: a user-mode Linux guest (5.10, 6.1, 6.12, 7.2 or a linux.uml path).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, as `twlab run --json`.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default runs/<timestamp>).")
def guest_client_cmd(kernel: str, as_json: bool, out: Path | None) -> None:
    """Two kernels on one connection: the client in a guest kernel, the server in a namespace of this host on a
    private bridge; the client's SYN into the server's TIME_WAIT, captured on the bridge and analyzed."""
    from lab.experiments._guest_client import EXPERIMENT
    from lab.run import guests, runner

    guests.resolve(kernel)   # a bad or missing kernel: one line, before any folder exists
    res = runner.run_one(EXPERIMENT, out or runner.default_out_dir(), options={"client_kernel": kernel})
    if as_json:
        click.echo(json.dumps(res, default=str))
    else:
        from lab.ui import console, result_panel

        console().print(result_panel(res))
    sys.exit(0 if res["reproduced"] else int(res.get("exit_code") or 1))


# --- end other kernels


@cli.command("claims")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Run folder to judge (default: the newest under runs/).")
@click.option("--json", "as_json", is_flag=True)
def claims_cmd(run_dir: Path | None, as_json: bool) -> None:
    """The lore's claims, each with its experiment, the verdict on this kernel and the evidence."""
    from lab import claims
    from lab.errors import UsageError

    run_dir = run_dir or claims.latest_run()
    if run_dir is None:
        raise UsageError("no run folder with results under runs/", "run 'twlab run all' first (or pass --run DIR)")
    results = claims.load_results(run_dir)
    if not results:
        raise UsageError(f"no result.json under {run_dir}", "pass the folder a 'twlab run' wrote")
    ledger = claims.judge_all(results)
    claims.write_markdown(ledger, run_dir / "claims.md", results)
    if as_json:
        click.echo(json.dumps({"run": str(run_dir), "claims": claims.ledger_dicts(ledger)}))
        return
    from lab.ui import console

    con = console()
    con.print(claims.ledger_table(ledger))
    con.print(f"written: {run_dir / 'claims.md'}")


@cli.command("gallery")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--into", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Gallery folder (default: the repository's captures/).")
def gallery_cmd(run_dir: Path, into: Path | None) -> None:
    """Copy a run's annotated captures into the reference gallery and regenerate its index."""
    from lab import gallery

    entries = gallery.build(run_dir, into or gallery.GALLERY)
    for e in entries:
        click.echo(f"{e['experiment']:28} {e.get('file') or '-':40} {e.get('note', '')}")


@cli.command("watch")
@click.option("--port", "-p", "ports", type=int, multiple=True, help="Only sockets with this local or peer port.")
@click.option("--netns", default=None, help="Watch inside this network namespace (e.g. a running lab host).")
@click.option("--interval", type=float, default=0.25, show_default=True)
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
def watch_cmd(ports: tuple[int, ...], netns: str | None, interval: float, once: bool, duration: float | None) -> None:
    """A live table of TCP sockets with their states and TIME_WAIT timers counting down."""
    from lab.watch import watch

    try:
        watch(ports, netns, interval, once, duration)
    except KeyboardInterrupt:
        return


# --- analysis of capture files: analyze | show | annotate | verify ----------------------------------

PROFILES = ("linux", "freebsd", "macos", "windows", "solaris", "rfc793")


def _profile_options(f: Any) -> Any:
    f = click.option("--time-wait", "time_wait_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     help="TIME_WAIT length to assume, overriding the profile's 2*MSL.")(f)
    return click.option("--profile", type=click.Choice(PROFILES), default="linux", show_default=True,
                        help="Whose TIME_WAIT length (2*MSL) to assume.")(f)


def _check_file(path: Path) -> None:
    from lab.errors import BadCapture

    if not path.exists():
        raise BadCapture(f"{path}: no such file", "check the path")
    if not path.is_file():
        raise BadCapture(f"{path}: not a regular file", "give a pcap, pcapng or .gz capture file")


def _analyze_file(path: Path, profile: str, time_wait_s: float | None) -> tuple[Any, dict[str, Any]]:
    """The analyzer's Report for one file and its `analyze --json` object (contract in design.md)."""
    from lab.core.tracker import analyze
    from lab.pcap.readers import CaptureReader

    _check_file(path)
    reader = CaptureReader(path)
    report = analyze(reader, profile=profile, time_wait_s=time_wait_s)
    st = reader.stats
    doc: dict[str, Any] = {"file": str(path), "packets": st.packets, "tcp_segments": st.tcp_segments,
                           "skipped": dict(st.skipped)}
    doc.update(report.to_dict())
    doc.setdefault("profile", profile)
    return report, doc


def _each_file(files: tuple[Path, ...], work: Any) -> None:
    """Run work(path) per file; a bad file costs one line on stderr, the others still run; exit with the worst code."""
    worst = 0
    for path in files:
        try:
            work(path)
        except LabError as exc:
            click.echo(f"twlab: {exc.one_line()}", err=True)
            worst = max(worst, exc.exit_code)
    if worst:
        sys.exit(worst)


@cli.command("analyze")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file and line: file, profile, time_wait_s, connections (in the order "
                   "they end), findings, then the counts (packets, tcp_segments, skipped, segments).")
@click.option("--detail", is_flag=True, help="With --json: each connection's state transitions and segment roles.")
@_profile_options
def analyze_cmd(files: tuple[Path, ...], as_json: bool, detail: bool, profile: str,
                time_wait_s: float | None) -> None:
    """Connections, close kinds, TIME_WAIT windows and findings in capture files (pcap, pcapng, .gz).

    Streams: memory follows the open connections, not the file size. --json lists every connection
    in the order the connections end (not by id) and every finding as its connection ends; each file's
    line is printed once its file was read completely. Without --json: counts per close kind, TIME_WAIT
    side and finding kind, and the first 200 connections and findings.
    """
    from lab.analysis import stream as analyze_stream
    from lab.run.runner import sigterm_as_interrupt

    def work(path: Path) -> None:
        _check_file(path)
        if as_json:
            sys.stdout.flush()
            analyze_stream.write_json(path, sys.stdout.buffer, profile, time_wait_s, detail)
            return
        summary = analyze_stream.summarize(path, profile, time_wait_s)
        from lab.analysis.view import summary_view
        from lab.ui import console

        console().print(summary_view(summary))

    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the spool files are removed
        _each_file(files, work)


@cli.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--connection", "conn_id", type=int, default=None,
              help="Connection id (from 'twlab analyze'); default: the first one with a close.")
@click.option("--max-rows", type=click.IntRange(min=8), default=60, show_default=True,
              help="Longer connections show their start and their end.")
@click.option("--width", type=click.IntRange(min=60), default=None,
              help="Columns to fit in (default: the terminal's; the ladder's natural width when not a terminal).")
@_profile_options
def show_cmd(file: Path, conn_id: int | None, max_rows: int, width: int | None, profile: str,
             time_wait_s: float | None) -> None:
    """A ladder diagram of one connection: segments, M/N labels, both sides' states, the TIME_WAIT window."""
    from lab.analysis.ladder import print_ladder
    from lab.errors import UsageError
    from lab.pcap.annotate import capture_t0
    from lab.pcap.readers import read_segments
    from lab.ui import console

    report, doc = _analyze_file(file, profile, time_wait_s)
    conns = doc["connections"]
    if not conns:
        raise UsageError(f"{file}: no TCP connection in this file", "nothing to draw")
    if conn_id is None:
        chosen = next((c for c in conns if c["close"]["kind"] != "incomplete"), conns[0])
    else:
        found = [c for c in conns if c["id"] == conn_id]
        if not found:
            raise UsageError(f"{file}: no connection {conn_id}",
                             f"ids are {conns[0]['id']}..{conns[-1]['id']}; 'twlab analyze {file}' lists them")
        chosen = found[0]
    obj = next(c for c in report.connections if c.id == chosen["id"])
    ends = {obj.client, obj.server}
    segs, capture_end = [], None
    for s in read_segments(file):
        capture_end = s.ts_s
        if obj.first_frame <= s.frame <= obj.last_frame and {str(s.src), str(s.dst)} == ends:
            segs.append(s)
    print_ladder(console(), obj, segs, capture_t0(file), width=width, capture_end=capture_end, max_rows=max_rows,
                 title=str(file), findings=report.findings)


@cli.command("annotate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The annotated pcapng to write (atomically; FILE itself is allowed).")
@_profile_options
def annotate_cmd(file: Path, out: Path, profile: str, time_wait_s: float | None) -> None:
    """Write a pcapng with a comment on every segment the analyzer has something to say about."""
    from lab.pcap.annotate import capture_t0, write_annotated

    report, doc = _analyze_file(file, profile, time_wait_s)  # a bad FILE fails here, before OUT is touched
    notes = _notes(report, doc, capture_t0(file))
    n = write_annotated(file, out, notes)
    click.echo(f"wrote {out}: {n} packets, {len(notes)} annotated "
               f"({len(doc['connections'])} connections, {len(doc['findings'])} findings); "
               f"view: tshark -r {out} -Y frame.comment")


def _notes(report: Any, doc: dict[str, Any], t0: float) -> dict[int, list[str]]:
    """The analyzer's per-frame notes, plus one line per finding on each of its frames (unless already said)."""
    from lab.core.narrate import frame_notes

    notes: dict[int, list[str]] = {int(k): list(v) for k, v in frame_notes(report, t0).items()}
    for f in doc["findings"]:
        detail = f["detail"] if isinstance(f["detail"], str) else json.dumps(f["detail"])
        text = f"{f['kind']}: {detail}" if detail else f["kind"]
        for n in f["frames"]:
            have = notes.setdefault(int(n), [])
            if not any(f["kind"] in t for t in have):
                have.append(text)
    return notes


# --- report: one self-contained HTML file (lab.analysis.html) ------------------------------------------

@cli.command("report")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR | CAPTURE...")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The HTML file to write (atomically; nothing is written when an input is bad).")
@_profile_options
def report_cmd(inputs: tuple[Path, ...], out: Path, profile: str, time_wait_s: float | None) -> None:
    """One self-contained HTML file (no network requests) of a run folder or of capture files.

    A run: the claims ledger per kernel, each experiment's story and capture, the ladder of each connection
    of interest. Captures: TIME_WAIT and connection-rate charts, close kinds, findings linked to ladders."""
    from importlib.metadata import version

    from lab.analysis import html
    from lab.errors import UsageError

    html.check_output(out)
    if any(p.is_dir() for p in inputs):
        if len(inputs) > 1:
            raise UsageError("give one run folder, or capture files", "twlab report RUN_DIR -o report.html")
        run_dir = inputs[0]
        results, ledgers = _run_ledgers(run_dir)
        text = html.run_report(results, ledgers, out, run_dir, profile, time_wait_s, version("twlab"))
    else:
        for p in inputs:
            _check_file(p)
        text = html.capture_report(list(inputs), out, profile, time_wait_s, version("twlab"))
    html.write_report(text, out)
    click.echo(f"wrote {out} ({len(text.encode('utf-8')) // 1024} KiB)")


def _run_ledgers(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """A run folder's results and, per kernel they were measured on, its claims ledger."""
    from lab import claims
    from lab.errors import UsageError

    results = claims.load_results(run_dir)
    if not results:
        raise UsageError(f"no result.json under {run_dir}", "pass the folder a 'twlab run' wrote")
    kernels = sorted({str(r.get("kernel") or "unknown") for r in results})
    ledgers = {k: claims.ledger_dicts(claims.judge_all([r for r in results if str(r.get("kernel") or "unknown")
                                                        == k])) for k in kernels}
    return results, ledgers


@cli.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@_profile_options
def verify_cmd(files: tuple[Path, ...], as_json: bool, profile: str, time_wait_s: float | None) -> None:
    """Cross-check the analyzer against tshark: streams, FIN/RST, port reuse, FIN retransmissions."""
    from lab.analysis import verify as tshark

    tshark.tshark_bin()  # missing tshark: exit 3 with the install hint before any work
    results: list[bool] = []

    def work(path: Path) -> None:
        report, _ = _analyze_file(path, profile, time_wait_s)
        res = tshark.verify(path, report).to_dict()
        results.append(res["ok"])
        if as_json:
            click.echo(json.dumps(res))
            return
        from lab.analysis.view import verify_view
        from lab.ui import console

        console().print(verify_view(res))

    _each_file(files, work)
    sys.exit(0 if all(results) else 1)


@cli.command("bind-matrix")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (as `twlab run bind-matrix --json`).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default runs/<timestamp>).")
@click.option("--differences", is_flag=True, help="Only the rows where this kernel differs from the BSD description.")
def bind_matrix_cmd(as_json: bool, out: Path | None, differences: bool) -> None:
    """Measure the bind/listen conflict table of this kernel and print it (runs unprivileged, any OS)."""
    from lab import experiments
    from lab.experiments.bind_matrix import matrix_table
    from lab.run import runner

    res = runner.run_one(experiments.get(["bind-matrix"])[0], out or runner.default_out_dir())
    if as_json:
        click.echo(json.dumps(res, default=str))
    else:
        from lab.ui import console, result_panel

        con = console()
        con.print(matrix_table(res, only_differences=differences))
        con.print(result_panel(res))
    sys.exit(0 if res["reproduced"] else 1)


def main() -> None:
    cli(prog_name="twlab")
