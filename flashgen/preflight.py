"""Local resources a run needs once it has paid, checked before it pays.

A run that has paid for a job must be able to keep its request_id (the state directory's
journal) and its files (``--out``). Finding out that a folder cannot be written only
after paying loses the job, so each is probed first, the way it will be used: created,
a file written and fsync'ed, then removed::

    state_folder(settings)                 # InputError naming FLASHGEN_STATE_DIR
    writable_folder(out, "--out")          # InputError naming --out

In a container (``FLASHGEN_STATE_DIR_MOUNTED``, which flashgen's image sets) the state
directory must also be a mounted volume: the container's own filesystem, writable or not,
is gone with the container, and the request_ids with it.

The bucket is probed the same way by ``Store.check_writable``; settings' ranges by
``flashgen.settings.get_settings``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from flashgen.errors import InputError

if TYPE_CHECKING:
    from flashgen.settings import Settings

STATE_SETTING = "FLASHGEN_STATE_DIR"


def state_folder(settings: Settings) -> Path:
    """``settings.state_dir``, checked as ``writable_folder`` does, and first, when
    ``settings.state_dir_mounted``, checked to be a mount point; else ``InputError``.

    >>> import tempfile
    >>> from flashgen.settings import Settings
    >>> folder = Path(tempfile.mkdtemp())
    >>> state_folder(Settings(state_dir=folder, state_dir_mounted=True))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flashgen.errors.InputError: FLASHGEN_STATE_DIR: /tmp/... is not a mounted volume ...
    """
    path = Path(settings.state_dir)
    if settings.state_dir_mounted and not os.path.ismount(path):
        raise InputError(f"{STATE_SETTING}: {path} is not a mounted volume "
                         "(FLASHGEN_STATE_DIR_MOUNTED is set, as in flashgen's image): what a "
                         "run paid for must outlive the container. Mount a writable volume "
                         f"there (docker run -v flashgen-state:{path})", field=STATE_SETTING)
    return writable_folder(path, STATE_SETTING)


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
