# Two commands for a new user: `make study` and `make test`. Each builds the virtual
# environment it needs from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: study test test-quick test-cluster lint clean-venv

$(BIN)/ombrl: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

study: $(BIN)/ombrl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

# The whole suite on both cores (pytest-xdist; tests sharing one expensive fixture run in one
# worker, `--dist loadgroup`). Without OSMesa the render tests are skipped with the reason.
test: $(BIN)/ombrl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n $(CORES) --dist loadgroup -m "not slurm"

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

lint: $(BIN)/ombrl
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

clean-venv:
	rm -rf $(VENV)
