"""``flashgen demo``: the main job end to end on a local stack, from nothing.

Starts the emulator and moto's S3 server on free ports, creates a bucket, runs the
``generate-images`` flow through Prefect (its ephemeral server, homed in the output
folder) on the sample prompts in ``deployments/prompts/demo.csv``, and prints a table of
results with each image's S3 key. moto's bucket lives in memory and is gone when the demo
ends, so the batch's gallery is written to the output folder with the images, records and
manifest it links: ``index.html`` opens after the demo, offline.

The body runs in a child process so that Prefect reads the demo's settings (its home,
no remote API) before anything imports it; the user's PREFECT_* and AWS_* variables are
left out, and the demo says so. Prefect's temporary server is started as ``flashgen
batch`` starts it (flashgen.flows.temporary_server: 90 s, and 90 s more while it is still
starting).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from flashgen import deployments

DEMO_PROMPTS = Path(deployments.__file__).parent / "prompts" / "demo.csv"
BUCKET = "flashgen-demo"
TOKEN = "demo-token"  # the emulator accepts only this one, to show a token is really sent
LOCAL_ONLY = ("PREFECT_", "AWS_")  # the user's settings of these would point elsewhere


def run_demo(*, out: Path, job_time: float, concurrency: int) -> int:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ignored = sorted(k for k in os.environ if k.startswith(LOCAL_ONLY))
    if ignored:
        print(f"note: the demo runs its own Prefect and S3 and ignores {', '.join(ignored)}",
              flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(LOCAL_ONLY)}
    env.update(PREFECT_HOME=str(out / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "flashgen.infra.demo",
               str(out), str(job_time), str(concurrency)]
    return subprocess.call(command, env=env)


def _main(out: Path, job_time: float, concurrency: int) -> int:
    from flashgen.emulator import EmulatorConfig, EmulatorServer
    from flashgen.errors import FlashgenError
    from flashgen.flows.temporary_server import start_temporary_server
    from flashgen.settings import get_settings
    from flashgen.storage import Store
    from flashgen.infra.stack import MotoS3

    config = EmulatorConfig(workers=concurrency, job_time=job_time, tokens=[TOKEN])
    with EmulatorServer(config) as api, MotoS3() as s3:
        os.environ.update(s3.env, RUNCOMFY_BASE_URL=api.url, RUNCOMFY_API_TOKEN=TOKEN,
                          FLASHGEN_OUTPUT_NETWORKS="127.0.0.0/8",  # the emulator's files
                          FLASHGEN_BUCKET=BUCKET, FLASHGEN_PREFIX="demo",
                          FLASHGEN_API_CONCURRENCY=str(concurrency),
                          FLASHGEN_POLL_INITIAL="0.25", FLASHGEN_POLL_MAXIMUM="1")
        get_settings.cache_clear()
        print(f"emulator  {api.url}\nS3 (moto) {s3.url}  bucket {BUCKET}\n"
              f"prompts   {DEMO_PROMPTS}\n", flush=True)
        store = Store.from_settings(get_settings())
        store.ensure_bucket()
        try:
            start_temporary_server()
        except FlashgenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        asyncio.run(ensure_api_limit(get_settings().concurrency_limit, concurrency))

        from flashgen.flows.console import print_summary, progress_bar
        from flashgen.flows.generate import generate_images
        from flashgen.flows.summary import summary_of

        with progress_bar():
            state = asyncio.run(generate_images(source=str(DEMO_PROMPTS), return_state=True))
        summary = summary_of(state.result(raise_on_failure=False))
        if isinstance(summary, BaseException):
            print(f"error: {summary}", file=sys.stderr)
            return 1
        print_summary(_kept(store, summary, out))
        stats = api.stats()
        print(f"\nemulator saw {stats['submissions']} submissions "
              f"({stats['duplicate_submissions']} duplicate), at most "
              f"{stats['max_in_flight']} jobs in flight")
        print(f"s3://{BUCKET} was moto's, in memory, and is gone now that the demo ends; its "
              f"images, records and manifest are kept in {out}, with the gallery "
              f"{out / 'index.html'}")
        return 0 if state.is_completed() else 1


async def ensure_api_limit(name: str, limit: int) -> None:
    """The shared API limit, exactly as `flashgen provision` creates it."""
    from prefect.client.orchestration import get_client

    from flashgen.infra.provision import ensure_limit

    async with get_client() as client:
        await ensure_limit(client, name, limit=limit)


def _kept(store, summary, out: Path):
    """The summary, its gallery and manifest kept in ``out``: the bucket they are in does
    not outlive the demo. The table keeps the S3 keys; the links point at the copies."""
    from flashgen.gallery import write_local_gallery

    index = write_local_gallery(store, summary.batch_id, out)  # images/, metadata/ beside it
    manifest = None
    if summary.manifest_uri:
        manifest = out / "manifests" / summary.manifest_uri.rsplit("/", 1)[-1]
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_bytes(store.read_bytes(summary.manifest_uri))
    return summary.model_copy(update={"gallery_url": index.as_uri(),
                                      "manifest_uri": str(manifest) if manifest else None})


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
