"""``flashgen emulator``: serve the emulator until interrupted.

    flashgen emulator --port 8188 --workers 2 --job-time 0.5 --fault status:429:0.2
    flashgen emulator --fault job:echo-auth:1     # failed jobs leak the token in `error`

Every option left out falls back to its ``FLASHGEN_EMULATOR_*`` variable, then to the
default; ``EmulatorConfig`` does that, so the command only passes on what was given, and
the help texts come from the config's own field descriptions:

    >>> _about("workers")
    'Jobs run at once; the rest wait in the queue (env FLASHGEN_EMULATOR_WORKERS, default 4).'
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from flashgen.emulator.config import EmulatorConfig
from flashgen.emulator.faults import KINDS, ROUTES
from flashgen.emulator.server import serve


def _about(field: str, extra: str = "") -> str:
    """Help for the option behind ``field``: its description, variable and default."""
    info = EmulatorConfig.model_fields[field]
    description = str(info.description)
    default = info.get_default(call_default_factory=True)
    shown = "" if default in (None, []) else f", default {default}"
    variable = f"FLASHGEN_EMULATOR_{field.upper()}"
    return f"{description[:1].upper()}{description[1:]}{extra} (env {variable}{shown})."


_LIST = "; repeatable (the variable takes a comma-separated list)"
_FAULTS = (
    f"{_LIST}; ROUTE: {', '.join(ROUTES)}, *; KIND: {', '.join(KINDS)}; RATE: 0 to 1; "
    "job kinds: stall (never ends), fail, echo-auth (fails with the submit's Authorization "
    "header in its error)"
)


def emulator_command(
    host: Annotated[
        str, typer.Option(help="Interface to listen on.", envvar="FLASHGEN_EMULATOR_HOST")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(help="Port to listen on (0: any free port).", envvar="FLASHGEN_EMULATOR_PORT"),
    ] = 8188,
    workers: Annotated[int | None, typer.Option(help=_about("workers"))] = None,
    job_time: Annotated[float | None, typer.Option(help=_about("job_time"))] = None,
    job_time_spread: Annotated[float | None, typer.Option(help=_about("job_time_spread"))] = None,
    job_time_seed: Annotated[int | None, typer.Option(help=_about("job_time_seed"))] = None,
    token: Annotated[
        list[str] | None, typer.Option(metavar="TOKEN", help=_about("tokens", _LIST))
    ] = None,
    link_ttl: Annotated[float | None, typer.Option(help=_about("link_ttl"))] = None,
    fault: Annotated[
        list[str] | None, typer.Option(metavar="ROUTE:KIND:RATE", help=_about("faults", _FAULTS))
    ] = None,
    fault_seed: Annotated[int | None, typer.Option(help=_about("fault_seed"))] = None,
    retry_after: Annotated[float | None, typer.Option(help=_about("retry_after"))] = None,
    slow_seconds: Annotated[float | None, typer.Option(help=_about("slow_seconds"))] = None,
    price_usd: Annotated[float | None, typer.Option(help=_about("price_usd"))] = None,
    public_url: Annotated[str | None, typer.Option(help=_about("public_url"))] = None,
) -> None:
    """Serve a local emulator of RunComfy's Model API (routes, queue, PNGs, faults)."""
    given = {
        "workers": workers,
        "job_time": job_time,
        "job_time_spread": job_time_spread,
        "job_time_seed": job_time_seed,
        "tokens": token or None,  # typer gives [] for a list option not used
        "link_ttl": link_ttl,
        "faults": fault or None,
        "fault_seed": fault_seed,
        "retry_after": retry_after,
        "slow_seconds": slow_seconds,
        "price_usd": price_usd,
        "public_url": public_url,
    }
    try:
        config = EmulatorConfig(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            typer.echo(f"flashgen emulator: {field}: {message}", err=True)
        raise typer.Exit(2) from None
    serve(config, host, port)
