#!/usr/bin/env bash
# A separate virtual environment with d3rlpy 2.8.1 for benchmarks/d3rlpy_compare.py; never an
# ombrl dependency (d3rlpy pins gymnasium 1.0.0 and gym, ombrl uses a newer gymnasium).
# torch is the project's 2.13.0 CPU build, installed from a local wheel folder when one is given
# (D3RLPY_TORCH_WHEELS, default /opt/wheels) so nothing large is downloaded twice.
#
#   bash benchmarks/d3rlpy_venv.sh [VENV]     # default: .venv-d3rlpy (git-ignored)
set -euo pipefail
venv="${1:-.venv-d3rlpy}"
wheels="${D3RLPY_TORCH_WHEELS:-/opt/wheels}"
python3.11 -m venv "$venv"
links=()
[ -d "$wheels" ] && links=(--find-links "$wheels")
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "${links[@]}" "torch==2.13.0" "d3rlpy==2.8.1" "gymnasium==1.0.0"
"$venv/bin/python" -c "import d3rlpy, torch; print('d3rlpy', d3rlpy.__version__, 'torch', torch.__version__)"
