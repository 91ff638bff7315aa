"""S3 on boto3: images, their metadata records, the ledger and batch manifests.

Layout, under a configurable bucket and prefix (``Layout`` is the one place that builds keys)::

    <prefix>/images/YYYY/MM/DD/<fp>.<ext>             the file; <fp>-<n>.<ext> for output n > 0
    <prefix>/metadata/YYYY/MM/DD/<fp>.json            its ImageRecord; <fp>-<n>.json likewise
    <prefix>/ledger/<fp>.json                         LedgerEntry (flashgen.ledger's states)
    <prefix>/manifests/<batch_id>.jsonl               one ManifestRow per input of the batch
    <prefix>/manifests/<batch_id>.summary.json        row counts per state, written after it
    <prefix>/galleries/<batch_id>.html                the batch's HTML gallery (flashgen.gallery)
    <prefix>/catalog/dt=YYYY-MM-DD/<batch_id>.parquet  the batch's catalog rows (flashgen.catalog)
    <prefix>/shards/<batch_id>/<n>.items.jsonl        a sharded batch's shard n (flashgen.shards),
    <prefix>/shards/<batch_id>/<n>.manifest.jsonl     its rows, and how its run ended
    <prefix>/shards/<batch_id>/<n>.outcome.json

``<fp>`` is the item's fingerprint (``fingerprint`` in every method; a full object key is an
``s3_key``); YYYY/MM/DD is the UTC date of the ``when`` the caller passes (pass one ``when``
for an image and its record so both land under the same date).

Every write carries a SHA-256 checksum that S3 verifies on arrival, and the configured
server-side encryption; every read of an object that has a checksum is verified by botocore.

The ledger is what keeps "never pay twice": ``claim`` creates ``ledger/<fp>.json`` only if
it does not exist (``If-None-Match: *``), ``replace_ledger`` overwrites only the version the
caller read (``If-Match: <etag>``). Losing either race returns False; any other failure
raises ``StorageError``, whose ``transient`` says whether trying again may help::

    store = Store.from_settings(get_settings())          # FLASHGEN_BUCKET, FLASHGEN_PREFIX, …
    if store.claim(entry):                               # we own the key: submit it
        obj = store.put_image(entry.fingerprint, png, "image/png", when=now)
        store.put_record(record, when=now)

The class is synchronous and thread-safe (one boto3 client per Store, shared by all threads);
async callers wrap calls in ``asyncio.to_thread``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import BaseModel, ConfigDict, ValidationError

from flashgen.errors import InputError, StorageError
from flashgen.records import ImageRecord, LedgerEntry, ManifestRow
from flashgen.settings import Settings

log = logging.getLogger(__name__)

# asyncio.to_thread's default executor runs up to 32 threads; give each one a connection.
MAX_POOL_CONNECTIONS = 32
S3_ATTEMPTS = 8
# The longest validity a SigV4-presigned URL may have.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
SSE_ALGORITHMS = ("AES256", "aws:kms", "aws:kms:dsse")
JSON = "application/json"
NDJSON = "application/x-ndjson"

_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}
# Answers to a conditional put that mean "the condition did not hold": somebody else's
# version is there (412), a concurrent conditional write got in first (409), or, for
# If-Match, the object is gone (404).
_LOST_RACE_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_TRANSIENT_CODES = {
    "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "ServiceUnavailable",
    "InternalError", "RequestTimeTooSkewed",
}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; anything else is a StorageError.

    >>> parse_s3_uri("s3://my-bucket/fg/ledger/abc.json")
    ('my-bucket', 'fg/ledger/abc.json')
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StorageError(f"not an S3 URI (want s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise StorageError(f"S3 URI needs both a bucket and a key: {uri!r}")
    return bucket, key


def extension_for(content_type: str) -> str:
    """The file extension for a content type: ``image/png`` → ``png``; unknown → ``bin``."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _EXTENSIONS:
        return _EXTENSIONS[mime]
    guessed = mimetypes.guess_extension(mime)
    return guessed.lstrip(".") if guessed else "bin"


