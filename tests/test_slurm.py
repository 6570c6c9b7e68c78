"""The SLURM profile against a real one-node cluster (scripts/cluster-up.sh; `make test-cluster`).

Marked `slurm`: `make test` leaves them out, `make test-cluster` brings the cluster up, runs
them and brings it down. Under CI a cluster that is not there is a failure, never a skip.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_runner import ROOT, copy_workflow, snakemake

pytestmark = pytest.mark.slurm

PROFILES = ["--profile", "profiles/slurm", "--profile", ".test/profile_slurm_test"]
# The jobs of the tiny study that must run on SLURM (download_dataset is the only local rule).
REMOTE_JOBS = {
    "collect_dataset": 1,
    "train_ensemble": 1,
    "train_policy": 2,
    "scores": 1,
    "figure_avg_return": 1,
    "figure_final_scores": 1,
    "figure_performance_profile": 1,
    "figure_ensemble_loss": 1,
}


# Two modes stand for all: one model-free, one model-based (every job costs a SLURM round trip).
SLURM_MODES = ("bc", "aleatoric-penalty")


def copy_study(workdir: Path) -> Path:
    """The tiny study with only `SLURM_MODES` (and so none of its sweeps), no online PETS."""
    copy_workflow(workdir)
    study = yaml.safe_load((workdir / "study.yaml").read_text())
    study["modes"] = {mode: study["modes"][mode] for mode in SLURM_MODES}
    study.pop("sweeps", None)
    study.pop("pets_propagation", None)
    (workdir / "study.yaml").write_text(yaml.safe_dump(study))
    return workdir


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
    workdir = copy_study(tmp_path_factory.mktemp("local"))
    result = snakemake(workdir, "--cores", "2", "--configfile", "study.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_the_study_runs_as_slurm_jobs_and_matches_a_local_run(local_run, tmp_path):
    workdir = copy_study(tmp_path)
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
    workdir = copy_study(tmp_path)
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


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def job_state(job_id: str) -> tuple[str, int]:
    """(state, restarts) of a job, from sacct (allocation line only)."""
    result = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-D", "-o", "State"],
        capture_output=True,
        text=True,
    )
    states = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return (states[-1] if states else "PENDING"), max(len(states) - 1, 0)


def test_a_requeued_job_resumes_from_its_checkpoint_and_matches(tmp_path):
    ombrl = str(Path(sys.executable).parent / "ombrl")
    data = tmp_path / "data.hdf5"
    collect = [
        ombrl,
        "collect",
        "--env",
        "InvertedPendulum-v5",
        "--policy",
        "medium",
        "--transitions",
        "3000",
        "--seed",
        "0",
        "--output",
        str(data),
    ]
    subprocess.run(collect, check=True, capture_output=True)
    train = [
        ombrl,
        "train-ensemble",
        "--dataset",
        str(data),
        "--config",
        str(ROOT / "config/ensembles/pnn.yaml"),
        "--params",
        "num_models=3",
        "num_elites=2",
        "hidden_size=64,64",
        "fit_epochs=120",
        "--checkpoint-every",
        "5",
        "--quiet",
    ]
    local = subprocess.run(
        [
            *train,
            "--output",
            str(tmp_path / "local"),
            "--checkpoint-dir",
            str(tmp_path / "ck-local"),
        ],
        capture_output=True,
    )
    assert local.returncode == 0, local.stderr

    checkpoints = tmp_path / "ck-slurm"
    command = " ".join(
        [*train, "--output", str(tmp_path / "slurm"), "--checkpoint-dir", str(checkpoints)]
    )
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--requeue",
            "--open-mode=append",
            "-A",
            "ci",
            "-p",
            "debug",
            "-c",
            "1",
            "--mem",
            "1000",
            "-o",
            str(tmp_path / "job.log"),
            "--wrap",
            command,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for(lambda: list(checkpoints.glob("*/step-*")), 120, "the job's first checkpoint")
    # The job writes checkpoints, so it runs; sacct's record of the start can lag behind
    # (slurmdbd stores it asynchronously: seen as PENDING once, December 3).
    wait_for(lambda: job_state(job_id)[0] == "RUNNING", 30, "sacct to record the job running")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    state = wait_for(
        lambda: (s := job_state(job_id))[0] in ("COMPLETED", "FAILED", "CANCELLED") and s,
        300,
        "the requeued job to end",
    )
    log = (tmp_path / "job.log").read_text()
    assert state[0] == "COMPLETED", log
    assert "resuming from step" in log
    for name in ("model.safetensors",):
        assert (tmp_path / "slurm" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    metrics = [
        pd.read_csv(tmp_path / run / "metrics.csv").drop(columns="seconds")
        for run in ("local", "slurm")
    ]
    pd.testing.assert_frame_equal(*metrics)
