"""Local resources a run needs once it has paid, checked before it pays.

A run that has paid for a job must be able to keep its request_id (the state directory's
journal) and its files (``--out``). Finding out that a folder cannot be written only
after paying loses the job, so each is probed first, the way it will be used: created,
a file written and fsync'ed, then removed::

    writable_folder(settings.state_dir, "FLASHGEN_STATE_DIR")   # InputError naming it

The bucket is probed the same way by ``Store.check_writable``; settings' ranges by
``flashgen.settings.get_settings``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from flashgen.errors import InputError


def writable_folder(path: Path, setting: str) -> Path:
    """``path`` as a folder this process can write durably; else ``InputError`` naming
    ``setting`` and why (a read-only file system, a full disk, a file in the way).

    >>> import tempfile
    >>> writable_folder(Path(tempfile.mkdtemp()) / "a" / "b", "X").is_dir()
    True
    """
    path = Path(path)
    probe = path / f".flashgen-probe-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = (f": {exc.filename}" if exc.filename and str(exc.filename) not in (
            str(probe), str(path)) else "")
        raise InputError(f"{setting}: {path} cannot be written ({reason}{where}); a run must "
                         "keep what it pays for there. Point it at a writable folder",
                         field=setting) from None
    return path
