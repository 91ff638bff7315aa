"""The gallery: the page's content, its two homes (S3, a folder), the command, a real browser."""

from __future__ import annotations

import re
import shutil
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from batch_views_data import FAILED_REASON, INVALID_REASON, TRICKY_PROMPT, WHEN, write_batch
from typer.testing import CliRunner

from flashgen.cli import app
from flashgen.errors import InputError
from flashgen.gallery import publish_gallery, render_gallery, write_local_gallery
from flashgen.records import ItemState, ManifestRow
from flashgen.settings import Settings, get_settings
from flashgen.storage import Layout, Store
from flashgen.views import publish_batch_views

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WEEK = 7 * 24 * 3600


class _Page(HTMLParser):
    """The tags of a page: every <img src>, every <a href>, and whether a <script> exists."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag in ("script", "link", "iframe"):
            self.scripts += 1


# --- the page --------------------------------------------------------------------------


def test_page_shows_counts_images_reasons_and_escapes_the_batch_text(store):
    batch = write_batch(store, "b-page", WHEN)
    page = render_gallery(batch.batch_id, batch.rows, batch.records, link=lambda uri: uri)
    parsed = _Page(page)

    assert parsed.images == [row.image_uris[0] for row in batch.rows if row.image_uris]
    assert {row.metadata_uri for row in batch.rows if row.metadata_uri} <= set(parsed.links)
    for state in ItemState:
        chip = re.search(f'data-state="{state.value}">(.*?)</li>', page)[1]
        assert re.sub("<[^>]+>", "", chip) == f"{batch.count(state)} {state.value}"
    assert '<a href="#not-generated"><b>1</b> failed</a>' in page
    assert FAILED_REASON in page
    assert "aspect_ratio: &#x27;7:3&#x27; is not one of" in page  # INVALID_REASON, escaped
    assert INVALID_REASON not in page
    assert parsed.scripts == 0  # the prompt's <script> is text, not a tag
    assert TRICKY_PROMPT not in page
    assert "A &lt;b&gt;bold&lt;/b&gt; &quot;lantern&quot; &amp; a &lt;script&gt;" in page
    assert "1440×810" in page and "810×1440" in page and "seed" in page and "16:9" in page


def test_a_huge_batch_lists_every_row_but_embeds_only_the_first_images(store):
    batch = write_batch(store, "b-cap", WHEN)
    page = render_gallery(batch.batch_id, batch.rows, batch.records, link=lambda uri: uri,
                          max_images=2)
    parsed = _Page(page)
    with_image = [row.image_uris[0] for row in batch.rows if row.image_uris]
    assert parsed.images == with_image[:2]
    assert with_image[2] in parsed.links  # still listed, as a link
    assert "embeds at most 2 images" in page
    assert "The first 2 of 3 are shown as pictures" in page


def test_the_page_is_bounded_whatever_the_batch_and_points_to_the_manifest(store):
    """50,000 invalid rows beside a small batch, streamed (never a list): every count is
    right, the first rows without an image are shown by line, the rest point to the
    manifest, and the page stays small."""
    batch = write_batch(store, "b-huge", WHEN)
    extra = 50_000

    def rows():  # in completion order: the invalid rows after the others, highest line first
        yield from batch.rows
        for n in range(extra):
            yield ManifestRow(line=100_000 - n, state=ItemState.INVALID, prompt=f"fox {n}",
                              reason=INVALID_REASON)

    page = render_gallery(batch.batch_id, rows(), batch.records, link=lambda uri: uri,
                          manifest=("s3://b/manifests/b-huge.jsonl", "https://get/m"))
    assert len(page.encode()) < 400_000, len(page)
    invalid = batch.count(ItemState.INVALID) + extra
    chip = re.search('data-state="invalid">(.*?)</li>', page)[1]
    assert re.sub("<[^>]+>", "", chip) == f"{invalid:,} invalid"
    without_image = [row for row in batch.rows if not row.image_uris]
    shown = re.findall(r'<article class="issue \w+">.*?<span>line (\d+)</span>', page)
    assert len(shown) == 200  # MAX_LISTED_ISSUES, the lowest lines first
    assert [int(line) for line in shown] == sorted(
        [r.line for r in without_image] + list(range(100_000 - extra + 1, 100_001)))[:200]
    assert f"{len(without_image) + extra - 200:,} more rows not on this page" in page
    assert '<a href="https://get/m">s3://b/manifests/b-huge.jsonl</a>' in page
    assert _Page(page).images == [row.image_uris[0] for row in batch.rows if row.image_uris]


# --- in S3 -----------------------------------------------------------------------------


def test_published_page_is_html_in_s3_and_uses_the_records_it_is_given(store):
    batch = write_batch(store, "b-s3", WHEN)
    # One record only in memory (gone from S3): it must be used, not read back.
    in_memory_uri = batch.rows[0].metadata_uri
    _, key = in_memory_uri.removeprefix("s3://").split("/", 1)
    store.s3.delete_object(Bucket=store.bucket, Key=key)
    known = {in_memory_uri: batch.records[in_memory_uri].model_copy(update={"width": 1441})}

    page = publish_gallery(store, batch.batch_id, batch.rows, known, expires_in=3600)

    assert page.uri == store.uri("fg/galleries/b-s3.html")
    head = store.s3.head_object(Bucket=store.bucket, Key="fg/galleries/b-s3.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    html = store.read_text(page.uri)
    assert "1441×810" in html  # the in-memory record
    assert "810×1440" in html  # read from S3
    assert "X-Amz-Signature=" in page.url and "X-Amz-Expires=3600" in page.url
    for src in _Page(html).images:
        assert "X-Amz-Signature=" in src and "/fg/images/2025/03/14/" in unquote(src)


def test_batch_views_write_the_catalog_and_gallery_and_presign_previews(store):
    batch = write_batch(store, "b-views", WHEN)
    views = publish_batch_views(store, batch.batch_id, batch.rows, records=batch.records,
                                settings=Settings(gallery_url_ttl=600))
    assert views.gallery_uri == store.uri("fg/galleries/b-views.html")
    assert "X-Amz-Expires=600" in views.gallery_url
    assert store.exists(views.catalog_uri)
    stored = [row for row in batch.rows if row.state == ItemState.STORED]
    assert [p.image_uri for p in views.previews] == [r.image_uris[0] for r in stored]
    assert all("X-Amz-Signature=" in p.url for p in views.previews)


def test_presign_refuses_a_lifetime_s3_would_reject(store):
    with pytest.raises(InputError, match="expires_in"):
        store.presign("fg/x.png", WEEK + 1)
    assert Settings().gallery_url_ttl == WEEK


def test_layout_names_the_gallery_and_refuses_an_unsafe_batch_id():
    assert Layout("fg").gallery("b-1") == "fg/galleries/b-1.html"
    with pytest.raises(InputError):
        Layout("fg").gallery("../b")


# --- on disk ---------------------------------------------------------------------------


def test_local_gallery_copies_every_linked_file_and_links_it_relatively(store, tmp_path):
    batch = write_batch(store, "b-local", WHEN)
    index = write_local_gallery(store, batch.batch_id, tmp_path / "out")

    assert index == tmp_path / "out" / "index.html"
    parsed = _Page(index.read_text())
    assert len(parsed.images) == 3
    files = [href for href in parsed.images + parsed.links if not href.startswith("#")]
    assert len(set(files)) == 3 + 3  # the images and their records
    for href in files:
        assert not urlsplit(href).scheme, href  # relative: opens with no network
        assert (index.parent / unquote(href)).is_file(), href
    for uri, data in batch.images.items():
        relative = uri.removeprefix(f"s3://{store.bucket}/fg/")
        assert (index.parent / relative).read_bytes() == data
    assert sorted(p.name for p in (index.parent / "metadata").rglob("*.json")) == sorted(
        uri.rsplit("/", 1)[1] for uri in batch.records)


# --- the command -----------------------------------------------------------------------


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_gallery_command_prints_the_link_and_writes_the_folder(store, tmp_path,
                                                               fresh_settings):
    write_batch(store, "b-cli", WHEN)
    result = CliRunner().invoke(app, ["gallery", "b-cli", "--bucket", "flashgen-test",
                                      "--prefix", "fg", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().count("\n") == 0
    assert "/fg/galleries/b-cli.html?" in result.stdout
    assert (tmp_path / "g" / "index.html").is_file()


@pytest.mark.parametrize("command", [["gallery"], ["catalog"], ["catalog", "rebuild"]])
def test_the_new_commands_have_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("batch_id, message", [
    ("no-such-batch", "no batch 'no-such-batch'"),
    ("../etc", "batch_id '../etc' cannot name an S3 object"),
])
def test_gallery_command_input_errors_exit_2_with_one_line(store, fresh_settings, batch_id,
                                                           message):
    result = CliRunner().invoke(app, ["gallery", batch_id, "--bucket", "flashgen-test",
                                      "--prefix", "fg"])
    assert result.exit_code == 2
    assert message in result.output
    assert result.output.strip().count("\n") == 0


# --- in a browser ----------------------------------------------------------------------


@pytest.fixture
def browser():
    """Headless Chromium, one per test.

    Not shared: playwright's sync API holds an event loop while it runs, and that loop must
    be gone before an async test runs on pytest-asyncio's.
    """
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def _check_in_browser(browser, url: str, batch, screenshot: Path, *,
                      offline: bool = False) -> None:
    """Every image loads, the counts and the failure's reason show; saves a screenshot."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=offline)
    page = context.new_page()
    try:
        page.goto(url, wait_until="load")
        images = page.locator("img")
        assert images.count() == 3
        for i in range(images.count()):  # lazy images load as a reader scrolls to them
            images.nth(i).scroll_into_view_if_needed()
        page.wait_for_function(
            "[...document.images].every(img => img.complete)", timeout=15_000)
        widths = page.eval_on_selector_all("img", "all => all.map(img => img.naturalWidth)")
        assert len(widths) == 3 and all(w > 0 for w in widths), widths
        for state in ItemState:
            chip = page.locator(f'.counts [data-state="{state.value}"]')
            assert chip.inner_text().split() == [str(batch.count(state)), state.value]
        assert page.get_by_text(FAILED_REASON).is_visible()
        assert page.get_by_text(INVALID_REASON).is_visible()
        page.evaluate("window.scrollTo(0, 0)")
        screenshot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()


