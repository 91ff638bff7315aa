"""Makespan of a batch against the ideal ``ceil(N / C) × job time``, side by side with a
baseline in the same invocation.

    python -m bench [--items 40] [--concurrency 4] [--job-time 1.0]

baseline: the bare client in a plain asyncio loop (semaphore of C; submit, wait, download),
          no Prefect and no S3 — the floor that polling alone costs.
flow:     the generate-images flow: Prefect tasks, the S3 ledger, images and records in
          S3 (moto in-process), the shared global concurrency limit.
Both run against the same emulator (one worker per item, so only C limits concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time

TOKEN = "bench-token"


async def _baseline(url: str, n: int, c: int, tag: str) -> float:
    from flashgen.client import RunComfyClient
    from flashgen.models import DEFAULT_MODEL

    gate = asyncio.Semaphore(c)
    async with RunComfyClient(token=TOKEN, base_url=url) as client:
        async def one(i: int) -> None:
            async with gate:
                handle = await client.submit(DEFAULT_MODEL, {"prompt": f"{tag} {i}", "seed": i})
                await client.wait(handle.request_id)
            await client.fetch_outputs(handle.request_id)

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--job-time", type=float, default=1.0)
    args = parser.parse_args()
    os.environ.update(PREFECT_HOME=tempfile.mkdtemp(), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_LOGGING_LEVEL="WARNING", AWS_ACCESS_KEY_ID="x",
                      AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
                      FLASHGEN_BUCKET="bench", FLASHGEN_API_CONCURRENCY=str(args.concurrency),
                      RUNCOMFY_API_TOKEN=TOKEN, FLASHGEN_POLL_INITIAL="0.05",
                      FLASHGEN_POLL_MAXIMUM="0.5")
    os.environ.pop("AWS_ENDPOINT_URL", None)

    import boto3
    from moto import mock_aws
    from prefect.testing.utilities import prefect_test_harness

    from flashgen.emulator import EmulatorConfig, EmulatorServer
    from flashgen.settings import get_settings
    from flows.generate import generate_images
    from infra.demo import ensure_api_limit

    n, c, job = args.items, args.concurrency, args.job_time
    ideal = math.ceil(n / c) * job
    config = EmulatorConfig(workers=n, job_time=job, job_time_spread=0.0, tokens=[TOKEN])
    with EmulatorServer(config) as api, mock_aws(), prefect_test_harness():
        os.environ["RUNCOMFY_BASE_URL"] = api.url
        get_settings.cache_clear()
        boto3.client("s3").create_bucket(Bucket="bench")
        asyncio.run(ensure_api_limit(get_settings().concurrency_limit, c))
        baseline = asyncio.run(_baseline(api.url, n, c, "baseline"))
        api.reset()
        began = time.perf_counter()
        summary = asyncio.run(generate_images(prompts=[f"flow {i}" for i in range(n)],
                                              concurrency=c))
        flow = time.perf_counter() - began
        stats = api.stats()
    print(f"{n} items, concurrency {c}, job time {job:.2f}s: ideal {ideal:.2f}s")
    print(f"  baseline (bare client) {baseline:6.2f}s  {baseline / ideal:.2f}x ideal")
    print(f"  flow (Prefect + S3)    {flow:6.2f}s  {flow / ideal:.2f}x ideal  "
          f"{flow / baseline:.2f}x baseline")
    print(f"  flow: stored {summary.stored}, emulator max_in_flight {stats['max_in_flight']}, "
          f"duplicate submissions {stats['duplicate_submissions']}")


if __name__ == "__main__":
    main()
