"""The ``flashgen`` command.

    flashgen emulator --port 8188          a local RunComfy-compatible API
    flashgen schema                        the default model's input JSON Schema
    flashgen status|result|cancel ID       one request at the API
    flashgen generate "a red fox" --aspect-ratio 9:16
    flashgen batch prompts.csv --bucket my-bucket --concurrency 8
    flashgen resume BATCH_ID               finish a batch (cancelled, crashed) from its record
    flashgen retry BATCH_ID [--ambiguous]  send a batch's failed items again, only those
    flashgen demo                          the whole job on a local stack
    flashgen provision                     bucket, inbox queue, limits, pool, blocks, automations
    flashgen listen                        S3 uploads to the inbox → flashgen.prompts.uploaded
    flashgen ledger list|show|resolve      what was paid for, and settling ambiguous items
    flashgen gallery BATCH_ID [--out DIR]  the batch's gallery: a presigned link, a local copy
    flashgen cost BATCH_ID                 what a batch spent (the API's costs) against its plan
    flashgen catalog rebuild               the Parquet catalog of every batch in the bucket

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
    """One line on stderr (multi-line messages folded), then exit ``code``."""
    message = " ".join(str(exc).split())
    typer.secho(f"error: {message}", fg="red", err=True)
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
    """One client call on ``request_id``, with the token from wherever it is kept."""
    from flashgen.client import RunComfyClient
    from flashgen.settings import get_settings, resolve_token

    async def go() -> Any:
        settings = get_settings()
        token = await resolve_token(settings)
        async with RunComfyClient.from_settings(settings, token) as client:
            return await getattr(client, method)(request_id)

    from flashgen.errors import AuthenticationError

    try:
        return asyncio.run(go())
    except (InputError, AuthenticationError) as exc:  # refused: a bad id, a bad token
        _fail(exc, 2)
    except FlashgenError as exc:
        _fail(exc, 2 if isinstance(exc, InputError) else 1)


@app.command()
def status(request_id: str) -> None:
    """Show a request's current state.

    The token comes from RUNCOMFY_API_TOKEN, else the Prefect Secret block named by
    FLASHGEN_TOKEN_BLOCK (runcomfy-api-token); the URL from RUNCOMFY_BASE_URL.
    """
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
    try:
        _preflight(None)
    except InputError as exc:
        _fail(exc, 2)
    from flashgen.flows.generate import generate_image, image_inputs

    given = dict(prompt=prompt, negative_prompt=negative_prompt, aspect_ratio=aspect_ratio,
                 seed=seed, prompt_extend=False if no_magic_prompt else None)
    try:  # the flow checks again; this fails before Prefect starts
        image_inputs(model, **given)
    except InputError as exc:
        _fail(exc, 2)
    summary = _run_flow(generate_image, **given, model_id=model, bucket=bucket, prefix=prefix,
                        force=force)
    if not summary.ok:
        raise typer.Exit(1)


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
    dry_run: Annotated[bool, typer.Option(
        help="Plan only: check everything, print what would be paid for, send nothing.")] = False,
    max_items: Annotated[int | None, typer.Option(
        help="Refuse to send more than N paid submissions.")] = None,
    max_cost: Annotated[float | None, typer.Option(
        help="Refuse to spend more than X USD (at the catalog price, or "
        "FLASHGEN_PRICE_PER_IMAGE).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Also copy the batch's images and an offline gallery into this folder.")] = None,
    shard_size: Annotated[int | None, typer.Option(
        help="Split a batch with more items to run than N into shards, each run by a "
        "generate-shard flow run (default FLASHGEN_SHARD_SIZE; unset: one run).")] = None,
    max_shards_running: Annotated[int, typer.Option(
        help="Shards running at once; --concurrency is shared among them.")] = 4,
    shard_deployment: Annotated[str | None, typer.Option(
        help="Run the shards on this deployment (generate-shard/NAME, on its work pool); "
        "default: in this process.")] = None,
) -> None:
    """Generate a batch of images into S3 (runs the generate-images flow).

    Ctrl-C stops it cleanly: queued jobs are cancelled at the API, running ones stored
    (exit 130); ``flashgen resume BATCH_ID`` finishes it.
    """
    from flashgen.options import BatchOptions

    try:
        parsed = json.loads(defaults) if defaults else None
    except json.JSONDecodeError as exc:
        _fail(InputError(f"--defaults: not valid JSON: {exc}"), 2)
    params = dict(source=source, prompts=prompt or None, defaults=parsed, model_id=model,
                  bucket=bucket, prefix=prefix, concurrency=concurrency, force=force,
                  batch_id=batch_id, strict=strict, max_failure_ratio=max_failure_ratio,
                  resubmit_ambiguous=resubmit_ambiguous, dry_run=dry_run,
                  max_items=max_items, max_cost=max_cost, shard_size=shard_size,
                  max_shards_running=max_shards_running, shard_deployment=shard_deployment)
    try:
        BatchOptions.parse(**params)  # the flow checks again; this fails before Prefect starts
        _preflight(out)
    except InputError as exc:
        _fail(exc, 2)
    from flashgen.flows.generate import generate_images

    summary = _run_flow(generate_images, **params)
    if out is not None and summary.manifest_uri:
        from flashgen.gallery import write_local_gallery
        from flashgen.settings import get_settings
        from flashgen.storage import Store

        store = Store.from_settings(get_settings(), bucket=bucket, prefix=prefix)
        typer.echo(f"local copy: {write_local_gallery(store, summary.batch_id, out)}")
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def resume(
    batch_id: Annotated[str, typer.Argument(help="The batch to finish.")],
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Finish a batch from its own record in S3 (no flags to remember).

    Stored items are skipped, paid jobs fetched (never resent), items not sent or cancelled
    are sent; failed items keep their row (``flashgen retry`` sends them).
    """
    from flashgen.flows.rerun import resume_batch

    if not _run_flow(resume_batch, batch_id=batch_id, bucket=bucket, prefix=prefix).ok:
        raise typer.Exit(1)


