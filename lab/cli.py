"""twlab: doctor | list | run | analyze | show | annotate | verify | claims | watch."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from lab.errors import Interrupted, LabError, OutputError


class LabGroup(click.Group):
    """Every failure is one line on stderr with a documented exit code: LabError -> its code (2 usage or bad
    input, 3 environment), an output that cannot be written -> 3, click's usage errors -> 2, SIGINT/SIGTERM -> 130/143
    after teardown (also before the subcommand starts)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LabError as exc:
            _fail(_one_line(exc.one_line()), exc.exit_code)
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except OSError as exc:  # an output that cannot be written (read-only, full disk, a folder in the way)
            if exc.errno == errno.EPIPE:
                _quiet_broken_pipe()
            _fail(os_error_line(exc), EXIT_ENVIRONMENT)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        owner = os.getpid()

        def on_sigterm(signum: int, frame: object) -> None:
            if os.getpid() != owner:  # a forked helper never unwinds the parent's work
                os._exit(128 + signum)
            raise Interrupted(signum)

        signal.signal(signal.SIGTERM, on_sigterm)  # SIGTERM unwinds like Ctrl-C: finally clauses remove temp files
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Abort as exc:  # Ctrl-C while click parses (before the subcommand)
            _interrupted(exc.__cause__ if isinstance(exc.__cause__, KeyboardInterrupt) else KeyboardInterrupt())
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except click.ClickException as exc:
            where = f" (see '{exc.ctx.command_path} -h')" if isinstance(exc, click.UsageError) and exc.ctx else ""
            _fail(_one_line(exc.format_message()) + where, exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


EXIT_ENVIRONMENT = 3


def _one_line(text: str) -> str:
    return text.strip().replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def os_error_line(exc: OSError) -> str:
    """'NAME: reason: hint' in one line (a newline in a file name is escaped)."""
    name = f"{exc.filename!s}: " if exc.filename is not None else ""
    return _one_line(f"{name}{exc.strerror or exc}") + ": check the path, its permissions and free space"


def _fail(line: str, code: int) -> None:
    click.echo(f"twlab: {as_given(line)}", err=True)
    sys.exit(code)


def _interrupted(exc: BaseException) -> None:
    code = getattr(exc, "exit_code", 130)
    # exiting anyway: a further Ctrl-C/SIGTERM must not turn the documented 130/143 into a kill at shutdown
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with contextlib.suppress(OSError):
        click.echo("twlab: interrupted; lab resources were removed", err=True)
    sys.exit(code)


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (e.g. `| head`): no traceback at exit."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


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
        click.echo(json.dumps({"checks": [{**c.__dict__, "status": c.status()} for c in checks],
                               "removed": removed, "ok": doc.essential_ok(checks)}))
    else:
        from rich.table import Table

        from lab.ui import console

        t = Table(title="twlab doctor", caption="exit 0 when every essential check is OK; optional ones cost "
                                                "only what their detail says")
        t.add_column("check")
        t.add_column("status")
        t.add_column("detail")
        t.add_column("fix")
        colour = {"OK": "green", "missing": "red", "missing (optional)": "yellow"}
        for c in checks:
            t.add_row(c.name, f"[{colour[c.status()]}]{c.status()}[/]", c.detail, c.fix)
        con = console()
        con.print(t)
        for r in removed:
            con.print(f"removed {r}")
    sys.exit(0 if doc.essential_ok(checks) else 3)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per experiment and line: experiment, claim, lore, topology, needs_root, "
                   "duration_hint_s, knobs (for run --set: default, unit, min, max, type, help).")
def list_cmd(as_json: bool) -> None:
    """The experiments, with the claim each one tests."""
    from lab.experiments import all_experiments

    exps = all_experiments()
    if as_json:
        from lab.experiments._wave2 import knobs_of

        for e in exps:
            click.echo(json.dumps({"experiment": e.id, "claim": e.claim, "lore": e.lore, "topology": e.topology,
                                   "needs_root": e.needs_root, "duration_hint_s": e.duration_hint_s,
                                   "knobs": {k: v.to_dict() for k, v in knobs_of(e).items()}}))
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


