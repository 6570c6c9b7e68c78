"""Run the real workflow in a fresh copy of the repository's workflow files (shared by tests)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ["Snakefile", "workflow", "config", "envs", "notebooks", "profiles", ".test", "src"]


def copy_workflow(workdir: Path, config: str = ".test/config_tiny/config.yaml") -> Path:
    """Copy what a user's clone holds into `workdir`, with the study as `workdir/study.yaml`."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, workdir / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, workdir / name)
    shutil.copy(ROOT / config, workdir / "study.yaml")
    return workdir


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in `workdir` with only the project's venv and the system on PATH.

    The library is imported from the copy's `src/` (PYTHONPATH comes before the editable
    install), so a test can edit library code without touching the repository. SLURM_CONF
    passes through (tests/conftest.py: slurm_probes_fail_at_once).
    """
    env = {
        "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(workdir),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(workdir / "src"),
    }
    if "SLURM_CONF" in os.environ:
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scheduled(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table (empty when nothing is to do)."""
    counts = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) not in ("total", "all"):
            counts[match.group(1)] = int(match.group(2))
    return counts


def papermill(notebook: str, folder: Path, parameters: dict) -> subprocess.CompletedProcess:
    """Execute `notebooks/{notebook}.ipynb` with `parameters` as the workflow's rules do
    (papermill, the python3 kernel), writing the executed copy into `folder`."""
    return subprocess.run(
        [
            str(BIN / "papermill"),
            str(ROOT / f"notebooks/{notebook}.ipynb"),
            str(folder / f"{notebook}.ipynb"),
            "-k",
            "python3",
            "--no-progress-bar",
            "-y",
            json.dumps(parameters),
        ],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=300,
    )
