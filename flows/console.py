"""What a person sees in a terminal: a progress bar while a batch runs, a table after."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prefect.logging.handlers import PrefectConsoleHandler

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flashgen.flows.progress import add_listener
from flashgen.flows.summary import BatchSummary

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


@contextlib.contextmanager
def final_state_off_console() -> Iterator[None]:
    """Leave the engine's "Finished in state …" line out of this terminal while the block
    runs: the command prints the outcome itself. The run's logs at the API keep it."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Finished in state")

    handlers = [h for name in ("", "prefect") for h in logging.getLogger(name).handlers
                if isinstance(h, PrefectConsoleHandler)]
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def print_summary(summary: BatchSummary) -> None:
    """A table of results: one row per input, with its S3 key or the reason it failed."""
    table = Table(title=summary.describe(), expand=False)
    for column, style in (("line", "dim"), ("prompt", ""), ("aspect ratio", ""), ("seed", ""),
                          ("state", ""), ("S3 key / reason", "")):
        table.add_column(column, style=style, overflow="fold")
    for row in summary.rows:
        where = _key(row.image_uris[0]) if row.image_uris else (row.reason or "")
        colour = {"stored": "green", "skipped": "cyan"}.get(row.state.value, "red")
        table.add_row(str(row.line or ""), _clip(row.prompt or "", 40),
                      (row.aspect_ratio or "").split(" ")[-1].strip("()"), str(row.seed or ""),
                      f"[{colour}]{row.state.value}[/]", where)
    out = Console(width=max(Console().width, 160))
    out.print(table)
    if summary.manifest_uri:
        out.print(f"manifest: {summary.manifest_uri}")
    if summary.gallery_url:
        out.print(f"gallery:  {summary.gallery_url}", soft_wrap=True)


def print_plan(summary: BatchSummary) -> None:
    """A dry run's plan: what the batch would do, and that nothing was sent."""
    out = Console(width=max(Console().width, 100))
    out.print(f"[bold]{summary.describe()}[/]")
    for line in summary.plan.lines() if summary.plan else []:
        out.print("  " + line, soft_wrap=True)  # a price's source is one line, unbroken


def _key(uri: str) -> str:
    """``s3://bucket/prefix/images/…`` → ``prefix/images/…`` (the bucket is in the title)."""
    return uri.split("/", 3)[-1] if uri.startswith("s3://") else uri


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
