"""A local, faithful emulator of RunComfy's Model API (its async queue endpoints).

    from flashgen.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig(workers=2, job_time=0.2)) as emulator:
        ...  # point a client at emulator.url; check emulator.stats() afterwards

In-process, without a socket: ``httpx.ASGITransport(app=create_app(config))``.
From the shell: ``flashgen emulator --port 8188 --fault status:429:0.2``.

It serves the model page's contract and what RunComfy's own clients add to it (cancel
``outcome``, the priced model catalog, ``include_cost``, errors as HTTP 200 +
``error_code``): ``docs/PROTOCOL-NOTES.md`` lists each fact and its source.

    config.py    options (FLASHGEN_EMULATOR_*)     jobs.py     the simulated queue
    app.py       routes and error handlers         service.py  what each route does
    inputs.py    strict schema validation          images.py   placeholder PNGs
    faults.py    which fault a call meets          wire.py     how a fault looks on the wire
    links.py     expiring signed file links        stats.py    what the emulator saw
    problems.py  the error body                    server.py   uvicorn, blocking or threaded
    cli.py       the `flashgen emulator` command
"""

from flashgen.emulator.app import create_app
from flashgen.emulator.config import EmulatorConfig
from flashgen.emulator.server import EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorServer", "create_app"]