def _complete_experiments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of experiment ids (eval "$(_TWLAB_COMPLETE=bash_source twlab)")."""
    from click.shell_completion import CompletionItem

    from lab.experiments import all_experiments

    ids = ["all", *(e.id for e in all_experiments())]
    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


@cli.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME... | all", shell_complete=_complete_experiments)
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
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Set a knob of the experiments named (repeatable); 'twlab list --json' lists each experiment's "
                   "knobs with defaults, units and ranges.")
def run(names: tuple[str, ...], as_json: bool, out: Path | None, jobs: int, kernels: tuple[str, ...],
        timeout_scale: float | None = None, sets: tuple[str, ...] = ()) -> None:
    """Run experiments (or 'all') and say whether each claim holds on this kernel.

    Every run writes result.json per experiment and claims.md/claims.json into its folder. Exit 0: all
    reproduced; 1: one did not; 2: usage; 3: one could not run here (privileges, tools); 130/143: interrupted
    (after teardown). With --json: exactly one JSON line per experiment named, whatever happens."""
    from lab.run import runner

    if timeout_scale is not None:   # for this process and, through the environment, every program it starts
        from lab.run.context import set_timeout_scale

        set_timeout_scale(timeout_scale)

    exps = _experiments(names)
    if sets:   # checked before anything runs; handed to the runs (and parallel children) through the environment
        from lab.experiments import _wave2

        _wave2.export_sets(_wave2.parse_sets(exps, sets))
    out_root = out or runner.default_out_dir()
    if kernels:
        _run_in_guests(exps, kernels, out_root, jobs, as_json)
    if len(exps) > 1 and jobs > 1:
        results = _run_parallel(exps, out_root, jobs, as_json)
    else:
        results = _run_serial_all(exps, out_root, as_json)
    _conclude_run(results, out_root, as_json)


def _experiments(names: tuple[str, ...]) -> list[Any]:
    """The experiments named, each once (a repeated name is dropped with a note), with a 'did you mean' for
    a mistyped one."""
    import difflib

    from lab import experiments
    from lab.errors import UsageError

    known = [e.id for e in experiments.all_experiments()]
    for n in names:
        if n != "all" and n not in known:
            close = difflib.get_close_matches(n, known, n=3, cutoff=0.6)
            if close:
                raise UsageError(f"unknown experiment {n!r}", f"did you mean {' or '.join(close)}? ('twlab list' "
                                                              f"shows all {len(known)})")
    exps = experiments.get(list(names))
    unique = list({e.id: e for e in exps}.values())
    if len(unique) < len(exps):
        repeated = sorted({e.id for e in exps if sum(x.id == e.id for x in exps) > 1})
        click.echo(f"twlab: note: {', '.join(repeated)} given more than once; each runs once", err=True)
    return unique


def _conclude_run(results: list[dict[str, Any]], out_root: Path, as_json: bool) -> None:
    """Every run writes its claims ledger and is remembered for `twlab claims`; the exit code says the worst."""
    from lab import claims

    ledger = claims.judge_all(results)
    out_root.mkdir(parents=True, exist_ok=True)  # also when no experiment could start (e.g. all need root)
    claims.write_ledger(ledger, out_root, results)
    claims.record_last_run(out_root)
    if not as_json:
        from lab.ui import console, summary_table

        con = console()
        if len(results) > 1:
            con.print(summary_table(results))
        con.print(claims.ledger_table(ledger))
        con.print(f"run folder: {out_root}   claims ledger: {out_root / 'claims.md'}")
    codes = [r.get("exit_code") for r in results]
    if 3 in codes or any(r.get("status") == "could-not-run" for r in results):
        sys.exit(3)
    sys.exit(0 if results and all(r["reproduced"] for r in results) else 1)


def _json_line(res: dict[str, Any]) -> None:
    click.echo(json.dumps(res, default=str))


def _not_run(exp: Any, out_root: Path, why: str, code: int) -> dict[str, Any]:
    from lab.run.result import RunResult

    return RunResult.not_run(exp, out_root / exp.id, why, code).to_dict()


def _run_serial_all(exps: list[Any], out_root: Path, as_json: bool) -> list[dict[str, Any]]:
    """One after the other. A LabError (no root, could not run) costs its experiment, not the others: with
    --json it is that experiment's line. An interrupt: the rest get a line too, then the exit is 130/143."""
    results: list[dict[str, Any]] = []
    for i, exp in enumerate(exps):
        try:
            results.append(_run_serial(exp, out_root, as_json))
        except LabError as exc:
            res = _not_run(exp, out_root, exc.one_line(), exc.exit_code)
            results.append(res)
            if as_json:
                _json_line(res)
            else:
                line = _one_line(exc.one_line())
                click.echo(f"twlab: {line if line.startswith(exp.id) else f'{exp.id}: {line}'}", err=True)
        except KeyboardInterrupt as exc:
            if as_json:
                why = f"interrupted by signal {getattr(exc, 'signum', 2)}"
                for rest in exps[i:]:
                    _json_line(_not_run(rest, out_root, why, getattr(exc, "exit_code", 130)))
            raise
    return results


def _run_serial(exp: Any, out_root: Path, as_json: bool) -> dict[str, Any]:
    from lab.run import runner

    if as_json:
        res = runner.run_one(exp, out_root)
        _json_line(res)
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
        printed: set[str] = set()

        def emit(r: dict[str, Any]) -> None:
            printed.add(r["experiment"])
            _json_line(r)

        try:
            return run_parallel(exps, out_root, jobs, on_result=emit)
        except KeyboardInterrupt as exc:  # the unfinished ones get their line too
            why = f"interrupted by signal {getattr(exc, 'signum', 2)}"
            for e in exps:
                if e.id not in printed:
                    _json_line(_not_run(e, out_root, why, getattr(exc, "exit_code", 130)))
            raise
    from rich.live import Live

    from lab.ui import console, jobs_table, result_panel

    con = console()
    try:
        with Live(console=con, refresh_per_second=4, transient=False) as live:
            results = run_parallel(exps, out_root, jobs, on_update=lambda js: live.update(jobs_table(js)),
                                   on_result=lambda r: live.console.print(result_panel(r)))
    finally:
        if not con.is_terminal:  # a log file: the live table's last frame must end its line
            con.line()
    return results


