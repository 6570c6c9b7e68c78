# Two commands for a new user: `make study` and `make test`. Each builds the virtual
# environment it needs from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: study test test-quick test-cluster lint docs clean-venv

# pip installs torch and uv at their pins first: pip reads the machine's pip configuration,
# which may point at a local CPU build of torch (uv reads none of it and would download the
# multi-GB CUDA build from PyPI). uv then installs the rest of the lock, in parallel: the
# venv builds in 40% of pip's CPU time (docs/getting-started.md).
$(BIN)/ombrl: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock torch uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c requirements.lock -e ".[dev]"
	touch $@

study: $(BIN)/ombrl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

# The whole suite on both cores (pytest-xdist). `--dist loadscope` keeps each test module in one
# worker, so a module's shared fixture (a trained ensemble, a tiny study run once) is built
# once; modules go out in collection order, the longest first (tests/conftest.py: FIRST).
# (`--dist loadgroup` would group by mark, but xdist 3.8 cannot tag pytest 9's node ids: its
# groups are silently ignored.) Without OSMesa the render tests are skipped, saying why.
test: $(BIN)/ombrl
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n $(CORES) --dist loadscope --no-loadscope-reorder -m "not slurm"

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
	$(BIN)/ruff check src tests benchmarks docs/_hooks
	$(BIN)/ruff format --check src tests benchmarks docs/_hooks
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

# The documentation site in site/ (not committed), --strict: a broken link or anchor, a page
# naming a config key or flag ombrl does not have, or an invalid YAML study snippet fails it.
# The reference pages are generated from the code (docs/_hooks/reference.py).
docs: $(BIN)/ombrl
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
