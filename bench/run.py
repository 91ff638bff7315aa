"""``python -m bench [--quick] [--only single,shared,...] [--server-defaults]``: every
scenario beside its baseline, a table on stdout, and ``bench/results.json`` (scenario →
figures).

single    1,000 images, concurrency 16, 2 s jobs; beside it ``baseline``, the script a user
          would write (bench/baseline.py) on the same workload
shared    two runs of 200 started together, each wanting 4, global limit 4, then limit 3
late      a 400-image run, and a 4-image run 10 s later, limit 4
scale     10,000 images, 0.2 s jobs, concurrency 64
scale-out 4,000 images, concurrency 32, 1 s jobs, sharded across 4 process workers
          (bench/scale_out.py), beside the same batch in one run
docker    4,000 images, concurrency 32, 1 s jobs, sharded across 2 containers of the
          Docker work pool (bench/docker_pool.py; needs dockerd, builds flashgen:latest)
taskruns  10,000 no-op Prefect task runs with flashgen's task options, 16 at a time: what
          one task run costs the flow process and the server, the rows it writes, and
          whether the server recorded them all
--quick runs a tenth of each; --only runs some and updates just their figures in
results.json; --server-defaults runs the Prefect server with Prefect's own settings
instead of flashgen's (``SERVER_SETTINGS`` in infra/prefect_server.py), and writes nothing.
A flow's server CPU counts until the server has recorded every task run the flow sent
(``task_runs_sent`` against ``task_runs_recorded``); ``total_cpu_ms_per_image`` is the
flow's and the server's together. Flows run in this process (its CPU is the flow's) against a
real ``prefect server`` subprocess on a fresh database of the local PostgreSQL (their CPU
read from /proc; see bench/services.py), moto's S3 server and the emulator in processes
of their own. Prefect logs at WARNING, to keep the output readable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")
# What a scenario was given, not what it measured.
SETTINGS = {"images", "images_per_run", "concurrency", "wanted", "limit", "job_s",
            "big_images", "small_images", "task_runs", "workers", "containers"}
SCENARIOS = ("single", "shared", "late", "scale", "taskruns", "scale-out", "docker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--server-defaults", action="store_true",
                        help="the Prefect server with Prefect's default settings, not "
                             "flashgen's; results.json is left alone")
    args = parser.parse_args()
    os.environ.update(PREFECT_HOME=tempfile.mkdtemp(prefix="flashgen-bench-"),
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING",
                      FLASHGEN_BUCKET="bench", RUNCOMFY_API_TOKEN="bench-token")

    from bench import scenarios
    from bench.docker_pool import docker_pool
    from bench.scale_out import scale_out
    from bench.services import Services

    sizes = scenarios.Sizes.quick() if args.quick else scenarios.Sizes()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    plan: dict[str, Callable[[Services], dict[str, Any]]] = {
        "baseline": lambda s: scenarios.baseline_single(s, sizes),
        "single": lambda s: scenarios.single(s, sizes),
        "shared_limit4": lambda s: scenarios.shared(s, sizes, limit=4),
        "shared_limit3": lambda s: scenarios.shared(s, sizes, limit=3),
        "late": lambda s: scenarios.late(s, sizes),
        # Before scale: after 10,000 images the server is busy recording for minutes.
        "taskruns": lambda s: scenarios.task_runs(s, sizes),
        "scale": lambda s: scenarios.scale(s, sizes),
        "scale-out": lambda s: scale_out(s, sizes.scale_out),
        "docker": lambda s: docker_pool(s, sizes.docker),
    }
    wanted = {"baseline", "single"} if "single" in chosen else set()
    wanted |= {n for n in plan if n.split("_")[0] in chosen}
    results: dict[str, dict[str, Any]] = {}
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with Services(server_settings={} if args.server_defaults else None) as services:
        for name, run in plan.items():
            if name in wanted:
                print(f"running {name} ...", flush=True)
                results[name] = run(services)
                # Written after each scenario: a later one that breaks loses only itself.
                if not args.server_defaults:
                    RESULTS.write_text(json.dumps(merged(kept, results, quick=args.quick),
                                                  indent=2, default=str))
    print(table(results))
    if not args.server_defaults:
        print(f"figures in {RESULTS}")


def merged(kept: dict[str, Any], results: dict[str, Any], *, quick: bool) -> dict[str, Any]:
    """What results.json holds after a run: a partial run (--only) replaces its scenarios'
    figures and keeps the others of the same profile, so the file stays the whole picture.

    >>> merged({"quick": False, "late": 1, "scale": 2}, {"late": 3}, quick=False)
    {'quick': False, 'late': 3, 'scale': 2}
    >>> merged({"quick": True, "late": 1}, {"scale": 2}, quick=False)
    {'quick': False, 'scale': 2}
    """
    kept = kept if kept.get("quick") == quick else {}
    return {**kept, "quick": quick, **results}


def table(results: dict[str, dict[str, Any]]) -> str:
    """One block per scenario; ``single`` beside the baseline with the ratio."""
    lines = []
    base = results.get("baseline", {})
    for name, figures in results.items():
        if name == "baseline":
            continue
        lines.append(name)
        for key, value in figures.items():
            line = f"  {key:34} {_fmt(value):>10}"
            if name == "single" and key in base and key not in SETTINGS:
                line += f"   baseline {_fmt(base[key]):>10}"
                if _number(value) and _number(base[key]) and base[key]:
                    line += f"   {value / base[key]:.2f}x"
            lines.append(line)
    return "\n".join(lines)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
