"""The script a user would write instead of flashgen: asyncio + httpx, a semaphore, polling
every 0.5 s, boto3 put. No ledger, no records, no retries: the floor to compare against.

    asyncio.run(generate(prompts, api_url, token, bucket, concurrency=16))
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import boto3
import httpx

MODEL = "wan-ai/wan-2-2/flash/text-to-image"
POLL_SECONDS = 0.5


async def generate(prompts: list[str], api_url: str, token: str, bucket: str,
                   concurrency: int) -> dict[str, Any]:
    """Generate one image per prompt into ``s3://bucket/baseline/``; returns polls per image."""
    s3 = boto3.client("s3")
    gate = asyncio.Semaphore(concurrency)
    polls: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with (httpx.AsyncClient(base_url=api_url, headers=headers, timeout=60) as http,
                httpx.AsyncClient(timeout=60) as files):  # file links are signed: no token

        async def one(prompt: str) -> None:
            async with gate:
                submitted = await http.post(f"/v1/models/{MODEL}", json={"prompt": prompt})
                submitted.raise_for_status()
                request_id = submitted.json()["request_id"]
                count = 0
                while True:
                    await asyncio.sleep(POLL_SECONDS)
                    count += 1
                    status = (await http.get(f"/v1/requests/{request_id}/status")).json()
                    if status["status"] in ("completed", "failed", "cancelled"):
                        break
            if status["status"] != "completed":
                return
            result = (await http.get(f"/v1/requests/{request_id}/result")).json()
            image = await files.get(result["output"]["image"])
            key = f"baseline/{hashlib.sha256(prompt.encode()).hexdigest()[:16]}.png"
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=key, Body=image.content,
                                    ContentType="image/png")
            polls.append(count)

        await asyncio.gather(*(one(p) for p in prompts))
    return {"stored": len(polls), "polls": polls}