@pytest.mark.slow
def test_s3_gallery_opens_in_a_browser_from_its_presigned_link(browser, moto_server):
    store = Store("flashgen-test", "fg", endpoint_url=moto_server)
    store.ensure_bucket()
    batch = write_batch(store, "b-browser", WHEN)
    page = publish_gallery(store, batch.batch_id, expires_in=3600)
    with urllib.request.urlopen(page.url, timeout=10) as response:  # plain HTTP first
        assert response.headers["Content-Type"].startswith("text/html")
    _check_in_browser(browser, page.url, batch, ARTIFACTS / "gallery-s3.png")


@pytest.mark.slow
def test_local_gallery_opens_in_a_browser_with_no_network(browser, store, tmp_path):
    batch = write_batch(store, "b-browser", WHEN)
    index = write_local_gallery(store, batch.batch_id, tmp_path / "gallery")
    _check_in_browser(browser, index.as_uri(), batch, ARTIFACTS / "gallery-local.png",
                      offline=True)


# --- in Prefect ------------------------------------------------------------------------


@pytest.mark.slow
async def test_artifacts_link_the_gallery_and_show_the_first_images(prefect_server, store):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flashgen.flows.views import publish_view_artifacts

    batch = write_batch(store, "Spring_Campaign.v2", WHEN)
    views = publish_batch_views(store, batch.batch_id, batch.rows, records=batch.records,
                                settings=Settings())

    @flow  # as at the end of generate-images
    async def end_of_batch() -> None:
        await publish_view_artifacts(views, batch.rows, batch.records)

    await end_of_batch()

    keys = ["gallery-spring-campaign-v2", "gallery-spring-campaign-v2-image-1",
            "gallery-spring-campaign-v2-image-2"]
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {artifact.key: artifact for artifact in found}
    assert set(by_key) == set(keys)  # two stored images: two image artifacts, no third
    link = by_key["gallery-spring-campaign-v2"]
    assert link.type == "markdown" and views.gallery_url.split("?")[0] in link.data
    image = by_key["gallery-spring-campaign-v2-image-1"]
    assert image.type == "image" and image.data == views.previews[0].url
    assert "A red fox in fresh snow" in image.description and "1440×810" in image.description
