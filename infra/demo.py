"""``flashgen demo``: the main job end to end on a local stack, from nothing.

Starts the emulator and moto's S3 server on free ports, creates a bucket, runs the
``generate-images`` flow through Prefect (its ephemeral server, homed in the output
folder) on the sample prompts in ``deployments/prompts/demo.csv``, copies the images into
a folder a person can open, and prints a table of results with the local copies' paths
(moto's bucket lives in memory and is gone when the demo ends).

The body runs in a child process so that Prefect reads the demo's settings (its home,
no remote API) before anything imports it; the user's PREFECT_* and AWS_* variables are
left out, and the demo says so. Prefect's temporary server gets 90 s to start (20 by
default, too little on a busy machine), and a start that still times out is tried once
more.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from flashgen import deployments

DEMO_PROMPTS = Path(deployments.__file__).parent / "prompts" / "demo.csv"
BUCKET = "flashgen-demo"
TOKEN = "demo-token"  # the emulator accepts only this one, to show a token is really sent
LOCAL_ONLY = ("PREFECT_", "AWS_")  # the user's settings of these would point elsewhere
SERVER_DID_NOT_START = 75  # EX_TEMPFAIL: the child's Prefect server timed out starting


def run_demo(*, out: Path, job_time: float, concurrency: int) -> int:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ignored = sorted(k for k in os.environ if k.startswith(LOCAL_ONLY))
    if ignored:
        print(f"note: the demo runs its own Prefect and S3 and ignores {', '.join(ignored)}",
              flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(LOCAL_ONLY)}
    env.update(PREFECT_HOME=str(out / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "flashgen.infra.demo",
               str(out), str(job_time), str(concurrency)]
    code = subprocess.call(command, env=env)
    if code == SERVER_DID_NOT_START:
        print("Prefect's temporary server did not start in time; trying once more", flush=True)
        code = subprocess.call(command, env=env)
    if code == SERVER_DID_NOT_START:
        print("error: Prefect's temporary server did not start twice; see 'The demo' in "
              "infra/PRODUCTION.md", file=sys.stderr)
        return 1
    return code


def _main(out: Path, job_time: float, concurrency: int) -> int:
    from flashgen.emulator import EmulatorConfig, EmulatorServer
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
        try:  # the first call to Prefect, which starts its temporary server
            asyncio.run(ensure_api_limit(get_settings().concurrency_limit, concurrency))
        except RuntimeError as exc:
            if "ephemeral Prefect API server" not in str(exc):
                raise
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return SERVER_DID_NOT_START

        from flashgen.flows.console import print_summary, progress_bar
        from flashgen.flows.generate import generate_images
        from flashgen.flows.summary import summary_of

        with progress_bar():
            state = asyncio.run(generate_images(source=str(DEMO_PROMPTS), return_state=True))
        summary = summary_of(state.result(raise_on_failure=False))
        if isinstance(summary, BaseException):
            print(f"error: {summary}", file=sys.stderr)
            return 1
        print_summary(_copied(store, summary, out))
        stats = api.stats()
        print(f"\nemulator saw {stats['submissions']} submissions "
              f"({stats['duplicate_submissions']} duplicate), at most "
              f"{stats['max_in_flight']} jobs in flight")
        print(f"images in {out / 'images'}; s3://{BUCKET} was moto's, in memory, and is gone "
              "now that the demo ends")
        return 0 if state.is_completed() else 1


async def ensure_api_limit(name: str, limit: int) -> None:
    """The shared API limit, exactly as `flashgen provision` creates it."""
    from prefect.client.orchestration import get_client

    from flashgen.infra.provision import ensure_limit

    async with get_client() as client:
        await ensure_limit(client, name, limit=limit)


def _copied(store, summary, out: Path):
    """The summary with every image and the manifest copied into ``out``, pointing there:
    the bucket they are in does not outlive the demo."""
    def copy(uri: str, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        local = folder / re.sub(r"[^A-Za-z0-9._-]", "_", uri.rsplit("/", 1)[-1])
        local.write_bytes(store.read_bytes(uri))
        return str(local)

    rows = [row.model_copy(update={"image_uris": [copy(u, out / "images")
                                                  for u in row.image_uris]})
            for row in summary.rows]
    manifest = copy(summary.manifest_uri, out / "manifests") if summary.manifest_uri else None
    return summary.model_copy(update={"rows": rows, "manifest_uri": manifest})


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
