"""Output files: real PNGs of the right size, deterministic, served without a token, expiring."""

from __future__ import annotations

import asyncio
import io
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from emulator_helpers import AUTH, emulator_client, stats, submit, wait_until_done
from PIL import Image

from flashgen.emulator.images import render_png
from flashgen.models import ASPECT_RATIOS, resolution


async def download(client: httpx.AsyncClient, **inputs: object) -> bytes:
    request_id = await submit(client, **inputs)
    await wait_until_done(client, request_id)
    result = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()
    response = await client.get(result["output"]["image"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return response.content


@pytest.mark.parametrize(
    "aspect_ratio", ["1440:810 (16:9)", "810:1440 (9:16)", "1024:1024 (1:1)", "1024:1365 (3:4)"]
)
async def test_the_file_is_a_png_of_the_size_the_aspect_ratio_names(aspect_ratio: str) -> None:
    async with emulator_client(job_time=0) as client:
        image = Image.open(io.BytesIO(await download(client, aspect_ratio=aspect_ratio)))
        assert (image.format, image.size) == ("PNG", resolution(aspect_ratio))


def test_every_aspect_ratio_renders_at_its_resolution() -> None:
    for aspect_ratio in ASPECT_RATIOS:
        png = render_png("a lighthouse at dusk", "", 1, aspect_ratio, True)
        assert Image.open(io.BytesIO(png)).size == resolution(aspect_ratio)


async def test_identical_inputs_give_identical_bytes_across_emulators() -> None:
    inputs = {"prompt": "a red fox", "negative_prompt": "blur", "seed": 3}
    async with emulator_client(job_time=0) as one, emulator_client(job_time=0) as two:
        assert await download(one, **inputs) == await download(two, **inputs)


@pytest.mark.parametrize(
    "change",
    [{"prompt": "a blue fox"}, {"negative_prompt": "snow"}, {"seed": 4}, {"prompt_extend": False}],
)
def test_any_input_that_matters_changes_the_bytes(change: dict) -> None:
    base = {
        "prompt": "a red fox",
        "negative_prompt": "",
        "seed": 3,
        "aspect_ratio": "1440:810 (16:9)",
        "prompt_extend": True,
    }
    assert render_png(**base) != render_png(**{**base, **change})


def test_different_prompts_look_different() -> None:
    """Not only other bytes: other colours, so a glance tells two images apart."""
    args = ("", 1, "1024:1024 (1:1)", True)
    one = Image.open(io.BytesIO(render_png("a red fox", *args))).convert("RGB")
    two = Image.open(io.BytesIO(render_png("a quiet harbour", *args))).convert("RGB")
    assert one.getpixel((5, 5)) != two.getpixel((5, 5))


def test_a_long_prompt_still_fits() -> None:
    png = render_png("word " * 400 + "x" * 500, "", 1, "720:1440 (1:2)", True)
    assert Image.open(io.BytesIO(png)).size == (720, 1440)


async def test_files_need_no_token_and_requests_that_send_one_are_counted() -> None:
    async with emulator_client(job_time=0) as client:
        request_id = await submit(client)
        url = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()[
            "output"
        ]["image"]
        assert (await client.get(url)).status_code == 200
        assert (await client.get(url, headers=AUTH)).status_code == 200
        seen = await stats(client)
        assert (seen["file_downloads"], seen["file_requests_with_auth"]) == (2, 1)


async def test_no_file_for_unknown_unfinished_or_missing_outputs() -> None:
    async with emulator_client(job_time=60) as client:
        running = await submit(client)
        for path in ["/files/nope/0.png", f"/files/{running}/0.png", f"/files/{running}/1.png"]:
            response = await client.get(path)
            assert (response.status_code, response.json()["error_code"]) == (404, 404001)


async def test_links_expire_and_a_fresh_result_gives_a_working_one() -> None:
    async with emulator_client(job_time=0, link_ttl=0.5) as client:
        request_id = await submit(client)
        result_path = f"/v1/requests/{request_id}/result"
        old = (await client.get(result_path, headers=AUTH)).json()["output"]["image"]
        assert set(parse_qs(urlsplit(old).query)) == {"expires", "sig"}
        assert (await client.get(old)).status_code == 200

        await asyncio.sleep(0.6)  # past the link's ttl
        expired = await client.get(old)
        assert (expired.status_code, expired.json()["error_code"]) == (403, 403003)

        fresh = (await client.get(result_path, headers=AUTH)).json()["output"]["image"]
        assert fresh != old
        assert (await client.get(fresh)).status_code == 200


async def test_a_tampered_or_unsigned_link_is_refused() -> None:
    async with emulator_client(job_time=0, link_ttl=60) as client:
        request_id = await submit(client)
        url = (await client.get(f"/v1/requests/{request_id}/result", headers=AUTH)).json()[
            "output"
        ]["image"]
        query = parse_qs(urlsplit(url).query)
        longer = (
            f"/files/{request_id}/0.png?expires={float(query['expires'][0]) + 999}"
            f"&sig={query['sig'][0]}"
        )
        for bad in [longer, f"/files/{request_id}/0.png"]:
            assert (await client.get(bad)).status_code == 403
