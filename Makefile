# `make test` works on a fresh clone with nothing installed but Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
# Installed without its declared dependencies: tinysoundfont's wheel declares pyaudio (only
# imported for live playback), which has no Linux wheel and does not build without PortAudio.
NO_DEPS := tinysoundfont==0.3.7

.PHONY: test test-fast typecheck lint demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade --quiet pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	$(VENV)/bin/python -m pip install --no-deps $(NO_DEPS)
	touch $(STAMP)

# Two pytest-xdist workers, a test file each at a time, the longest files first (tests/conftest.py
# orders them and gives each worker its share of the cores): about 13 minutes on 2 cores (one process
# took 21 when the suite took 16 this way). `TEST_WORKERS=0 make test` runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST)

# The inner loop: every test but those marked slow (CI runs `make test`, all of them).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# mypy on the public inference APIs (the files and settings are in pyproject.toml, [tool.mypy]).
typecheck: $(STAMP)
	$(VENV)/bin/python -m mypy

# Lint and import order (ruff, configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/python -m ruff check .

# The quick start: miniature MUSIC videos -> shards -> CLIPSep, prior, CLIPSonic -> report (runs/quickstart/).
demo: $(STAMP)
	$(VENV)/bin/python recipes/quickstart.py

clean:
	rm -rf $(VENV) .pytest_cache
