"""rich renderables for people; the JSON paths never import this."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


def verdict_text(result: dict[str, Any]) -> Text:
    error = str(result.get("error") or "")
    if "needs root" in error:
        return Text("NEEDS ROOT", style="bold yellow")
    if result.get("status") == "could-not-run":
        return Text("COULD NOT RUN", style="bold yellow")
    if error:
        return Text("LAB ERROR", style="bold red")
    if result["reproduced"]:
        return Text("REPRODUCED", style="bold green")
    return Text("NOT REPRODUCED", style="bold yellow")


def result_panel(result: dict[str, Any]) -> Panel:
    parts: list[Any] = [Text(result["claim"], style="italic")]
    if result.get("lore"):
        parts.append(Text(f"Lore: {result['lore']}", style="dim"))
    if result.get("story"):
        t = Table(show_header=True, header_style="bold", expand=True, box=None)
        t.add_column("the lab did", ratio=1)
        t.add_column("the kernel answered", ratio=1)
        for did, answered in result["story"]:
            t.add_row(did, answered)
        parts.append(t)
    for note in result.get("notes", []):
        parts.append(Text(f"! {note}", style="magenta"))
    for skip in result.get("skipped", []):
        parts.append(Text(f"- skipped: {skip}", style="yellow"))
    if result.get("error"):
        parts.append(Text(f"error: {str(result['error']).removeprefix('twlab: ')}", style="red"))
    tail = Text()
    tail.append("verdict: ")
    tail.append_text(verdict_text(result))
    tail.append(f"   kernel {result['kernel']}   {result['duration_s']:.1f} s")
    if result.get("capture"):
        tail.append(f"\ncapture: {result['capture']}", style="cyan")
    tail.append(f"\nrun folder: {result['folder']}", style="dim")
    parts.append(tail)
    return Panel(Group(*parts), title=f"[bold]{result['experiment']}[/]", expand=True)


def summary_table(results: list[dict[str, Any]]) -> Table:
    t = Table(title="twlab results", show_lines=False)
    t.add_column("experiment", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    t.add_column("s", justify="right", no_wrap=True)
    t.add_column("capture", overflow="fold")   # a narrow terminal folds the path, never cuts it to '…'
    for r in results:
        t.add_row(r["experiment"], verdict_text(r), f"{r['duration_s']:.1f}", r.get("capture") or "-")
    return t


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def jobs_table(jobs: list[Any]) -> Table:
    """One progress line per experiment of a parallel run."""
    import time

    t = Table(title="twlab run", expand=True)
    t.add_column("experiment", style="bold", no_wrap=True)
    t.add_column("state", no_wrap=True)
    t.add_column("s", justify="right")
    t.add_column("now", ratio=1)
    for j in jobs:
        if j.state == "waiting":
            state, secs = Text("waiting", style="dim"), ""
        elif j.state == "running":
            state, secs = Text("running", style="cyan"), f"{time.monotonic() - j.started_s:.0f}"
        else:
            state = verdict_text(j.result) if j.result else Text("?")
            secs = f"{j.ended_s - j.started_s:.1f}"
        t.add_row(j.exp.id, state, secs, j.progress)
    return t
