"""How many times one S3 write is tried through an outage: the number the docstrings state."""

from __future__ import annotations

import pytest

from flashgen.errors import StorageError
from flashgen.ledger import ItemRef, Journal, Ledger
from flashgen.storage import S3_ATTEMPTS, Store
from flashgen.infra.stack import FAKE_AWS
from tests.faults.s3proxy import S3FaultProxy

pytestmark = pytest.mark.slow  # botocore's real backoff: about ten seconds


def test_a_ledger_write_during_an_outage_is_tried_s3_attempts_times(s3_http, monkeypatch,
                                                                     tmp_path):
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    with S3FaultProxy(s3_http.url) as proxy:
        store = Store("attempts-bucket", "p", endpoint_url=proxy.url)
        store.ensure_bucket()
        ledger = Ledger(store, Journal(tmp_path, scope="x"))
        item = ItemRef(fingerprint="a" * 64, model="m", inputs={})
        proxy.outage_after(r"^PUT ", seconds=3600)
        with pytest.raises(StorageError) as raised:
            ledger.record_submitted(item, "r1", attempts=1)
        assert raised.value.transient
        assert proxy.dropped == S3_ATTEMPTS  # then the task's retries, each as many again
        assert ledger.journal.recall(item.fingerprint) == "r1"
