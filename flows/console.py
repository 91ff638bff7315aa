"""What a person sees in a terminal: a progress bar while a batch runs, a table after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.progress import add_listener
from flows.summary import BatchSummary

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar() -> Iterator[None]:
    """Draw a bar from the flow's progress reports while the block runs."""
    columns = (TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[last]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("batch", total=None, last="")

        def update(done: int, total: int, state: str) -> None:
            bar.update(task, completed=done, total=total, last=state)

        remove = add_listener(update)
        try:
            yield
        finally:
            remove()


def print_summary(summary: BatchSummary, *, image_paths: dict[str, str] | None = None) -> None:
    """A table of results with their S3 keys (and local copies, when given)."""
    table = Table(title=summary.describe(), show_lines=False)
    for column in ("line", "prompt", "aspect ratio", "seed", "state", "S3 key / reason"):
        table.add_column(column, overflow="fold")
    for row in summary.rows:
        where = (row.image_uris[0] if row.image_uris else row.reason) or ""
        if image_paths and row.image_uris:
            where += f"\n→ {image_paths.get(row.image_uris[0], '')}"
        colour = {"stored": "green", "skipped": "cyan"}.get(row.state.value, "red")
        table.add_row(str(row.line or ""), (row.prompt or "")[:48], row.aspect_ratio or "",
                      str(row.seed or ""), f"[{colour}]{row.state.value}[/]", where)
    Console().print(table)
    if summary.manifest_uri:
        Console().print(f"manifest: {summary.manifest_uri}")
