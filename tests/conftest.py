"""Suite-wide settings, and the module order that keeps both xdist workers busy to the end."""

import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory):
    """Every `ombrl` run of the tests logs to one throwaway MLflow store, never the checkout's."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if before is None:
        del os.environ["MLFLOW_TRACKING_URI"]
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models run as fast on one thread, and two threads slow ~10x when the 2 cores are
    shared with other processes (OpenMP threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The modules with the longest shared fixtures and tests, longest first (`--durations`,
#: December 3, serial: the tiny study's run 586 s, the tiny hopper study's 512 s, the compiled
#: ensemble loss 213 s, MOReL's CLI run 139 s, ...). `make test` runs the suite
#: on two xdist workers, one module at a time each (`--dist loadscope`), in this order: a long
#: module started last would leave one worker running it alone. Order only: an entry that is
#: stale or missing costs time, never a result.
FIRST = (
    "test_workflow.py",
    "test_hopper_study.py",
    "test_fit.py",
    "test_plan.py",
    "test_morel.py",
    "test_online.py",
    "test_generate.py",
    "test_fingerprint.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: else as found
