# Two commands for a new user: `make study` and `make test`. Each builds the virtual
# environment it needs from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: study test test-quick test-cluster lint docs clean-venv render-deps

$(BIN)/ombrl: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

study: $(BIN)/ombrl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: $(BIN)/ombrl render-deps
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not slurm"

# The quick loop while editing: the unit tests alone (about a minute), no workflow runs,
# CLI subprocesses or learning runs (those are marked slow; `make test` runs them too).
test-quick: $(BIN)/ombrl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not slurm and not slow"

# Brings up a real one-node SLURM cluster (root, Debian: apt installs it), runs the SLURM
# tests against it and stops it again, whatever the tests say.
test-cluster: $(BIN)/ombrl
	scripts/cluster-up.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m slurm; status=$$?; \
	scripts/cluster-down.sh; exit $$status

# Offscreen rendering (`ombrl render` and its test) with MUJOCO_GL=osmesa needs Debian's
# OSMesa (root, apt); nothing to do where it is installed.
render-deps:
	@ldconfig -p | grep -q libOSMesa.so || { apt-get update -qq && apt-get install -y -qq libosmesa6; }

lint: $(BIN)/ombrl
	$(BIN)/ruff check src tests benchmarks docs/_hooks
	$(BIN)/ruff format --check src tests benchmarks docs/_hooks
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

# The documentation site in site/ (not committed), --strict: a broken link or anchor, a page
# naming a config key or flag ombrl does not have, or an invalid YAML study snippet fails it.
# The reference pages are generated from the code (docs/_hooks/reference.py).
docs: $(BIN)/ombrl
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
