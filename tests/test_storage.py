"""flashgen.storage against moto's S3: the bytes and objects that land, not the calls made."""

from __future__ import annotations

import base64
import hashlib
import threading
from datetime import UTC, datetime, timedelta, timezone

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from flashgen.errors import InputError, StorageError
from flashgen.records import (
    ImageRecord,
    ItemState,
    LedgerEntry,
    LedgerState,
    ManifestRow,
    Timings,
)
from flashgen.settings import Settings
from flashgen.infra.stack import free_port
from flashgen.storage import Layout, Store, extension_for, parse_s3_uri

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _entry(key: str = "abc123", owner: str = "run-a",
           state: LedgerState = LedgerState.CLAIMED, **fields) -> LedgerEntry:
    return LedgerEntry(fingerprint=key, model="wan-ai/wan-2-2/flash/text-to-image",
                       inputs={"prompt": "a red fox"}, state=state, owner=owner, **fields)


def _claim_from_threads(store: Store, key: str, n: int = 16) -> list[str]:
    """n owners claim ``key`` at the same moment; returns the owners that won."""
    start = threading.Barrier(n)
    winners: list[str] = []
    errors: list[BaseException] = []

    def contend(owner: str) -> None:
        try:
            start.wait()
            if store.claim(_entry(key, owner=owner)):
                winners.append(owner)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return winners


# --- layout ----------------------------------------------------------------------------


def test_layout_builds_every_key_under_the_prefix():
    layout = Layout("fg")
    assert layout.image("abc", WHEN) == "fg/images/2025/01/02/abc.png"
    assert layout.image("abc", WHEN, index=2, content_type="image/jpeg") == (
        "fg/images/2025/01/02/abc-2.jpg")
    assert layout.image("abc", WHEN, content_type="video/mp4") == "fg/images/2025/01/02/abc.mp4"
    assert layout.metadata("abc", WHEN) == "fg/metadata/2025/01/02/abc.json"
    assert layout.metadata("abc", WHEN, index=1) == "fg/metadata/2025/01/02/abc-1.json"
    assert layout.ledger("abc") == "fg/ledger/abc.json"
    assert layout.manifest("batch-7") == "fg/manifests/batch-7.jsonl"
    assert layout.manifest_summary("batch-7") == "fg/manifests/batch-7.summary.json"
    assert layout.below("inbox/") == "fg/inbox/"


@pytest.mark.parametrize("prefix", ["", "/", "fg/", "/fg"])
def test_layout_prefix_never_yields_empty_or_doubled_slashes(prefix):
    key = Layout(prefix).ledger("abc")
    assert key in ("ledger/abc.json", "fg/ledger/abc.json")
    assert not key.startswith("/") and "//" not in key


def test_layout_date_is_the_utc_date_of_when():
    karachi = timezone(timedelta(hours=5))
    assert Layout("fg").image("abc", datetime(2024, 3, 1, 1, 30, tzinfo=karachi)) == (
        "fg/images/2024/02/29/abc.png")
    with pytest.raises(ValueError, match="timezone-aware"):
        Layout("fg").image("abc", datetime(2025, 1, 2))


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", "a b", "x" * 201])
def test_layout_refuses_keys_that_are_not_one_safe_segment(bad):
    with pytest.raises(InputError) as caught:
        Layout("fg").ledger(bad)
    assert caught.value.field == "fingerprint"
    with pytest.raises(InputError) as caught:
        Layout("fg").manifest(bad)
    assert caught.value.field == "batch_id"


def test_extension_follows_the_content_type():
    assert extension_for("image/png") == "png"
    assert extension_for("IMAGE/JPEG; q=1") == "jpg"
    assert extension_for("image/webp") == "webp"
    assert extension_for("application/x-unknown-thing") == "bin"


def test_uri_and_parse_s3_uri_round_trip():
    store = Store("bkt", "fg", s3=object())
    assert store.uri("fg/ledger/a.json") == "s3://bkt/fg/ledger/a.json"
    assert parse_s3_uri("s3://bkt/fg/ledger/a.json") == ("bkt", "fg/ledger/a.json")


@pytest.mark.parametrize("bad", ["", "bkt/key", "https://bkt/key", "s3://", "s3://bkt",
                                 "s3://bkt/", "s3:///key"])
def test_parse_s3_uri_refuses_malformed_uris(bad):
    with pytest.raises(StorageError, match="S3 URI"):
        parse_s3_uri(bad)


# --- configuration ---------------------------------------------------------------------


