"""Suite-wide settings, and the module order that keeps both xdist workers busy to the end."""

import shutil
import subprocess

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def no_tracking():
    """The tests' `ombrl` runs track nothing unless a test asks for a store (tracking_store):
    MLflow's import and its store's schema check cost each process about 2.6 CPU s, and only
    the tests that read a store need one. Never the checkout's store either way. (The
    workflow tests' Snakemake runs track into their study's own store: test_workflow.py.)"""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", "none")
        yield


@pytest.fixture
def tracking_store(tmp_path_factory, monkeypatch) -> str:
    """A throwaway MLflow store that the test's `ombrl` runs log to (MLFLOW_TRACKING_URI)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


#: A SLURM configuration whose controller refuses at once (MessageTimeout 1 s: no retries).
NO_CONTROLLER = "ClusterName=none\nSlurmctldHost=localhost\nMessageTimeout=1\n"


@pytest.fixture(scope="session", autouse=True)
def slurm_probes_fail_at_once(tmp_path_factory):
    """Where SLURM is installed but no controller answers (this machine between the SLURM
    tests), every Snakemake start waits 9 s: its SLURM plugin runs `scontrol show config` when
    imported, which retries for the configuration's MessageTimeout (10 s by default). The
    probe fails either way; pointing SLURM_CONF at a controller that refuses at once saves the
    wait for each of the suite's Snakemake runs. Where a controller answers (the SLURM tests,
    run against a live cluster), nothing changes."""
    if shutil.which("scontrol") is None or _controller_answers():
        yield
        return
    conf = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    conf.write_text(NO_CONTROLLER)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(conf))
        yield


def _controller_answers() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models run as fast on one thread, and two threads slow ~10x when the 2 cores are
    shared with other processes (OpenMP threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The modules with the longest shared fixtures and tests, longest first (the sum of each
#: module's `--durations=0` times in `make test`, December 3, 700b70c: the tiny study 235 s, the
#: tiny locomotion studies 169 s, test_cli.py 65 s, test_resume.py 62 s, ...). `make test` runs
#: the suite on two xdist workers, one module at a time each (`--dist loadscope`), in this
#: order: a long module started last would leave one worker running it alone. Order only: an
#: entry that is stale or missing costs time, never a result.
FIRST = (
    "test_workflow.py",
    "test_hopper_study.py",
    "test_cli.py",
    "test_resume.py",
    "test_planning.py",
    "test_model_free_learning.py",
    "test_online.py",
    "test_plan.py",
    "test_fingerprint.py",
    "test_cli_modes.py",
    "test_tracking.py",
    "test_generate.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: else as found
