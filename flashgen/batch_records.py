"""A batch's metadata records, read once for the views built on them (gallery, catalog)::

    rows = store.read_manifest("spring-campaign")
    records = read_records(store, rows, known={uri: record})   # `record` just written
    records[rows[0].metadata_uri].width
    # → 1440

Each manifest row that names a ``metadata_uri`` (stored rows, and skipped rows found stored
by an earlier run) has one ``ImageRecord``. Records the caller already holds are taken as
they are; the rest are read from S3 a few at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from flashgen.errors import StorageError
from flashgen.records import ImageRecord, ManifestRow
from flashgen.storage import Store

# Reads are small GETs that wait on the network, not the CPU; 16 keeps well inside the
# Store's connection pool (32) when a flow is doing other S3 work at the same time.
MAX_PARALLEL_READS = 16


def read_records(
    store: Store,
    rows: Iterable[ManifestRow],
    known: Mapping[str, ImageRecord] | None = None,
    *,
    max_workers: int = MAX_PARALLEL_READS,
) -> dict[str, ImageRecord]:
    """Every record the rows name, keyed by metadata URI; ``known`` ones are not re-read.

    A record that is missing or unreadable is a StorageError: the manifest says it exists.
    """
    return read_record_uris(store, (r.metadata_uri for r in rows if r.metadata_uri), known,
                            max_workers=max_workers)


def read_record_uris(
    store: Store,
    uris: Iterable[str],
    known: Mapping[str, ImageRecord] | None = None,
    *,
    max_workers: int = MAX_PARALLEL_READS,
) -> dict[str, ImageRecord]:
    """The records at ``uris``, keyed by URI; ``known`` ones are not re-read."""
    known = known or {}
    wanted = list(dict.fromkeys(uris))
    missing = [uri for uri in wanted if uri not in known]
    records = {uri: known[uri] for uri in wanted if uri in known}
    if missing:
        workers = max(1, min(max_workers, MAX_PARALLEL_READS, len(missing)))
        with ThreadPoolExecutor(workers, thread_name_prefix="flashgen-records") as pool:
            for uri, record in zip(missing, pool.map(lambda u: _read(store, u), missing),
                                   strict=True):
                records[uri] = record
    return records


def record_uris(row: ManifestRow) -> list[str]:
    """The record of each of the row's images, in output order.

    The manifest names the first; output ``i`` has its record beside it, ``-i`` added to
    the name, as ``Layout.metadata`` writes it:

    >>> row = ManifestRow(state="stored", metadata_uri="s3://b/p/metadata/2025/01/02/f.json",
    ...                   image_uris=["s3://b/p/images/2025/01/02/f.png",
    ...                               "s3://b/p/images/2025/01/02/f-1.png"])
    >>> record_uris(row)
    ['s3://b/p/metadata/2025/01/02/f.json', 's3://b/p/metadata/2025/01/02/f-1.json']
    """
    if not row.metadata_uri:
        return []
    stem = row.metadata_uri.removesuffix(".json")
    return [row.metadata_uri, *(f"{stem}-{i}.json" for i in range(1, len(row.image_uris)))]


def _read(store: Store, uri: str) -> ImageRecord:
    try:
        return ImageRecord.model_validate(store.read_json(uri))
    except ValidationError as exc:
        raise StorageError(f"unreadable image record {uri}: {exc}") from None