def test_from_settings_takes_the_environment_and_explicit_arguments_win(aws_env):
    settings = Settings(bucket="from-env", prefix="env-prefix", s3_sse="AES256")
    assert (Store.from_settings(settings).bucket, Store.from_settings(settings).prefix) == (
        "from-env", "env-prefix")
    explicit = Store.from_settings(settings, bucket="explicit", prefix="")
    assert (explicit.bucket, explicit.prefix) == ("explicit", "")
    with pytest.raises(InputError) as caught:
        Store.from_settings(Settings(bucket=None))
    assert caught.value.field == "bucket"


def test_the_client_is_shared_safely_by_32_threads(aws_env):
    config = Store("bkt", region="us-east-1").s3.meta.config
    assert config.max_pool_connections >= 32
    assert config.retries["mode"] == "standard"


@pytest.mark.parametrize(("sse", "kms", "field"), [("rot13", None, "sse"),
                                                   ("AES256", "alias/k", "kms_key_id"),
                                                   (None, "alias/k", "kms_key_id")])
def test_inconsistent_encryption_settings_are_refused(sse, kms, field):
    with pytest.raises(InputError) as caught:
        Store("bkt", s3=object(), sse=sse, kms_key_id=kms)
    assert caught.value.field == field


def test_ensure_bucket_creates_outside_us_east_1_and_is_idempotent(s3):
    store = Store("flashgen-eu", region="eu-west-1")
    store.ensure_bucket()
    store.ensure_bucket()
    assert s3.get_bucket_location(Bucket="flashgen-eu")["LocationConstraint"] == "eu-west-1"


# --- images and records ----------------------------------------------------------------


def test_put_image_stores_the_exact_bytes_with_type_checksum_and_metadata(store, s3):
    obj = store.put_image("abc123", PNG, "image/png", when=WHEN, metadata={"batch": "b1"})

    assert obj.s3_key == "fg/images/2025/01/02/abc123.png"
    assert obj.uri == "s3://flashgen-test/fg/images/2025/01/02/abc123.png"
    assert (obj.size, obj.sha256, obj.content_type) == (
        len(PNG), hashlib.sha256(PNG).hexdigest(), "image/png")
    got = s3.get_object(Bucket="flashgen-test", Key=obj.s3_key, ChecksumMode="ENABLED")
    body = got["Body"].read()
    assert body == PNG
    assert got["ContentType"] == "image/png"
    assert got["ChecksumSHA256"] == _b64_sha256(body)
    assert got["Metadata"] == {"sha256": hashlib.sha256(body).hexdigest(), "batch": "b1"}
    assert store.read_bytes(obj.uri) == PNG
    assert store.read_bytes(obj.s3_key) == PNG


def test_further_outputs_get_their_index_and_extension(store):
    first = store.put_image("abc123", PNG, "image/png", when=WHEN)
    second = store.put_image("abc123", b"jpeg bytes", "image/jpeg", when=WHEN, index=1)
    assert second.s3_key == "fg/images/2025/01/02/abc123-1.jpg"
    assert store.read_bytes(first.uri) == PNG
    assert store.read_bytes(second.uri) == b"jpeg bytes"


def test_bytes_that_do_not_match_their_checksum_never_pass_unnoticed(store, s3):
    key = store.layout.image("corrupt", WHEN)
    try:
        s3.put_object(Bucket=store.bucket, Key=key, Body=PNG, ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=_b64_sha256(b"some other bytes"))
    except ClientError:
        # AWS S3 verifies on arrival (BadDigest) and stores nothing.
        assert not store.exists(key)
        return
    # moto 5.2.5 stores them unverified; reading them back through the Store catches it.
    with pytest.raises(StorageError, match="checksum mismatch") as caught:
        store.read_bytes(key)
    assert key in str(caught.value)


def test_put_record_stores_the_record_as_json_under_its_date(store, s3):
    record = ImageRecord(
        fingerprint="abc123", model="wan-ai/wan-2-2/flash/text-to-image",
        inputs={"prompt": "a red fox", "seed": 7}, request_id="req-1",
        image_uri="s3://flashgen-test/fg/images/2025/01/02/abc123-1.png",
        content_type="image/png", size=len(PNG), sha256=hashlib.sha256(PNG).hexdigest(),
        output_index=1, timings=Timings(stored_at=WHEN), batch_id="b1",
    )
    uri = store.put_record(record, when=WHEN)

    assert uri == "s3://flashgen-test/fg/metadata/2025/01/02/abc123-1.json"
    assert ImageRecord.model_validate_json(store.read_text(uri)) == record
    head = s3.head_object(Bucket="flashgen-test", Key=parse_s3_uri(uri)[1])
    assert head["ContentType"] == "application/json"


