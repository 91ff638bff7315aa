"""A plain `pip install .` is lean: no moto (nor any other demo-only package), yet the
`flashgen` command works and says which extra the emulator and the demo need."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "build",
                                     "*.egg-info", "flashgen-demo")
# What this (dev) environment has only because of the extras, and flashgen itself: left
# out of the packages the lean venv may reuse, so pip must bring any of them it wants.
EXTRAS_ONLY = ("moto", "flask", "werkzeug", "responses", "xmltodict", "pytest", "_pytest",
               "hypothesis", "_hypothesis", "ruff", "flashgen", "__editable__")


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """A fresh venv with flashgen installed from a copy of this checkout, no extras.

    Resolving prefect's hundred-odd dependencies from the index takes minutes, so the
    venv sees this environment's packages minus ``EXTRAS_ONLY`` (one folder of links,
    named in a .pth file) as already installed: pip still reads flashgen's metadata and
    installs whatever it requires that is missing, and would install moto if the core
    needed it. A copy of the checkout, because pip builds in the source folder.
    """
    tmp = tmp_path_factory.mktemp("lean")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=NOT_SHIPPED)
    reused = tmp / "reused"
    reused.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().replace("-", "_").startswith(EXTRAS_ONLY):
            (reused / entry.name).symlink_to(entry)
    venv.create(tmp / "venv", with_pip=True)
    bin_dir = tmp / "venv" / "bin"
    site = subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig."
                           "get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    (Path(site.stdout.strip()) / "reused.pth").write_text(f"{reused}\n")
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", str(source)],
                   check=True, timeout=300, cwd=tmp)
    return bin_dir


def run(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Outside the checkout and without PYTHONPATH: only the installed package is importable.
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=bin_dir,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(bin_dir)})


def test_no_extras_installs_no_moto_and_the_command_works(lean):
    absent = run(lean, str(lean / "python"), "-c", "import moto")
    assert absent.returncode != 0 and "No module named 'moto'" in absent.stderr
    installed = run(lean, str(lean / "python"), "-m", "pip", "list", "--format=freeze")
    assert "flashgen==" in installed.stdout and "moto==" not in installed.stdout
    helped = run(lean, str(lean / "flashgen"), "--help")
    assert helped.returncode == 0, helped.stderr
    assert "demo" in helped.stdout and "generate" in helped.stdout


def test_the_demo_names_the_extra_it_needs_in_one_line(lean):
    demo = run(lean, str(lean / "flashgen"), "demo")
    assert demo.returncode == 1
    assert demo.stderr.strip().count("\n") == 0, demo.stderr  # one line, no traceback
    assert "pip install 'flashgen[demo]'" in demo.stderr and "moto" in demo.stderr


def test_the_vendored_schemas_are_installed_as_package_data(lean):
    loaded = run(lean, str(lean / "python"), "-c",
                 "from flashgen.schemas import input_schema, output_schema; "
                 "print(input_schema()['title'], sorted(output_schema()['output']['properties']))")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "Input ['image', 'images', 'video', 'videos']"