def safe_segment(value: str, field: str) -> str:
    """``value`` if it is safe as one key segment (no '/', no '..'), else InputError."""
    if not isinstance(value, str) or not _SAFE_SEGMENT.fullmatch(value):
        raise InputError(
            f"{field} {value!r} cannot name an S3 object: use 1-200 letters, digits, '.', '_', "
            "':' or '-', starting with a letter or digit",
            field=field,
        )
    return value


def _utc_day(when: datetime) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"when must be timezone-aware, got naive {when.isoformat()}")
    return when.astimezone(UTC).strftime("%Y/%m/%d")


@dataclass(frozen=True)
class Layout:
    """Builds every key flashgen writes; nothing else joins key strings.

    >>> layout = Layout("fg")
    >>> layout.image("abc", datetime(2025, 1, 2, tzinfo=UTC), index=1, content_type="image/jpeg")
    'fg/images/2025/01/02/abc-1.jpg'
    >>> layout.ledger("abc")
    'fg/ledger/abc.json'
    """

    prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.strip("/"))

    def path(self, *parts: str) -> str:
        """``parts`` joined under the prefix: ``path("inbox", "a.csv")`` → ``fg/inbox/a.csv``."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def below(self, sub_prefix: str = "") -> str:
        """The listing prefix for ``sub_prefix``: ``below("inbox/")`` → ``fg/inbox/``."""
        return f"{self.prefix}/{sub_prefix}" if self.prefix else sub_prefix

    def image(
        self, fingerprint: str, when: datetime, *, index: int = 0, content_type: str = "image/png"
    ) -> str:
        name = self._name(fingerprint, index, extension_for(content_type))
        return self.path("images", _utc_day(when), name)

    def metadata(self, fingerprint: str, when: datetime, *, index: int = 0) -> str:
        return self.path("metadata", _utc_day(when), self._name(fingerprint, index, "json"))

    def ledger(self, fingerprint: str) -> str:
        return self.path("ledger", f"{safe_segment(fingerprint, 'fingerprint')}.json")

    def manifest(self, batch_id: str) -> str:
        return self.path("manifests", f"{safe_segment(batch_id, 'batch_id')}.jsonl")

    def manifest_summary(self, batch_id: str) -> str:
        return self.path("manifests", f"{safe_segment(batch_id, 'batch_id')}.summary.json")

    def batch_request(self, batch_id: str) -> str:
        """What the batch was asked to do (``flashgen.reruns``): ``fg/batches/<id>.json``."""
        return self.path("batches", f"{safe_segment(batch_id, 'batch_id')}.json")

    def batch_source(self, batch_id: str, suffix: str) -> str:
        """The batch's copy of its local prompt file: ``fg/batches/<id>.source.csv``."""
        return self.path("batches", f"{safe_segment(batch_id, 'batch_id')}.source{suffix}")

    def shard(self, batch_id: str, index: int, part: str) -> str:
        """A shard's ``items``, ``manifest`` or ``outcome`` file (``flashgen.shards``).

        >>> Layout("fg").shard("b1", 3, "items")
        'fg/shards/b1/00003.items.jsonl'
        """
        suffix = {"items": "items.jsonl", "manifest": "manifest.jsonl",
                  "outcome": "outcome.json"}[part]
        return self.path("shards", safe_segment(batch_id, "batch_id"), f"{index:05d}.{suffix}")

    def gallery(self, batch_id: str) -> str:
        return self.path("galleries", f"{safe_segment(batch_id, 'batch_id')}.html")

    def catalog(self, batch_id: str, day: date) -> str:
        """The batch's Parquet file in its Hive-style ``dt=`` partition (a UTC date).

        >>> Layout("fg").catalog("batch-7", date(2025, 1, 2))
        'fg/catalog/dt=2025-01-02/batch-7.parquet'
        """
        if isinstance(day, datetime):  # a datetime is a date too: take its UTC day
            _utc_day(day)  # refuses a naive datetime
            day = day.astimezone(UTC).date()
        name = f"{safe_segment(batch_id, 'batch_id')}.parquet"
        return self.path("catalog", f"dt={day:%Y-%m-%d}", name)

    @staticmethod
    def _name(fingerprint: str, index: int, ext: str) -> str:
        if index < 0:
            raise ValueError(f"output index must be >= 0, got {index}")
        stem = safe_segment(fingerprint, "fingerprint")
        stem = stem if index == 0 else f"{stem}-{index}"
        return f"{stem}.{ext}"


