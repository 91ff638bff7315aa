"""The ``flashgen`` command.

    flashgen emulator --port 8188          a local RunComfy-compatible API
    flashgen schema                        the default model's input JSON Schema
    flashgen status|result|cancel ID       one request at the API
    flashgen generate "a red fox" --aspect-ratio 9:16
    flashgen batch prompts.csv --bucket my-bucket --concurrency 8
    flashgen demo                          the whole job on a local stack
    flashgen provision                     bucket, limits, pool, blocks, automations

Prefect is imported only by the commands that run flows, so ``--help`` stays quick and
the demo can point Prefect at its own home before Prefect reads its settings. The
emulator and the demo need the ``[demo]`` extra and import it only when they run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flashgen.errors import FlashgenError, InputError
from flashgen.models import DEFAULT_MODEL, KNOWN_MODELS

app = typer.Typer(
    help="flashgen: prompts in, images in S3, through RunComfy's Model API and Prefect.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
DEMO_EXTRA = "pip install 'flashgen[demo]'"

ModelOpt = Annotated[str, typer.Option("--model", help="RunComfy model id.")]
BucketOpt = Annotated[str | None, typer.Option(help="S3 bucket.", envvar="FLASHGEN_BUCKET")]
PrefixOpt = Annotated[str | None, typer.Option(help="Key prefix inside the bucket.",
                                               envvar="FLASHGEN_PREFIX")]


def _fail(exc: Exception, code: int = 1) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(code)


@app.command()
def schema(model: ModelOpt = DEFAULT_MODEL) -> None:
    """Print a model's input JSON Schema (as the API publishes it)."""
    known = KNOWN_MODELS.get(model)
    if known is None:
        _fail(InputError(f"--model: {model!r} is not known here; known: {', '.join(KNOWN_MODELS)}"),
              2)
    typer.echo(json.dumps(known.json_schema(), indent=2))  # type: ignore[attr-defined]


def _require_demo_extra(*packages: str) -> None:
    """Exit with one line naming the extra when a package it brings is missing."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        typer.secho(f"error: {', '.join(missing)} not installed; this command needs the demo "
                    f"extra: {DEMO_EXTRA}", fg="red", err=True)
        raise typer.Exit(1)


@app.command(add_help_option=False,
             context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def emulator(ctx: typer.Context) -> None:
    """Run the local RunComfy-compatible API emulator."""
    # Its options live with the emulator, which is imported only now: a lean install has
    # no emulator, and `flashgen --help` need not pay for importing one.
    _require_demo_extra("fastapi", "uvicorn", "jsonschema")
    from flashgen.emulator.cli import emulator_command

    command = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    command.command()(emulator_command)
    typer.main.get_command(command).main(args=ctx.args, prog_name="flashgen emulator")


def _call(method: str, request_id: str) -> Any:
    from flashgen.client import RunComfyClient

    async def go() -> Any:
        async with RunComfyClient() as client:
            return await getattr(client, method)(request_id)

    try:
        return asyncio.run(go())
    except FlashgenError as exc:
        _fail(exc)


@app.command()
def status(request_id: str) -> None:
    """Show a request's current state (token and URL from RUNCOMFY_API_TOKEN, RUNCOMFY_BASE_URL)."""
    typer.echo(_call("status", request_id).model_dump_json(indent=2, exclude_none=True))


@app.command()
def result(request_id: str) -> None:
    """Show a request's outputs (or its state if it has not completed)."""
    typer.echo(_call("result", request_id).model_dump_json(indent=2, exclude_none=True))


@app.command()
def cancel(request_id: str) -> None:
    """Cancel a queued request; prints cancelled, not_cancellable or already_finished."""
    typer.echo(_call("cancel", request_id).value)