# --- other kernels: user-mode Linux guests (helper E2) ---------------------------------------------------


def _run_in_guests(exps: list[Any], specs: tuple[str, ...], out_root: Path, jobs: int, as_json: bool) -> None:
    """Each kernel boots once and runs all `exps` into out_root/kernel-<VER>/ (up to `jobs` guests at once, at most
    one per host CPU); exits like `twlab run`."""
    import os
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

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
            pending = set(futures)
            while pending:   # in slices: a Ctrl-C the kernel hands to a guest's thread wakes no one (shard._result)
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                for fut in done:
                    gr = fut.result()
                    codes.append(gr.exit_code)
                    results += report(gr)
        except BaseException:
            stop.set()   # every guest still running is stopped and swept by its own thread before we unwind
            raise
    claims.write_ledger(claims.judge_all(results), out_root, results)   # RUN/claims.md: one column per kernel
    claims.record_last_run(out_root)
    if con is not None and len(claims.kernels_of(results)) > 1:
        con.print(claims.kernel_table(claims.judge_kernels(results)))
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
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder to judge (default: $TWLAB_RUNS, else the last run 'twlab run' recorded, "
                   "else the newest under ./runs).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: run, kernels, claims (each: claim, lore, source, experiments, verdict, "
                   "evidence), not_run; the same shape as the run's claims.json.")
@click.option("--write", "write", is_flag=True, help="Also rewrite claims.md and claims.json in the run folder.")
def claims_cmd(run_dir: Path | None, as_json: bool, write: bool) -> None:
    """The lore's claims, each with its experiment, the verdict on this kernel and the evidence (read-only)."""
    from lab import claims
    from lab.errors import UsageError

    if run_dir is None:
        run_dir, looked = claims.find_run()
        if run_dir is None:
            raise UsageError(f"no run folder with results (looked at {looked})",
                             "run 'twlab run all' first, or pass --run DIR")
    elif not run_dir.is_dir():
        raise UsageError(f"{_one_line(str(run_dir))}: not a folder", "pass the folder a 'twlab run' wrote")
    results = claims.load_results(run_dir)
    if not results:
        raise UsageError(f"no result.json under {_one_line(str(run_dir))}", "pass the folder a 'twlab run' wrote")
    ledger = claims.judge_all(results)
    written = claims.write_ledger(ledger, run_dir, results) if write else []
    if as_json:
        click.echo(json.dumps(claims.ledger_document(ledger, run_dir, results)))
        return
    from lab.ui import console

    con = console()
    if len(claims.kernels_of(results)) > 1:  # one column per kernel (helper E2)
        con.print(claims.kernel_table(claims.judge_kernels(results)))
    else:
        con.print(claims.ledger_table(ledger))
    con.print(f"run folder: {run_dir}" + (f"   written: {', '.join(str(p) for p in written)}" if written else ""))


@cli.command("gallery")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--into", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Gallery folder (default: the repository's captures/).")
def gallery_cmd(run_dir: Path, into: Path | None) -> None:
    """Copy a run's annotated captures into the reference gallery and merge them into its index (entries of
    experiments not in this run stay)."""
    from lab import gallery

    entries = gallery.build(run_dir, into or gallery.GALLERY)
    for e in entries:
        click.echo(f"{e['experiment']:28} {e.get('file') or '-':40} {e.get('note', '')}")


_TCP_STATES = ("ESTABLISHED", "SYN_SENT", "SYN_RECEIVED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSED",
               "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING")


@cli.command("watch")
@click.option("--port", "-p", "ports", type=click.IntRange(1, 65535), multiple=True,
              help="Only sockets with this local or peer port (1-65535); repeatable.")
@click.option("--netns", default=None, help="Watch inside this network namespace (e.g. a running lab host).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.25, show_default=True, metavar="SECONDS",
              help="Seconds between two snapshots of the live table.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop after this many seconds.")
@click.option("--state", "states", type=click.Choice(_TCP_STATES), multiple=True,
              help="Only sockets in this state, e.g. TIME_WAIT or CLOSE_WAIT; repeatable.")
@click.option("--group-by", "group_by", type=click.Choice(("port", "peer")), default=None,
              help="Count sockets per local port or per peer address and state (the census, live).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON line per snapshot (totals, and groups or sockets) instead of the table.")
