"""The SLURM profile against a real one-node cluster (scripts/cluster-up.sh; `make test-cluster`).

Marked `slurm`: `make test` leaves them out, `make test-cluster` brings the cluster up, runs
them and brings it down. Under CI a cluster that is not there is a failure, never a skip.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from study_runner import copy_workflow, snakemake

pytestmark = pytest.mark.slurm

PROFILES = ["--profile", "profiles/slurm", "--profile", ".test/profile_slurm_test"]
# The jobs of the tiny study that must run on SLURM (download_dataset is the only local rule).
REMOTE_JOBS = {
    "collect_dataset": 1,
    "train_ensemble": 1,
    "train_policy": 2,
    "scores": 1,
    "figure_avg_return": 1,
    "figure_ensemble_loss": 1,
}


def cluster_problem() -> str | None:
    """Why the cluster cannot run jobs, or None when its node is idle and accounting answers."""
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "SLURM client commands are not installed"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        return f"no SLURM node is up (sinfo: {(state.stdout + state.stderr).strip()!r})"
    if subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode != 0:
        return "sacct fails: SLURM accounting (slurmdbd) is not running"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = cluster_problem()
    if problem is not None:
        message = f"{problem}; run `make test-cluster` (root, Debian) to start one"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def sacct_jobs(since: str) -> list[dict]:
    """Jobs (allocations, not steps) submitted since `since`: rule, state, job id."""
    result = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", since, "-o", "JobID,State,Comment"],
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = []
    for line in result.stdout.splitlines():
        job_id, state, comment = line.split("|", 2)
        if comment.startswith("rule_"):
            rule = comment.removeprefix("rule_").split("_wildcards")[0]
            jobs.append({"id": job_id, "state": state.split()[0], "rule": rule})
    return jobs


def now() -> str:
    time.sleep(1)  # sacct's -S has one-second resolution
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("local"))
    result = snakemake(workdir, "--cores", "2", "--configfile", "study.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_the_study_runs_as_slurm_jobs_and_matches_a_local_run(local_run, tmp_path):
    workdir = copy_workflow(tmp_path)
    since = now()
    result = snakemake(workdir, *PROFILES, "--configfile", "study.yaml")
    assert result.returncode == 0, result.stderr[-3000:]

    jobs = sacct_jobs(since)
    per_rule = {rule: sum(j["rule"] == rule for j in jobs) for rule in REMOTE_JOBS}
    assert per_rule == REMOTE_JOBS
    assert {j["state"] for j in jobs} == {"COMPLETED"}

    # Same seeds and thread counts: the same numbers, bit for bit.
    for model in sorted(local_run.glob("results/**/*.safetensors")):
        relative = model.relative_to(local_run)
        assert (workdir / relative).read_bytes() == model.read_bytes(), relative
    scores = [pd.read_csv(run / "results/scores.csv") for run in (local_run, workdir)]
    pd.testing.assert_frame_equal(*scores)


def test_a_failing_job_is_reported_and_retried(tmp_path):
    workdir = copy_workflow(tmp_path)
    dataset = workdir / "resources/datasets/tiny-random.hdf5"
    dataset.parent.mkdir(parents=True)
    dataset.write_text("not an HDF5 file\n")
    target = "results/tiny-random/ensembles/tiny/seed0/model.safetensors"
    since = now()
    result = snakemake(workdir, *PROFILES, "--configfile", "study.yaml", "--retries", "1", target)
    assert result.returncode != 0
    assert "Error in rule train_ensemble" in result.stderr + result.stdout
    attempts = [j for j in sacct_jobs(since) if j["rule"] == "train_ensemble"]
    assert [j["state"] for j in attempts] == ["FAILED", "FAILED"]
    log = (workdir / "logs/tiny-random/ensembles/tiny/seed0.log").read_text()
    assert "ombrl: error:" in log and "tiny-random.hdf5" in log