@app.command()
def generate(
    prompt: str,
    negative_prompt: Annotated[str | None, typer.Option(help="What to keep out.")] = None,
    aspect_ratio: Annotated[str | None, typer.Option(
        help="e.g. 16:9, 9:16, 1:1 or an exact '1440:810 (16:9)'.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (same inputs, same image).")] = None,
    no_magic_prompt: Annotated[bool, typer.Option(
        "--no-magic-prompt", help="Turn off Magic Prompt expansion.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
    force: Annotated[bool, typer.Option(help="Generate again even if stored.")] = False,
) -> None:
    """Generate one image into S3 (runs the generate-image flow)."""
    from flows.generate import generate_image

    _run_flow(generate_image, prompt=prompt, negative_prompt=negative_prompt,
              aspect_ratio=aspect_ratio, seed=seed,
              prompt_extend=False if no_magic_prompt else None, model_id=model,
              bucket=bucket, prefix=prefix, force=force)


@app.command()
def batch(
    source: Annotated[str | None, typer.Argument(
        help="CSV, JSONL, JSON or YAML file, or s3:// URI.")] = None,
    prompt: Annotated[list[str] | None, typer.Option(
        "--prompt", "-p", help="A prompt (repeatable); with or without SOURCE.")] = None,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Jobs at the API at once.", envvar="FLASHGEN_API_CONCURRENCY")] = None,
    force: Annotated[bool, typer.Option(help="Generate again even if stored.")] = False,
    batch_id: Annotated[str | None, typer.Option(help="Names the manifest.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    strict: Annotated[bool, typer.Option(help="Abort if any row is invalid.")] = False,
    max_failure_ratio: Annotated[float, typer.Option(
        help="Share of items that may fail before the batch counts as failed.")] = 0.0,
    resubmit_ambiguous: Annotated[bool, typer.Option(
        help="Resend items whose earlier submit lost its answer (may pay twice).")] = False,
    defaults: Annotated[str | None, typer.Option(
        help='JSON object of input defaults, e.g. \'{"aspect_ratios": ["16:9","1:1"]}\'.')] = None,
) -> None:
    """Generate a batch of images into S3 (runs the generate-images flow)."""
    from flows.generate import generate_images

    try:
        parsed = json.loads(defaults) if defaults else None
    except json.JSONDecodeError as exc:
        _fail(InputError(f"--defaults: not valid JSON: {exc}"), 2)
    _run_flow(generate_images, source=source, prompts=prompt or None, defaults=parsed,
              model_id=model, bucket=bucket,
              prefix=prefix, concurrency=concurrency, force=force, batch_id=batch_id,
              strict=strict, max_failure_ratio=max_failure_ratio,
              resubmit_ambiguous=resubmit_ambiguous)


def _run_flow(flow: Any, **params: Any) -> None:
    """Run a flow in this process with a progress bar, print its table, exit 0 only if ok."""
    from flows.console import print_summary, progress_bar

    with progress_bar():
        state = asyncio.run(flow(**params, return_state=True))
    try:
        summary = state.result(raise_on_failure=False)
    except Exception as exc:  # the flow failed before it had a summary
        _fail(exc)
    if isinstance(summary, BaseException):
        _fail(summary, 2 if isinstance(summary, InputError) else 1)
    print_summary(summary)
    if not state.is_completed():
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the images.")] = Path("flashgen-demo"),
    job_time: Annotated[float, typer.Option(help="Emulated seconds per job.")] = 1.5,
    concurrency: Annotated[int, typer.Option(help="Jobs at the API at once.")] = 4,
) -> None:
    """Run the main job end to end on a local stack: emulator, S3 stand-in, Prefect."""
    _require_demo_extra("moto", "fastapi", "uvicorn", "jsonschema")
    from infra.demo import run_demo

    raise typer.Exit(run_demo(out=out, job_time=job_time, concurrency=concurrency))


def _register_provision() -> None:
    try:
        from infra.cli import provision_command
    except ImportError:  # infra is not installed beside the core package
        return
    app.command("provision", help="Create or update bucket, limits, work pool, blocks and "
                "automations (idempotent).")(provision_command)


_register_provision()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