def watch_cmd(ports: tuple[int, ...], netns: str | None, interval: float, once: bool, duration: float | None,
              states: tuple[str, ...], group_by: str | None, as_json: bool) -> None:
    """A live table of TCP sockets with their states and TIME_WAIT timers counting down (totals always on
    screen). Ctrl-C stops it (exit 130, as every interrupted twlab command)."""
    from lab.watch import watch

    try:
        watch(ports, netns, interval, once, duration, states, group_by, as_json)
    except KeyboardInterrupt as exc:
        sys.exit(getattr(exc, "exit_code", 130))


# --- analysis of capture files: analyze | show | annotate | verify ----------------------------------

PROFILES = ("linux", "freebsd", "macos", "windows", "solaris", "rfc793")


def _profile_options(f: Any) -> Any:
    f = click.option("--time-wait", "time_wait_s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
                     help="TIME_WAIT length to assume, overriding the profile's 2*MSL.")(f)
    return click.option("--profile", type=click.Choice(PROFILES), default="linux", show_default=True,
                        help="Whose TIME_WAIT length (2*MSL) to assume.")(f)


def _check_file(path: Path) -> None:
    """A capture path: a file, FIFO, /dev/stdin, /dev/fd/N (process substitution) or `-` for stdin."""
    from lab.errors import BadCapture

    if str(path) == "-":
        return
    if not path.exists():
        raise BadCapture(f"{path}: no such file", "check the path")
    if path.is_dir():
        raise BadCapture(f"{path}: is a directory", "give a pcap, pcapng or .gz capture file (or - for stdin)")


def _filter_options(f: Any) -> Any:
    """--port/--host/--since/--until (lab.pcap.filters) for analyze, show, annotate and verify."""
    f = click.option("--until", default=None, metavar="T",
                     help="Only segments up to T: seconds after the capture's first frame, or an ISO time.")(f)
    f = click.option("--since", default=None, metavar="T",
                     help="Only segments from T on: seconds after the capture's first frame (Wireshark's Time "
                          "column), or an ISO time such as 2026-11-30T09:41:08Z.")(f)
    f = click.option("--host", "hosts", multiple=True, metavar="ADDR[/LEN]",
                     help="Only connections with this address (or network) at either end; repeatable.")(f)
    return click.option("--port", "ports", type=click.IntRange(0, 65535), multiple=True,
                        help="Only connections with this port at either end; repeatable.")(f)


def _segment_filter(ports: tuple[int, ...], hosts: tuple[str, ...], since: str | None,
                    until: str | None) -> Any:
    from lab.pcap.filters import SegmentFilter

    filt = SegmentFilter(ports, hosts, since, until)
    return filt if filt.active else None


def _warn(lines: list[str] | tuple[str, ...]) -> None:
    for line in lines:
        click.echo(f"twlab: warning: {as_given(_one_line(line))}", err=True)


# a temporary copy of the user's input (a pipe, stdin, a filtered copy) -> the name the user gave: what the
# user reads (warnings, errors, titles, verify's "file") names the input, never our temporary file
_COPIES: dict[str, str] = {}


def as_given(text: str) -> str:
    for copy, given in _COPIES.items():
        text = text.replace(copy, given)
    return text


@contextlib.contextmanager
def _seekable(path: Path) -> Any:
    """Commands that read a capture twice (show, annotate, verify) get a pipe or stdin copied to a temporary
    file first (twl-spool-<pid>-input-*, removed afterwards); a file is used in place."""
    import shutil
    import stat

    from lab.pcap.writer import spool_prefix, temp_file

    if str(path) != "-" and stat.S_ISREG(path.stat().st_mode):
        yield path
        return
    with temp_file(spool_prefix("input"), ".cap") as (name, out):
        if str(path) == "-":
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        else:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        out.close()   # complete on disk: the readers open it by name
        _COPIES[name] = as_given(str(path))
        yield Path(name)


def _analyze_file(path: Path, profile: str, time_wait_s: float | None, filt: Any = None,
                  strict: bool = False) -> tuple[Any, dict[str, Any]]:
    """The analyzer's Report for one file and its `analyze --json` object (contract in docs/design.md).
    A capture cut short is analyzed up to the cut with one warning (strict: BadCapture, exit 2)."""
    from lab.core.tracker import Analyzer
    from lab.pcap.feed import feed_file

    _check_file(path)
    analyzer = Analyzer(profile, time_wait_s, detail=True)   # keeps every record: tracker.analyze(), but the
    st = feed_file(path, analyzer, filt=filt, lenient=not strict)   # compiled walk when built
    report = analyzer.finish()
    if st.cut:
        _warn([st.cut])
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
            click.echo(f"twlab: {_one_line(exc.one_line())}", err=True)
            worst = max(worst, exc.exit_code)
        except UnicodeDecodeError:  # e.g. tshark's view of a packet comment that is not UTF-8 (pyshark decodes)
            click.echo(f"twlab: {_one_line(str(path))}: text in the capture (a packet comment?) is not UTF-8, so "
                       "it cannot be cross-checked: fix or drop that comment (editcap can)", err=True)
            worst = max(worst, 2)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            click.echo(f"twlab: {os_error_line(exc)}", err=True)
            worst = max(worst, EXIT_ENVIRONMENT)
    if worst:
        sys.exit(worst)