@app.command()
def retry(
    batch_id: Annotated[str, typer.Argument(help="The batch whose failed items to send.")],
    failed: Annotated[bool, typer.Option(
        "--failed", help="Send the failed items again (the default).")] = False,
    ambiguous: Annotated[bool, typer.Option(
        "--ambiguous", help="Instead, resend the items whose submit lost its answer. "
        "They may have been paid for: this may pay twice.")] = False,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Send a batch's failed items again, and only those, with the batch's own options."""
    if failed and ambiguous:
        _fail(InputError("--failed/--ambiguous: give one of them, not both"), 2)
    from flashgen.flows.rerun import retry_batch

    if not _run_flow(retry_batch, batch_id=batch_id, ambiguous=ambiguous, bucket=bucket,
                     prefix=prefix).ok:
        raise typer.Exit(1)


# Like a shell's exit status after SIGINT: the batch stopped because it was asked to.
EXIT_CANCELLED = 130


def _preflight(out: Path | None) -> None:
    """What this process needs once it has paid, before Prefect starts: every setting in
    its range, the state directory and ``--out`` writable. The flow checks the settings,
    the state directory and the bucket again (deployments run it without this CLI)."""
    from flashgen.preflight import state_folder, writable_folder
    from flashgen.settings import get_settings

    state_folder(get_settings())
    if out is not None:
        writable_folder(out, "--out")


def _run_flow(flow: Any, **params: Any) -> Any:
    """Run a flow in this process with a progress bar and print its table.

    The same path as ``flashgen.generate`` (``flashgen.api.run_flow``). Exits 2 when the
    run was refused (bad input or token: nothing sent), 1 when it failed before it had a
    summary, and 130 when the batch was cancelled part-way (Ctrl-C, SIGTERM); otherwise
    returns the summary (whose ``ok`` says whether the batch succeeded). Each outcome is
    printed once: the engine's "Finished in state" line stays in the run's logs.
    """
    from flashgen.api import run_flow, run_sync
    from flashgen.errors import AuthenticationError
    from flashgen.flows.console import final_state_off_console, print_plan, print_summary, \
        progress_bar

    try:
        with progress_bar(), final_state_off_console():
            summary = run_sync(run_flow(flow, **params))
    except (InputError, AuthenticationError) as exc:  # refused: nothing was sent
        _fail(exc, 2)
    except Exception as exc:  # the temporary server, or a run that failed before a summary
        _fail(exc)
    if summary.dry_run:
        print_plan(summary)
        return summary
    print_summary(summary)
    if summary.stopped:
        typer.secho(f"{summary.describe()}\nnothing paid is lost: `flashgen resume "
                    f"{summary.batch_id}` finishes it", fg="yellow", err=True)
        raise typer.Exit(EXIT_CANCELLED)
    return summary


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the images.")] = Path("flashgen-demo"),
    job_time: Annotated[float, typer.Option(help="Emulated seconds per job.")] = 1.5,
    concurrency: Annotated[int, typer.Option(help="Jobs at the API at once.")] = 4,
) -> None:
    """Run the main job end to end on a local stack: emulator, S3 stand-in, Prefect."""
    _require_demo_extra("moto", "fastapi", "uvicorn", "jsonschema")
    from flashgen.infra.demo import run_demo

    raise typer.Exit(run_demo(out=out, job_time=job_time, concurrency=concurrency))


@app.command()
def listen(
    queue: Annotated[str | None, typer.Option(
        help="SQS queue name or URL that S3 notifies (env FLASHGEN_INBOX_QUEUE).")] = None,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
    wait_seconds: Annotated[int, typer.Option(
        min=0, max=20, help="Long-poll length: one SQS request per this many idle seconds.")
    ] = 20,
    visibility_timeout: Annotated[int | None, typer.Option(
        min=0, help="Seconds before a message taken by a listener that died is given out "
        "again (default: the queue's, 60 s as provisioned).")] = None,
) -> None:
    """Turn S3 uploads under <prefix>/inbox/ into flashgen.prompts.uploaded events.

    A long-lived process (systemd, a Kubernetes Deployment): it reads the SQS queue that
    `flashgen provision` points the bucket's notifications at, and the inbox deployment's
    trigger starts a batch on each new prompt file. On SIGTERM or Ctrl-C it finishes its
    current poll (at most --wait-seconds) and the files it brought, then exits.
    """
    import logging
    import signal

    import boto3
    from prefect.settings import get_current_settings

    from flashgen.flows.listen import listen as run_listener
    from flashgen.settings import get_settings
    from flashgen.storage import Store

    if not get_current_settings().api.url:
        _fail(InputError("PREFECT_API_URL is not set: point it at the Prefect server whose "
                         "inbox deployment the events start"), 2)
    # Its own handler: Prefect's logging setup owns the root logger (at WARNING).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("flashgen.listen")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    settings = get_settings()
    store = Store.from_settings(settings, bucket=bucket, prefix=prefix)
    sqs = boto3.client("sqs", endpoint_url=settings.aws_endpoint_url)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_listener(store, sqs, queue or settings.inbox_queue, stop,
                           wait_seconds=wait_seconds, visibility_timeout=visibility_timeout)

    try:
        asyncio.run(main())
    except InputError as exc:
        _fail(exc, 2)
    except Exception as exc:  # a queue that does not exist, no credentials: one line
        _fail(exc)


ledger_app = typer.Typer(help="See and settle the ledger: what was paid for, per item.",
                         no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


def _ledger(bucket: str | None, prefix: str | None) -> Any:
    from flashgen.ledger import Journal, Ledger
    from flashgen.settings import get_settings
    from flashgen.storage import Store

    settings = get_settings()
    store = Store.from_settings(settings, bucket=bucket, prefix=prefix)
    return Ledger(store, Journal(settings.state_dir, scope=store.uri(store.prefix)))


@ledger_app.command("list")
def ledger_list(
    state: Annotated[str | None, typer.Option(
        help="Only entries in this state: sending, submitted, stored, failed, ambiguous, "
             "lost.")] = None,
    batch: Annotated[str | None, typer.Option(help="Only entries written by this batch.")] = None,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """One line per ledger entry: fingerprint, state, request_id, batch, updated."""
    from flashgen.records import LedgerState

    try:
        wanted = LedgerState(state) if state else None
    except ValueError:
        _fail(InputError(f"--state: {state!r} is not one of "
                         f"{', '.join(s.value for s in LedgerState)}"), 2)
    try:
        for entry in _ledger(bucket, prefix).entries(state=wanted, batch_id=batch):
            updated = entry.updated_at.isoformat(timespec="seconds") if entry.updated_at else ""
            typer.echo(f"{entry.fingerprint}  {entry.state.value:<10} "
                       f"{entry.request_id or '-':<38} "
                       f"{entry.batch_id or '-':<24} {updated}")
    except FlashgenError as exc:
        _fail(exc, 2 if isinstance(exc, InputError) else 1)


@ledger_app.command("show")
def ledger_show(fingerprint: str, bucket: BucketOpt = None, prefix: PrefixOpt = None) -> None:
    """An entry in full: state, request_id, owner, times, error."""
    try:
        typer.echo(_ledger(bucket, prefix).show(fingerprint).model_dump_json(indent=2))
    except FlashgenError as exc:
        _fail(exc, 2 if isinstance(exc, InputError) else 1)


@ledger_app.command("resolve")
def ledger_resolve(
    fingerprint: str,
    request_id: Annotated[str | None, typer.Option(
        help="Adopt this request (found in RunComfy's dashboard); the next run stores it.")] = None,
    retry: Annotated[bool, typer.Option(
        help="Release the item for resubmission. It may pay twice.")] = False,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Settle an ambiguous or lost item: adopt a request, or release it to be sent again."""
    try:
        entry = _ledger(bucket, prefix).resolve(fingerprint, request_id=request_id, retry=retry)
    except FlashgenError as exc:
        _fail(exc, 2 if isinstance(exc, InputError) else 1)
    if retry:
        typer.secho("released: the next run sends it again. If the lost submit did reach "
                    "the API, this pays twice.", fg="yellow", err=True)
    else:
        typer.echo(f"adopted {entry.request_id}: the next run polls and stores it")
@app.command()
def gallery(
    batch_id: Annotated[str, typer.Argument(help="The batch (its manifest's name).")],
    out: Annotated[Path | None, typer.Option(
        help="Also copy the images and a page that opens offline into this folder.")] = None,
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Publish (or refresh) a batch's gallery in S3 and print its presigned link."""
    from flashgen.gallery import publish_gallery, write_local_gallery
    from flashgen.settings import get_settings

    try:
        settings = get_settings()
        store = _store_with_manifest(batch_id, bucket, prefix)
        # Each page streams the manifest and reads only the records it shows.
        page = publish_gallery(store, batch_id, expires_in=settings.gallery_url_ttl)
        index = None
        if out is not None:
            index = write_local_gallery(store, batch_id, out)
    except InputError as exc:
        _fail(exc, 2)
    except (FlashgenError, OSError) as exc:
        _fail(exc)
    typer.echo(page.url)
    if index is not None:
        typer.echo(f"local copy: {index}", err=True)


@app.command()
def cost(
    batch_id: Annotated[str, typer.Argument(help="The batch (its manifest's name).")],
    bucket: BucketOpt = None,
    prefix: PrefixOpt = None,
) -> None:
    """Print what a batch spent: the costs the API reported on its records, and its plan."""
    from flashgen.spend import batch_spend

    try:
        spend = batch_spend(_store_with_manifest(batch_id, bucket, prefix), batch_id)
    except InputError as exc:
        _fail(exc, 2)
    except FlashgenError as exc:
        _fail(exc)
    typer.echo(f"batch {batch_id}")
    for name, value in spend.model_dump().items():
        typer.echo(f"  {name + ':':<15} {'unknown' if value is None else value}")
    typer.echo("  " + spend.line())


catalog_app = typer.Typer(help="The Parquet catalog of every batch, for data teams.",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("rebuild")
def catalog_rebuild(bucket: BucketOpt = None, prefix: PrefixOpt = None) -> None:
    """Write the catalog file of every batch that has a manifest; print each one."""
    from flashgen.catalog import rebuild_catalog
    from flashgen.settings import get_settings
    from flashgen.storage import Store

    try:
        store = Store.from_settings(get_settings(), bucket=bucket, prefix=prefix)
        for uri in rebuild_catalog(store):
            typer.echo(uri)
    except InputError as exc:
        _fail(exc, 2)
    except FlashgenError as exc:
        _fail(exc)


def _store_with_manifest(batch_id: str, bucket: str | None, prefix: str | None) -> Any:
    """The Store, once the batch's manifest is known to be there (else an InputError)."""
    from flashgen.settings import get_settings
    from flashgen.storage import Store

    store = Store.from_settings(get_settings(), bucket=bucket, prefix=prefix)
    manifest = store.layout.manifest(batch_id)  # an unusable batch id is an InputError
    if not store.exists(manifest):
        raise InputError(f"no batch {batch_id!r}: {store.uri(manifest)} does not exist",
                         field="batch_id")
    return store


def _register_provision() -> None:
    try:
        from flashgen.infra.cli import provision_command
    except ImportError:  # infra is not installed beside the core package
        return
    app.command("provision", help="Create or update bucket, limits, work pool, blocks and "
                "automations (idempotent).")(provision_command)


_register_provision()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
