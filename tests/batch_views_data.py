"""A small finished batch written straight through the Store: real PNGs, records, a manifest.

Shared by the gallery and catalog tests. Every state appears: three stored images of
different sizes, one skipped (stored by an earlier batch), one failed and one invalid.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image, ImageDraw

from flashgen.models import DEFAULT_MODEL
from flashgen.records import ImageRecord, ItemState, ManifestRow, Timings
from flashgen.storage import Store

FAILED_REASON = "JobFailedError: the job ended failed: CUDA out of memory"
INVALID_REASON = "aspect_ratio: '7:3' is not one of 16:9, 9:16, 1:1, …"
# Markup in a prompt must reach the page as text, never as markup.
TRICKY_PROMPT = 'A <b>bold</b> "lantern" & a <script>alert(1)</script> fox'

# (line, prompt, aspect ratio, size, colours of the gradient)
_IMAGES = [
    (1, "A red fox in fresh snow at dawn, soft light", "1440:810 (16:9)", (1440, 810),
     ((196, 64, 42), (250, 196, 120))),
    (2, "A lighthouse on a cliff in a storm, tall frame", "810:1440 (9:16)", (810, 1440),
     ((24, 52, 110), (120, 180, 220))),
    (3, TRICKY_PROMPT, "1024:1024 (1:1)", (1024, 1024),
     ((30, 110, 70), (190, 230, 150))),
]


@dataclass
class BatchData:
    batch_id: str
    rows: list[ManifestRow]
    records: dict[str, ImageRecord]  # by metadata URI, as read_records returns them
    images: dict[str, bytes]  # by image URI

    def count(self, state: ItemState) -> int:
        return sum(row.state == state for row in self.rows)


def png(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    """A real PNG: a vertical gradient with a disc, so each test image looks different."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(height - 1, 1)
        draw.line([(0, y), (width, y)],
                  fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    r = min(width, height) // 5
    draw.ellipse([width // 2 - r, height // 2 - r, width // 2 + r, height // 2 + r],
                 fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def write_batch(store: Store, batch_id: str, when: datetime, *, seed0: int = 100) -> BatchData:
    """Write the batch's images, records and manifest; return what was written."""
    rows: list[ManifestRow] = []
    records: dict[str, ImageRecord] = {}
    images: dict[str, bytes] = {}
    for line, prompt, ratio, size, colours in _IMAGES:
        data = png(size, *colours)
        fingerprint = f"{batch_id}-k{line}"
        obj = store.put_image(fingerprint, data, "image/png", when=when)
        inputs = {"prompt": prompt, "negative_prompt": "blurry", "aspect_ratio": ratio,
                  "duration": 5, "prompt_extend": line % 2 == 1, "seed": seed0 + line}
        record = ImageRecord(
            fingerprint=fingerprint, model=DEFAULT_MODEL, inputs=inputs,
            request_id=f"req-{batch_id}-{line}",
            image_uri=obj.uri, content_type="image/png", size=obj.size, sha256=obj.sha256,
            width=size[0], height=size[1],
            timings=Timings(submitted_at=when, started_at=when + timedelta(seconds=1),
                            completed_at=when + timedelta(seconds=4),
                            stored_at=when + timedelta(seconds=5)),
            polls=3, attempts=1, batch_id=batch_id, flow_run_id="run-1", deployment="on-demand")
        record_uri = store.put_record(record, when=when)
        records[record_uri] = record
        images[obj.uri] = data
        state = ItemState.SKIPPED if line == 2 else ItemState.STORED
        rows.append(ManifestRow(
            line=line, fingerprint=fingerprint, prompt=prompt, seed=inputs["seed"],
            aspect_ratio=ratio,
            state=state, reason="already stored by an earlier run" if line == 2 else None,
            request_id=record.request_id, image_uris=[obj.uri], metadata_uri=record_uri,
            seconds=4.2))
    rows.append(ManifestRow(line=4, fingerprint=f"{batch_id}-k4", prompt="A castle made of glass",
                            seed=seed0 + 4, aspect_ratio="1440:810 (16:9)",
                            state=ItemState.FAILED, reason=FAILED_REASON,
                            request_id=f"req-{batch_id}-4", seconds=9.0))
    rows.append(ManifestRow(line=5, prompt="A wide desert road", state=ItemState.INVALID,
                            reason=INVALID_REASON))
    store.put_manifest(batch_id, rows)
    return BatchData(batch_id, rows, records, images)


WHEN = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