def _port_range(text: str | None) -> tuple[int, int] | None:
    from lab.errors import UsageError

    if text is None:
        return None
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        raise UsageError(f"--port-range {text!r} is not A-B", "e.g. --port-range 32768-60999") from None
    if not 1 <= a <= b <= 65535:
        raise UsageError(f"--port-range {text!r} is not a range of ports", "1 <= A <= B <= 65535") from None
    return a, b


def _by_stream(conns: list[dict[str, Any]], stream: int, file: Path) -> dict[str, Any]:
    """Wireshark's tcp.stream N: connections numbered in order of their first frame. twlab starts a new
    connection (id) where Wireshark keeps one stream when a four-tuple is reused without a close the capture
    saw, so after such reuse the two numberings differ (README: "Analyse any capture")."""
    from lab.errors import UsageError

    ordered = sorted(conns, key=lambda c: (c["first_frame"], c["id"]))
    if stream >= len(ordered):
        raise UsageError(f"{file}: no stream {stream}", f"streams are 0..{len(ordered) - 1}")
    return ordered[stream]


@contextlib.contextmanager
def _filtered_copy(path: Path, filt: Any) -> Any:
    """A temporary pcapng (twl-spool-<pid>-filtered-*) with only the TCP packets `filt` keeps, for tools that
    read the file themselves (tshark in verify). A segment reassembled from IP fragments keeps all its pieces
    (written together, in frame order, where the datagram completes)."""
    from lab.pcap.frag import Reassembler
    from lab.pcap.readers import decode_frame, iter_frames
    from lab.pcap.writer import PcapngWriter, spool_prefix, temp_file

    with temp_file(spool_prefix("filtered"), ".pcapng", buffering=1 << 20) as (name, out):
        w = PcapngWriter(out)
        first = True
        frags = Reassembler({})
        for fr in iter_frames(path):
            if first:
                filt.first(fr.ts_ns / 1e9)
                first = False
            frags.tag = fr
            seg = decode_frame(fr.linktype, fr.data, fr.frame, fr.ts_ns, frags)
            if seg is not None and filt.keep(seg.src_ip, seg.sport, seg.dst_ip, seg.dport, seg.ts_s):
                done: tuple[Any, ...] = frags.completed if frags.completed[-1:] == (fr,) else (fr,)
                for k in sorted(done, key=lambda f: f.frame):
                    w.write(k.ts_ns, k.data, k.orig_len, k.comments, interface=k.interface, linktype=k.linktype)
        out.close()   # complete on disk: tshark and the analyzer open it by name
        _COPIES[name] = as_given(str(path))
        yield Path(name)


EXIT_FAIL_ON = 4   # analyze --fail-on: a finding of that kind occurred


@cli.command("analyze")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file and line: schema, twlab, file, profile, time_wait_s, connections "
                   "(in the order they end), findings, the counts (packets, tcp_segments, skipped, segments), "
                   "census and warnings (docs/schema/analyze.schema.json).")
@click.option("--jsonl", "as_jsonl", is_flag=True,
              help="One JSON line per connection and finding as each ends (\"type\": \"connection\" | "
                   "\"finding\"), then one \"type\": \"summary\" line: a live feed for jq.")
@click.option("--detail", is_flag=True, help="With --json: each connection's state transitions and segment roles.")
@click.option("-i", "--interface", "iface", default=None, metavar="IFACE",
              help="Capture live on IFACE (read-only, lossless raw socket; needs root) and analyze as packets "
                   "arrive; Ctrl-C or --duration ends it with the summary.")
@click.option("-f", "--filter", "bpf", default="tcp", show_default=True, metavar="BPF",
              help="With -i: capture filter in libpcap syntax, e.g. 'tcp port 443'.")