@pytest.mark.parametrize(("sse", "kms"), [("AES256", None), ("aws:kms", "alias/flashgen")])
def test_every_write_carries_the_configured_encryption(s3, sse, kms):
    store = Store("flashgen-sse", "fg", sse=sse, kms_key_id=kms, region="us-east-1")
    store.ensure_bucket()
    image = store.put_image("abc123", PNG, "image/png", when=WHEN)
    record = ImageRecord(fingerprint="abc123", model="m", inputs={}, request_id="r",
                         image_uri=image.uri, content_type="image/png", size=image.size,
                         sha256=image.sha256)
    written = [image.s3_key, parse_s3_uri(store.put_record(record, when=WHEN))[1],
               parse_s3_uri(store.put_manifest("b1", []))[1]]
    assert store.claim(_entry())
    written.append(store.layout.ledger("abc123"))

    for key in written:
        head = s3.head_object(Bucket="flashgen-sse", Key=key)
        assert head["ServerSideEncryption"] == sse, key
        assert head.get("SSEKMSKeyId") == kms, key


# --- the ledger ------------------------------------------------------------------------


def test_claim_is_exclusive(store):
    assert store.read_ledger("abc123") is None
    assert store.claim(_entry(owner="run-a")) is True
    assert store.claim(_entry(owner="run-b")) is False

    entry, etag = store.read_ledger("abc123")
    assert entry.owner == "run-a" and entry.state == LedgerState.CLAIMED
    assert entry.updated_at is not None and etag


def test_claim_is_exclusive_across_16_threads_sharing_one_store(store):
    winners = _claim_from_threads(store, "contended")
    assert len(winners) == 1
    entry, _ = store.read_ledger("contended")
    assert entry.owner == winners[0]


def test_claim_leaves_the_callers_entry_alone(store):
    entry = _entry()
    store.claim(entry)
    assert entry.updated_at is None


def _lose_first_answer(store: Store, meanwhile=lambda: None) -> None:
    """The first PutObject lands in S3 but its answer is lost, so botocore sends it again."""
    lost: list[int] = []

    def retry_as_if_lost(attempts, response=None, **_):
        if attempts == 1 and response is not None and response[0].status_code == 200:
            lost.append(attempts)
            meanwhile()
            return 0  # retry now, as after a dropped connection
        return None

    store.s3.meta.events.register_first("needs-retry.s3.PutObject", retry_as_if_lost)


def test_a_claim_whose_answer_was_lost_is_still_ours(store):
    _lose_first_answer(store)
    assert store.claim(_entry(owner="run-a")) is True
    assert store.read_ledger("abc123")[0].owner == "run-a"


def test_a_claim_overtaken_while_its_answer_was_lost_is_not_ours(store, s3):
    def someone_else_overwrites():
        s3.put_object(Bucket=store.bucket, Key=store.layout.ledger("abc123"),
                      Body=_entry(owner="run-b").model_dump_json().encode())

    _lose_first_answer(store, someone_else_overwrites)
    assert store.claim(_entry(owner="run-a")) is False


def test_replace_ledger_only_over_the_version_read(store):
    store.claim(_entry(owner="run-a"))
    entry, etag = store.read_ledger("abc123")

    submitted = entry.model_copy(update={"state": LedgerState.SUBMITTED, "request_id": "req-1"})
    assert store.replace_ledger(submitted, etag) is True
    stale = entry.model_copy(update={"state": LedgerState.AMBIGUOUS, "owner": "run-b"})
    assert store.replace_ledger(stale, etag) is False

    now, new_etag = store.read_ledger("abc123")
    assert (now.state, now.request_id, now.owner) == (LedgerState.SUBMITTED, "req-1", "run-a")
    assert new_etag != etag


def test_replace_ledger_of_a_vanished_entry_fails(store, s3):
    store.claim(_entry())
    _, etag = store.read_ledger("abc123")
    s3.delete_object(Bucket=store.bucket, Key=store.layout.ledger("abc123"))
    assert store.replace_ledger(_entry(), etag) is False
    assert store.read_ledger("abc123") is None


def test_write_ledger_overwrites_and_returns_the_etag_read_back(store):
    store.claim(_entry())
    etag = store.write_ledger(_entry(state=LedgerState.STORED, request_id="req-1",
                                     image_uris=["s3://flashgen-test/fg/images/x.png"]))
    entry, read_etag = store.read_ledger("abc123")
    assert entry.state == LedgerState.STORED and entry.image_uris
    assert read_etag == etag


def test_an_unreadable_ledger_entry_is_a_storage_error(store, s3):
    s3.put_object(Bucket=store.bucket, Key=store.layout.ledger("abc123"), Body=b"{not json")
    with pytest.raises(StorageError, match="unreadable ledger entry"):
        store.read_ledger("abc123")