class StoredObject(BaseModel):
    """What ``put_image`` wrote: where, how big, and the SHA-256 (hex) S3 verified."""

    model_config = ConfigDict(frozen=True)

    uri: str
    bucket: str
    s3_key: str
    size: int
    sha256: str
    content_type: str


class ListedObject(NamedTuple):
    """One row of ``list_keys``: the full S3 key (feed it to ``read_bytes``), ETag as S3 has it."""

    s3_key: str
    etag: str
    last_modified: datetime
    size: int


def make_client(*, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A thread-safe S3 client with standard retries and a pool for MAX_POOL_CONNECTIONS threads.

    A custom endpoint (moto, MinIO, …) gets path-style addressing and, when no region is
    configured anywhere, us-east-1.
    """
    endpoint_url = endpoint_url or None  # AWS_ENDPOINT_URL="" means AWS itself
    session = boto3.session.Session(region_name=region)
    if endpoint_url and session.region_name is None:
        session = boto3.session.Session(region_name="us-east-1")
    config = Config(
        # The layer that retries an S3 call: 8 attempts, jittered backoff (about 10 s of
        # outage on average); longer outages are the tasks' retries (flashgen.tasks.policy).
        retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else None,
        # Requests are SigV4 anyway; without this, presigned URLs would be legacy SigV2 in
        # us-east-1, which KMS-encrypted objects and newer regions refuse.
        signature_version="s3v4",
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


class Store:
    """One bucket and prefix in S3. Thread-safe; build one per process or flow run.

    >>> store = Store("my-bucket", "flashgen", sse="aws:kms", kms_key_id="alias/flashgen",
    ...               region="us-east-1")
    >>> store.uri(store.layout.ledger("abc"))
    's3://my-bucket/flashgen/ledger/abc.json'

    ``s3`` injects a ready boto3 client (``endpoint_url`` and ``region`` are then unused).
    Methods taking ``uri_or_key`` accept ``s3://bucket/key`` (any bucket) or a full key in
    this bucket, as ``Layout`` and ``list_keys`` return them.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "flashgen",
        *,
        s3: Any = None,
        endpoint_url: str | None = None,
        sse: str | None = None,
        kms_key_id: str | None = None,
        region: str | None = None,
    ) -> None:
        if not bucket:
            raise InputError("no S3 bucket: set FLASHGEN_BUCKET or pass bucket", field="bucket")
        if sse is not None and sse not in SSE_ALGORITHMS:
            raise InputError(f"sse {sse!r} is not one of {', '.join(SSE_ALGORITHMS)}", field="sse")
        if kms_key_id and not (sse or "").startswith("aws:kms"):
            raise InputError("kms_key_id needs sse='aws:kms' (FLASHGEN_S3_SSE)", field="kms_key_id")
        self.bucket = bucket
        self.layout = Layout(prefix or "")
        self.prefix = self.layout.prefix
        self.s3 = s3 if s3 is not None else make_client(endpoint_url=endpoint_url, region=region)
        self._sse: dict[str, str] = {}
        if sse:
            self._sse["ServerSideEncryption"] = sse
        if kms_key_id:
            self._sse["SSEKMSKeyId"] = kms_key_id

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        bucket: str | None = None,
        prefix: str | None = None,
    ) -> Store:
        """A Store from FLASHGEN_BUCKET, FLASHGEN_PREFIX, AWS_ENDPOINT_URL, FLASHGEN_S3_SSE, …

        Explicit ``bucket`` and ``prefix`` win (``prefix=""`` means the bucket's root).
        """
        return cls(
            bucket or settings.bucket or "",
            settings.prefix if prefix is None else prefix,
            endpoint_url=settings.aws_endpoint_url,
            sse=settings.s3_sse,
            kms_key_id=settings.s3_kms_key_id,
        )

    def __repr__(self) -> str:
        return f"Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def uri(self, key: str) -> str:
        """``s3://<bucket>/<key>`` for a full key in this bucket."""
        return f"s3://{self.bucket}/{key}"

    # --- ledger ---------------------------------------------------------------------------

    def read_ledger(self, fingerprint: str) -> tuple[LedgerEntry, str] | None:
        """The item's ledger entry and its ETag for ``replace_ledger``; or None."""
        s3_key = self.layout.ledger(fingerprint)
        found = self._get(self.bucket, s3_key, missing_ok=True)
        if found is None:
            return None
        body, etag = found
        try:
            return LedgerEntry.model_validate_json(body), etag
        except ValidationError as exc:
            raise StorageError(f"unreadable ledger entry {self.uri(s3_key)}: {exc}") from None

    def claim(self, entry: LedgerEntry) -> bool:
        """Create ``ledger/<entry.fingerprint>.json`` only if absent. True: this call created it.

        False means another writer's entry is there (or a concurrent write won): read it with
        ``read_ledger`` and decide. ``updated_at`` is set on the stored copy.
        """
        won = self.put_json(self.layout.ledger(entry.fingerprint), _stamped(entry),
                           if_none_match=True)
        if not won:
            log.debug("claim for %s lost: the ledger entry already exists", entry.fingerprint)
        return won

    def replace_ledger(self, entry: LedgerEntry, etag: str) -> bool:
        """Overwrite the ledger entry only if it is still the version with ``etag``.

        False when someone wrote it since (412/409) or it is gone (404).
        """
        return self.put_json(self.layout.ledger(entry.fingerprint), _stamped(entry),
                             if_match=etag)

    def write_ledger(self, entry: LedgerEntry) -> str:
        """Overwrite unconditionally (the owner updating its own entry); returns the ETag."""
        s3_key = self.layout.ledger(entry.fingerprint)
        etag = self._put(s3_key, _stamped(entry).model_dump_json().encode(), JSON)
        assert etag is not None  # unconditional puts either succeed or raise
        return etag

    # --- objects --------------------------------------------------------------------------

    def put_image(
        self,
        fingerprint: str,
        data: bytes,
        content_type: str,
        *,
        when: datetime,
        index: int = 0,
        metadata: dict[str, str] | None = None,
        sha256: str | None = None,
    ) -> StoredObject:
        """Store output ``index`` of the item ``fingerprint``; S3 checks its SHA-256 on arrival.

        ``sha256`` (hex) is the digest the caller already took; S3 refuses the put if the
        bytes do not match it::

            obj = store.put_image("abc", png, "image/png", when=datetime.now(UTC))
            obj.uri, obj.sha256  # ('s3://my-bucket/flashgen/images/2025/01/02/abc.png', '9f86…')
        """
        s3_key = self.layout.image(fingerprint, when, index=index, content_type=content_type)
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        self._put(s3_key, data, content_type, metadata={**(metadata or {}), "sha256": sha256},
                  digest=bytes.fromhex(sha256))
        return StoredObject(
            uri=self.uri(s3_key), bucket=self.bucket, s3_key=s3_key, size=len(data),
            sha256=sha256, content_type=content_type,
        )

    def put_record(self, record: ImageRecord, *, when: datetime) -> str:
        """Store the metadata record next to its image's date; returns its URI."""
        s3_key = self.layout.metadata(record.fingerprint, when, index=record.output_index)
        self._put(s3_key, record.model_dump_json().encode(), JSON)
        return self.uri(s3_key)

    def put_manifest(self, batch_id: str, rows: list[ManifestRow]) -> str:
        """Write the batch's JSONL manifest, then its summary; returns the manifest's URI.

        The summary (``{"batch_id", "manifest_uri", "rows", "counts", "written_at"}``) is
        written second, so a reader that finds it knows the manifest is complete.
        """
        s3_key = self.layout.manifest(batch_id)
        body = "".join(row.model_dump_json() + "\n" for row in rows).encode()
        self._put(s3_key, body, NDJSON)
        self._put_summary(batch_id, s3_key, Counter(str(row.state) for row in rows))
        return self.uri(s3_key)

    def put_manifest_file(self, batch_id: str, path: Path, counts: dict[str, int],
                          extra: dict[str, Any] | None = None) -> str:
        """Upload a spooled JSONL manifest (``flashgen.manifest``), then its summary
        (with ``extra`` fields, e.g. the batch's ``spend``)."""
        s3_key = self.layout.manifest(batch_id)
        self.put_file(s3_key, path, NDJSON)
        self._put_summary(batch_id, s3_key, counts, extra)
        return self.uri(s3_key)

    def put_file(self, s3_key: str, path: Path, content_type: str) -> str:
        """Upload the local file ``path`` at ``s3_key``, streamed (it may be larger than
        memory) and checksummed; returns its URI."""
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
            handle.seek(0)
            self._put(s3_key, handle, content_type, digest=digest.digest())
        return self.uri(s3_key)

    def _put_summary(self, batch_id: str, s3_key: str, counts: dict[str, int],
                     extra: dict[str, Any] | None = None) -> None:
        summary = {
            "batch_id": batch_id,
            "manifest_uri": self.uri(s3_key),
            "rows": sum(counts.values()),
            "counts": {str(state): n for state, n in counts.items()},
            "written_at": datetime.now(UTC).isoformat(),
            **(extra or {}),
        }
        self.put_json(self.layout.manifest_summary(batch_id), summary)

    def check_writable(self) -> None:
        """Prove the bucket exists and takes writes under the prefix, before anything is paid.

        It overwrites one small object, ``<prefix>/.flashgen-probe`` (workers may not
        delete: see infra/iam.py). A missing bucket is an InputError; other refusals
        StorageError.
        """
        stamp = datetime.now(UTC).isoformat().encode()
        try:
            self._put(self.layout.path(".flashgen-probe"), stamp, "text/plain")
        except StorageError as exc:
            if "NoSuchBucket" in str(exc):
                raise InputError(f"bucket: s3://{self.bucket} does not exist",
                                 field="bucket") from None
            raise

    def read_manifest(self, batch_id: str) -> list[ManifestRow]:
        """The rows of ``manifests/<batch_id>.jsonl``, in order."""
        return list(self.iter_manifest(batch_id))

    def iter_manifest(self, batch_id: str) -> Iterator[ManifestRow]:
        """The rows of ``manifests/<batch_id>.jsonl``, streamed (a line at a time, in bounded
        memory), with S3's checksum checked as the last byte is read."""
        s3_key = self.layout.manifest(batch_id)
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=s3_key,
                                      ChecksumMode="ENABLED")["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("GetObject", self.bucket, s3_key, exc) from exc
        try:
            for number, line in enumerate(body.iter_lines(), start=1):
                if not line.strip():
                    continue
                try:
                    yield ManifestRow.model_validate_json(line)
                except ValidationError as exc:
                    raise StorageError(f"{self.uri(s3_key)} line {number}: {exc}") from None
        except FlexibleChecksumError as exc:
            raise StorageError(f"S3 GetObject {self.uri(s3_key)}: checksum mismatch ({exc})"
                               ) from exc
        except BotoCoreError as exc:
            raise _storage_error("GetObject", self.bucket, s3_key, exc) from exc
        finally:
            body.close()

    def put_json(
        self, s3_key: str, obj: Any, *, if_none_match: bool = False, if_match: str | None = None
    ) -> bool:
        """Write ``obj`` (a pydantic model or anything ``json.dumps`` takes) at full ``s3_key``.

        With ``if_none_match`` only if nothing is there; with ``if_match`` only over that
        ETag. False when such a condition did not hold; True when written.
        """
        if isinstance(obj, BaseModel):
            body = obj.model_dump_json()
        else:
            body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        etag = self._put(s3_key, body.encode(), JSON, if_none_match=if_none_match,
                         if_match=if_match)
        return etag is not None

    def read_json(self, uri_or_key: str) -> Any:
        """The parsed JSON at ``uri_or_key``."""
        text = self.read_text(uri_or_key)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StorageError(f"not JSON: {self._display(uri_or_key)}: {exc}") from None

    def read_bytes(self, uri_or_key: str) -> bytes:
        """The object's bytes; a checksum mismatch or a missing object is a StorageError."""
        bucket, key = self._locate(uri_or_key)
        found = self._get(bucket, key)
        assert found is not None  # missing_ok=False raises instead
        return found[0]

    def download(self, uri_or_key: str, path: Path) -> None:
        """Stream the object into the local file ``path`` (checksum verified by botocore)."""
        bucket, key = self._locate(uri_or_key)
        try:
            response = self.s3.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            with open(path, "wb") as handle:
                for chunk in response["Body"].iter_chunks(1 << 20):
                    handle.write(chunk)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise InputError(f"source: s3://{bucket}/{key} does not exist ({_code(exc)})",
                                 field="source") from None
            raise _storage_error("GetObject", bucket, key, exc) from exc
        except (BotoCoreError, FlexibleChecksumError) as exc:
            raise _storage_error("GetObject", bucket, key, exc) from exc

    def read_text(self, uri_or_key: str) -> str:
        """The object decoded as UTF-8 (prompt files, records, manifests)."""
        try:
            return self.read_bytes(uri_or_key).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(f"not UTF-8 text: {self._display(uri_or_key)}: {exc}") from None

    def put_bytes(self, s3_key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at ``s3_key`` (checksummed, encrypted as configured); returns its URI::

            store.put_bytes(store.layout.gallery("b1"), page, "text/html; charset=utf-8")
            # 's3://my-bucket/flashgen/galleries/b1.html'
        """
        self._put(s3_key, data, content_type)
        return self.uri(s3_key)

    def presign(self, uri_or_key: str, expires_in: int) -> str:
        """A presigned GET URL for the object, valid for ``expires_in`` seconds (at most 7 days).

        Signing is local (no request is sent). A URL signed with temporary credentials (an
        assumed role, an instance profile) stops working when those credentials expire, even
        if ``expires_in`` has not passed yet::

            store.presign("s3://my-bucket/flashgen/galleries/b1.html", 3600)
            # 'https://my-bucket.s3.amazonaws.com/flashgen/galleries/b1.html?X-Amz-Algorithm=…'
        """
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise InputError(
                f"expires_in {expires_in} must be 1 to {MAX_PRESIGN_SECONDS} seconds (7 days, "
                "the longest S3's SigV4 signatures allow)", field="expires_in")
        bucket, key = self._locate(uri_or_key)
        try:
            return self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_in))
        except BotoCoreError as exc:  # e.g. no credentials to sign with
            raise _storage_error("presign GetObject", bucket, key, exc) from exc

    def exists(self, uri_or_key: str) -> bool:
        """True if the object is there (HEAD); a 404 is False, other failures raise."""
        bucket, key = self._locate(uri_or_key)
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                return False
            raise _storage_error("HeadObject", bucket, key, exc) from exc
        except BotoCoreError as exc:
            raise _storage_error("HeadObject", bucket, key, exc) from exc
        return True

    def list_keys(
        self, sub_prefix: str = "", *, start_after: str | None = None, page_size: int = 1000
    ) -> Iterator[ListedObject]:
        """Every object under ``<prefix>/<sub_prefix>``, in key order, page by page.

        ``start_after`` is a full key (e.g. the last one a sensor saw): listing resumes after it::

            [o.s3_key for o in store.list_keys("inbox/")]  # ['fg/inbox/a.csv', 'fg/inbox/b.jsonl']
        """
        prefix = self.layout.below(sub_prefix)
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            params["StartAfter"] = start_after
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            **params, PaginationConfig={"PageSize": page_size}
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield ListedObject(
                        item["Key"], item["ETag"], item["LastModified"], item["Size"]
                    )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error("ListObjectsV2", self.bucket, prefix, exc) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (demos and tests; production provisions it)."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise _storage_error("HeadBucket", self.bucket, "", exc) from exc
        except BotoCoreError as exc:
            raise _storage_error("HeadBucket", self.bucket, "", exc) from exc
        region = self.s3.meta.region_name
        params: dict[str, Any] = {"Bucket": self.bucket}
        if region and region not in ("us-east-1", "aws-global"):
            # us-east-1 is the default and refuses an explicit LocationConstraint.
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.s3.create_bucket(**params)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise _storage_error("CreateBucket", self.bucket, "", exc) from exc
        except BotoCoreError as exc:
            raise _storage_error("CreateBucket", self.bucket, "", exc) from exc

    # --- the two calls everything goes through --------------------------------------------

    def _put(
        self,
        s3_key: str,
        body: bytes | BinaryIO,
        content_type: str,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        metadata: dict[str, str] | None = None,
        digest: bytes | None = None,
    ) -> str | None:
        """PutObject with checksum and SSE; the new ETag, or None if a condition did not hold.

        ``digest`` is the body's SHA-256 when the caller has it already (required for a
        file, which botocore then streams).
        """
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": s3_key,
            "Body": body,
            "ContentType": content_type,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": base64.b64encode(digest or hashlib.sha256(body).digest()).decode(),
            **self._sse,
        }
        if metadata:
            params["Metadata"] = metadata
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match:
            params["IfMatch"] = if_match
        try:
            return self.s3.put_object(**params)["ETag"]
        except ClientError as exc:
            if (if_none_match or if_match) and _condition_failed(exc, if_match is not None):
                if _retried(exc):
                    # botocore retried after an error: the first attempt may have been ours
                    # and landed, so the 412 could be against our own write.
                    return self._etag_if_holds(s3_key, body)
                return None
            raise _storage_error("PutObject", self.bucket, s3_key, exc) from exc
        except BotoCoreError as exc:
            raise _storage_error("PutObject", self.bucket, s3_key, exc) from exc

    def _get(self, bucket: str, s3_key: str, *,
             missing_ok: bool = False) -> tuple[bytes, str] | None:
        """GetObject with checksum validation: ``(body, etag)``; None if missing and allowed."""
        try:
            response = self.s3.get_object(Bucket=bucket, Key=s3_key, ChecksumMode="ENABLED")
            return response["Body"].read(), response["ETag"]
        except ClientError as exc:
            if missing_ok and _code(exc) in _NOT_FOUND_CODES:
                return None
            raise _storage_error("GetObject", bucket, s3_key, exc) from exc
        except FlexibleChecksumError as exc:
            raise StorageError(
                f"S3 GetObject s3://{bucket}/{s3_key}: checksum mismatch, the stored bytes do not "
                f"match their SHA-256 ({exc})"
            ) from exc
        except BotoCoreError as exc:
            raise _storage_error("GetObject", bucket, s3_key, exc) from exc

    def _etag_if_holds(self, s3_key: str, body: bytes) -> str | None:
        found = self._get(self.bucket, s3_key, missing_ok=True)
        if found is not None and found[0] == body:
            return found[1]
        return None

    def _locate(self, uri_or_key: str) -> tuple[str, str]:
        if uri_or_key.startswith("s3://"):
            return parse_s3_uri(uri_or_key)
        if not uri_or_key:
            raise StorageError("empty S3 key")
        return self.bucket, uri_or_key

    def _display(self, uri_or_key: str) -> str:
        bucket, key = self._locate(uri_or_key)
        return f"s3://{bucket}/{key}"


def _stamped(entry: LedgerEntry) -> LedgerEntry:
    """A copy of ``entry`` with ``updated_at`` now (the caller's object is left alone)."""
    return entry.model_copy(update={"updated_at": datetime.now(UTC)})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _retried(exc: ClientError) -> bool:
    return bool(exc.response.get("ResponseMetadata", {}).get("RetryAttempts"))


def _condition_failed(exc: ClientError, if_match: bool) -> bool:
    code = _code(exc)
    if code in _LOST_RACE_CODES or _status(exc) == 412:
        return True
    # If-Match on an object that no longer exists: S3 answers 404 NoSuchKey.
    return if_match and code in _NOT_FOUND_CODES


def _storage_error(
    operation: str, bucket: str, key: str, exc: ClientError | BotoCoreError
) -> StorageError:
    """A StorageError naming the call and object; S3's code and message, never credentials."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, ClientError):
        code, status = _code(exc), _status(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        transient = status >= 500 or code in _TRANSIENT_CODES
        return StorageError(
            f"S3 {operation} {where} failed: {code or status} ({status}): {message}",
            transient=transient,
        )
    # Transport failures (connection refused, reset, timed out) may pass; the rest
    # (no credentials, bad configuration) will not.
    transient = isinstance(exc, (BotoConnectionError, HTTPClientError))
    return StorageError(
        f"S3 {operation} {where} failed: {type(exc).__name__}: {exc}", transient=transient
    )
