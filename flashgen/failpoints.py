"""Named step boundaries where a fault test can SIGKILL this process, to prove crash safety.

``FLASHGEN_FAILPOINT=NAME[:N]`` kills the process, as an OOM killer or a pulled plug would,
the N-th time (default the first) any task passes the boundary ``NAME``. Unset (always, in
production) a failpoint costs one dictionary lookup. With ``FLASHGEN_FAILPOINT_ONCE=PATH`` only
the first process to reach it dies (the one that creates ``PATH``): several processes
sharing one environment, such as the shard runs of one work pool, lose one of them, and
its rerun passes. A batch's boundaries (``POINTS``), in a
job's order, then the listener's (``LISTENER_POINTS``):

    claim      before the ledger is asked about the item
    sending    the API answered the submit; its request_id is not yet recorded anywhere
    submitted  the request_id is in the ledger
    waiting    the job was polled at least once
    fetched    the outputs are downloaded and verified, not yet stored
    stored     image, record and ledger are written; the manifest is not
    manifest   the batch's manifest is written
    announced  the inbox listener sent a file's event; its SQS message is not yet deleted
"""

from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("claim", "sending", "submitted", "waiting", "fetched", "stored", "manifest")
LISTENER_POINTS = ("announced",)
_passed: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Die here if ``FLASHGEN_FAILPOINT`` names this boundary and its count is reached."""
    spec = os.environ.get("FLASHGEN_FAILPOINT")
    if not spec:
        return
    wanted, _, nth = spec.partition(":")
    if wanted != name:
        return
    _passed[name] += 1
    if _passed[name] >= int(nth or 1) and _first_to_die():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_to_die() -> bool:
    once = os.environ.get("FLASHGEN_FAILPOINT_ONCE")
    if not once:
        return True
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
