"""The wheel, installed without ``-e`` into a fresh venv: one top-level package
(``flashgen``), lean (no moto nor any other demo-only package), the ``flashgen`` command
works and says which extra the emulator and the demo need, and a Prefect project with its
own ``flows`` and ``tasks`` packages calls ``flashgen.generate`` beside them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from flashgen.emulator import EmulatorConfig, EmulatorServer
from tests.conftest import module_bucket

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "build",
                                     "*.egg-info", "flashgen-demo")
# What this (dev) environment has only because of the extras, and flashgen itself: left
# out of the packages the lean venv may reuse, so pip must bring any of them it wants.
EXTRAS_ONLY = ("moto", "flask", "werkzeug", "responses", "xmltodict", "pytest", "_pytest",
               "hypothesis", "_hypothesis", "ruff", "flashgen", "__editable__")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout (pip builds in the source folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=NOT_SHIPPED)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(tmp / "dist"), str(source)], check=True, timeout=300, cwd=tmp)
    (built,) = (tmp / "dist").glob("flashgen-*.whl")
    return built


@pytest.fixture(scope="module")
def lean(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel installed (not editable), no extras.

    Resolving prefect's hundred-odd dependencies from the index takes minutes, so the
    venv sees this environment's packages minus ``EXTRAS_ONLY`` (one folder of links,
    named in a .pth file) as already installed: pip still reads flashgen's metadata and
    installs whatever it requires that is missing, and would install moto if the core
    needed it.
    """
    tmp = tmp_path_factory.mktemp("lean")
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
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", str(wheel)],
                   check=True, timeout=300, cwd=tmp)
    return bin_dir


def run(bin_dir: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Outside the checkout and without PYTHONPATH: only the installed package is importable.
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or bin_dir,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(bin_dir),
                               **(env or {})})


def _top_level(names: list[str]) -> set[str]:
    """The names a distribution puts at the top of site-packages (its metadata aside)."""
    tops = {name.split("/")[0] for name in names}
    return {t for t in tops if not t.endswith((".dist-info", ".data")) and t != ".."}


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert _top_level(names) == {"flashgen"}
    for mapped in ("flows/generate.py", "tasks/context.py", "infra/stack.py",
                   "deployments/prompts/daily.yaml", "schemas/input_schema.json", "py.typed"):
        assert f"flashgen/{mapped}" in names, mapped
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "flashgen = flashgen.cli:app" in entry_points


def test_the_installed_package_adds_nothing_else_to_site_packages(lean):
    site = run(lean, str(lean / "python"), "-c",
               "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (record,) = Path(site).glob("flashgen-*.dist-info/RECORD")
    names = [line.split(",")[0] for line in record.read_text().splitlines()]
    assert _top_level(names) == {"flashgen"}
    assert any(n.endswith("bin/flashgen") for n in names)  # the console script


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


# --- a data team's own Prefect project, with the wheel installed --------------------------

TOKEN = "wheel-user-token-0123456789"
BUCKET = "flashgen-wheel-user"
s3_server = module_bucket(BUCKET)

# The user's own packages, named as flashgen's folders are in its repository.
USER_PACKAGES = {
    "flows/__init__.py": "",
    "flows/generate.py": "OWNER = 'the user'\n",
    "tasks/__init__.py": "",
    "tasks/context.py": "OWNER = 'the user'\n",
}
USER_SCRIPT = """
import asyncio, json, sys
from prefect import flow
from prefect.runtime import flow_run

import flashgen
from flows.generate import OWNER as flows_owner
from tasks.context import OWNER as tasks_owner

bucket = sys.argv[1]
plain = flashgen.generate(["a", "b", "c"], bucket=bucket)

@flow
def my_pipeline():
    return flow_run.id, flashgen.generate(["in a flow"], bucket=bucket)

parent_id, in_flow = my_pipeline()

async def notebook_cell():  # a running loop, as in Jupyter, where asyncio.run fails
    return flashgen.generate(["in a loop"], bucket=bucket)

in_loop = asyncio.run(notebook_cell())
try:
    flashgen.generate([{"prompt": "x", "aspect_ratio": "7:3"}], bucket=bucket, strict=True)
    refused = None
except flashgen.InputError as exc:
    refused = str(exc)
print(json.dumps({
    "owners": [flows_owner, tasks_owner], "version": flashgen.__version__,
    "flashgen": flashgen.__file__, "parent_id": str(parent_id), "refused": refused,
    "results": {name: r.model_dump(mode="json") for name, r in
                (("plain", plain), ("in_flow", in_flow), ("in_loop", in_loop))},
}))
"""


def test_a_project_with_its_own_flows_and_tasks_calls_the_installed_flashgen(
        lean, s3_server, prefect_api, tmp_path):
    project = tmp_path / "their-project"
    for name, text in USER_PACKAGES.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    (project / "make_images.py").write_text(USER_SCRIPT)
    with EmulatorServer(EmulatorConfig(workers=4, job_time=0.1, tokens=[TOKEN])) as api:
        env = {**prefect_api, **s3_server.env, "RUNCOMFY_BASE_URL": api.url,
               "RUNCOMFY_API_TOKEN": TOKEN, "FLASHGEN_STATE_DIR": str(tmp_path / "state"),
               "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",  # the emulator's files
               "FLASHGEN_POLL_INITIAL": "0.05", "FLASHGEN_POLL_MAXIMUM": "0.2",
               "PREFECT_LOGGING_LEVEL": "WARNING",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        done = run(lean, str(lean / "python"), "make_images.py", BUCKET, cwd=project, env=env,
                   timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        submissions = api.stats()["submissions"]
    assert out["owners"] == ["the user", "the user"]  # their packages, not flashgen's
    assert "site-packages" in out["flashgen"] and out["version"] == "0.1.0"
    assert out["refused"] and "aspect_ratio" in out["refused"]
    results = out["results"]
    assert [r["stored"] for r in results.values()] == [3, 1, 1]
    assert submissions == 5  # the refused call sent nothing
    for result in results.values():
        for item in result["items"]:
            (image,) = item["images"]
            assert image["url"].startswith(("http://", "https://"))
            body = httpx.get(image["url"], timeout=30).raise_for_status().content
            assert hashlib.sha256(body).hexdigest() == image["sha256"]
            assert body[:8] == b"\x89PNG\r\n\x1a\n"
    child = httpx.get(f"{prefect_api['PREFECT_API_URL']}/flow_runs/"
                      f"{results['in_flow']['flow_run_id']}", timeout=30).json()
    parent_task = httpx.get(f"{prefect_api['PREFECT_API_URL']}/task_runs/"
                            f"{child['parent_task_run_id']}", timeout=30).json()
    assert parent_task["flow_run_id"] == out["parent_id"]  # a subflow of the user's run
    assert TOKEN not in done.stdout + done.stderr
