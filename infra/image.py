"""flashgen's container image, built offline: ``make image`` runs ``python infra/image.py``.

Registries here hold no base images and the image's build has no network, so it is made
from three local parts, each cached:

1. the base ``flashgen-base:bookworm``: ``debootstrap --variant=minbase bookworm`` with
   Debian's python3 (3.11) and python3-venv, from the Debian mirror apt uses on this
   machine, trimmed and loaded with ``docker import``. Built once; kept while the image
   exists (``--rebuild-base`` makes it again).
2. the wheelhouse ``build/image/wheels``: ``pip wheel`` of everything flashgen needs (the
   lean install: no emulator, no moto), fetched once per ``pyproject.toml``; and the
   flashgen wheel in ``build/image/flashgen``, built every time from a copy of the
   checkout, offline. Each is a layer of its own, so a code change reinstalls flashgen
   alone. pip runs under the
   image's own Python version (Debian's python3 on this host, in a venv of
   ``build/image``): markers such as ``python_full_version < "3.11.3"`` (redis wants
   async-timeout there) must be decided for the image's 3.11.2, not the host's Python.
3. the image: ``docker build --network none`` of the ``Dockerfile``, whose context is only
   the wheelhouse (``.dockerignore``); tagged ``flashgen:<version>`` and ``flashgen:latest``.

It needs root (debootstrap), a running Docker daemon (``python3
infra/docker_daemon.py`` starts one without a bridge) and, for the wheels, a Python
of the image's version with venv: Debian's ``/usr/bin/python3`` (python3-venv), or
``FLASHGEN_WHEEL_PYTHON``. Stdlib only, so ``make image`` needs no virtualenv.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / "build" / "image" / "wheels"  # the dependencies
OWN_WHEEL = REPO / "build" / "image" / "flashgen"  # flashgen's wheel: a layer of its own
IMAGE = "flashgen"
BASE_IMAGE = "flashgen-base:bookworm"
SUITE = "bookworm"
WHEEL_VENV = REPO / "build" / "image" / "pip"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What a container never reads: docs, translations, apt's package cache and lists.
TRIMMED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
           "var/cache/apt", "var/lib/apt/lists", "var/log")
# What pip must not build the flashgen wheel from (as tests/test_packaging.py copies it).
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "build",
                                     "*.egg-info", "flashgen-demo", "test-artifacts")


class ImageError(Exception):
    """A step of the build cannot go on; the message says what to do."""


def version() -> str:
    """flashgen's version, from pyproject.toml: the image's tag."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (deb822 ``.sources`` or one-line ``sources.list``),
    for the suite's main archive; ``FLASHGEN_DEBIAN_MIRROR`` wins, deb.debian.org is the
    last resort.

    >>> d = Path(tempfile.mkdtemp()); (d / "sources.list.d").mkdir()
    >>> _ = (d / "sources.list.d" / "debian.sources").write_text(
    ...     "Types: deb\\nURIs: http://mirror.example/debian\\nSuites: bookworm\\n\\n"
    ...     "Types: deb\\nURIs: http://mirror.example/debian-security\\n"
    ...     "Suites: bookworm-security\\n")
    >>> debian_mirror(d)
    'http://mirror.example/debian'
    >>> _ = (d / "sources.list").write_text(
    ...     "deb [arch=amd64] http://old.example/debian bookworm main\\n")
    >>> debian_mirror(d)
    'http://old.example/debian'
    """
    if os.environ.get("FLASHGEN_DEBIAN_MIRROR"):
        return os.environ["FLASHGEN_DEBIAN_MIRROR"]
    found: list[tuple[str, list[str]]] = []
    one_line = apt_dir / "sources.list"
    if one_line.exists():
        for line in one_line.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], [words[2]]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled") != "no":
                found += [(uri, fields.get("Suites", "").split())
                          for uri in fields.get("URIs", "").split()]
    for uri, suites in found:
        if SUITE in suites:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, **kwargs)


def docker_ready() -> None:
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise ImageError("no Docker daemon answers: start one without a bridge, "
                         "`python3 infra/docker_daemon.py` (or `dockerd --bridge=none "
                         "--iptables=false &`)")


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref],
                          capture_output=True).returncode == 0


def build_base(*, rebuild: bool = False) -> bool:
    """``flashgen-base:bookworm`` from debootstrap; False when it already existed."""
    if image_exists(BASE_IMAGE) and not rebuild:
        return False
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is missing: apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root: run `make image` as root once to make "
                         f"{BASE_IMAGE}; later builds reuse it")
    with tempfile.TemporaryDirectory(prefix="flashgen-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            SUITE, root, debian_mirror(), stdout=subprocess.DEVNULL)
        for trimmed in TRIMMED:
            shutil.rmtree(root / trimmed, ignore_errors=True)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                               stdout=subprocess.PIPE)
        run("docker", "import", "--change", "ENV LANG=C.UTF-8",
            "--change", 'CMD ["python3"]', "-", BASE_IMAGE, stdin=tar.stdout,
            stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise ImageError(f"tar of the debootstrap root exited {tar.returncode}")
    return True


@contextmanager
def source_copy() -> Iterator[Path]:
    """The checkout copied without build leftovers: pip builds in the source folder, and
    setuptools' ``build/lib`` there would carry deleted files into the next wheel."""
    with tempfile.TemporaryDirectory(prefix="flashgen-src-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(REPO, source, ignore=NOT_SHIPPED)
        yield source


def python_version(python: str | Path) -> str:
    return subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def image_python_version() -> str:
    """The base image's python3 version, asked of the image itself."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", BASE_IMAGE, "python3", "-c",
         "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True).stdout.strip()


def wheel_pip(wanted: str) -> Path:
    """pip in a venv of a Python of version ``wanted`` (the image's), made once."""
    python = WHEEL_VENV / "bin" / "python"
    if python.exists() and python_version(python) == wanted:
        return python
    source = os.environ.get("FLASHGEN_WHEEL_PYTHON", "/usr/bin/python3")
    if not Path(source).exists() or python_version(source) != wanted:
        raise ImageError(f"the wheels must be resolved by Python {wanted}, the image's "
                         f"(Debian {SUITE}'s python3); {source} is not it: install Debian's "
                         "python3 and python3-venv, or set FLASHGEN_WHEEL_PYTHON to one")
    shutil.rmtree(WHEEL_VENV, ignore_errors=True)
    run(source, "-m", "venv", WHEEL_VENV)
    return python


def build_wheels() -> bool:
    """The wheelhouse; True when its dependencies had to be fetched (not cached)."""
    wanted = image_python_version()
    python = wheel_pip(wanted)
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + wanted.encode()
                         ).hexdigest()[:16]
    stamp = WHEELHOUSE / f".dependencies-{key}"
    fetch = not stamp.exists()
    shutil.rmtree(OWN_WHEEL, ignore_errors=True)
    with source_copy() as source:
        if fetch:
            shutil.rmtree(WHEELHOUSE, ignore_errors=True)
            # setuptools too: the flashgen wheel's own build takes it from here, offline.
            run(python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", WHEELHOUSE, source,
                "setuptools>=68", cwd=source.parent)
            for built in WHEELHOUSE.glob("flashgen-*.whl"):
                built.unlink()
            stamp.touch()
        # Fixed timestamps: the same sources give the same bytes, and Docker's cache holds.
        run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
            "--find-links", WHEELHOUSE, "--wheel-dir", OWN_WHEEL, source, cwd=source.parent,
            env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    return fetch


def build_image(tag: str) -> None:
    """``docker build`` with no network: everything comes from the base and the wheels."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: no buildx needed
    run("docker", "build", "--network", "none", "--quiet", "--tag", f"{IMAGE}:{tag}",
        "--tag", f"{IMAGE}:latest", "--build-arg", f"BASE={BASE_IMAGE}", REPO, env=env,
        stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild-base", action="store_true",
                        help=f"debootstrap {BASE_IMAGE} again even if it exists")
    args = parser.parse_args(argv)
    try:
        docker_ready()
        for step, do in (("base", lambda: build_base(rebuild=args.rebuild_base)),
                         ("wheels", build_wheels), ("image", lambda: build_image(version()))):
            started = time.monotonic()
            made = do()  # base: built; wheels: dependencies fetched; image: always built
            note = "cached" if made is False else "built"
            print(f"{step:<7} {note:<7} {time.monotonic() - started:6.1f} s", flush=True)
    except ImageError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"make image: {' '.join(map(str, exc.cmd))} exited {exc.returncode}",
              file=sys.stderr)
        return 1
    print(f"{IMAGE}:{version()} {IMAGE}:latest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
