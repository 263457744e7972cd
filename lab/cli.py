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
    from lab import resources

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
def run(names: tuple[str, ...], as_json: bool, out: Path | None) -> None:
    """Run experiments (or 'all') and say whether each claim holds on this kernel."""
    from lab import experiments, runner

    exps = experiments.get(list(names))
    out_root = out or runner.default_out_dir()
    results = []
    con = None
    if not as_json:
        from lab.ui import console

        con = console()
    for exp in exps:
        if con:
            with con.status(f"[bold]{exp.id}[/]: {exp.claim}") as status:

                def progress(text: str, frac: float | None, status: Any = status, eid: str = exp.id) -> None:
                    status.update(f"[bold]{eid}[/]: {text}")

                res = runner.run_one(exp, out_root, progress=progress)
        else:
            res = runner.run_one(exp, out_root)
        results.append(res)
        if as_json:
            click.echo(json.dumps(res, default=str))
        elif con:
            from lab.ui import result_panel

            con.print(result_panel(res))
    if con and len(results) > 1:
        from lab.ui import summary_table

        con.print(summary_table(results))
    sys.exit(0 if all(r["reproduced"] for r in results) else 1)


def main() -> None:
    cli(prog_name="twlab")
