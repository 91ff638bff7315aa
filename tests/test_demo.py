"""`flashgen demo` from nothing: its table names S3 keys, and the gallery it leaves behind
opens, offline, after its S3 stand-in is gone."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashgen.infra.demo import DEMO_PROMPTS
from tests.test_gallery import ARTIFACTS, browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def test_the_demo_leaves_a_gallery_that_opens_after_it_ends(tmp_path, browser):  # noqa: F811
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    done = subprocess.run([sys.executable, "-m", "flashgen.cli", "demo", "--out", str(out),
                           "--job-time", "0.2"], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(DEMO_PROMPTS, newline="") as f:
        prompts = len(list(csv.DictReader(f)))
    table = [line for line in done.stdout.splitlines() if "│" in line and "stored" in line]
    assert len(table) == prompts, done.stdout
    assert all("demo/images/" in line and str(out) not in line for line in table), table

    index = out / "index.html"
    assert f"gallery:  {index.as_uri()}" in done.stdout.replace("\n", ""), done.stdout
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    page = context.new_page()
    try:
        page.goto(index.as_uri(), wait_until="load")
        images = page.locator("img")
        assert images.count() == prompts
        for i in range(images.count()):  # lazy images load as a reader scrolls to them
            images.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("[...document.images].every(img => img.complete)",
                               timeout=30_000)
        widths = page.eval_on_selector_all("img", "all => all.map(img => img.naturalWidth)")
        assert all(w > 0 for w in widths), widths
        page.evaluate("window.scrollTo(0, 0)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-gallery.png"), full_page=False)
    finally:
        context.close()
    assert sorted(p.name for p in (out / "manifests").iterdir())[0].endswith(".jsonl")
    assert Path(out / "images").is_dir()
