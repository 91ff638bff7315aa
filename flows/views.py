"""A batch's gallery and first images in Prefect's UI, as artifacts of the flow run.

    >>> views = await asyncio.to_thread(publish_batch_views, store, batch_id, rows,
    ...                                 records=records, settings=settings)
    >>> await publish_view_artifacts(views, rows, records)

The links are presigned, so they stop working at ``views.expires_at``;
``flashgen gallery BATCH_ID`` publishes the page again with fresh ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from prefect.artifacts import acreate_image_artifact, acreate_link_artifact

from flashgen.records import ImageRecord, ManifestRow
from flashgen.views import BatchViews, PreviewImage
from flashgen.flows.summary import artifact_key


async def publish_view_artifacts(
    views: BatchViews,
    rows: Iterable[ManifestRow],
    records: Mapping[str, ImageRecord] | None = None,
) -> None:
    """A link artifact to the gallery, and an image artifact for each preview image."""
    until = f"{views.expires_at:%Y-%m-%d %H:%M} UTC"
    await acreate_link_artifact(
        key=artifact_key("gallery", views.batch_id), link=views.gallery_url,
        link_text=f"Gallery of batch {views.batch_id}",
        description=(f"Every image of batch {views.batch_id} with its prompt, seed and size, "
                     f"and every failure with its reason. The link works until {until}; "
                     f"`flashgen gallery {views.batch_id}` makes a fresh one.\n\n"
                     f"Catalog: {views.catalog_uri}"))
    wanted = {preview.image_uri for preview in views.previews}
    # One pass over a stream that may be long (the run's spool): in a thread, keeping the
    # few rows the previews show.
    by_image = await asyncio.to_thread(
        lambda: {uri: row for row in rows for uri in row.image_uris if uri in wanted})
    for number, preview in enumerate(views.previews, start=1):
        await acreate_image_artifact(
            image_url=preview.url, key=artifact_key("gallery", f"{views.batch_id}-image-{number}"),
            description=_preview_caption(preview, by_image.get(preview.image_uri), records or {}))


def _preview_caption(preview: PreviewImage, row: ManifestRow | None,
              records: Mapping[str, ImageRecord]) -> str:
    record = records.get(row.metadata_uri) if row and row.metadata_uri else None
    facts = [f"line {preview.line}"]
    if row and row.seed is not None:
        facts.append(f"seed {row.seed}")
    if row and row.aspect_ratio:
        facts.append(row.aspect_ratio)
    if record and record.width and record.height:
        facts.append(f"{record.width}×{record.height}")
    prompt = (row.prompt if row else None) or ""
    return f"{prompt}\n\n{' · '.join(facts)}\n\n{preview.image_uri}".strip()
