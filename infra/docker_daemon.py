"""A Docker daemon for the image's build and tests, started when none answers.

    with docker_daemon():          # the running one, or a new `dockerd` stopped on exit
        subprocess.run(["docker", "run", "--network", "host", ...])

The daemon it starts has no bridge (``--bridge=none --iptables=false``): containers run
with ``--network host`` and reach the Prefect server, the emulator and moto on 127.0.0.1,
and no packet can go to a Docker bridge's private range (172.17.x). ``python -m
flashgen.infra.docker_daemon`` (or ``python3 infra/docker_daemon.py`` in a checkout) starts
one and leaves it running (for ``make image``).
It needs root, as dockerd does; Debian's ``docker.io`` provides it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DOCKERD_ARGS = ("--bridge=none", "--iptables=false", "--ip-masq=false")
START_TIMEOUT = 120.0  # seconds; a loaded 2-core machine takes a few


class DockerUnavailable(RuntimeError):
    """No daemon answers and none could be started; the message says why."""


def answering() -> bool:
    """True when ``docker info`` reaches a daemon."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def start(log: Path) -> subprocess.Popen[bytes]:
    """``dockerd`` without a bridge, in a session of its own, once ``docker info`` answers."""
    if shutil.which("dockerd") is None:
        raise DockerUnavailable("dockerd is missing: apt-get install -y docker.io")
    with open(log, "ab") as out:
        daemon = subprocess.Popen(["dockerd", *DOCKERD_ARGS], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DockerUnavailable(f"dockerd exited {daemon.returncode}: "
                                    f"{log.read_text(errors='replace')[-2000:]}")
        if answering():
            return daemon
        time.sleep(0.5)
    stop(daemon)
    raise DockerUnavailable(f"dockerd did not answer in {START_TIMEOUT:.0f} s ({log})")


def stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM (dockerd stops its containers and containerd), SIGKILL after a minute."""
    if daemon.poll() is None:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


@contextmanager
def docker_daemon(log: Path | None = None) -> Iterator[None]:
    """A daemon that answers for the duration; one this started is stopped on the way out."""
    if answering():
        yield
        return
    daemon = start(log or Path(tempfile.mkdtemp(prefix="flashgen-dockerd-")) / "dockerd.log")
    try:
        yield
    finally:
        stop(daemon)


if __name__ == "__main__":
    if answering():
        print("a Docker daemon answers already")
        sys.exit(0)
    log = Path(tempfile.gettempdir()) / "flashgen-dockerd.log"
    try:
        started = start(log)
    except DockerUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    print(f"dockerd {' '.join(DOCKERD_ARGS)} started (pid {started.pid}, log {log})")