@click.option("--netns", default=None, help="With -i: capture inside this network namespace.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="With -i: stop capturing after this long.")
@click.option("-w", "--write", "write_to", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="With -i: also keep the packets as a pcapng (written atomically at the end).")
@_filter_options
@click.option("--limit", type=click.IntRange(min=0), default=200, show_default=True,
              help="Rows of the connections and findings tables (people's view).")
@click.option("--strict", is_flag=True,
              help="A capture cut short is an error (exit 2) instead of analyzed up to the cut with a warning.")
@click.option("--fail-on", "fail_on", multiple=True, metavar="KIND[:VERDICT]",
              help="Exit 4 when a finding of this kind (and verdict) occurs, e.g. reuse-in-time-wait:dangerous; "
                   "repeatable.")
@click.option("--port-range", "port_range", default=None, metavar="A-B",
              help="The clients' ephemeral port range for the census (default: the profile's, Linux "
                   "32768-60999).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, metavar="N",
              help="Processes: several files are analyzed N at once (output in the order named); one file is "
                   "split by four-tuple into N shards and merged (the same records; --json lists connections by "
                   "id). Regular files only.")
@_profile_options
def analyze_cmd(files: tuple[Path, ...], as_json: bool, as_jsonl: bool, detail: bool, iface: str | None,
                bpf: str, netns: str | None, duration: float | None, write_to: Path | None,
                ports: tuple[int, ...], hosts: tuple[str, ...], since: str | None, until: str | None, limit: int,
                strict: bool, fail_on: tuple[str, ...], port_range: str | None, jobs: int, profile: str,
                time_wait_s: float | None) -> None:
    """Connections, close kinds, TIME_WAIT windows, findings and the census of captures (pcap, pcapng, .gz;
    files, pipes and `-` for stdin) or of a live interface (-i).

    Streams: memory follows the open connections, not the file size. --json lists every connection
    in the order the connections end (not by id) and every finding as its connection ends; each file's
    line is printed once its file was read completely. Without --json: counts per close kind, TIME_WAIT
    side and finding kind, the census, and the first --limit connections and findings. A capture cut short
    is analyzed up to its last complete frame with one warning (exit 0; --strict: exit 2).
    """
    from lab.analysis import stream as analyze_stream
    from lab.errors import UsageError
    from lab.run.runner import sigterm_as_interrupt

    if as_json and as_jsonl:
        raise UsageError("--json and --jsonl exclude each other", "--json: one object per file; --jsonl: a feed")
    if bool(files) == bool(iface):
        raise UsageError("give capture files (or - for stdin), or -i IFACE", "e.g. twlab analyze capture.pcap, "
                         "tcpdump -w - | twlab analyze -, or twlab analyze -i lo --duration 5")
    if not iface and (write_to or duration or netns):
        raise UsageError("-w, --duration and --netns go with -i IFACE", "twlab analyze -i lo --duration 5 -w x.pcapng")
    if iface and jobs > 1:
        raise UsageError("-j goes with capture files, not -i IFACE", "a live capture is analyzed in one process")
    if detail and not (as_json or as_jsonl):
        click.echo("twlab: note: --detail adds transitions and roles to --json/--jsonl output only; for one "
                   "connection's transitions use 'twlab show FILE --connection ID'", err=True)
    failing = analyze_stream.FailOn(fail_on)
    base = analyze_stream.Options(profile, time_wait_s, detail, None, not strict, _port_range(port_range))

    def emit(source: Any, name: str, progress: Any = None) -> None:
        import dataclasses

        # a fresh filter per capture: relative --since/--until count from each capture's first frame
        opts = dataclasses.replace(base, filt=_segment_filter(ports, hosts, since, until), progress=progress,
                                   warn=lambda line: _warn([line]))
        if as_json or as_jsonl:
            sys.stdout.flush()
            write = analyze_stream.write_jsonl if as_jsonl else analyze_stream.write_json
            write(source, sys.stdout.buffer, opts=opts, records=failing, name=name)
            return
        summary = analyze_stream.summarize(source, limit=limit, opts=opts, records=failing, name=name)
        from lab.analysis.view import summary_view
        from lab.ui import console

        console().print(summary_view(summary))

    def work(path: Path) -> None:
        from lab.analysis.view import ReadProgress

        _check_file(path)
        with ReadProgress(path) as progress:
            emit(path, str(path), progress)

    with sigterm_as_interrupt() as gate:  # SIGTERM unwinds like Ctrl-C: the spool files are removed
        if iface:
            if _analyze_live(iface, bpf, netns, duration, write_to, emit):
                gate.received = None   # Ctrl-C is how a live analysis ends: the summary was printed
        elif jobs > 1:
            from lab.analysis.shard import Settings

            settings = Settings(profile, time_wait_s, detail, not strict, base.port_range,
                                (ports, hosts, since, until), fail_on, limit)
            _analyze_jobs(files, jobs, "jsonl" if as_jsonl else "json" if as_json else "summary", settings, failing)
        else:
            _each_file(files, work)
    if failing.hits:
        click.echo(f"twlab: {failing.hits} finding(s) matched --fail-on {' '.join(fail_on)}", err=True)
        sys.exit(EXIT_FAIL_ON)


def _analyze_jobs(files: tuple[Path, ...], jobs: int, kind: str, settings: Any, failing: Any) -> None:
    """analyze -j N (lab.analysis.shard): one file in N shards, or several files N at once; a bad file costs
    one line on stderr, the others still run; exit with the worst code."""
    import stat

    from lab.analysis import shard
    from lab.analysis.view import summary_view
    from lab.errors import UsageError
    from lab.ui import console

    for path in files:   # a missing file is reported in its turn, as without -j
        if str(path) == "-" or (path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode)):
            raise UsageError(f"-j reads regular files; {_one_line(str(path))} is a pipe or stream",
                             "drop -j, or save the capture to a file first")

    def show(summary: Any) -> None:
        if summary is not None:
            console().print(summary_view(summary))

    if len(files) == 1:
        _each_file(files, lambda path: show(shard.write_sharded(path, sys.stdout.buffer, kind, jobs, settings,
                                                                 records=failing, warn=lambda w: _warn([w]))))
        return
    worst = 0

    def each(path: Path, res: Any) -> None:
        nonlocal worst
        if isinstance(res, LabError):
            click.echo(f"twlab: {_one_line(res.one_line())}", err=True)
            worst = max(worst, res.exit_code)
            return
        _warn(res.warnings)
        failing.hits += res.fail_on_hits
        if res.summary is not None:
            show(res.summary)
        else:
            sys.stdout.flush()
            shard.copy_spool(res, sys.stdout.buffer)

    shard.map_files(list(files), kind, jobs, settings, each)
    if worst:
        sys.exit(worst)


