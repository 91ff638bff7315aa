# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV   := .venv

.PHONY: demo test test-fast fuzz lint bench image clean

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "flashgen needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip

# One stamp per extra: `make demo` installs .[demo] (emulator, moto), `make test` .[dev]
# (demo + test tools). Each is redone when pyproject.toml changes, and switching between
# the two only adds packages. Order-only on the interpreter: its mtime is the system's.
$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[$*]'
	touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/flashgen demo

# Most tests wait on real processes (Prefect servers, flashgen runs, the emulator's jobs),
# so 4 workers on 2 cores halve the suite's time. Whole files per worker (loadfile): a
# module's servers start once. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

test: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# The randomized fault campaign, longer than `make test` runs it: FUZZ_SCHEDULES schedules
# from FUZZ_SEED (a new seed each time unless given; a failure prints the seed to rerun).
FUZZ_SCHEDULES ?= 30
FUZZ_SEED ?= $(shell date +%s)
fuzz: $(VENV)/.installed-dev
	FUZZ_SCHEDULES=$(FUZZ_SCHEDULES) FUZZ_SEED=$(FUZZ_SEED) $(VENV)/bin/python -m pytest \
		tests/faults/test_campaign.py -q -rA $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed-dev
	$(VENV)/bin/python -m bench

# The container image flashgen:<version> and flashgen:latest, offline (infra/image.py): a
# debootstrapped Debian base (once), a wheelhouse (its dependencies once per pyproject.toml)
# and `docker build --network none`. Needs root the first time, a Docker daemon (`python3
# infra/docker_daemon.py` starts one without a bridge) and Python 3.11, the image's.
image:
	$(PYTHON) infra/image.py

clean:
	rm -rf $(VENV) .pytest_cache flashgen-demo build