# --- JSON, manifests, listing ----------------------------------------------------------


def test_put_json_if_none_match_writes_once(store):
    key = store.layout.path("inbox", "note.json")
    assert store.put_json(key, {"n": 1, "text": "ünïcode"}, if_none_match=True) is True
    assert store.put_json(key, {"n": 2}, if_none_match=True) is False
    assert store.read_json(key) == {"n": 1, "text": "ünïcode"}
    assert store.read_json(store.uri(key)) == {"n": 1, "text": "ünïcode"}


def test_manifest_round_trips_row_for_row(store, s3):
    rows = [
        ManifestRow(line=1, fingerprint="k1", prompt="a fox\nin snow, “quoted”", seed=1,
                    state=ItemState.STORED, request_id="r1", image_uris=["s3://b/i.png"],
                    metadata_uri="s3://b/m.json", seconds=3.5),
        ManifestRow(line=2, prompt="", state=ItemState.INVALID, reason="prompt: empty"),
        ManifestRow(line=3, fingerprint="k1", state=ItemState.SKIPPED, reason="already stored"),
    ]
    uri = store.put_manifest("batch-7", rows)

    assert uri == "s3://flashgen-test/fg/manifests/batch-7.jsonl"
    assert len(store.read_text(uri).splitlines()) == 3
    assert s3.head_object(Bucket="flashgen-test", Key="fg/manifests/batch-7.jsonl")[
        "ContentType"] == "application/x-ndjson"
    assert store.read_manifest("batch-7") == rows
    summary = store.read_json(store.layout.manifest_summary("batch-7"))
    assert summary["rows"] == 3 and summary["manifest_uri"] == uri
    assert summary["counts"] == {"stored": 1, "invalid": 1, "skipped": 1}


def test_an_empty_manifest_round_trips(store):
    store.put_manifest("empty", [])
    assert store.read_manifest("empty") == []


def test_list_keys_pages_through_everything_and_resumes_after_a_key(store):
    names = [f"fg/inbox/{i:02d}.csv" for i in range(7)]
    for name in reversed(names):
        store.put_json(name, {"name": name})
    store.put_json("fg/inboxed-elsewhere.json", {})
    store.put_json(store.layout.ledger("abc"), {})

    listed = list(store.list_keys("inbox/", page_size=2))
    assert [o.s3_key for o in listed] == names
    assert all(o.etag and o.size > 0 and o.last_modified.tzinfo for o in listed)
    assert [o.s3_key for o in store.list_keys("inbox/", start_after=names[2], page_size=2)] == (
        names[3:])
    assert len(list(store.list_keys(page_size=3))) == 9


def test_exists_and_reading_what_is_missing(store):
    key = store.layout.path("nothing", "here.json")
    assert store.exists(key) is False
    with pytest.raises(StorageError) as caught:
        store.read_bytes(key)
    assert "GetObject" in str(caught.value) and f"s3://flashgen-test/{key}" in str(caught.value)
    assert caught.value.transient is False
    store.put_json(key, {})
    assert store.exists(store.uri(key)) is True


def test_s3_errors_name_the_call_and_object_but_never_the_credentials(s3):
    store = Store("no-such-bucket", "fg", region="us-east-1")
    with pytest.raises(StorageError) as caught:
        store.put_image("abc123", PNG, "image/png", when=WHEN)
    message = str(caught.value)
    assert "PutObject" in message
    assert "s3://no-such-bucket/fg/images/2025/01/02/abc123.png" in message
    assert "NoSuchBucket" in message and "testing-secret" not in message
    assert caught.value.transient is False


def test_an_unreachable_endpoint_is_a_transient_storage_error(aws_env):
    port = free_port()  # a loopback port that nothing listens on
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    with pytest.raises(StorageError) as caught:
        Store("bkt", "fg", s3=client).exists("fg/x")
    assert caught.value.transient is True and "HeadObject" in str(caught.value)


# --- moto as a server, over HTTP (as the end-to-end tests use it) ------------------------


def test_conditional_writes_hold_over_http_against_moto_server(moto_server):
    store = Store("flashgen-e2e", "fg", endpoint_url=moto_server)
    store.ensure_bucket()

    winners = _claim_from_threads(store, "over-http")
    assert len(winners) == 1
    entry, etag = store.read_ledger("over-http")
    assert entry.owner == winners[0]
    assert store.replace_ledger(entry.model_copy(update={"state": LedgerState.FAILED}), etag)
    assert store.replace_ledger(entry, etag) is False

    obj = store.put_image("over-http", PNG, "image/png", when=WHEN)
    assert store.read_bytes(obj.uri) == PNG