def _analyze_live(iface: str, bpf: str, netns: str | None, duration: float | None, write_to: Path | None,
                  emit: Any) -> bool:
    """Wire lab.kernel.capture (the lab's lossless capture) into lab.analysis.live (layering: analysis does not
    import kernel). True when Ctrl-C ended the capture (and the summary was still printed)."""
    from lab.analysis.live import LiveRun
    from lab.kernel.capture import LiveCapture
    from lab.pcap.writer import atomic_write

    cap = LiveCapture(iface, bpf, netns=netns, keep=False)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_write(write_to)) if write_to is not None else None
        cap.start()
        stack.callback(lambda: cap.stop() if cap.stats is None else None)
        live = LiveRun(cap, duration, out=out, on_start=lambda: click.echo(
            f"twlab: capturing on {iface}{' in ' + netns if netns else ''} ({bpf!r})"
            f"{f' for {duration:g} s' if duration else ''}; Ctrl-C ends it", err=True))
        emit(live, f"live:{iface}")
        st = cap.stats
        if st is not None:
            click.echo(f"twlab: captured {st.packets} packets, kernel drops {st.kernel_drops}"
                       f"{', interrupted' if live.interrupted else ''}"
                       f"{f'; wrote {write_to}' if write_to else ''}", err=True)
        return live.interrupted


@cli.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--connection", "conn_id", type=int, default=None,
              help="Connection id (from 'twlab analyze'); default: the first one with a close.")
@click.option("--max-rows", type=click.IntRange(min=8), default=60, show_default=True,
              help="Longer connections show their start and their end.")
@click.option("--width", type=click.IntRange(min=60), default=None,
              help="Columns to fit in (default: the terminal's; the ladder's natural width when not a terminal).")
@click.option("--stream", type=click.IntRange(min=0), default=None, metavar="N",
              help="Wireshark's tcp.stream N: the N-th connection in order of its first frame (0-based).")
@_filter_options
@click.option("--strict", is_flag=True, help="A capture cut short is an error (exit 2), not a warning.")
@_profile_options
def show_cmd(file: Path, conn_id: int | None, max_rows: int, width: int | None, stream: int | None,
             ports: tuple[int, ...], hosts: tuple[str, ...], since: str | None, until: str | None, strict: bool,
             profile: str, time_wait_s: float | None) -> None:
    """A ladder diagram of one connection: segments, M/N labels, both sides' states, the TIME_WAIT window.

    Pick it by --connection (twlab's id), --stream (Wireshark's tcp.stream) or --port/--host (the first
    connection with a close among those); default: the first connection with a close."""
    from lab.analysis.ladder import choose, print_ladder
    from lab.ui import console

    _check_file(file)
    file = click.get_current_context().with_resource(_seekable(file))   # read twice: a pipe is copied first
    # streams, and stops reading once the chosen connection is finished (lab.analysis.ladder.choose)
    chosen = choose(file, conn_id, stream, profile=profile, time_wait_s=time_wait_s,
                    filt=_segment_filter(ports, hosts, since, until), lenient=not strict)
    _warn(chosen.warnings)
    print_ladder(console(), chosen.conn, chosen.segments, chosen.t0, width=width, max_rows=max_rows,
                 title=as_given(str(file)), findings=chosen.findings)


@cli.command("annotate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The annotated pcapng to write (atomically; FILE itself is allowed).")
@_filter_options
@_profile_options
def annotate_cmd(file: Path, out: Path, ports: tuple[int, ...], hosts: tuple[str, ...], since: str | None,
                 until: str | None, profile: str, time_wait_s: float | None) -> None:
    """Write a pcapng with a comment on every segment the analyzer has something to say about (with
    --port/--host/--since/--until: only about those connections; every packet is copied)."""
    from lab.pcap.annotate import narrated
    from lab.run.resources import output_record

    _check_file(file)
    file = click.get_current_context().with_resource(_seekable(file))   # read twice: a pipe is copied first
    # two streaming passes (lab.pcap.annotate): a bad FILE fails in the first, before OUT is touched; a capture
    # cut short too (the copy needs every packet)
    with narrated(file, profile, time_wait_s, _segment_filter(ports, hosts, since, until)) as notes:
        _check_output(out)
        try:
            with output_record(out):  # a kill -9 mid-write leaves a temp that doctor --cleanup then finds
                done = notes.write(out)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            raise OutputError(f"cannot write {_one_line(str(out))}: {exc.strerror or exc}",
                              "choose a folder you can write to (and check its free space)") from None
    click.echo(f"wrote {out}: {done.packets} packets, {done.annotated} annotated "
               f"({done.connections} connections, {done.findings} findings); "
               f"view: tshark -r {out} -Y frame.comment")


