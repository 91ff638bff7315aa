"""Everything a finished batch publishes for people to look at: its gallery and catalog file.

The flow calls ``publish_batch_views`` once, right after ``Store.put_manifest``, with its
manifest spool (streamed from disk, never held) and the records it just wrote (so they are
not read back)::

    views = await asyncio.to_thread(
        publish_batch_views, store, batch_id, rows, records=records, settings=settings)
    views.gallery_url          # presigned: opens in any browser until views.expires_at
    # → 'https://my-bucket.s3.amazonaws.com/flashgen/galleries/b1.html?X-Amz-…'

``flashgen.flows.views.publish_view_artifacts`` then shows them in Prefect's UI.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from datetime import date, datetime

from pydantic import BaseModel

from flashgen.catalog import write_catalog
from flashgen.gallery import publish_gallery
from flashgen.records import ImageRecord, ItemState, ManifestRow
from flashgen.settings import Settings
from flashgen.storage import Store

PREVIEW_IMAGES = 4


class PreviewImage(BaseModel):
    """One of the batch's first stored images, with a presigned URL to show it."""

    line: int | None
    image_uri: str
    url: str


class BatchViews(BaseModel):
    """Where a batch's gallery and catalog file are, and how to open the gallery."""

    batch_id: str
    gallery_uri: str
    gallery_url: str  # presigned; works until expires_at
    expires_at: datetime
    catalog_uri: str
    previews: list[PreviewImage] = []  # the first PREVIEW_IMAGES stored images, in row order


def publish_batch_views(
    store: Store,
    batch_id: str,
    rows: Iterable[ManifestRow],
    *,
    records: Mapping[str, ImageRecord] | None = None,
    settings: Settings,
    day: date | None = None,
) -> BatchViews:
    """Write the batch's catalog file and S3 gallery; synchronous (S3 through boto3).

    ``rows`` must be re-iterable (a list, or the run's ``ManifestSpool``, which streams from
    disk): each view reads them once, so memory stays bounded whatever the batch.
    ``records`` are those already in memory, keyed by metadata URI; the others are read as
    each view needs them. ``day`` (the catalog's ``dt``) defaults to the manifest's date.
    """
    catalog_uri = write_catalog(store, batch_id, rows, records, day=day)
    ttl = settings.gallery_url_ttl
    gallery = publish_gallery(store, batch_id, rows, records, expires_in=ttl)
    first_stored = heapq.nsmallest(
        PREVIEW_IMAGES, (row for row in rows if row.state == ItemState.STORED and row.image_uris),
        key=lambda row: row.line or 0)
    previews = [PreviewImage(line=row.line, image_uri=row.image_uris[0],
                             url=store.presign(row.image_uris[0], ttl)) for row in first_stored]
    return BatchViews(batch_id=batch_id, gallery_uri=gallery.uri, gallery_url=gallery.url,
                      expires_at=gallery.expires_at, catalog_uri=catalog_uri, previews=previews)
