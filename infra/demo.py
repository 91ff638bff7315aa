"""``flashgen demo``: the main job end to end on a local stack, from nothing.

Starts the emulator and moto's S3 server on free ports, creates a bucket, runs the
``generate-images`` flow through Prefect (its ephemeral server, homed in the output
folder) on the sample prompts in ``deployments/prompts/demo.csv``, copies the images into
a folder a person can open, and prints a table of results with their S3 keys.

The body runs in a child process so that Prefect reads the demo's settings (its home,
no remote API) before anything imports it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import deployments

DEMO_PROMPTS = Path(deployments.__file__).parent / "prompts" / "demo.csv"
BUCKET = "flashgen-demo"
TOKEN = "demo-token"  # the emulator accepts only this one, to show a token is really sent


def run_demo(*, out: Path, job_time: float, concurrency: int) -> int:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(out / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true", PYTHONUNBUFFERED="1")
    return subprocess.call([sys.executable, "-m", "infra.demo", str(out), str(job_time),
                            str(concurrency)], env=env)


def _main(out: Path, job_time: float, concurrency: int) -> int:
    from flashgen.emulator import EmulatorConfig, EmulatorServer
    from flashgen.settings import get_settings
    from flashgen.storage import Store
    from infra.stack import MotoS3

    config = EmulatorConfig(workers=concurrency, job_time=job_time, tokens=[TOKEN])
    with EmulatorServer(config) as api, MotoS3() as s3:
        os.environ.update(s3.env, RUNCOMFY_BASE_URL=api.url, RUNCOMFY_API_TOKEN=TOKEN,
                          FLASHGEN_BUCKET=BUCKET, FLASHGEN_PREFIX="demo",
                          FLASHGEN_API_CONCURRENCY=str(concurrency),
                          FLASHGEN_POLL_INITIAL="0.25", FLASHGEN_POLL_MAXIMUM="1")
        get_settings.cache_clear()
        print(f"emulator  {api.url}\nS3 (moto) {s3.url}  bucket {BUCKET}\n"
              f"prompts   {DEMO_PROMPTS}\n", flush=True)
        store = Store.from_settings(get_settings())
        store.ensure_bucket()
        asyncio.run(ensure_api_limit(get_settings().concurrency_limit, concurrency))

        from flows.console import print_summary, progress_bar
        from flows.generate import generate_images

        with progress_bar():
            state = asyncio.run(generate_images(source=str(DEMO_PROMPTS), return_state=True))
        summary = state.result(raise_on_failure=False)
        if isinstance(summary, BaseException):
            print(f"error: {summary}", file=sys.stderr)
            return 1
        _copy_images(store, summary.image_uris, out / "images")
        print_summary(summary)
        stats = api.stats()
        print(f"\nemulator saw {stats['submissions']} submissions "
              f"({stats['duplicate_submissions']} duplicate), at most "
              f"{stats['max_in_flight']} jobs in flight")
        print(f"images in {out / 'images'} and in s3://{BUCKET}/demo/images/")
        return 0 if state.is_completed() else 1


async def ensure_api_limit(name: str, limit: int) -> None:
    """The shared API limit, exactly as `flashgen provision` creates it."""
    from prefect.client.orchestration import get_client

    from infra.provision import ensure_limit

    async with get_client() as client:
        await ensure_limit(client, name, limit=limit)


def _copy_images(store, uris: list[str], folder: Path) -> None:
    """Local copies named as in S3 (``<key>.png``), so the table's keys find them."""
    folder.mkdir(parents=True, exist_ok=True)
    for uri in uris:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", uri.rsplit("/", 1)[-1])
        (folder / name).write_bytes(store.read_bytes(uri))


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