def _check_output(out: Path) -> None:
    """An output path that names something other than a regular file (a device, a FIFO, a folder) is refused:
    the atomic rename would replace it."""
    from lab.errors import UsageError

    if out.exists() and not out.is_file():
        raise UsageError(f"{_one_line(str(out))} exists and is not a regular file", "give a new file name")


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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file (classes and every row).")
@click.option("--rows", type=click.IntRange(min=0), default=None, metavar="N",
              help="List N disagreement rows (default: all up to 30, else only the classes with counts).")
@_filter_options
@click.option("--strict", is_flag=True, help="A capture cut short is an error (exit 2), not a warning.")
@_profile_options
def verify_cmd(files: tuple[Path, ...], as_json: bool, rows: int | None, ports: tuple[int, ...],
               hosts: tuple[str, ...], since: str | None, until: str | None, strict: bool, profile: str,
               time_wait_s: float | None) -> None:
    """Cross-check the analyzer against tshark: streams, FIN/RST, port reuse, FIN retransmissions.

    With --port/--host/--since/--until both read a copy holding only the matching TCP packets (frame
    numbers are then those of the copy)."""
    from lab.analysis import verify as tshark

    tshark.tshark_bin()  # missing tshark: exit 3 with the install hint before any work
    results: list[bool] = []

    def work(path: Path) -> None:
        _check_file(path)
        with contextlib.ExitStack() as stack:
            path = stack.enter_context(_seekable(path))
            filt = _segment_filter(ports, hosts, since, until)
            if filt is not None:
                path = stack.enter_context(_filtered_copy(path, filt))
            # tshark's pass runs beside the analysis; both are compared as connections finish
            from lab.analysis.view import ReadProgress

            with ReadProgress(path) as progress:
                found = tshark.verify_file(path, profile, time_wait_s, strict, warn=lambda line: _warn([line]),
                                           progress=progress)
        found = dataclasses.replace(found, file=as_given(found.file))
        results.append(found.ok)
        if as_json:
            for chunk in found.json_chunks():   # json.dumps(found.to_dict()), without holding it all
                click.echo(chunk, nl=False)
            click.echo()
            return
        from lab.analysis.view import verify_view
        from lab.ui import console

        res = found.to_dict(lazy_rows=True)
        shown = rows if rows is not None else (None if len(res["disagreements"]) <= 30 else 0)
        console().print(verify_view(res, shown))

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


@cli.command("man", hidden=True)
def man_cmd() -> None:
    """Print the manual page (roff) made from this help: twlab man > docs/twlab.1; man -l docs/twlab.1."""
    click.echo(manual_page(), nl=False)


def _roff(text: str) -> str:
    lines = []
    for ln in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        lines.append("\\&" + ln if ln.startswith((".", "'")) else ln)
    return "\n".join(lines)


def manual_page() -> str:
    """twlab(1) from the commands' own help and options (a test keeps docs/twlab.1 equal to it)."""
    import inspect
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("twlab")
    except PackageNotFoundError:
        ver = "unknown"
    root = click.Context(cli, info_name="twlab")
    out = [f'.TH TWLAB 1 "" "twlab {ver}" "User Commands"', ".SH NAME",
           "twlab \\- " + _roff(cli.help or "").splitlines()[0], ".SH SYNOPSIS", ".B twlab",
           "COMMAND [OPTIONS] [ARGS]...", ".SH COMMANDS"]
    for name, cmd in cli.commands.items():
        if cmd.hidden:
            continue
        ctx = click.Context(cmd, info_name=name, parent=root)
        usage = " ".join([name, *cmd.collect_usage_pieces(ctx)])
        paragraphs = inspect.cleandoc(cmd.help or "").split("\n\n")
        out += [".SS " + _roff(usage), "\n.PP\n".join(_roff(par) for par in paragraphs)]
        for p in cmd.get_params(ctx):
            rec = p.get_help_record(ctx) if isinstance(p, click.Option) else None
            if rec and "--help" not in p.opts:
                out += [".TP", ".B " + _roff(rec[0]), _roff(rec[1])]
    out += [".SH EXIT STATUS", "0 done; 1 an experiment did not reproduce (verify: a disagreement); 2 usage error "
            "or unreadable input; 3 environment problem (privileges, a missing tool, an output that cannot be "
            "written); 4 analyze \\-\\-fail\\-on matched; 130/143 interrupted by SIGINT/SIGTERM.",
            ".SH SEE ALSO", "README.md; docs/design.md; tshark(1)"]
    return "\n".join(out) + "\n"


def main() -> None:
    cli(prog_name="twlab")
