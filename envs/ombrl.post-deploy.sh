#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) inside the new environment, from the workflow's directory:
# the rules call the `ombrl` library of this checkout, so install it there (its dependencies
# are the environment's pinned packages).
set -euo pipefail
pip install --no-deps -e .
