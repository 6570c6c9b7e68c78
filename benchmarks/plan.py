"""`ombrl plan` against the measured CPU time of a real study, stage by stage.

Copies the workflow into a fresh folder, plans the study there (`ombrl.plan.plan`, from the
calibration given or a new one), then runs it with Snakemake one stage at a time (`--until`)
and measures each stage's CPU time (user + system of every process Snakemake starts, from
`getrusage(RUSAGE_CHILDREN)`). Each Snakemake invocation's own CPU time is in its stage's
measurement; a final no-op run measures it alone. The default study is the tiny test study
(a few minutes on 2 cores); never point it at a cluster-sized study.

    .venv/bin/python benchmarks/plan.py [--config .test/config_tiny/config.yaml]
        [--calibration FILE] [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ombrl.plan import calibrate, plan

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from study_runner import copy_workflow  # noqa: E402  (the tests' copy of a user's clone)

#: Stages run in order; each runs its rules' jobs (and whatever they need and is not done).
STAGES = [
    ("datasets", ["collect_dataset", "download_dataset", "tracking_store"]),
    ("ensembles", ["train_ensemble"]),
    ("policies", ["train_policy"]),
    ("scores and figures", None),  # everything left
]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def snakemake(workdir: Path, *args: str) -> float:
    """Run snakemake in `workdir`; return the CPU seconds it and its jobs used."""
    env = {**os.environ, "PYTHONPATH": str(workdir / "src"), "MPLBACKEND": "Agg"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/results/mlflow.db"
    before = children_cpu()
    command = [sys.executable, "-m", "snakemake", "--configfile", "study.yaml", *args]
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    return children_cpu() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=".test/config_tiny/config.yaml")
    parser.add_argument("--calibration", help="existing calibration JSON (default: calibrate)")
    parser.add_argument("--cores", default="2")
    parser.add_argument("--keep", help="run the study in this (new) folder and keep it")
    args = parser.parse_args()

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ombrl-plan-"))
    workdir.mkdir(parents=True, exist_ok=True)
    copy_workflow(workdir, args.config)

    calibration = Path(args.calibration) if args.calibration else workdir / "calibration.json"
    if not args.calibration:
        start = time.perf_counter()
        calibrate(calibration)
        print(f"calibration: {time.perf_counter() - start:.1f} s wall")
    rows = {r.rule: r for r in plan(Path("study.yaml"), calibration, workdir)}
    print(f"{'stage':<20}{'jobs':>6}{'planned CPU s':>15}{'measured CPU s':>16}{'ratio':>8}")
    done: set[str] = set()
    total_planned = total_measured = 0.0
    start = time.perf_counter()
    for stage, rules in STAGES:
        chosen = [r for r in rows if r not in done] if rules is None else rules
        present = [r for r in chosen if r in rows]
        done.update(present)
        until = [] if rules is None else ["--until", *present]
        measured = snakemake(workdir, "--cores", args.cores, *until)
        planned = 3600 * sum(rows[r].cpu_hours for r in present)
        jobs = sum(rows[r].jobs for r in present)
        total_planned, total_measured = total_planned + planned, total_measured + measured
        ratio = planned / measured
        print(f"{stage:<20}{jobs:>6}{planned:>15.1f}{measured:>16.1f}{ratio:>8.2f}")
    wall = time.perf_counter() - start
    ratio = total_planned / total_measured
    print(f"{'total':<20}{'':>6}{total_planned:>15.1f}{total_measured:>16.1f}{ratio:>8.2f}")
    idle = snakemake(workdir, "--cores", args.cores)
    print(f"study wall time {wall:.0f} s; a Snakemake run with nothing to do: {idle:.1f} CPU s")
    print(f"outputs in {workdir}" if args.keep else f"(ran in {workdir})")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
