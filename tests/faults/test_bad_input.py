"""Bad input fails before the first cent: exit 2, one line naming the field or line, and the
emulator sees no submission. A row of the README's guarantees table."""

from __future__ import annotations

import pytest

from tests.faults.conftest import BUCKET
from tests.test_sources_defects import BILLION_LAUGHS

pytestmark = pytest.mark.slow


def _files(workdir):
    (workdir / "binary.csv").write_bytes(b"prompt\n\x89PNG\r\n\x1a\n\xff\xfe\x00garbage\n")
    (workdir / "bomb.yaml").write_text(BILLION_LAUGHS)
    (workdir / "ok.csv").write_text("prompt\na red fox\n")


CASES = {
    "batch id with a path": (["ok.csv", "--batch-id", "../../etc"], "batch_id"),
    "batch id with a space": (["ok.csv", "--batch-id", "spring campaign"], "batch_id"),
    "binary prompt file": (["binary.csv"], "source"),
    "missing s3 bucket": (["s3://no-such-bucket-4242/p.csv"], "source"),
    "missing s3 key": ([f"s3://{BUCKET}/nothing/here.csv"], "source"),
    "invalid bucket name": (["ok.csv", "--bucket", "Not_A_Bucket"], "bucket"),
    "defaults not an object": (["ok.csv", "--defaults", "[1,2]"], "defaults"),
    "concurrency zero": (["ok.csv", "--concurrency", "0"], "concurrency"),
    "concurrency negative": (["ok.csv", "--concurrency", "-1"], "concurrency"),
    "yaml alias bomb": (["bomb.yaml"], "alias"),
    "over max items": (["ok.csv", "--max-items", "0"], "max-items"),
    "over max cost at the catalog price": (["ok.csv", "--max-cost", "0.01"], "max-cost 0.01"),
    "a model the catalog does not know": (["ok.csv", "--model", "no-such/model"], "model_id"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_before_anything_is_sent(fault_stack, case):
    args, named = CASES[case]
    _files(fault_stack.workdir)
    done = fault_stack.batch(*args, timeout=180)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last, last
    assert len(last) < 600  # a bounded, one-line message
    assert fault_stack.api.stats()["submissions"] == 0
    assert fault_stack.keys("ledger/") == []
    fault_stack.assert_token_nowhere()


# What a run needs once it has paid, and every setting's range: (args, env, named). A path
# under /proc stands for a read-only file system; "{work}" is the test's folder.
RESOURCE_CASES = {
    "state dir behind a file": (["ok.csv"], {"FLASHGEN_STATE_DIR": "{work}/ok.csv/state"},
                                "FLASHGEN_STATE_DIR"),
    "state dir read-only": (["ok.csv"], {"FLASHGEN_STATE_DIR": "/proc/flashgen-state"},
                            "FLASHGEN_STATE_DIR"),
    # As in flashgen's image: a state dir that is not a mounted volume dies with the container.
    "state dir not a volume": (["ok.csv"], {"FLASHGEN_STATE_DIR": "{work}/state",
                                            "FLASHGEN_STATE_DIR_MOUNTED": "1"},
                               "FLASHGEN_STATE_DIR"),
    "out is a file": (["ok.csv", "--out", "{work}/ok.csv"], {}, "--out"),
    "out behind a file": (["ok.csv", "--out", "{work}/ok.csv/gallery"], {}, "--out"),
    "image cap negative": (["ok.csv"], {"FLASHGEN_MAX_IMAGE_BYTES": "-1"},
                           "FLASHGEN_MAX_IMAGE_BYTES"),
    "video cap zero": (["ok.csv"], {"FLASHGEN_MAX_VIDEO_BYTES": "0"},
                       "FLASHGEN_MAX_VIDEO_BYTES"),
    "gallery ttl over 7 days": (["ok.csv"], {"FLASHGEN_GALLERY_URL_TTL": "604801"},
                                "FLASHGEN_GALLERY_URL_TTL"),
    "base url not http": (["ok.csv"], {"RUNCOMFY_BASE_URL": "file:///etc/passwd"},
                          "RUNCOMFY_BASE_URL"),
    "job deadline zero": (["ok.csv"], {"FLASHGEN_JOB_DEADLINE": "0"}, "FLASHGEN_JOB_DEADLINE"),
    "send lease not a number": (["ok.csv"], {"FLASHGEN_SEND_LEASE": "soon"},
                                "FLASHGEN_SEND_LEASE"),
    "unknown encryption": (["ok.csv"], {"FLASHGEN_S3_SSE": "rot13"}, "FLASHGEN_S3_SSE"),
    "storage breaker zero": (["ok.csv"], {"FLASHGEN_STORAGE_BREAKER": "0"},
                             "FLASHGEN_STORAGE_BREAKER"),
}


@pytest.mark.parametrize("case", list(RESOURCE_CASES))
def test_an_unusable_resource_or_setting_exits_2_before_anything_is_paid(fault_stack, case):
    args, env, named = RESOURCE_CASES[case]
    _files(fault_stack.workdir)
    work = str(fault_stack.workdir)
    done = fault_stack.batch(*(a.replace("{work}", work) for a in args), timeout=180,
                             **{k: v.replace("{work}", work) for k, v in env.items()})
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]  # one line, no Prefect log, no traceback
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]
    assert fault_stack.api.stats()["submissions"] == 0
    assert fault_stack.keys("ledger/") == []


def test_a_bad_row_beside_a_good_one_lands_in_the_manifest(fault_stack):
    source = fault_stack.workdir / "mixed.jsonl"
    source.write_text('{"prompt": 123}\n{"prompt": "a red fox"}\n')
    done = fault_stack.batch(str(source), "--batch-id", "mixed")
    assert done.returncode == 1  # an invalid row counts as a failure unless tolerated
    rows = {row.line: row for row in fault_stack.manifest("mixed")}
    assert rows[1].state == "invalid" and "prompt" in rows[1].reason
    assert rows[2].state == "stored"
    assert fault_stack.api.stats()["submissions"] == 1
